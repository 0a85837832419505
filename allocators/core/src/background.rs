//! The background purger: a thread that gives memory back while a program
//! is idle, for allocators that would otherwise wait for the next call
//! (jemalloc's `background_thread`).
//!
//! Off by default: `HEAPKIT_BACKGROUND_PURGE_MS` (see [`crate::options`])
//! sets the interval between rounds. An allocator calls [`start`] once from
//! a slow path, outside its locks (creating a thread allocates), with its
//! own flag and its own round; each allocator that asks gets one thread.
//! The round decides what is idle (each allocator knows its own signs of
//! life) and must only *try* locks a program thread may hold for long.
//!
//! What it costs: nothing when off (one load of the flag, on a slow path);
//! when on, one thread that sleeps between rounds, and whatever a round
//! does (walks of the allocator's own metadata, `madvise`, `munmap`).
//!
//! A forked child has no purger (threads do not survive `fork`, and the
//! flag says it was decided).
//!
//! ```
//! use core::sync::atomic::AtomicBool;
//! use heapkit_core::background;
//!
//! static DECIDED: AtomicBool = AtomicBool::new(false);
//! fn round() { /* give back what idle caches hold */ }
//!
//! // Without HEAPKIT_BACKGROUND_PURGE_MS, nothing starts.
//! assert!(!background::start(&DECIDED, round));
//! assert!(!background::start(&DECIDED, round)); // decided once
//! ```

use core::ffi::c_void;
use core::sync::atomic::{AtomicBool, Ordering::Relaxed};

use crate::{options, os};

/// Starts a thread that runs `round` every `HEAPKIT_BACKGROUND_PURGE_MS`,
/// if that option is set and `decided` was not yet set (the first call
/// decides, once per process). Returns whether a thread was started now.
pub fn start(decided: &'static AtomicBool, round: fn()) -> bool {
    if decided.load(Relaxed) || decided.swap(true, Relaxed) {
        return false;
    }
    if options::get().background_purge_ns == 0 {
        return false;
    }
    extern "C" fn purger(arg: *mut c_void) -> *mut c_void {
        // SAFETY: `start` passes a `fn()` as the argument word, and a
        // function pointer and a data pointer have the same size on every
        // platform heapkit supports.
        let round = unsafe { core::mem::transmute::<*mut c_void, fn()>(arg) };
        let interval = options::get().background_purge_ns;
        loop {
            os::sleep_ns(interval);
            round();
        }
    }
    let started = os::spawn_detached(purger, round as usize);
    if !started {
        os::write_stderr(b"heapkit: could not start the background purger\n");
    }
    started
}
