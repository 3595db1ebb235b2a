//! The consumer families: reload latency, staleness, last reload, consumer info and
//! foreign opens, rendered from [`Reloads`] at each scrape. The latency histogram is
//! built from the state's bucket counts, so a consumer's series go with it.

use std::{sync::Arc, time::SystemTime};

use prometheus::{
    core::{Collector, Desc},
    proto::{Bucket, Counter, Gauge, Histogram, LabelPair, Metric, MetricFamily, MetricType},
};

use super::Shared;
use crate::{
    clock,
    reloads::{BUCKETS, FOREIGN, MountKind},
};

const LABELS: [&str; 4] = ["namespace", "pod", "container", "volume"];

pub(super) struct Family {
    pub name: &'static str,
    pub help: &'static str,
    pub kind: MetricType,
    pub labels: &'static [&'static str],
}

const LATENCY: Family = Family {
    name: "reloadscope_reload_latency_seconds",
    help: "Time from a volume's swap to the consuming container's first open of the new data.",
    kind: MetricType::HISTOGRAM,
    labels: &LABELS,
};
const STALE: Family = Family {
    name: "reloadscope_consumer_stale_seconds",
    help: "Seconds since the swap of the newest update this container has not reloaded; 0 when it has it.",
    kind: MetricType::GAUGE,
    labels: &LABELS,
};
const LAST_RELOAD: Family = Family {
    name: "reloadscope_consumer_last_reload_timestamp_seconds",
    help: "Time of the container's last reload of the volume, seconds since the epoch.",
    kind: MetricType::GAUGE,
    labels: &LABELS,
};
const INFO: Family = Family {
    name: "reloadscope_consumer_info",
    help: "1 for each container consuming a volume; mount says whether it binds the whole volume or one file through subPath; measurement how its reloads are seen: exact (fanotify, per process), approximate (inotify, per volume) or none.",
    kind: MetricType::GAUGE,
    labels: &[
        "namespace",
        "pod",
        "container",
        "volume",
        "mount",
        "measurement",
    ],
};
const FOREIGN_OPENS: Family = Family {
    name: "reloadscope_foreign_opens_total",
    help: "Opens of volume files by processes outside the consuming containers (never reloads), by opener.",
    kind: MetricType::COUNTER,
    labels: &["opener"],
};
const LATE_MARKS: Family = Family {
    name: "reloadscope_late_marks_total",
    help: "Updates whose new data dir was marked (fanotify, disk volumes) or watched (inotify, approximate measurement) for opens only after the swap: opens right after the swap may be missed outside the consumers' own mounts (fanotify), or at all (approximate).",
    kind: MetricType::COUNTER,
    labels: &[],
};
const FANOTIFY_LOADED: Family = Family {
    name: "reloadscope_fanotify_loaded",
    help: "1 when opens are attributed to processes with fanotify (needs CAP_SYS_ADMIN), 0 when reloads are not measured.",
    kind: MetricType::GAUGE,
    labels: &[],
};
const FANOTIFY_OVERFLOWS: Family = Family {
    name: "reloadscope_fanotify_queue_overflows_total",
    help: "fanotify queue overflows: opens in them were not seen.",
    kind: MetricType::COUNTER,
    labels: &[],
};
const FAMILIES: [&Family; 8] = [
    &LATENCY,
    &STALE,
    &LAST_RELOAD,
    &INFO,
    &FOREIGN_OPENS,
    &LATE_MARKS,
    &FANOTIFY_LOADED,
    &FANOTIFY_OVERFLOWS,
];

pub struct ConsumerCollector {
    shared: Arc<Shared>,
    descs: Vec<Desc>,
    /// Which of [`LABELS`] the latency histogram keeps (indexes, in order).
    keep: Vec<usize>,
}

/// The latency histogram's label names for `--histogram-labels`: a subset of
/// namespace, pod, container, volume. An unknown name is an error naming the choices.
pub fn histogram_labels(names: &[String]) -> Result<Vec<usize>, String> {
    names
        .iter()
        .map(|n| {
            LABELS.iter().position(|l| l == n).ok_or_else(|| {
                format!(
                    "unknown histogram label {n:?}: choose from {}",
                    LABELS.join(", ")
                )
            })
        })
        .collect::<Result<Vec<_>, _>>()
        .map(|mut v| {
            v.sort_unstable();
            v.dedup();
            v
        })
}

