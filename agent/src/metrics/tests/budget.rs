//! The series of a node of 100 pods (10 workloads of 10 replicas, one namespace each),
//! 5 volumes per pod, 1 reading consumer per volume that reloaded once, with the
//! Kubernetes API's names: the default series budget, against a histogram per
//! container, rendered in the same run.

use std::{
    collections::BTreeMap,
    sync::Arc,
    time::{Duration, Instant, SystemTime},
};

use super::render;
use crate::{
    agent::defaults,
    kubeapi::{PodMeta, Workload},
    metrics::LabelControls,
    node::{
        pod_logs::PodName,
        volumes::{VolumeKey, VolumeType},
    },
    reloads::{Found, MountKind, Opener, Reloads},
    state::Shared,
    updates::{Detection, Source, Tracker},
};

const WORKLOADS: usize = 10;
const REPLICAS: usize = 10;
const VOLUMES: [(VolumeType, &str); 5] = [
    (VolumeType::ConfigMap, "app-config"),
    (VolumeType::ConfigMap, "flags"),
    (VolumeType::Secret, "tls"),
    (VolumeType::Projected, "kube-api-access"),
    (VolumeType::DownwardApi, "podinfo"),
];

fn big_node() -> Arc<Shared> {
    let shared = Arc::new(Shared::new(Tracker::new(Duration::from_secs(2), false)));
    let t0 = SystemTime::now() - Duration::from_secs(3600);
    let swap = t0 + Duration::from_secs(1);
    let mut t = shared.tracker.lock().unwrap();
    let mut r = Reloads::default();
    let mut meta = shared.meta.state.lock().unwrap();
    meta.configured = true;
    meta.api_up = true;
    for w in 0..WORKLOADS {
        for i in 0..REPLICAS {
            let uid = format!("uid-{w}-{i}");
            let (ns, name) = (format!("ns-{w}"), format!("app-{w}-{i}"));
            let pod = PodName {
                namespace: ns.clone(),
                name: name.clone(),
            };
            t.pod_named(uid.clone(), pod);
            meta.pods.insert(
                uid.clone(),
                PodMeta {
                    namespace: ns,
                    name,
                    workload: Some(Workload {
                        kind: "Deployment".into(),
                        name: format!("app-{w}"),
                    }),
                    volumes: BTreeMap::new(),
                    annotations: BTreeMap::new(),
                },
            );
            for (ty, vol) in VOLUMES {
                let key = VolumeKey {
                    pod_uid: uid.clone(),
                    volume_type: ty,
                    name: vol.into(),
                };
                let now = Instant::now();
                t.volume_found(
                    key.clone(),
                    "/v".into(),
                    Some("..1".into()),
                    now,
                    t0,
                    || None,
                );
                let ts_dir = "..2".into();
                let d = Detection {
                    source: Source::Inotify,
                    key: key.clone(),
                    ts_dir,
                    at: swap,
                };
                t.detect(d, now);
                let app = Found {
                    id: format!("{uid}-app"),
                    name: "app".into(),
                    mount: MountKind::Volume,
                    started: t0,
                    start_ticks: 1,
                    mount_path: None,
                    holds: Vec::new(),
                    listed_at: t0,
                    watches: true,
                };
                r.set_consumers(&key, vec![app]);
                r.update(&key, "..2", swap);
                let opener = Opener::Container {
                    pod_uid: uid.clone(),
                    id: format!("{uid}-app"),
                };
                r.open(opener, &key, "..2", swap + Duration::from_millis(3));
            }
        }
    }
    drop((t, meta));
    *shared.reloads.lock().unwrap() = r;
    shared
}

/// Series written, `# HELP` and `# TYPE` lines left out.
fn series(text: &str) -> usize {
    text.lines().filter(|l| !l.starts_with('#')).count()
}

#[test]
fn the_default_series_budget_is_under_half_a_histogram_per_container() {
    let shared = big_node();
    let defaults: Vec<&str> = defaults::HISTOGRAM_LABELS.split(',').collect();
    let all: Vec<&str> = defaults::CONSUMER_LABELS.split(',').collect();
    let (text, m) = render(shared.clone(), LabelControls::default(), &defaults);
    let (per_container, _) = render(shared, LabelControls::default(), &all);
    let (ours, baseline) = (series(&text), series(&per_container));
    println!(
        "100 pods x 5 volumes, 1 consumer each: {ours} series with --histogram-labels {}, \
         {baseline} with one histogram per container ({:.2}x)",
        defaults::HISTOGRAM_LABELS,
        ours as f64 / baseline as f64
    );
    assert!(ours * 2 <= baseline, "{ours} series against {baseline}");
    // The per-container stale view is kept: one series per consumer.
    let stale = m
        .matching("reloadscope_consumer_stale_seconds", &[])
        .count();
    assert_eq!(stale, WORKLOADS * REPLICAS * VOLUMES.len());
    // Each workload's histogram holds its replicas' reloads.
    let count = m.get(
        "reloadscope_reload_latency_seconds_count",
        &[("workload", "app-0"), ("volume", "tls")],
    );
    assert_eq!(count, Some(REPLICAS as f64));
}
