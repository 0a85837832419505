//! The purge policy: when free pages give their memory back.
//!
//! - Decay ([`sweep`]): free pages are purged (`MADV_DONTNEED`) once they
//!   have been free for the purge delay ([`purge_delay_ns`]); a segment whose pages are all
//!   free and purged goes to the global reserve or back to the OS on the
//!   next sweep, except a heap's last one of a kind; a segment that empties
//!   on a free is released at once (same exception), unless the heap is
//!   `refaulting` (below).
//! - Eager purge ([`purge_idle`]): when a free leaves more idle bytes than
//!   the budget (see [`over_budget`]), every empty page is freed, every free
//!   page purged and core's large cache trimmed at once, so a program that
//!   frees everything and stops gets its memory back without another call.
//! - The budget adapts: a page purged early and needed again (a refault,
//!   seen when it is claimed), or a segment acquired within the purge delay
//!   after one was released, doubles it (up to [`budget_max`]: 64 MiB, or
//!   twice the most the heap had in use) and marks the heap `refaulting`,
//!   which lifts the "4x the bytes in use" cap until a second passes
//!   without a refault, so a program that frees and rebuilds is not
//!   refaulted again and again.

use heapkit_core::large;
use heapkit_core::os;
use heapkit_core::segment::segment_of;

use crate::heap::{Heap, EMPTY};
use crate::mode::Mode;
use crate::page::{Page, PageState};
use crate::reserve;
use crate::segment::{Segment, SegmentKind};
use crate::slow::{requeue_if_full, take_pending};

/// How long a free page's memory stays resident before it is purged: the
/// purge delay in effect: `HEAPKIT_PURGE_DELAY_MS`, default
/// [`heapkit_core::options::DEFAULT_PURGE_DELAY_MS`] (see
/// [`heapkit_core::options`]).
#[inline]
pub(crate) fn purge_delay_ns() -> u64 {
    heapkit_core::options::get().purge_delay_ns
}
/// Smallest eager-purge budget (see [`purge_idle`]).
pub(crate) const PURGE_BUDGET_MIN: usize = 256 << 10;
/// Largest eager-purge budget of a heap that never had more than half
/// this in use (see [`budget_max`]).
pub(crate) const PURGE_BUDGET_MAX: usize = 64 << 20;

/// How far the purge budget may grow: [`PURGE_BUDGET_MAX`], or twice the
/// most the heap ever had in use if that is more. A program that frees a
/// structure larger than the fixed maximum and builds it again would
/// otherwise purge all of it at every round (the eager purge gives back
/// every idle byte once it passes the budget) and fault it in again: the
/// harness's realloc workload, 80 MiB of vectors freed and grown again
/// six times, took 94,000 page faults with a 64 MiB cap, 30,000 without.
/// What is kept stays under the program's own peak.
#[inline]
pub(crate) fn budget_max(h: &Heap) -> usize {
    PURGE_BUDGET_MAX.max(h.peak_claimed_bytes.saturating_mul(2))
}
/// Idle bytes allowed per byte of pages in use, whatever the budget (a
/// lower ratio purged more and re-faulted trees/realloc for no RSS gain).
const IDLE_PER_CLAIMED: usize = 4;
/// The budget halves on a sweep once no early-purged page was needed again
/// for this long.
const BUDGET_RELAX_NS: u64 = 1_000_000_000;

/// [`retire_page`], then an eager purge if the idle bytes passed the
/// budget, or the decay sweep if it is due.
///
/// # Safety
/// As for [`retire_page`].
pub(crate) unsafe fn free_page<P: Mode>(h: &mut Heap, page: *mut Page, now: u64) {
    // SAFETY: caller guarantee.
    unsafe { retire_page::<P>(h, page, now) };
    if over_budget(h) {
        purge_idle::<P>(h);
    } else if now >= h.next_sweep_ns {
        sweep::<P>(h, false);
    }
}

