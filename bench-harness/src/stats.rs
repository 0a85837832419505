//! The statistics the reports and `compare` rely on, kept small and tested.

/// Median of `values` (mean of the middle two for an even count); `None` if empty.
/// NaNs are not expected (all inputs are measurements).
pub fn median(values: &[f64]) -> Option<f64> {
    if values.is_empty() {
        return None;
    }
    let mut sorted = values.to_vec();
    sorted.sort_by(f64::total_cmp);
    let mid = sorted.len() / 2;
    Some(if sorted.len() % 2 == 1 {
        sorted[mid]
    } else {
        (sorted[mid - 1] + sorted[mid]) / 2.0
    })
}

/// Minimum and maximum of `values`; `None` if empty.
pub fn min_max(values: &[f64]) -> Option<(f64, f64)> {
    let first = *values.first()?;
    Some(
        values
            .iter()
            .fold((first, first), |(lo, hi), &v| (lo.min(v), hi.max(v))),
    )
}

/// Nearest-rank percentile (`q` in 0..=100) of `values`; `None` if empty.
/// This is the definition hdrhistogram uses, so raw and histogram numbers agree.
pub fn percentile(values: &[f64], q: f64) -> Option<f64> {
    if values.is_empty() {
        return None;
    }
    let mut sorted = values.to_vec();
    sorted.sort_by(f64::total_cmp);
    let rank = ((q / 100.0) * sorted.len() as f64).ceil() as usize;
    Some(sorted[rank.clamp(1, sorted.len()) - 1])
}

/// Geometric mean of strictly positive `values`; non-positive and non-finite
/// values are skipped (a ratio of 0 or NaN carries no information). `None` if
/// nothing is left.
pub fn geometric_mean(values: &[f64]) -> Option<f64> {
    let logs: Vec<f64> = values
        .iter()
        .filter(|v| v.is_finite() && **v > 0.0)
        .map(|v| v.ln())
        .collect();
    if logs.is_empty() {
        return None;
    }
    Some((logs.iter().sum::<f64>() / logs.len() as f64).exp())
}

/// The standard error of the median of `values` on a log scale (so a
/// relative error: 0.02 is about 2%), estimated robustly from the
/// repetitions: sigma from the median absolute deviation of the logs
/// (`1.4826 MAD`, the normal distribution's scale), and the median's error
/// `1.2533 sigma / sqrt(n)`. One outlying repetition barely moves it, where
/// it sets the range. `None` for fewer than two positive values.
pub fn median_log_error(values: &[f64]) -> Option<f64> {
    let logs: Vec<f64> = values
        .iter()
        .filter(|v| v.is_finite() && **v > 0.0)
        .map(|v| v.ln())
        .collect();
    if logs.len() < 2 {
        return None;
    }
    let mid = median(&logs)?;
    let deviations: Vec<f64> = logs.iter().map(|l| (l - mid).abs()).collect();
    let sigma = 1.4826 * median(&deviations)?;
    Some(1.2533 * sigma / (logs.len() as f64).sqrt())
}

/// Relative spread of a set of repetitions: `(max - min) / median`.
pub fn relative_spread(values: &[f64]) -> Option<f64> {
    let (lo, hi) = min_max(values)?;
    let mid = median(values)?;
    if mid <= 0.0 {
        return None;
    }
    Some((hi - lo) / mid)
}

/// How a metric moved between two runs (lower is better).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Change {
    /// The new run is lower beyond the noise.
    Better,
    /// The new run is higher beyond the noise.
    Worse,
    /// Inside the run-to-run spread.
    Unchanged,
}

