//! The fake API server's objects: stored as the API returns them (JSON), one global
//! resourceVersion counter, the history of changes that watches replay, and the
//! managedFields each write leaves.

use std::{
    collections::BTreeMap,
    time::{Duration, SystemTime},
};

use serde_json::{Value, json};

/// The resources the server keeps.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Resource {
    Pods,
    ConfigMaps,
    Secrets,
    /// `events.k8s.io/v1` Events.
    Events,
}

impl Resource {
    pub const ALL: [Resource; 4] = [
        Resource::Pods,
        Resource::ConfigMaps,
        Resource::Secrets,
        Resource::Events,
    ];

    /// The plural, as in URL paths.
    pub fn plural(self) -> &'static str {
        match self {
            Resource::Pods => "pods",
            Resource::ConfigMaps => "configmaps",
            Resource::Secrets => "secrets",
            Resource::Events => "events",
        }
    }

    pub fn kind(self) -> &'static str {
        match self {
            Resource::Pods => "Pod",
            Resource::ConfigMaps => "ConfigMap",
            Resource::Secrets => "Secret",
            Resource::Events => "Event",
        }
    }

    /// `v1`, or `events.k8s.io/v1`.
    pub fn api_version(self) -> &'static str {
        match self {
            Resource::Events => "events.k8s.io/v1",
            _ => "v1",
        }
    }

    /// The resource named `plural` under the path prefix `group_version` (`v1` for
    /// `/api/v1`, `events.k8s.io/v1` for `/apis/events.k8s.io/v1`).
    pub fn from_path(group_version: &str, plural: &str) -> Option<Resource> {
        Resource::ALL
            .into_iter()
            .find(|r| r.api_version() == group_version && r.plural() == plural)
    }

    /// The field selector labels the API server accepts for this resource.
    pub fn field_labels(self) -> &'static [&'static str] {
        match self {
            Resource::Pods => &[
                "metadata.name",
                "metadata.namespace",
                "spec.nodeName",
                "spec.restartPolicy",
                "spec.schedulerName",
                "spec.serviceAccountName",
                "status.phase",
                "status.podIP",
            ],
            Resource::Secrets => &["metadata.name", "metadata.namespace", "type"],
            _ => &["metadata.name", "metadata.namespace"],
        }
    }
}

/// What happened to an object.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ChangeKind {
    Added,
    Modified,
    Deleted,
}

/// One write, as watches replay it.
#[derive(Clone, Debug)]
pub struct Change {
    pub rv: u64,
    pub resource: Resource,
    pub kind: ChangeKind,
    /// The object before (Modified, Deleted).
    pub old: Option<Value>,
    /// The object after; for Deleted, the last state with the deletion's
    /// resourceVersion.
    pub new: Value,
}

/// Why a write was refused.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum StoreError {
    /// 400: the object lacks a name, or is not an object.
    #[error("invalid object: {0}")]
    Invalid(String),
    /// 404
    #[error("not found: {0}")]
    NotFound(String),
    /// 409
    #[error("already exists: {0}")]
    AlreadyExists(String),
}

/// A field selector: `a.b=v`, `a.b==v`, `a.b!=v`, comma-separated.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Selector(Vec<(String, bool, String)>);

impl Selector {
    /// Parses `s` for `resource`; an unsupported field is an error, as on the API server.
    pub fn parse(resource: Resource, s: &str) -> Result<Selector, String> {
        let mut terms = Vec::new();
        for term in s.split(',').filter(|t| !t.is_empty()) {
            let (field, equal, value) = if let Some((f, v)) = term.split_once("!=") {
                (f, false, v)
            } else if let Some((f, v)) = term.split_once("==") {
                (f, true, v)
            } else if let Some((f, v)) = term.split_once('=') {
                (f, true, v)
            } else {
                return Err(format!("invalid selector: {term:?}"));
            };
            if !resource.field_labels().contains(&field) {
                return Err(format!(
                    "field label not supported: {field} (for {})",
                    resource.plural()
                ));
            }
            terms.push((field.to_owned(), equal, value.to_owned()));
        }
        Ok(Selector(terms))
    }

