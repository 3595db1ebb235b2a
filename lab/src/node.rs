//! A node's kubelet tree made of real kernel parts (docs/design.md 2):
//!
//! ```text
//! <base>/kubelet/pods/<uid>/volumes/kubernetes.io~<plugin>/<volume>/   disk, or its own tmpfs
//! <base>/log/pods/<namespace>_<name>_<uid>/
//! <base>/log/containers/
//! ```
//!
//! Secret and projected volumes are tmpfs mounts, as the kubelet makes them; tmpfs
//! mounts need CAP_SYS_ADMIN. Every mount the node made is undone when the pod is
//! removed or the node dropped.

use std::{
    fs::{self, DirBuilder},
    io,
    os::unix::fs::{DirBuilderExt, PermissionsExt},
    path::{Path, PathBuf},
    sync::atomic::{AtomicU64, Ordering},
    time::{SystemTime, UNIX_EPOCH},
};

use anyhow::{Context as _, bail};
use nix::{
    errno::Errno,
    mount::{MntFlags, MsFlags},
};
use reloadscope::node::volumes::VolumeType;

use super::writer::AtomicWriter;

/// Options of a lab tmpfs volume: small, and world-writable with the sticky bit, which
/// is what the kubelet's tmpfs volumes get.
const TMPFS_OPTIONS: &str = "mode=1777,size=4m";
/// What the kubelet's emptyDir setup leaves a disk volume dir with.
const DISK_VOLUME_MODE: u32 = 0o777;
/// The kubelet creates pod dirs 0750.
const POD_DIR_MODE: u32 = 0o750;

/// A pod on a [`LabNode`].
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct LabPod {
    /// UUID-v4-shaped, like an API server's pod uid.
    pub uid: String,
    pub namespace: String,
    pub name: String,
}

impl LabPod {
    /// `<namespace>_<name>_<uid>`: the pod's directory under the pod logs dir.
    pub fn log_dir_name(&self) -> String {
        format!("{}_{}_{}", self.namespace, self.name, self.uid)
    }
}

/// A tmpfs volume this node mounted.
#[derive(Debug)]
struct LabMount {
    pod_uid: String,
    path: PathBuf,
}

/// A kubelet-style tree under a base directory. See the module docs.
#[derive(Debug)]
pub struct LabNode {
    /// Canonical, so that it compares with `/proc/self/mountinfo`.
    base: PathBuf,
    /// Made by [`LabNode::temp`]: removed, with everything in it, on drop.
    owned: bool,
    /// In mount order.
    mounts: Vec<LabMount>,
    /// Shared with the writers of its volumes.
    gate: super::SwapGate,
}

impl LabNode {
    /// Creates `<base>/kubelet/pods`, `<base>/log/pods` and `<base>/log/containers`;
    /// `base` is created if missing. The tree stays on drop; its tmpfs mounts do not.
    pub fn create(base: &Path) -> anyhow::Result<LabNode> {
        fs::create_dir_all(base).with_context(|| format!("create {base:?}"))?;
        let base = fs::canonicalize(base).with_context(|| format!("resolve {base:?}"))?;
        let node = LabNode {
            base,
            owned: false,
            mounts: Vec::new(),
            gate: super::SwapGate::default(),
        };
        node.create_tree()?;
        Ok(node)
    }

    /// A fresh node under a new unique dir in the system temp dir, removed with
    /// everything in it on drop.
    pub fn temp() -> anyhow::Result<LabNode> {
        static COUNTER: AtomicU64 = AtomicU64::new(0);
        let tmp = std::env::temp_dir();
        for _ in 0..100 {
            let nanos = SystemTime::now()
                .duration_since(UNIX_EPOCH)
                .map_or(0, |d| d.as_nanos());
            let n = COUNTER.fetch_add(1, Ordering::Relaxed);
            let dir = tmp.join(format!(
                "reloadscope-lab-{}-{n}-{nanos}",
                std::process::id()
            ));
            match fs::create_dir(&dir) {
                Ok(()) => {}
                Err(e) if e.kind() == io::ErrorKind::AlreadyExists => continue,
                Err(e) => return Err(e).with_context(|| format!("create {dir:?}")),
            }
            // From here on, dropping `node` removes the dir again.
            let mut node = LabNode {
                base: dir.clone(),
                owned: true,
                mounts: Vec::new(),
                gate: super::SwapGate::default(),
            };
            node.base = fs::canonicalize(&dir).with_context(|| format!("resolve {dir:?}"))?;
            node.create_tree()?;
            return Ok(node);
        }
        bail!("no free lab dir name under {tmp:?}")
    }

