//! A minimal allocator for core's own tests: every block is a large block.

use core::alloc::Layout;

use crate::{large, HeapAlloc, Stats};

/// Serves every request from [`large`].
pub struct PagesAlloc;

// SAFETY: forwards to the large path, which keeps the contract.
unsafe impl HeapAlloc for PagesAlloc {
    const SEGMENTED: bool = true;

    fn allocate(&self, layout: Layout) -> *mut u8 {
        large::allocate(layout, false)
    }
    unsafe fn free(&self, ptr: *mut u8) {
        // SAFETY: caller guarantee.
        unsafe { large::free(ptr) }
    }
    unsafe fn usable_size(&self, ptr: *mut u8) -> usize {
        // SAFETY: caller guarantee.
        unsafe { large::usable_size(ptr) }
    }
    fn stats(&self) -> Stats {
        Stats::default()
    }
}
