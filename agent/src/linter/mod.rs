//! The watch linter: for every consuming container, what its inotify watches on the
//! volume will do at the next update, from `/proc/<pid>/fdinfo` (README, "Watch
//! findings"). Inventories are taken with each consumer scan: at start, when
//! containers start or stop, after each update and once its grace period is over.
//!
//! Findings that the masks alone prove are known before any update, and so is
//! `pinned_by_subpath`: a file watch on a file a subPath mount of the volume binds.
//! `not_rewatched` needs one: a container that held an `IN_DELETE_SELF` watch on a
//! file of the data must hold one on a file of the new data within the grace period.

pub mod findings;

use std::{
    collections::{BTreeSet, HashMap},
    time::{Duration, SystemTime},
};

pub use findings::{Classified, Finding, VolumeInodes, classify};

use crate::{
    node::{
        fdinfo::{Ino, Watch},
        volumes::VolumeKey,
    },
    reloads::MountKind,
};

/// How long a container has to add its file watch again after an update.
pub const REWATCH_GRACE: Duration = Duration::from_secs(10);

#[derive(Clone, Debug, Default)]
pub struct State {
    pub name: String,
    pub findings: BTreeSet<Finding>,
    /// The data dir its watches were last seen on.
    watched: Option<String>,
    /// It then held an `IN_DELETE_SELF` watch on a file.
    file_watch: bool,
    /// An update killed that watch: by then it must hold one again.
    rewatch_by: Option<SystemTime>,
    /// The files it watches that a subPath mount was seen to bind: a watch still on
    /// one has had no `IN_DELETE_SELF` (which would have removed it), so it is still
    /// pinned, even once the subPath container is no longer seen (the kubelet's bind
    /// outlives its process).
    pinned: Vec<Ino>,
}

/// What one scan saw of a consumer of a volume.
pub struct Seen<'a> {
    pub key: &'a VolumeKey,
    pub id: &'a str,
    pub name: &'a str,
    pub mount: MountKind,
    /// The volume's data dir now, and when the update that made it was swapped in
    /// (None: before the agent).
    pub current: Option<&'a str>,
    pub updated_at: Option<SystemTime>,
    pub inodes: &'a VolumeInodes,
    /// Every inotify watch of the container's processes.
    pub watches: &'a [Watch],
}

#[derive(Debug)]
pub struct Linter {
    grace: Duration,
    consumers: HashMap<(VolumeKey, String), State>,
    /// Inotify watches held by consuming containers, by pod uid, at the last scan.
    pub observed: HashMap<String, usize>,
    /// When the last inventory was taken.
    pub last_inventory: Option<SystemTime>,
}

impl Default for Linter {
    fn default() -> Self {
        Linter::new(REWATCH_GRACE)
    }
}

impl Linter {
    pub fn new(grace: Duration) -> Self {
        Linter {
            grace,
            consumers: HashMap::new(),
            observed: HashMap::new(),
            last_inventory: None,
        }
    }

    pub fn consumers(&self) -> impl Iterator<Item = (&VolumeKey, &State)> {
        self.consumers.iter().map(|((k, _), s)| (k, s))
    }

    pub fn state(&self, key: &VolumeKey, id: &str) -> Option<&State> {
        self.consumers.get(&(key.clone(), id.to_owned()))
    }