    /// Whether `obj` matches; an unset field is the empty string.
    pub fn matches(&self, obj: &Value) -> bool {
        self.0.iter().all(|(field, equal, value)| {
            let mut v = obj;
            for part in field.split('.') {
                v = v.get(part).unwrap_or(&Value::Null);
            }
            let actual = v.as_str().unwrap_or("");
            (actual == value) == *equal
        })
    }
}

/// Every object, the history of writes since the last compaction, the counter.
#[derive(Debug)]
pub struct Store {
    rv: u64,
    objects: BTreeMap<Resource, BTreeMap<(String, String), Value>>,
    history: Vec<Change>,
    /// Watches from a resourceVersion older than this get 410 Gone.
    compacted: u64,
    /// The server's clock: the real one, moved by this much (`creationTimestamp`,
    /// managedFields times).
    clock_ahead: Duration,
    clock_behind: Duration,
    uids: u64,
}

impl Default for Store {
    fn default() -> Self {
        Store {
            // Resource versions on a real server never start at 0; neither do these.
            rv: 1000,
            objects: BTreeMap::new(),
            history: Vec::new(),
            compacted: 0,
            clock_ahead: Duration::ZERO,
            clock_behind: Duration::ZERO,
            uids: 0,
        }
    }
}

impl Store {
    /// The current resourceVersion.
    pub fn rv(&self) -> u64 {
        self.rv
    }

    pub fn compacted(&self) -> u64 {
        self.compacted
    }

    /// Moves the server's clock by `by` (later when `ahead`).
    pub fn shift_clock(&mut self, by: Duration, ahead: bool) {
        let (more, less) = if ahead {
            (&mut self.clock_ahead, &mut self.clock_behind)
        } else {
            (&mut self.clock_behind, &mut self.clock_ahead)
        };
        let cancel = (*less).min(by);
        *less -= cancel;
        *more += by - cancel;
    }

    /// The server's clock now.
    pub fn now(&self) -> SystemTime {
        SystemTime::now() + self.clock_ahead - self.clock_behind
    }

    /// The server's clock now, as the API writes times: RFC 3339, whole seconds.
    pub fn now_rfc3339(&self) -> String {
        crate::cluster::timestamp(self.now())
    }

    pub fn get(&self, resource: Resource, namespace: &str, name: &str) -> Option<&Value> {
        self.objects
            .get(&resource)?
            .get(&(namespace.to_owned(), name.to_owned()))
    }

    /// The objects of `resource` (in `namespace` when given) matching `selector`.
    pub fn list(
        &self,
        resource: Resource,
        namespace: Option<&str>,
        selector: &Selector,
    ) -> Vec<&Value> {
        self.objects
            .get(&resource)
            .into_iter()
            .flat_map(|m| m.iter())
            .filter(|((ns, _), _)| namespace.is_none_or(|want| want == ns))
            .map(|(_, v)| v)
            .filter(|v| selector.matches(v))
            .collect()
    }

    /// The writes to `resource` after `rv`; None when some of them were compacted away.
    pub fn changes_after(&self, resource: Resource, rv: u64) -> Option<Vec<&Change>> {
        if rv < self.compacted {
            return None;
        }
        Some(
            self.history
                .iter()
                .filter(|c| c.rv > rv && c.resource == resource)
                .collect(),
        )
    }

    /// Forgets the history: a watch from any resourceVersion older than the current
    /// one gets 410 Gone, as after an etcd compaction.
    pub fn compact(&mut self) {
        self.compacted = self.rv;
        self.history.clear();
    }

