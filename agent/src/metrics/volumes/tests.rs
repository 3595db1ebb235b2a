//! The per-volume families as text against what the `prometheus` vectors rendered
//! before (the reference below is that code), on states with label values to escape.

use std::{
    sync::Arc,
    time::{Duration, Instant, SystemTime},
};

use prometheus::{GaugeVec, IntCounterVec, Opts, Registry, TextEncoder, proto::MetricFamily};

use super::*;
use crate::{
    kubeapi::{PodMeta, SourceKind, VolumeSource},
    node::{
        pod_logs::PodName,
        volumes::{VolumeKey, VolumeType},
    },
    updates::{Detection, Source, Tracker},
};

/// The label names in the order the vectors were declared with.
const DECLARED: [&str; 6] = [
    "namespace",
    "pod",
    "volume",
    "volume_type",
    "source_kind",
    "source_name",
];

/// The families as the `prometheus` vectors made them, before this module.
fn reference(shared: &Shared, controls: &LabelControls) -> Vec<MetricFamily> {
    let updates = IntCounterVec::new(Opts::new(UPDATES, UPDATES_HELP), &DECLARED).unwrap();
    let last = GaugeVec::new(Opts::new(LAST_UPDATE, LAST_UPDATE_HELP), &DECLARED).unwrap();
    let rows: Vec<(String, [String; 4], u64, Option<f64>)> = {
        let t = shared.tracker.lock().unwrap();
        t.volumes()
            .filter_map(|(key, v)| {
                let (ns, pod) = labels::pod_names(&t, &key.pod_uid);
                if !controls.exports(ns, &key.name) {
                    return None;
                }
                let labels = [ns.unwrap_or(""), pod, &key.name, key.volume_type.label()];
                let last = v.last_update.map(clock::unix_seconds);
                Some((
                    key.pod_uid.clone(),
                    labels.map(String::from),
                    v.updates,
                    last,
                ))
            })
            .collect()
    };
    let meta = shared.meta.state.lock().unwrap();
    for (uid, labels, n, at) in rows {
        let [ns, pod, volume, ty] = labels.each_ref().map(String::as_str);
        let (kind, name) = meta.source_labels(&uid, volume);
        let labels = [ns, pod, volume, ty, kind.as_str(), name.as_str()];
        updates.with_label_values(&labels).inc_by(n);
        if let Some(at) = at {
            last.with_label_values(&labels).set(at);
        }
    }
    let r = Registry::new();
    r.register(Box::new(updates)).unwrap();
    r.register(Box::new(last)).unwrap();
    r.gather()
}

fn reference_text(shared: &Shared, controls: &LabelControls) -> String {
    let mut out = String::new();
    TextEncoder::new()
        .encode_utf8(&reference(shared, controls), &mut out)
        .unwrap();
    out
}

fn text(shared: &Arc<Shared>, controls: &LabelControls) -> String {
    let f = VolumeFamilies {
        shared: shared.clone(),
        controls: controls.clone(),
    };
    let rows = f.rows();
    let mut out = String::new();
    rows.write_last_update(&mut out);
    rows.write_updates(&mut out);
    out
}

fn key(uid: &str, ty: VolumeType, name: &str) -> VolumeKey {
    VolumeKey {
        pod_uid: uid.into(),
        volume_type: ty,
        name: name.into(),
    }
}

/// Pods with quotes, backslashes, newlines and non-ASCII in their names (and names
/// that sort differently escaped: `p` `p!` `p"`), one pod not named, one volume per
/// pod; `updated`: how many swaps each volume had (none: no last update).
fn node(updated: &[u32]) -> Arc<Shared> {
    let shared = Arc::new(Shared::new(Tracker::new(Duration::from_secs(2), false)));
    let pods = [
        (
            "u1",
            Some(("a\"b", "we\\b-0\n")),
            VolumeType::ConfigMap,
            "cfg\"\\",
        ),
        ("u2", None, VolumeType::Secret, "tls ü"),
        ("u3", Some(("a\"b", "p")), VolumeType::Projected, "é"),
        ("u4", Some(("a\"b", "p!")), VolumeType::ConfigMap, "x"),
        ("u5", Some(("a\"b", "p\"")), VolumeType::DownwardApi, "x"),
        ("u6", Some(("", "")), VolumeType::ConfigMap, ""),
        ("u\"7\\", None, VolumeType::Secret, "kube-api-access-1"),
    ];
    let now = Instant::now();
    let t0 = SystemTime::UNIX_EPOCH + Duration::from_millis(1_700_000_000_123);
    let mut t = shared.tracker.lock().unwrap();
    for (i, (uid, name, ty, volume)) in pods.into_iter().enumerate() {
        if let Some((namespace, name)) = name {
            let name = PodName {
                namespace: namespace.into(),
                name: name.into(),
            };
            t.pod_named(uid.into(), name);
        }
        let k = key(uid, ty, volume);
        t.volume_found(k.clone(), "/v".into(), Some("..0".into()), now, t0, || None);
        for n in 1..=updated.get(i).copied().unwrap_or(0) {
            let d = Detection {
                source: Source::Inotify,
                key: k.clone(),
                ts_dir: format!("..{n}"),
                at: t0 + Duration::from_micros(u64::from(n) * 1_234_567 + i as u64),
            };
            t.detect(d, now);
        }
    }
    drop(t);
    let mut m = shared.meta.state.lock().unwrap();
    m.configured = true;
    let sources = |volume: &str, s: &[(SourceKind, &str)]| PodMeta {
        namespace: "a\"b".into(),
        name: "p".into(),
        workload: None,
        volumes: [(
            volume.to_owned(),
            s.iter().map(|(k, n)| VolumeSource::new(*k, *n)).collect(),
        )]
        .into(),
        annotations: Default::default(),
    };
    let cm = [(SourceKind::ConfigMap, "c\"m\\1\nx")];
    m.pods.insert("u1".into(), sources("cfg\"\\", &cm));
    let projected = [
        (SourceKind::Secret, "s"),
        (SourceKind::ConfigMap, "ü"),
        (SourceKind::DownwardApi, ""),
    ];
    m.pods.insert("u3".into(), sources("é", &projected));
    drop(m);
    shared
}

