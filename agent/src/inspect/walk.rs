//! The file system side of `inspect`: every volume under the kubelet roots with its
//! current data dir and the time of its last swap, pod names from the pod-logs dir, and
//! the fds of processes. Only directory listings, `lstat` and `readlink`: the files of
//! a volume are never opened.

use std::{
    collections::HashMap,
    fs, io,
    os::unix::fs::MetadataExt,
    path::{Path, PathBuf},
    time::SystemTime,
};

use crate::node::{
    cgroup::parse_proc_cgroup,
    pod_logs::{PodName, parse_pod_log_dir},
    volumes::{DATA, Roots, VolumeKey, VolumeType},
};

/// A volume's current data: the `..data` target and the time of the swap that made it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Data {
    pub dir: String,
    /// The `..data` symlink's mtime: the kubelet creates `..data_tmp` right before
    /// renaming it over `..data`, and the rename keeps it.
    pub swapped: SystemTime,
}

/// A volume dir found under a root.
#[derive(Clone, Debug)]
pub struct Volume {
    pub key: VolumeKey,
    pub dir: PathBuf,
    pub data: Option<Data>,
}

/// What the walk could not read; `vanished` entries went away while walked.
fn note(notes: &mut Vec<String>, what: &Path, e: &io::Error) {
    if e.kind() == io::ErrorKind::NotFound {
        notes.push(format!("{what:?} vanished while scanned: skipped"));
    } else {
        notes.push(format!("cannot read {what:?}: {e}: skipped"));
    }
}

/// Whether `path` is a directory itself, not a symlink to one: the walk stays inside
/// the roots it was given. A symlink (to `/etc`, say) is noted and skipped.
fn real_dir(path: &Path, notes: &mut Vec<String>) -> bool {
    match fs::symlink_metadata(path) {
        Ok(m) if m.is_dir() => true,
        Ok(m) if m.file_type().is_symlink() => {
            notes.push(format!(
                "{path:?} is a symlink: not followed out of the kubelet root"
            ));
            false
        }
        Ok(_) => {
            notes.push(format!("{path:?} is not a directory: skipped"));
            false
        }
        Err(e) if e.kind() == io::ErrorKind::NotFound => false,
        Err(e) => {
            note(notes, path, &e);
            false
        }
    }
}

/// Entries of `dir` with UTF-8 names (as pod uids and volume names always are), that
/// are directories themselves (never symlinks: see [`real_dir`]); others noted and
/// skipped.
fn entries(dir: &Path, notes: &mut Vec<String>) -> Vec<(String, PathBuf)> {
    let rd = match fs::read_dir(dir) {
        Ok(rd) => rd,
        Err(e) => {
            note(notes, dir, &e);
            return Vec::new();
        }
    };
    let mut out = Vec::new();
    for e in rd {
        match e {
            Ok(e) => match e.file_name().into_string() {
                Ok(name) if real_dir(&e.path(), notes) => out.push((name, e.path())),
                Ok(_) => {}
                Err(raw) => notes.push(format!("{:?}: name is not UTF-8: skipped", dir.join(raw))),
            },
            Err(e) => note(notes, dir, &e),
        }
    }
    out
}

/// Every configmap, secret, projected and downwardAPI volume under `roots`. A root
/// that does not exist or cannot be read is an error (in the second list); the other
/// roots are walked all the same.
pub fn volumes(roots: &Roots, notes: &mut Vec<String>) -> (Vec<Volume>, Vec<String>) {
    let (mut found, mut errors) = (Vec::new(), Vec::new());
    for root in roots.iter() {
        match fs::metadata(root) {
            Ok(m) if m.is_dir() => {}
            Ok(_) => {
                errors.push(format!("kubelet root {root:?} is not a directory"));
                continue;
            }
            Err(e) if e.kind() == io::ErrorKind::NotFound => {
                errors.push(format!("kubelet root {root:?} does not exist"));
                continue;
            }
            Err(e) => {
                errors.push(format!("kubelet root {root:?}: {e}"));
                continue;
            }
        }
        let pods = root.join("pods");
        if !pods.exists() {
            notes.push(format!("{pods:?} does not exist: no pods under {root:?}"));
            continue;
        }
        if !real_dir(&pods, notes) {
            continue;
        }
        for (uid, pod_dir) in entries(&pods, notes) {
            let volumes = pod_dir.join("volumes");
            if !real_dir(&volumes, notes) {
                continue;
            }
            for (plugin, plugin_dir) in entries(&volumes, notes) {
                let Some(volume_type) = VolumeType::from_plugin_dir(plugin.as_ref()) else {
                    continue;
                };
                for (name, dir) in entries(&plugin_dir, notes) {
                    let data = match read_data(&dir) {
                        Ok(d) => d,
                        Err(e) => {
                            note(notes, &dir.join(DATA), &e);
                            None
                        }
                    };
                    let key = VolumeKey {
                        pod_uid: uid.clone(),
                        volume_type,
                        name,
                    };
                    found.push(Volume { key, dir, data });
                }
            }
        }
    }
    (found, errors)
}

