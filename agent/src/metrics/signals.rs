//! The reload signals' families (`--reload-signals`), rendered from
//! [`Record`](crate::signals::Record) at each scrape: signals sent and not sent, by
//! the pod's namespace and workload (and why not). Nothing without the flag. The
//! per-consumer `reloadscope_consumer_stale_since_signal_seconds` is rendered with the
//! other consumer families ([`super::consumers`]).

use std::sync::Arc;

use prometheus::{
    core::{Collector, Desc},
    proto::{MetricFamily, MetricType},
};

use super::{
    LabelControls, Shared,
    render::{Family, counter, family},
};

const SENT: Family = Family {
    name: "reloadscope_reload_signals_sent_total",
    help: "Reload signals sent to the containers of pods annotated reloadscope.dev/reload-signal, at their volumes' swaps (--reload-signals), by the pod's namespace and workload (empty without an owner).",
    kind: MetricType::COUNTER,
    labels: &["namespace", "workload"],
};
const FAILED: Family = Family {
    name: "reloadscope_reload_signals_failed_total",
    help: "Reload signals not sent, by the pod's namespace and workload and why: unknown_signal (the annotation names no signal), no_process (no running process of the container), pid_reused (the process found is not the container's any more: not signalled), process_gone (it exited), permission (no CAP_KILL), error. Each is also a ReloadSignalFailed Warning Event on the pod.",
    kind: MetricType::COUNTER,
    labels: &["namespace", "workload", "reason"],
};

pub struct SignalCollector {
    shared: Arc<Shared>,
    controls: LabelControls,
    descs: Vec<Desc>,
}

impl SignalCollector {
    pub fn new(shared: Arc<Shared>, controls: LabelControls) -> prometheus::Result<Self> {
        let descs = [&SENT, &FAILED]
            .iter()
            .map(|f| f.fixed_desc())
            .collect::<Result<_, _>>()?;
        Ok(SignalCollector {
            shared,
            controls,
            descs,
        })
    }
}

impl Collector for SignalCollector {
    fn desc(&self) -> Vec<&Desc> {
        self.descs.iter().collect()
    }

    fn collect(&self) -> Vec<MetricFamily> {
        let rec = self.shared.signals.lock().expect("signals lock");
        if !rec.enabled {
            return Vec::new();
        }
        let exported = |ns: &str| self.controls.exports_namespace(Some(ns));
        let sent = (rec.sent.iter())
            .filter(|((ns, _), _)| exported(ns))
            .map(|((ns, w), n)| counter(SENT.labels, &[ns, w], *n as f64))
            .collect();
        let failed = (rec.failed.iter())
            .filter(|((ns, ..), _)| exported(ns))
            .map(|((ns, w, f), n)| counter(FAILED.labels, &[ns.as_str(), w, f.label()], *n as f64))
            .collect();
        vec![family(&SENT, sent), family(&FAILED, failed)]
    }
}
