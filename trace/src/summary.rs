//! What a trace says about its program: operation counts, sizes, the peak
//! of live memory and how long objects live. `heapkit-bench trace info`
//! prints it; replay tests compare a replay's own counts against it.
//!
//! ```
//! use heapkit_trace::{summary::Summary, Event, Object, Op, Trace};
//! let t = Trace {
//!     threads: vec![vec![
//!         Event { ts: 0, op: Op::Alloc { obj: 0, size: 24, align_log2: 0, zeroed: false } },
//!         Event { ts: 10, op: Op::Realloc { old: 0, new: 1, size: 100 } },
//!         Event { ts: 30, op: Op::Free { obj: 1 } },
//!     ]],
//!     objects: vec![Object::new(24, 0), Object::new(100, 0)],
//!     ..Trace::default()
//! };
//! let s = Summary::of(&t).unwrap();
//! assert_eq!((s.allocs, s.reallocs, s.frees), (1, 1, 1));
//! assert_eq!(s.replayable_ops(), 3);
//! assert_eq!(s.peak_live_bytes, 100);
//! ```

use crate::reader::{Op, Trace};
use crate::schedule;

/// Size buckets: `<= 16`, `<= 32`, ... `<= 2^(SIZE_BUCKETS+3)`, larger.
pub const SIZE_BUCKETS: usize = 24;

/// The numbers `trace info` prints.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Summary {
    /// Recorded threads.
    pub threads: usize,
    /// Operations per thread.
    pub ops_per_thread: Vec<usize>,
    /// Allocations (malloc, calloc, memalign...), calloc included.
    pub allocs: usize,
    /// Of which calloc.
    pub zeroed: usize,
    /// Of which with an alignment above 16.
    pub aligned: usize,
    /// Frees of known objects.
    pub frees: usize,
    /// Reallocs of known objects.
    pub reallocs: usize,
    /// Frees of pointers allocated before recording started (not replayed).
    pub unknown_frees: usize,
    /// Reallocs of such pointers (replayed as allocations).
    pub unknown_reallocs: usize,
    /// Frees that happened on a thread other than the allocating one.
    pub cross_thread_frees: usize,
    /// Requested bytes over every allocation and realloc.
    pub total_bytes: u64,
    /// Objects never freed.
    pub leaked: usize,
    /// Requested bytes never freed.
    pub leaked_bytes: u64,
    /// The most requested bytes live at once, in the trace's
    /// [schedule](mod@crate::schedule).
    pub peak_live_bytes: u64,
    /// Allocation counts by size bucket: `size_histogram[i]` counts sizes
    /// in `(8 << i, 16 << i]` (bucket 0 includes 0..=16); the last bucket
    /// everything larger.
    pub size_histogram: [u64; SIZE_BUCKETS + 1],
    /// Lifetimes (ns) of freed objects: p50, p90, p99, max.
    pub lifetime_ns: [u64; 4],
    /// Recording time, ns.
    pub duration_ns: u64,
}

/// The size bucket of `size`.
pub fn size_bucket(size: u64) -> usize {
    if size <= 16 {
        return 0;
    }
    let log = 64 - (size - 1).leading_zeros() as usize; // ceil(log2)
    (log - 4).min(SIZE_BUCKETS)
}

impl Summary {
    /// Summarises `trace`; fails if its threads cannot be ordered.
    pub fn of(trace: &Trace) -> Result<Summary, String> {
        let order = schedule::schedule(trace)?;
        let mut s = Summary {
            threads: trace.threads.len(),
            ops_per_thread: trace.threads.iter().map(Vec::len).collect(),
            peak_live_bytes: schedule::peak_live_bytes(trace, &order),
            duration_ns: trace.end_ns.saturating_sub(trace.start_ns),
            ..Summary::default()
        };
        let n = trace.objects.len();
        let mut born = vec![(0u64, u32::MAX); n];
        let mut ended = vec![false; n];
        let mut lifetimes = Vec::new();
        for (t, events) in trace.threads.iter().enumerate() {
            for e in events {
                match e.op {
                    Op::Alloc {
                        size,
                        align_log2,
                        zeroed,
                        ..
                    } => {
                        s.allocs += 1;
                        s.zeroed += zeroed as usize;
                        s.aligned += (align_log2 != 0) as usize;
                        s.size_histogram[size_bucket(size)] += 1;
                    }
                    Op::Free { .. } => s.frees += 1,
                    Op::Realloc { size, .. } => {
                        s.reallocs += 1;
                        s.size_histogram[size_bucket(size)] += 1;
                    }
                    Op::FreeUnknown => s.unknown_frees += 1,
                    Op::ReallocUnknown { size, .. } => {
                        s.unknown_reallocs += 1;
                        s.size_histogram[size_bucket(size)] += 1;
                    }
                }
                if let Some(obj) = e.op.creates() {
                    born[obj as usize] = (e.ts, t as u32);
                    s.total_bytes += trace.objects[obj as usize].size;
                }
                if let Some(obj) = e.op.ends() {
                    let (ts, owner) = born[obj as usize];
                    ended[obj as usize] = true;
                    // Creation may sit later in the file than the end when
                    // the two are on different threads; fixed up below.
                    if owner != u32::MAX {
                        lifetimes.push(e.ts.saturating_sub(ts));
                        s.cross_thread_frees += (owner != t as u32) as usize;
                    }
                }
            }
        }
        // Second pass for ends that came before their creation in file order.
        if lifetimes.len() < ended.iter().filter(|&&e| e).count() {
            lifetimes.clear();
            s.cross_thread_frees = 0;
            for (t, events) in trace.threads.iter().enumerate() {
                for e in events {
                    if let Some(obj) = e.op.ends() {
                        let (ts, owner) = born[obj as usize];
                        lifetimes.push(e.ts.saturating_sub(ts));
                        s.cross_thread_frees += (owner != t as u32) as usize;
                    }
                }
            }
        }
        for (obj, &done) in ended.iter().enumerate() {
            if !done {
                s.leaked += 1;
                s.leaked_bytes += trace.objects[obj].size;
            }
        }
        lifetimes.sort_unstable();
        let at = |q: f64| -> u64 {
            if lifetimes.is_empty() {
                return 0;
            }
            lifetimes[((lifetimes.len() - 1) as f64 * q).round() as usize]
        };
        s.lifetime_ns = [at(0.5), at(0.9), at(0.99), at(1.0)];
        Ok(s)
    }

    /// Operations a replay performs: everything except frees of unknown
    /// pointers (a realloc of an unknown pointer replays as an allocation).
    pub fn replayable_ops(&self) -> usize {
        self.allocs + self.frees + self.reallocs + self.unknown_reallocs
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn buckets() {
        assert_eq!(size_bucket(0), 0);
        assert_eq!(size_bucket(16), 0);
        assert_eq!(size_bucket(17), 1);
        assert_eq!(size_bucket(32), 1);
        assert_eq!(size_bucket(33), 2);
        assert_eq!(size_bucket(u64::MAX), SIZE_BUCKETS);
    }
}
