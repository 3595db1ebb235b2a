//! The approximate opens source, for an agent without CAP_SYS_ADMIN (no fanotify):
//! inotify `IN_OPEN` on each volume's data dirs. inotify names the file, not the
//! opener, so a reload is credited to the volume: every stale consumer of it (they are
//! all containers of one pod). `reloadscope_consumer_info{measurement="approximate"}`
//! says so. So is a read: any open of the volume's files not taken for the kubelet's
//! makes every consumer running then a reader (`Reloads::open`), and only a reader can
//! be stale; a pod none of whose containers reads a volume has no stale consumer of it.
//!
//! - Watches, in one inotify instance of its own: each volume dir (`IN_CREATE`,
//!   `IN_MOVED_TO`) and each data dir (`IN_OPEN`). A new data dir is watched the moment
//!   its `IN_CREATE` is read, with no queue in between.
//! - One queue gives the order: an open of the new data dir read before this queue's
//!   `..data` swap is the kubelet writing the new files, never a reload; one read after
//!   it is after the swap.
//! - The kubelet's periodic re-reads (docs/design.md 1.3: every file of the volume, once
//!   each, at each pod sync, 60-90 s apart, never right after its own write) are told
//!   apart by shape and time: a burst of opens within [`BURST`] that opens every file
//!   of the dir once, starting [`KUBELET_AFTER`] or more after the swap, is counted as
//!   the kubelet's. Earlier opens, and later ones of some files only, are reloads.
//!
//! It never opens a volume file: it lists the names in a data dir, no more.

use std::{
    collections::{HashMap, HashSet},
    ffi::OsString,
    path::{Path, PathBuf},
    sync::{Arc, atomic::Ordering::Relaxed},
    time::{Duration, SystemTime},
};

use futures_util::StreamExt;
use inotify::{EventMask, Inotify, WatchDescriptor, WatchMask, Watches};
use tokio::{sync::mpsc, time::Instant};
use tracing::{debug, warn};

use crate::{
    events::{Event, Sender},
    node::{
        read_target,
        volumes::{DATA, VolumeKey, is_timestamped_dir},
    },
    opens::Command,
    reloads::Opener,
    state::Shared,
};

/// Opens this close together are one burst.
pub const BURST: Duration = Duration::from_millis(5);
/// A burst that starts this long after the swap may be the kubelet's next sync.
pub const KUBELET_AFTER: Duration = Duration::from_secs(10);

const VOLUME_MASK: WatchMask = WatchMask::CREATE
    .union(WatchMask::MOVED_TO)
    .union(WatchMask::ONLYDIR)
    .union(WatchMask::DONT_FOLLOW);
const DATA_MASK: WatchMask = WatchMask::OPEN
    .union(WatchMask::ONLYDIR)
    .union(WatchMask::DONT_FOLLOW);

/// Opens of one data dir, from the first, while they come within [`BURST`].
#[derive(Debug)]
pub struct Burst {
    pub ts_dir: String,
    pub first_at: SystemTime,
    pub last: Instant,
    /// How long after the swap it started (None: the swap predates the agent).
    pub after_swap: Option<Duration>,
    pub names: Vec<OsString>,
}

impl Burst {
    /// The kubelet's re-read: late enough after the swap, every file once.
    pub fn is_kubelet_like(&self, files: &HashSet<OsString>) -> bool {
        let late = self.after_swap.is_none_or(|d| d >= KUBELET_AFTER);
        let once: HashSet<&OsString> = self.names.iter().collect();
        late && once.len() == self.names.len()
            && once.len() == files.len()
            && files.iter().all(|f| once.contains(f))
    }
}

struct Volume {
    dir: PathBuf,
    /// The data dir `..data` points at, by this queue's order, and when it was swapped
    /// in (None: before the agent).
    current: Option<(String, Option<Instant>)>,
    burst: Option<Burst>,
    /// A data dir watched only once it was already swapped in.
    late: Option<String>,
}

enum Watched {
    Volume(VolumeKey),
    Data(VolumeKey, String),
}

pub struct Approx {
    watches: Watches,
    wds: HashMap<WatchDescriptor, Watched>,
    volumes: HashMap<VolumeKey, Volume>,
    shared: Arc<Shared>,
}

impl Approx {
    /// Starts the instance; returns the source and its event stream.
    pub fn new(shared: Arc<Shared>) -> std::io::Result<(Approx, inotify::EventStream<Vec<u8>>)> {
        let stream = Inotify::init()?.into_event_stream(vec![0u8; 64 * 1024])?;
        let a = Approx {
            watches: stream.watches(),
            wds: HashMap::new(),
            volumes: HashMap::new(),
            shared,
        };
        Ok((a, stream))
    }

