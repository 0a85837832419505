//! The `jemalloc` peer: jemalloc 5 built by `tikv-jemalloc-sys`.
//!
//! The crate builds jemalloc with the `_rjem_` symbol prefix, so its
//! `_rjem_malloc` lives beside our `malloc` without clashing and without
//! interposing anything itself. Aligned requests use `mallocx` with
//! `MALLOCX_ALIGN`, zeroed ones `MALLOCX_ZERO`, so jemalloc never zeroes
//! memory it knows to be fresh twice.
//!
//! Cost: one extra call per operation, as for every peer.

use core::alloc::Layout;
use core::ffi::{c_int, c_void};
use core::ptr;

use heapkit_core::{realloc_by_copy, HeapAlloc, Stats};
use tikv_jemalloc_sys as je;

/// The C API's minimum alignment. jemalloc aligns a block to 16 only when
/// its size class is a multiple of 16 (the tiny 8-byte class is 8-aligned),
/// so requests with this alignment are rounded up to a multiple of 16.
const JE_ALIGN: usize = 16;

/// `size` (0 included) rounded up to a non-zero multiple of [`JE_ALIGN`]. Cannot overflow: a
/// `Layout` size is at most `isize::MAX - (align - 1)`, and the C API never
/// asks for more than `isize::MAX - 16`.
#[inline]
fn round16(size: usize) -> usize {
    ((size + (JE_ALIGN - 1)) & !(JE_ALIGN - 1)).max(JE_ALIGN)
}
/// `MALLOCX_ZERO`.
const MALLOCX_ZERO: c_int = 0x40;

/// `MALLOCX_LG_ALIGN(log2(align))`.
#[inline]
fn mallocx_align(align: usize) -> c_int {
    align.trailing_zeros() as c_int
}

/// jemalloc, forwarded through its `_rjem_` API.
pub struct Jemalloc;

// SAFETY: every method forwards to jemalloc, which returns null on
// exhaustion, honours every power-of-two alignment through mallocx, serves
// size 0 through malloc (mallocx is given at least 1 byte), and frees any of
// its blocks from any thread.
unsafe impl HeapAlloc for Jemalloc {
    #[inline]
    fn allocate(&self, layout: Layout) -> *mut u8 {
        // SAFETY: plain C calls; mallocx gets a non-zero size.
        unsafe {
            if layout.align() <= JE_ALIGN {
                je::malloc(round16(layout.size())).cast()
            } else {
                je::mallocx(layout.size().max(1), mallocx_align(layout.align())).cast()
            }
        }
    }

    #[inline]
    fn allocate_zeroed(&self, layout: Layout) -> *mut u8 {
        // SAFETY: plain C calls; mallocx gets a non-zero size.
        unsafe {
            if layout.align() <= JE_ALIGN {
                je::calloc(1, round16(layout.size())).cast()
            } else {
                let flags = mallocx_align(layout.align()) | MALLOCX_ZERO;
                je::mallocx(layout.size().max(1), flags).cast()
            }
        }
    }

    #[inline]
    unsafe fn free(&self, ptr: *mut u8) {
        // SAFETY: the caller passes a live jemalloc block.
        unsafe { je::free(ptr.cast()) }
    }

    #[inline]
    unsafe fn usable_size(&self, ptr: *mut u8) -> usize {
        // SAFETY: the caller passes a live jemalloc block.
        unsafe { je::malloc_usable_size(ptr.cast_const().cast()) }
    }

    #[inline]
    unsafe fn reallocate(&self, ptr: *mut u8, old_layout: Layout, new_size: usize) -> *mut u8 {
        if old_layout.align() <= JE_ALIGN {
            // SAFETY: ptr is a live jemalloc block; new_size > 0.
            return unsafe { je::realloc(ptr.cast(), round16(new_size)).cast() };
        }
        // SAFETY: forwarded caller guarantee.
        unsafe { realloc_by_copy(self, ptr, old_layout, new_size) }
    }

    fn trim(&self) -> bool {
        // "arena.<MALLCTL_ARENAS_ALL>.purge": purge every arena's dirty and
        // muzzy pages now.
        // SAFETY: a void control: no old or new value.
        let rc = unsafe {
            je::mallctl(
                c"arena.4096.purge".as_ptr(),
                ptr::null_mut(),
                ptr::null_mut(),
                ptr::null_mut(),
                0,
            )
        };
        rc == 0
    }

    fn stats(&self) -> Stats {
        // Refresh jemalloc's cached statistics, then read them. Without
        // jemalloc's `stats` feature these names do not exist and the
        // fields stay zero.
        let mut epoch: u64 = 1;
        let mut len = core::mem::size_of::<u64>();
        // SAFETY: "epoch" takes and returns a u64; the pointers are valid.
        unsafe {
            je::mallctl(
                c"epoch".as_ptr(),
                ptr::addr_of_mut!(epoch).cast(),
                &mut len,
                ptr::addr_of_mut!(epoch).cast(),
                len,
            )
        };
        let read = |name: &core::ffi::CStr| -> u64 {
            let mut value: usize = 0;
            let mut len = core::mem::size_of::<usize>();
            // SAFETY: these names return a size_t; the pointers are valid.
            let rc = unsafe {
                je::mallctl(
                    name.as_ptr(),
                    ptr::addr_of_mut!(value).cast::<c_void>(),
                    &mut len,
                    ptr::null_mut(),
                    0,
                )
            };
            if rc == 0 {
                value as u64
            } else {
                0
            }
        };
        Stats {
            live_bytes: read(c"stats.allocated"),
            mapped_bytes: read(c"stats.mapped"),
            resident_bytes: heapkit_core::os::resident_bytes() as u64,
            ..Stats::default()
        }
    }
}

/// Whether this jemalloc keeps statistics (built with its `stats` feature,
/// which heapkit leaves off for speed: see Cargo.toml).
pub fn has_stats() -> bool {
    let mut enabled = false;
    let mut len = core::mem::size_of::<bool>();
    // SAFETY: "config.stats" returns a bool; the pointers are valid.
    let rc = unsafe {
        je::mallctl(
            c"config.stats".as_ptr(),
            ptr::addr_of_mut!(enabled).cast::<c_void>(),
            &mut len,
            ptr::null_mut(),
            0,
        )
    };
    rc == 0 && enabled
}
