//! The slow paths: everything the fast paths in [`crate::heap`] hand off.
//!
//! - [`alloc`]: set the heap up on first use, then find a page with a free
//!   block for the class (walk the class queue collecting each page, park
//!   pages with nothing free on the full list, take pending remote frees,
//!   adopt an abandoned segment, or start a fresh page), then retry the fast
//!   path.
//! - [`page_freed`]: a local free emptied a page (retire it, unless it is the
//!   class's only page) or returned a block to a full page (re-queue it).
//! - Decay: free pages are purged (`MADV_DONTNEED`) once they have been free
//!   for [`PURGE_DELAY_NS`]; a segment whose pages are all free and purged
//!   goes to the global reserve or back to the OS on the next sweep, except
//!   a heap's last one of a kind; a segment that empties on a free is
//!   released at once (same exception).
//! - Eager purge ([`purge_idle`]): when a free leaves more idle bytes than
//!   the budget (see [`over_budget`]), every empty page is freed, every free
//!   page purged and core's large cache trimmed at once.
//! - Thread exit ([`thread_exit`]): collect, purge, release empty segments
//!   and abandon the rest for live threads to adopt.
//! - Fork: every global lock is taken around `fork()`; in the child,
//!   segments of threads that do not exist there are left to their dead
//!   owners (never adopted: a page may be half-updated), so frees into them
//!   are safe remote frees and their memory is not reused by the child.

use core::ffi::c_void;
use core::ptr;
use core::sync::atomic::{AtomicBool, AtomicU64, Ordering::Relaxed};

use heapkit_core::large;
use heapkit_core::os::{self, ThreadExitKey};
use heapkit_core::segment::segment_of;

use crate::heap::{self, Heap, ACTIVE, EMPTY, STATS, UNINIT};
use crate::page::{Page, PageState};
use crate::segment::{self, heap_class_size, heap_class_stride, Segment, KIND_OF};

/// A free page's memory is returned to the OS after this long.
pub(crate) const PURGE_DELAY_NS: u64 = 20_000_000;
/// Smallest eager-purge budget (see [`purge_idle`]).
pub(crate) const PURGE_BUDGET_MIN: usize = 256 << 10;
/// Largest eager-purge budget.
const PURGE_BUDGET_MAX: usize = 64 << 20;
/// Idle bytes allowed per byte of pages in use, whatever the budget (a
/// lower ratio purged more and re-faulted trees/realloc for no RSS gain).
const IDLE_PER_CLAIMED: usize = 4;
/// The budget halves on a sweep once no early-purged page was needed again
/// for this long.
const BUDGET_RELAX_NS: u64 = 1_000_000_000;
/// The clock is read on every this many slow-path calls.
const CLOCK_EVERY: u32 = 16;

static NEXT_ID: AtomicU64 = AtomicU64::new(1);
static EXIT_KEY: ThreadExitKey = ThreadExitKey::new();
static ATFORK: AtomicBool = AtomicBool::new(false);

/// Allocation slow path for `class` (binds the thread's heap first).
///
/// # Safety
/// `class < HEAP_CLASSES`.
#[cold]
#[inline(never)]
pub(crate) unsafe fn alloc(class: usize) -> *mut u8 {
    let h = heap::bound_heap();
    // SAFETY: h is this thread's own heap, not re-entered here.
    unsafe {
        if (*h).state != ACTIVE {
            init(h);
        }
        (*h).stats.maybe_flush(&STATS);
        if !find_page(&mut *h, class) {
            return ptr::null_mut();
        }
    }
    heap::alloc(class)
}

/// Counts a remote free by a thread whose heap is not set up (a thread
/// that only frees): sets it up, so the count goes to the thread's own
/// counters (flushed at its exit), not to a shared cache line.
#[cold]
#[inline(never)]
pub(crate) fn free_remote_unbound(size: usize) {
    let h = heap::bound_heap();
    // SAFETY: h is this thread's own heap, not re-entered here.
    unsafe {
        if (*h).state != ACTIVE {
            init(h);
        }
        (*h).stats.on_free(size);
    }
}

/// Sets the heap up. Re-entrant allocations (from key registration or
/// atfork under the shim) see an active heap already.
///
/// # Safety
/// `h` must be the calling thread's heap.
unsafe fn init(h: *mut Heap) {
    // SAFETY: h is ours; no reference is held across the calls below.
    unsafe {
        (*h).id = NEXT_ID.fetch_add(1, Relaxed);
        (*h).state = ACTIVE;
    }
    if !ATFORK.swap(true, Relaxed) {
        os::register_atfork(before_fork, after_fork_parent, after_fork_child);
    }
    EXIT_KEY.register(thread_exit, 1 as *mut c_void);
}

