//! Containers starting and stopping, from the kubepods cgroup tree: the runtime makes a
//! cgroup dir for each container it starts (a restart included: a new container id) and
//! removes it when the container is gone, so inotify `IN_CREATE` / `IN_DELETE` there
//! says when to look in `/proc` again, with no polling. A container's dir appearing
//! also says that it is starting, before its program runs (the runtime makes the
//! cgroup when it creates the container, and starts it afterwards): its pod's volumes
//! are watched for its first reads from then on (`Event::ContainerStarting`).
//!
//! Watched (dirs only, never followed through symlinks): each kubepods root, its QoS
//! dirs, and each pod dir, whose children are the containers. The host's cgroup
//! mounts are read from `<proc-root>/1/mountinfo` and reached through
//! `<proc-root>/1/root`, so the agent needs no mount of its own for them.

use std::{
    collections::HashMap,
    ffi::OsStr,
    path::{Path, PathBuf},
    sync::{
        Arc,
        atomic::{AtomicUsize, Ordering::Relaxed},
    },
    time::Duration,
};

use futures_util::StreamExt;
use inotify::{EventMask, Inotify, WatchDescriptor, WatchMask, Watches};
use tokio::sync::Notify;
use tracing::{debug, info, warn};

use crate::{
    events::{self, Event},
    node::{
        cgroup::{ContainerRef, parse_cgroup_path, pod_of_cgroup_path},
        mountinfo,
    },
};

const MASK: WatchMask = WatchMask::CREATE
    .union(WatchMask::DELETE)
    .union(WatchMask::ONLYDIR)
    .union(WatchMask::DONT_FOLLOW);

/// A runtime makes the container's cgroup before its process joins it: one look right
/// away, and one this much later.
const SETTLE: Duration = Duration::from_secs(1);

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Level {
    /// The cgroup mount, and the dirs right below it (where a nested kubelet puts its
    /// kubepods root): watched for a kubepods root appearing.
    Base,
    Above,
    Kubepods,
    Qos,
    Pod,
}

/// The host's cgroup tree: the cgroup v2 mount, else a v1 hierarchy with the `pids` or
/// `memory` controller (one is enough: they hold the same tree). Seen as the host's
/// init sees it, through `<proc-root>/1/root` (the agent's own `/sys/fs/cgroup` may be
/// a cgroup namespace of its own), else as the agent's mounts show it.
pub fn cgroup_base(proc_root: &Path) -> Option<PathBuf> {
    let host = proc_root.join("1");
    let through_init = mount_of(&host.join("mountinfo")).map(|m| {
        let inside = m.strip_prefix("/").unwrap_or(&m).to_owned();
        host.join("root").join(inside)
    });
    let own = mount_of(Path::new("/proc/self/mountinfo"));
    [through_init, own]
        .into_iter()
        .flatten()
        .find(|dir| std::fs::read_dir(dir).is_ok())
}

/// The cgroup mount point in a mountinfo file.
fn mount_of(mountinfo: &Path) -> Option<PathBuf> {
    let content = std::fs::read(mountinfo).ok()?;
    let (mounts, _) = mountinfo::parse_bytes(&content);
    let v1 = |m: &&mountinfo::Mount| {
        let leaf = m
            .mount_point
            .file_name()
            .unwrap_or_default()
            .as_encoded_bytes();
        m.fs_type == "cgroup" && (leaf.ends_with(b"pids") || leaf.ends_with(b"memory"))
    };
    let mount =
        (mounts.iter().find(|m| m.fs_type == "cgroup2")).or_else(|| mounts.iter().find(v1))?;
    Some(mount.mount_point.clone())
}

/// `kubepods.slice` (systemd driver), `kubepods` (cgroupfs), a nested kubelet's
/// `*-kubepods.slice`.
fn is_kubepods(name: &OsStr) -> bool {
    let n = name.as_encoded_bytes();
    n == b"kubepods.slice" || n == b"kubepods" || n.ends_with(b"-kubepods.slice")
}

/// A pod's dir: `kubepods-burstable-pod<uid>.slice`, `pod<uid>`.
fn is_pod_dir(name: &OsStr) -> bool {
    name.to_str()
        .and_then(|n| pod_of_cgroup_path(&format!("/kubepods/{n}")))
        .is_some()
}

/// What one event of the tree says.
#[derive(Debug, PartialEq, Eq)]
enum Change {
    /// Nothing for the consumer scan.
    None,
    /// Containers or pods may have come or gone: a scan is due.
    Scan,
    /// A container's cgroup appeared: it is starting, and a scan is due.
    Started(ContainerRef),
}

pub struct Follower {
    watches: Watches,
    dirs: HashMap<WatchDescriptor, (PathBuf, Level)>,
    /// Where the number of watches held is published.
    count: Arc<AtomicUsize>,
}

