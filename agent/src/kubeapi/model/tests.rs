use k8s_openapi::api::core::v1::Pod;
use serde_json::{Value, json};

use super::*;

fn pod(value: Value) -> Pod {
    serde_json::from_value(value).expect("a pod as the API returns it")
}

/// A pod as the API returns it, with these volumes, owners and labels.
fn api_pod(volumes: Value, owners: Value, labels: Value) -> Pod {
    pod(json!({
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {
            "name": "app-7d9c5b6f48-x2kqz",
            "namespace": "shop",
            "uid": "6f1c2a9e-0b7d-4c1e-9a55-3f0d2b8e7c11",
            "resourceVersion": "482913",
            "creationTimestamp": "2026-07-01T10:00:07Z",
            "labels": labels,
            "ownerReferences": owners,
        },
        "spec": {
            "nodeName": "node-1",
            "containers": [{"name": "app", "image": "registry.example/app:1.4"}],
            "volumes": volumes,
        },
        "status": {"phase": "Running"},
    }))
}

fn volumes_pod(volumes: Value) -> PodMeta {
    pod_meta(&api_pod(volumes, json!([]), json!({}))).unwrap()
}

fn owned_by(api_version: &str, kind: &str, name: &str, labels: Value) -> Option<Workload> {
    let owners = json!([{
        "apiVersion": api_version,
        "kind": kind,
        "name": name,
        "uid": "0c8e6d3a-5b2f-4e61-8d7c-1a9b3e5f7d20",
        "controller": true,
        "blockOwnerDeletion": true,
    }]);
    pod_meta(&api_pod(json!([]), owners, labels))
        .unwrap()
        .workload
}

fn workload(kind: &str, name: &str) -> Option<Workload> {
    Some(Workload {
        kind: kind.to_owned(),
        name: name.to_owned(),
    })
}

fn labels(kind: &str, name: &str) -> (String, String) {
    (kind.to_owned(), name.to_owned())
}

#[test]
fn configmap_volume() {
    let meta = volumes_pod(json!([{
        "name": "app-config",
        "configMap": {"name": "app-settings", "defaultMode": 420},
    }]));
    assert_eq!(meta.namespace, "shop");
    assert_eq!(meta.name, "app-7d9c5b6f48-x2kqz");
    assert_eq!(
        meta.volumes["app-config"],
        [VolumeSource::new(SourceKind::ConfigMap, "app-settings")]
    );
    assert_eq!(
        meta.source_labels("app-config"),
        labels("ConfigMap", "app-settings")
    );
    assert!(meta.references(SourceKind::ConfigMap, "app-settings"));
    assert!(!meta.references(SourceKind::Secret, "app-settings"));
}

#[test]
fn secret_volume() {
    let meta = volumes_pod(json!([{
        "name": "tls",
        "secret": {
            "secretName": "app-tls",
            "items": [{"key": "tls.crt", "path": "cert.pem"}],
            "defaultMode": 256,
        },
    }]));
    assert_eq!(meta.source_labels("tls"), labels("Secret", "app-tls"));
}

#[test]
fn downward_api_volume() {
    let meta = volumes_pod(json!([{
        "name": "podinfo",
        "downwardAPI": {"items": [
            {"path": "labels", "fieldRef": {"apiVersion": "v1", "fieldPath": "metadata.labels"}},
        ]},
    }]));
    assert_eq!(
        meta.volumes["podinfo"],
        [VolumeSource::new(SourceKind::DownwardApi, "")]
    );
    assert_eq!(meta.source_labels("podinfo"), labels("DownwardAPI", ""));
}

#[test]
fn projected_service_account_volume() {
    // The volume the ServiceAccount admission plugin adds to every pod.
    let meta = volumes_pod(json!([{
        "name": "kube-api-access-5p7lm",
        "projected": {
            "defaultMode": 420,
            "sources": [
                {"serviceAccountToken": {"expirationSeconds": 3607, "path": "token"}},
                {"configMap": {"name": "kube-root-ca.crt", "items": [{"key": "ca.crt", "path": "ca.crt"}]}},
                {"downwardAPI": {"items": [{"path": "namespace", "fieldRef": {"apiVersion": "v1", "fieldPath": "metadata.namespace"}}]}},
            ],
        },
    }]));
    assert_eq!(
        meta.volumes["kube-api-access-5p7lm"],
        [
            VolumeSource::new(SourceKind::ServiceAccountToken, ""),
            VolumeSource::new(SourceKind::ConfigMap, "kube-root-ca.crt"),
            VolumeSource::new(SourceKind::DownwardApi, ""),
        ]
    );
    assert_eq!(
        meta.source_labels("kube-api-access-5p7lm"),
        labels(
            "ConfigMap,DownwardAPI,ServiceAccountToken",
            "kube-root-ca.crt,,"
        )
    );
}

