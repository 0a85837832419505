//! The contract: one trait every heapkit allocator implements.
//!
//! [`HeapAlloc`] carries the operations both Rust and C need, so each
//! allocator writes them once and gets the rest derived:
//!
//! - Rust's `GlobalAlloc`, by [`global_alloc!`](crate::global_alloc);
//! - the C malloc API (with glibc's edge cases), by [`crate::capi`], which
//!   the shim `libheapkit.so` exports.
//!
//! ```
//! use core::alloc::Layout;
//! use heapkit_core::{HeapAlloc, Stats};
//!
//! /// A toy allocator that serves everything from the large path.
//! pub struct Pages;
//!
//! // SAFETY: every method forwards to heapkit_core::large, which keeps the
//! // contract (null on exhaustion, layout-free free, usable_size).
//! unsafe impl HeapAlloc for Pages {
//!     fn allocate(&self, layout: Layout) -> *mut u8 {
//!         heapkit_core::large::allocate(layout, false)
//!     }
//!     unsafe fn free(&self, ptr: *mut u8) {
//!         // SAFETY: the caller passes a live block of ours.
//!         unsafe { heapkit_core::large::free(ptr) }
//!     }
//!     unsafe fn usable_size(&self, ptr: *mut u8) -> usize {
//!         // SAFETY: the caller passes a live block of ours.
//!         unsafe { heapkit_core::large::usable_size(ptr) }
//!     }
//!     fn stats(&self) -> Stats {
//!         Stats::default()
//!     }
//! }
//! heapkit_core::global_alloc!(Pages);
//!
//! // Pages is now a GlobalAlloc too:
//! let layout = Layout::from_size_align(100, 16).unwrap();
//! // SAFETY: layout has a non-zero size.
//! let p = unsafe { core::alloc::GlobalAlloc::alloc(&Pages, layout) };
//! assert!(!p.is_null());
//! // SAFETY: p is live with this layout.
//! unsafe { core::alloc::GlobalAlloc::dealloc(&Pages, p, layout) };
//! ```

use core::alloc::Layout;
use core::ptr;

use crate::Stats;

/// The operations every heapkit allocator provides.
///
/// # Safety
///
/// For implementors:
/// - `allocate*` return null on exhaustion or on a layout they cannot serve,
///   and never panic or unwind; otherwise a block of at least
///   `layout.size()` bytes aligned to `layout.align()` (every power of two up
///   to at least 1 MiB must be served) that overlaps no other live block.
///   Zero-size layouts must be served too (the C API asks for them).
/// - Any live block, whatever its layout, can be released by
///   [`free`](HeapAlloc::free) and measured by
///   [`usable_size`](HeapAlloc::usable_size), from any thread.
/// - No operation changes the calling thread's `errno` (C's `free` must not,
///   and [`crate::capi`] relies on it instead of saving `errno` on every
///   call): make system calls through [`crate::os`], which restores it. The
///   peers under the shim keep their own behaviour, as their own libraries
///   would.
/// - Nothing here allocates through the global allocator.
pub unsafe trait HeapAlloc: Sync {
    /// True when every block this allocator hands out lies in a mapping
    /// made by [`crate::large::map_segments`] (recorded in
    /// [`crate::segment::REGIONS`]): the C API ([`crate::capi`]) then checks
    /// each pointer it is asked to free, reallocate or measure against the
    /// region map and reports a foreign one as misuse, instead of reading a
    /// tag from memory that may not be mapped. Forwarding allocators leave it
    /// false.
    const SEGMENTED: bool = false;

    /// Allocates a block for `layout`; null on exhaustion.
    fn allocate(&self, layout: Layout) -> *mut u8;

    /// Allocates a zeroed block. The default memsets; allocators override it
    /// to skip memory that is known to be fresh from the OS.
    #[inline]
    fn allocate_zeroed(&self, layout: Layout) -> *mut u8 {
        let p = self.allocate(layout);
        if !p.is_null() {
            // SAFETY: p is a fresh block of at least layout.size() bytes.
            unsafe { p.write_bytes(0, layout.size()) };
        }
        p
    }

    /// Frees a block whose layout is known (Rust's sized deallocation).
    ///
    /// # Safety
    /// `ptr` must be a live block of this allocator, allocated with
    /// `layout`.
    #[inline]
    unsafe fn deallocate(&self, ptr: *mut u8, layout: Layout) {
        let _ = layout;
        // SAFETY: forwarded caller guarantee.
        unsafe { self.free(ptr) }
    }

