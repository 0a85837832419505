//! Zeroed allocations after dirty frees: memory that was filled with 0xAA and
//! freed must come back all zero from `alloc_zeroed`, at every size class and
//! in the large range.

use std::alloc::{GlobalAlloc, Layout};

use std::thread;
use std::time::Duration;

use crate::pattern::first_nonzero;
use crate::pattern::XorShift;
use crate::threads::mixed_size;
use crate::{Block, Volume};

fn sizes(v: Volume) -> Vec<usize> {
    let mut s: Vec<usize> = (1..=64).collect();
    let mut x = 65;
    while x <= 600 * 1024 {
        s.push(x);
        x = x * 5 / 4 + 3;
    }
    s.extend([256 * 1024, 256 * 1024 + 1, 1 << 20, (3 << 20) + 5]);
    if v == Volume::Light {
        s.retain(|&n| n > 64 || n % 8 == 1);
    }
    s
}

/// For each size (and alignments 1, 64, 4096, 64 KiB): allocate a batch, dirty it
/// with 0xAA, free it, then `alloc_zeroed` a batch and require every byte to
/// be zero; repeated so zeroed blocks are also reused ones.
pub fn after_dirty_frees<A: GlobalAlloc>(a: &A, v: Volume) {
    let reps = v.pick(3, 1);
    for size in sizes(v) {
        let batch = if size > 128 * 1024 { 3 } else { v.pick(24, 6) };
        for align in [1usize, 64, 4096, 65536] {
            let layout = Layout::from_size_align(size, align).expect("valid layout");
            for rep in 0..reps {
                let dirty: Vec<*mut u8> = (0..batch)
                    .map(|_| {
                        // SAFETY: non-zero size.
                        let p = unsafe { a.alloc(layout) };
                        assert!(!p.is_null(), "alloc({layout:?}) returned null");
                        // SAFETY: p is live for size bytes.
                        unsafe { p.write_bytes(0xAA, size) };
                        p
                    })
                    .collect();
                for p in dirty {
                    // SAFETY: p is live with layout.
                    unsafe { a.dealloc(p, layout) };
                }
                let zeroed: Vec<*mut u8> = (0..batch)
                    .map(|_| {
                        // SAFETY: non-zero size.
                        let p = unsafe { a.alloc_zeroed(layout) };
                        assert!(!p.is_null(), "alloc_zeroed({layout:?}) returned null");
                        assert!(
                            (p as usize).is_multiple_of(align),
                            "alloc_zeroed({layout:?}) = {p:p} misaligned"
                        );
                        p
                    })
                    .collect();
                for p in zeroed {
                    // SAFETY: p is live for size bytes.
                    if let Some(at) = unsafe { first_nonzero(p, size) } {
                        panic!(
                            "alloc_zeroed({layout:?}) = {p:p} (repetition {rep}) has a non-zero byte {at} = {:#x} after a dirty free",
                            // SAFETY: at < size.
                            unsafe { p.add(at).read() }
                        );
                    }
                    // SAFETY: p is live for size bytes; dirty it again.
                    unsafe { p.write_bytes(0xAA, size) };
                    // SAFETY: p is live with layout.
                    unsafe { a.dealloc(p, layout) };
                }
            }
        }
    }
}

/// `vec![0u8; n]` (std's `alloc_zeroed` route) after dirty `Vec`s of the same
/// sizes were dropped.
pub fn vec_macro(v: Volume) {
    for round in 0..v.pick(3, 1) {
        for size in sizes(v) {
            let n = if size > 128 * 1024 { 2 } else { 8 };
            let dirty: Vec<Vec<u8>> = (0..n).map(|_| vec![0xAAu8; size]).collect();
            drop(dirty);
            for _ in 0..n {
                let z = vec![0u8; size];
                if let Some(at) = z.iter().position(|&b| b != 0) {
                    panic!(
                        "vec![0u8; {size}] (round {round}) has byte {at} = {:#x}",
                        z[at]
                    );
                }
            }
            let z64 = vec![0u64; size / 8 + 1];
            assert!(
                z64.iter().all(|&w| w == 0),
                "vec![0u64; {}] not zero",
                size / 8 + 1
            );
        }
    }
}

/// Long enough for time-based decay (pages free for some tens of
/// milliseconds purged with `MADV_DONTNEED`) to run between phases.
const DECAY_PAUSE: Duration = Duration::from_millis(45);

/// Zeroing and purging across pauses: a set of patterned blocks stays live
/// throughout (a purge that touched a page in use would wipe them); in each
/// cycle, a batch is dirtied and freed, the test pauses so free pages decay,
/// the same sizes are allocated again (plain) and dirtied and freed, it
/// pauses again, and finally `alloc_zeroed` of those sizes must be all zero.
/// Catches an allocator that marks a purged page as zero and keeps believing
/// it after the page was reused and written.
pub fn across_purges<A: GlobalAlloc>(a: &A, v: Volume) {
    let mut rng = XorShift::new(0x9A9A);
    let keep: Vec<Block> = (0..300)
        .map(|_| {
            let size = mixed_size(&mut rng, false);
            Block::new(
                a,
                size,
                8,
                rng.next(),
                false,
                "block kept live across purges",
            )
        })
        .collect();
    for cycle in 0..v.pick(5, 2) {
        let sizes: Vec<usize> = (0..v.pick(400, 150))
            .map(|_| mixed_size(&mut rng, true))
            .collect();
        let dirty_round = |fill: u8| {
            let blocks: Vec<(*mut u8, Layout)> = sizes
                .iter()
                .map(|&size| {
                    let layout = Layout::from_size_align(size, 16).expect("valid");
                    // SAFETY: non-zero size.
                    let p = unsafe { a.alloc(layout) };
                    assert!(!p.is_null(), "alloc({layout:?}) returned null");
                    // SAFETY: p is live for size bytes.
                    unsafe { p.write_bytes(fill, size) };
                    (p, layout)
                })
                .collect();
            for (p, layout) in blocks {
                // SAFETY: live with layout.
                unsafe { a.dealloc(p, layout) };
            }
        };
        dirty_round(0xAA);
        thread::sleep(DECAY_PAUSE);
        dirty_round(0xBB);
        thread::sleep(DECAY_PAUSE);
        let zeroed: Vec<(*mut u8, Layout)> = sizes
            .iter()
            .map(|&size| {
                let layout = Layout::from_size_align(size, 16).expect("valid");
                // SAFETY: non-zero size.
                let p = unsafe { a.alloc_zeroed(layout) };
                assert!(!p.is_null(), "alloc_zeroed({layout:?}) returned null");
                // SAFETY: p is live for size bytes.
                if let Some(at) = unsafe { first_nonzero(p, size) } {
                    panic!(
                        "cycle {cycle}: alloc_zeroed({layout:?}) = {p:p} has a non-zero byte {at} = {:#x} after dirty frees and a decay pause",
                        // SAFETY: at < size.
                        unsafe { p.add(at).read() }
                    );
                }
                (p, layout)
            })
            .collect();
        for (p, layout) in zeroed {
            // SAFETY: live with layout.
            unsafe { a.dealloc(p, layout) };
        }
        for b in &keep {
            b.verify("block kept live across purges");
        }
    }
    for b in keep {
        // SAFETY: allocated from a above; freed once.
        unsafe { b.free(a, "block kept live across purges") };
    }
}
