//! The fanotify source: which process opened which file of a volume.
//!
//! One notification-only group that reports directory file handles and names
//! (`FAN_REPORT_DIR_FID | FAN_REPORT_NAME`): each event names the file's parent dir by
//! its file handle and the file by its name, and carries no file descriptor, so the agent
//! never holds a Secret file open and never reads one.
//!
//! A volume's timestamped data dir gets an inode mark (`FAN_EVENT_ON_CHILD`), on tmpfs
//! and disk alike: a dir mark is not recursive, and sees opens made through `..data`, a
//! user-visible symlink or a container's bind mount only because those resolve to a
//! file whose parent is that real dir. With `--settled-marks ignore`, each tmpfs volume
//! also gets a filesystem mark and each consumer's bind mount a mount mark, and a settled
//! data dir an ignore mask; with `auto` (the default), the mount marks and ignore masks
//! on the volumes a consumer watches (see `crate::opens`).
//!
//! Every event's pid is the opener's tgid as the agent's pid namespace sees it: the
//! host's, for an agent running with the host pid namespace.
//!
//! Marks belong to the group: dropping the `Fanotify` removes them all. An inode mark
//! also goes when its dir is deleted (the kubelet removing an old timestamped dir), and
//! a filesystem mark when the tmpfs is unmounted for good.

mod parse;
#[cfg(test)]
mod tests;

use std::{
    ffi::{CString, OsString},
    io,
    os::{
        fd::{AsRawFd, FromRawFd, OwnedFd},
        unix::ffi::OsStrExt,
    },
    path::Path,
    sync::Arc,
};

pub(crate) use parse::parse;
use tokio::io::{Interest, unix::AsyncFd};

/// A directory's identity as fanotify reports it: filesystem id + file handle.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct DirId {
    pub fsid: [i32; 2],
    pub handle_type: i32,
    pub handle: Vec<u8>,
}

