//! A Kubernetes API server for tests and the lab: plain HTTP on a loopback port,
//! serving pods, ConfigMaps, Secrets and `events.k8s.io/v1` Events through the real
//! list/watch protocol, so that the agent's client (kube-rs, unmodified) runs against
//! it exactly as against a cluster.
//!
//! It is a test server, not a mock of the client: it knows nothing of the agent and
//! answers what an API server answers. [`super::cluster`] makes the lab's objects.
//!
//! - Objects are JSON as the API returns them, with `apiVersion`, `kind`,
//!   `metadata.uid`, `resourceVersion` (one counter for all resources),
//!   `creationTimestamp` and `managedFields` (per manager, `Update` operations, the
//!   fields each write set or changed; see `managed`).
//! - **list** (`/api/v1/pods`, `/api/v1/namespaces/<ns>/configmaps`, ...): the
//!   `List` with `metadata.resourceVersion`; `fieldSelector` on the fields the API
//!   server supports for the resource (`spec.nodeName`, `metadata.name`, ...).
//!   `limit` is ignored (one page) and lists are always of the newest state.
//! - **watch** (`watch=true&resourceVersion=N&allowWatchBookmarks=true`):
//!   newline-delimited `ADDED`/`MODIFIED`/`DELETED`/`BOOKMARK`/`ERROR` events; the
//!   changes after `N` are replayed from the history, then live ones follow; an object
//!   moving into or out of the field selector comes as `ADDED` or `DELETED`, as from
//!   the watch cache. `N` older than the last compaction: one `ERROR` event, a `410
//!   Expired` Status, and the end of the stream. `timeoutSeconds` ends the watch
//!   cleanly.
//! - **metadata only**: `Accept: application/json;as=PartialObjectMetadataList;
//!   g=meta.k8s.io;v=v1` (lists) or `as=PartialObjectMetadata` (get, watch) answers
//!   `PartialObjectMetadata(List)` objects, metadata alone: a Secret's data is never
//!   in them. Full Secrets served are counted ([`FakeApiServer::secret_data_served`]).
//! - **create** (`POST`), used for Events; Events are validated as the API server
//!   validates `events.k8s.io/v1` (required fields, note size, namespaces).
//! - Requests need `Authorization: Bearer` [`LAB_TOKEN`] (else 401), as
//!   [`write_kubeconfig`] writes it.
//!
//! - **get** and **delete** of one object, as the API answers them.
//!
//! Controls, for tests: write objects (bumping the resourceVersion), send bookmarks,
//! compact the history (the next watch from before it gets 410 Gone), drop open watch
//! streams or cut every connection, hold requests (a partition), answer 403 Forbidden
//! (everything for a while, or one resource as a role without it), shift the server's
//! clock, and read back every request, every event sent on a watch (with the moment it
//! was written) and every Event posted.

mod http;
mod managed;
mod net;
mod request;
mod store;
mod watches;

use std::{
    net::SocketAddr,
    path::Path,
    sync::{
        Arc, Mutex,
        atomic::{AtomicU64, Ordering::SeqCst},
    },
    time::{Duration, Instant, SystemTime},
};

use serde_json::{Value, json};
use store::{Change, Selector, Store};
pub use store::{ChangeKind, Resource, StoreError};
use tokio::{
    sync::{mpsc, watch},
    task::JoinHandle,
};

/// The bearer token the server accepts.
pub const LAB_TOKEN: &str = "reloadscope-lab-token";

/// A request as the server received it.
#[derive(Clone, Debug)]
pub struct RequestRecord {
    pub method: String,
    pub path: String,
    /// The query, decoded.
    pub query: Vec<(String, String)>,
    pub accept: String,
    /// The resource addressed, when the path names one.
    pub resource: Option<Resource>,
    /// `watch=true`
    pub watch: bool,
    /// The status answered (0 while the request is held or still being answered).
    pub status: u16,
}

impl RequestRecord {
    pub fn param(&self, key: &str) -> Option<&str> {
        self.query
            .iter()
            .find(|(k, _)| k == key)
            .map(|(_, v)| v.as_str())
    }

    /// A list (not a watch) of `resource`.
    pub fn is_list(&self, resource: Resource) -> bool {
        self.method == "GET"
            && !self.watch
            && self.resource == Some(resource)
            && self.path.ends_with(&format!("/{}", resource.plural()))
    }

