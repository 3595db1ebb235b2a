//! Turns the probe's raw swap records into detections: absolute paths (relative ones
//! resolved through the caller's fd or cwd in `--proc-root`), the volume they name, and
//! the timestamped dir the new `..data` points to.

use std::{
    collections::HashMap,
    ffi::OsStr,
    path::{Path, PathBuf},
};

use agent_common::swap::{AT_FDCWD, DecodedSwap};

use crate::{
    clock,
    node::{
        read_target, volumes,
        volumes::{DATA, DATA_TMP, Place, Roots},
    },
    updates::{Detection, Source},
};

/// Symlink targets waiting for their rename, by volume dir. Bounded: an entry whose
/// rename never comes (a writer that died) is dropped oldest first.
const PENDING_MAX: usize = 4096;

pub struct Resolver {
    roots: Roots,
    proc_root: PathBuf,
    /// The target, and the number of its staging (to tell it from an older one).
    data_tmp_target: HashMap<PathBuf, (String, u64)>,
    /// Stagings, oldest first, by number. Those renamed (or staged again) since are
    /// dropped as they reach the front, so that a dir's old staging never evicts a
    /// newer one, and the renamed ones are not kept.
    order: std::collections::VecDeque<(PathBuf, u64)>,
    stagings: u64,
}

/// Why a record gave no detection (logged at debug level, counted by the caller).
#[derive(Debug, PartialEq, Eq)]
pub enum Skip {
    /// Not under a configured kubelet root, or not a volume's `..data`.
    NotAVolume,
    /// A relative path whose base could not be read from /proc (process gone).
    Unresolvable,
    /// The destination was `..data_tmp`: remembered, no detection yet.
    Staged,
    /// The path under a root could not be named (non-UTF-8, `..`).
    BadPath(String),
}

impl Resolver {
    pub fn new(roots: Roots, proc_root: PathBuf) -> Self {
        Resolver {
            roots,
            proc_root,
            data_tmp_target: HashMap::new(),
            order: Default::default(),
            stagings: 0,
        }
    }

    fn absolute(&self, tgid: u32, dfd: i32, path: &OsStr) -> Option<PathBuf> {
        let p = Path::new(path);
        if p.is_absolute() {
            return Some(p.to_owned());
        }
        let pid = self.proc_root.join(tgid.to_string());
        let base = if dfd == AT_FDCWD {
            pid.join("cwd")
        } else {
            pid.join("fd").join(dfd.to_string())
        };
        std::fs::read_link(base).ok().map(|b| b.join(p))
    }

    pub fn resolve(&mut self, ev: &DecodedSwap) -> Result<Detection, Skip> {
        let new = self
            .absolute(ev.tgid, ev.new_dfd, &ev.new_path)
            .ok_or(Skip::Unresolvable)?;
        let new = volumes::normalize(&new);
        let key = match self.roots.classify(&new) {
            Some(Ok(Place::Volume { key, rest: Some(_) })) => key,
            Some(Err(e)) => return Err(Skip::BadPath(e.to_string())),
            _ => return Err(Skip::NotAVolume),
        };
        let dir = new.parent().ok_or(Skip::NotAVolume)?.to_owned();
        let name = new.file_name().unwrap_or_default();
        if name == DATA_TMP {
            if !ev.syscall.is_rename() {
                self.stage(dir, &ev.old_path);
            }
            return Err(Skip::Staged);
        }
        if name != DATA || !ev.syscall.is_rename() {
            return Err(Skip::NotAVolume);
        }
        let ts_dir = match self.data_tmp_target.remove(&dir) {
            Some((t, _)) => t,
            // The symlink was made before the probe started, or by a call it does not see.
            None => read_target(&dir.join(DATA)).ok_or(Skip::Unresolvable)?,
        };
        Ok(Detection {
            source: Source::Ebpf,
            key,
            ts_dir,
            at: clock::boot_to_wall(ev.ts_boot_ns),
        })
    }

