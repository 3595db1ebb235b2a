use std::{
    collections::{BTreeMap, HashMap},
    time::{Duration, SystemTime, UNIX_EPOCH},
};

use k8s_openapi::apimachinery::pkg::apis::meta::v1::ManagedFieldsEntry;
use serde_json::{Value, json};

use super::*;
use crate::kubeapi::model::VolumeSource;

/// `secs` after (before, when negative) 2026-07-01T10:00:00Z.
fn t(secs: f64) -> SystemTime {
    let base = UNIX_EPOCH + Duration::from_secs(1_782_900_000);
    if secs < 0.0 {
        base - Duration::from_secs_f64(-secs)
    } else {
        base + Duration::from_secs_f64(secs)
    }
}

fn pod(namespace: &str, name: &str, volumes: &[(&str, &[(SourceKind, &str)])]) -> PodMeta {
    PodMeta {
        namespace: namespace.to_owned(),
        name: name.to_owned(),
        workload: None,
        volumes: volumes
            .iter()
            .map(|(volume, sources)| {
                let sources = sources
                    .iter()
                    .map(|(kind, name)| VolumeSource::new(*kind, *name))
                    .collect();
                (volume.to_string(), sources)
            })
            .collect::<BTreeMap<_, _>>(),
        annotations: BTreeMap::new(),
    }
}

fn cm(namespace: &str, name: &str) -> ObjectRef {
    ObjectRef {
        kind: SourceKind::ConfigMap,
        namespace: namespace.to_owned(),
        name: name.to_owned(),
    }
}

fn secret(namespace: &str, name: &str) -> ObjectRef {
    ObjectRef {
        kind: SourceKind::Secret,
        ..cm(namespace, name)
    }
}

/// Two pods in `shop` and one in `billing`, each with a ConfigMap volume of
/// `app-settings` in its own namespace.
fn node_pods() -> HashMap<String, PodMeta> {
    let cfg: &[(SourceKind, &str)] = &[(SourceKind::ConfigMap, "app-settings")];
    HashMap::from([
        ("uid-a".to_owned(), pod("shop", "app-a", &[("cfg", cfg)])),
        ("uid-b".to_owned(), pod("shop", "app-b", &[("cfg", cfg)])),
        (
            "uid-c".to_owned(),
            pod("billing", "biller", &[("cfg", cfg)]),
        ),
    ])
}

fn histograms(p: &Propagation) -> BTreeMap<String, DelayHistogram> {
    p.histograms()
        .map(|(ns, h)| (ns.to_owned(), h.clone()))
        .collect()
}

/// One observation per listed bucket index.
fn counts(buckets: &[usize]) -> [u64; BUCKETS.len() + 1] {
    let mut counts = [0; BUCKETS.len() + 1];
    for &b in buckets {
        counts[b] += 1;
    }
    counts
}

#[test]
fn delay_in_its_bucket_and_namespace() {
    let pods = node_pods();
    let mut p = Propagation::default();
    p.object_changed(&cm("shop", "app-settings"), t(0.0), &pods);
    assert_eq!(p.pending_count(), 2, "the two shop pods, not billing's");
    p.swapped("uid-a", "cfg", t(3.2));
    p.swapped("uid-b", "cfg", t(0.05));
    assert_eq!(p.pending_count(), 0);
    let h = histograms(&p);
    assert_eq!(h.keys().collect::<Vec<_>>(), ["shop"]);
    // 3.2 s in (2.5, 5], 0.05 s in (0, 0.1].
    assert_eq!(h["shop"].counts(), counts(&[5, 0]));
    assert_eq!(h["shop"].count, 2);
    assert!((h["shop"].sum - 3.25).abs() < 1e-9);
    // A swap with nothing pending observes nothing.
    p.swapped("uid-c", "cfg", t(4.0));
    assert_eq!(histograms(&p), h);
}

