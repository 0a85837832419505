//! Measuring inside a cell: a nanosecond tick clock, per-operation latency
//! recorders, and RSS / page-fault probes that never allocate.
//!
//! # Latency: sampled per-operation timing with the TSC
//!
//! A malloc fast path takes 10–50 cycles, so timing batches would hide the tail
//! we care about, and timing *every* operation with a serialised TSC read
//! (about 25–40 cycles per pair) would roughly double the cost of the workload.
//! So [`Recorder`] times a random **subset** of operations, on average one in
//! [`SAMPLE_PERIOD`] (the gap is drawn uniformly from `1..=2*SAMPLE_PERIOD-1`,
//! so periodic workloads do not alias with the sampling). A timed operation is
//! bracketed by `lfence; rdtsc; lfence` ([`ticks`]); the cost of an empty
//! bracket, measured at start-up as the minimum over many back-to-back pairs,
//! is subtracted (saturating at zero). Ticks are converted to nanoseconds with
//! a ratio calibrated against [`std::time::Instant`] over 20 ms. The TSC of
//! every x86-64 CPU of the last decade is invariant (constant rate across
//! frequency changes and cores), which this relies on. On other architectures
//! the clock falls back to `Instant` (one tick = 1 ns, coarser overhead).
//!
//! Samples go into preallocated [`hdrhistogram`] histograms with fixed bounds
//! (1 tick .. 10^10 ticks, 2 significant digits), so recording never allocates.
//!
//! # Memory: /proc without allocating
//!
//! [`rss_bytes`] reads `/proc/self/statm` and [`peak_rss_bytes`] reads `VmHWM`
//! from `/proc/self/status` with `open`/`read` into a stack buffer, so they can
//! be called in the middle of a workload (at its checkpoints) without touching
//! the allocator being measured. [`reset_peak_rss`] writes `5` to
//! `/proc/self/clear_refs` so the peak covers the workload only.

use std::alloc::{handle_alloc_error, Layout};
use std::ffi::CStr;
use std::time::Instant;

use hdrhistogram::Histogram;

use crate::rng::SplitMix64;
use crate::sample::{ClockInfo, OpLatency};

/// Mean number of operations between two timed operations.
pub const SAMPLE_PERIOD: u64 = 16;

/// Reads the time-stamp counter, serialised on both sides so the bracketed
/// operation cannot drift out of the window.
#[cfg(target_arch = "x86_64")]
#[inline(always)]
pub fn ticks() -> u64 {
    use core::arch::x86_64::{_mm_lfence, _rdtsc};
    // SAFETY: lfence and rdtsc are available on every x86-64 CPU (SSE2 is
    // baseline) and have no memory-safety preconditions.
    unsafe {
        _mm_lfence();
        let t = _rdtsc();
        _mm_lfence();
        t
    }
}

/// Fallback clock: nanoseconds since the first call.
#[cfg(not(target_arch = "x86_64"))]
#[inline(always)]
pub fn ticks() -> u64 {
    use std::sync::OnceLock;
    static EPOCH: OnceLock<Instant> = OnceLock::new();
    EPOCH.get_or_init(Instant::now).elapsed().as_nanos() as u64
}

/// The calibrated tick clock.
#[derive(Debug, Clone, Copy)]
pub struct TickClock {
    /// Nanoseconds per tick.
    pub ns_per_tick: f64,
    /// Cost of an empty `ticks(); ticks()` bracket, subtracted from every sample.
    pub overhead_ticks: u64,
}

impl TickClock {
    /// Calibrates against `Instant` (about 20 ms) and measures the bracket cost.
    pub fn calibrate() -> Self {
        let mut overhead = u64::MAX;
        for _ in 0..10_000 {
            let a = ticks();
            let b = ticks();
            overhead = overhead.min(b.wrapping_sub(a));
        }
        let start_instant = Instant::now();
        let start_ticks = ticks();
        while start_instant.elapsed().as_millis() < 20 {
            std::hint::spin_loop();
        }
        let elapsed_ticks = ticks().wrapping_sub(start_ticks).max(1);
        let elapsed_ns = start_instant.elapsed().as_nanos() as f64;
        TickClock {
            ns_per_tick: elapsed_ns / elapsed_ticks as f64,
            overhead_ticks: overhead,
        }
    }

    /// The calibration, for the report.
    pub fn info(&self) -> ClockInfo {
        ClockInfo {
            ns_per_tick: self.ns_per_tick,
            overhead_ticks: self.overhead_ticks,
            sample_period: SAMPLE_PERIOD,
        }
    }
}

fn new_histogram() -> Histogram<u64> {
    // Bounds are valid constants, so this cannot fail.
    Histogram::new_with_bounds(1, 10_000_000_000, 2).expect("valid histogram bounds")
}

/// The allocation calls of one workload thread, with sampled latency recording.
///
/// Create every recorder a workload needs *before* the timed region (creating
/// one allocates its histograms); recording itself never allocates.
pub struct Recorder {
    clock: TickClock,
    malloc: Histogram<u64>,
    free: Histogram<u64>,
    realloc: Histogram<u64>,
    countdown: u64,
    gap: SplitMix64,
    /// Operations performed through this recorder (malloc + free + realloc).
    pub ops: u64,
}

