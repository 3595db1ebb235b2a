//! Consumers: which containers mount each volume, found from `/proc` alone.
//!
//! A process belongs to a pod's container by its cgroup (`/proc/<pid>/cgroup`); a
//! container consumes a volume when one of its mounts (`/proc/<pid>/mountinfo`) binds
//! the volume's directory (same device, same path inside that filesystem: the whole
//! volume) or a file below it (a subPath mount, pinned to the data of its start).
//! Container names come from the container-logs dir.

pub mod follow;

use std::{
    collections::{HashMap, HashSet},
    path::{Path, PathBuf},
    time::{Duration, SystemTime},
};

use tracing::debug;

use crate::{
    clock,
    node::{
        cgroup::parse_proc_cgroup,
        fdinfo::{self, Ino, Watch},
        mountinfo::{self, Mount},
        pod_logs::parse_container_log_name,
        stat::{MainProcess, main_process},
        volumes::{VolumeKey, is_timestamped_dir},
    },
    reloads::{Found, MountKind},
};

/// Where a volume dir is stored, as other mount namespaces' mountinfo shows it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Identity {
    pub major: u32,
    pub minor: u32,
    pub path_in_fs: PathBuf,
}

/// How `mount` relates to the volume stored at `id`.
pub fn classify(mount: &Mount, id: &Identity) -> Option<MountKind> {
    if (mount.major, mount.minor) != (id.major, id.minor) {
        return None;
    }
    if mount.root == id.path_in_fs {
        Some(MountKind::Volume)
    } else if mount.root.starts_with(&id.path_in_fs) {
        Some(MountKind::SubPath)
    } else {
        None
    }
}

/// The result of one pass over `/proc`.
#[derive(Debug, Default)]
pub struct Scan {
    pub consumers: HashMap<VolumeKey, Vec<Found>>,
    /// The inotify watches of each consuming container's processes, by container id.
    pub watches: HashMap<String, Vec<Watch>>,
    pub containers: usize,
    /// The ids of the containers whose processes it saw, consumers or not.
    pub ids: HashSet<String>,
    /// Processes that vanished or could not be read while scanned (never an error).
    pub unreadable: usize,
    /// The files (`st_dev`, `st_ino`) that the subPath mounts of each volume bind, as
    /// the subPath consumers' mount paths show them: the data of the container's
    /// start, kept alive by the bind after an update replaced it.
    pub pinned: HashMap<VolumeKey, Vec<Ino>>,
    /// Each container's main process, by container id ([`main_process`]).
    pub main: HashMap<String, MainProcess>,
}

fn read(p: &Path) -> Option<String> {
    std::fs::read_to_string(p).ok()
}

/// The inotify watches of a container's processes, and, listed from the same fds, the
/// files they hold open in some data dir (a timestamped dir in the path), with the time
/// they were listed: a reload no fanotify mark saw still shows there.
fn fds<'a>(
    proc_root: &Path,
    pids: impl Iterator<Item = &'a u32>,
) -> (Vec<Watch>, (SystemTime, Vec<PathBuf>)) {
    let (mut watches, mut files) = (Vec::new(), Vec::new());
    for &pid in pids {
        let in_data_dir = |t: PathBuf| {
            if t.iter().any(is_timestamped_dir) {
                files.push(t);
            }
        };
        watches.extend(fdinfo::of_process(proc_root, pid, in_data_dir).unwrap_or_default());
    }
    (watches, (SystemTime::now(), files))
}

/// The data dir a file open at `path` (as its process names it) lies in, when it is
/// one of the volume mounted at `mount_point` there.
fn data_dir_of(path: &Path, mount_point: &Path) -> Option<String> {
    match path.strip_prefix(mount_point).ok()?.components().next()? {
        std::path::Component::Normal(n) if is_timestamped_dir(n) => n.to_str().map(str::to_owned),
        _ => None,
    }
}

