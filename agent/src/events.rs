//! Domain events: what the sources (probe, inotify walker, pod-logs dir) tell the
//! state owner. Raw kernel records never leave their source module.

use std::path::PathBuf;

use crate::{
    node::{pod_logs::PodName, volumes::VolumeKey},
    reloads::Opener,
    updates::Detection,
};

#[derive(Debug)]
pub enum Event {
    /// A source saw a volume's `..data` swapped.
    Detected(Detection),
    /// The walk found a volume (again, after a rescan); `current` is its `..data` target.
    VolumeFound {
        key: VolumeKey,
        dir: PathBuf,
        current: Option<String>,
    },
    VolumeGone(VolumeKey),
    /// A timestamped data dir was created in a volume: an update is under way.
    /// `late`: its open-event mark went on after the swap.
    DataDirCreated {
        key: VolumeKey,
        dir: PathBuf,
        ts_dir: String,
        late: bool,
    },
    /// A file of a volume's data dir `ts_dir` was opened by `opener` at `at`.
    Opened {
        opener: Opener,
        key: VolumeKey,
        ts_dir: String,
        at: std::time::SystemTime,
    },
    PodGone {
        uid: String,
    },
    PodNamed {
        uid: String,
        name: PodName,
    },
    /// A container's cgroup appeared in pod `pod_uid`: container `id` is starting.
    ContainerStarting {
        pod_uid: String,
        id: String,
    },
    /// The inotify queue overflowed: a rescan follows.
    InotifyOverflow,
    /// A walk of `pods_dir` found these volumes and no others below it.
    RescanDone {
        pods_dir: PathBuf,
        volumes: Vec<VolumeKey>,
    },
    /// The first full walk of every root is done: the agent is ready.
    ScanDone,
}

pub type Sender = tokio::sync::mpsc::Sender<Event>;
pub type Receiver = tokio::sync::mpsc::Receiver<Event>;

/// Events queued between the sources and the state owner. Beyond it the sources wait;
/// the probe's kernel ring buffer then fills and counts its losses.
pub const QUEUE: usize = 65_536;

pub fn channel() -> (Sender, Receiver) {
    tokio::sync::mpsc::channel(QUEUE)
}
