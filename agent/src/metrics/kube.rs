//! The Kubernetes API's families: whether the API answers, and the propagation of
//! ConfigMap and Secret changes to this node's volumes, rendered from
//! [`MetaState`](crate::kubeapi::MetaState) at each scrape.
//!
//! - `reloadscope_kube_api_up` only where an API is configured.
//! - `reloadscope_propagation_delay_seconds{namespace}`: one histogram per namespace
//!   that has had a delay observed (they only grow).
//! - `reloadscope_propagation_pending{namespace,pod,volume}`: 1 for each volume whose
//!   change has waited the propagation timeout; the series goes when the swap comes.
//!
//! The namespace and volume filters apply to both propagation families.

use std::{sync::Arc, time::SystemTime};

use prometheus::{
    core::{Collector, Desc},
    proto::{MetricFamily, MetricType},
};

use super::{
    LabelControls, Shared,
    render::{Family, family, gauge, histogram},
};

const API_UP: Family = Family {
    name: "reloadscope_kube_api_up",
    help: "1 when the agent's last list or watch call to the Kubernetes API succeeded, 0 when the API is unreachable or refuses it: volumes and pods then keep their on-node names and no propagation delay is measured. Exported only where an API is configured.",
    kind: MetricType::GAUGE,
    labels: &[],
};
const DELAY: Family = Family {
    name: "reloadscope_propagation_delay_seconds",
    help: "Time from a ConfigMap or Secret change seen on the Kubernetes API to the kubelet's swap of a volume holding it on this node, by the pod's namespace; 0 when the swap came first.",
    kind: MetricType::HISTOGRAM,
    labels: &["namespace"],
};
const PENDING: Family = Family {
    name: "reloadscope_propagation_pending",
    help: "1 for each volume holding a ConfigMap or Secret that changed on the Kubernetes API and that the kubelet has not swapped on this node within --propagation-timeout.",
    kind: MetricType::GAUGE,
    labels: &["namespace", "pod", "volume"],
};

pub struct KubeCollector {
    shared: Arc<Shared>,
    controls: LabelControls,
    descs: Vec<Desc>,
}

impl KubeCollector {
    pub fn new(shared: Arc<Shared>, controls: LabelControls) -> prometheus::Result<Self> {
        let descs = [&API_UP, &DELAY, &PENDING]
            .iter()
            .map(|f| f.fixed_desc())
            .collect::<Result<_, _>>()?;
        Ok(KubeCollector {
            shared,
            controls,
            descs,
        })
    }
}

impl Collector for KubeCollector {
    fn desc(&self) -> Vec<&Desc> {
        self.descs.iter().collect()
    }

    fn collect(&self) -> Vec<MetricFamily> {
        let now = SystemTime::now();
        let meta = self.shared.meta.state.lock().expect("meta lock");
        let none: [&str; 0] = [];
        let up = if meta.configured {
            vec![gauge(&[], &none, f64::from(u8::from(meta.api_up)))]
        } else {
            Vec::new()
        };
        let delay = meta
            .propagation
            .histograms()
            .filter(|(ns, _)| self.controls.exports_namespace(Some(ns)))
            .map(|(ns, h)| histogram(DELAY.labels, &[ns], h))
            .collect();
        let mut pending = meta.propagation.pending_past(now);
        pending.retain(|p| self.controls.exports(Some(&p.namespace), &p.volume));
        // Sorted by namespace, pod, volume: a pod recreated under the same name
        // (StatefulSet) while the old one is still known would repeat a series.
        pending.dedup_by(|a, b| {
            (&a.namespace, &a.pod, &a.volume) == (&b.namespace, &b.pod, &b.volume)
        });
        let pending = pending
            .iter()
            .map(|p| gauge(PENDING.labels, &[&p.namespace, &p.pod, &p.volume], 1.0))
            .collect();
        vec![
            family(&API_UP, up),
            family(&DELAY, delay),
            family(&PENDING, pending),
        ]
    }
}
