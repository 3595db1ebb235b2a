//! Measure `marks`: what a fanotify mark set-up costs an open+close of a settled
//! volume's file, for the set-ups the agent could use between updates. No agent, no
//! lab: this process makes the group and its marks, a child process runs the loop
//! (`openloop`), on a file in a timestamped dir of a tmpfs of its own (a Secret
//! volume's layout). Each round runs every set-up once, in an order rotated per round;
//! the ratio of a set-up is the median of its per-round ratios to the round's run
//! with no mark.

use std::{
    ffi::CString,
    fmt::Write as _,
    io,
    os::{
        fd::{AsRawFd, FromRawFd, OwnedFd},
        unix::ffi::OsStrExt,
    },
    path::{Path, PathBuf},
};

use anyhow::{Context as _, bail};

use super::openloop;
use crate::common::figures::{fmt_delta_ns, fmt_ns, median, min_max};

pub struct Params {
    pub rounds: usize,
    pub calls: u64,
}

/// The group's reporting flags: the agent's (directory handle and name), or the
/// file's handle alone.
#[derive(Clone, Copy)]
enum Report {
    DirFid,
    Fid,
}

/// A set-up: what is marked, in one group.
struct Setup {
    what: &'static str,
    group: Option<Report>,
    filesystem: bool,
    /// A dir mark `FAN_OPEN | FAN_EVENT_ON_CHILD` with the same as `FAN_MARK_IGNORE`.
    dir_ignored: bool,
    /// `FAN_MARK_IGNORED_MASK` (`FAN_OPEN`, surviving modification) on the file.
    file_ignored: bool,
    /// A dir mark added, then removed (`--settled-marks remove`).
    dir_removed: bool,
}

const SETUPS: [Setup; 6] = [
    Setup {
        what: "no mark (baseline)",
        group: None,
        filesystem: false,
        dir_ignored: false,
        file_ignored: false,
        dir_removed: false,
    },
    Setup {
        what: "`--settled-marks ignore`: filesystem mark, dir mark with an ignore mask (`FAN_MARK_IGNORE`, on children); directory-handle group",
        group: Some(Report::DirFid),
        filesystem: true,
        dir_ignored: true,
        file_ignored: false,
        dir_removed: false,
    },
    Setup {
        what: "filesystem mark, ignore mask on the file itself (no dir mark); directory-handle group",
        group: Some(Report::DirFid),
        filesystem: true,
        dir_ignored: false,
        file_ignored: true,
        dir_removed: false,
    },
    Setup {
        what: "filesystem mark, ignore mask on the file itself; file-handle group (`FAN_REPORT_FID`: no parent looked up)",
        group: Some(Report::Fid),
        filesystem: true,
        dir_ignored: false,
        file_ignored: true,
        dir_removed: false,
    },
    Setup {
        what: "the file's ignore mask alone; file-handle group",
        group: Some(Report::Fid),
        filesystem: false,
        dir_ignored: false,
        file_ignored: true,
        dir_removed: false,
    },
    Setup {
        what: "`--settled-marks remove`: the dir's mark removed",
        group: Some(Report::DirFid),
        filesystem: false,
        dir_ignored: false,
        file_ignored: false,
        dir_removed: true,
    },
];

/// A tmpfs mounted on a temp dir, unmounted on drop.
struct Tmpfs(tempfile::TempDir);

impl Tmpfs {
    fn new() -> anyhow::Result<Tmpfs> {
        let dir = tempfile::tempdir().context("temp dir")?;
        let (src, fs, target) = (c"tmpfs", c"tmpfs", cstr(dir.path())?);
        // SAFETY: valid C strings; no data.
        let rc = unsafe {
            libc::mount(
                src.as_ptr(),
                target.as_ptr(),
                fs.as_ptr(),
                0,
                std::ptr::null(),
            )
        };
        if rc != 0 {
            return Err(io::Error::last_os_error()).context("mount tmpfs");
        }
        Ok(Tmpfs(dir))
    }
}

impl Drop for Tmpfs {
    fn drop(&mut self) {
        if let Ok(p) = cstr(self.0.path()) {
            // SAFETY: a valid C string.
            unsafe { libc::umount2(p.as_ptr(), libc::MNT_DETACH) };
        }
    }
}

fn cstr(p: &Path) -> anyhow::Result<CString> {
    CString::new(p.as_os_str().as_bytes()).context("path with a NUL")
}

fn mark(g: &OwnedFd, flags: libc::c_uint, mask: u64, path: &Path) -> anyhow::Result<()> {
    let c = cstr(path)?;
    // SAFETY: a valid fd and C string.
    let rc = unsafe { libc::fanotify_mark(g.as_raw_fd(), flags, mask, libc::AT_FDCWD, c.as_ptr()) };
    if rc != 0 {
        return Err(io::Error::last_os_error()).with_context(|| format!("fanotify_mark {path:?}"));
    }
    Ok(())
}

