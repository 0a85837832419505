//! SVG charts of a report (plotters, SVG backend only: no fonts or system
//! libraries needed).
//!
//! Every chart is a horizontal grouped bar chart drawn by [`grouped_bars`]:
//! one group per row (workload × threads, or a command), read top to bottom
//! with its full name on the left, one bar per allocator with its value
//! written at the bar's end. Charts are made to be read embedded in a page:
//!
//! - **one colour per allocator, the same in every chart and every report**
//!   ([`colour_of`]): glibc grey, jemalloc orange, mimalloc purple, heapkit's
//!   allocators in blues and greens; Debian's preloaded libraries in lighter
//!   shades of their forwarded twins;
//! - **axes in units that scale** ([`Unit`]): times in ns/µs/ms/s and sizes
//!   in KiB/MiB/GiB chosen from the data, ratios as `0.5x`, with tick marks at
//!   1-2-5 steps (or powers of two for ratios) on logarithmic axes;
//! - a fixed width of 1200 px, height growing with the rows.

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

/// What the values of a chart are, which decides the axis labels.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Unit {
    /// A ratio to a baseline (shown as `0.50x`), log axis with a line at 1.
    Ratio,
    /// Nanoseconds (shown in ns, µs, ms or s).
    Nanoseconds,
    /// Bytes (shown in KiB, MiB or GiB).
    Bytes,
    /// A plain number.
    Plain,
}

impl Unit {
    /// `v` as a person reads it: its own scale (20 ns, 1.5 µs, 3.2 MiB,
    /// 0.75x), two or three significant digits.
    pub fn format(self, v: f64) -> String {
        let (divisor, suffix) = self.scale(v);
        let x = v / divisor;
        if self == Unit::Ratio {
            // 0.125x, 0.5x, 2x on the axis; 0.76x, 1.13x on the bars
            let text = format!("{x:.3}");
            let text = text.trim_end_matches('0').trim_end_matches('.');
            return format!("{text}{suffix}");
        }
        if self == Unit::Bytes && x == x.round() {
            return format!("{x:.0}{suffix}");
        }
        format!("{}{suffix}", short_number(x))
    }

    /// The display scale for a value `v`: (divisor, suffix).
    fn scale(self, max: f64) -> (f64, &'static str) {
        match self {
            Unit::Ratio => (1.0, "x"),
            Unit::Plain => (1.0, ""),
            Unit::Nanoseconds => [(1e9, " s"), (1e6, " ms"), (1e3, " µs")]
                .into_iter()
                .find(|(d, _)| max >= *d)
                .unwrap_or((1.0, " ns")),
            Unit::Bytes => [
                (1024.0 * 1024.0 * 1024.0, " GiB"),
                (1024.0 * 1024.0, " MiB"),
                (1024.0, " KiB"),
            ]
            .into_iter()
            .find(|(d, _)| max >= *d)
            .unwrap_or((1.0, " B")),
        }
    }
}

/// Formats `v` (already divided by the unit's divisor) with 2-3 significant
/// digits.
fn short_number(v: f64) -> String {
    if v >= 100.0 {
        format!("{v:.0}")
    } else if v >= 10.0 {
        format!("{v:.1}")
    } else {
        format!("{v:.2}")
    }
}

/// The fixed colour of an allocator (or preload column); unknown names get
/// a stable colour from their name.
pub fn colour_of(name: &str) -> RGBColor {
    match name {
        "system" => RGBColor(120, 120, 120),
        "native" => RGBColor(60, 60, 60),
        "jemalloc" => RGBColor(230, 126, 34),
        "jemalloc-so" => RGBColor(245, 185, 120),
        "mimalloc" => RGBColor(142, 68, 173),
        "mimalloc-so" => RGBColor(195, 150, 215),
        "sizeclass" => RGBColor(31, 97, 200),
        "slab" => RGBColor(39, 174, 96),
        "pool" => RGBColor(22, 160, 170),
        "bump" => RGBColor(150, 110, 60),
        // A hardened mode: a light shade of its allocator's colour.
        "sizeclass_hardened" => RGBColor(140, 175, 235),
        "slab_hardened" => RGBColor(150, 220, 175),
        "pool_hardened" => RGBColor(140, 215, 220),
        other => {
            let h = other
                .bytes()
                .fold(0u32, |h, b| h.wrapping_mul(31).wrapping_add(b as u32));
            let c = Palette99::pick(h as usize % 99).to_rgba();
            RGBColor(c.0, c.1, c.2)
        }
    }
}

