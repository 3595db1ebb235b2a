//! The Prometheus view of the agent's state ([`Shared`]). It only reads: every scrape
//! renders the tracker's current volumes, so a pod's series vanish with it and a pod name learnt
//! late names all its series at once.
//!
//! Which labels the per-consumer families keep, and which namespaces and volumes are
//! exported at all, is [`LabelControls`]' (module `labels`). The Kubernetes API's names
//! (volume sources, workloads) are read under the metadata lock alone, never while
//! another lock is held.

mod consumers;
mod kube;
mod labels;
mod linter;
mod modes;
mod process;
mod render;
mod signals;
mod volumes;

#[cfg(test)]
mod tests;

use std::sync::{Arc, Mutex, atomic::Ordering::Relaxed};

pub use labels::{CONSUMER_LABELS, LabelControls, histogram_labels};
use prometheus::{
    IntCounterVec, IntGauge, IntGaugeVec, Opts, Registry, TextEncoder,
    core::{Collector, Desc},
    proto::MetricFamily,
};

use crate::{node::volumes::VolumeType, state::Shared, updates::Source};

struct Families {
    detections: IntCounterVec,
    gaps: IntCounterVec,
    lost: IntCounterVec,
    overflows: IntCounterVec,
    ebpf_loaded: IntGaugeVec,
    watched: IntGaugeVec,
    watches: IntGauge,
    unwatched: IntGaugeVec,
    fd_exhausted: IntCounterVec,
    evicted: IntCounterVec,
}

/// Renders [`Shared`]'s node-wide families at each scrape (the per-volume ones are
/// [`volumes`]').
pub struct StateCollector {
    shared: Arc<Shared>,
    f: Mutex<Families>,
    descs: Vec<Desc>,
}

fn opts(name: &str, help: &str) -> Opts {
    Opts::new(name, help)
}

impl StateCollector {
    pub fn new(shared: Arc<Shared>) -> prometheus::Result<Self> {
        let f = Families {
            detections: IntCounterVec::new(
                opts(
                    "reloadscope_update_detections_total",
                    "Volume updates reported, by the source that reported them.",
                ),
                &["source"],
            )?,
            gaps: IntCounterVec::new(
                opts(
                    "reloadscope_update_detection_gaps_total",
                    "Updates one source reported and the other did not within the pairing window, by the source that missed them.",
                ),
                &["missed_by"],
            )?,
            lost: IntCounterVec::new(
                opts(
                    "reloadscope_ebpf_events_lost_total",
                    "Swap events the probe could not write to its full ring buffer.",
                ),
                &[],
            )?,
            overflows: IntCounterVec::new(
                opts(
                    "reloadscope_inotify_queue_overflows_total",
                    "inotify queue overflows; each is followed by a full rescan.",
                ),
                &[],
            )?,
            ebpf_loaded: IntGaugeVec::new(
                opts(
                    "reloadscope_ebpf_loaded",
                    "1 when the eBPF swap probe is loaded and attached (probe: fentry or tracepoint), 0 when the agent runs on inotify alone (probe=\"none\").",
                ),
                &["probe"],
            )?,
            watched: IntGaugeVec::new(
                opts(
                    "reloadscope_watched_volumes",
                    "Volumes the agent follows, by type.",
                ),
                &["volume_type"],
            )?,
            watches: IntGauge::new(
                "reloadscope_inotify_watches",
                "inotify watches the agent holds.",
            )?,
            unwatched: IntGaugeVec::new(
                opts(
                    "reloadscope_unwatched_paths",
                    "Dirs under the kubelet roots the agent cannot watch or list now, by reason (watch_limit: fs.inotify.max_user_watches; fd_limit: descriptors; memory, permission, other); retried every second. Updates of their volumes are not seen.",
                ),
                &["reason"],
            )?,
            fd_exhausted: IntCounterVec::new(
                opts(
                    "reloadscope_fd_exhausted_total",
                    "Operations that failed for want of file descriptors (EMFILE, ENFILE): connections not accepted at once, dirs not listed or watched at once.",
                ),
                &[],
            )?,
            evicted: IntCounterVec::new(
                opts(
                    "reloadscope_http_connections_evicted_total",
                    "HTTP connections closed to make room for a new one at the server's connection cap.",
                ),
                &[],
            )?,
        };
        let descs = [
            f.detections.desc(),
            f.gaps.desc(),
            f.lost.desc(),
            f.overflows.desc(),
            f.ebpf_loaded.desc(),
            f.watched.desc(),
            f.watches.desc(),
            f.unwatched.desc(),
            f.fd_exhausted.desc(),
            f.evicted.desc(),
        ]
        .into_iter()
        .flatten()
        .cloned()
        .collect();
        Ok(StateCollector {
            shared,
            f: Mutex::new(f),
            descs,
        })
    }