    fn create_tree(&self) -> anyhow::Result<()> {
        for dir in [
            self.kubelet_root().join("pods"),
            self.pod_logs_dir(),
            self.container_logs_dir(),
        ] {
            fs::create_dir_all(&dir).with_context(|| format!("create {dir:?}"))?;
        }
        Ok(())
    }

    /// The base dir (canonical).
    pub fn base(&self) -> &Path {
        &self.base
    }

    /// `<base>/kubelet`
    pub fn kubelet_root(&self) -> PathBuf {
        self.base.join("kubelet")
    }

    /// `<base>/log/pods`
    pub fn pod_logs_dir(&self) -> PathBuf {
        self.base.join("log").join("pods")
    }

    /// `<base>/log/containers`
    pub fn container_logs_dir(&self) -> PathBuf {
        self.base.join("log").join("containers")
    }

    /// `<root>/pods/<uid>`
    pub fn pod_dir(&self, pod: &LabPod) -> PathBuf {
        self.kubelet_root().join("pods").join(&pod.uid)
    }

    /// `<pod-logs>/<namespace>_<name>_<uid>`
    pub fn pod_log_dir(&self, pod: &LabPod) -> PathBuf {
        self.pod_logs_dir().join(pod.log_dir_name())
    }

    /// `<root>/pods/<uid>/volumes/<plugin dir>/<volume>`
    pub fn volume_dir(&self, pod: &LabPod, ty: VolumeType, volume: &str) -> PathBuf {
        self.pod_dir(pod)
            .join("volumes")
            .join(ty.plugin_dir())
            .join(volume)
    }

    /// Creates `<root>/pods/<uid>/volumes` and `<pod-logs>/<namespace>_<name>_<uid>/`
    /// for a pod with a fresh random uid.
    pub fn add_pod(&mut self, namespace: &str, name: &str) -> anyhow::Result<LabPod> {
        check_name("namespace", namespace)?;
        check_name("pod name", name)?;
        // An API server's names never hold '_', the separator of the log dir name.
        if namespace.contains('_') || name.contains('_') {
            bail!("pod {namespace}/{name}: names must not contain '_'");
        }
        let pod = LabPod {
            uid: uuid_v4().context("pod uid")?,
            namespace: namespace.to_string(),
            name: name.to_string(),
        };
        let volumes = self.pod_dir(&pod).join("volumes");
        DirBuilder::new()
            .recursive(true)
            .mode(POD_DIR_MODE)
            .create(&volumes)
            .with_context(|| format!("create {volumes:?}"))?;
        let logs = self.pod_log_dir(&pod);
        fs::create_dir(&logs).with_context(|| format!("create {logs:?}"))?;
        tracing::debug!(uid = %pod.uid, "lab pod {namespace}/{name} added");
        Ok(pod)
    }

    /// The gate its volumes' writers wait at before each swap ([`super::marks`]).
    pub fn swap_gate(&self) -> &super::SwapGate {
        &self.gate
    }

