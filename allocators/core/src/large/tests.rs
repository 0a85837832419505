use super::cache::CACHE;
use super::*;
use crate::segment::tag_of;

#[test]
fn allocate_write_grow_shrink_free() {
    let layout = Layout::from_size_align(300 << 10, 16).unwrap();
    let p = allocate(layout, true);
    assert!(!p.is_null());
    // SAFETY: p is a live large block of at least 300 KiB.
    unsafe {
        assert_eq!(tag_of(p), SegmentTag::LARGE);
        assert!(usable_size(p) >= 300 << 10);
        for i in 0..(300 << 10) {
            assert_eq!(*p.add(i), 0);
            *p.add(i) = (i % 251) as u8;
        }
        let q = reallocate(p, 5 << 20);
        assert!(!q.is_null());
        assert_eq!(tag_of(q), SegmentTag::LARGE);
        for i in 0..(300 << 10) {
            assert_eq!(*q.add(i), (i % 251) as u8);
        }
        *q.add((5 << 20) - 1) = 1;
        let r = reallocate(q, 100 << 10);
        assert_eq!(*r.add(1000), (1000 % 251) as u8);
        free(r);
    }
}

#[test]
fn aligned_blocks_and_cache_reuse_zeroes() {
    for shift in [12, 16, 20, 21] {
        let layout = Layout::from_size_align(1 << 19, 1 << shift).unwrap();
        let p = allocate(layout, false);
        assert!(!p.is_null());
        assert_eq!(p as usize % (1 << shift), 0);
        // SAFETY: p is live with at least 512 KiB.
        unsafe {
            p.write_bytes(0xEE, 1 << 19);
            free(p);
        }
        let z = allocate(layout, true);
        // SAFETY: z is live with at least 512 KiB.
        unsafe {
            assert!((0..(1 << 19)).all(|i| *z.add(i) == 0));
            free(z);
        }
    }
    assert!(allocate(Layout::from_size_align(64, MAX_ALIGN * 2).unwrap(), false).is_null());
    trim(false);
}

/// A guarded block ends at an inaccessible page (a write one byte past
/// its usable end faults, in a child), keeps its alignment and contents
/// through realloc, and a cached one serves only guarded requests,
/// still ending at its guard.
#[test]
fn guarded_blocks_end_at_a_guard_page() {
    let page = os::page_size();
    for (size, align) in [(300 << 10, 16), (1 << 20, 64), (5 << 20, 4096), (1000, 16)] {
        let p = allocate_guarded(Layout::from_size_align(size, align).unwrap(), true);
        assert!(!p.is_null());
        assert_eq!(p as usize % align, 0);
        // SAFETY: p is a live guarded block of at least `size` bytes,
        // fresh and so zero.
        unsafe {
            let usable = usable_size(p);
            assert!(usable >= size && usable < size + align.max(16));
            assert_eq!((p as usize + usable) % page, 0, "the block ends at a page");
            assert_eq!(*p.add(size - 1), 0);
            p.write_bytes(0x3c, usable);
            assert_write_past_end_faults(p, usable);
            let q = reallocate(p, size * 2);
            assert!(!q.is_null() && (q as usize).is_multiple_of(align));
            assert!((0..usable).all(|i| *q.add(i) == 0x3c));
            let usable_q = usable_size(q);
            assert_eq!((q as usize + usable_q) % page, 0);
            free(q);
        }
    }
    // Cached guarded blocks go to guarded requests only, zeroed when
    // asked, and still end at their guard.
    let layout = Layout::from_size_align(300 << 10, 16).unwrap();
    let p = allocate_guarded(layout, false);
    // SAFETY: p is live with 300 KiB.
    unsafe {
        p.write_bytes(0x77, 300 << 10);
        free(p);
    }
    let plain = allocate(layout, false);
    // SAFETY: plain is live with 300 KiB; no guard inside it.
    unsafe {
        plain.write_bytes(1, usable_size(plain));
        free(plain);
    }
    let z = allocate_guarded(layout, true);
    // SAFETY: z is live with 300 KiB.
    unsafe {
        assert!((0..300 << 10).all(|i| *z.add(i) == 0));
        assert_eq!((z as usize + usable_size(z)) % page, 0);
        free(z);
    }
}

/// Writes one byte past `p + usable` in a child, which must die of it.
///
/// # Safety
/// `p..p + usable` is a live guarded block.
unsafe fn assert_write_past_end_faults(p: *mut u8, usable: usize) {
    // SAFETY: fork in a test; the child only writes and exits.
    unsafe {
        let pid = libc::fork();
        if pid == 0 {
            p.add(usable).write_volatile(1);
            libc::_exit(0);
        }
        let mut status = 0;
        libc::waitpid(pid, &mut status, 0);
        assert!(
            libc::WIFSIGNALED(status) && libc::WTERMSIG(status) == libc::SIGSEGV,
            "a write past the block must fault (status {status:#x})"
        );
    }
}

