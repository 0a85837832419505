//! Pages emptied by other threads' frees, given back without their owner.
//!
//! A page's free lists belong to its owner, so only the owner collects the
//! blocks other threads free into it. An owner that has gone idle (a worker
//! waiting for its next job) never does, and memory the rest of the program
//! freed stays resident. This module lets the *freeing* thread finish the
//! job:
//!
//! - every heap of a mode is in that mode's registry (from its set-up to its
//!   thread's exit);
//! - a thread that has freed [`RECLAIM_EVERY_BYTES`] into other threads'
//!   pages looks through the registry ([`remote_frees_piled_up`]) for heaps
//!   whose owner has run no slow path for [`IDLE_NS`] (its `slow_calls` did
//!   not move), takes such a heap's lock (only tried: an owner in its slow
//!   path is never waited for), and retires and purges every page whose
//!   blocks have *all* come back through remote frees.
//!
//! Why this is safe while the owner runs its fast paths (which take no
//! lock): the owner's allocation pops only from `current[class]` pages,
//! which are skipped (and `current` changes only on slow paths, excluded by
//! the lock), or from a current page the reclaimer resets only once its
//! owner parked it (`Page::parked`, written under the lock: its `free` is
//! empty, so the owner's next allocation waits for the lock); the owner's
//! free touches a page only to free one of its live blocks, and a page is
//! retired only when it has none: every block counted in `used` was found
//! on `thread_free`. `used` only falls while a page is not current, so a
//! stale read can only make the reclaimer skip a page. A page that still
//! has live blocks gets its remote frees pushed back. The owner's free that
//! empties a page writes `used` last, with Release (its `Page::in_use`
//! read is Acquire), and then calls `page_freed`, which waits for the lock
//! and finds the page retired: so the reclaimer never releases a segment
//! (the owner's sweep does), or that call would read a segment another
//! heap had taken.
//!
//! With `HEAPKIT_BACKGROUND_PURGE_MS` set, a background thread
//! ([`start_purger`]) does the same for every idle heap at that interval,
//! and also purges free pages whose purge delay has passed and drops
//! expired large blocks, so a program that goes idle gets its memory back
//! without calling the allocator again (off by default, like jemalloc's
//! `background_thread`).
//!
//! Lock order: registry, then a heap's lock, then the segment and large
//! locks. The owner takes its own lock on every slow path that changes its
//! queues or pages; registering and unregistering happen outside it.

use core::sync::atomic::{AtomicBool, AtomicU64, Ordering::Relaxed};

use heapkit_core::harden::{Fast, Hardened};
use heapkit_core::large;
use heapkit_core::list::List;
use heapkit_core::lock::SpinLock;
use heapkit_core::os;

use crate::abandoned;
use crate::heap::{Heap, HeapState};
use crate::mode::Mode;
use crate::page::{Page, PageState};
use crate::purge::purge_delay_ns;
use crate::reserve;
use crate::segment::{Segment, SegmentKind};

/// A thread looks for pages to reclaim after freeing this many bytes into
/// other threads' pages.
pub(crate) const RECLAIM_EVERY_BYTES: usize = 4 << 20;
/// An owner that ran no slow path for this long counts as idle.
pub(crate) const IDLE_NS: u64 = 1_000_000;

/// Pages reclaimed so far (process-wide; for tests and `HEAPKIT_STATS`).
pub(crate) static RECLAIMED_PAGES: AtomicU64 = AtomicU64::new(0);

/// When the pages retired unpurged by the last reclaim are due for their
/// purge (monotonic ns; 0: none pending). See [`purge_due`].
static PURGE_DUE_NS: AtomicU64 = AtomicU64::new(0);

/// A registry of heaps (core's intrusive list).
pub(crate) type HeapList = List<Heap>;

/// The registry of the default mode's heaps.
pub(crate) static FAST_HEAPS: SpinLock<HeapList> = SpinLock::new(HeapList::EMPTY);
/// The registry of the hardened mode's heaps.
pub(crate) static HARDENED_HEAPS: SpinLock<HeapList> = SpinLock::new(HeapList::EMPTY);

/// Adds the calling thread's heap `h` of mode `P` to the registry.
///
/// # Safety
/// `h` is the calling thread's active heap of mode `P`, not registered.
pub(crate) unsafe fn register<P: Mode>(h: *mut Heap) {
    let mut list = P::registry().lock();
    // SAFETY: h lives until its thread's exit hook unregisters it.
    unsafe { list.push_back(h) };
}