    /// Creates the volume dir `<root>/pods/<uid>/volumes/<plugin dir>/<volume>`; for
    /// secret and projected volumes mounts a fresh tmpfs on it. Returns its writer; the
    /// volume stays empty until the first write.
    pub fn add_volume(
        &mut self,
        pod: &LabPod,
        ty: VolumeType,
        volume: &str,
    ) -> anyhow::Result<AtomicWriter> {
        check_name("volume name", volume)?;
        let volumes = self.pod_dir(pod).join("volumes");
        if !volumes.is_dir() {
            bail!("pod {} is not on this node", pod.uid);
        }
        let dir = self.volume_dir(pod, ty, volume);
        let plugin = volumes.join(ty.plugin_dir());
        fs::create_dir_all(&plugin).with_context(|| format!("create {plugin:?}"))?;
        fs::create_dir(&dir).with_context(|| format!("create volume dir {dir:?}"))?;
        fs::set_permissions(&dir, fs::Permissions::from_mode(DISK_VOLUME_MODE))
            .with_context(|| format!("chmod {dir:?}"))?;
        if ty.is_tmpfs() {
            let mounted = nix::mount::mount(
                Some("tmpfs"),
                &dir,
                Some("tmpfs"),
                MsFlags::empty(),
                Some(TMPFS_OPTIONS),
            );
            if let Err(e) = mounted {
                let _ = fs::remove_dir(&dir);
                return Err(e)
                    .with_context(|| format!("mount tmpfs on {dir:?} (needs CAP_SYS_ADMIN)"));
            }
            self.mounts.push(LabMount {
                pod_uid: pod.uid.clone(),
                path: dir.clone(),
            });
            tracing::debug!(dir = ?dir, "lab tmpfs mounted");
        }
        Ok(AtomicWriter::gated(dir, self.gate.clone()))
    }

    /// Removes the pod as the kubelet's teardown does: unmounts its tmpfs volumes
    /// (lazily detaching busy ones) and any other mount under its dir, then removes its
    /// dir and its log dir. Tries every step; returns the first failure.
    pub fn remove_pod(&mut self, pod: &LabPod) -> anyhow::Result<()> {
        let mut first: Option<anyhow::Error> = None;
        let (mine, rest): (Vec<_>, Vec<_>) = std::mem::take(&mut self.mounts)
            .into_iter()
            .partition(|m| m.pod_uid == pod.uid);
        self.mounts = rest;
        for m in mine.iter().rev() {
            if let Err(e) = unmount(&m.path) {
                first.get_or_insert(e);
            }
        }
        let pod_dir = self.pod_dir(pod);
        detach_mounts_under(&pod_dir);
        for dir in [pod_dir, self.pod_log_dir(pod)] {
            match fs::remove_dir_all(&dir) {
                Err(e) if e.kind() != io::ErrorKind::NotFound => {
                    first.get_or_insert(anyhow::Error::new(e).context(format!("remove {dir:?}")));
                }
                _ => {}
            }
        }
        match first {
            None => {
                tracing::debug!(uid = %pod.uid, "lab pod removed");
                Ok(())
            }
            Some(e) => Err(e),
        }
    }
}

impl Drop for LabNode {
    fn drop(&mut self) {
        for m in self.mounts.drain(..).rev() {
            if let Err(e) = unmount(&m.path) {
                tracing::warn!("lab node drop: {e:#}");
            }
        }
        if self.owned {
            // Never delete through someone else's mount (a bind mount of a host dir).
            detach_mounts_under(&self.base);
            if let Err(e) = fs::remove_dir_all(&self.base) {
                tracing::warn!("lab node drop: remove {:?}: {e}", self.base);
            }
        }
    }
}

fn check_name(what: &str, name: &str) -> anyhow::Result<()> {
    if name.is_empty() || name == "." || name == ".." || name.contains(['/', '\0']) {
        bail!("invalid {what} {name:?}");
    }
    Ok(())
}

/// Unmounts `path`; when it is busy, detaches it lazily (MNT_DETACH). A path that is
/// no longer a mount point counts as done.
pub(super) fn unmount(path: &Path) -> anyhow::Result<()> {
    match nix::mount::umount2(path, MntFlags::empty()) {
        Ok(()) => Ok(()),
        Err(Errno::EBUSY) => nix::mount::umount2(path, MntFlags::MNT_DETACH)
            .with_context(|| format!("detach {path:?}")),
        Err(Errno::EINVAL | Errno::ENOENT) => Ok(()),
        Err(e) => Err(e).with_context(|| format!("unmount {path:?}")),
    }
}

