//! [`RunOnce`]: one-time initialisation that never blocks and never
//! allocates, for work done from inside an allocator (reading options from
//! the environment, starting a recorder).
//!
//! Unlike `std::sync::Once`, a thread that finds the work under way does
//! not wait for it: it goes on with whatever the defaults are, which is
//! what allocators need (the work may itself allocate, re-entering the
//! caller on the same thread).
//!
//! ```
//! use heapkit_core::once::RunOnce;
//! static INIT: RunOnce = RunOnce::new();
//! let mut ran = 0;
//! INIT.run(|| ran += 1);
//! INIT.run(|| ran += 1);
//! assert!(INIT.is_done() && ran == 1);
//! ```

use core::sync::atomic::{AtomicU8, Ordering};

/// Where the one-time work stands.
#[derive(Clone, Copy, PartialEq, Eq)]
#[repr(u8)]
enum Stage {
    NotStarted = 0,
    Running = 1,
    Done = 2,
}

/// A piece of work run at most once (see the module docs).
pub struct RunOnce(AtomicU8);

impl RunOnce {
    /// Not run yet.
    pub const fn new() -> Self {
        RunOnce(AtomicU8::new(Stage::NotStarted as u8))
    }

    /// Whether the work has finished (its effects are visible).
    #[inline]
    pub fn is_done(&self) -> bool {
        self.0.load(Ordering::Acquire) == Stage::Done as u8
    }

    /// Runs `work` unless some thread has started it; returns at once
    /// otherwise, without waiting for it to finish.
    #[cold]
    #[inline(never)]
    pub fn run(&self, work: impl FnOnce()) {
        if self
            .0
            .compare_exchange(
                Stage::NotStarted as u8,
                Stage::Running as u8,
                Ordering::AcqRel,
                Ordering::Acquire,
            )
            .is_ok()
        {
            work();
            self.0.store(Stage::Done as u8, Ordering::Release);
        }
    }
}

impl Default for RunOnce {
    fn default() -> Self {
        Self::new()
    }
}
