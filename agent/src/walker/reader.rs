//! The walker's inotify reads, on a thread of their own.
//!
//! A new data dir must be marked for opens before the consumers read it: the kubelet
//! swaps 0.1-0.5 ms after creating the dir (docs/design.md 7) and a `..data` watcher
//! reopens microseconds after the swap. The walker is a task that may wait for its
//! runtime, for the state loop's queue, or for a walk it is making; this thread only
//! blocks in poll(2) on the inotify fd, marks each new data dir of a volume the moment
//! it reads its `IN_CREATE`, then hands the events on in order. Measured in
//! BENCHMARKS.md ("marks placed by the reader thread").

use std::{
    collections::HashMap,
    ffi::OsString,
    io,
    os::fd::{AsRawFd, FromRawFd, OwnedFd},
    path::Path,
    sync::{Arc, Mutex, PoisonError},
};

use inotify::{Event, EventMask, Inotify, WatchDescriptor};
use tokio::sync::mpsc;

use crate::{
    fanotify::Marker,
    node::{
        read_target,
        volumes::{DATA, is_timestamped_dir},
    },
};

/// One event read, and, for a new data dir the thread marked, whether the mark went on
/// after the swap (`Some(late)`).
pub struct Read {
    pub event: Event<OsString>,
    pub marked: Option<bool>,
}

/// The volume dirs the walker watches, by watch descriptor: the thread's only view of
/// the walker's tree. A volume watched a moment before it is here has its first
/// creations marked by the walker instead.
#[derive(Clone, Default)]
pub struct VolumeDirs(Arc<Mutex<HashMap<i32, Arc<Path>>>>);

impl VolumeDirs {
    pub fn insert(&self, wd: &WatchDescriptor, dir: Arc<Path>) {
        self.lock().insert(wd.get_watch_descriptor_id(), dir);
    }

    pub fn remove(&self, wd: &WatchDescriptor) {
        self.lock().remove(&wd.get_watch_descriptor_id());
    }

    fn get(&self, wd: &WatchDescriptor) -> Option<Arc<Path>> {
        self.lock().get(&wd.get_watch_descriptor_id()).cloned()
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<i32, Arc<Path>>> {
        // A panic elsewhere leaves the map as consistent as any insert or remove.
        self.0.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

/// Marks `dir/ts_dir` for opens; returns whether `..data` already pointed to it (the
/// mark came after the swap).
pub fn mark_data_dir(marker: &Marker, dir: &Path, ts_dir: &str) -> bool {
    if let Err(e) = marker.mark_dir(&dir.join(ts_dir)) {
        tracing::debug!(dir = %dir.display(), ts_dir, error = %e, "cannot mark new data dir");
    }
    read_target(&dir.join(DATA)).as_deref() == Some(ts_dir)
}

/// The receiving end. Dropping it stops the thread.
pub struct Reader {
    rx: mpsc::Receiver<io::Result<Vec<Read>>>,
    stop: OwnedFd,
}

/// Batches of up to one 64 KiB read each; a walker that falls this far behind holds
/// the thread in its send, and the kernel queue (and its overflow) takes over.
const QUEUED: usize = 16;
const BUF_LEN: usize = 64 * 1024;

impl Reader {
    /// Starts the thread on `inotify` (the walker keeps adding watches through its
    /// `Watches`). `marker`: the opens source's, when fanotify runs.
    pub fn spawn(inotify: Inotify, dirs: VolumeDirs, marker: Option<Marker>) -> io::Result<Reader> {
        // SAFETY: plain syscall; the fd is checked, then owned.
        let raw = unsafe { libc::eventfd(0, libc::EFD_CLOEXEC | libc::EFD_NONBLOCK) };
        if raw < 0 {
            return Err(io::Error::last_os_error());
        }
        // SAFETY: a new fd, owned from here on.
        let stop = unsafe { OwnedFd::from_raw_fd(raw) };
        let woken = stop.try_clone()?;
        let (tx, rx) = mpsc::channel(QUEUED);
        std::thread::Builder::new()
            .name("inotify-reader".into())
            .spawn(move || read_loop(inotify, woken, dirs, marker, tx))?;
        Ok(Reader { rx, stop })
    }

    /// The next batch; `None` once the thread has ended.
    pub async fn next(&mut self) -> Option<io::Result<Vec<Read>>> {
        self.rx.recv().await
    }
}

impl Drop for Reader {
    fn drop(&mut self) {
        let one = 1u64.to_ne_bytes();
        // SAFETY: writes 8 bytes from a live buffer to an fd this owns.
        unsafe { libc::write(self.stop.as_raw_fd(), one.as_ptr().cast(), one.len()) };
    }
}

fn read_loop(
    mut inotify: Inotify,
    stop: OwnedFd,
    dirs: VolumeDirs,
    marker: Option<Marker>,
    tx: mpsc::Sender<io::Result<Vec<Read>>>,
) {
    let mut buf = vec![0u8; BUF_LEN];
    loop {
        let mut fds = [
            libc::pollfd {
                fd: inotify.as_raw_fd(),
                events: libc::POLLIN,
                revents: 0,
            },
            libc::pollfd {
                fd: stop.as_raw_fd(),
                events: libc::POLLIN,
                revents: 0,
            },
        ];
        // SAFETY: two valid pollfds, their length given.
        if unsafe { libc::poll(fds.as_mut_ptr(), 2, -1) } < 0 {
            let e = io::Error::last_os_error();
            if e.kind() == io::ErrorKind::Interrupted {
                continue;
            }
            let _ = tx.blocking_send(Err(e));
            return;
        }
        if fds[1].revents != 0 {
            return;
        }
        let events = match inotify.read_events(&mut buf) {
            Ok(events) => events,
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => continue,
            Err(e) => {
                let _ = tx.blocking_send(Err(e));
                return;
            }
        };
        let batch: Vec<Read> = events
            .map(|ev| Read {
                marked: (marker.as_ref()).and_then(|m| mark_if_data_dir(m, &dirs, &ev)),
                event: ev.to_owned(),
            })
            .collect();
        if tx.blocking_send(Ok(batch)).is_err() {
            return;
        }
    }
}

/// Marks the new data dir `ev` reports, if it is one; `Some(late)` then.
fn mark_if_data_dir(
    marker: &Marker,
    dirs: &VolumeDirs,
    ev: &Event<&std::ffi::OsStr>,
) -> Option<bool> {
    let name = ev.name?;
    if !ev.mask.contains(EventMask::CREATE | EventMask::ISDIR) || !is_timestamped_dir(name) {
        return None;
    }
    let ts_dir = name.to_str()?;
    let dir = dirs.get(&ev.wd)?;
    Some(mark_data_dir(marker, &dir, ts_dir))
}
