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
pub mod pprof;
pub mod preload;
pub mod profile;
pub mod summary;
pub mod svg;
pub mod verdict;

use serde::{Deserialize, Serialize};

pub use crate::sample::{Checkpoint, ClockInfo, OpLatency, Sample};
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
    /// Set when the run stopped before every planned sample was taken
    /// (interrupted, or rebuilt from the journal of a killed run): why.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub partial: Option<String>,
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
    /// `HEAPKIT_BACKGROUND_PURGE_MS` given to every cell (`None`: unset).
    #[serde(default)]
    pub background_purge_ms: Option<u64>,
    /// Idle wait before "RSS after idle" is read (0: not measured).
    #[serde(default)]
    pub idle_ms: u64,
    /// One sentence per workload (row) name, shown under its table; filled
    /// by whoever planned the run, so the report layer knows no workloads.
    #[serde(default)]
    pub descriptions: std::collections::BTreeMap<String, String>,
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

/// Writes `results.json`, `REPORT.md` and the SVG charts of `report` into `dir`.
pub fn write_all(report: &Report, dir: &std::path::Path) -> crate::error::Result<()> {
    json::write(report, &dir.join("results.json"))?;
    write_readable(report, dir)
}

/// Writes `REPORT.md` and the SVG charts of `report` into `dir` (not
/// `results.json`).
pub fn write_readable(report: &Report, dir: &std::path::Path) -> crate::error::Result<()> {
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
            || format!("{default_prefix}-{}", utc_stamp(started_unix)),
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

/// `YYYYMMDD-HHMMSS` in UTC for a Unix time (civil-from-days, Howard Hinnant).
pub fn utc_stamp(unix: u64) -> String {
    let days = (unix / 86_400) as i64;
    let secs = unix % 86_400;
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
    format!(
        "{year:04}{month:02}{day:02}-{:02}{:02}{:02}",
        secs / 3600,
        secs % 3600 / 60,
        secs % 60
    )
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    pub(crate) fn sample(wall_ms: u64) -> Sample {
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
            rss_idle: None,
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
                background_purge_ms: None,
                idle_ms: 0,
                descriptions: Default::default(),
            },
            cells: vec![cell("system", 2), cell("jemalloc", 1)],
            partial: None,
        }
    }

    #[test]
    fn utc_stamp_known_date() {
        assert_eq!(utc_stamp(0), "19700101-000000");
        assert_eq!(utc_stamp(1_764_039_600), "20251125-030000");
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
