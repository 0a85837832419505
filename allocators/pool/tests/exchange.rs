//! The global exchange ([`Depot`]) under contention: threads push and pop
//! batches of distinct blocks as fast as they can; afterwards every block
//! must be held exactly once (none lost, none duplicated) and every batch's
//! stored count must match its list.
//!
//! The depot is lock-based (see its docs), so it is ABA-free by
//! construction; this test is the model check that its batch links and
//! counts stay consistent under real concurrency.

use std::sync::Barrier;

use heapkit_pool::depot::{Depot, FreeBlock};

#[repr(C, align(16))]
struct Slot([usize; 2]);

const THREADS: usize = 4;
const PER_THREAD: usize = 4096;
const ROUNDS: usize = 50_000;

/// Builds a null-terminated list of the given blocks.
fn link(blocks: &[usize]) -> *mut FreeBlock {
    let mut head = core::ptr::null_mut::<FreeBlock>();
    for &b in blocks.iter().rev() {
        let block = b as *mut FreeBlock;
        // SAFETY: the block is an owned, 16-byte, 16-aligned slot.
        unsafe { (*block).next = head };
        head = block;
    }
    head
}

/// Collects a popped batch, checking its count.
fn collect(head: *mut FreeBlock, count: u32, into: &mut Vec<usize>) {
    let mut n = 0;
    let mut b = head;
    while !b.is_null() {
        into.push(b as usize);
        n += 1;
        // SAFETY: b is an owned block of the popped batch.
        b = unsafe { (*b).next };
    }
    assert_eq!(n, count, "batch count does not match its list");
}

#[test]
fn no_block_lost_or_duplicated_under_contention() {
    let slots: Vec<Slot> = (0..THREADS * PER_THREAD).map(|_| Slot([0; 2])).collect();
    let base = slots.as_ptr() as usize;
    let depot = Depot::new();
    let barrier = Barrier::new(THREADS);
    let held: Vec<Vec<usize>> = std::thread::scope(|s| {
        let handles: Vec<_> = (0..THREADS)
            .map(|t| {
                let (depot, barrier) = (&depot, &barrier);
                s.spawn(move || {
                    let mut mine: Vec<usize> = (0..PER_THREAD)
                        .map(|i| base + (t * PER_THREAD + i) * 16)
                        .collect();
                    let mut seed = t as u64 * 7919 + 1;
                    barrier.wait();
                    for _ in 0..ROUNDS {
                        seed ^= seed << 13;
                        seed ^= seed >> 7;
                        seed ^= seed << 17;
                        if seed.is_multiple_of(2) && !mine.is_empty() {
                            let n = (1 + (seed >> 8) as usize % 64).min(mine.len());
                            let batch: Vec<usize> = mine.split_off(mine.len() - n);
                            // SAFETY: the blocks are ours and given up.
                            unsafe { depot.push_batch(link(&batch), n as u32) };
                        } else {
                            let (head, count) = depot.pop_batch();
                            if !head.is_null() {
                                collect(head, count, &mut mine);
                            }
                        }
                    }
                    mine
                })
            })
            .collect();
        handles.into_iter().map(|h| h.join().unwrap()).collect()
    });
    let mut all: Vec<usize> = held.into_iter().flatten().collect();
    loop {
        let (head, count) = depot.pop_batch();
        if head.is_null() {
            break;
        }
        collect(head, count, &mut all);
    }
    assert_eq!(depot.batch_count(), 0);
    all.sort_unstable();
    let before = all.len();
    all.dedup();
    assert_eq!(all.len(), before, "a block was held twice");
    assert_eq!(all.len(), THREADS * PER_THREAD, "a block was lost");
    drop(slots);
}
