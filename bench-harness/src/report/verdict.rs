//! The verdict at the top of every `REPORT.md`: which allocator to pick for
//! this run, by time, by memory and by both, with ties called as ties.
//!
//! Each allocator's score on a metric is the geometric mean over the rows of
//! its median divided by the baseline's median (the tables' last row). An
//! allocator that failed a row is not ranked. The runner-up ties with the
//! winner when their scores differ by less than the run-to-run noise: twice
//! the standard error of the difference of the two scores (on a log scale),
//! from each cell's repetitions ([`median_log_error`]: the median's error,
//! from the median absolute deviation, so one wild repetition does not make
//! a consistent 25% difference a tie, as half the range of the repetitions
//! did), at least 1%. With one repetition there is no estimate and only
//! the 1% floor applies.
//!
//! "Best balance" ranks the geometric mean of the time and peak-RSS scores,
//! so halving memory is worth as much as halving time.

use std::fmt::Write;

use super::summary::{cell_at, columns, rows, RowKey};
use super::{Cell, Report};
use crate::stats::{geometric_mean, median, median_log_error};

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
    /// The variance of `ln(ratio)` from its own cells' noise (the
    /// baseline's cancels between two allocators: both divide by it).
    variance: f64,
    /// Whether any cell had repetitions to estimate noise from.
    estimated: bool,
}

fn scores(report: &Report, keys: &[RowKey], criterion: Criterion) -> (Vec<Score>, Vec<String>) {
    let baseline = &report.config.baseline;
    let mut ranked = Vec::new();
    let mut unranked = Vec::new();
    for allocator in columns(report) {
        let mut ratios = Vec::new();
        let mut variance = 0.0;
        let mut estimated = false;
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
                    if let Some(e) = own.as_deref().and_then(median_log_error) {
                        variance += e * e;
                        estimated = true;
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
                // The score is the mean of the rows' logs.
                variance: variance / (ratios.len() * ratios.len()) as f64,
                estimated,
            }),
            _ => unranked.push(allocator),
        }
    }
    ranked.sort_by(|a, b| a.ratio.total_cmp(&b.ratio));
    (ranked, unranked)
}

/// The relative difference two scores must exceed not to tie: twice the
/// standard error of their log difference, at least [`TIE_FLOOR`].
fn tie_margin(a: &Score, b: &Score) -> f64 {
    ((2.0 * (a.variance + b.variance).sqrt()).exp() - 1.0).max(TIE_FLOOR)
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
            let noise = if !best.estimated && !next.estimated {
                "one repetition: not tested against run-to-run noise".to_string()
            } else {
                format!(
                    "beyond the ±{:.0}% run-to-run noise",
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
            " (a tie: {} {} within the run-to-run noise of ±{:.0}%)",
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
                // Half the sum of the two logs.
                variance: (t.variance + m.variance) / 4.0,
                estimated: t.estimated || m.estimated,
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

    /// A runner-up slower by 25% in every repetition but one is not a tie
    /// because of that one (each cell has a repetition far out, as on a
    /// shared machine): the noise is the median's error, not the range.
    #[test]
    fn one_wild_repetition_does_not_make_a_tie() {
        use crate::report::tests::sample;
        let mut r = report();
        let times = |base: u64, wild: u64| -> Vec<_> {
            (0..9)
                .map(|i| sample(if i == 4 { wild } else { base + i }))
                .collect()
        };
        r.cells[0].samples = times(100, 300);
        r.cells[1].samples = times(125, 40);
        let v = render(&r);
        assert!(v.contains("**Fastest: system**: 1.00x"), "{v}");
        assert!(v.contains("next jemalloc at 1.2"), "{v}");
        // The same medians with every repetition spread by a third: a tie.
        r.cells[0].samples = (0..9).map(|i| sample(70 + i * 8)).collect();
        r.cells[1].samples = (0..9).map(|i| sample(95 + i * 8)).collect();
        let v = render(&r);
        assert!(v.contains("Fastest: system = jemalloc"), "{v}");
    }
}
