//! The agent with a Kubernetes API: the lab's test API server, a kubeconfig for it, the
//! lab node's pods as API objects, and waits on the agent's API state.

use std::{
    collections::BTreeSet,
    net::SocketAddr,
    path::PathBuf,
    time::{Duration, Instant, SystemTime},
};

use reloadscope::{
    agent,
    agent::Running,
    kubeapi::{MetaState, Settings},
    node::volumes::VolumeType,
};
use reloadscope_lab::{
    self, CallStyle, LabNode, LabPod,
    apiserver::{FakeApiServer, RequestRecord, Resource, SentEvent},
    cluster, payload,
};
use serde_json::Value;

use super::{DEADLINE, KEY};

/// This node's name, as its pods' `spec.nodeName`.
pub const NODE: &str = cluster::NODE_NAME;

/// The test API server and a kubeconfig for it.
pub struct Api {
    pub server: FakeApiServer,
    pub kubeconfig: PathBuf,
    _dir: tempfile::TempDir,
}

impl Api {
    pub async fn start() -> Api {
        let server = FakeApiServer::start().await.expect("API server starts");
        let dir = tempfile::tempdir().unwrap();
        let kubeconfig = dir.path().join("kubeconfig");
        server.write_kubeconfig(&kubeconfig).unwrap();
        Api {
            server,
            kubeconfig,
            _dir: dir,
        }
    }

    /// API settings for this node: no Events, 300 s propagation timeout.
    pub fn settings(&self) -> Settings {
        Settings {
            kubeconfig: Some(self.kubeconfig.clone()),
            node_name: NODE.into(),
            propagation_timeout: Duration::from_secs(300),
            emit_events: false,
            stale_after: Duration::from_secs(600),
            namespaces: Vec::new(),
        }
    }

    /// Puts `pod` (a lab pod, or any pod shaped like one) on the API with `volumes`
    /// (type, volume name, object name).
    pub fn add_pod(&self, pod: &LabPod, volumes: &[(VolumeType, &str, &str)]) -> Value {
        let obj = cluster::pod(pod, volumes, SystemTime::now());
        self.server.create(Resource::Pods, obj).unwrap()
    }

    /// A ConfigMap or Secret (`kind`) with `data`.
    pub fn add_object(&self, kind: &str, namespace: &str, name: &str, data: &[(&str, &str)]) {
        let resource = match kind {
            "ConfigMap" => Resource::ConfigMaps,
            "Secret" => Resource::Secrets,
            other => panic!("no {other} here"),
        };
        let obj = cluster::object(kind, namespace, name, data, SystemTime::now());
        self.server.create(resource, obj).unwrap();
    }

    /// The requests of `resource` so far.
    pub fn requests(&self, resource: Resource) -> Vec<RequestRecord> {
        self.server
            .requests()
            .into_iter()
            .filter(|r| r.resource == Some(resource))
            .collect()
    }

    /// Lists (not watches) of `resource` answered so far.
    pub fn lists(&self, resource: Resource) -> usize {
        self.requests(resource)
            .iter()
            .filter(|r| r.is_list(resource) && r.status == 200)
            .count()
    }

    /// Waits until the server has written an event matching `f` on a watch.
    pub async fn wait_sent(&self, what: &str, f: impl Fn(&SentEvent) -> bool) -> SentEvent {
        let start = Instant::now();
        loop {
            if let Some(e) = self.server.sent().into_iter().find(|e| f(e)) {
                return e;
            }
            assert!(start.elapsed() < DEADLINE, "timed out waiting for {what}");
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    }
}

/// A pod that is not on the lab node's disk, only on the API.
pub fn api_only_pod(namespace: &str, name: &str, n: u32) -> LabPod {
    LabPod {
        uid: format!("00000000-0000-4000-8000-{n:012x}"),
        namespace: namespace.into(),
        name: name.into(),
    }
}

/// The agent on `node` with the API of `settings`: inotify alone and no reload
/// measurement, so that it needs no root.
pub fn config(node: &LabNode, settings: Settings) -> agent::Config {
    agent::Config {
        kube: Some(settings),
        reloads: false,
        ..reloadscope_lab::agent_config(node, false, SocketAddr::from(([127, 0, 0, 1], 0)))
    }
}

/// Waits until `cond` holds of the agent's API state; on timeout, panics naming
/// `what` and showing the state.
pub async fn wait_meta<T>(
    agent: &Running,
    what: &str,
    cond: impl Fn(&MetaState) -> Option<T>,
) -> T {
    let start = Instant::now();
    loop {
        {
            let m = agent.shared.meta.state.lock().unwrap();
            if let Some(v) = cond(&m) {
                return v;
            }
            if start.elapsed() >= DEADLINE {
                panic!("timed out waiting for {what}; the agent's API state: {m:#?}");
            }
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}

/// The uids of the pods the agent's API state holds.
pub fn pod_uids(m: &MetaState) -> BTreeSet<String> {
    m.pods.keys().cloned().collect()
}

/// The set of `pods`' uids.
pub fn uids<'a>(pods: impl IntoIterator<Item = &'a LabPod>) -> BTreeSet<String> {
    pods.into_iter().map(|p| p.uid.clone()).collect()
}

/// The lines of `logs` from the agent's API health (one API server's) that contain
/// `text`.
pub fn api_lines(logs: &[String], server: &FakeApiServer, text: &str) -> Vec<String> {
    logs.iter()
        .filter(|l| l.contains(&server.url()) && l.contains(text))
        .cloned()
        .collect()
}

/// A lab node with `shop/web-0` and its ConfigMap volume `app-config` (written once),
/// the same pod on the API with `volumes` (type, volume, object), the ConfigMap
/// `app-config` and the Secret `web-tls`; and the volume's writer.
pub async fn shop_lab(
    volumes: &[(VolumeType, &str, &str)],
) -> (Api, LabNode, LabPod, reloadscope_lab::AtomicWriter) {
    shop_lab_on(Api::start().await, volumes)
}

/// [`shop_lab`] on `api` as it is set up (its clock shifted, say).
pub fn shop_lab_on(
    api: Api,
    volumes: &[(VolumeType, &str, &str)],
) -> (Api, LabNode, LabPod, reloadscope_lab::AtomicWriter) {
    let mut node = LabNode::temp().unwrap();
    let pod = node.add_pod("shop", "web-0").unwrap();
    let w = node
        .add_volume(&pod, VolumeType::ConfigMap, "app-config")
        .unwrap();
    w.write(&payload(&[(KEY, "revision: 0")]), CallStyle::GoAt)
        .unwrap();
    api.add_pod(&pod, volumes);
    api.add_object("ConfigMap", "shop", "app-config", &[(KEY, "revision: 0")]);
    api.add_object(
        "Secret",
        "shop",
        "web-tls",
        &[("tls.key", "not for the agent")],
    );
    (api, node, pod, w)
}
