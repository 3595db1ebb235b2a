//! Volume updates: pairs what the two sources report into one update record per
//! (volume, new timestamped dir), and keeps each volume's count and last swap time.
//!
//! Pure state: time comes in as arguments, so every transition is unit-tested.
//!
//! Rules:
//! - A volume's first `..data` (no previous one known) is its initial population, not an update.
//! - A report naming the volume's current dir is a second sighting of a known update, or of
//!   the baseline taken when the volume was found; never a new update.
//! - A report for a volume not known yet (the probe is usually faster than the directory
//!   walk that discovers a new pod) waits up to `window` for the volume to be found.
//! - An update seen by one source only for `window` is a detection gap of the other.

mod closed;

use std::{
    collections::{HashMap, VecDeque},
    path::PathBuf,
    time::{Duration, Instant, SystemTime},
};

use closed::Closed;

use crate::node::{
    pod_logs::PodName,
    volumes::{VolumeKey, VolumeType},
};

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Source {
    Ebpf,
    Inotify,
}

impl Source {
    pub const ALL: [Source; 2] = [Source::Ebpf, Source::Inotify];

    pub fn label(self) -> &'static str {
        match self {
            Source::Ebpf => "ebpf",
            Source::Inotify => "inotify",
        }
    }

    fn index(self) -> usize {
        self as usize
    }
}

/// One source saw `..data` of `key` point to `ts_dir`, at `at` (the swap itself for eBPF,
/// the moment the event was read for inotify).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Detection {
    pub source: Source,
    pub key: VolumeKey,
    pub ts_dir: String,
    pub at: SystemTime,
}

/// An update seen by one source, waiting for the other.
#[derive(Clone, Debug)]
struct Open {
    ts_dir: String,
    seen: [bool; 2],
    since: Instant,
}

#[derive(Clone, Debug)]
pub struct VolumeState {
    pub dir: PathBuf,
    /// The `..data` target as last known.
    pub current: Option<String>,
    pub updates: u64,
    pub last_update: Option<SystemTime>,
    /// Which sources saw the newest update, indexed like [`Source`].
    pub last_seen_by: [bool; 2],
    open: Vec<Open>,
    /// Recently closed updates, so late sightings are not taken for new ones.
    closed: Closed,
}

impl VolumeState {
    /// The path of its current data dir, when known.
    pub fn data_dir(&self) -> Option<PathBuf> {
        Some(self.dir.join(self.current.as_ref()?))
    }
}

const PENDING_MAX: usize = 4096;

#[derive(Debug)]
pub struct Tracker {
    volumes: HashMap<VolumeKey, VolumeState>,
    pods: HashMap<String, PodName>,
    pending: VecDeque<(Detection, Instant)>,
    window: Duration,
    ebpf: bool,
    pub detections: [u64; 2],
    /// Indexed by the source that missed the update.
    pub gaps: [u64; 2],
    /// Reports dropped because their volume was never found.
    pub unmatched: u64,
    /// Each volume's data dir when a previous run of the agent last saved its state:
    /// found pointing elsewhere, the volume was updated while no agent ran.
    saved: HashMap<VolumeKey, (String, Option<SystemTime>)>,
    /// Volumes by pod uid: a pod whose volumes are gone already (as each goes before
    /// its pod when a pod dir is removed) is forgotten without a look at the others.
    per_pod: HashMap<String, usize>,
}

impl Tracker {
    /// `ebpf`: whether the probe runs, i.e. whether its silence is a gap.
    pub fn new(window: Duration, ebpf: bool) -> Self {
        Tracker {
            volumes: HashMap::new(),
            pods: HashMap::new(),
            pending: VecDeque::new(),
            window,
            ebpf,
            detections: [0; 2],
            gaps: [0; 2],
            unmatched: 0,
            saved: HashMap::new(),
            per_pod: HashMap::new(),
        }
    }

    /// A previous run's last known data dir of `key` (from `--state-file`).
    /// `swap`: the time of the update that put it there, when one was seen.
    pub fn saved(&mut self, key: VolumeKey, ts_dir: String, swap: Option<SystemTime>) {
        self.saved.insert(key, (ts_dir, swap));
    }

    pub fn set_ebpf(&mut self, on: bool) {
        self.ebpf = on;
    }

    pub fn volumes(&self) -> impl Iterator<Item = (&VolumeKey, &VolumeState)> {
        self.volumes.iter()
    }

    pub fn volume(&self, key: &VolumeKey) -> Option<&VolumeState> {
        self.volumes.get(key)
    }

    pub fn pod_name(&self, uid: &str) -> Option<&PodName> {
        self.pods.get(uid)
    }

    pub fn watched(&self, t: VolumeType) -> usize {
        self.volumes.keys().filter(|k| k.volume_type == t).count()
    }

