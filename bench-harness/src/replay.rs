//! `heapkit-bench replay TRACE`: re-executes a recorded program's heap
//! operations under every allocator and reports which serves it best.
//!
//! ```sh
//! HEAPKIT_TRACE=app.hkt LD_PRELOAD=target/release/libheapkit.so python3 app.py
//! heapkit-bench trace info app.hkt
//! heapkit-bench replay app.hkt --allocators system,jemalloc,mimalloc
//! ```
//!
//! The trace is validated and decoded here, once, into a
//! [replay plan](crate::replay_plan) file (a bad trace is one clear error,
//! with its byte offset); then each repetition of each allocator is a fresh
//! process of that allocator's cell binary running the `replay` job
//! ([`crate::replay_cell`]), exactly like `run` does for workloads, with the
//! allocators alternating between repetitions. Every sample is checked: the
//! cell must have executed exactly the trace's replayable operations and,
//! with `--ordered`, counted exactly the trace's peak live bytes; a
//! mismatch is recorded as an error of that cell.
//!
//! The report (results.json, REPORT.md, SVG charts) is the harness's usual
//! one, with one row (the trace) and, above it in REPORT.md, what the trace
//! holds. Fragmentation there is peak RSS growth / peak live bytes.

use std::fmt::Write as _;
use std::path::PathBuf;

use clap::Args;
use heapkit_trace::{summary::Summary, Trace};

use crate::args::MatrixArgs;
use crate::cell::{cell_binary, spawn_cell};
use crate::error::{Error, Result};
use crate::registry::{find_allocator, ALLOCATORS};
use crate::replay_cell::ReplaySample;
use crate::replay_plan;
use crate::report::markdown::fmt_seconds;
use crate::report::{self, Cell, Machine, Report, ReportDir, RunConfig, SCHEMA_VERSION};
use crate::session::{self, Session};
use crate::trace_info;

/// Options of `replay`.
#[derive(Args, Debug, Clone)]
pub struct ReplayArgs {
    /// The trace to replay (recorded with HEAPKIT_TRACE=path under libheapkit.so).
    pub trace: PathBuf,
    /// Follow the recorded global order exactly (verification mode: slower,
    /// measures peak live bytes and checks it against the trace).
    #[arg(long)]
    pub ordered: bool,
    /// Allocators, repetitions, baseline, report name and place, timeout.
    #[command(flatten)]
    pub common: MatrixArgs,
}

/// Replays the trace under every chosen allocator and writes the report.
pub fn replay(args: &ReplayArgs) -> Result<()> {
    args.common.repetitions_or(3)?;
    let trace_path = args
        .trace
        .canonicalize()
        .map_err(|e| Error::new(format!("cannot open trace {}: {e}", args.trace.display())))?;
    let trace_name = trace_path
        .file_stem()
        .map_or("trace".into(), |s| s.to_string_lossy().into_owned());
    let (trace, warning) =
        Trace::open_salvaging(&trace_path).map_err(|e| Error::new(e.to_string()))?;
    if let Some(warning) = warning {
        eprintln!(
            "heapkit-bench: warning: {}: {warning}",
            trace_path.display()
        );
    }
    let plan_path = std::env::temp_dir().join(format!(
        "heapkit-replay-{}-{trace_name}.plan",
        std::process::id()
    ));
    let written = replay_plan::write(&trace, &plan_path);
    drop(trace);
    let summary = written?.summary;
    let result = replay_plan_file(args, &trace_path, &trace_name, &plan_path, &summary);
    let _ = std::fs::remove_file(&plan_path);
    result
}

