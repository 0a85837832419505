//! The thread heap and the two fast paths.
//!
//! Each thread has one [`Heap`] per mode (see [`crate::mode`]) in a
//! `const`-initialised `thread_local!`
//! without a destructor, found on the fast paths through an initial-exec
//! thread pointer (`heapkit_core::thread_state!`: two instructions and no
//! `__tls_get_addr` call, even in `libheapkit.so`). Until a thread's first
//! slow path binds it, the pointer names a static, never-written idle heap,
//! whose `current[class]` are all the
//! static `EMPTY_PAGE`. `current[class]` points at the page the next
//! allocation of that class pops from, or at `EMPTY_PAGE` (whose free list
//! is always empty) before the heap is set up and after a page runs dry, so
//! the fast path needs no null or "initialised?" test: an empty list sends
//! it to [`crate::slow`], which binds the heap first.
//!
//! `allocate`: class lookup, load page, pop `free`, count. `free`: mask to
//! the segment, shift to the page, and either push on the page's `free`
//! (owner) or on its `thread_free` (anyone else).

use core::ptr;
use core::sync::atomic::{AtomicU32, Ordering::Relaxed, Ordering::Release};

use heapkit_core::large;
use heapkit_core::list::Linked;
use heapkit_core::lock::RawSpinLock;
use heapkit_core::misuse::Misuse;
use heapkit_core::segment::segment_of;
use heapkit_core::{GlobalStats, ThreadStats};

use crate::mode::Mode;

use crate::classes::HEAP_CLASSES;
use crate::page::{Page, PageList, FULL_FLAG};
use crate::remote::Block;
use crate::segment::{Segment, SegmentList, KINDS};
use crate::slow;

/// Where a heap is in its life. (A heap lives in a slot of its mode's
/// pool from its thread's first slow path to its exit hook, which gives
/// the slot back: there is no state after that.)
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum HeapState {
    /// Not set up yet: no id, no segments.
    Uninit,
    /// Set up and registered for reclaim: has an id, may own segments; its
    /// thread's exit hook will abandon them.
    Active,
    /// Set up by a thread whose exit hook already ran once (a later
    /// thread-exit destructor allocates): served, but not registered for
    /// reclaim, since the hook may not run again and the registry must
    /// never hold a heap whose thread is gone. Abandoned by the hook if it
    /// does run again.
    Reactivated,
}

/// One thread's heap. Owner-thread only.
pub(crate) struct Heap {
    /// Page each class allocates from (or `EMPTY_PAGE`); always the first
    /// page of `queues[class]` when not `EMPTY_PAGE`.
    pub current: [*mut Page; HEAP_CLASSES],
    /// Unique id (never 0 once active); segments name their owner by it.
    pub id: u64,
    /// See [`HeapState`].
    pub state: HeapState,
    /// Pages of each class that may have free blocks.
    pub queues: [PageList; HEAP_CLASSES],
    /// Pages of each class that had none when last looked at.
    pub full: [PageList; HEAP_CLASSES],
    /// Segments owned, per kind.
    pub segments: [SegmentList; KINDS],
    /// Counters, flushed into [`STATS`].
    pub stats: ThreadStats,
    /// Free pages of owned segments whose memory is not purged yet.
    pub dirty_free: usize,
    /// Bytes of dirty free pages plus empty pages kept as their class's
    /// only page, counted since the last eager purge (may over-count).
    pub idle_bytes: usize,
    /// `idle_bytes` above this purges at once (see `purge::purge_idle`);
    /// doubles when a page purged early is needed again, halves back
    /// towards its minimum when that has not happened for a while.
    pub purge_budget: usize,
    /// Bytes of the pages this heap has in use (claimed, not free).
    pub claimed_bytes: usize,
    /// The most `claimed_bytes` has been: twice it bounds the purge budget
    /// when that is more than `PURGE_BUDGET_MAX` (`purge::budget_max`).
    pub peak_claimed_bytes: usize,
    /// When a page purged early was last needed again (monotonic ns).
    pub last_refault_ns: u64,
    /// A page purged early was needed again within the last
    /// `BUDGET_RELAX_NS`: this program frees and rebuilds, so the eager
    /// purge keeps up to `purge_budget` even when (nearly) nothing is in
    /// use. Cleared by the sweep that relaxes the budget.
    pub refaulting: bool,
    /// When this heap last released an empty segment (`purge::release_segment`,
    /// monotonic ns; 0: never). A segment acquired within the purge delay
    /// after that is a refault, as a page purged early and claimed again
    /// is (`slow::take_free_page`).
    pub released_segment_ns: u64,
    /// Next time (monotonic ns) the slow path runs the decay sweep.
    pub next_sweep_ns: u64,
    /// Slow-path calls (to read the clock only now and then, and for
    /// reclaimers to tell an idle owner: written by the owner only).
    pub slow_calls: AtomicU32,
    /// Held by the owner on its slow paths and by a thread reclaiming this
    /// heap's remotely emptied pages (`reclaim.rs`); never on a fast path.
    pub lock: RawSpinLock,
    /// Bytes this thread freed into other threads' pages since it last
    /// looked for pages to reclaim (owner only).
    pub remote_freed: usize,
    /// `slow_calls` as a reclaimer last saw it, and when (written by
    /// reclaimers only, under the registry lock).
    pub observed_calls: u32,
    /// See `observed_calls`.
    pub observed_at_ns: u64,
    /// Links in the registry of active heaps (under its lock).
    pub next_heap: *mut Heap,
    /// See `next_heap`.
    pub prev_heap: *mut Heap,
    /// Freed blocks held back (hardened mode with `HEAPKIT_QUARANTINE_KB`;
    /// owner only; empty otherwise).
    pub quarantine: crate::quarantine::Quarantine,
}

