//! `heapkit-bench run`: the matrix runner.
//!
//! Plans every (allocator, workload, threads) cell, runs each repetition as a
//! fresh cell process ([`crate::cell::spawn_cell`]), and writes the report
//! directory. Repetitions are interleaved: repetition 1 of every cell, then
//! repetition 2 of every cell, ... and allocators alternate within a cell, so
//! slow drift of a shared machine (other builds, thermal state) spreads over all
//! allocators instead of biasing the one that happened to run last.
//!
//! A failing repetition (an allocator crashing, say) is recorded in the cell's
//! `errors` and the run goes on; the report marks the cell.

use std::path::PathBuf;
use std::time::Instant;

use clap::Args;
use indicatif::{ProgressBar, ProgressStyle};

use crate::cell::{build_cell_binaries_if_under_cargo, cell_binary, spawn_cell, workload_job};
use crate::error::{Error, Result};
use crate::registry::{find_allocator, ALLOCATORS};
use crate::report::{self, Cell, Machine, Report, ReportDir, RunConfig, Sample, SCHEMA_VERSION};
use crate::workloads::{self, WORKLOADS};

/// Options of `run`.
#[derive(Args, Debug, Clone)]
pub struct RunArgs {
    /// Quick matrix (default): threads 1 and 4, scale 1, 3 repetitions; under 5 minutes on 2 cores.
    #[arg(long, conflicts_with = "full")]
    pub quick: bool,
    /// Full matrix: threads 1, 2, 4, 8, scale 2, 5 repetitions.
    #[arg(long)]
    pub full: bool,
    /// Comma-separated allocators (default: all registered).
    #[arg(long, value_delimiter = ',')]
    pub allocators: Vec<String>,
    /// Comma-separated workloads (default: all).
    #[arg(long, value_delimiter = ',')]
    pub workloads: Vec<String>,
    /// Comma-separated thread counts for the multi-threaded workloads.
    #[arg(long, value_delimiter = ',')]
    pub threads: Vec<usize>,
    /// Repetitions (fresh processes) per cell.
    #[arg(long)]
    pub repetitions: Option<usize>,
    /// Work multiplier for every workload (1.0 = quick size).
    #[arg(long)]
    pub scale: Option<f64>,
    /// Allocator the ratios are relative to.
    #[arg(long, default_value = "system")]
    pub baseline: String,
    /// Report directory name under --out (default: `<preset>-<UTC date-time>`).
    #[arg(long)]
    pub name: Option<String>,
    /// Parent directory of report directories.
    #[arg(long, default_value = "reports")]
    pub out: PathBuf,
    /// Seed of the workloads' random generators.
    #[arg(long, default_value_t = 42)]
    pub seed: u64,
}

/// The resolved plan of a run.
#[derive(Debug, Clone)]
pub struct Plan {
    /// Report configuration (names validated).
    pub config: RunConfig,
    /// (workload, threads) rows in order.
    pub rows: Vec<(&'static str, usize)>,
}

/// Validates the arguments and resolves presets into a plan.
pub fn plan(args: &RunArgs) -> Result<Plan> {
    let (preset, threads, scale, repetitions) = if args.full {
        ("full", vec![1, 2, 4, 8], 2.0, 5)
    } else {
        ("quick", vec![1, 4], 1.0, 3)
    };
    let customised = !args.allocators.is_empty()
        || !args.workloads.is_empty()
        || !args.threads.is_empty()
        || args.repetitions.is_some()
        || args.scale.is_some();
    let allocators: Vec<String> = if args.allocators.is_empty() {
        ALLOCATORS.iter().map(|a| a.name.to_string()).collect()
    } else {
        for name in &args.allocators {
            find_allocator(name)?;
        }
        args.allocators.clone()
    };
    let workload_names: Vec<&'static str> = if args.workloads.is_empty() {
        WORKLOADS.iter().map(|w| w.name).collect()
    } else {
        args.workloads
            .iter()
            .map(|name| {
                workloads::find(name).map(|w| w.name).ok_or_else(|| {
                    let known: Vec<_> = WORKLOADS.iter().map(|w| w.name).collect();
                    Error::new(format!(
                        "unknown workload '{name}' (known: {})",
                        known.join(", ")
                    ))
                })
            })
            .collect::<Result<_>>()?
    };
    let threads = if args.threads.is_empty() {
        threads
    } else {
        args.threads.clone()
    };
    if let Some(&bad) = threads.iter().find(|&&t| t == 0 || t > 256) {
        return Err(Error::new(format!(
            "thread count {bad} out of range 1..=256"
        )));
    }
    let scale = args.scale.unwrap_or(scale);
    if !(scale > 0.0 && scale.is_finite()) {
        return Err(Error::new(format!(
            "--scale must be a positive number, got {scale}"
        )));
    }
    let repetitions = args.repetitions.unwrap_or(repetitions);
    if repetitions == 0 {
        return Err(Error::new("--repetitions must be at least 1"));
    }
    let baseline = if allocators.contains(&args.baseline) {
        args.baseline.clone()
    } else if args.baseline == "system" {
        allocators[0].clone()
    } else {
        find_allocator(&args.baseline)?;
        return Err(Error::new(format!(
            "baseline '{}' is not among --allocators",
            args.baseline
        )));
    };
    let mut rows = Vec::new();
    for &name in &workload_names {
        let multi = workloads::find(name).is_some_and(|w| w.multi_threaded);
        if multi {
            rows.extend(threads.iter().map(|&t| (name, t)));
        } else {
            rows.push((name, 1));
        }
    }
    Ok(Plan {
        config: RunConfig {
            preset: if customised { "custom" } else { preset }.to_string(),
            scale,
            repetitions,
            allocators,
            workloads: workload_names.iter().map(|w| w.to_string()).collect(),
            threads,
            baseline,
            seed: args.seed,
        },
        rows,
    })
}

