//! Reloads: for every volume update, which consuming containers opened the new data and
//! how long after the swap (README, "How it works", defines each term).
//!
//! - Swap time: the update's `..data` rename (the probe's clock when it saw it).
//! - A container's reload: the first open, by any process of that container, of a file
//!   in the new timestamped dir, at or after the swap. Latency = reload - swap.
//! - Opens by the kubelet, by host processes or by other pods are never reloads.
//! - A container *reads* a volume once the agent has seen it open a file of the volume
//!   (any data dir, before or after an update), found it holding one open, or found an
//!   inotify watch of its processes on the volume ([`Reads`]).
//! - A container is stale for a volume while it reads it and has not reloaded the
//!   newest update. One never seen reading is not: whether it holds old data is not
//!   known (most never read their `kube-api-access-*` token, which the kubelet rewrites
//!   every hour or so).
//! - A container whose processes started after the swap reloaded at its start.
//! - subPath consumers never get an update: they are reported as such, never as stale.
//!
//! A read made once at a container's start is seen only if the volume's opens are
//! reported then: a volume that appears while the agent runs (a pod starting), and the
//! volumes of a pod one of whose containers is starting (its cgroup appears), keep
//! their opens reported for the first-read window, and a consumer whose start was
//! watched so keeps them reported until it is seen reading or the window after its
//! start ends ([`Reloads::settled`]).
//!
//! Pure state; time comes in as arguments.

use std::{
    collections::{HashMap, HashSet, VecDeque},
    time::{Duration, SystemTime},
};

use crate::{
    histogram::{Buckets, Histogram},
    node::volumes::VolumeKey,
};

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum MountKind {
    /// The volume dir bound whole: sees updates through `..data`.
    Volume,
    /// One file bound through `volume-subpaths`: pinned to the data of its start.
    SubPath,
}

impl MountKind {
    pub fn label(self) -> &'static str {
        match self {
            MountKind::Volume => "volume",
            MountKind::SubPath => "subpath",
        }
    }
}

/// Who opened a file of a volume.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Opener {
    /// A process of this container (by container id).
    Container {
        pod_uid: String,
        id: String,
    },
    Kubelet,
    /// Any other process outside pods.
    Host,
    /// Someone: the approximate source (inotify) cannot tell who. Credited to every
    /// stale consumer of the volume.
    Unattributed,
}

/// Foreign opens, by opener kind: `kubelet`, `host`, `other_pod`.
pub const FOREIGN: [&str; 3] = ["kubelet", "host", "other_pod"];

/// A container found consuming a volume.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Found {
    pub id: String,
    pub name: String,
    pub mount: MountKind,
    /// Start of its oldest process.
    pub started: SystemTime,
    /// The same, exactly: clock ticks since boot. Wall times converted from it drift by
    /// microseconds from one scan to the next; a restart is a change of this.
    pub start_ticks: u64,
    /// The container's bind mount of the volume, reachable from the agent (through
    /// `/proc/<pid>/root`): where its opens are watched.
    pub mount_path: Option<std::path::PathBuf>,
    /// The data dirs its processes hold a file of open, and when their fds were listed.
    pub holds: Vec<String>,
    pub listed_at: SystemTime,
    /// Its processes hold an inotify watch on an inode of the volume (the watch
    /// linter's inventory).
    pub watches: bool,
}

/// Whether a consumer reads its volume: only one that does can be stale.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Reads {
    /// Seen opening a file of the volume (any data dir), holding one open, or watching
    /// it with inotify.
    Yes,
    /// Its start was watched (the volume's opens were reported when it started) and it
    /// has not been seen reading yet: the volume's opens stay reported until `until`,
    /// its start and the first-read window.
    Undecided { until: SystemTime },
    /// Its start was watched, and it was not seen reading in the window after it.
    No,
    /// Not seen reading, and its start was not watched: it ran before the agent, or
    /// started while its volume's opens went unreported.
    Unknown,
}