/// Returns an empty page to its segment; an emptied segment is released
/// unless it is the heap's last of its kind.
///
/// # Safety
/// `page` is ours, empty and on no list.
pub(crate) unsafe fn retire_page<P: Mode>(h: &mut Heap, page: *mut Page, now: u64) {
    // SAFETY: caller guarantee.
    unsafe {
        let seg = segment_of(page).cast::<Segment>();
        Segment::free_page::<P>(seg, page, now);
        (*page).retained = false;
        h.dirty_free += 1;
        h.idle_bytes += 1 << (*seg).page_shift;
        h.claimed_bytes = h.claimed_bytes.saturating_sub(1 << (*seg).page_shift);
        let kind = (*seg).kind.index();
        // An emptied segment goes back at once (purged into the reserve or
        // unmapped), except the heap's last of its kind (measured, keeping
        // more only raised RSS after free-all without saving time), and
        // except while the program rebuilds what it frees (`refaulting`):
        // then its pages stay, idle bytes under the budget like any free
        // page, purged by decay or an eager purge, and the segment is
        // released once they are. The harness's realloc workload, which
        // frees every vector and grows them again, refaulted its whole
        // working set each round: 93,000 page faults, 1.9x the mimalloc
        // crate's time.
        if (*seg).used_pages == 0
            && !(h.segments[kind].first == seg && (*seg).next.is_null())
            && !h.refaulting
        {
            release_segment(h, seg);
        } else if h.segments[kind].first != seg {
            // Free pages are found from the front.
            h.segments[kind].remove(seg);
            h.segments[kind].push_front(seg);
        }
    }
}

/// True when the heap's idle bytes call for an eager purge: above the
/// adaptive budget, or, unless the program was seen rebuilding what it
/// freed (`refaulting`), above [`IDLE_PER_CLAIMED`] times the bytes of pages
/// still in use, so a program that frees nearly everything gets its memory
/// back at once. A program that frees everything and builds it again (a
/// benchmark round, a request, a parse) refaults the pages the first purge
/// took; from then on it keeps up to the budget, which has grown to its
/// working set, until a second passes without a refault.
#[inline]
pub(crate) fn over_budget(h: &Heap) -> bool {
    if h.refaulting {
        return h.idle_bytes > h.purge_budget;
    }
    let cap = (h.claimed_bytes * IDLE_PER_CLAIMED).max(PURGE_BUDGET_MIN);
    h.idle_bytes > h.purge_budget.min(cap)
}

/// Eager purge, run when `idle_bytes` passes the budget: frees every empty
/// page still queued (including a class's only page), purges every free
/// page and trims core's large cache, so a program that frees everything
/// and then stops calling the allocator still gets its memory back. The
/// budget adapts (see `claim`) so a program that frees and reallocates
/// the same memory soon stops paying for purges and faults.
pub(crate) fn purge_idle<P: Mode>(h: &mut Heap) {
    let now = os::monotonic_ns();
    for class in 0..h.queues.len() {
        let mut page = h.queues[class].first;
        while !page.is_null() {
            // SAFETY: pages on our queues are ours; `used == 0` means no
            // block is live or on `thread_free`.
            unsafe {
                let next = (*page).next;
                (*page).retained = false;
                if Page::in_use(page) == 0 {
                    h.queues[class].remove(page);
                    if h.current[class] == page {
                        h.current[class] = EMPTY;
                    }
                    retire_page::<P>(h, page, now);
                }
                page = next;
            }
        }
        let mut page = h.full[class].first;
        while !page.is_null() {
            // SAFETY: pages on our full lists are ours.
            unsafe {
                (*page).retained = false;
                page = (*page).next;
            }
        }
    }
    sweep::<P>(h, true);
    h.idle_bytes = 0;
}