impl Follower {
    /// Watches the kubepods trees under `base`, and for them to appear; None without a
    /// base or an inotify instance.
    pub fn start(
        base: Option<PathBuf>,
        count: Arc<AtomicUsize>,
    ) -> Option<(Follower, inotify::EventStream<Vec<u8>>)> {
        let base = base?;
        let stream = match Inotify::init().and_then(|i| i.into_event_stream(vec![0u8; 16 * 1024])) {
            Ok(s) => s,
            Err(e) => {
                warn!(error = %e, "cannot follow container cgroups; consumers are found by periodic scans");
                return None;
            }
        };
        let mut f = Follower {
            watches: stream.watches(),
            dirs: HashMap::new(),
            count,
        };
        f.add(base.clone(), Level::Base);
        f.count.store(f.dirs.len(), Relaxed);
        if f.dirs.is_empty() {
            return None;
        }
        info!(base = %base.display(), dirs = f.dirs.len(), "following container cgroups");
        Some((f, stream))
    }

    /// Whether a kubepods root is watched (not only waited for).
    pub fn has_pods_tree(&self) -> bool {
        self.dirs.values().any(|(_, l)| *l == Level::Kubepods)
    }

    /// Watches `dir`, then lists it: what was created in between is watched too.
    fn add(&mut self, dir: PathBuf, level: Level) {
        match self.watches.add(&dir, MASK) {
            Ok(wd) => {
                self.dirs.insert(wd, (dir.clone(), level));
            }
            Err(e) => {
                debug!(path = %dir.display(), error = %e, "cannot watch cgroup dir (gone?)");
                return;
            }
        }
        if level == Level::Pod {
            return;
        }
        for e in std::fs::read_dir(&dir).into_iter().flatten().flatten() {
            if e.file_type().is_ok_and(|t| t.is_dir()) {
                self.child(e.path(), level);
            }
        }
    }

    /// A dir below a watched `parent` level, watched when it is one of the tree's.
    fn child(&mut self, path: PathBuf, parent: Level) {
        let name = path.file_name().unwrap_or_default();
        let level = match parent {
            Level::Base | Level::Above if is_kubepods(name) => Level::Kubepods,
            Level::Base => Level::Above,
            Level::Kubepods | Level::Qos if is_pod_dir(name) => Level::Pod,
            Level::Kubepods => Level::Qos,
            Level::Above | Level::Qos | Level::Pod => return,
        };
        self.add(path, level);
    }

    /// Handles one event: whether containers may have started or stopped, and which
    /// one started.
    fn handle(&mut self, ev: inotify::Event<std::ffi::OsString>) -> Change {
        if ev.mask.contains(EventMask::Q_OVERFLOW) {
            warn!("inotify queue of the cgroup watches overflowed: rescanning");
            return Change::Scan;
        }
        if ev.mask.contains(EventMask::IGNORED) {
            self.dirs.remove(&ev.wd);
            return Change::None;
        }
        let (Some(name), Some((dir, level))) = (ev.name, self.dirs.get(&ev.wd).cloned()) else {
            return Change::None;
        };
        if !ev.mask.contains(EventMask::ISDIR) {
            return Change::None;
        }
        let created = ev.mask.contains(EventMask::CREATE);
        if created && level == Level::Pod {
            // The pod's dir and the container's, as a cgroup path below `kubepods`.
            let pod = dir.file_name().unwrap_or_default().to_string_lossy();
            let path = format!("/kubepods/{pod}/{}", name.to_string_lossy());
            if let Some(c) = parse_cgroup_path(&path) {
                return Change::Started(c);
            }
        }
        let path = dir.join(&name);
        if created {
            self.child(path, level);
        }
        // A pod dir's children are its containers; higher up, pods come and go; above
        // the tree, only a kubepods root matters.
        if !matches!(level, Level::Base | Level::Above) || is_kubepods(&name) {
            Change::Scan
        } else {
            Change::None
        }
    }