impl Reads {
    /// `reads` on `reloadscope_consumer_info`: `yes`, `no`, or `unknown` (undecided
    /// ones included).
    pub fn label(self) -> &'static str {
        match self {
            Reads::Yes => "yes",
            Reads::No => "no",
            Reads::Undecided { .. } | Reads::Unknown => "unknown",
        }
    }
}

/// How long after a container's start (or a volume's appearance) its volume's opens
/// stay reported while it has not been seen reading: its first reads are seen if they
/// come within it.
pub const FIRST_READ_WINDOW: Duration = Duration::from_secs(120);

/// Latency histogram buckets (seconds): 100 us to 1 h. Watchers reload within
/// 0.1-1.5 ms of the swap (BENCHMARKS.md), pollers within their period.
pub const BUCKETS: [f64; 23] = [
    0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5,
    5.0, 10.0, 30.0, 60.0, 120.0, 300.0, 600.0, 1800.0, 3600.0,
];

/// The reload latency's buckets ([`BUCKETS`]).
#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub struct LatencyBuckets;

impl Buckets for LatencyBuckets {
    const BOUNDS: &'static [f64] = &BUCKETS;
}

/// Reload latencies, seconds.
pub type Latency = Histogram<LatencyBuckets>;

#[derive(Clone, Debug)]
pub struct Consumer {
    pub name: String,
    pub mount: MountKind,
    pub started: SystemTime,
    start_ticks: u64,
    /// The newest update not reloaded yet: (timestamped dir, swap time).
    pub pending: Option<(String, SystemTime)>,
    pub last_reload: Option<SystemTime>,
    /// Latency of the last reload, seconds.
    pub last_latency: Option<f64>,
    pub latency: Latency,
    pub reads: Reads,
}

impl Consumer {
    /// Whether its staleness is measured: a whole-volume consumer known to read the
    /// volume.
    pub fn measured(&self) -> bool {
        self.mount == MountKind::Volume && self.reads == Reads::Yes
    }

    /// 0 when the container has the newest update, or its staleness is not measured.
    pub fn stale_seconds(&self, now: SystemTime) -> f64 {
        match &self.pending {
            Some((_, swap)) if self.measured() => {
                now.duration_since(*swap).map_or(0.0, |d| d.as_secs_f64())
            }
            _ => 0.0,
        }
    }

    /// Whether it keeps its volume's opens reported: it may read the volume and has
    /// not reloaded the newest update (a reader, or one whose reads are unknown), or
    /// its first reads are still awaited. One seen not to read at its start is not
    /// waited for.
    fn awaited(&self) -> bool {
        match self.reads {
            Reads::Undecided { .. } => true,
            Reads::Yes | Reads::Unknown => self.pending.is_some(),
            Reads::No => false,
        }
    }

    /// Seen reading: true when that is news.
    fn reads(&mut self) -> bool {
        std::mem::replace(&mut self.reads, Reads::Yes) != Reads::Yes
    }
}

/// An open seen before the update it belongs to (the open and the swap come from
/// different sources and may be read out of order).
#[derive(Clone, Debug)]
struct EarlyOpen {
    volume: VolumeKey,
    /// None: unattributed, for every consumer.
    container: Option<String>,
    ts_dir: String,
    at: SystemTime,
}

/// How long an open may wait for its update.
const EARLY_KEPT: Duration = Duration::from_secs(10);
const EARLY_MAX: usize = 4096;

/// What a checkpoint keeps of a consumed or updated volume.
#[derive(Clone, Debug, PartialEq)]
pub struct Snapshot {
    pub volume: VolumeKey,
    /// Its newest update: data dir and swap time.
    pub newest: Option<(String, SystemTime)>,
    /// Its consumers, and whether each is still stale (with an update only).
    pub stale: Vec<(String, bool)>,
    /// The consumers seen reading it.
    pub readers: Vec<String>,
    /// The consumers whose start was watched and that were not seen reading.
    pub non_readers: Vec<String>,
}

/// First reads kept for containers not found yet, at most.
const FIRST_READS_MAX: usize = 4096;

