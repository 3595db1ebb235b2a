//! The watchers: one loop that keeps a kube-runtime watcher going through errors, and
//! what each resource's events do to [`MetaState`](crate::kubeapi::MetaState).

use std::{collections::HashMap, fmt::Debug, sync::Arc, time::SystemTime};

use futures_util::StreamExt;
use k8s_openapi::api::core::v1::Pod;
use kube::{
    Api, Resource,
    api::PartialObjectMeta,
    runtime::watcher::{self, Event},
};
use serde::de::DeserializeOwned;
use tokio::sync::watch;
use tracing::{debug, info};

use super::health::{Backoff, Health};
use crate::{
    kubeapi::{
        PodMeta, SourceKind, model,
        propagation::{ObjectRef, data_changed},
    },
    state::Shared,
};

/// Runs a watcher of `api` until `stop` turns true, handing every event to `apply`.
///
/// kube-runtime's watcher lists, then watches from the list's resourceVersion, follows
/// bookmarks, resumes a dropped watch from the last resourceVersion seen and relists
/// by itself on 410 Gone. Any other error marks `part` down in `health`; a new watcher
/// (hence a relist, which replaces what a reconnection could have missed) starts after
/// the backoff. Any event but `Init` (a list answered, an object seen) marks it up.
pub async fn watch_loop<K>(
    api: Api<K>,
    config: watcher::Config,
    part: &str,
    health: &Health,
    mut stop: watch::Receiver<bool>,
    mut apply: impl FnMut(Event<K>),
) where
    K: Resource + Clone + DeserializeOwned + Debug + Send + 'static,
{
    let mut backoff = Backoff::default();
    loop {
        let mut events = std::pin::pin!(kube::runtime::watcher(api.clone(), config.clone()));
        let error = loop {
            let next = tokio::select! {
                next = events.next() => next,
                _ = stop.wait_for(|s| *s) => return,
            };
            match next {
                Some(Ok(ev)) => {
                    if !matches!(ev, Event::Init) {
                        health.up(part);
                        backoff.reset();
                    }
                    apply(ev);
                }
                // The resourceVersion is too old: the watcher relists by itself. The
                // protocol working as meant, not an outage.
                Some(Err(watcher::Error::WatchError(status))) if status.code == 410 => {
                    debug!(
                        watch = part,
                        "resourceVersion expired (410 Gone): relisting"
                    );
                }
                Some(Err(e)) => break e,
                // A watcher never ends; if it did, start another.
                None => break watcher::Error::NoResourceVersion,
            }
        };
        let described = describe(&error);
        health.down(part, &described, forbidden(&error));
        let wait = backoff.next_wait();
        debug!(watch = part, error = %described, wait_ms = wait.as_millis() as u64, "watch failed");
        tokio::select! {
            _ = tokio::time::sleep(wait) => {}
            _ = stop.wait_for(|s| *s) => return,
        }
    }
}

/// The client error inside a watcher error.
fn client_error(e: &watcher::Error) -> Option<&kube::Error> {
    match e {
        watcher::Error::InitialListFailed(e)
        | watcher::Error::WatchStartFailed(e)
        | watcher::Error::WatchFailed(e) => Some(e),
        watcher::Error::WatchError(_) | watcher::Error::NoResourceVersion => None,
    }
}

/// `e` for the log: a decoding error says where, not what (its message quotes the
/// object's values, a pod's environment for one).
fn describe(e: &watcher::Error) -> String {
    match client_error(e) {
        Some(kube::Error::SerdeError(se)) => format!(
            "cannot decode an object from the API ({:?} error at line {}, column {})",
            se.classify(),
            se.line(),
            se.column()
        ),
        _ => e.to_string(),
    }
}

/// Whether the API refused the call (403).
fn forbidden(e: &watcher::Error) -> bool {
    match (e, client_error(e)) {
        (watcher::Error::WatchError(status), _) => status.code == 403,
        (_, Some(kube::Error::Api(status))) => status.code == 403,
        _ => false,
    }
}

/// The watcher settings of every watch: lists at resourceVersion 0 in one page, served
/// from the API server's watch cache as client-go's informers do (no etcd read per
/// node), bookmarks on.
pub fn config() -> watcher::Config {
    let mut config = watcher::Config::default().any_semantic();
    // A `limit` would make kube-rs leave resourceVersion=0 out of the list.
    config.page_size = None;
    config
}

/// This node's pods, reduced to [`PodMeta`], in `MetaState::pods`: replaced whole at
/// each (re)list, so pods deleted while the watch was down go.
pub struct PodReflector {
    shared: Arc<Shared>,
    listing: Option<HashMap<String, PodMeta>>,
    listed_once: bool,
}