/// Removes `h` from the registry (at its thread's exit). Once this returns,
/// no reclaimer uses `h` (they hold the registry lock while they do).
///
/// # Safety
/// `h` was registered with [`register`] for mode `P`.
pub(crate) unsafe fn unregister<P: Mode>(h: *mut Heap) {
    let mut list = P::registry().lock();
    // SAFETY: h is on this list.
    unsafe { list.remove(h) };
}

/// In a forked child: the registry of mode `P` holds only the calling
/// thread's heap (if active), and that heap's lock is free.
///
/// # Safety
/// Only in a forked child, from its one thread, with the registry lock
/// taken by the parent's `before_fork`.
pub(crate) unsafe fn after_fork_child<P: Mode>() {
    let registry = P::registry();
    // SAFETY: the child is single-threaded; the list's nodes in other
    // threads' heaps are dropped without being touched.
    unsafe {
        *registry.get_unchecked() = HeapList::EMPTY;
        registry.raw().reset_after_fork();
        let h = P::heap();
        if (*h).state == HeapState::Active {
            (*h).lock.reset_after_fork();
            registry.get_unchecked().push_back(h);
        }
    }
}

/// Called by a thread that has freed [`RECLAIM_EVERY_BYTES`] into other
/// threads' pages (`h` is its own heap): reclaims what idle owners' pages
/// hold for nothing.
#[cold]
#[inline(never)]
pub(crate) fn remote_frees_piled_up<P: Mode>(h: *mut Heap) {
    // SAFETY: h is the calling thread's own heap.
    unsafe { (*h).remote_freed = 0 };
    // Never wait: another thread is already reclaiming (or forking).
    let Some(list) = P::registry().try_lock() else {
        return;
    };
    // SAFETY: the registry is locked.
    unsafe { visit::<P>(&list, h, false) };
}

/// Called from a heap's decay sweep (`h` its own heap, locked): once the
/// pages a reclaim retired unpurged are past the purge delay, looks at
/// every heap of both modes with the decay (their owners may sleep, so no
/// sweep of theirs would purge them). Never waits for a lock.
pub(crate) fn purge_due(h: *mut Heap, now: u64) {
    let due = PURGE_DUE_NS.load(Relaxed);
    if due == 0 || now < due {
        return;
    }
    let fast = visit_all::<Fast>(h);
    let hardened = visit_all::<Hardened>(h);
    if !(fast && hardened) {
        return; // A registry or a heap was busy: the next sweep tries again.
    }
    let _ = PURGE_DUE_NS.compare_exchange(due, 0, Relaxed, Relaxed);
}

/// [`visit`]s mode `P`'s registry with the decay, skipping `skip`; false if
/// the registry or a heap was busy.
fn visit_all<P: Mode>(skip: *mut Heap) -> bool {
    let Some(list) = P::registry().try_lock() else {
        return false;
    };
    // SAFETY: the registry is locked.
    unsafe { visit::<P>(&list, skip, true) }
}

/// One round of the background purger for mode `P` (see [`start_purger`]):
/// every registered heap visited, then the abandoned segments tidied.
fn purge_round<P: Mode>() {
    {
        let list = P::registry().lock();
        // SAFETY: the registry is locked; the purger has no heap of its own.
        unsafe { visit::<P>(&list, core::ptr::null_mut(), true) };
    }
    tidy_abandoned::<P>();
}

/// Segments whose owner exited wait for a live heap to adopt them; their
/// blocks freed since (by other threads) stay resident until then. The
/// purger takes them off the list, collects those frees, frees and purges
/// the pages left empty, releases the segments left empty and abandons the
/// others again (a thread looking for one meanwhile maps a fresh segment).
/// The reserve's segments and the exited threads' heap slots are purged
/// here too. `malloc_trim` does the same at once ([`crate::purge::collect_now`]).
pub(crate) fn tidy_abandoned<P: Mode>() {
    let mut taken = abandoned::take_abandoned::<P>();
    let now = os::monotonic_ns();
    reserve::purge_reserve(now, purge_delay_ns(), false);
    // Exited threads' heaps, kept in their slot pool for the next thread
    // (each slot's whole pages, once).
    P::heap_pool().purge_free();
    loop {
        // SAFETY: the segments taken are ours alone (off every list) and of
        // mode `P`.
        unsafe {
            let seg = taken.pop_front();
            if seg.is_null() {
                return;
            }
            if crate::lifecycle::tidy_segment::<P>(seg, now, &mut 0) {
                reserve::release(seg, now, false);
            } else {
                abandoned::abandon(seg);
            }
        }
    }
}

