//! Reloads: for every volume update, which consuming containers opened the new data and
//! how long after the swap (README, "Definitions").
//!
//! - Swap time: the update's `..data` rename (the probe's clock when it saw it).
//! - A container's reload: the first open, by any process of that container, of a file
//!   in the new timestamped dir, at or after the swap. Latency = reload - swap.
//! - Opens by the kubelet, by host processes or by other pods are never reloads.
//! - A container is stale for a volume while it has not reloaded the newest update.
//! - A container whose processes started after the swap reloaded at its start.
//! - subPath consumers never get an update: they are reported as such, never as stale.
//!
//! Pure state; time comes in as arguments.

use std::{
    collections::{HashMap, HashSet, VecDeque},
    time::{Duration, SystemTime},
};

use crate::volumes::VolumeKey;

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
}

/// Latency histogram buckets (seconds): 5 ms to 1 h.
pub const BUCKETS: [f64; 18] = [
    0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0, 300.0, 600.0,
    1800.0, 3600.0,
];

#[derive(Clone, Debug, Default, PartialEq)]
pub struct Histogram {
    /// Non-cumulative counts per bucket; the last slot is +Inf.
    pub counts: [u64; BUCKETS.len() + 1],
    pub sum: f64,
    pub count: u64,
}

impl Histogram {
    /// Adds `other`'s observations to these.
    pub fn merge(&mut self, other: &Histogram) {
        for (a, b) in self.counts.iter_mut().zip(other.counts) {
            *a += b;
        }
        self.sum += other.sum;
        self.count += other.count;
    }

    pub fn observe(&mut self, v: f64) {
        let i = BUCKETS
            .iter()
            .position(|&b| v <= b)
            .unwrap_or(BUCKETS.len());
        self.counts[i] += 1;
        self.sum += v;
        self.count += 1;
    }
}

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
    pub latency: Histogram,
}

impl Consumer {
    /// 0 when the container has the newest update.
    pub fn stale_seconds(&self, now: SystemTime) -> f64 {
        match (&self.pending, self.mount) {
            (Some((_, swap)), MountKind::Volume) => {
                now.duration_since(*swap).map_or(0.0, |d| d.as_secs_f64())
            }
            _ => 0.0,
        }
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

/// A volume's newest update: (volume, data dir, swap time, consumers known and
/// whether each is still stale).
pub type Snapshot = (VolumeKey, String, SystemTime, Vec<(String, bool)>);

#[derive(Debug, Default)]
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
}

impl Reloads {
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

    /// Whether every consumer of `volume` has its newest update (none is stale, and
    /// none a checkpoint named stale is still to be found): its data dir's opens are
    /// nobody's reload any more.
    pub fn settled(&self, volume: &VolumeKey) -> bool {
        let cs = self
            .consumers
            .get(volume)
            .into_iter()
            .flat_map(|cs| cs.values());
        !cs.into_iter().any(|c| c.pending.is_some())
            && !self
                .restored
                .iter()
                .any(|((v, _), stale)| *stale && v == volume)
    }

    /// Asks [`Self::take_changed`] to report `volume` (its data dir changed).
    pub fn touch(&mut self, volume: &VolumeKey) {
        self.changed.insert(volume.clone());
    }

    /// The volumes whose [`Self::settled`] may have changed since the last call.
    pub fn take_changed(&mut self) -> HashSet<VolumeKey> {
        std::mem::take(&mut self.changed)
    }

    /// The consumers of `volume` as a scan found them: new ones are added (a container
    /// that started after the newest swap has it already), gone ones dropped.
    pub fn set_consumers(&mut self, volume: &VolumeKey, found: Vec<Found>) {
        self.changed.insert(volume.clone());
        let newest = self.newest.get(volume).cloned();
        let late = self.late.get(volume).cloned();
        // Consumers a checkpoint knew: stale exactly when they were then.
        let was_pending: Vec<Option<bool>> = found
            .iter()
            .map(|f| self.restored.remove(&(volume.clone(), f.id.clone())))
            .collect();
        let cs = self.consumers.entry(volume.clone()).or_default();
        cs.retain(|id, _| found.iter().any(|f| &f.id == id));
        for (f, was_pending) in found.into_iter().zip(was_pending) {
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
                latency: Histogram::default(),
            });
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

    /// Each volume's newest update and its known consumers, for a checkpoint.
    pub fn snapshot(&self) -> Vec<Snapshot> {
        self.newest
            .iter()
            .map(|(v, (ts, swap))| {
                let cs = self.consumers.get(v).into_iter().flatten();
                let known = cs
                    .map(|(id, c)| (id.clone(), c.pending.is_some()))
                    .collect();
                (v.clone(), ts.clone(), *swap, known)
            })
            .collect()
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
    }