fn replay_plan_file(
    args: &ReplayArgs,
    trace_path: &std::path::Path,
    trace_name: &str,
    plan_path: &std::path::Path,
    summary: &Summary,
) -> Result<()> {
    let expected_ops = summary.replayable_ops() as u64;

    let allocators: Vec<String> = if args.common.allocators.is_empty() {
        ALLOCATORS.iter().map(|a| a.name.to_string()).collect()
    } else {
        args.common.allocators.clone()
    };
    let repetitions = args.common.repetitions_or(3)?;
    let entries = allocators
        .iter()
        .map(|n| find_allocator(n))
        .collect::<Result<Vec<_>>>()?;
    for entry in &entries {
        cell_binary(entry)?;
    }
    let baseline = args.common.baseline(&allocators, "system")?;
    let ReportDir {
        dir,
        name,
        started_unix,
    } = ReportDir::create(
        &args.common.out,
        args.common.name.as_deref(),
        &format!("replay-{trace_name}"),
    )?;

    let cells: Vec<Cell> = entries
        .iter()
        .map(|e| Cell {
            allocator: e.name.to_string(),
            workload: trace_name.to_string(),
            threads: summary.threads,
            samples: Vec::new(),
            errors: Vec::new(),
        })
        .collect();
    let job = vec![
        "replay".to_string(),
        format!("plan={}", plan_path.display()),
        format!("ordered={}", u8::from(args.ordered)),
    ];
    let planned = cells.len() * repetitions;
    let skeleton = Report {
        schema: SCHEMA_VERSION,
        tool: "heapkit-bench replay".to_string(),
        name,
        started_unix,
        duration_s: 0.0,
        machine: Machine::detect(),
        config: RunConfig {
            preset: if args.ordered {
                "replay-ordered"
            } else {
                "replay"
            }
            .to_string(),
            scale: 1.0,
            repetitions,
            allocators,
            workloads: vec![trace_name.to_string()],
            threads: vec![summary.threads],
            baseline,
            seed: 0,
            background_purge_ms: None,
            idle_ms: 0,
            descriptions: Default::default(),
        },
        cells,
        partial: None,
    };
    let mut session = Session::begin(skeleton, &dir, planned)?;
    let timeout = args.common.timeout();
    'reps: for rep in 0..repetitions {
        for k in 0..entries.len() {
            if session::interrupted() {
                break 'reps;
            }
            let column = if rep % 2 == 0 {
                k
            } else {
                entries.len() - 1 - k
            };
            let what = format!(
                "replay {trace_name} under {} rep {}/{repetitions}",
                entries[column].name,
                rep + 1
            );
            session.progress.starting(&what);
            let outcome = spawn_cell::<ReplaySample>(entries[column], &job, &[], timeout)
                .and_then(|s| check(&s, expected_ops, summary.peak_live_bytes).map(|()| s));
            match outcome {
                Ok(s) => {
                    session
                        .progress
                        .finished(&what, &fmt_seconds(s.sample.wall_ns as f64 / 1e9));
                    session.record(column, Ok(s.sample));
                }
                Err(_) if session::interrupted() => {}
                Err(err) => {
                    session.progress.finished(&what, "failed");
                    session.progress.println(&format!("warning: {err}"));
                    session.record(column, Err(err.0));
                }
            }
        }
    }
    let report = session.finish()?;
    report::write_readable(&report, &dir)?;
    let plan_bytes = std::fs::metadata(plan_path).map_or(0, |m| m.len());
    prepend_trace_section(&dir, trace_path, summary, args.ordered, plan_bytes)?;
    let failed = report.cells.iter().filter(|c| !c.errors.is_empty()).count();
    println!("{}", dir.join("REPORT.md").display());
    if session::interrupted() {
        return Err(Error::new("interrupted; the partial report is written"));
    }
    if failed > 0 {
        return Err(Error::new(format!(
            "{failed} allocators failed to replay the trace (see REPORT.md)"
        )));
    }
    Ok(())
}

/// A replay sample must have done what the trace says.
fn check(s: &ReplaySample, expected_ops: u64, peak_live: u64) -> Result<()> {
    if s.sample.ops != expected_ops {
        return Err(Error::new(format!(
            "replay executed {} operations, the trace holds {expected_ops}",
            s.sample.ops
        )));
    }
    if let Some(measured) = s.measured_peak_live {
        if measured != peak_live {
            return Err(Error::new(format!(
                "replay peaked at {measured} live bytes, the trace at {peak_live}"
            )));
        }
    }
    Ok(())
}

fn prepend_trace_section(
    dir: &std::path::Path,
    trace: &std::path::Path,
    summary: &Summary,
    ordered: bool,
    plan_bytes: u64,
) -> Result<()> {
    let path = dir.join("REPORT.md");
    let body = std::fs::read_to_string(&path)
        .map_err(|e| Error::new(format!("cannot read {}: {e}", path.display())))?;
    // The trace section goes after the verdict, before the tables.
    let (top, rest) = body.split_at(body.find("## How it ran").unwrap_or(0));
    let mut head = String::new();
    let _ = writeln!(head, "## The trace: {}\n", trace.display());
    let _ = writeln!(
        head,
        "Each allocator re-executed the recorded heap operations in a fresh process, \
         one thread per recorded thread{}; every block was touched (first and last byte). \
         Fragmentation = peak RSS growth / peak live requested bytes. \
         Peak and end RSS include the replay plan every cell maps and reads \
         before it starts ({}, the same for every allocator); fragmentation \
         excludes it.\n",
        if ordered {
            ", in the recorded global order"
        } else {
            ", cross-thread frees waiting for their allocation"
        },
        crate::report::markdown::fmt_mib(plan_bytes as f64)
    );
    head.push_str("```text\n");
    head.push_str(&trace_info::render(summary));
    head.push_str("```\n\n");
    std::fs::write(&path, format!("{top}{head}{rest}"))
        .map_err(|e| Error::new(format!("cannot write {}: {e}", path.display())))
}
