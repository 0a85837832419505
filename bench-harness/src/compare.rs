//! `heapkit-bench compare OLD.json NEW.json`: what moved beyond the noise.
//!
//! Cells are matched by (allocator, workload, threads). For wall time and peak
//! RSS, a cell counts as faster/slower (smaller/larger) only if the two sets of
//! repetitions do not overlap *and* the change of the medians exceeds the larger
//! relative spread `(max-min)/median` of the two runs and a floor (2 % for
//! time, 5 % for peak RSS); see [`crate::stats::classify_change`]. Runs made
//! with different work sizes (`scale`) are refused: their times are not
//! comparable. Runs from different machines or under different load do compare,
//! but then the table measures the machine, not the code: compare runs made
//! back to back on a quiet machine.

use std::path::PathBuf;

use clap::Args;

use crate::error::{Error, Result};
use crate::report::{json, Cell, Report};
use crate::stats::{classify_change, median, relative_spread, Change};

/// Options of `compare`.
#[derive(Args, Debug, Clone)]
pub struct CompareArgs {
    /// The earlier results.json (or its report directory).
    pub old: PathBuf,
    /// The later results.json (or its report directory).
    pub new: PathBuf,
    /// Also list the cells that did not move.
    #[arg(long)]
    pub all: bool,
}

/// Minimum relative change of time that counts.
const TIME_FLOOR: f64 = 0.02;
/// Minimum relative change of peak RSS that counts.
const RSS_FLOOR: f64 = 0.05;

/// One compared cell.
#[derive(Debug, Clone, PartialEq)]
pub struct Row {
    /// `allocator workload ×threads`.
    pub cell: String,
    /// Median times, seconds.
    pub old_time: f64,
    /// New median time.
    pub new_time: f64,
    /// new / old.
    pub time_ratio: f64,
    /// Larger relative spread of the two.
    pub time_spread: f64,
    /// Verdict on time.
    pub time_change: Change,
    /// new / old peak RSS.
    pub rss_ratio: f64,
    /// Verdict on peak RSS.
    pub rss_change: Change,
}

fn load(path: &std::path::Path) -> Result<Report> {
    if path.is_dir() {
        json::read_dir(path)
    } else {
        json::read(path)
    }
}

/// Matches the cells of two reports and classifies each change.
pub fn compare_reports(old: &Report, new: &Report) -> Result<Vec<Row>> {
    if (old.config.scale - new.config.scale).abs() > 1e-9 {
        return Err(Error::new(format!(
            "mismatched runs: work scale {} vs {} (times are not comparable)",
            old.config.scale, new.config.scale
        )));
    }
    let times = |c: &Cell| {
        c.samples
            .iter()
            .map(|s| s.wall_ns as f64 / 1e9)
            .collect::<Vec<_>>()
    };
    let rss = |c: &Cell| {
        c.samples
            .iter()
            .map(|s| s.peak_rss as f64)
            .collect::<Vec<_>>()
    };
    let mut rows = Vec::new();
    for o in &old.cells {
        let Some(n) = new.cells.iter().find(|n| {
            n.allocator == o.allocator && n.workload == o.workload && n.threads == o.threads
        }) else {
            continue;
        };
        let (Some((time_ratio, time_change)), Some((rss_ratio, rss_change))) = (
            classify_change(&times(o), &times(n), TIME_FLOOR),
            classify_change(&rss(o), &rss(n), RSS_FLOOR),
        ) else {
            continue;
        };
        rows.push(Row {
            cell: format!("{} {} ×{}", o.allocator, o.workload, o.threads),
            old_time: median(&times(o)).unwrap_or(0.0),
            new_time: median(&times(n)).unwrap_or(0.0),
            time_ratio,
            time_spread: relative_spread(&times(o))
                .unwrap_or(0.0)
                .max(relative_spread(&times(n)).unwrap_or(0.0)),
            time_change,
            rss_ratio,
            rss_change,
        });
    }
    if rows.is_empty() {
        return Err(Error::new(
            "mismatched runs: no (allocator, workload, threads) cell measured in both",
        ));
    }
    Ok(rows)
}

fn verdict(change: Change, worse: &str, better: &str) -> String {
    match change {
        Change::Worse => worse.to_string(),
        Change::Better => better.to_string(),
        Change::Unchanged => "~".to_string(),
    }
}