#[test]
fn the_text_is_the_prometheus_vectors_text() {
    let all = LabelControls::default();
    let filtered = LabelControls {
        exclude_volumes: Some(regex::Regex::new("^(?:kube-api-access-.*)$").unwrap()),
        exclude_namespaces: vec!["".into()],
        ..LabelControls::default()
    };
    for updated in [&[][..], &[1, 0, 3, 2, 1, 0, 5], &[2; 7]] {
        for controls in [&all, &filtered] {
            let shared = node(updated);
            let want = reference_text(&shared, controls);
            assert!(want.contains("a\\\"b") && want.contains("we\\\\b-0\\n"));
            assert_eq!(text(&shared, controls), want, "updates {updated:?}");
        }
    }
}

#[test]
fn without_updates_the_last_update_family_is_left_out() {
    let out = text(&node(&[]), &LabelControls::default());
    assert!(!out.contains(LAST_UPDATE), "{out}");
    assert_eq!(out.lines().filter(|l| l.starts_with(UPDATES)).count(), 7);
}

#[test]
fn volumes_with_the_same_labels_share_a_series() {
    // Pod `a"b/p` recreated (uid u8) while the old one's volume is still there.
    let shared = node(&[0, 0, 2]);
    let now = Instant::now();
    let t0 = SystemTime::UNIX_EPOCH + Duration::from_secs(1_800_000_000);
    let mut t = shared.tracker.lock().unwrap();
    let name = PodName {
        namespace: "a\"b".into(),
        name: "p".into(),
    };
    t.pod_named("u8".into(), name);
    let k = key("u8", VolumeType::Projected, "é");
    t.volume_found(k.clone(), "/v".into(), Some("..0".into()), now, t0, || None);
    let d = Detection {
        source: Source::Inotify,
        key: k,
        ts_dir: "..9".into(),
        at: t0,
    };
    t.detect(d, now);
    drop(t);
    let out = text(&shared, &LabelControls::default());
    let series = |name: &str| -> Vec<&str> {
        (out.lines())
            .filter(|l| l.starts_with(name) && l.contains("pod=\"p\""))
            .collect()
    };
    // u8 has no API metadata: its sources are empty, unlike u3's.
    let [ours, _] = series(UPDATES)[..] else {
        panic!("{out}")
    };
    assert!(
        ours.contains("source_kind=\"\"") && ours.ends_with(" 1"),
        "{ours}"
    );
    // The same sources for both: one series.
    let mut m = shared.meta.state.lock().unwrap();
    let u3 = m.pods["u3"].clone();
    m.pods.insert("u8".into(), u3);
    drop(m);
    let out = text(&shared, &LabelControls::default());
    let of = |name: &str| -> Vec<String> {
        (out.lines())
            .filter(|l| l.starts_with(name) && l.contains("pod=\"p\""))
            .map(String::from)
            .collect()
    };
    let updates = of(UPDATES);
    assert_eq!(updates.len(), 1, "{out}");
    assert!(updates[0].ends_with(" 3"), "{}", updates[0]);
    let last = of(LAST_UPDATE);
    assert_eq!(last.len(), 1, "{out}");
    assert!(last[0].ends_with(" 1800000000"), "the latest: {}", last[0]);
}

#[test]
fn escapes_follow_the_text_format() {
    let mut out = String::new();
    escape(&mut out, "a\"b\\c\nd é", true);
    assert_eq!(out, "a\\\"b\\\\c\\nd é");
    out.clear();
    escape(&mut out, "a\"b\\c\nd", false);
    assert_eq!(out, "a\"b\\\\c\\nd");
}

#[test]
fn the_exporter_writes_them_among_the_registry_families_in_name_order() {
    let shared = node(&[1, 0, 3, 2, 1, 0, 5]);
    let controls = LabelControls::default();
    let e = super::super::Exporter::new(shared.clone(), controls.clone(), &[]).unwrap();
    let got = e.render().unwrap();
    // What the registry rendered when it held the vectors (its families by name).
    let mut families = e.registry.gather();
    families.extend(reference(&shared, &controls));
    families.sort_by(|a, b| a.name().cmp(b.name()));
    let mut want = String::new();
    TextEncoder::new()
        .encode_utf8(&families, &mut want)
        .unwrap();
    // The process's own figures move between two renderings.
    let steady = |s: &str| -> Vec<String> {
        (s.lines())
            .filter(|l| !l.contains(" process_") && !l.starts_with("process_"))
            .map(String::from)
            .collect()
    };
    assert!(got.contains(UPDATES) && got.contains("reloadscope_watched_volumes"));
    assert_eq!(steady(&got), steady(&want));
}
