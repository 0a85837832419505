//! The C malloc API, derived from [`HeapAlloc`] with glibc's semantics.
//!
//! `libheapkit.so` exports these over whichever backend `HEAPKIT_ALLOC`
//! names; peers (glibc, jemalloc, mimalloc) go through the same functions so
//! that comparisons are like for like. Edge cases follow glibc:
//!
//! | call | result |
//! |---|---|
//! | `malloc(0)` | a unique pointer that `free` accepts |
//! | `free(NULL)` | nothing; `free` never changes `errno` |
//! | `realloc(NULL, n)` | `malloc(n)` |
//! | `realloc(p, 0)` | frees `p`, returns NULL |
//! | `calloc(n, m)` with `n*m` overflowing | NULL, `errno = ENOMEM` |
//! | exhaustion anywhere | NULL, `errno = ENOMEM` |
//! | `posix_memalign` with an alignment that is not a power of two multiple of `sizeof(void*)` | `EINVAL` |
//! | `aligned_alloc` with an alignment that is not a power of two | NULL, `errno = EINVAL` |
//! | `memalign` with an alignment that is not a power of two | rounded up to one |
//!
//! Every block is at least 16-byte aligned (x86-64 ABI).

use core::alloc::Layout;
use core::ffi::{c_int, c_void};
use core::ptr;

use crate::os;
use crate::segment::REGIONS;
use crate::HeapAlloc;

/// Minimum alignment of every C allocation.
pub const MIN_ALIGN: usize = 16;

/// Sets `ENOMEM` and returns null: out of line, so that the exports' fast
/// paths hold no `errno` access at all.
#[cold]
#[inline(never)]
fn enomem() -> *mut c_void {
    os::set_errno(libc::ENOMEM);
    ptr::null_mut()
}

/// Sets `EINVAL` and returns null (out of line, as [`enomem`]).
#[cold]
#[inline(never)]
fn einval() -> *mut c_void {
    os::set_errno(libc::EINVAL);
    ptr::null_mut()
}

/// Allocates with `align >= MIN_ALIGN`; sets ENOMEM on failure.
// Always (and the function below): `calloc`'s export, once the default
// backend's arm stood alone, called them out of line with `zeroed` passed
// at run time.
#[inline(always)]
fn allocate<A: HeapAlloc + ?Sized>(a: &A, size: usize, align: usize, zeroed: bool) -> *mut c_void {
    let p = allocate_keeping_errno(a, size, align, zeroed);
    if p.is_null() {
        return enomem();
    }
    p
}

/// Allocates with `align >= MIN_ALIGN`; null on failure, `errno` untouched
/// (heapkit's allocators never change it; see [`HeapAlloc::free`]).
#[inline(always)]
fn allocate_keeping_errno<A: HeapAlloc + ?Sized>(
    a: &A,
    size: usize,
    align: usize,
    zeroed: bool,
) -> *mut c_void {
    let Ok(layout) = Layout::from_size_align(size, align) else {
        return ptr::null_mut();
    };
    let p = if zeroed {
        a.allocate_zeroed(layout)
    } else {
        a.allocate(layout)
    };
    p.cast()
}

/// `malloc(size)`.
#[inline]
pub fn malloc<A: HeapAlloc + ?Sized>(a: &A, size: usize) -> *mut c_void {
    allocate(a, size, MIN_ALIGN, false)
}

/// `calloc(n, size)`.
#[inline(always)]
pub fn calloc<A: HeapAlloc + ?Sized>(a: &A, n: usize, size: usize) -> *mut c_void {
    match n.checked_mul(size) {
        Some(total) => allocate(a, total, MIN_ALIGN, true),
        None => enomem(),
    }
}

