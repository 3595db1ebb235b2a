//! The inotify source: follows pods and volumes appearing and disappearing under every
//! kubelet root, and each volume's `..data` swap, without polling.
//!
//! Watches, all `IN_ONLYDIR | IN_DONT_FOLLOW` (a symlink planted in the tree is never
//! followed out of it): the root until `pods` exists, `pods`, each pod dir until its
//! `volumes` dir exists, `volumes`, each plugin dir, and each volume dir (`IN_MOVED_TO`
//! only). Every dir is listed right after its watch is added, so nothing created in
//! between is missed; what is found twice is harmless downstream.
//! The pod-logs dir is watched too, for pod names.

use std::{
    collections::{HashMap, HashSet},
    ffi::OsStr,
    io,
    path::{Path, PathBuf},
    time::{Duration, Instant, SystemTime},
};

use futures_util::StreamExt;
use inotify::{EventMask, Inotify, WatchDescriptor, WatchMask, Watches};
use tracing::{debug, info, warn};

use crate::{
    events::{Event, Sender},
    fanotify::Marker,
    probe::read_target,
    updates::{Detection, PodName, Source},
    volumes::{DATA, Place, Roots, VolumeKey, is_timestamped_dir},
};

#[derive(Clone, Debug, PartialEq, Eq)]
enum Node {
    /// A kubelet root whose `pods` dir does not exist yet.
    Root,
    PodsDir,
    /// A pod dir whose `volumes` dir does not exist yet.
    Pod,
    VolumesDir,
    PluginDir,
    Volume(VolumeKey),
    PodLogs,
}

const TREE: WatchMask = WatchMask::CREATE
    .union(WatchMask::MOVED_TO)
    .union(WatchMask::DELETE)
    .union(WatchMask::MOVED_FROM)
    .union(WatchMask::DELETE_SELF)
    .union(WatchMask::ONLYDIR)
    .union(WatchMask::DONT_FOLLOW);
/// `IN_CREATE` too: a new timestamped dir is marked for opens before the swap.
const VOLUME: WatchMask = WatchMask::MOVED_TO
    .union(WatchMask::CREATE)
    .union(WatchMask::ONLYDIR)
    .union(WatchMask::DONT_FOLLOW);

/// How long a secret or projected volume dir is re-checked for its tmpfs mount: the
/// kubelet creates the dir, then mounts over it; a watch taken before the mount sees
/// the covered dir, never the swaps.
const MOUNT_GRACE: Duration = Duration::from_secs(120);

pub struct Walker {
    roots: Roots,
    pod_logs: PathBuf,
    watches: Watches,
    nodes: HashMap<WatchDescriptor, (Node, PathBuf)>,
    by_path: HashMap<PathBuf, WatchDescriptor>,
    /// Volumes found by the walk in progress, if one is.
    found: Option<Vec<VolumeKey>>,
    /// tmpfs volumes found before their mount: (key, dir, device of the parent, deadline).
    unmounted: Vec<(VolumeKey, PathBuf, u64, Instant)>,
    /// The watches the rescan after an overflow has added or found again, while it runs.
    touched: Option<HashSet<WatchDescriptor>>,
    /// By volume dir: the timestamped dir created last, whose `..data` swap is next.
    created: HashMap<PathBuf, String>,
    /// Kubelet roots that do not exist (yet): looked for again on each tick.
    missing: HashSet<PathBuf>,
    /// Places the open-event mark on a disk volume's new data dir (when fanotify runs).
    marker: Option<Marker>,
    tx: Sender,
}

fn dev(p: &Path) -> Option<u64> {
    use std::os::unix::fs::MetadataExt;
    std::fs::symlink_metadata(p).ok().map(|m| m.dev())
}

fn children(dir: &Path) -> Vec<std::ffi::OsString> {
    match std::fs::read_dir(dir) {
        Ok(rd) => rd.filter_map(|e| e.ok()).map(|e| e.file_name()).collect(),
        Err(e) => {
            debug!(dir = %dir.display(), error = %e, "cannot list (gone meanwhile?)");
            Vec::new()
        }
    }
}