/// Lazily detaches every mount at or under `dir`, deepest first, so that removing the
/// tree never reaches into another file system.
fn detach_mounts_under(dir: &Path) {
    // Mounts can be stacked on one mount point: a few rounds take them all.
    for _ in 0..8 {
        let mut points = match mount_points() {
            Ok(p) => p,
            Err(e) => {
                tracing::warn!("read /proc/self/mountinfo: {e}");
                return;
            }
        };
        points.retain(|p| p.starts_with(dir));
        if points.is_empty() {
            return;
        }
        points.sort_by_key(|p| std::cmp::Reverse(p.components().count()));
        for p in points {
            if let Err(e) = nix::mount::umount2(&p, MntFlags::MNT_DETACH) {
                tracing::warn!("detach {p:?}: {e}");
            }
        }
    }
}

/// The mount points of this mount namespace.
fn mount_points() -> io::Result<Vec<PathBuf>> {
    let (mounts, _) = reloadscope::node::mountinfo::parse_bytes(&fs::read("/proc/self/mountinfo")?);
    Ok(mounts.into_iter().map(|m| m.mount_point).collect())
}

/// A random UUID in version 4 form (`xxxxxxxx-xxxx-4xxx-Nxxx-xxxxxxxxxxxx`).
fn uuid_v4() -> io::Result<String> {
    let mut b = [0u8; 16];
    super::fill_random(&mut b)?;
    b[6] = (b[6] & 0x0f) | 0x40;
    b[8] = (b[8] & 0x3f) | 0x80;
    let hex: String = b.iter().map(|x| format!("{x:02x}")).collect();
    Ok(format!(
        "{}-{}-{}-{}-{}",
        &hex[0..8],
        &hex[8..12],
        &hex[12..16],
        &hex[16..20],
        &hex[20..32]
    ))
}

#[cfg(test)]
mod tests {
    use std::{collections::BTreeSet, os::unix::fs::MetadataExt};

    use nix::sys::statfs::{TMPFS_MAGIC, statfs};

    use super::*;
    use crate::{CallStyle, WriteOutcome, payload};

    fn is_uuid_v4(s: &str) -> bool {
        let parts: Vec<&str> = s.split('-').collect();
        parts.iter().map(|p| p.len()).collect::<Vec<_>>() == [8, 4, 4, 4, 12]
            && parts.iter().all(|p| {
                p.bytes()
                    .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
            })
            && parts[2].starts_with('4')
            && parts[3].starts_with(['8', '9', 'a', 'b'])
    }

    fn mounted(path: &Path) -> bool {
        mount_points().unwrap().iter().any(|p| p == path)
    }

    #[test]
    fn temp_tree_and_drop() {
        let node = LabNode::temp().unwrap();
        let base = node.base().to_path_buf();
        assert!(base.starts_with(fs::canonicalize(std::env::temp_dir()).unwrap()));
        assert_eq!(node.kubelet_root(), base.join("kubelet"));
        assert_eq!(node.pod_logs_dir(), base.join("log/pods"));
        assert_eq!(node.container_logs_dir(), base.join("log/containers"));
        for d in [
            node.kubelet_root().join("pods"),
            node.pod_logs_dir(),
            node.container_logs_dir(),
        ] {
            assert!(d.is_dir(), "{d:?}");
        }
        let other = LabNode::temp().unwrap();
        assert_ne!(other.base(), node.base());
        drop(node);
        assert!(!base.exists());
    }

    #[test]
    fn create_keeps_base() {
        let holder = LabNode::temp().unwrap();
        let base = holder.base().join("a/b/node");
        let node = LabNode::create(&base).unwrap();
        assert_eq!(node.kubelet_root(), base.join("kubelet"));
        assert!(node.container_logs_dir().is_dir());
        // An existing base is fine too.
        let again = LabNode::create(&base).unwrap();
        drop((node, again));
        assert!(base.join("kubelet/pods").is_dir());
    }

