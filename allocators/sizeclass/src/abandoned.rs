//! The abandoned list: segments of exited threads that still hold live
//! blocks, waiting for a live heap of their mode to adopt them ([`adopt`],
//! from the allocation slow path) or for the background purger to tidy
//! them ([`take_abandoned`]). One [`SpinLock`], taken only on slow paths,
//! and a count read without it, so a heap with nothing to adopt pays one
//! load.

use core::ptr;
use core::sync::atomic::{AtomicU64, Ordering::Relaxed};

use heapkit_core::lock::SpinLock;

use crate::mode::Mode;
use crate::segment::{Segment, SegmentList, ABANDONED};

/// Segments whose owner exited.
pub(crate) static ABANDONED_LIST: SpinLock<SegmentList> = SpinLock::new(SegmentList::EMPTY);
/// Cheap "is anything abandoned" hint.
pub(crate) static ABANDONED_COUNT: AtomicU64 = AtomicU64::new(0);

/// Pushes `seg` onto the abandoned list.
///
/// # Safety
/// The caller owns `seg` and gives it up.
pub(crate) unsafe fn abandon(seg: *mut Segment) {
    let mut list = ABANDONED_LIST.lock();
    // SAFETY: caller gives up seg; the list is locked.
    unsafe {
        (*seg).owner.store(ABANDONED, Relaxed);
        list.push_front(seg);
    }
    ABANDONED_COUNT.fetch_add(1, Relaxed);
}

/// Takes an abandoned segment of mode `P` for `owner` (null if none).
pub(crate) fn adopt<P: Mode>(owner: u64) -> *mut Segment {
    if ABANDONED_COUNT.load(Relaxed) == 0 {
        return ptr::null_mut();
    }
    let mut list = ABANDONED_LIST.lock();
    // SAFETY: the list is locked: its segments are alive and theirs links
    // stable; a removed segment becomes ours.
    let seg = unsafe {
        let mut seg = list.first;
        while !seg.is_null() && (*seg).tag != P::TAG {
            seg = (*seg).next;
        }
        if !seg.is_null() {
            list.remove(seg);
        }
        seg
    };
    if !seg.is_null() {
        ABANDONED_COUNT.fetch_sub(1, Relaxed);
        // SAFETY: seg is ours now.
        unsafe { (*seg).owner.store(owner, Relaxed) };
    }
    seg
}

/// Takes every abandoned segment of mode `P` off the list (the background
/// purger tidies them, then gives them back or releases them).
pub(crate) fn take_abandoned<P: Mode>() -> SegmentList {
    let mut taken = SegmentList::EMPTY;
    if ABANDONED_COUNT.load(Relaxed) == 0 {
        return taken;
    }
    let mut list = ABANDONED_LIST.lock();
    // SAFETY: the list is locked: its segments are alive and their links
    // stable; a removed segment is the caller's.
    unsafe {
        let mut seg = list.first;
        while !seg.is_null() {
            let next = (*seg).next;
            if (*seg).tag == P::TAG {
                list.remove(seg);
                taken.push_front(seg);
            }
            seg = next;
        }
    }
    ABANDONED_COUNT.fetch_sub(taken.len as u64, Relaxed);
    taken
}

/// Fork: takes the list's lock (before [`crate::reserve::lock`]).
pub(crate) fn lock() {
    ABANDONED_LIST.raw().lock();
}

/// Fork, parent: releases what [`lock`] took.
pub(crate) fn unlock() {
    // SAFETY: `lock` took it in this thread.
    unsafe { ABANDONED_LIST.raw().unlock() };
}

/// Fork, child: re-initialises the lock.
///
/// Segments of threads that do not exist in the child keep their dead
/// owners' ids, so no heap ever adopts them: a thread caught mid-allocation
/// by `fork()` may have left a page half-updated, and reusing it could hand
/// out a block twice. Frees into those segments stay correct (they are
/// remote frees: one atomic push onto the page's `thread_free`); the child
/// just never reuses that memory, as in mimalloc. Most forked children
/// `exec` soon anyway.
pub(crate) fn after_fork_child() {
    // SAFETY: the child is single-threaded.
    unsafe { ABANDONED_LIST.raw().reset_after_fork() };
}
