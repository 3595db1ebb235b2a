//! The strategies: the ways real applications watch or re-read a mounted ConfigMap or
//! Secret file (docs/design.md 5), each done with the same inotify calls such an
//! application makes, so that the broken ones are broken for the real reason and not
//! because they were told to ignore updates.
//!
//! A strategy reads the file through the consumer's view of it and leaves logging each
//! open, reporting ready and waiting to its [`Host`].

use std::{
    ffi::OsStr,
    io,
    os::fd::{AsFd, BorrowedFd},
    path::PathBuf,
    time::{Duration, Instant},
};

use anyhow::Context as _;
use inotify::{Event, EventMask, Inotify, WatchDescriptor, WatchMask};

use crate::Open;

/// What a strategy reads, as the consumer sees it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Target {
    /// The file: on a whole-volume mount the user-visible symlink `<mount dir>/<key>`,
    /// on a subPath mount the bind-mounted file itself.
    pub file: PathBuf,
    /// The directory the volume is mounted at (whole-volume mount); for a subPath
    /// mount, the directory the file is mounted in.
    pub dir: PathBuf,
    /// Time between two reads of the timer poller.
    pub period: Duration,
}

/// Why [`Host::wait`] returned.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Wake {
    /// The descriptor waited on is readable.
    Readable,
    /// The timeout passed, or a signal interrupted the wait: nothing to read yet.
    Idle,
    /// SIGHUP came: the strategies that reload on it reopen the file, the others
    /// take it as [`Wake::Idle`] (it neither stops nor reloads them).
    Hangup,
    /// The consumer is to stop: the strategy returns.
    Stop,
}

/// The process a strategy runs in: where its opens go and how it waits.
pub trait Host {
    /// Logs one open of the file (made by the strategy with [`Open::read`]).
    fn log_open(&mut self, open: &Open) -> anyhow::Result<()>;

    /// Reports that the watch is in place and the first open is logged.
    fn ready(&mut self) -> anyhow::Result<()>;

    /// Blocks until `fd` is readable, `timeout` (`None`: none) passes, a signal
    /// interrupts, or the consumer is to stop. Whether what is queued on `fd` is
    /// handled before a stop is the host's choice: answering [`Wake::Readable`] while
    /// `fd` is readable handles it first.
    fn wait(
        &mut self,
        fd: Option<BorrowedFd<'_>>,
        timeout: Option<Duration>,
    ) -> anyhow::Result<Wake>;
}

/// How a consumer watches or re-reads its file.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, clap::ValueEnum)]
pub enum Strategy {
    /// inotify on the mounted volume dir; reopens when `..data` is moved in
    /// (IN_MOVED_TO): what the AtomicWriter comment advises.
    DataDirWatcher,
    /// inotify on the file (following symlinks); on IN_DELETE_SELF / IN_IGNORED it
    /// re-adds the watch and reopens (the usual advice for these volumes:
    /// docs/design.md 5).
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
    /// Reads at start and again on each SIGHUP, never on its own: nginx, HAProxy,
    /// Prometheus and most daemons. Gets updates only when something signals it.
    SighupReloader,
}

