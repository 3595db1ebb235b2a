//! The consumer families: reload latency, staleness, last reload, consumer info and
//! foreign opens, rendered from [`Reloads`](crate::reloads::Reloads) at each scrape. The
//! latency histogram is built from the state's bucket counts, so a consumer's series go
//! with it.
//!
//! The per-consumer families keep the labels `--metric-labels` chooses
//! ([`Selection`]); consumers with the same kept values share a series: latency
//! histograms add up, stale seconds and last reload take the largest, consumer info
//! counts the consumers.

use std::{
    collections::{BTreeMap, BTreeSet},
    sync::Arc,
    time::SystemTime,
};

use prometheus::{
    core::{Collector, Desc},
    proto::{MetricFamily, MetricType},
};

use super::{
    LabelControls, Shared,
    labels::{ConsumerValues, Selection, workloads},
    render::{Family, counter, family, gauge, histogram},
};
use crate::{
    clock,
    reloads::{FOREIGN, Latency, MountKind},
};

const LATENCY: Family = Family {
    name: "reloadscope_reload_latency_seconds",
    help: "Time from a volume's swap to the consuming container's first open of the new data. Containers with the same values of the kept labels (--metric-labels, --histogram-labels) share one histogram of all their reloads.",
    kind: MetricType::HISTOGRAM,
    labels: &[],
};
const STALE: Family = Family {
    name: "reloadscope_consumer_stale_seconds",
    help: "Seconds since the swap of the newest update this container has not reloaded; 0 when it has it. Only for whole-volume consumers known to read the volume (reads=\"yes\" on reloadscope_consumer_info): one never seen reading has no series. Containers with the same values of the kept labels (--metric-labels) share a series: the largest of those that read.",
    kind: MetricType::GAUGE,
    labels: &[],
};
const LAST_RELOAD: Family = Family {
    name: "reloadscope_consumer_last_reload_timestamp_seconds",
    help: "Time of the container's last reload of the volume, seconds since the epoch. Containers with the same values of the kept labels (--metric-labels) share a series: the latest.",
    kind: MetricType::GAUGE,
    labels: &[],
};
const SINCE_SIGNAL: Family = Family {
    name: "reloadscope_consumer_stale_since_signal_seconds",
    help: "Seconds since the reload signal sent for the newest update this container has not reloaded (--reload-signals); 0 when it has reloaded it. Only for containers that were signalled and are known to read the volume. Containers with the same values of the kept labels (--metric-labels) share a series: the largest.",
    kind: MetricType::GAUGE,
    labels: &[],
};
const INFO: Family = Family {
    name: "reloadscope_consumer_info",
    help: "A container consuming a volume, always 1 (containers that --metric-labels leaves alike share the series). workload_kind and workload: the pod's owner (Deployment, StatefulSet, DaemonSet, CronJob, Job, ...; empty without the Kubernetes API or for a bare pod); mount: whether it binds the whole volume or one file through subPath; measurement: how its reloads are seen, exact (fanotify, per process), approximate (inotify, per volume) or none; reads: whether it reads the volume, yes (seen opening one of its files, holding one open or watching it with inotify), no (not seen reading in the first-read window after its start) or unknown (not seen reading, its start not seen or the window not over): only a reader has a stale-seconds series.",
    kind: MetricType::GAUGE,
    labels: &[],
};
const INFO_LABELS: [&str; 3] = ["mount", "measurement", "reads"];
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

pub struct ConsumerCollector {
    shared: Arc<Shared>,
    controls: LabelControls,
    descs: Vec<Desc>,
    /// Labels of the per-consumer families.
    labels: Selection,
    /// Labels of the latency histogram: those of [`Self::labels`] that
    /// `--histogram-labels` lists.
    histogram: Selection,
}

impl ConsumerCollector {
    /// `histogram`: the latency histogram's labels, from
    /// [`histogram_labels`](super::histogram_labels).
    pub fn new(
        shared: Arc<Shared>,
        controls: LabelControls,
        histogram: &[usize],
    ) -> prometheus::Result<Self> {
        let labels = Selection::consumer(&controls);
        let hist = labels.restricted(histogram);
        let mut info = labels.names_with_kind();
        info.extend(INFO_LABELS);
        let descs = vec![
            LATENCY.desc(&hist.names())?,
            STALE.desc(&labels.names())?,
            LAST_RELOAD.desc(&labels.names())?,
            SINCE_SIGNAL.desc(&labels.names())?,
            INFO.desc(&info)?,
            FOREIGN_OPENS.fixed_desc()?,
            LATE_MARKS.fixed_desc()?,
            FANOTIFY_LOADED.fixed_desc()?,
            FANOTIFY_OVERFLOWS.fixed_desc()?,
        ];
        Ok(ConsumerCollector {
            shared,
            controls,
            descs,
            labels,
            histogram: hist,
        })
    }
}