/// Runs the matrix and writes the report directory; prints its path.
pub fn run(args: &RunArgs) -> Result<()> {
    let plan = plan(args)?;
    let config = &plan.config;
    let entries = config
        .allocators
        .iter()
        .map(|name| find_allocator(name))
        .collect::<Result<Vec<_>>>()?;
    build_cell_binaries_if_under_cargo()?;
    for entry in &entries {
        cell_binary(entry)?;
    }
    let ReportDir {
        dir,
        name,
        started_unix,
    } = ReportDir::create(&args.out, args.name.as_deref(), &config.preset)?;

    let machine = Machine::detect();
    let mut cells: Vec<Cell> = Vec::new();
    for &(workload, threads) in &plan.rows {
        for entry in &entries {
            cells.push(Cell {
                allocator: entry.name.to_string(),
                workload: workload.to_string(),
                threads,
                samples: Vec::new(),
                errors: Vec::new(),
            });
        }
    }
    let total = (cells.len() * config.repetitions) as u64;
    let progress = ProgressBar::new(total);
    progress.set_style(
        ProgressStyle::with_template(
            "{spinner} [{elapsed_precise}] {bar:30} {pos}/{len} cells  ETA {eta}  {msg}",
        )
        .map_err(|e| Error::new(e.to_string()))?,
    );
    let start = Instant::now();
    let per_row = entries.len();
    for rep in 0..config.repetitions {
        for row in 0..plan.rows.len() {
            for k in 0..per_row {
                // alternate the allocator order between repetitions
                let column = if rep % 2 == 0 { k } else { per_row - 1 - k };
                let cell = &mut cells[row * per_row + column];
                progress.set_message(format!(
                    "{} {} ×{} rep {}",
                    cell.allocator,
                    cell.workload,
                    cell.threads,
                    rep + 1
                ));
                let job = workload_job(&cell.workload, cell.threads, config.scale, config.seed);
                match spawn_cell::<Sample>(entries[column], &job) {
                    Ok(sample) => cell.samples.push(sample),
                    Err(err) => {
                        progress.println(format!("warning: {err}"));
                        cell.errors.push(err.0);
                    }
                }
                progress.inc(1);
            }
        }
    }
    progress.finish_and_clear();

    let report = Report {
        schema: SCHEMA_VERSION,
        tool: "heapkit-bench run".to_string(),
        name,
        started_unix,
        duration_s: start.elapsed().as_secs_f64(),
        machine,
        config: config.clone(),
        cells,
    };
    report::write_all(&report, &dir)?;
    let failed = report.cells.iter().filter(|c| !c.errors.is_empty()).count();
    eprintln!(
        "heapkit-bench: {} cells x {} repetitions in {:.0} s{}",
        report.cells.len(),
        config.repetitions,
        report.duration_s,
        if failed > 0 {
            format!(", {failed} cells with failures")
        } else {
            String::new()
        }
    );
    println!("{}", dir.join("REPORT.md").display());
    Ok(())
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
mod tests {
    use super::*;

    fn args() -> RunArgs {
        RunArgs {
            quick: false,
            full: false,
            allocators: vec![],
            workloads: vec![],
            threads: vec![],
            repetitions: None,
            scale: None,
            baseline: "system".into(),
            name: None,
            out: "reports".into(),
            seed: 1,
        }
    }

    #[test]
    fn quick_plan_covers_everything() {
        let plan = plan(&args()).unwrap();
        assert_eq!(plan.config.preset, "quick");
        for w in WORKLOADS {
            assert!(plan.rows.iter().any(|r| r.0 == w.name));
        }
        assert!(plan.rows.contains(&("larson", 4)));
        assert!(plan.rows.contains(&("churn", 1)));
        assert!(!plan.rows.contains(&("churn", 4)));
    }

    #[test]
    fn bad_names_are_errors() {
        let mut a = args();
        a.workloads = vec!["nope".into()];
        assert!(plan(&a)
            .unwrap_err()
            .0
            .starts_with("unknown workload 'nope'"));
        let mut a = args();
        a.allocators = vec!["nope".into()];
        assert!(plan(&a)
            .unwrap_err()
            .0
            .starts_with("unknown allocator 'nope'"));
        let mut a = args();
        a.threads = vec![0];
        assert!(plan(&a).is_err());
    }

    #[test]
    fn utc_stamp_known_date() {
        assert_eq!(utc_stamp(0), "19700101-000000");
        assert_eq!(utc_stamp(1_764_039_600), "20251125-030000");
    }
}