    pub fn pod_gone(&mut self, uid: &str) {
        self.late.retain(|v, _| v.pod_uid != uid);
        self.consumers.retain(|v, _| v.pod_uid != uid);
        self.newest.retain(|v, _| v.pod_uid != uid);
        self.early.retain(|e| e.volume.pod_uid != uid);
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
        self.changed.insert(volume.clone());
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
            Opener::Unattributed => None,
            Opener::Container { pod_uid, id } => {
                let consumes = self
                    .consumers
                    .get(volume)
                    .is_some_and(|cs| cs.contains_key(&id));
                if pod_uid != volume.pod_uid || !consumes {
                    self.foreign[2] += 1;
                    return;
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
        for (_, c) in cs.iter_mut().filter(|(c, _)| id.is_none_or(|id| id == *c)) {
            if let Some((_, swap)) = c.pending.take_if(|(pending_ts, _)| pending_ts == ts_dir) {
                record(c, swap, at);
                self.changed.insert(volume.clone());
            }
        }
    }

    /// Drops early opens no update claimed.
    pub fn tick(&mut self, now: SystemTime) {
        while let Some(e) = self.early.front() {
            if now.duration_since(e.at).is_ok_and(|d| d < EARLY_KEPT) {
                break;
            }
            self.early.pop_front();
        }
    }
}

fn record(c: &mut Consumer, swap: SystemTime, at: SystemTime) {
    let latency = at.duration_since(swap).unwrap_or_default().as_secs_f64();
    c.latency.observe(latency);
    c.last_reload = Some(at);
    c.last_latency = Some(latency);
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::volumes::VolumeType;

    fn t(ms: u64) -> SystemTime {
        SystemTime::UNIX_EPOCH + Duration::from_millis(1_000_000 + ms)
    }

    fn vol() -> VolumeKey {
        VolumeKey {
            pod_uid: "pod".into(),
            volume_type: VolumeType::Secret,
            name: "tls".into(),
        }
    }

    fn found(id: &str, mount: MountKind, started: u64) -> Found {
        Found {
            id: id.into(),
            name: format!("c-{id}"),
            mount,
            started: t(started),
            start_ticks: started,
            mount_path: None,
            holds: Vec::new(),
            listed_at: t(started),
        }
    }

    fn me(id: &str) -> Opener {
        Opener::Container {
            pod_uid: "pod".into(),
            id: id.into(),
        }
    }

    fn reloads() -> Reloads {
        let mut r = Reloads::default();
        r.set_consumers(
            &vol(),
            vec![
                found("a", MountKind::Volume, 0),
                found("s", MountKind::SubPath, 0),
            ],
        );
        r
    }

    #[test]
    fn reload_after_the_swap_ends_staleness_with_its_latency() {
        let mut r = reloads();
        r.update(&vol(), "..2", t(100));
        let a = r.consumer(&vol(), "a").unwrap();
        assert_eq!(a.stale_seconds(t(1100)), 1.0);
        r.open(me("a"), &vol(), "..1", t(150)); // old data: still stale
        r.open(me("a"), &vol(), "..2", t(142));
        let a = r.consumer(&vol(), "a").unwrap();
        assert_eq!(a.stale_seconds(t(5000)), 0.0);
        assert_eq!(a.last_reload, Some(t(142)));
        assert_eq!(a.latency.count, 1);
        assert!((a.latency.sum - 0.042).abs() < 1e-9);
        assert_eq!(
            a.latency.counts[BUCKETS.iter().position(|&b| b == 0.05).unwrap()],
            1
        );
        // Further opens of the same data are not further reloads.
        r.open(me("a"), &vol(), "..2", t(900));
        assert_eq!(r.consumer(&vol(), "a").unwrap().latency.count, 1);
    }

    /// After a late mark, a consumer holding a file of the new data open is credited at
    /// the scan that lists it; not without the late mark (its open event is exact and
    /// on its way), nor for a file of the old data.
    #[test]
    fn a_late_marks_reload_is_found_in_the_files_held_open() {
        let holding = |id: &str, ts: &str, at: u64| Found {
            holds: vec![ts.into()],
            listed_at: t(at),
            ..found(id, MountKind::Volume, 0)
        };
        let mut r = reloads();
        r.update(&vol(), "..2", t(100));
        r.set_consumers(&vol(), vec![holding("a", "..2", 130)]);
        assert!(
            r.consumer(&vol(), "a").unwrap().pending.is_some(),
            "no late mark"
        );
        r.late_mark(&vol(), "..2");
        r.set_consumers(&vol(), vec![holding("a", "..1", 140)]);
        assert!(
            r.consumer(&vol(), "a").unwrap().pending.is_some(),
            "old data"
        );
        r.set_consumers(&vol(), vec![holding("a", "..2", 150)]);
        let a = r.consumer(&vol(), "a").unwrap();
        assert!(a.pending.is_none());
        assert_eq!(a.last_reload, Some(t(150)));
        assert!((a.latency.sum - 0.050).abs() < 1e-9);
        // A volume nobody consumes keeps no late mark.
        let other = VolumeKey {
            name: "other".into(),
            ..vol()
        };
        r.late_mark(&other, "..9");
        assert!(!r.late.contains_key(&other));
        // The next update is not credited by the same late mark.
        r.update(&vol(), "..3", t(200));
        r.set_consumers(&vol(), vec![holding("a", "..3", 210)]);
        assert!(r.consumer(&vol(), "a").unwrap().pending.is_some());
    }

    #[test]
    fn a_second_report_of_the_same_update_refines_the_swap_time_only() {
        let mut r = reloads();
        r.update(&vol(), "..2", t(120)); // inotify first
        r.update(&vol(), "..2", t(100)); // then the probe's stamp
        assert_eq!(
            r.consumer(&vol(), "a").unwrap().pending,
            Some(("..2".into(), t(100)))
        );
        r.open(me("a"), &vol(), "..2", t(130));
        r.update(&vol(), "..2", t(90));
        let a = r.consumer(&vol(), "a").unwrap();
        assert!(a.pending.is_none(), "a reload is never undone");
        assert!((a.latency.sum - 0.030).abs() < 1e-9);
    }

    #[test]
    fn subpath_consumers_are_never_stale_and_never_reload() {
        let mut r = reloads();
        r.update(&vol(), "..2", t(100));
        r.open(me("s"), &vol(), "..2", t(200));
        let s = r.consumer(&vol(), "s").unwrap();
        assert_eq!(
            (
                s.stale_seconds(t(9999)),
                s.latency.count,
                s.pending.is_none()
            ),
            (0.0, 0, true)
        );
    }

    #[test]
    fn foreign_opens_are_counted_never_credited() {
        let mut r = reloads();
        r.update(&vol(), "..2", t(100));
        r.open(Opener::Kubelet, &vol(), "..2", t(110));
        r.open(Opener::Host, &vol(), "..2", t(110));
        r.open(
            Opener::Container {
                pod_uid: "other".into(),
                id: "x".into(),
            },
            &vol(),
            "..2",
            t(110),
        );
        r.open(me("not-a-consumer"), &vol(), "..2", t(110));
        assert_eq!(r.foreign, [1, 1, 2]);
        assert!(r.consumer(&vol(), "a").unwrap().pending.is_some());
    }

    #[test]
    fn an_open_read_before_its_update_is_credited_when_the_update_arrives() {
        let mut r = reloads();
        r.open(me("a"), &vol(), "..2", t(130));
        r.update(&vol(), "..2", t(100));
        let a = r.consumer(&vol(), "a").unwrap();
        assert_eq!((a.pending.is_none(), a.last_reload), (true, Some(t(130))));
        // Read before its update's report, with the report's (later) inotify time: the
        // new data proves the reload; latency 0 until the probe's stamp.
        r.open(me("a"), &vol(), "..3", t(140));
        r.update(&vol(), "..3", t(200));
        let a = r.consumer(&vol(), "a").unwrap();
        assert_eq!(
            (a.pending.is_none(), a.latency.count, a.latency.counts[0]),
            (true, 2, 1)
        );
        // Unclaimed early opens expire.
        r.open(me("a"), &vol(), "..9", t(300));
        r.tick(t(300) + EARLY_KEPT);
        assert!(r.early.is_empty());
    }

    #[test]
    fn a_container_started_after_the_swap_has_reloaded_at_its_start() {
        let mut r = reloads();
        r.update(&vol(), "..2", t(100));
        r.set_consumers(
            &vol(),
            vec![
                found("a", MountKind::Volume, 400),
                found("s", MountKind::SubPath, 0),
            ],
        );
        let a = r.consumer(&vol(), "a").unwrap();
        assert_eq!((a.pending.is_none(), a.last_reload), (true, Some(t(400))));
        // Found late, older than the newest swap: stale until it opens the new data.
        r.set_consumers(&vol(), vec![found("b", MountKind::Volume, 50)]);
        assert!(r.consumer(&vol(), "a").is_none());
        assert_eq!(
            r.consumer(&vol(), "b").unwrap().pending,
            Some(("..2".into(), t(100)))
        );
        // Found late but younger than the swap: nothing pending at the next update either.
        r.set_consumers(&vol(), vec![found("c", MountKind::Volume, 500)]);
        assert!(r.consumer(&vol(), "c").unwrap().pending.is_none());
        r.update(&vol(), "..3", t(450));
        assert!(r.consumer(&vol(), "c").unwrap().pending.is_none());
    }

    #[test]
    fn the_same_container_scanned_again_is_not_a_restart() {
        let mut r = reloads();
        r.update(&vol(), "..2", t(100));
        // Its start converted again, a hair later: the same ticks, the same process.
        r.set_consumers(
            &vol(),
            vec![Found {
                started: t(1),
                ..found("a", MountKind::Volume, 0)
            }],
        );
        assert!(r.consumer(&vol(), "a").unwrap().pending.is_some());
    }

    #[test]
    fn a_volume_is_settled_once_every_consumer_has_its_newest_update() {
        let mut r = reloads();
        assert!(r.settled(&vol()), "no update yet: nobody is stale");
        r.take_changed();
        r.update(&vol(), "..2", t(100));
        assert_eq!(r.take_changed(), HashSet::from([vol()]));
        assert!(!r.settled(&vol()));
        r.open(me("a"), &vol(), "..2", t(142));
        assert_eq!(r.take_changed(), HashSet::from([vol()]));
        assert!(r.settled(&vol()), "a subPath consumer is never stale");
        // Opens that credit nobody change nothing.
        r.open(me("a"), &vol(), "..2", t(150));
        r.open(Opener::Host, &vol(), "..2", t(150));
        assert!(r.take_changed().is_empty());

        // A checkpoint's stale consumer not found yet keeps its volume unsettled.
        let mut r = Reloads::default();
        r.restore(vol(), "..2".into(), t(100), vec![("a".into(), true)]);
        assert!(!r.settled(&vol()));
        r.set_consumers(&vol(), vec![found("a", MountKind::Volume, 0)]);
        assert!(!r.settled(&vol()));
        r.open(me("a"), &vol(), "..2", t(300));
        assert!(r.settled(&vol()));
    }

    #[test]
    fn an_unattributed_open_credits_every_stale_consumer_of_the_volume() {
        let mut r = reloads();
        r.set_consumers(
            &vol(),
            vec![
                found("a", MountKind::Volume, 0),
                found("b", MountKind::Volume, 0),
                found("s", MountKind::SubPath, 0),
            ],
        );
        r.open(Opener::Unattributed, &vol(), "..2", t(90)); // before its update is known
        r.update(&vol(), "..2", t(80));
        for id in ["a", "b"] {
            let c = r.consumer(&vol(), id).unwrap();
            assert_eq!((c.last_reload, c.latency.count), (Some(t(90)), 1), "{id}");
        }
        assert_eq!(r.consumer(&vol(), "s").unwrap().latency.count, 0);
        assert_eq!(
            r.foreign,
            [0, 0, 0],
            "an unattributed open is nobody's foreign open"
        );
    }

    #[test]
    fn a_restored_checkpoint_keeps_who_was_stale() {
        let mut r = Reloads::default();
        r.restore(
            vol(),
            "..2".into(),
            t(100),
            vec![("a".into(), true), ("b".into(), false)],
        );
        r.set_consumers(
            &vol(),
            vec![
                found("a", MountKind::Volume, 0),
                found("b", MountKind::Volume, 0),
            ],
        );
        assert_eq!(
            r.consumer(&vol(), "a").unwrap().pending,
            Some(("..2".into(), t(100)))
        );
        assert!(
            r.consumer(&vol(), "b").unwrap().pending.is_none(),
            "it had reloaded"
        );
        let snap = r.snapshot();
        assert_eq!(snap.len(), 1);
        let mut known = snap[0].3.clone();
        known.sort();
        assert_eq!(known, [("a".to_string(), true), ("b".to_string(), false)]);
    }

    #[test]
    fn pods_and_volumes_going_away_take_their_consumers() {
        let mut r = reloads();
        r.update(&vol(), "..2", t(100));
        r.pod_gone("pod");
        assert_eq!(r.consumers().count(), 0);
        let mut r = reloads();
        r.volume_gone(&vol());
        assert_eq!(r.consumers().count(), 0);
    }
}