/// Makes `s`'s group and marks; `None` for the baseline.
fn set_up(s: &Setup, root: &Path, dir: &Path, file: &Path) -> anyhow::Result<Option<OwnedFd>> {
    let Some(report) = s.group else {
        return Ok(None);
    };
    let report = match report {
        Report::DirFid => libc::FAN_REPORT_DIR_FID | libc::FAN_REPORT_NAME,
        Report::Fid => libc::FAN_REPORT_FID,
    };
    let flags = libc::FAN_CLASS_NOTIF | libc::FAN_CLOEXEC | libc::FAN_NONBLOCK | report;
    // SAFETY: plain syscall.
    let raw = unsafe { libc::fanotify_init(flags, (libc::O_RDONLY | libc::O_CLOEXEC) as u32) };
    if raw < 0 {
        return Err(io::Error::last_os_error()).context("fanotify_init");
    }
    // SAFETY: a new fd, owned from here on.
    let g = unsafe { OwnedFd::from_raw_fd(raw) };
    let on_child = libc::FAN_OPEN | libc::FAN_EVENT_ON_CHILD;
    let surv = libc::FAN_MARK_IGNORED_SURV_MODIFY;
    if s.filesystem {
        mark(
            &g,
            libc::FAN_MARK_ADD | libc::FAN_MARK_FILESYSTEM,
            libc::FAN_OPEN,
            root,
        )?;
    }
    if s.dir_ignored {
        mark(&g, libc::FAN_MARK_ADD, on_child, dir)?;
        mark(
            &g,
            libc::FAN_MARK_ADD | libc::FAN_MARK_IGNORE | surv,
            on_child,
            dir,
        )?;
    }
    if s.file_ignored {
        let flags = libc::FAN_MARK_ADD | libc::FAN_MARK_IGNORED_MASK | surv;
        mark(&g, flags, libc::FAN_OPEN, file)?;
    }
    if s.dir_removed {
        mark(&g, libc::FAN_MARK_ADD, on_child, dir)?;
        mark(&g, libc::FAN_MARK_REMOVE, on_child, dir)?;
    }
    Ok(Some(g))
}

/// Bytes of events the group queued (0: every open was ignored in the kernel).
fn queued(g: &OwnedFd) -> usize {
    let mut buf = [0u8; 4096];
    let mut total = 0;
    loop {
        // SAFETY: reads into a live buffer of its length.
        let n = unsafe { libc::read(g.as_raw_fd(), buf.as_mut_ptr().cast(), buf.len()) };
        if n <= 0 {
            return total;
        }
        total += n as usize;
    }
}

pub fn run(p: &Params) -> anyhow::Result<String> {
    let fs = Tmpfs::new()?;
    let root = fs.0.path().to_owned();
    let dir = root.join("..2026_01_01_00_00_00.1");
    std::fs::create_dir(&dir).context("data dir")?;
    let file: PathBuf = dir.join("config.yaml");
    std::fs::write(&file, "revision: 0\n").context("file")?;

    let mut ns = vec![Vec::new(); SETUPS.len()];
    for round in 0..p.rounds {
        for k in 0..SETUPS.len() {
            let i = (k + round) % SETUPS.len();
            let g = set_up(&SETUPS[i], &root, &dir, &file)?;
            let took = openloop::measure(&file, p.calls, None)?;
            if let Some(g) = &g
                && queued(g) > 0
            {
                bail!("{}: events were queued, not ignored", SETUPS[i].what);
            }
            ns[i].push(took);
        }
        eprintln!("[reload] marks: round {}/{}", round + 1, p.rounds);
    }

    let mut out = String::new();
    let _ = writeln!(
        out,
        "### What a mark set-up costs an open+close of a settled file\n\n\
         A tmpfs of its own, one file in a timestamped dir; this process holds the group, \
         a child process runs the loop ({} calls after {} unmeasured), {} rounds, every \
         set-up once per round in a rotated order. No event was queued in any set-up.\n\n\
         | marks | open+close | added | / no mark, median of rounds (min-max) | under 1.05x |\n\
         |---|---|---|---|---|",
        p.calls,
        p.calls / 10,
        p.rounds
    );
    let base = &ns[0];
    for (s, v) in SETUPS.iter().zip(&ns) {
        let ratios: Vec<f64> = v.iter().zip(base).map(|(a, b)| a / b).collect();
        let diffs: Vec<f64> = v.iter().zip(base).map(|(a, b)| a - b).collect();
        let (lo, hi) = min_max(&ratios);
        let r = median(&ratios);
        let _ = writeln!(
            out,
            "| {} | {} | {} | {r:.3}x ({lo:.3}x-{hi:.3}x) | {} |",
            s.what,
            fmt_ns(median(v)),
            fmt_delta_ns(median(&diffs)),
            if r < 1.05 { "yes" } else { "**no**" }
        );
    }
    Ok(out)
}