impl Walker {
    /// Walks every root and the pod-logs dir, sends what it finds, then `ScanDone`.
    /// Returns the walker and the stream of its inotify events.
    pub async fn start(
        roots: Roots,
        pod_logs: PathBuf,
        marker: Option<Marker>,
        tx: Sender,
    ) -> io::Result<(Walker, inotify::EventStream<Vec<u8>>)> {
        let stream = Inotify::init()?.into_event_stream(vec![0u8; 64 * 1024])?;
        let mut w = Walker {
            roots,
            pod_logs,
            watches: stream.watches(),
            nodes: HashMap::new(),
            by_path: HashMap::new(),
            found: None,
            marker,
            unmounted: Vec::new(),
            touched: None,
            created: HashMap::new(),
            missing: HashSet::new(),
            tx,
        };
        w.scan().await;
        w.send(Event::ScanDone).await;
        Ok((w, stream))
    }

    pub fn watch_count(&self) -> usize {
        self.nodes.len()
    }

    async fn send(&self, ev: Event) {
        // Closed only at shutdown.
        let _ = self.tx.send(ev).await;
    }

    /// (Re)walks everything; idempotent.
    async fn scan(&mut self) {
        let roots: Vec<PathBuf> = self.roots.iter().map(Path::to_owned).collect();
        for root in roots {
            self.add_root(&root).await;
        }
        let logs = self.pod_logs.clone();
        if self.add(&logs, Node::PodLogs, TREE).is_some() {
            for name in children(&logs) {
                self.pod_log_dir(&name).await;
            }
        }
    }

    async fn add_root(&mut self, root: &Path) {
        let pods = root.join("pods");
        if pods.is_dir() {
            return self.add_pods_dir(&pods).await;
        }
        if !root.is_dir() {
            // Nothing to watch for its creation without watching outside the roots.
            if self.missing.insert(root.to_owned()) {
                info!(root = %root.display(), "kubelet root does not exist yet; looking for it every tick");
            }
            return;
        }
        info!(root = %root.display(), "kubelet root has no pods dir yet; waiting for it");
        if let Some(wd) = self.add(root, Node::Root, TREE)
            && pods.is_dir()
        {
            // Created between the check and the watch.
            self.unwatch(&wd);
            self.add_pods_dir(&pods).await;
        }
    }

    fn add(&mut self, path: &Path, node: Node, mask: WatchMask) -> Option<WatchDescriptor> {
        match self.watches.add(path, mask) {
            Ok(wd) => {
                if let Some(t) = &mut self.touched {
                    t.insert(wd.clone());
                }
                // A dir mounted over since its first watch: the old watch is on the covered inode.
                if let Some(old) = self.by_path.insert(path.to_owned(), wd.clone())
                    && old != wd
                {
                    let _ = self.watches.remove(old.clone());
                    self.nodes.remove(&old);
                }
                self.nodes.insert(wd.clone(), (node, path.to_owned()));
                Some(wd)
            }
            Err(e) => {
                match e.raw_os_error() {
                    Some(libc::ENOENT) => {
                        debug!(path = %path.display(), "gone before it could be watched")
                    }
                    Some(libc::ENOTDIR) => {
                        warn!(path = %path.display(), "expected a directory, found something else; not followed")
                    }
                    _ => warn!(path = %path.display(), error = %e, "cannot watch"),
                }
                None
            }
        }
    }

    async fn add_pods_dir(&mut self, pods: &Path) {
        if self.add(pods, Node::PodsDir, TREE).is_none() {
            return;
        }
        let outer = self.found.replace(Vec::new());
        for uid in children(pods) {
            self.add_pod(&pods.join(&uid)).await;
        }
        let volumes = std::mem::replace(&mut self.found, outer).unwrap_or_default();
        self.send(Event::RescanDone {
            pods_dir: pods.to_owned(),
            volumes,
        })
        .await;
    }

