//! The counting test: several threads allocate, free and hand blocks to each
//! other at random, and every block is accounted for.
//!
//! - *Never handed out twice*: every allocation is inserted into a shared,
//!   sharded set of live addresses and must not be there yet; every free
//!   must remove it. Blocks are also filled with a per-allocation pattern and
//!   verified before they are freed, which catches overlapping blocks.
//! - *Never lost*: at the end every block has been freed, the threads have
//!   exited (their caches went to the depots), and `trim` must release every
//!   chunk: a chunk is released only if all of its blocks are back in the
//!   depots, so a single lost block would leave `chunk_bytes() > 0`. The
//!   counters must also balance.
//!
//! Workers also call `trim` now and then while the others run, so a chunk
//! released with a live or cached block would show up as corruption.
//!
//! This binary holds only this test so nothing else touches the pool.

mod common;

use core::alloc::Layout;
use std::collections::HashSet;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Mutex;

use common::{fill, verify, Rng};
use heapkit_core::HeapAlloc;
use heapkit_pool::Pool;

static POOL: Pool = Pool::new();

const THREADS: usize = 6;
const OPS: usize = 120_000;
const SHARDS: usize = 64;

struct Block {
    ptr: usize,
    layout: Layout,
    tag: u64,
}

struct Shared {
    live: Vec<Mutex<HashSet<usize>>>,
    mailboxes: Vec<Mutex<Vec<Block>>>,
    allocs: AtomicU64,
    frees: AtomicU64,
}

fn shard(addr: usize) -> usize {
    (addr >> 4).wrapping_mul(0x9E37_79B9) % SHARDS
}

/// Bytes of a block that are filled and verified (all of small blocks, the
/// ends of big ones, to keep the test fast).
fn checked(len: usize) -> [(usize, usize); 2] {
    if len <= 2048 {
        [(0, len), (0, 0)]
    } else {
        [(0, 256), (len - 256, 256)]
    }
}

fn alloc(shared: &Shared, rng: &mut Rng, tag: u64) -> Block {
    let layout = rng.layout();
    let ptr = if rng.next().is_multiple_of(8) {
        POOL.allocate_zeroed(layout)
    } else {
        POOL.allocate(layout)
    };
    assert!(!ptr.is_null());
    assert_eq!(ptr as usize % layout.align(), 0);
    let addr = ptr as usize;
    assert!(
        shared.live[shard(addr)].lock().unwrap().insert(addr),
        "block {addr:#x} handed out twice"
    );
    shared.allocs.fetch_add(1, Ordering::Relaxed);
    for (off, len) in checked(layout.size()) {
        // SAFETY: the range lies in the fresh block.
        unsafe { fill(ptr.add(off), len, tag ^ off as u64) };
    }
    Block {
        ptr: addr,
        layout,
        tag,
    }
}

fn free(shared: &Shared, rng: &mut Rng, b: Block) {
    let ptr = b.ptr as *mut u8;
    for (off, len) in checked(b.layout.size()) {
        // SAFETY: the range lies in the live block.
        unsafe { verify(ptr.add(off), len, b.tag ^ off as u64) };
    }
    assert!(
        shared.live[shard(b.ptr)].lock().unwrap().remove(&b.ptr),
        "block {:#x} freed but not live",
        b.ptr
    );
    shared.frees.fetch_add(1, Ordering::Relaxed);
    // SAFETY: the block is live; half the frees go without a layout.
    unsafe {
        if rng.next().is_multiple_of(2) {
            POOL.free(ptr);
        } else {
            POOL.deallocate(ptr, b.layout);
        }
    }
}

fn worker(shared: &Shared, id: usize) {
    let mut rng = Rng(0xC0FFEE + id as u64);
    let mut mine: Vec<Block> = Vec::new();
    for i in 0..OPS {
        let tag = ((id as u64) << 40) | i as u64;
        if i % 10_000 == 5_000 {
            // Trim while the other threads allocate and free: it must only
            // release chunks none of whose blocks is live or cached.
            POOL.trim();
        }
        match rng.next() % 16 {
            // Allocate more than we free, so the heap grows and shrinks.
            0..=6 => mine.push(alloc(shared, &mut rng, tag)),
            7..=11 if !mine.is_empty() => {
                let k = rng.next() as usize % mine.len();
                let b = mine.swap_remove(k);
                free(shared, &mut rng, b);
            }
            12..=13 if !mine.is_empty() => {
                // Hand a block to another thread: its free will be remote.
                let k = rng.next() as usize % mine.len();
                let to = rng.next() as usize % THREADS;
                shared.mailboxes[to]
                    .lock()
                    .unwrap()
                    .push(mine.swap_remove(k));
            }
            14 => {
                let got: Vec<Block> = std::mem::take(&mut *shared.mailboxes[id].lock().unwrap());
                mine.extend(got);
            }
            _ => {
                if mine.len() > 2000 {
                    for b in mine.drain(..1000) {
                        free(shared, &mut rng, b);
                    }
                }
            }
        }
    }
    for b in mine {
        free(shared, &mut rng, b);
    }
}

#[test]
fn every_block_is_counted_across_threads() {
    let shared = Shared {
        live: (0..SHARDS).map(|_| Mutex::new(HashSet::new())).collect(),
        mailboxes: (0..THREADS).map(|_| Mutex::new(Vec::new())).collect(),
        allocs: AtomicU64::new(0),
        frees: AtomicU64::new(0),
    };
    std::thread::scope(|s| {
        let handles: Vec<_> = (0..THREADS)
            .map(|id| {
                let shared = &shared;
                s.spawn(move || worker(shared, id))
            })
            .collect();
        // Join explicitly: pthread_join waits for the threads' exit hooks,
        // the end of the scope only for their closures.
        for h in handles {
            h.join().unwrap();
        }
    });
    // Blocks still in mailboxes were allocated by exited threads.
    let mut rng = Rng(1);
    for mb in &shared.mailboxes {
        for b in std::mem::take(&mut *mb.lock().unwrap()) {
            free(&shared, &mut rng, b);
        }
    }
    assert!(shared.live.iter().all(|s| s.lock().unwrap().is_empty()));
    let allocs = shared.allocs.load(Ordering::Relaxed);
    assert_eq!(allocs, shared.frees.load(Ordering::Relaxed));
    assert!(allocs > (THREADS * OPS / 3) as u64);

    let stats = POOL.stats();
    assert_eq!(stats.allocs, allocs, "{stats}");
    assert_eq!(stats.frees, allocs, "{stats}");
    assert_eq!(stats.live_bytes, 0, "{stats}");

    assert!(POOL.chunk_bytes() > 0);
    let released = POOL.trim();
    assert!(released > 0);
    assert_eq!(
        POOL.chunk_bytes(),
        0,
        "some chunk still has a block outside the depots: a block was lost"
    );
}