#[derive(Debug)]
pub struct Reloads {
    consumers: HashMap<VolumeKey, HashMap<String, Consumer>>,
    /// The newest update of each volume: (timestamped dir, swap time).
    newest: HashMap<VolumeKey, (String, SystemTime)>,
    early: VecDeque<EarlyOpen>,
    pub foreign: [u64; 3],
    /// From a checkpoint: consumers known then, and whether each was still stale.
    restored: HashMap<(VolumeKey, String), bool>,
    /// Volumes whose [`Self::settled`] may have changed since [`Self::take_changed`].
    changed: HashSet<VolumeKey>,
    /// The latest data dir of each consumed volume whose mark went on after its swap,
    /// when no other mark covers that (`--settled-marks remove`, or `auto` on a volume
    /// no consumer watches): see [`Self::late_mark`].
    late: HashMap<VolumeKey, String>,
    /// How long a consumer's first reads are watched for ([`FIRST_READ_WINDOW`]).
    window: Duration,
    /// Containers whose cgroup appeared (they are starting) and that no consumer scan
    /// has seen yet, by id: their pod's uid, and when their window ends. Their pod's
    /// volumes keep their opens reported meanwhile.
    starting: HashMap<String, (String, SystemTime)>,
    /// Volumes that appeared while the agent ran (their pod is starting), and when
    /// their window ends: their opens stay reported until then.
    fresh: HashMap<VolumeKey, SystemTime>,
    /// Opens of a volume by containers of its pod not known as its consumers yet (a
    /// container's first reads come before the scan that finds it; None: an
    /// unattributed open), and when the first was seen.
    first_reads: HashMap<(VolumeKey, Option<String>), SystemTime>,
    /// From a checkpoint: consumers' reads, by volume and container id.
    restored_reads: HashMap<(VolumeKey, String), Reads>,
    /// Pods whose volumes' [`Self::settled`] may have changed (a container starting,
    /// or found).
    changed_pods: HashSet<String>,
    /// With a state journal: the volumes whose consumers' state may have changed since
    /// [`Self::take_journal`] (None: nothing journals, nothing is kept).
    unjournaled: Option<HashSet<VolumeKey>>,
}

impl Default for Reloads {
    fn default() -> Self {
        Reloads {
            consumers: HashMap::new(),
            newest: HashMap::new(),
            early: VecDeque::new(),
            foreign: [0; 3],
            restored: HashMap::new(),
            changed: HashSet::new(),
            late: HashMap::new(),
            window: FIRST_READ_WINDOW,
            starting: HashMap::new(),
            fresh: HashMap::new(),
            first_reads: HashMap::new(),
            restored_reads: HashMap::new(),
            changed_pods: HashSet::new(),
            unjournaled: None,
        }
    }
}

impl Reloads {
    /// How long a consumer's first reads are watched for.
    pub fn set_first_read_window(&mut self, window: Duration) {
        self.window = window;
    }

    pub fn consumers(&self) -> impl Iterator<Item = (&VolumeKey, &String, &Consumer)> {
        self.consumers
            .iter()
            .flat_map(|(v, cs)| cs.iter().map(move |(id, c)| (v, id, c)))
    }

    /// The volumes with consumers.
    pub fn consumed(&self) -> impl Iterator<Item = &VolumeKey> {
        self.consumers.keys()
    }

    pub fn consumer(&self, volume: &VolumeKey, id: &str) -> Option<&Consumer> {
        self.consumers.get(volume)?.get(id)
    }

    /// Whether `volume`'s opens are nobody's reload and nobody's first read any more
    /// (it is settled): no consumer that reads it or may read it lacks its newest
    /// update, none a checkpoint named stale is still to be found, and no first read is
    /// awaited (a consumer in the window after its start, a container of its pod
    /// starting, the volume itself new).
    pub fn settled(&self, volume: &VolumeKey) -> bool {
        let mut cs = self
            .consumers
            .get(volume)
            .into_iter()
            .flat_map(|cs| cs.values());
        !cs.any(Consumer::awaited)
            && !self
                .restored
                .iter()
                .any(|((v, _), stale)| *stale && v == volume)
            && !self.fresh.contains_key(volume)
            && !(self.starting.values()).any(|(uid, _)| *uid == volume.pod_uid)
    }

