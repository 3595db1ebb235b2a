//! The one histogram type of the agent's measurements (reload latencies, propagation
//! delays): observations counted in buckets of fixed upper bounds, as a Prometheus
//! histogram is, held inline (no allocation per histogram) and rendered cumulative.

/// The upper bounds of a histogram's buckets, ascending; a last `+Inf` bucket follows.
pub trait Buckets: Copy + Default + PartialEq + std::fmt::Debug {
    const BOUNDS: &'static [f64];
}

/// Slots held inline: the most bounds a [`Buckets`] may have, plus `+Inf`.
const SLOTS: usize = 32;

#[derive(Clone, Debug, PartialEq)]
pub struct Histogram<B: Buckets> {
    /// Non-cumulative: `counts[i]` holds the observations in `(BOUNDS[i-1], BOUNDS[i]]`,
    /// `counts[BOUNDS.len()]` those above the last bound.
    counts: [u64; SLOTS],
    pub sum: f64,
    pub count: u64,
    buckets: B,
}

impl<B: Buckets> Default for Histogram<B> {
    fn default() -> Self {
        const { assert!(B::BOUNDS.len() < SLOTS, "too many buckets") };
        Histogram {
            counts: [0; SLOTS],
            sum: 0.0,
            count: 0,
            buckets: B::default(),
        }
    }
}

impl<B: Buckets> Histogram<B> {
    pub fn observe(&mut self, v: f64) {
        let i = (B::BOUNDS.iter())
            .position(|&le| v <= le)
            .unwrap_or(B::BOUNDS.len());
        self.counts[i] += 1;
        self.sum += v;
        self.count += 1;
    }

    /// Adds `other`'s observations to these.
    pub fn merge(&mut self, other: &Self) {
        for (a, b) in self.counts.iter_mut().zip(other.counts) {
            *a += b;
        }
        self.sum += other.sum;
        self.count += other.count;
    }

    pub fn bounds(&self) -> &'static [f64] {
        B::BOUNDS
    }

    /// Observations per bucket, not cumulative: one per bound, then `+Inf`.
    pub fn counts(&self) -> &[u64] {
        &self.counts[..=B::BOUNDS.len()]
    }

    /// Cumulative counts, as Prometheus exposes them (`_bucket{le=...}`); the last is
    /// `+Inf`, equal to [`Self::count`].
    pub fn cumulative(&self) -> Vec<u64> {
        let mut total = 0;
        (self.counts().iter())
            .map(|c| {
                total += c;
                total
            })
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Clone, Copy, Debug, Default, PartialEq)]
    struct Three;

    impl Buckets for Three {
        const BOUNDS: &'static [f64] = &[0.001, 0.01, 1.0];
    }

    #[test]
    fn each_observation_lands_in_the_first_bucket_that_holds_it() {
        let mut h = Histogram::<Three>::default();
        for v in [0.0005, 0.001, 0.002, 0.5, 1.0, 7.0, 7.0] {
            h.observe(v);
        }
        assert_eq!(h.counts(), [2, 1, 2, 2], "bounds are inclusive, +Inf last");
        assert_eq!(h.cumulative(), [2, 3, 5, 7]);
        assert_eq!(h.count, 7);
        assert!((h.sum - 15.5035).abs() < 1e-9);
        let mut twice = h.clone();
        twice.merge(&h);
        assert_eq!(twice.counts(), [4, 2, 4, 4]);
        assert_eq!((twice.count, twice.bounds()), (14, Three::BOUNDS));
    }
}
