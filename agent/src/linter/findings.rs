//! What a consumer's inotify watches on a volume will do at the next update
//! (docs/design.md 4-5), from the watched inodes and masks alone. Pure; the volume's
//! inodes come from `lstat` of its entries: no file of it is ever opened.

use std::{collections::BTreeSet, path::Path};

use crate::{
    node::{
        fdinfo::{Ino, Watch},
        volumes::DATA,
    },
    reloads::MountKind,
};

#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Finding {
    /// A watch on a user-visible symlink (or `..data`) itself (`IN_DONT_FOLLOW`): never fires.
    DontFollow,
    /// A watch on a file whose mask lacks `IN_DELETE_SELF`, and none on the volume dir:
    /// never fires on an update.
    NoDeleteSelf,
    /// Its file watch died with an update (`IN_IGNORED`) and was not added again within
    /// the grace period: every later update is missed.
    NotRewatched,
    /// A watch on a `..<timestamp>` dir: it dies with the next update.
    WatchesTimestampedDir,
    /// A file watch with `IN_DELETE_SELF` on a file that a subPath mount of the same
    /// volume binds: the update unlinks it but the bind keeps it, so no
    /// `IN_DELETE_SELF` comes while that mount is there.
    PinnedBySubPath,
    /// A subPath mount: never updated, whatever it watches.
    SubPath,
    /// A watch on the volume dir with `IN_MOVED_TO` (sees `..data` replaced), or a file
    /// watch with `IN_DELETE_SELF` (re-added after each update so far).
    Ok,
}

impl Finding {
    pub const ALL: [Finding; 7] = [
        Finding::DontFollow,
        Finding::NoDeleteSelf,
        Finding::NotRewatched,
        Finding::WatchesTimestampedDir,
        Finding::PinnedBySubPath,
        Finding::SubPath,
        Finding::Ok,
    ];

    pub fn label(self) -> &'static str {
        match self {
            Finding::DontFollow => "dont_follow",
            Finding::NoDeleteSelf => "no_delete_self",
            Finding::NotRewatched => "not_rewatched",
            Finding::WatchesTimestampedDir => "watches_timestamped_dir",
            Finding::PinnedBySubPath => "pinned_by_subpath",
            Finding::SubPath => "subpath",
            Finding::Ok => "ok",
        }
    }

    /// The one-line fix.
    pub fn hint(self) -> &'static str {
        match self {
            Finding::DontFollow => {
                "drop IN_DONT_FOLLOW: the watch is on the symlink, which the kubelet never changes; better, watch the volume dir for ..data (IN_MOVED_TO)"
            }
            Finding::NoDeleteSelf => {
                "the kubelet replaces files, never writes them: add IN_DELETE_SELF and re-add the watch after it, or watch the volume dir for ..data (IN_MOVED_TO)"
            }
            Finding::NotRewatched => {
                "after IN_DELETE_SELF / IN_IGNORED, add the watch again on the same path (it now names the new file), or watch the volume dir for ..data"
            }
            Finding::WatchesTimestampedDir => {
                "do not resolve ..data before watching: the ..<timestamp> dir is deleted at the next update; watch the volume dir for ..data (IN_MOVED_TO)"
            }
            Finding::PinnedBySubPath => {
                "another container of the pod mounts this file with subPath, which keeps the old file alive: no IN_DELETE_SELF comes at an update; mount the volume as a directory in that container too, or watch the volume dir for ..data (IN_MOVED_TO)"
            }
            Finding::SubPath => {
                "subPath mounts never receive updates: mount the volume as a directory and read the file through it"
            }
            Finding::Ok => "",
        }
    }
}

/// The inodes of one volume that a watch can land on.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct VolumeInodes {
    pub dir: Option<Ino>,
    /// `..data` and the user-visible symlinks (`<key> -> ..data/<key>`).
    pub links: Vec<Ino>,
    /// The current `..<timestamp>` dir and the ones below it.
    pub ts_dirs: Vec<Ino>,
    /// The files of the current data (what a watch through a symlink lands on).
    pub files: Vec<Ino>,
    /// The files a subPath mount of the volume binds (of the current data, or of an
    /// older one the bind keeps alive): not from [`VolumeInodes::read`], but from the
    /// subPath consumers' mounts ([`crate::consumers::Scan::pinned`]).
    pub pinned: Vec<Ino>,
}