/// `free(ptr)`; keeps `errno` by the contract of [`HeapAlloc::free`]
/// (heapkit's allocators restore it around the system calls of their slow
/// paths, so the free-list push itself never touches it).
///
/// # Safety
/// `ptr` must be null or a live block of `a`.
// Always: with two sizeclass modes LLVM stopped inlining this into the
// export, and the default backend's free paid a call frame and a jump.
#[inline(always)]
pub unsafe fn free<A: HeapAlloc + ?Sized>(a: &A, ptr: *mut c_void) {
    if ptr.is_null() {
        return;
    }
    if A::SEGMENTED && !REGIONS.holds_block(ptr) {
        foreign("free", ptr);
    }
    // SAFETY: ptr is live (caller guarantee; for a segmented allocator its
    // segment is at least a live heapkit mapping, whose checks do the rest).
    unsafe { a.free(ptr.cast()) }
}

/// Stops the program: `ptr` is in no heapkit mapping, so no heapkit
/// allocator handed it out (glibc says `free(): invalid pointer`).
#[cold]
#[inline(never)]
fn foreign(call: &str, ptr: *mut c_void) -> ! {
    crate::misuse::report(
        call,
        crate::misuse::Misuse::InvalidPointer,
        ptr.cast(),
        "not in any heapkit mapping",
    )
}

/// `realloc(ptr, size)`.
///
/// # Safety
/// `ptr` must be null or a live block of `a`.
#[inline(always)]
pub unsafe fn realloc<A: HeapAlloc + ?Sized>(a: &A, ptr: *mut c_void, size: usize) -> *mut c_void {
    if ptr.is_null() {
        return malloc(a, size);
    }
    if size == 0 {
        // SAFETY: caller guarantee.
        unsafe { free(a, ptr) };
        return ptr::null_mut();
    }
    if size > isize::MAX as usize - MIN_ALIGN {
        return enomem();
    }
    if A::SEGMENTED && !REGIONS.holds_block(ptr) {
        foreign("realloc", ptr);
    }
    // SAFETY: ptr is live (caller).
    let usable = unsafe { a.usable_size(ptr.cast()) };
    // SAFETY: usable is the block's size, so this layout describes it well
    // enough for a copy; MIN_ALIGN is what C asked for.
    let old = unsafe { Layout::from_size_align_unchecked(usable, MIN_ALIGN) };
    // SAFETY: ptr is live; size rounded to MIN_ALIGN fits isize (checked).
    let p = unsafe { a.reallocate(ptr.cast(), old, size) };
    if p.is_null() {
        return enomem();
    }
    p.cast()
}

/// `reallocarray(ptr, n, size)`.
///
/// # Safety
/// `ptr` must be null or a live block of `a`.
#[inline]
pub unsafe fn reallocarray<A: HeapAlloc + ?Sized>(
    a: &A,
    ptr: *mut c_void,
    n: usize,
    size: usize,
) -> *mut c_void {
    match n.checked_mul(size) {
        // SAFETY: caller guarantee.
        Some(total) => unsafe { realloc(a, ptr, total) },
        None => enomem(),
    }
}

/// `posix_memalign(out, align, size)`: 0, `EINVAL` or `ENOMEM`; `*out` is
/// written only on success and `errno` is left alone.
///
/// # Safety
/// `out` must be valid for a pointer write.
#[inline]
pub unsafe fn posix_memalign<A: HeapAlloc + ?Sized>(
    a: &A,
    out: *mut *mut c_void,
    align: usize,
    size: usize,
) -> c_int {
    if !align.is_power_of_two() || !align.is_multiple_of(core::mem::size_of::<usize>()) {
        return libc::EINVAL;
    }
    let p = allocate_keeping_errno(a, size, align.max(MIN_ALIGN), false);
    if p.is_null() {
        return libc::ENOMEM;
    }
    // SAFETY: caller guarantee.
    unsafe { out.write(p) };
    0
}

/// `aligned_alloc(align, size)`.
#[inline]
pub fn aligned_alloc<A: HeapAlloc + ?Sized>(a: &A, align: usize, size: usize) -> *mut c_void {
    if !align.is_power_of_two() {
        return einval();
    }
    allocate(a, size, align.max(MIN_ALIGN), false)
}

