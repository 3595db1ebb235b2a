//! Reload signals (`--reload-signals`, off by default): a pod annotated
//! `reloadscope.dev/reload-signal: SIGHUP` has each container that consumes an updated
//! volume signalled at the kubelet's swap of that volume (not at the API change), once
//! per update, so that a program that reloads on a signal and watches no file gets its
//! new data; the reload measurement then says whether it did.
//!
//! - [`annotation`]: what a pod asks for.
//! - [`batch`]: when: one signal per container per update, a pod's volumes swapped
//!   together joined, a rate limit per container.
//! - [`send`]: how: a pidfd, checked against the container's cgroup and the process's
//!   start time before the signal.
//! - [`Record`]: what was sent and what failed, for the metrics and the Warning Events.
//!   The task that does it is the agent's (`agent::signal_loop`).

pub mod annotation;
pub mod batch;
pub mod send;

use std::{
    collections::{BTreeMap, HashMap, VecDeque},
    time::SystemTime,
};

pub use annotation::{Request, Signal};
pub use send::Failure;

use crate::node::{stat::MainProcess, volumes::VolumeKey};

/// The kubelet swapped `key` to `ts_dir`: the state loop's word to the signal task.
#[derive(Clone, Debug)]
pub struct Swapped {
    pub key: VolumeKey,
    pub ts_dir: String,
}

/// A signal that could not be sent, for a Warning Event on the pod.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Unsent {
    pub pod_uid: String,
    pub container: String,
    /// The volumes whose update it was for.
    pub volumes: Vec<String>,
    /// The signal's name, as the annotation writes it when it names none.
    pub signal: String,
    pub failure: Failure,
}

/// Warning Events waiting to be posted, at most this many (the oldest dropped).
const UNSENT_MAX: usize = 256;

/// What the signal task did, read by scrapes and by the Event poster.
#[derive(Debug, Default)]
pub struct Record {
    /// `--reload-signals` is on.
    pub enabled: bool,
    /// Signals sent, by namespace and workload.
    pub sent: BTreeMap<(String, String), u64>,
    /// Signals not sent, by namespace, workload and why.
    pub failed: BTreeMap<(String, String, Failure), u64>,
    /// For each (volume, container id): the data dir of the last update a signal was
    /// sent for, and when.
    pub last: HashMap<(VolumeKey, String), (String, SystemTime)>,
    /// Each container's main process, from the last consumer scan.
    pub main: HashMap<String, MainProcess>,
    /// Failures to post as Warning Events.
    pub unsent: VecDeque<Unsent>,
}

impl Record {
    /// One more signal sent to a container of `workload` in `namespace`.
    pub fn count_sent(&mut self, namespace: String, workload: String) {
        *self.workload(namespace, workload) += 1;
    }

    /// One more signal not sent, for `failure`.
    pub fn count_failed(&mut self, namespace: String, workload: String, failure: Failure) {
        self.workload(namespace.clone(), workload.clone());
        *self
            .failed
            .entry((namespace, workload, failure))
            .or_default() += 1;
    }

    /// The sent count of a workload; the first time, its sent and failed counts of
    /// every reason start at 0, so that a rate over them sees its first failure.
    fn workload(&mut self, namespace: String, workload: String) -> &mut u64 {
        if !self
            .sent
            .contains_key(&(namespace.clone(), workload.clone()))
        {
            for f in Failure::ALL {
                let key = (namespace.clone(), workload.clone(), f);
                self.failed.entry(key).or_default();
            }
        }
        self.sent.entry((namespace, workload)).or_default()
    }

    /// Queues a Warning Event, dropping the oldest beyond [`UNSENT_MAX`].
    pub fn queue(&mut self, u: Unsent) {
        if self.unsent.len() >= UNSENT_MAX {
            self.unsent.pop_front();
        }
        self.unsent.push_back(u);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_workloads_counts_start_at_zero_for_every_reason() {
        let mut r = Record::default();
        r.count_failed("shop".into(), "web".into(), Failure::PidReused);
        assert_eq!(r.sent[&("shop".into(), "web".into())], 0);
        for f in Failure::ALL {
            let n = r.failed[&("shop".into(), "web".into(), f)];
            assert_eq!(n, u64::from(f == Failure::PidReused), "{f:?}");
        }
        r.count_sent("shop".into(), "web".into());
        r.count_sent("shop".into(), "web".into());
        assert_eq!(r.sent[&("shop".into(), "web".into())], 2);
        assert_eq!(r.failed.len(), Failure::ALL.len());
    }

    #[test]
    fn at_most_so_many_unsent_wait_the_oldest_dropped() {
        let mut r = Record::default();
        for i in 0..UNSENT_MAX + 3 {
            r.queue(Unsent {
                pod_uid: i.to_string(),
                container: "c".into(),
                volumes: vec![],
                signal: "SIGHUP".into(),
                failure: Failure::NoProcess,
            });
        }
        assert_eq!(r.unsent.len(), UNSENT_MAX);
        assert_eq!(r.unsent[0].pod_uid, "3");
    }
}
