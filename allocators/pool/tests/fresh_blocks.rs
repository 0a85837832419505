//! A fresh block of 32 KiB or more is handed out as it is: no page of it
//! (nor of the blocks after it) is faulted in by `malloc`; the program's
//! own writes do. (Listed a batch at a time, each block's link was a page
//! fault inside `malloc`.) One test in its own process: the blocks it takes
//! come from fresh regions.

use std::alloc::Layout;

use heapkit_core::os;
use heapkit_pool::{Fast, HeapAlloc, Pool};

/// Which OS pages of `len` bytes from `p` (page-aligned) are resident.
fn resident(p: *const u8, len: usize) -> Vec<bool> {
    let mut pages = vec![false; len.div_ceil(os::page_size())];
    // SAFETY: p is page-aligned, the start of pool blocks that stay
    // mapped for the whole test.
    let ok = unsafe { os::resident_pages(p, &mut pages) };
    assert!(ok, "mincore failed");
    pages
}

#[test]
fn a_fresh_large_block_is_handed_out_unwritten() {
    let pool = Pool::<Fast>::fast();
    let page = os::page_size();
    for size in [32 * 1024, 64 * 1024, 200 * 1024] {
        let layout = Layout::from_size_align(size, 16).unwrap();
        let p = pool.allocate(layout);
        assert!(!p.is_null());
        assert_eq!(p as usize % page, 0, "{size}-byte blocks start pages");
        // SAFETY: p is a live block of the pool.
        let block = unsafe { pool.usable_size(p) };
        // This block and the next one of its class: nothing resident yet.
        let before = resident(p, 2 * block);
        assert!(
            before.iter().all(|&r| !r),
            "{size}: resident before any write: {before:?}"
        );
        // SAFETY: p is a live block of `size` bytes.
        unsafe { p.write_bytes(0x5A, size) };
        let after = resident(p, 2 * block);
        assert_eq!(
            after.iter().filter(|&&r| r).count(),
            size.div_ceil(page),
            "{size}: {after:?}"
        );
        // SAFETY: live, freed once.
        unsafe { pool.free(p) };
    }
}
