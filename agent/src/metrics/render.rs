//! Metric families built by hand at each scrape, for the collectors whose series come
//! and go with the state they render.

use crate::histogram::Buckets;
use prometheus::{
    core::Desc,
    proto::{Bucket, Counter, Gauge, Histogram, LabelPair, Metric, MetricFamily, MetricType},
};

pub(super) struct Family {
    pub name: &'static str,
    pub help: &'static str,
    pub kind: MetricType,
    /// The labels when they are fixed; families whose labels the flags choose pass
    /// theirs to [`Family::desc`].
    pub labels: &'static [&'static str],
}

impl Family {
    /// Its descriptor with these label names.
    pub fn desc(&self, labels: &[&str]) -> prometheus::Result<Desc> {
        let labels = labels.iter().map(|l| l.to_string()).collect();
        Desc::new(
            self.name.into(),
            self.help.into(),
            labels,
            Default::default(),
        )
    }

    /// Its descriptor with its fixed labels.
    pub fn fixed_desc(&self) -> prometheus::Result<Desc> {
        self.desc(self.labels)
    }
}

fn metric<S: AsRef<str>>(labels: &[&str], values: &[S]) -> Metric {
    let mut m = Metric::default();
    m.set_label(
        labels
            .iter()
            .zip(values)
            .map(|(k, v)| {
                let mut p = LabelPair::default();
                p.set_name(k.to_string());
                p.set_value(v.as_ref().to_string());
                p
            })
            .collect(),
    );
    m
}

pub(super) fn gauge<S: AsRef<str>>(labels: &[&str], values: &[S], v: f64) -> Metric {
    let mut m = metric(labels, values);
    let mut g = Gauge::default();
    g.set_value(v);
    m.set_gauge(g);
    m
}

pub(super) fn counter<S: AsRef<str>>(labels: &[&str], values: &[S], v: f64) -> Metric {
    let mut m = metric(labels, values);
    let mut c = Counter::default();
    c.set_value(v);
    m.set_counter(c);
    m
}

/// `h` as a Prometheus histogram: a cumulative bucket per bound (the `+Inf` one is
/// implied by the count).
pub(super) fn histogram<S: AsRef<str>, B: Buckets>(
    labels: &[&str],
    values: &[S],
    h: &crate::histogram::Histogram<B>,
) -> Metric {
    let mut m = metric(labels, values);
    let mut out = Histogram::default();
    out.set_bucket(
        (h.bounds().iter().zip(h.cumulative()))
            .map(|(&bound, cumulative)| {
                let mut b = Bucket::default();
                b.set_upper_bound(bound);
                b.set_cumulative_count(cumulative);
                b
            })
            .collect(),
    );
    out.set_sample_count(h.count);
    out.set_sample_sum(h.sum);
    m.set_histogram(out);
    m
}

pub(super) fn family(f: &Family, metrics: Vec<Metric>) -> MetricFamily {
    let mut mf = MetricFamily::default();
    mf.set_name(f.name.into());
    mf.set_help(f.help.into());
    mf.set_field_type(f.kind);
    mf.set_metric(metrics);
    mf
}
