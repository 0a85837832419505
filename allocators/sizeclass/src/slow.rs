//! The allocation slow paths: finding a page, and what a free hands off.
//!
//! - [`alloc`]: set the heap up on first use ([`crate::lifecycle`]), then
//!   find a page with a free block for the class (walk the class queue
//!   collecting each page, park pages with nothing free on the full list,
//!   take pending remote frees, adopt an abandoned segment, or start a
//!   fresh page), then retry the fast path.
//! - [`page_freed`]: a local free emptied a page (retire it, unless it is
//!   the class's only page) or returned a block to a full page (re-queue it).
//! - [`free_remote_unbound`]: a thread that only frees gets its heap set up,
//!   so its counts stay its own.
//!
//! What happens to pages once free (decay, eager purge, segment release) is
//! [`crate::purge`]; thread exit and fork are [`crate::lifecycle`].

use core::ptr;
use core::sync::atomic::Ordering::Relaxed;

use heapkit_core::os;
use heapkit_core::segment::segment_of;

use crate::abandoned;
use crate::classes::{heap_class_size, heap_class_stride, KIND_OF};
use crate::heap::{self, Heap, EMPTY, STATS};
use crate::lifecycle::init;
use crate::mode::Mode;
use crate::page::{Page, PageState};
use crate::purge::{budget_max, purge_delay_ns};
use crate::purge::{free_page, over_budget, purge_idle, release_segment, sweep};
use crate::reserve;
use crate::segment::{Segment, SegmentKind};

/// The clock is read on every this many slow-path calls.
const CLOCK_EVERY: u32 = 16;

/// Allocation slow path for `class` (binds the thread's heap first).
///
/// # Safety
/// `class < HEAP_CLASSES`.
#[cold]
#[inline(never)]
pub(crate) unsafe fn alloc<P: Mode>(class: usize) -> (*mut u8, *mut Page) {
    let h = P::bound_heap();
    if h.is_null() {
        return (ptr::null_mut(), heap::EMPTY); // no memory for a heap
    }
    // SAFETY: h is this thread's own heap, not re-entered here.
    unsafe {
        if !(*h).state.is_set_up() {
            init::<P>(h);
        }
        (*h).stats.maybe_flush(&STATS);
        if (*h).slow_calls.load(Relaxed) >= CLOCK_EVERY {
            // Not under the heap's lock: creating the thread allocates.
            crate::reclaim::start_purger();
        }
        (*h).lock.lock();
        let found = find_page::<P>(&mut *h, class);
        // A page whose blocks are carved singly hands its next one out
        // here, unwritten (carved under the lock: a purger holding it
        // purges the uncarved part).
        let page = *(*h).current.get_unchecked(class);
        let carved = if found && (*page).free.load(Relaxed).is_null() {
            Page::carve_one::<P>(page)
        } else {
            ptr::null_mut()
        };
        (*h).lock.unlock();
        if !found {
            return (ptr::null_mut(), heap::EMPTY);
        }
        if !carved.is_null() {
            return heap::hand_out_carved::<P>(h, page, carved);
        }
    }
    heap::alloc::<P>(class)
}

/// Every [`ThreadStats::FLUSH_OPS`](heapkit_core::stats::ThreadStats::FLUSH_OPS)
/// allocations of a thread, from its fast path: flushes its counts and
/// runs the slow path's periodic work (the purge decay). Owner frees go
/// straight back on `free`, so a thread allocating and freeing in balance
/// may never empty a free list and reach [`alloc`]; this heartbeat (the
/// role of mimalloc's `local_free` swap) still purges its idle pages and
/// tells the reclaimer it is active.
///
/// # Safety
/// `h` must be the calling thread's heap, not re-entered here.
#[cold]
#[inline(never)]
pub(crate) unsafe fn heartbeat<P: Mode>(h: *mut Heap) {
    // SAFETY: caller guarantee.
    unsafe {
        (*h).stats.flush(&STATS);
        let calls = (*h).slow_calls.load(Relaxed).wrapping_add(1);
        (*h).slow_calls.store(calls, Relaxed);
        (*h).lock.lock();
        sweep::<P>(&mut *h, false);
        (*h).lock.unlock();
    }
}

