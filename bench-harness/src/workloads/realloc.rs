//! realloc: vectors growing by push.
//!
//! 256 vectors of `u64` grow one push at a time, round-robin, each towards its
//! own random target length (1..=32 768 elements, i.e. up to 256 KiB), with
//! capacity doubling from 4 through `realloc` exactly as `Vec` does. Interleaving
//! the vectors makes in-place growth depend on the allocator's placement.
//! Then all are freed and the next round starts.

use super::{Context, Params};
use crate::rng::SplitMix64;

const VECTORS: usize = 256;
const MAX_LEN: u64 = 32_768;
const ROUNDS: u64 = 6;

struct GrowingVec {
    ptr: *mut u64,
    len: usize,
    cap: usize,
    target: usize,
}

pub(super) fn run(params: &Params, ctx: &mut Context) {
    let mut rng = SplitMix64::new(params.seed);
    let mut vecs: Vec<GrowingVec> = Vec::with_capacity(VECTORS);
    let rounds = params.scaled(ROUNDS);
    for round in 0..rounds {
        let rec = &mut ctx.recorders[0];
        vecs.clear();
        for _ in 0..VECTORS {
            let target = rng.range(1, MAX_LEN) as usize;
            let ptr = rec.alloc(4 * 8).cast::<u64>();
            vecs.push(GrowingVec {
                ptr,
                len: 0,
                cap: 4,
                target,
            });
        }
        let mut growing = VECTORS;
        while growing > 0 {
            growing = 0;
            for v in vecs.iter_mut().filter(|v| v.len < v.target) {
                if v.len == v.cap {
                    // SAFETY: v.ptr is live with v.cap * 8 bytes.
                    v.ptr = unsafe { rec.realloc(v.ptr.cast(), v.cap * 8, v.cap * 16) }.cast();
                    v.cap *= 2;
                }
                // SAFETY: len < cap, so the slot is inside the block.
                unsafe { v.ptr.add(v.len).write(v.len as u64) };
                v.len += 1;
                growing += 1;
            }
        }
        if round == rounds / 2 {
            let live: u64 = vecs.iter().map(|v| v.cap as u64 * 8).sum();
            ctx.checkpoint("all-grown", live);
        }
        let rec = &mut ctx.recorders[0];
        for v in &vecs {
            // SAFETY: v.ptr is live with v.cap * 8 bytes.
            unsafe { rec.free(v.ptr.cast(), v.cap * 8) };
        }
    }
}
