//! Helpers of the reload benchmark: figures, formatting, and what /proc says about the
//! machine and this process (CPU time, the agent's fanotify marks).

use std::{fs, path::Path, time::Duration};

pub use crate::common::{fmt_ns, fs_type, median, tracepoint_prog_holders};

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
    /// Marks of any kind whose `ignored_mask:` is not zero (the agent places none).
    pub ignored: usize,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum MarkKind {
    Inode,
    Mount,
    Filesystem,
}

/// One mark line of a fanotify group's fdinfo, as this kernel prints it (hex fields):
/// `fanotify ino:9ae0a3 sdev:fe00000 mflags:440 mask:8000020 ignored_mask:8000020
/// fhandle-bytes:8 ...`, `fanotify mnt_id:3e3 mflags:0 mask:8000020 ignored_mask:0`,
/// `fanotify sdev:103 mflags:0 mask:8000020 ignored_mask:0`. The group's own line
/// (`fanotify flags:c03 event-flags:88000`) is not a mark.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct MarkLine {
    pub kind: MarkKind,
    /// Inode marks: the inode number and the kernel's `dev_t` (major << 20 | minor).
    pub ino: u64,
    pub sdev: u64,
    pub mask: u64,
    pub ignored: u64,
}

impl MarkLine {
    pub fn parse(line: &str) -> Option<MarkLine> {
        let rest = line.strip_prefix("fanotify ")?;
        let field = |name: &str| {
            rest.split_whitespace()
                .find_map(|t| t.strip_prefix(name)?.strip_prefix(':'))
                .and_then(|v| u64::from_str_radix(v, 16).ok())
        };
        let kind = match rest.split(':').next()? {
            "ino" => MarkKind::Inode,
            "mnt_id" => MarkKind::Mount,
            "sdev" => MarkKind::Filesystem,
            _ => return None,
        };
        Some(MarkLine {
            kind,
            ino: field("ino").unwrap_or(0),
            sdev: field("sdev").unwrap_or(0),
            mask: field("mask")?,
            ignored: field("ignored_mask")?,
        })
    }

    /// Whether this is an inode mark on the inode [`inode_id`] gave.
    pub fn is_on(&self, id: (u64, u64)) -> bool {
        self.kind == MarkKind::Inode && (self.sdev, self.ino) == id
    }
}

/// `path`'s device as the kernel prints it in fdinfo (`major << 20 | minor`) and its
/// inode number, to find its marks among [`MarkLine`]s.
pub fn inode_id(path: &Path) -> Option<(u64, u64)> {
    use std::os::unix::fs::MetadataExt as _;
    let m = fs::metadata(path).ok()?;
    let (major, minor) = (libc::major(m.dev()), libc::minor(m.dev()));
    Some(((u64::from(major) << 20) | u64::from(minor), m.ino()))
}

/// The mark lines of every fanotify group this process holds, and how many groups.
pub fn own_fanotify_mark_lines() -> (usize, Vec<MarkLine>) {
    let (mut groups, mut lines) = (0, Vec::new());
    for fd in own_fds("anon_inode:[fanotify]") {
        let Ok(info) = fs::read_to_string(format!("/proc/self/fdinfo/{fd}")) else {
            continue;
        };
        groups += 1;
        lines.extend(info.lines().filter_map(MarkLine::parse));
    }
    (groups, lines)
}

pub fn own_fanotify_marks() -> Marks {
    let (groups, lines) = own_fanotify_mark_lines();
    let mut m = Marks {
        groups,
        ..Marks::default()
    };
    for l in lines {
        match l.kind {
            MarkKind::Inode => m.inode += 1,
            MarkKind::Mount => m.mount += 1,
            MarkKind::Filesystem => m.filesystem += 1,
        }
        m.ignored += usize::from(l.ignored != 0);
    }
    m
}