    fn fill(&self, f: &Families) {
        let s = &self.shared;
        let probe = s.probe.lock().expect("probe lock");
        let probe_lost = probe.as_ref().map(|p| p.stats().lost);
        let variant = probe.as_ref().map_or("none", |p| p.variant().label());
        drop(probe);
        f.ebpf_loaded.reset();
        (f.ebpf_loaded.with_label_values(&[variant])).set(i64::from(probe_lost.is_some()));
        f.lost
            .with_label_values(&[] as &[&str])
            .inc_by(probe_lost.unwrap_or(0));
        f.overflows
            .with_label_values(&[] as &[&str])
            .inc_by(s.overflows.load(Relaxed));
        let watches = [&*s.watches, &*s.cgroup_watches, &s.open_watches];
        f.watches
            .set(watches.iter().map(|w| w.load(Relaxed)).sum::<usize>() as i64);
        for reason in crate::blind::Reason::ALL {
            (f.unwatched.with_label_values(&[reason.label()]))
                .set(s.blind.unwatched(reason) as i64);
        }
        let none: &[&str] = &[];
        (f.fd_exhausted.with_label_values(none)).inc_by(s.blind.fd_exhausted_total());
        (f.evicted.with_label_values(none)).inc_by(s.blind.http_evicted_total());
        self.tracker_families(f);
    }

    /// The node-wide families the tracker counts.
    fn tracker_families(&self, f: &Families) {
        let t = self.shared.tracker.lock().expect("tracker lock");
        for src in Source::ALL {
            let i = src as usize;
            f.detections
                .with_label_values(&[src.label()])
                .inc_by(t.detections[i]);
            f.gaps.with_label_values(&[src.label()]).inc_by(t.gaps[i]);
        }
        for ty in VolumeType::ALL {
            f.watched
                .with_label_values(&[ty.label()])
                .set(t.watched(ty) as i64);
        }
    }
}

impl Collector for StateCollector {
    fn desc(&self) -> Vec<&Desc> {
        self.descs.iter().collect()
    }

    fn collect(&self) -> Vec<MetricFamily> {
        let f = self.f.lock().expect("families lock");
        f.detections.reset();
        f.gaps.reset();
        f.lost.reset();
        f.overflows.reset();
        f.watched.reset();
        f.fd_exhausted.reset();
        f.evicted.reset();
        self.fill(&f);
        [
            f.detections.collect(),
            f.gaps.collect(),
            f.lost.collect(),
            f.overflows.collect(),
            f.ebpf_loaded.collect(),
            f.watched.collect(),
            f.watches.collect(),
            f.unwatched.collect(),
            f.fd_exhausted.collect(),
            f.evicted.collect(),
        ]
        .into_iter()
        .flatten()
        .collect()
    }
}

/// What /metrics serves: the registry's families, and the per-volume ones written
/// straight to text among them.
pub struct Exporter {
    registry: Registry,
    volumes: volumes::VolumeFamilies,
}

impl Exporter {
    /// `labels`: the per-consumer labels and the filters; `histogram_labels`: indexes
    /// from [`histogram_labels`], restricting the latency histogram's labels further.
    pub fn new(
        shared: Arc<Shared>,
        labels: LabelControls,
        histogram_labels: &[usize],
    ) -> prometheus::Result<Self> {
        Ok(Exporter {
            registry: registry(shared.clone(), labels.clone(), histogram_labels)?,
            volumes: volumes::VolumeFamilies {
                shared,
                controls: labels,
            },
        })
    }

    /// Every family in the text format, in name order as the registry writes them.
    pub fn render(&self) -> prometheus::Result<String> {
        let families = self.registry.gather();
        let rows = self.volumes.rows();
        let at = |name: &str| families.partition_point(|f| f.name() < name);
        let (last, updates) = (at(volumes::LAST_UPDATE), at(volumes::UPDATES));
        let mut out = String::new();
        let encoder = TextEncoder::new();
        encoder.encode_utf8(&families[..last], &mut out)?;
        rows.write_last_update(&mut out);
        encoder.encode_utf8(&families[last..updates], &mut out)?;
        rows.write_updates(&mut out);
        encoder.encode_utf8(&families[updates..], &mut out)?;
        Ok(out)
    }
}

/// The registry of every family but the per-volume ones: state, consumers, watches,
/// the Kubernetes API's, build info and the process metrics.
fn registry(
    shared: Arc<Shared>,
    labels: LabelControls,
    histogram_labels: &[usize],
) -> prometheus::Result<Registry> {
    let r = Registry::new();
    r.register(Box::new(StateCollector::new(shared.clone())?))?;
    r.register(Box::new(consumers::ConsumerCollector::new(
        shared.clone(),
        labels.clone(),
        histogram_labels,
    )?))?;
    r.register(Box::new(linter::WatchCollector::new(
        shared.clone(),
        labels.clone(),
    )?))?;
    r.register(Box::new(modes::ModeCollector::new(shared.clone())?))?;
    r.register(Box::new(kube::KubeCollector::new(
        shared.clone(),
        labels.clone(),
    )?))?;
    r.register(Box::new(signals::SignalCollector::new(shared, labels)?))?;
    let build = IntGaugeVec::new(
        opts(
            "reloadscope_build_info",
            "Always 1; the agent's version in a label.",
        ),
        &["version"],
    )?;
    build.with_label_values(&[env!("CARGO_PKG_VERSION")]).set(1);
    r.register(Box::new(build))?;
    r.register(Box::new(process::ProcessCollector::new()?))?;
    Ok(r)
}
