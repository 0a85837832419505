//! The verdict at the top of every `REPORT.md`: which allocator to pick for
//! this run, by time, by memory and by both, with ties called as ties.
//!
//! Each allocator's score on a metric is the geometric mean over the rows of
//! its median divided by the baseline's median (the tables' last row). An
//! allocator that failed a row is not ranked. The runner-up ties with the
//! winner when their scores differ by less than the run-to-run spread:
//! the median over both allocators' cells of half the relative range
//! `(max - min) / 2 / median` of their repetitions (with one repetition
//! there is no spread and only a 1% floor applies).
//!
//! "Best balance" ranks the geometric mean of the time and peak-RSS scores,
//! so halving memory is worth as much as halving time.

use std::fmt::Write;

use super::summary::{cell_at, columns, rows, RowKey};
use super::{Cell, Report};
use crate::stats::{geometric_mean, median, relative_spread};

/// Differences below this are always ties, whatever the spread.
const TIE_FLOOR: f64 = 0.01;

/// One metric the verdict ranks by.
#[derive(Clone, Copy)]
struct Criterion {
    name: &'static str,
    what: &'static str,
    value: fn(&Cell) -> Vec<f64>,
}

const TIME: Criterion = Criterion {
    name: "Fastest",
    what: "time",
    value: |c| c.samples.iter().map(|s| s.wall_ns as f64).collect(),
};

const MEMORY: Criterion = Criterion {
    name: "Least memory",
    what: "peak RSS",
    value: |c| c.samples.iter().map(|s| s.peak_rss as f64).collect(),
};

/// An allocator's score on one criterion.
#[derive(Debug, Clone)]
struct Score {
    allocator: String,
    /// Geometric mean of ratios to the baseline.
    ratio: f64,
    /// Half relative ranges of its cells.
    spreads: Vec<f64>,
}

fn scores(report: &Report, keys: &[RowKey], criterion: Criterion) -> (Vec<Score>, Vec<String>) {
    let baseline = &report.config.baseline;
    let mut ranked = Vec::new();
    let mut unranked = Vec::new();
    for allocator in columns(report) {
        let mut ratios = Vec::new();
        let mut spreads = Vec::new();
        let mut complete = true;
        for key in keys {
            let base = cell_at(report, key, baseline).map(|c| (criterion.value)(c));
            let own = cell_at(report, key, &allocator).map(|c| (criterion.value)(c));
            match (
                base.as_deref().and_then(median),
                own.as_deref().and_then(median),
            ) {
                (Some(b), Some(v)) if b > 0.0 && v > 0.0 => {
                    ratios.push(v / b);
                    if let Some(s) = own.as_deref().and_then(relative_spread) {
                        spreads.push(s / 2.0);
                    }
                }
                (Some(_), _) => complete = false,
                // The baseline failed this row: nobody is compared on it.
                (None, _) => {}
            }
        }
        match geometric_mean(&ratios) {
            Some(ratio) if complete => ranked.push(Score {
                allocator,
                ratio,
                spreads,
            }),
            _ => unranked.push(allocator),
        }
    }
    ranked.sort_by(|a, b| a.ratio.total_cmp(&b.ratio));
    (ranked, unranked)
}

/// The spread two scores are compared within.
fn tie_margin(a: &Score, b: &Score) -> f64 {
    let all: Vec<f64> = a.spreads.iter().chain(&b.spreads).copied().collect();
    median(&all).unwrap_or(0.0).max(TIE_FLOOR)
}