impl DirId {
    /// `name_to_handle_at(AT_FDCWD, path, .., 0)` + `statfs(path).f_fsid`: equal to
    /// what events carry for that dir. A final symlink is not followed (it would name
    /// the symlink, which never appears in an event): pass the real dir.
    pub fn of(path: &Path) -> io::Result<DirId> {
        const MAX: usize = libc::MAX_HANDLE_SZ as usize;
        /// `struct file_handle` followed by room for its largest `f_handle`.
        #[repr(C)]
        struct HandleBuf {
            head: libc::file_handle,
            bytes: [u8; MAX],
        }
        let c = cpath(path)?;
        let mut buf = HandleBuf {
            head: libc::file_handle {
                handle_bytes: MAX as libc::c_uint,
                handle_type: 0,
                f_handle: [],
            },
            bytes: [0; MAX],
        };
        let mut mount_id: libc::c_int = 0;
        // SAFETY: `c` is NUL-terminated; `buf.head` is followed by MAX bytes, as its
        // `handle_bytes` says.
        let rc = unsafe {
            libc::name_to_handle_at(libc::AT_FDCWD, c.as_ptr(), &mut buf.head, &mut mount_id, 0)
        };
        if rc < 0 {
            return Err(context(
                io::Error::last_os_error(),
                "name_to_handle_at",
                path,
            ));
        }
        let len = (buf.head.handle_bytes as usize).min(MAX);
        // SAFETY: all-zero is a valid `statfs`; `c` is NUL-terminated.
        let mut st: libc::statfs = unsafe { std::mem::zeroed() };
        if unsafe { libc::statfs(c.as_ptr(), &mut st) } < 0 {
            return Err(context(io::Error::last_os_error(), "statfs", path));
        }
        // SAFETY: `fsid_t` is the kernel's `__kernel_fsid_t`, two C ints (its field is
        // private in libc); transmute checks the sizes.
        let fsid: [i32; 2] = unsafe { std::mem::transmute(st.f_fsid) };
        Ok(DirId {
            fsid,
            handle_type: buf.head.handle_type,
            handle: buf.bytes[..len].to_vec(),
        })
    }
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum FanEvent {
    /// A file named `name` in directory `dir` was opened by process `pid` (tgid, host
    /// pid namespace).
    Open {
        pid: i32,
        dir: DirId,
        name: OsString,
    },
    /// The kernel queue overflowed: events were lost.
    Overflow,
}

/// Bytes read per `read(2)`: room for hundreds of events.
const BUF_LEN: usize = 64 * 1024;
/// Reads per [`Fanotify::read`] call at most, so that a flood of opens cannot keep one
/// call (and its memory) growing; what is left is returned by the next call at once.
/// 64 reads (4 MiB) hold a full default queue (16384 events) unless names are long.
const MAX_READS: usize = 64;

const INIT_FLAGS: libc::c_uint = libc::FAN_CLASS_NOTIF
    | libc::FAN_CLOEXEC
    | libc::FAN_NONBLOCK
    | libc::FAN_REPORT_DIR_FID
    | libc::FAN_REPORT_NAME;
/// Paths to mark are never followed out of the tree through a final symlink, and must be
/// dirs: a filesystem mark taken through a symlink could land on the node's root disk.
const PATH_FLAGS: libc::c_uint = libc::FAN_MARK_DONT_FOLLOW | libc::FAN_MARK_ONLYDIR;

const NEEDS_CAP: &str = "fanotify needs CAP_SYS_ADMIN in the initial user namespace \
     (run the agent privileged or grant it CAP_SYS_ADMIN)";

/// A fanotify group that reports opens as [`FanEvent`]s. Dropping it removes its marks.
pub struct Fanotify {
    fd: AsyncFd<Arc<OwnedFd>>,
    buf: Vec<u8>,
}

/// A handle that places directory marks in a [`Fanotify`] group from another task: the
/// inotify walker marks a new timestamped dir the moment it sees it created, before the
/// kubelet's swap, with no queue in between.
#[derive(Clone)]
pub struct Marker(Arc<OwnedFd>);

impl Marker {
    /// As [`Fanotify::mark_dir`].
    pub fn mark_dir(&self, dir: &Path) -> io::Result<()> {
        mark(
            self.0.as_raw_fd(),
            libc::FAN_MARK_ADD,
            DIR_MASK,
            dir,
            "add dir",
        )
    }
}

impl Fanotify {
    /// `fanotify_init(FAN_CLASS_NOTIF | FAN_CLOEXEC | FAN_NONBLOCK | FAN_REPORT_DIR_FID |
    /// FAN_REPORT_NAME, O_RDONLY | O_CLOEXEC)`.
    ///
    /// Needs CAP_SYS_ADMIN: without it the kernel (>= 5.13) still makes an unprivileged
    /// group, which may not take filesystem marks and sees pid 0 for other processes, so
    /// this checks for it and fails with `PermissionDenied` saying so. Must be called
    /// inside a tokio runtime with IO enabled.
    pub fn new() -> io::Result<Fanotify> {
        if tokio::runtime::Handle::try_current().is_err() {
            return Err(io::Error::other(
                "Fanotify::new must be called inside a tokio runtime",
            ));
        }
        let flags = (libc::O_RDONLY | libc::O_CLOEXEC) as libc::c_uint;
        // SAFETY: plain syscall, no pointers.
        let raw = unsafe { libc::fanotify_init(INIT_FLAGS, flags) };
        if raw < 0 {
            let e = io::Error::last_os_error();
            return Err(match e.raw_os_error() {
                Some(libc::EPERM) => io::Error::new(
                    io::ErrorKind::PermissionDenied,
                    format!("fanotify_init: {e}: {NEEDS_CAP}"),
                ),
                Some(libc::EINVAL) => io::Error::new(
                    e.kind(),
                    format!(
                        "fanotify_init: {e}: the kernel lacks FAN_REPORT_DIR_FID|FAN_REPORT_NAME (Linux >= 5.9)"
                    ),
                ),
                _ => io::Error::new(e.kind(), format!("fanotify_init: {e}")),
            });
        }
        // SAFETY: `raw` is a new fd that nothing else owns.
        let fd = unsafe { OwnedFd::from_raw_fd(raw) };
        probe_privilege(&fd)?;
        // SAFETY: the OwnedFd is valid and stays open, the same fd, until the AsyncFd and
        // every Marker drop (they share it).
        let fd = unsafe { AsyncFd::register_with_interest(Arc::new(fd), Interest::READABLE) }
            .map_err(io::Error::from)?;
        Ok(Fanotify {
            fd,
            buf: vec![0; BUF_LEN],
        })
    }

