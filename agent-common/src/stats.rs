//! Counters the probe keeps in a per-CPU array, indexed by these constants.

/// Entries that passed the in-kernel `..data` / `..data_tmp` name filter.
pub const MATCHED: u32 = 0;
/// Events written to the ring buffer (successful calls that passed the filter).
pub const EMITTED: u32 = 1;
/// Events lost because the ring buffer was full.
pub const LOST: u32 = 2;
/// Filtered calls that returned an error (e.g. `RENAME_NOREPLACE` over `..data`).
pub const FAILED: u32 = 3;
/// Entries that could not be parked until the syscall's exit (in-flight map full).
pub const INFLIGHT_FULL: u32 = 4;
/// Watch events (`inotify_add_watch` / `inotify_rm_watch` calls) written.
pub const WATCH_EMITTED: u32 = 5;
/// Watch events lost because their ring buffer was full.
pub const WATCH_LOST: u32 = 6;
/// Number of counters.
pub const COUNT: u32 = 7;
