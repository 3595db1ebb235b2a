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
    collections::{BTreeMap, HashMap, HashSet},
    ffi::OsStr,
    io,
    path::{Path, PathBuf},
    sync::Arc,
    time::{Duration, Instant, SystemTime},
};

use inotify::{EventMask, Inotify, WatchDescriptor, WatchMask, Watches};
pub use reader::Reader;
use reader::{Read, VolumeDirs, mark_data_dir};
use tracing::{debug, info, warn};

mod handle;
mod reader;
#[cfg(test)]
mod tests;

use crate::{
    blind::{Blind, Reason},
    events::{Event, Sender},
    fanotify::Marker,
    node::{
        pod_logs::parse_pod_log_dir,
        read_target,
        volumes::{DATA, Place, Roots, VolumeKey, is_timestamped_dir},
    },
    updates::{Detection, Source},
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

/// How often dirs that could not be watched or listed are tried again.
const RETRY_EVERY: Duration = Duration::from_secs(1);

/// How to follow a dir again: the walk step that starts at it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Retry {
    Root,
    PodsDir,
    Pod,
    VolumesDir,
    PluginDir,
    Volume,
    PodLogs,
}

impl Node {
    fn retry(&self) -> Retry {
        match self {
            Node::Root => Retry::Root,
            Node::PodsDir => Retry::PodsDir,
            Node::Pod => Retry::Pod,
            Node::VolumesDir => Retry::VolumesDir,
            Node::PluginDir => Retry::PluginDir,
            Node::Volume(_) => Retry::Volume,
            Node::PodLogs => Retry::PodLogs,
        }
    }
}

/// How long a secret or projected volume dir is re-checked for its tmpfs mount: the
/// kubelet creates the dir, then mounts over it; a watch taken before the mount sees
/// the covered dir, never the swaps.
const MOUNT_GRACE: Duration = Duration::from_secs(120);

pub struct Walker {
    roots: Roots,
    pod_logs: PathBuf,
    watches: Watches,
    /// Each path is held once, shared with `by_path` and `volume_dirs`.
    nodes: HashMap<WatchDescriptor, (Node, Arc<Path>)>,
    /// The volume dirs of `nodes`, for the reader thread's marks.
    volume_dirs: VolumeDirs,
    /// Ordered, so that the dirs below one are a range (forgetting a removed dir costs
    /// what it held, not the whole tree).
    by_path: BTreeMap<Arc<Path>, WatchDescriptor>,
    /// Volumes found by the walk in progress, if one is.
    found: Option<Vec<VolumeKey>>,
    /// tmpfs volumes found before their mount: (key, dir, device of the parent, deadline).
    unmounted: Vec<(VolumeKey, PathBuf, u64, Instant)>,
    /// The watches the rescan after an overflow has added or found again, while it runs.
    touched: Option<HashSet<WatchDescriptor>>,
    /// By volume dir: the timestamped dir created last, whose `..data` swap is next.
    created: BTreeMap<PathBuf, String>,
    /// Kubelet roots that do not exist (yet): looked for again on each tick.
    missing: HashSet<PathBuf>,
    /// The pod-logs dir does not exist (yet): looked for again on each tick.
    logs_missing: bool,
    /// Dirs that could not be watched or listed (not gone: the watch limit, descriptors,
    /// ...), by path, with how to try again and why: retried every [`RETRY_EVERY`].
    unfollowed: BTreeMap<PathBuf, (Retry, Reason)>,
    /// The reasons said in a log line, until no dir is unfollowed for them.
    said: HashSet<Reason>,
    last_retry: Instant,
    /// Set while the unfollowed dirs are retried.
    retrying: bool,
    blind: Arc<Blind>,
    /// Places the open-event mark on a disk volume's new data dir (when fanotify runs).
    marker: Option<Marker>,
    tx: Sender,
}

