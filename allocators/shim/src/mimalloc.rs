//! The `mimalloc` peer: mimalloc built by `libmimalloc-sys` (without its
//! `override` feature, so it exports only `mi_*` names and interposes
//! nothing itself).
//!
//! Aligned and zeroed requests use `mi_malloc_aligned` / `mi_zalloc_aligned`
//! and `mi_zalloc`, which skip zeroing fresh OS memory.
//!
//! Cost: one extra call per operation, as for every peer.

use core::alloc::Layout;

use heapkit_core::{realloc_by_copy, HeapAlloc, Stats};
use libmimalloc_sys as mi;

/// The C API's minimum alignment. mimalloc aligns a block to 16 only when
/// its size class is a multiple of 16 (its 8, 24, 40... byte classes are 8-aligned),
/// so requests with this alignment are rounded up to a multiple of 16.
const MI_ALIGN: usize = 16;

/// `size` (0 included) rounded up to a non-zero multiple of [`MI_ALIGN`]. Cannot overflow: a
/// `Layout` size is at most `isize::MAX - (align - 1)`, and the C API never
/// asks for more than `isize::MAX - 16`.
#[inline]
fn round16(size: usize) -> usize {
    ((size + (MI_ALIGN - 1)) & !(MI_ALIGN - 1)).max(MI_ALIGN)
}

/// mimalloc, forwarded through its `mi_*` API.
pub struct Mimalloc;

// SAFETY: every method forwards to mimalloc, which returns null on
// exhaustion, honours every power-of-two alignment through
// mi_malloc_aligned, serves size 0, and frees any of its blocks from any
// thread.
unsafe impl HeapAlloc for Mimalloc {
    #[inline]
    fn allocate(&self, layout: Layout) -> *mut u8 {
        // SAFETY: plain C calls with no preconditions beyond the arguments.
        unsafe {
            if layout.align() <= MI_ALIGN {
                mi::mi_malloc(round16(layout.size())).cast()
            } else {
                mi::mi_malloc_aligned(layout.size(), layout.align()).cast()
            }
        }
    }

    #[inline]
    fn allocate_zeroed(&self, layout: Layout) -> *mut u8 {
        // SAFETY: plain C calls with no preconditions beyond the arguments.
        unsafe {
            if layout.align() <= MI_ALIGN {
                mi::mi_zalloc(round16(layout.size())).cast()
            } else {
                mi::mi_zalloc_aligned(layout.size(), layout.align()).cast()
            }
        }
    }

    #[inline]
    unsafe fn free(&self, ptr: *mut u8) {
        // SAFETY: the caller passes a live mimalloc block.
        unsafe { mi::mi_free(ptr.cast()) }
    }

    #[inline]
    unsafe fn usable_size(&self, ptr: *mut u8) -> usize {
        // SAFETY: the caller passes a live mimalloc block.
        unsafe { mi::mi_usable_size(ptr.cast_const().cast()) }
    }

    #[inline]
    unsafe fn reallocate(&self, ptr: *mut u8, old_layout: Layout, new_size: usize) -> *mut u8 {
        // SAFETY: ptr is a live mimalloc block; new_size > 0.
        unsafe {
            if old_layout.align() <= MI_ALIGN {
                mi::mi_realloc(ptr.cast(), round16(new_size)).cast()
            } else {
                realloc_by_copy(self, ptr, old_layout, new_size)
            }
        }
    }

    fn trim(&self) -> bool {
        // SAFETY: mi_collect has no preconditions.
        unsafe { mi::mi_collect(true) };
        true
    }

    fn stats(&self) -> Stats {
        let mut elapsed = 0;
        let mut user = 0;
        let mut system = 0;
        let mut rss = 0;
        let mut peak_rss = 0;
        let mut commit = 0;
        let mut peak_commit = 0;
        let mut faults = 0;
        // SAFETY: every out-pointer is valid; mi_process_info does not
        // allocate.
        unsafe {
            mi::mi_process_info(
                &mut elapsed,
                &mut user,
                &mut system,
                &mut rss,
                &mut peak_rss,
                &mut commit,
                &mut peak_commit,
                &mut faults,
            )
        };
        Stats {
            mapped_bytes: commit as u64,
            peak_mapped_bytes: peak_commit as u64,
            resident_bytes: heapkit_core::os::resident_bytes() as u64,
            ..Stats::default()
        }
    }
}
