//! What the thread caches and the depot keep and give back: the depot's
//! protocol under contention, magazines winding down, growing and
//! shrinking, the idle round, slabs kept for a cache that rebuilds them.

use super::*;

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
    // The class's own count, to compare with the class's count below
    // (`base` counts every class: objects of other classes in it made the
    // difference below underflow in a CI run).
    let class_base = heap::cache(c).in_use();
    std::thread::spawn(move || {
        let a = Slab::new();
        let kept: Vec<usize> = (0..16).map(|_| a.allocate(l) as usize).collect();
        for round in 0..20 {
            let ps: Vec<usize> = (0..batch).map(|_| a.allocate(l) as usize).collect();
            for &p in &ps {
                // SAFETY: live objects of `a`.
                unsafe { a.deallocate(p as *mut u8, l) };
            }
            let out = heap::cache(c).in_use().saturating_sub(class_base);
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
