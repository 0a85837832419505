//! A block handed over to a thread that has not allocated its class is not
//! reused by that thread: its free goes to the thread's outbox, and the
//! thread's own allocations of the class come from elsewhere (reused, the
//! block would put the two threads' objects on one cache line: passive
//! false sharing, cache-scratch 2T 3.9x libmimalloc). The blocks still go
//! back to the depot once the outbox holds a batch, so a consumer's frees
//! feed the producer.

use std::alloc::Layout;
use std::collections::HashSet;
use std::thread;

use heapkit_pool::{Fast, HeapAlloc, Pool};

const SIZE: usize = 48;

#[test]
fn a_block_handed_over_is_not_reused_by_the_thread_that_freed_it() {
    let pool = Pool::<Fast>::fast();
    let layout = Layout::from_size_align(SIZE, 16).unwrap();
    // The main thread's objects, a cache line's worth of neighbours each.
    let handed: Vec<usize> = (0..8).map(|_| pool.allocate(layout) as usize).collect();
    assert!(handed.iter().all(|&p| p != 0));
    let own = thread::spawn(move || {
        // This thread has not allocated SIZE's class: it frees the
        // handed-over objects first, then allocates its own.
        for &p in &handed {
            // SAFETY: live blocks of the pool, handed over, freed once.
            unsafe { pool.free(p as *mut u8) };
        }
        let own: Vec<usize> = (0..8).map(|_| pool.allocate(layout) as usize).collect();
        let handed: HashSet<usize> = handed.into_iter().collect();
        let reused: Vec<usize> = own.iter().copied().filter(|p| handed.contains(p)).collect();
        for &p in &own {
            // SAFETY: live blocks of this thread.
            unsafe { pool.free(p as *mut u8) };
        }
        reused
    })
    .join()
    .unwrap();
    assert!(
        own.is_empty(),
        "the freeing thread reused handed-over blocks: {own:x?}"
    );
}

#[test]
fn a_consumers_frees_reach_the_producer_through_the_depot() {
    let pool = Pool::<Fast>::fast();
    let layout = Layout::from_size_align(SIZE, 16).unwrap();
    // Enough blocks for several batches (a batch of 48-byte blocks is
    // 64 KiB / 48 = 128 at most).
    const N: usize = 4096;
    let made: Vec<usize> = (0..N).map(|_| pool.allocate(layout) as usize).collect();
    let made_set: HashSet<usize> = made.iter().copied().collect();
    thread::spawn(move || {
        for &p in &made {
            // SAFETY: live blocks handed over, each freed once.
            unsafe { pool.free(p as *mut u8) };
        }
    })
    .join()
    .unwrap();
    // The consumer exited (its outbox went to the depot too): the
    // producer's next allocations reuse its blocks rather than carving.
    let again: Vec<usize> = (0..N).map(|_| pool.allocate(layout) as usize).collect();
    let reused = again.iter().filter(|p| made_set.contains(p)).count();
    assert!(
        reused >= N * 9 / 10,
        "only {reused} of {N} blocks came back"
    );
    for p in again {
        // SAFETY: live blocks, freed once.
        unsafe { pool.free(p as *mut u8) };
    }
}