/// A page that empties stays its class's (see `slow::page_freed`): makes
/// its carved blocks purgeable while it stays current, since no one may
/// touch the blocks of a page its owner's fast paths pop from, and a
/// sleeping owner never purges (before this, a big page of the `large`
/// workload kept up to 1.8 MiB resident after the program went idle, and
/// RSS after idle was 4.6x the start).
///
/// - A big page (blocks of 64-256 KiB) keeps block 0 alone
///   ([`Page::reset_carve`]) and stops being current, so the reclaimer and
///   the background purger retire it whole once the thread sleeps; the
///   next allocation finds it on the queue again.
/// - A small or medium page is *parked* ([`Page::park`]: its blocks move
///   to `local_free`, out of the fast paths' reach, and the next
///   allocation takes them back in the slow path); once the thread is
///   idle, the reclaimer and the background purger reset it to its first
///   blocks and purge the rest. A parked page costs its owner one slow
///   path when it allocates from it again, as mimalloc's owner pays when
///   its `free` list runs dry. A loop that empties the page within fewer
///   allocations than a reset keeps has it reset now instead: its later
///   empties take `page_freed`'s no-lock return rather than a park and a
///   slow path each.
///
/// Not in hardened mode (`Mode::RECARVE_EMPTY`).
///
/// # Safety
/// `h` is the calling thread's heap, its lock held; `page` is ours, queued
/// and empty.
pub(crate) unsafe fn empty_page_kept<P: Mode>(h: &mut Heap, page: *mut Page) {
    if !P::RECARVE_EMPTY {
        return;
    }
    // SAFETY: caller guarantee.
    unsafe {
        let seg = segment_of(page).cast::<Segment>();
        let kind = (*seg).kind;
        let keep = Page::keep_on_reset((*page).stride as usize, kind);
        if kind == SegmentKind::Big {
            Page::reset_carve::<P>(page, keep, os::coarse_monotonic_ns());
            let class = (*page).class as usize;
            if h.current[class] == page {
                h.current[class] = EMPTY;
            }
        } else if (*page).capacity > keep {
            let since = h
                .stats
                .pending_allocs()
                .checked_sub((*page).unparked_allocs as u64);
            match since {
                Some(n) if n < keep as u64 => {
                    Page::reset_carve::<P>(page, keep, os::coarse_monotonic_ns())
                }
                // Many allocations since (or a flush of the counts
                // meanwhile): rounds that use the page whole.
                _ => Page::park::<P>(page),
            }
        }
    }
}

/// Releases an owned segment with no page in use.
///
/// # Safety
/// `seg` ours, on our list, all pages free.
pub(crate) unsafe fn release_segment(h: &mut Heap, seg: *mut Segment) {
    // SAFETY: caller guarantee.
    unsafe {
        for i in 0..(*seg).page_count as usize {
            if (*Segment::page(seg, i)).dirty {
                h.dirty_free -= 1;
                h.idle_bytes = h.idle_bytes.saturating_sub(1 << (*seg).page_shift);
            }
        }
        h.segments[(*seg).kind.index()].remove(seg);
        let now = os::monotonic_ns();
        h.released_segment_ns = now;
        reserve::release(seg, now, false);
    }
}

/// Decay: purges free pages older than the purge delay
/// ([`purge_delay_ns`]), neighbours in one call (all of them if `all`,
/// and then the dirty tails of queued pages too, see
/// `Page::reset_carve`: a running owner carves those again, the reclaimer
/// and the purger purge a sleeping one's), re-queues full pages with
/// remote frees a lost notification left behind, and purges what is due
/// in the segment reserve and from reclaims. Runs at most every half delay
/// unless `all`.
pub(crate) fn sweep<P: Mode>(h: &mut Heap, all: bool) {
    let now = os::coarse_monotonic_ns();
    if !all && now < h.next_sweep_ns {
        return;
    }
    let delay = purge_delay_ns();
    h.next_sweep_ns = now + delay / 2;
    if !all && now.saturating_sub(h.last_refault_ns) >= BUDGET_RELAX_NS {
        h.purge_budget = (h.purge_budget / 2).max(PURGE_BUDGET_MIN);
        h.refaulting = false;
    }
    for kind in SegmentKind::ALL {
        let kind = kind.index();
        let mut seg = h.segments[kind].first;
        while !seg.is_null() {
            // SAFETY: our segments and pages.
            unsafe {
                let next = (*seg).next;
                if (*seg).used_pages == 0
                    && !(h.segments[kind].first == seg && next.is_null())
                    && (0..(*seg).page_count as usize).all(|i| !(*Segment::page(seg, i)).dirty)
                {
                    // Empty for a whole delay (every page purged): release
                    // it, keeping one segment per kind.
                    release_segment(h, seg);
                    seg = next;
                    continue;
                }
                let mut run = os::PurgeRun::new();
                for i in 0..(*seg).page_count as usize {
                    let page = Segment::page(seg, i);
                    match (*page).state {
                        PageState::Free
                            if (*page).dirty
                                && (all || now.saturating_sub((*page).freed_at_ns) >= delay) =>
                        {
                            // Neighbouring free pages go in one `madvise`
                            // (sqlite3 made 3264 of them, libmimalloc 96).
                            let (p, len) = Segment::purgeable(seg, i);
                            run.push(p, len);
                            (*page).dirty = false;
                            h.dirty_free -= 1;
                            h.idle_bytes = h.idle_bytes.saturating_sub(len);
                        }
                        PageState::Queued if all && Page::has_dirty_tail(page) => {
                            Page::purge_tail(seg, page);
                        }
                        PageState::Full if Page::has_remote(page) => {
                            requeue_if_full::<P>(h, page);
                        }
                        _ => {}
                    }
                }
                // Before the segment can be released or its pages claimed.
                run.finish();
                seg = (*seg).next;
            }
        }
    }
    reserve::purge_reserve(now, delay, all);
    crate::reclaim::purge_due(h, now);
    let _ = large::trim(true);
}