    fn watch(&mut self, path: &Path, mask: WatchMask, what: Watched) {
        match self.watches.add(path, mask) {
            Ok(wd) => {
                self.wds.insert(wd, what);
                self.shared.open_watches.store(self.wds.len(), Relaxed);
            }
            Err(e) => debug!(path = %path.display(), error = %e, "cannot watch for opens (gone?)"),
        }
    }

    fn command(&mut self, cmd: Command) {
        match cmd {
            Command::Volume { key, dir, current } => {
                self.watch(&dir, VOLUME_MASK, Watched::Volume(key.clone()));
                if let Some(ts) = &current {
                    self.watch(
                        &dir.join(ts),
                        DATA_MASK,
                        Watched::Data(key.clone(), ts.clone()),
                    );
                }
                let current = current.map(|ts| (ts, None));
                let v = Volume {
                    dir,
                    current,
                    burst: None,
                    late: None,
                };
                self.volumes.insert(key, v);
            }
            Command::Gone { key } => {
                self.volumes.remove(&key);
                let gone: Vec<_> = (self.wds.iter())
                    .filter(
                        |(_, w)| matches!(w, Watched::Volume(k) | Watched::Data(k, _) if *k == key),
                    )
                    .map(|(wd, _)| wd.clone())
                    .collect();
                for wd in gone {
                    self.wds.remove(&wd);
                    self.shared.open_watches.store(self.wds.len(), Relaxed);
                    let _ = self.watches.remove(wd);
                }
            }
            // This instance watches new data dirs itself; consumers' mounts and settled
            // dirs are fanotify's business.
            Command::DataDir { .. }
            | Command::Swapped { .. }
            | Command::Consumer { .. }
            | Command::Watched { .. }
            | Command::Settled { .. }
            | Command::Unsettled { .. } => {}
        }
    }

    /// Handles one inotify event; returns the opens it completes.
    fn handle(&mut self, ev: inotify::Event<OsString>, now: Instant) -> Vec<Event> {
        if ev.mask.contains(EventMask::Q_OVERFLOW) {
            warn!(
                "inotify queue of the approximate open watches overflowed: some opens were not seen"
            );
            self.shared.overflows.fetch_add(1, Relaxed);
            return Vec::new();
        }
        if ev.mask.contains(EventMask::IGNORED) {
            self.wds.remove(&ev.wd);
            self.shared.open_watches.store(self.wds.len(), Relaxed);
            return Vec::new();
        }
        let (Some(name), Some(what)) = (ev.name, self.wds.get(&ev.wd)) else {
            return Vec::new();
        };
        match what {
            Watched::Volume(key) => {
                let key = key.clone();
                let Some(v) = self.volumes.get_mut(&key) else {
                    return Vec::new();
                };
                if ev.mask.contains(EventMask::CREATE | EventMask::ISDIR)
                    && is_timestamped_dir(&name)
                {
                    let (Some(ts), path) = (name.to_str(), v.dir.join(&name)) else {
                        return Vec::new();
                    };
                    let (ts, data) = (ts.to_owned(), v.dir.join(DATA));
                    self.watch(&path, DATA_MASK, Watched::Data(key.clone(), ts.clone()));
                    // Placed after the swap: opens in between were not seen.
                    if read_target(&data).as_deref() == Some(ts.as_str()) {
                        self.shared.late_marks.fetch_add(1, Relaxed);
                        if let Some(v) = self.volumes.get_mut(&key) {
                            v.late = Some(ts);
                        }
                    }
                    Vec::new()
                } else if ev.mask.contains(EventMask::MOVED_TO) && name == DATA {
                    let mut out = flush(&key, v);
                    v.current = read_target(&v.dir.join(DATA)).map(|ts| (ts, Some(now)));
                    // Its watch came late: a read before it shows in the files' atime.
                    let late = v.late.take();
                    if let Some((ts, _)) = v
                        .current
                        .as_ref()
                        .filter(|(ts, _)| late.as_ref() == Some(ts))
                        && let Some(at) = first_read(&v.dir.join(ts))
                    {
                        let (key, ts_dir) = (key.clone(), ts.clone());
                        out.push(Event::Opened {
                            opener: Opener::Unattributed,
                            key,
                            ts_dir,
                            at,
                        });
                    }
                    out
                } else {
                    Vec::new()
                }
            }
            Watched::Data(key, ts) => {
                if ev.mask.contains(EventMask::ISDIR) {
                    return Vec::new();
                }
                let key = key.clone();
                let Some(v) = self.volumes.get_mut(&key) else {
                    return Vec::new();
                };
                let Some((cur, swapped)) = v.current.clone() else {
                    return Vec::new();
                };
                // Before this queue's swap: the kubelet writing the new files.
                if cur != *ts {
                    return Vec::new();
                }
                if let Some(b) = &mut v.burst
                    && now.duration_since(b.last) < BURST
                {
                    b.names.push(name);
                    b.last = now;
                    return Vec::new();
                }
                let mut out = flush(&key, v);
                v.burst = Some(Burst {
                    ts_dir: cur,
                    first_at: SystemTime::now(),
                    last: now,
                    after_swap: swapped.map(|s| now.duration_since(s)),
                    names: vec![name],
                });
                // Early opens cannot be the kubelet's: no need to wait for the burst.
                if swapped.is_some_and(|s| now.duration_since(s) < KUBELET_AFTER) {
                    out.extend(flush(&key, v));
                    v.burst = None;
                }
                out
            }
        }
    }

