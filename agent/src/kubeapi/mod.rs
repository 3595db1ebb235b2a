//! What the Kubernetes API adds to the names found on the node: each volume's source
//! (ConfigMap, Secret, downwardAPI, service-account token), each pod's owning workload,
//! and the delay from a ConfigMap or Secret change seen on the API to the kubelet's swap
//! on this node. Optional: without an API the agent runs on on-node names alone.
//!
//! - [`model`]: pods as the API returns them, reduced to what the metrics need.
//! - [`propagation`]: pending changes and their delays, a pure state machine.
//! - The watchers that fill it (this node's pods; ConfigMap and Secret metadata) and
//!   the Events are the task [`crate::apiclient`]'s.

pub mod model;
pub mod propagation;

use std::{collections::HashMap, path::PathBuf, sync::Mutex, time::Duration};

pub use model::{PodMeta, SourceKind, VolumeSource, Workload};

/// How to reach the API and what to do with it (`agent` flags).
#[derive(Clone, Debug)]
pub struct Settings {
    /// A kubeconfig file; None: in-cluster config, else `$KUBECONFIG` / `~/.kube/config`.
    pub kubeconfig: Option<PathBuf>,
    /// This node's name: only its pods are watched.
    pub node_name: String,
    /// A change not swapped on this node within this time is pending.
    pub propagation_timeout: Duration,
    /// Post `StaleVolumeReload` Events on pods whose consumers stay stale.
    pub emit_events: bool,
    /// How long a consumer is stale before an Event is posted.
    pub stale_after: Duration,
    /// Namespaces whose ConfigMaps and Secrets are watched; empty: all.
    pub namespaces: Vec<String>,
}

/// Shared between the API watchers, the state loop and the scrapes.
///
/// Lock order: `state` is taken last. The state loop takes it while holding the
/// tracker and reloads locks, so code holding it never takes another lock.
#[derive(Debug, Default)]
pub struct Meta {
    pub state: Mutex<MetaState>,
}

#[derive(Debug, Default)]
pub struct MetaState {
    /// An API is configured: `reloadscope_kube_api_up` is exported.
    pub configured: bool,
    /// The last list or watch call succeeded.
    pub api_up: bool,
    /// This node's pods, by uid.
    pub pods: HashMap<String, PodMeta>,
    pub propagation: propagation::Propagation,
}

impl MetaState {
    /// `source_kind` and `source_name` label values of a pod's volume; empty when unknown.
    pub fn source_labels(&self, pod_uid: &str, volume: &str) -> (String, String) {
        self.pods
            .get(pod_uid)
            .map(|p| p.source_labels(volume))
            .unwrap_or_default()
    }

    /// `workload_kind` and `workload` label values of a pod; empty when unknown.
    pub fn workload(&self, pod_uid: &str) -> (&str, &str) {
        match self.pods.get(pod_uid).and_then(|p| p.workload.as_ref()) {
            Some(w) => (w.kind.as_str(), w.name.as_str()),
            None => ("", ""),
        }
    }
}
