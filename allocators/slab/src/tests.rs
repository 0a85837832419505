//! Unit tests of the whole heap, driven through `HeapAlloc` (the test
//! binary's own global allocator is the system one). The heap is
//! process-wide, so tests that account for every object hold `SERIAL`.

use core::alloc::Layout;
use std::sync::{mpsc, Mutex, MutexGuard};
use std::vec::Vec;

use heapkit_core::os;

use super::*;
use crate::magazine::{Depot, Magazine};

static SERIAL: Mutex<()> = Mutex::new(());

fn serial() -> MutexGuard<'static, ()> {
    SERIAL.lock().unwrap_or_else(|e| e.into_inner())
}

/// SplitMix64.
struct Rng(u64);
impl Rng {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }
    fn below(&mut self, n: u64) -> u64 {
        self.next() % n
    }
}

#[derive(Clone, Copy)]
struct Block {
    ptr: *mut u8,
    layout: Layout,
    fill: u8,
}

// SAFETY: blocks are plain heap memory handed between test threads.
unsafe impl Send for Block {}

fn fill(b: &Block) {
    // SAFETY: b.ptr is live with b.layout.size() bytes.
    unsafe { b.ptr.write_bytes(b.fill, b.layout.size()) };
}

fn verify(b: &Block) {
    // SAFETY: b.ptr is live with b.layout.size() bytes.
    let bytes = unsafe { core::slice::from_raw_parts(b.ptr, b.layout.size()) };
    assert!(
        bytes.iter().all(|&x| x == b.fill),
        "block {:p} ({:?}) corrupted",
        b.ptr,
        b.layout
    );
}

fn random_layout(rng: &mut Rng) -> Layout {
    let size = match rng.below(20) {
        0 => rng.below(300 << 10) as usize,
        1..=3 => rng.below(16 << 10) as usize,
        _ => rng.below(1024) as usize,
    };
    let align = match rng.below(10) {
        0 => 1usize << rng.below(21),
        _ => 8,
    };
    Layout::from_size_align(size, align).unwrap()
}

fn allocate(a: &Slab, rng: &mut Rng, zeroed: bool) -> Block {
    let layout = random_layout(rng);
    let ptr = if zeroed {
        a.allocate_zeroed(layout)
    } else {
        a.allocate(layout)
    };
    assert!(!ptr.is_null());
    assert_eq!(ptr as usize % layout.align(), 0, "{layout:?}");
    // SAFETY: ptr is live.
    assert!(unsafe { a.usable_size(ptr) } >= layout.size());
    if zeroed {
        // SAFETY: ptr is live with layout.size() bytes.
        let bytes = unsafe { core::slice::from_raw_parts(ptr, layout.size()) };
        assert!(bytes.iter().all(|&x| x == 0), "zeroed block not zero");
    }
    let b = Block {
        ptr,
        layout,
        fill: rng.next() as u8,
    };
    fill(&b);
    b
}

/// Flushes the calling thread's magazines and the depots, so the slab
/// layer's in-use count equals the live objects.
fn settle<P: Policy>(a: &Slab<P>) -> Census {
    a.flush_thread_cache();
    a.trim();
    a.check_invariants().expect("invariants")
}

/// The cache `a` serves `l` from (in hardened mode, the hardened twin of
/// the class).
fn cache_of(a: &Slab, l: Layout) -> usize {
    let p = a.allocate(l);
    // SAFETY: p is a live object of `a`.
    unsafe {
        let c = Slab::<DefaultPolicy>::class_of_block(p).expect("a slab object");
        a.deallocate(p, l);
        c
    }
}

fn is_slab_block(b: &Block) -> bool {
    // SAFETY: the block is live.
    unsafe { Slab::<DefaultPolicy>::class_of_block(b.ptr) }.is_some()
}