    /// The directory walk found a volume; `current` is its `..data` target at that time.
    /// Found again (a rescan) with another target: inotify missed the swap, record it now.
    /// A volume found by the walk. First found pointing elsewhere than a previous run
    /// saved, it was updated while no agent ran: that counts as one update (several
    /// count as one), swapped at `swapped` (the `..data` symlink's mtime: the kubelet
    /// makes it right before the rename), which is returned.
    pub fn volume_found(
        &mut self,
        key: VolumeKey,
        dir: PathBuf,
        current: Option<String>,
        now: Instant,
        wall: SystemTime,
        swapped: impl FnOnce() -> Option<SystemTime>,
    ) -> Option<(String, SystemTime)> {
        let saved = self.saved.remove(&key);
        let mut while_down = None;
        match self.volumes.get(&key) {
            Some(v) if v.current == current || current.is_none() => {}
            Some(_) => {
                let ts_dir = current.expect("checked above");
                let det = Detection {
                    source: Source::Inotify,
                    key: key.clone(),
                    ts_dir,
                    at: wall,
                };
                self.detect(det, now);
            }
            None => {
                let mut last_update = None;
                if let (Some((saved, swap)), Some(cur)) = (saved, &current) {
                    if saved != *cur {
                        while_down = Some((cur.clone(), swapped().unwrap_or(wall)));
                    } else {
                        // The update a previous run saw last: its time is known still.
                        last_update = swap;
                    }
                }
                let v = VolumeState {
                    dir,
                    current,
                    updates: u64::from(while_down.is_some()),
                    last_update: while_down.as_ref().map(|(_, at)| *at).or(last_update),
                    last_seen_by: [false; 2],
                    open: Vec::new(),
                    closed: Closed::default(),
                };
                *self.per_pod.entry(key.pod_uid.clone()).or_default() += 1;
                self.volumes.insert(key.clone(), v);
                let (ready, rest): (Vec<_>, Vec<_>) =
                    self.pending.drain(..).partition(|(d, _)| d.key == key);
                self.pending = rest.into();
                for (det, _) in ready {
                    self.detect(det, now);
                }
            }
        }
        while_down
    }

    pub fn volume_gone(&mut self, key: &VolumeKey) {
        if self.volumes.remove(key).is_some()
            && let Some(n) = self.per_pod.get_mut(&key.pod_uid)
        {
            *n -= 1;
            if *n == 0 {
                self.per_pod.remove(&key.pod_uid);
            }
        }
    }

    /// The volumes of pod `uid` still known.
    pub fn pod_volumes(&self, uid: &str) -> Vec<VolumeKey> {
        if !self.per_pod.contains_key(uid) {
            return Vec::new();
        }
        (self.volumes.keys())
            .filter(|k| k.pod_uid == uid)
            .cloned()
            .collect()
    }

    pub fn pod_gone(&mut self, uid: &str) {
        if self.per_pod.remove(uid).is_some() {
            self.volumes.retain(|k, _| k.pod_uid != uid);
        }
        if !self.pending.is_empty() {
            self.pending.retain(|(d, _)| d.key.pod_uid != uid);
        }
        self.pods.remove(uid);
    }

    pub fn pod_named(&mut self, uid: String, name: PodName) {
        self.pods.insert(uid, name);
    }

    /// After a walk of `pods_dir`: forgets the volumes below it that the walk did not
    /// find (removed while the inotify queue overflowed).
    pub fn retain_found_under(
        &mut self,
        pods_dir: &std::path::Path,
        found: &std::collections::HashSet<VolumeKey>,
    ) {
        self.volumes
            .retain(|k, v| !v.dir.starts_with(pods_dir) || found.contains(k));
        self.per_pod.clear();
        for k in self.volumes.keys() {
            *self.per_pod.entry(k.pod_uid.clone()).or_default() += 1;
        }
    }

    pub fn detect(&mut self, det: Detection, now: Instant) {
        let Some(v) = self.volumes.get_mut(&det.key) else {
            if det.source == Source::Ebpf {
                if self.pending.len() == PENDING_MAX {
                    self.pending.pop_front();
                    self.unmatched += 1;
                }
                self.pending.push_back((det, now));
            }
            return;
        };
        let s = det.source.index();
        if let Some(open) = v.open.iter_mut().find(|o| o.ts_dir == det.ts_dir) {
            if !open.seen[s] {
                open.seen[s] = true;
                self.detections[s] += 1;
                if v.current.as_deref() == Some(&det.ts_dir) {
                    v.last_seen_by[s] = true;
                }
                // The probe's clock is the swap itself: prefer it for the newest update.
                if det.source == Source::Ebpf && v.current.as_deref() == Some(&det.ts_dir) {
                    v.last_update = Some(det.at);
                }
            }
            if open.seen.iter().all(|&b| b) {
                v.open.retain(|o| o.ts_dir != det.ts_dir);
                v.closed.remember(&det.ts_dir);
            }
            return;
        }
        if v.closed.contains(&det.ts_dir) || v.current.as_deref() == Some(&det.ts_dir) {
            return;
        }
        if v.current.is_none() {
            v.current = Some(det.ts_dir);
            return;
        }
        self.detections[s] += 1;
        v.updates += 1;
        let mut seen = [false; 2];
        seen[s] = true;
        // A report of an update older than the newest one known (one source's reports
        // arriving after the other's of later swaps): counted, but not the newest.
        if v.last_update.is_none_or(|newest| det.at >= newest) {
            v.last_update = Some(det.at);
            v.current = Some(det.ts_dir.clone());
            v.last_seen_by = seen;
        }
        if !self.ebpf {
            seen[Source::Ebpf.index()] = true;
        }
        if seen.iter().all(|&b| b) {
            v.closed.remember(&det.ts_dir);
        } else {
            v.open.push(Open {
                ts_dir: det.ts_dir,
                seen,
                since: now,
            });
        }
    }

    /// Closes what waited longer than the window: open updates become gaps, reports for
    /// volumes never found are dropped.
    pub fn tick(&mut self, now: Instant) {
        let window = self.window;
        for v in self.volumes.values_mut() {
            let (expired, open): (Vec<_>, Vec<_>) = v
                .open
                .drain(..)
                .partition(|o| now.duration_since(o.since) >= window);
            v.open = open;
            for o in expired {
                for src in Source::ALL {
                    if !o.seen[src.index()] {
                        self.gaps[src.index()] += 1;
                    }
                }
                v.closed.remember(&o.ts_dir);
            }
        }
        while let Some((_, since)) = self.pending.front() {
            if now.duration_since(*since) < window {
                break;
            }
            self.pending.pop_front();
            self.unmatched += 1;
        }
    }
}

#[cfg(test)]
mod tests;