    /// `FAN_MARK_ADD | FAN_MARK_FILESYSTEM`, mask `FAN_OPEN`: every open on the
    /// filesystem holding `path` (used for each tmpfs volume with `--settled-marks
    /// ignore`). The mark is per filesystem: two paths on one filesystem share it, and
    /// one unmark removes it.
    pub fn mark_filesystem(&self, path: &Path) -> io::Result<()> {
        self.mark(
            libc::FAN_MARK_ADD | libc::FAN_MARK_FILESYSTEM,
            libc::FAN_OPEN,
            path,
            "add filesystem",
        )
    }

    /// `FAN_MARK_REMOVE | FAN_MARK_FILESYSTEM`. `NotFound` when there is no such mark.
    pub fn unmark_filesystem(&self, path: &Path) -> io::Result<()> {
        self.mark(
            libc::FAN_MARK_REMOVE | libc::FAN_MARK_FILESYSTEM,
            libc::FAN_OPEN,
            path,
            "remove filesystem",
        )
    }

    /// Inode mark on a directory, `FAN_OPEN | FAN_EVENT_ON_CHILD`: opens of files
    /// directly in it, through any mount (used for a volume's timestamped dirs). `dir`
    /// must be the real dir, not `..data`: a symlink is refused (`ENOTDIR`).
    pub fn mark_dir(&self, dir: &Path) -> io::Result<()> {
        self.mark(libc::FAN_MARK_ADD, DIR_MASK, dir, "add dir")
    }

    /// Mount mark, `FAN_OPEN`: every open made through the mount holding `path`, for
    /// instead a container's bind mount of a volume reached through `/proc/<pid>/root`.
    /// It sees the container's opens in every data dir, old or new, with no mark to
    /// place at each update.
    pub fn mark_mount(&self, path: &Path) -> io::Result<()> {
        self.mark(
            libc::FAN_MARK_ADD | libc::FAN_MARK_MOUNT,
            libc::FAN_OPEN,
            path,
            "add mount",
        )
    }

    /// `FAN_MARK_REMOVE | FAN_MARK_MOUNT`. `NotFound` when there is no such mark.
    pub fn unmark_mount(&self, path: &Path) -> io::Result<()> {
        self.mark(
            libc::FAN_MARK_REMOVE | libc::FAN_MARK_MOUNT,
            libc::FAN_OPEN,
            path,
            "remove mount",
        )
    }

    /// Ignores opens of the files directly in `dir`, for every mark of the group (a
    /// filesystem or mount mark included): `FAN_MARK_IGNORE` with `FAN_OPEN |
    /// FAN_EVENT_ON_CHILD` on the dir (Linux >= 6.0), else, on older kernels, an ignore
    /// mask on each file in it. Used on a volume's data dir once every consumer has it:
    /// its files are never written again, and the next update's files are new inodes
    /// the ignore does not cover, so nothing has to happen in time at the next swap.
    pub fn ignore_dir(&self, dir: &Path) -> io::Result<()> {
        match self.mark(IGNORE_FLAGS, DIR_MASK, dir, "ignore dir") {
            Err(e) if e.raw_os_error() == Some(libc::EINVAL) => self.ignore_files(dir),
            other => other,
        }
    }