    async fn add_pod(&mut self, pod: &Path) {
        if let Some(Err(e)) = self.roots.classify(pod) {
            warn!(error = %e, "pod not followed");
            return;
        }
        // The watches below name paths through the pod dir: a symlink there would be
        // followed (IN_DONT_FOLLOW covers a path's last component only).
        match std::fs::symlink_metadata(pod) {
            Ok(m) if m.is_dir() => {}
            Ok(_) => {
                warn!(path = %pod.display(), "expected a directory, found something else; not followed");
                return;
            }
            Err(e) => {
                debug!(path = %pod.display(), error = %e, "gone before it could be watched");
                return;
            }
        }
        let volumes = pod.join("volumes");
        if volumes.is_dir() {
            self.add_volumes_dir(&volumes).await;
        } else {
            self.add(pod, Node::Pod, TREE);
            // Created between the check and the watch?
            if volumes.is_dir() {
                self.add_volumes_dir(&volumes).await;
            }
        }
    }

    async fn add_volumes_dir(&mut self, volumes: &Path) {
        if self.add(volumes, Node::VolumesDir, TREE).is_none() {
            return;
        }
        for plugin in children(volumes) {
            self.add_plugin_dir(&volumes.join(plugin)).await;
        }
    }

    async fn add_plugin_dir(&mut self, dir: &Path) {
        if !matches!(self.roots.classify(dir), Some(Ok(Place::PluginDir { .. }))) {
            return;
        }
        if self.add(dir, Node::PluginDir, TREE).is_none() {
            return;
        }
        for vol in children(dir) {
            self.add_volume(&dir.join(vol)).await;
        }
    }

    async fn add_volume(&mut self, dir: &Path) {
        let key = match self.roots.classify(dir) {
            Some(Ok(Place::Volume { key, rest: None })) => key,
            Some(Err(e)) => {
                warn!(error = %e, "volume not followed");
                return;
            }
            _ => return,
        };
        if key.volume_type.is_tmpfs() {
            let parent = dir.parent().and_then(dev);
            if parent.is_some() && parent == dev(dir) {
                // Not mounted yet: check again on each tick.
                self.unmounted.push((
                    key.clone(),
                    dir.to_owned(),
                    parent.unwrap_or(0),
                    Instant::now() + MOUNT_GRACE,
                ));
            }
        }
        if self.add(dir, Node::Volume(key.clone()), VOLUME).is_none() {
            return;
        }
        if let Some(found) = &mut self.found {
            found.push(key.clone());
        }
        let current = read_target(&dir.join(DATA));
        self.send(Event::VolumeFound {
            key,
            dir: dir.to_owned(),
            current,
        })
        .await;
    }

    async fn pod_log_dir(&mut self, name: &OsStr) {
        if let Some((uid, name)) = name.to_str().and_then(parse_pod_log_dir) {
            self.send(Event::PodNamed { uid, name }).await;
        }
    }

    /// Re-watches tmpfs volumes whose mount appeared since they were found.
    pub async fn tick(&mut self) {
        let appeared: Vec<PathBuf> = (self.missing.iter())
            .filter(|r| r.is_dir())
            .cloned()
            .collect();
        for root in appeared {
            info!(root = %root.display(), "kubelet root appeared");
            self.missing.remove(&root);
            self.add_root(&root).await;
        }
        let now = Instant::now();
        let mut mounted = Vec::new();
        self.unmounted.retain(|(key, dir, parent_dev, deadline)| {
            if dev(dir).is_some_and(|d| d != *parent_dev) {
                mounted.push(dir.clone());
                return false;
            }
            if now >= *deadline {
                debug!(volume = %key, "no tmpfs mount appeared; watching the dir as it is");
                return false;
            }
            true
        });
        for dir in mounted {
            self.add_volume(&dir).await;
        }
    }

