//! Numbers derived from the raw samples of a cell: what tables and charts show.
//!
//! Every figure is the **median over repetitions** (each repetition is one
//! process); time also keeps min and max so readers see the spread.

use super::{Cell, Report, Sample};
use crate::stats::{median, min_max};

/// Median / min / max of one metric over the repetitions.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Spread {
    /// Median.
    pub median: f64,
    /// Minimum.
    pub min: f64,
    /// Maximum.
    pub max: f64,
}

impl Spread {
    /// Spread of `values`; `None` if empty.
    pub fn of(values: &[f64]) -> Option<Self> {
        let (min, max) = min_max(values)?;
        Some(Spread {
            median: median(values)?,
            min,
            max,
        })
    }
}

/// Percentiles of one operation kind, medians over repetitions, in ns.
#[derive(Debug, Clone, PartialEq)]
pub struct LatencySummary {
    /// `"malloc"`, `"free"`, `"realloc"`.
    pub op: String,
    /// p50, p99, p99.9, max.
    pub p50: f64,
    /// 99th percentile.
    pub p99: f64,
    /// 99.9th percentile.
    pub p999: f64,
    /// Maximum.
    pub max: f64,
}

/// Fragmentation at one checkpoint (median over repetitions).
#[derive(Debug, Clone, PartialEq)]
pub struct CheckpointSummary {
    /// Checkpoint label.
    pub label: String,
    /// RSS at the checkpoint, bytes.
    pub rss: f64,
    /// Live requested bytes.
    pub live: f64,
    /// `(rss - rss_start) / live`.
    pub fragmentation: f64,
}

/// Everything a report shows about one cell.
#[derive(Debug, Clone, PartialEq)]
pub struct CellSummary {
    /// Wall time, seconds.
    pub time_s: Spread,
    /// Allocator operations per second (median of per-repetition throughput).
    pub ops_per_s: f64,
    /// Latency per operation kind.
    pub latency: Vec<LatencySummary>,
    /// Peak RSS, bytes.
    pub peak_rss: f64,
    /// RSS at start, bytes.
    pub rss_start: f64,
    /// RSS at end (everything freed), bytes.
    pub rss_end: f64,
    /// RSS after the idle wait, bytes (`None`: not measured).
    pub rss_idle: Option<f64>,
    /// Minor page faults.
    pub minor_faults: f64,
    /// Per checkpoint.
    pub checkpoints: Vec<CheckpointSummary>,
}

impl CellSummary {
    /// Worst (highest) fragmentation over the checkpoints.
    pub fn worst_fragmentation(&self) -> Option<f64> {
        self.checkpoints
            .iter()
            .map(|c| c.fragmentation)
            .reduce(f64::max)
    }

    /// The summary of one operation kind.
    pub fn latency_of(&self, op: &str) -> Option<&LatencySummary> {
        self.latency.iter().find(|l| l.op == op)
    }
}

fn median_of(samples: &[Sample], f: impl Fn(&Sample) -> f64) -> f64 {
    median(&samples.iter().map(f).collect::<Vec<_>>()).unwrap_or(0.0)
}

/// Summarises a cell; `None` if it has no samples (every repetition failed).
pub fn summarize(cell: &Cell) -> Option<CellSummary> {
    let samples = &cell.samples;
    let time_s = Spread::of(
        &samples
            .iter()
            .map(|s| s.wall_ns as f64 / 1e9)
            .collect::<Vec<_>>(),
    )?;
    let ops_per_s = median_of(samples, |s| s.ops as f64 / (s.wall_ns.max(1) as f64 / 1e9));
    let mut latency = Vec::new();
    for op in ["malloc", "free", "realloc"] {
        let per_sample: Vec<_> = samples
            .iter()
            .filter_map(|s| s.latency.iter().find(|l| l.op == op))
            .collect();
        if per_sample.is_empty() {
            continue;
        }
        let med = |f: fn(&super::OpLatency) -> f64| {
            median(&per_sample.iter().map(|l| f(l)).collect::<Vec<_>>()).unwrap_or(0.0)
        };
        latency.push(LatencySummary {
            op: op.to_string(),
            p50: med(|l| l.p50_ns),
            p99: med(|l| l.p99_ns),
            p999: med(|l| l.p999_ns),
            max: med(|l| l.max_ns),
        });
    }
    let mut checkpoints = Vec::new();
    for (i, first) in samples[0].checkpoints.iter().enumerate() {
        let at: Vec<(&Sample, &super::Checkpoint)> = samples
            .iter()
            .filter_map(|s| s.checkpoints.get(i).map(|c| (s, c)))
            .collect();
        let frag: Vec<f64> = at
            .iter()
            .filter_map(|(s, c)| c.fragmentation(s.rss_start))
            .collect();
        let Some(fragmentation) = median(&frag) else {
            continue;
        };
        checkpoints.push(CheckpointSummary {
            label: first.label.clone(),
            rss: median(&at.iter().map(|(_, c)| c.rss as f64).collect::<Vec<_>>()).unwrap_or(0.0),
            live: median(&at.iter().map(|(_, c)| c.live as f64).collect::<Vec<_>>()).unwrap_or(0.0),
            fragmentation,
        });
    }
    Some(CellSummary {
        time_s,
        ops_per_s,
        latency,
        peak_rss: median_of(samples, |s| s.peak_rss as f64),
        rss_start: median_of(samples, |s| s.rss_start as f64),
        rss_end: median_of(samples, |s| s.rss_end as f64),
        rss_idle: median(
            &samples
                .iter()
                .filter_map(|s| s.rss_idle.map(|r| r as f64))
                .collect::<Vec<_>>(),
        ),
        minor_faults: median_of(samples, |s| s.minor_faults as f64),
        checkpoints,
    })
}

/// A row key of the report: one workload at one thread count.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub struct RowKey {
    /// Position of the workload in the run's workload order.
    pub order: usize,
    /// Workload name.
    pub workload: String,
    /// Threads.
    pub threads: usize,
}

impl RowKey {
    /// `churn` or `larson ×4`.
    pub fn label(&self) -> String {
        format!("{} ×{}", self.workload, self.threads)
    }
}

/// The rows (workload, threads) of a report in display order.
pub fn rows(report: &Report) -> Vec<RowKey> {
    let order = |w: &str| {
        report
            .config
            .workloads
            .iter()
            .position(|x| x == w)
            .unwrap_or(usize::MAX)
    };
    let mut keys: Vec<RowKey> = report
        .cells
        .iter()
        .map(|c| RowKey {
            order: order(&c.workload),
            workload: c.workload.clone(),
            threads: c.threads,
        })
        .collect();
    keys.sort();
    keys.dedup();
    keys
}

/// The allocators (columns) of a report in display order.
pub fn columns(report: &Report) -> Vec<String> {
    let mut cols: Vec<String> = report.config.allocators.clone();
    for c in &report.cells {
        if !cols.contains(&c.allocator) {
            cols.push(c.allocator.clone());
        }
    }
    cols
}

/// The cell at (row, allocator), if measured.
pub fn cell_at<'a>(report: &'a Report, row: &RowKey, allocator: &str) -> Option<&'a Cell> {
    report.cells.iter().find(|c| {
        c.allocator == allocator && c.workload == row.workload && c.threads == row.threads
    })
}