    /// Creates `obj` (apiVersion and kind are set; uid unless given, resourceVersion,
    /// creationTimestamp and managedFields always) as written by `manager`.
    pub fn create(
        &mut self,
        resource: Resource,
        mut obj: Value,
        manager: &str,
    ) -> Result<(Change, Value), StoreError> {
        let Some(map) = obj.as_object_mut() else {
            return Err(StoreError::Invalid("not a JSON object".into()));
        };
        map.insert("apiVersion".into(), resource.api_version().into());
        map.insert("kind".into(), resource.kind().into());
        let meta = map
            .entry("metadata")
            .or_insert_with(|| json!({}))
            .as_object_mut()
            .ok_or_else(|| StoreError::Invalid("metadata is not an object".into()))?;
        let name = meta
            .get("name")
            .and_then(Value::as_str)
            .filter(|n| !n.is_empty())
            .ok_or_else(|| StoreError::Invalid("metadata.name: Required value".into()))?
            .to_owned();
        let namespace = meta
            .get("namespace")
            .and_then(Value::as_str)
            .filter(|n| !n.is_empty())
            .unwrap_or("default")
            .to_owned();
        let key = (namespace.clone(), name.clone());
        if self
            .objects
            .get(&resource)
            .is_some_and(|m| m.contains_key(&key))
        {
            return Err(StoreError::AlreadyExists(format!(
                "{} \"{name}\" already exists",
                resource.plural()
            )));
        }
        self.rv += 1;
        self.uids += 1;
        meta.insert("namespace".into(), namespace.into());
        if meta
            .get("uid")
            .and_then(Value::as_str)
            .is_none_or(str::is_empty)
        {
            meta.insert("uid".into(), self.new_uid().into());
        }
        meta.insert("resourceVersion".into(), self.rv.to_string().into());
        meta.insert("creationTimestamp".into(), self.now_rfc3339().into());
        meta.remove("managedFields");
        if resource != Resource::Events {
            let time = self.now_rfc3339();
            super::managed::manage(&Value::Null, &mut obj, manager, &time);
        }
        let change = Change {
            rv: self.rv,
            resource,
            kind: ChangeKind::Added,
            old: None,
            new: obj.clone(),
        };
        self.objects
            .entry(resource)
            .or_default()
            .insert(key, obj.clone());
        self.history.push(change.clone());
        Ok((change, obj))
    }

    /// Applies `edit` to the object as `manager`; a write that changes nothing is no
    /// write (no new resourceVersion, no event), as on the API server.
    pub fn update(
        &mut self,
        resource: Resource,
        namespace: &str,
        name: &str,
        manager: &str,
        edit: impl FnOnce(&mut Value),
    ) -> Result<Option<(Change, Value)>, StoreError> {
        let key = (namespace.to_owned(), name.to_owned());
        let Some(old) = self
            .objects
            .get(&resource)
            .and_then(|m| m.get(&key))
            .cloned()
        else {
            return Err(StoreError::NotFound(format!(
                "{} \"{name}\" not found",
                resource.plural()
            )));
        };
        let mut new = old.clone();
        edit(&mut new);
        // What the server owns stays.
        if !new["metadata"].is_object() {
            new["metadata"] = json!({});
        }
        for field in [
            "uid",
            "creationTimestamp",
            "name",
            "namespace",
            "resourceVersion",
            "managedFields",
        ] {
            keep(&old["metadata"], &mut new["metadata"], field);
        }
        keep(&old, &mut new, "apiVersion");
        keep(&old, &mut new, "kind");
        if new == old {
            return Ok(None);
        }
        let time = self.now_rfc3339();
        if resource != Resource::Events {
            super::managed::manage(&old, &mut new, manager, &time);
        }
        self.rv += 1;
        new["metadata"]["resourceVersion"] = self.rv.to_string().into();
        let change = Change {
            rv: self.rv,
            resource,
            kind: ChangeKind::Modified,
            old: Some(old),
            new: new.clone(),
        };
        self.objects
            .entry(resource)
            .or_default()
            .insert(key, new.clone());
        self.history.push(change.clone());
        Ok(Some((change, new)))
    }

