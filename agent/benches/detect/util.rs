//! Helpers of the detect benchmark: distributions, formatting, and what /proc says
//! about a process (CPU time, memory) and about the machine.

use std::{fs, io, path::Path, time::Duration};

pub use crate::common::{fmt_ns, fs_type, median, own_bpf_progs, tracepoint_prog_holders};

/// Samples in nanoseconds, sorted. Signed: a detection can be observed before the
/// writer's own clock read that follows the rename.
pub struct Dist {
    sorted: Vec<i64>,
}

impl Dist {
    pub fn new(mut samples: Vec<i64>) -> Self {
        samples.sort_unstable();
        Dist { sorted: samples }
    }

    pub fn len(&self) -> usize {
        self.sorted.len()
    }

    /// Nearest-rank percentile.
    pub fn pct(&self, p: f64) -> Option<f64> {
        let n = self.sorted.len();
        if n == 0 {
            return None;
        }
        let rank = ((p / 100.0) * n as f64).ceil().max(1.0) as usize;
        Some(self.sorted[rank.min(n) - 1] as f64)
    }

    pub fn median(&self) -> Option<f64> {
        self.pct(50.0)
    }

    pub fn min(&self) -> Option<f64> {
        self.sorted.first().map(|&v| v as f64)
    }

    pub fn max(&self) -> Option<f64> {
        self.sorted.last().map(|&v| v as f64)
    }
}

/// A difference with its sign: `+240 ns`, `-12 ns`, `±0 ns`.
pub fn fmt_delta_ns(ns: f64) -> String {
    if ns.abs() < 0.5 {
        "±0 ns".into()
    } else if ns > 0.0 {
        format!("+{}", fmt_ns(ns))
    } else {
        format!("-{}", fmt_ns(-ns))
    }
}

pub fn fmt_opt_ns(ns: Option<f64>) -> String {
    ns.map_or_else(|| "n/a".into(), fmt_ns)
}

/// `a / b` as `1.23x`, or `n/a`.
pub fn ratio(a: f64, b: f64) -> String {
    if b > 0.0 && a >= 0.0 && a.is_finite() && b.is_finite() {
        format!("{:.2}x", a / b)
    } else {
        "n/a".into()
    }
}

pub fn fmt_kib(kib: Option<u64>) -> String {
    kib.map_or_else(|| "n/a".into(), |k| format!("{:.1} MiB", k as f64 / 1024.0))
}

/// utime + stime of a process, from `/proc/<pid>/stat`.
pub fn proc_cpu(pid: u32) -> io::Result<Duration> {
    let stat = fs::read_to_string(format!("/proc/{pid}/stat"))?;
    let bad = || io::Error::new(io::ErrorKind::InvalidData, "unexpected /proc/<pid>/stat");
    // The comm field may hold spaces; everything after its closing parenthesis is
    // space separated, starting with field 3 (state).
    let rest = &stat[stat.rfind(')').ok_or_else(bad)? + 1..];
    let fields: Vec<&str> = rest.split_whitespace().collect();
    let tick = |i: usize| -> io::Result<u64> {
        fields.get(i).and_then(|f| f.parse().ok()).ok_or_else(bad)
    };
    // Fields 14 (utime) and 15 (stime), in clock ticks.
    let ticks = tick(11)? + tick(12)?;
    // SAFETY: sysconf has no preconditions.
    let hz = unsafe { libc::sysconf(libc::_SC_CLK_TCK) }.max(1) as u64;
    Ok(Duration::from_nanos(ticks * 1_000_000_000 / hz))
}

/// A `kB` line of `/proc/<pid>/status` (`VmRSS`, `VmHWM`), in KiB.
pub fn proc_status_kib(pid: u32, key: &str) -> Option<u64> {
    let status = fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    status.lines().find_map(|l| {
        let v = l.strip_prefix(key)?.strip_prefix(':')?;
        v.split_whitespace().next()?.parse().ok()
    })
}

/// CPU time (user + system) of the calling thread.
pub fn thread_cpu() -> Duration {
    // SAFETY: an all-zero rusage is valid; getrusage only writes into it.
    let mut ru: libc::rusage = unsafe { std::mem::zeroed() };
    // SAFETY: `ru` is a valid, writable rusage.
    if unsafe { libc::getrusage(libc::RUSAGE_THREAD, &mut ru) } != 0 {
        return Duration::ZERO;
    }
    let tv = |t: libc::timeval| Duration::new(t.tv_sec as u64, t.tv_usec as u32 * 1000);
    tv(ru.ru_utime) + tv(ru.ru_stime)
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