/// Looks at every registered heap but `skip`: an idle one (no slow path
/// for [`IDLE_NS`] between two looks) whose lock is free has its pages
/// reclaimed ([`reclaim_heap`]); with `decay`, every heap whose lock is
/// free also has its free pages purged once the purge delay has passed
/// (what its owner's sweep would do, were it running). Returns false when
/// a heap it meant to look at was locked (and so skipped).
///
/// # Safety
/// `list` is the locked registry of mode `P`.
unsafe fn visit<P: Mode>(list: &HeapList, skip: *mut Heap, decay: bool) -> bool {
    let now = os::monotonic_ns();
    let mut complete = true;
    let mut other = list.first;
    while !other.is_null() {
        // SAFETY: registered heaps stay alive while the registry is locked;
        // `observed_*` are written under that lock only.
        unsafe {
            let next = (*other).next_heap;
            if other != skip {
                let calls = (*other).slow_calls.load(Relaxed);
                let idle = if calls != (*other).observed_calls || (*other).observed_at_ns == 0 {
                    (*other).observed_calls = calls;
                    (*other).observed_at_ns = now;
                    false
                } else {
                    now.saturating_sub((*other).observed_at_ns) >= IDLE_NS
                };
                if idle || decay {
                    if (*other).lock.try_lock() {
                        if (*other).state == HeapState::Active {
                            reclaim_heap::<P>(&mut *other, idle, decay, now);
                        }
                        (*other).lock.unlock();
                    } else {
                        complete = false;
                    }
                }
            }
            other = next;
        }
    }
    complete
}