    /// Runs until `stop` completes or the stream ends: each change wakes `rescan` now
    /// and once more after [`SETTLE`]; each container starting is told on `tx` first.
    pub async fn run(
        mut self,
        mut stream: inotify::EventStream<Vec<u8>>,
        rescan: Arc<Notify>,
        tx: events::Sender,
        stop: impl Future<Output = ()>,
    ) {
        let mut again: Option<tokio::time::Instant> = None;
        tokio::pin!(stop);
        loop {
            let later = async {
                match again {
                    Some(at) => tokio::time::sleep_until(at).await,
                    None => std::future::pending().await,
                }
            };
            tokio::select! {
                ev = stream.next() => match ev {
                    Some(Ok(ev)) => {
                        let change = self.handle(ev);
                        self.count.store(self.dirs.len(), Relaxed);
                        if let Change::Started(c) = &change {
                            let (pod_uid, id) = (c.pod_uid.clone(), c.container_id.clone());
                            if tx.send(Event::ContainerStarting { pod_uid, id }).await.is_err() {
                                return;
                            }
                        }
                        if change != Change::None {
                            rescan.notify_one();
                            again = Some(tokio::time::Instant::now() + SETTLE);
                        }
                    }
                    Some(Err(e)) => {
                        warn!(error = %e, "reading cgroup events failed; consumers are found by periodic scans");
                        return;
                    }
                    None => return,
                },
                _ = later => {
                    again = None;
                    rescan.notify_one();
                }
                _ = &mut stop => return,
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const MOUNTINFO: &str = "30 1 0:26 / /sys/fs/cgroup rw,nosuid - cgroup2 cgroup2 rw\n";

    /// Handles the next event: whether a scan is due.
    async fn next(f: &mut Follower, stream: &mut inotify::EventStream<Vec<u8>>) -> bool {
        change(f, stream).await != Change::None
    }

    async fn change(f: &mut Follower, stream: &mut inotify::EventStream<Vec<u8>>) -> Change {
        f.handle(stream.next().await.unwrap().unwrap())
    }

    /// A kubelet-style tree (systemd driver) in a temp dir, as `<proc>/1/root/<mount>`,
    /// made after the follower started, as on a node that boots.
    #[tokio::test]
    async fn pods_and_containers_coming_and_going_wake_the_scan() {
        let proc = tempfile::tempdir().unwrap();
        let host = proc.path().join("1");
        let cg = host.join("root/sys/fs/cgroup");
        std::fs::create_dir_all(cg.join("system.slice")).unwrap();
        std::fs::write(host.join("mountinfo"), MOUNTINFO).unwrap();
        let base = cgroup_base(proc.path());
        assert_eq!(
            base.as_deref(),
            Some(cg.as_path()),
            "through the host's init"
        );
        let (mut f, mut stream) = Follower::start(base, Arc::default()).unwrap();
        assert_eq!(f.dirs.len(), 2, "the base and system.slice");
        assert!(!f.has_pods_tree());

        // Outside the kubepods tree: no scan.
        std::fs::create_dir(cg.join("system.slice/other.service")).unwrap();
        assert!(!next(&mut f, &mut stream).await);
        let root = cg.join("kubepods.slice");
        std::fs::create_dir(&root).unwrap();
        assert!(next(&mut f, &mut stream).await, "the kubelet started");
        assert!(f.has_pods_tree());
        let qos = root.join("kubepods-burstable.slice");
        std::fs::create_dir(&qos).unwrap();
        assert!(next(&mut f, &mut stream).await);
        let pod = qos.join("kubepods-burstable-pod0b5c7f2e_1a2b_4c3d_8e9f_001122334455.slice");
        std::fs::create_dir(&pod).unwrap();
        assert!(next(&mut f, &mut stream).await, "a pod appeared");
        assert_eq!(f.dirs.len(), 5, "each level of the tree is watched");

        let id = "0123456789abcdef0123";
        std::fs::create_dir(pod.join(format!("cri-containerd-{id}.scope"))).unwrap();
        assert_eq!(
            change(&mut f, &mut stream).await,
            Change::Started(ContainerRef {
                pod_uid: "0b5c7f2e-1a2b-4c3d-8e9f-001122334455".into(),
                container_id: id.into(),
            }),
            "a container started"
        );
        assert_eq!(f.dirs.len(), 5, "a container's dir is not watched");
        // A file (not a cgroup) changes nothing.
        std::fs::write(pod.join("cgroup.procs"), "").unwrap();
        assert!(!next(&mut f, &mut stream).await);
        std::fs::remove_dir(pod.join(format!("cri-containerd-{id}.scope"))).unwrap();
        assert_eq!(
            change(&mut f, &mut stream).await,
            Change::Scan,
            "a container stopped"
        );
    }

    #[tokio::test]
    async fn without_a_cgroup_dir_nothing_is_followed() {
        assert!(Follower::start(None, Arc::default()).is_none());
        let gone = tempfile::tempdir().unwrap().path().join("gone");
        assert!(Follower::start(Some(gone), Arc::default()).is_none());
    }

    #[test]
    fn pod_dirs_of_both_drivers() {
        let pod = "kubepods-burstable-pod0b5c7f2e_1a2b_4c3d_8e9f_001122334455.slice";
        assert!(is_pod_dir(OsStr::new(pod)));
        assert!(is_pod_dir(OsStr::new(
            "pod0b5c7f2e-1a2b-4c3d-8e9f-001122334455"
        )));
        assert!(!is_pod_dir(OsStr::new("kubepods-burstable.slice")));
        assert!(!is_pod_dir(OsStr::new("burstable")));
    }
}
