//! Label and cardinality controls: which labels the per-consumer families keep, and
//! which namespaces and volumes are exported at all.
//!
//! - `--metric-labels` picks, of [`CONSUMER_LABELS`], the labels of every per-consumer
//!   family, always in that order. Consumers with the same values of the kept labels
//!   share one series; each family says in its HELP how it merges them.
//! - `--histogram-labels` restricts the latency histogram further: it keeps the labels
//!   both flags list.
//! - `--namespaces`, `--exclude-namespaces` and `--exclude-volumes` drop series of
//!   every per-volume, per-consumer, per-pod and per-namespace family. A pod whose
//!   namespace is not known yet (no on-node name) is exported only while no
//!   `--namespaces` list is set.

use std::collections::HashMap;

use crate::updates::Tracker;

/// The labels a per-consumer family can keep, in this order.
pub const CONSUMER_LABELS: [&str; 5] = ["namespace", "workload", "pod", "container", "volume"];

/// Index of `workload` in [`CONSUMER_LABELS`].
const WORKLOAD: usize = 1;

#[derive(Clone, Debug)]
pub struct LabelControls {
    /// Labels the per-consumer families keep, of [`CONSUMER_LABELS`].
    pub consumer: Vec<String>,
    /// Namespaces exported; empty: all.
    pub namespaces: Vec<String>,
    /// Namespaces never exported.
    pub exclude_namespaces: Vec<String>,
    /// Volumes (by name) never exported.
    pub exclude_volumes: Option<regex::Regex>,
}

impl Default for LabelControls {
    fn default() -> Self {
        LabelControls {
            consumer: CONSUMER_LABELS.map(String::from).to_vec(),
            namespaces: Vec::new(),
            exclude_namespaces: Vec::new(),
            exclude_volumes: None,
        }
    }
}

impl LabelControls {
    /// Whether series of this namespace are exported; None: not known yet, exported
    /// only when no `namespaces` list is set.
    pub fn exports_namespace(&self, namespace: Option<&str>) -> bool {
        match namespace {
            Some(ns) => {
                (self.namespaces.is_empty() || self.namespaces.iter().any(|n| n == ns))
                    && !self.exclude_namespaces.iter().any(|n| n == ns)
            }
            None => self.namespaces.is_empty(),
        }
    }

    /// Whether series of this volume (by name) are exported.
    pub fn exports_volume(&self, volume: &str) -> bool {
        !self
            .exclude_volumes
            .as_ref()
            .is_some_and(|re| re.is_match(volume))
    }

    /// Whether series of this namespace's volume are exported.
    pub fn exports(&self, namespace: Option<&str>, volume: &str) -> bool {
        self.exports_namespace(namespace) && self.exports_volume(volume)
    }
}

/// The latency histogram's label names for `--histogram-labels`, as indexes into
/// [`CONSUMER_LABELS`]: a subset of namespace, workload, pod, container, volume. An
/// unknown name is an error naming the choices.
pub fn histogram_labels(names: &[String]) -> Result<Vec<usize>, String> {
    names
        .iter()
        .map(|n| {
            CONSUMER_LABELS.iter().position(|l| l == n).ok_or_else(|| {
                format!(
                    "unknown histogram label {n:?}: choose from {}",
                    CONSUMER_LABELS.join(", ")
                )
            })
        })
        .collect::<Result<Vec<_>, _>>()
        .map(|mut v| {
            v.sort_unstable();
            v.dedup();
            v
        })
}

/// The labels a per-consumer family keeps: indexes into [`CONSUMER_LABELS`], ascending.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(super) struct Selection(Vec<usize>);

impl Selection {
    /// The labels of `--metric-labels` (names that are not consumer labels are ignored:
    /// the flag refuses them).
    pub fn consumer(controls: &LabelControls) -> Self {
        let keep = CONSUMER_LABELS
            .iter()
            .enumerate()
            .filter(|(_, l)| controls.consumer.iter().any(|c| c == *l))
            .map(|(i, _)| i)
            .collect();
        Selection(keep)
    }

    /// Those of these labels that `also` (indexes, from [`histogram_labels`]) lists.
    pub fn restricted(&self, also: &[usize]) -> Self {
        Selection(
            self.0
                .iter()
                .copied()
                .filter(|i| also.contains(i))
                .collect(),
        )
    }

    pub fn keeps_workload(&self) -> bool {
        self.0.contains(&WORKLOAD)
    }

    /// The kept label names, in the contract's order.
    pub fn names(&self) -> Vec<&'static str> {
        self.0.iter().map(|&i| CONSUMER_LABELS[i]).collect()
    }

    /// The same, with `workload_kind` before `workload` (consumer info).
    pub fn names_with_kind(&self) -> Vec<&'static str> {
        let mut out = Vec::new();
        for &i in &self.0 {
            if i == WORKLOAD {
                out.push("workload_kind");
            }
            out.push(CONSUMER_LABELS[i]);
        }
        out
    }

    /// The kept values of a consumer's values of all [`CONSUMER_LABELS`].
    pub fn values(&self, all: &ConsumerValues) -> Vec<String> {
        self.0.iter().map(|&i| all.values[i].to_owned()).collect()
    }

    /// The same, with the workload's kind before its name, as [`Self::names_with_kind`].
    pub fn values_with_kind(&self, all: &ConsumerValues) -> Vec<String> {
        let mut out = Vec::new();
        for &i in &self.0 {
            if i == WORKLOAD {
                out.push(all.workload_kind.to_owned());
            }
            out.push(all.values[i].to_owned());
        }
        out
    }
}

