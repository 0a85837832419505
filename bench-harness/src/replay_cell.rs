//! The child side of `heapkit-bench replay`: the `replay` job of a cell
//! binary, which re-executes a recorded trace under the allocator installed
//! in that binary and prints one [`ReplaySample`] JSON line.
//!
//! ```text
//! hk-cell-<allocator> replay plan=<file> [ordered=1] [seed=S]
//! ```
//!
//! # What a replay does
//!
//! Before the clock starts: the [plan](crate::replay_plan) the parent
//! decoded from the trace is mapped and every page of it read; the object
//! table (one pointer per object) is an anonymous mapping, written through
//! once; one replay thread per recorded thread is spawned with its latency
//! histograms, and all wait on a barrier. The heap of the allocator under
//! test is nearly empty at that point: nothing decoded through it and freed
//! is left for it to recycle during the replay.
//!
//! Timed: each thread executes its recorded operations in order through the
//! global allocator (`alloc`/`alloc_zeroed`/`realloc`/`dealloc` with the
//! recorded size and alignment), writes the first and last byte of every
//! block it gets (so resident memory is real), and publishes the pointer in
//! the object's slot. An operation that ends an object allocated on another
//! thread waits (spin, then yield) until that object's slot is published.
//! Frees of blocks allocated before recording started are skipped.
//!
//! With `ordered=1` the threads also take turns in the trace's
//! [schedule](heapkit_trace::schedule), so the process executes exactly
//! the recorded global order and counts the live bytes as it goes: that
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
use serde::{Deserialize, Serialize};

use crate::error::{Error, Result};
use crate::measure::{
    minor_faults, peak_rss_bytes, reset_peak_rss, rss_bytes, ticks, TickClock, SAMPLE_PERIOD,
};
use crate::replay_plan::{kind, Plan, PlanOp};
use crate::rng::SplitMix64;
use crate::sample::{Checkpoint, OpLatency, Sample};

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
    /// Frees of unknown blocks skipped.
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
    /// Per object: its block once allocated (NOT_READY before). Lives in
    /// `_slots_map`, not on the measured heap.
    slots: &'a [AtomicUsize],
    /// Ordered mode: the step whose turn it is.
    turn: AtomicU64,
    /// Ordered mode: live bytes and their peak (updated only by the thread
    /// whose turn it is, so plain loads and stores suffice).
    live: AtomicU64,
    peak: AtomicU64,
    ordered: bool,
}

/// Runs the `replay` job on the plan at `path`.
pub fn run_job(path: &str, ordered: bool, seed: u64) -> Result<ReplaySample> {
    let plan = Plan::open(Path::new(path))?;
    plan.prefault();
    let ops = plan.ops();
    let slot_bytes = (plan.objects.max(1) * 8).next_multiple_of(4096);
    let mut slots_map = memmap2::MmapMut::map_anon(slot_bytes)
        .map_err(|e| Error::new(format!("cannot map the object table: {e}")))?;
    // SAFETY: the anonymous mapping is page-aligned, slot_bytes / 8 words
    // long, and AtomicUsize has the layout of usize; the slice borrows the
    // mapping, which outlives every use below.
    let slots: &[AtomicUsize] =
        unsafe { std::slice::from_raw_parts(slots_map.as_mut_ptr().cast(), slot_bytes / 8) };
    for s in slots {
        s.store(NOT_READY, Ordering::Relaxed); // writes every page now
    }
    let shared = Shared {
        slots,
        turn: AtomicU64::new(0),
        live: AtomicU64::new(0),
        peak: AtomicU64::new(0),
        ordered,
    };
    let clock = TickClock::calibrate();
    let threads = plan.threads.len();
    let barrier = Barrier::new(threads + 1);
    reset_peak_rss();
    let rss_start = rss_bytes();
    let faults_start = minor_faults();
    let (wall_ns, results) = std::thread::scope(|scope| {
        let handles: Vec<_> = plan
            .threads
            .iter()
            .enumerate()
            .map(|(t, &(first, n))| {
                let shared = &shared;
                let barrier = &barrier;
                let mine = &ops[first..first + n];
                let mut timer = OpTimer::new(clock, seed ^ (t as u64).wrapping_mul(0x9E37_79B9));
                scope.spawn(move || {
                    barrier.wait();
                    let done = replay_thread(mine, shared, &mut timer);
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
            rss_idle: None,
            peak_rss,
            minor_faults,
            checkpoints: vec![Checkpoint {
                label: "peak".into(),
                rss: peak_rss,
                live: measured_peak_live.unwrap_or(plan.peak_live),
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
fn replay_thread(ops: &[PlanOp], shared: &Shared<'_>, timer: &mut OpTimer) -> (u64, u64) {
    let (mut done, mut skipped) = (0u64, 0u64);
    for op in ops {
        if shared.ordered {
            wait_for(|| shared.turn.load(Ordering::Acquire) == op.seq);
        }
        let delta = execute(op, shared, timer);
        if op.kind == kind::SKIP {
            skipped += 1;
        } else {
            done += 1;
        }
        if shared.ordered {
            let live = shared
                .live
                .load(Ordering::Relaxed)
                .wrapping_add(delta as u64);
            shared.live.store(live, Ordering::Relaxed);
            if live > shared.peak.load(Ordering::Relaxed) {
                shared.peak.store(live, Ordering::Relaxed);
            }
            shared.turn.store(op.seq + 1, Ordering::Release);
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

fn layout(size: u64, align_log2: u8) -> Layout {
    match Layout::from_size_align((size as usize).max(1), 1usize << align_log2) {
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
fn execute(op: &PlanOp, shared: &Shared<'_>, timer: &mut OpTimer) -> i64 {
    match op.kind {
        kind::ALLOC => {
            let l = layout(op.size, op.align_log2);
            let t = timer.start();
            // SAFETY: l has a non-zero size.
            let p = unsafe {
                if op.zeroed != 0 {
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
            shared.slots[op.obj as usize].store(p as usize, Ordering::Release);
            op.size as i64
        }
        kind::FREE => {
            let p = block_of(shared, op.obj);
            let l = layout(op.size, op.align_log2);
            let t = timer.start();
            // SAFETY: p was allocated with layout l by this replay and is
            // freed once (the trace ends each object once).
            unsafe { std::alloc::dealloc(p, l) };
            timer.stop(t, Kind::Free);
            -(op.size as i64)
        }
        kind::REALLOC => {
            let p = block_of(shared, op.obj);
            let l = layout(op.size, op.align_log2);
            let new_size = (op.new_size as usize).max(1);
            let t = timer.start();
            // SAFETY: p is live with layout l; new_size is non-zero.
            let q = unsafe { std::alloc::realloc(p, l, new_size) };
            timer.stop(t, Kind::Realloc);
            if q.is_null() {
                handle_alloc_error(layout(op.new_size, op.align_log2));
            }
            touch(q, new_size);
            shared.slots[op.new_obj as usize].store(q as usize, Ordering::Release);
            op.new_size as i64 - op.size as i64
        }
        _ => 0,
    }
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
            .map(|(op, h)| crate::measure::op_latency(op, h, ns))
            .collect()
    }
}