impl Recorder {
    /// A recorder with empty histograms; `seed` decorrelates the sampling of threads.
    pub fn new(clock: TickClock, seed: u64) -> Self {
        Recorder {
            clock,
            malloc: new_histogram(),
            free: new_histogram(),
            realloc: new_histogram(),
            countdown: 1,
            gap: SplitMix64::new(seed ^ 0x5EED_0F7A_7E00),
            ops: 0,
        }
    }

    /// True when this operation should be timed; reloads the random gap.
    #[inline(always)]
    fn sample_now(&mut self) -> bool {
        self.ops += 1;
        self.countdown -= 1;
        if self.countdown == 0 {
            self.countdown = 1 + self.gap.below(2 * SAMPLE_PERIOD - 1);
            true
        } else {
            false
        }
    }

    #[inline(always)]
    fn elapsed(&self, start: u64) -> u64 {
        ticks()
            .wrapping_sub(start)
            .saturating_sub(self.clock.overhead_ticks)
            .max(1)
    }

    /// Allocates `size` bytes aligned to 16 through the global allocator; aborts on
    /// exhaustion like `Box` does.
    #[inline]
    pub fn alloc(&mut self, size: usize) -> *mut u8 {
        let layout = layout_of(size);
        let ptr = if self.sample_now() {
            let t = ticks();
            // SAFETY: layout has a non-zero size (layout_of rounds 0 up to 1).
            let p = unsafe { std::alloc::alloc(layout) };
            let dt = self.elapsed(t);
            self.malloc.saturating_record(dt);
            p
        } else {
            // SAFETY: as above.
            unsafe { std::alloc::alloc(layout) }
        };
        if ptr.is_null() {
            handle_alloc_error(layout);
        }
        ptr
    }

    /// Frees a block from [`Recorder::alloc`] or [`Recorder::realloc`].
    ///
    /// # Safety
    /// `ptr` must have been returned by `alloc(size)` / `realloc(.., size)` of any
    /// recorder (any thread) and not freed since.
    #[inline]
    pub unsafe fn free(&mut self, ptr: *mut u8, size: usize) {
        let layout = layout_of(size);
        if self.sample_now() {
            let t = ticks();
            // SAFETY: the caller guarantees ptr is live with this layout.
            unsafe { std::alloc::dealloc(ptr, layout) };
            let dt = self.elapsed(t);
            self.free.saturating_record(dt);
        } else {
            // SAFETY: as above.
            unsafe { std::alloc::dealloc(ptr, layout) };
        }
    }

    /// Resizes a block from `old_size` to `new_size` bytes.
    ///
    /// # Safety
    /// Same as [`Recorder::free`] for `ptr` / `old_size`.
    #[inline]
    pub unsafe fn realloc(&mut self, ptr: *mut u8, old_size: usize, new_size: usize) -> *mut u8 {
        let layout = layout_of(old_size);
        let new_size = new_size.max(1);
        let p = if self.sample_now() {
            let t = ticks();
            // SAFETY: the caller guarantees ptr is live with `layout`; new_size > 0.
            let p = unsafe { std::alloc::realloc(ptr, layout, new_size) };
            let dt = self.elapsed(t);
            self.realloc.saturating_record(dt);
            p
        } else {
            // SAFETY: as above.
            unsafe { std::alloc::realloc(ptr, layout, new_size) }
        };
        if p.is_null() {
            handle_alloc_error(layout_of(new_size));
        }
        p
    }

    /// Adds another recorder's histograms and counts into this one.
    pub fn merge(&mut self, other: &Recorder) {
        // Same bounds on both sides, so `add` cannot fail.
        let _ = self.malloc.add(&other.malloc);
        let _ = self.free.add(&other.free);
        let _ = self.realloc.add(&other.realloc);
        self.ops += other.ops;
    }

    /// Percentiles in nanoseconds, one entry per operation kind that occurred.
    pub fn latencies(&self) -> Vec<OpLatency> {
        let ns = self.clock.ns_per_tick;
        [
            ("malloc", &self.malloc),
            ("free", &self.free),
            ("realloc", &self.realloc),
        ]
        .into_iter()
        .filter(|(_, h)| !h.is_empty())
        .map(|(op, h)| op_latency(op, h, ns))
        .collect()
    }
}

/// Percentiles of one operation kind's tick histogram, in nanoseconds.
pub fn op_latency(op: &str, ticks: &Histogram<u64>, ns_per_tick: f64) -> OpLatency {
    OpLatency {
        op: op.to_string(),
        count: ticks.len(),
        p50_ns: ticks.value_at_quantile(0.50) as f64 * ns_per_tick,
        p99_ns: ticks.value_at_quantile(0.99) as f64 * ns_per_tick,
        p999_ns: ticks.value_at_quantile(0.999) as f64 * ns_per_tick,
        max_ns: ticks.max() as f64 * ns_per_tick,
    }
}