/// Writes one verdict line: the winner and who ties with it.
fn line(out: &mut String, title: &str, what: &str, baseline: &str, ranked: &[Score]) {
    let Some(best) = ranked.first() else {
        let _ = writeln!(out, "- **{title}**: no allocator completed every row.");
        return;
    };
    let tied: Vec<&Score> = ranked[1..]
        .iter()
        .filter(|s| s.ratio / best.ratio - 1.0 < tie_margin(best, s))
        .collect();
    let names: Vec<&str> = std::iter::once(best.allocator.as_str())
        .chain(tied.iter().map(|s| s.allocator.as_str()))
        .collect();
    let _ = write!(
        out,
        "- **{title}: {}**: {:.2}x {baseline}'s {what}",
        names.join(" = "),
        best.ratio
    );
    if tied.is_empty() {
        if let Some(next) = ranked.get(1) {
            let noise = if best.spreads.is_empty() && next.spreads.is_empty() {
                "one repetition: not tested against run-to-run noise".to_string()
            } else {
                format!(
                    "beyond the ±{:.0}% run-to-run spread",
                    tie_margin(best, next) * 100.0
                )
            };
            let _ = write!(
                out,
                "; next {} at {:.2}x ({:.0}% more, {noise})",
                next.allocator,
                next.ratio,
                (next.ratio / best.ratio - 1.0) * 100.0,
            );
        }
    } else {
        let list: Vec<String> = tied
            .iter()
            .map(|s| format!("{} at {:.2}x", s.allocator, s.ratio))
            .collect();
        let _ = write!(
            out,
            " (a tie: {} {} within the run-to-run spread of ±{:.0}%)",
            list.join(", "),
            if list.len() == 1 { "is" } else { "are" },
            tie_margin(best, tied[0]) * 100.0
        );
    }
    let _ = writeln!(out, ".");
}

/// The `## Verdict` section of `report`.
pub fn render(report: &Report) -> String {
    let keys = rows(report);
    let baseline = &report.config.baseline;
    let mut out = String::from("## Verdict\n\n");
    if let Some(why) = &report.partial {
        let _ = writeln!(
            out,
            "**Partial report** ({why}): the verdict covers what was measured.\n"
        );
    }
    let (time, unranked_time) = scores(report, &keys, TIME);
    let (memory, unranked_memory) = scores(report, &keys, MEMORY);
    line(&mut out, TIME.name, TIME.what, baseline, &time);
    line(&mut out, MEMORY.name, MEMORY.what, baseline, &memory);
    let mut balance: Vec<Score> = time
        .iter()
        .filter_map(|t| {
            let m = memory.iter().find(|m| m.allocator == t.allocator)?;
            Some(Score {
                allocator: t.allocator.clone(),
                ratio: (t.ratio * m.ratio).sqrt(),
                spreads: t.spreads.iter().chain(&m.spreads).copied().collect(),
            })
        })
        .collect();
    balance.sort_by(|a, b| a.ratio.total_cmp(&b.ratio));
    line(
        &mut out,
        "Best balance",
        "time x peak RSS (geometric mean of the two)",
        baseline,
        &balance,
    );
    let mut unranked = unranked_time;
    for a in unranked_memory {
        if !unranked.contains(&a) {
            unranked.push(a);
        }
    }
    if !unranked.is_empty() {
        let _ = writeln!(
            out,
            "- Not ranked (failed or missing on some rows): {}.",
            unranked.join(", ")
        );
    }
    let _ = writeln!(
        out,
        "\nScores are geometric means over {} rows of each allocator's median \
         relative to **{baseline}** (lower is better); the tables below hold \
         every row.\n",
        keys.len()
    );
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::report::tests::report;

    #[test]
    fn names_the_winner_or_a_tie() {
        let mut r = report();
        // jemalloc: half the time of system; same RSS
        let v = render(&r);
        assert!(
            v.contains("**Fastest: jemalloc**: 0.50x system's time"),
            "{v}"
        );
        assert!(v.contains("Least memory: system = jemalloc"), "{v}");
        // make system's time equal to jemalloc's: a tie
        r.cells[0].samples = r.cells[1].samples.clone();
        let v = render(&r);
        assert!(v.contains("Fastest: system = jemalloc"), "{v}");
        // a failed row leaves the allocator unranked
        r.cells[1].samples.clear();
        r.cells[1].errors.push("crash".into());
        let v = render(&r);
        assert!(
            v.contains("Not ranked (failed or missing on some rows): jemalloc"),
            "{v}"
        );
    }
}
