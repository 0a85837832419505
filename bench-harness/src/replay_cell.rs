//! The child side of `heapkit-bench replay`: the `replay` job of a cell
//! binary, which re-executes a recorded trace under the allocator installed
//! in that binary and prints one [`ReplaySample`] JSON line.
//!
//! ```text
//! hk-cell-<allocator> replay path=<trace.hkt> [ordered=1] [seed=S]
//! ```
//!
//! # What a replay does
//!
//! Before the clock starts (all of this allocates, none of it is measured):
//! the trace is decoded, validated and scheduled ([`heapkit_trace`]); every
//! object gets a slot in a preallocated, pre-touched table and its
//! effective layout (a realloc keeps its object's alignment); one replay
//! thread per recorded thread is spawned with its latency histograms, and
//! all wait on a barrier.
//!
//! Timed: each thread executes its recorded operations in order through the
//! global allocator (`alloc`/`alloc_zeroed`/`realloc`/`dealloc` with the
//! recorded size and alignment), writes the first and last byte of every
//! block it gets (so resident memory is real), and publishes the pointer in
//! the object's slot. An operation that ends an object allocated on another
//! thread waits (spin, then yield) until that object's slot is published.
//! Frees of pointers allocated before recording started are skipped.
//!
//! With `ordered=1` the threads also take turns in the trace's
//! [schedule](heapkit_trace::schedule), so the process executes exactly
//! the recorded global order and can count the live bytes as it goes: that
//! count's peak must equal the trace's peak live bytes. This is the
//! verification mode (slower: every operation is a hand-off); the default
//! lets threads run freely, bound only by the object dependencies.
//!
//! Latencies are sampled like the workloads' (one operation in
//! [`SAMPLE_PERIOD`] on average, `rdtsc` bracket, overhead subtracted).

use std::alloc::{handle_alloc_error, Layout};
use std::path::Path;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::Barrier;
use std::time::Instant;

use hdrhistogram::Histogram;
use heapkit_trace::{schedule, summary::Summary, Event, Op, Trace};
use serde::{Deserialize, Serialize};

use crate::error::{Error, Result};
use crate::measure::{
    minor_faults, peak_rss_bytes, reset_peak_rss, rss_bytes, ticks, TickClock, SAMPLE_PERIOD,
};
use crate::report::{Checkpoint, OpLatency, Sample};
use crate::rng::SplitMix64;

/// What a `replay` cell prints.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ReplaySample {
    /// The measurements, in the harness's usual shape. `ops` counts the
    /// operations executed; the `peak` checkpoint holds peak RSS and the
    /// peak live bytes (measured in ordered mode, else the trace's).
    #[serde(flatten)]
    pub sample: Sample,
    /// Replay threads (= recorded threads).
    pub threads: usize,
    /// Frees of unknown pointers skipped.
    pub skipped: u64,
    /// Peak live bytes counted while executing (ordered mode only).
    pub measured_peak_live: Option<u64>,
    /// Whether the threads followed the recorded global order.
    pub ordered: bool,
}

/// An object's slot before its block exists.
const NOT_READY: usize = 1;

/// State shared by the replay threads. Built before timing.
struct Shared<'a> {
    trace: &'a Trace,
    /// Per object: its block once allocated (NOT_READY before).
    slots: Vec<AtomicUsize>,
    /// Per object: effective alignment.
    align: Vec<usize>,
    /// Ordered mode: the step whose turn it is.
    turn: AtomicU64,
    /// Ordered mode: live bytes and their peak (updated only by the thread
    /// whose turn it is, so plain loads and stores suffice).
    live: AtomicU64,
    peak: AtomicU64,
}

