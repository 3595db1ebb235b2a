//! The lab node's pods, ConfigMaps and Secrets as an API server returns them, for the
//! lab's test API server: pods of `NODE_NAME` owned by a StatefulSet, each lab volume
//! backed by the object the kubelet would take it from.

use std::time::SystemTime;

use reloadscope::node::volumes::VolumeType;
use serde_json::{Value, json};

use super::{LabPod, writer::civil_from_days};

/// The node the lab's pods run on (`spec.nodeName`).
pub const NODE_NAME: &str = "lab-node";
/// The lab pods' controller.
pub const OWNER: (&str, &str) = ("StatefulSet", "app");
/// The ConfigMap every projected service-account volume holds (kube-root-ca.crt).
pub const ROOT_CA: &str = "kube-root-ca.crt";

/// RFC 3339 in whole seconds, as the API writes timestamps.
pub fn timestamp(at: SystemTime) -> String {
    let secs = at
        .duration_since(SystemTime::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs() as i64);
    let (days, rem) = (secs.div_euclid(86_400), secs.rem_euclid(86_400));
    let (y, m, d) = civil_from_days(days);
    format!(
        "{y:04}-{m:02}-{d:02}T{:02}:{:02}:{:02}Z",
        rem / 3600,
        rem % 3600 / 60,
        rem % 60
    )
}

/// A pod volume's spec entry: `volume` named `name`, taken from `object`.
fn volume_spec(ty: VolumeType, name: &str, object: &str) -> Value {
    match ty {
        VolumeType::ConfigMap => json!({"name": name, "configMap": {"name": object}}),
        VolumeType::Secret => json!({"name": name, "secret": {"secretName": object}}),
        VolumeType::DownwardApi => json!({"name": name, "downwardAPI": {"items": [
            {"path": "labels", "fieldRef": {"apiVersion": "v1", "fieldPath": "metadata.labels"}},
        ]}}),
        VolumeType::Projected => json!({"name": name, "projected": {"sources": [
            {"serviceAccountToken": {"expirationSeconds": 3607, "path": "token"}},
            {"configMap": {"name": ROOT_CA, "items": [{"key": "ca.crt", "path": "ca.crt"}]}},
            {"downwardAPI": {"items": [{"path": "namespace", "fieldRef":
                {"apiVersion": "v1", "fieldPath": "metadata.namespace"}}]}},
        ], "defaultMode": 420}}),
    }
}

/// `pod` as the API returns it, with `volumes` (type, volume name, object name).
pub fn pod(pod: &LabPod, volumes: &[(VolumeType, &str, &str)], created: SystemTime) -> Value {
    let specs: Vec<Value> = volumes
        .iter()
        .map(|(ty, name, object)| volume_spec(*ty, name, object))
        .collect();
    let mounts: Vec<Value> = volumes
        .iter()
        .map(|(_, name, _)| json!({"name": name, "mountPath": format!("/etc/{name}")}))
        .collect();
    json!({
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {
            "name": pod.name,
            "namespace": pod.namespace,
            "uid": pod.uid,
            "creationTimestamp": timestamp(created),
            "labels": {"app": OWNER.1, "apps.kubernetes.io/pod-index": "0"},
            "ownerReferences": [{
                "apiVersion": "apps/v1", "kind": OWNER.0, "name": OWNER.1,
                "uid": "5f0c4d1e-0000-4000-8000-00000000a990",
                "controller": true, "blockOwnerDeletion": true,
            }],
        },
        "spec": {
            "nodeName": NODE_NAME,
            "containers": [{"name": "app", "image": "lab", "volumeMounts": mounts}],
            "volumes": specs,
        },
        "status": {"phase": "Running"},
    })
}

/// A managedFields entry for a write at `at` that touched `fields` (`f:data`, ...).
pub fn managed_field(manager: &str, fields: Value, at: SystemTime) -> Value {
    json!({
        "manager": manager, "operation": "Update", "apiVersion": "v1",
        "time": timestamp(at), "fieldsType": "FieldsV1", "fieldsV1": fields,
    })
}