/// The keys of `map` at and below `dir` (a range: paths order by component, so a
/// dir's descendants follow it).
fn at_and_below<'a, K, V>(map: &'a BTreeMap<K, V>, dir: &'a Path) -> impl Iterator<Item = &'a K>
where
    K: std::borrow::Borrow<Path> + Ord,
{
    map.range::<Path, _>((std::ops::Bound::Included(dir), std::ops::Bound::Unbounded))
        .map(|(k, _)| k)
        .take_while(move |k| k.borrow().starts_with(dir))
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
    /// Returns the walker and the reader of its inotify events (a thread that marks
    /// new data dirs as it reads them).
    pub async fn start(
        roots: Roots,
        pod_logs: PathBuf,
        marker: Option<Marker>,
        tx: Sender,
        blind: Arc<Blind>,
    ) -> io::Result<(Walker, Reader)> {
        let inotify = Inotify::init()?;
        let watches = inotify.watches();
        let volume_dirs = VolumeDirs::default();
        let reader = Reader::spawn(inotify, volume_dirs.clone(), marker.clone())?;
        let mut w = Walker {
            roots,
            pod_logs,
            watches,
            nodes: HashMap::new(),
            volume_dirs,
            by_path: BTreeMap::new(),
            found: None,
            marker,
            unmounted: Vec::new(),
            touched: None,
            created: BTreeMap::new(),
            missing: HashSet::new(),
            logs_missing: false,
            unfollowed: BTreeMap::new(),
            said: HashSet::new(),
            last_retry: Instant::now(),
            retrying: false,
            blind,
            tx,
        };
        w.scan().await;
        w.send(Event::ScanDone).await;
        Ok((w, reader))
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
        self.add_pod_logs().await;
    }

    /// Watches and lists the pod-logs dir; while it does not exist, it is looked for
    /// on each tick.
    pub(super) async fn add_pod_logs(&mut self) {
        let logs = self.pod_logs.clone();
        self.logs_missing = !logs.is_dir();
        if self.logs_missing {
            return;
        }
        if self.add(&logs, Node::PodLogs, TREE).is_some() {
            for name in self.list(&logs, Retry::PodLogs) {
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
                let path: Arc<Path> = Arc::from(path);
                if let Some(old) = self.by_path.insert(path.clone(), wd.clone())
                    && old != wd
                {
                    let _ = self.watches.remove(old.clone());
                    self.forget_node(&old);
                }
                if matches!(node, Node::Volume(_)) {
                    self.volume_dirs.insert(&wd, path.clone());
                }
                self.nodes.insert(wd.clone(), (node, path));
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
                    _ => self.unfollowed(path, node.retry(), &e),
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
        for uid in self.list(pods, Retry::PodsDir) {
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
        for plugin in self.list(volumes, Retry::VolumesDir) {
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
        for vol in self.list(dir, Retry::PluginDir) {
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
        let writing = in_progress(dir, current.as_deref());
        self.send(Event::VolumeFound {
            key: key.clone(),
            dir: dir.to_owned(),
            current,
        })
        .await;
        // Found in the middle of an update: its new data dir, created before the watch,
        // is marked now, before its swap.
        for ts_dir in writing {
            self.data_dir_created(key.clone(), dir, ts_dir, None).await;
        }
    }

    /// A new data dir of `key` (an update under way): marked for opens at once, before
    /// anything is queued, as the kubelet swaps 0.1-0.5 ms after creating it
    /// (docs/design.md 7); then reported, late when the swap came before the mark.
    /// `marked`: the reader thread marked it already, late or not.
    async fn data_dir_created(
        &self,
        key: VolumeKey,
        dir: &Path,
        ts_dir: String,
        marked: Option<bool>,
    ) {
        let late = match (marked, &self.marker) {
            (Some(late), _) => late,
            (None, Some(m)) => mark_data_dir(m, dir, &ts_dir),
            (None, None) => false,
        };
        let dir = dir.to_owned();
        self.send(Event::DataDirCreated {
            key,
            dir,
            ts_dir,
            late,
        })
        .await;
    }

    /// The entries of `dir`; when it cannot be listed (and is not gone), it is
    /// unfollowed, to be walked again from it.
    fn list(&mut self, dir: &Path, retry: Retry) -> Vec<std::ffi::OsString> {
        let listed = std::fs::read_dir(dir).and_then(|rd| {
            rd.map(|e| e.map(|e| e.file_name()))
                .collect::<io::Result<Vec<_>>>()
        });
        match listed {
            Ok(names) => names,
            Err(e) if e.kind() == io::ErrorKind::NotFound => {
                debug!(dir = %dir.display(), "gone before it could be listed");
                Vec::new()
            }
            Err(e) => {
                self.unfollowed(dir, retry, &e);
                Vec::new()
            }
        }
    }

    /// `path` could not be watched or listed for `e`: counted by reason, said once per
    /// reason until every dir is followed again, and retried.
    fn unfollowed(&mut self, path: &Path, retry: Retry, e: &io::Error) {
        let reason = Reason::of(e);
        let new = self
            .unfollowed
            .insert(path.to_owned(), (retry, reason))
            .is_none();
        if new && !self.retrying && reason == Reason::FdLimit {
            self.blind.fd_exhausted();
        }
        if self.said.insert(reason) {
            warn!(
                path = %path.display(),
                error = %e,
                reason = reason.label(),
                "cannot follow a dir under the kubelet roots: {}; it and the dirs like it \
                 (reloadscope_unwatched_paths) are retried every second, and /readyz fails \
                 until they are followed",
                reason.fix()
            );
        }
        self.publish();
    }

    /// Counts the unfollowed dirs by reason; says a reason gone.
    fn publish(&mut self) {
        for reason in Reason::ALL {
            let n = (self.unfollowed.values())
                .filter(|(_, r)| *r == reason)
                .count();
            self.blind.set_unwatched(reason, n);
            if n == 0 && self.said.remove(&reason) {
                info!(
                    reason = reason.label(),
                    "every dir not followed for this reason is followed again"
                );
            }
        }
    }

    /// Walks again from each unfollowed dir, parents first; those that fail again stay.
    pub(super) async fn retry_unfollowed(&mut self) {
        if self.unfollowed.is_empty() || self.last_retry.elapsed() < RETRY_EVERY {
            return;
        }
        self.last_retry = Instant::now();
        self.retrying = true;
        let failed = std::mem::take(&mut self.unfollowed);
        for (path, (retry, _)) in failed {
            // Under a dir that failed again in this round: walked from there.
            if self.unfollowed.keys().any(|p| path.starts_with(p)) {
                continue;
            }
            match retry {
                Retry::Root => self.add_root(&path).await,
                Retry::PodsDir => self.add_pods_dir(&path).await,
                Retry::Pod => self.add_pod(&path).await,
                Retry::VolumesDir => self.add_volumes_dir(&path).await,
                Retry::PluginDir => self.add_plugin_dir(&path).await,
                Retry::Volume => self.add_volume(&path).await,
                Retry::PodLogs => self.add_pod_logs().await,
            }
        }
        self.retrying = false;
        self.publish();
    }

    async fn pod_log_dir(&mut self, name: &OsStr) {
        if let Some((uid, name)) = name.to_str().and_then(parse_pod_log_dir) {
            self.send(Event::PodNamed { uid, name }).await;
        }
    }
}

/// The timestamped dirs of a volume that an update is writing: not `current`, and not
/// older than it (an older one is a previous data dir the kubelet is removing).
fn in_progress(dir: &Path, current: Option<&str>) -> Vec<String> {
    let mtime = |name: &OsStr| {
        std::fs::symlink_metadata(dir.join(name))
            .and_then(|m| m.modified())
            .ok()
    };
    let since = current.and_then(|c| mtime(OsStr::new(c)));
    children(dir)
        .into_iter()
        .filter(|n| is_timestamped_dir(n) && n.to_str() != current)
        .filter(|n| since.is_none_or(|s| mtime(n).is_some_and(|m| m >= s)))
        .filter_map(|n| n.to_str().map(str::to_owned))
        .collect()
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
    mut reader: Reader,
    count: std::sync::Arc<std::sync::atomic::AtomicUsize>,
) {
    let mut tick = tokio::time::interval(Duration::from_millis(250));
    let mut mounts = Mounts::open()
        .inspect_err(|e| warn!(error = %e, "cannot poll /proc/self/mountinfo; tmpfs mounts are noticed on the next tick"))
        .ok();
    loop {
        tokio::select! {
            _ = Mounts::changed(&mut mounts) => walker.tick().await,
            batch = reader.next() => match batch {
                Some(Ok(batch)) => {
                    for read in batch {
                        walker.handle_read(read).await;
                    }
                }
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