    /// Frees a block without its layout (C's `free`).
    ///
    /// # Safety
    /// `ptr` must be a live block of this allocator.
    unsafe fn free(&self, ptr: *mut u8);

    /// The usable size of a live block: at least its requested size.
    ///
    /// # Safety
    /// `ptr` must be a live block of this allocator.
    unsafe fn usable_size(&self, ptr: *mut u8) -> usize;

    /// Resizes a block to `new_size` bytes keeping `min(old, new)` bytes of
    /// contents and `old_layout.align()`; returns null (leaving the block
    /// intact) on exhaustion. The default stays in place when the block
    /// already fits and would not waste more than half of it, and otherwise
    /// allocates, copies and frees.
    ///
    /// # Safety
    /// `ptr` must be a live block of this allocator allocated with
    /// `old_layout` (or, from C, a layout of its usable size), and `new_size`
    /// rounded up to `old_layout.align()` must not overflow `isize`.
    #[inline]
    unsafe fn reallocate(&self, ptr: *mut u8, old_layout: Layout, new_size: usize) -> *mut u8 {
        // SAFETY: forwarded caller guarantee.
        unsafe { realloc_by_copy(self, ptr, old_layout, new_size) }
    }

    /// A snapshot of this allocator's counters.
    /// Gives free memory back to the OS now, as far as the allocator can
    /// (C's `malloc_trim`): free pages purged, empty segments and cached
    /// large blocks unmapped. Returns whether anything went back. The
    /// default empties core's large-block cache.
    fn trim(&self) -> bool {
        crate::large::trim(false)
    }

    fn stats(&self) -> Stats;
}

/// The default `reallocate`: in place when `new_size` fits the usable size
/// and uses at least half of it, otherwise allocate + copy + free.
///
/// # Safety
/// As for [`HeapAlloc::reallocate`].
#[inline]
pub unsafe fn realloc_by_copy<A: HeapAlloc + ?Sized>(
    alloc: &A,
    ptr: *mut u8,
    old_layout: Layout,
    new_size: usize,
) -> *mut u8 {
    // SAFETY: ptr is live (caller).
    let usable = unsafe { alloc.usable_size(ptr) };
    if new_size <= usable && new_size >= usable / 2 {
        return ptr;
    }
    let Ok(new_layout) = Layout::from_size_align(new_size, old_layout.align()) else {
        return ptr::null_mut();
    };
    let new = alloc.allocate(new_layout);
    if !new.is_null() {
        // SAFETY: both blocks are live and distinct; min(old, new) bytes are
        // in bounds of both.
        unsafe {
            ptr::copy_nonoverlapping(ptr, new, old_layout.size().min(new_size).min(usable));
            alloc.free(ptr);
        }
    }
    new
}

/// Implements `core::alloc::GlobalAlloc` for a type that implements
/// [`HeapAlloc`], so no allocator writes `GlobalAlloc` by hand.
///
/// ```ignore
/// heapkit_core::global_alloc!(MyAllocator);
/// // Generic over a policy:
/// heapkit_core::global_alloc!(<P: Policy> MyAllocator<P>);
/// ```
#[macro_export]
macro_rules! global_alloc {
    (<$($g:ident: $bound:path),*> $ty:ty) => {
        // SAFETY: every method forwards to the HeapAlloc contract, whose
        // guarantees (alignment, null on failure, no unwinding, no
        // allocation inside) are GlobalAlloc's.
        unsafe impl<$($g: $bound),*> ::core::alloc::GlobalAlloc for $ty {
            #[inline]
            unsafe fn alloc(&self, layout: ::core::alloc::Layout) -> *mut u8 {
                $crate::HeapAlloc::allocate(self, layout)
            }
            #[inline]
            unsafe fn alloc_zeroed(&self, layout: ::core::alloc::Layout) -> *mut u8 {
                $crate::HeapAlloc::allocate_zeroed(self, layout)
            }
            #[inline]
            unsafe fn dealloc(&self, ptr: *mut u8, layout: ::core::alloc::Layout) {
                // SAFETY: GlobalAlloc's caller guarantees ptr/layout.
                unsafe { $crate::HeapAlloc::deallocate(self, ptr, layout) }
            }
            #[inline]
            unsafe fn realloc(
                &self,
                ptr: *mut u8,
                layout: ::core::alloc::Layout,
                new_size: usize,
            ) -> *mut u8 {
                // SAFETY: GlobalAlloc's caller guarantees ptr/layout/new_size.
                unsafe { $crate::HeapAlloc::reallocate(self, ptr, layout, new_size) }
            }
        }
    };
    ($ty:ty) => {
        $crate::global_alloc!(<> $ty);
    };
}
