//! larson: a server simulation (Larson & Krishnan, 1998).
//!
//! Each thread owns an array of 1 000 slots holding blocks of random sizes
//! (16..=1024 bytes). In each of 8 rounds a *new* set of threads is spawned;
//! each thread replaces random slots of its array (free the old block, allocate
//! a new one) and exits. Between rounds the arrays are rotated, so a round's
//! threads free blocks that other, now dead, threads allocated: remote frees
//! plus thread creation and exit, the pattern of a thread-per-request server.

use super::{touch, Context, Params};
use crate::measure::Recorder;
use crate::rng::SplitMix64;

const SLOTS: usize = 1_000;
const ROUNDS: u64 = 8;
const TOTAL_STEPS: u64 = 6_000_000;

/// A block handed between threads.
#[derive(Clone, Copy)]
struct Block(*mut u8, usize);
// SAFETY: a Block is an exclusively owned heap block; moving it to another
// thread moves that ownership (the allocator must support remote frees).
unsafe impl Send for Block {}

fn random_size(rng: &mut SplitMix64) -> usize {
    rng.range(16, 1024) as usize
}

fn replace_slots(rec: &mut Recorder, array: &mut [Block], steps: u64, seed: u64) {
    let mut rng = SplitMix64::new(seed);
    for step in 0..steps {
        let slot = &mut array[rng.below(SLOTS as u64) as usize];
        // SAFETY: every slot holds a live block of slot.1 bytes.
        unsafe { rec.free(slot.0, slot.1) };
        let size = random_size(&mut rng);
        let ptr = rec.alloc(size);
        touch(ptr, size, step as u8);
        *slot = Block(ptr, size);
    }
}

pub(super) fn run(params: &Params, ctx: &mut Context) {
    let threads = params.threads.max(1);
    let mut rng = SplitMix64::new(params.seed);
    let mut arrays: Vec<Vec<Block>> = (0..threads)
        .map(|_| {
            (0..SLOTS)
                .map(|_| {
                    let size = random_size(&mut rng);
                    let ptr = ctx.recorders[0].alloc(size);
                    touch(ptr, size, 0);
                    Block(ptr, size)
                })
                .collect()
        })
        .collect();
    let rounds = ROUNDS;
    let steps = (params.scaled(TOTAL_STEPS) / (rounds * threads as u64)).max(1);
    for round in 0..rounds {
        std::thread::scope(|scope| {
            for (i, (array, rec)) in arrays.iter_mut().zip(ctx.recorders.iter_mut()).enumerate() {
                let seed = params.seed ^ (round << 32) ^ i as u64;
                scope.spawn(move || replace_slots(rec, array, steps, seed));
            }
        });
        arrays.rotate_left(1);
        if round == rounds / 2 {
            let live = arrays.iter().flatten().map(|b| b.1 as u64).sum();
            ctx.checkpoint("mid-run", live);
        }
    }
    let rec = &mut ctx.recorders[0];
    for block in arrays.iter().flatten() {
        // SAFETY: every slot holds a live block of that size.
        unsafe { rec.free(block.0, block.1) };
    }
}