    /// Whether the Accept header asked for metadata only.
    pub fn metadata_only(&self) -> bool {
        matches!(
            http::accept_as(&self.accept),
            Some("PartialObjectMetadata" | "PartialObjectMetadataList")
        )
    }
}

/// An event written on a watch stream.
#[derive(Clone, Debug)]
pub struct SentEvent {
    /// The watch (one per watch request, numbered from 1).
    pub watch: u64,
    pub resource: Resource,
    /// `ADDED`, `MODIFIED`, `DELETED`, `BOOKMARK`, `ERROR`.
    pub event: &'static str,
    pub namespace: String,
    pub name: String,
    pub resource_version: String,
    pub metadata_only: bool,
    /// When the server handed it to the connection (the real clock).
    pub at: SystemTime,
}

/// What a watch stream is sent.
enum Frame {
    Event(String, SentEvent),
    /// The end of the stream, as after `timeoutSeconds`.
    End,
    /// The connection dropped mid-stream.
    Drop,
}

/// An open watch.
struct Watch {
    id: u64,
    resource: Resource,
    namespace: Option<String>,
    selector: Selector,
    metadata: bool,
    bookmarks: bool,
    tx: mpsc::UnboundedSender<Frame>,
}

/// The store and its open watches, under one lock so that every write reaches every
/// watch in resourceVersion order.
#[derive(Default)]
struct State {
    store: Store,
    watches: Vec<Watch>,
    next_watch: u64,
}

struct Inner {
    state: Mutex<State>,
    requests: Mutex<Vec<RequestRecord>>,
    sent: Mutex<Vec<SentEvent>>,
    forbidden_until: Mutex<Option<Instant>>,
    /// Resources answered 403 whatever the time (RBAC without them).
    not_granted: Mutex<Vec<Resource>>,
    held: watch::Sender<bool>,
    conns: Arc<net::Connections>,
    gone: AtomicU64,
    secret_data: AtomicU64,
}

/// The server; stops when dropped.
pub struct FakeApiServer {
    addr: SocketAddr,
    inner: Arc<Inner>,
    task: JoinHandle<()>,
}

impl Drop for FakeApiServer {
    fn drop(&mut self) {
        self.task.abort();
        self.inner.conns.cut_all();
    }
}

/// The manager of writes made through [`FakeApiServer::create`].
pub const CREATE_MANAGER: &str = "kubectl-create";

impl FakeApiServer {
    /// Serves on a free port of 127.0.0.1.
    pub async fn start() -> std::io::Result<FakeApiServer> {
        Self::start_on(SocketAddr::from(([127, 0, 0, 1], 0))).await
    }

    /// Serves on `addr` (port 0: a free one), so that a client can be given the
    /// address before anything listens there.
    pub async fn start_on(addr: SocketAddr) -> std::io::Result<FakeApiServer> {
        let listener = tokio::net::TcpListener::bind(addr).await?;
        let addr = listener.local_addr()?;
        let conns = Arc::new(net::Connections::default());
        let inner = Arc::new(Inner {
            state: Mutex::default(),
            requests: Mutex::default(),
            sent: Mutex::default(),
            forbidden_until: Mutex::default(),
            not_granted: Mutex::default(),
            held: watch::channel(false).0,
            conns: conns.clone(),
            gone: AtomicU64::new(0),
            secret_data: AtomicU64::new(0),
        });
        let router = axum::Router::new()
            .fallback(http::handle)
            .with_state(inner.clone());
        let listener = net::CutListener { listener, conns };
        let task = tokio::spawn(async move {
            let _ = axum::serve(listener, router).await;
        });
        Ok(FakeApiServer { addr, inner, task })
    }

    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// `http://127.0.0.1:<port>`
    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// Writes a kubeconfig for this server to `path`.
    pub fn write_kubeconfig(&self, path: &Path) -> std::io::Result<()> {
        write_kubeconfig(path, &self.url())
    }

