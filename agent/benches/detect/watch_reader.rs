//! The thread that drains the probe's watch-call ring buffer while the overhead loops
//! run, as the agent does.

use std::{
    os::fd::AsRawFd as _,
    sync::{
        Arc,
        atomic::{AtomicBool, AtomicU64, Ordering::Relaxed},
    },
    thread::JoinHandle,
    time::{Duration, Instant},
};

use agent_common::watch_call::DecodedWatch;
use aya::maps::{MapData, RingBuf};

use crate::common::procfs::thread_cpu;

#[derive(Default)]
struct Counts {
    /// Records of this process's calls.
    own: AtomicU64,
    /// Records of other processes' calls (the probe sees the whole node).
    others: AtomicU64,
    undecodable: AtomicU64,
}

/// What a [`WatchReader`] read over its life.
pub struct ReaderTotals {
    pub own: u64,
    pub others: u64,
    pub undecodable: u64,
    /// The reader thread's CPU time (user + system).
    pub cpu: Duration,
}

/// A thread that drains the watch-call ring buffer as the agent's `read_calls` does:
/// wait for its fd to be readable, decode every record, wait again. (The agent then
/// reads the caller's cgroup, once per process; not done here.)
pub struct WatchReader {
    stop: Arc<AtomicBool>,
    counts: Arc<Counts>,
    thread: JoinHandle<Duration>,
}

impl WatchReader {
    pub fn start(mut ring: RingBuf<MapData>) -> Self {
        let stop = Arc::new(AtomicBool::new(false));
        let counts = Arc::new(Counts::default());
        let (stop2, counts2) = (stop.clone(), counts.clone());
        let thread = std::thread::spawn(move || {
            let me = std::process::id();
            loop {
                while let Some(item) = ring.next() {
                    let n = match DecodedWatch::decode(&item) {
                        Ok(w) if w.tgid == me => &counts2.own,
                        Ok(_) => &counts2.others,
                        Err(_) => &counts2.undecodable,
                    };
                    n.fetch_add(1, Relaxed);
                }
                if stop2.load(Relaxed) {
                    return thread_cpu();
                }
                let mut pfd = libc::pollfd {
                    fd: ring.as_raw_fd(),
                    events: libc::POLLIN,
                    revents: 0,
                };
                // SAFETY: one valid pollfd. A timeout so that `stop` is seen.
                unsafe { libc::poll(&mut pfd, 1, 20) };
            }
        });
        WatchReader {
            stop,
            counts,
            thread,
        }
    }

    /// Waits until `want` records of this process were read, or none came for 200 ms;
    /// returns how many were.
    pub fn wait_for(&self, want: u64) -> u64 {
        let mut seen = self.counts.own.load(Relaxed);
        let mut since = Instant::now();
        while seen < want && since.elapsed() < Duration::from_millis(200) {
            std::thread::sleep(Duration::from_millis(1));
            let now = self.counts.own.load(Relaxed);
            if now != seen {
                (seen, since) = (now, Instant::now());
            }
        }
        seen
    }

    pub fn stop(self) -> ReaderTotals {
        self.stop.store(true, Relaxed);
        let cpu = self.thread.join().expect("watch reader thread panicked");
        ReaderTotals {
            own: self.counts.own.load(Relaxed),
            others: self.counts.others.load(Relaxed),
            undecodable: self.counts.undecodable.load(Relaxed),
            cpu,
        }
    }
}
