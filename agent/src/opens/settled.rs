//! What becomes of a settled volume's marks, volume by volume ([`SettledMarks`]).
//!
//! With [`SettledMarks::Auto`] a volume is *covered* while some consumer watches it with
//! inotify in a way that fires at an update (the watch linter's `ok`): such a consumer
//! reopens within microseconds of the swap, maybe before the new data dir is marked,
//! so its bind mount carries a mount mark that sees the read whatever the race, and
//! the settled data dir an ignore mask. An uncovered volume's consumers (pollers, or
//! watches that never fire) read later than any mark: its settled data dir loses its
//! mark and its opens cost nothing.

use std::{
    collections::{HashMap, HashSet},
    io,
    path::{Path, PathBuf},
};

use tracing::debug;

use super::SettledMarks;
use crate::{fanotify::Fanotify, node::volumes::VolumeKey};

/// One consumed volume, with `Auto`.
#[derive(Default)]
struct Cover {
    /// The consumers' bind mounts (through `/proc/<pid>/root`).
    mounts: HashSet<PathBuf>,
    /// Some consumer watches it: the mounts are marked.
    on: bool,
    /// Its settled data dir, and how it was settled.
    settled: Option<(PathBuf, SettledMarks)>,
}

/// The marks a settled data dir keeps or loses, by the agent's `--settled-marks`.
pub struct Covers {
    mode: SettledMarks,
    by_volume: HashMap<VolumeKey, Cover>,
}

impl Covers {
    pub fn new(mode: SettledMarks) -> Covers {
        Covers {
            mode,
            by_volume: HashMap::new(),
        }
    }

    /// Whether each tmpfs volume gets a filesystem mark (`Ignore` only: `Auto` sees its
    /// watched volumes' reads through the consumers' mount marks).
    pub fn filesystem_marks(&self) -> bool {
        self.mode == SettledMarks::Ignore
    }

    /// How `key`'s data dir is settled now: `Ignore` or `Remove`.
    fn how(&self, key: &VolumeKey) -> SettledMarks {
        match self.mode {
            SettledMarks::Auto if self.by_volume.get(key).is_some_and(|c| c.on) => {
                SettledMarks::Ignore
            }
            SettledMarks::Auto => SettledMarks::Remove,
            m => m,
        }
    }

    /// A consumer's bind mount of `key`: marked with `Ignore`, and with `Auto` while
    /// the volume is covered.
    pub fn consumer(&mut self, fan: &Fanotify, key: VolumeKey, mount_path: PathBuf) {
        let mark = match self.mode {
            SettledMarks::Ignore => true,
            SettledMarks::Remove => false,
            SettledMarks::Auto => {
                let c = self.by_volume.entry(key).or_default();
                c.mounts.insert(mount_path.clone()) && c.on
            }
        };
        if mark {
            logged(
                fan.mark_mount(&mount_path),
                &mount_path,
                "mark consumer mount",
            );
        }
    }

    /// With `Auto`: whether some consumer of `key` watches it now; `settled`: its data
    /// dir if settled, for a volume settled before it had a consumer (not recorded
    /// then, so removed).
    pub fn watched(&mut self, fan: &Fanotify, key: VolumeKey, on: bool, settled: Option<PathBuf>) {
        if self.mode != SettledMarks::Auto {
            return;
        }
        let c = self.by_volume.entry(key).or_default();
        if c.settled.is_none() {
            c.settled = settled.map(|p| (p, SettledMarks::Remove));
        }
        if c.on == on {
            return;
        }
        c.on = on;
        for m in &c.mounts {
            let done = if on {
                fan.mark_mount(m)
            } else {
                fan.unmark_mount(m)
            };
            logged(done, m, "mark or unmark consumer mount");
        }
        let want = if on {
            SettledMarks::Ignore
        } else {
            SettledMarks::Remove
        };
        if let Some((p, how)) = &mut c.settled
            && *how != want
        {
            unsettle(fan, *how, p);
            settle(fan, want, p);
            *how = want;
        }
    }

    /// Recorded for consumed volumes only: a node's other volumes are many (kept for
    /// all, 10,000 of them took 4-5 MiB).
    pub fn settled(&mut self, fan: &Fanotify, key: VolumeKey, ts_path: PathBuf) {
        let how = self.how(&key);
        settle(fan, how, &ts_path);
        if let Some(c) = self.by_volume.get_mut(&key) {
            c.settled = Some((ts_path, how));
        }
    }

    pub fn unsettled(&mut self, fan: &Fanotify, key: &VolumeKey, ts_path: &Path) {
        let how = match self.by_volume.get_mut(key).and_then(|c| c.settled.take()) {
            Some((p, how)) if p == ts_path => how,
            _ => self.how(key),
        };
        unsettle(fan, how, ts_path);
    }

    pub fn gone(&mut self, key: &VolumeKey) {
        self.by_volume.remove(key);
    }
}

/// `Ignore`: an ignore mask; `Remove`: the dir's mark goes.
fn settle(fan: &Fanotify, how: SettledMarks, ts_path: &Path) {
    let done = match how {
        SettledMarks::Remove => fan.unmark_dir(ts_path),
        _ => fan.ignore_dir(ts_path),
    };
    logged(done, ts_path, "settle data dir");
}

fn unsettle(fan: &Fanotify, how: SettledMarks, ts_path: &Path) {
    let done = match how {
        SettledMarks::Remove => fan.mark_dir(ts_path),
        _ => fan.unignore_dir(ts_path),
    };
    logged(done, ts_path, "unsettle data dir");
}

/// A path gone meanwhile (a pod deleted, a container stopped) is not a fault.
fn logged(done: io::Result<()>, path: &Path, what: &str) {
    if let Err(e) = done {
        debug!(path = %path.display(), error = %e, "cannot {what} (gone?)");
    }
}