    fn state(&self) -> std::sync::MutexGuard<'_, State> {
        self.inner.state.lock().expect("apiserver state lock")
    }

    /// Creates `obj` as [`CREATE_MANAGER`]; returns it as stored.
    pub fn create(&self, resource: Resource, obj: Value) -> Result<Value, StoreError> {
        self.create_as(resource, obj, CREATE_MANAGER)
    }

    /// Creates `obj` as written by `manager`.
    pub fn create_as(
        &self,
        resource: Resource,
        obj: Value,
        manager: &str,
    ) -> Result<Value, StoreError> {
        self.inner.create(resource, obj, manager)
    }

    /// Edits an object as `manager` (kubectl-edit, kubectl-label, an operator...);
    /// None when the edit changed nothing (no write then, as on the API server).
    pub fn update(
        &self,
        resource: Resource,
        namespace: &str,
        name: &str,
        manager: &str,
        edit: impl FnOnce(&mut Value),
    ) -> Result<Option<Value>, StoreError> {
        let mut st = self.state();
        let Some((change, obj)) = st.store.update(resource, namespace, name, manager, edit)? else {
            return Ok(None);
        };
        self.inner.broadcast(&mut st, &change);
        Ok(Some(obj))
    }

    pub fn delete(
        &self,
        resource: Resource,
        namespace: &str,
        name: &str,
    ) -> Result<Value, StoreError> {
        let mut st = self.state();
        let (change, obj) = st.store.delete(resource, namespace, name)?;
        self.inner.broadcast(&mut st, &change);
        Ok(obj)
    }

    pub fn get(&self, resource: Resource, namespace: &str, name: &str) -> Option<Value> {
        self.state().store.get(resource, namespace, name).cloned()
    }

    /// The current resourceVersion.
    pub fn resource_version(&self) -> u64 {
        self.state().store.rv()
    }

    /// Sends a `BOOKMARK` at the current resourceVersion on every open watch that
    /// allows them; returns that resourceVersion.
    pub fn bookmark(&self) -> u64 {
        let mut st = self.state();
        let rv = st.store.rv();
        st.watches.retain(|w| !w.tx.is_closed());
        for w in st.watches.iter().filter(|w| w.bookmarks) {
            let (api_version, kind) = if w.metadata {
                ("meta.k8s.io/v1", "PartialObjectMetadata")
            } else {
                (w.resource.api_version(), w.resource.kind())
            };
            let object = json!({
                "kind": kind,
                "apiVersion": api_version,
                "metadata": {"resourceVersion": rv.to_string()},
            });
            let _ = w.tx.send(watches::frame(w, "BOOKMARK", &object));
        }
        rv
    }

    /// Forgets the change history, as an etcd compaction does: a watch from a
    /// resourceVersion older than the current one gets 410 Gone (and must relist).
    pub fn compact(&self) {
        self.state().store.compact();
    }

    /// Drops every open watch stream mid-stream (the connection goes with it);
    /// returns how many.
    pub fn drop_watches(&self) -> usize {
        self.close_watches(|| Frame::Drop)
    }

    /// Ends every open watch stream cleanly, as its `timeoutSeconds` does.
    pub fn end_watches(&self) -> usize {
        self.close_watches(|| Frame::End)
    }

    fn close_watches(&self, frame: impl Fn() -> Frame) -> usize {
        let mut st = self.state();
        st.watches
            .drain(..)
            .filter(|w| w.tx.send(frame()).is_ok())
            .count()
    }

    /// Open watch streams of `resource`.
    pub fn open_watches(&self, resource: Resource) -> usize {
        let mut st = self.state();
        st.watches.retain(|w| !w.tx.is_closed());
        st.watches.iter().filter(|w| w.resource == resource).count()
    }

    /// Resets every open connection (a network failure); returns how many.
    pub fn cut_connections(&self) -> usize {
        self.inner.conns.cut_all()
    }

    /// Unreachable: every open connection is reset and so is every new one, until
    /// called with false.
    pub fn set_unreachable(&self, on: bool) {
        self.inner.conns.refuse(on);
        if on {
            self.inner.conns.cut_all();
        }
    }

    /// Holds every new request unanswered until called with false, as a network
    /// partition does; requests already answered go on.
    pub fn hold_requests(&self, on: bool) {
        self.inner.held.send_replace(on);
    }

    /// Answers every request with 403 Forbidden (RBAC) until called with false.
    pub fn forbid(&self, on: bool) {
        *self.inner.forbidden_until.lock().expect("forbid lock") =
            on.then(|| Instant::now() + Duration::from_secs(24 * 3600));
    }

    /// Answers every request with 403 Forbidden for `d`.
    pub fn forbid_for(&self, d: Duration) {
        *self.inner.forbidden_until.lock().expect("forbid lock") = Some(Instant::now() + d);
    }

    /// Answers every request for `resource` with 403 Forbidden (a role without it)
    /// while `granted` is false.
    pub fn grant(&self, resource: Resource, granted: bool) {
        let mut not = self.inner.not_granted.lock().expect("grant lock");
        not.retain(|r| *r != resource);
        if !granted {
            not.push(resource);
        }
    }

    /// Moves the server's clock (its timestamps: creationTimestamp, managedFields
    /// times) `by` later, or earlier when `ahead` is false. The real clock, which
    /// [`SentEvent::at`] and the agent use, does not move.
    pub fn shift_clock(&self, by: Duration, ahead: bool) {
        self.state().store.shift_clock(by, ahead);
    }

    /// The server's clock now.
    pub fn clock(&self) -> SystemTime {
        self.state().store.now()
    }

    /// Every request so far, in arrival order.
    pub fn requests(&self) -> Vec<RequestRecord> {
        self.inner.requests.lock().expect("requests lock").clone()
    }

    /// Every event written on a watch so far.
    pub fn sent(&self) -> Vec<SentEvent> {
        self.inner.sent.lock().expect("sent lock").clone()
    }

    /// Events (`events.k8s.io/v1`) posted, in creation order.
    pub fn posted_events(&self) -> Vec<Value> {
        let st = self.state();
        let mut events: Vec<Value> = st
            .store
            .list(Resource::Events, None, &Selector::default())
            .into_iter()
            .cloned()
            .collect();
        events.sort_by_key(|e| {
            (e["metadata"]["resourceVersion"].as_str().unwrap_or("0"))
                .parse::<u64>()
                .unwrap_or(0)
        });
        events
    }

    /// `410 Gone` answers sent to watches.
    pub fn gone_sent(&self) -> u64 {
        self.inner.gone.load(SeqCst)
    }

    /// Secrets served with their data (in lists, gets or watches not asked as
    /// metadata only).
    pub fn secret_data_served(&self) -> u64 {
        self.inner.secret_data.load(SeqCst)
    }
}

