//! `fork()` support: every lock of the heap is taken before the fork and
//! released (parent) or reset (child) after it, so the child never inherits
//! a lock held by a thread that does not exist there.
//!
//! Order (the same as the nesting order used everywhere): the depot locks
//! (leaves), then the cache slab locks in index order (never two held at
//! once elsewhere), then the segment lock, then core's large-block cache.
//! The forking thread keeps its magazines in the child; magazines of other
//! threads are lost to the child (their objects leak there, harmlessly), and
//! blocks those threads allocated can still be freed by the child.

use core::sync::atomic::{AtomicU8, Ordering};

use heapkit_core::{large, os};

use crate::heap::{CACHES, DEPOTS};
use crate::segment;

static REGISTERED: AtomicU8 = AtomicU8::new(0);

/// Registers the handlers once per process. A re-entrant call (if
/// `pthread_atfork` allocates) returns at once: the outer call finishes.
pub fn ensure_registered() {
    if REGISTERED.load(Ordering::Acquire) != 0 {
        return;
    }
    if REGISTERED
        .compare_exchange(0, 1, Ordering::AcqRel, Ordering::Acquire)
        .is_err()
    {
        return;
    }
    if !os::register_atfork(prepare, parent, child) {
        // Try again on a later thread set-up.
        REGISTERED.store(0, Ordering::Release);
    }
}

unsafe extern "C" fn prepare() {
    for d in DEPOTS.iter() {
        d.lock_for_fork();
    }
    for c in CACHES.iter() {
        c.lock_for_fork();
    }
    segment::lock_for_fork();
    large::before_fork();
}

unsafe extern "C" fn parent() {
    large::after_fork_parent();
    segment::unlock_after_fork();
    for c in CACHES.iter() {
        c.unlock_after_fork();
    }
    for d in DEPOTS.iter() {
        d.unlock_after_fork();
    }
}

unsafe extern "C" fn child() {
    // SAFETY: the child is single-threaded, inside its atfork handler.
    unsafe { crate::thread::pool().forget_after_fork() };
    large::after_fork_child();
    segment::reset_after_fork();
    for c in CACHES.iter() {
        c.reset_after_fork();
    }
    for d in DEPOTS.iter() {
        d.reset_after_fork();
    }
}