/// Runs the `replay` job described by `args` (`path=`, `ordered=`, `seed=`).
pub fn run_job(path: &str, ordered: bool, seed: u64) -> Result<ReplaySample> {
    let trace = Trace::open(Path::new(path)).map_err(|e| Error::new(e.to_string()))?;
    let summary = Summary::of(&trace).map_err(Error::new)?;
    let order = schedule::schedule(&trace).map_err(Error::new)?;
    // Sequence number of each event in the global order (ordered mode).
    let seqs: Vec<Vec<u64>> = if ordered {
        let mut seqs: Vec<Vec<u64>> = trace.threads.iter().map(|t| vec![0; t.len()]).collect();
        for (n, &(t, i)) in order.iter().enumerate() {
            seqs[t as usize][i as usize] = n as u64;
        }
        seqs
    } else {
        trace.threads.iter().map(|_| Vec::new()).collect()
    };
    // A realloc keeps its block's alignment (Rust's realloc keeps the
    // layout's); the schedule visits `old` before `new`.
    let mut align: Vec<usize> = trace
        .objects
        .iter()
        .map(|o| 16usize.max(1 << o.align_log2))
        .collect();
    for &(t, i) in &order {
        if let Op::Realloc { old, new, .. } = trace.threads[t as usize][i as usize].op {
            align[new as usize] = align[old as usize];
        }
    }
    drop(order);
    let shared = Shared {
        trace: &trace,
        // Written (not just reserved) here, so touching it during the replay
        // adds no resident memory.
        slots: (0..trace.objects.len())
            .map(|_| AtomicUsize::new(NOT_READY))
            .collect(),
        align,
        turn: AtomicU64::new(0),
        live: AtomicU64::new(0),
        peak: AtomicU64::new(0),
    };
    let clock = TickClock::calibrate();
    let threads = trace.threads.len();
    let barrier = Barrier::new(threads + 1);
    reset_peak_rss();
    let rss_start = rss_bytes();
    let faults_start = minor_faults();
    let (wall_ns, results) = std::thread::scope(|scope| {
        let handles: Vec<_> = (0..threads)
            .map(|t| {
                let shared = &shared;
                let barrier = &barrier;
                let seqs = &seqs[t];
                let mut timer = OpTimer::new(clock, seed ^ (t as u64).wrapping_mul(0x9E37_79B9));
                scope.spawn(move || {
                    barrier.wait();
                    let done = replay_thread(&shared.trace.threads[t], seqs, shared, &mut timer);
                    (done, timer)
                })
            })
            .collect();
        barrier.wait();
        let start = Instant::now();
        let results: Vec<_> = handles.into_iter().map(|h| h.join()).collect();
        (start.elapsed().as_nanos() as u64, results)
    });
    let rss_end = rss_bytes();
    let peak_rss = peak_rss_bytes();
    let minor_faults = minor_faults().saturating_sub(faults_start);
    let mut merged = OpTimer::new(clock, 0);
    let (mut executed, mut skipped) = (0u64, 0u64);
    for r in results {
        let ((done, skip), timer) = r.map_err(|_| Error::new("a replay thread panicked"))?;
        executed += done;
        skipped += skip;
        merged.merge(&timer);
    }
    let measured_peak_live = ordered.then(|| shared.peak.load(Ordering::Relaxed));
    Ok(ReplaySample {
        sample: Sample {
            wall_ns,
            ops: executed,
            latency: merged.latencies(),
            rss_start,
            rss_end,
            peak_rss,
            minor_faults,
            checkpoints: vec![Checkpoint {
                label: "peak".into(),
                rss: peak_rss,
                live: measured_peak_live.unwrap_or(summary.peak_live_bytes),
            }],
            clock: clock.info(),
        },
        threads,
        skipped,
        measured_peak_live,
        ordered,
    })
}

/// Executes one recorded thread; returns (operations executed, skipped).
fn replay_thread(
    events: &[Event],
    seqs: &[u64],
    shared: &Shared<'_>,
    timer: &mut OpTimer,
) -> (u64, u64) {
    let ordered = !seqs.is_empty();
    let (mut done, mut skipped) = (0u64, 0u64);
    for (i, e) in events.iter().enumerate() {
        if ordered {
            wait_for(|| shared.turn.load(Ordering::Acquire) == seqs[i]);
        }
        let delta = execute(&e.op, shared, timer);
        if matches!(e.op, Op::FreeUnknown) {
            skipped += 1;
        } else {
            done += 1;
        }
        if ordered {
            let live = shared
                .live
                .load(Ordering::Relaxed)
                .wrapping_add(delta as u64);
            shared.live.store(live, Ordering::Relaxed);
            if live > shared.peak.load(Ordering::Relaxed) {
                shared.peak.store(live, Ordering::Relaxed);
            }
            shared.turn.store(seqs[i] + 1, Ordering::Release);
        }
    }
    (done, skipped)
}

/// Spins, then yields, until `ready()`.
#[inline]
fn wait_for(mut ready: impl FnMut() -> bool) {
    let mut spins = 0u32;
    while !ready() {
        spins += 1;
        if spins < 128 {
            std::hint::spin_loop();
        } else {
            std::thread::yield_now();
        }
    }
}

/// The block of object `obj`, waiting until its allocation (maybe on
/// another thread) has published it.
#[inline]
fn block_of(shared: &Shared<'_>, obj: u32) -> *mut u8 {
    let slot = &shared.slots[obj as usize];
    let mut p = slot.load(Ordering::Acquire);
    if p == NOT_READY {
        wait_for(|| {
            p = slot.load(Ordering::Acquire);
            p != NOT_READY
        });
    }
    p as *mut u8
}

fn layout(size: u64, align: usize) -> Layout {
    match Layout::from_size_align((size as usize).max(1), align) {
        Ok(l) => l,
        Err(_) => handle_alloc_error(Layout::new::<u8>()),
    }
}