impl HeapState {
    /// The heap has an id and may own pages.
    #[inline]
    pub(crate) fn is_set_up(self) -> bool {
        matches!(self, HeapState::Active | HeapState::Reactivated)
    }
}

impl Heap {
    /// A heap with no pages.
    pub(crate) const fn new() -> Heap {
        Heap {
            current: [EMPTY; HEAP_CLASSES],
            id: 0,
            state: HeapState::Uninit,
            queues: [PageList::EMPTY; HEAP_CLASSES],
            full: [PageList::EMPTY; HEAP_CLASSES],
            segments: [SegmentList::EMPTY; KINDS],
            stats: ThreadStats::new(),
            dirty_free: 0,
            idle_bytes: 0,
            purge_budget: crate::purge::PURGE_BUDGET_MIN,
            last_refault_ns: 0,
            refaulting: false,
            released_segment_ns: 0,
            claimed_bytes: 0,
            peak_claimed_bytes: 0,
            next_sweep_ns: 0,
            slow_calls: AtomicU32::new(0),
            lock: RawSpinLock::new(),
            remote_freed: 0,
            observed_calls: 0,
            observed_at_ns: 0,
            next_heap: ptr::null_mut(),
            prev_heap: ptr::null_mut(),
            quarantine: crate::quarantine::Quarantine::new(),
        }
    }
}

// SAFETY: `next_heap` and `prev_heap` are the heap's own registry links,
// used only by the registry list under its lock.
unsafe impl Linked for Heap {
    unsafe fn next(node: *mut Self) -> *mut *mut Self {
        // SAFETY: node is a live heap (the trait's contract).
        unsafe { ptr::addr_of_mut!((*node).next_heap) }
    }
    unsafe fn prev(node: *mut Self) -> *mut *mut Self {
        // SAFETY: as above.
        unsafe { ptr::addr_of_mut!((*node).prev_heap) }
    }
}

/// The sentinel page: never written, its `free` list always empty.
pub(crate) struct EmptyPage(Page);
// SAFETY: nothing ever writes the sentinel (every writer first finds a block
// on its empty free list, which never happens).
unsafe impl Sync for EmptyPage {}
static EMPTY_PAGE: EmptyPage = EmptyPage(Page::new());
/// Pointer to the sentinel.
pub(crate) const EMPTY: *mut Page = ptr::addr_of!(EMPTY_PAGE.0).cast_mut();

/// Counters of every thread.
pub(crate) static STATS: GlobalStats = GlobalStats::new();

/// Runs `f` on the calling thread's counters (then flushes them if due):
/// its heap's, binding it first if need be (see [`count_unbound`]).
#[inline]
pub(crate) fn count<P: Mode>(f: impl FnOnce(&ThreadStats)) {
    let h = P::heap();
    if P::heap_is_idle(h) {
        return count_unbound::<P>(f);
    }
    // SAFETY: h is the calling thread's own heap (not the sentinel); its
    // counters are written by this thread only.
    unsafe {
        f(&(*h).stats);
        (*h).stats.maybe_flush(&STATS);
    }
}