    /// A container of pod `pod_uid` is starting (its cgroup appeared at `now`): the
    /// pod's volumes keep their opens reported until a consumer scan sees it, or the
    /// first-read window ends.
    pub fn container_starting(&mut self, pod_uid: &str, id: &str, now: SystemTime) {
        let until = now + self.window;
        self.starting
            .insert(id.to_owned(), (pod_uid.to_owned(), until));
        self.changed_pods.insert(pod_uid.to_owned());
    }

    /// `volume` appeared at `now`, while the agent runs (its pod is starting, its
    /// containers not yet): its opens stay reported for the first-read window.
    pub fn volume_appeared(&mut self, volume: &VolumeKey, now: SystemTime) {
        self.fresh.insert(volume.clone(), now + self.window);
        self.mark(volume);
    }

    /// A consumer scan saw the processes of containers `ids`: the starting ones among
    /// them are found (as consumers of the volumes they mount, or of none).
    pub fn scanned(&mut self, ids: &HashSet<String>) {
        let changed = &mut self.changed_pods;
        self.starting.retain(|id, (uid, _)| {
            let seen = ids.contains(id);
            if seen {
                changed.insert(uid.clone());
            }
            !seen
        });
    }

    /// The pods whose volumes' [`Self::settled`] may have changed since the last call.
    pub fn take_changed_pods(&mut self) -> HashSet<String> {
        std::mem::take(&mut self.changed_pods)
    }

    /// Notes that the state of `volume`'s consumers may have changed: for
    /// [`Self::take_changed`] and [`Self::take_journal`].
    fn mark(&mut self, volume: &VolumeKey) {
        self.changed.insert(volume.clone());
        if let Some(j) = &mut self.unjournaled {
            j.insert(volume.clone());
        }
    }

    /// Keeps, from now on, the volumes [`Self::take_journal`] reports.
    pub fn journal(&mut self) {
        self.unjournaled.get_or_insert_default();
    }

    /// The state of each volume whose consumers' state may have changed since the last
    /// call, for the state journal; none unless [`Self::journal`] was called.
    pub fn take_journal(&mut self) -> Vec<Snapshot> {
        let Some(volumes) = self.unjournaled.as_mut().map(std::mem::take) else {
            return Vec::new();
        };
        volumes.iter().map(|v| self.snapshot_of(v)).collect()
    }

    /// Asks [`Self::take_changed`] to report `volume` (its data dir changed).
    pub fn touch(&mut self, volume: &VolumeKey) {
        self.mark(volume);
    }

    /// The volumes whose [`Self::settled`] may have changed since the last call.
    pub fn take_changed(&mut self) -> HashSet<VolumeKey> {
        std::mem::take(&mut self.changed)
    }

    /// The consumers of `volume` as a scan found them: new ones are added (a container
    /// that started after the newest swap has it already), gone ones dropped.
    pub fn set_consumers(&mut self, volume: &VolumeKey, found: Vec<Found>) {
        self.mark(volume);
        let newest = self.newest.get(volume).cloned();
        let late = self.late.get(volume).cloned();
        // Consumers a checkpoint knew: stale exactly when they were then.
        let was_pending: Vec<Option<bool>> = found
            .iter()
            .map(|f| self.restored.remove(&(volume.clone(), f.id.clone())))
            .collect();
        let reads: Vec<Reads> = found.iter().map(|f| self.reads_of(volume, f)).collect();
        let cs = self.consumers.entry(volume.clone()).or_default();
        cs.retain(|id, _| found.iter().any(|f| &f.id == id));
        for ((f, was_pending), reads) in found.into_iter().zip(was_pending).zip(reads) {
            let c = cs.entry(f.id).or_insert_with(|| Consumer {
                name: f.name.clone(),
                mount: f.mount,
                started: f.started,
                start_ticks: f.start_ticks,
                // Found after an update it predates: stale until it opens the new data.
                pending: match was_pending {
                    Some(stale) => newest.clone().filter(|_| stale),
                    None => newest
                        .clone()
                        .filter(|(_, swap)| f.mount == MountKind::Volume && f.started < *swap),
                },
                last_reload: None,
                last_latency: None,
                latency: Latency::default(),
                reads,
            });
            // Holding a file of the volume open, or watching it, is reading it.
            if f.watches || !f.holds.is_empty() {
                c.reads();
            }
            if f.start_ticks != c.start_ticks {
                // Restarted: its processes read the volume afresh.
                c.started = f.started;
                c.start_ticks = f.start_ticks;
                if let Some((_, swap)) = c.pending.take_if(|(_, swap)| f.started >= *swap) {
                    record(c, swap, f.started);
                }
            }
            // A reload no mark saw, its data dir's mark being late: a process holding
            // a file of the new data open has reloaded, by the listing at the latest.
            if let Some((_, swap)) = c
                .pending
                .take_if(|(ts, _)| late.as_ref() == Some(ts) && f.holds.contains(ts))
            {
                record(c, swap, f.listed_at.max(swap));
            }
            c.name = f.name;
            c.mount = f.mount;
        }
        if cs.is_empty() {
            self.late.remove(volume);
            self.consumers.remove(volume);
        }
    }