/// Counts a remote free by a thread whose heap is not set up (a thread
/// that only frees): sets it up, so the count goes to the thread's own
/// counters (flushed at its exit), not to a shared cache line; see
/// [`heap::count_unbound`] for a thread whose heap was given back.
#[cold]
#[inline(never)]
pub(crate) fn free_remote_unbound<P: Mode>(size: usize) {
    let h = P::heap();
    if P::heap_is_idle(h) {
        return heap::count_unbound::<P>(|s| s.on_free(size));
    }
    // SAFETY: h is this thread's own heap (bound), not re-entered here.
    unsafe {
        if !(*h).state.is_set_up() {
            init::<P>(h);
        }
        (*h).stats.on_free(size);
    }
}

/// Makes `current[class]` a page with a free block; false on exhaustion.
fn find_page<P: Mode>(h: &mut Heap, class: usize) -> bool {
    let calls = h.slow_calls.load(Relaxed).wrapping_add(1);
    h.slow_calls.store(calls, Relaxed);
    if calls.is_multiple_of(CLOCK_EVERY) {
        sweep::<P>(h, false);
    }
    for attempt in 0..3 {
        let mut page = h.queues[class].first;
        while !page.is_null() {
            // SAFETY: pages on our queues are ours.
            unsafe {
                let parked = Page::is_parked(page);
                Page::collect::<P>(page);
                if parked {
                    (*page).unparked_allocs = h.stats.pending_allocs() as u32;
                }
                if Page::has_block::<P>(page) {
                    h.current[class] = page;
                    return true;
                }
                let next = (*page).next;
                h.queues[class].remove(page);
                Page::set_state(page, PageState::Full);
                h.full[class].push_back(page);
                page = next;
            }
        }
        h.current[class] = EMPTY;
        let progress = match attempt {
            0 => take_pending::<P>(h),
            1 => adopt_one::<P>(h),
            _ => false,
        };
        if !progress && attempt == 1 {
            break;
        }
    }
    let Some(page) = take_free_page::<P>(h, KIND_OF[class]) else {
        return false;
    };
    let size = heap_class_size(class);
    // SAFETY: page is a free page of a segment we own.
    unsafe {
        let seg = segment_of(page).cast::<Segment>();
        let (start, span) = Segment::span(seg, (*page).index as usize, size);
        Page::init::<P>(page, class, size, heap_class_stride(class), start, span);
        h.queues[class].push_front(page);
        Page::collect::<P>(page);
    }
    h.current[class] = page;
    true
}

/// Takes pending remote frees of every owned segment; pages that were full
/// go back on their queue. True if any did.
pub(crate) fn take_pending<P: Mode>(h: &mut Heap) -> bool {
    let mut requeued = false;
    for kind in SegmentKind::ALL {
        let mut seg = h.segments[kind.index()].first;
        while !seg.is_null() {
            // SAFETY: our segments; pages flagged pending are ours.
            unsafe {
                let mut bits = (*seg).pending.take();
                while bits != 0 {
                    let i = bits.trailing_zeros() as usize;
                    bits &= bits - 1;
                    requeued |= requeue_if_full::<P>(h, Segment::page(seg, i));
                }
                seg = (*seg).next;
            }
        }
    }
    requeued
}

/// Collects `page`'s remote frees; if it was full, puts it back on its
/// queue (remote.rs invariant 3). True if it was re-queued.
///
/// # Safety
/// `page` must be a page of a segment `h` owns.
pub(crate) unsafe fn requeue_if_full<P: Mode>(h: &mut Heap, page: *mut Page) -> bool {
    // SAFETY: caller guarantee.
    unsafe {
        if (*page).state == PageState::Free {
            return false;
        }
        Page::collect_remote::<P>(page);
        if (*page).state != PageState::Full {
            return false;
        }
        let class = (*page).class as usize;
        h.full[class].remove(page);
        Page::set_state(page, PageState::Queued);
        h.queues[class].push_back(page);
        true
    }
}