/// Decides whether a metric moved beyond the run-to-run spread.
///
/// A change counts only if **both** hold:
/// 1. the `[min, max]` ranges of the two sets of repetitions do not overlap, and
/// 2. the ratio of medians differs from 1 by more than the larger of the two
///    relative spreads (`(max-min)/median`) and by more than `floor` (e.g. 0.02).
///
/// With a single repetition there is no spread, so only `floor` applies.
pub fn classify_change(old: &[f64], new: &[f64], floor: f64) -> Option<(f64, Change)> {
    let (old_lo, old_hi) = min_max(old)?;
    let (new_lo, new_hi) = min_max(new)?;
    let old_mid = median(old)?;
    let new_mid = median(new)?;
    if old_mid <= 0.0 {
        return None;
    }
    let ratio = new_mid / old_mid;
    let spread = relative_spread(old)
        .unwrap_or(0.0)
        .max(relative_spread(new).unwrap_or(0.0))
        .max(floor);
    let change = if new_lo > old_hi && ratio - 1.0 > spread {
        Change::Worse
    } else if new_hi < old_lo && 1.0 - ratio > spread / (1.0 + spread) {
        Change::Better
    } else {
        Change::Unchanged
    };
    Some((ratio, change))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn median_log_error_ignores_one_outlier() {
        assert_eq!(median_log_error(&[5.0]), None);
        assert_eq!(median_log_error(&[5.0, 5.0, 5.0]), Some(0.0));
        // Nine repetitions within about 1% and one at twice the time: the
        // error stays about 0.5%, where the range is 100%.
        let mut v: Vec<f64> = (0..9).map(|i| 100.0 + i as f64 * 0.25).collect();
        v.push(200.0);
        let e = median_log_error(&v).unwrap();
        assert!(e > 0.001 && e < 0.01, "{e}");
        assert!(relative_spread(&v).unwrap() > 0.9);
    }

    #[test]
    fn median_odd_even_empty() {
        assert_eq!(median(&[3.0, 1.0, 2.0]), Some(2.0));
        assert_eq!(median(&[4.0, 1.0, 2.0, 3.0]), Some(2.5));
        assert_eq!(median(&[]), None);
    }

    #[test]
    fn percentile_nearest_rank() {
        let v: Vec<f64> = (1..=100).map(f64::from).collect();
        assert_eq!(percentile(&v, 50.0), Some(50.0));
        assert_eq!(percentile(&v, 99.0), Some(99.0));
        assert_eq!(percentile(&v, 99.9), Some(100.0));
        assert_eq!(percentile(&v, 0.0), Some(1.0));
        assert_eq!(percentile(&[], 50.0), None);
    }

    #[test]
    fn geometric_mean_skips_nonpositive() {
        let g = geometric_mean(&[1.0, 4.0]).unwrap();
        assert!((g - 2.0).abs() < 1e-12);
        let g = geometric_mean(&[2.0, 0.0, f64::NAN, 8.0]).unwrap();
        assert!((g - 4.0).abs() < 1e-12);
        assert_eq!(geometric_mean(&[0.0]), None);
    }

    #[test]
    fn spread_and_min_max() {
        assert_eq!(min_max(&[2.0, 5.0, 1.0]), Some((1.0, 5.0)));
        assert_eq!(relative_spread(&[9.0, 10.0, 11.0]), Some(0.2));
    }

    #[test]
    fn change_needs_non_overlap_and_beyond_spread() {
        // clearly slower: 20% up, spreads 2%
        let (r, c) = classify_change(&[99.0, 100.0, 101.0], &[119.0, 120.0, 121.0], 0.02).unwrap();
        assert!((r - 1.2).abs() < 1e-12);
        assert_eq!(c, Change::Worse);
        // clearly faster
        let (_, c) = classify_change(&[119.0, 120.0, 121.0], &[99.0, 100.0, 101.0], 0.02).unwrap();
        assert_eq!(c, Change::Better);
        // overlapping ranges: unchanged even though medians differ by 10%
        let (_, c) = classify_change(&[80.0, 100.0, 120.0], &[90.0, 110.0, 125.0], 0.02).unwrap();
        assert_eq!(c, Change::Unchanged);
        // non-overlapping but within the floor
        let (_, c) = classify_change(&[100.0, 100.0], &[101.0, 101.0], 0.02).unwrap();
        assert_eq!(c, Change::Unchanged);
        // empty input
        assert!(classify_change(&[], &[1.0], 0.02).is_none());
    }
}
