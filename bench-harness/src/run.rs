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

use clap::Args;

use crate::args::MatrixArgs;
use crate::cell::{build_cell_binaries_if_under_cargo, cell_binary, spawn_cell, workload_job};
use crate::error::{Error, Result};
use crate::registry::{find_allocator, ALLOCATORS};
use crate::report::markdown::fmt_seconds;
use crate::report::{self, Cell, Machine, Report, ReportDir, RunConfig, Sample, SCHEMA_VERSION};
use crate::session::{self, Session};
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
    /// Comma-separated workloads (default: all).
    #[arg(long, value_delimiter = ',')]
    pub workloads: Vec<String>,
    /// Comma-separated thread counts for the multi-threaded workloads.
    #[arg(long, value_delimiter = ',')]
    pub threads: Vec<usize>,
    /// Work multiplier for every workload (1.0 = quick size).
    #[arg(long)]
    pub scale: Option<f64>,
    /// Allocators, repetitions, baseline, report name and place, timeout.
    #[command(flatten)]
    pub common: MatrixArgs,
    /// Seed of the workloads' random generators.
    #[arg(long, default_value_t = 42)]
    pub seed: u64,
    /// Start heapkit's background purger in every cell, rounds this many
    /// milliseconds apart (sets `HEAPKIT_BACKGROUND_PURGE_MS`; the other
    /// allocators ignore it). Implies `--idle-ms 1000` unless given.
    #[arg(long, value_name = "MS")]
    pub background_purge_ms: Option<u64>,
    /// After each workload freed everything, sleep this long without
    /// calling the allocator and read RSS again ("RSS after idle").
    #[arg(long, value_name = "MS")]
    pub idle_ms: Option<u64>,
}

/// `--idle-ms` when `--background-purge-ms` is given without it.
const IDLE_MS_WITH_PURGER: u64 = 1000;

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
    let customised = !args.common.allocators.is_empty()
        || args.background_purge_ms.is_some()
        || args.idle_ms.is_some()
        || !args.workloads.is_empty()
        || !args.threads.is_empty()
        || args.common.repetitions.is_some()
        || args.scale.is_some();
    let allocators: Vec<String> = if args.common.allocators.is_empty() {
        ALLOCATORS.iter().map(|a| a.name.to_string()).collect()
    } else {
        for name in &args.common.allocators {
            find_allocator(name)?;
        }
        args.common.allocators.clone()
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
    let repetitions = args.common.repetitions_or(repetitions)?;
    let baseline = args.common.baseline(&allocators, "system")?;
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
            background_purge_ms: args.background_purge_ms,
            idle_ms: args
                .idle_ms
                .unwrap_or(if args.background_purge_ms.is_some() {
                    IDLE_MS_WITH_PURGER
                } else {
                    0
                }),
            descriptions: workload_names
                .iter()
                .filter_map(|&n| {
                    workloads::find(n).map(|w| (n.to_string(), w.description.to_string()))
                })
                .collect(),
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
    } = ReportDir::create(
        &args.common.out,
        args.common.name.as_deref(),
        &config.preset,
    )?;

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
    let planned = cells.len() * config.repetitions;
    let skeleton = Report {
        schema: SCHEMA_VERSION,
        tool: "heapkit-bench run".to_string(),
        name,
        started_unix,
        duration_s: 0.0,
        machine: Machine::detect(),
        config: config.clone(),
        cells,
        partial: None,
    };
    let mut session = Session::begin(skeleton, &dir, planned)?;
    let timeout = args.common.timeout();
    let env: Vec<(String, String)> = config
        .background_purge_ms
        .map(|ms| ("HEAPKIT_BACKGROUND_PURGE_MS".to_string(), ms.to_string()))
        .into_iter()
        .collect();
    let per_row = entries.len();
    'reps: for rep in 0..config.repetitions {
        for row in 0..plan.rows.len() {
            for k in 0..per_row {
                if session::interrupted() {
                    break 'reps;
                }
                // alternate the allocator order between repetitions
                let column = if rep % 2 == 0 { k } else { per_row - 1 - k };
                let index = row * per_row + column;
                let (workload, threads) = plan.rows[row];
                let what = format!(
                    "{} {workload} ×{threads} rep {}/{}",
                    entries[column].name,
                    rep + 1,
                    config.repetitions
                );
                session.progress.starting(&what);
                let job =
                    workload_job(workload, threads, config.scale, config.seed, config.idle_ms);
                match spawn_cell::<Sample>(entries[column], &job, &env, timeout) {
                    Ok(sample) => {
                        session
                            .progress
                            .finished(&what, &fmt_seconds(sample.wall_ns as f64 / 1e9));
                        session.record(index, Ok(sample));
                    }
                    Err(_) if session::interrupted() => {
                        session
                            .progress
                            .println(&format!("heapkit-bench: interrupted during {what}"));
                    }
                    Err(err) => {
                        session.progress.finished(&what, "failed");
                        session.progress.println(&format!("warning: {err}"));
                        session.record(index, Err(err.0));
                    }
                }
            }
        }
    }
    let report = session.finish()?;
    report::write_readable(&report, &dir)?;
    let failed = report.cells.iter().filter(|c| !c.errors.is_empty()).count();
    eprintln!(
        "heapkit-bench: {} cells x {} repetitions in {:.0} s{}{}",
        report.cells.len(),
        config.repetitions,
        report.duration_s,
        if failed > 0 {
            format!(", {failed} cells with failures")
        } else {
            String::new()
        },
        report
            .partial
            .as_ref()
            .map_or(String::new(), |p| format!(" (partial report: {p})"))
    );
    println!("{}", dir.join("REPORT.md").display());
    if session::interrupted() {
        return Err(Error::new("interrupted; the partial report is written"));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn args() -> RunArgs {
        RunArgs {
            quick: false,
            full: false,
            workloads: vec![],
            threads: vec![],
            scale: None,
            common: MatrixArgs::default(),
            seed: 1,
            background_purge_ms: None,
            idle_ms: None,
        }
    }

    #[test]
    fn the_purger_implies_an_idle_wait() {
        let plan0 = plan(&args()).unwrap();
        assert_eq!(
            (plan0.config.background_purge_ms, plan0.config.idle_ms),
            (None, 0)
        );
        let mut a = args();
        a.background_purge_ms = Some(20);
        let p = plan(&a).unwrap();
        assert_eq!(
            (p.config.background_purge_ms, p.config.idle_ms),
            (Some(20), IDLE_MS_WITH_PURGER)
        );
        assert_eq!(p.config.preset, "custom");
        a.idle_ms = Some(300);
        assert_eq!(plan(&a).unwrap().config.idle_ms, 300);
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
        a.common.allocators = vec!["nope".into()];
        assert!(plan(&a)
            .unwrap_err()
            .0
            .starts_with("unknown allocator 'nope'"));
        let mut a = args();
        a.threads = vec![0];
        assert!(plan(&a).is_err());
    }
}