    /// Handles one inotify event.
    pub async fn handle(&mut self, ev: inotify::Event<std::ffi::OsString>) {
        if ev.mask.contains(EventMask::Q_OVERFLOW) {
            warn!("inotify queue overflowed; rescanning every root");
            self.send(Event::InotifyOverflow).await;
            // A swap whose dir's creation was dropped must not be credited to an older dir.
            self.created.clear();
            self.touched = Some(HashSet::new());
            self.scan().await;
            self.sweep().await;
            return;
        }
        if ev.mask.contains(EventMask::IGNORED) {
            if let Some((_, path)) = self.nodes.remove(&ev.wd)
                && self.by_path.get(&path) == Some(&ev.wd)
            {
                self.by_path.remove(&path);
            }
            return;
        }
        let Some((node, path)) = self.nodes.get(&ev.wd).cloned() else {
            return;
        };
        let Some(name) = ev.name.as_deref() else {
            if ev.mask.contains(EventMask::DELETE_SELF)
                && matches!(node, Node::PodsDir | Node::Root)
            {
                self.scan().await;
            }
            return;
        };
        let child = path.join(name);
        let appeared = ev.mask.intersects(EventMask::CREATE | EventMask::MOVED_TO);
        let vanished = ev
            .mask
            .intersects(EventMask::DELETE | EventMask::MOVED_FROM);
        match node {
            Node::Root if appeared && name == "pods" => {
                self.unwatch(&ev.wd);
                self.add_pods_dir(&child).await;
            }
            Node::PodsDir if appeared => self.add_pod(&child).await,
            Node::PodsDir if vanished => {
                self.forget_under(&child);
                if let Some(uid) = name.to_str() {
                    self.send(Event::PodGone {
                        uid: uid.to_owned(),
                    })
                    .await;
                }
            }
            Node::Pod if appeared && name == "volumes" => {
                // The pod dir's watch was only waiting for this.
                self.unwatch(&ev.wd);
                self.add_volumes_dir(&child).await;
            }
            Node::VolumesDir if appeared => self.add_plugin_dir(&child).await,
            Node::PluginDir if appeared => self.add_volume(&child).await,
            Node::PluginDir if vanished => {
                self.forget_under(&child);
                if let Some(Ok(Place::Volume { key, rest: None })) = self.roots.classify(&child) {
                    self.send(Event::VolumeGone(key)).await;
                }
            }
            Node::Volume(key) if ev.mask.contains(EventMask::MOVED_TO) && name == DATA => {
                let at = SystemTime::now();
                // The dir created last is the one this swap put in place. `..data` is
                // read only when that creation was not seen: by now it may point to a
                // later dir already (a reader behind by several swaps of this volume).
                let created = self.created.remove(&path);
                match created.or_else(|| read_target(&child)) {
                    Some(ts_dir) => {
                        let det = Detection {
                            source: Source::Inotify,
                            key,
                            ts_dir,
                            at,
                        };
                        self.send(Event::Detected(det)).await;
                    }
                    None => debug!(volume = %key, "..data gone before it could be read"),
                }
            }
            Node::Volume(key)
                if ev.mask.contains(EventMask::CREATE | EventMask::ISDIR)
                    && is_timestamped_dir(name) =>
            {
                let Some(ts_dir) = name.to_str() else { return };
                // The kubelet swaps 0.1-0.5 ms after creating the dir (DOMAIN.md 7): the
                // mark goes on here, before anything is queued. A tmpfs volume's
                // filesystem mark covers it already.
                let mut late = false;
                if let Some(m) = &self.marker
                    && !key.volume_type.is_tmpfs()
                {
                    if let Err(e) = m.mark_dir(&child) {
                        debug!(volume = %key, error = %e, "cannot mark new data dir");
                    }
                    late = read_target(&path.join(DATA)).as_deref() == Some(ts_dir);
                }
                let ts_dir = ts_dir.to_owned();
                self.created.insert(path.clone(), ts_dir.clone());
                self.send(Event::DataDirCreated {
                    key,
                    dir: path.clone(),
                    ts_dir,
                    late,
                })
                .await;
            }
            Node::PodLogs if appeared => self.pod_log_dir(name).await,
            _ => {}
        }
    }