    /// What is known of whether `f`, found consuming `volume`, reads it; its own record
    /// if it is known already.
    fn reads_of(&mut self, volume: &VolumeKey, f: &Found) -> Reads {
        if let Some(c) = self.consumer(volume, &f.id) {
            return c.reads;
        }
        // Its first reads, seen before this scan found it.
        let mine = (volume.clone(), Some(f.id.clone()));
        let unattributed = (volume.clone(), None);
        if self.first_reads.remove(&mine).is_some()
            || (self.first_reads.get(&unattributed)).is_some_and(|at| *at >= f.started)
        {
            return Reads::Yes;
        }
        if let Some(r) = self.restored_reads.remove(&(volume.clone(), f.id.clone())) {
            return r;
        }
        // Its start was watched: the volume's opens were reported when it started.
        if self.starting.contains_key(&f.id) || self.fresh.contains_key(volume) {
            return Reads::Undecided {
                until: f.started + self.window,
            };
        }
        Reads::Unknown
    }

    /// Each updated or consumed volume's newest update and its known consumers, for a
    /// checkpoint.
    pub fn snapshot(&self) -> Vec<Snapshot> {
        let volumes: HashSet<&VolumeKey> =
            self.newest.keys().chain(self.consumers.keys()).collect();
        volumes.into_iter().map(|v| self.snapshot_of(v)).collect()
    }

    fn snapshot_of(&self, v: &VolumeKey) -> Snapshot {
        let newest = self.newest.get(v).cloned();
        let cs: Vec<(&String, &Consumer)> = self.consumers.get(v).into_iter().flatten().collect();
        let ids = |r: Reads| {
            (cs.iter())
                .filter(|(_, c)| c.reads == r)
                .map(|(id, _)| (*id).clone())
                .collect()
        };
        Snapshot {
            volume: v.clone(),
            stale: match newest {
                Some(_) => (cs.iter())
                    .map(|(id, c)| ((*id).clone(), c.pending.is_some()))
                    .collect(),
                None => Vec::new(),
            },
            newest,
            readers: ids(Reads::Yes),
            non_readers: ids(Reads::No),
        }
    }

    /// A checkpoint's newest update of `volume`, still current: consumers found later
    /// are stale as they were when it was written.
    pub fn restore(
        &mut self,
        volume: VolumeKey,
        ts_dir: String,
        swap: SystemTime,
        known: Vec<(String, bool)>,
    ) {
        for (id, stale) in known {
            self.restored.insert((volume.clone(), id), stale);
        }
        self.changed.insert(volume.clone());
        self.newest.insert(volume, (ts_dir, swap));
    }

    /// A checkpoint's readers of `volume` and the consumers seen not reading it at
    /// their start: found later, they are so again (a container keeps its id for its
    /// life, whatever data dir the volume points at now).
    pub fn restore_reads(
        &mut self,
        volume: &VolumeKey,
        readers: Vec<String>,
        non_readers: Vec<String>,
    ) {
        let reads = (readers.into_iter().map(|id| (id, Reads::Yes)))
            .chain(non_readers.into_iter().map(|id| (id, Reads::No)));
        for (id, r) in reads {
            self.restored_reads.insert((volume.clone(), id), r);
        }
    }