    /// Takes in one consumer's inventory at `now`; returns whether it has a watch on
    /// the volume now.
    ///
    /// Watches on the current data say it all. Without any, either an update killed
    /// the ones it had (a watch on a file goes with the file), and what they were
    /// stands, except that a file watcher must hold a new one once the grace is over;
    /// or it has none (any more) and nothing is said.
    pub fn observe(&mut self, s: Seen, now: SystemTime) -> bool {
        let st = self
            .consumers
            .entry((s.key.clone(), s.id.to_owned()))
            .or_default();
        st.name = s.name.to_owned();
        let remembered;
        let inodes = if st.pinned.is_empty() {
            s.inodes
        } else {
            let mut v = s.inodes.clone();
            v.pinned.extend(&st.pinned);
            remembered = v;
            &remembered
        };
        let c = classify(s.mount, s.watches, inodes);
        let watching = c.on_volume > 0;
        if watching || s.mount == MountKind::SubPath {
            st.watched = s.current.map(str::to_owned);
            st.file_watch = c.file_watch;
            st.rewatch_by = None;
            st.findings = c.findings;
            st.pinned = c.pinned;
        } else if st.watched.is_some() && st.watched.as_deref() != s.current {
            if !st.file_watch {
                return false;
            }
            // The grace runs from the swap.
            let by = *st
                .rewatch_by
                .get_or_insert(s.updated_at.unwrap_or(now) + self.grace);
            if now >= by {
                st.rewatch_by = None;
                st.file_watch = false;
                st.findings = BTreeSet::from([Finding::NotRewatched]);
            }
        } else {
            *st = State {
                name: std::mem::take(&mut st.name),
                ..State::default()
            };
        }
        watching
    }

    /// Forgets consumers `keep` says are gone.
    pub fn retain(&mut self, mut keep: impl FnMut(&VolumeKey, &str) -> bool) {
        self.consumers.retain(|(k, id), _| keep(k, id));
    }

    /// When a grace period ends: the next inventory is due then.
    pub fn next_deadline(&self) -> Option<SystemTime> {
        self.consumers.values().filter_map(|s| s.rewatch_by).min()
    }
}

#[cfg(test)]
mod tests {
    use libc::{IN_DELETE_SELF, IN_MODIFY, IN_MOVED_TO};

    use super::*;

    fn t(s: u64) -> SystemTime {
        SystemTime::UNIX_EPOCH + Duration::from_secs(s)
    }

    fn key() -> VolumeKey {
        VolumeKey {
            pod_uid: "uid".into(),
            volume_type: crate::node::volumes::VolumeType::ConfigMap,
            name: "app-config".into(),
        }
    }

    /// Data `ts` has its file at inode `file`.
    fn inodes(file: u64) -> VolumeInodes {
        VolumeInodes {
            dir: Some((1, 10)),
            files: vec![(1, file)],
            ..Default::default()
        }
    }

