//! `REPORT.md`: the human-readable summary of a [`Report`].
//!
//! Layout: the verdict ([`super::verdict`]), how it ran (machine,
//! configuration), one summary table per metric
//! (rows = workload × threads, columns = allocators, each value with its ratio
//! to the baseline allocator, and a geometric-mean-of-ratios row), the charts,
//! then one detail table per workload × threads (rows = metrics), and the
//! method. All numbers are medians over repetitions (see [`super::summary`]).

use std::fmt::Write;

use super::summary::{cell_at, columns, rows, summarize, CellSummary, RowKey};
use super::utc_stamp;
use super::Report;
use crate::stats::geometric_mean;

const MIB: f64 = 1024.0 * 1024.0;

/// Formats seconds with a unit that keeps 3 significant digits.
pub fn fmt_seconds(s: f64) -> String {
    if s >= 1.0 {
        format!("{s:.2} s")
    } else if s >= 1e-3 {
        format!("{:.1} ms", s * 1e3)
    } else {
        format!("{:.1} µs", s * 1e6)
    }
}

/// Formats bytes as MiB.
pub fn fmt_mib(bytes: f64) -> String {
    format!("{:.1} MiB", bytes / MIB)
}

/// Formats nanoseconds.
pub fn fmt_ns(ns: f64) -> String {
    if ns >= 1e6 {
        format!("{:.2} ms", ns / 1e6)
    } else if ns >= 1e3 {
        format!("{:.1} µs", ns / 1e3)
    } else {
        format!("{ns:.0} ns")
    }
}

/// A metric shown as a summary table.
pub struct Metric {
    /// Table heading.
    pub title: &'static str,
    /// One line under the heading.
    pub note: &'static str,
    /// Extracts the value from a cell summary.
    pub value: fn(&CellSummary) -> Option<f64>,
    /// Formats a value.
    pub format: fn(f64) -> String,
}

/// The summary metrics of a run report.
pub const SUMMARY_METRICS: &[Metric] = &[
    Metric {
        title: "Wall time",
        note: "median over repetitions; ratio = time / baseline time, lower is better",
        value: |s| Some(s.time_s.median),
        format: fmt_seconds,
    },
    Metric {
        title: "Throughput (allocator operations per second)",
        note: "malloc + free + realloc calls / wall time; ratio = throughput / baseline, higher is better",
        value: |s| Some(s.ops_per_s),
        format: |v| format!("{:.1} M/s", v / 1e6),
    },
    Metric {
        title: "Peak RSS",
        note: "VmHWM during the workload (reset at its start); ratio lower is better",
        value: |s| Some(s.peak_rss),
        format: fmt_mib,
    },
    Metric {
        title: "RSS at end",
        note: "after the workload freed everything (start RSS in the detail tables); ratio lower is better",
        value: |s| Some(s.rss_end),
        format: fmt_mib,
    },
    Metric {
        title: "RSS after idle, per RSS at start",
        note: "RSS once the workload freed everything and the process then slept `--idle-ms` without calling the allocator (with `--background-purge-ms`, heapkit's purger running), divided by the RSS at start: 1.00x = everything given back; ratio lower is better",
        value: |s| s.rss_idle.map(|r| r / s.rss_start.max(1.0)),
        format: |v| format!("{v:.2}x"),
    },
    Metric {
        title: "malloc p99 latency",
        note: "sampled per-operation latency, see Method; ratio lower is better",
        value: |s| s.latency_of("malloc").map(|l| l.p99),
        format: fmt_ns,
    },
    Metric {
        title: "free p99 latency",
        note: "ratio lower is better",
        value: |s| s.latency_of("free").map(|l| l.p99),
        format: fmt_ns,
    },
    Metric {
        title: "Fragmentation (worst checkpoint)",
        note: "(RSS at checkpoint - RSS at start) / live requested bytes; 1.0 is perfect, lower is better",
        value: |s| s.worst_fragmentation(),
        format: |v| format!("{v:.2}"),
    },
    Metric {
        title: "Minor page faults",
        note: "during the workload; ratio lower is better",
        value: |s| Some(s.minor_faults),
        format: |v| format!("{v:.0}"),
    },
];