    /// Undoes [`Self::ignore_dir`]. `NotFound` when the dir is gone.
    pub fn unignore_dir(&self, dir: &Path) -> io::Result<()> {
        let flags = libc::FAN_MARK_REMOVE | libc::FAN_MARK_IGNORE;
        match self.mark(flags, DIR_MASK, dir, "unignore dir") {
            Err(e) if e.raw_os_error() == Some(libc::EINVAL) => self.unignore_files(dir),
            other => other,
        }
    }

    /// [`Self::ignore_dir`] before Linux 6.0: `FAN_MARK_IGNORED_MASK` (`FAN_OPEN`,
    /// surviving modification) on each regular file directly in `dir`.
    pub fn ignore_files(&self, dir: &Path) -> io::Result<()> {
        let flags = libc::FAN_MARK_ADD | libc::FAN_MARK_IGNORED_MASK;
        self.each_file(
            dir,
            flags | libc::FAN_MARK_IGNORED_SURV_MODIFY,
            "ignore file",
        )
    }

    pub fn unignore_files(&self, dir: &Path) -> io::Result<()> {
        let flags = libc::FAN_MARK_REMOVE | libc::FAN_MARK_IGNORED_MASK;
        self.each_file(dir, flags, "unignore file")
    }

    /// Marks each regular file directly in `dir` (read from its entries; no file is
    /// opened). A file that vanished meanwhile is skipped.
    fn each_file(&self, dir: &Path, flags: libc::c_uint, what: &str) -> io::Result<()> {
        for entry in std::fs::read_dir(dir).map_err(|e| context(e, "read_dir", dir))? {
            let entry = entry.map_err(|e| context(e, "read_dir", dir))?;
            if !entry.file_type().is_ok_and(|t| t.is_file()) {
                continue;
            }
            let c = cpath(&entry.path())?;
            let flags = flags | libc::FAN_MARK_DONT_FOLLOW;
            // SAFETY: `c` is NUL-terminated; the group fd is ours.
            let rc = unsafe {
                libc::fanotify_mark(
                    self.fd.as_raw_fd(),
                    flags,
                    libc::FAN_OPEN,
                    libc::AT_FDCWD,
                    c.as_ptr(),
                )
            };
            let e = io::Error::last_os_error();
            if rc < 0 && e.kind() != io::ErrorKind::NotFound {
                return Err(context(
                    e,
                    &format!("fanotify_mark ({what})"),
                    &entry.path(),
                ));
            }
        }
        Ok(())
    }

    /// Removes `mark_dir`'s mark. `NotFound` when the dir is gone or has no mark.
    pub fn unmark_dir(&self, dir: &Path) -> io::Result<()> {
        self.mark(libc::FAN_MARK_REMOVE, DIR_MASK, dir, "remove dir")
    }

    fn mark(&self, flags: libc::c_uint, mask: u64, path: &Path, what: &str) -> io::Result<()> {
        mark(self.fd.as_raw_fd(), flags, mask, path, what)
    }

    /// A handle for placing directory marks from another task.
    pub fn marker(&self) -> Marker {
        Marker(self.fd.get_ref().clone())
    }