/// Makes `current[class]` a page with a free block; false on exhaustion.
fn find_page(h: &mut Heap, class: usize) -> bool {
    h.slow_calls = h.slow_calls.wrapping_add(1);
    if h.slow_calls % CLOCK_EVERY == 0 {
        sweep(h, false);
    }
    for attempt in 0..3 {
        let mut page = h.queues[class].first;
        while !page.is_null() {
            // SAFETY: pages on our queues are ours.
            unsafe {
                Page::collect(page);
                if !(*page).free.is_null() {
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
            0 => take_pending(h),
            1 => adopt_one(h),
            _ => false,
        };
        if !progress && attempt == 1 {
            break;
        }
    }
    let kind = KIND_OF[class] as usize;
    let Some(page) = take_free_page(h, kind) else {
        return false;
    };
    let size = heap_class_size(class);
    // SAFETY: page is a free page of a segment we own.
    unsafe {
        let seg = segment_of(page).cast::<Segment>();
        let (start, span) = Segment::span(seg, (*page).index as usize, size);
        Page::init(page, class, size, heap_class_stride(class), start, span);
        h.queues[class].push_front(page);
        Page::collect(page);
    }
    h.current[class] = page;
    true
}

/// Takes pending remote frees of every owned segment; pages that were full
/// go back on their queue. True if any did.
fn take_pending(h: &mut Heap) -> bool {
    let mut requeued = false;
    for kind in 0..segment::KINDS {
        let mut seg = h.segments[kind].first;
        while !seg.is_null() {
            // SAFETY: our segments; pages flagged pending are ours.
            unsafe {
                let mut bits = (*seg).pending.take();
                while bits != 0 {
                    let i = bits.trailing_zeros() as usize;
                    bits &= bits - 1;
                    requeued |= requeue_if_full(h, Segment::page(seg, i));
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
unsafe fn requeue_if_full(h: &mut Heap, page: *mut Page) -> bool {
    // SAFETY: caller guarantee.
    unsafe {
        if (*page).state == PageState::Free {
            return false;
        }
        Page::collect_remote(page);
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
fn adopt_one(h: &mut Heap) -> bool {
    let seg = segment::adopt(h.id);
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
            Page::collect_remote(page);
            if Page::in_use(page) == 0 {
                Page::set_state(page, PageState::Free);
                (*page).free = ptr::null_mut();
                (*page).local_free = ptr::null_mut();
                (*page).freed_at_ns = now;
                (*seg).used_pages -= 1;
                h.dirty_free += 1;
            } else {
                Page::set_state(page, PageState::Queued);
                h.queues[(*page).class as usize].push_back(page);
                h.claimed_bytes += 1 << (*seg).page_shift;
            }
        }
        h.segments[(*seg).kind as usize].push(seg);
        if (*seg).used_pages == 0 {
            release_segment(h, seg);
        }
    }
    true
}

/// A free page of `kind` from our segments, a reserved or a new segment.
fn take_free_page(h: &mut Heap, kind: usize) -> Option<*mut Page> {
    let mut seg = h.segments[kind].first;
    while !seg.is_null() {
        // SAFETY: our segment.
        unsafe {
            if let Some(i) = Segment::find_free_page(seg) {
                return Some(claim(h, seg, i));
            }
            seg = (*seg).next;
        }
    }
    let seg = segment::acquire(kind, h.id);
    if seg.is_null() {
        return None;
    }
    // SAFETY: a fresh segment, ours.
    unsafe {
        h.segments[kind].push(seg);
        Some(claim(h, seg, 0))
    }
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
            let now = os::monotonic_ns();
            if now.saturating_sub((*page).freed_at_ns) < PURGE_DELAY_NS {
                h.purge_budget = (h.purge_budget * 2).min(PURGE_BUDGET_MAX);
                h.last_refault_ns = now;
                h.refaulting = true;
            }
        }
        (*seg).used_pages += 1;
        h.claimed_bytes += 1 << (*seg).page_shift;
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
pub(crate) unsafe fn page_freed(h: *mut Heap, page: *mut Page) {
    // SAFETY: caller guarantee; no re-entrancy here.
    let h = unsafe { &mut *h };
    h.stats.maybe_flush(&STATS);
    // SAFETY: page is ours.
    unsafe {
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
        if q.first == page && (*page).next.is_null() {
            // The class's only page: keep it, so alloc/free loops do not
            // thrash; its bytes count as idle until the next eager purge.
            // Only small pages count: a lone medium or big page alone would
            // pass the budget, and purging it on every empty made programs
            // that cycle big blocks re-fault (large: +7% faults, +10% time);
            // the decay and thread exit still return those.
            let seg = segment_of(page).cast::<Segment>();
            if !(*page).retained && (*seg).kind == 0 {
                (*page).retained = true;
                h.idle_bytes += 1 << (*seg).page_shift;
                if over_budget(h) {
                    purge_idle(h);
                }
            }
            return;
        }
        q.remove(page);
        if h.current[class] == page {
            h.current[class] = EMPTY;
        }
        free_page(h, page, os::monotonic_ns());
    }
}

/// [`retire_page`], then an eager purge if the idle bytes passed the
/// budget, or the decay sweep if it is due.
///
/// # Safety
/// As for [`retire_page`].
unsafe fn free_page(h: &mut Heap, page: *mut Page, now: u64) {
    // SAFETY: caller guarantee.
    unsafe { retire_page(h, page, now) };
    if over_budget(h) {
        purge_idle(h);
    } else if now >= h.next_sweep_ns {
        sweep(h, false);
    }
}

/// Returns an empty page to its segment; an emptied segment is released
/// unless it is the heap's last of its kind.
///
/// # Safety
/// `page` is ours, empty and on no list.
unsafe fn retire_page(h: &mut Heap, page: *mut Page, now: u64) {
    // SAFETY: caller guarantee.
    unsafe {
        let seg = segment_of(page).cast::<Segment>();
        Page::set_state(page, PageState::Free);
        (*page).free = ptr::null_mut();
        (*page).local_free = ptr::null_mut();
        (*page).freed_at_ns = now;
        (*page).retained = false;
        (*seg).used_pages -= 1;
        h.dirty_free += 1;
        h.idle_bytes += 1 << (*seg).page_shift;
        h.claimed_bytes = h.claimed_bytes.saturating_sub(1 << (*seg).page_shift);
        let kind = (*seg).kind as usize;
        // An emptied segment goes back at once (purged into the reserve or
        // unmapped), except the heap's last of its kind: measured, keeping
        // more only raised RSS after free-all without saving time.
        if (*seg).used_pages == 0 && !(h.segments[kind].first == seg && (*seg).next.is_null()) {
            release_segment(h, seg);
        } else if h.segments[kind].first != seg {
            // Free pages are found from the front.
            h.segments[kind].remove(seg);
            h.segments[kind].push(seg);
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
fn over_budget(h: &Heap) -> bool {
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
fn purge_idle(h: &mut Heap) {
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
                    retire_page(h, page, now);
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
    sweep(h, true);
    h.idle_bytes = 0;
}

/// Releases an owned segment with no page in use.
///
/// # Safety
/// `seg` ours, on our list, all pages free.
unsafe fn release_segment(h: &mut Heap, seg: *mut Segment) {
    // SAFETY: caller guarantee.
    unsafe {
        for i in 0..(*seg).page_count as usize {
            if (*Segment::page(seg, i)).dirty {
                h.dirty_free -= 1;
                h.idle_bytes = h.idle_bytes.saturating_sub(1 << (*seg).page_shift);
            }
        }
        h.segments[(*seg).kind as usize].remove(seg);
        segment::release(seg);
    }
}

/// Decay: purges free pages older than [`PURGE_DELAY_NS`] (all of them if
/// `all`) and re-queues full pages with remote frees a lost notification
/// left behind. Runs at most every half delay unless `all`.
fn sweep(h: &mut Heap, all: bool) {
    let now = os::monotonic_ns();
    if !all && now < h.next_sweep_ns {
        return;
    }
    h.next_sweep_ns = now + PURGE_DELAY_NS / 2;
    if !all && now.saturating_sub(h.last_refault_ns) >= BUDGET_RELAX_NS {
        h.purge_budget = (h.purge_budget / 2).max(PURGE_BUDGET_MIN);
        h.refaulting = false;
    }
    for kind in 0..segment::KINDS {
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
                for i in 0..(*seg).page_count as usize {
                    let page = Segment::page(seg, i);
                    match (*page).state {
                        PageState::Free
                            if (*page).dirty
                                && (all
                                    || now.saturating_sub((*page).freed_at_ns)
                                        >= PURGE_DELAY_NS) =>
                        {
                            let (p, len) = Segment::purgeable(seg, i);
                            os::purge(p, len);
                            (*page).dirty = false;
                            h.dirty_free -= 1;
                            h.idle_bytes = h.idle_bytes.saturating_sub(len);
                        }
                        PageState::Full if Page::has_remote(page) => {
                            requeue_if_full(h, page);
                        }
                        _ => {}
                    }
                }
                seg = (*seg).next;
            }
        }
    }
    large::trim(true);
}

/// Thread-exit hook (pthread key destructor): hand everything back.
unsafe extern "C" fn thread_exit(_value: *mut c_void) {
    let h = heap::bound_heap();
    // SAFETY: runs on the exiting thread; its heap is not in use.
    unsafe {
        if (*h).state != ACTIVE {
            return;
        }
        abandon_all(&mut *h);
        (*h).stats.flush(&STATS);
        h.write(Heap::new());
        debug_assert!((*h).state == UNINIT);
    }
}

/// Collects every page, frees the empty ones, purges, releases empty
/// segments and abandons the others.
fn abandon_all(h: &mut Heap) {
    let now = os::monotonic_ns();
    for kind in 0..segment::KINDS {
        loop {
            // SAFETY: our segments; after the loop body each is released or
            // abandoned and never touched by us again.
            unsafe {
                let seg = h.segments[kind].pop();
                if seg.is_null() {
                    break;
                }
                (*seg).pending.take();
                for i in 0..(*seg).page_count as usize {
                    let page = Segment::page(seg, i);
                    if (*page).state != PageState::Free {
                        Page::collect_remote(page);
                        if Page::in_use(page) == 0 {
                            Page::set_state(page, PageState::Free);
                            (*page).free = ptr::null_mut();
                            (*page).local_free = ptr::null_mut();
                            (*page).freed_at_ns = now;
                            (*seg).used_pages -= 1;
                        }
                    }
                    if (*page).state == PageState::Free && (*page).dirty {
                        let (p, len) = Segment::purgeable(seg, i);
                        os::purge(p, len);
                        (*page).dirty = false;
                    }
                }
                if (*seg).used_pages == 0 {
                    segment::release(seg);
                } else {
                    segment::abandon(seg);
                }
            }
        }
    }
    large::trim(true);
}

/// Purges every free page of the calling thread's heap and releases what it
/// can (for `SizeClass::collect`).
pub(crate) fn collect_now() {
    let h = heap::bound_heap();
    // SAFETY: our heap, not re-entered.
    unsafe {
        if (*h).state == ACTIVE {
            take_pending(&mut *h);
            sweep(&mut *h, true);
        }
    }
    large::trim(false);
}

unsafe extern "C" fn before_fork() {
    segment::lock_all();
    large::before_fork();
}

unsafe extern "C" fn after_fork_parent() {
    large::after_fork_parent();
    segment::unlock_all();
}

unsafe extern "C" fn after_fork_child() {
    large::after_fork_child();
    segment::after_fork_child();
}

#[cfg(test)]
mod tests {
    use core::alloc::Layout;

    use heapkit_core::HeapAlloc;

    use super::*;
    use crate::SizeClass;

    /// Allocates `n` blocks of 64 B through `a` on this thread, then frees
    /// them all.
    fn fill_and_free(a: &SizeClass, n: usize) {
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
        let h = heap::heap();
        // SAFETY: our heap, not in use by the allocator during this read.
        unsafe { (*h).dirty_free << 16 }
    }

    #[test]
    fn a_thread_that_frees_everything_gets_its_memory_back_without_more_calls() {
        std::thread::spawn(|| {
            let a = SizeClass::new();
            fill_and_free(&a, 50_000); // 3.2 MiB: 49 pages of one segment
                                       // No collect(), no further allocation: the frees themselves
                                       // purged all but a budget's worth.
            assert!(unpurged_idle_bytes() <= PURGE_BUDGET_MIN + (64 << 10));
        })
        .join()
        .unwrap();
    }

    #[test]
    fn a_program_that_frees_and_reallocates_soon_stops_purging() {
        std::thread::spawn(|| {
            let a = SizeClass::new();
            for _ in 0..6 {
                fill_and_free(&a, 50_000); // 3.2 MiB per round
            }
            let h = heap::heap();
            // SAFETY: our heap, idle.
            let budget = unsafe { (*h).purge_budget };
            // Rounds reused pages purged moments before: the budget grew.
            assert!(budget > PURGE_BUDGET_MIN, "budget {budget}");
        })
        .join()
        .unwrap();
    }
}