impl Strategy {
    pub const ALL: [Strategy; 9] = [
        Strategy::DataDirWatcher,
        Strategy::FileRewatcher,
        Strategy::NaiveModify,
        Strategy::DontFollow,
        Strategy::TimestampedDirWatcher,
        Strategy::FileWatcherNoRewatch,
        Strategy::TimerPoller,
        Strategy::ReadOnce,
        Strategy::SighupReloader,
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
            Strategy::SighupReloader => "sighup-reloader",
        }
    }

    /// Whether an application doing this picks up ConfigMap or Secret updates on a
    /// whole-volume mount (docs/design.md 5): every one, not just the first (the file
    /// watcher that never re-adds its watch gets the first update only: false). No
    /// strategy does on a subPath mount.
    pub fn gets_updates(self) -> bool {
        matches!(
            self,
            Strategy::DataDirWatcher | Strategy::FileRewatcher | Strategy::TimerPoller
        )
    }

    /// Sets up the watch, makes the first open, reports ready, then reopens whenever
    /// the strategy says so, until the host says stop (`Ok`) or an error.
    pub fn run(self, target: &Target, host: &mut dyn Host) -> anyhow::Result<()> {
        let mut c = Run { target, host };
        match self {
            Strategy::DataDirWatcher => data_dir_watcher(&mut c),
            Strategy::FileRewatcher => file_rewatcher(&mut c),
            Strategy::NaiveModify => naive_modify(&mut c),
            Strategy::DontFollow => dont_follow(&mut c),
            Strategy::TimestampedDirWatcher => timestamped_dir_watcher(&mut c),
            Strategy::FileWatcherNoRewatch => file_watcher_no_rewatch(&mut c),
            Strategy::TimerPoller => timer_poller(&mut c),
            Strategy::ReadOnce => read_once(&mut c),
            Strategy::SighupReloader => sighup_reloader(&mut c),
        }
    }
}

/// A strategy at work: its target and its host.
struct Run<'a> {
    target: &'a Target,
    host: &'a mut dyn Host,
}

impl Run<'_> {
    fn file(&self) -> PathBuf {
        self.target.file.clone()
    }

    fn dir(&self) -> PathBuf {
        self.target.dir.clone()
    }

    /// Opens and reads the file, and logs it.
    fn open(&mut self) -> anyhow::Result<()> {
        self.host.log_open(&Open::read(&self.target.file))
    }

    /// The first open, then ready.
    fn start(&mut self) -> anyhow::Result<()> {
        self.open()?;
        self.host.ready()
    }

    /// Waits for `ino`, then reads the events queued on it (none after a wake-up with
    /// nothing to read); `None` when the host says stop.
    fn events<'b>(
        &mut self,
        ino: &mut Inotify,
        buf: &'b mut [u8],
    ) -> anyhow::Result<Option<Vec<Event<&'b OsStr>>>> {
        match self.host.wait(Some(ino.as_fd()), None)? {
            Wake::Stop => Ok(None),
            Wake::Idle | Wake::Hangup => Ok(Some(Vec::new())),
            Wake::Readable => match ino.read_events(buf) {
                Ok(events) => Ok(Some(events.collect())),
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => Ok(Some(Vec::new())),
                Err(e) => Err(e).context("read inotify events"),
            },
        }
    }
}

/// Room for a few dozen events with names.
const EVENT_BUF: usize = 4096;

/// configmap-reload and the AtomicWriter's own comment: watch the directory the volume
/// is mounted at and reload when `..data` is renamed into it (the commit point). One
/// reopen per `..data` rename.
fn data_dir_watcher(c: &mut Run<'_>) -> anyhow::Result<()> {
    let mut ino = Inotify::init().context("inotify_init1")?;
    let dir = c.dir();
    ino.watches()
        .add(&dir, WatchMask::MOVED_TO)
        .with_context(|| format!("inotify_add_watch {dir:?}"))?;
    c.start()?;
    let mut buf = [0u8; EVENT_BUF];
    while let Some(events) = c.events(&mut ino, &mut buf)? {
        for ev in events {
            if ev.mask.contains(EventMask::MOVED_TO) && ev.name == Some(OsStr::new("..data")) {
                c.open()?;
            }
        }
    }
    Ok(())
}

/// What a file watcher library asks for on a file (fsnotify's set, minus the
/// directory-only events).
const FILE_EVENTS: WatchMask = WatchMask::MODIFY
    .union(WatchMask::CLOSE_WRITE)
    .union(WatchMask::ATTRIB)
    .union(WatchMask::DELETE_SELF)
    .union(WatchMask::MOVE_SELF);