#[test]
fn projected_sources_sorted_and_deduplicated() {
    let meta = volumes_pod(json!([{
        "name": "bundle",
        "projected": {"sources": [
            {"secret": {"name": "tls-b"}},
            {"configMap": {"name": "zeta", "items": [{"key": "a", "path": "a"}]}},
            {"secret": {"name": "tls-a"}},
            {"configMap": {"name": "zeta", "items": [{"key": "b", "path": "b"}]}},
            {"clusterTrustBundle": {"signerName": "example.com/issuer", "labelSelector": {}, "path": "ca.pem"}},
            {"clusterTrustBundle": {"name": "corp-roots", "path": "roots.pem"}},
        ]},
    }]));
    assert_eq!(meta.volumes["bundle"].len(), 6);
    assert_eq!(
        meta.source_labels("bundle"),
        labels(
            "ClusterTrustBundle,ClusterTrustBundle,ConfigMap,Secret,Secret",
            "corp-roots,example.com/issuer,zeta,tls-a,tls-b"
        )
    );
}

#[test]
fn other_volume_types_are_left_out() {
    let meta = volumes_pod(json!([
        {"name": "scratch", "emptyDir": {}},
        {"name": "logs", "hostPath": {"path": "/var/log", "type": "Directory"}},
        {"name": "data", "persistentVolumeClaim": {"claimName": "data-0"}},
        {"name": "empty", "projected": {"sources": []}},
        {"name": "cfg", "configMap": {"name": "app-settings"}},
    ]));
    assert_eq!(
        meta.volumes.keys().collect::<Vec<_>>(),
        ["cfg", "empty"],
        "only the configMap and the (empty) projected volume"
    );
    assert_eq!(meta.source_labels("empty"), labels("", ""));
    assert_eq!(meta.source_labels("scratch"), labels("", ""));
    assert_eq!(meta.source_labels("no-such-volume"), labels("", ""));
}

#[test]
fn deployment_through_its_replicaset() {
    let by_hash = json!({"app": "shop", "pod-template-hash": "7d9c5b6f48"});
    assert_eq!(
        owned_by("apps/v1", "ReplicaSet", "app-7d9c5b6f48", by_hash.clone()),
        workload("Deployment", "app")
    );
    // A dashed Deployment name keeps its dashes.
    assert_eq!(
        owned_by(
            "apps/v1",
            "ReplicaSet",
            "web-front-7d9c5b6f48",
            by_hash.clone()
        ),
        workload("Deployment", "web-front")
    );
    // The name does not end in the pod's hash: a ReplicaSet of its own.
    assert_eq!(
        owned_by("apps/v1", "ReplicaSet", "app-5f6b8c9d7", by_hash),
        workload("ReplicaSet", "app-5f6b8c9d7")
    );
    assert_eq!(
        owned_by(
            "apps/v1",
            "ReplicaSet",
            "app-7d9c5b6f48",
            json!({"app": "shop"})
        ),
        workload("ReplicaSet", "app-7d9c5b6f48")
    );
    // The hash alone is no Deployment name.
    assert_eq!(
        owned_by(
            "apps/v1",
            "ReplicaSet",
            "7d9c5b6f48",
            json!({"pod-template-hash": "7d9c5b6f48"})
        ),
        workload("ReplicaSet", "7d9c5b6f48")
    );
}

#[test]
fn statefulset_and_daemonset_as_they_are() {
    assert_eq!(
        owned_by("apps/v1", "StatefulSet", "db", json!({})),
        workload("StatefulSet", "db")
    );
    assert_eq!(
        owned_by("apps/v1", "DaemonSet", "node-exporter", json!({})),
        workload("DaemonSet", "node-exporter")
    );
    assert_eq!(
        owned_by("argoproj.io/v1alpha1", "Rollout", "canary", json!({})),
        workload("Rollout", "canary")
    );
}

#[test]
fn job_and_cronjob() {
    // 29715000 minutes since the epoch is 2026-07-01T10:00:00Z; the pod was created at
    // 10:00:07.
    assert_eq!(
        owned_by("batch/v1", "Job", "nightly-report-29715000", json!({})),
        workload("CronJob", "nightly-report")
    );
    assert_eq!(
        owned_by("batch/v1", "Job", "db-migrate", json!({})),
        workload("Job", "db-migrate")
    );
    // Fewer than 8 digits, a Unix time in seconds (far future as minutes), an old
    // number (1993 as minutes), a minute after the pod's creation: Jobs.
    for name in [
        "db-migrate-42",
        "backup-1782900000",
        "build-12345678",
        "late-29715002",
        "-29715000",
    ] {
        assert_eq!(
            owned_by("batch/v1", "Job", name, json!({})),
            workload("Job", name)
        );
    }
}