/// [`count`] for a thread with no heap bound: binds one (so a thread that
/// only frees writes no shared line after this), unless the thread gave
/// its heap back already (a free from a destructor after its exit hook, or
/// from glibc's own thread teardown: a heap bound then might never be
/// given back) or none can be mapped; the count then goes straight into
/// [`STATS`].
#[cold]
#[inline(never)]
pub(crate) fn count_unbound<P: Mode>(f: impl FnOnce(&ThreadStats)) {
    let h = P::bound_heap_unless_released();
    if h.is_null() {
        let once = ThreadStats::new();
        f(&once);
        once.flush(&STATS);
        return;
    }
    // SAFETY: as for `count`.
    unsafe {
        f(&(*h).stats);
        (*h).stats.maybe_flush(&STATS);
    }
}

/// Allocates a block of `class` from mode `P`'s heap: the block and its
/// page (callers that write into the block's page metadata, the trailer
/// and `calloc`'s zeroing, need not find it again); the block is null on
/// exhaustion (and the page then meaningless).
#[inline(always)]
pub(crate) fn alloc<P: Mode>(class: usize) -> (*mut u8, *mut Page) {
    let h = P::heap();
    // SAFETY: h is this thread's heap, used by no one else and not
    // re-entered here; class < HEAP_CLASSES (callers get it from class_of or
    // aligned_twin); current[class] is a page of h or the never-written
    // sentinel, whose list is empty.
    unsafe {
        let page = *(*h).current.get_unchecked(class);
        let block = (*page).free.load(Relaxed);
        if block.is_null() {
            return slow::alloc::<P>(class);
        }
        let next = Page::next_free::<P>(page, block);
        if !P::on_pop(page, block, next) {
            return pop_unchecked::<P>(h, page, block, next);
        }
        pop::<P>(h, page, block, next)
    }
}

/// Takes `block` off `page`'s free list, `next` its successor, and counts
/// the allocation.
///
/// # Safety
/// `h` is the calling thread's heap, `page` one of its pages, `block` the
/// head of its free list, checked by the mode.
#[inline(always)]
unsafe fn pop<P: Mode>(
    h: *mut Heap,
    page: *mut Page,
    block: *mut Block,
    next: *mut Block,
) -> (*mut u8, *mut Page) {
    // SAFETY: caller guarantee.
    unsafe {
        (*page).free.store(next, Relaxed);
        count_handout::<P>(h, page);
        (block.cast(), page)
    }
}

/// Counts a block of `page` handed out: in the page's `used`, and in the
/// thread's statistics (whose flush may run the heartbeat).
///
/// # Safety
/// `h` is the calling thread's heap, `page` one of its pages, from which a
/// block (within `capacity`) was just taken.
#[inline(always)]
unsafe fn count_handout<P: Mode>(h: *mut Heap, page: *mut Page) {
    // SAFETY: caller guarantee.
    unsafe {
        let used = (*page).used.load(Relaxed);
        (*page).used.store(used + 1, Relaxed);
        debug_assert!(used < (*page).capacity);
        if (*h).stats.count_alloc((*page).block_size as usize) {
            slow::heartbeat::<P>(h);
        }
    }
}

/// Hands out `block`, which the slow path just carved from `page` without
/// listing it (`Page::carve_one`).
///
/// # Safety
/// As for [`count_handout`]; `block` is that block.
pub(crate) unsafe fn hand_out_carved<P: Mode>(
    h: *mut Heap,
    page: *mut Page,
    block: *mut u8,
) -> (*mut u8, *mut Page) {
    // SAFETY: forwarded caller guarantee.
    unsafe { count_handout::<P>(h, page) };
    (block, page)
}

/// [`pop`] of a block whose canary the mode still has to check
/// (`Mode::on_pop` returned false): out of line, so that the fast path
/// keeps nothing live across a call.
///
/// # Safety
/// As for [`pop`].
#[inline(never)]
unsafe fn pop_unchecked<P: Mode>(
    h: *mut Heap,
    page: *mut Page,
    block: *mut Block,
    next: *mut Block,
) -> (*mut u8, *mut Page) {
    // SAFETY: forwarded caller guarantee.
    unsafe {
        P::on_pop_unchecked(page, block);
        pop::<P>(h, page, block, next)
    }
}

