//! Propagation delay: from a ConfigMap or Secret change seen on the API to the
//! kubelet's swap of each volume on this node that holds it. Pure state.
//!
//! The API watchers call [`Propagation::object_changed`] when a ConfigMap or Secret
//! changed its data ([`data_changed`]), the state loop calls [`Propagation::swapped`]
//! for every `..data` swap, and the scrapes read [`Propagation::histograms`] and
//! [`Propagation::pending_past`]. Time is passed in; nothing here does I/O.
//!
//! - A change makes every (pod, volume) on this node that takes its files from the
//!   object (same namespace; any source of a projected volume) **pending** since the
//!   moment the change was seen. A volume already pending keeps its older time: the
//!   delay counts from the first change not yet on the node.
//! - The volume's next swap resolves it: delay = swap time - since, observed in the
//!   histogram of the pod's namespace.
//! - **Swap before seen.** The kubelet watches the API too and can swap before the
//!   agent sees the change. A change and a swap of the same volume pair up when the
//!   swap is at most [`EARLY_SWAP_WINDOW`] (10 s) before the change was seen, whichever
//!   of the two calls comes first: the delay observed is then 0. Each swap pairs with
//!   one change at most; a volume's later swaps wait for a later change.
//! - Limits: a swap carries no trace of which change it holds. A swap for another
//!   reason (a downwardAPI field or a token rotation in the same projected volume)
//!   within the window, or while the volume is pending, resolves it too early; two
//!   changes that reach the node in two swaps, the second seen before the first swap
//!   is reported, are observed once.
//! - A volume pending for longer than the timeout is listed by
//!   [`Propagation::pending_past`]: the change has not reached this node.

use std::{
    collections::{BTreeMap, HashMap},
    time::{Duration, SystemTime},
};

use k8s_openapi::apimachinery::pkg::apis::meta::v1::ManagedFieldsEntry;

use super::model::{PodMeta, SourceKind};
use crate::histogram::{Buckets, Histogram};

#[cfg(test)]
mod tests;

/// How long a change may stay pending before [`Propagation::pending_past`] lists it,
/// by default.
pub const DEFAULT_TIMEOUT: Duration = Duration::from_secs(5 * 60);

/// A swap at most this long before a change was seen is that change's swap, reached
/// the node before the agent saw the change: its delay is 0. The kubelet and the agent
/// both watch the API and get the same event within a second or two of each other;
/// 10 s leaves room for a slow watch without pairing unrelated updates.
pub const EARLY_SWAP_WINDOW: Duration = Duration::from_secs(10);

/// Upper bounds of the delay histogram's buckets, in seconds (`le`).
pub const BUCKETS: [f64; 15] = [
    0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 20.0, 30.0, 60.0, 90.0, 120.0, 180.0, 300.0, 600.0,
];

/// The propagation delay's buckets ([`BUCKETS`]).
#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub struct DelayBuckets;

impl Buckets for DelayBuckets {
    const BOUNDS: &'static [f64] = &BUCKETS;
}

/// Propagation delays observed in one namespace, in seconds.
pub type DelayHistogram = Histogram<DelayBuckets>;

/// A watched object: a ConfigMap or a Secret.
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct ObjectRef {
    pub kind: SourceKind,
    pub namespace: String,
    pub name: String,
}

/// A volume whose change has not reached this node, sorted by namespace, pod, volume.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub struct PendingRef {
    pub namespace: String,
    pub pod: String,
    pub volume: String,
    pub pod_uid: String,
    /// When the first change not yet on the node was seen.
    pub since: SystemTime,
    /// The object of that change.
    pub object: ObjectRef,
}

#[derive(Clone, Debug)]
struct Pending {
    namespace: String,
    pod: String,
    since: SystemTime,
    object: ObjectRef,
}

#[derive(Clone, Copy, Debug)]
struct Swap {
    at: SystemTime,
    /// A change has been paired with it.
    claimed: bool,
}

#[derive(Debug, Default)]
struct VolumeState {
    pending: Option<Pending>,
    /// The volume's latest swap.
    last_swap: Option<Swap>,
}

#[derive(Debug)]
pub struct Propagation {
    timeout: Duration,
    /// Volume states by pod uid, then volume name.
    pods: HashMap<String, HashMap<String, VolumeState>>,
    /// By namespace; they only grow (counters).
    histograms: BTreeMap<String, DelayHistogram>,
}

impl Default for Propagation {
    fn default() -> Self {
        Self::new(DEFAULT_TIMEOUT)
    }
}

impl Propagation {
    pub fn new(timeout: Duration) -> Self {
        Self {
            timeout,
            pods: HashMap::new(),
            histograms: BTreeMap::new(),
        }
    }

    pub fn timeout(&self) -> Duration {
        self.timeout
    }

    /// `obj` changed its data, seen on the API at `seen`: every volume of `pods` that
    /// takes files from it is pending, or resolved with delay 0 by a swap made at most
    /// [`EARLY_SWAP_WINDOW`] before (a swap reported after `seen` but not yet paired
    /// resolves it with its own delay).
    pub fn object_changed(
        &mut self,
        obj: &ObjectRef,
        seen: SystemTime,
        pods: &HashMap<String, PodMeta>,
    ) {
        for (uid, pod) in pods.iter().filter(|(_, p)| p.namespace == obj.namespace) {
            let volumes = pod.volumes.iter().filter(|(_, sources)| {
                sources
                    .iter()
                    .any(|s| s.kind == obj.kind && s.name == obj.name)
            });
            for (volume, _) in volumes {
                let state = self
                    .pods
                    .entry(uid.clone())
                    .or_default()
                    .entry(volume.clone())
                    .or_default();
                if let Some(pending) = &mut state.pending {
                    if seen < pending.since {
                        pending.since = seen;
                        pending.object = obj.clone();
                    }
                    continue;
                }
                if let Some(swap) = &mut state.last_swap
                    && !swap.claimed
                    && paired(swap.at, seen)
                {
                    swap.claimed = true;
                    observe(&mut self.histograms, &pod.namespace, swap.at, seen);
                    continue;
                }
                state.pending = Some(Pending {
                    namespace: pod.namespace.clone(),
                    pod: pod.name.clone(),
                    since: seen,
                    object: obj.clone(),
                });
            }
        }
    }

