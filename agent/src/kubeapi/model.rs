//! Pods as the API returns them, reduced to what the metrics need: each volume's
//! sources and the owning workload.

use std::collections::BTreeMap;

/// Where a volume's files come from.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum SourceKind {
    ConfigMap,
    Secret,
    DownwardApi,
    ServiceAccountToken,
    ClusterTrustBundle,
}

#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub struct VolumeSource {
    pub kind: SourceKind,
    /// The object's name; empty for downwardAPI and service-account tokens.
    pub name: String,
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
}

impl PodMeta {
    /// `source_kind` and `source_name` label values of one of its volumes.
    pub fn source_labels(&self, _volume: &str) -> (String, String) {
        (String::new(), String::new())
    }
}