/// Renders a metric as a table: rows × allocators, value (ratio), and a
/// geometric mean of ratios. Returns `None` if no cell has the metric.
pub fn metric_table(report: &Report, metric: &Metric) -> Option<String> {
    let keys = rows(report);
    let cols = columns(report);
    let baseline = &report.config.baseline;
    let value = |k: &RowKey, a: &str| {
        cell_at(report, k, a)
            .and_then(summarize)
            .and_then(|s| (metric.value)(&s))
    };
    if !keys
        .iter()
        .any(|k| cols.iter().any(|a| value(k, a).is_some()))
    {
        return None;
    }
    let mut out = format!(
        "| workload | {} |\n|---|{}\n",
        cols.join(" | "),
        "---:|".repeat(cols.len())
    );
    let mut ratios: Vec<Vec<f64>> = vec![Vec::new(); cols.len()];
    for k in &keys {
        let base = value(k, baseline);
        if cols.iter().all(|a| value(k, a).is_none()) {
            continue;
        }
        let _ = write!(out, "| {} |", k.label());
        for (i, a) in cols.iter().enumerate() {
            match (value(k, a), base) {
                (Some(v), Some(b)) if b > 0.0 => {
                    ratios[i].push(v / b);
                    let _ = write!(out, " {} ({:.2}) |", (metric.format)(v), v / b);
                }
                (Some(v), _) => {
                    let _ = write!(out, " {} |", (metric.format)(v));
                }
                (None, _) => {
                    let failed = cell_at(report, k, a).is_some_and(|c| !c.errors.is_empty());
                    out += if failed { " failed |" } else { " – |" };
                }
            }
        }
        out.push('\n');
    }
    out += "| **geometric mean of ratios** |";
    for r in &ratios {
        match geometric_mean(r) {
            Some(g) => {
                let _ = write!(out, " **{g:.2}** |");
            }
            None => out += " – |",
        }
    }
    out.push('\n');
    Some(out)
}

fn detail_table(report: &Report, key: &RowKey) -> String {
    let cols = columns(report);
    let summaries: Vec<Option<CellSummary>> = cols
        .iter()
        .map(|a| cell_at(report, key, a).and_then(summarize))
        .collect();
    let mut out = format!(
        "| metric | {} |\n|---|{}\n",
        cols.join(" | "),
        "---:|".repeat(cols.len())
    );
    let mut line = |name: &str, f: &dyn Fn(&CellSummary) -> Option<String>| {
        let cells: Vec<String> = summaries
            .iter()
            .map(|s| s.as_ref().and_then(f).unwrap_or_else(|| "–".to_string()))
            .collect();
        if cells.iter().any(|c| c != "–") {
            let _ = writeln!(out, "| {name} | {} |", cells.join(" | "));
        }
    };
    line("time median [min – max]", &|s| {
        Some(format!(
            "{} [{} – {}]",
            fmt_seconds(s.time_s.median),
            fmt_seconds(s.time_s.min),
            fmt_seconds(s.time_s.max)
        ))
    });
    line("throughput", &|s| {
        Some(format!("{:.1} Mops/s", s.ops_per_s / 1e6))
    });
    for op in ["malloc", "free", "realloc"] {
        line(&format!("{op} p50 / p99 / p99.9 / max"), &|s| {
            s.latency_of(op).map(|l| {
                format!(
                    "{} / {} / {} / {}",
                    fmt_ns(l.p50),
                    fmt_ns(l.p99),
                    fmt_ns(l.p999),
                    fmt_ns(l.max)
                )
            })
        });
    }
    line("peak RSS", &|s| Some(fmt_mib(s.peak_rss)));
    line("RSS start → end", &|s| {
        Some(format!("{} → {}", fmt_mib(s.rss_start), fmt_mib(s.rss_end)))
    });
    line("minor page faults", &|s| {
        Some(format!("{:.0}", s.minor_faults))
    });
    let labels: Vec<String> = summaries
        .iter()
        .flatten()
        .flat_map(|s| s.checkpoints.iter().map(|c| c.label.clone()))
        .fold(Vec::new(), |mut acc, l| {
            if !acc.contains(&l) {
                acc.push(l);
            }
            acc
        });
    for label in labels {
        line(&format!("fragmentation @ {label} (RSS, live)"), &|s| {
            s.checkpoints.iter().find(|c| c.label == label).map(|c| {
                format!(
                    "{:.2} ({}, {})",
                    c.fragmentation,
                    fmt_mib(c.rss),
                    fmt_mib(c.live)
                )
            })
        });
    }
    let errors: Vec<String> = cols
        .iter()
        .filter_map(|a| {
            let c = cell_at(report, key, a)?;
            c.errors
                .first()
                .map(|e| format!("- {a}: {} failed repetition(s): {e}", c.errors.len()))
        })
        .collect();
    if !errors.is_empty() {
        out += "\n";
        out += &errors.join("\n");
        out += "\n";
    }
    out
}