/// With `idle`: retires and purges every page of `h` (not current) whose
/// blocks have all been freed by other threads, or that is empty (a page
/// kept for its class while its owner sleeps), and resets and purges its
/// current pages that its own frees emptied and parked (`Page::park`).
/// Once the owner has slept for the purge delay, the OS pages that other
/// threads' frees emptied in its other pages, current ones included,
/// become holes (`holes.rs`).
/// With `decay`: purges free pages and dirty tails (`Page::reset_carve`)
/// older than the purge delay. Releases emptied segments (all but the
/// last of a kind, as the owner would).
///
/// # Safety
/// The caller holds `h.lock` (and the registry lock), and `h` is of mode
/// `P`.
unsafe fn reclaim_heap<P: Mode>(h: &mut Heap, idle: bool, decay: bool, now: u64) {
    let delay = purge_delay_ns();
    // Idle for the purge delay, not only for `IDLE_NS`: a thread that waits
    // for a CPU looks idle too, and purging its pages makes it fault them
    // in again (see the retirement below).
    let long_idle = idle && now.saturating_sub(h.observed_at_ns) >= delay;
    for kind in SegmentKind::ALL {
        let kind = kind.index();
        let mut seg = h.segments[kind].first;
        while !seg.is_null() {
            // SAFETY: h's segments and pages; the lock keeps the owner's slow
            // paths out, and the pages retired have no live block (see the
            // module docs); free pages are never touched by fast paths.
            unsafe {
                let next = (*seg).next;
                for i in 0..(*seg).page_count as usize {
                    let page = Segment::page(seg, i);
                    if (*page).state == PageState::Free {
                        if decay
                            && (*page).dirty
                            && now.saturating_sub((*page).freed_at_ns) >= delay
                        {
                            let (p, len) = Segment::purgeable(seg, i);
                            os::purge(p, len);
                            (*page).dirty = false;
                            h.dirty_free -= 1;
                            h.idle_bytes = h.idle_bytes.saturating_sub(len);
                        }
                        continue;
                    }
                    if decay
                        && (*page).state == PageState::Queued
                        && Page::has_dirty_tail(page)
                        && now.saturating_sub((*page).freed_at_ns) >= delay
                    {
                        // Even the current page's: no fast path touches
                        // the tail, and carving it again needs the lock.
                        Page::purge_tail(seg, page);
                    }
                    if P::RECARVE_EMPTY
                        && long_idle
                        && (*page).state == PageState::Queued
                        && h.current[(*page).class as usize] == page
                        && Page::is_parked(page)
                    {
                        // The sleeping owner's current page, emptied and
                        // parked: no fast path touches it, and its owner's
                        // slow paths wait for the lock we hold.
                        let keep = Page::keep_on_reset((*page).stride as usize, (*seg).kind);
                        Page::reset_carve::<P>(page, keep, now);
                        Page::purge_tail(seg, page);
                    }
                    let current = h.current[(*page).class as usize] == page;
                    if !idle || current {
                        if long_idle && current && Page::has_remote(page) {
                            // Its owner's fast path pops `free` without a
                            // lock: give back only what other threads freed
                            // (`holes.rs`).
                            Page::purge_holes::<P>(seg, page);
                        }
                        continue;
                    }
                    let empty = if Page::has_remote(page) {
                        Page::take_if_all_remote::<P>(page)
                    } else {
                        Page::in_use(page) == 0
                    };
                    if !empty {
                        if long_idle && Page::has_remote(page) {
                            // Blocks still live: give back the OS pages
                            // that other threads' frees emptied.
                            Page::purge_holes::<P>(seg, page);
                        }
                        continue;
                    }
                    let class = (*page).class as usize;
                    if (*page).state == PageState::Full {
                        h.full[class].remove(page);
                    } else {
                        h.queues[class].remove(page);
                    }
                    // Purged at once only when the owner has been idle for the
                    // purge delay; before that, "idle" may be a thread that
                    // waits for a CPU (4 threads on 2 cores: the C stress
                    // program faulted these pages in again and again, 1.13x
                    // libmimalloc's time, 1.08x since), so the page is
                    // retired dirty, for the owner to reuse resident, and a
                    // later sweep purges it once the delay has passed
                    // ([`purge_due`]).
                    // Hardened: the lists' unchecked blocks are checked
                    // before the purge zeroes them (`free_page` would be
                    // too late).
                    P::on_empty(page);
                    if (*page).dirty && long_idle {
                        let (p, len) = Segment::purgeable(seg, i);
                        os::purge(p, len);
                        (*page).dirty = false;
                    }
                    Segment::free_page::<P>(seg, page, now);
                    RECLAIMED_PAGES.fetch_add(1, Relaxed);
                    if (*page).retained {
                        (*page).retained = false;
                        h.idle_bytes = h.idle_bytes.saturating_sub(1 << (*seg).page_shift);
                    }
                    if (*page).dirty {
                        // A free dirty page, counted as the owner's own.
                        h.dirty_free += 1;
                        h.idle_bytes += 1 << (*seg).page_shift;
                        PURGE_DUE_NS.fetch_max(now + delay, Relaxed);
                    }
                    h.claimed_bytes = h.claimed_bytes.saturating_sub(1 << (*seg).page_shift);
                }
                // An emptied segment stays with its heap, its pages purged,
                // for the owner's own sweep to release: the owner may be
                // inside a free that emptied one of its pages, between the
                // count it wrote and the lock its `page_freed` waits for,
                // and would then read a segment another thread had taken
                // from the reserve, or unmapped (found by ThreadSanitizer
                // with a 1 ms purge delay and the background purger: a
                // SIGSEGV in `page_freed_locked`). Only its header stays
                // resident.
                seg = next;
            }
        }
    }
}

/// Starts the background purger if `HEAPKIT_BACKGROUND_PURGE_MS` asks for
/// one (once per process; not in a forked child; see
/// `heapkit_core::background`). Called from the allocation slow path
/// outside the heap's lock (creating a thread allocates) once a thread has
/// taken it a few times, not from the first allocation, which under
/// `LD_PRELOAD` may come from the dynamic loader before the program runs.
/// Each round runs [`purge_round`] for both modes, then drops expired
/// large blocks, so memory an idle program holds goes back without any
/// call into the allocator (jemalloc's `background_thread`).
pub(crate) fn start_purger() {
    static DECIDED: AtomicBool = AtomicBool::new(false);
    fn round() {
        purge_round::<Fast>();
        purge_round::<Hardened>();
        let _ = large::trim(true);
    }
    let _ = heapkit_core::background::start(&DECIDED, round);
}

#[cfg(test)]
mod tests {
    use core::alloc::Layout;
    use std::vec::Vec;

    use heapkit_core::segment::segment_of;
    use heapkit_core::HeapAlloc;

    use super::*;
    use crate::SizeClass;

    /// Whether `seg` is on the abandoned list.
    fn is_abandoned(seg: *mut Segment) -> bool {
        let list = abandoned::ABANDONED_LIST.lock();
        let mut s = list.first;
        while !s.is_null() {
            if s == seg {
                return true;
            }
            // SAFETY: the list is locked; its segments are alive.
            s = unsafe { (*s).next };
        }
        false
    }

