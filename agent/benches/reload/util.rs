//! Helpers of the reload benchmark: figures, formatting, and what /proc says about the
//! machine and this process (CPU time, the agent's fanotify marks).

use std::{fs, path::Path, time::Duration};

/// Median of a few figures (mean of the middle two for an even count).
pub fn median(values: &[f64]) -> f64 {
    let mut v = values.to_vec();
    v.sort_by(f64::total_cmp);
    match v.len() {
        0 => f64::NAN,
        n if n % 2 == 1 => v[n / 2],
        n => (v[n / 2 - 1] + v[n / 2]) / 2.0,
    }
}

/// Nearest-rank percentile of `values` (any order).
pub fn pct(values: &[f64], p: f64) -> f64 {
    let mut v = values.to_vec();
    v.sort_by(f64::total_cmp);
    if v.is_empty() {
        return f64::NAN;
    }
    let rank = ((p / 100.0) * v.len() as f64).ceil().max(1.0) as usize;
    v[rank.min(v.len()) - 1]
}

pub fn min_max(values: &[f64]) -> (f64, f64) {
    let lo = values.iter().copied().fold(f64::INFINITY, f64::min);
    let hi = values.iter().copied().fold(f64::NEG_INFINITY, f64::max);
    (lo, hi)
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

/// A difference with its sign: `+240 ns`, `-12 ns`, `±0 ns`.
pub fn fmt_delta_ns(ns: f64) -> String {
    if ns.is_nan() {
        "n/a".into()
    } else if ns.abs() < 0.5 {
        "±0 ns".into()
    } else if ns > 0.0 {
        format!("+{}", fmt_ns(ns))
    } else {
        format!("-{}", fmt_ns(-ns))
    }
}

/// `a / b` as `1.023x` (three decimals: the goals are 1.01 and 1.05), or `n/a`.
pub fn ratio3(a: f64, b: f64) -> String {
    if b > 0.0 && a >= 0.0 && a.is_finite() && b.is_finite() {
        format!("{:.3}x", a / b)
    } else {
        "n/a".into()
    }
}

pub fn kernel_release() -> String {
    fs::read_to_string("/proc/sys/kernel/osrelease")
        .map(|s| s.trim().to_owned())
        .unwrap_or_else(|_| "unknown".into())
}

pub fn nproc() -> i64 {
    // SAFETY: sysconf has no preconditions.
    unsafe { libc::sysconf(libc::_SC_NPROCESSORS_ONLN) }
}

pub fn cpu_model() -> Option<String> {
    let info = fs::read_to_string("/proc/cpuinfo").ok()?;
    info.lines()
        .find(|l| l.starts_with("model name"))
        .and_then(|l| l.split_once(':'))
        .map(|(_, v)| v.trim().to_owned())
}

pub fn loadavg() -> String {
    fs::read_to_string("/proc/loadavg")
        .map(|s| s.split_whitespace().take(3).collect::<Vec<_>>().join(" "))
        .unwrap_or_else(|_| "unknown".into())
}

/// CPU time (user + system) of every thread of this process so far, not its children.
pub fn self_cpu() -> Duration {
    // SAFETY: an all-zero rusage is valid; getrusage only writes into it.
    let mut ru: libc::rusage = unsafe { std::mem::zeroed() };
    // SAFETY: `ru` is a valid, writable rusage.
    if unsafe { libc::getrusage(libc::RUSAGE_SELF, &mut ru) } != 0 {
        return Duration::ZERO;
    }
    let tv = |t: libc::timeval| Duration::new(t.tv_sec as u64, t.tv_usec as u32 * 1000);
    tv(ru.ru_utime) + tv(ru.ru_stime)
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

/// Other processes holding tracepoint BPF programs (`pid comm`): while one is attached
/// to a syscall tracepoint, every task takes the syscall slow path, so a baseline
/// measured meanwhile already pays for it.
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

/// The marks of every fanotify group this process holds, by kind, from
/// `/proc/self/fdinfo` (fs/notify/fdinfo.c prints one line per mark).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Marks {
    pub groups: usize,
    /// `fanotify ino:...`: inode (directory) marks.
    pub inode: usize,
    /// `fanotify mnt_id:...`: mount marks.
    pub mount: usize,
    /// `fanotify sdev:...`: filesystem marks.
    pub filesystem: usize,
}

pub fn own_fanotify_marks() -> Marks {
    let mut m = Marks::default();
    for fd in own_fds("anon_inode:[fanotify]") {
        let Ok(info) = fs::read_to_string(format!("/proc/self/fdinfo/{fd}")) else {
            continue;
        };
        m.groups += 1;
        for l in info.lines() {
            let Some(rest) = l.strip_prefix("fanotify ") else {
                continue;
            };
            if rest.starts_with("ino:") {
                m.inode += 1;
            } else if rest.starts_with("mnt_id:") {
                m.mount += 1;
            } else if rest.starts_with("sdev:") {
                m.filesystem += 1;
            }
        }
    }
    m
}
