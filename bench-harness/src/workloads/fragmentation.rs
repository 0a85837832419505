//! fragmentation: how much memory stays resident after a sparse free.
//!
//! 1. allocate 1 000 000 small objects (16..=128 bytes);       checkpoint
//! 2. free 90 % of them, chosen at random;                    checkpoint
//! 3. allocate larger objects (256..=2048 bytes) until the live bytes are back
//!    to what they were after step 1;                          checkpoint
//! 4. free everything (RSS at end).
//!
//! An allocator that cannot reuse the holes left in step 2 for the larger
//! sizes of step 3 ends with RSS well above the live bytes.

use super::{touch, Context, Params};
use crate::rng::SplitMix64;

const SMALL_OBJECTS: u64 = 1_000_000;

pub(super) fn run(params: &Params, ctx: &mut Context) {
    let mut rng = SplitMix64::new(params.seed);
    let count = params.scaled(SMALL_OBJECTS) as usize;
    let mut small: Vec<(*mut u8, usize)> = Vec::with_capacity(count);
    let mut live: u64 = 0;
    let rec = &mut ctx.recorders[0];
    for i in 0..count {
        let size = rng.range(16, 128) as usize;
        let ptr = rec.alloc(size);
        touch(ptr, size, i as u8);
        small.push((ptr, size));
        live += size as u64;
    }
    let full_live = live;
    ctx.checkpoint("small-allocated", live);

    let rec = &mut ctx.recorders[0];
    for slot in small.iter_mut() {
        if rng.below(10) != 0 {
            // SAFETY: slot holds a live block of slot.1 bytes.
            unsafe { rec.free(slot.0, slot.1) };
            live -= slot.1 as u64;
            *slot = (std::ptr::null_mut(), 0);
        }
    }
    ctx.checkpoint("90%-freed", live);

    let rec = &mut ctx.recorders[0];
    let mut large: Vec<(*mut u8, usize)> = Vec::with_capacity(count / 8 + 16);
    while live < full_live {
        let size = rng.range(256, 2048) as usize;
        let ptr = rec.alloc(size);
        touch(ptr, size, 1);
        large.push((ptr, size));
        live += size as u64;
    }
    ctx.checkpoint("larger-allocated", live);

    let rec = &mut ctx.recorders[0];
    for &(ptr, size) in small.iter().chain(large.iter()) {
        if !ptr.is_null() {
            // SAFETY: every non-null entry is a live block of that size.
            unsafe { rec.free(ptr, size) };
        }
    }
}