#[test]
fn other_namespace_and_other_kind_ignored() {
    let pods = node_pods();
    let mut p = Propagation::default();
    p.object_changed(&cm("staging", "app-settings"), t(0.0), &pods);
    p.object_changed(&secret("shop", "app-settings"), t(0.0), &pods);
    p.object_changed(&cm("shop", "other"), t(0.0), &pods);
    assert_eq!(p.pending_count(), 0);
    p.object_changed(&cm("billing", "app-settings"), t(1.0), &pods);
    assert_eq!(p.pending_count(), 1);
    p.swapped("uid-c", "cfg", t(2.0));
    assert_eq!(histograms(&p)["billing"].counts(), counts(&[3]));
}

#[test]
fn first_change_not_on_the_node_sets_the_delay() {
    let pods = node_pods();
    let mut p = Propagation::new(Duration::from_secs(30));
    p.object_changed(&cm("shop", "app-settings"), t(0.0), &pods);
    p.object_changed(&cm("shop", "app-settings"), t(20.0), &pods);
    let pending = p.pending_past(t(40.0));
    assert_eq!(pending.len(), 2);
    assert!(pending.iter().all(|r| r.since == t(0.0)));
    p.swapped("uid-a", "cfg", t(45.0));
    // 45 s in (30, 60].
    assert_eq!(histograms(&p)["shop"].counts(), counts(&[9]));
    // After that swap, the next change counts from its own time.
    p.object_changed(&cm("shop", "app-settings"), t(100.0), &pods);
    p.swapped("uid-a", "cfg", t(101.0));
    assert_eq!(histograms(&p)["shop"].counts(), counts(&[9, 3]));
}

#[test]
fn swap_before_the_change_is_seen() {
    let pods = node_pods();
    let mut p = Propagation::default();
    // The kubelet swapped 4 s before the agent saw the change: delay 0.
    p.swapped("uid-a", "cfg", t(0.0));
    p.object_changed(&cm("shop", "app-settings"), t(4.0), &pods);
    assert_eq!(p.pending_past(t(1000.0)).len(), 1, "only app-b waits");
    assert_eq!(histograms(&p)["shop"].counts(), counts(&[0]));
    // That swap is taken: a second change waits for the next swap.
    p.object_changed(&cm("shop", "app-settings"), t(6.0), &pods);
    p.swapped("uid-a", "cfg", t(8.0));
    assert_eq!(histograms(&p)["shop"].counts(), counts(&[0, 4]));

    // The same, with the swap reported after the change was recorded.
    p.swapped("uid-b", "cfg", t(1.0));
    assert_eq!(histograms(&p)["shop"].count, 3, "app-b: paired, delay 0");
    assert_eq!(histograms(&p)["shop"].counts(), counts(&[0, 4, 0]));
    assert_eq!(p.pending_count(), 0);
}

#[test]
fn swap_long_before_the_change_is_not_its_swap() {
    let pods = node_pods();
    let mut p = Propagation::default();
    p.swapped("uid-a", "cfg", t(0.0));
    p.object_changed(&cm("shop", "app-settings"), t(10.5), &pods);
    assert_eq!(p.pending_count(), 2);
    // Reported late, 11 s before the change: still not its swap.
    p.swapped("uid-b", "cfg", t(-0.5));
    assert_eq!(p.pending_count(), 2);
    assert_eq!(histograms(&p).len(), 0);
    // Exactly the window before is paired.
    p.swapped("uid-b", "cfg", t(0.5));
    assert_eq!(p.pending_count(), 1);
}

#[test]
fn swap_reported_before_a_change_seen_earlier() {
    // The swap comes 2 s after the change, but its report is handled first.
    let pods = node_pods();
    let mut p = Propagation::default();
    p.swapped("uid-a", "cfg", t(2.0));
    p.object_changed(&cm("shop", "app-settings"), t(0.0), &pods);
    // 2 s in (1, 2.5].
    assert_eq!(histograms(&p)["shop"].counts(), counts(&[4]));
    assert!((histograms(&p)["shop"].sum - 2.0).abs() < 1e-9);
}

#[test]
fn out_of_order_swap_reports_keep_the_latest() {
    let pods = node_pods();
    let mut p = Propagation::default();
    p.swapped("uid-a", "cfg", t(30.0));
    p.swapped("uid-a", "cfg", t(0.0));
    p.object_changed(&cm("shop", "app-settings"), t(35.0), &pods);
    assert_eq!(histograms(&p)["shop"].counts(), counts(&[0]));
}