#[test]
fn cronjob_needs_creation_within_a_week_of_its_schedule() {
    let at = |created: &str| {
        let mut p = api_pod(
            json!([]),
            json!([{"apiVersion": "batch/v1", "kind": "Job", "name": "sync-29715000",
                    "uid": "1", "controller": true}]),
            json!({}),
        );
        p.metadata.creation_timestamp = serde_json::from_value(json!(created)).unwrap();
        pod_meta(&p).unwrap().workload
    };
    assert_eq!(at("2026-07-01T09:59:30Z"), workload("CronJob", "sync"));
    assert_eq!(at("2026-07-08T09:59:59Z"), workload("CronJob", "sync"));
    assert_eq!(at("2026-07-08T10:00:01Z"), workload("Job", "sync-29715000"));
    assert_eq!(at("2026-07-01T09:58:59Z"), workload("Job", "sync-29715000"));
    let mut p = api_pod(
        json!([]),
        json!([{"apiVersion": "batch/v1", "kind": "Job", "name": "sync-29715000",
                "uid": "1", "controller": true}]),
        json!({}),
    );
    p.metadata.creation_timestamp = None;
    assert_eq!(
        pod_meta(&p).unwrap().workload,
        workload("Job", "sync-29715000")
    );
}

#[test]
fn bare_static_and_non_controller_owners() {
    let bare = api_pod(json!([]), json!(null), json!({}));
    assert_eq!(pod_meta(&bare).unwrap().workload, None);
    // The mirror pod of a static pod, as the kubelet posts it.
    assert_eq!(owned_by("v1", "Node", "node-1", json!({})), None);
    // An owner that is not the controller is no workload.
    let not_controller = api_pod(
        json!([]),
        json!([{"apiVersion": "apps/v1", "kind": "StatefulSet", "name": "db", "uid": "1"}]),
        json!({}),
    );
    assert_eq!(pod_meta(&not_controller).unwrap().workload, None);
    // The controller among several owners.
    let several = api_pod(
        json!([]),
        json!([
            {"apiVersion": "v1", "kind": "ConfigMap", "name": "x", "uid": "1", "controller": false},
            {"apiVersion": "apps/v1", "kind": "DaemonSet", "name": "agent", "uid": "2", "controller": true},
        ]),
        json!({}),
    );
    assert_eq!(
        pod_meta(&several).unwrap().workload,
        workload("DaemonSet", "agent")
    );
    // Kinds of other API groups are taken as they are, never inferred through.
    assert_eq!(
        owned_by(
            "example.com/v1",
            "ReplicaSet",
            "app-7d9c5b6f48",
            json!({"pod-template-hash": "7d9c5b6f48"})
        ),
        workload("ReplicaSet", "app-7d9c5b6f48")
    );
}

#[test]
fn pod_missing_fields() {
    let full = json!({
        "metadata": {"name": "p", "namespace": "ns", "uid": "u-1"},
    });
    let meta = pod_meta(&pod(full)).expect("uid, namespace and name are enough");
    assert!(meta.volumes.is_empty());
    assert_eq!(meta.workload, None);

    for missing in ["name", "namespace", "uid"] {
        let mut value = json!({"metadata": {"name": "p", "namespace": "ns", "uid": "u-1"}});
        value["metadata"].as_object_mut().unwrap().remove(missing);
        let p = pod(value.clone());
        assert_eq!(pod_meta(&p), None, "without {missing}");
        value["metadata"][missing] = json!("");
        assert_eq!(pod_meta(&pod(value)), None, "with an empty {missing}");
    }

    let p = pod(json!({"metadata": {"uid": "u-1"}}));
    assert_eq!(pod_uid(&p), Some("u-1"));
    assert_eq!(pod_uid(&pod(json!({"metadata": {}}))), None);

    // A secret volume without its secretName still says it is a Secret.
    let meta = volumes_pod(json!([{"name": "s", "secret": {}}]));
    assert_eq!(meta.source_labels("s"), labels("Secret", ""));
}

/// Only the `reloadscope.dev/` annotations are kept: a pod's others (last-applied
/// configurations, checksums) can be large and say nothing to the agent.
#[test]
fn only_the_agents_annotations_are_kept() {
    let p = pod(json!({"metadata": {
        "name": "p", "namespace": "ns", "uid": "u-1",
        "annotations": {
            "reloadscope.dev/reload-signal": "SIGHUP",
            "reloadscope.dev/reload-containers": "app",
            "kubectl.kubernetes.io/last-applied-configuration": "{}",
            "example.com/reloadscope.dev/x": "y",
        },
    }}));
    let meta = pod_meta(&p).unwrap();
    let kept: Vec<(&str, &str)> = (meta.annotations.iter())
        .map(|(k, v)| (k.as_str(), v.as_str()))
        .collect();
    assert_eq!(
        kept,
        [
            ("reloadscope.dev/reload-containers", "app"),
            ("reloadscope.dev/reload-signal", "SIGHUP"),
        ]
    );
    assert!(
        pod_meta(&pod(
            json!({"metadata": {"name": "p", "namespace": "ns", "uid": "u"}})
        ))
        .unwrap()
        .annotations
        .is_empty()
    );
}
