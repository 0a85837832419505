//! [`SizeClass`]: the `HeapAlloc` implementation over the thread heaps.

use core::alloc::Layout;
use core::ptr;

use heapkit_core::size_class::{class_for, class_of, MAX_SIZE, MIN_ALIGN};
use heapkit_core::{global_alloc, large, realloc_by_copy, HeapAlloc, Stats};

use crate::heap::{self, STATS};
use crate::page::Page;
use crate::segment::aligned_twin;

/// The thread-caching size-class allocator (see the crate docs).
#[derive(Clone, Copy, Debug, Default)]
pub struct SizeClass;

impl SizeClass {
    /// The allocator (it has no state of its own: heaps are per thread).
    pub const fn new() -> Self {
        SizeClass
    }

    /// Purges every free page of the calling thread's heap now and empties
    /// the large-block cache (what the decay would do later).
    pub fn collect(&self) {
        crate::purge::collect_now();
    }

    #[cold]
    #[inline(never)]
    fn allocate_unusual(&self, layout: Layout, zeroed: bool) -> *mut u8 {
        match class_for(layout) {
            Some(class) => {
                let class = if layout.align() > MIN_ALIGN {
                    aligned_twin(class)
                } else {
                    class
                };
                let p = heap::alloc(class);
                if zeroed && !p.is_null() {
                    // SAFETY: p is a fresh block of its class.
                    unsafe { zero_block(p, layout.size()) };
                }
                p
            }
            None => {
                let p = large::allocate(layout, zeroed);
                if !p.is_null() {
                    // SAFETY: p is a live large block.
                    let size = unsafe { large::usable_size(p) };
                    let h = heap::bound_heap();
                    // SAFETY: the calling thread's own counters.
                    unsafe {
                        (*h).stats.on_alloc(&STATS, size);
                        (*h).stats.maybe_flush(&STATS);
                    }
                }
                p
            }
        }
    }
}

/// Zeroes the first `size` bytes of a fresh small block, or only its first
/// word when its page's free blocks are known to be zero.
///
/// # Safety
/// `p` must be a block just allocated from a page, of at least `size` bytes.
#[inline]
unsafe fn zero_block(p: *mut u8, size: usize) {
    // SAFETY: caller guarantee; the page is ours and live.
    unsafe {
        let page: *mut Page = heap::page_of(p);
        if (*page).is_zero {
            // Only the free-list link was ever written.
            p.cast::<usize>().write(0);
        } else {
            p.write_bytes(0, size);
        }
    }
}

// SAFETY: small blocks come from pages of their class (size and alignment
// per class_of / class_for, never overlapping: each block is on exactly one
// list or live); large ones from core's large path; every block is freed and
// measured through its segment's tag; nothing allocates through the global
// allocator and nothing panics.
unsafe impl HeapAlloc for SizeClass {
    const SEGMENTED: bool = true;

    #[inline]
    fn allocate(&self, layout: Layout) -> *mut u8 {
        if layout.align() <= MIN_ALIGN && layout.size() <= MAX_SIZE {
            return heap::alloc(class_of(layout.size()));
        }
        self.allocate_unusual(layout, false)
    }

    #[inline]
    fn allocate_zeroed(&self, layout: Layout) -> *mut u8 {
        if layout.align() <= MIN_ALIGN && layout.size() <= MAX_SIZE {
            let p = heap::alloc(class_of(layout.size()));
            if !p.is_null() {
                // SAFETY: p is a fresh block of at least layout.size() bytes.
                unsafe { zero_block(p, layout.size()) };
            }
            return p;
        }
        self.allocate_unusual(layout, true)
    }

    #[inline]
    unsafe fn free(&self, ptr: *mut u8) {
        // SAFETY: caller guarantee.
        unsafe { heap::free(ptr) }
    }

    #[inline]
    unsafe fn usable_size(&self, ptr: *mut u8) -> usize {
        // SAFETY: caller guarantee.
        unsafe { heap::usable_size(ptr) }
    }

    unsafe fn reallocate(&self, ptr: *mut u8, old_layout: Layout, new_size: usize) -> *mut u8 {
        // SAFETY: caller guarantee: ptr is a live block of ours.
        let usable = unsafe { heap::usable_size(ptr) };
        if old_layout.align() > MIN_ALIGN {
            // SAFETY: forwarded caller guarantee.
            return unsafe { realloc_by_copy(self, ptr, old_layout, new_size) };
        }
        if usable > MAX_SIZE {
            if new_size > MAX_SIZE {
                // SAFETY: ptr is a live large block.
                let q = unsafe { large::reallocate(ptr, new_size) };
                if !q.is_null() {
                    // SAFETY: q is live.
                    let now = unsafe { large::usable_size(q) };
                    heap_stats_realloc(usable, now);
                }
                return q;
            }
        } else if new_size <= MAX_SIZE && class_of(new_size) == class_of(usable) {
            heap_stats_realloc(usable, usable);
            return ptr;
        }
        let Ok(layout) = Layout::from_size_align(new_size, MIN_ALIGN) else {
            return ptr::null_mut();
        };
        let q = self.allocate(layout);
        if !q.is_null() {
            // SAFETY: both live and distinct; the copy fits both.
            unsafe {
                ptr::copy_nonoverlapping(ptr, q, usable.min(new_size));
                heap::free(ptr);
            }
            // The allocation and the free counted the bytes; count the call.
            heap_stats_realloc(0, 0);
        }
        q
    }

    fn trim(&self) -> bool {
        let before = heapkit_core::os::os_counters();
        self.collect();
        heapkit_core::os::os_counters().released_since(&before)
    }

    fn stats(&self) -> Stats {
        let h = heap::heap();
        // SAFETY: the calling thread's own counters, read without
        // re-entrancy.
        let pending = unsafe { &(*h).stats };
        STATS.snapshot(Some(pending))
    }
}

/// Counts an in-place large realloc.
fn heap_stats_realloc(old: usize, new: usize) {
    let h = heap::bound_heap();
    // SAFETY: the calling thread's own counters.
    unsafe { (*h).stats.on_realloc(&STATS, old, new) };
}

global_alloc!(SizeClass);
