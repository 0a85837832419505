//! Hardened mode: sealed objects through every layer, guarded segments.

use super::*;

/// Hardened mode: objects leave and come back through magazines, the depot
/// and the slabs with their seal; a free object's slab link is encoded
/// (not a plain address), the invariants walk (which decodes every link and
/// checks every mark) holds, the canary sits after the requested size,
/// and the two modes never share a segment.
#[test]
fn hardened_objects_travel_sealed_through_the_slabs() {
    let _g = serial();
    let h = Slab::hardened();
    let f = Slab::fast();
    let layout = Layout::from_size_align(100, 8).unwrap();
    let mut blocks = Vec::new();
    for i in 0..3000usize {
        let b = Block {
            ptr: h.allocate(layout),
            layout,
            fill: i as u8,
        };
        assert!(!b.ptr.is_null());
        fill(&b);
        // SAFETY: b.ptr is a live block of h.
        assert_eq!(unsafe { h.usable_size(b.ptr) }, 100, "the requested size");
        blocks.push(b);
    }
    let plain = f.allocate(layout);
    let tag = |p: *mut u8| {
        // SAFETY: p is a live block, so its segment's tag is mapped.
        unsafe {
            segment_of(p)
                .cast::<heapkit_core::segment::SegmentTag>()
                .read()
        }
    };
    assert_eq!(
        tag(blocks[0].ptr),
        heapkit_core::segment::SegmentTag::SLAB_HARDENED
    );
    assert_eq!(tag(plain), heapkit_core::segment::SegmentTag::SLAB);
    // SAFETY: plain is a live block of f.
    unsafe { f.free(plain) };
    // Every eighth object stays live, so its slab stays (with the freed
    // objects on its free list).
    let kept: Vec<Block> = blocks.iter().step_by(8).copied().collect();
    let freed: Vec<Block> = (0..blocks.len())
        .filter(|i| i % 8 != 0)
        .map(|i| blocks[i])
        .collect();
    for b in &freed {
        verify(b);
        // SAFETY: live blocks of h, each freed once.
        unsafe { h.free(b.ptr) };
    }
    // Every freed object goes home to its slab: its first word is a link.
    settle(&h);
    let mut plain_links = 0;
    for b in &freed {
        // SAFETY: the slabs of a settled cache stay mapped while they hold
        // any object (the first word of a free object is its link).
        let word = unsafe { b.ptr.cast::<usize>().read() };
        let into_slab = (word ^ b.ptr as usize) < segment::CHUNK * 8;
        if word == 0 || into_slab {
            plain_links += 1;
        }
    }
    assert!(
        plain_links < freed.len() / 4,
        "{plain_links} of {} free objects hold a plain link",
        freed.len()
    );
    for b in &kept {
        verify(b);
        // SAFETY: live blocks of h, each freed once.
        unsafe { h.free(b.ptr) };
    }
    let mut again = Vec::new();
    for i in 0..3000usize {
        let b = Block {
            ptr: h.allocate(layout),
            layout,
            fill: !(i as u8),
        };
        fill(&b);
        again.push(b);
    }
    for b in &again {
        verify(b);
        // SAFETY: the canary follows the 100 requested bytes.
        let canary = unsafe { core::slice::from_raw_parts(b.ptr.add(100), 4) };
        assert!(
            canary.iter().any(|&x| x != b.fill),
            "canary after the request"
        );
        // SAFETY: live blocks of h, each freed once.
        unsafe { h.free(b.ptr) };
    }
    settle(&h);
}

/// A hardened segment ends with an inaccessible guard; a default one does
/// not.
#[test]
fn hardened_segments_end_with_a_guard() {
    let _g = serial();
    let layout = Layout::from_size_align(64, 8).unwrap();
    let h = Slab::hardened();
    let f = Slab::fast();
    let (p, q) = (h.allocate(layout), f.allocate(layout));
    let maps = std::fs::read_to_string("/proc/self/maps").unwrap();
    let protection_at = |addr: usize| {
        maps.lines()
            .find_map(|l| {
                let (range, rest) = l.split_once(' ')?;
                let (a, b) = range.split_once('-')?;
                let (a, b) = (
                    usize::from_str_radix(a, 16).ok()?,
                    usize::from_str_radix(b, 16).ok()?,
                );
                (a <= addr && addr < b).then(|| std::string::String::from(&rest[..4]))
            })
            .unwrap_or_default()
    };
    let last_byte = |p: *mut u8| segment_of(p) as usize + heapkit_core::segment::SEGMENT_ALIGN - 1;
    assert_eq!(
        protection_at(last_byte(p)),
        "---p",
        "hardened segment's end"
    );
    assert_eq!(protection_at(last_byte(q)), "rw-p", "default segment's end");
    // SAFETY: live blocks, freed once each.
    unsafe {
        h.free(p);
        f.free(q);
    }
    // Leave no magazine for this thread's exit to hand to a depot while
    // the next test (which counts every object) runs.
    settle(&f);
}