/// The file a subPath mount `m` binds, by an `lstat` of its mount point as the
/// container sees it (`/proc/<pid>/root/...`: the mounted file, never opened). Only a
/// regular file on the mount's own device: anything else (a directory subPath, a
/// mount point the container has since covered) pins no watched file.
fn bound_file(mount_path: &Path, m: &Mount) -> Option<Ino> {
    use std::os::unix::fs::MetadataExt;
    let meta = std::fs::symlink_metadata(mount_path).ok()?;
    let dev = libc::makedev(m.major, m.minor);
    (meta.is_file() && meta.dev() == dev).then(|| (meta.dev(), meta.ino()))
}

/// Start of a process from `/proc/<pid>/stat`: clock ticks since boot, and as wall time.
fn started(stat: &str) -> Option<(u64, SystemTime)> {
    // The command name may hold spaces and parentheses: count fields after the last ')'.
    let rest = &stat[stat.rfind(')')? + 1..];
    let ticks: u64 = rest.split_whitespace().nth(19)?.parse().ok()?;
    // SAFETY: sysconf has no preconditions.
    let hz = unsafe { libc::sysconf(libc::_SC_CLK_TCK) }.max(1) as u64;
    Some((
        ticks,
        clock::boot_to_wall(ticks.saturating_mul(1_000_000_000 / hz)),
    ))
}

/// Container ids to names, from `<pod>_<namespace>_<container>-<id>.log` entries.
pub fn container_names(dir: &Path) -> HashMap<String, String> {
    let Ok(rd) = std::fs::read_dir(dir) else {
        return HashMap::new();
    };
    rd.filter_map(|e| e.ok())
        .filter_map(|e| parse_container_log_name(e.file_name().to_str()?))
        .map(|n| (n.container_id, n.container))
        .collect()
}

/// Where each volume dir is stored, from the agent's own mount table.
pub fn identities(volumes: &[(VolumeKey, PathBuf)]) -> HashMap<VolumeKey, Identity> {
    // Bytes, not text: one non-UTF-8 mount point must not hide every other mount.
    let (mounts, _) =
        mountinfo::parse_bytes(&std::fs::read("/proc/self/mountinfo").unwrap_or_default());
    volumes
        .iter()
        .filter_map(|(k, dir)| {
            let (major, minor, path_in_fs) = mountinfo::locate(&mounts, dir)?;
            Some((
                k.clone(),
                Identity {
                    major,
                    minor,
                    path_in_fs,
                },
            ))
        })
        .collect()
}

