//! How a lab container consumes its volume: the ways real applications watch or re-read
//! a mounted ConfigMap or Secret file (DOMAIN.md 5), each done with the same inotify
//! calls such an application makes, so that the broken ones are broken for the real
//! reason and not because they were told to ignore updates.
//!
//! Every strategy runs in the consumer process (see `consumer`); it reads the file
//! through the container's view of it and reports each open through
//! [`Consumer::open`].

use std::{convert::Infallible, ffi::OsStr, io, os::fd::AsFd};

use anyhow::Context as _;
use inotify::{EventMask, Inotify, WatchDescriptor, WatchMask};

use super::consumer::Consumer;

/// How a lab container's process watches or re-reads its file.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, clap::ValueEnum)]
pub enum Strategy {
    /// inotify on the mounted volume dir; reopens when `..data` is moved in
    /// (IN_MOVED_TO): what the AtomicWriter comment advises.
    DataDirWatcher,
    /// inotify on the file (following symlinks); on IN_DELETE_SELF / IN_IGNORED it
    /// re-adds the watch and reopens (the seed article's advice).
    FileRewatcher,
    /// inotify on the file for IN_MODIFY | IN_CLOSE_WRITE only: never fires on these
    /// volumes.
    NaiveModify,
    /// inotify on the user-visible file with IN_DONT_FOLLOW: never fires.
    DontFollow,
    /// Resolves `..data` once and watches the timestamped dir it names (IN_MODIFY |
    /// IN_CLOSE_WRITE | IN_CREATE | IN_MOVED_TO); never re-adds the watch: it dies with
    /// the next update, which nothing in it announces.
    TimestampedDirWatcher,
    /// inotify on the file (following symlinks) for IN_MODIFY | IN_DELETE_SELF; reopens
    /// on IN_DELETE_SELF but never adds a watch again: gets the first update only.
    FileWatcherNoRewatch,
    /// Re-reads every `--period` (default 1 s).
    TimerPoller,
    /// Reads once at start, never again.
    ReadOnce,
}

impl Strategy {
    pub const ALL: [Strategy; 8] = [
        Strategy::DataDirWatcher,
        Strategy::FileRewatcher,
        Strategy::NaiveModify,
        Strategy::DontFollow,
        Strategy::TimestampedDirWatcher,
        Strategy::FileWatcherNoRewatch,
        Strategy::TimerPoller,
        Strategy::ReadOnce,
    ];

    /// The name on the command line (`data-dir-watcher`, ...).
    pub fn name(self) -> &'static str {
        match self {
            Strategy::DataDirWatcher => "data-dir-watcher",
            Strategy::FileRewatcher => "file-rewatcher",
            Strategy::NaiveModify => "naive-modify",
            Strategy::DontFollow => "dont-follow",
            Strategy::TimestampedDirWatcher => "timestamped-dir-watcher",
            Strategy::FileWatcherNoRewatch => "file-watcher-no-rewatch",
            Strategy::TimerPoller => "timer-poller",
            Strategy::ReadOnce => "read-once",
        }
    }

    /// Whether an application doing this picks up ConfigMap or Secret updates on a
    /// whole-volume mount (DOMAIN.md 5): every one, not just the first (the file watcher
    /// that never re-adds its watch gets the first update only: false). No strategy
    /// does on a subPath mount.
    pub fn gets_updates(self) -> bool {
        matches!(
            self,
            Strategy::DataDirWatcher | Strategy::FileRewatcher | Strategy::TimerPoller
        )
    }

    /// Sets up the watch, makes the first open, reports ready, then reopens whenever
    /// the strategy says so. Returns only on error.
    pub(super) fn run(self, c: &mut Consumer) -> anyhow::Result<Infallible> {
        match self {
            Strategy::DataDirWatcher => data_dir_watcher(c),
            Strategy::FileRewatcher => file_rewatcher(c),
            Strategy::NaiveModify => naive_modify(c),
            Strategy::DontFollow => dont_follow(c),
            Strategy::TimestampedDirWatcher => timestamped_dir_watcher(c),
            Strategy::FileWatcherNoRewatch => file_watcher_no_rewatch(c),
            Strategy::TimerPoller => timer_poller(c),
            Strategy::ReadOnce => read_once(c),
        }
    }
}

/// Room for a few dozen events with names.
const EVENT_BUF: usize = 4096;

/// The events queued on `ino`, after `Consumer::wait` said it is readable.
fn read_events<'b>(
    ino: &mut Inotify,
    buf: &'b mut [u8],
) -> io::Result<Vec<inotify::Event<&'b OsStr>>> {
    match ino.read_events(buf) {
        Ok(events) => Ok(events.collect()),
        Err(e) if e.kind() == io::ErrorKind::WouldBlock => Ok(Vec::new()),
        Err(e) => Err(e),
    }
}

