//! The watch linter's families: each consumer's findings, and how many inotify watches
//! the consuming containers hold, rendered from [`crate::watches::Linter`] at each
//! scrape. A consumer's series go with it.

use std::{collections::BTreeMap, sync::Arc};

use prometheus::{
    core::{Collector, Desc},
    proto::{MetricFamily, MetricType},
};

use super::{
    Shared,
    consumers::{Family, family, gauge},
};

const FINDINGS: Family = Family {
    name: "reloadscope_consumer_watch_findings",
    help: "1 while a consuming container's inotify watches on the volume show this finding: ok, dont_follow, no_delete_self, not_rewatched, watches_timestamped_dir, subpath.",
    kind: MetricType::GAUGE,
    labels: &["namespace", "pod", "container", "volume", "finding"],
};
const OBSERVED: Family = Family {
    name: "reloadscope_inotify_watches_observed",
    help: "inotify watches held by the processes of containers that consume a volume, at the last inventory.",
    kind: MetricType::GAUGE,
    labels: &["namespace"],
};

pub struct WatchCollector {
    shared: Arc<Shared>,
    descs: Vec<Desc>,
}

impl WatchCollector {
    pub fn new(shared: Arc<Shared>) -> prometheus::Result<Self> {
        let descs = [&FINDINGS, &OBSERVED]
            .iter()
            .map(|f| {
                let labels = f.labels.iter().map(|l| l.to_string()).collect();
                Desc::new(f.name.into(), f.help.into(), labels, Default::default())
            })
            .collect::<Result<_, _>>()?;
        Ok(WatchCollector { shared, descs })
    }
}

impl Collector for WatchCollector {
    fn desc(&self) -> Vec<&Desc> {
        self.descs.iter().collect()
    }

    fn collect(&self) -> Vec<MetricFamily> {
        let tracker = self.shared.tracker.lock().expect("tracker lock");
        let l = self.shared.linter.lock().expect("linter lock");
        let pod = |uid: &str| match tracker.pod_name(uid) {
            Some(n) => (n.namespace.clone(), n.name.clone()),
            None => (String::new(), uid.to_owned()),
        };
        let mut findings = Vec::new();
        for (key, st) in l.consumers() {
            let (ns, name) = pod(&key.pod_uid);
            for f in &st.findings {
                let values = [ns.as_str(), &name, &st.name, &key.name, f.label()];
                findings.push(gauge(FINDINGS.labels, &values, 1.0));
            }
        }
        let mut by_ns: BTreeMap<String, usize> = BTreeMap::new();
        for (uid, n) in &l.observed {
            *by_ns.entry(pod(uid).0).or_default() += n;
        }
        let observed = by_ns
            .iter()
            .map(|(ns, n)| gauge(OBSERVED.labels, &[ns], *n as f64))
            .collect();
        vec![family(&FINDINGS, findings), family(&OBSERVED, observed)]
    }
}