    /// After an overflow's rescan: a watch the walk did not find again is on a dir
    /// removed meanwhile, whose `IN_IGNORED` the overflow dropped. Forgets it, and tells
    /// the state that its volume, or its pod, is gone.
    async fn sweep(&mut self) {
        let Some(touched) = self.touched.take() else {
            return;
        };
        let stale: Vec<_> = (self.nodes.iter())
            .filter(|(wd, _)| !touched.contains(wd))
            .map(|(wd, (node, path))| (wd.clone(), node.clone(), path.clone()))
            .collect();
        let mut pods = HashSet::new();
        for (wd, node, path) in stale {
            debug!(path = %path.display(), "removed during the overflow; watch forgotten");
            self.unwatch(&wd);
            match node {
                Node::Volume(key) => {
                    self.unmounted.retain(|(_, d, _, _)| *d != path);
                    self.created.remove(&path);
                    self.send(Event::VolumeGone(key)).await;
                }
                Node::Pod => {
                    pods.insert(path);
                }
                Node::VolumesDir => {
                    pods.extend(path.parent().map(Path::to_owned));
                }
                _ => {}
            }
        }
        for pod in pods {
            if std::fs::symlink_metadata(&pod).is_err()
                && let Some(uid) = pod.file_name().and_then(OsStr::to_str)
            {
                let uid = uid.to_owned();
                self.send(Event::PodGone { uid }).await;
            }
        }
    }

    fn unwatch(&mut self, wd: &WatchDescriptor) {
        let _ = self.watches.remove(wd.clone());
        if let Some((_, path)) = self.nodes.remove(wd) {
            self.by_path.remove(&path);
        }
    }

    /// Drops the watches at and below `dir` (a moved-away dir keeps its watches).
    fn forget_under(&mut self, dir: &Path) {
        let gone: Vec<WatchDescriptor> = self
            .nodes
            .iter()
            .filter(|(_, (_, p))| p.starts_with(dir))
            .map(|(wd, _)| wd.clone())
            .collect();
        for wd in gone {
            self.unwatch(&wd);
        }
        self.unmounted.retain(|(_, d, _, _)| !d.starts_with(dir));
        self.created.retain(|d, _| !d.starts_with(dir));
    }
}

/// `<namespace>_<pod>_<uid>` (DOMAIN.md 2): namespace and pod names never hold `_`.
pub fn parse_pod_log_dir(name: &str) -> Option<(String, PodName)> {
    let mut it = name.split('_');
    let (ns, pod, uid) = (it.next()?, it.next()?, it.next()?);
    if it.next().is_some() || ns.is_empty() || pod.is_empty() || uid.is_empty() {
        return None;
    }
    Some((
        uid.to_owned(),
        PodName {
            namespace: ns.to_owned(),
            name: pod.to_owned(),
        },
    ))
}

/// `/proc/self/mountinfo` signals every mount and unmount in the agent's mount
/// namespace as a priority event (proc(5)); with HostToContainer propagation the
/// kubelet's tmpfs mounts reach it. Lets a volume be re-watched the moment its tmpfs
/// is mounted instead of at the next tick.
struct Mounts(tokio::io::unix::AsyncFd<std::fs::File>);

impl Mounts {
    fn open() -> io::Result<Mounts> {
        let f = std::fs::File::open("/proc/self/mountinfo")?;
        // SAFETY: the File owns its fd for the AsyncFd's whole life.
        let fd = unsafe {
            tokio::io::unix::AsyncFd::register_with_interest(f, tokio::io::Interest::PRIORITY)
        }
        .map_err(io::Error::from)?;
        Ok(Mounts(fd))
    }

    async fn changed(this: &mut Option<Mounts>) {
        match this {
            Some(m) => match m.0.ready(tokio::io::Interest::PRIORITY).await {
                Ok(mut g) => g.clear_ready(),
                Err(_) => *this = None,
            },
            None => std::future::pending().await,
        }
    }
}

