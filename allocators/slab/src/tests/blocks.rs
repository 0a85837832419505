//! Blocks as a program sees them: random operations with exact counts,
//! alignment, zeroing, `realloc` in place, the statistics.

use super::*;

#[test]
fn random_ops_keep_every_slab_count_exact() {
    let _g = serial();
    let a = Slab::new();
    let base = settle(&a).in_use;
    let mut rng = Rng(42);
    let mut live: Vec<Block> = Vec::new();
    for step in 0..30_000 {
        match rng.below(10) {
            0..=3 => live.push(allocate(&a, &mut rng, false)),
            4 => live.push(allocate(&a, &mut rng, true)),
            5..=7 if !live.is_empty() => {
                let b = live.swap_remove(rng.below(live.len() as u64) as usize);
                verify(&b);
                // SAFETY: b is live with its layout.
                unsafe { a.deallocate(b.ptr, b.layout) };
            }
            8 if !live.is_empty() => {
                let i = rng.below(live.len() as u64) as usize;
                let b = live[i];
                verify(&b);
                let new_size = random_layout(&mut rng).size();
                // SAFETY: b is live with its layout.
                let q = unsafe { a.reallocate(b.ptr, b.layout, new_size) };
                assert!(!q.is_null());
                assert_eq!(q as usize % b.layout.align(), 0);
                let kept = b.layout.size().min(new_size);
                // SAFETY: q is live with at least new_size bytes.
                let bytes = unsafe { core::slice::from_raw_parts(q, kept) };
                assert!(bytes.iter().all(|&x| x == b.fill), "realloc lost contents");
                let nb = Block {
                    ptr: q,
                    layout: Layout::from_size_align(new_size, b.layout.align()).unwrap(),
                    fill: b.fill.wrapping_add(1),
                };
                fill(&nb);
                live[i] = nb;
            }
            _ => {
                // SAFETY: every block is live.
                let c = a.check_invariants().expect("invariants");
                assert!(c.in_use >= live.iter().filter(|b| is_slab_block(b)).count());
            }
        }
        if step % 5_000 == 0 {
            let c = settle(&a);
            let slab_blocks = live.iter().filter(|b| is_slab_block(b)).count();
            assert_eq!(c.in_use, base + slab_blocks, "in-use count drifted");
            assert_eq!(c.in_depots, 0);
        }
    }
    for b in live.drain(..) {
        verify(&b);
        // SAFETY: b is live.
        unsafe { a.free(b.ptr) };
    }
    let c = settle(&a);
    assert_eq!(c.in_use, base);
    assert_eq!(c.empty_slabs, 0, "trim left empty slabs resident");
}

#[test]
fn every_alignment_up_to_a_mebibyte() {
    let _g = serial();
    let a = Slab::new();
    for shift in 0..=21 {
        let align = 1usize << shift;
        for size in [0, 1, align / 2, align, align + 1, 3 * align] {
            let layout = Layout::from_size_align(size, align).unwrap();
            let p = a.allocate(layout);
            assert!(!p.is_null());
            assert_eq!(p as usize % align, 0, "{size}/{align}");
            // SAFETY: p is live with layout.
            unsafe {
                assert!(a.usable_size(p) >= size);
                p.write_bytes(0x5A, size);
                a.deallocate(p, layout);
            }
        }
    }
    settle(&a);
}

#[test]
fn zeroed_blocks_are_zero_after_reuse() {
    let _g = serial();
    let a = Slab::new();
    for size in [24, 4096, 12_000, 100_000] {
        let layout = Layout::from_size_align(size, 16).unwrap();
        let mut ps = Vec::new();
        for _ in 0..40 {
            let p = a.allocate(layout);
            // SAFETY: p is live with size bytes.
            unsafe { p.write_bytes(0xFF, size) };
            ps.push(p);
        }
        for p in ps.drain(..) {
            // SAFETY: p is live.
            unsafe { a.free(p) };
        }
        for _ in 0..40 {
            let p = a.allocate_zeroed(layout);
            // SAFETY: p is live with size bytes.
            let bytes = unsafe { core::slice::from_raw_parts(p, size) };
            assert!(bytes.iter().all(|&x| x == 0));
            ps.push(p);
        }
        for p in ps.drain(..) {
            // SAFETY: p is live.
            unsafe { a.free(p) };
        }
    }
    settle(&a);
}

#[test]
fn realloc_stays_in_place_within_the_class() {
    let _g = serial();
    let a = Slab::fast();
    let layout = Layout::from_size_align(1000, 8).unwrap();
    let p = a.allocate(layout);
    // SAFETY: p is live; each realloc result is live with its new size.
    unsafe {
        let cs = a.usable_size(p);
        assert_eq!(cs, 1024);
        assert_eq!(a.reallocate(p, layout, 1024), p);
        let q = a.reallocate(p, Layout::from_size_align(1024, 8).unwrap(), 2000);
        assert_ne!(q, p);
        let r = a.reallocate(q, Layout::from_size_align(2000, 8).unwrap(), 1 << 20);
        let s = a.reallocate(r, Layout::from_size_align(1 << 20, 8).unwrap(), 3 << 20);
        assert!(a.usable_size(s) >= 3 << 20);
        let t = a.reallocate(s, Layout::from_size_align(3 << 20, 8).unwrap(), 100);
        assert_eq!(a.usable_size(t), 112);
        a.free(t);
    }
    settle(&a);
}

#[test]
fn stats_count_operations() {
    let _g = serial();
    let a = Slab::new();
    // The snapshot is exact for this thread, but a thread of an earlier
    // test may still be exiting and flush its pending counts between two
    // snapshots: that happens once, so one of a few attempts is undisturbed.
    let mut last = std::string::String::new();
    for _ in 0..5 {
        let before = a.stats();
        let layout = Layout::from_size_align(100, 8).unwrap();
        let p = a.allocate(layout);
        let big = a.allocate(Layout::from_size_align(1 << 20, 8).unwrap());
        let mid = a.stats();
        // SAFETY: both are live.
        unsafe {
            a.free(p);
            a.free(big);
        }
        let after = a.stats();
        let exact = mid.allocs - before.allocs == 2
            && mid.live_bytes >= before.live_bytes + 112 + (1 << 20)
            && after.frees - before.frees == 2
            && after.live_bytes == before.live_bytes;
        if exact {
            return;
        }
        last = std::format!("before {before:?}\nmid {mid:?}\nafter {after:?}");
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
    panic!("counts never matched:\n{last}");
}
