//! The `system` peer: glibc's own malloc, reached without going through our
//! exported `malloc` (which would recurse).
//!
//! glibc exports its allocator twice: under the public names and as
//! `__libc_malloc`, `__libc_free`, `__libc_calloc`, `__libc_realloc` and
//! `__libc_memalign`. heapkit exports both sets (some programs call the
//! second by name), so a call by name from here would come back to us.
//! [`GlibcFn`] reads the addresses of glibc's `__libc_*` definitions once
//! from libc's own dynamic symbol table: no `dlsym` (which may itself call
//! `malloc`) and no interposition. A process without glibc's libc cannot
//! use this backend: it stops with a message at the first call.
//!
//! glibc exports no un-interposable `malloc_usable_size`, so
//! [`usable_size`](System::usable_size) reads the chunk header the way
//! glibc's own `musable()` does (glibc 2.26 and later, no memory tagging):
//! the word before the block holds the chunk size with three flag bits, and
//! the usable part is the chunk minus its 8-byte header (16 bytes for an
//! `mmap`ed chunk). The C stress test compares the two for many sizes.
//!
//! ```text
//!  mem - 8: | chunk size | A | M | P |    M = IS_MMAPPED (0x2)
//!  mem    : | user data ...            usable = size - 8 (or - 16 if M)
//! ```
//!
//! Cost: one extra call per operation (the export dispatches here, glibc's
//! code runs as usual).

use core::alloc::Layout;
use core::ffi::c_void;

use heapkit_core::{realloc_by_copy, HeapAlloc, Stats};

use crate::glibc::GlibcFn;

static MALLOC: GlibcFn = GlibcFn::new(c"__libc_malloc");
static CALLOC: GlibcFn = GlibcFn::new(c"__libc_calloc");
static REALLOC: GlibcFn = GlibcFn::new(c"__libc_realloc");
static MEMALIGN: GlibcFn = GlibcFn::new(c"__libc_memalign");
static FREE: GlibcFn = GlibcFn::new(c"__libc_free");

// Each address below is glibc's definition of the function of that name,
// never null (`required` stops the process otherwise).
#[inline(always)]
fn glibc_malloc() -> unsafe extern "C" fn(usize) -> *mut c_void {
    // SAFETY: a non-null address of glibc's `__libc_malloc`, whose C
    // signature is this return type's.
    unsafe { core::mem::transmute::<*mut c_void, _>(MALLOC.required()) }
}
#[inline(always)]
fn glibc_calloc() -> unsafe extern "C" fn(usize, usize) -> *mut c_void {
    // SAFETY: a non-null address of glibc's `__libc_calloc`, whose C
    // signature is this return type's.
    unsafe { core::mem::transmute::<*mut c_void, _>(CALLOC.required()) }
}
#[inline(always)]
fn glibc_realloc() -> unsafe extern "C" fn(*mut c_void, usize) -> *mut c_void {
    // SAFETY: a non-null address of glibc's `__libc_realloc`, whose C
    // signature is this return type's.
    unsafe { core::mem::transmute::<*mut c_void, _>(REALLOC.required()) }
}
#[inline(always)]
fn glibc_memalign() -> unsafe extern "C" fn(usize, usize) -> *mut c_void {
    // SAFETY: a non-null address of glibc's `__libc_memalign`, whose C
    // signature is this return type's.
    unsafe { core::mem::transmute::<*mut c_void, _>(MEMALIGN.required()) }
}
#[inline(always)]
fn glibc_free() -> unsafe extern "C" fn(*mut c_void) {
    // SAFETY: a non-null address of glibc's `__libc_free`, whose C
    // signature is this return type's.
    unsafe { core::mem::transmute::<*mut c_void, _>(FREE.required()) }
}

/// glibc's malloc aligns every block to 16 bytes on x86-64.
const GLIBC_ALIGN: usize = 16;
/// `IS_MMAPPED` in the chunk's size word.
const IS_MMAPPED: usize = 0x2;
/// The three flag bits of the chunk's size word.
const SIZE_FLAGS: usize = 0x7;

/// glibc malloc, forwarded to glibc's `__libc_*` by address.
pub struct System;

// SAFETY: every method forwards to glibc's allocator, which returns null on
// exhaustion, aligns to what is asked (memalign for > 16), serves size 0,
// accepts any of its blocks in free from any thread, and never calls back
// into our exports.
unsafe impl HeapAlloc for System {
    #[inline]
    fn allocate(&self, layout: Layout) -> *mut u8 {
        // SAFETY: plain C calls with no preconditions beyond the arguments.
        unsafe {
            if layout.align() <= GLIBC_ALIGN {
                glibc_malloc()(layout.size()).cast()
            } else {
                glibc_memalign()(layout.align(), layout.size()).cast()
            }
        }
    }

    #[inline]
    fn allocate_zeroed(&self, layout: Layout) -> *mut u8 {
        if layout.align() <= GLIBC_ALIGN {
            // SAFETY: plain C call; calloc(1, n) cannot overflow.
            return unsafe { glibc_calloc()(1, layout.size()).cast() };
        }
        let p = self.allocate(layout);
        if !p.is_null() {
            // SAFETY: p is a fresh block of at least layout.size() bytes.
            unsafe { p.write_bytes(0, layout.size()) };
        }
        p
    }

    #[inline]
    unsafe fn free(&self, ptr: *mut u8) {
        // SAFETY: the caller passes a live glibc block.
        unsafe { glibc_free()(ptr.cast()) }
    }

    #[inline]
    unsafe fn usable_size(&self, ptr: *mut u8) -> usize {
        // SAFETY: ptr is a live glibc block (caller), so the size word of
        // its chunk header sits in the 8 bytes before it.
        let word = unsafe { ptr.cast::<usize>().sub(1).read() };
        let header = if word & IS_MMAPPED != 0 { 16 } else { 8 };
        (word & !SIZE_FLAGS).saturating_sub(header)
    }

    #[inline]
    unsafe fn reallocate(&self, ptr: *mut u8, old_layout: Layout, new_size: usize) -> *mut u8 {
        if old_layout.align() <= GLIBC_ALIGN {
            // SAFETY: ptr is a live glibc block; new_size > 0 (the C API
            // handles realloc(p, 0) before calling us, GlobalAlloc forbids it).
            return unsafe { glibc_realloc()(ptr.cast(), new_size).cast() };
        }
        // SAFETY: forwarded caller guarantee.
        unsafe { realloc_by_copy(self, ptr, old_layout, new_size) }
    }

    fn stats(&self) -> Stats {
        // glibc's own mallinfo2 (our export of that name reports on the
        // selected backend); it only reads glibc's arenas under their locks.
        let Some(info) = crate::introspect::glibc_mallinfo2() else {
            return Stats::default();
        };
        Stats {
            live_bytes: (info.uordblks + info.hblkhd) as u64,
            mapped_bytes: (info.arena + info.hblkhd) as u64,
            resident_bytes: heapkit_core::os::resident_bytes() as u64,
            ..Stats::default()
        }
    }
}