    #[test]
    fn pods_and_disk_volumes() {
        let mut node = LabNode::temp().unwrap();
        let pod = node.add_pod("prod", "web-0").unwrap();
        let pod2 = node.add_pod("prod", "web-1").unwrap();
        assert!(is_uuid_v4(&pod.uid), "{}", pod.uid);
        assert_ne!(pod.uid, pod2.uid);
        assert_eq!(
            (pod.namespace.as_str(), pod.name.as_str()),
            ("prod", "web-0")
        );
        let pod_dir = node.kubelet_root().join("pods").join(&pod.uid);
        assert_eq!(node.pod_dir(&pod), pod_dir);
        assert!(pod_dir.join("volumes").is_dir());
        assert_eq!(
            fs::metadata(&pod_dir).unwrap().permissions().mode() & 0o777,
            0o750
        );
        let log_dir = node.pod_logs_dir().join(format!("prod_web-0_{}", pod.uid));
        assert_eq!(node.pod_log_dir(&pod), log_dir);
        assert!(log_dir.is_dir());

        for (ty, plugin) in [
            (VolumeType::ConfigMap, "kubernetes.io~configmap"),
            (VolumeType::DownwardApi, "kubernetes.io~downward-api"),
        ] {
            let w = node.add_volume(&pod, ty, "vol").unwrap();
            let expected = pod_dir.join("volumes").join(plugin).join("vol");
            assert_eq!(w.dir(), expected);
            assert_eq!(node.volume_dir(&pod, ty, "vol"), expected);
            assert_eq!(fs::read_dir(w.dir()).unwrap().count(), 0);
            assert_eq!(
                fs::metadata(w.dir()).unwrap().permissions().mode() & 0o777,
                0o777
            );
            // Disk-backed: the same file system as the pod dir.
            assert_eq!(
                fs::metadata(w.dir()).unwrap().dev(),
                fs::metadata(&pod_dir).unwrap().dev()
            );
            assert!(node.add_volume(&pod, ty, "vol").is_err(), "added twice");
        }
        for bad in ["", ".", "..", "a/b"] {
            assert!(node.add_volume(&pod, VolumeType::ConfigMap, bad).is_err());
        }
        assert!(node.add_pod("a_b", "x").is_err());
        assert!(node.add_pod("ns", "").is_err());
        let stranger = LabPod {
            uid: "00000000-0000-4000-8000-000000000000".into(),
            namespace: "x".into(),
            name: "y".into(),
        };
        assert!(
            node.add_volume(&stranger, VolumeType::ConfigMap, "v")
                .is_err()
        );

        node.remove_pod(&pod).unwrap();
        assert!(!pod_dir.exists());
        assert!(!log_dir.exists());
        assert!(node.pod_dir(&pod2).is_dir());
        // Removing it again finds nothing to do.
        node.remove_pod(&pod).unwrap();
    }

    #[test]
    fn mount_points_include_the_root() {
        assert!(mount_points().unwrap().contains(&PathBuf::from("/")));
    }

