//! Shared by the benchmarks: machine facts for the report header, medians and number
//! formatting, the arguments' check.
//!
//! - [`agent_process`]: the agent binary as a process of its own, read over HTTP;
//! - [`lab_disk`]: an ext4 image with a journal for a lab node's tree;
//! - [`procfs`]: a process's CPU time, memory and inotify watches, the machine's busy
//!   time;
//! - [`revision`]: revisions written into a volume key, found again in a lab
//!   consumer's open log;
//! - [`syscall_loops`]: the system-call loops the probe's cost is timed on.
#![allow(dead_code)]

pub mod agent_process;
pub mod lab_disk;
pub mod procfs;
pub mod revision;
pub mod syscall_loops;

use std::{fs, path::Path};

pub fn cpu_model() -> Option<String> {
    let info = fs::read_to_string("/proc/cpuinfo").ok()?;
    info.lines()
        .find(|l| l.starts_with("model name"))
        .and_then(|l| l.split_once(':'))
        .map(|(_, v)| v.trim().to_owned())
}

pub fn fmt_ns(ns: f64) -> String {
    let a = ns.abs();
    if ns.is_nan() {
        "n/a".into()
    } else if a < 1e3 {
        format!("{ns:.0} ns")
    } else if a < 1e6 {
        format!("{:.1} µs", ns / 1e3)
    } else if a < 1e9 {
        format!("{:.2} ms", ns / 1e6)
    } else {
        format!("{:.2} s", ns / 1e9)
    }
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
/// slows a writer down after heavy create/delete churn). The detect benchmark's
/// `fs_desc`, shared.
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

/// Median of a few per-round figures (mean of the middle two for an even count).
pub fn median(values: &[f64]) -> f64 {
    let mut v = values.to_vec();
    v.sort_by(f64::total_cmp);
    match v.len() {
        0 => f64::NAN,
        n if n % 2 == 1 => v[n / 2],
        n => (v[n / 2 - 1] + v[n / 2]) / 2.0,
    }
}

/// Nearest-rank percentile of `values` (any order); NaN when empty.
pub fn percentile(values: &[f64], p: f64) -> f64 {
    let mut v = values.to_vec();
    v.sort_by(f64::total_cmp);
    if v.is_empty() {
        return f64::NAN;
    }
    let rank = ((p / 100.0) * v.len() as f64).ceil().max(1.0) as usize;
    v[rank.min(v.len()) - 1]
}

pub fn nproc() -> i64 {
    // SAFETY: sysconf has no preconditions.
    unsafe { libc::sysconf(libc::_SC_NPROCESSORS_ONLN) }
}

/// BPF program fds this process still holds (none once every probe is dropped).
pub fn own_bpf_progs() -> usize {
    fs::read_dir("/proc/self/fd").map_or(0, |fds| {
        fds.flatten()
            .filter(|fd| {
                fs::read_link(fd.path()).is_ok_and(|t| t.as_os_str() == "anon_inode:bpf-prog")
            })
            .count()
    })
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

/// The report's first lines: the command and the machine it ran on.
/// A benchmark's parsed arguments; else, after printing why (their error and the usage,
/// or that it needs root: `needs` says what for), the exit code to return.
pub fn checked_args<A>(
    bench: &str,
    usage: &str,
    needs: &str,
    parsed: Result<A, String>,
) -> Result<A, std::process::ExitCode> {
    let args = parsed.map_err(|e| {
        if !e.is_empty() {
            eprintln!("{bench}: {e}");
        }
        eprintln!("{usage}");
        std::process::ExitCode::from(2)
    })?;
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } != 0 {
        eprintln!("{bench}: needs root{needs}\n{usage}");
        return Err(std::process::ExitCode::from(2));
    }
    Ok(args)
}

pub fn header(bench: &str, given: &[String], quick: bool) -> String {
    let mut cmd = format!("cargo xtask bench {bench}");
    for a in given {
        cmd.push(' ');
        cmd.push_str(a);
    }
    let mut out = format!("## `{cmd}`\n\n");
    out += &format!("- kernel (`uname -r`): {}\n", kernel_release());
    out += &format!("- nproc: {}\n", nproc());
    if let Some(model) = cpu_model() {
        out += &format!("- CPU: {model}\n");
    }
    out += &format!("- load average at start: {}\n", loadavg());
    out += &format!(
        "- sizes: {}\n",
        if quick { "--quick (smoke run)" } else { "full" }
    );
    let holders = tracepoint_prog_holders();
    let holders = if holders.is_empty() {
        "none".to_owned()
    } else {
        holders.join(", ")
    };
    out += &format!("- other processes holding tracepoint BPF programs at start: {holders}\n");
    out
}

/// The report's line on other processes holding tracepoint BPF programs while the
/// rounds ran; `consequence` says what that means for the figures above it.
pub fn holders_note(holders: &[String], consequence: &str) -> String {
    if holders.is_empty() {
        "\nNo other process held tracepoint BPF programs during the rounds.\n".to_owned()
    } else {
        format!(
            "\n**Caveat:** other processes held tracepoint BPF programs during the rounds ({}): {consequence}\n",
            holders.join(", ")
        )
    }
}
