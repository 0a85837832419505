//! Large blocks, 1 MiB to 32 MiB, at several alignments, alive together,
//! filled and checked end to end; then the same sizes zeroed.

use std::alloc::GlobalAlloc;

use crate::pattern::assert_disjoint;
use crate::{Block, Volume};

const SIZES: [usize; 10] = [
    1 << 20,
    (1 << 20) + 1,
    (2 << 20) - 3,
    (3 << 20) + 4095,
    4 << 20,
    (4 << 20) + 1,
    (8 << 20) - 16,
    (12 << 20) + 7,
    16 << 20,
    32 << 20,
];

const ALIGNS: [usize; 5] = [1, 16, 4096, 64 * 1024, 1 << 20];

/// All `SIZES` alive at once (alignment cycling through `ALIGNS`):
/// pattern, alignment and disjointness checked, freed in interleaved order;
/// then each size again through `alloc_zeroed` after the dirty frees, and a
/// 20 MiB `Vec` built and checked through std.
pub fn blocks<A: GlobalAlloc>(a: &A, v: Volume) {
    for round in 0..v.pick(3, 1) {
        let live: Vec<Block> = SIZES
            .iter()
            .enumerate()
            .map(|(i, &size)| {
                let align = ALIGNS[(i + round) % ALIGNS.len()];
                Block::new(
                    a,
                    size,
                    align,
                    (round * 100 + i) as u64,
                    false,
                    "large block",
                )
            })
            .collect();
        let mut ranges: Vec<(usize, usize)> = live.iter().map(|b| (b.addr, b.size)).collect();
        assert_disjoint(&mut ranges, "large blocks");
        let (even, odd): (Vec<_>, Vec<_>) =
            live.into_iter().enumerate().partition(|(i, _)| i % 2 == 0);
        for (_, b) in even.into_iter().chain(odd) {
            let what = format!("large block of {} bytes", b.size);
            // SAFETY: allocated from a above, freed once.
            unsafe { b.free(a, &what) };
        }
        for (i, &size) in SIZES.iter().enumerate() {
            let align = ALIGNS[(i + round + 1) % ALIGNS.len()];
            let what = format!("zeroed large block of {size} bytes");
            let b = Block::new(a, size, align, i as u64, true, &what);
            // SAFETY: allocated from a above, freed once.
            unsafe { b.free(a, &what) };
        }
    }
    let n = 20 << 20;
    let big: Vec<u32> = (0..n as u32 / 4)
        .map(|i| i.wrapping_mul(2_654_435_761))
        .collect();
    for (i, x) in big.iter().enumerate() {
        assert_eq!(
            *x,
            (i as u32).wrapping_mul(2_654_435_761),
            "20 MiB Vec, index {i}"
        );
    }
}
