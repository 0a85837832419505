//! The workloads: allocation patterns every allocator is measured on.
//!
//! Each workload is a plain function `fn(&Params, &mut Context) -> ()` that
//! does all its allocator traffic through the [`Recorder`]s in the context
//! (so it is counted and latency-sampled), frees everything it allocated before
//! returning, and calls [`Context::checkpoint`] at the points where its live
//! bytes are known. It is sized so that `scale = 1.0` takes roughly 0.1–0.3 s
//! on one core; the *total* work is fixed and split across the threads, so
//! throughput at 1, 2, 4, 8 threads shows scaling (or its absence) directly.
//!
//! Bookkeeping (slot arrays, rings) is allocated once at workload start and is
//! negligible against the measured traffic; it goes through the allocator under
//! test like everything else in the process, identically for every allocator.

mod churn;
mod false_sharing;
mod fragmentation;
mod large;
mod larson;
mod prodcons;
mod realloc;
mod trees;

use crate::measure::{rss_bytes, Recorder, TickClock};
use crate::sample::Checkpoint;

/// Inputs of a workload run.
#[derive(Debug, Clone, Copy)]
pub struct Params {
    /// Worker threads (for `prodcons`: producer/consumer pairs).
    pub threads: usize,
    /// Work multiplier (1.0 = quick size).
    pub scale: f64,
    /// Seed for the deterministic generators.
    pub seed: u64,
}

impl Params {
    /// `base * scale`, at least 1.
    pub fn scaled(&self, base: u64) -> u64 {
        ((base as f64 * self.scale) as u64).max(1)
    }
}

/// Maximum checkpoints a workload may record.
pub const MAX_CHECKPOINTS: usize = 16;

/// What a workload gets to work with.
pub struct Context {
    /// One recorder per thread the workload asked for (`Workload::recorders`),
    /// created before the timed region.
    pub recorders: Vec<Recorder>,
    checkpoints: [(&'static str, u64, u64); MAX_CHECKPOINTS],
    checkpoint_count: usize,
}

impl Context {
    /// `count` fresh recorders on `clock`.
    pub fn new(clock: TickClock, count: usize, seed: u64) -> Self {
        Context {
            recorders: (0..count.max(1))
                .map(|i| Recorder::new(clock, seed.wrapping_add(i as u64)))
                .collect(),
            checkpoints: [("", 0, 0); MAX_CHECKPOINTS],
            checkpoint_count: 0,
        }
    }

    /// Records RSS and the workload's live requested bytes at a named point.
    /// Does not allocate; extra checkpoints beyond [`MAX_CHECKPOINTS`] are dropped.
    pub fn checkpoint(&mut self, label: &'static str, live_bytes: u64) {
        if self.checkpoint_count < MAX_CHECKPOINTS {
            self.checkpoints[self.checkpoint_count] = (label, rss_bytes(), live_bytes);
            self.checkpoint_count += 1;
        }
    }

    /// The recorded checkpoints (allocates; call after the timed region).
    pub fn checkpoints(&self) -> Vec<Checkpoint> {
        self.checkpoints[..self.checkpoint_count]
            .iter()
            .map(|&(label, rss, live)| Checkpoint {
                label: label.to_string(),
                rss,
                live,
            })
            .collect()
    }

    /// All recorders merged into the first.
    pub fn merged(mut self) -> Recorder {
        let mut first = self.recorders.swap_remove(0);
        for other in &self.recorders {
            first.merge(other);
        }
        first
    }
}

/// A registered workload.
pub struct Workload {
    /// Name used on the command line and in reports.
    pub name: &'static str,
    /// One line for `list`.
    pub description: &'static str,
    /// Whether it runs at several thread counts.
    pub multi_threaded: bool,
    /// How many recorders it needs for `threads`.
    pub recorders: fn(usize) -> usize,
    /// The workload itself.
    pub run: fn(&Params, &mut Context),
}

fn one(_: usize) -> usize {
    1
}
fn per_thread(threads: usize) -> usize {
    threads
}
fn two_per_thread(threads: usize) -> usize {
    2 * threads
}

/// Every workload, in report order.
pub const WORKLOADS: &[Workload] = &[
    Workload {
        name: "churn",
        description: "alloc/free of mixed small sizes (8 B-1 KiB) over a sliding window of 10k live objects",
        multi_threaded: false,
        recorders: one,
        run: churn::run,
    },
    Workload {
        name: "larson",
        description: "server simulation: threads replace random slots of random-size blocks; arrays move to new threads each round",
        multi_threaded: true,
        recorders: per_thread,
        run: larson::run,
    },
    Workload {
        name: "prodcons",
        description: "N producer threads allocate, N consumer threads free (every free is remote)",
        multi_threaded: true,
        recorders: two_per_thread,
        run: prodcons::run,
    },
    Workload {
        name: "false-sharing",
        description: "cache-scratch: main thread allocates small objects, threads free them, then allocate and write their own",
        multi_threaded: true,
        recorders: per_thread,
        run: false_sharing::run,
    },
    Workload {
        name: "trees",
        description: "build and tear down binary trees (16-byte nodes, LIFO frees) next to a long-lived tree",
        multi_threaded: false,
        recorders: one,
        run: trees::run,
    },
    Workload {
        name: "realloc",
        description: "256 vectors grow by push (capacity doubling via realloc), interleaved",
        multi_threaded: false,
        recorders: one,
        run: realloc::run,
    },
    Workload {
        name: "large",
        description: "blocks of 64 KiB-4 MiB over a window of 32, every page touched",
        multi_threaded: false,
        recorders: one,
        run: large::run,
    },
    Workload {
        name: "fragmentation",
        description: "1M small objects, free 90% at random, then allocate larger ones; RSS / live at each step",
        multi_threaded: false,
        recorders: one,
        run: fragmentation::run,
    },
];

/// Looks a workload up by name.
pub fn find(name: &str) -> Option<&'static Workload> {
    WORKLOADS.iter().find(|w| w.name == name)
}

/// Writes `value` to the first byte and the last byte of a block so its pages
/// are really touched, without letting the compiler drop the write.
#[inline(always)]
pub(crate) fn touch(ptr: *mut u8, size: usize, value: u8) {
    // SAFETY: callers pass a live block of at least `size` (>= 1) bytes.
    unsafe {
        ptr.write_volatile(value);
        ptr.add(size - 1).write_volatile(value);
    }
}
