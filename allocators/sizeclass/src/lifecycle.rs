//! A heap's life: set-up on a thread's first slow path, hand-over at thread
//! exit, and the fork handlers.
//!
//! - [`init`]: a unique id, the process's fork handlers (once) and the
//!   thread-exit key.
//! - [`thread_exit`]: collect, purge what passes [`EXIT_KEEP_BYTES`],
//!   release empty segments and abandon the rest for live threads to adopt
//!   ([`crate::slow`]).
//! - Fork: every global lock is taken around `fork()`; in the child,
//!   segments of threads that do not exist there are left to their dead
//!   owners (never adopted: a page may be half-updated), so frees into them
//!   are safe remote frees and their memory is not reused by the child.

use core::ffi::c_void;
use core::sync::atomic::{AtomicBool, AtomicU64, Ordering::Relaxed};

use heapkit_core::large;
use heapkit_core::os::{self, ThreadExitKey};

use heapkit_core::harden::{Fast, Hardened};

use crate::abandoned;
use crate::heap::{Heap, HeapState, STATS};
use crate::mode::Mode;
use crate::page::{Page, PageState};
use crate::purge::purge_delay_ns;
use crate::reclaim;
use crate::reserve;
use crate::segment::{self, Segment};

static NEXT_ID: AtomicU64 = AtomicU64::new(1);

/// Bytes of free pages an exiting thread leaves unpurged in the segments it
/// abandons: the thread that adopts them next (threads that start where
/// others exited: worker pools, the standard `larson` and `mstress`
/// programs) finds them resident, and its decay purges what it does not
/// use. Purging them all made `larson` fault 5570 pages where mimalloc,
/// which keeps them, faults 1492 (its exiting threads left 360 KiB each).
/// What passes this is purged at once, so a thread that freed much and
/// exited does not leave it resident until an adoption (with 2 MiB, and
/// running heaps' segments kept unpurged in the reserve too, the harness's
/// RSS after free-all on larson ×4 went from 8.2 to 9.9 MiB; with 1 MiB
/// and only exiting threads' segments kept, 8.6 MiB). Empty segments go to
/// the reserve, see `reserve::release`.
pub(crate) const EXIT_KEEP_BYTES: usize = 1 << 20;
static EXIT_KEY: ThreadExitKey = ThreadExitKey::new();
static ATFORK: AtomicBool = AtomicBool::new(false);

/// Called when a thread binds a heap of either mode (a slot of the mode's
/// pool, see `heapkit_core::thread_slots`): registers the thread-exit hook,
/// which gives the slot back. Every bound heap needs it, set up or not (a
/// thread that only counts a large free binds one). A heap bound again by
/// a destructor after the hook ran registers it again, so the hook runs in
/// glibc's next destructor round if there is one.
pub(crate) fn on_bind(_h: *mut Heap) {
    // (Under the shim, registration may allocate: the heap is bound
    // already, so that allocation takes the usual slow path.)
    EXIT_KEY.register(thread_exit, std::ptr::dangling_mut::<c_void>());
}

/// Sets the heap up. Re-entrant allocations (from atfork registration
/// under the shim) see an active heap already.
///
/// # Safety
/// `h` must be the calling thread's heap.
pub(crate) unsafe fn init<P: Mode>(h: *mut Heap) {
    // SAFETY: h is ours; no reference is held across the calls below; it
    // stays registered until its thread's exit hook.
    unsafe {
        (*h).id = NEXT_ID.fetch_add(1, Relaxed);
        if P::heap_released() {
            // A destructor after our exit hook allocates: serve it, but
            // keep this heap out of the registry (see HeapState::Reactivated).
            (*h).state = HeapState::Reactivated;
        } else {
            (*h).state = HeapState::Active;
            reclaim::register::<P>(h);
        }
    }
    // (A load first: every thread's heap comes here once, and a swap is a
    // locked write to a line all of them share.)
    if !ATFORK.load(Relaxed) && !ATFORK.swap(true, Relaxed) {
        os::register_atfork(before_fork, after_fork_parent, after_fork_child);
    }
}

/// Thread-exit hook (pthread key destructor): hand everything back, in
/// each mode the thread used.
unsafe extern "C" fn thread_exit(_value: *mut c_void) {
    Fast::thread_exit();
    Hardened::thread_exit();
}

