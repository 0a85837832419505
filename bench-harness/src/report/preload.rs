//! The `preload` report: `REPORT.md` and charts of a program run under
//! every backend, from the harness's [`Report`] plus the user/system CPU
//! times and exit statuses only `preload` measures ([`ExtraSample`]).

use std::fmt::Write as _;
use std::path::Path;

use serde::Serialize;

use super::markdown::{fmt_mib, fmt_seconds};
use super::svg::Unit;
use super::{utc_stamp, Report};
use crate::error::{Error, Result};
use crate::stats::{geometric_mean, median};

/// The extra measurements of one sample, kept in `preload.json`.
#[derive(Debug, Clone, Serialize)]
pub struct ExtraSample {
    /// Column (backend) name.
    pub column: String,
    /// Row (command) label.
    pub row: String,
    /// Wall time, seconds.
    pub wall_s: f64,
    /// User CPU time, seconds.
    pub user_s: f64,
    /// System CPU time, seconds.
    pub sys_s: f64,
    /// Peak RSS (`ru_maxrss`), bytes.
    pub peak_rss: u64,
    /// `exit N` or `signal N`.
    pub exit: String,
}

/// Writes `text` to `path` with a one-line error.
pub fn write_file(path: &Path, text: &str) -> Result<()> {
    std::fs::write(path, text)
        .map_err(|e| Error::new(format!("cannot write {}: {e}", path.display())))
}

/// The median of one measurement for (row, column), over its successful
/// repetitions.
fn median_of(
    extras: &[ExtraSample],
    row: &str,
    col: &str,
    f: fn(&ExtraSample) -> f64,
) -> Option<f64> {
    let v: Vec<f64> = extras
        .iter()
        .filter(|e| e.row == row && e.column == col && e.exit == "exit 0")
        .map(f)
        .collect();
    median(&v)
}

/// A table of REPORT.md: title, note, the measurement, its formatting.
type Metric = (
    &'static str,
    &'static str,
    fn(&ExtraSample) -> f64,
    fn(f64) -> String,
);

/// The measurements REPORT.md tabulates.
const METRICS: &[Metric] = &[
    (
        "Wall time",
        "median; ratio lower is better",
        |e| e.wall_s,
        fmt_seconds,
    ),
    (
        "User CPU time",
        "of the child and its waited-for children",
        |e| e.user_s,
        fmt_seconds,
    ),
    ("System CPU time", "", |e| e.sys_s, fmt_seconds),
    (
        "Peak RSS",
        "ru_maxrss of the child (largest process); ratio lower is better",
        |e| e.peak_rss as f64,
        fmt_mib,
    ),
];

