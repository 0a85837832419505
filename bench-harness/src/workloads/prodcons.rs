//! prodcons: every free is remote.
//!
//! `threads` producer/consumer pairs. Each producer allocates blocks of 16..=256
//! bytes, writes its size into the block and passes it through a 1 024-slot
//! single-producer single-consumer ring to its consumer, which reads the size
//! and frees the block. The total number of blocks is fixed and split across
//! the pairs, so `threads = 4` runs 8 threads.

use std::sync::atomic::{AtomicPtr, Ordering};

use super::{Context, Params};
use crate::measure::Recorder;
use crate::rng::SplitMix64;

const TOTAL_BLOCKS: u64 = 2_000_000;
const RING: usize = 1_024;

/// A single-producer single-consumer ring; a null slot is empty.
struct Ring {
    slots: Vec<AtomicPtr<u8>>,
}

impl Ring {
    fn new() -> Self {
        Ring {
            slots: (0..RING)
                .map(|_| AtomicPtr::new(std::ptr::null_mut()))
                .collect(),
        }
    }
}

/// Spins briefly, then yields: with more threads than cores the peer must run.
#[inline]
fn backoff(spins: &mut u32) {
    *spins += 1;
    if *spins < 64 {
        std::hint::spin_loop();
    } else {
        std::thread::yield_now();
    }
}

fn produce(rec: &mut Recorder, ring: &Ring, blocks: u64, seed: u64) {
    let mut rng = SplitMix64::new(seed);
    for i in 0..blocks {
        let size = rng.range(16, 256) as usize;
        let ptr = rec.alloc(size);
        // SAFETY: the block has at least 16 bytes and is 16-aligned.
        unsafe { ptr.cast::<u64>().write(size as u64) };
        let slot = &ring.slots[i as usize % RING];
        let mut spins = 0;
        while !slot.load(Ordering::Acquire).is_null() {
            backoff(&mut spins);
        }
        slot.store(ptr, Ordering::Release);
    }
}

fn consume(rec: &mut Recorder, ring: &Ring, blocks: u64) {
    for i in 0..blocks {
        let slot = &ring.slots[i as usize % RING];
        let mut spins = 0;
        let ptr = loop {
            let ptr = slot.load(Ordering::Acquire);
            if !ptr.is_null() {
                break ptr;
            }
            backoff(&mut spins);
        };
        slot.store(std::ptr::null_mut(), Ordering::Release);
        // SAFETY: the producer wrote the block's size in its first 8 bytes and
        // handed the block over through the ring (Release/Acquire).
        let size = unsafe { ptr.cast::<u64>().read() } as usize;
        // SAFETY: the block is live, of `size` bytes, and now owned here.
        unsafe { rec.free(ptr, size) };
    }
}

pub(super) fn run(params: &Params, ctx: &mut Context) {
    let pairs = params.threads.max(1);
    let per_pair = (params.scaled(TOTAL_BLOCKS) / pairs as u64).max(1);
    let rings: Vec<Ring> = (0..pairs).map(|_| Ring::new()).collect();
    std::thread::scope(|scope| {
        let mut recorders = ctx.recorders.iter_mut();
        for (i, ring) in rings.iter().enumerate() {
            let (Some(producer), Some(consumer)) = (recorders.next(), recorders.next()) else {
                break;
            };
            let seed = params.seed ^ i as u64;
            scope.spawn(move || produce(producer, ring, per_pair, seed));
            scope.spawn(move || consume(consumer, ring, per_pair));
        }
    });
}
