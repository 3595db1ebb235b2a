//! The system-call loops the probe's cost is timed on: `renameat` back and forth,
//! `getppid`, and `inotify_add_watch` + `inotify_rm_watch` pairs (`detect`'s probe
//! overhead and the `overhead` benchmark).

use std::{
    ffi::CString,
    hint::black_box,
    os::{
        fd::{AsRawFd as _, FromRawFd as _, OwnedFd},
        unix::ffi::OsStrExt,
    },
    path::Path,
    time::{Duration, Instant},
};

use anyhow::Context as _;

use super::machine::fs_type;

/// A temp dir for the loops' files, named `<prefix>...`: in /dev/shm when that is a
/// tmpfs, else in the temp dir.
pub fn loop_dir(prefix: &str) -> anyhow::Result<tempfile::TempDir> {
    let shm = Path::new("/dev/shm");
    let parent = if shm.is_dir() && fs_type(shm) == "tmpfs" {
        shm.to_path_buf()
    } else {
        std::env::temp_dir()
    };
    tempfile::Builder::new()
        .prefix(prefix)
        .tempdir_in(&parent)
        .with_context(|| format!("temp dir in {parent:?}"))
}

pub fn cstr(p: &Path) -> anyhow::Result<CString> {
    CString::new(p.as_os_str().as_bytes()).context("path with a NUL byte")
}

/// ns per rename over `n` renames, alternating a→b and b→a.
pub fn rename_loop(a: &CString, b: &CString, n: u64) -> anyhow::Result<f64> {
    let start = Instant::now();
    for _ in 0..n / 2 {
        for (from, to) in [(a, b), (b, a)] {
            // SAFETY: two valid NUL-terminated paths.
            let rc = unsafe {
                libc::syscall(
                    libc::SYS_renameat,
                    libc::AT_FDCWD,
                    from.as_ptr(),
                    libc::AT_FDCWD,
                    to.as_ptr(),
                )
            };
            if rc != 0 {
                return Err(std::io::Error::last_os_error()).context("renameat");
            }
        }
    }
    Ok(start.elapsed().as_nanos() as f64 / (n / 2 * 2) as f64)
}

/// ns per getppid over `n` calls.
pub fn getppid_loop(n: u64) -> f64 {
    let start = Instant::now();
    for _ in 0..n {
        // SAFETY: getppid takes no arguments and cannot fail.
        black_box(unsafe { libc::syscall(libc::SYS_getppid) });
    }
    start.elapsed().as_nanos() as f64 / n as f64
}

/// Pairs between two reads of the inotify fd's queue: each `inotify_rm_watch` queues
/// an `IN_IGNORED` event, and the queue (16384 events by default) must not overflow.
const PAIRS_PER_QUEUE_READ: u64 = 256;

/// One inotify fd and the directory its watches go on.
pub struct Inotify {
    fd: OwnedFd,
    dir: CString,
}

impl Inotify {
    pub fn new(dir: &Path) -> anyhow::Result<Self> {
        // SAFETY: no pointers; the returned fd is checked, then owned.
        let fd = unsafe { libc::inotify_init1(libc::IN_NONBLOCK | libc::IN_CLOEXEC) };
        if fd < 0 {
            return Err(std::io::Error::last_os_error()).context("inotify_init1");
        }
        // SAFETY: a fresh fd nobody else owns.
        let fd = unsafe { OwnedFd::from_raw_fd(fd) };
        Ok(Inotify {
            fd,
            dir: cstr(dir)?,
        })
    }

    /// ns per `inotify_add_watch` + `inotify_rm_watch` pair over `n` pairs. The queue
    /// is read between batches, outside the timed spans.
    pub fn pairs(&self, n: u64) -> anyhow::Result<f64> {
        let fd = self.fd.as_raw_fd();
        let mask = libc::IN_MODIFY | libc::IN_CREATE | libc::IN_DELETE | libc::IN_MOVED_TO;
        let mut timed = Duration::ZERO;
        let mut done = 0;
        while done < n {
            let batch = PAIRS_PER_QUEUE_READ.min(n - done);
            let start = Instant::now();
            for _ in 0..batch {
                // SAFETY: a valid inotify fd and NUL-terminated path.
                let wd = unsafe { libc::inotify_add_watch(fd, self.dir.as_ptr(), mask) };
                if wd < 0 {
                    return Err(std::io::Error::last_os_error()).context("inotify_add_watch");
                }
                // SAFETY: the fd and the watch just added to it.
                if unsafe { libc::inotify_rm_watch(fd, wd) } != 0 {
                    return Err(std::io::Error::last_os_error()).context("inotify_rm_watch");
                }
            }
            timed += start.elapsed();
            done += batch;
            self.empty_queue()?;
        }
        Ok(timed.as_nanos() as f64 / n as f64)
    }

    fn empty_queue(&self) -> anyhow::Result<()> {
        let mut buf = [0u8; 16 << 10];
        loop {
            // SAFETY: `buf` is valid for writes of its length.
            let got =
                unsafe { libc::read(self.fd.as_raw_fd(), buf.as_mut_ptr().cast(), buf.len()) };
            if got < 0 {
                let e = std::io::Error::last_os_error();
                if e.kind() == std::io::ErrorKind::WouldBlock {
                    return Ok(());
                }
                return Err(e).context("read the inotify fd");
            }
        }
    }
}