    fn stage(&mut self, dir: PathBuf, target: &OsStr) {
        // The kubelet's target is a bare `..<timestamp>` name; keep its last component.
        let t = Path::new(target).file_name().unwrap_or(target);
        let Some(t) = t.to_str() else { return };
        self.stagings += 1;
        let n = self.stagings;
        self.data_tmp_target.insert(dir.clone(), (t.to_owned(), n));
        self.order.push_back((dir, n));
        let live = |m: &HashMap<PathBuf, (String, u64)>, (d, n): &(PathBuf, u64)| {
            m.get(d).is_some_and(|(_, m)| m == n)
        };
        while let Some(front) = self.order.front()
            && !live(&self.data_tmp_target, front)
        {
            self.order.pop_front();
        }
        if self.order.len() > PENDING_MAX
            && let Some((old, _)) = self.order.pop_front()
        {
            self.data_tmp_target.remove(&old);
        }
    }
}

#[cfg(test)]
mod tests {
    use std::{ffi::OsString, os::unix::ffi::OsStringExt};

    use agent_common::swap::Syscall;

    use super::*;
    use crate::node::volumes::VolumeType;

    const VOL: &str = "/kl/pods/u1/volumes/kubernetes.io~configmap/cfg";

    fn resolver() -> Resolver {
        Resolver::new(Roots::new([PathBuf::from("/kl")]), PathBuf::from("/proc"))
    }

    fn ev(syscall: Syscall, old: &str, new: &str) -> DecodedSwap {
        DecodedSwap {
            ts_boot_ns: 1,
            cgroup_id: 0,
            tgid: std::process::id(),
            pid: std::process::id(),
            syscall,
            old_dfd: AT_FDCWD,
            new_dfd: AT_FDCWD,
            flags: 0,
            comm: OsString::from("kubelet"),
            old_path: OsString::from(old),
            new_path: OsString::from(new),
        }
    }

    fn staged(r: &mut Resolver, dir: &str, target: &str) {
        let s = ev(Syscall::Symlinkat, target, &format!("{dir}/..data_tmp"));
        assert_eq!(r.resolve(&s), Err(Skip::Staged));
    }

    fn swapped(r: &mut Resolver, dir: &str) -> String {
        let tmp = format!("{dir}/..data_tmp");
        let d = r.resolve(&ev(Syscall::Renameat, &tmp, &format!("{dir}/..data")));
        d.unwrap().ts_dir
    }

    #[test]
    fn renamed_stagings_are_not_kept_and_never_evict_a_newer_one() {
        let mut r = resolver();
        // One volume updated over and over: its old stagings went with their renames.
        for i in 0..PENDING_MAX + 10 {
            staged(&mut r, VOL, &format!("..{i}"));
            assert_eq!(swapped(&mut r, VOL), format!("..{i}"));
        }
        assert!(r.order.len() <= 1, "{} kept", r.order.len());
        // A writer that died: its staging stays while PENDING_MAX are waiting, and
        // the others are all resolved from their own staging.
        let dead = "/kl/pods/u0/volumes/kubernetes.io~secret/s";
        staged(&mut r, dead, "..dead");
        for i in 1..PENDING_MAX {
            let dir = format!("/kl/pods/u{i}/volumes/kubernetes.io~configmap/c");
            staged(&mut r, &dir, &format!("..{i}"));
        }
        assert!(r.data_tmp_target.contains_key(Path::new(dead)));
        staged(&mut r, VOL, "..last");
        assert!(
            !r.data_tmp_target.contains_key(Path::new(dead)),
            "the oldest went"
        );
        assert_eq!(r.data_tmp_target.len(), PENDING_MAX);
        assert_eq!(swapped(&mut r, VOL), "..last");
    }

    #[test]
    fn symlink_then_rename_gives_the_staged_target() {
        let mut r = resolver();
        let s = ev(
            Syscall::Symlinkat,
            "..2026_11_25_14_10_06.1",
            &format!("{VOL}/..data_tmp"),
        );
        assert_eq!(r.resolve(&s), Err(Skip::Staged));
        let d = r
            .resolve(&ev(
                Syscall::Renameat,
                &format!("{VOL}/..data_tmp"),
                &format!("{VOL}/..data"),
            ))
            .unwrap();
        assert_eq!(d.ts_dir, "..2026_11_25_14_10_06.1");
        assert_eq!(d.key.volume_type, VolumeType::ConfigMap);
        assert_eq!((d.key.pod_uid.as_str(), d.key.name.as_str()), ("u1", "cfg"));
        assert!(r.data_tmp_target.is_empty());
    }