    /// A thread exits with live blocks (its segments are abandoned), and
    /// another thread frees them: the purger's round tidies the abandoned
    /// segments, and the ones left empty leave the list (released).
    #[test]
    fn the_purger_releases_abandoned_segments_emptied_by_remote_frees() {
        let layout = Layout::from_size_align(1000, 8).unwrap();
        let blocks: Vec<usize> = std::thread::spawn(move || {
            let a = SizeClass::fast();
            (0..6000).map(|_| a.allocate(layout) as usize).collect()
        })
        .join()
        .unwrap();
        assert!(blocks.iter().all(|&p| p != 0));
        let mut segs: Vec<*mut Segment> = blocks
            .iter()
            .map(|&p| segment_of(p as *mut u8).cast::<Segment>())
            .collect();
        segs.sort();
        segs.dedup();
        // (Another test's thread may adopt some of them meanwhile: then
        // they are not abandoned either, which is what is checked.)
        let a = SizeClass::fast();
        for &p in &blocks {
            // SAFETY: live blocks, freed once (remote frees: their owner is gone).
            unsafe { a.free(p as *mut u8) };
        }
        tidy_abandoned::<Fast>();
        let left: Vec<_> = segs.iter().filter(|&&s| is_abandoned(s)).collect();
        assert!(
            left.is_empty(),
            "{} of {} still abandoned",
            left.len(),
            segs.len()
        );
    }

    /// A thread fills a small page, frees every block and sleeps: the
    /// page stays its class's current page, keeps one carving's worth of
    /// blocks, and the purger's round purges the rest (its dirty tail)
    /// while the thread sleeps; the thread then allocates from the page
    /// again, and blocks carved anew do not overlap the ones kept.
    #[test]
    fn the_purger_purges_the_tail_of_a_sleeping_threads_current_page() {
        use std::sync::mpsc::channel;
        const SIZE: usize = 1000;
        const N: usize = 48;
        let layout = Layout::from_size_align(SIZE, 8).unwrap();
        let (to_main, from_thread) = channel::<(usize, usize)>();
        let (to_thread, from_main) = channel::<()>();
        let t = std::thread::spawn(move || {
            let a = SizeClass::fast();
            let blocks: Vec<usize> = (0..N).map(|_| a.allocate(layout) as usize).collect();
            let page = {
                let p = blocks[0] as *mut u8;
                // SAFETY: a live block of ours: its segment and page are mapped.
                unsafe { Segment::page_of(segment_of(p).cast(), p) as usize }
            };
            for &b in &blocks {
                // SAFETY: live blocks of SIZE bytes, each freed once below.
                unsafe { (b as *mut u8).write_bytes(0xAB, SIZE) };
            }
            for &b in &blocks {
                // SAFETY: freed once.
                unsafe { a.free(b as *mut u8) };
            }
            let last = *blocks.iter().max().unwrap();
            to_main.send((page, last)).unwrap();
            from_main.recv().unwrap();
            // Awake again: the page serves the class as before.
            let again: Vec<usize> = (0..N).map(|_| a.allocate(layout) as usize).collect();
            let mut sorted = again.clone();
            sorted.sort();
            sorted.dedup();
            assert_eq!(sorted.len(), N, "a block handed out twice");
            for &b in &again {
                // SAFETY: live blocks of SIZE bytes, freed once below.
                unsafe { (b as *mut u8).write_bytes(0x5A, SIZE) };
            }
            for &b in &again {
                // SAFETY: as above.
                unsafe { assert_eq!(*(b as *const u8).add(SIZE - 1), 0x5A) };
                // SAFETY: freed once.
                unsafe { a.free(b as *mut u8) };
            }
        });
        let (page, last) = from_thread.recv().unwrap();
        let page = page as *mut Page;
        // Two rounds: the first sees the heap, the second finds it idle
        // for longer than the purge delay.
        purge_round::<Fast>();
        std::thread::sleep(std::time::Duration::from_nanos(
            purge_delay_ns() + 2 * IDLE_NS + 2 * os::CLOCK_TICK_MAX_NS,
        ));
        purge_round::<Fast>();
        // SAFETY: the page's thread sleeps on the channel; its segment stays
        // mapped (a page in use); the block read is inside the segment.
        unsafe {
            assert_eq!((*page).state, PageState::Queued);
            assert_eq!(Page::in_use(page), 0);
            let keep = Page::keep_on_reset((*page).stride as usize, SegmentKind::Small);
            assert_eq!(
                (*page).capacity,
                keep,
                "the emptied page kept all its blocks"
            );
            assert!(!Page::has_dirty_tail(page), "the tail was not purged");
            assert_eq!(
                *(last as *const u8).add(SIZE - 1),
                0,
                "the last block's bytes are still resident"
            );
        }
        to_thread.send(()).unwrap();
        t.join().unwrap();
    }