/// A cached guarded mapping serves a smaller guarded request from its
/// start, the guard moved to the block's end, and a larger one again
/// afterwards, across the page that was the moved guard.
#[test]
fn a_cached_guarded_mapping_moves_its_guard() {
    let guarded = |n: usize| allocate_guarded(Layout::from_size_align(n, 16).unwrap(), true);
    let eleven = guarded(11 << 20);
    assert!(!eleven.is_null());
    // SAFETY: each block is live from its allocation to its one free,
    // with at least the bytes asked for.
    unsafe {
        eleven.write_bytes(0x11, 11 << 20);
        free(eleven);
        // (Tests share the cache: another may take the mapping first,
        // and these blocks are then fresh; every check holds either way.)
        let six = guarded(6 << 20);
        assert!(!six.is_null());
        let usable = usable_size(six);
        assert!((6 << 20..(6 << 20) + 16).contains(&usable));
        assert!((0..6 << 20).step_by(4093).all(|i| *six.add(i) == 0));
        six.write_bytes(0x66, usable);
        assert_write_past_end_faults(six, usable);
        free(six);
        let again = guarded(10 << 20);
        assert!(!again.is_null());
        let usable = usable_size(again);
        assert!(usable >= 10 << 20);
        assert!((0..10 << 20).step_by(4093).all(|i| *again.add(i) == 0));
        // When the mapping served all three, the six-MiB block's moved
        // guard lies inside this block: this write faults unless it
        // was made accessible again.
        again.write_bytes(0x10, usable);
        assert_write_past_end_faults(again, usable);
        free(again);
    }
}

/// The exhaustion path never waits for the cache lock: a `fork` child
/// of a Bump program may find it held by a thread that is gone.
#[test]
fn exhaustion_does_not_wait_for_a_held_cache_lock() {
    use std::sync::mpsc;
    use std::time::Duration;
    CACHE.raw().lock();
    let (done, finished) = mpsc::channel();
    std::thread::spawn(move || {
        // 64 TiB: more than any test machine can map.
        let _ = done.send(map_segments(1 << 46).is_null());
    });
    let outcome = finished.recv_timeout(Duration::from_secs(20));
    // SAFETY: this thread took the lock just above.
    unsafe { CACHE.raw().unlock() };
    assert_eq!(outcome, Ok(true), "map_segments waited for the held lock");
}

#[test]
fn alignments_of_a_segment_and_more_up_to_a_gibibyte() {
    for shift in [22, 23, 26, 30] {
        let align = 1usize << shift;
        for size in [64, 3 << 20, 5 << 20] {
            let layout = Layout::from_size_align(size, align).unwrap();
            let p = allocate(layout, true);
            assert!(!p.is_null(), "align {align} size {size}");
            assert_eq!(p as usize % align, 0);
            // The header is one segment before the block.
            assert_eq!(segment_of(p) as usize, p as usize - SEGMENT_ALIGN);
            assert!(crate::segment::REGIONS.holds_block(p));
            // SAFETY: p is live with at least `size` bytes, zeroed.
            unsafe {
                assert!(usable_size(p) >= size);
                assert_eq!(*p.add(size - 1), 0);
                p.write_bytes(0x5A, size);
                let q = reallocate(p, size * 2);
                assert!(!q.is_null());
                assert_eq!(*q.add(size - 1), 0x5A);
                free(q);
            }
        }
    }
    trim(false);
}

#[test]
fn near_fit_reuse_is_zeroed_where_asked() {
    let big = Layout::from_size_align(1 << 20, 16).unwrap();
    let p = allocate(big, false);
    assert!(!p.is_null());
    // SAFETY: p is live with 1 MiB; freed once.
    unsafe {
        p.write_bytes(0x5A, 1 << 20);
        free(p);
    }
    // Likely served by the block just cached (kept whole: within 25%).
    let smaller = Layout::from_size_align(900 << 10, 16).unwrap();
    let q = allocate(smaller, true);
    assert!(!q.is_null());
    // SAFETY: q is live with at least 900 KiB.
    unsafe {
        assert!(usable_size(q) >= 900 << 10);
        assert!((0..(900 << 10)).all(|i| *q.add(i) == 0));
        free(q);
    }
}

#[test]
fn impossible_size_is_null() {
    let layout = Layout::from_size_align(isize::MAX as usize - 4096, 16).unwrap();
    assert!(allocate(layout, false).is_null());
}
