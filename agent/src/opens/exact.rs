//! The exact opens source: fanotify `FAN_OPEN` on the volumes' data, each open
//! attributed to its process (see the [module above](super)).

use std::{
    collections::{HashMap, VecDeque},
    path::{Path, PathBuf},
    sync::{Arc, atomic::Ordering::Relaxed},
    time::{Duration, Instant, SystemTime},
};

use tokio::sync::mpsc;
use tracing::{debug, warn};

use super::{Command, SettledMarks, settled};
use crate::{
    events::{Event, Sender},
    fanotify::{DirId, FanEvent, Fanotify},
    node::{cgroup::parse_proc_cgroup, volumes::VolumeKey},
    reloads::Opener,
    state::Shared,
};

/// Processes whose opens are the kubelet's own periodic re-reads, by command name
/// (docs/design.md 2: kubelet, k3s's embedded one, MicroK8s' kubelite), besides the
/// process the probe saw making volume swaps.
const KUBELET_COMMS: [&str; 5] = ["kubelet", "k3s", "k3s-server", "k3s-agent", "kubelite"];

/// How long an open in a directory not registered yet waits for its registration: the
/// open and the inotify `IN_CREATE` that registers the dir are read by different tasks.
const UNKNOWN_KEPT: Duration = Duration::from_secs(2);
const UNKNOWN_MAX: usize = 1024;

pub struct Opens {
    fan: Fanotify,
    covers: settled::Covers,
    proc_root: PathBuf,
    /// The registered data dirs: their volume (shared with [`Self::recent`]) and name.
    dirs: HashMap<DirId, (Arc<VolumeKey>, Box<str>)>,
    /// Each volume's data dirs in `dirs`, oldest first.
    recent: HashMap<Arc<VolumeKey>, Recent>,
    /// Opens in directories not registered (yet), already attributed.
    unknown: VecDeque<(Instant, DirId, Opener, SystemTime)>,
    /// Recent attributions by pid: a process that opens a file in a loop is looked up
    /// in /proc once a second, not at every event (about 20 us of /proc reads each).
    openers: HashMap<i32, (Instant, Opener)>,
    shared: Arc<Shared>,
}

/// How long a pid's attribution is reused; a pid is not recycled that fast.
const OPENER_KEPT: Duration = Duration::from_secs(1);
const OPENERS_MAX: usize = 4096;

impl Opens {
    pub fn new(
        fan: Fanotify,
        settled: SettledMarks,
        proc_root: PathBuf,
        shared: Arc<Shared>,
    ) -> Self {
        let (dirs, unknown) = (HashMap::new(), VecDeque::new());
        Opens {
            fan,
            covers: settled::Covers::new(settled),
            proc_root,
            dirs,
            recent: HashMap::new(),
            unknown,
            openers: HashMap::new(),
            shared,
        }
    }

    /// Maps the data dir's handle to its volume; returns the opens that waited for it.
    fn register(&mut self, key: VolumeKey, ts_path: &Path, ts_dir: &str) -> Vec<Event> {
        let id = match DirId::of(ts_path) {
            Ok(id) => id,
            Err(e) => {
                debug!(path = %ts_path.display(), error = %e, "no handle for data dir (gone?)");
                return Vec::new();
            }
        };
        let (waited, rest): (Vec<_>, Vec<_>) =
            self.unknown.drain(..).partition(|(_, d, _, _)| *d == id);
        self.unknown = rest.into();
        // The newest two data dirs of a volume are enough (the current one, and the
        // one an update is writing): older ones are deleted by the kubelet, and kept
        // here they grew the agent by about 1.3 KiB per update.
        let key = match self.recent.get_key_value(&key) {
            Some((shared, _)) => shared.clone(),
            None => Arc::new(key),
        };
        let recent = self.recent.entry(key.clone()).or_default();
        if let Some(old) = recent.push(&id) {
            self.dirs.remove(&old);
        }
        self.dirs.insert(id, (key.clone(), ts_dir.into()));
        let opened = |(_, _, opener, at)| Event::Opened {
            opener,
            key: (*key).clone(),
            ts_dir: ts_dir.to_owned(),
            at,
        };
        waited.into_iter().map(opened).collect()
    }

