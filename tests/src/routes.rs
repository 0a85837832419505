//! The two routes to the global allocator, `GLOBAL.alloc` and
//! `std::alloc::alloc`, must reach one allocator: blocks allocated by one
//! are resized and freed by the other. Catches a test binary whose
//! `#[global_allocator]` is not the allocator the direct tests drive, and an
//! allocator whose `dealloc`/`realloc` only accept blocks from one entry
//! point.

use std::alloc::GlobalAlloc;

use crate::{Block, Std, Volume};

/// Allocate through one route, realloc through the other, free through the
/// first, for sizes from 1 byte to 2 MiB and alignments up to 64 KiB.
pub fn std_and_global_alloc_agree<A: GlobalAlloc>(a: &A, v: Volume) {
    let sizes = [1usize, 24, 200, 3000, 40_000, 300_000, 2 << 20];
    let aligns = [1usize, 16, 256, 65536];
    for round in 0..v.pick(5, 1) {
        for (i, &size) in sizes.iter().enumerate() {
            for &align in &aligns {
                let seed = (round * 100 + i) as u64;
                let (first, second): (&dyn GlobalAlloc, &dyn GlobalAlloc) =
                    if i % 2 == 0 { (a, &Std) } else { (&Std, a) };
                let b = Block::new(first, size, align, seed, false, "first route");
                let new_size = size * 3 + 5;
                // SAFETY: b is live with its layout in the one global
                // allocator both routes reach.
                let p = unsafe { second.realloc(b.ptr(), b.layout(), new_size) };
                assert!(
                    !p.is_null(),
                    "realloc through the other route returned null"
                );
                crate::pattern::assert_aligned(p, align, "realloc through the other route");
                let moved = Block {
                    addr: p as usize,
                    size: new_size,
                    ..b
                };
                // SAFETY: p is live for new_size > size bytes.
                unsafe { crate::pattern::verify(p, size, seed, "realloc through the other route") };
                // SAFETY: p is live for new_size bytes.
                unsafe { crate::pattern::fill(p, new_size, seed) };
                // SAFETY: live in the global allocator; freed once.
                unsafe { moved.free(first, "free through the first route") };
            }
        }
    }
}
