//! Pods as the API returns them, reduced to what the metrics need: each volume's
//! sources and the owning workload; and the `reloadscope.dev/` annotations, which ask
//! for reload signals.
//!
//! Everything here is read from the pod object alone: no ReplicaSet, Job or CronJob is
//! fetched, so the agent's RBAC stays `get/list/watch` on pods (and metadata of
//! ConfigMaps and Secrets). The owner rules below say what that costs.

use std::collections::BTreeMap;

use k8s_openapi::{
    api::core::v1::{Pod, Volume, VolumeProjection},
    apimachinery::pkg::apis::meta::v1::{OwnerReference, Time},
};

#[cfg(test)]
mod tests;

/// Where a volume's files come from.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum SourceKind {
    ConfigMap,
    Secret,
    DownwardApi,
    ServiceAccountToken,
    ClusterTrustBundle,
}

impl SourceKind {
    /// The kind as the API spells it, the `source_kind` label value: `ConfigMap`,
    /// `Secret`, `DownwardAPI`, `ServiceAccountToken`, `ClusterTrustBundle`.
    pub const fn label(self) -> &'static str {
        match self {
            Self::ConfigMap => "ConfigMap",
            Self::Secret => "Secret",
            Self::DownwardApi => "DownwardAPI",
            Self::ServiceAccountToken => "ServiceAccountToken",
            Self::ClusterTrustBundle => "ClusterTrustBundle",
        }
    }
}

#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub struct VolumeSource {
    pub kind: SourceKind,
    /// The object's name; empty for downwardAPI and service-account tokens.
    pub name: String,
}

impl VolumeSource {
    pub fn new(kind: SourceKind, name: impl Into<String>) -> Self {
        Self {
            kind,
            name: name.into(),
        }
    }
}

/// The controller a pod belongs to, followed up through its ReplicaSet or Job.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Workload {
    /// Deployment, StatefulSet, DaemonSet, Job, CronJob, ReplicaSet, ...
    pub kind: String,
    pub name: String,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PodMeta {
    pub namespace: String,
    pub name: String,
    pub workload: Option<Workload>,
    /// Each volume's sources, by volume name; several for a projected volume.
    pub volumes: BTreeMap<String, Vec<VolumeSource>>,
    /// Its annotations under [`ANNOTATION_PREFIX`], the others left out.
    pub annotations: BTreeMap<String, String>,
}

/// The prefix of the annotations kept.
pub const ANNOTATION_PREFIX: &str = "reloadscope.dev/";

impl PodMeta {
    /// `source_kind` and `source_name` label values of one of its volumes.
    ///
    /// The volume's sources are sorted by kind as the API spells it, then by name (byte
    /// order), and exact duplicates are dropped. `source_kind` is their kinds joined
    /// with `,` and `source_name` their names joined with `,` in the same order: the
    /// n-th name belongs to the n-th kind, and a source without a name (downwardAPI,
    /// service-account token) leaves its place empty. A volume with one source is just
    /// that source's kind and name. The usual `kube-api-access-xxxxx` volume is
    /// `("ConfigMap,DownwardAPI,ServiceAccountToken", "kube-root-ca.crt,,")`. Object
    /// and signer names never hold a `,`, so the lists split back unambiguously.
    ///
    /// A volume that is not of these types (emptyDir, hostPath, PVC, ...), a projected
    /// volume with no known source, or an unknown volume: `("", "")`.
    pub fn source_labels(&self, volume: &str) -> (String, String) {
        let Some(sources) = self.volumes.get(volume) else {
            return (String::new(), String::new());
        };
        let mut sorted: Vec<(&str, &str)> = sources
            .iter()
            .map(|s| (s.kind.label(), s.name.as_str()))
            .collect();
        sorted.sort_unstable();
        sorted.dedup();
        let kinds: Vec<&str> = sorted.iter().map(|(kind, _)| *kind).collect();
        let names: Vec<&str> = sorted.iter().map(|(_, name)| *name).collect();
        (kinds.join(","), names.join(","))
    }