/// The `..data` of a volume dir: its target and mtime, from `lstat` and `readlink`.
/// `None` while the volume has none (not populated yet). Read again when a swap
/// replaced the link in between.
pub fn read_data(volume_dir: &Path) -> io::Result<Option<Data>> {
    let link = volume_dir.join(DATA);
    let mut last = None;
    for _ in 0..3 {
        let before = match fs::symlink_metadata(&link) {
            Ok(m) => m,
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(None),
            Err(e) => return Err(e),
        };
        if !before.file_type().is_symlink() {
            return Err(io::Error::other("..data is not a symlink"));
        }
        let target = match fs::read_link(&link) {
            Ok(t) => t,
            Err(e) if e.kind() == io::ErrorKind::NotFound => continue,
            Err(e) => return Err(e),
        };
        let data = Data {
            dir: target.file_name().map_or_else(
                || target.to_string_lossy().into_owned(),
                |n| n.to_string_lossy().into_owned(),
            ),
            swapped: before.modified()?,
        };
        match fs::symlink_metadata(&link) {
            Ok(after) if after.ino() == before.ino() => return Ok(Some(data)),
            _ => last = Some(data),
        }
    }
    Ok(last)
}

/// Pod uids to names, from `<namespace>_<pod>_<uid>` entries of the pod-logs dir.
pub fn pod_names(dir: &Path, notes: &mut Vec<String>) -> HashMap<String, PodName> {
    match fs::read_dir(dir) {
        Ok(rd) => rd
            .flatten()
            .filter_map(|e| parse_pod_log_dir(e.file_name().to_str()?))
            .collect(),
        Err(e) => {
            notes.push(format!(
                "cannot read the pod-logs dir {dir:?}: {e}: pods shown by uid"
            ));
            HashMap::new()
        }
    }
}

/// The pids of every pod container, by container id, from `/proc/<pid>/cgroup`.
pub fn container_pids(proc_root: &Path) -> HashMap<String, Vec<u32>> {
    let mut out: HashMap<String, Vec<u32>> = HashMap::new();
    let Ok(rd) = fs::read_dir(proc_root) else {
        return out;
    };
    for e in rd.flatten() {
        let Some(pid) = e.file_name().to_str().and_then(|s| s.parse::<u32>().ok()) else {
            continue;
        };
        let Some(c) = fs::read_to_string(e.path().join("cgroup"))
            .ok()
            .as_deref()
            .and_then(parse_proc_cgroup)
        else {
            continue;
        };
        out.entry(c.container_id).or_default().push(pid);
    }
    out
}

/// What the fds of `pid` point at (`readlink /proc/<pid>/fd/*`). Err when the fd
/// table cannot be listed (the process exited, or no permission).
pub fn fd_targets(proc_root: &Path, pid: u32) -> io::Result<Vec<PathBuf>> {
    let dir = proc_root.join(pid.to_string()).join("fd");
    // Fds closed between the listing and the readlink are simply gone.
    Ok(fs::read_dir(dir)?
        .flatten()
        .filter_map(|e| fs::read_link(e.path()).ok())
        .collect())
}

/// The mount path inside the container from a consumer's `mount_path`
/// (`<proc_root>/<pid>/root/<mount path>`).
pub fn inside_path(proc_root: &Path, mount_path: &Path) -> Option<PathBuf> {
    let rest = mount_path.strip_prefix(proc_root).ok()?;
    let mut parts = rest.components();
    parts.next()?;
    if parts.next()?.as_os_str() != "root" {
        return None;
    }
    Some(Path::new("/").join(parts.as_path()))
}

#[cfg(test)]
mod tests {
    use std::os::unix::fs::symlink;

    use super::*;

    #[test]
    fn data_from_the_symlink() {
        let tmp = tempfile::tempdir().unwrap();
        assert_eq!(read_data(tmp.path()).unwrap(), None);
        symlink("..2026_01_01_00_00_00.1", tmp.path().join(DATA)).unwrap();
        let d = read_data(tmp.path()).unwrap().unwrap();
        assert_eq!(d.dir, "..2026_01_01_00_00_00.1");
        let m = fs::symlink_metadata(tmp.path().join(DATA)).unwrap();
        assert_eq!(d.swapped, m.modified().unwrap());
        fs::remove_file(tmp.path().join(DATA)).unwrap();
        fs::create_dir(tmp.path().join(DATA)).unwrap();
        assert!(read_data(tmp.path()).is_err());
    }

    #[test]
    fn mount_path_inside_the_container() {
        let p = Path::new("/proc");
        assert_eq!(
            inside_path(p, Path::new("/proc/42/root/etc/config")),
            Some(PathBuf::from("/etc/config"))
        );
        assert_eq!(
            inside_path(Path::new("/host/proc/"), Path::new("/host/proc/7/root/x")),
            Some(PathBuf::from("/x"))
        );
        assert_eq!(inside_path(p, Path::new("/proc/42/cwd/x")), None);
        assert_eq!(inside_path(p, Path::new("/elsewhere/42/root/x")), None);
    }
}