/// The whole `REPORT.md`: verdict, how it ran, warnings, one table per
/// measurement, charts, failures, method. `lib` is the library as the reader
/// should see it (relative or `~`-abbreviated).
pub fn render(
    report: &Report,
    extras: &[ExtraSample],
    lib: &str,
    warnings: &[String],
    charts: &[(String, String)],
) -> String {
    let c = &report.config;
    let m = &report.machine;
    let mut out = String::new();
    let _ = writeln!(out, "# heapkit-bench preload: {}\n", report.name);
    out += &super::verdict::render(report);
    for warning in warnings {
        let _ = writeln!(out, "> **Warning**: {warning}\n");
    }
    let _ = writeln!(out, "## How it ran\n");
    let _ = writeln!(
        out,
        "Each command ran {} times under each column (a fresh process each time, columns alternating, after one unmeasured run of the command), \
         with `LD_PRELOAD={}` and `HEAPKIT_ALLOC=<column>`; `native` has no preload, `jemalloc-so` / \
         `mimalloc-so` preload Debian's libraries. Started {} UTC, took {:.0} s. Ratios are to **{}**; \
         all values are medians.\n",
        c.repetitions,
        lib,
        utc_stamp(report.started_unix),
        report.duration_s,
        c.baseline
    );
    out += &super::markdown::machine_rows(m);
    let _ = writeln!(out, "| heapkit commit | `{}` |\n", m.git_commit);
    let _ = writeln!(
        out,
        "The machine may be shared: compare columns *within* this run (the ratios).\n"
    );
    for (title, note, f, format) in METRICS {
        let _ = writeln!(out, "## {title}\n");
        if !note.is_empty() {
            let _ = writeln!(out, "{note}\n");
        }
        // A metric no cell measured above zero (system time of a short
        // command) is one line, not a table of zeros.
        let all_zero = c.workloads.iter().all(|row| {
            c.allocators
                .iter()
                .all(|col| median_of(extras, row, col, *f).is_none_or(|v| v == 0.0))
        });
        if all_zero {
            let _ = writeln!(out, "Zero in every cell.\n");
            continue;
        }
        let _ = writeln!(out, "| command | {} |", c.allocators.join(" | "));
        let _ = writeln!(out, "|---|{}", "---|".repeat(c.allocators.len()));
        let mut ratios: Vec<Vec<f64>> = vec![Vec::new(); c.allocators.len()];
        for row in &c.workloads {
            let base = median_of(extras, row, &c.baseline, *f);
            let _ = write!(out, "| `{}` |", row.replace('|', "\\|"));
            for (i, col) in c.allocators.iter().enumerate() {
                match median_of(extras, row, col, *f) {
                    Some(v) => {
                        let ratio = base.filter(|b| *b > 0.0).map(|b| v / b);
                        if let Some(r) = ratio {
                            ratios[i].push(r);
                        }
                        let r = ratio.map_or("-".to_string(), |r| format!("{r:.2}"));
                        let _ = write!(out, " {} ({r}) |", format(v));
                    }
                    None => {
                        let _ = write!(out, " failed |");
                    }
                }
            }
            let _ = writeln!(out);
        }
        let _ = write!(out, "| **geometric mean of ratios** |");
        for r in &ratios {
            let g = geometric_mean(r).map_or("-".to_string(), |g| format!("{g:.2}"));
            let _ = write!(out, " **{g}** |");
        }
        let _ = writeln!(out, "\n");
    }
    for (file, caption) in charts {
        let _ = writeln!(out, "![{caption}]({file})\n");
    }
    let failures: Vec<String> = report
        .cells
        .iter()
        .flat_map(|cell| {
            cell.errors
                .iter()
                .map(move |e| format!("- {} `{}`: {e}", cell.allocator, cell.workload))
        })
        .collect();
    if !failures.is_empty() {
        let _ = writeln!(out, "## Failures\n\n{}\n", failures.join("\n"));
    }
    let _ = writeln!(
        out,
        "## Method\n\n- Wall time: `Instant` from spawn to reap. User/system time, peak RSS \
         (`ru_maxrss`) and minor faults: `wait4` on the child, which covers the child and the \
         descendants it waited for (peak RSS is that of the largest single process).\n\
         - Raw samples: `results.json` (the harness's report model; `compare` reads it) and \
         `preload.json` (user/sys time and exit status of every run).\n"
    );
    out
}

/// Writes the time and peak-RSS charts; returns `(file, caption)` pairs.
pub fn charts(
    report: &Report,
    extras: &[ExtraSample],
    dir: &Path,
) -> Result<Vec<(String, String)>> {
    let c = &report.config;
    let groups: Vec<String> = c.workloads.clone();
    let series = |f: fn(&ExtraSample) -> f64, relative: bool| -> Vec<super::svg::Series> {
        c.allocators
            .iter()
            .map(|col| {
                let vals = c
                    .workloads
                    .iter()
                    .map(|row| {
                        let v = median_of(extras, row, col, f)?;
                        if relative {
                            Some(v / median_of(extras, row, &c.baseline, f)?)
                        } else {
                            Some(v)
                        }
                    })
                    .collect();
                (col.clone(), vals)
            })
            .collect()
    };
    let mut written = Vec::new();
    let title = format!("Wall time relative to {} (lower is better)", c.baseline);
    super::svg::grouped_bars(
        &dir.join("time.svg"),
        &title,
        &groups,
        &series(|e| e.wall_s, true),
        Unit::Ratio,
        true,
    )?;
    written.push(("time.svg".to_string(), title));
    let title = format!("Peak RSS relative to {} (lower is better)", c.baseline);
    super::svg::grouped_bars(
        &dir.join("peak-rss.svg"),
        &title,
        &groups,
        &series(|e| e.peak_rss as f64, true),
        Unit::Ratio,
        true,
    )?;
    written.push(("peak-rss.svg".to_string(), title));
    Ok(written)
}