    /// Deletes the object; the DELETED event carries the deletion's resourceVersion.
    pub fn delete(
        &mut self,
        resource: Resource,
        namespace: &str,
        name: &str,
    ) -> Result<(Change, Value), StoreError> {
        let key = (namespace.to_owned(), name.to_owned());
        let Some(old) = self.objects.get_mut(&resource).and_then(|m| m.remove(&key)) else {
            return Err(StoreError::NotFound(format!(
                "{} \"{name}\" not found",
                resource.plural()
            )));
        };
        self.rv += 1;
        let mut last = old.clone();
        last["metadata"]["resourceVersion"] = self.rv.to_string().into();
        let change = Change {
            rv: self.rv,
            resource,
            kind: ChangeKind::Deleted,
            old: Some(old),
            new: last.clone(),
        };
        self.history.push(change.clone());
        Ok((change, last))
    }

    /// A UUID-v4-shaped uid, unique in this server.
    fn new_uid(&self) -> String {
        let n = self.uids;
        let nanos = SystemTime::now()
            .duration_since(SystemTime::UNIX_EPOCH)
            .map_or(0, |d| d.subsec_nanos());
        format!(
            "{:08x}-{:04x}-4{:03x}-8{:03x}-{:012x}",
            nanos,
            (n >> 16) & 0xffff,
            n & 0xfff,
            (n >> 12) & 0xfff,
            0x5ca1_ab1e_0000_u64 + n
        )
    }
}

/// Sets `to[key]` to `from[key]`, or removes it when `from` has none.
fn keep(from: &Value, to: &mut Value, key: &str) {
    let Some(to) = to.as_object_mut() else { return };
    match from.get(key) {
        Some(v) => {
            to.insert(key.to_owned(), v.clone());
        }
        None => {
            to.remove(key);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cm(data: Value) -> Value {
        json!({"metadata": {"name": "app", "namespace": "shop"}, "data": data})
    }

    #[test]
    fn writes_bump_the_one_counter_and_no_op_writes_do_not() {
        let mut s = Store::default();
        let rv0 = s.rv();
        let (_, a) = s
            .create(
                Resource::ConfigMaps,
                cm(json!({"k": "1"})),
                "kubectl-create",
            )
            .unwrap();
        assert_eq!(a["metadata"]["resourceVersion"], (rv0 + 1).to_string());
        assert_eq!(a["kind"], "ConfigMap");
        assert!(a["metadata"]["uid"].as_str().is_some_and(|u| u.len() == 36));
        let none = s
            .update(Resource::ConfigMaps, "shop", "app", "kubectl-edit", |o| {
                o["data"]["k"] = "1".into();
            })
            .unwrap();
        assert!(none.is_none());
        assert_eq!(s.rv(), rv0 + 1);
        let (_, d) = s.delete(Resource::ConfigMaps, "shop", "app").unwrap();
        assert_eq!(d["metadata"]["resourceVersion"], (rv0 + 2).to_string());
        assert_eq!(
            s.create(Resource::Pods, json!({"metadata": {}}), "m")
                .unwrap_err(),
            StoreError::Invalid("metadata.name: Required value".into())
        );
    }

    #[test]
    fn history_is_replayed_until_compacted() {
        let mut s = Store::default();
        let start = s.rv();
        s.create(Resource::ConfigMaps, cm(json!({})), "m").unwrap();
        assert_eq!(
            s.changes_after(Resource::ConfigMaps, start).unwrap().len(),
            1
        );
        assert_eq!(s.changes_after(Resource::Pods, start).unwrap().len(), 0);
        s.compact();
        assert!(s.changes_after(Resource::ConfigMaps, start).is_none());
        assert_eq!(
            s.changes_after(Resource::ConfigMaps, s.rv()).unwrap().len(),
            0
        );
    }

    #[test]
    fn field_selectors_as_the_api_server_takes_them() {
        let pod = json!({"metadata": {"name": "a"}, "spec": {"nodeName": "n1"}});
        let sel = Selector::parse(Resource::Pods, "spec.nodeName=n1").unwrap();
        assert!(sel.matches(&pod));
        let sel = Selector::parse(Resource::Pods, "spec.nodeName!=n1,metadata.name=a").unwrap();
        assert!(!sel.matches(&pod));
        assert!(Selector::parse(Resource::ConfigMaps, "spec.nodeName=n1").is_err());
    }
}
