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

use crate::{consumers::MainProcess, node::volumes::VolumeKey};

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
    /// Queues a Warning Event, dropping the oldest beyond [`UNSENT_MAX`].
    pub fn queue(&mut self, u: Unsent) {
        if self.unsent.len() >= UNSENT_MAX {
            self.unsent.pop_front();
        }
        self.unsent.push_back(u);
    }
}