    /// Bursts over by `now`.
    fn expire(&mut self, now: Instant) -> Vec<Event> {
        let mut out = Vec::new();
        for (key, v) in &mut self.volumes {
            if v.burst
                .as_ref()
                .is_some_and(|b| now.duration_since(b.last) >= BURST)
            {
                out.extend(flush(key, v));
            }
        }
        out
    }

    fn next_expiry(&self) -> Option<Instant> {
        self.volumes
            .values()
            .filter_map(|v| Some(v.burst.as_ref()?.last + BURST))
            .min()
    }

    /// Runs until the command channel or the event stream ends.
    pub async fn run(
        mut self,
        mut stream: inotify::EventStream<Vec<u8>>,
        mut cmds: mpsc::UnboundedReceiver<Command>,
        tx: Sender,
    ) {
        loop {
            let expiry = self.next_expiry();
            let out = tokio::select! {
                cmd = cmds.recv() => match cmd {
                    Some(c) => {
                        self.command(c);
                        Vec::new()
                    }
                    None => return,
                },
                ev = stream.next() => match ev {
                    Some(Ok(ev)) => self.handle(ev, Instant::now()),
                    Some(Err(e)) => {
                        warn!(error = %e, "reading the approximate open watches failed; reload measurement stops");
                        return;
                    }
                    None => return,
                },
                _ = sleep_until(expiry) => self.expire(Instant::now()),
            };
            for ev in out {
                if tx.send(ev).await.is_err() {
                    return;
                }
            }
        }
    }
}

async fn sleep_until(at: Option<Instant>) {
    match at {
        Some(at) => tokio::time::sleep_until(at).await,
        None => std::future::pending().await,
    }
}

/// Ends `v`'s burst, if any: the kubelet's re-read or a reload.
fn flush(key: &VolumeKey, v: &mut Volume) -> Vec<Event> {
    let Some(b) = v.burst.take() else {
        return Vec::new();
    };
    let early = b.after_swap.is_some_and(|d| d < KUBELET_AFTER);
    let opener = if !early && b.is_kubelet_like(&files(&v.dir.join(&b.ts_dir))) {
        Opener::Kubelet
    } else {
        Opener::Unattributed
    };
    vec![Event::Opened {
        opener,
        key: key.clone(),
        ts_dir: b.ts_dir,
        at: b.first_at,
    }]
}

/// When a file of `dir` was first read after it was written, if one was: with the
/// default `relatime`, a read moves a file's atime once it is not after its mtime, so
/// an atime past the mtime is the first read's time (to the kernel's timestamp
/// granularity, a clock tick). `stat` only: nothing is opened. What it cannot show: a
/// read in the clock tick of the kubelet's write, and any read through a read-only or
/// `noatime` mount, which is how a container mounts a ConfigMap or Secret volume (the
/// kernel skips atime updates there); so it sees little more than host processes.
fn first_read(dir: &Path) -> Option<SystemTime> {
    use std::os::unix::fs::MetadataExt;
    let files = std::fs::read_dir(dir).ok()?.flatten();
    let read = files.filter_map(|e| {
        let m = e.metadata().ok().filter(|m| m.is_file())?;
        let t = |s: i64, ns: i64| SystemTime::UNIX_EPOCH + Duration::new(s as u64, ns as u32);
        let (atime, mtime) = (t(m.atime(), m.atime_nsec()), t(m.mtime(), m.mtime_nsec()));
        (atime > mtime).then_some(atime)
    });
    read.min()
}

