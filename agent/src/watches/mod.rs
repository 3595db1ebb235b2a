//! The watch linter: for every consuming container, what its inotify watches on the
//! volume will do at the next update, from `/proc/<pid>/fdinfo` (README, "Watch
//! findings"). Inventories are taken with each consumer scan: at start, when
//! containers start or stop, after each update and once its grace period is over.
//!
//! Findings that the masks alone prove are known before any update. `not_rewatched`
//! needs one: a container that held an `IN_DELETE_SELF` watch on a file of the data
//! must hold one on a file of the new data within the grace period.

pub mod fdinfo;
pub mod findings;

use std::{
    collections::{BTreeSet, HashMap},
    time::{Duration, SystemTime},
};

pub use fdinfo::Watch;
pub use findings::{Classified, Finding, VolumeInodes, classify};

use crate::{reloads::MountKind, volumes::VolumeKey};

/// How long a container has to add its file watch again after an update.
pub const REWATCH_GRACE: Duration = Duration::from_secs(10);

#[derive(Clone, Debug, Default)]
pub struct State {
    pub name: String,
    pub findings: BTreeSet<Finding>,
    /// The data dir it was last looked at against.
    ts_dir: Option<String>,
    file_watch: bool,
    /// An update came while it held a file watch: by then it must hold one again.
    rewatch_by: Option<SystemTime>,
    not_rewatched: bool,
}

/// What one scan saw of a consumer of a volume.
pub struct Seen<'a> {
    pub key: &'a VolumeKey,
    pub id: &'a str,
    pub name: &'a str,
    pub mount: MountKind,
    /// The volume's data dir now.
    pub current: Option<&'a str>,
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
        }
    }

    pub fn consumers(&self) -> impl Iterator<Item = (&VolumeKey, &State)> {
        self.consumers.iter().map(|((k, _), s)| (k, s))
    }

    pub fn state(&self, key: &VolumeKey, id: &str) -> Option<&State> {
        self.consumers.get(&(key.clone(), id.to_owned()))
    }

    /// Takes in one consumer's inventory at `now`.
    pub fn observe(&mut self, s: Seen, now: SystemTime) {
        let st = self
            .consumers
            .entry((s.key.clone(), s.id.to_owned()))
            .or_default();
        st.name = s.name.to_owned();
        let updated = st.ts_dir.is_some() && st.ts_dir.as_deref() != s.current;
        if updated && st.file_watch {
            st.rewatch_by = Some(now + self.grace);
        }
        st.ts_dir = s.current.map(str::to_owned);
        let mut c = classify(s.mount, s.watches, s.inodes, st.not_rewatched);
        if c.file_watch {
            st.rewatch_by = None;
            st.not_rewatched = false;
            c = classify(s.mount, s.watches, s.inodes, false);
        } else if let Some(by) = st.rewatch_by {
            if now < by {
                // Still within its grace: what was said stands.
                return;
            }
            st.rewatch_by = None;
            st.not_rewatched = true;
            c = classify(s.mount, s.watches, s.inodes, true);
        }
        st.file_watch = c.file_watch;
        st.findings = c.findings;
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
    use super::*;
    use libc::{IN_DELETE_SELF, IN_MODIFY};

    fn t(s: u64) -> SystemTime {
        SystemTime::UNIX_EPOCH + Duration::from_secs(s)
    }

    fn key() -> VolumeKey {
        VolumeKey {
            pod_uid: "uid".into(),
            volume_type: crate::volumes::VolumeType::ConfigMap,
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
        let k = key();
        let i = inodes(file);
        let seen = Seen {
            key: &k,
            id: "c1",
            name: "app",
            mount: MountKind::Volume,
            current: Some(ts),
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
    fn without_a_file_watch_an_update_expects_nothing() {
        let mut l = Linter::new(Duration::from_secs(10));
        assert_eq!(
            look(&mut l, "..1", 21, &[on(21, IN_MODIFY)], 0),
            ["no_delete_self"]
        );
        assert_eq!(look(&mut l, "..2", 22, &[], 100), Vec::<&str>::new());
        assert_eq!(l.next_deadline(), None);
        l.retain(|_, _| false);
        assert!(l.state(&key(), "c1").is_none());
    }
}
