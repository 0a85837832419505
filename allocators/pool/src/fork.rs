//! `fork()` safety: every lock of the pool is held across `fork`.
//!
//! The pool has 194 locks, all on slow paths: one [`CHUNKS`] list per mode
//! and one per [`Depot`](crate::depot::Depot). `prepare` takes them all,
//! in the one order every other path nests them (the default mode's
//! `CHUNKS`, the hardened mode's, then the depots; no path holds two
//! depots or two `CHUNKS`), plus the large-path cache lock; the parent releases them and
//! the child, where the threads that might have held them do not exist,
//! re-initialises them. The child can therefore allocate and free at once,
//! including blocks that threads absent in the child allocated; what those
//! threads had *cached* is lost to the child (retained, never corrupted).
//!
//! The handlers are registered once per process, by the first thread that
//! takes a slow path; a re-entrant `malloc` from inside `pthread_atfork`
//! (glibc may allocate there) sees the registration in progress and skips it.

use core::sync::atomic::{AtomicU8, Ordering};

use heapkit_core::{large, os};

use crate::depot::DEPOTS;
use crate::segment::CHUNKS;

static REGISTERED: AtomicU8 = AtomicU8::new(0);

/// Registers the handlers once per process.
pub fn register_handlers() {
    if REGISTERED.load(Ordering::Relaxed) != 0 {
        return;
    }
    if REGISTERED
        .compare_exchange(0, 1, Ordering::Relaxed, Ordering::Relaxed)
        .is_ok()
    {
        let ok = os::register_atfork(prepare, parent, child);
        // On failure, allow a later thread to try again.
        REGISTERED.store(if ok { 2 } else { 0 }, Ordering::Relaxed);
    }
}

unsafe extern "C" fn prepare() {
    for c in &CHUNKS {
        c.raw().lock();
    }
    for d in &DEPOTS {
        d.raw_lock().lock();
    }
    large::before_fork();
}

unsafe extern "C" fn parent() {
    large::after_fork_parent();
    for d in DEPOTS.iter().rev() {
        // SAFETY: prepare took every depot lock in this thread.
        unsafe { d.raw_lock().unlock() };
    }
    for c in CHUNKS.iter().rev() {
        // SAFETY: prepare took it in this thread.
        unsafe { c.raw().unlock() };
    }
}

unsafe extern "C" fn child() {
    // SAFETY: the child is single-threaded, inside its atfork handler.
    unsafe { crate::thread_cache::pool().forget_after_fork() };
    large::after_fork_child();
    for d in &DEPOTS {
        // SAFETY: the child is single-threaded, inside its atfork handler.
        unsafe { d.raw_lock().reset_after_fork() };
    }
    for c in &CHUNKS {
        // SAFETY: as above.
        unsafe { c.raw().reset_after_fork() };
    }
}
