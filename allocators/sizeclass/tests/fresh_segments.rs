//! What a fresh segment costs in resident memory: the first OS page of its
//! header, and the blocks the program asked for once it writes them. Not
//! the page metadata of pages its kind does not have (a medium segment has
//! 8 pages, a big one 1; the header has room for 64), not blocks carved
//! ahead of their use when each spans several OS pages, and not even the
//! first page of such a block before the program writes it (carved singly,
//! it is handed out unwritten). One test in its own process: the first
//! segments it maps are fresh.

use std::alloc::Layout;

use heapkit_core::os;
use heapkit_core::segment::SEGMENT_ALIGN;
use heapkit_sizeclass::{check_invariants_of, Fast, HeapAlloc, SizeClass};

/// The resident OS pages of the segment holding `p`, by index.
fn resident_in_segment(p: *mut u8) -> Vec<usize> {
    let seg = (p as usize & !(SEGMENT_ALIGN - 1)) as *const u8;
    let mut resident = vec![false; SEGMENT_ALIGN / os::page_size()];
    // SAFETY: seg is the start of a live heapkit segment (it holds p, a
    // live block), page-aligned and mapped whole.
    let ok = unsafe { os::resident_pages(seg, &mut resident) };
    assert!(ok, "mincore failed");
    (0..resident.len()).filter(|&i| resident[i]).collect()
}

#[test]
fn a_fresh_segment_touches_its_header_and_the_block_handed_out() {
    let a = SizeClass::fast();
    let page = os::page_size();
    // A medium class (32 KiB: 8 pages of 512 KiB) and a big one (100 KiB:
    // the whole segment is its page), each the first block of its segment.
    for size in [32 * 1024, 100 * 1024] {
        let layout = Layout::from_size_align(size, 16).unwrap();
        let p = a.allocate(layout);
        assert!(!p.is_null());
        let seg = p as usize & !(SEGMENT_ALIGN - 1);
        let first_block_page = (p as usize - seg) / page;
        let resident = resident_in_segment(p);
        // The header's first page (segment and page metadata of its kind's
        // pages): nothing else, before the program writes.
        assert_eq!(
            resident,
            vec![0],
            "{size}-byte block at page {first_block_page}: resident pages {resident:?}"
        );
        // SAFETY: p is a live block of `size` bytes.
        unsafe { p.write_bytes(0x5A, size) };
        let written = resident_in_segment(p);
        assert_eq!(written.len(), 1 + size.div_ceil(page), "{written:?}");
        // SAFETY: live, freed once.
        unsafe { a.free(p) };
    }
    check_invariants_of::<Fast>().expect("heap invariants");
}