/// `memalign(align, size)`: like glibc, a non-power-of-two alignment is
/// rounded up to the next power of two.
#[inline]
pub fn memalign<A: HeapAlloc + ?Sized>(a: &A, align: usize, size: usize) -> *mut c_void {
    let Some(align) = align.max(MIN_ALIGN).checked_next_power_of_two() else {
        return enomem();
    };
    allocate(a, size, align, false)
}

/// `valloc(size)`: page-aligned.
#[inline]
pub fn valloc<A: HeapAlloc + ?Sized>(a: &A, size: usize) -> *mut c_void {
    allocate(a, size, os::page_size(), false)
}

/// `pvalloc(size)`: page-aligned, size rounded up to whole pages (one page
/// for 0).
#[inline]
pub fn pvalloc<A: HeapAlloc + ?Sized>(a: &A, size: usize) -> *mut c_void {
    match os::round_to_pages(size.max(1)) {
        Some(rounded) => allocate(a, rounded, os::page_size(), false),
        None => enomem(),
    }
}

/// `malloc_usable_size(ptr)`: 0 for null.
///
/// # Safety
/// `ptr` must be null or a live block of `a`.
#[inline]
pub unsafe fn malloc_usable_size<A: HeapAlloc + ?Sized>(a: &A, ptr: *mut c_void) -> usize {
    if ptr.is_null() {
        0
    } else {
        if A::SEGMENTED && !REGIONS.holds_block(ptr) {
            foreign("malloc_usable_size", ptr);
        }
        // SAFETY: caller guarantee.
        unsafe { a.usable_size(ptr.cast()) }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testing::PagesAlloc;

    #[test]
    fn glibc_edge_cases() {
        let a = PagesAlloc;
        let p = malloc(&a, 0);
        assert!(!p.is_null() && (p as usize).is_multiple_of(MIN_ALIGN));
        // SAFETY: p is a live block of a.
        unsafe {
            assert!(realloc(&a, p, 0).is_null());
            free(&a, ptr::null_mut());
        }
        os::set_errno(0);
        assert!(calloc(&a, usize::MAX / 2, 3).is_null());
        assert_eq!(os::errno(), libc::ENOMEM);
        let mut out = ptr::null_mut();
        // SAFETY: out is a valid pointer slot.
        unsafe {
            assert_eq!(posix_memalign(&a, &mut out, 24, 8), libc::EINVAL);
            assert_eq!(posix_memalign(&a, &mut out, 4, 8), libc::EINVAL);
            assert_eq!(posix_memalign(&a, &mut out, 4096, 8), 0);
            assert_eq!(out as usize % 4096, 0);
            os::set_errno(1234);
            free(&a, out);
            assert_eq!(os::errno(), 1234);
        }
        assert!(aligned_alloc(&a, 3, 8).is_null());
        assert_eq!(os::errno(), libc::EINVAL);
        let m = memalign(&a, 3000, 10);
        assert_eq!(m as usize % 4096, 0);
        let v = pvalloc(&a, 0);
        // SAFETY: m and v are live blocks of a.
        unsafe {
            assert!(malloc_usable_size(&a, v) >= 4096);
            assert_eq!(malloc_usable_size(&a, ptr::null_mut()), 0);
            free(&a, m);
            free(&a, v);
        }
        os::set_errno(0);
        assert!(malloc(&a, usize::MAX).is_null());
        assert_eq!(os::errno(), libc::ENOMEM);
        // SAFETY: null is accepted.
        unsafe { assert!(reallocarray(&a, ptr::null_mut(), usize::MAX, 2).is_null()) };
    }

    #[test]
    fn realloc_keeps_contents() {
        let a = PagesAlloc;
        // SAFETY: null is accepted; every pointer below is live when used.
        unsafe {
            let p = realloc(&a, ptr::null_mut(), 100).cast::<u8>();
            for i in 0..100 {
                *p.add(i) = i as u8;
            }
            let q = realloc(&a, p.cast(), 1 << 20).cast::<u8>();
            assert!((0..100).all(|i| *q.add(i) == i as u8));
            free(&a, q.cast());
        }
    }
}
