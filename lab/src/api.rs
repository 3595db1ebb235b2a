//! The lab's Kubernetes API: the test API server holding the lab pods and the objects
//! their volumes come from. Before each swap of a ConfigMap or Secret volume the lab
//! edits the object on the API, as a user would, so the agent measures propagation
//! delays; one ConfigMap per pod (`flags`) changes on the API and is never swapped,
//! a kubelet stuck on it, so it ends pending. The pods ask for reload signals
//! ([`SIGNALLED`]), which an agent with `--reload-signals` sends.

use std::{
    path::PathBuf,
    time::{Duration, SystemTime},
};

use anyhow::Context as _;
use reloadscope::{kubeapi::Settings, node::volumes::VolumeType};
use serde_json::json;

use super::{
    LabPod,
    apiserver::{FakeApiServer, Resource},
    cluster,
};

/// The lab pods' reload-signal annotations: SIGHUP for the containers named, one
/// that reloads on it (`sighup-reloader`) and one that does not (`naive-modify`, so
/// the signal is seen not to help).
pub const SIGNALLED: [(&str, &str); 2] = [
    ("reloadscope.dev/reload-signal", "SIGHUP"),
    ("reloadscope.dev/reload-containers", "hup,naive"),
];

/// A volume the lab never swaps though its ConfigMap changes on the API.
pub const FROZEN: (VolumeType, &str) = (VolumeType::ConfigMap, "flags");

/// The object a lab volume comes from: `<pod>-<volume>` for ConfigMaps and Secrets,
/// none for projected and downwardAPI volumes.
pub fn object_name(pod: &LabPod, ty: VolumeType, volume: &str) -> String {
    match ty {
        VolumeType::ConfigMap | VolumeType::Secret => format!("{}-{volume}", pod.name),
        VolumeType::Projected | VolumeType::DownwardApi => String::new(),
    }
}

fn resource(ty: VolumeType) -> Option<(Resource, &'static str)> {
    match ty {
        VolumeType::ConfigMap => Some((Resource::ConfigMaps, "ConfigMap")),
        VolumeType::Secret => Some((Resource::Secrets, "Secret")),
        VolumeType::Projected | VolumeType::DownwardApi => None,
    }
}

pub struct LabApi {
    server: FakeApiServer,
    kubeconfig: PathBuf,
    frozen_changed: bool,
}

impl LabApi {
    /// Starts the server with `pods` and their `volumes` (type, name), the objects
    /// they hold (each with `revision: 0`) and the namespaces' kube-root-ca.crt; the
    /// kubeconfig goes to `dir`.
    pub async fn start(
        dir: &std::path::Path,
        pods: &[LabPod],
        volumes: &[(VolumeType, &str)],
    ) -> anyhow::Result<LabApi> {
        let server = FakeApiServer::start()
            .await
            .context("starting the lab's API server")?;
        let kubeconfig = dir.join("kubeconfig");
        server.write_kubeconfig(&kubeconfig)?;
        let now = SystemTime::now();
        let mut namespaces: Vec<&str> = pods.iter().map(|p| p.namespace.as_str()).collect();
        namespaces.dedup();
        for ns in namespaces {
            let ca = [("ca.crt", "lab CA")];
            let obj = cluster::object("ConfigMap", ns, cluster::ROOT_CA, &ca, now);
            server.create(Resource::ConfigMaps, obj)?;
        }
        for pod in pods {
            let names: Vec<(VolumeType, &str, String)> = volumes
                .iter()
                .map(|&(ty, v)| (ty, v, object_name(pod, ty, v)))
                .collect();
            for (ty, _, object) in &names {
                if let Some((res, kind)) = resource(*ty) {
                    let data = [("config.yaml", "revision: 0")];
                    let obj = cluster::object(kind, &pod.namespace, object, &data, now);
                    server.create(res, obj)?;
                }
            }
            let specs: Vec<(VolumeType, &str, &str)> = names
                .iter()
                .map(|(ty, v, o)| (*ty, *v, o.as_str()))
                .collect();
            let mut obj = cluster::pod(pod, &specs, now);
            obj["metadata"]["annotations"] = SIGNALLED
                .iter()
                .map(|(k, v)| ((*k).to_owned(), json!(v)))
                .collect::<serde_json::Map<_, _>>()
                .into();
            server.create(Resource::Pods, obj)?;
        }
        Ok(LabApi {
            server,
            kubeconfig,
            frozen_changed: false,
        })
    }

    /// The agent's API settings: the lab node, changes pending after `timeout`,
    /// Events for containers stale past `stale_after`.
    pub fn settings(&self, timeout: Duration, stale_after: Duration) -> Settings {
        Settings {
            kubeconfig: Some(self.kubeconfig.clone()),
            node_name: cluster::NODE_NAME.into(),
            propagation_timeout: timeout,
            emit_events: true,
            stale_after,
            namespaces: Vec::new(),
        }
    }

    /// Writes `body` into the object behind `pod`'s volume, as `kubectl edit` would:
    /// called just before the lab's kubelet swaps the volume.
    pub fn edit(
        &self,
        pod: &LabPod,
        ty: VolumeType,
        volume: &str,
        body: &str,
    ) -> anyhow::Result<()> {
        let Some((res, kind)) = resource(ty) else {
            return Ok(());
        };
        let value = if kind == "Secret" {
            json!(cluster::base64(body.as_bytes()))
        } else {
            json!(body)
        };
        let name = object_name(pod, ty, volume);
        self.server
            .update(res, &pod.namespace, &name, "kubectl-edit", |o| {
                o["data"]["config.yaml"] = value;
            })
            .with_context(|| format!("editing {kind} {}/{name}", pod.namespace))?;
        Ok(())
    }

    /// Changes every pod's frozen ConfigMap once (later calls do nothing).
    pub fn change_frozen(&mut self, pods: &[LabPod]) -> anyhow::Result<()> {
        if std::mem::replace(&mut self.frozen_changed, true) {
            return Ok(());
        }
        for pod in pods {
            self.edit(pod, FROZEN.0, FROZEN.1, "revision: 1 (never swapped)")?;
        }
        Ok(())
    }

    /// Events the agent posted.
    pub fn events_posted(&self) -> usize {
        self.server.posted_events().len()
    }

    pub fn url(&self) -> String {
        self.server.url()
    }
}
