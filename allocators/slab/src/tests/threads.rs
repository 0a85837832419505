//! Threads and processes: cross-thread frees, the memory of exited
//! threads, a child forked while other threads allocate.

use super::*;

/// Threads allocate, fill, and send every block to the next thread, which
/// verifies and frees it: every free is remote.
#[test]
fn cross_thread_frees_under_stress() {
    let _g = serial();
    let a = Slab::new();
    let base = settle(&a).in_use;
    const THREADS: usize = 4;
    const PER_THREAD: usize = 40_000;
    let (txs, rxs): (Vec<_>, Vec<_>) = (0..THREADS).map(|_| mpsc::channel::<Block>()).unzip();
    let handles: Vec<_> = rxs
        .into_iter()
        .enumerate()
        .map(|(i, rx)| {
            let tx = txs[(i + 1) % THREADS].clone();
            std::thread::spawn(move || {
                let a = Slab::new();
                let mut rng = Rng(i as u64 + 7);
                let mut received = 0;
                for n in 0..PER_THREAD {
                    let size = 1 + rng.below(if n % 64 == 0 { 20_000 } else { 512 }) as usize;
                    let layout = Layout::from_size_align(size, 8).unwrap();
                    let b = Block {
                        ptr: a.allocate(layout),
                        layout,
                        fill: (i * 31 + n) as u8,
                    };
                    assert!(!b.ptr.is_null());
                    fill(&b);
                    tx.send(b).unwrap();
                    while let Ok(b) = rx.try_recv() {
                        verify(&b);
                        // SAFETY: the sender gave up the live block.
                        unsafe { a.deallocate(b.ptr, b.layout) };
                        received += 1;
                    }
                }
                drop(tx);
                for b in rx {
                    verify(&b);
                    // SAFETY: as above.
                    unsafe { a.deallocate(b.ptr, b.layout) };
                    received += 1;
                }
                received
            })
        })
        .collect();
    drop(txs);
    let total: usize = handles.into_iter().map(|h| h.join().unwrap()).sum();
    assert_eq!(total, THREADS * PER_THREAD);
    // The workers exited: their magazines went to the depots.
    let c = settle(&a);
    assert_eq!(c.in_use, base, "objects lost or double-counted");
}

/// Short-lived threads leave their magazines behind; the memory must be
/// reused, so mapped bytes stay bounded over many rounds.
#[test]
fn memory_of_exited_threads_is_reused() {
    let _g = serial();
    let a = Slab::new();
    let round = || {
        let hs: Vec<_> = (0..4)
            .map(|t| {
                std::thread::spawn(move || {
                    let a = Slab::new();
                    let mut keep = Vec::with_capacity(3000);
                    for n in 0..3000usize {
                        let layout = Layout::from_size_align(16 + (n * 37 + t) % 2000, 8).unwrap();
                        let p = a.allocate(layout);
                        // SAFETY: p is live.
                        unsafe { p.write_bytes(1, layout.size()) };
                        keep.push((p, layout));
                    }
                    // Free all but a few; the survivors are freed by the
                    // main thread after this one is gone.
                    let survivors = keep.split_off(2990);
                    for (p, l) in keep {
                        // SAFETY: p is live with l.
                        unsafe { a.deallocate(p, l) };
                    }
                    survivors
                        .into_iter()
                        .map(|(p, l)| (p as usize, l))
                        .collect::<Vec<_>>()
                })
            })
            .collect();
        for h in hs {
            for (p, l) in h.join().unwrap() {
                // SAFETY: the exited thread left these live blocks.
                unsafe { a.deallocate(p as *mut u8, l) };
            }
        }
    };
    for _ in 0..5 {
        round();
    }
    let warm = os::os_counters().mapped_bytes;
    for _ in 0..60 {
        round();
    }
    let after = os::os_counters().mapped_bytes;
    assert!(
        after <= warm + (8 << 20),
        "mapped bytes grew from {warm} to {after} over 60 rounds of threads"
    );
    let c = settle(&a);
    assert!(
        c.in_use < 64,
        "objects of exited threads not returned: {c:?}"
    );
}

/// A child forked while other threads allocate must be able to allocate
/// and free, including blocks other (now absent) threads allocated.
#[test]
fn fork_child_allocates_and_frees_foreign_blocks() {
    let _g = serial();
    let a = Slab::new();
    let stop = std::sync::Arc::new(core::sync::atomic::AtomicBool::new(false));
    let (tx, rx) = mpsc::channel::<usize>();
    let workers: Vec<_> = (0..2)
        .map(|t| {
            let stop = stop.clone();
            let tx = tx.clone();
            std::thread::spawn(move || {
                let a = Slab::new();
                let layout = Layout::from_size_align(48 + t * 200, 8).unwrap();
                let keep = a.allocate(layout);
                // SAFETY: keep is live.
                unsafe { keep.write_bytes(0x77, layout.size()) };
                tx.send(keep as usize).unwrap();
                let mut n = 0usize;
                while !stop.load(core::sync::atomic::Ordering::Relaxed) {
                    let p = a.allocate(Layout::from_size_align(16 + n % 3000, 8).unwrap());
                    // SAFETY: p is live.
                    unsafe { a.free(p) };
                    n += 1;
                }
            })
        })
        .collect();
    let foreign: Vec<usize> = (0..2).map(|_| rx.recv().unwrap()).collect();
    for _ in 0..5 {
        // SAFETY: fork in a test; the child only calls async-signal-safe
        // code plus our allocator (which is fork-safe), then _exit.
        let pid = unsafe { libc::fork() };
        assert!(pid >= 0);
        if pid == 0 {
            let mut ok = true;
            let mut held = [core::ptr::null_mut::<u8>(); 512];
            for (i, h) in held.iter_mut().enumerate() {
                *h = a.allocate(Layout::from_size_align(8 + i * 40, 8).unwrap());
                ok &= !h.is_null();
            }
            for h in held {
                // SAFETY: h is live.
                unsafe { a.free(h) };
            }
            for &p in &foreign {
                // SAFETY: blocks allocated by threads absent in the child.
                unsafe {
                    ok &= *(p as *const u8) == 0x77;
                    a.free(p as *mut u8);
                }
            }
            ok &= a.check_invariants().is_ok();
            // SAFETY: leave the child without running the parent's exit code.
            unsafe { libc::_exit(if ok { 0 } else { 1 }) };
        }
        let mut status = 0;
        // SAFETY: pid is our child.
        unsafe { libc::waitpid(pid, &mut status, 0) };
        assert!(libc::WIFEXITED(status) && libc::WEXITSTATUS(status) == 0);
    }
    stop.store(true, core::sync::atomic::Ordering::Relaxed);
    for w in workers {
        w.join().unwrap();
    }
    for p in foreign {
        // SAFETY: the blocks are still live in the parent.
        unsafe { a.free(p as *mut u8) };
    }
    settle(&a);
}