    /// `ts_dir`, a new data dir of `volume`, was marked after its swap, and nothing
    /// else saw the opens before: a consumer's reload then is looked for in the files
    /// its processes hold open, at the next consumer scan (the only trace such an open
    /// leaves; a process that read and closed the file is credited at its next open).
    /// Kept for consumed volumes only: a node's other volumes are many, and their late
    /// marks, at 10,000 volumes updated 1,000 times a second, weighed 2-3 MiB.
    pub fn late_mark(&mut self, volume: &VolumeKey, ts_dir: &str) {
        if self.consumers.contains_key(volume) {
            self.late.insert(volume.clone(), ts_dir.to_owned());
        }
    }

    pub fn volume_gone(&mut self, volume: &VolumeKey) {
        self.late.remove(volume);
        self.consumers.remove(volume);
        self.newest.remove(volume);
        self.early.retain(|e| &e.volume != volume);
        self.fresh.remove(volume);
        self.first_reads.retain(|(v, _), _| v != volume);
        self.restored_reads.retain(|(v, _), _| v != volume);
    }

    pub fn pod_gone(&mut self, uid: &str) {
        self.late.retain(|v, _| v.pod_uid != uid);
        self.consumers.retain(|v, _| v.pod_uid != uid);
        self.newest.retain(|v, _| v.pod_uid != uid);
        self.early.retain(|e| e.volume.pod_uid != uid);
        self.fresh.retain(|v, _| v.pod_uid != uid);
        self.first_reads.retain(|(v, _), _| v.pod_uid != uid);
        self.restored_reads.retain(|(v, _), _| v.pod_uid != uid);
        self.starting.retain(|_, (pod, _)| pod != uid);
    }

    /// `volume` was swapped to `ts_dir` at `swap`: every whole-volume consumer is stale
    /// until it opens the new data, unless it started after the swap.
    /// Reported again for the same `ts_dir` (the second source, or the probe's own
    /// earlier clock), it only moves the swap time earlier.
    pub fn update(&mut self, volume: &VolumeKey, ts_dir: &str, swap: SystemTime) {
        if let Some((ts, known)) = self.newest.get_mut(volume)
            && ts == ts_dir
        {
            if swap < *known {
                *known = swap;
                for c in self
                    .consumers
                    .get_mut(volume)
                    .into_iter()
                    .flat_map(|cs| cs.values_mut())
                {
                    if let Some((pts, pswap)) = &mut c.pending
                        && pts == ts_dir
                    {
                        *pswap = swap;
                    }
                }
            }
            return;
        }
        self.newest
            .insert(volume.clone(), (ts_dir.to_owned(), swap));
        self.mark(volume);
        if let Some(cs) = self.consumers.get_mut(volume) {
            for c in cs.values_mut() {
                if c.mount != MountKind::Volume {
                    continue;
                }
                if c.started >= swap {
                    record(c, swap, c.started);
                } else {
                    c.pending = Some((ts_dir.to_owned(), swap));
                }
            }
        }
        let early: Vec<EarlyOpen> = self
            .early
            .iter()
            .filter(|e| &e.volume == volume && e.ts_dir == ts_dir)
            .cloned()
            .collect();
        self.early
            .retain(|e| !(&e.volume == volume && e.ts_dir == ts_dir));
        for e in early {
            self.credit(volume, e.container.as_deref(), ts_dir, e.at);
        }
    }

