//! The watch linter's families: each consumer's findings, and how many inotify watches
//! the consuming containers hold, rendered from [`crate::linter::Linter`] at each
//! scrape. A consumer's series go with it.
//!
//! Findings keep the labels `--metric-labels` chooses, and `finding`: consumers with
//! the same kept values share a series, the number of them with that finding.

use std::{collections::BTreeMap, sync::Arc};

use prometheus::{
    core::{Collector, Desc},
    proto::{MetricFamily, MetricType},
};

use super::{
    LabelControls, Shared,
    labels::{ConsumerValues, Selection, pod_names, workloads},
    render::{Family, family, gauge},
};

const FINDINGS: Family = Family {
    name: "reloadscope_consumer_watch_findings",
    help: "Number of consuming containers whose inotify watches on the volume show this finding (ok, dont_follow, no_delete_self, not_rewatched, watches_timestamped_dir, pinned_by_subpath, subpath): 1 per container, more where --metric-labels drops the labels that tell them apart.",
    kind: MetricType::GAUGE,
    labels: &[],
};
const OBSERVED: Family = Family {
    name: "reloadscope_inotify_watches_observed",
    help: "inotify watches held by the processes of containers that consume a volume, at the last inventory.",
    kind: MetricType::GAUGE,
    labels: &["namespace"],
};

pub struct WatchCollector {
    shared: Arc<Shared>,
    controls: LabelControls,
    labels: Selection,
    descs: Vec<Desc>,
}

impl WatchCollector {
    pub fn new(shared: Arc<Shared>, controls: LabelControls) -> prometheus::Result<Self> {
        let labels = Selection::consumer(&controls);
        let mut names = labels.names();
        names.push("finding");
        let descs = vec![FINDINGS.desc(&names)?, OBSERVED.fixed_desc()?];
        Ok(WatchCollector {
            shared,
            controls,
            labels,
            descs,
        })
    }
}

impl Collector for WatchCollector {
    fn desc(&self) -> Vec<&Desc> {
        self.descs.iter().collect()
    }

    fn collect(&self) -> Vec<MetricFamily> {
        let workloads = if self.labels.keeps_workload() {
            workloads(&self.shared)
        } else {
            Default::default()
        };
        let tracker = self.shared.tracker.lock().expect("tracker lock");
        let l = self.shared.linter.lock().expect("linter lock");
        let mut findings: BTreeMap<Vec<String>, u64> = BTreeMap::new();
        for (key, st) in l.consumers() {
            let (ns, values) =
                ConsumerValues::new(&tracker, &workloads, &key.pod_uid, &st.name, &key.name);
            if !self.controls.exports(ns, &key.name) {
                continue;
            }
            let kept = self.labels.values(&values);
            for f in &st.findings {
                let mut k = kept.clone();
                k.push(f.label().to_owned());
                *findings.entry(k).or_default() += 1;
            }
        }
        let mut by_ns: BTreeMap<&str, usize> = BTreeMap::new();
        for (uid, n) in &l.observed {
            let (ns, _) = pod_names(&tracker, uid);
            if self.controls.exports_namespace(ns) {
                *by_ns.entry(ns.unwrap_or("")).or_default() += n;
            }
        }
        let mut names = self.labels.names();
        names.push("finding");
        let findings = findings
            .iter()
            .map(|(v, n)| gauge(&names, v, *n as f64))
            .collect();
        let observed = by_ns
            .iter()
            .map(|(ns, n)| gauge(OBSERVED.labels, &[ns], *n as f64))
            .collect();
        vec![family(&FINDINGS, findings), family(&OBSERVED, observed)]
    }
}
