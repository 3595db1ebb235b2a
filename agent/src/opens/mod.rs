//! The opens source: fanotify `FAN_OPEN` on the volumes' data, attributed to processes.
//!
//! Chosen by measurement (BENCHMARKS.md, docs/design.md 7): eBPF on the open path taxes
//! every open on the node on kernels without fentry; fanotify marks cost nothing
//! outside the marked files and name the opener's host pid.
//!
//! Every data dir gets an inode mark with `FAN_EVENT_ON_CHILD` (a mark on the volume
//! dir would not see opens made through `..data`, so it is the timestamped dir itself):
//! - each new one as soon as inotify reports it created: the walker's reader thread
//!   marks it as it reads the event, before anything is queued (`walker::Reader`).
//!   The kubelet swaps 0.1-0.5 ms after creating the dir; a mark placed after the
//!   swap is counted as late;
//! - the current one of each volume when the agent finds it.
//!
//! What happens once no consumer that reads a volume, or may, lacks its current data
//! and no consumer's first read is awaited (it is settled: `Reloads::settled`) is
//! [`SettledMarks`]' choice, measured in BENCHMARKS.md:
//! - [`SettledMarks::Ignore`]: each tmpfs volume also has a filesystem mark, and each
//!   consumer's own bind mount a mount mark (placed when the consumer is found, through
//!   `/proc/<pid>/root`), which see the container's opens in any data dir with nothing
//!   to place at an update: no reload depends on the race above. A
//!   settled data dir gets an ignore mask (`FAN_MARK_IGNORE`), taken back when a
//!   consumer that lacks it is found; the next update's files are new inodes it does
//!   not cover. Each open of a settled volume's files still costs its opener the
//!   kernel's look at the marks (+0.3-0.8 us here).
//! - [`SettledMarks::Remove`]: no filesystem or mount marks, and a settled data dir's
//!   mark is removed (marked again when a consumer lacking it is found): a settled
//!   volume costs its openers nothing. The price: a consumer's open of new data before
//!   the mark (a late mark) is not seen. It is credited at its next open, or, if it
//!   still holds the file open, at the consumer scan that follows the late mark
//!   (`Reloads::late_mark`); in the lab's accuracy run a `..data` watcher, which
//!   reopens within microseconds of the swap and closes the file, was missed 22 times
//!   in 1000 updates (0 with `Ignore`).
//! - [`SettledMarks::Auto`], the default: `Ignore`'s mount marks and ignore mask on
//!   the volumes some consumer watches with inotify in a way that fires at an update
//!   (the consumers that reload within microseconds), `Remove` on the others (pollers
//!   and read-once consumers read long after the mark). No filesystem marks. Which
//!   volumes are watched follows the watch linter's inventories ([`settled`]).
//!
//! In every mode foreign opens are counted only while the volume is not settled.
//!
//! The group reports directory handles and names, never file descriptors: the agent
//! holds no Secret file open and reads none.

//! The three parts: [`exact`], the fanotify source; [`approximate`], its inotify
//! stand-in where fanotify cannot be had (credited per volume, not per process);
//! [`settled`], which marks a settled volume keeps.

use std::path::PathBuf;

use crate::node::volumes::VolumeKey;

pub mod approximate;
pub mod exact;
mod settled;

pub use approximate::Approx;
pub use exact::Opens;

/// What the agent does with a settled volume's marks (see the module's doc).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, clap::ValueEnum)]
pub enum SettledMarks {
    /// Keep the marks, with an ignore mask on the settled data dir: every reload seen.
    Ignore,
    /// Remove them: no cost between updates; a reload before a late mark is seen only
    /// if the file is still held open.
    Remove,
    /// `ignore` for the volumes some consumer watches with inotify (they reload within
    /// microseconds of an update), `remove` for the others.
    #[default]
    Auto,
}

/// What the state loop tells this source.
#[derive(Debug)]
pub enum Command {
    /// A volume was found; `current` is its data dir.
    Volume {
        key: VolumeKey,
        dir: PathBuf,
        current: Option<String>,
    },
    /// A timestamped dir was created in a volume (an update is under way) and marked
    /// by the walker; `late`: its mark went on after the swap.
    DataDir {
        key: VolumeKey,
        dir: PathBuf,
        ts_dir: String,
        late: bool,
    },
    /// The volume's newest update put `ts_dir` in place. Its creation was not seen
    /// (an inotify overflow, a walk behind): it is marked now, late.
    Swapped {
        key: VolumeKey,
        dir: PathBuf,
        ts_dir: String,
    },
    /// A consumer's bind mount of a volume: its opens are watched there
    /// ([`SettledMarks::Ignore`], and [`SettledMarks::Auto`] while the volume is
    /// watched).
    Consumer {
        key: VolumeKey,
        mount_path: PathBuf,
    },
    /// Whether some consumer of the volume watches it with inotify in a way that fires
    /// at an update ([`SettledMarks::Auto`]).
    Watched {
        key: VolumeKey,
        on: bool,
        /// Its data dir, if every consumer has it.
        settled: Option<PathBuf>,
    },
    Gone {
        key: VolumeKey,
    },
    /// Every consumer of a volume has the data of this dir: its opens are nobody's
    /// reload, so they are ignored or its mark goes ([`SettledMarks`]).
    Settled {
        key: VolumeKey,
        ts_path: PathBuf,
    },
    /// A consumer that has not reloaded it was found: its opens count again.
    Unsettled {
        key: VolumeKey,
        ts_path: PathBuf,
    },
}