#[test]
fn random_ops_keep_every_slab_count_exact() {
    let _g = serial();
    let a = Slab::new();
    let base = settle(&a).in_use;
    let mut rng = Rng(42);
    let mut live: Vec<Block> = Vec::new();
    for step in 0..30_000 {
        match rng.below(10) {
            0..=3 => live.push(allocate(&a, &mut rng, false)),
            4 => live.push(allocate(&a, &mut rng, true)),
            5..=7 if !live.is_empty() => {
                let b = live.swap_remove(rng.below(live.len() as u64) as usize);
                verify(&b);
                // SAFETY: b is live with its layout.
                unsafe { a.deallocate(b.ptr, b.layout) };
            }
            8 if !live.is_empty() => {
                let i = rng.below(live.len() as u64) as usize;
                let b = live[i];
                verify(&b);
                let new_size = random_layout(&mut rng).size();
                // SAFETY: b is live with its layout.
                let q = unsafe { a.reallocate(b.ptr, b.layout, new_size) };
                assert!(!q.is_null());
                assert_eq!(q as usize % b.layout.align(), 0);
                let kept = b.layout.size().min(new_size);
                // SAFETY: q is live with at least new_size bytes.
                let bytes = unsafe { core::slice::from_raw_parts(q, kept) };
                assert!(bytes.iter().all(|&x| x == b.fill), "realloc lost contents");
                let nb = Block {
                    ptr: q,
                    layout: Layout::from_size_align(new_size, b.layout.align()).unwrap(),
                    fill: b.fill.wrapping_add(1),
                };
                fill(&nb);
                live[i] = nb;
            }
            _ => {
                // SAFETY: every block is live.
                let c = a.check_invariants().expect("invariants");
                assert!(c.in_use >= live.iter().filter(|b| is_slab_block(b)).count());
            }
        }
        if step % 5_000 == 0 {
            let c = settle(&a);
            let slab_blocks = live.iter().filter(|b| is_slab_block(b)).count();
            assert_eq!(c.in_use, base + slab_blocks, "in-use count drifted");
            assert_eq!(c.in_depots, 0);
        }
    }
    for b in live.drain(..) {
        verify(&b);
        // SAFETY: b is live.
        unsafe { a.free(b.ptr) };
    }
    let c = settle(&a);
    assert_eq!(c.in_use, base);
    assert_eq!(c.empty_slabs, 0, "trim left empty slabs resident");
}

#[test]
fn every_alignment_up_to_a_mebibyte() {
    let _g = serial();
    let a = Slab::new();
    for shift in 0..=21 {
        let align = 1usize << shift;
        for size in [0, 1, align / 2, align, align + 1, 3 * align] {
            let layout = Layout::from_size_align(size, align).unwrap();
            let p = a.allocate(layout);
            assert!(!p.is_null());
            assert_eq!(p as usize % align, 0, "{size}/{align}");
            // SAFETY: p is live with layout.
            unsafe {
                assert!(a.usable_size(p) >= size);
                p.write_bytes(0x5A, size);
                a.deallocate(p, layout);
            }
        }
    }
    settle(&a);
}

#[test]
fn zeroed_blocks_are_zero_after_reuse() {
    let _g = serial();
    let a = Slab::new();
    for size in [24, 4096, 12_000, 100_000] {
        let layout = Layout::from_size_align(size, 16).unwrap();
        let mut ps = Vec::new();
        for _ in 0..40 {
            let p = a.allocate(layout);
            // SAFETY: p is live with size bytes.
            unsafe { p.write_bytes(0xFF, size) };
            ps.push(p);
        }
        for p in ps.drain(..) {
            // SAFETY: p is live.
            unsafe { a.free(p) };
        }
        for _ in 0..40 {
            let p = a.allocate_zeroed(layout);
            // SAFETY: p is live with size bytes.
            let bytes = unsafe { core::slice::from_raw_parts(p, size) };
            assert!(bytes.iter().all(|&x| x == 0));
            ps.push(p);
        }
        for p in ps.drain(..) {
            // SAFETY: p is live.
            unsafe { a.free(p) };
        }
    }
    settle(&a);
}

#[test]
fn realloc_stays_in_place_within_the_class() {
    let _g = serial();
    let a = Slab::fast();
    let layout = Layout::from_size_align(1000, 8).unwrap();
    let p = a.allocate(layout);
    // SAFETY: p is live; each realloc result is live with its new size.
    unsafe {
        let cs = a.usable_size(p);
        assert_eq!(cs, 1024);
        assert_eq!(a.reallocate(p, layout, 1024), p);
        let q = a.reallocate(p, Layout::from_size_align(1024, 8).unwrap(), 2000);
        assert_ne!(q, p);
        let r = a.reallocate(q, Layout::from_size_align(2000, 8).unwrap(), 1 << 20);
        let s = a.reallocate(r, Layout::from_size_align(1 << 20, 8).unwrap(), 3 << 20);
        assert!(a.usable_size(s) >= 3 << 20);
        let t = a.reallocate(s, Layout::from_size_align(3 << 20, 8).unwrap(), 100);
        assert_eq!(a.usable_size(t), 112);
        a.free(t);
    }
    settle(&a);
}

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

