//! Turns the probe's raw swap records into detections: absolute paths (relative ones
//! resolved through the caller's fd or cwd in `--proc-root`), the volume they name, and
//! the timestamped dir the new `..data` points to.

use std::{
    collections::HashMap,
    ffi::OsStr,
    os::unix::ffi::OsStrExt,
    path::{Path, PathBuf},
};

use agent_common::swap::{AT_FDCWD, DecodedSwap};

use crate::{
    clock,
    updates::{Detection, Source},
    volumes::{self, DATA, DATA_TMP, Place, Roots},
};

/// Symlink targets waiting for their rename, by volume dir. Bounded: an entry whose
/// rename never comes (a writer that died) is dropped oldest first.
const PENDING_MAX: usize = 4096;

pub struct Resolver {
    roots: Roots,
    proc_root: PathBuf,
    data_tmp_target: HashMap<PathBuf, String>,
    order: std::collections::VecDeque<PathBuf>,
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
            Some(t) => t,
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
        if self
            .data_tmp_target
            .insert(dir.clone(), t.to_owned())
            .is_none()
        {
            self.order.push_back(dir);
            if self.order.len() > PENDING_MAX
                && let Some(old) = self.order.pop_front()
            {
                self.data_tmp_target.remove(&old);
            }
        }
    }
}

/// The last component of a symlink's target, as the timestamped dir name.
pub fn read_target(link: &Path) -> Option<String> {
    let t = std::fs::read_link(link).ok()?;
    let name = t.file_name()?;
    std::str::from_utf8(name.as_bytes()).ok().map(str::to_owned)
}

#[cfg(test)]
mod tests {
    use std::{ffi::OsString, os::unix::ffi::OsStringExt};

    use agent_common::swap::Syscall;

    use super::*;
    use crate::volumes::VolumeType;

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
