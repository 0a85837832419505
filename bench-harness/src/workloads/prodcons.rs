//! prodcons: every free is remote.
//!
//! `threads` producer/consumer pairs. Each producer allocates blocks of 16..=256
//! bytes, writes its size into the block and passes it through a 1 024-slot
//! single-producer single-consumer ring to its consumer, which reads the size
//! and frees the block. The total number of blocks is fixed and split across
//! the pairs, so `threads = 4` runs 8 threads.
//!
//! Each thread is pinned to one of the CPUs the process may use, producer
//! and consumer of a pair to different ones (where there are two): left to
//! the scheduler, a pair on a 2-core machine ran either on one core, taking
//! turns through the ring's backoff (55-65 ms under every allocator), or
//! on both at once, paying a cache-line transfer per block (sizeclass and
//! mimalloc 250-300 ms, slab 120 ms), by a coin flip per run: the medians
//! of a few runs measured the flip. Pinned, every run measures what the
//! workload is for, frees from another core.

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

/// Pins the calling thread to the `index`-th CPU (modulo their number) of
/// those the process may run on; leaves it alone if that fails.
fn pin(index: usize) {
    // SAFETY: a zeroed cpu_set_t is a valid empty set; the calls read and
    // write only the set passed, and pid 0 names the calling thread.
    unsafe {
        let mut allowed: libc::cpu_set_t = std::mem::zeroed();
        if libc::sched_getaffinity(0, size_of::<libc::cpu_set_t>(), &mut allowed) != 0 {
            return;
        }
        let cpus: Vec<usize> = (0..libc::CPU_SETSIZE as usize)
            .filter(|&c| libc::CPU_ISSET(c, &allowed))
            .collect();
        if cpus.len() < 2 {
            return;
        }
        let mut one: libc::cpu_set_t = std::mem::zeroed();
        libc::CPU_SET(cpus[index % cpus.len()], &mut one);
        libc::sched_setaffinity(0, size_of::<libc::cpu_set_t>(), &one);
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
            scope.spawn(move || {
                pin(2 * i);
                produce(producer, ring, per_pair, seed)
            });
            scope.spawn(move || {
                pin(2 * i + 1);
                consume(consumer, ring, per_pair)
            });
        }
    });
}