impl ConsumerCollector {
    /// `keep`: the latency histogram's labels, from [`histogram_labels`].
    pub fn new(shared: Arc<Shared>, keep: Vec<usize>) -> prometheus::Result<Self> {
        let kept: Vec<String> = keep.iter().map(|&i| LABELS[i].to_string()).collect();
        let descs = FAMILIES
            .iter()
            .map(|f| {
                let labels = if f.name == LATENCY.name {
                    kept.clone()
                } else {
                    f.labels.iter().map(|l| l.to_string()).collect()
                };
                Desc::new(f.name.into(), f.help.into(), labels, Default::default())
            })
            .collect::<Result<_, _>>()?;
        Ok(ConsumerCollector {
            shared,
            descs,
            keep,
        })
    }
}

fn metric(labels: &[&str], values: &[&str]) -> Metric {
    let mut m = Metric::default();
    m.set_label(
        labels
            .iter()
            .zip(values)
            .map(|(k, v)| {
                let mut p = LabelPair::default();
                p.set_name(k.to_string());
                p.set_value(v.to_string());
                p
            })
            .collect(),
    );
    m
}

pub(super) fn gauge(labels: &[&str], values: &[&str], v: f64) -> Metric {
    let mut m = metric(labels, values);
    let mut g = Gauge::default();
    g.set_value(v);
    m.set_gauge(g);
    m
}

fn counter(labels: &[&str], values: &[&str], v: f64) -> Metric {
    let mut m = metric(labels, values);
    let mut c = Counter::default();
    c.set_value(v);
    m.set_counter(c);
    m
}