    /// The kubelet swapped `..data` of this pod's volume at `at`: a pending change of
    /// it is resolved (see the module notes), else the swap waits, unpaired, for a
    /// change seen within [`EARLY_SWAP_WINDOW`] after it.
    pub fn swapped(&mut self, pod_uid: &str, volume: &str, at: SystemTime) {
        let state = self
            .pods
            .entry(pod_uid.to_owned())
            .or_default()
            .entry(volume.to_owned())
            .or_default();
        let mut claimed = false;
        if let Some(pending) = &state.pending
            && paired(at, pending.since)
        {
            observe(&mut self.histograms, &pending.namespace, at, pending.since);
            state.pending = None;
            claimed = true;
        }
        // Reports can come out of order: the latest swap is the one a change can pair
        // with.
        if state.last_swap.is_none_or(|last| last.at <= at) {
            state.last_swap = Some(Swap { at, claimed });
        }
    }

    /// The pod is gone: its pending changes and swaps are forgotten.
    pub fn pod_gone(&mut self, pod_uid: &str) {
        self.pods.remove(pod_uid);
    }

    /// Forgets every pod that is not in `pods` (after a relist).
    pub fn retain_pods(&mut self, pods: &HashMap<String, PodMeta>) {
        self.pods.retain(|uid, _| pods.contains_key(uid));
    }

    /// Volumes pending for `timeout` or longer at `now`, sorted by namespace, pod name,
    /// volume.
    pub fn pending_past(&self, now: SystemTime) -> Vec<PendingRef> {
        let mut out: Vec<PendingRef> = self
            .pods
            .iter()
            .flat_map(|(uid, volumes)| {
                volumes.iter().filter_map(move |(volume, state)| {
                    let pending = state.pending.as_ref()?;
                    let age = now.duration_since(pending.since).ok()?;
                    (age >= self.timeout).then(|| PendingRef {
                        namespace: pending.namespace.clone(),
                        pod: pending.pod.clone(),
                        volume: volume.clone(),
                        pod_uid: uid.clone(),
                        since: pending.since,
                        object: pending.object.clone(),
                    })
                })
            })
            .collect();
        out.sort();
        out
    }

    /// How many volumes are pending now, whatever their age.
    pub fn pending_count(&self) -> usize {
        self.pods
            .values()
            .flat_map(HashMap::values)
            .filter(|s| s.pending.is_some())
            .count()
    }

    /// Each namespace's delay histogram, by namespace; a namespace appears once it has
    /// had a delay observed, and stays.
    pub fn histograms(&self) -> impl Iterator<Item = (&str, &DelayHistogram)> {
        self.histograms.iter().map(|(ns, h)| (ns.as_str(), h))
    }
}

/// A swap at `at` is the swap of a change seen at `seen`.
fn paired(at: SystemTime, seen: SystemTime) -> bool {
    !seen
        .duration_since(at)
        .is_ok_and(|before| before > EARLY_SWAP_WINDOW)
}

/// Observes `at - since` (0 when the swap came first) in `namespace`'s histogram.
fn observe(
    histograms: &mut BTreeMap<String, DelayHistogram>,
    namespace: &str,
    at: SystemTime,
    since: SystemTime,
) {
    let delay = at.duration_since(since).unwrap_or_default();
    if let Some(h) = histograms.get_mut(namespace) {
        h.observe(delay.as_secs_f64());
    } else {
        let mut h = DelayHistogram::default();
        h.observe(delay.as_secs_f64());
        histograms.insert(namespace.to_owned(), h);
    }
}

/// The top-level fields of a ConfigMap or Secret that the kubelet writes to volumes.
const DATA_FIELDS: [&str; 3] = ["f:data", "f:binaryData", "f:stringData"];

/// Whether the latest write of an object touched its data, from its managedFields:
/// the newest entries by `time` (all of them on a tie: times have a 1 s resolution)
/// own `f:data`, `f:binaryData` or `f:stringData`. True when that cannot be told (no
/// entry with a time, an entry without `fieldsV1`, or one that is not a field set):
/// unknown counts as changed.
///
/// managedFields say which fields each manager owns, not what one write changed, so
/// this only tells a metadata-only change when it was made by a manager that owns no
/// data (`kubectl label`, `kubectl annotate`, a controller stamping annotations). A
/// label change by the manager that also set the data (the same `kubectl apply` or
/// operator), or an apply that re-sets unchanged data, counts as changed: the object
/// then stays pending until the timeout, since the kubelet has nothing to swap. A
/// write that only removes data keys may leave the newest entry without data and be
/// missed.
pub fn data_changed(managed_fields: &[ManagedFieldsEntry]) -> bool {
    let Some(newest) = managed_fields.iter().filter_map(|e| e.time.as_ref()).max() else {
        return true;
    };
    managed_fields
        .iter()
        .filter(|e| e.time.as_ref() == Some(newest))
        .any(|e| match e.fields_v1.as_ref().map(|f| f.0.as_object()) {
            Some(Some(fields)) => DATA_FIELDS.iter().any(|f| fields.contains_key(*f)),
            _ => true,
        })
}