/// Renders the comparison as a Markdown table (changed rows first).
pub fn render(rows: &[Row], all: bool) -> String {
    let mut sorted: Vec<&Row> = rows.iter().collect();
    let moved = |r: &Row| r.time_change != Change::Unchanged || r.rss_change != Change::Unchanged;
    sorted.sort_by(|a, b| {
        moved(b)
            .cmp(&moved(a))
            .then(b.time_ratio.total_cmp(&a.time_ratio))
    });
    let listed: Vec<&&Row> = sorted.iter().filter(|r| all || moved(r)).collect();
    let mut out = String::new();
    if listed.is_empty() {
        out += "Nothing moved beyond the run-to-run noise.\n";
    } else {
        out += "| cell | old time | new time | new/old | noise | time | peak RSS new/old | RSS |\n\
                |---|---:|---:|---:|---:|---|---:|---|\n";
    }
    let shown = listed.len();
    for r in listed {
        out += &format!(
            "| {} | {:.4} s | {:.4} s | {:.3} | ±{:.1}% | {} | {:.3} | {} |\n",
            r.cell,
            r.old_time,
            r.new_time,
            r.time_ratio,
            r.time_spread.max(TIME_FLOOR) * 100.0,
            verdict(r.time_change, "**slower**", "**faster**"),
            r.rss_ratio,
            verdict(r.rss_change, "**larger**", "**smaller**"),
        );
    }
    let count = |f: &dyn Fn(&Row) -> bool| rows.iter().filter(|r| f(r)).count();
    out += "\nnoise: the larger (max - min) / median of the two runs' repetitions, at least 2 %; \
             a time change counts only when new/old is further from 1 than that and the two \
             runs' repetitions do not overlap (peak RSS: the same rule, at least 5 %).\n";
    out += &format!(
        "\n{} cells compared: {} faster, {} slower, {} larger peak RSS, {} smaller; {} unchanged{}.\n",
        rows.len(),
        count(&|r| r.time_change == Change::Better),
        count(&|r| r.time_change == Change::Worse),
        count(&|r| r.rss_change == Change::Worse),
        count(&|r| r.rss_change == Change::Better),
        rows.len() - count(&|r| moved(r)),
        if all || shown == rows.len() { "" } else { " (not listed; --all lists them)" }
    );
    out
}

/// The `compare` subcommand.
pub fn compare(args: &CompareArgs) -> Result<()> {
    let old = load(&args.old)?;
    let new = load(&args.new)?;
    let rows = compare_reports(&old, &new)?;
    println!("# {} → {}\n", old.name, new.name);
    print!("{}", render(&rows, args.all));
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::report::Report;

    fn scaled(report: &Report, allocator: &str, factor: f64) -> Report {
        let mut r = report.clone();
        for c in r.cells.iter_mut().filter(|c| c.allocator == allocator) {
            for s in &mut c.samples {
                s.wall_ns = (s.wall_ns as f64 * factor) as u64;
            }
        }
        r
    }

    #[test]
    fn detects_slower_and_ignores_noise() {
        let old = crate::report::tests::report();
        let new = scaled(&old, "jemalloc", 1.5);
        let rows = compare_reports(&old, &new).unwrap();
        let jem = rows
            .iter()
            .find(|r| r.cell.starts_with("jemalloc"))
            .unwrap();
        assert_eq!(jem.time_change, Change::Worse);
        let sys = rows.iter().find(|r| r.cell.starts_with("system")).unwrap();
        assert_eq!(sys.time_change, Change::Unchanged);
        let table = render(&rows, false);
        assert!(table.contains("**slower**") && table.contains("1 slower"));
        // within the ±10 % spread of the repetitions: unchanged
        let new = scaled(&old, "jemalloc", 1.05);
        let rows = compare_reports(&old, &new).unwrap();
        assert!(rows.iter().all(|r| r.time_change == Change::Unchanged));
    }

    #[test]
    fn mismatched_runs_are_errors() {
        let old = crate::report::tests::report();
        let mut new = old.clone();
        new.config.scale = 2.0;
        assert!(compare_reports(&old, &new)
            .unwrap_err()
            .0
            .contains("mismatched runs"));
        let mut new = old.clone();
        new.cells.clear();
        assert!(compare_reports(&old, &new)
            .unwrap_err()
            .0
            .contains("no (allocator"));
    }
}
