//! One statistics shape for every allocator.
//!
//! [`Stats`] is a plain snapshot: the harness, the tests and the shim's
//! `HEAPKIT_STATS=1` print it alike. Its fields are declared once, in the
//! `stats_fields!` list below, which generates the struct, `merge` and
//! `Display` (so adding a field is one line).
//!
//! Counting must be cheap enough to stay on. A shared atomic on every
//! `malloc` would put one contended cache line under all threads, so each
//! thread counts into its own [`ThreadStats`] (plain `Cell`s, no atomics:
//! two adds per operation, one compare on allocation) and folds them into
//! the allocator's [`GlobalStats`] every [`ThreadStats::FLUSH_OPS`]
//! allocations, whenever one of its slow paths finds that many operations
//! or a live-byte delta above [`ThreadStats::FLUSH_BYTES`] pending, and
//! when it exits. A snapshot is therefore exact for exited threads and the
//! calling thread, and behind by what other live threads did since their
//! last slow path. `peak_live_bytes` is the highest flushed value, with the
//! same bound.

use core::cell::Cell;
use core::fmt;
use core::sync::atomic::{AtomicI64, AtomicU64, Ordering::Relaxed};

use crossbeam_utils::CachePadded;

macro_rules! stats_fields {
    ($( $(#[$doc:meta])* $name:ident ),* $(,)?) => {
        /// A snapshot of an allocator's counters.
        #[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
        pub struct Stats {
            $( $(#[$doc])* pub $name: u64, )*
        }

        impl Stats {
            /// The names of the fields, in declaration order.
            pub const FIELDS: &'static [&'static str] = &[$(stringify!($name)),*];

            /// Field values in [`Stats::FIELDS`] order.
            pub fn values(&self) -> [u64; Self::FIELDS.len()] {
                [$(self.$name),*]
            }

            /// Adds every counter of `other` to `self` (peaks take the max).
            pub fn merge(&mut self, other: &Stats) {
                $( self.$name = merge_field(stringify!($name), self.$name, other.$name); )*
            }
        }

        impl fmt::Display for Stats {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                let mut first = true;
                $(
                    if !first { f.write_str(" ")?; }
                    first = false;
                    write!(f, "{}={}", stringify!($name), self.$name)?;
                )*
                let _ = first;
                Ok(())
            }
        }
    };
}

fn merge_field(name: &str, a: u64, b: u64) -> u64 {
    if name.starts_with("peak_") {
        a.max(b)
    } else {
        a.wrapping_add(b)
    }
}

stats_fields! {
    /// Bytes in live blocks (usable sizes as the allocator hands them out).
    live_bytes,
    /// The most `live_bytes` seen.
    peak_live_bytes,
    /// Bytes of memory holding blocks, live or free (jemalloc's
    /// `stats.active`): the carved blocks of pages in use and the mappings
    /// of live large blocks; `active_bytes - live_bytes` is what
    /// fragmentation costs. 0 where the allocator does not count them.
    active_bytes,
    /// Bytes currently mapped from the OS (process-wide, all of heapkit).
    mapped_bytes,
    /// The most bytes mapped at once (process-wide).
    peak_mapped_bytes,
    /// Bytes of the whole process resident in memory when the statistics
    /// were read (its RSS, from `/proc/self/statm`; 0 if unreadable).
    resident_bytes,
    /// Allocations (malloc, calloc, aligned and zeroed variants).
    allocs,
    /// Frees.
    frees,
    /// Reallocations.
    reallocs,
    /// `mmap` calls (process-wide).
    os_maps,
    /// `munmap` calls (process-wide).
    os_unmaps,
    /// Pages returned with `madvise` (calls, process-wide).
    os_purges,
}

/// The allocator-wide side of the counters: `Relaxed` atomics, written only
/// when a thread flushes its [`ThreadStats`], so no fast path touches them.
pub struct GlobalStats {
    counts: CachePadded<Counts>,
}

struct Counts {
    allocs: AtomicU64,
    frees: AtomicU64,
    reallocs: AtomicU64,
    live: AtomicI64,
    peak_live: AtomicU64,
}

impl GlobalStats {
    /// All zero.
    pub const fn new() -> Self {
        Self {
            counts: CachePadded::new(Counts {
                allocs: AtomicU64::new(0),
                frees: AtomicU64::new(0),
                reallocs: AtomicU64::new(0),
                live: AtomicI64::new(0),
                peak_live: AtomicU64::new(0),
            }),
        }
    }

    /// Counts directly (for slow paths that have no thread state, such as
    /// frees arriving before a thread is set up).
    pub fn add(&self, allocs: u64, frees: u64, reallocs: u64, live_delta: i64) {
        let c = &self.counts;
        c.allocs.fetch_add(allocs, Relaxed);
        c.frees.fetch_add(frees, Relaxed);
        c.reallocs.fetch_add(reallocs, Relaxed);
        let live = c.live.fetch_add(live_delta, Relaxed) + live_delta;
        c.peak_live.fetch_max(live.max(0) as u64, Relaxed);
    }

    /// A snapshot including `pending`, the calling thread's unflushed counts
    /// (pass `None` from a thread without state), plus the OS counters.
    pub fn snapshot(&self, pending: Option<&ThreadStats>) -> Stats {
        let c = &self.counts;
        let mut live = c.live.load(Relaxed);
        let mut s = Stats {
            allocs: c.allocs.load(Relaxed),
            frees: c.frees.load(Relaxed),
            reallocs: c.reallocs.load(Relaxed),
            ..Stats::default()
        };
        if let Some(t) = pending {
            s.allocs += t.allocs.get();
            s.frees += t.frees.get();
            s.reallocs += t.reallocs.get();
            live += t.live.get();
        }
        s.live_bytes = live.max(0) as u64;
        s.peak_live_bytes = c.peak_live.load(Relaxed).max(s.live_bytes);
        let os = crate::os::os_counters();
        s.mapped_bytes = os.mapped_bytes as u64;
        s.peak_mapped_bytes = os.peak_mapped_bytes as u64;
        s.resident_bytes = crate::os::resident_bytes() as u64;
        s.os_maps = os.maps as u64;
        s.os_unmaps = os.unmaps as u64;
        s.os_purges = os.purges as u64;
        s
    }
}

impl Default for GlobalStats {
    fn default() -> Self {
        Self::new()
    }
}

/// One thread's unflushed counts. Lives inside an allocator's thread-local
/// state (const-initialised, no destructor); only its owner touches it.
///
/// The fast paths pay as little as counting can: [`on_alloc`] is two adds
/// and one compare (the flush is keyed on the allocation count alone),
/// [`on_free`] two adds and no branch. Everything else is the slow paths'
/// job: they call [`maybe_flush`] (which also flushes a large live-byte
/// delta, so the peak stays close), and the allocator calls [`flush`] at
/// thread exit, so that totals are exact once a thread is gone.
///
/// Invariant: every count is "since the last flush"; `allocs <
/// FLUSH_OPS` after any `on_alloc` returns.
///
/// [`on_alloc`]: ThreadStats::on_alloc
/// [`on_free`]: ThreadStats::on_free
/// [`maybe_flush`]: ThreadStats::maybe_flush
/// [`flush`]: ThreadStats::flush
pub struct ThreadStats {
    /// Allocations since the last flush.
    allocs: Cell<u64>,
    /// Frees since the last flush.
    frees: Cell<u64>,
    /// Reallocations since the last flush.
    reallocs: Cell<u64>,
    /// Live-byte change since the last flush (either sign).
    live: Cell<i64>,
}

impl ThreadStats {
    /// `on_alloc` flushes after this many allocations.
    pub const FLUSH_OPS: u64 = 4096;
    /// `maybe_flush` flushes once the live-byte delta passes this, either way.
    pub const FLUSH_BYTES: i64 = 1 << 20;

    /// All zero.
    pub const fn new() -> Self {
        Self {
            allocs: Cell::new(0),
            frees: Cell::new(0),
            reallocs: Cell::new(0),
            live: Cell::new(0),
        }
    }

    /// Counts one allocation of `bytes` usable bytes; flushes every
    /// [`Self::FLUSH_OPS`] allocations.
    #[inline(always)]
    pub fn on_alloc(&self, global: &GlobalStats, bytes: usize) {
        if self.count_alloc(bytes) {
            self.flush(global);
        }
    }

    /// Counts one allocation of `bytes` usable bytes; true every
    /// [`Self::FLUSH_OPS`] allocations, when the caller must [`flush`]
    /// (an allocator's periodic work rides on it: one compare on the fast
    /// path for both).
    ///
    /// [`flush`]: Self::flush
    #[inline(always)]
    pub fn count_alloc(&self, bytes: usize) -> bool {
        let allocs = self.allocs.get() + 1;
        self.allocs.set(allocs);
        self.live.set(self.live.get().wrapping_add(bytes as i64));
        allocs >= Self::FLUSH_OPS
    }

    /// Allocations counted since the last flush (a flush clears it).
    #[inline]
    pub fn pending_allocs(&self) -> u64 {
        self.allocs.get()
    }

    /// Counts one free of `bytes` usable bytes (no flush: a thread that only
    /// frees is flushed by its slow paths and at exit).
    #[inline(always)]
    pub fn on_free(&self, bytes: usize) {
        self.frees.set(self.frees.get() + 1);
        self.live.set(self.live.get().wrapping_sub(bytes as i64));
    }

    /// Counts one reallocation that changed the usable size from `old` to
    /// `new` bytes (count the alloc/free of a moving realloc separately, or
    /// not at all: say which in the allocator), and flushes if due.
    #[inline]
    pub fn on_realloc(&self, global: &GlobalStats, old: usize, new: usize) {
        self.reallocs.set(self.reallocs.get() + 1);
        self.live
            .set(self.live.get().wrapping_add(new as i64 - old as i64));
        self.maybe_flush(global);
    }

    /// Flushes if many operations or many bytes are pending. Slow paths
    /// call it, which bounds how far a busy thread's counts lag.
    #[inline]
    pub fn maybe_flush(&self, global: &GlobalStats) {
        let live = self.live.get();
        // One unsigned compare catches |live| > FLUSH_BYTES either way.
        if self.allocs.get() >= Self::FLUSH_OPS
            || self.frees.get() >= Self::FLUSH_OPS
            || (live as u64).wrapping_add(Self::FLUSH_BYTES as u64) > 2 * Self::FLUSH_BYTES as u64
        {
            self.flush(global);
        }
    }

    /// Folds the pending counts into `global` (also call it at thread exit).
    #[cold]
    #[inline(never)]
    pub fn flush(&self, global: &GlobalStats) {
        global.add(
            self.allocs.replace(0),
            self.frees.replace(0),
            self.reallocs.replace(0),
            self.live.replace(0),
        );
    }
}

impl Default for ThreadStats {
    fn default() -> Self {
        Self::new()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::string::ToString;

    #[test]
    fn batches_and_snapshots() {
        let g = GlobalStats::new();
        let t = ThreadStats::new();
        for _ in 0..10 {
            t.on_alloc(&g, 100);
        }
        t.on_free(100);
        t.on_realloc(&g, 100, 300);
        // Nothing flushed yet, but the snapshot with pending counts is exact.
        assert_eq!(g.snapshot(None).allocs, 0);
        let s = g.snapshot(Some(&t));
        assert_eq!(
            (s.allocs, s.frees, s.reallocs, s.live_bytes),
            (10, 1, 1, 1100)
        );
        t.flush(&g);
        let s = g.snapshot(None);
        assert_eq!((s.allocs, s.frees, s.live_bytes), (10, 1, 1100));
    }

    #[test]
    fn large_delta_flushes_on_a_slow_path_and_tracks_peak() {
        let g = GlobalStats::new();
        let t = ThreadStats::new();
        t.on_alloc(&g, 3 << 20);
        // The fast path does not look at bytes; the slow path does.
        assert_eq!(g.snapshot(None).live_bytes, 0);
        t.maybe_flush(&g);
        assert_eq!(g.snapshot(None).live_bytes, 3 << 20);
        t.on_free(3 << 20);
        t.maybe_flush(&g);
        let s = g.snapshot(None);
        assert_eq!(s.live_bytes, 0);
        assert_eq!(s.peak_live_bytes, 3 << 20);
    }

    #[test]
    fn ops_flush_after_batch() {
        let g = GlobalStats::new();
        let t = ThreadStats::new();
        for _ in 0..ThreadStats::FLUSH_OPS {
            t.on_alloc(&g, 16);
            t.on_free(16);
        }
        // Flushed exactly when the allocation count reached FLUSH_OPS.
        let s = g.snapshot(None);
        assert_eq!(s.allocs, ThreadStats::FLUSH_OPS);
        assert_eq!(s.frees, ThreadStats::FLUSH_OPS - 1);
        // A thread that only frees flushes on its slow path.
        for _ in 0..ThreadStats::FLUSH_OPS {
            t.on_free(0);
        }
        assert_eq!(g.snapshot(None).frees, ThreadStats::FLUSH_OPS - 1);
        t.maybe_flush(&g);
        assert_eq!(g.snapshot(None).frees, 2 * ThreadStats::FLUSH_OPS);
    }

    #[test]
    fn display_and_merge() {
        let mut a = Stats {
            allocs: 2,
            peak_live_bytes: 10,
            ..Stats::default()
        };
        let b = Stats {
            allocs: 3,
            peak_live_bytes: 7,
            ..Stats::default()
        };
        a.merge(&b);
        assert_eq!(a.allocs, 5);
        assert_eq!(a.peak_live_bytes, 10);
        let text = a.to_string();
        assert!(text.contains("allocs=5"));
        assert_eq!(Stats::FIELDS.len(), a.values().len());
    }
}
