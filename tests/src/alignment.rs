//! Every power-of-two alignment from 1 B to 16 MiB, for several sizes, all
//! alive at once: each block must be aligned, hold its pattern, and overlap
//! no other.

use std::alloc::GlobalAlloc;

use crate::pattern::assert_disjoint;
use crate::{Block, Volume};

/// The largest alignment the battery asks for (past a 4 MiB segment, where
/// heapkit's large path puts the block at a segment boundary).
pub const MAX_ALIGN: usize = 16 << 20;

/// Sizes tried at every alignment (plus the alignment itself and half of it).
const SIZES: [usize; 7] = [1, 7, 16, 100, 1000, 4104, 70_000];

/// Allocates every (alignment, size) pair twice through `a`, checks
/// alignment, pattern and disjointness of all live blocks, and frees them in
/// interleaved order.
pub fn every_power_of_two<A: GlobalAlloc>(a: &A, v: Volume) {
    let mut seed = 1u64;
    for round in 0..v.pick(3, 1) {
        let mut live: Vec<Block> = Vec::new();
        let mut align = 1;
        while align <= MAX_ALIGN {
            let mut sizes = SIZES.to_vec();
            sizes.push(align);
            if align > 1 {
                sizes.push(align / 2 + 1);
            }
            for &size in &sizes {
                for _ in 0..2 {
                    seed += 1;
                    let zeroed = seed.is_multiple_of(5);
                    let what = format!("alignment {align}, size {size}, round {round}");
                    live.push(Block::new(a, size, align, seed, zeroed, &what));
                }
            }
            align *= 2;
        }
        let mut ranges: Vec<(usize, usize)> = live.iter().map(|b| (b.addr, b.size)).collect();
        assert_disjoint(&mut ranges, "alignment battery");
        let (first, second): (Vec<_>, Vec<_>) =
            live.into_iter().enumerate().partition(|(i, _)| i % 3 == 0);
        for (_, b) in first.into_iter().chain(second.into_iter().rev()) {
            let what = format!("alignment {} size {}", b.align, b.size);
            // SAFETY: b was allocated by a and is freed once.
            unsafe { b.free(a, &what) };
        }
    }
}
