//! What the agent cannot see, counted: paths under the kubelet roots it could not
//! watch or list now, by reason (`reloadscope_unwatched_paths`), operations that
//! failed for want of descriptors (`reloadscope_fd_exhausted_total`), and connections
//! closed to keep the server's cap (`reloadscope_http_connections_evicted_total`).
//! /readyz fails while a path is not followed.

use std::{
    io,
    sync::atomic::{AtomicU64, AtomicUsize, Ordering::Relaxed},
};

/// Why a path is not followed.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Reason {
    /// `inotify_add_watch` said ENOSPC: `fs.inotify.max_user_watches` is reached.
    WatchLimit,
    /// EMFILE or ENFILE: the descriptor limit (the agent's or the system's).
    FdLimit,
    /// ENOMEM.
    Memory,
    /// EACCES or EPERM.
    Permission,
    /// Anything else.
    Other,
}

impl Reason {
    pub const ALL: [Reason; 5] = [
        Reason::WatchLimit,
        Reason::FdLimit,
        Reason::Memory,
        Reason::Permission,
        Reason::Other,
    ];

    pub fn of(e: &io::Error) -> Reason {
        match e.raw_os_error() {
            Some(libc::ENOSPC) => Reason::WatchLimit,
            Some(libc::EMFILE | libc::ENFILE) => Reason::FdLimit,
            Some(libc::ENOMEM) => Reason::Memory,
            Some(libc::EACCES | libc::EPERM) => Reason::Permission,
            _ => Reason::Other,
        }
    }

    pub fn label(self) -> &'static str {
        match self {
            Reason::WatchLimit => "watch_limit",
            Reason::FdLimit => "fd_limit",
            Reason::Memory => "memory",
            Reason::Permission => "permission",
            Reason::Other => "other",
        }
    }

    /// What to do about it, for the one log line that says it.
    pub fn fix(self) -> String {
        match self {
            Reason::WatchLimit => format!(
                "the inotify watch limit is reached (fs.inotify.max_user_watches; {} in the \
                 agent's user namespace): raise it (sysctl -w fs.inotify.max_user_watches=N; \
                 README, Limits, says how many a node needs)",
                // The limit in force: the user namespace's own, which is the sysctl's in
                // the initial one.
                read_sysctl("/proc/sys/user/max_inotify_watches")
            ),
            // No sysctl read: that would take a descriptor.
            Reason::FdLimit => format!(
                "out of file descriptors (the agent's RLIMIT_NOFILE is {}): raise the container \
                 runtime's nofile limit (or fs.file-max, when the node's are all taken)",
                crate::limits::nofile(),
            ),
            Reason::Memory => "the kernel is out of memory for watches".into(),
            Reason::Permission => {
                "permission denied: the agent needs CAP_DAC_READ_SEARCH (or root) to read the \
                 kubelet's dirs"
                    .into()
            }
            Reason::Other => "see the error".into(),
        }
    }
}

fn read_sysctl(path: &str) -> String {
    std::fs::read_to_string(path).map_or_else(|_| "unknown".into(), |s| s.trim().to_owned())
}

#[derive(Default)]
pub struct Blind {
    unwatched: [AtomicUsize; 5],
    fd_exhausted: AtomicU64,
    http_evicted: AtomicU64,
}

impl Blind {
    /// The walker's count of the paths it does not follow for `reason`.
    pub fn set_unwatched(&self, reason: Reason, n: usize) {
        self.unwatched[reason as usize].store(n, Relaxed);
    }

    pub fn unwatched(&self, reason: Reason) -> usize {
        self.unwatched[reason as usize].load(Relaxed)
    }

    /// The reasons some path is not followed for, with how many.
    pub fn not_followed(&self) -> Vec<(Reason, usize)> {
        (Reason::ALL.into_iter())
            .map(|r| (r, self.unwatched(r)))
            .filter(|(_, n)| *n > 0)
            .collect()
    }

    pub fn fd_exhausted(&self) {
        self.fd_exhausted.fetch_add(1, Relaxed);
    }

    pub fn fd_exhausted_total(&self) -> u64 {
        self.fd_exhausted.load(Relaxed)
    }

    pub fn http_evicted(&self) {
        self.http_evicted.fetch_add(1, Relaxed);
    }

    pub fn http_evicted_total(&self) -> u64 {
        self.http_evicted.load(Relaxed)
    }
}
