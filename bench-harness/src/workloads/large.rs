//! large: blocks of 64 KiB – 4 MiB.
//!
//! A window of 32 slots; each step frees a random slot and allocates a block
//! whose size is log-uniform in 64 KiB..=4 MiB, then touches one byte per 4 KiB
//! page, so the cost of fresh pages (faults, zeroing) versus reused ones shows.

use super::{Context, Params};
use crate::rng::SplitMix64;

const WINDOW: usize = 32;
const STEPS: u64 = 4_000;
const PAGE: usize = 4096;

pub(super) fn run(params: &Params, ctx: &mut Context) {
    let mut rng = SplitMix64::new(params.seed);
    let mut slots: Vec<(*mut u8, usize)> = vec![(std::ptr::null_mut(), 0); WINDOW];
    let mut live: u64 = 0;
    let steps = params.scaled(STEPS);
    for step in 0..steps {
        let rec = &mut ctx.recorders[0];
        let slot = &mut slots[rng.below(WINDOW as u64) as usize];
        if !slot.0.is_null() {
            // SAFETY: the slot holds a live block of slot.1 bytes.
            unsafe { rec.free(slot.0, slot.1) };
            live -= slot.1 as u64;
        }
        // 64 KiB << (0..=6 in eighths) => 64 KiB ..= 4 MiB, log-uniform
        let eighths = rng.below(6 * 8 + 1);
        let size = ((64 * 1024) as f64 * 2f64.powf(eighths as f64 / 8.0)) as usize;
        let ptr = rec.alloc(size);
        for offset in (0..size).step_by(PAGE) {
            // SAFETY: offset < size, inside the fresh block.
            unsafe { ptr.add(offset).write_volatile(step as u8) };
        }
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