    /// Whether one of its volumes takes its files from this ConfigMap or Secret (the
    /// pod's own namespace is the caller's to check).
    pub fn references(&self, kind: SourceKind, name: &str) -> bool {
        self.volumes
            .values()
            .flatten()
            .any(|s| s.kind == kind && s.name == name)
    }
}

/// The pod's uid; None when it has none (or an empty one).
pub fn pod_uid(pod: &Pod) -> Option<&str> {
    non_empty(pod.metadata.uid.as_deref())
}

/// What the metrics need of a pod; None when it has no uid, namespace or name.
///
/// [`PodMeta::volumes`] holds, in `spec.volumes` order: a configMap volume as
/// `ConfigMap <name>`, a secret volume as `Secret <secretName>`, a downwardAPI volume as
/// `DownwardAPI ""`, and a projected volume as one source per entry of its `sources`
/// (configMap, secret, downwardAPI, `ServiceAccountToken ""`, and `ClusterTrustBundle
/// <name>`, or `<signerName>` when it selects bundles by signer). Volumes of other
/// types (emptyDir, hostPath, PVC, ...) are left out.
pub fn pod_meta(pod: &Pod) -> Option<PodMeta> {
    pod_uid(pod)?;
    let namespace = non_empty(pod.metadata.namespace.as_deref())?.to_owned();
    let name = non_empty(pod.metadata.name.as_deref())?.to_owned();
    let volumes = pod
        .spec
        .iter()
        .flat_map(|spec| spec.volumes.iter().flatten())
        .filter_map(|v| Some((v.name.clone(), volume_sources(v)?)))
        .collect();
    let annotations = (pod.metadata.annotations.iter().flatten())
        .filter(|(k, _)| k.starts_with(ANNOTATION_PREFIX))
        .map(|(k, v)| (k.clone(), v.clone()))
        .collect();
    Some(PodMeta {
        namespace,
        name,
        workload: workload(pod),
        volumes,
        annotations,
    })
}

fn non_empty(s: Option<&str>) -> Option<&str> {
    s.filter(|s| !s.is_empty())
}

/// The sources of a configMap, secret, downwardAPI or projected volume; None for any
/// other type.
fn volume_sources(v: &Volume) -> Option<Vec<VolumeSource>> {
    if let Some(cm) = &v.config_map {
        return Some(vec![VolumeSource::new(SourceKind::ConfigMap, &cm.name)]);
    }
    if let Some(secret) = &v.secret {
        let name = secret.secret_name.clone().unwrap_or_default();
        return Some(vec![VolumeSource::new(SourceKind::Secret, name)]);
    }
    if v.downward_api.is_some() {
        return Some(vec![VolumeSource::new(SourceKind::DownwardApi, "")]);
    }
    let projected = v.projected.as_ref()?;
    Some(
        projected
            .sources
            .iter()
            .flatten()
            .flat_map(projection_sources)
            .collect(),
    )
}

/// One projected source; the API allows one field per entry, all are read anyway.
/// Source types this API version does not know are skipped.
fn projection_sources(p: &VolumeProjection) -> Vec<VolumeSource> {
    let mut out = Vec::new();
    if let Some(cm) = &p.config_map {
        out.push(VolumeSource::new(SourceKind::ConfigMap, &cm.name));
    }
    if let Some(secret) = &p.secret {
        out.push(VolumeSource::new(SourceKind::Secret, &secret.name));
    }
    if p.downward_api.is_some() {
        out.push(VolumeSource::new(SourceKind::DownwardApi, ""));
    }
    if p.service_account_token.is_some() {
        out.push(VolumeSource::new(SourceKind::ServiceAccountToken, ""));
    }
    if let Some(ctb) = &p.cluster_trust_bundle {
        let name = ctb.name.as_ref().or(ctb.signer_name.as_ref());
        out.push(VolumeSource::new(
            SourceKind::ClusterTrustBundle,
            name.cloned().unwrap_or_default(),
        ));
    }
    out
}

