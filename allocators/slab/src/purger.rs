//! The background purger (off by default; `HEAPKIT_BACKGROUND_PURGE_MS`,
//! see `heapkit_core::background`): gives back what an idle program's
//! slab allocator holds without waiting for its next call.
//!
//! Slab already returns memory as a program frees (`slow::wind_down`,
//! `Cache::give_back`), but four things wait for a call: full magazines
//! in the depots (kept for the next allocating thread), empty slabs within
//! a quarter of a cache's working set, exited threads' caches (kept in
//! their slot pool for the next thread) and core's cached large blocks.
//! A round gives back all four once the allocator has been *idle* for a
//! whole round, that is, no thread took a slow path (one every 64 small
//! operations per class, at most) since the round before: [`ACTIVE`] is
//! set by the first slow path after a round cleared it, so a busy program
//! writes that shared line once per round, never per call, and its caches
//! are left alone. Expired large blocks go back every round.
//!
//! Magazines still loaded in live threads are theirs and untouched (a
//! thread that freed everything keeps no object there, see
//! `slow::wind_down`).

use core::sync::atomic::{AtomicBool, Ordering::Relaxed};

use heapkit_core::large;

use crate::heap;
use crate::slab::{CACHE_COUNT, OBJECT_CACHES};
use crate::thread::ThreadCache;

/// Whether a slow path ran since the last round cleared it.
static ACTIVE: AtomicBool = AtomicBool::new(false);

/// A thread starts the purger at its this-many-th slow path (not at the
/// first: under `LD_PRELOAD` that may come from the dynamic loader, before
/// the program runs, where creating a thread is not safe).
const START_AFTER: u32 = 16;

/// Called on every slow path of a thread with magazines.
#[inline]
pub fn on_slow_path(t: &ThreadCache) {
    let n = t.slow_calls.get();
    if n <= START_AFTER {
        t.slow_calls.set(n + 1);
        if n == START_AFTER {
            start();
        }
    }
    if !ACTIVE.load(Relaxed) {
        ACTIVE.store(true, Relaxed);
    }
}

/// Starts the purger if the option asks for one (decided once).
#[cold]
#[inline(never)]
fn start() {
    static DECIDED: AtomicBool = AtomicBool::new(false);
    let _ = heapkit_core::background::start(&DECIDED, round);
}

/// One round: after a whole idle round, the depots' objects go back to
/// their slabs and every empty slab is purged (empty segments unmapped);
/// expired large blocks always.
pub(crate) fn round() {
    if !ACTIVE.swap(false, Relaxed) {
        give_back_idle();
    }
    let _ = large::trim(true);
}

/// What an idle allocator holds for nothing: the depots' magazines (full
/// and empty) and empty slabs.
fn give_back_idle() {
    for c in 0..OBJECT_CACHES {
        if heap::cache(c).was_used() {
            heap::release_depot(c);
        }
    }
    for c in 0..CACHE_COUNT {
        heap::cache(c).release_empty(true);
    }
    // Exited threads' caches (11 KiB each), kept for the next thread.
    crate::thread::pool().purge_free();
}
