//! Facts about the machine a benchmark runs on, and about this process, for the
//! reports: kernel, CPUs, load, file systems, BPF programs held.

use std::{fs, path::Path};

pub fn cpu_model() -> Option<String> {
    let info = fs::read_to_string("/proc/cpuinfo").ok()?;
    info.lines()
        .find(|l| l.starts_with("model name"))
        .and_then(|l| l.split_once(':'))
        .map(|(_, v)| v.trim().to_owned())
}

pub fn kernel_release() -> String {
    fs::read_to_string("/proc/sys/kernel/osrelease")
        .map(|s| s.trim().to_owned())
        .unwrap_or_else(|_| "unknown".into())
}

pub fn loadavg() -> String {
    fs::read_to_string("/proc/loadavg")
        .map(|s| s.split_whitespace().take(3).collect::<Vec<_>>().join(" "))
        .unwrap_or_else(|_| "unknown".into())
}

pub fn nproc() -> i64 {
    // SAFETY: sysconf has no preconditions.
    unsafe { libc::sysconf(libc::_SC_NPROCESSORS_ONLN) }
}

/// The file system type of `path`, for the report.
pub fn fs_type(path: &Path) -> &'static str {
    use nix::sys::statfs::{
        BTRFS_SUPER_MAGIC, EXT4_SUPER_MAGIC, OVERLAYFS_SUPER_MAGIC, TMPFS_MAGIC, XFS_SUPER_MAGIC,
        statfs,
    };
    let Ok(s) = statfs(path) else {
        return "unknown";
    };
    let t = s.filesystem_type();
    if t == TMPFS_MAGIC {
        "tmpfs"
    } else if t == EXT4_SUPER_MAGIC {
        "ext4"
    } else if t == XFS_SUPER_MAGIC {
        "xfs"
    } else if t == BTRFS_SUPER_MAGIC {
        "btrfs"
    } else if t == OVERLAYFS_SUPER_MAGIC {
        "overlayfs"
    } else {
        "other"
    }
}

/// The file system of `path` for the report; for ext4, whether it has a journal
/// (without one, ext4 skips inodes deleted in the last 30 s when it allocates, which
/// slows a writer down after heavy create/delete churn).
pub fn fs_desc(path: &Path) -> String {
    let t = fs_type(path);
    if t != "ext4" {
        return t.to_owned();
    }
    match ext4_journal(path) {
        Some(true) => "ext4 with a journal".into(),
        Some(false) => "ext4 without a journal".into(),
        None => "ext4".into(),
    }
}

fn ext4_journal(path: &Path) -> Option<bool> {
    use std::os::unix::fs::MetadataExt;
    let dev = fs::metadata(path).ok()?.dev();
    let block = format!("/sys/dev/block/{}:{}", libc::major(dev), libc::minor(dev));
    let name = fs::read_link(block).ok()?.file_name()?.to_owned();
    let task =
        fs::read_to_string(Path::new("/sys/fs/ext4").join(name).join("journal_task")).ok()?;
    Some(task.trim() != "<none>")
}

/// File descriptors of this process whose link target is `target`
/// (`anon_inode:[fanotify]`, `anon_inode:bpf-prog`).
pub fn own_fds(target: &str) -> Vec<String> {
    fs::read_dir("/proc/self/fd").map_or_else(
        |_| Vec::new(),
        |fds| {
            fds.flatten()
                .filter(|fd| fs::read_link(fd.path()).is_ok_and(|t| t.as_os_str() == target))
                .map(|fd| fd.file_name().to_string_lossy().into_owned())
                .collect()
        },
    )
}

/// BPF program fds this process still holds (none once every probe is dropped).
pub fn own_bpf_progs() -> usize {
    own_fds("anon_inode:bpf-prog").len()
}

/// Other processes holding tracepoint BPF programs (`pid comm`): while one is attached
/// to a syscall tracepoint, every task takes the syscall slow path, so a "no probe"
/// baseline measured now is not one.
pub fn tracepoint_prog_holders() -> Vec<String> {
    let me = std::process::id().to_string();
    let mut out = Vec::new();
    let Ok(procs) = fs::read_dir("/proc") else {
        return out;
    };
    for p in procs.flatten() {
        let pid = p.file_name().to_string_lossy().into_owned();
        if pid == me || !pid.bytes().all(|b| b.is_ascii_digit()) {
            continue;
        }
        let Ok(fds) = fs::read_dir(p.path().join("fd")) else {
            continue;
        };
        let holds = fds.flatten().any(|fd| {
            let is_prog =
                fs::read_link(fd.path()).is_ok_and(|t| t.as_os_str() == "anon_inode:bpf-prog");
            is_prog
                && fs::read_to_string(p.path().join("fdinfo").join(fd.file_name())).is_ok_and(
                    |info| {
                        info.lines()
                            .any(|l| l.split_whitespace().eq(["prog_type:", "5"]))
                    },
                )
        });
        if holds {
            let comm = fs::read_to_string(p.path().join("comm")).unwrap_or_default();
            out.push(format!("{pid} ({})", comm.trim()));
        }
    }
    out.sort();
    out
}