/// The head of the machine table: header, CPU and kernel rows.
pub fn machine_rows(m: &super::Machine) -> String {
    format!(
        "| machine | |\n|---|---|\n| CPU | {} ({} logical cores) |\n| kernel | {} |\n",
        m.cpu_model, m.cores, m.kernel
    )
}

/// Renders the whole report; `charts` are `(file name, caption)` pairs.
pub fn render(report: &Report, charts: &[(String, String)]) -> String {
    let c = &report.config;
    let m = &report.machine;
    let mut out = String::new();
    let _ = writeln!(out, "# heapkit-bench report: {}\n", report.name);
    out += &super::verdict::render(report);
    let _ = writeln!(out, "## How it ran\n");
    let _ = writeln!(
        out,
        "`{}` preset **{}**: scale {}, {} repetitions per cell (each a fresh process), threads {:?} for the \
         multi-threaded workloads, seed {}. Started {} UTC, took {:.0} s. Ratios are to **{}**.\n",
        report.tool,
        c.preset,
        c.scale,
        c.repetitions,
        c.threads,
        c.seed,
        utc_stamp(report.started_unix),
        report.duration_s,
        c.baseline
    );
    if c.idle_ms > 0 {
        let purger = match c.background_purge_ms {
            Some(ms) => format!("with heapkit's background purger every {ms} ms"),
            None => "without a background purger".to_string(),
        };
        let _ = writeln!(
            out,
            "After each workload the process slept {} ms without calling the allocator, {purger}, \
             and read RSS again (\"RSS after idle\").\n",
            c.idle_ms
        );
    }
    out += &machine_rows(m);
    let _ = writeln!(out, "| rustc | {} |", m.rustc);
    let _ = writeln!(out, "| heapkit commit | `{}` |", m.git_commit);
    let _ = writeln!(out, "| allocators | {} |\n", c.allocators.join(", "));
    let _ = writeln!(
        out,
        "The machine may be shared: compare allocators *within* this run (the ratios), not absolute \
         times across runs; use `heapkit-bench compare` for runs.\n"
    );
    let _ = writeln!(out, "## Summary\n");
    for metric in SUMMARY_METRICS {
        if let Some(table) = metric_table(report, metric) {
            let _ = writeln!(out, "### {}\n\n{}.\n\n{table}", metric.title, metric.note);
        }
    }
    if !charts.is_empty() {
        let _ = writeln!(out, "## Charts\n");
        for (file, caption) in charts {
            let _ = writeln!(out, "**{caption}**\n\n![{caption}]({file})\n");
        }
    }
    let _ = writeln!(out, "## Per workload\n");
    for key in rows(report) {
        let description = report
            .config
            .descriptions
            .get(&key.workload)
            .map_or("", String::as_str);
        let _ = writeln!(
            out,
            "### {}\n\n{description}\n\n{}",
            key.label(),
            detail_table(report, &key)
        );
    }
    out += METHOD;
    out
}

const METHOD: &str = "## Method

- **Cells.** Every repetition of every (allocator, workload, threads) cell runs in a fresh process: \
the allocator's cell binary `hk-cell-<allocator>`, identical code except for one static \
`#[global_allocator]`, so every allocator is reached by the same direct call. Repetitions are \
interleaved across cells and allocators to spread machine drift.
- **Time** is the wall time of the workload inside the cell (thread spawn and join included, \
process start and exit excluded); throughput = allocator operations / time.
- **Latency** is per-operation, sampled: on average one operation in 16 (random gaps) is bracketed \
with `lfence; rdtsc; lfence`; the cost of an empty bracket is subtracted; ticks are converted to ns \
with a calibration against the monotonic clock. The resolution is that of the TSC reads on this \
machine (shown in results.json as `clock`). Percentiles come from an hdrhistogram (2 significant \
digits) preallocated before the timed region, so recording never allocates.
- **Memory.** Peak RSS is VmHWM from /proc/self/status, reset through /proc/self/clear_refs at \
workload start; RSS is read from /proc/self/statm with a stack buffer (no allocation) at start, at \
each checkpoint and at the end; page faults from getrusage. Fragmentation at a checkpoint = \
(RSS - RSS at start) / bytes the workload requested and still holds.
- All figures are medians over the repetitions; `results.json` holds every raw sample.
";
