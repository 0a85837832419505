//! What one measured repetition reports: the data model shared by the
//! processes that measure ([`crate::measure`], [`crate::workloads`],
//! [`crate::replay_cell`]) and the layer that writes reports
//! ([`crate::report`]). It depends on nothing else in the harness.

use serde::{Deserialize, Serialize};

/// One repetition of one cell: what a cell process reports.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Sample {
    /// Wall time of the workload in nanoseconds (threads spawned and joined inside).
    pub wall_ns: u64,
    /// Allocator operations performed (malloc + free + realloc).
    pub ops: u64,
    /// Sampled per-operation latencies.
    pub latency: Vec<OpLatency>,
    /// RSS just before the workload started, bytes.
    pub rss_start: u64,
    /// RSS after the workload freed everything and its threads were joined, bytes.
    pub rss_end: u64,
    /// RSS after a further idle wait (`run --idle-ms`), bytes: what an
    /// allocator gives back once the program stops calling it (with
    /// `--background-purge-ms`, what its background purger returned).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rss_idle: Option<u64>,
    /// Peak RSS (`VmHWM`) during the workload, bytes (reset at workload start).
    pub peak_rss: u64,
    /// Minor page faults during the workload.
    pub minor_faults: u64,
    /// Memory at the workload's checkpoints.
    pub checkpoints: Vec<Checkpoint>,
    /// The latency clock's calibration.
    pub clock: ClockInfo,
}

/// Latency percentiles of one kind of operation, in nanoseconds, overhead subtracted.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct OpLatency {
    /// `"malloc"`, `"free"` or `"realloc"`.
    pub op: String,
    /// Number of timed (sampled) operations.
    pub count: u64,
    /// Median.
    pub p50_ns: f64,
    /// 99th percentile.
    pub p99_ns: f64,
    /// 99.9th percentile.
    pub p999_ns: f64,
    /// Slowest sampled operation.
    pub max_ns: f64,
}

/// Memory at one named point of a workload.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Checkpoint {
    /// Name of the point, e.g. `"after-free-90%"`.
    pub label: String,
    /// RSS at that point, bytes.
    pub rss: u64,
    /// Bytes the workload had requested and not yet freed at that point.
    pub live: u64,
}

impl Checkpoint {
    /// Fragmentation at this point: RSS growth since the workload started per
    /// live requested byte, `(rss - rss_start) / live`. 1.0 is perfect; the
    /// process baseline (binary, libraries, the harness) is excluded.
    pub fn fragmentation(&self, rss_start: u64) -> Option<f64> {
        (self.live > 0).then(|| self.rss.saturating_sub(rss_start) as f64 / self.live as f64)
    }
}

/// How latency was measured in a sample.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct ClockInfo {
    /// Nanoseconds per TSC tick.
    pub ns_per_tick: f64,
    /// Subtracted cost of the timing bracket, ticks.
    pub overhead_ticks: u64,
    /// One in this many operations was timed, on average.
    pub sample_period: u64,
}