impl Inner {
    fn create(&self, resource: Resource, obj: Value, manager: &str) -> Result<Value, StoreError> {
        let mut st = self.state.lock().expect("apiserver state lock");
        let (change, obj) = st.store.create(resource, obj, manager)?;
        self.broadcast(&mut st, &change);
        Ok(obj)
    }

    /// Sends `change` to every open watch it concerns.
    fn broadcast(&self, st: &mut State, change: &Change) {
        st.watches.retain(|w| !w.tx.is_closed());
        for w in st.watches.iter().filter(|w| w.resource == change.resource) {
            if let Some((event, obj)) = watches::watch_event(w, change) {
                let object = self.render(w.resource, obj, w.metadata, true);
                let _ = w.tx.send(watches::frame(w, event, &object));
            }
        }
    }

    /// `obj` as served: whole (items of a list lose `apiVersion` and `kind`, as from
    /// the API server), or its metadata alone.
    fn render(&self, resource: Resource, obj: &Value, metadata: bool, typed: bool) -> Value {
        if metadata {
            return json!({
                "kind": "PartialObjectMetadata",
                "apiVersion": "meta.k8s.io/v1",
                "metadata": obj["metadata"],
            });
        }
        if resource == Resource::Secrets
            && (obj.get("data").is_some() || obj.get("stringData").is_some())
        {
            self.secret_data.fetch_add(1, SeqCst);
        }
        let mut obj = obj.clone();
        if !typed && let Some(map) = obj.as_object_mut() {
            map.remove("apiVersion");
            map.remove("kind");
        }
        obj
    }
}

/// Writes a kubeconfig (JSON, which is YAML) for the server at `url`, with the
/// [`LAB_TOKEN`] bearer token.
pub fn write_kubeconfig(path: &Path, url: &str) -> std::io::Result<()> {
    let config = json!({
        "apiVersion": "v1",
        "kind": "Config",
        "clusters": [{"name": "lab", "cluster": {"server": url}}],
        "users": [{"name": "lab", "user": {"token": LAB_TOKEN}}],
        "contexts": [{"name": "lab", "context": {"cluster": "lab", "user": "lab", "namespace": "default"}}],
        "current-context": "lab",
    });
    std::fs::write(path, serde_json::to_vec_pretty(&config)?)
}
