//! What a process's fanotify groups mark, read from `/proc/<pid>/fdinfo`, and the
//! lab writer's gate that holds a swap until the agent has marked the new data dir.
//!
//! The agent marks a new timestamped dir when inotify reports its creation, and the
//! kubelet swaps it in 0.1-0.5 ms later; the lab's writer, with no Go runtime and
//! small files, can swap in a few tens of microseconds. A test that checks a reload
//! to the millisecond must not depend on who wins that race, so its writers wait for
//! the mark ([`SwapGate`]); the late case is tested on its own, with the race decided
//! by the test, and measured in `cargo xtask bench reload`, where nothing waits.

use std::{
    os::unix::fs::MetadataExt,
    path::Path,
    sync::{
        Arc,
        atomic::{AtomicU32, Ordering::Relaxed},
    },
    time::{Duration, Instant},
};

/// An inode mark's masks, from the `fanotify ino:` lines of a group's fdinfo.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct InodeMark {
    pub mask: u64,
    pub ignored_mask: u64,
}

/// The union of the inode marks that `pid`'s fanotify groups hold on the inode `path`
/// names now; `None` when the process holds no fanotify group (or is gone).
pub fn inode_mark(pid: u32, path: &Path) -> Option<InodeMark> {
    let want = fdinfo_inode(path);
    let mut found: Option<InodeMark> = None;
    for info in groups(pid) {
        let mut mark = found.unwrap_or_default();
        for line in info.lines().filter(|l| l.starts_with("fanotify ino:")) {
            if want.as_deref().is_some_and(|w| line.contains(w)) {
                mark.mask |= field(line, "mask:");
                mark.ignored_mask |= field(line, "ignored_mask:");
            }
        }
        found = Some(mark);
    }
    found
}

/// `ino:<hex> sdev:<hex> `, as inotify and fanotify fdinfo name the inode `path` names
/// now (for a mount point: the mounted root, not the dir it covers).
pub fn fdinfo_inode(path: &Path) -> Option<String> {
    let m = std::fs::metadata(path).ok()?;
    // fdinfo prints the kernel's dev_t: major << 20 | minor.
    let (major, minor) = (libc::major(m.dev()) as u64, libc::minor(m.dev()) as u64);
    Some(format!("ino:{:x} sdev:{:x} ", m.ino(), major << 20 | minor))
}

/// The fdinfo of each fanotify group `pid` holds.
fn groups(pid: u32) -> Vec<String> {
    fdinfos(pid, "anon_inode:[fanotify]")
}

/// The fdinfo of each fd of `pid` whose link reads `link` (`anon_inode:inotify`,
/// `anon_inode:[fanotify]`).
pub fn fdinfos(pid: u32, link: &str) -> Vec<String> {
    let Ok(fds) = std::fs::read_dir(format!("/proc/{pid}/fd")) else {
        return Vec::new();
    };
    fds.flatten()
        .filter(|fd| std::fs::read_link(fd.path()).is_ok_and(|t| t.as_os_str() == link))
        .filter_map(|fd| {
            let name = fd.file_name();
            std::fs::read_to_string(format!("/proc/{pid}/fdinfo/{}", name.to_string_lossy())).ok()
        })
        .collect()
}

/// What `pid`'s inotify watches say of a new data dir `ts_path`: whether one is on its
/// volume dir (the agent's walker follows that volume, so it will mark the dir),
/// whether one reports opens in `ts_path` itself, and whether any reports opens at all
/// (`IN_OPEN`: the agent measures reloads without fanotify, watching data dirs so).
fn inotify_view(pid: u32, ts_path: &Path) -> (bool, bool, bool) {
    let volume = ts_path.parent().and_then(fdinfo_inode);
    let here = fdinfo_inode(ts_path);
    let (mut on_volume, mut opens_here, mut opens_any) = (false, false, false);
    for info in fdinfos(pid, "anon_inode:inotify") {
        for line in info.lines().filter(|l| l.starts_with("inotify wd:")) {
            let on = |w: &Option<String>| w.as_deref().is_some_and(|w| line.contains(w));
            let opens = field(line, "mask:") & u64::from(libc::IN_OPEN) != 0;
            on_volume |= on(&volume);
            opens_here |= opens && on(&here);
            opens_any |= opens;
        }
    }
    (on_volume, opens_here, opens_any)
}