/// One pass over `<proc_root>`: every pod container's mounts, matched against the
/// volumes of its own pod. Processes may vanish meanwhile: they are skipped.
pub fn scan(proc_root: &Path, container_logs: &Path, volumes: &[(VolumeKey, PathBuf)]) -> Scan {
    let names = container_names(container_logs);
    let mut scan = Scan::default();
    // Per container: its pod, one pid to read mounts from, its oldest process's start,
    // and all its processes.
    let mut containers: HashMap<String, (String, u32, (u64, SystemTime))> = HashMap::new();
    let mut pids: HashMap<String, Vec<u32>> = HashMap::new();
    let mut procs: HashMap<String, Vec<(u32, u32, u64)>> = HashMap::new();
    let Ok(rd) = std::fs::read_dir(proc_root) else {
        return scan;
    };
    for e in rd.flatten() {
        let Some(pid) = e.file_name().to_str().and_then(|s| s.parse::<u32>().ok()) else {
            continue;
        };
        let dir = e.path();
        let Some(c) = read(&dir.join("cgroup"))
            .as_deref()
            .and_then(parse_proc_cgroup)
        else {
            continue;
        };
        let stat = read(&dir.join("stat"));
        let Some(start) = stat.as_deref().and_then(started) else {
            scan.unreadable += 1;
            continue;
        };
        if let Some(st) = stat.as_deref().and_then(crate::node::stat::parse) {
            let p = (pid, st.ppid, st.start_ticks);
            procs.entry(c.container_id.clone()).or_default().push(p);
        }
        pids.entry(c.container_id.clone()).or_default().push(pid);
        let entry = containers
            .entry(c.container_id)
            .or_insert((c.pod_uid, pid, start));
        if start.0 < entry.2.0 {
            *entry = (entry.0.clone(), pid, start);
        }
    }
    scan.containers = containers.len();
    scan.main = (procs.iter())
        .filter_map(|(id, p)| Some((id.clone(), main_process(p)?)))
        .collect();
    scan.ids = containers.keys().cloned().collect();
    // Only the volumes of pods with a container running: locating a volume costs a
    // walk of the mount table, and a node has far more volumes than running pods
    // with processes to match (measured: 10,000 volumes, 2 s per scan, all of them).
    let pods: std::collections::HashSet<&str> =
        containers.values().map(|(uid, ..)| uid.as_str()).collect();
    let wanted: Vec<_> = (volumes.iter())
        .filter(|(k, _)| pods.contains(k.pod_uid.as_str()))
        .cloned()
        .collect();
    let ids = identities(&wanted);
    // Per consuming container: when its fds were listed, and those in a data dir.
    let mut data_files: HashMap<String, (SystemTime, Vec<PathBuf>)> = HashMap::new();
    for (id, (pod_uid, pid, start)) in containers {
        let Ok(text) = std::fs::read(proc_root.join(pid.to_string()).join("mountinfo")) else {
            scan.unreadable += 1;
            continue;
        };
        let (mounts, skipped) = mountinfo::parse_bytes(&text);
        if skipped > 0 {
            debug!(pid, skipped, "unparseable mountinfo lines");
        }
        for (key, ident) in ids.iter().filter(|(k, _)| k.pod_uid == pod_uid) {
            // Every subPath mount of the volume pins its file, whatever else the
            // container mounts.
            for m in mounts
                .iter()
                .filter(|m| classify(m, ident) == Some(MountKind::SubPath))
            {
                let inside = m.mount_point.strip_prefix("/").unwrap_or(&m.mount_point);
                let at = proc_root.join(pid.to_string()).join("root").join(inside);
                if let Some(ino) = bound_file(&at, m) {
                    scan.pinned.entry(key.clone()).or_default().push(ino);
                }
            }
            // The strongest relation wins: a container may bind the volume and a subPath of it.
            let kind = mounts
                .iter()
                .filter_map(|m| Some((classify(m, ident)?, m)))
                .min_by_key(|(k, _)| *k != MountKind::Volume);
            if let Some((mount, m)) = kind {
                if !scan.watches.contains_key(&id) {
                    let (w, files) = fds(proc_root, pids.get(&id).into_iter().flatten());
                    scan.watches.insert(id.clone(), w);
                    data_files.insert(id.clone(), files);
                }
                let (listed_at, files) = &data_files[&id];
                let inside = m.mount_point.strip_prefix("/").unwrap_or(&m.mount_point);
                let mount_path = Some(proc_root.join(pid.to_string()).join("root").join(inside));
                let name = names
                    .get(&id)
                    .cloned()
                    .unwrap_or_else(|| id.chars().take(12).collect());
                let holds = (files.iter())
                    .filter_map(|f| data_dir_of(f, &m.mount_point))
                    .collect();
                scan.consumers.entry(key.clone()).or_default().push(Found {
                    id: id.clone(),
                    name,
                    mount,
                    started: start.1,
                    start_ticks: start.0,
                    mount_path,
                    holds,
                    listed_at: *listed_at,
                    // From the watch linter's inventory.
                    watches: false,
                });
            }
        }
    }
    scan
}

/// How often consumers are looked for again, besides after each update.
pub const RESCAN: Duration = Duration::from_secs(10);
/// The same, as a safety net, while container cgroups are followed ([`follow`]).
pub const RESCAN_FOLLOWED: Duration = Duration::from_secs(60);

#[cfg(test)]
mod tests {
    use super::*;

