//! false-sharing: the cache-scratch test (Berger et al., Hoard, 2000).
//!
//! The main thread allocates one small (8-byte) object per thread, back to
//! back, so they likely share a cache line, and hands object *i* to thread
//! *i*. Each thread frees its object (a remote free), then repeatedly allocates
//! an 8-byte object, writes it 32 times and frees it. An allocator that hands
//! the freed object (or its neighbours) back to the thread makes the threads
//! write the same cache line: *passive* false sharing, visible as time growing
//! with threads instead of staying flat. Total iterations are fixed and split
//! across the threads.

use super::{Context, Params};
use crate::measure::Recorder;

const OBJECT: usize = 8;
const TOTAL_ITERATIONS: u64 = 3_000_000;
const WRITES: u64 = 32;

/// An object handed from the main thread to a worker.
struct Handoff(*mut u8);
// SAFETY: the object is exclusively owned; the worker becomes its only user.
unsafe impl Send for Handoff {}

fn scratch(rec: &mut Recorder, handoff: Handoff, iterations: u64) {
    // SAFETY: the handed-off object is a live OBJECT-byte block.
    unsafe { rec.free(handoff.0, OBJECT) };
    for i in 0..iterations {
        let ptr = rec.alloc(OBJECT);
        for w in 0..WRITES {
            // SAFETY: ptr is a live block of OBJECT bytes; the index is < OBJECT.
            unsafe { ptr.add((w as usize) % OBJECT).write_volatile((i ^ w) as u8) };
        }
        // SAFETY: ptr is live with OBJECT bytes.
        unsafe { rec.free(ptr, OBJECT) };
    }
}

pub(super) fn run(params: &Params, ctx: &mut Context) {
    let threads = params.threads.max(1);
    let iterations = (params.scaled(TOTAL_ITERATIONS) / threads as u64).max(1);
    let objects: Vec<Handoff> = (0..threads)
        .map(|_| {
            let ptr = ctx.recorders[0].alloc(OBJECT);
            // SAFETY: fresh block of OBJECT bytes.
            unsafe { ptr.write_bytes(0, OBJECT) };
            Handoff(ptr)
        })
        .collect();
    std::thread::scope(|scope| {
        for (handoff, rec) in objects.into_iter().zip(ctx.recorders.iter_mut()) {
            scope.spawn(move || scratch(rec, handoff, iterations));
        }
    });
}
