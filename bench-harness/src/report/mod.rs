//! The data model of a report, and its writers.
//!
//! ```text
//! Report ─ machine: Machine            where and with what it ran
//!        ─ config:  RunConfig          how it was asked to run
//!        ─ cells:   Vec<Cell>          one per (allocator, workload, threads)
//!                     └ samples: Vec<Sample>   one per repetition = one process
//! ```
//!
//! A [`Sample`] is exactly what a cell process prints on its stdout (one JSON
//! line), so the raw measurements go untouched into `results.json`, the source
//! of truth; every number in `REPORT.md`, the charts and `compare` is derived
//! from the samples by [`summary`]. Other subcommands (preload, trace replay)
//! can fill the same model and reuse the writers: [`json`], [`markdown`],
//! [`svg`].

pub mod json;
pub mod machine;
pub mod markdown;
pub mod summary;
pub mod svg;

use serde::{Deserialize, Serialize};

pub use machine::Machine;

/// Version of the `results.json` layout; `compare` refuses other versions.
pub const SCHEMA_VERSION: u32 = 1;

/// A whole run.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Report {
    /// Layout version ([`SCHEMA_VERSION`]).
    pub schema: u32,
    /// What produced it, e.g. `"heapkit-bench run"`.
    pub tool: String,
    /// Name of the report directory.
    pub name: String,
    /// Seconds since the Unix epoch when the run started.
    pub started_unix: u64,
    /// Wall-clock duration of the whole run in seconds.
    pub duration_s: f64,
    /// The machine it ran on.
    pub machine: Machine,
    /// The options it ran with.
    pub config: RunConfig,
    /// Every measured cell.
    pub cells: Vec<Cell>,
}

/// How the run was configured.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct RunConfig {
    /// `"quick"`, `"full"` or `"custom"`.
    pub preset: String,
    /// Work multiplier given to every workload (1.0 = quick size).
    pub scale: f64,
    /// Repetitions (processes) per cell.
    pub repetitions: usize,
    /// Allocators in column order.
    pub allocators: Vec<String>,
    /// Workloads in row order.
    pub workloads: Vec<String>,
    /// Thread counts for the multi-threaded workloads.
    pub threads: Vec<usize>,
    /// Allocator the ratios are relative to.
    pub baseline: String,
    /// Seed of the workloads' random generators.
    pub seed: u64,
}

/// All repetitions of one (allocator, workload, threads).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Cell {
    /// Registry name of the allocator.
    pub allocator: String,
    /// Workload name (or trace name for replay).
    pub workload: String,
    /// Worker threads.
    pub threads: usize,
    /// One per successful repetition, in run order.
    pub samples: Vec<Sample>,
    /// One line per failed repetition (crash, bad output); empty when all ran.
    #[serde(default)]
    pub errors: Vec<String>,
}

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

/// Writes `results.json`, `REPORT.md` and the SVG charts of `report` into `dir`.
pub fn write_all(report: &Report, dir: &std::path::Path) -> crate::error::Result<()> {
    json::write(report, &dir.join("results.json"))?;
    let charts = svg::write_charts(report, dir)?;
    let markdown = markdown::render(report, &charts);
    std::fs::write(dir.join("REPORT.md"), markdown).map_err(|e| {
        crate::error::Error::new(format!(
            "cannot write {}: {e}",
            dir.join("REPORT.md").display()
        ))
    })
}

/// Where a new report is written: `out/<name>`, the name defaulting to
/// `<default_prefix>-<UTC date-time>`. Shared by `run`, `replay` and
/// `preload`.
pub struct ReportDir {
    /// The directory, created.
    pub dir: std::path::PathBuf,
    /// Its name under `out`.
    pub name: String,
    /// When the report was started (seconds since the Unix epoch).
    pub started_unix: u64,
}