    fn command(&mut self, cmd: Command) -> Vec<Event> {
        match cmd {
            Command::Volume { key, dir, current } => {
                if self.covers.filesystem_marks() && key.volume_type.is_tmpfs() {
                    self.mark_with(&key, Fanotify::mark_filesystem, &dir);
                }
                let Some(ts) = current else { return Vec::new() };
                let ts_path = dir.join(&ts);
                self.mark_with(&key, Fanotify::mark_dir, &ts_path);
                self.register(key, &ts_path, &ts)
            }
            Command::DataDir {
                key,
                dir,
                ts_dir,
                late,
            } => {
                // The walker marked it as it saw it created. Counted once, whichever of
                // this and the swap comes first.
                let ts_path = dir.join(&ts_dir);
                if late && !self.known(&ts_path) {
                    self.shared.late_marks.fetch_add(1, Relaxed);
                }
                self.register(key, &ts_path, &ts_dir)
            }
            Command::Swapped { key, dir, ts_dir } => {
                let ts_path = dir.join(&ts_dir);
                if self.known(&ts_path) {
                    return Vec::new();
                }
                self.shared.late_marks.fetch_add(1, Relaxed);
                self.mark_with(&key, Fanotify::mark_dir, &ts_path);
                self.register(key, &ts_path, &ts_dir)
            }
            Command::Gone { key } => {
                self.dirs.retain(|_, (k, _)| **k != key);
                self.recent.remove(&key);
                self.covers.gone(&key);
                Vec::new()
            }
            Command::Consumer { key, mount_path } => {
                self.covers.consumer(&self.fan, key, mount_path);
                Vec::new()
            }
            Command::Watched { key, on, settled } => {
                self.covers.watched(&self.fan, key, on, settled);
                Vec::new()
            }
            Command::Settled { key, ts_path } => {
                self.covers.settled(&self.fan, key, ts_path);
                Vec::new()
            }
            Command::Unsettled { key, ts_path } => {
                self.covers.unsettled(&self.fan, &key, &ts_path);
                Vec::new()
            }
        }
    }

    /// Whether the data dir `ts_path` is registered already.
    fn known(&self, ts_path: &Path) -> bool {
        DirId::of(ts_path).is_ok_and(|id| self.dirs.contains_key(&id))
    }