#[test]
fn pending_past_the_timeout() {
    let mut pods = node_pods();
    let cfg: &[(SourceKind, &str)] = &[(SourceKind::ConfigMap, "app-settings")];
    pods.insert(
        "uid-d".to_owned(),
        pod("shop", "app-0", &[("cfg", cfg), ("cfg-copy", cfg)]),
    );
    let mut p = Propagation::new(Duration::from_secs(60));
    assert_eq!(p.timeout(), Duration::from_secs(60));
    p.object_changed(&cm("shop", "app-settings"), t(0.0), &pods);
    p.object_changed(&cm("billing", "app-settings"), t(10.0), &pods);
    assert!(p.pending_past(t(59.9)).is_empty());
    let at_60: Vec<_> = p
        .pending_past(t(60.0))
        .into_iter()
        .map(|r| (r.namespace, r.pod, r.volume))
        .collect();
    let shop = |pod: &str, volume: &str| ("shop".to_owned(), pod.to_owned(), volume.to_owned());
    assert_eq!(
        at_60,
        [
            shop("app-0", "cfg"),
            shop("app-0", "cfg-copy"),
            shop("app-a", "cfg"),
            shop("app-b", "cfg"),
        ]
    );
    let all = p.pending_past(t(70.0));
    assert_eq!(all.len(), 5);
    assert_eq!(
        all[0],
        PendingRef {
            namespace: "billing".to_owned(),
            pod: "biller".to_owned(),
            volume: "cfg".to_owned(),
            pod_uid: "uid-c".to_owned(),
            since: t(10.0),
            object: cm("billing", "app-settings"),
        }
    );
    // A late swap still resolves and observes the whole delay.
    p.swapped("uid-c", "cfg", t(700.0));
    assert_eq!(histograms(&p)["billing"].counts(), counts(&[BUCKETS.len()]));
    assert_eq!(p.pending_past(t(1000.0)).len(), 4);
    assert_eq!(Propagation::default().timeout(), DEFAULT_TIMEOUT);
}

#[test]
fn pods_gone() {
    let mut pods = node_pods();
    let mut p = Propagation::default();
    p.object_changed(&cm("shop", "app-settings"), t(0.0), &pods);
    p.object_changed(&cm("billing", "app-settings"), t(0.0), &pods);
    p.swapped("uid-a", "cfg", t(1.0));
    let observed = histograms(&p);
    p.pod_gone("uid-b");
    assert_eq!(p.pending_count(), 1, "billing's pod is left");
    pods.remove("uid-c");
    p.retain_pods(&pods);
    assert_eq!(p.pending_count(), 0);
    assert!(p.pending_past(t(1000.0)).is_empty());
    assert_eq!(histograms(&p), observed, "histograms are counters");
    // A pod that comes back under the same uid starts clean.
    p.swapped("uid-b", "cfg", t(2.0));
    assert_eq!(histograms(&p), observed);
}

#[test]
fn projected_volumes() {
    let api_access: &[(SourceKind, &str)] = &[
        (SourceKind::ServiceAccountToken, ""),
        (SourceKind::ConfigMap, "kube-root-ca.crt"),
        (SourceKind::DownwardApi, ""),
    ];
    let bundle: &[(SourceKind, &str)] = &[
        (SourceKind::ConfigMap, "app-settings"),
        (SourceKind::Secret, "app-tls"),
    ];
    let pods = HashMap::from([(
        "uid-a".to_owned(),
        pod(
            "shop",
            "app-a",
            &[("kube-api-access-5p7lm", api_access), ("bundle", bundle)],
        ),
    )]);
    let mut p = Propagation::default();
    p.object_changed(&secret("shop", "app-tls"), t(0.0), &pods);
    p.object_changed(&cm("shop", "kube-root-ca.crt"), t(1.0), &pods);
    let pending: Vec<_> = p
        .pending_past(t(1000.0))
        .into_iter()
        .map(|r| (r.volume, r.object))
        .collect();
    assert_eq!(
        pending,
        [
            ("bundle".to_owned(), secret("shop", "app-tls")),
            (
                "kube-api-access-5p7lm".to_owned(),
                cm("shop", "kube-root-ca.crt")
            ),
        ]
    );
    // The ConfigMap of the bundle changes too: one swap carries both.
    p.object_changed(&cm("shop", "app-settings"), t(2.0), &pods);
    p.swapped("uid-a", "bundle", t(1.5));
    assert_eq!(histograms(&p)["shop"].counts(), counts(&[4]));
    assert_eq!(p.pending_count(), 1);
}

