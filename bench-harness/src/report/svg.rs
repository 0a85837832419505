//! SVG charts of a report (plotters, SVG backend only: no fonts or system
//! libraries needed).
//!
//! Every chart is a grouped bar chart drawn by [`grouped_bars`]: one group per
//! row (workload × threads) or per percentile, one bar per allocator, in the
//! report's column colours. Other subcommands can call [`grouped_bars`] with
//! their own groups and series.

use std::path::Path;

use plotters::prelude::*;
use plotters::style::text_anchor::{HPos, Pos, VPos};

use super::summary::{cell_at, columns, rows, summarize, CellSummary};
use super::Report;
use crate::error::{Error, Result};
use crate::stats::geometric_mean;

/// Picks one percentile out of a latency summary.
type PercentileOf = fn(&super::summary::LatencySummary) -> f64;

/// One bar series: a name (legend) and one value per group (`None` = no bar).
pub type Series = (String, Vec<Option<f64>>);

/// Draws a grouped bar chart to `path`. With `log_y` the y axis is logarithmic
/// (values must be positive; non-positive values are skipped).
pub fn grouped_bars(
    path: &Path,
    title: &str,
    y_label: &str,
    groups: &[String],
    series: &[Series],
    log_y: bool,
) -> Result<()> {
    draw(path, title, y_label, groups, series, log_y)
        .map_err(|e| Error::new(format!("cannot draw {}: {e}", path.display())))
}

fn draw(
    path: &Path,
    title: &str,
    y_label: &str,
    groups: &[String],
    series: &[Series],
    log_y: bool,
) -> std::result::Result<(), Box<dyn std::error::Error>> {
    let values: Vec<f64> = series
        .iter()
        .flat_map(|(_, v)| v.iter().flatten().copied())
        .filter(|v| v.is_finite() && (!log_y || *v > 0.0))
        .collect();
    let max = values.iter().copied().fold(f64::MIN, f64::max).max(1e-9);
    let min = values.iter().copied().fold(f64::MAX, f64::min);
    let width = (160 + (groups.len() as u32 + 1) * (18 * series.len() as u32 + 24)).max(640);
    let root = SVGBackend::new(path, (width, 520)).into_drawing_area();
    root.fill(&WHITE)?;
    // one empty group slot on the right holds the legend
    let n = groups.len().max(1) as f64 + 1.0;
    let label_style = TextStyle::from(
        ("sans-serif", 13)
            .into_font()
            .transform(FontTransform::Rotate90),
    );
    let bar_width = 0.8 / series.len().max(1) as f64;

    let mut builder = ChartBuilder::on(&root);
    builder
        .caption(title, ("sans-serif", 20))
        .margin(12)
        .x_label_area_size(130)
        .y_label_area_size(70);
    // The two axis kinds are different types, so the drawing code is a macro.
    macro_rules! bars {
        ($chart:ident, $base:expr) => {{
            $chart
                .configure_mesh()
                .disable_x_mesh()
                .disable_x_axis()
                .y_desc(y_label)
                .draw()?;
            for (s, (name, vals)) in series.iter().enumerate() {
                let colour = Palette99::pick(s).to_rgba();
                $chart
                    .draw_series(vals.iter().enumerate().filter_map(|(g, v)| {
                        let v = (*v)?;
                        if !v.is_finite() || (log_y && v <= 0.0) {
                            return None;
                        }
                        let x0 = g as f64 + 0.1 + s as f64 * bar_width;
                        Some(Rectangle::new(
                            [(x0, $base), (x0 + bar_width * 0.9, v)],
                            colour.filled(),
                        ))
                    }))?
                    .label(name.as_str())
                    .legend(move |(x, y)| {
                        Rectangle::new([(x, y - 5), (x + 10, y + 5)], colour.filled())
                    });
            }
            $chart
                .configure_series_labels()
                .position(SeriesLabelPosition::UpperRight)
                .background_style(WHITE.mix(0.85))
                .border_style(BLACK)
                .draw()?;
            for (g, name) in groups.iter().enumerate() {
                let (px, py) = $chart.backend_coord(&(g as f64 + 0.5, $base));
                root.draw(&Text::new(
                    name.clone(),
                    (px - 7, py + 6),
                    label_style.clone().pos(Pos::new(HPos::Left, VPos::Top)),
                ))?;
            }
        }};
    }
    if log_y {
        let lo = (min.max(1e-9) / 1.5).min(max / 4.0);
        let mut chart = builder.build_cartesian_2d(0f64..n, (lo..max * 2.0).log_scale())?;
        bars!(chart, lo);
    } else {
        let mut chart = builder.build_cartesian_2d(0f64..n, 0f64..max * 1.15)?;
        bars!(chart, 0.0);
    }
    root.present()?;
    Ok(())
}