    /// Marks a volume's data dir or filesystem; a volume removed meanwhile (a pod
    /// deleted at once) is not a fault.
    fn mark_with(
        &self,
        key: &VolumeKey,
        mark: fn(&Fanotify, &Path) -> std::io::Result<()>,
        path: &Path,
    ) {
        match mark(&self.fan, path) {
            Ok(()) => {}
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                debug!(volume = %key, error = %e, "volume gone before its mark");
            }
            Err(e) => warn!(volume = %key, error = %e, "cannot mark volume for opens"),
        }
    }

    /// The process that made the volume's latest swaps (the probe saw it), else
    /// [`Self::lookup`], reused for [`OPENER_KEPT`].
    fn opener(&mut self, pid: i32, now: Instant) -> Opener {
        if u32::try_from(pid).is_ok_and(|p| self.shared.reader.is_writer(p)) {
            return Opener::Kubelet;
        }
        if let Some((at, o)) = self.openers.get(&pid)
            && now.duration_since(*at) < OPENER_KEPT
        {
            return o.clone();
        }
        if self.openers.len() >= OPENERS_MAX {
            self.openers
                .retain(|_, (at, _)| now.duration_since(*at) < OPENER_KEPT);
        }
        let o = self.lookup(pid);
        self.openers.insert(pid, (now, o.clone()));
        o
    }

    /// Who `pid` is: a pod container by its cgroup, else the kubelet by name, else host.
    fn lookup(&self, pid: i32) -> Opener {
        let dir = self.proc_root.join(pid.to_string());
        if let Some(c) = std::fs::read_to_string(dir.join("cgroup"))
            .ok()
            .as_deref()
            .and_then(parse_proc_cgroup)
        {
            return Opener::Container {
                pod_uid: c.pod_uid,
                id: c.container_id,
            };
        }
        let comm = std::fs::read_to_string(dir.join("comm")).unwrap_or_default();
        if KUBELET_COMMS.contains(&comm.trim_end()) {
            Opener::Kubelet
        } else {
            Opener::Host
        }
    }

    /// Runs until the command channel or the event queue closes.
    pub async fn run(mut self, mut cmds: mpsc::UnboundedReceiver<Command>, tx: Sender) {
        let me = std::process::id() as i32;
        loop {
            let out = tokio::select! {
                cmd = cmds.recv() => match cmd {
                    Some(c) => self.command(c),
                    None => return,
                },
                evs = self.fan.read() => match evs {
                    Ok(evs) => self.attribute(evs, me),
                    Err(e) => {
                        warn!(error = %e, "reading fanotify events failed; reload measurement stops");
                        return;
                    }
                },
            };
            for ev in out {
                if tx.send(ev).await.is_err() {
                    return;
                }
            }
        }
    }

    fn attribute(&mut self, evs: Vec<FanEvent>, me: i32) -> Vec<Event> {
        let (now, at) = (Instant::now(), SystemTime::now());
        while self
            .unknown
            .front()
            .is_some_and(|(t, ..)| now.duration_since(*t) >= UNKNOWN_KEPT)
        {
            self.unknown.pop_front();
        }
        let mut out = Vec::new();
        for ev in evs {
            match ev {
                FanEvent::Overflow => {
                    self.shared.fanotify_overflows.fetch_add(1, Relaxed);
                    warn!("fanotify queue overflowed: some opens were not seen");
                }
                FanEvent::Open { pid, .. } if pid == me => {}
                FanEvent::Open { pid, dir, .. } => {
                    // Attributed now: the process may be gone by the time its dir is known.
                    let opener = self.opener(pid, now);
                    match self.dirs.get(&dir) {
                        Some((key, ts_dir)) => out.push(Event::Opened {
                            opener,
                            key: (**key).clone(),
                            ts_dir: ts_dir.to_string(),
                            at,
                        }),
                        None => {
                            if self.unknown.len() == UNKNOWN_MAX {
                                self.unknown.pop_front();
                            }
                            self.unknown.push_back((now, dir, opener, at));
                        }
                    }
                }
            }
        }
        out
    }
}

/// A volume's registered data dirs, oldest first: at most two, held inline.
#[derive(Debug, Default)]
struct Recent([Option<DirId>; 2]);

impl Recent {
    /// Adds `id` as the newest unless it is there already; returns the dir that no
    /// longer fits.
    fn push(&mut self, id: &DirId) -> Option<DirId> {
        if self.0.iter().flatten().any(|d| d == id) {
            return None;
        }
        let [older, newer] = &mut self.0;
        match newer {
            None if older.is_none() => *older = Some(id.clone()),
            None => *newer = Some(id.clone()),
            Some(_) => return std::mem::replace(older, newer.replace(id.clone())),
        }
        None
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn dir(n: u8) -> DirId {
        DirId {
            fsid: [1, 2],
            handle_type: 1,
            handle: vec![n; 8],
        }
    }

    #[test]
    fn a_volume_keeps_its_two_newest_data_dirs() {
        let mut r = Recent::default();
        assert_eq!(r.push(&dir(1)), None);
        assert_eq!(r.push(&dir(1)), None, "registered twice: kept once");
        assert_eq!(r.push(&dir(2)), None);
        assert_eq!(r.push(&dir(2)), None);
        assert_eq!(r.push(&dir(3)), Some(dir(1)), "the oldest goes");
        assert_eq!(r.0, [Some(dir(2)), Some(dir(3))]);
        assert_eq!(r.push(&dir(2)), None, "still there: nothing moves");
        assert_eq!(r.push(&dir(4)), Some(dir(2)));
        assert_eq!(r.0, [Some(dir(3)), Some(dir(4))]);
    }
}