    /// A thread allocates three pages' worth of blocks, keeps one block in
    /// fifty and hands the others to another thread, which frees them
    /// (remote frees), then sleeps. The purger's rounds cannot retire its
    /// pages (a block live in each, and the current page's `free` list is
    /// the sleeping owner's), but purge the OS pages whose blocks all came
    /// back (`holes.rs`): their bytes read zero, the kept blocks keep
    /// theirs. Awake, the owner gets the dropped blocks back: every block
    /// counted once, none handed out twice.
    #[test]
    fn the_purger_purges_what_other_threads_freed_from_a_sleeping_threads_pages() {
        use crate::invariants::check_invariants_of;
        use std::sync::mpsc::channel;
        const SIZE: usize = 1000;
        const N: usize = 150;
        let layout = Layout::from_size_align(SIZE, 8).unwrap();
        let (to_main, from_thread) = channel::<(Vec<usize>, Vec<usize>)>();
        let (to_thread, from_main) = channel::<()>();
        let t = std::thread::spawn(move || {
            let a = SizeClass::fast();
            let blocks: Vec<usize> = (0..N).map(|_| a.allocate(layout) as usize).collect();
            for &b in &blocks {
                // SAFETY: live blocks of SIZE bytes.
                unsafe { (b as *mut u8).write_bytes(0xAB, SIZE) };
            }
            let kept: Vec<usize> = blocks.iter().step_by(50).copied().collect();
            let given: Vec<usize> = blocks
                .iter()
                .copied()
                .filter(|b| !kept.contains(b))
                .collect();
            to_main.send((kept.clone(), given)).unwrap();
            from_main.recv().unwrap();
            check_invariants_of::<Fast>().unwrap();
            for &b in &kept {
                // SAFETY: live, never purged.
                unsafe {
                    assert!((0..SIZE).all(|i| *(b as *const u8).add(i) == 0xAB));
                    a.free(b as *mut u8);
                }
            }
            let again: Vec<usize> = (0..2 * N).map(|_| a.allocate(layout) as usize).collect();
            let mut sorted = again.clone();
            sorted.sort();
            sorted.dedup();
            assert_eq!(sorted.len(), 2 * N, "a block handed out twice");
            for (i, &b) in again.iter().enumerate() {
                // SAFETY: live blocks of SIZE bytes.
                unsafe { (b as *mut u8).write_bytes(i as u8, SIZE) };
            }
            check_invariants_of::<Fast>().unwrap();
            for (i, &b) in again.iter().enumerate() {
                // SAFETY: as above; freed once.
                unsafe {
                    assert!((0..SIZE).all(|j| *(b as *const u8).add(j) == i as u8));
                    a.free(b as *mut u8);
                }
            }
            check_invariants_of::<Fast>().unwrap();
        });
        let (kept, given) = from_thread.recv().unwrap();
        let a = SizeClass::fast();
        for &b in &given {
            // SAFETY: live blocks handed over, freed once (remote frees).
            unsafe { a.free(b as *mut u8) };
        }
        purge_round::<Fast>();
        std::thread::sleep(std::time::Duration::from_nanos(
            purge_delay_ns() + 2 * IDLE_NS + 2 * os::CLOCK_TICK_MAX_NS,
        ));
        purge_round::<Fast>();
        let zeroed = given
            .iter()
            .filter(|&&b| {
                // SAFETY: the owner sleeps on the channel and its pages stay
                // in use (blocks live in each), so their memory stays
                // mapped: a freed block reads its bytes, or zero where it
                // was purged.
                unsafe { *(b as *const u8).add(SIZE / 2) == 0 }
            })
            .count();
        assert!(
            zeroed >= given.len() / 2,
            "only {zeroed} of {} freed blocks purged",
            given.len()
        );
        for &b in &kept {
            // SAFETY: live blocks (the owner reads them only after we send).
            unsafe { assert_eq!(*(b as *const u8).add(SIZE / 2), 0xAB) };
        }
        to_thread.send(()).unwrap();
        t.join().unwrap();
    }
}