impl ReportDir {
    /// Stamps the start time, picks the name and creates the directory.
    pub fn create(
        out: &std::path::Path,
        name: Option<&str>,
        default_prefix: &str,
    ) -> crate::error::Result<ReportDir> {
        let started_unix = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_secs());
        let name = name.map_or_else(
            || format!("{default_prefix}-{}", crate::run::utc_stamp(started_unix)),
            str::to_string,
        );
        let dir = out.join(&name);
        std::fs::create_dir_all(&dir).map_err(|e| {
            crate::error::Error::new(format!("cannot create {}: {e}", dir.display()))
        })?;
        Ok(ReportDir {
            dir,
            name,
            started_unix,
        })
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    fn sample(wall_ms: u64) -> Sample {
        Sample {
            wall_ns: wall_ms * 1_000_000,
            ops: 1000,
            latency: vec![OpLatency {
                op: "malloc".into(),
                count: 10,
                p50_ns: 20.0,
                p99_ns: 80.0,
                p999_ns: 100.0,
                max_ns: 500.0,
            }],
            rss_start: 1 << 20,
            rss_end: 2 << 20,
            peak_rss: 8 << 20,
            minor_faults: 12,
            checkpoints: vec![Checkpoint {
                label: "half".into(),
                rss: 5 << 20,
                live: 2 << 20,
            }],
            clock: ClockInfo {
                ns_per_tick: 0.4,
                overhead_ticks: 26,
                sample_period: 16,
            },
        }
    }

    pub(crate) fn report() -> Report {
        let cell = |allocator: &str, scale: u64| Cell {
            allocator: allocator.into(),
            workload: "churn".into(),
            threads: 1,
            samples: vec![sample(100 * scale), sample(110 * scale), sample(90 * scale)],
            errors: vec![],
        };
        Report {
            schema: SCHEMA_VERSION,
            tool: "test".into(),
            name: "t".into(),
            started_unix: 0,
            duration_s: 1.0,
            machine: Machine::detect(),
            config: RunConfig {
                preset: "custom".into(),
                scale: 1.0,
                repetitions: 3,
                allocators: vec!["system".into(), "jemalloc".into()],
                workloads: vec!["churn".into()],
                threads: vec![1],
                baseline: "system".into(),
                seed: 1,
            },
            cells: vec![cell("system", 2), cell("jemalloc", 1)],
        }
    }

    #[test]
    fn json_round_trip() {
        let r = report();
        let text = serde_json::to_string(&r).unwrap();
        assert_eq!(json::parse(&text).unwrap(), r);
    }

    #[test]
    fn json_errors_are_one_line() {
        for bad in ["{", "[]", r#"{"schema": 99}"#, r#"{"schema": 1}"#] {
            let err = json::parse(bad).unwrap_err();
            assert!(!err.0.contains('\n'), "{err}");
        }
        assert!(json::parse(r#"{"schema": 99}"#)
            .unwrap_err()
            .0
            .contains("version 99"));
    }

    #[test]
    fn summary_and_markdown() {
        let r = report();
        let s = summary::summarize(&r.cells[1]).unwrap();
        assert_eq!(s.time_s.median, 0.1);
        assert_eq!(s.time_s.min, 0.09);
        // (5 MiB - 1 MiB) / 2 MiB
        assert_eq!(s.worst_fragmentation(), Some(2.0));
        let md = markdown::render(&r, &[]);
        assert!(
            md.contains("| churn ×1 | 200.0 ms (1.00) | 100.0 ms (0.50) |"),
            "{md}"
        );
        assert!(md.contains("**geometric mean of ratios** | **1.00** | **0.50** |"));
    }

    #[test]
    fn charts_are_written() {
        let dir = std::env::temp_dir().join(format!("hk-svg-test-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let charts = svg::write_charts(&report(), &dir).unwrap();
        assert!(charts.len() >= 4);
        for (file, _) in charts {
            let text = std::fs::read_to_string(dir.join(file)).unwrap();
            assert!(text.starts_with("<svg"));
        }
        let _ = std::fs::remove_dir_all(&dir);
    }
}
