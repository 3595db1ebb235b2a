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

struct Family {
    name: &'static str,
    help: &'static str,
    kind: MetricType,
    labels: &'static [&'static str],
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
    help: "1 for each container consuming a volume; mount says whether it binds the whole volume or one file through subPath.",
    kind: MetricType::GAUGE,
    labels: &["namespace", "pod", "container", "volume", "mount"],
};
const FOREIGN_OPENS: Family = Family {
    name: "reloadscope_foreign_opens_total",
    help: "Opens of volume files by processes outside the consuming containers (never reloads), by opener.",
    kind: MetricType::COUNTER,
    labels: &["opener"],
};
const LATE_MARKS: Family = Family {
    name: "reloadscope_late_marks_total",
    help: "Updates whose new data dir (disk volumes) was marked for open events only after the swap: opens outside the consumers' own mounts right after the swap may be missed; consumers' reloads are seen through their mounts.",
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
}

impl ConsumerCollector {
    pub fn new(shared: Arc<Shared>) -> prometheus::Result<Self> {
        let descs = FAMILIES
            .iter()
            .map(|f| {
                Desc::new(
                    f.name.into(),
                    f.help.into(),
                    f.labels.iter().map(|l| l.to_string()).collect(),
                    Default::default(),
                )
            })
            .collect::<Result<_, _>>()?;
        Ok(ConsumerCollector { shared, descs })
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

fn gauge(labels: &[&str], values: &[&str], v: f64) -> Metric {
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

fn histogram(values: &[&str], h: &crate::reloads::Histogram) -> Metric {
    let mut m = metric(&LABELS, values);
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

fn family(f: &Family, metrics: Vec<Metric>) -> MetricFamily {
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
        let now = SystemTime::now();
        let (mut latency, mut stale, mut last, mut info) =
            (Vec::new(), Vec::new(), Vec::new(), Vec::new());
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
                    &[ns, pod, &c.name, &volume.name, c.mount.label()],
                    1.0,
                ));
                if c.mount == MountKind::Volume {
                    latency.push(histogram(&v, &c.latency));
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
        use std::sync::atomic::Ordering::Relaxed;
        let late = self.shared.late_marks.load(Relaxed) as f64;
        let loaded = f64::from(u8::from(self.shared.fanotify.load(Relaxed)));
        let overflows = self.shared.fanotify_overflows.load(Relaxed) as f64;
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
