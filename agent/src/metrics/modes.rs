//! What the agent was told to run, beside what loaded: `reloadscope_ebpf_enabled` is 0
//! under `--probe off` or `--no-ebpf`, `reloadscope_reloads_enabled` under
//! `--no-reloads`. `reloadscope_ebpf_loaded` and `reloadscope_fanotify_loaded` are 0
//! both when a part was switched off and when it failed to load; these tell the two
//! apart, so an alert can stay silent for a mode chosen on purpose.

use std::sync::{Arc, atomic::Ordering::Relaxed};

use prometheus::{
    core::{Collector, Desc},
    proto::{MetricFamily, MetricType},
};

use super::render::{Family, family, gauge};
use crate::state::Shared;

const EBPF_ENABLED: Family = Family {
    name: "reloadscope_ebpf_enabled",
    help: "1 when the agent is to load the eBPF probe, 0 when it was told not to (--probe off, --no-ebpf); whether it loaded is reloadscope_ebpf_loaded.",
    kind: MetricType::GAUGE,
    labels: &[],
};
const RELOADS_ENABLED: Family = Family {
    name: "reloadscope_reloads_enabled",
    help: "1 when the agent is to measure reloads, 0 when it was told not to (--no-reloads: detection only); whether fanotify loaded is reloadscope_fanotify_loaded.",
    kind: MetricType::GAUGE,
    labels: &[],
};

pub struct ModeCollector {
    shared: Arc<Shared>,
    descs: Vec<Desc>,
}

impl ModeCollector {
    pub fn new(shared: Arc<Shared>) -> prometheus::Result<Self> {
        let descs = vec![EBPF_ENABLED.fixed_desc()?, RELOADS_ENABLED.fixed_desc()?];
        Ok(ModeCollector { shared, descs })
    }
}

impl Collector for ModeCollector {
    fn desc(&self) -> Vec<&Desc> {
        self.descs.iter().collect()
    }

    fn collect(&self) -> Vec<MetricFamily> {
        let none: [&str; 0] = [];
        let one = |on: bool| vec![gauge(&[], &none, f64::from(u8::from(on)))];
        vec![
            family(&EBPF_ENABLED, one(self.shared.ebpf_enabled.load(Relaxed))),
            family(
                &RELOADS_ENABLED,
                one(self.shared.reloads_enabled.load(Relaxed)),
            ),
        ]
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;
    use crate::updates::Tracker;

    fn values(shared: Arc<Shared>) -> Vec<(String, f64)> {
        let collector = ModeCollector::new(shared).unwrap();
        collector
            .collect()
            .iter()
            .map(|f| {
                (
                    f.name().to_owned(),
                    f.get_metric()[0].get_gauge().get_value(),
                )
            })
            .collect()
    }

    #[test]
    fn each_part_is_enabled_until_switched_off() {
        let shared = Arc::new(Shared::new(Tracker::new(Duration::from_secs(2), false)));
        let named = |ebpf: f64, reloads: f64| {
            vec![
                ("reloadscope_ebpf_enabled".to_owned(), ebpf),
                ("reloadscope_reloads_enabled".to_owned(), reloads),
            ]
        };
        assert_eq!(values(shared.clone()), named(1.0, 1.0));
        shared.ebpf_enabled.store(false, Relaxed);
        assert_eq!(values(shared.clone()), named(0.0, 1.0));
        shared.reloads_enabled.store(false, Relaxed);
        shared.ebpf_enabled.store(true, Relaxed);
        assert_eq!(values(shared), named(1.0, 0.0));
    }
}
