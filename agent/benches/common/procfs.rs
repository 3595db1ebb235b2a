//! What `/proc` says about another process (CPU time, memory, inotify watches) and
//! about the machine (busy time of all CPUs), for benchmarks that run the agent, or an
//! alternative to it, as a process of its own; and the CPU time of this process and of
//! its calling thread.

use std::{fs, io, time::Duration};

fn ticks_per_second() -> u64 {
    // SAFETY: sysconf has no preconditions.
    unsafe { libc::sysconf(libc::_SC_CLK_TCK) }.max(1) as u64
}

fn ticks(n: u64) -> Duration {
    Duration::from_nanos(n * 1_000_000_000 / ticks_per_second())
}

/// utime + stime of a process (all its threads), from `/proc/<pid>/stat`; in clock
/// ticks (10 ms) underneath.
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
    // Fields 14 (utime) and 15 (stime).
    Ok(ticks(tick(11)? + tick(12)?))
}

/// A `kB` line of `/proc/<pid>/status` (`VmRSS`, `VmHWM`), in KiB.
pub fn proc_status_kib(pid: u32, key: &str) -> Option<u64> {
    let status = fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    status.lines().find_map(|l| {
        let v = l.strip_prefix(key)?.strip_prefix(':')?;
        v.split_whitespace().next()?.parse().ok()
    })
}

pub fn fmt_kib(kib: Option<u64>) -> String {
    kib.map_or_else(|| "n/a".into(), |k| format!("{:.1} MiB", k as f64 / 1024.0))
}

/// CPU time (user + system) of the calling thread.
pub fn thread_cpu() -> Duration {
    rusage(libc::RUSAGE_THREAD)
}

/// CPU time (user + system) of every thread of this process, not its children.
pub fn self_cpu() -> Duration {
    rusage(libc::RUSAGE_SELF)
}

fn rusage(who: libc::c_int) -> Duration {
    // SAFETY: an all-zero rusage is valid; getrusage only writes into it.
    let mut ru: libc::rusage = unsafe { std::mem::zeroed() };
    // SAFETY: `ru` is a valid, writable rusage.
    if unsafe { libc::getrusage(who, &mut ru) } != 0 {
        return Duration::ZERO;
    }
    let tv = |t: libc::timeval| Duration::new(t.tv_sec as u64, t.tv_usec as u32 * 1000);
    tv(ru.ru_utime) + tv(ru.ru_stime)
}

/// The inotify instances a process holds and the watches in them, as the kernel counts
/// them: one `inotify wd:` line per watch in `/proc/<pid>/fdinfo/<fd>` of each fd that
/// is an inotify instance.
pub fn inotify_watches(pid: u32) -> io::Result<(usize, usize)> {
    let (mut instances, mut watches) = (0, 0);
    for fd in fs::read_dir(format!("/proc/{pid}/fd"))?.flatten() {
        if !fs::read_link(fd.path()).is_ok_and(|t| t.as_os_str() == "anon_inode:inotify") {
            continue;
        }
        let info = format!("/proc/{pid}/fdinfo/{}", fd.file_name().to_string_lossy());
        let Ok(info) = fs::read_to_string(info) else {
            continue;
        };
        instances += 1;
        watches += info
            .lines()
            .filter(|l| l.starts_with("inotify wd:"))
            .count();
    }
    Ok((instances, watches))
}

/// Time all CPUs of the machine spent busy (user, nice, system, irq, softirq) and
/// stolen by the hypervisor, from the `cpu` line of `/proc/stat`.
#[derive(Clone, Copy, Debug, Default)]
pub struct MachineCpu {
    pub busy: Duration,
    pub steal: Duration,
}

impl MachineCpu {
    pub fn now() -> MachineCpu {
        let Ok(stat) = fs::read_to_string("/proc/stat") else {
            return MachineCpu::default();
        };
        let Some(line) = stat.lines().find(|l| l.starts_with("cpu ")) else {
            return MachineCpu::default();
        };
        let v: Vec<u64> = line
            .split_whitespace()
            .skip(1)
            .map(|f| f.parse().unwrap_or(0))
            .collect();
        let at = |i: usize| v.get(i).copied().unwrap_or(0);
        // user nice system idle iowait irq softirq steal (guest is counted in user).
        MachineCpu {
            busy: ticks(at(0) + at(1) + at(2) + at(5) + at(6)),
            steal: ticks(at(7)),
        }
    }

    /// What was spent between `earlier` and `self`.
    pub fn since(self, earlier: MachineCpu) -> MachineCpu {
        MachineCpu {
            busy: self.busy.saturating_sub(earlier.busy),
            steal: self.steal.saturating_sub(earlier.steal),
        }
    }
}
