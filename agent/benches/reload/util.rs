//! Helpers of the reload benchmark: figures, formatting, and what /proc says about the
//! machine and this process (CPU time, the agent's fanotify marks).

pub use crate::common::{fmt_ns, fs_type, median, tracepoint_prog_holders};

use std::{fs, time::Duration};

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