    #[test]
    fn paths_outside_roots_or_not_volumes_are_skipped() {
        let mut r = resolver();
        assert_eq!(
            r.resolve(&ev(Syscall::Rename, "/tmp/..data_tmp", "/tmp/..data")),
            Err(Skip::NotAVolume)
        );
        assert_eq!(
            r.resolve(&ev(Syscall::Rename, "a", "/kl/pods/u1/..data")),
            Err(Skip::NotAVolume)
        );
        // A symlink named ..data is not a swap.
        assert_eq!(
            r.resolve(&ev(Syscall::Symlink, "..1", &format!("{VOL}/..data"))),
            Err(Skip::NotAVolume)
        );
        // `..` cannot lead out of a root and back into a volume's name.
        assert_eq!(
            r.resolve(&ev(Syscall::Rename, "x", "/kl/pods/../etc/..data")),
            Err(Skip::NotAVolume)
        );
        let mut raw = b"/kl/pods/u1/volumes/kubernetes.io~secret/".to_vec();
        raw.extend_from_slice(b"\xff/..data");
        let mut bad = ev(Syscall::Rename, "x", "");
        bad.new_path = OsString::from_vec(raw);
        assert!(matches!(r.resolve(&bad), Err(Skip::BadPath(_))));
    }

    #[test]
    fn relative_paths_resolve_through_the_callers_cwd() {
        let dir = tempfile::tempdir().unwrap();
        let vol = dir.path().join("pods/u1/volumes/kubernetes.io~secret/s");
        std::fs::create_dir_all(&vol).unwrap();
        std::os::unix::fs::symlink("..2026_01_01_00_00_00.7", vol.join("..data")).unwrap();
        let mut r = Resolver::new(Roots::new([dir.path().to_owned()]), PathBuf::from("/proc"));
        let cwd = std::env::current_dir().unwrap();
        let rel = pathdiff(&vol.join("..data"), &cwd);
        let d = r
            .resolve(&ev(Syscall::Rename, "x", rel.to_str().unwrap()))
            .unwrap();
        // No staged symlink: the target is read from ..data itself.
        assert_eq!(d.ts_dir, "..2026_01_01_00_00_00.7");
        // A process that does not exist cannot resolve its relative paths.
        let mut gone = ev(Syscall::Rename, "x", "..data");
        gone.tgid = u32::MAX;
        assert_eq!(r.resolve(&gone), Err(Skip::Unresolvable));
    }

    #[test]
    fn relative_paths_resolve_through_the_callers_dir_fd() {
        let dir = tempfile::tempdir().unwrap();
        let plugin = dir.path().join("pods/u1/volumes/kubernetes.io~projected");
        std::fs::create_dir_all(plugin.join("p")).unwrap();
        let fd = std::fs::File::open(&plugin).unwrap();
        let mut r = Resolver::new(Roots::new([dir.path().to_owned()]), PathBuf::from("/proc"));
        let mut s = ev(
            Syscall::Symlinkat,
            "..2026_01_01_00_00_00.9",
            "p/..data_tmp",
        );
        s.new_dfd = std::os::fd::AsRawFd::as_raw_fd(&fd);
        assert_eq!(r.resolve(&s), Err(Skip::Staged));
        let mut e = ev(Syscall::Renameat, "p/..data_tmp", "p/..data");
        e.new_dfd = s.new_dfd;
        let d = r.resolve(&e).unwrap();
        assert_eq!(
            (d.key.volume_type, d.key.name.as_str()),
            (VolumeType::Projected, "p")
        );
        assert_eq!(d.ts_dir, "..2026_01_01_00_00_00.9");
    }

    /// `target` relative to `base` by climbing to the root (both absolute).
    fn pathdiff(target: &Path, base: &Path) -> PathBuf {
        let mut p = PathBuf::new();
        for _ in base.components().skip(1) {
            p.push("..");
        }
        p.join(target.strip_prefix("/").unwrap())
    }
}
