//! What `inspect` concludes about one consumer of one volume, from plain data: how it
//! mounts the volume, when its oldest process started, when the volume was last
//! swapped, and whether a process of it holds a file of an older data dir open.

use std::{
    ffi::OsStr,
    os::unix::ffi::OsStrExt,
    path::{Component, Path, PathBuf},
    time::SystemTime,
};

use crate::{node::volumes::is_timestamped_dir, reloads::MountKind};

pub const HINT_SUBPATH: &str = "subPath mount: never receives updates; mount the volume as a directory and read the file through it";
pub const HINT_HOLDS_OLD_DATA: &str = "still reading data from before the last update: it does not reload; watch the volume dir for ..data (IN_MOVED_TO) or re-add file watches after IN_DELETE_SELF";
pub const HINT_UNKNOWN: &str = "started before the last update; whether it reloaded is only measured by the running agent (reloadscope_consumer_stale_seconds)";

/// One consumer's state for one volume, as far as the file system and `/proc` show it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Verdict {
    /// Binds one file through `subPath`: pinned to the data of its start.
    SubPath,
    /// A process of it has a file of an older timestamped dir open.
    HoldsOldData,
    /// Its oldest process started after the last swap: it read the current data.
    ReloadedAtStart,
    /// Started before the last swap, nothing old open: only the agent can tell.
    Unknown,
}

impl Verdict {
    /// As printed and in the JSON output.
    pub fn label(self) -> &'static str {
        match self {
            Verdict::SubPath => "subpath",
            Verdict::HoldsOldData => "holds-old-data",
            Verdict::ReloadedAtStart => "reloaded-at-start",
            Verdict::Unknown => "unknown",
        }
    }

    /// What to do about it; `None` when there is no problem.
    pub fn hint(self) -> Option<&'static str> {
        match self {
            Verdict::SubPath => Some(HINT_SUBPATH),
            Verdict::HoldsOldData => Some(HINT_HOLDS_OLD_DATA),
            Verdict::ReloadedAtStart => None,
            Verdict::Unknown => Some(HINT_UNKNOWN),
        }
    }
}

/// The verdict for a consumer. `started` is the start of its oldest process as `/proc`
/// gives it (truncated to a clock tick, so never later than the real start: "started
/// after the swap" is then certain); `last_update` the `..data` symlink's mtime, `None`
/// when the volume has no `..data`; `holds_old_data` whether any of its processes has
/// a file of an older data dir open (see [`old_data_fd`]).
pub fn assess(
    mount: MountKind,
    started: SystemTime,
    last_update: Option<SystemTime>,
    holds_old_data: bool,
) -> Verdict {
    if mount == MountKind::SubPath {
        Verdict::SubPath
    } else if holds_old_data {
        Verdict::HoldsOldData
    } else if last_update.is_some_and(|swap| started >= swap) {
        Verdict::ReloadedAtStart
    } else {
        Verdict::Unknown
    }
}

/// Whether `target`, what `readlink /proc/<pid>/fd/<n>` gives, names a file inside a
/// timestamped dir of the volume other than `current` (the `..data` target). `dirs` are
/// the paths the volume dir has for the process: its host path(s) and its mount path in
/// the container. A file deleted since (its old dir removed by the update) reads
/// `<path> (deleted)`.
pub fn old_data_fd(target: &Path, dirs: &[PathBuf], current: &str) -> bool {
    let bytes = target.as_os_str().as_bytes();
    let path = Path::new(OsStr::from_bytes(
        bytes.strip_suffix(b" (deleted)").unwrap_or(bytes),
    ));
    dirs.iter().any(|dir| {
        let Ok(rest) = path.strip_prefix(dir) else {
            return false;
        };
        let mut parts = rest.components();
        match (parts.next(), parts.next()) {
            (Some(Component::Normal(ts)), Some(_)) => is_timestamped_dir(ts) && ts != current,
            _ => false,
        }
    })
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;

    const T0: SystemTime = SystemTime::UNIX_EPOCH;

    fn at(s: u64) -> SystemTime {
        T0 + Duration::from_secs(s)
    }

    #[test]
    fn subpath_wins_over_everything() {
        for (started, held) in [(at(5), true), (at(20), false), (at(5), false)] {
            assert_eq!(
                assess(MountKind::SubPath, started, Some(at(10)), held),
                Verdict::SubPath
            );
        }
        assert_eq!(
            assess(MountKind::SubPath, at(5), None, false),
            Verdict::SubPath
        );
    }

    #[test]
    fn whole_volume_consumers() {
        let v = MountKind::Volume;
        assert_eq!(assess(v, at(5), Some(at(10)), true), Verdict::HoldsOldData);
        assert_eq!(assess(v, at(20), Some(at(10)), true), Verdict::HoldsOldData);
        assert_eq!(
            assess(v, at(20), Some(at(10)), false),
            Verdict::ReloadedAtStart
        );
        assert_eq!(
            assess(v, at(10), Some(at(10)), false),
            Verdict::ReloadedAtStart,
            "a start truncated to the swap's instant is not before it"
        );
        assert_eq!(assess(v, at(5), Some(at(10)), false), Verdict::Unknown);
        assert_eq!(assess(v, at(5), None, false), Verdict::Unknown);
    }

    #[test]
    fn labels_and_hints() {
        assert_eq!(Verdict::SubPath.label(), "subpath");
        assert_eq!(Verdict::HoldsOldData.label(), "holds-old-data");
        assert_eq!(Verdict::ReloadedAtStart.label(), "reloaded-at-start");
        assert_eq!(Verdict::Unknown.label(), "unknown");
        assert_eq!(Verdict::ReloadedAtStart.hint(), None);
        assert!(
            Verdict::SubPath
                .hint()
                .unwrap()
                .starts_with("subPath mount")
        );
        assert!(Verdict::Unknown.hint().unwrap().contains("stale_seconds"));
        assert!(
            Verdict::HoldsOldData
                .hint()
                .unwrap()
                .contains("IN_MOVED_TO")
        );
    }

    #[test]
    fn old_data_fds() {
        let host = PathBuf::from("/var/lib/kubelet/pods/u/volumes/kubernetes.io~configmap/cfg");
        let dirs = [host.clone(), PathBuf::from("/etc/config")];
        let cur = "..2026_01_02_00_00_00.2";
        let old = |p: &str| old_data_fd(Path::new(p), &dirs, cur);
        // An older data dir, through the host path or the container's mount path,
        // deleted or not.
        assert!(old(&format!(
            "{}/..2026_01_01_00_00_00.1/k",
            host.display()
        )));
        assert!(old("/etc/config/..2026_01_01_00_00_00.1/k (deleted)"));
        assert!(old("/etc/config/..2026_01_01_00_00_00.1/sub/k"));
        // The current data, other files, the dir itself, unrelated paths.
        assert!(!old(&format!("/etc/config/{cur}/k")));
        assert!(!old("/etc/config/..2026_01_01_00_00_00.1"));
        assert!(!old("/etc/config/..data/k"));
        assert!(!old("/etc/config/k"));
        assert!(!old("/etc/configx/..2026_01_01_00_00_00.1/k"));
        assert!(!old("/etc/..2026_01_01_00_00_00.1/k"));
        assert!(!old("socket:[12345]"));
        assert!(!old("anon_inode:inotify"));
        assert!(!old_data_fd(
            Path::new("/etc/config/..2026_01_01_00_00_00.1/k"),
            &[],
            cur
        ));
    }
}