/// A CronJob's Job is `<cronjob>-<scheduled time in minutes since the epoch>`, and its
/// pods are created at or after that time: within this long after it, the name is read
/// as a CronJob's.
pub const CRONJOB_PODS_WITHIN: i64 = 7 * 24 * 3600;
/// Clock skew allowed between the CronJob controller and the API server.
const CRONJOB_SKEW: i64 = 60;

/// The pod's workload, from its controller ownerReference alone (no other object is
/// read):
///
/// - no ownerReference with `controller: true` (a bare pod): None;
/// - a `Node` (`v1`), which is how the kubelet marks the mirror pod of a static pod:
///   None, a static pod has no workload;
/// - a `ReplicaSet` (`apps/...`) named `<deployment>-<hash>` where `<hash>` is the pod's
///   `pod-template-hash` label, as the Deployment controller names its ReplicaSets:
///   `Deployment <deployment>`; any other ReplicaSet: `ReplicaSet <name>`. A
///   ReplicaSet made by hand that follows the same naming passes for a Deployment's;
/// - a `Job` (`batch/...`) named `<cronjob>-<digits>`, 8 digits or more, where the
///   digits read as minutes since the Unix epoch are a time from
///   [`CRONJOB_PODS_WITHIN`] (7 days) before the pod's creationTimestamp to 60 s
///   after it, as the CronJob controller names its Jobs after their scheduled time:
///   `CronJob <cronjob>`; any other Job: `Job <name>`. Names with a Unix time in
///   seconds or milliseconds read as minutes fall far in the future and stay Jobs. A
///   CronJob's pod created more than 7 days after its schedule (a long Indexed Job)
///   is labelled with its Job; a hand-made Job named after a recent minute passes for
///   a CronJob's. A pod without a creationTimestamp stays with its Job;
/// - anything else (StatefulSet, DaemonSet, a custom controller): its kind and name.
pub fn workload(pod: &Pod) -> Option<Workload> {
    let owner = pod
        .metadata
        .owner_references
        .iter()
        .flatten()
        .find(|o| o.controller == Some(true))?;
    let group = owner.api_version.split_once('/').map_or("", |(g, _)| g);
    let (kind, name) = match (group, owner.kind.as_str()) {
        ("", "Node") => return None,
        ("apps", "ReplicaSet") => match deployment_of(owner, pod) {
            Some(deployment) => ("Deployment", deployment),
            None => ("ReplicaSet", owner.name.as_str()),
        },
        ("batch", "Job") => match cronjob_of(owner, pod.metadata.creation_timestamp.as_ref()) {
            Some(cronjob) => ("CronJob", cronjob),
            None => ("Job", owner.name.as_str()),
        },
        (_, kind) => (kind, owner.name.as_str()),
    };
    Some(Workload {
        kind: kind.to_owned(),
        name: name.to_owned(),
    })
}

/// The Deployment a ReplicaSet's name and the pod's `pod-template-hash` point to.
fn deployment_of<'a>(rs: &'a OwnerReference, pod: &Pod) -> Option<&'a str> {
    let hash = pod.metadata.labels.as_ref()?.get("pod-template-hash")?;
    let deployment = rs.name.strip_suffix(hash.as_str())?.strip_suffix('-')?;
    non_empty(Some(deployment))
}

/// The CronJob a Job's name points to, given its pod's creation time.
fn cronjob_of<'a>(job: &'a OwnerReference, created: Option<&Time>) -> Option<&'a str> {
    let (cronjob, digits) = job.name.rsplit_once('-')?;
    if cronjob.is_empty() || digits.len() < 8 || !digits.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    let scheduled = digits.parse::<i64>().ok()?.checked_mul(60)?;
    let created = created?.0.as_second();
    let after = created.checked_sub(scheduled)?;
    (-CRONJOB_SKEW..=CRONJOB_PODS_WITHIN)
        .contains(&after)
        .then_some(cronjob)
}