/// configmap-reload and the AtomicWriter's own comment: watch the directory the volume
/// is mounted at and reload when `..data` is renamed into it (the commit point). One
/// reopen per `..data` rename.
fn data_dir_watcher(c: &mut Consumer) -> anyhow::Result<Infallible> {
    let mut ino = Inotify::init().context("inotify_init1")?;
    let dir = c.dir().to_path_buf();
    ino.watches()
        .add(&dir, WatchMask::MOVED_TO)
        .with_context(|| format!("inotify_add_watch {dir:?}"))?;
    c.open()?;
    c.ready()?;
    let mut buf = [0u8; EVENT_BUF];
    loop {
        if !c.wait(Some(ino.as_fd()), None)? {
            continue;
        }
        for ev in read_events(&mut ino, &mut buf).context("read inotify events")? {
            if ev.mask.contains(EventMask::MOVED_TO) && ev.name == Some(OsStr::new("..data")) {
                c.open()?;
            }
        }
    }
}

/// What a file watcher library asks for on a file (fsnotify's set, minus the
/// directory-only events).
const FILE_EVENTS: WatchMask = WatchMask::MODIFY
    .union(WatchMask::CLOSE_WRITE)
    .union(WatchMask::ATTRIB)
    .union(WatchMask::DELETE_SELF)
    .union(WatchMask::MOVE_SELF);

/// The seed article's advice: watch the file (the kernel follows the user-visible
/// symlinks to the real file in the current timestamped dir); reload on a content
/// event; when the watched file goes away (IN_DELETE_SELF, IN_MOVE_SELF, or the
/// IN_IGNORED that ends its watch), drop the broken watch, watch the path again (it now
/// names the new file) and reload. Without the re-add, only the first update would be
/// seen: the watch dies with the old file.
fn file_rewatcher(c: &mut Consumer) -> anyhow::Result<Infallible> {
    let mut ino = Inotify::init().context("inotify_init1")?;
    let file = c.file().to_path_buf();
    let mut wd: Option<WatchDescriptor> = Some(
        ino.watches()
            .add(&file, FILE_EVENTS)
            .with_context(|| format!("inotify_add_watch {file:?}"))?,
    );
    c.open()?;
    c.ready()?;
    let mut buf = [0u8; EVENT_BUF];
    loop {
        if !c.wait(Some(ino.as_fd()), None)? {
            continue;
        }
        for ev in read_events(&mut ino, &mut buf).context("read inotify events")? {
            // Events of a watch already replaced (its IN_IGNORED, mostly).
            if wd.as_ref() != Some(&ev.wd) {
                continue;
            }
            let gone = EventMask::DELETE_SELF | EventMask::MOVE_SELF | EventMask::IGNORED;
            if ev.mask.intersects(gone) {
                if !ev.mask.contains(EventMask::IGNORED) {
                    // The kernel drops it with the inode anyway; EINVAL then.
                    let _ = ino.watches().remove(ev.wd.clone());
                }
                wd = match ino.watches().add(&file, FILE_EVENTS) {
                    Ok(new) => Some(new),
                    Err(e) => {
                        // As an application would: it carries on without a watch.
                        eprintln!("inotify_add_watch {file:?}: {e}");
                        None
                    }
                };
                c.open()?;
            } else if ev
                .mask
                .intersects(EventMask::MODIFY | EventMask::CLOSE_WRITE)
            {
                c.open()?;
            }
        }
    }
}

/// The habit from ordinary files: watch the file for writes. The kubelet never writes
/// to a file a consumer has: it writes new files in a new dir, so no event ever comes
/// (the watch ends with an IN_IGNORED when the old file is deleted, which this code,
/// like its models, does not look at).
fn naive_modify(c: &mut Consumer) -> anyhow::Result<Infallible> {
    let mut ino = Inotify::init().context("inotify_init1")?;
    let file = c.file().to_path_buf();
    ino.watches()
        .add(&file, WatchMask::MODIFY | WatchMask::CLOSE_WRITE)
        .with_context(|| format!("inotify_add_watch {file:?}"))?;
    c.open()?;
    c.ready()?;
    let mut buf = [0u8; EVENT_BUF];
    loop {
        if !c.wait(Some(ino.as_fd()), None)? {
            continue;
        }
        for ev in read_events(&mut ino, &mut buf).context("read inotify events")? {
            if ev
                .mask
                .intersects(EventMask::MODIFY | EventMask::CLOSE_WRITE)
            {
                c.open()?;
            }
        }
    }
}

/// IN_DONT_FOLLOW on the user-visible path watches the symlink `key -> ..data/key`
/// itself, which no update touches: no event, ever. Reloads on any event it gets.
/// (On a subPath mount the path is the bind-mounted old file, not a symlink: the
/// update's unlink of it gives one IN_ATTRIB, and the reopen reads the old content.)
fn dont_follow(c: &mut Consumer) -> anyhow::Result<Infallible> {
    let mut ino = Inotify::init().context("inotify_init1")?;
    let file = c.file().to_path_buf();
    let mask = WatchMask::DONT_FOLLOW
        | WatchMask::MODIFY
        | WatchMask::ATTRIB
        | WatchMask::DELETE_SELF
        | WatchMask::CLOSE_WRITE;
    ino.watches()
        .add(&file, mask)
        .with_context(|| format!("inotify_add_watch {file:?}"))?;
    c.open()?;
    c.ready()?;
    let mut buf = [0u8; EVENT_BUF];
    loop {
        if !c.wait(Some(ino.as_fd()), None)? {
            continue;
        }
        for _ in read_events(&mut ino, &mut buf).context("read inotify events")? {
            c.open()?;
        }
    }
}