/// Tick positions for a log axis over `lo..hi`: powers of two for ratios
/// and sizes (1, 2, 4 MiB...; every other one when they crowd), else 1-2-5
/// steps.
fn log_ticks(lo: f64, hi: f64, unit: Unit) -> Vec<f64> {
    let mut ticks = Vec::new();
    if matches!(unit, Unit::Ratio | Unit::Bytes) {
        let floor = if unit == Unit::Ratio { -3 } else { 0 };
        let mut t = 2f64.powi((lo.log2().floor() as i32).max(floor));
        while t <= hi {
            if t >= lo {
                ticks.push(t);
            }
            t *= 2.0;
        }
        if ticks.len() > 10 {
            ticks = ticks.into_iter().step_by(2).collect();
        }
        if unit == Unit::Ratio && ticks.len() < 3 {
            for extra in [0.75, 1.5] {
                if (lo..=hi).contains(&extra) {
                    ticks.push(extra);
                }
            }
            ticks.sort_by(f64::total_cmp);
        }
        return ticks;
    }
    let mut decade = 10f64.powi(lo.log10().floor() as i32);
    while decade <= hi {
        for m in [1.0, 2.0, 5.0] {
            let t = decade * m;
            if t >= lo && t <= hi {
                ticks.push(t);
            }
        }
        decade *= 10.0;
    }
    ticks
}

/// The value written at a bar's end: ratios with two decimals.
fn bar_label(unit: Unit, v: f64) -> String {
    if unit == Unit::Ratio {
        format!("{v:.2}x")
    } else {
        unit.format(v)
    }
}

/// Cuts a label to `max` characters with an ellipsis.
fn fit(label: &str, max: usize) -> String {
    if label.chars().count() <= max {
        label.to_string()
    } else {
        label.chars().take(max - 1).collect::<String>() + "…"
    }
}

/// Draws a grouped bar chart to `path`. Values are in `unit`'s base (ns,
/// bytes, or a ratio); with `log` the value axis is logarithmic
/// (non-positive values are skipped).
pub fn grouped_bars(
    path: &Path,
    title: &str,
    groups: &[String],
    series: &[Series],
    unit: Unit,
    log: bool,
) -> Result<()> {
    draw(path, title, groups, series, unit, log)
        .map_err(|e| Error::new(format!("cannot draw {}: {e}", path.display())))
}

/// Pixel sizes of the layout.
const WIDTH: u32 = 1200;
const LABEL_AREA: u32 = 330;
const BAR: u32 = 13;
const GROUP_GAP: u32 = 14;

