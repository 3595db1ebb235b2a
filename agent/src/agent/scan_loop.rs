//! The scan loop: after updates, container starts and stops (at most once a second)
//! and periodically, the /proc walk that finds each volume's consumers; then
//! [`ScanLoop::apply`] gives the watch linter their inotify watches, tells the opens
//! source whose mounts to mark and which volumes are watched, and hands the consumers
//! to the reload state.

use std::{
    collections::{HashMap, HashSet},
    path::PathBuf,
    sync::Arc,
    time::{Duration, SystemTime},
};

use tokio::sync::{Notify, mpsc, watch};

use super::stopped;
use crate::{
    consumers, linter,
    node::{self, volumes::VolumeKey},
    opens,
    reloads::MountKind,
    state::Shared,
};

/// The inodes of each consumed volume for the watch linter (with its current data
/// dir), and the last update of each.
type Inodes = HashMap<VolumeKey, (Option<String>, linter::VolumeInodes)>;
type Updated = HashMap<VolumeKey, SystemTime>;

pub(super) struct ScanLoop {
    pub shared: Arc<Shared>,
    pub proc_root: PathBuf,
    pub container_logs_dir: PathBuf,
    /// Commands for the opens source, when it runs.
    pub marks: Option<mpsc::UnboundedSender<opens::Command>>,
    /// `--settled-marks auto`: the opens source is told which volumes are watched.
    pub tell_watched: bool,
    /// The consumers' mount paths told to the opens source already.
    marked: HashSet<PathBuf>,
    /// The volumes some consumer watches, as last told.
    watched: HashSet<VolumeKey>,
}

impl ScanLoop {
    pub fn new(
        shared: Arc<Shared>,
        proc_root: PathBuf,
        container_logs_dir: PathBuf,
        marks: Option<mpsc::UnboundedSender<opens::Command>>,
        tell_watched: bool,
    ) -> ScanLoop {
        ScanLoop {
            shared,
            proc_root,
            container_logs_dir,
            marks,
            tell_watched,
            marked: HashSet::new(),
            watched: HashSet::new(),
        }
    }

    /// Scans after a `rescan` notice, every `every`, and when a rewatch grace period
    /// ends, until `stop`.
    pub async fn run(mut self, every: Duration, rescan: Arc<Notify>, stop: watch::Receiver<bool>) {
        let mut every = tokio::time::interval(every);
        // The first tick is immediate: the first scan waits for the initial walk
        // instead (ScanDone notifies), so it has the volumes to match.
        every.tick().await;
        let stopped = stopped(stop);
        tokio::pin!(stopped);
        loop {
            // A rewatch grace period ending is due an inventory too.
            let due = self
                .shared
                .linter
                .lock()
                .expect("linter lock")
                .next_deadline();
            let grace_over = async {
                match due {
                    Some(at) => {
                        let wait = at.duration_since(SystemTime::now()).unwrap_or_default();
                        tokio::time::sleep(wait).await;
                    }
                    None => std::future::pending().await,
                }
            };
            tokio::select! {
                _ = rescan.notified() => {}
                _ = every.tick() => {}
                _ = grace_over => {}
                _ = &mut stopped => return,
            }
            let scan = tokio::task::spawn_blocking({
                let volumes = self.volumes();
                let (proc_root, logs) = (self.proc_root.clone(), self.container_logs_dir.clone());
                move || scan(&proc_root, &logs, volumes)
            });
            // A scan of a big node takes seconds (10,000 volumes: about 2 s): a stop
            // does not wait for it; the runtime's shutdown leaves the thread to finish
            // alone.
            let done = tokio::select! {
                done = scan => done,
                _ = &mut stopped => return,
            };
            let Ok((scan, inodes, updated)) = done else {
                return;
            };
            self.apply(scan, &inodes, &updated);
            tokio::select! {
                _ = tokio::time::sleep(Duration::from_secs(1)) => {}
                _ = &mut stopped => return,
            }
        }
    }

    /// Every volume with its dir, and its last update as the scan starts.
    fn volumes(&self) -> Vec<((VolumeKey, PathBuf), Option<SystemTime>)> {
        let t = self.shared.tracker.lock().expect("tracker lock");
        t.volumes()
            .map(|(k, v)| ((k.clone(), v.dir.clone()), v.last_update))
            .collect()
    }