    fn mount(major: u32, root: &str) -> Mount {
        Mount {
            mount_id: 1,
            parent_id: 0,
            major,
            minor: 0,
            root: root.into(),
            deleted: false,
            mount_point: "/etc/config".into(),
            fs_type: "ext4".into(),
            source: "/dev/vda".into(),
        }
    }

    #[test]
    fn whole_volume_subpath_and_unrelated_mounts() {
        let id = Identity {
            major: 8,
            minor: 0,
            path_in_fs: "/var/lib/kubelet/pods/u/volumes/kubernetes.io~configmap/c".into(),
        };
        assert_eq!(
            classify(
                &mount(
                    8,
                    "/var/lib/kubelet/pods/u/volumes/kubernetes.io~configmap/c"
                ),
                &id
            ),
            Some(MountKind::Volume)
        );
        let sub =
            "/var/lib/kubelet/pods/u/volumes/kubernetes.io~configmap/c/..2026_01_01_00_00_00.1/k";
        assert_eq!(classify(&mount(8, sub), &id), Some(MountKind::SubPath));
        assert_eq!(classify(&mount(9, sub), &id), None, "another device");
        assert_eq!(
            classify(
                &mount(
                    8,
                    "/var/lib/kubelet/pods/u/volumes/kubernetes.io~configmap/cc"
                ),
                &id
            ),
            None
        );
        let tmpfs = Identity {
            major: 0,
            minor: 0,
            path_in_fs: "/".into(),
        };
        assert_eq!(classify(&mount(0, "/"), &tmpfs), Some(MountKind::Volume));
        assert_eq!(
            classify(&mount(0, "/..2026_01_01_00_00_00.1/tls.crt"), &tmpfs),
            Some(MountKind::SubPath)
        );
    }

    #[test]
    fn a_subpath_mount_pins_the_regular_file_on_its_device_only() {
        use std::os::unix::fs::MetadataExt;
        let t = tempfile::tempdir().unwrap();
        let file = t.path().join("key");
        std::fs::write(&file, "v").unwrap();
        let meta = std::fs::metadata(&file).unwrap();
        let on = |dev: u64| Mount {
            major: libc::major(dev),
            minor: libc::minor(dev),
            ..mount(0, "/v/..2026_01_01_00_00_00.1/key")
        };
        let m = on(meta.dev());
        assert_eq!(bound_file(&file, &m), Some((meta.dev(), meta.ino())));
        assert_eq!(bound_file(t.path(), &m), None, "a directory subPath");
        assert_eq!(bound_file(&t.path().join("gone"), &m), None);
        let elsewhere = on(libc::makedev(libc::major(meta.dev()) + 1, 0));
        assert_eq!(bound_file(&file, &elsewhere), None, "another device");
    }

    #[test]
    fn process_start_from_stat_with_odd_names() {
        let stat = "42 (a) b (c) S 1 42 42 0 -1 4194560 100 0 0 0 0 0 0 0 20 0 1 0 12345 1000 10 18446744073709551615";
        assert_eq!(started(stat).map(|s| s.0), Some(12345));
        assert!(started("42 (x) S 1").is_none());
        assert!(started("garbage").is_none());
    }

    #[test]
    fn a_held_file_names_its_data_dir_under_the_mount_only() {
        let mp = Path::new("/etc/config");
        let ts = "..2026_01_01_00_00_00.1";
        let held = |p: &str| data_dir_of(Path::new(p), mp);
        assert_eq!(
            held(&format!("/etc/config/{ts}/app.yaml")).as_deref(),
            Some(ts)
        );
        assert_eq!(
            held(&format!("/etc/config/{ts}/sub/x")).as_deref(),
            Some(ts)
        );
        assert_eq!(
            held(&format!("/etc/configx/{ts}/app.yaml")),
            None,
            "another mount"
        );
        assert_eq!(held(&format!("/other/{ts}/app.yaml")), None);
        assert_eq!(held("/etc/config/..data/app.yaml"), None, "not a data dir");
        assert_eq!(held("/etc/config/app.yaml"), None);
    }
}