    /// Waits until events are readable, then drains what is available (non-blocking
    /// reads until `EAGAIN`, at most 64 reads of 64 KiB). Returns at least one event;
    /// records it does not know are skipped. `FAN_Q_OVERFLOW` gives [`FanEvent::Overflow`].
    pub async fn read(&mut self) -> io::Result<Vec<FanEvent>> {
        let mut events = Vec::new();
        loop {
            let mut guard = self.fd.readable().await?;
            for _ in 0..MAX_READS {
                let buf = &mut self.buf;
                match guard.try_io(|fd| read_fd(fd.as_raw_fd(), buf)) {
                    // Not something fanotify returns; clear readiness rather than spin.
                    Ok(Ok(0)) => {
                        guard.clear_ready();
                        break;
                    }
                    Ok(Ok(n)) => events.extend(parse(&buf[..n])),
                    Ok(Err(e)) if e.kind() == io::ErrorKind::Interrupted => {}
                    Ok(Err(e)) if events.is_empty() => {
                        return Err(context(e, "read", Path::new("fanotify")));
                    }
                    // Hand over what was read; a lasting error comes back on the next call.
                    Ok(Err(_)) => break,
                    // EAGAIN: drained, and tokio's readiness is cleared.
                    Err(_would_block) => break,
                }
            }
            if !events.is_empty() {
                return Ok(events);
            }
        }
    }
}

const DIR_MASK: u64 = libc::FAN_OPEN | libc::FAN_EVENT_ON_CHILD;
/// An ignore mask that applies to events on the dir's children (`FAN_MARK_IGNORE`,
/// unlike the older `FAN_MARK_IGNORED_MASK`, honours `FAN_EVENT_ON_CHILD`).
const IGNORE_FLAGS: libc::c_uint =
    libc::FAN_MARK_ADD | libc::FAN_MARK_IGNORE | libc::FAN_MARK_IGNORED_SURV_MODIFY;

/// `fanotify_mark` on `path` (never followed, a dir), `EPERM` explained.
fn mark(
    fd: libc::c_int,
    flags: libc::c_uint,
    mask: u64,
    path: &Path,
    what: &str,
) -> io::Result<()> {
    let c = cpath(path)?;
    // SAFETY: `c` is NUL-terminated; the group fd is ours.
    let rc =
        unsafe { libc::fanotify_mark(fd, flags | PATH_FLAGS, mask, libc::AT_FDCWD, c.as_ptr()) };
    if rc < 0 {
        let e = io::Error::last_os_error();
        let op = format!("fanotify_mark ({what})");
        if e.raw_os_error() == Some(libc::EPERM) {
            return Err(io::Error::new(
                io::ErrorKind::PermissionDenied,
                format!("{op} {}: {e}: {NEEDS_CAP}", path.display()),
            ));
        }
        return Err(context(e, &op, path));
    }
    Ok(())
}

/// Whether the group is privileged, as the kernel decided at `fanotify_init`: an
/// unprivileged group gets `EPERM` for any filesystem mark, before the path is even
/// looked at. Removing a mark the new group cannot have changes nothing either way.
fn probe_privilege(fd: &OwnedFd) -> io::Result<()> {
    // SAFETY: static NUL-terminated path; the group fd is ours.
    let rc = unsafe {
        libc::fanotify_mark(
            fd.as_raw_fd(),
            libc::FAN_MARK_REMOVE | libc::FAN_MARK_FILESYSTEM,
            libc::FAN_OPEN,
            libc::AT_FDCWD,
            c"/".as_ptr(),
        )
    };
    if rc < 0 && io::Error::last_os_error().raw_os_error() == Some(libc::EPERM) {
        return Err(io::Error::new(
            io::ErrorKind::PermissionDenied,
            format!("fanotify: the kernel made an unprivileged group: {NEEDS_CAP}"),
        ));
    }
    Ok(())
}

fn read_fd(fd: libc::c_int, buf: &mut [u8]) -> io::Result<usize> {
    // SAFETY: `buf` is valid for `buf.len()` bytes.
    let n = unsafe { libc::read(fd, buf.as_mut_ptr().cast(), buf.len()) };
    if n < 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(n as usize)
    }
}

fn cpath(path: &Path) -> io::Result<CString> {
    CString::new(path.as_os_str().as_bytes()).map_err(|_| {
        io::Error::new(
            io::ErrorKind::InvalidInput,
            format!("path has a NUL byte: {}", path.display()),
        )
    })
}

/// Keeps the error's kind and says which call on which path failed.
fn context(e: io::Error, op: &str, path: &Path) -> io::Error {
    io::Error::new(e.kind(), format!("{op} {}: {e}", path.display()))
}