    /// What one scan found, given to the linter, the opens source and the reload state.
    fn apply(&mut self, mut scan: consumers::Scan, inodes: &Inodes, updated: &Updated) {
        let watching = lint(&self.shared, &scan, inodes, updated);
        for (key, fs) in scan.consumers.iter_mut() {
            for f in fs {
                f.watches = watching.contains(&(key.clone(), f.id.clone()));
            }
        }
        if let Some(m) = &self.marks {
            // Each consumer's own mount is told once, when first found.
            for (key, fs) in &scan.consumers {
                for f in fs {
                    if let Some(p) = &f.mount_path
                        && f.mount == MountKind::Volume
                        && self.marked.insert(p.clone())
                    {
                        let (key, mount_path) = (key.clone(), p.clone());
                        let _ = m.send(opens::Command::Consumer { key, mount_path });
                    }
                }
            }
            if self.tell_watched {
                tell_watched(&self.shared, m, &mut self.watched);
            }
        }
        {
            let mut signals = self.shared.signals.lock().expect("signals lock");
            if signals.enabled {
                signals.main = std::mem::take(&mut scan.main);
            }
        }
        let mut r = self.shared.reloads.lock().expect("reloads lock");
        // The volumes consumed before and not now lose their consumers.
        let gone: Vec<_> = (r.consumed())
            .filter(|k| !scan.consumers.contains_key(*k))
            .cloned()
            .collect();
        for key in gone {
            r.set_consumers(&key, Vec::new());
        }
        for (key, found) in scan.consumers.drain() {
            r.set_consumers(&key, found);
        }
        r.scanned(&scan.ids);
    }
}

/// One pass over /proc (blocking): the consumers of `volumes`, and the inodes and last
/// update of the consumed ones (only those: the node's volumes are many, their
/// consumers few).
fn scan(
    proc_root: &std::path::Path,
    logs: &std::path::Path,
    volumes: Vec<((VolumeKey, PathBuf), Option<SystemTime>)>,
) -> (consumers::Scan, Inodes, Updated) {
    let (volumes, updates): (Vec<_>, Vec<_>) = volumes.into_iter().unzip();
    let scan = consumers::scan(proc_root, logs, &volumes);
    let consumed =
        (volumes.iter().zip(updates)).filter(|((k, _), _)| scan.consumers.contains_key(k));
    let mut inodes = HashMap::new();
    let mut updated = HashMap::new();
    for ((k, dir), at) in consumed {
        let current = node::read_target(&dir.join(node::volumes::DATA));
        let vi = linter::VolumeInodes {
            pinned: scan.pinned.get(k).cloned().unwrap_or_default(),
            ..linter::VolumeInodes::read(dir)
        };
        inodes.insert(k.clone(), (current, vi));
        if let Some(at) = at {
            updated.insert(k.clone(), at);
        }
    }
    (scan, inodes, updated)
}

/// Tells the opens source which volumes some consumer watches in a way that fires at
/// an update (the linter's `ok`), where that changed since `told`.
fn tell_watched(
    shared: &Shared,
    marks: &mpsc::UnboundedSender<opens::Command>,
    told: &mut HashSet<VolumeKey>,
) {
    let now: HashSet<VolumeKey> = {
        let l = shared.linter.lock().expect("linter lock");
        (l.consumers())
            .filter(|(_, s)| s.findings.contains(&linter::Finding::Ok))
            .map(|(k, _)| k.clone())
            .collect()
    };
    let changed: Vec<(VolumeKey, bool)> = (now.difference(told).map(|k| (k.clone(), true)))
        .chain(told.difference(&now).map(|k| (k.clone(), false)))
        .collect();
    let t = shared.tracker.lock().expect("tracker lock");
    let r = shared.reloads.lock().expect("reloads lock");
    for (key, on) in changed {
        let settled = (t.volume(&key))
            .filter(|_| r.settled(&key))
            .and_then(|v| v.data_dir());
        let _ = marks.send(opens::Command::Watched { key, on, settled });
    }
    *told = now;
}