/// The names of the regular files in `dir` (entries only: nothing is opened).
fn files(dir: &Path) -> HashSet<OsString> {
    std::fs::read_dir(dir)
        .into_iter()
        .flatten()
        .flatten()
        .filter(|e| e.file_type().is_ok_and(|t| t.is_file()))
        .map(|e| e.file_name())
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn burst(after_swap: Option<u64>, names: &[&str]) -> Burst {
        Burst {
            ts_dir: "..1".into(),
            first_at: SystemTime::UNIX_EPOCH,
            last: Instant::now(),
            after_swap: after_swap.map(Duration::from_secs),
            names: names.iter().map(OsString::from).collect(),
        }
    }

    /// Drives the source over a real inotify queue: the kubelet's steps, then a reload.
    #[tokio::test]
    async fn opens_before_this_queues_swap_are_the_writers_and_after_it_reloads() {
        use std::{fs, os::unix::fs::symlink};
        let tmp = tempfile::tempdir().unwrap();
        let vol = tmp.path().join("app-config");
        fs::create_dir_all(vol.join("..1")).unwrap();
        fs::write(vol.join("..1/k"), "v1").unwrap();
        symlink("..1", vol.join(DATA)).unwrap();
        symlink("..data/k", vol.join("k")).unwrap();
        let key = VolumeKey {
            pod_uid: "uid".into(),
            volume_type: crate::node::volumes::VolumeType::ConfigMap,
            name: "app-config".into(),
        };
        let shared = Arc::new(Shared::new(crate::updates::Tracker::new(
            Duration::from_secs(2),
            false,
        )));
        let (mut a, mut stream) = Approx::new(shared).unwrap();
        let current = Some("..1".to_owned());
        a.command(Command::Volume {
            key: key.clone(),
            dir: vol.clone(),
            current,
        });
        let mut out = Vec::new();
        // Handles every event queued so far (an open of a sentinel ends each batch).
        let sentinel = tmp.path().join("sentinel");
        fs::create_dir(&sentinel).unwrap();
        let swd = a.watches.add(&sentinel, WatchMask::CREATE).unwrap();
        let mut batches = 0;
        let mut drain = async |a: &mut Approx, out: &mut Vec<Event>| {
            batches += 1;
            let mark = sentinel.join(format!("s{batches}"));
            fs::create_dir(&mark).unwrap();
            while let Some(ev) = stream.next().await {
                let ev = ev.unwrap();
                if ev.wd == swd && ev.name.as_deref() == mark.file_name() {
                    return;
                }
                out.extend(a.handle(ev, Instant::now()));
            }
        };

        fs::create_dir(vol.join("..2")).unwrap();
        drain(&mut a, &mut out).await; // the IN_CREATE: ..2 is watched now
        fs::write(vol.join("..2/k"), "v2").unwrap(); // the kubelet writes
        symlink("..2", vol.join("..data_tmp")).unwrap();
        fs::rename(vol.join("..data_tmp"), vol.join(DATA)).unwrap();
        fs::read(vol.join("k")).unwrap(); // a consumer reloads
        drain(&mut a, &mut out).await;
        assert!(
            a.expire(Instant::now() + BURST).is_empty(),
            "the early open was not held"
        );
        let ts: Vec<(Opener, String)> = out
            .into_iter()
            .map(|e| match e {
                Event::Opened { opener, ts_dir, .. } => (opener, ts_dir),
                other => panic!("{other:?}"),
            })
            .collect();
        assert_eq!(ts, [(Opener::Unattributed, "..2".to_owned())]);

        // The next update, read before this source even saw its dir created: its watch
        // comes late, and the read shows in the file's atime.
        fs::create_dir(vol.join("..3")).unwrap();
        fs::write(vol.join("..3/k"), "v3").unwrap();
        symlink("..3", vol.join("..data_tmp")).unwrap();
        fs::rename(vol.join("..data_tmp"), vol.join(DATA)).unwrap();
        let before = SystemTime::now();
        fs::read(vol.join("k")).unwrap();
        let after = SystemTime::now();
        let mut out = Vec::new();
        drain(&mut a, &mut out).await;
        let [
            Event::Opened {
                opener, ts_dir, at, ..
            },
        ] = &out[..]
        else {
            panic!("{out:?}");
        };
        assert_eq!((opener, ts_dir.as_str()), (&Opener::Unattributed, "..3"));
        // atime may come from the kernel's coarse clock: up to a tick before the read.
        let tick = Duration::from_millis(10);
        assert!(
            before - tick <= *at && *at <= after,
            "{at:?} not within the read"
        );
    }

    #[test]
    fn only_a_late_read_of_every_file_once_is_the_kubelets() {
        let files: HashSet<OsString> = ["tls.crt", "tls.key"].map(OsString::from).into();
        assert!(burst(Some(60), &["tls.key", "tls.crt"]).is_kubelet_like(&files));
        assert!(burst(None, &["tls.crt", "tls.key"]).is_kubelet_like(&files));
        // Right after the swap: a consumer reloading every file.
        assert!(!burst(Some(1), &["tls.crt", "tls.key"]).is_kubelet_like(&files));
        // Some files only, or one twice: a consumer.
        assert!(!burst(Some(60), &["tls.crt"]).is_kubelet_like(&files));
        assert!(!burst(Some(60), &["tls.crt", "tls.crt"]).is_kubelet_like(&files));
        assert!(!burst(Some(60), &["tls.crt", "tls.key", "tls.key"]).is_kubelet_like(&files));
        assert!(!burst(Some(60), &["tls.crt", "other"]).is_kubelet_like(&files));
    }
}
