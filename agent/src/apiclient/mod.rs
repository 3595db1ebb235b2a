//! The Kubernetes API client task, filling [`crate::kubeapi`]'s view: this node's pods (a `spec.nodeName` field selector) reflected into
//! `MetaState::pods`, ConfigMap and Secret metadata for the propagation delay, and the
//! `StaleVolumeReload` Events.
//!
//! - The client comes from `--kubeconfig`, else the in-cluster config, else
//!   `$KUBECONFIG` / `~/.kube/config` (`kube::Config::infer`); `http://` servers work.
//! - ConfigMaps and Secrets are asked for as metadata only (`PartialObjectMetadata`):
//!   Secret data is never fetched. All namespaces, or one watch per namespace of
//!   `--namespaces`.
//! - `reloadscope_kube_api_up` (`health`) is 1 while every watch's last list or watch
//!   succeeded; an error sets it to 0, logged once with the error, and its watcher
//!   starts over (a relist) after an exponential backoff from 0.5 s to 30 s. Nothing
//!   of an object's contents is logged; names only, at debug level.

mod events;
mod health;
mod watch;

use std::sync::Arc;

use k8s_openapi::api::core::v1::{ConfigMap, Pod, Secret};
use kube::{
    Api, Client,
    api::PartialObjectMeta,
    config::{KubeConfigOptions, Kubeconfig},
};
use tokio::{sync::watch as signal, task::JoinHandle};
use tracing::debug;

use self::{
    health::{Backoff, Health},
    watch::{ObjectVersions, PodReflector, watch_loop},
};
use crate::{
    kubeapi::{Settings, SourceKind, propagation::Propagation},
    state::Shared,
};

/// The part of the health that is the client itself (its config).
const CLIENT: &str = "client";

/// Starts watching the API; the task ends when `stop` turns true.
pub fn spawn(
    settings: Settings,
    shared: Arc<Shared>,
    stop: signal::Receiver<bool>,
) -> JoinHandle<()> {
    tokio::spawn(run(settings, shared, stop))
}

async fn run(settings: Settings, shared: Arc<Shared>, stop: signal::Receiver<bool>) {
    shared.meta.state.lock().expect("meta lock").propagation =
        Propagation::new(settings.propagation_timeout);
    let health = Arc::new(Health::new(shared.clone()));
    let Some(client) = connect(&settings, &health, stop.clone()).await else {
        return;
    };
    let mut tasks = tokio::task::JoinSet::new();

    health.register("pods", false);
    let config = watch::config().fields(&format!("spec.nodeName={}", settings.node_name));
    let pods = Api::<Pod>::all(client.clone());
    let (h, s) = (health.clone(), stop.clone());
    let mut reflector = PodReflector::new(shared.clone());
    tasks.spawn(async move {
        watch_loop(pods, config, "pods", &h, s, |ev| reflector.apply(ev)).await;
    });

    let scopes: Vec<Option<String>> = if settings.namespaces.is_empty() {
        vec![None]
    } else {
        settings.namespaces.iter().cloned().map(Some).collect()
    };
    for ns in scopes {
        let (cm, secret) = match &ns {
            None => (
                Api::<PartialObjectMeta<ConfigMap>>::all(client.clone()),
                Api::<PartialObjectMeta<Secret>>::all(client.clone()),
            ),
            Some(ns) => (
                Api::namespaced(client.clone(), ns),
                Api::namespaced(client.clone(), ns),
            ),
        };
        let scope = ns.map_or(String::new(), |ns| format!(" in {ns}"));
        spawn_metadata(
            &mut tasks,
            cm,
            SourceKind::ConfigMap,
            &scope,
            &shared,
            &health,
            &stop,
        );
        spawn_metadata(
            &mut tasks,
            secret,
            SourceKind::Secret,
            &scope,
            &shared,
            &health,
            &stop,
        );
    }
    let signals = shared.signals.lock().expect("signals lock").enabled;
    if settings.emit_events || signals {
        tasks.spawn(events::run(client, settings, shared, stop));
    }
    while tasks.join_next().await.is_some() {}
}

/// A metadata watch of ConfigMaps or Secrets.
fn spawn_metadata<K>(
    tasks: &mut tokio::task::JoinSet<()>,
    api: Api<PartialObjectMeta<K>>,
    kind: SourceKind,
    scope: &str,
    shared: &Arc<Shared>,
    health: &Arc<Health>,
    stop: &signal::Receiver<bool>,
) where
    K: kube::Resource<DynamicType = ()> + Clone + serde::de::DeserializeOwned + std::fmt::Debug,
    K: Send + Sync + 'static,
{
    let part = format!("{}{scope}", K::plural(&()));
    health.register(&part, true);
    let mut versions = ObjectVersions::new(kind, shared.clone());
    let (h, s) = (health.clone(), stop.clone());
    tasks.spawn(async move {
        watch_loop(api, watch::config(), &part, &h, s, |ev| versions.apply(ev)).await;
    });
}

/// The client, retried with backoff while its config cannot be had; None when
/// stopped first.
async fn connect(
    settings: &Settings,
    health: &Health,
    mut stop: signal::Receiver<bool>,
) -> Option<Client> {
    health.register(CLIENT, false);
    let mut backoff = Backoff::default();
    loop {
        // Exec credential plugins run here: stopping does not wait for them.
        let made = tokio::select! {
            made = client(settings) => made,
            _ = stop.wait_for(|s| *s) => return None,
        };
        match made {
            Ok((client, url)) => {
                health.set_server(url);
                health.unregister(CLIENT);
                return Some(client);
            }
            Err(e) => {
                health.down(CLIENT, &e, false);
                let wait = backoff.next_wait();
                debug!(error = %e, wait_ms = wait.as_millis() as u64, "no Kubernetes client");
                tokio::select! {
                    _ = tokio::time::sleep(wait) => {}
                    _ = stop.wait_for(|s| *s) => return None,
                }
            }
        }
    }
}

async fn client(settings: &Settings) -> Result<(Client, String), String> {
    let config = match &settings.kubeconfig {
        Some(path) => {
            let kubeconfig = Kubeconfig::read_from(path)
                .map_err(|e| format!("kubeconfig {}: {e}", path.display()))?;
            kube::Config::from_custom_kubeconfig(kubeconfig, &KubeConfigOptions::default())
                .await
                .map_err(|e| format!("kubeconfig {}: {e}", path.display()))?
        }
        None => kube::Config::infer()
            .await
            .map_err(|e| format!("no Kubernetes API config: {e}"))?,
    };
    let url = config.cluster_url.to_string();
    let client = Client::try_from(config).map_err(|e| format!("Kubernetes client: {e}"))?;
    Ok((client, url))
}