fn draw(
    path: &Path,
    title: &str,
    groups: &[String],
    series: &[Series],
    unit: Unit,
    log: bool,
) -> std::result::Result<(), Box<dyn std::error::Error>> {
    let values: Vec<f64> = series
        .iter()
        .flat_map(|(_, v)| v.iter().flatten().copied())
        .filter(|v| v.is_finite() && (!log || *v > 0.0))
        .collect();
    let max = values.iter().copied().fold(f64::MIN, f64::max).max(1e-9);
    let min = values.iter().copied().fold(f64::MAX, f64::min).min(max);
    let per_group = series.len().max(1) as u32 * BAR + GROUP_GAP;
    let legend_rows = series.len().div_ceil(6) as u32;
    let height = 70 + groups.len().max(1) as u32 * per_group + 50 + legend_rows * 22;
    let root = SVGBackend::new(path, (WIDTH, height)).into_drawing_area();
    root.fill(&WHITE)?;
    let (legend_area, plot_area) = (
        root.clone().margin(0, 0, 0, 0),
        root.clone().margin(0, legend_rows * 22 + 6, 0, 0),
    );
    let n = groups.len().max(1) as f64;
    let bar_share = 1.0 / (series.len().max(1) as f64 + GROUP_GAP as f64 / BAR as f64);
    let label_font = ("sans-serif", 14).into_font();
    let value_font = ("sans-serif", 11).into_font();

    let mut builder = ChartBuilder::on(&plot_area);
    builder
        .caption(title, ("sans-serif", 20))
        .margin(12)
        .margin_right(40)
        .x_label_area_size(40)
        .y_label_area_size(LABEL_AREA);
    let axis_label = move |v: &f64| unit.format(*v);
    // The two axis kinds are different types, so the drawing code is a macro.
    macro_rules! bars {
        ($chart:ident, $base:expr) => {{
            $chart
                .configure_mesh()
                .disable_y_mesh()
                .disable_y_axis()
                .x_label_formatter(&axis_label)
                .x_label_style(("sans-serif", 13))
                .light_line_style(WHITE.mix(0.0))
                .bold_line_style(BLACK.mix(0.12))
                .draw()?;
            if unit == Unit::Ratio {
                $chart.draw_series(std::iter::once(PathElement::new(
                    vec![(1.0, 0.0), (1.0, n)],
                    BLACK.stroke_width(2),
                )))?;
            }
            for (s, (name, vals)) in series.iter().enumerate() {
                let colour = colour_of(name);
                // group g occupies y in (n - g - 1, n - g], first group on top
                let bar_y = |g: usize| {
                    let top = n - g as f64 - bar_share * 0.5;
                    let y0 = top - (s as f64 + 1.0) * bar_share;
                    (y0 + bar_share * 0.1, y0 + bar_share)
                };
                let drawable = |v: &Option<f64>| -> Option<f64> {
                    let v = (*v)?;
                    (v.is_finite() && !(log && v <= 0.0)).then_some(v)
                };
                $chart.draw_series(vals.iter().enumerate().filter_map(|(g, v)| {
                    let v = drawable(v)?;
                    let (y0, y1) = bar_y(g);
                    Some(Rectangle::new([($base, y0), (v, y1)], colour.filled()))
                }))?;
                $chart.draw_series(vals.iter().enumerate().filter_map(|(g, v)| {
                    let v = drawable(v)?;
                    let (y0, y1) = bar_y(g);
                    Some(Text::new(
                        format!(" {}", bar_label(unit, v)),
                        (v, (y0 + y1) / 2.0),
                        value_font
                            .clone()
                            .color(&BLACK)
                            .pos(Pos::new(HPos::Left, VPos::Center)),
                    ))
                }))?;
            }
            for (g, name) in groups.iter().enumerate() {
                let (px, py) = $chart.backend_coord(&($base, n - g as f64 - 0.5));
                root.draw(&Text::new(
                    fit(name, 44),
                    (px - 8, py),
                    label_font
                        .clone()
                        .color(&BLACK)
                        .pos(Pos::new(HPos::Right, VPos::Center)),
                ))?;
            }
        }};
    }
    if log {
        let lo = if unit == Unit::Ratio {
            (min / 1.3).min(0.8)
        } else {
            min / 1.5
        }
        .max(1e-12);
        let hi = if unit == Unit::Ratio {
            (max * 1.6).max(1.25)
        } else {
            max * 1.8
        };
        let ticks = log_ticks(lo, hi, unit);
        let mut chart =
            builder.build_cartesian_2d((lo..hi).log_scale().with_key_points(ticks), 0f64..n)?;
        bars!(chart, lo);
    } else {
        let mut chart = builder.build_cartesian_2d(0f64..max * 1.2, 0f64..n)?;
        bars!(chart, 0.0);
    }
    // Legend: one row of up to six entries per line, at the bottom.
    let legend_top = height as i32 - legend_rows as i32 * 22 - 10;
    for (s, (name, _)) in series.iter().enumerate() {
        let x = 40 + (s % 6) as i32 * 190;
        let y = legend_top + (s / 6) as i32 * 22;
        legend_area.draw(&Rectangle::new(
            [(x, y), (x + 16, y + 14)],
            colour_of(name).filled(),
        ))?;
        legend_area.draw(&Text::new(
            name.clone(),
            (x + 22, y + 7),
            label_font
                .clone()
                .color(&BLACK)
                .pos(Pos::new(HPos::Left, VPos::Center)),
        ))?;
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
            &groups,
            &ratios,
            Unit::Ratio,
            true,
        )?;
        written.push(("time.svg".to_string(), title));
    }

    let (groups, series) = per_row(report, |s| Some(s.peak_rss));
    let title = "Peak RSS (log scale, lower is better)".to_string();
    grouped_bars(
        &dir.join("peak-rss.svg"),
        &title,
        &groups,
        &series,
        Unit::Bytes,
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
    if latency_series
        .iter()
        .any(|(_, v)| v.iter().any(Option::is_some))
    {
        let groups: Vec<String> = percentiles.iter().map(|p| p.1.to_string()).collect();
        let title = "Latency percentiles, geometric mean over workloads (log scale)".to_string();
        grouped_bars(
            &dir.join("latency.svg"),
            &title,
            &groups,
            &latency_series,
            Unit::Nanoseconds,
            true,
        )?;
        written.push(("latency.svg".to_string(), title));

        let (groups, series) = per_row(report, |s| s.latency_of("malloc").map(|l| l.p99));
        let title = "malloc p99 latency per workload (log scale)".to_string();
        grouped_bars(
            &dir.join("latency-malloc-p99.svg"),
            &title,
            &groups,
            &series,
            Unit::Nanoseconds,
            true,
        )?;
        written.push(("latency-malloc-p99.svg".to_string(), title));
    }

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
        let title =
            "Fragmentation: worst RSS growth / live bytes over checkpoints (1.0 is perfect)"
                .to_string();
        grouped_bars(
            &dir.join("fragmentation.svg"),
            &title,
            &groups,
            &series,
            Unit::Plain,
            true,
        )?;
        written.push(("fragmentation.svg".to_string(), title));
    }
    Ok(written)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn units_scale_and_ticks_are_readable() {
        assert_eq!(Unit::Nanoseconds.format(150_000.0), "150 µs");
        assert_eq!(Unit::Nanoseconds.format(25.0), "25.0 ns");
        assert_eq!(Unit::Bytes.format(3.5 * 1048576.0), "3.50 MiB");
        assert_eq!(Unit::Bytes.format(4.0 * 1048576.0), "4 MiB");
        assert_eq!(Unit::Ratio.format(0.125), "0.125x");
        assert_eq!(Unit::Ratio.format(2.0), "2x");
        assert_eq!(log_ticks(0.3, 3.0, Unit::Ratio), vec![0.5, 1.0, 2.0]);
        assert_eq!(
            log_ticks(30.0, 600.0, Unit::Plain),
            vec![50.0, 100.0, 200.0, 500.0]
        );
        assert_eq!(
            fit("PYTHONMALLOC=malloc exec python3 x.py", 10),
            "PYTHONMAL…"
        );
        // fixed colours: the same allocator, the same colour, everywhere
        assert_eq!(colour_of("sizeclass"), colour_of("sizeclass"));
        assert_ne!(colour_of("sizeclass"), colour_of("mimalloc"));
    }
}