/// A ConfigMap (`kind` "ConfigMap") or Secret (`kind` "Secret", data base64) holding
/// `data`, last written at `at` by an update of its data.
pub fn object(
    kind: &str,
    namespace: &str,
    name: &str,
    data: &[(&str, &str)],
    at: SystemTime,
) -> Value {
    let fields: serde_json::Map<String, Value> = data
        .iter()
        .map(|(k, _)| (format!("f:{k}"), json!({})))
        .collect();
    let values: serde_json::Map<String, Value> = data
        .iter()
        .map(|(k, v)| {
            let v = if kind == "Secret" {
                base64(v.as_bytes())
            } else {
                (*v).to_owned()
            };
            ((*k).to_owned(), json!(v))
        })
        .collect();
    json!({
        "apiVersion": "v1",
        "kind": kind,
        "metadata": {
            "name": name,
            "namespace": namespace,
            "uid": uid_of(namespace, name, kind),
            "creationTimestamp": timestamp(at),
            "managedFields": [managed_field("kubectl-edit", json!({"f:data": fields}), at)],
        },
        "data": values,
    })
}

/// A stable uid per object, UUID-shaped.
fn uid_of(namespace: &str, name: &str, kind: &str) -> String {
    use std::hash::{DefaultHasher, Hash, Hasher};
    let mut h = DefaultHasher::new();
    (namespace, name, kind).hash(&mut h);
    let x = h.finish();
    format!(
        "{:08x}-{:04x}-4{:03x}-8{:03x}-{:012x}",
        x >> 32,
        (x >> 16) & 0xffff,
        x & 0xfff,
        (x >> 4) & 0xfff,
        x & 0xffff_ffff_ffff
    )
}

pub fn base64(bytes: &[u8]) -> String {
    const ALPHABET: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let mut out = String::new();
    for chunk in bytes.chunks(3) {
        let b = [
            chunk[0],
            *chunk.get(1).unwrap_or(&0),
            *chunk.get(2).unwrap_or(&0),
        ];
        let n = (u32::from(b[0]) << 16) | (u32::from(b[1]) << 8) | u32::from(b[2]);
        for i in 0..4 {
            if i <= chunk.len() {
                out.push(ALPHABET[(n >> (18 - 6 * i) & 63) as usize] as char);
            } else {
                out.push('=');
            }
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;

    #[test]
    fn timestamps_are_rfc3339_utc() {
        let at = SystemTime::UNIX_EPOCH + Duration::from_secs(1_795_638_694);
        assert_eq!(timestamp(at), "2026-11-25T20:31:34Z");
        assert_eq!(timestamp(SystemTime::UNIX_EPOCH), "1970-01-01T00:00:00Z");
        let leap = SystemTime::UNIX_EPOCH + Duration::from_secs(951_782_400);
        assert_eq!(timestamp(leap), "2000-02-29T00:00:00Z");
    }

    #[test]
    fn secret_data_is_base64() {
        assert_eq!(base64(b"revision: 1"), "cmV2aXNpb246IDE=");
        assert_eq!(base64(b"ab"), "YWI=");
        assert_eq!(base64(b"abc"), "YWJj");
    }

    #[test]
    fn a_lab_pod_parses_as_a_pod_with_its_sources_and_owner() {
        let lab = LabPod {
            uid: "0b7c1f9e-1d2a-4c3b-9e8f-7a6b5c4d3e2f".into(),
            namespace: "lab".into(),
            name: "app-0".into(),
        };
        let value = pod(
            &lab,
            &[
                (VolumeType::ConfigMap, "app-config", "app-config"),
                (VolumeType::Projected, "kube-api-access", ""),
            ],
            SystemTime::now(),
        );
        let parsed: k8s_openapi::api::core::v1::Pod = serde_json::from_value(value).unwrap();
        let meta = reloadscope::kubeapi::model::pod_meta(&parsed).unwrap();
        assert_eq!(meta.name, "app-0");
        assert_eq!(
            meta.workload.as_ref().map(|w| w.kind.as_str()),
            Some("StatefulSet")
        );
        assert_eq!(
            meta.source_labels("app-config"),
            ("ConfigMap".to_owned(), "app-config".to_owned())
        );
        assert!(meta.references(reloadscope::kubeapi::SourceKind::ConfigMap, ROOT_CA));
    }
}