/// Abandons the calling thread's heap of mode `P` and gives its slot back
/// (at thread exit; the caller checked that the thread bound one).
pub(crate) fn exit_heap<P: Mode>() {
    let h = P::heap();
    // SAFETY: runs on the exiting thread; its heap is not in use, and once
    // unregistered no reclaimer touches it.
    unsafe {
        // Held blocks are freed while the heap still works.
        crate::quarantine::flush::<P>(h);
        match (*h).state {
            HeapState::Active => reclaim::unregister::<P>(h),
            HeapState::Reactivated | HeapState::Uninit => {}
        }
        if (*h).state.is_set_up() {
            abandon_all::<P>(&mut *h);
        }
        (*h).stats.flush(&STATS);
        // Unregistered, its segments released or abandoned: nothing
        // refers to the heap any more.
        P::release_heap();
    }
}

/// Collects every page, frees the empty ones, purges, releases empty
/// segments and abandons the others.
fn abandon_all<P: Mode>(h: &mut Heap) {
    let now = os::monotonic_ns();
    let mut keep = EXIT_KEEP_BYTES;
    for kind in 0..segment::KINDS {
        loop {
            // SAFETY: our segments; after the loop body each is released or
            // abandoned and never touched by us again.
            unsafe {
                let seg = h.segments[kind].pop_front();
                if seg.is_null() {
                    break;
                }
                if tidy_segment::<P>(seg, now, &mut keep) {
                    reserve::release(seg, now, true);
                } else {
                    abandoned::abandon(seg);
                }
            }
        }
    }
    reserve::purge_reserve(now, purge_delay_ns(), false);
    let _ = large::trim(true);
}

/// Collects the remote frees of every page of `seg`, frees the pages with
/// no live block left and purges every free page but the first `keep`
/// bytes of them (`keep` is lowered by what is kept; kept pages stay dirty
/// with the time they were freed, for the next owner's decay); returns
/// whether the segment is now empty (no page in use).
///
/// # Safety
/// The caller owns `seg` exclusively (its heap's, being abandoned, or
/// taken off the abandoned list) and it is of mode `P`; no heap's queues
/// refer to its pages.
pub(crate) unsafe fn tidy_segment<P: Mode>(seg: *mut Segment, now: u64, keep: &mut usize) -> bool {
    // SAFETY: caller guarantee: the segment and its pages are ours; remote
    // frees only push onto `thread_free`, which `collect_remote` takes.
    unsafe {
        (*seg).pending.take();
        // Neighbouring pages purged with one call (a thread that used one
        // page of a segment other threads had filled made 48 calls of
        // 64 KiB at its exit).
        let mut run = os::PurgeRun::new();
        for i in 0..(*seg).page_count as usize {
            let page = Segment::page(seg, i);
            if (*page).state != PageState::Free {
                Page::collect_remote::<P>(page);
                if Page::in_use(page) == 0 {
                    Segment::free_page::<P>(seg, page, now);
                }
            }
            if (*page).state == PageState::Free && (*page).dirty {
                let (p, len) = Segment::purgeable(seg, i);
                if len <= *keep {
                    *keep -= len;
                } else {
                    run.push(p, len);
                    (*page).dirty = false;
                }
            }
        }
        run.finish();
        (*seg).used_pages == 0
    }
}

unsafe extern "C" fn before_fork() {
    // Registries first (a reclaimer holds one while it takes a heap's
    // lock, then segment locks), so no heap lock is held across fork().
    reclaim::FAST_HEAPS.raw().lock();
    reclaim::HARDENED_HEAPS.raw().lock();
    abandoned::lock();
    reserve::lock();
    large::before_fork();
}

unsafe extern "C" fn after_fork_parent() {
    large::after_fork_parent();
    reserve::unlock();
    abandoned::unlock();
    // SAFETY: before_fork took these in this thread.
    unsafe {
        reclaim::HARDENED_HEAPS.raw().unlock();
        reclaim::FAST_HEAPS.raw().unlock();
    }
}

unsafe extern "C" fn after_fork_child() {
    // SAFETY: the child is single-threaded.
    unsafe {
        Hardened::heap_pool().forget_after_fork();
        Fast::heap_pool().forget_after_fork();
    }
    large::after_fork_child();
    reserve::after_fork_child();
    abandoned::after_fork_child();
    // SAFETY: the child is single-threaded: the other threads' heaps are
    // gone from its registries (like their segments, never adopted), and
    // this thread's heaps are registered again.
    unsafe {
        reclaim::after_fork_child::<Fast>();
        reclaim::after_fork_child::<Hardened>();
    }
}
