//! Pages emptied by other threads' frees are reclaimed while their owner is
//! idle on its slow paths, even as it keeps freeing blocks of the same pages
//! on its fast path (the race `reclaim.rs` argues is safe).

use std::alloc::Layout;
use std::sync::mpsc;
use std::thread;
use std::time::Duration;

use heapkit_core::os::os_counters;
use heapkit_sizeclass::{check_invariants_of, Fast, Hardened, HeapAlloc, Policy, SizeClass};

/// Block sizes cycled through (64 B - 2 KiB: small pages).
fn size_of_block(i: usize) -> usize {
    64 + (i % 32) * 64
}

fn owner_frees_while_others_free_and_reclaim<P: Policy>(a: SizeClass<P>) {
    const N: usize = 24_000; // ~25 MB, half of it sent away
    let (to_freer, from_owner) = mpsc::channel::<Vec<usize>>();
    let (done_tx, done_rx) = mpsc::channel::<()>();
    let (owner_done_tx, owner_done_rx) = mpsc::channel::<()>();
    let freer = thread::spawn(move || {
        let blocks = from_owner.recv().unwrap();
        let mut freed = 0;
        for (i, &p) in blocks.iter().enumerate() {
            // The first third races the owner's own frees; the rest waits
            // until the owner has finished them, so that two of this
            // thread's looks (one every 4 MiB freed) see it idle however
            // the scheduler ran the race (on a loaded machine the owner's
            // frees could span every look, and nothing was reclaimed).
            if i == blocks.len() / 3 {
                owner_done_rx.recv().unwrap();
            }
            // SAFETY: live blocks of `a`, handed over; each written whole.
            unsafe {
                let p = p as *mut u8;
                assert_eq!(*p, (i % 251) as u8, "block corrupted before its free");
                a.free(p);
            }
            // Pauses, so that the owner is seen idle for a while between
            // two looks (one every 4 MiB freed).
            freed += size_of_block(2 * i);
            if freed >= 2 << 20 {
                freed = 0;
                thread::sleep(Duration::from_millis(2));
            }
        }
        // The pages retired above stay resident until the owner has been
        // idle for the purge delay (it may only be waiting for a CPU); then
        // any thread's decay sweep purges them, ours here (a few, as a
        // sweep skips a heap whose lock its owner holds at that moment).
        thread::sleep(
            Duration::from_millis(heapkit_core::options::DEFAULT_PURGE_DELAY_MS + 5)
                + Duration::from_nanos(2 * heapkit_core::os::CLOCK_TICK_MAX_NS),
        );
        for _ in 0..10 {
            a.collect();
            thread::sleep(Duration::from_millis(2));
        }
        done_tx.send(()).unwrap();
    });
    // Sent and kept blocks interleave, so most pages hold both.
    let mut sent = Vec::new();
    let mut kept = Vec::new();
    for i in 0..N {
        let size = size_of_block(i);
        let p = a.allocate(Layout::from_size_align(size, 8).unwrap());
        assert!(!p.is_null());
        // SAFETY: p is a fresh block of `size` bytes.
        unsafe { p.write_bytes(((i / 2) % 251) as u8, size) };
        if i % 2 == 0 {
            sent.push(p as usize);
        } else {
            kept.push((p as usize, size, ((i / 2) % 251) as u8));
        }
    }
    let before = os_counters();
    let reclaimed = heapkit_sizeclass::reclaimed_pages();
    // Free most of our half first (so pages are left holding only sent
    // blocks), then the rest on the fast path while the other thread frees
    // its half and reclaims.
    let (first, rest) = kept.split_at(kept.len() * 3 / 4);
    let check_and_free = |&(p, size, tag): &(usize, usize, u8)| {
        // SAFETY: our live blocks; each still holds what we wrote.
        unsafe {
            let s = std::slice::from_raw_parts(p as *const u8, size);
            assert!(s.iter().all(|&b| b == tag), "a kept block was overwritten");
            a.free(p as *mut u8);
        }
    };
    first.iter().for_each(check_and_free);
    to_freer.send(sent).unwrap();
    for (n, kept_block) in rest.iter().enumerate() {
        check_and_free(kept_block);
        if n % 1000 == 0 {
            thread::yield_now();
        }
    }
    owner_done_tx.send(()).unwrap();
    done_rx.recv().unwrap();
    freer.join().unwrap();
    assert!(
        os_counters().released_since(&before),
        "nothing went back to the OS"
    );
    assert!(
        heapkit_sizeclass::reclaimed_pages() > reclaimed,
        "the freeing thread reclaimed no page of the idle owner"
    );
    check_invariants_of::<P>().unwrap();
    // The heap works on: allocate and free a round again.
    let again: Vec<_> = (0..N)
        .map(|i| a.allocate(Layout::from_size_align(size_of_block(i), 8).unwrap()))
        .collect();
    check_invariants_of::<P>().unwrap();
    for p in again {
        assert!(!p.is_null());
        // SAFETY: live blocks of `a`.
        unsafe { a.free(p) };
    }
    check_invariants_of::<P>().unwrap();
}

#[test]
fn reclaim_races_the_owners_own_frees_default_mode() {
    for _ in 0..3 {
        thread::spawn(|| owner_frees_while_others_free_and_reclaim::<Fast>(SizeClass::fast()))
            .join()
            .unwrap();
    }
}

#[test]
fn reclaim_races_the_owners_own_frees_hardened_mode() {
    for _ in 0..3 {
        thread::spawn(|| {
            owner_frees_while_others_free_and_reclaim::<Hardened>(SizeClass::hardened())
        })
        .join()
        .unwrap();
    }
}