/// The layout every workload block uses: `size` (at least 1) bytes, align 16.
#[inline(always)]
pub fn layout_of(size: usize) -> Layout {
    // 16 is a power of two and sizes in the workloads are far below isize::MAX.
    match Layout::from_size_align(size.max(1), 16) {
        Ok(layout) => layout,
        Err(_) => handle_alloc_error(Layout::new::<u8>()),
    }
}

/// Reads a small /proc file into `buf` with raw syscalls; returns the byte count.
fn read_proc(path: &CStr, buf: &mut [u8]) -> Option<usize> {
    // SAFETY: path is NUL-terminated; open has no other preconditions.
    let fd = unsafe { libc::open(path.as_ptr(), libc::O_RDONLY | libc::O_CLOEXEC) };
    if fd < 0 {
        return None;
    }
    let mut filled = 0;
    while filled < buf.len() {
        // SAFETY: the destination range lies inside `buf`.
        let n = unsafe { libc::read(fd, buf[filled..].as_mut_ptr().cast(), buf.len() - filled) };
        if n <= 0 {
            break;
        }
        filled += n as usize;
    }
    // SAFETY: fd was opened above and is closed once.
    unsafe { libc::close(fd) };
    Some(filled)
}

fn page_size() -> u64 {
    // SAFETY: sysconf has no preconditions.
    let size = unsafe { libc::sysconf(libc::_SC_PAGESIZE) };
    if size > 0 {
        size as u64
    } else {
        4096
    }
}

/// Parses the first unsigned decimal number in `bytes`.
fn first_number(bytes: &[u8]) -> Option<u64> {
    let start = bytes.iter().position(u8::is_ascii_digit)?;
    let mut value: u64 = 0;
    for &b in bytes[start..].iter().take_while(|b| b.is_ascii_digit()) {
        value = value.checked_mul(10)?.checked_add(u64::from(b - b'0'))?;
    }
    Some(value)
}

/// Current resident set size in bytes (`/proc/self/statm`, field 2); 0 if unreadable.
/// Does not allocate.
pub fn rss_bytes() -> u64 {
    let mut buf = [0u8; 256];
    let Some(n) = read_proc(c"/proc/self/statm", &mut buf) else {
        return 0;
    };
    let text = &buf[..n];
    // skip field 1 (total program size)
    let Some(space) = text.iter().position(|&b| b == b' ') else {
        return 0;
    };
    first_number(&text[space..]).unwrap_or(0) * page_size()
}

/// Peak resident set size in bytes (`VmHWM` in `/proc/self/status`); 0 if unreadable.
/// Does not allocate.
pub fn peak_rss_bytes() -> u64 {
    let mut buf = [0u8; 4096];
    let Some(n) = read_proc(c"/proc/self/status", &mut buf) else {
        return 0;
    };
    let text = &buf[..n];
    let key = b"VmHWM:";
    text.windows(key.len())
        .position(|w| w == key)
        .and_then(|at| first_number(&text[at + key.len()..]))
        .map_or(0, |kib| kib * 1024)
}

/// Resets the peak RSS (`VmHWM`) to the current RSS; best effort (Linux >= 4.0).
pub fn reset_peak_rss() {
    // SAFETY: path is NUL-terminated.
    let fd = unsafe { libc::open(c"/proc/self/clear_refs".as_ptr(), libc::O_WRONLY) };
    if fd >= 0 {
        // SAFETY: writes one byte from a static buffer; fd is valid and closed once.
        unsafe {
            libc::write(fd, b"5".as_ptr().cast(), 1);
            libc::close(fd);
        }
    }
}

/// Minor page faults of the whole process so far (all threads, living or joined).
pub fn minor_faults() -> u64 {
    // SAFETY: rusage is plain old data; getrusage fills it.
    let mut usage: libc::rusage = unsafe { std::mem::zeroed() };
    // SAFETY: the pointer is to a live, writable rusage.
    let rc = unsafe { libc::getrusage(libc::RUSAGE_SELF, &mut usage) };
    if rc == 0 {
        usage.ru_minflt as u64
    } else {
        0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn proc_probes_read_something() {
        assert!(rss_bytes() > 0);
        assert!(peak_rss_bytes() >= rss_bytes() / 2);
        assert!(first_number(b"  12 34") == Some(12));
        assert_eq!(first_number(b"abc"), None);
    }

    #[test]
    fn recorder_counts_and_reports() {
        let clock = TickClock::calibrate();
        assert!(clock.ns_per_tick > 0.0);
        let mut rec = Recorder::new(clock, 1);
        for size in 1..2000 {
            let p = rec.alloc(size);
            // SAFETY: p came from rec.alloc(size).
            unsafe { rec.free(p, size) };
        }
        assert_eq!(rec.ops, 3998);
        let lat = rec.latencies();
        assert_eq!(lat.len(), 2);
        assert!(lat[0].count > 50);
        assert!(lat[0].p50_ns <= lat[0].p99_ns && lat[0].p99_ns <= lat[0].max_ns);
    }
}