#[test]
fn histogram_buckets() {
    let mut h = DelayHistogram::default();
    for seconds in [0.0, 0.1, 0.1001, 1.0, 600.0, 600.5, 3600.0] {
        h.observe(seconds);
    }
    assert_eq!(h.counts(), counts(&[0, 0, 1, 3, 14, 15, 15]));
    assert_eq!(h.count, 7);
    let cumulative = h.cumulative();
    assert_eq!(cumulative[0], 2);
    assert_eq!(cumulative[3], 4);
    assert_eq!(cumulative[BUCKETS.len()], h.count);
    assert!(BUCKETS.windows(2).all(|w| w[0] < w[1]));
    assert_eq!((BUCKETS[0], BUCKETS[BUCKETS.len() - 1]), (0.1, 600.0));
}

fn entry(manager: &str, time: Option<&str>, fields: Option<Value>) -> ManagedFieldsEntry {
    let mut value = json!({
        "manager": manager,
        "operation": "Update",
        "apiVersion": "v1",
        "fieldsType": "FieldsV1",
    });
    if let Some(time) = time {
        value["time"] = json!(time);
    }
    if let Some(fields) = fields {
        value["fieldsV1"] = fields;
    }
    serde_json::from_value(value).unwrap()
}

/// The ConfigMap's managedFields after `kubectl apply` at 10:00, as the API returns
/// them.
fn applied() -> ManagedFieldsEntry {
    entry(
        "kubectl-client-side-apply",
        Some("2026-07-01T10:00:00Z"),
        Some(json!({
            "f:data": {".": {}, "f:app.yaml": {}},
            "f:metadata": {"f:annotations": {".": {}, "f:kubectl.kubernetes.io/last-applied-configuration": {}}},
        })),
    )
}

fn labelled(time: &str) -> ManagedFieldsEntry {
    entry(
        "kubectl-label",
        Some(time),
        Some(json!({"f:metadata": {"f:labels": {".": {}, "f:tier": {}}}})),
    )
}

#[test]
fn metadata_only_changes() {
    // `kubectl label` after the apply: no data written.
    assert!(!data_changed(&[
        applied(),
        labelled("2026-07-01T10:05:00Z")
    ]));
    // The apply again, after the label: data.
    let mut reapplied = applied();
    reapplied.time = labelled("2026-07-01T10:06:00Z").time;
    assert!(data_changed(&[labelled("2026-07-01T10:05:00Z"), reapplied]));
    // Both in the same second: cannot tell which came last.
    assert!(data_changed(&[applied(), labelled("2026-07-01T10:00:00Z")]));
    // binaryData and stringData are data too.
    for field in ["f:binaryData", "f:stringData"] {
        let e = entry(
            "operator",
            Some("2026-07-01T10:07:00Z"),
            Some(json!({ field: {"f:k": {}} })),
        );
        assert!(data_changed(&[applied(), e]), "{field}");
    }
}

#[test]
fn unknown_counts_as_changed() {
    assert!(data_changed(&[]));
    assert!(data_changed(&[entry(
        "old-client",
        None,
        Some(json!({"f:metadata": {}}))
    )]));
    // Entries without a time are passed over when others have one.
    assert!(!data_changed(&[
        entry("old-client", None, Some(json!({"f:data": {}}))),
        labelled("2026-07-01T10:05:00Z"),
    ]));
    assert!(data_changed(&[
        applied(),
        entry("operator", Some("2026-07-01T10:07:00Z"), None),
    ]));
    assert!(data_changed(&[
        applied(),
        entry(
            "operator",
            Some("2026-07-01T10:07:00Z"),
            Some(json!("not a set"))
        ),
    ]));
}