fn histogram(labels: &[&str], values: &[&str], h: &crate::reloads::Histogram) -> Metric {
    let mut m = metric(labels, values);
    let mut out = Histogram::default();
    let mut cumulative = 0;
    out.set_bucket(
        BUCKETS
            .iter()
            .zip(h.counts)
            .map(|(&bound, n)| {
                cumulative += n;
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

impl Collector for ConsumerCollector {
    fn desc(&self) -> Vec<&Desc> {
        self.descs.iter().collect()
    }

    fn collect(&self) -> Vec<MetricFamily> {
        use std::sync::atomic::Ordering::Relaxed;
        let now = SystemTime::now();
        let measurement = if self.shared.fanotify.load(Relaxed) {
            "exact"
        } else if self.shared.approximate.load(Relaxed) {
            "approximate"
        } else {
            "none"
        };
        let (mut stale, mut last, mut info) = (Vec::new(), Vec::new(), Vec::new());
        // Consumers that share the kept labels share one histogram.
        let mut latency: std::collections::BTreeMap<Vec<String>, crate::reloads::Histogram> =
            Default::default();
        let foreign = {
            let tracker = self.shared.tracker.lock().expect("tracker lock");
            let r = self.shared.reloads.lock().expect("reloads lock");
            for (volume, _, c) in r.consumers() {
                let (ns, pod) = match tracker.pod_name(&volume.pod_uid) {
                    Some(n) => (n.namespace.as_str(), n.name.as_str()),
                    None => ("", volume.pod_uid.as_str()),
                };
                let v = [ns, pod, c.name.as_str(), volume.name.as_str()];
                info.push(gauge(
                    INFO.labels,
                    &[ns, pod, &c.name, &volume.name, c.mount.label(), measurement],
                    1.0,
                ));
                if c.mount == MountKind::Volume {
                    let kept = self.keep.iter().map(|&i| v[i].to_owned()).collect();
                    latency.entry(kept).or_default().merge(&c.latency);
                    stale.push(gauge(&LABELS, &v, c.stale_seconds(now)));
                }
                if let Some(t) = c.last_reload {
                    last.push(gauge(&LABELS, &v, clock::unix_seconds(t)));
                }
            }
            r.foreign
        };
        let foreign = FOREIGN
            .iter()
            .zip(foreign)
            .map(|(o, n)| counter(FOREIGN_OPENS.labels, &[o], n as f64))
            .collect();
        let late = self.shared.late_marks.load(Relaxed) as f64;
        let loaded = f64::from(u8::from(self.shared.fanotify.load(Relaxed)));
        let overflows = self.shared.fanotify_overflows.load(Relaxed) as f64;
        let names: Vec<&str> = self.keep.iter().map(|&i| LABELS[i]).collect();
        let latency = latency
            .iter()
            .map(|(values, h)| {
                histogram(
                    &names,
                    &values.iter().map(String::as_str).collect::<Vec<_>>(),
                    h,
                )
            })
            .collect();
        vec![
            family(&LATENCY, latency),
            family(&STALE, stale),
            family(&LAST_RELOAD, last),
            family(&INFO, info),
            family(&FOREIGN_OPENS, foreign),
            family(&LATE_MARKS, vec![counter(&[], &[], late)]),
            family(&FANOTIFY_LOADED, vec![gauge(&[], &[], loaded)]),
            family(&FANOTIFY_OVERFLOWS, vec![counter(&[], &[], overflows)]),
        ]
    }
}

#[cfg(test)]
mod tests {
    use std::time::{Duration, SystemTime};

    use super::*;
    use crate::{
        reloads::{Found, Reloads},
        updates::Tracker,
        volumes::{VolumeKey, VolumeType},
    };

    fn shared_with_two_reloads() -> Arc<Shared> {
        let shared = Arc::new(Shared::new(Tracker::new(Duration::from_secs(2), false)));
        let vol = VolumeKey {
            pod_uid: "u".into(),
            volume_type: VolumeType::Secret,
            name: "tls".into(),
        };
        let t0 = SystemTime::UNIX_EPOCH + Duration::from_secs(1000);
        let mut r = Reloads::default();
        let found = |id: &str| Found {
            id: id.into(),
            name: id.into(),
            mount: MountKind::Volume,
            started: t0,
            start_ticks: 1,
            mount_path: None,
        };
        r.set_consumers(&vol, vec![found("a"), found("b")]);
        r.update(&vol, "..2", t0 + Duration::from_secs(1));
        for (id, ms) in [("a", 20), ("b", 3000)] {
            let opener = crate::reloads::Opener::Container {
                pod_uid: "u".into(),
                id: id.into(),
            };
            r.open(
                opener,
                &vol,
                "..2",
                t0 + Duration::from_secs(1) + Duration::from_millis(ms),
            );
        }
        *shared.reloads.lock().unwrap() = r;
        shared
    }

    fn latency_series(keep: &[&str]) -> Vec<Metric> {
        let keep =
            histogram_labels(&keep.iter().map(|s| s.to_string()).collect::<Vec<_>>()).unwrap();
        let c = ConsumerCollector::new(shared_with_two_reloads(), keep).unwrap();
        let mf = c
            .collect()
            .into_iter()
            .find(|f| f.name() == LATENCY.name)
            .unwrap();
        mf.get_metric().to_vec()
    }

    #[test]
    fn fewer_histogram_labels_merge_consumers_into_one_series() {
        let all = latency_series(&["namespace", "pod", "container", "volume"]);
        assert_eq!(all.len(), 2);
        let merged = latency_series(&["volume", "namespace"]);
        assert_eq!(merged.len(), 1);
        let m = &merged[0];
        let names: Vec<&str> = m.get_label().iter().map(|l| l.name()).collect();
        assert_eq!(
            names,
            ["namespace", "volume"],
            "kept labels, in the contract's order"
        );
        let h = m.get_histogram();
        assert_eq!(h.get_sample_count(), 2);
        assert!((h.get_sample_sum() - 3.02).abs() < 1e-9);
        // 20 ms is in the 25 ms bucket, 3 s in the 5 s one.
        let at = |le: f64| {
            h.get_bucket()
                .iter()
                .find(|b| b.upper_bound() == le)
                .unwrap()
                .cumulative_count()
        };
        assert_eq!((at(0.025), at(2.5), at(5.0)), (1, 1, 2));
    }

    #[test]
    fn unknown_histogram_labels_are_refused_with_the_choices() {
        let err = histogram_labels(&["pod".into(), "node".into()]).unwrap_err();
        assert!(
            err.contains("\"node\"") && err.contains("namespace, pod, container, volume"),
            "{err}"
        );
    }
}
