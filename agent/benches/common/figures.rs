//! The figures of a run and how the reports write them: medians, percentiles,
//! spreads, nanoseconds, differences and ratios.

/// Median of a few per-round figures (mean of the middle two for an even count).
pub fn median(values: &[f64]) -> f64 {
    let mut v = values.to_vec();
    v.sort_by(f64::total_cmp);
    match v.len() {
        0 => f64::NAN,
        n if n % 2 == 1 => v[n / 2],
        n => (v[n / 2 - 1] + v[n / 2]) / 2.0,
    }
}

/// The 0-based index of the nearest-rank `p`th percentile among `n` sorted values.
fn nearest_rank(n: usize, p: f64) -> usize {
    let rank = ((p / 100.0) * n as f64).ceil().max(1.0) as usize;
    rank.min(n) - 1
}

/// Nearest-rank percentile of `values` (any order); NaN when empty.
pub fn percentile(values: &[f64], p: f64) -> f64 {
    let mut v = values.to_vec();
    v.sort_by(f64::total_cmp);
    if v.is_empty() {
        return f64::NAN;
    }
    v[nearest_rank(v.len(), p)]
}

/// The smallest and the largest of `values` (infinities when empty).
pub fn min_max(values: &[f64]) -> (f64, f64) {
    let lo = values.iter().copied().fold(f64::INFINITY, f64::min);
    let hi = values.iter().copied().fold(f64::NEG_INFINITY, f64::max);
    (lo, hi)
}

/// Samples in nanoseconds, sorted. Signed: a detection can be observed before the
/// writer's own clock read that follows the rename.
pub struct Dist {
    sorted: Vec<i64>,
}

impl Dist {
    pub fn new(mut samples: Vec<i64>) -> Self {
        samples.sort_unstable();
        Dist { sorted: samples }
    }

    pub fn len(&self) -> usize {
        self.sorted.len()
    }

    /// Nearest-rank percentile.
    pub fn pct(&self, p: f64) -> Option<f64> {
        let n = self.sorted.len();
        if n == 0 {
            return None;
        }
        Some(self.sorted[nearest_rank(n, p)] as f64)
    }

    pub fn median(&self) -> Option<f64> {
        self.pct(50.0)
    }

    pub fn min(&self) -> Option<f64> {
        self.sorted.first().map(|&v| v as f64)
    }

    pub fn max(&self) -> Option<f64> {
        self.sorted.last().map(|&v| v as f64)
    }
}

pub fn fmt_ns(ns: f64) -> String {
    let a = ns.abs();
    if ns.is_nan() {
        "n/a".into()
    } else if a < 1e3 {
        format!("{ns:.0} ns")
    } else if a < 1e6 {
        format!("{:.1} µs", ns / 1e3)
    } else if a < 1e9 {
        format!("{:.2} ms", ns / 1e6)
    } else {
        format!("{:.2} s", ns / 1e9)
    }
}

pub fn fmt_opt_ns(ns: Option<f64>) -> String {
    ns.map_or_else(|| "n/a".into(), fmt_ns)
}

/// A difference with its sign: `+240 ns`, `-12 ns`, `±0 ns`; `n/a` for NaN.
pub fn fmt_delta_ns(ns: f64) -> String {
    if ns.is_nan() {
        "n/a".into()
    } else if ns.abs() < 0.5 {
        "±0 ns".into()
    } else if ns > 0.0 {
        format!("+{}", fmt_ns(ns))
    } else {
        format!("-{}", fmt_ns(-ns))
    }
}

/// `a / b` as `1.23x`, or `n/a`.
pub fn ratio(a: f64, b: f64) -> String {
    ratio_to(a, b, 2)
}

/// `a / b` as `1.023x` (three decimals: the goals are 1.01 and 1.05), or `n/a`.
pub fn ratio3(a: f64, b: f64) -> String {
    ratio_to(a, b, 3)
}

fn ratio_to(a: f64, b: f64, decimals: usize) -> String {
    if b > 0.0 && a >= 0.0 && a.is_finite() && b.is_finite() {
        format!("{:.decimals$}x", a / b)
    } else {
        "n/a".into()
    }
}