/// What the timestamped dir watcher asks for: writes and new entries in the dir.
const TIMESTAMPED_DIR_EVENTS: WatchMask = WatchMask::MODIFY
    .union(WatchMask::CLOSE_WRITE)
    .union(WatchMask::CREATE)
    .union(WatchMask::MOVED_TO);

/// Watches the directory the file really is in: `..data` read once (readlink(2)) names
/// the current `..<timestamp>` dir, and the watch goes on that. Reopens on any event it
/// asked for. An update makes a new timestamped dir, moves `..data` to it and removes
/// the old one: nothing it asked for happens in the watched dir, whose removal ends the
/// watch with an IN_IGNORED (the kernel sends it whatever the mask), which this code,
/// like its models, takes for no reason to reload. The watch is never added again, so
/// no update is ever seen. (No `..data` on a subPath mount: it fails to start there.)
fn timestamped_dir_watcher(c: &mut Consumer) -> anyhow::Result<Infallible> {
    let mut ino = Inotify::init().context("inotify_init1")?;
    let data = c.dir().join("..data");
    let target = std::fs::read_link(&data).with_context(|| format!("readlink {data:?}"))?;
    // Relative (`..2026_...`) as the kubelet makes it; joined to the dir the link is in.
    let real = c.dir().join(target);
    let wd = ino
        .watches()
        .add(&real, TIMESTAMPED_DIR_EVENTS)
        .with_context(|| format!("inotify_add_watch {real:?}"))?;
    c.open()?;
    c.ready()?;
    let mut buf = [0u8; EVENT_BUF];
    let asked =
        EventMask::MODIFY | EventMask::CLOSE_WRITE | EventMask::CREATE | EventMask::MOVED_TO;
    loop {
        if !c.wait(Some(ino.as_fd()), None)? {
            continue;
        }
        for ev in read_events(&mut ino, &mut buf).context("read inotify events")? {
            if ev.wd == wd && ev.mask.intersects(asked) {
                c.open()?;
            }
        }
    }
}

/// A file watcher that knows the file can be replaced but not that its watch goes with
/// it: watches the file (following symlinks) for IN_MODIFY | IN_DELETE_SELF and
/// reopens on either. The first update deletes the watched file: IN_DELETE_SELF, a
/// reopen that reads the new content, and the watch is gone (IN_IGNORED, not looked
/// at). It never adds one again: every later update is missed.
fn file_watcher_no_rewatch(c: &mut Consumer) -> anyhow::Result<Infallible> {
    let mut ino = Inotify::init().context("inotify_init1")?;
    let file = c.file().to_path_buf();
    ino.watches()
        .add(&file, WatchMask::MODIFY | WatchMask::DELETE_SELF)
        .with_context(|| format!("inotify_add_watch {file:?}"))?;
    c.open()?;
    c.ready()?;
    let mut buf = [0u8; EVENT_BUF];
    loop {
        if !c.wait(Some(ino.as_fd()), None)? {
            continue;
        }
        for ev in read_events(&mut ino, &mut buf).context("read inotify events")? {
            if ev
                .mask
                .intersects(EventMask::MODIFY | EventMask::DELETE_SELF)
            {
                c.open()?;
            }
        }
    }
}

/// Re-reads every period, on a fixed schedule (a late turn does not shift later ones,
/// unless a whole period was missed).
fn timer_poller(c: &mut Consumer) -> anyhow::Result<Infallible> {
    let period = c.period();
    anyhow::ensure!(!period.is_zero(), "the period must not be zero");
    c.open()?;
    c.ready()?;
    let mut next = std::time::Instant::now() + period;
    loop {
        let now = std::time::Instant::now();
        if now < next {
            c.wait(None, Some(next - now))?;
            continue;
        }
        c.open()?;
        next += period;
        if next <= now {
            next = now + period;
        }
    }
}

/// Reads its configuration at start and keeps it.
fn read_once(c: &mut Consumer) -> anyhow::Result<Infallible> {
    c.open()?;
    c.ready()?;
    loop {
        c.wait(None, None)?;
    }
}

#[cfg(test)]
mod tests {
    use clap::ValueEnum as _;

    use super::*;

    #[test]
    fn names_match_the_command_line() {
        for s in Strategy::ALL {
            let v = s.to_possible_value().unwrap();
            assert_eq!(v.get_name(), s.name());
            assert_eq!(Strategy::from_str(s.name(), false), Ok(s));
        }
        assert_eq!(Strategy::value_variants(), Strategy::ALL);
    }
}