impl PodReflector {
    pub fn new(shared: Arc<Shared>) -> Self {
        PodReflector {
            shared,
            listing: None,
            listed_once: false,
        }
    }

    pub fn apply(&mut self, ev: Event<Pod>) {
        match ev {
            Event::Init => self.listing = Some(HashMap::new()),
            Event::InitApply(pod) => {
                if let (Some(listing), Some((uid, meta))) = (&mut self.listing, reduce(&pod)) {
                    listing.insert(uid, meta);
                }
            }
            Event::InitDone => {
                let pods = self.listing.take().unwrap_or_default();
                let n = pods.len();
                let mut st = self.shared.meta.state.lock().expect("meta lock");
                st.pods = pods;
                let st = &mut *st;
                st.propagation.retain_pods(&st.pods);
                if !self.listed_once {
                    self.listed_once = true;
                    info!(pods = n, "listed this node's pods");
                } else {
                    debug!(pods = n, "relisted this node's pods");
                }
            }
            Event::Apply(pod) => {
                if let Some((uid, meta)) = reduce(&pod) {
                    let mut st = self.shared.meta.state.lock().expect("meta lock");
                    st.pods.insert(uid, meta);
                }
            }
            Event::Delete(pod) => {
                if let Some(uid) = model::pod_uid(&pod) {
                    let mut st = self.shared.meta.state.lock().expect("meta lock");
                    st.pods.remove(uid);
                    st.propagation.pod_gone(uid);
                }
            }
        }
    }
}

fn reduce(pod: &Pod) -> Option<(String, PodMeta)> {
    Some((model::pod_uid(pod)?.to_owned(), model::pod_meta(pod)?))
}

/// ConfigMaps or Secrets, by their metadata alone: each object's resourceVersion, and
/// a propagation change when a watch event brings a new one whose managedFields say
/// the data changed.
///
/// Changes found by a relist are not measured: when they were made is unknown, and the
/// kubelet may have swapped them long ago.
pub struct ObjectVersions {
    kind: SourceKind,
    shared: Arc<Shared>,
    versions: HashMap<(String, String), String>,
    listing: Option<HashMap<(String, String), String>>,
    synced: bool,
}

impl ObjectVersions {
    pub fn new(kind: SourceKind, shared: Arc<Shared>) -> Self {
        ObjectVersions {
            kind,
            shared,
            versions: HashMap::new(),
            listing: None,
            synced: false,
        }
    }

    pub fn apply<K>(&mut self, ev: Event<PartialObjectMeta<K>>) {
        let seen = SystemTime::now();
        match ev {
            Event::Init => self.listing = Some(HashMap::new()),
            Event::InitApply(obj) => {
                if let (Some(listing), Some((key, rv))) = (&mut self.listing, version(&obj)) {
                    listing.insert(key, rv);
                }
            }
            Event::InitDone => {
                self.versions = self.listing.take().unwrap_or_default();
                self.synced = true;
            }
            Event::Apply(obj) => {
                let Some((key, rv)) = version(&obj) else {
                    return;
                };
                let before = self.versions.insert(key.clone(), rv.clone());
                let changed = self.synced
                    && before.is_some_and(|b| b != rv)
                    && data_changed(obj.metadata.managed_fields.as_deref().unwrap_or(&[]));
                if changed {
                    self.changed(key, seen);
                }
            }
            Event::Delete(obj) => {
                if let Some((key, _)) = version(&obj) {
                    self.versions.remove(&key);
                }
            }
        }
    }

    fn changed(&self, (namespace, name): (String, String), seen: SystemTime) {
        debug!(kind = self.kind.label(), %namespace, %name, "data changed");
        let object = ObjectRef {
            kind: self.kind,
            namespace,
            name,
        };
        let mut st = self.shared.meta.state.lock().expect("meta lock");
        let st = &mut *st;
        st.propagation.object_changed(&object, seen, &st.pods);
    }
}

fn version<K>(obj: &PartialObjectMeta<K>) -> Option<((String, String), String)> {
    let m = &obj.metadata;
    Some((
        (m.namespace.clone()?, m.name.clone()?),
        m.resource_version.clone()?,
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn decoding_errors_are_logged_without_the_values() {
        let bad = serde_json::from_str::<Pod>(r#"{"spec": {"containers": "hunter2"}}"#);
        let e = watcher::Error::WatchFailed(kube::Error::SerdeError(bad.unwrap_err()));
        assert!(e.to_string().contains("hunter2"), "the premise: {e}");
        let said = describe(&e);
        assert!(!said.contains("hunter2"), "{said}");
        assert!(said.contains("line 1, column"), "{said}");
        assert!(!forbidden(&e));
    }
}