impl VolumeInodes {
    /// `lstat`s the volume dir's entries and its current data dir, two levels deep.
    pub fn read(dir: &Path) -> VolumeInodes {
        use std::os::unix::fs::MetadataExt;
        let ino = |p: &Path| {
            std::fs::symlink_metadata(p)
                .ok()
                .map(|m| (m.dev(), m.ino()))
        };
        let mut v = VolumeInodes {
            dir: ino(dir),
            ..Default::default()
        };
        for e in std::fs::read_dir(dir).into_iter().flatten().flatten() {
            let name = e.file_name();
            let hidden = name.as_encoded_bytes().starts_with(b"..");
            if e.file_type().is_ok_and(|t| t.is_symlink()) && (!hidden || name == DATA) {
                v.links.extend(ino(&e.path()));
            }
        }
        let Some(ts) = crate::node::read_target(&dir.join(DATA)) else {
            return v;
        };
        let mut dirs = vec![(dir.join(&ts), 0)];
        while let Some((d, depth)) = dirs.pop() {
            v.ts_dirs.extend(ino(&d));
            for e in std::fs::read_dir(&d).into_iter().flatten().flatten() {
                match e.file_type() {
                    Ok(t) if t.is_dir() && depth < 1 => dirs.push((e.path(), depth + 1)),
                    Ok(t) if t.is_file() => v.files.extend(ino(&e.path())),
                    _ => {}
                }
            }
        }
        v
    }
}

/// One classification of a consumer's watches on a volume.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Classified {
    pub findings: BTreeSet<Finding>,
    /// It holds an `IN_DELETE_SELF` watch on a file of the current data: it must add
    /// it again after the next update.
    pub file_watch: bool,
    /// Watches that land on the volume.
    pub on_volume: usize,
    /// The pinned files it watches (`pinned_by_subpath`).
    pub pinned: Vec<Ino>,
}

/// Classifies `watches` (all of a container's) against volume `v` for a consumer
/// mounted as `mount`. `not_rewatched` needs the consumer's history: see `Linter`.
/// A file watch on a file in `v.pinned` is `pinned_by_subpath` whether that file is
/// the current data's or an older one's (the bind keeps it, and the watch, alive).
pub fn classify(mount: MountKind, watches: &[Watch], v: &VolumeInodes) -> Classified {
    let mut c = Classified::default();
    if mount == MountKind::SubPath {
        c.findings.insert(Finding::SubPath);
        return c;
    }
    let (mut dir_ok, mut broken) = (false, BTreeSet::new());
    for w in watches {
        let at = (w.dev, w.ino);
        let has = |bit: u32| w.mask & bit != 0;
        if v.dir == Some(at) {
            dir_ok |= has(libc::IN_MOVED_TO);
        } else if v.links.contains(&at) {
            broken.insert(Finding::DontFollow);
        } else if v.ts_dirs.contains(&at) {
            broken.insert(Finding::WatchesTimestampedDir);
        } else if v.files.contains(&at) || v.pinned.contains(&at) {
            if !has(libc::IN_DELETE_SELF) {
                broken.insert(Finding::NoDeleteSelf);
            } else if v.pinned.contains(&at) {
                // Not a file watch to add again: it will not die.
                broken.insert(Finding::PinnedBySubPath);
                c.pinned.push(at);
            } else {
                c.file_watch = true;
            }
        } else {
            continue;
        }
        c.on_volume += 1;
    }
    c.findings = if dir_ok {
        BTreeSet::from([Finding::Ok])
    } else if !broken.is_empty() {
        broken
    } else if c.file_watch {
        BTreeSet::from([Finding::Ok])
    } else {
        BTreeSet::new()
    };
    c
}

#[cfg(test)]
mod tests {
    use super::*;

    fn vol() -> VolumeInodes {
        VolumeInodes {
            dir: Some((1, 10)),
            links: vec![(1, 11), (1, 12)],
            ts_dirs: vec![(1, 20)],
            files: vec![(1, 21)],
            pinned: vec![],
        }
    }

    fn w(ino: u64, mask: u32) -> Watch {
        Watch {
            wd: 1,
            ino,
            dev: 1,
            mask,
        }
    }