/// Purges every free page of the calling thread's heap and the segment
/// reserve, and releases what it can (for `SizeClass::collect`).
pub(crate) fn collect_now<P: Mode>() {
    let h = P::heap();
    // SAFETY: our heap (or the never-written sentinel, which is never set
    // up and holds nothing), not re-entered; its lock keeps reclaimers out.
    unsafe {
        if !P::heap_is_idle(h) {
            crate::quarantine::flush::<P>(h);
        }
        if (*h).state.is_set_up() {
            (*h).lock.lock();
            take_pending::<P>(&mut *h);
            // Empty pages kept for their class go too, then every free
            // page is purged and emptied segments released.
            purge_idle::<P>(&mut *h);
            sweep::<P>(&mut *h, true);
            (*h).lock.unlock();
        }
    }
    // What exited threads left: their segments still holding blocks (the
    // pages other threads' frees emptied since are freed and purged, the
    // segments left empty released), then the reserve, whether or not
    // this thread ever allocated.
    crate::reclaim::tidy_abandoned::<P>();
    reserve::purge_reserve(0, 0, true);
    let _ = large::trim(false);
}

#[cfg(test)]
mod tests {
    use core::alloc::Layout;

    use heapkit_core::HeapAlloc;

    use super::*;
    use crate::SizeClass;
    use heapkit_core::harden::Fast;

    /// Allocates `n` blocks of 64 B through `a` on this thread, then frees
    /// them all.
    fn fill_and_free(a: &SizeClass<Fast>, n: usize) {
        let layout = Layout::from_size_align(64, 8).unwrap();
        let blocks: std::vec::Vec<*mut u8> = (0..n).map(|_| a.allocate(layout)).collect();
        for &p in &blocks {
            assert!(!p.is_null());
            // SAFETY: live blocks of `a`, written inside their 64 bytes.
            unsafe {
                p.write_bytes(0xa5, 64);
                a.free(p);
            }
        }
    }

    /// Idle bytes the calling thread's heap still holds unpurged.
    fn unpurged_idle_bytes() -> usize {
        let h = Fast::heap();
        // SAFETY: our heap, not in use by the allocator during this read.
        unsafe { (*h).dirty_free << 16 }
    }

    #[test]
    fn a_thread_that_frees_everything_gets_its_memory_back_without_more_calls() {
        std::thread::spawn(|| {
            let a = SizeClass::fast();
            fill_and_free(&a, 50_000); // 3.2 MiB: 49 pages of one segment
                                       // No collect(), no further allocation: the frees themselves
                                       // purged all but a budget's worth.
            assert!(unpurged_idle_bytes() <= PURGE_BUDGET_MIN + (64 << 10));
        })
        .join()
        .unwrap();
    }