/// Adopts one abandoned segment: its pages join our queues, empty ones are
/// freed. True if a segment was adopted.
fn adopt_one<P: Mode>(h: &mut Heap) -> bool {
    let seg = abandoned::adopt::<P>(h.id);
    if seg.is_null() {
        return false;
    }
    let now = os::monotonic_ns();
    // SAFETY: the segment is ours now; nobody else touches its owner-only
    // metadata (the previous owner gave it up under the abandoned lock).
    unsafe {
        (*seg).pending.take();
        for i in 0..(*seg).page_count as usize {
            let page = Segment::page(seg, i);
            if (*page).state == PageState::Free {
                if (*page).dirty {
                    h.dirty_free += 1;
                }
                continue;
            }
            Page::collect_remote::<P>(page);
            if Page::in_use(page) == 0 {
                Segment::free_page::<P>(seg, page, now);
                h.dirty_free += 1;
            } else {
                Page::set_state(page, PageState::Queued);
                h.queues[(*page).class as usize].push_back(page);
                h.claimed_bytes += 1 << (*seg).page_shift;
                h.peak_claimed_bytes = h.peak_claimed_bytes.max(h.claimed_bytes);
            }
        }
        h.segments[(*seg).kind.index()].push_front(seg);
        if (*seg).used_pages == 0 {
            release_segment(h, seg);
        }
    }
    true
}

/// A free page of `kind` from our segments, a reserved or a new segment.
fn take_free_page<P: Mode>(h: &mut Heap, kind: SegmentKind) -> Option<*mut Page> {
    let mut seg = h.segments[kind.index()].first;
    while !seg.is_null() {
        // SAFETY: our segment.
        unsafe {
            if let Some(i) = Segment::find_free_page(seg) {
                return Some(claim(h, seg, i));
            }
            seg = (*seg).next;
        }
    }
    // A segment needed again within the purge delay after a free emptied
    // and released one: the program rebuilds what it freed (see
    // `purge::retire_page`, which keeps emptied segments from now on).
    if h.released_segment_ns != 0 {
        let now = os::coarse_monotonic_ns();
        if now.saturating_sub(h.released_segment_ns) < purge_delay_ns() {
            note_refault(h, now);
        }
    }
    let seg = reserve::acquire::<P>(kind, h.id);
    if seg.is_null() {
        return None;
    }
    // SAFETY: a fresh segment, ours. A segment from the reserve may come
    // with its pages unpurged (dirty, stamped with the time it entered the
    // reserve): they count as our dirty free pages, which our decay purges.
    unsafe {
        h.dirty_free += (*seg).dirty_pages as usize;
        h.segments[kind.index()].push_front(seg);
        Some(claim(h, seg, 0))
    }
}

/// Memory given back early was needed again: the eager purge thrashes
/// this program, so give it more room (see `purge::over_budget`).
fn note_refault(h: &mut Heap, now: u64) {
    h.purge_budget = (h.purge_budget * 2).min(budget_max(h));
    h.last_refault_ns = now;
    h.refaulting = true;
}

/// Marks page `i` of `seg` in use.
///
/// # Safety
/// `seg` ours, page `i` free.
unsafe fn claim(h: &mut Heap, seg: *mut Segment, i: usize) -> *mut Page {
    // SAFETY: caller guarantee.
    unsafe {
        let page = Segment::page(seg, i);
        if (*page).dirty {
            h.dirty_free -= 1;
            h.idle_bytes = h.idle_bytes.saturating_sub(1 << (*seg).page_shift);
        } else if (*page).freed_at_ns != 0 {
            // Purged before its delay ran out and needed again: the eager
            // purge thrashes this program, so give it more room.
            let now = os::coarse_monotonic_ns();
            if now.saturating_sub((*page).freed_at_ns) < purge_delay_ns() {
                note_refault(h, now);
            }
        }
        (*seg).used_pages += 1;
        h.claimed_bytes += 1 << (*seg).page_shift;
        h.peak_claimed_bytes = h.peak_claimed_bytes.max(h.claimed_bytes);
        Page::set_state(page, PageState::Queued);
        page
    }
}