    fn found(watches: &[Watch]) -> Vec<&'static str> {
        let c = classify(MountKind::Volume, watches, &vol());
        c.findings.iter().map(|f| f.label()).collect()
    }

    #[test]
    fn each_watch_shape_gets_its_finding() {
        use libc::*;
        assert_eq!(found(&[w(10, IN_MOVED_TO | IN_CREATE)]), ["ok"]);
        assert_eq!(found(&[w(21, IN_MODIFY | IN_DELETE_SELF)]), ["ok"]);
        assert_eq!(
            found(&[w(21, IN_MODIFY | IN_CLOSE_WRITE)]),
            ["no_delete_self"]
        );
        assert_eq!(found(&[w(11, IN_MODIFY)]), ["dont_follow"]);
        assert_eq!(
            found(&[w(20, IN_MODIFY | IN_CREATE)]),
            ["watches_timestamped_dir"]
        );
        // A dir watch that sees ..data replaced makes the container fine.
        assert_eq!(found(&[w(10, IN_MOVED_TO), w(21, IN_MODIFY)]), ["ok"]);
        // Without IN_MOVED_TO it does not.
        assert_eq!(
            found(&[w(10, IN_MODIFY), w(21, IN_MODIFY)]),
            ["no_delete_self"]
        );
        // Nothing on this volume: nothing to say.
        assert!(found(&[w(99, IN_MODIFY)]).is_empty());
    }

    /// Keys 21 and 22 of the current data, and 23 of an older one that a subPath
    /// mount of another container still binds, as it binds 22.
    fn pinned_vol() -> VolumeInodes {
        VolumeInodes {
            files: vec![(1, 21), (1, 22)],
            pinned: vec![(1, 22), (1, 23)],
            ..vol()
        }
    }

    #[test]
    fn a_file_watch_on_a_file_a_subpath_mount_binds_is_pinned() {
        use libc::*;
        let of = |watches: &[Watch]| classify(MountKind::Volume, watches, &pinned_vol());
        let labels = |c: &Classified| c.findings.iter().map(|f| f.label()).collect::<Vec<_>>();
        // The rewatcher of the key the other container binds: before the update (the
        // current file) and after it (the old one, kept alive by the bind).
        for ino in [22, 23] {
            let c = of(&[w(ino, IN_MODIFY | IN_DELETE_SELF)]);
            assert_eq!(labels(&c), ["pinned_by_subpath"], "{ino}");
            assert_eq!((c.on_volume, c.pinned.as_slice()), (1, &[(1, ino)][..]));
            assert!(!c.file_watch, "not a watch that dies with an update");
        }
        // The rewatcher of another key is fine; of both keys, it misses one.
        let other = of(&[w(21, IN_DELETE_SELF)]);
        assert_eq!((labels(&other), other.file_watch), (vec!["ok"], true));
        let both = of(&[w(21, IN_DELETE_SELF), w(22, IN_DELETE_SELF)]);
        assert_eq!(labels(&both), ["pinned_by_subpath"]);
        // Without IN_DELETE_SELF it would miss the update anyway.
        assert_eq!(labels(&of(&[w(22, IN_MODIFY)])), ["no_delete_self"]);
        // A watch on the volume dir sees ..data replaced whatever the file does.
        let dir = of(&[w(10, IN_MOVED_TO), w(22, IN_DELETE_SELF)]);
        assert_eq!(labels(&dir), ["ok"]);
        // The same inode number on another device is another file.
        let elsewhere = Watch {
            dev: 2,
            ..w(22, IN_DELETE_SELF)
        };
        assert_eq!(of(&[elsewhere]).on_volume, 0);
        // The subPath consumer itself is a subPath consumer.
        let sub = classify(MountKind::SubPath, &[w(22, IN_DELETE_SELF)], &pinned_vol());
        assert_eq!(labels(&sub), ["subpath"]);
    }

    #[test]
    fn a_subpath_consumer_is_only_that() {
        let c = classify(MountKind::SubPath, &[w(21, libc::IN_MODIFY)], &vol());
        assert_eq!(c.findings, BTreeSet::from([Finding::SubPath]));
    }

    #[test]
    fn reads_a_kubelet_layout_without_opening_files() {
        use std::os::unix::fs::symlink;
        let t = tempfile::tempdir().unwrap();
        let ts = t.path().join("..2026_11_25_14_10_06.1");
        std::fs::create_dir_all(ts.join("sub")).unwrap();
        std::fs::write(ts.join("k"), "v").unwrap();
        std::fs::write(ts.join("sub/k2"), "v").unwrap();
        symlink("..2026_11_25_14_10_06.1", t.path().join(DATA)).unwrap();
        symlink("..data/k", t.path().join("k")).unwrap();
        symlink("..data/sub", t.path().join("sub")).unwrap();
        let v = VolumeInodes::read(t.path());
        assert!(v.dir.is_some());
        assert_eq!((v.links.len(), v.ts_dirs.len(), v.files.len()), (3, 2, 2));
    }
}