/// Runs the walker until `tx` closes.
pub async fn run(
    mut walker: Walker,
    mut stream: inotify::EventStream<Vec<u8>>,
    count: std::sync::Arc<std::sync::atomic::AtomicUsize>,
) {
    let mut tick = tokio::time::interval(Duration::from_millis(250));
    let mut mounts = Mounts::open()
        .inspect_err(|e| warn!(error = %e, "cannot poll /proc/self/mountinfo; tmpfs mounts are noticed on the next tick"))
        .ok();
    loop {
        tokio::select! {
            _ = Mounts::changed(&mut mounts) => walker.tick().await,
            ev = stream.next() => match ev {
                Some(Ok(ev)) => walker.handle(ev).await,
                Some(Err(e)) => {
                    warn!(error = %e, "reading inotify events failed");
                    return;
                }
                None => return,
            },
            _ = tick.tick() => walker.tick().await,
            _ = walker.tx.closed() => return,
        }
        count.store(walker.watch_count(), std::sync::atomic::Ordering::Relaxed);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn found(rx: &mut crate::events::Receiver) -> Vec<String> {
        let mut names = Vec::new();
        while let Ok(ev) = rx.try_recv() {
            if let Event::VolumeFound { key, .. } = ev {
                names.push(key.name);
            }
        }
        names
    }

    /// A root missing at start, created later, removed and created again: followed
    /// each time it is there.
    #[tokio::test]
    async fn a_root_that_appears_later_is_followed() {
        let base = tempfile::tempdir().unwrap();
        let logs = tempfile::tempdir().unwrap();
        let root = base.path().join("later/kubelet");
        let vol = root.join("pods/u/volumes/kubernetes.io~configmap/cfg");
        let (tx, mut rx) = crate::events::channel();
        let roots = Roots::new([root.clone()]);
        let (mut w, mut stream) = Walker::start(roots, logs.path().to_owned(), None, tx)
            .await
            .unwrap();
        assert!(w.missing.contains(&root));
        w.tick().await;
        assert_eq!(w.watch_count(), 1, "the pod-logs dir only");
        std::fs::create_dir_all(&vol).unwrap();
        w.tick().await;
        assert!(w.missing.is_empty());
        assert_eq!(found(&mut rx), ["cfg"]);
        std::fs::remove_dir_all(&root).unwrap();
        while !w.missing.contains(&root) {
            let next = tokio::time::timeout(Duration::from_secs(5), stream.next());
            w.handle(next.await.unwrap().unwrap().unwrap()).await;
        }
        std::fs::create_dir_all(&vol).unwrap();
        w.tick().await;
        assert_eq!(found(&mut rx), ["cfg"]);
    }

    /// A pod dir that is a symlink out of the root: none of its volumes is watched.
    #[tokio::test]
    async fn a_symlinked_pod_dir_is_not_followed() {
        let root = tempfile::tempdir().unwrap();
        let outside = tempfile::tempdir().unwrap();
        let logs = tempfile::tempdir().unwrap();
        let out_vol = outside.path().join("volumes/kubernetes.io~configmap/cfg");
        std::fs::create_dir_all(out_vol).unwrap();
        std::fs::create_dir(root.path().join("pods")).unwrap();
        let link = root.path().join("pods/u");
        std::os::unix::fs::symlink(outside.path(), &link).unwrap();
        let (tx, mut rx) = crate::events::channel();
        let roots = Roots::new([root.path().to_owned()]);
        let (w, _stream) = Walker::start(roots, logs.path().to_owned(), None, tx)
            .await
            .unwrap();
        assert!(found(&mut rx).is_empty());
        assert_eq!(w.watch_count(), 2, "the pods and pod-logs dirs only");
        assert!(w.by_path.keys().all(|p| !p.starts_with(&link)));
    }

    /// Two swaps of one volume read in one go: each is credited to its own data dir,
    /// though `..data` points to the second by the time the first is read.
    #[tokio::test]
    async fn a_reader_behind_by_two_swaps_reports_both() {
        let root = tempfile::tempdir().unwrap();
        let logs = tempfile::tempdir().unwrap();
        let vol = root
            .path()
            .join("pods/u/volumes/kubernetes.io~configmap/cfg");
        std::fs::create_dir_all(&vol).unwrap();
        let (tx, mut rx) = crate::events::channel();
        let roots = Roots::new([root.path().to_owned()]);
        let (mut w, mut stream) = Walker::start(roots, logs.path().to_owned(), None, tx)
            .await
            .unwrap();
        let swaps = ["..2026_01_01_00_00_00.1", "..2026_01_01_00_00_00.2"];
        for ts in swaps {
            std::fs::create_dir(vol.join(ts)).unwrap();
            std::os::unix::fs::symlink(ts, vol.join("..data_tmp")).unwrap();
            std::fs::rename(vol.join("..data_tmp"), vol.join(DATA)).unwrap();
        }
        let mut reported = Vec::new();
        while reported.len() < swaps.len() {
            let next = tokio::time::timeout(Duration::from_secs(5), stream.next());
            w.handle(next.await.unwrap().unwrap().unwrap()).await;
            while let Ok(ev) = rx.try_recv() {
                if let Event::Detected(d) = ev {
                    reported.push(d.ts_dir);
                }
            }
        }
        assert_eq!(reported, swaps);
    }

    /// A pod removed while the queue overflowed: its `IN_IGNORED`s are never read here
    /// (the kernel drops them in an overflow); the rescan forgets its watches anyway.
    #[tokio::test]
    async fn an_overflow_rescan_forgets_what_was_removed_meanwhile() {
        let root = tempfile::tempdir().unwrap();
        let logs = tempfile::tempdir().unwrap();
        let pod = |uid: &str| root.path().join("pods").join(uid);
        for uid in ["kept", "gone"] {
            let vol = pod(uid).join("volumes/kubernetes.io~configmap/cfg");
            std::fs::create_dir_all(vol).unwrap();
        }
        let (tx, mut rx) = crate::events::channel();
        let roots = Roots::new([root.path().to_owned()]);
        let (mut w, _stream) = Walker::start(roots, logs.path().to_owned(), None, tx)
            .await
            .unwrap();
        // The pods dir, the pod-logs dir, and each pod's volumes, plugin and volume dirs.
        assert_eq!(w.watch_count(), 8);
        std::fs::remove_dir_all(pod("gone")).unwrap();
        while rx.try_recv().is_ok() {}
        let wd = w.nodes.keys().next().unwrap().clone();
        let overflow = inotify::Event {
            wd,
            mask: EventMask::Q_OVERFLOW,
            cookie: 0,
            name: None,
        };
        w.handle(overflow).await;
        assert_eq!(w.watch_count(), 5);
        assert!(w.by_path.keys().all(|p| !p.starts_with(pod("gone"))));
        let mut got = Vec::new();
        while let Ok(ev) = rx.try_recv() {
            got.push(ev);
        }
        assert!(matches!(got[0], Event::InotifyOverflow), "{got:?}");
        let gone = |uid: &str| {
            (got.iter()).any(|e| matches!(e, Event::VolumeGone(k) if k.pod_uid == uid))
                && (got.iter()).any(|e| matches!(e, Event::PodGone { uid: u } if u == uid))
        };
        assert!(gone("gone"), "{got:?}");
        assert!(!gone("kept"), "{got:?}");
    }

    #[test]
    fn pod_log_dir_names() {
        let (uid, n) =
            parse_pod_log_dir("kube-system_coredns-5d78c9869d-abcde_0b5c7f2e-1a2b").unwrap();
        assert_eq!(
            (uid.as_str(), n.namespace.as_str(), n.name.as_str()),
            ("0b5c7f2e-1a2b", "kube-system", "coredns-5d78c9869d-abcde")
        );
        for bad in ["a_b", "a_b_c_d", "_b_c", "a__c", "a_b_", "plain"] {
            assert!(parse_pod_log_dir(bad).is_none(), "{bad}");
        }
    }
}