    #[test]
    #[ignore = "needs root: run cargo xtask test"]
    fn tmpfs_volumes_mount_and_unmount() {
        let mut node = LabNode::temp().unwrap();
        let base = node.base().to_path_buf();
        let pod = node.add_pod("default", "api").unwrap();
        let mut dirs = Vec::new();
        for ty in [VolumeType::Secret, VolumeType::Projected] {
            let w = node.add_volume(&pod, ty, "creds").unwrap();
            assert!(mounted(w.dir()), "{:?}", w.dir());
            assert_eq!(statfs(w.dir()).unwrap().filesystem_type(), TMPFS_MAGIC);
            assert_eq!(
                fs::metadata(w.dir()).unwrap().permissions().mode() & 0o7777,
                0o1777
            );
            let p = payload(&[("token", "t1"), ("ca.crt", "ca")]);
            assert!(matches!(
                w.write(&p, CallStyle::GoAt).unwrap(),
                WriteOutcome::Written { initial: true, .. }
            ));
            let p = payload(&[("token", "t2"), ("ca.crt", "ca")]);
            assert!(matches!(
                w.write(&p, CallStyle::Legacy).unwrap(),
                WriteOutcome::Written { initial: false, .. }
            ));
            assert_eq!(fs::read(w.dir().join("token")).unwrap(), b"t2");
            dirs.push(w.dir().to_path_buf());
        }
        // A second pod keeps its volume until the node goes.
        let pod2 = node.add_pod("default", "api-2").unwrap();
        let w2 = node.add_volume(&pod2, VolumeType::Secret, "s").unwrap();

        node.remove_pod(&pod).unwrap();
        for d in &dirs {
            assert!(!mounted(d), "{d:?}");
        }
        assert!(!node.pod_dir(&pod).exists());
        assert!(mounted(w2.dir()));

        drop(node);
        assert!(!mounted(w2.dir()));
        assert!(!base.exists());
        let left: BTreeSet<PathBuf> = mount_points()
            .unwrap()
            .into_iter()
            .filter(|p| p.starts_with(&base))
            .collect();
        assert!(left.is_empty(), "{left:?}");
    }

    #[test]
    #[ignore = "needs root: run cargo xtask test"]
    fn busy_tmpfs_is_detached() {
        let mut node = LabNode::temp().unwrap();
        let pod = node.add_pod("default", "busy").unwrap();
        let w = node.add_volume(&pod, VolumeType::Secret, "s").unwrap();
        w.write(&payload(&[("k", "v")]), CallStyle::GoAt).unwrap();
        // An open file keeps the tmpfs busy, as a running container would.
        let held = fs::File::open(w.dir().join("k")).unwrap();
        node.remove_pod(&pod).unwrap();
        assert!(!mounted(w.dir()));
        assert!(!node.pod_dir(&pod).exists());
        drop(held);

        // The same on drop.
        let pod = node.add_pod("default", "b2").unwrap();
        let w = node.add_volume(&pod, VolumeType::Projected, "p").unwrap();
        w.write(&payload(&[("k", "v")]), CallStyle::GoAt).unwrap();
        let held = fs::File::open(w.dir().join("k")).unwrap();
        let base = node.base().to_path_buf();
        drop(node);
        assert!(!mounted(w.dir()));
        assert!(!base.exists());
        drop(held);
    }

    #[test]
    #[ignore = "needs root: run cargo xtask test"]
    fn teardown_never_deletes_through_a_bind_mount() {
        let outside = LabNode::temp().unwrap();
        let keep = outside.base().join("keep");
        fs::create_dir(&keep).unwrap();
        fs::write(keep.join("precious"), "data").unwrap();

        let mut node = LabNode::temp().unwrap();
        let pod = node.add_pod("default", "sub").unwrap();
        // Where the kubelet bind-mounts a subPath.
        let sub = node.pod_dir(&pod).join("volume-subpaths/cfg/app/0");
        fs::create_dir_all(&sub).unwrap();
        nix::mount::mount(
            Some(&keep),
            &sub,
            None::<&str>,
            MsFlags::MS_BIND,
            None::<&str>,
        )
        .unwrap();
        node.remove_pod(&pod).unwrap();
        assert!(!mounted(&sub));
        assert_eq!(fs::read(keep.join("precious")).unwrap(), b"data");

        // A bind mount left under the node's base on drop.
        let pod = node.add_pod("default", "sub2").unwrap();
        let sub = node.pod_dir(&pod).join("volume-subpaths/cfg/app/0");
        fs::create_dir_all(&sub).unwrap();
        nix::mount::mount(
            Some(&keep),
            &sub,
            None::<&str>,
            MsFlags::MS_BIND,
            None::<&str>,
        )
        .unwrap();
        drop(node);
        assert!(!mounted(&sub));
        assert_eq!(fs::read(keep.join("precious")).unwrap(), b"data");
    }
}