/// Writes the first and last byte of a fresh block so its pages are resident.
#[inline]
fn touch(p: *mut u8, size: usize) {
    if p.is_null() {
        return;
    }
    // SAFETY: p is a live block of at least max(size, 1) bytes.
    unsafe {
        p.write_volatile(1);
        p.add(size.max(1) - 1).write_volatile(1);
    }
}

/// Executes one operation; returns the change in live requested bytes.
#[inline]
fn execute(op: &Op, shared: &Shared<'_>, timer: &mut OpTimer) -> i64 {
    let objects = &shared.trace.objects;
    match *op {
        Op::Alloc {
            obj, size, zeroed, ..
        } => allocate(shared, timer, obj, size, zeroed),
        Op::ReallocUnknown { new, size } => allocate(shared, timer, new, size, false),
        Op::Free { obj } => {
            let p = block_of(shared, obj);
            let size = objects[obj as usize].size;
            let l = layout(size, shared.align[obj as usize]);
            let t = timer.start();
            // SAFETY: p was allocated with layout l by this replay and is
            // freed once (the trace ends each object once).
            unsafe { std::alloc::dealloc(p, l) };
            timer.stop(t, Kind::Free);
            -(size as i64)
        }
        Op::Realloc { old, new, size } => {
            let p = block_of(shared, old);
            let old_size = objects[old as usize].size;
            let l = layout(old_size, shared.align[old as usize]);
            let new_size = (size as usize).max(1);
            let t = timer.start();
            // SAFETY: p is live with layout l; new_size is non-zero.
            let q = unsafe { std::alloc::realloc(p, l, new_size) };
            timer.stop(t, Kind::Realloc);
            if q.is_null() {
                handle_alloc_error(layout(size, l.align()));
            }
            touch(q, new_size);
            shared.slots[new as usize].store(q as usize, Ordering::Release);
            size as i64 - old_size as i64
        }
        Op::FreeUnknown => 0,
    }
}

/// Allocates object `obj` (`size` bytes, its effective alignment).
#[inline]
fn allocate(shared: &Shared<'_>, timer: &mut OpTimer, obj: u32, size: u64, zeroed: bool) -> i64 {
    let l = layout(size, shared.align[obj as usize]);
    let t = timer.start();
    // SAFETY: l has a non-zero size.
    let p = unsafe {
        if zeroed {
            std::alloc::alloc_zeroed(l)
        } else {
            std::alloc::alloc(l)
        }
    };
    timer.stop(t, Kind::Malloc);
    if p.is_null() {
        handle_alloc_error(l);
    }
    touch(p, l.size());
    shared.slots[obj as usize].store(p as usize, Ordering::Release);
    size as i64
}

#[derive(Clone, Copy)]
enum Kind {
    Malloc,
    Free,
    Realloc,
}

/// Sampled per-operation latencies of one replay thread; built before the
/// timed region, never allocates while recording.
struct OpTimer {
    clock: TickClock,
    hist: [Histogram<u64>; 3],
    countdown: u64,
    gap: SplitMix64,
}

/// A started measurement (0 = this operation is not sampled).
type Started = u64;

impl OpTimer {
    fn new(clock: TickClock, seed: u64) -> Self {
        let h =
            || Histogram::new_with_bounds(1, 10_000_000_000, 2).expect("valid histogram bounds");
        OpTimer {
            clock,
            hist: [h(), h(), h()],
            countdown: 1,
            gap: SplitMix64::new(seed ^ 0x007E_B1A7),
        }
    }

    #[inline(always)]
    fn start(&mut self) -> Started {
        self.countdown -= 1;
        if self.countdown != 0 {
            return 0;
        }
        self.countdown = 1 + self.gap.below(2 * SAMPLE_PERIOD - 1);
        ticks().max(1)
    }

    #[inline(always)]
    fn stop(&mut self, started: Started, kind: Kind) {
        if started != 0 {
            let dt = ticks()
                .wrapping_sub(started)
                .saturating_sub(self.clock.overhead_ticks)
                .max(1);
            self.hist[kind as usize].saturating_record(dt);
        }
    }

    fn merge(&mut self, other: &OpTimer) {
        for (a, b) in self.hist.iter_mut().zip(&other.hist) {
            let _ = a.add(b);
        }
    }

    fn latencies(&self) -> Vec<OpLatency> {
        let ns = self.clock.ns_per_tick;
        ["malloc", "free", "realloc"]
            .into_iter()
            .zip(&self.hist)
            .filter(|(_, h)| !h.is_empty())
            .map(|(op, h)| OpLatency {
                op: op.to_string(),
                count: h.len(),
                p50_ns: h.value_at_quantile(0.50) as f64 * ns,
                p99_ns: h.value_at_quantile(0.99) as f64 * ns,
                p999_ns: h.value_at_quantile(0.999) as f64 * ns,
                max_ns: h.max() as f64 * ns,
            })
            .collect()
    }
}