/// The usual advice for these volumes (docs/design.md 5): watch the file (the kernel
/// follows the user-visible symlinks to the real file in the current timestamped dir);
/// reload on a content event; when the watched file goes away (IN_DELETE_SELF, IN_MOVE_SELF, or the
/// IN_IGNORED that ends its watch), drop the broken watch, watch the path again (it now
/// names the new file) and reload. Without the re-add, only the first update would be
/// seen: the watch dies with the old file.
fn file_rewatcher(c: &mut Run<'_>) -> anyhow::Result<()> {
    let mut ino = Inotify::init().context("inotify_init1")?;
    let file = c.file();
    let mut wd: Option<WatchDescriptor> = Some(
        ino.watches()
            .add(&file, FILE_EVENTS)
            .with_context(|| format!("inotify_add_watch {file:?}"))?,
    );
    c.start()?;
    let mut buf = [0u8; EVENT_BUF];
    while let Some(events) = c.events(&mut ino, &mut buf)? {
        for ev in events {
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
    Ok(())
}

/// The habit from ordinary files: watch the file for writes. The kubelet never writes
/// to a file a consumer has: it writes new files in a new dir, so no event ever comes
/// (the watch ends with an IN_IGNORED when the old file is deleted, which this code,
/// like its models, does not look at).
fn naive_modify(c: &mut Run<'_>) -> anyhow::Result<()> {
    watch_file_once(
        c,
        WatchMask::MODIFY | WatchMask::CLOSE_WRITE,
        EventMask::MODIFY | EventMask::CLOSE_WRITE,
    )
}

/// Watches the file (following symlinks) once for `watch`, and reopens it on each
/// event in `reopen_on`; never adds a watch again.
fn watch_file_once(c: &mut Run<'_>, watch: WatchMask, reopen_on: EventMask) -> anyhow::Result<()> {
    let mut ino = Inotify::init().context("inotify_init1")?;
    let file = c.file();
    ino.watches()
        .add(&file, watch)
        .with_context(|| format!("inotify_add_watch {file:?}"))?;
    c.start()?;
    let mut buf = [0u8; EVENT_BUF];
    while let Some(events) = c.events(&mut ino, &mut buf)? {
        for ev in events {
            if ev.mask.intersects(reopen_on) {
                c.open()?;
            }
        }
    }
    Ok(())
}

/// IN_DONT_FOLLOW on the user-visible path watches the symlink `key -> ..data/key`
/// itself, which no update touches: no event, ever. Reloads on any event it gets.
/// (On a subPath mount the path is the bind-mounted old file, not a symlink: the
/// update's unlink of it gives one IN_ATTRIB, and the reopen reads the old content.)
fn dont_follow(c: &mut Run<'_>) -> anyhow::Result<()> {
    let mut ino = Inotify::init().context("inotify_init1")?;
    let file = c.file();
    let mask = WatchMask::DONT_FOLLOW
        | WatchMask::MODIFY
        | WatchMask::ATTRIB
        | WatchMask::DELETE_SELF
        | WatchMask::CLOSE_WRITE;
    ino.watches()
        .add(&file, mask)
        .with_context(|| format!("inotify_add_watch {file:?}"))?;
    c.start()?;
    let mut buf = [0u8; EVENT_BUF];
    while let Some(events) = c.events(&mut ino, &mut buf)? {
        for _ in events {
            c.open()?;
        }
    }
    Ok(())
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
fn timestamped_dir_watcher(c: &mut Run<'_>) -> anyhow::Result<()> {
    let mut ino = Inotify::init().context("inotify_init1")?;
    let data = c.dir().join("..data");
    let target = std::fs::read_link(&data).with_context(|| format!("readlink {data:?}"))?;
    // Relative (`..2026_...`) as the kubelet makes it; joined to the dir the link is in.
    let real = c.dir().join(target);
    let wd = ino
        .watches()
        .add(&real, TIMESTAMPED_DIR_EVENTS)
        .with_context(|| format!("inotify_add_watch {real:?}"))?;
    c.start()?;
    let mut buf = [0u8; EVENT_BUF];
    let asked =
        EventMask::MODIFY | EventMask::CLOSE_WRITE | EventMask::CREATE | EventMask::MOVED_TO;
    while let Some(events) = c.events(&mut ino, &mut buf)? {
        for ev in events {
            if ev.wd == wd && ev.mask.intersects(asked) {
                c.open()?;
            }
        }
    }
    Ok(())
}

/// A file watcher that knows the file can be replaced but not that its watch goes with
/// it: watches the file (following symlinks) for IN_MODIFY | IN_DELETE_SELF and
/// reopens on either. The first update deletes the watched file: IN_DELETE_SELF, a
/// reopen that reads the new content, and the watch is gone (IN_IGNORED, not looked
/// at). It never adds one again: every later update is missed.
fn file_watcher_no_rewatch(c: &mut Run<'_>) -> anyhow::Result<()> {
    watch_file_once(
        c,
        WatchMask::MODIFY | WatchMask::DELETE_SELF,
        EventMask::MODIFY | EventMask::DELETE_SELF,
    )
}

/// Re-reads every period, on a fixed schedule (a late turn does not shift later ones,
/// unless a whole period was missed).
fn timer_poller(c: &mut Run<'_>) -> anyhow::Result<()> {
    let period = c.target.period;
    anyhow::ensure!(!period.is_zero(), "the period must not be zero");
    c.start()?;
    let mut next = Instant::now() + period;
    loop {
        let now = Instant::now();
        if now < next {
            if c.host.wait(None, Some(next - now))? == Wake::Stop {
                return Ok(());
            }
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
fn read_once(c: &mut Run<'_>) -> anyhow::Result<()> {
    c.start()?;
    while c.host.wait(None, None)? != Wake::Stop {}
    Ok(())
}

/// Reads at start, then once per SIGHUP.
fn sighup_reloader(c: &mut Run<'_>) -> anyhow::Result<()> {
    c.start()?;
    loop {
        match c.host.wait(None, None)? {
            Wake::Stop => return Ok(()),
            Wake::Hangup => c.open()?,
            Wake::Idle | Wake::Readable => {}
        }
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

    /// A host that answers its waits from a script, then stops.
    struct Script {
        wakes: Vec<Wake>,
        opens: usize,
    }

    impl Host for Script {
        fn log_open(&mut self, _: &Open) -> anyhow::Result<()> {
            self.opens += 1;
            Ok(())
        }

        fn ready(&mut self) -> anyhow::Result<()> {
            Ok(())
        }

        fn wait(&mut self, _: Option<BorrowedFd<'_>>, _: Option<Duration>) -> anyhow::Result<Wake> {
            Ok(if self.wakes.is_empty() {
                Wake::Stop
            } else {
                self.wakes.remove(0)
            })
        }
    }

    /// The SIGHUP reloader opens once at start and once per hangup, never otherwise;
    /// the others take a hangup for nothing.
    #[test]
    fn only_the_sighup_reloader_reopens_on_sighup() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("key");
        std::fs::write(&file, "v1").unwrap();
        let target = Target {
            file,
            dir: dir.path().to_owned(),
            period: Duration::from_secs(3600),
        };
        let wakes = vec![Wake::Hangup, Wake::Idle, Wake::Hangup, Wake::Readable];
        let opens = |s: Strategy| {
            let mut host = Script {
                wakes: wakes.clone(),
                opens: 0,
            };
            s.run(&target, &mut host).unwrap();
            host.opens
        };
        assert_eq!(opens(Strategy::SighupReloader), 3);
        assert_eq!(opens(Strategy::ReadOnce), 1);
        assert_eq!(opens(Strategy::TimerPoller), 1);
        assert!(!Strategy::SighupReloader.gets_updates());
    }
}