/// The depot is lock-based; hammer its protocol from several threads with
/// tagged magazines and check that none is lost or duplicated.
#[test]
fn depot_protocol_conserves_magazines_under_contention() {
    const THREADS: usize = 4;
    const MAGS: usize = 32;
    static DEPOT: Depot = Depot::new();
    let handles: Vec<_> = (0..THREADS)
        .map(|t| {
            std::thread::spawn(move || {
                let mut mine: Vec<*mut Magazine> = (0..MAGS)
                    .map(|_| {
                        std::boxed::Box::into_raw(std::boxed::Box::new(Magazine {
                            next: core::ptr::null_mut(),
                            rounds: 0,
                            objs: [core::ptr::null_mut(); MAGAZINE_SLOTS],
                        }))
                    })
                    .collect();
                let mut drained = Vec::new();
                let mut rng = Rng(t as u64);
                for _ in 0..20_000 {
                    match rng.below(4) {
                        0 => {
                            if let Some(m) = mine.pop() {
                                // SAFETY: m is a live test magazine we own.
                                unsafe { (*m).rounds = 1 };
                                let (kept, s) = DEPOT.put_full(m, t + 1);
                                if !kept {
                                    drained.push(m);
                                }
                                collect(s, &mut drained);
                            }
                        }
                        1 => {
                            let e = mine.pop().unwrap_or(core::ptr::null_mut());
                            let (f, s) = DEPOT.take_full(e, (t + 1) % THREADS + 1);
                            if f.is_null() {
                                if !e.is_null() {
                                    mine.push(e);
                                }
                            } else {
                                mine.push(f);
                            }
                            collect(s, &mut drained);
                        }
                        2 => {
                            let m = DEPOT.take_empty();
                            if !m.is_null() {
                                mine.push(m);
                            }
                        }
                        _ => {
                            if let Some(m) = mine.pop() {
                                let back = DEPOT.put_empty(m);
                                if !back.is_null() {
                                    drained.push(back);
                                }
                            }
                        }
                    }
                    mine.append(&mut drained);
                }
                mine.into_iter().map(|m| m as usize).collect::<Vec<_>>()
            })
        })
        .collect();
    let mut all: Vec<usize> = handles
        .into_iter()
        .flat_map(|h| h.join().unwrap())
        .collect();
    let mut rest = Vec::new();
    collect(DEPOT.take_all(), &mut rest);
    all.extend(rest.into_iter().map(|m| m as usize));
    all.sort_unstable();
    let n = all.len();
    all.dedup();
    assert_eq!(all.len(), n, "a magazine is in two places");
    assert_eq!(n, THREADS * MAGS, "a magazine was lost");
}