/// A consumer's values of every [`CONSUMER_LABELS`], and its workload's kind.
pub(super) struct ConsumerValues<'a> {
    pub values: [&'a str; 5],
    pub workload_kind: &'a str,
}

/// Workloads of this node's pods by uid, as (kind, name): a copy, taken under the
/// metadata lock alone so that no scrape holds it together with another.
pub(super) type Workloads = HashMap<String, (String, String)>;

pub(super) fn workloads(shared: &super::Shared) -> Workloads {
    let meta = shared.meta.state.lock().expect("meta lock");
    meta.pods
        .iter()
        .filter_map(|(uid, p)| {
            let w = p.workload.as_ref()?;
            Some((uid.clone(), (w.kind.clone(), w.name.clone())))
        })
        .collect()
}

impl<'a> ConsumerValues<'a> {
    /// A consumer of `volume` in pod `pod_uid`, named `container`: the pod's on-node
    /// names (namespace None and the uid as pod name while they are unknown) and its
    /// workload ("" when unknown).
    pub fn new(
        tracker: &'a Tracker,
        workloads: &'a Workloads,
        pod_uid: &'a str,
        container: &'a str,
        volume: &'a str,
    ) -> (Option<&'a str>, Self) {
        let (namespace, pod) = pod_names(tracker, pod_uid);
        let (workload_kind, workload) = workloads
            .get(pod_uid)
            .map_or(("", ""), |(k, n)| (k.as_str(), n.as_str()));
        let values = [namespace.unwrap_or(""), workload, pod, container, volume];
        (
            namespace,
            ConsumerValues {
                values,
                workload_kind,
            },
        )
    }
}

/// A pod's exported namespace and name: its on-node names, else no namespace and the
/// uid as name.
pub(super) fn pod_names<'a>(tracker: &'a Tracker, uid: &'a str) -> (Option<&'a str>, &'a str) {
    match tracker.pod_name(uid) {
        Some(n) => (Some(n.namespace.as_str()), n.name.as_str()),
        None => (None, uid),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn controls(namespaces: &[&str], exclude: &[&str], volumes: Option<&str>) -> LabelControls {
        LabelControls {
            namespaces: namespaces.iter().map(|s| s.to_string()).collect(),
            exclude_namespaces: exclude.iter().map(|s| s.to_string()).collect(),
            exclude_volumes: volumes.map(|r| regex::Regex::new(&format!("^(?:{r})$")).unwrap()),
            ..LabelControls::default()
        }
    }

    #[test]
    fn namespace_filters_and_unknown_namespaces() {
        let all = controls(&[], &[], None);
        assert!(all.exports_namespace(Some("a")) && all.exports_namespace(None));
        let only = controls(&["a", "b"], &[], None);
        assert!(only.exports_namespace(Some("b")));
        assert!(!only.exports_namespace(Some("c")));
        assert!(!only.exports_namespace(None), "unknown: not in the list");
        let except = controls(&[], &["kube-system"], None);
        assert!(!except.exports_namespace(Some("kube-system")));
        assert!(except.exports_namespace(Some("a")) && except.exports_namespace(None));
        let both = controls(&["a", "b"], &["b"], None);
        assert!(both.exports_namespace(Some("a")) && !both.exports_namespace(Some("b")));
    }

    #[test]
    fn volume_filter_matches_whole_names() {
        let c = controls(&[], &[], Some("kube-api-access-.*"));
        assert!(!c.exports_volume("kube-api-access-x7k2p"));
        assert!(c.exports_volume("app-config"));
        assert!(
            c.exports_volume("my-kube-api-access-1"),
            "anchored at the start"
        );
        assert!(!c.exports(Some("a"), "kube-api-access-1"));
        assert!(c.exports(Some("a"), "tls"));
    }

    #[test]
    fn selection_keeps_the_contract_order_whatever_the_flag_order() {
        let c = LabelControls {
            consumer: ["volume", "workload", "namespace"]
                .map(String::from)
                .to_vec(),
            ..LabelControls::default()
        };
        let s = Selection::consumer(&c);
        assert_eq!(s.names(), ["namespace", "workload", "volume"]);
        assert_eq!(
            s.names_with_kind(),
            ["namespace", "workload_kind", "workload", "volume"]
        );
        let v = ConsumerValues {
            values: ["ns", "web", "web-0", "app", "cfg"],
            workload_kind: "StatefulSet",
        };
        assert_eq!(s.values(&v), ["ns", "web", "cfg"]);
        assert_eq!(s.values_with_kind(&v), ["ns", "StatefulSet", "web", "cfg"]);
        let hist = histogram_labels(&["pod".into(), "volume".into(), "namespace".into()]);
        let h = s.restricted(&hist.unwrap());
        assert_eq!(
            h.names(),
            ["namespace", "volume"],
            "pod was dropped already"
        );
        assert!(!h.keeps_workload());
        let default = Selection::consumer(&LabelControls::default());
        assert_eq!(default.names(), CONSUMER_LABELS);
    }

    #[test]
    fn histogram_labels_take_workload_and_refuse_unknown_names() {
        assert_eq!(
            histogram_labels(&["volume".into(), "workload".into(), "volume".into()]),
            Ok(vec![1, 4])
        );
        let err = histogram_labels(&["pod".into(), "node".into()]).unwrap_err();
        assert!(
            err.contains("\"node\"") && err.contains("namespace, workload, pod, container, volume"),
            "{err}"
        );
    }
}
