//! churn: the single-thread fast path.
//!
//! A window of 10 000 slots; each step picks a random slot, frees what it holds
//! and allocates a new block of a mixed small size (8 B–1 KiB, weighted towards
//! small: a power of two from 8 to 512 plus up to the same again).

use super::{touch, Context, Params};
use crate::rng::SplitMix64;

const WINDOW: usize = 10_000;
const STEPS: u64 = 6_000_000;

/// A small mixed size: 8..=1023 bytes, each power-of-two band equally likely.
#[inline]
pub(crate) fn small_size(rng: &mut SplitMix64) -> usize {
    let band = 8usize << rng.below(7);
    band + rng.below(band as u64) as usize
}

pub(super) fn run(params: &Params, ctx: &mut Context) {
    let mut rng = SplitMix64::new(params.seed);
    let mut slots: Vec<(*mut u8, usize)> = vec![(std::ptr::null_mut(), 0); WINDOW];
    let mut live: u64 = 0;
    let steps = params.scaled(STEPS);
    for step in 0..steps {
        let rec = &mut ctx.recorders[0];
        let slot = &mut slots[rng.below(WINDOW as u64) as usize];
        if !slot.0.is_null() {
            // SAFETY: the slot holds a live block of slot.1 bytes from rec.alloc.
            unsafe { rec.free(slot.0, slot.1) };
            live -= slot.1 as u64;
        }
        let size = small_size(&mut rng);
        let ptr = rec.alloc(size);
        touch(ptr, size, step as u8);
        *slot = (ptr, size);
        live += size as u64;
        if step == steps / 2 {
            ctx.checkpoint("half-way", live);
        }
    }
    let rec = &mut ctx.recorders[0];
    for &(ptr, size) in &slots {
        if !ptr.is_null() {
            // SAFETY: every non-null slot holds a live block of that size.
            unsafe { rec.free(ptr, size) };
        }
    }
}