fn field(line: &str, name: &str) -> u64 {
    (line.split_whitespace())
        .find_map(|f| f.strip_prefix(name))
        .and_then(|v| u64::from_str_radix(v, 16).ok())
        .unwrap_or(0)
}

/// How often a gated swap looks for the mark: each look reads the fdinfo of every
/// fanotify and inotify fd of the process.
const GATE_POLL: Duration = Duration::from_micros(200);

/// How long a gated swap waits for the mark before going ahead without it.
const GATE_TIMEOUT: Duration = Duration::from_secs(5);

/// The process whose marks every gate of this process waits for when it has none of
/// its own ([`SwapGate::wait_everywhere_for_marks_of`]).
static EVERYWHERE: AtomicU32 = AtomicU32::new(0);

/// Shared by a [`super::LabNode`] and its writers: when set to a process that follows
/// the volume (an inotify watch on the volume dir) and measures reloads, each writer
/// holds its swap until that process watches opens in the new data dir (a fanotify
/// mark, or an inotify `IN_OPEN` watch where it measures without fanotify), or
/// [`GATE_TIMEOUT`] has passed (logged).
#[derive(Clone, Debug, Default)]
pub struct SwapGate(Arc<AtomicU32>);

impl SwapGate {
    /// Swaps wait for the marks of `pid` from now on.
    pub fn wait_for_marks_of(&self, pid: u32) {
        self.0.store(pid, Relaxed);
    }

    /// Every gate of this process without a process of its own waits for the marks of
    /// `pid` (an agent running in this process: its tests' writers need no node).
    pub fn wait_everywhere_for_marks_of(pid: u32) {
        EVERYWHERE.store(pid, Relaxed);
    }

    pub(super) fn before_swap(&self, ts_path: &Path) {
        let pid = match self.0.load(Relaxed) {
            0 => EVERYWHERE.load(Relaxed),
            pid => pid,
        };
        if pid == 0 {
            return;
        }
        let deadline = Instant::now() + GATE_TIMEOUT;
        loop {
            let (on_volume, opens_here, opens_any) = inotify_view(pid, ts_path);
            if !on_volume {
                return;
            }
            match inode_mark(pid, ts_path) {
                Some(m) if m.mask & libc::FAN_OPEN != 0 => return,
                Some(_) => {}
                None if opens_here || !opens_any => return,
                None => {}
            }
            if Instant::now() >= deadline {
                tracing::warn!(dir = ?ts_path, pid, "the new data dir is still not watched for opens; swapping");
                return;
            }
            std::thread::sleep(GATE_POLL);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fields_are_read_as_hex() {
        let line =
            "fanotify ino:2b sdev:800013 mflags:0 mask:1000020 ignored_mask:0 fhandle-bytes:8";
        assert_eq!(field(line, "mask:"), 0x100_0020);
        assert_eq!(field(line, "ignored_mask:"), 0);
        assert_eq!(field(line, "absent:"), 0);
    }

    #[test]
    fn a_process_without_fanotify_has_no_marks() {
        // Not this process: other tests here hold fanotify groups.
        let mut child = std::process::Command::new("sleep")
            .arg("60")
            .spawn()
            .unwrap();
        let dir = tempfile::tempdir().unwrap();
        assert_eq!(inode_mark(child.id(), dir.path()), None);
        // The gate does not wait for a process that follows no volume.
        let gate = SwapGate::default();
        gate.wait_for_marks_of(child.id());
        let t = Instant::now();
        gate.before_swap(dir.path());
        assert!(t.elapsed() < GATE_TIMEOUT);
        child.kill().unwrap();
        child.wait().unwrap();
    }
}