    /// The page an emptying free leaves alone (`slow::page_freed`'s
    /// common case) is reset or parked again once it has carved more
    /// blocks than a reset keeps: `Page::carve_kept`, which spares that
    /// case the counts, is forgotten when the page carves more.
    #[test]
    fn an_emptied_page_that_carved_more_gives_its_tail_back_again() {
        std::thread::spawn(|| {
            let a = SizeClass::fast();
            let layout = Layout::from_size_align(64, 8).unwrap();
            // An allocate/free loop: the page empties at every free, and
            // from the second one on that is the quiet case.
            let mut page = core::ptr::null_mut::<Page>();
            for _ in 0..4 {
                let p = a.allocate(layout);
                assert!(!p.is_null());
                // SAFETY: a live block of `a`: its segment and page are
                // mapped metadata of ours.
                unsafe {
                    page = Segment::page_of(segment_of(p).cast(), p);
                    a.free(p);
                }
            }
            // SAFETY: our page (the class's current one), read while the
            // allocator is idle.
            let (keep, kept) = unsafe {
                let keep = Page::keep_on_reset((*page).stride as usize, SegmentKind::Small);
                (keep, (*page).capacity <= keep)
            };
            assert!(kept);
            // Four carvings' worth at once, then all freed.
            let blocks: std::vec::Vec<*mut u8> =
                (0..4 * keep).map(|_| a.allocate(layout)).collect();
            // SAFETY: as above.
            assert!(unsafe { (*page).capacity } > keep);
            for &p in &blocks {
                // SAFETY: live blocks of `a`.
                unsafe { a.free(p) };
            }
            // SAFETY: as above.
            unsafe {
                assert!(
                    (*page).capacity <= keep || Page::is_parked(page),
                    "capacity {} > {keep}, not parked: the emptied page kept its carve",
                    (*page).capacity
                );
            }
        })
        .join()
        .unwrap();
    }

    /// A structure larger than [`PURGE_BUDGET_MAX`] (96 MiB of 256 KiB
    /// blocks, in 24 big segments), freed whole and built again, round
    /// after round: once the rebuilding is seen (segments released and
    /// needed again at once), emptied segments stay with the heap and the
    /// budget grows past the fixed maximum to what the program had in
    /// use, so the rounds stop faulting their memory in again. With the
    /// segments released at every round and the budget capped at 64 MiB,
    /// every round faulted all 24,576 pages in again.
    #[test]
    fn a_program_that_rebuilds_more_than_the_fixed_budget_keeps_it() {
        std::thread::spawn(|| {
            const BLOCK: usize = 256 << 10;
            const BLOCKS: usize = 384;
            let a = SizeClass::fast();
            let layout = Layout::from_size_align(BLOCK, 16).unwrap();
            let mut faults = std::vec::Vec::new();
            for _ in 0..5 {
                let before = os::thread_minor_faults();
                let blocks: std::vec::Vec<*mut u8> =
                    (0..BLOCKS).map(|_| a.allocate(layout)).collect();
                for &p in &blocks {
                    assert!(!p.is_null());
                    // SAFETY: a live block of BLOCK bytes: one byte per OS
                    // page written.
                    unsafe {
                        for off in (0..BLOCK).step_by(4096) {
                            p.add(off).write(1);
                        }
                    }
                }
                for &p in &blocks {
                    // SAFETY: live blocks of `a`.
                    unsafe { a.free(p) };
                }
                faults.push(os::thread_minor_faults() - before);
            }
            let h = Fast::heap();
            // SAFETY: our heap, idle.
            let (budget, refaulting) = unsafe { ((*h).purge_budget, (*h).refaulting) };
            assert!(refaulting, "the rebuilding was not seen: faults {faults:?}");
            assert!(
                budget > PURGE_BUDGET_MAX,
                "budget {budget}, faults {faults:?}"
            );
            let pages = (BLOCKS * BLOCK / 4096) as u64;
            assert!(faults[0] >= pages / 2, "first round: {faults:?}");
            assert!(
                faults[4] < pages / 8,
                "the last round faulted its memory in again: {faults:?} (of {pages} pages)"
            );
            // What it keeps goes back when asked.
            a.collect();
        })
        .join()
        .unwrap();
    }

    #[test]
    fn a_program_that_frees_and_reallocates_soon_stops_purging() {
        std::thread::spawn(|| {
            let a = SizeClass::fast();
            for _ in 0..6 {
                fill_and_free(&a, 50_000); // 3.2 MiB per round
            }
            let h = Fast::heap();
            // SAFETY: our heap, idle.
            let budget = unsafe { (*h).purge_budget };
            // Rounds reused pages purged moments before: the budget grew.
            assert!(budget > PURGE_BUDGET_MIN, "budget {budget}");
        })
        .join()
        .unwrap();
    }
}