    /// A file of `volume`'s `ts_dir` was opened at `at`.
    pub fn open(&mut self, opener: Opener, volume: &VolumeKey, ts_dir: &str, at: SystemTime) {
        let id = match opener {
            Opener::Kubelet => return self.foreign[0] += 1,
            Opener::Host => return self.foreign[1] += 1,
            Opener::Unattributed => {
                // Someone read it: taken for each consumer running then, as a reload is.
                let cs = self.consumers.get_mut(volume).into_iter().flatten();
                let mut news = false;
                for (_, c) in cs.filter(|(_, c)| c.mount == MountKind::Volume && c.started <= at) {
                    news |= c.reads();
                }
                if news {
                    self.mark(volume);
                }
                self.first_read(volume, None, at);
                None
            }
            Opener::Container { pod_uid, id } => {
                let c = (self.consumers.get_mut(volume)).and_then(|cs| cs.get_mut(&id));
                if pod_uid != volume.pod_uid {
                    self.foreign[2] += 1;
                    return;
                }
                let Some(c) = c else {
                    // Its first read, maybe, before the scan that finds it.
                    self.first_read(volume, Some(id), at);
                    self.foreign[2] += 1;
                    return;
                };
                if c.reads() {
                    self.mark(volume);
                }
                Some(id)
            }
        };
        let known = self.newest.get(volume).is_some_and(|(ts, _)| ts == ts_dir);
        if known {
            self.credit(volume, id.as_deref(), ts_dir, at);
        } else {
            // Possibly the new data of an update not reported yet.
            if self.early.len() == EARLY_MAX {
                self.early.pop_front();
            }
            self.early.push_back(EarlyOpen {
                volume: volume.clone(),
                container: id,
                ts_dir: ts_dir.to_owned(),
                at,
            });
        }
    }

    /// The new data dir is reachable only through `..data` once swapped: a consumer's
    /// open of it is its reload, even when the swap's own report was read later (the
    /// latency is then 0 until the probe's earlier stamp arrives).
    /// `id` None: every consumer of the volume (an unattributed open).
    fn credit(&mut self, volume: &VolumeKey, id: Option<&str>, ts_dir: &str, at: SystemTime) {
        let Some(cs) = self.consumers.get_mut(volume) else {
            return;
        };
        let mut reloaded = false;
        for (_, c) in cs.iter_mut().filter(|(c, _)| id.is_none_or(|id| id == *c)) {
            if let Some((_, swap)) = c.pending.take_if(|(pending_ts, _)| pending_ts == ts_dir) {
                record(c, swap, at);
                c.reads();
                reloaded = true;
            }
        }
        if reloaded {
            self.mark(volume);
        }
    }

    /// An open of `volume` by a container of its pod not known as its consumer (None:
    /// unattributed), kept for the consumer scan that finds it.
    fn first_read(&mut self, volume: &VolumeKey, id: Option<String>, at: SystemTime) {
        if self.first_reads.len() >= FIRST_READS_MAX {
            return;
        }
        self.first_reads.entry((volume.clone(), id)).or_insert(at);
    }

    /// Drops early opens no update claimed, and first reads no scan claimed; ends the
    /// first-read windows over by `now`.
    pub fn tick(&mut self, now: SystemTime) {
        while let Some(e) = self.early.front() {
            if now.duration_since(e.at).is_ok_and(|d| d < EARLY_KEPT) {
                break;
            }
            self.early.pop_front();
        }
        let window = self.window;
        self.first_reads
            .retain(|_, at| now.duration_since(*at).is_ok_and(|d| d < window) || *at > now);
        let mut decided = Vec::new();
        for (v, cs) in &mut self.consumers {
            for c in cs.values_mut() {
                if let Reads::Undecided { until } = c.reads
                    && until <= now
                {
                    c.reads = Reads::No;
                    decided.push(v.clone());
                }
            }
        }
        for v in &decided {
            self.mark(v);
        }
        let changed = &mut self.changed;
        self.fresh.retain(|v, until| {
            let open = *until > now;
            if !open {
                changed.insert(v.clone());
            }
            open
        });
        let pods = &mut self.changed_pods;
        self.starting.retain(|_, (uid, until)| {
            let open = *until > now;
            if !open {
                pods.insert(uid.clone());
            }
            open
        });
    }
}

fn record(c: &mut Consumer, swap: SystemTime, at: SystemTime) {
    let latency = at.duration_since(swap).unwrap_or_default().as_secs_f64();
    c.latency.observe(latency);
    c.last_reload = Some(at);
    c.last_latency = Some(latency);
}

#[cfg(test)]
mod tests;