/// A local free left `page` empty or un-full.
///
/// # Safety
/// `h` must be the calling thread's heap and own `page`.
#[cold]
#[inline(never)]
pub(crate) unsafe fn page_freed<P: Mode>(h: *mut Heap, page: *mut Page) {
    // SAFETY: caller guarantee; no re-entrancy here.
    let h = unsafe { &mut *h };
    h.stats.maybe_flush(&STATS);
    // SAFETY: page is ours. A reclaimer never touches the class's current
    // page, so its state and `retained` flag are the owner's to read here.
    unsafe {
        let class = (*page).class as usize;
        if h.current[class] == page
            && (*page).state == PageState::Queued
            && (*page).retained
            && ((*page).used.load(Relaxed) == 0 || Page::in_use(page) == 0)
            // (`retained` is set on small pages only.)
            && (!P::RECARVE_EMPTY || (*page).carve_kept || carve_within_keep(page))
        {
            // The class's only page, emptied again, already counted as
            // idle and with no more blocks carved than a reset keeps:
            // nothing to do, and no lock to take (the common case of an
            // allocate/free loop). The test reads no counts it can avoid
            // (`used` before `dropped`; the `carve_kept` flag before
            // capacity and stride and their division): in programs whose own
            // loop runs between such a malloc and free (cache-scratch,
            // cache-thrash), reading them and dividing cost about 15 ns a
            // free, 5-6% of those programs, where in a tight loop they
            // cost next to nothing (a cause this VM's lack of performance
            // counters left unidentified; measured by removing them one
            // at a time).
            return;
        }
    }
    h.lock.lock();
    // SAFETY: caller guarantee; the lock is held.
    unsafe { page_freed_locked::<P>(h, page) };
    // SAFETY: taken above.
    unsafe { h.lock.unlock() };
}

/// Whether `page` has no more blocks carved than a reset keeps; if so,
/// [`Page::carve_kept`] says it until the page carves more (so the
/// division runs once per carving, not once per emptying free).
///
/// # Safety
/// The caller owns `page`.
#[inline]
unsafe fn carve_within_keep(page: *mut Page) -> bool {
    // SAFETY: caller guarantee.
    unsafe {
        let kept =
            (*page).capacity <= Page::keep_on_reset((*page).stride as usize, SegmentKind::Small);
        (*page).carve_kept = kept;
        kept
    }
}

/// [`page_freed`] with the heap's lock held.
///
/// # Safety
/// As for [`page_freed`].
unsafe fn page_freed_locked<P: Mode>(h: &mut Heap, page: *mut Page) {
    // SAFETY: page is ours.
    unsafe {
        if (*page).state == PageState::Free {
            // A reclaimer retired it meanwhile (its last blocks came back
            // through remote frees).
            return;
        }
        let class = (*page).class as usize;
        if (*page).state == PageState::Full {
            h.full[class].remove(page);
            Page::set_state(page, PageState::Queued);
            h.queues[class].push_back(page);
        }
        if Page::in_use(page) != 0 {
            return;
        }
        let q = &mut h.queues[class];
        let seg = segment_of(page).cast::<Segment>();
        if (*seg).kind == SegmentKind::Small || (q.first == page && (*page).next.is_null()) {
            // Keep it queued: a small page (and a class's only page of any
            // kind), so the next allocations of the class reuse it instead
            // of retiring it now and claiming it back (glibc-simple 0.84x,
            // glibc-thread 1T 0.75x, the harness's churn 0.72x against
            // retiring every emptied page but a class's only one). Its
            // bytes count as idle: the eager purge (`over_budget`:
            // adaptive, at most 4x the bytes in use unless the program is
            // seen rebuilding) retires and purges every empty queued page,
            // and so do the reclaimer and the background purger once the
            // thread sleeps (the class's current page excepted) and thread
            // exit. Only small pages count as idle: a lone medium or big
            // page alone would pass the budget, and purging it on every
            // empty made programs that cycle big blocks re-fault (large:
            // +7% faults, +10% time). The class's current page is parked
            // or reset instead (`empty_page_kept`), so that the purger can
            // reach it while its thread sleeps (making every emptied page
            // non-current cost a slow path per allocation: hk-stress 1.2x).
            crate::purge::empty_page_kept::<P>(h, page);
            if !(*page).retained && (*seg).kind == SegmentKind::Small {
                (*page).retained = true;
                h.idle_bytes += 1 << (*seg).page_shift;
                if over_budget(h) {
                    purge_idle::<P>(h);
                }
            }
            return;
        }
        q.remove(page);
        if h.current[class] == page {
            h.current[class] = EMPTY;
        }
        free_page::<P>(h, page, os::coarse_monotonic_ns());
    }
}