fn collect(s: magazine::Surplus, out: &mut Vec<*mut Magazine>) {
    for mut m in [s.full, s.empty] {
        while !m.is_null() {
            out.push(m);
            // SAFETY: surplus magazines are live and ours.
            m = unsafe { (*m).next };
        }
    }
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

#[test]
fn stats_count_operations() {
    let _g = serial();
    let a = Slab::new();
    // The snapshot is exact for this thread, but a thread of an earlier
    // test may still be exiting and flush its pending counts between two
    // snapshots: that happens once, so one of a few attempts is undisturbed.
    let mut last = std::string::String::new();
    for _ in 0..5 {
        let before = a.stats();
        let layout = Layout::from_size_align(100, 8).unwrap();
        let p = a.allocate(layout);
        let big = a.allocate(Layout::from_size_align(1 << 20, 8).unwrap());
        let mid = a.stats();
        // SAFETY: both are live.
        unsafe {
            a.free(p);
            a.free(big);
        }
        let after = a.stats();
        let exact = mid.allocs - before.allocs == 2
            && mid.live_bytes >= before.live_bytes + 112 + (1 << 20)
            && after.frees - before.frees == 2
            && after.live_bytes == before.live_bytes;
        if exact {
            return;
        }
        last = std::format!("before {before:?}\nmid {mid:?}\nafter {after:?}");
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
    panic!("counts never matched:\n{last}");
}

/// A thread that allocates two classes and frees them away, with no flush
/// or trim, leaves no object in its magazines (the wind-down of the free
/// path): every one is back in its slab.
#[test]
fn freeing_everything_winds_the_magazines_down() {
    let _g = serial();
    let a = Slab::new();
    let base = settle(&a).in_use;
    let held = std::thread::spawn(move || {
        let a = Slab::new();
        let layouts = [
            Layout::from_size_align(48, 8).unwrap(),
            Layout::from_size_align(200, 8).unwrap(),
        ];
        let mut live = Vec::with_capacity(20_000);
        for n in 0..20_000usize {
            let l = layouts[n % 2];
            let p = a.allocate(l);
            assert!(!p.is_null());
            live.push((p, l));
        }
        for (p, l) in live {
            // SAFETY: p is live with l.
            unsafe { a.deallocate(p, l) };
        }
        let c = a.check_invariants().expect("invariants");
        c.in_use - base
    })
    .join()
    .unwrap();
    assert!(
        held == 0,
        "{held} objects still held after freeing everything"
    );
}

/// A thread that frees an object another thread allocated, before it ever
/// allocated that size itself, does not get that object back from its
/// next allocations (it sits in the outbox): both threads would write its
/// cache line otherwise (the hand-off of the cache-scratch test). Once a
/// magazine's worth of such frees filled the outbox, it goes on to the
/// depot and the freer's frees use magazines again; every count stays
/// exact.
#[test]
fn a_handed_over_object_is_not_the_receivers_next_one() {
    let _g = serial();
    let a = Slab::new();
    let l = Layout::from_size_align(24, 8).unwrap();
    let c = cache_of(&a, l);
    let cap = magazine::capacity_of_at(c, magazine::MagazineSize::Small);
    let l2 = Layout::from_size_align(200, 8).unwrap();
    let c2 = cache_of(&a, l2);
    let base = settle(&a).in_use;
    // Back to back from this thread's magazine: neighbours.
    let handed: Vec<usize> = (0..cap + 1).map(|_| a.allocate(l) as usize).collect();
    let held = std::thread::spawn(move || {
        let a = Slab::new();
        let first = handed[0] as *mut u8;
        // SAFETY: a live object of `a`, handed over.
        unsafe { a.deallocate(first, l) };
        for _ in 0..100 {
            let p = a.allocate(l);
            assert_ne!(p, first, "the handed-over object came straight back");
            // SAFETY: p is live with l.
            unsafe { a.deallocate(p, l) };
        }
        // A pure freer of another class (this thread never allocates it):
        // the outbox fills once and goes on; later frees take the fast path.
        let cap2 = magazine::capacity_of_at(c2, magazine::MagazineSize::Small);
        let others: Vec<usize> = std::thread::spawn(move || {
            let a = Slab::new();
            let ps = (0..2 * cap2).map(|_| a.allocate(l2) as usize).collect();
            // Flushed before the join returns (an exit hook may run after).
            a.flush_thread_cache();
            ps
        })
        .join()
        .unwrap();
        for &p in &others {
            // SAFETY: live objects of `a`, handed over.
            unsafe { a.deallocate(p as *mut u8, l2) };
        }
        let slot = thread::bound().unwrap().slot(c2);
        assert!(slot.outbox_sent.get() && slot.outbox.get().is_null());
        // SAFETY: top and base point into this thread's loaded magazine
        // (slot invariant), top at or past base.
        let rounds = unsafe { slot.top.get().offset_from(slot.base.get()) } as usize;
        assert_eq!(
            rounds, cap2,
            "frees after the outbox went on should fill a magazine"
        );
        for &p in &handed[1..] {
            // SAFETY: live objects of `a`, handed over.
            unsafe { a.deallocate(p as *mut u8, l) };
        }
        a.flush_thread_cache();
        a.check_invariants().expect("invariants").in_use
    })
    .join()
    .unwrap();
    let after = settle(&a);
    assert_eq!(
        after.in_use, base,
        "objects lost: {held} in use at the thread's end"
    );
}

/// A thread that keeps a few objects of a class live and allocates and
/// frees a batch of it again and again keeps the batch in its magazines
/// (from the second round, once its magazines grew):
/// the free path's wind-down (for a class being freed away) leaves a class
/// the thread allocated since its last free slow path alone. (Larson's
/// threads hold a few dozen objects of each of many classes; winding them
/// down sent every magazineful to the slabs and took it back, a third of
/// the run.)
#[test]
fn a_batch_freed_and_allocated_again_stays_in_the_magazines() {
    let _g = serial();
    let a = Slab::new();
    let l = Layout::from_size_align(256, 8).unwrap();
    let c = cache_of(&a, l);
    let cap = magazine::capacity_of_at(c, magazine::MagazineSize::Small);
    let batch = cap + cap / 2;
    let base = settle(&a).in_use;
    std::thread::spawn(move || {
        let a = Slab::new();
        let kept: Vec<usize> = (0..16).map(|_| a.allocate(l) as usize).collect();
        for round in 0..20 {
            let ps: Vec<usize> = (0..batch).map(|_| a.allocate(l) as usize).collect();
            for &p in &ps {
                // SAFETY: live objects of `a`.
                unsafe { a.deallocate(p as *mut u8, l) };
            }
            let out = heap::cache(c).in_use() - base;
            // The first round's frees may wind the class down (the thread
            // has not shown steady use yet: its magazines are small).
            assert!(
                round == 0 || out >= kept.len() + batch,
                "round {round}: the batch went back to the slabs ({out} objects out)"
            );
        }
        for &p in &kept {
            // SAFETY: live objects of `a`.
            unsafe { a.deallocate(p as *mut u8, l) };
        }
        a.flush_thread_cache();
    })
    .join()
    .unwrap();
    assert_eq!(settle(&a).in_use, base);
}

/// A thread's magazines of a class start small, grow once it frees the
/// class and then allocates it again (steady use), and shrink again when
/// it frees the class away; a thread that builds a structure and then
/// frees it never holds more than two small magazines' worth.
#[test]
fn magazines_grow_in_steady_use_and_shrink_when_a_class_is_freed_away() {
    use magazine::MagazineSize::{Grown, Small};
    let _g = serial();
    let a = Slab::new();
    let l = Layout::from_size_align(512, 8).unwrap();
    let c = cache_of(&a, l);
    let small = magazine::capacity_of_at(c, Small);
    assert!(magazine::capacity_of_at(c, Grown) > small);
    let base = settle(&a).in_use;
    std::thread::spawn(move || {
        let a = Slab::new();
        let held = || thread::bound().unwrap().slot(c).held();
        for build in 0..3 {
            let ps: Vec<usize> = (0..300).map(|_| a.allocate(l) as usize).collect();
            let slot = thread::bound().unwrap().slot(c);
            let expect = if build == 0 { Small } else { Grown };
            assert_eq!(slot.size.get(), expect, "build {build}");
            for &p in &ps {
                // SAFETY: live objects of `a`.
                unsafe { a.deallocate(p as *mut u8, l) };
            }
            assert_eq!(slot.size.get(), Small, "after freeing build {build}");
            assert!(
                held() <= 2 * small,
                "build {build}: {} objects kept after freeing them all",
                held()
            );
        }
        a.flush_thread_cache();
    })
    .join()
    .unwrap();
    assert_eq!(settle(&a).in_use, base);
}

/// A thread that frees a class away winds its magazines down even while
/// other threads still hold full magazines of the class (workers that
/// finished but whose exit has not flushed them yet): what they hold is
/// published at their slow paths and not mistaken for live objects.
#[test]
fn freeing_away_is_seen_past_other_threads_magazines() {
    let _g = serial();
    let a = Slab::new();
    let l = Layout::from_size_align(64, 8).unwrap();
    let c = cache_of(&a, l);
    // What the workers hold when this thread frees depends on how their
    // own wind-downs interleave (and on tests outside the serial lock that
    // use the class meanwhile): 448 to 512 objects on a quiet machine;
    // with two workers, 128 to 256, and 63 once under CI's load. The
    // scenario is set up again until they hold at least 256, so the check
    // below always tests what it is about.
    let mut attempts = 0;
    let (theirs, kept) = loop {
        attempts += 1;
        let (theirs, kept) = free_away_past_workers(&a, l, c);
        settle(&a);
        if theirs >= 256 || attempts == 8 {
            break (theirs, kept);
        }
    };
    assert!(
        theirs >= 256,
        "the workers held only {theirs} objects in each of {attempts} attempts"
    );
    // Without the published counts this thread counted the workers'
    // objects as live and kept a sixteenth of them (28 of 448-512 held by
    // four workers; with two workers, 6-14, too close to tell apart); with
    // them, the wind-down's tail: 1 object.
    assert!(
        kept < 12,
        "{kept} objects kept in this thread's magazines after freeing the class away \
         (the workers held {theirs})"
    );
}

/// One round of `freeing_away_is_seen_past_other_threads_magazines`: four
/// workers build and free 200 objects of class `c` three times and wait
/// with their magazines full while this thread frees the 2000 it holds.
/// Returns what the workers held and what this thread kept.
fn free_away_past_workers(a: &Slab, l: Layout, c: usize) -> (usize, usize) {
    const WORKERS: usize = 4;
    let mine: Vec<usize> = (0..2000).map(|_| a.allocate(l) as usize).collect();
    let (done_tx, done_rx) = mpsc::channel::<()>();
    let (go_tx, go_rx) = mpsc::channel::<()>();
    let go_rx = std::sync::Arc::new(Mutex::new(go_rx));
    let workers: Vec<_> = (0..WORKERS)
        .map(|_| {
            let done_tx = done_tx.clone();
            let go_rx = go_rx.clone();
            std::thread::spawn(move || {
                let a = Slab::new();
                for _ in 0..3 {
                    let ps: Vec<usize> = (0..200).map(|_| a.allocate(l) as usize).collect();
                    for &p in &ps {
                        // SAFETY: live objects of `a`.
                        unsafe { a.deallocate(p as *mut u8, l) };
                    }
                }
                let held = thread::bound().unwrap().slot(c).held();
                done_tx.send(()).unwrap();
                let _ = go_rx.lock().unwrap().recv();
                a.flush_thread_cache();
                held
            })
        })
        .collect();
    for _ in 0..WORKERS {
        done_rx.recv().unwrap();
    }
    for &p in &mine {
        // SAFETY: live objects of `a`.
        unsafe { a.deallocate(p as *mut u8, l) };
    }
    let kept = thread::bound().unwrap().slot(c).held();
    drop(go_tx);
    let theirs: usize = workers.into_iter().map(|w| w.join().unwrap()).sum();
    (theirs, kept)
}

/// A thread that frees a class away gives its magazines of the class back
/// (to the depot, whose idle empties the purger frees): two empty
/// magazines per class, kept by a thread that then slept, pinned the
/// magazine cache's slabs. Its later frees of the class go straight home,
/// and allocating the class again loads a magazine again.
#[test]
fn freeing_a_class_away_gives_its_magazines_back() {
    let _g = serial();
    let a = Slab::new();
    let l = Layout::from_size_align(64, 8).unwrap();
    let c = cache_of(&a, l);
    std::thread::spawn(move || {
        let a = Slab::new();
        let ps: Vec<usize> = (0..2000).map(|_| a.allocate(l) as usize).collect();
        let slot = thread::bound().unwrap().slot(c);
        assert!(!slot.base.get().is_null(), "allocating loads a magazine");
        for &p in &ps {
            // SAFETY: live objects of `a`.
            unsafe { a.deallocate(p as *mut u8, l) };
        }
        assert!(
            slot.base.get().is_null() && slot.prev.get().is_null(),
            "magazines kept after freeing the class away"
        );
        assert_eq!(slot.held(), 0);
        // Frees of the class now go home one by one, with no magazine.
        let more: Vec<usize> = (0..3).map(|_| a.allocate(l) as usize).collect();
        assert!(
            !slot.base.get().is_null(),
            "allocating loads a magazine again"
        );
        for &p in &more {
            // SAFETY: live objects of `a`.
            unsafe { a.deallocate(p as *mut u8, l) };
        }
        let p = a.allocate(l);
        assert!(!p.is_null());
        // SAFETY: a live object of `a`.
        unsafe { a.deallocate(p, l) };
        a.flush_thread_cache();
    })
    .join()
    .unwrap();
    settle(&a);
}

/// The background purger's round gives back what an idle allocator holds:
/// full magazines kept in a depot for a thread that asked for them go
/// home and every empty slab is purged, once a whole round passed without
/// a slow path.
#[test]
fn an_idle_round_empties_the_depots_and_the_empty_slabs() {
    let _g = serial();
    let a = Slab::new();
    let c = heapkit_core::size_class::class_for(Layout::from_size_align(64, 8).unwrap()).unwrap();
    let depot = heap::depot(c);
    let cap = magazine::capacity_of_at(c, magazine::MagazineSize::Grown);
    // A thread asks the depot for full magazines four times (its demand)...
    for _ in 0..4 {
        let (full, surplus) = depot.take_full(core::ptr::null_mut(), 0x1000);
        // SAFETY: what the depot handed out is ours now.
        unsafe {
            heap::settle(c, surplus);
            if !full.is_null() {
                heap::drain(c, full);
                heap::retire_empty(c, full);
            }
        }
    }
    // ...and another fills two, which the depot keeps for it.
    for _ in 0..2 {
        let m = heap::new_magazine();
        assert!(!m.is_null());
        // SAFETY: m is a fresh magazine with room for cap objects.
        unsafe {
            let n = heap::cache(c).fill(c, core::ptr::addr_of_mut!((*m).objs).cast(), cap, None);
            assert_eq!(n, cap);
            (*m).rounds = n;
            let (kept, surplus) = depot.put_full(m, 0x2000);
            heap::settle(c, surplus);
            assert!(kept, "the depot refused a magazine it was asked for");
        }
    }
    let before = a.check_invariants().expect("invariants");
    assert!(before.in_depots >= 2 * cap, "{before:?}");
    // The first round may find the allocator busy (a slow path just ran);
    // another test's slow path may make a later one busy too.
    let mut after = before;
    for _ in 0..10 {
        purger::round();
        after = a.check_invariants().expect("invariants");
        if after.in_depots == 0 && after.empty_slabs == 0 {
            break;
        }
    }
    assert_eq!(
        (after.in_depots, after.empty_slabs),
        (0, 0),
        "before {before:?}, after {after:?}"
    );
    // The depots' magazines themselves are freed too (not kept as empties).
    assert!(
        after.magazines + 2 <= before.magazines,
        "the depot kept its magazines: before {before:?}, after {after:?}"
    );
}

/// Hardened mode: objects leave and come back through magazines, the depot
/// and the slabs with their seal; a free object's slab link is encoded
/// (not a plain address), the invariants walk (which decodes every link and
/// checks every mark) holds, the canary sits after the requested size,
/// and the two modes never share a segment.
#[test]
fn hardened_objects_travel_sealed_through_the_slabs() {
    let _g = serial();
    let h = Slab::hardened();
    let f = Slab::fast();
    let layout = Layout::from_size_align(100, 8).unwrap();
    let mut blocks = Vec::new();
    for i in 0..3000usize {
        let b = Block {
            ptr: h.allocate(layout),
            layout,
            fill: i as u8,
        };
        assert!(!b.ptr.is_null());
        fill(&b);
        // SAFETY: b.ptr is a live block of h.
        assert_eq!(unsafe { h.usable_size(b.ptr) }, 100, "the requested size");
        blocks.push(b);
    }
    let plain = f.allocate(layout);
    let tag = |p: *mut u8| {
        // SAFETY: p is a live block, so its segment's tag is mapped.
        unsafe {
            segment_of(p)
                .cast::<heapkit_core::segment::SegmentTag>()
                .read()
        }
    };
    assert_eq!(
        tag(blocks[0].ptr),
        heapkit_core::segment::SegmentTag::SLAB_HARDENED
    );
    assert_eq!(tag(plain), heapkit_core::segment::SegmentTag::SLAB);
    // SAFETY: plain is a live block of f.
    unsafe { f.free(plain) };
    // Every eighth object stays live, so its slab stays (with the freed
    // objects on its free list).
    let kept: Vec<Block> = blocks.iter().step_by(8).copied().collect();
    let freed: Vec<Block> = (0..blocks.len())
        .filter(|i| i % 8 != 0)
        .map(|i| blocks[i])
        .collect();
    for b in &freed {
        verify(b);
        // SAFETY: live blocks of h, each freed once.
        unsafe { h.free(b.ptr) };
    }
    // Every freed object goes home to its slab: its first word is a link.
    settle(&h);
    let mut plain_links = 0;
    for b in &freed {
        // SAFETY: the slabs of a settled cache stay mapped while they hold
        // any object (the first word of a free object is its link).
        let word = unsafe { b.ptr.cast::<usize>().read() };
        let into_slab = (word ^ b.ptr as usize) < segment::CHUNK * 8;
        if word == 0 || into_slab {
            plain_links += 1;
        }
    }
    assert!(
        plain_links < freed.len() / 4,
        "{plain_links} of {} free objects hold a plain link",
        freed.len()
    );
    for b in &kept {
        verify(b);
        // SAFETY: live blocks of h, each freed once.
        unsafe { h.free(b.ptr) };
    }
    let mut again = Vec::new();
    for i in 0..3000usize {
        let b = Block {
            ptr: h.allocate(layout),
            layout,
            fill: !(i as u8),
        };
        fill(&b);
        again.push(b);
    }
    for b in &again {
        verify(b);
        // SAFETY: the canary follows the 100 requested bytes.
        let canary = unsafe { core::slice::from_raw_parts(b.ptr.add(100), 4) };
        assert!(
            canary.iter().any(|&x| x != b.fill),
            "canary after the request"
        );
        // SAFETY: live blocks of h, each freed once.
        unsafe { h.free(b.ptr) };
    }
    settle(&h);
}

/// A hardened segment ends with an inaccessible guard; a default one does
/// not.
#[test]
fn hardened_segments_end_with_a_guard() {
    let _g = serial();
    let layout = Layout::from_size_align(64, 8).unwrap();
    let h = Slab::hardened();
    let f = Slab::fast();
    let (p, q) = (h.allocate(layout), f.allocate(layout));
    let maps = std::fs::read_to_string("/proc/self/maps").unwrap();
    let protection_at = |addr: usize| {
        maps.lines()
            .find_map(|l| {
                let (range, rest) = l.split_once(' ')?;
                let (a, b) = range.split_once('-')?;
                let (a, b) = (
                    usize::from_str_radix(a, 16).ok()?,
                    usize::from_str_radix(b, 16).ok()?,
                );
                (a <= addr && addr < b).then(|| std::string::String::from(&rest[..4]))
            })
            .unwrap_or_default()
    };
    let last_byte = |p: *mut u8| segment_of(p) as usize + heapkit_core::segment::SEGMENT_ALIGN - 1;
    assert_eq!(
        protection_at(last_byte(p)),
        "---p",
        "hardened segment's end"
    );
    assert_eq!(protection_at(last_byte(q)), "rw-p", "default segment's end");
    // SAFETY: live blocks, freed once each.
    unsafe {
        h.free(p);
        f.free(q);
    }
    // Leave no magazine for this thread's exit to hand to a depot while
    // the next test (which counts every object) runs.
    settle(&f);
}

/// A cache whose every slab is freed and built again at once, round after
/// round, keeps its empty slabs once it is seen doing so (a new slab
/// needed right after empty ones were released), so the rounds stop
/// faulting them in again; `malloc_trim`'s release still gives them all
/// back. Before, it kept a quarter of the working slabs (one, once all
/// were freed) and every round faulted all 2,048 pages in again.
#[test]
fn a_cache_that_frees_and_rebuilds_its_slabs_keeps_them() {
    let _g = serial();
    const SIZE: usize = 16 << 10;
    const OBJECTS: usize = 512;
    let c =
        heapkit_core::size_class::class_for(Layout::from_size_align(SIZE, 16).unwrap()).unwrap();
    let cache = heap::cache(c);
    cache.release_empty(true);
    let mut objs = std::vec![core::ptr::null_mut::<u8>(); OBJECTS];
    let mut faults = Vec::new();
    for _ in 0..5 {
        let before = os::thread_minor_faults();
        // SAFETY: objs has room for OBJECTS pointers.
        let n = unsafe { cache.fill(c, objs.as_mut_ptr(), OBJECTS, None) };
        assert_eq!(n, OBJECTS);
        for &p in &objs {
            // SAFETY: an object of SIZE bytes handed to us: one byte per
            // OS page written.
            unsafe {
                for off in (0..SIZE).step_by(4096) {
                    p.add(off).write(1);
                }
            }
        }
        // SAFETY: the objects are distinct, ours, and dead from here on.
        unsafe { cache.give_back(c, objs.as_ptr(), OBJECTS) };
        faults.push(os::thread_minor_faults() - before);
    }
    let pages = (OBJECTS * SIZE / 4096) as u64;
    assert!(faults[0] >= pages / 2, "first round: {faults:?}");
    assert!(
        faults[4] < pages / 8,
        "the last round faulted its slabs in again: {faults:?} (of {pages} pages)"
    );
    let census = cache.census(c).expect("census");
    assert!(census.empty > 1 && census.in_use == 0, "{census:?}");
    cache.release_empty(true);
    assert_eq!(cache.census(c).expect("census").empty, 0);
}