    fn look(l: &mut Linter, ts: &str, file: u64, watches: &[Watch], at: u64) -> Vec<&'static str> {
        look_pinned(l, ts, file, &[], watches, at)
    }

    /// The same with the files subPath mounts bind.
    fn look_pinned(
        l: &mut Linter,
        ts: &str,
        file: u64,
        pinned: &[u64],
        watches: &[Watch],
        at: u64,
    ) -> Vec<&'static str> {
        let k = key();
        let i = VolumeInodes {
            pinned: pinned.iter().map(|&ino| (1, ino)).collect(),
            ..inodes(file)
        };
        let seen = Seen {
            key: &k,
            id: "c1",
            name: "app",
            mount: MountKind::Volume,
            current: Some(ts),
            updated_at: None,
            inodes: &i,
            watches,
        };
        l.observe(seen, t(at));
        l.state(&k, "c1")
            .unwrap()
            .findings
            .iter()
            .map(|f| f.label())
            .collect()
    }

    fn on(ino: u64, mask: u32) -> Watch {
        Watch {
            wd: 1,
            ino,
            dev: 1,
            mask,
        }
    }

    #[test]
    fn a_file_watch_not_added_again_within_the_grace_is_not_rewatched() {
        let mut l = Linter::new(Duration::from_secs(10));
        assert_eq!(
            look(&mut l, "..1", 21, &[on(21, IN_DELETE_SELF)], 0),
            ["ok"]
        );
        // The update: its watch died with the old file. Within the grace: unchanged.
        assert_eq!(look(&mut l, "..2", 22, &[], 100), ["ok"]);
        assert_eq!(l.next_deadline(), Some(t(110)));
        assert_eq!(look(&mut l, "..2", 22, &[], 109), ["ok"]);
        assert_eq!(look(&mut l, "..2", 22, &[], 110), ["not_rewatched"]);
        assert_eq!(l.next_deadline(), None);
        // It stays so until it watches the data again.
        assert_eq!(look(&mut l, "..2", 22, &[], 500), ["not_rewatched"]);
        assert_eq!(
            look(&mut l, "..2", 22, &[on(22, IN_DELETE_SELF)], 600),
            ["ok"]
        );
    }

    #[test]
    fn a_file_watch_added_again_stays_ok() {
        let mut l = Linter::new(Duration::from_secs(10));
        look(&mut l, "..1", 21, &[on(21, IN_DELETE_SELF | IN_MODIFY)], 0);
        assert_eq!(
            look(
                &mut l,
                "..2",
                22,
                &[on(22, IN_DELETE_SELF | IN_MODIFY)],
                101
            ),
            ["ok"]
        );
        assert_eq!(l.next_deadline(), None);
        assert_eq!(
            look(&mut l, "..2", 22, &[on(22, IN_DELETE_SELF)], 200),
            ["ok"]
        );
    }

    #[test]
    fn a_broken_watch_killed_by_an_update_stays_broken() {
        let mut l = Linter::new(Duration::from_secs(10));
        assert_eq!(
            look(&mut l, "..1", 21, &[on(21, IN_MODIFY)], 0),
            ["no_delete_self"]
        );
        // Its watch went with the old file: it is still a container that never reloads.
        assert_eq!(look(&mut l, "..2", 22, &[], 100), ["no_delete_self"]);
        assert_eq!(l.next_deadline(), None);
        assert_eq!(look(&mut l, "..3", 23, &[], 200), ["no_delete_self"]);
        // Watching the current data again: that is what counts.
        assert_eq!(look(&mut l, "..3", 23, &[on(10, IN_MOVED_TO)], 300), ["ok"]);
    }

    #[test]
    fn a_pinned_file_watch_stays_pinned_and_is_not_due_a_rewatch() {
        let mut l = Linter::new(Duration::from_secs(10));
        let watch = [on(21, IN_DELETE_SELF)];
        assert_eq!(
            look_pinned(&mut l, "..1", 21, &[21], &watch, 0),
            ["pinned_by_subpath"]
        );
        // The update: the bind keeps the old file and the watch on it alive.
        assert_eq!(
            look_pinned(&mut l, "..2", 22, &[21], &watch, 100),
            ["pinned_by_subpath"]
        );
        assert_eq!(l.next_deadline(), None);
        // The subPath container gone unseen (its kubelet bind may stay): it stands,
        // and no grace runs out into not_rewatched.
        assert_eq!(look(&mut l, "..2", 22, &watch, 200), ["pinned_by_subpath"]);
        assert_eq!(l.next_deadline(), None);
        assert_eq!(look(&mut l, "..2", 22, &watch, 300), ["pinned_by_subpath"]);
        // Once the bind goes, IN_DELETE_SELF comes and it watches the new file.
        assert_eq!(
            look(&mut l, "..2", 22, &[on(22, IN_DELETE_SELF)], 400),
            ["ok"]
        );
    }

    #[test]
    fn watches_removed_without_an_update_leave_nothing_to_say() {
        let mut l = Linter::new(Duration::from_secs(10));
        assert_eq!(
            look(&mut l, "..1", 21, &[on(21, IN_MODIFY)], 0),
            ["no_delete_self"]
        );
        assert!(look(&mut l, "..1", 21, &[], 50).is_empty());
        // Nor does a later update: it held no watch then.
        assert!(look(&mut l, "..2", 22, &[], 100).is_empty());
        assert_eq!(l.next_deadline(), None);
        l.retain(|_, _| false);
        assert!(l.state(&key(), "c1").is_none());
    }
}