/// The per-consumer series, by the kept label values: consumers sharing them merged.
#[derive(Default)]
struct Merged {
    latency: BTreeMap<Vec<String>, Latency>,
    stale: BTreeMap<Vec<String>, f64>,
    last: BTreeMap<Vec<String>, f64>,
    since_signal: BTreeMap<Vec<String>, f64>,
    /// With the workload's kind, mount, measurement and reads.
    info: BTreeSet<Vec<String>>,
}

fn max_into(map: &mut BTreeMap<Vec<String>, f64>, key: Vec<String>, v: f64) {
    let slot = map.entry(key).or_insert(v);
    *slot = slot.max(v);
}

impl ConsumerCollector {
    /// Every exported consumer, merged; and the foreign open counts.
    fn merged(&self, now: SystemTime, measurement: &str) -> (Merged, [u64; FOREIGN.len()]) {
        let workloads = if self.labels.keeps_workload() {
            workloads(&self.shared)
        } else {
            Default::default()
        };
        let mut m = Merged::default();
        let tracker = self.shared.tracker.lock().expect("tracker lock");
        let r = self.shared.reloads.lock().expect("reloads lock");
        // Taken last (lock order).
        let signals = self.shared.signals.lock().expect("signals lock");
        for (volume, id, c) in r.consumers() {
            let (ns, values) =
                ConsumerValues::new(&tracker, &workloads, &volume.pod_uid, &c.name, &volume.name);
            if !self.controls.exports(ns, &volume.name) {
                continue;
            }
            let mut info = self.labels.values_with_kind(&values);
            let reads = c.reads.label();
            info.extend([c.mount.label(), measurement, reads].map(str::to_owned));
            m.info.insert(info);
            if c.mount == MountKind::Volume {
                let kept = self.histogram.values(&values);
                m.latency.entry(kept).or_default().merge(&c.latency);
            }
            // Only a reader can be stale: whether the others hold old data is unknown.
            if c.measured() {
                let stale = c.stale_seconds(now);
                max_into(&mut m.stale, self.labels.values(&values), stale);
                if let Some((ts_dir, sent)) = signals.last.get(&(volume.clone(), id.clone())) {
                    let since = match &c.pending {
                        Some((pending, _)) if pending == ts_dir => {
                            now.duration_since(*sent).unwrap_or_default().as_secs_f64()
                        }
                        _ => 0.0,
                    };
                    max_into(&mut m.since_signal, self.labels.values(&values), since);
                }
            }
            if let Some(t) = c.last_reload {
                let at = clock::unix_seconds(t);
                max_into(&mut m.last, self.labels.values(&values), at);
            }
        }
        (m, r.foreign)
    }
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
        let (m, foreign) = self.merged(now, measurement);
        let foreign = FOREIGN
            .iter()
            .zip(foreign)
            .map(|(o, n)| counter(FOREIGN_OPENS.labels, &[o], n as f64))
            .collect();
        let late = self.shared.late_marks.load(Relaxed) as f64;
        let loaded = f64::from(u8::from(self.shared.fanotify.load(Relaxed)));
        let overflows = self.shared.fanotify_overflows.load(Relaxed) as f64;
        let names = self.labels.names();
        let hist_names = self.histogram.names();
        let latency = m
            .latency
            .iter()
            .map(|(v, h)| histogram(&hist_names, v, h))
            .collect();
        let gauges = |map: &BTreeMap<Vec<String>, f64>| {
            map.iter().map(|(v, x)| gauge(&names, v, *x)).collect()
        };
        let mut info_names = self.labels.names_with_kind();
        info_names.extend(INFO_LABELS);
        let info = m.info.iter().map(|v| gauge(&info_names, v, 1.0)).collect();
        let none: [&str; 0] = [];
        vec![
            family(&LATENCY, latency),
            family(&STALE, gauges(&m.stale)),
            family(&LAST_RELOAD, gauges(&m.last)),
            family(&SINCE_SIGNAL, gauges(&m.since_signal)),
            family(&INFO, info),
            family(&FOREIGN_OPENS, foreign),
            family(&LATE_MARKS, vec![counter(&[], &none, late)]),
            family(&FANOTIFY_LOADED, vec![gauge(&[], &none, loaded)]),
            family(&FANOTIFY_OVERFLOWS, vec![counter(&[], &none, overflows)]),
        ]
    }
}
