//! The agent's state: what its tasks (the walker, the probe's reader, the opens
//! sources, the consumer scan, the Kubernetes client) write and scrapes read, each part
//! behind its own lock or atomic. It holds no logic of its own.

use std::sync::{
    Arc, Mutex,
    atomic::{AtomicBool, AtomicU64, AtomicUsize},
};

use crate::{
    probe::{Probe, ReaderStats},
    updates::Tracker,
};

/// State shared by the agent's tasks and read by scrapes.
pub struct Shared {
    pub tracker: Mutex<Tracker>,
    pub reloads: Mutex<crate::reloads::Reloads>,
    /// What each consumer's inotify watches will do at the next update.
    pub linter: Mutex<crate::linter::Linter>,
    /// What the Kubernetes API says of this node's pods, when one is configured.
    pub meta: crate::kubeapi::Meta,
    /// Updates whose new data dir was marked for open events only after the swap.
    pub late_marks: AtomicU64,
    pub fanotify_overflows: AtomicU64,
    /// Whether opens are attributed with fanotify (CAP_SYS_ADMIN).
    pub fanotify: AtomicBool,
    /// Whether opens are seen with inotify instead, unattributed.
    pub approximate: AtomicBool,
    /// Whether the probe is asked for (not `--probe off`, `--no-ebpf`), and reloads
    /// measured (not `--no-reloads`): what was chosen, beside what loaded.
    pub ebpf_enabled: AtomicBool,
    pub reloads_enabled: AtomicBool,
    pub probe: Mutex<Option<Probe>>,
    pub reader: Arc<ReaderStats>,
    pub overflows: AtomicU64,
    pub watches: Arc<AtomicUsize>,
    /// inotify watches on the cgroup tree (containers starting and stopping) and on data
    /// dirs (approximate opens).
    pub cgroup_watches: Arc<AtomicUsize>,
    pub open_watches: AtomicUsize,
    pub ready: AtomicBool,
    /// Milliseconds on the monotonic clock of the state loop's last turn (liveness).
    pub heartbeat_ms: AtomicU64,
    /// What the agent cannot see now, and why.
    pub blind: Arc<crate::blind::Blind>,
    /// Reload signals sent and not sent (`--reload-signals`). Taken last: code
    /// holding it takes no other lock.
    pub signals: Mutex<crate::signals::Record>,
}

impl Shared {
    pub fn new(tracker: Tracker) -> Self {
        Shared {
            tracker: Mutex::new(tracker),
            reloads: Mutex::default(),
            linter: Mutex::default(),
            meta: crate::kubeapi::Meta::default(),
            late_marks: AtomicU64::new(0),
            fanotify_overflows: AtomicU64::new(0),
            fanotify: AtomicBool::new(false),
            approximate: AtomicBool::new(false),
            ebpf_enabled: AtomicBool::new(true),
            reloads_enabled: AtomicBool::new(true),
            probe: Mutex::new(None),
            reader: Arc::default(),
            overflows: AtomicU64::new(0),
            watches: Arc::default(),
            cgroup_watches: Arc::default(),
            open_watches: AtomicUsize::new(0),
            ready: AtomicBool::new(false),
            heartbeat_ms: AtomicU64::new(0),
            blind: Arc::default(),
            signals: Mutex::default(),
        }
    }

    pub fn ebpf_loaded(&self) -> bool {
        self.probe.lock().expect("probe lock").is_some()
    }
}