/// Per-row values of one metric for every allocator.
fn per_row(
    report: &Report,
    metric: impl Fn(&CellSummary) -> Option<f64>,
) -> (Vec<String>, Vec<Series>) {
    let keys = rows(report);
    let series = columns(report)
        .into_iter()
        .map(|alloc| {
            let vals = keys
                .iter()
                .map(|k| {
                    cell_at(report, k, &alloc)
                        .and_then(summarize)
                        .and_then(|s| metric(&s))
                })
                .collect();
            (alloc, vals)
        })
        .collect();
    (keys.iter().map(|k| k.label()).collect(), series)
}

/// Writes the standard charts into `dir`; returns `(file name, caption)` pairs.
pub fn write_charts(report: &Report, dir: &Path) -> Result<Vec<(String, String)>> {
    let mut written = Vec::new();
    let baseline = report.config.baseline.clone();
    let time_of = |s: &CellSummary| Some(s.time_s.median);

    // time: ratio to the baseline, per row
    let (groups, series) = per_row(report, time_of);
    let base = series
        .iter()
        .find(|(a, _)| *a == baseline)
        .map(|(_, v)| v.clone());
    if let Some(base) = base {
        let ratios: Vec<Series> = series
            .iter()
            .map(|(a, v)| {
                let r = v
                    .iter()
                    .zip(&base)
                    .map(|(x, b)| Some((*x)? / (*b)?))
                    .collect();
                (a.clone(), r)
            })
            .collect();
        let title = format!("Wall time relative to {baseline} (lower is better)");
        grouped_bars(
            &dir.join("time.svg"),
            &title,
            "time / baseline",
            &groups,
            &ratios,
            true,
        )?;
        written.push(("time.svg".to_string(), title));
    }

    let (groups, series) = per_row(report, |s| Some(s.peak_rss / (1024.0 * 1024.0)));
    let title = "Peak RSS (MiB, log scale, lower is better)".to_string();
    grouped_bars(
        &dir.join("peak-rss.svg"),
        &title,
        "MiB",
        &groups,
        &series,
        true,
    )?;
    written.push(("peak-rss.svg".to_string(), title));

    // latency percentiles: geometric mean over the rows, per percentile
    let percentiles: [(&str, &str, PercentileOf); 8] = [
        ("malloc", "malloc p50", |l| l.p50),
        ("malloc", "malloc p99", |l| l.p99),
        ("malloc", "malloc p99.9", |l| l.p999),
        ("malloc", "malloc max", |l| l.max),
        ("free", "free p50", |l| l.p50),
        ("free", "free p99", |l| l.p99),
        ("free", "free p99.9", |l| l.p999),
        ("free", "free max", |l| l.max),
    ];
    let keys = rows(report);
    let latency_series: Vec<Series> = columns(report)
        .into_iter()
        .map(|alloc| {
            let summaries: Vec<CellSummary> = keys
                .iter()
                .filter_map(|k| cell_at(report, k, &alloc).and_then(summarize))
                .collect();
            let vals = percentiles
                .iter()
                .map(|(op, _, f)| {
                    let v: Vec<f64> = summaries
                        .iter()
                        .filter_map(|s| s.latency_of(op).map(f))
                        .collect();
                    geometric_mean(&v)
                })
                .collect();
            (alloc, vals)
        })
        .collect();
    let groups: Vec<String> = percentiles.iter().map(|p| p.1.to_string()).collect();
    let title = "Latency percentiles, geometric mean over workloads (ns, log scale)".to_string();
    grouped_bars(
        &dir.join("latency.svg"),
        &title,
        "ns",
        &groups,
        &latency_series,
        true,
    )?;
    written.push(("latency.svg".to_string(), title));

    let (groups, series) = per_row(report, |s| s.latency_of("malloc").map(|l| l.p99));
    let title = "malloc p99 latency per workload (ns, log scale)".to_string();
    grouped_bars(
        &dir.join("latency-malloc-p99.svg"),
        &title,
        "ns",
        &groups,
        &series,
        true,
    )?;
    written.push(("latency-malloc-p99.svg".to_string(), title));

    let (groups, series) = per_row(report, |s| s.worst_fragmentation());
    let keep: Vec<usize> = (0..groups.len())
        .filter(|&g| series.iter().any(|(_, v)| v[g].is_some()))
        .collect();
    if !keep.is_empty() {
        let groups: Vec<String> = keep.iter().map(|&g| groups[g].clone()).collect();
        let series: Vec<Series> = series
            .into_iter()
            .map(|(a, v)| (a, keep.iter().map(|&g| v[g]).collect()))
            .collect();
        let title = "Fragmentation: worst (RSS growth / live bytes) over checkpoints".to_string();
        grouped_bars(
            &dir.join("fragmentation.svg"),
            &title,
            "RSS / live",
            &groups,
            &series,
            true,
        )?;
        written.push(("fragmentation.svg".to_string(), title));
    }
    Ok(written)
}