/// Frees any block of ours (large ones included).
///
/// # Safety
/// `ptr` must be a live block of this allocator.
#[inline(always)]
pub(crate) unsafe fn free<P: Mode>(ptr: *mut u8) {
    let seg = segment_of(ptr).cast::<Segment>();
    // SAFETY: every block of ours lies in a tagged segment (ours, or the
    // large path's).
    unsafe {
        if (*seg).tag != P::TAG {
            return free_large::<P>(ptr);
        }
        if P::BLOCK_STATE && crate::quarantine::wanted() {
            return crate::quarantine::hold::<P>(ptr);
        }
        free_small::<P>(ptr)
    }
}

/// Frees a small block of ours (the quarantine, if any, passed).
///
/// # Safety
/// `ptr` must be a live small block of mode `P`.
#[inline(always)]
pub(crate) unsafe fn free_small<P: Mode>(ptr: *mut u8) {
    let seg = segment_of(ptr).cast::<Segment>();
    let h = P::heap();
    // SAFETY: the block is live, so its segment and page are mapped and in
    // use. Only the owner thread compares equal to `owner`, so the plain
    // writes below are owner-only.
    unsafe {
        let page = Segment::page_of(seg, ptr);
        if (*seg).owner.load(Relaxed) == (*h).id {
            P::on_free(page, ptr);
            let b = ptr.cast::<Block>();
            // Straight back on `free` (LIFO): the next allocation of the
            // class reuses the block just freed, still in cache (alloc-test
            // 1T 0.79x, cfrac 0.82x against pushing to `local_free`).
            Page::link::<P>(page, b, (*page).free.load(Relaxed));
            (*page).free.store(b, Relaxed);
            (*page).is_zero = false;
            (*h).stats.on_free((*page).block_size as usize);
            debug_assert!(
                Page::in_use(page) > 0,
                "owner free into a page with no block in use"
            );
            let used = (*page).used.load(Relaxed) - 1;
            // Release: a reclaimer that reads the page empty (Acquire, in
            // `Page::in_use`) and retires it sees the link and free-list
            // head written above (a plain move on x86, as Relaxed).
            (*page).used.store(used, Release);
            // One compare: the page is now empty (used == 0 wraps to the
            // top) or it is on the full list (FULL_FLAG set).
            if used.wrapping_sub(1) >= FULL_FLAG - 1 {
                slow::page_freed::<P>(h, page);
            }
        } else {
            free_remote::<P>(h, seg, page, ptr);
        }
    }
}

/// Frees (and counts) a large block.
///
/// # Safety
/// `ptr` must be a live large block.
#[inline(never)]
unsafe fn free_large<P: Mode>(ptr: *mut u8) {
    // SAFETY: caller guarantee.
    unsafe {
        let size = large::size_to_free(ptr);
        count::<P>(|s| s.on_free(size));
        large::free(ptr);
    }
}

/// A free from a thread that does not own the page (or whose heap is not
/// bound yet). Counts into the freeing thread's own counters: a thread that
/// only frees binds its heap here once and never touches a shared counter.
///
/// # Safety
/// As for [`free`], with `seg`/`page` the block's.
// Out of line: inlined, its push loop made every `free` export save four
// registers (cache-scratch 1T, a malloc/free loop, 1.05x).
#[inline(never)]
unsafe fn free_remote<P: Mode>(h: *mut Heap, seg: *mut Segment, page: *mut Page, ptr: *mut u8) {
    // SAFETY: the block is live: page and segment stay mapped until the push
    // publishes it, after which we touch neither (remote.rs invariant 2).
    unsafe {
        P::on_remote_free(page, ptr);
        let size = (*page).shared_size as usize;
        let index = (*page).index as usize;
        // The copy on the remote freers' line: `key` sits on the owner's,
        // and reading it here pulled that line away from the owner on
        // every hardened remote free.
        let key = (*page).shared_key;
        let pushed = (*page).thread_free.push(
            ptr.cast(),
            |head| P::encode(head.cast(), key).cast(),
            || (*seg).pending.notify(index),
        );
        if !pushed {
            // Still the top of the stack: freed twice in a row (the owner
            // no longer walks the stack, which found the cycle).
            crate::checks::report_block("free", Misuse::DoubleFree, page, ptr);
        }
        if (*h).state.is_set_up() {
            (*h).stats.on_free(size);
            (*h).remote_freed += size;
            if (*h).remote_freed >= crate::reclaim::RECLAIM_EVERY_BYTES {
                crate::reclaim::remote_frees_piled_up::<P>(h);
            }
        } else {
            slow::free_remote_unbound::<P>(size);
        }
    }
}