/// Gives the watch linter one scan's inventory of each consumer's inotify watches;
/// returns the consumers (volume, container id) with a watch on their volume.
fn lint(
    shared: &Shared,
    scan: &consumers::Scan,
    inodes: &Inodes,
    updated: &Updated,
) -> HashSet<(VolumeKey, String)> {
    let mut watching = HashSet::new();
    let now = SystemTime::now();
    let mut l = shared.linter.lock().expect("linter lock");
    let mut observed: HashMap<String, usize> = HashMap::new();
    let mut counted = HashSet::new();
    for (key, found) in &scan.consumers {
        let Some((current, vi)) = inodes.get(key) else {
            continue;
        };
        for f in found {
            let held = scan.watches.get(&f.id).map_or(&[][..], Vec::as_slice);
            if counted.insert(&f.id) {
                *observed.entry(key.pod_uid.clone()).or_default() += held.len();
            }
            let seen = linter::Seen {
                key,
                id: &f.id,
                name: &f.name,
                mount: f.mount,
                current: current.as_deref(),
                updated_at: updated.get(key).copied(),
                inodes: vi,
                watches: held,
            };
            if l.observe(seen, now) {
                watching.insert((key.clone(), f.id.clone()));
            }
        }
    }
    l.observed = observed;
    l.last_inventory = Some(now);
    let found = |k: &VolumeKey, id: &str| {
        (scan.consumers.get(k)).is_some_and(|fs| fs.iter().any(|f| f.id == id))
    };
    l.retain(found);
    watching
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{node::volumes::VolumeType, reloads::Found, updates::Tracker};

    fn key() -> VolumeKey {
        VolumeKey {
            pod_uid: "pod".into(),
            volume_type: VolumeType::ConfigMap,
            name: "cfg".into(),
        }
    }

    fn found(id: &str, mount: MountKind, mount_path: &str) -> Found {
        Found {
            id: id.into(),
            name: format!("c-{id}"),
            mount,
            started: SystemTime::UNIX_EPOCH,
            start_ticks: 1,
            mount_path: Some(mount_path.into()),
            holds: Vec::new(),
            listed_at: SystemTime::UNIX_EPOCH,
            watches: false,
        }
    }

    fn scan_of(found: Vec<Found>) -> consumers::Scan {
        consumers::Scan {
            ids: found.iter().map(|f| f.id.clone()).collect(),
            consumers: HashMap::from([(key(), found)]),
            ..Default::default()
        }
    }

    /// A scan's consumers go to the reload state; each whole-volume consumer's mount is
    /// told to the opens source once, a subPath one's never; a consumer no longer found
    /// is dropped.
    #[test]
    fn a_scan_reaches_the_reload_state_and_the_opens_source() {
        let shared = Arc::new(Shared::new(Tracker::new(Duration::from_secs(2), false)));
        let (marks, mut told) = mpsc::unbounded_channel();
        let mut l = ScanLoop::new(
            shared.clone(),
            "/proc".into(),
            "/logs".into(),
            Some(marks),
            false,
        );
        let (none, at) = (HashMap::new(), HashMap::new());
        let both = || {
            vec![
                found("whole", MountKind::Volume, "/proc/1/root/etc/app"),
                found("sub", MountKind::SubPath, "/proc/2/root/etc/app/key"),
            ]
        };
        l.apply(scan_of(both()), &none, &at);
        l.apply(scan_of(both()), &none, &at);
        let mut commands = Vec::new();
        while let Ok(c) = told.try_recv() {
            commands.push(c);
        }
        assert!(
            matches!(commands.as_slice(), [opens::Command::Consumer { key: k, mount_path }]
                if *k == key() && mount_path == std::path::Path::new("/proc/1/root/etc/app")),
            "{commands:?}"
        );
        {
            let r = shared.reloads.lock().unwrap();
            assert!(r.consumer(&key(), "whole").is_some());
            assert_eq!(r.consumer(&key(), "sub").unwrap().mount, MountKind::SubPath);
        }
        l.apply(
            scan_of(vec![found("whole", MountKind::Volume, "/p")]),
            &none,
            &at,
        );
        let r = shared.reloads.lock().unwrap();
        assert!(r.consumer(&key(), "sub").is_none(), "gone from the scan");
        drop(r);
        l.apply(consumers::Scan::default(), &none, &at);
        let r = shared.reloads.lock().unwrap();
        assert_eq!(r.consumed().count(), 0, "no volume consumed any more");
    }
}
