//! What the bench reads on the host, beside the agent's /metrics: the kubelet's own
//! system calls (a ftrace of its mkdirat and renameat), each volume's data dir swaps as
//! inotify reports them, and the agent process's fanotify marks and CPU time.

use super::*;

/// The kubelet's own calls, stamped by the kernel: an ftrace instance of this
/// process's (`/sys/kernel/tracing/instances/`) recording the `mkdir` of any
/// timestamped data dir (`..2…`) and the `rename` of anything over `..data`, by
/// their paths in the caller's memory (`.ustring` filters), on the monotonic clock.
/// The files' own times come from the kernel's coarse clock (a 4 ms tick at HZ=250,
/// refined only where someone queried the time since), too coarse for a window of
/// a millisecond or less; these are the syscalls' entries, to the microsecond.
pub(super) struct KubeletTrace {
    dir: PathBuf,
}

pub(super) const TRACE_EVENTS: [(&str, &str); 5] = [
    ("sys_enter_mkdir", r#"pathname.ustring ~ "*/..2*""#),
    ("sys_enter_mkdirat", r#"pathname.ustring ~ "*/..2*""#),
    ("sys_enter_rename", r#"newname.ustring ~ "*/..data""#),
    ("sys_enter_renameat", r#"newname.ustring ~ "*/..data""#),
    ("sys_enter_renameat2", r#"newname.ustring ~ "*/..data""#),
];

impl KubeletTrace {
    pub(super) fn start() -> Result<Self> {
        let dir = PathBuf::from(format!(
            "/sys/kernel/tracing/instances/reloadscope-bench-{}",
            std::process::id()
        ));
        if !dir.exists() {
            fs::create_dir(&dir).with_context(|| format!("could not create {}", dir.display()))?;
        }
        let trace = Self { dir };
        trace.write("trace_clock", "mono")?;
        for (event, filter) in TRACE_EVENTS {
            let e = format!("events/syscalls/{event}");
            trace.write(&format!("{e}/filter"), filter)?;
            trace.write(&format!("{e}/enable"), "1")?;
        }
        trace.write("tracing_on", "1")?;
        Ok(trace)
    }

    pub(super) fn write(&self, file: &str, value: &str) -> Result<()> {
        let path = self.dir.join(file);
        fs::write(&path, value)
            .with_context(|| format!("could not write {value:?} to {}", path.display()))
    }

    pub(super) fn clear(&self) -> Result<()> {
        self.write("trace", "")
    }

    /// The kubelet's last data dir `mkdir` before its one `..data` rename since
    /// [`Self::clear`], and that rename, in seconds on the monotonic clock; None
    /// unless there is exactly one such rename.
    pub(super) fn window(&self) -> Option<(f64, f64)> {
        let text = fs::read_to_string(self.dir.join("trace")).ok()?;
        kubelet_window(&text)
    }
}

impl Drop for KubeletTrace {
    fn drop(&mut self) {
        let _ = self.write("tracing_on", "0");
        for (event, _) in TRACE_EVENTS {
            let _ = self.write(&format!("events/syscalls/{event}/enable"), "0");
        }
        let _ = fs::remove_dir(&self.dir);
    }
}

/// See [`KubeletTrace::window`]: from the trace's text.
pub(super) fn kubelet_window(trace: &str) -> Option<(f64, f64)> {
    let mut mkdir = None;
    let mut renames = Vec::new();
    for line in trace.lines().filter(|l| !l.starts_with('#')) {
        // `  kubelet-1234  [001] .....  3961.951600: sys_mkdirat(dfd: ...)`
        let Some((head, call)) = line.split_once(": sys_") else {
            continue;
        };
        let mut fields = head.split_whitespace();
        let task = fields.next().and_then(|t| t.rsplit_once('-'));
        let at = fields.next_back().and_then(|t| t.parse::<f64>().ok());
        let (Some(("kubelet", _)), Some(at)) = (task, at) else {
            continue;
        };
        if call.starts_with("mkdir") {
            if renames.is_empty() {
                mkdir = Some(at);
            }
        } else if call.starts_with("rename") {
            renames.push(at);
        }
    }
    match (mkdir, renames.as_slice()) {
        (Some(m), [r]) if m <= *r => Some((m, *r)),
        _ => None,
    }
}

/// CLOCK_REALTIME - CLOCK_MONOTONIC, in seconds.
pub(super) fn realtime_offset() -> f64 {
    let read = |clock| {
        let mut ts = libc::timespec {
            tv_sec: 0,
            tv_nsec: 0,
        };
        // SAFETY: a valid timespec for the call to fill.
        unsafe { libc::clock_gettime(clock, &mut ts) };
        ts.tv_sec as f64 + ts.tv_nsec as f64 / 1e9
    };
    let mono = read(libc::CLOCK_MONOTONIC);
    let real = read(libc::CLOCK_REALTIME);
    let mono2 = read(libc::CLOCK_MONOTONIC);
    real - (mono + mono2) / 2.0
}

/// inotify on a volume dir for `..data` moved in: the kubelet's swap, as it happens.
pub(super) struct DataSwaps {
    fd: OwnedFd,
}

impl DataSwaps {
    pub(super) fn watch(dir: &Path) -> Result<Self> {
        // SAFETY: no pointer arguments; the result is checked.
        let fd = unsafe { libc::inotify_init1(libc::IN_CLOEXEC | libc::IN_NONBLOCK) };
        ensure!(
            fd >= 0,
            "inotify_init1: {}",
            std::io::Error::last_os_error()
        );
        // SAFETY: a new fd of ours, owned from here on.
        let fd = unsafe { OwnedFd::from_raw_fd(fd) };
        let path = CString::new(dir.as_os_str().as_bytes())?;
        // SAFETY: a NUL-terminated path that outlives the call.
        let wd =
            unsafe { libc::inotify_add_watch(fd.as_raw_fd(), path.as_ptr(), libc::IN_MOVED_TO) };
        ensure!(
            wd >= 0,
            "inotify_add_watch {}: {}",
            dir.display(),
            std::io::Error::last_os_error()
        );
        Ok(Self { fd })
    }

    /// Waits for `..data` to be moved in, up to `timeout`.
    pub(super) fn wait(&self, timeout: Duration) -> Result<()> {
        let deadline = Instant::now() + timeout;
        let mut buf = [0u8; 4096];
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            ensure!(
                !left.is_zero(),
                "the kubelet made no ..data swap within {timeout:?}"
            );
            let mut pfd = libc::pollfd {
                fd: self.fd.as_raw_fd(),
                events: libc::POLLIN,
                revents: 0,
            };
            // SAFETY: one pollfd, alive for the call.
            let r = unsafe { libc::poll(&mut pfd, 1, left.as_millis().min(60_000) as i32) };
            if r <= 0 {
                continue; // timeout (checked above) or EINTR
            }
            // SAFETY: reads at most buf.len() bytes into buf.
            let n = unsafe { libc::read(self.fd.as_raw_fd(), buf.as_mut_ptr().cast(), buf.len()) };
            if n <= 0 {
                continue;
            }
            if inotify_names(&buf[..n as usize]).any(|name| name == b"..data") {
                return Ok(());
            }
        }
    }
}

/// The names of the inotify events in `buf`.
pub(super) fn inotify_names(buf: &[u8]) -> impl Iterator<Item = &[u8]> {
    let header = std::mem::size_of::<libc::inotify_event>();
    let mut off = 0;
    std::iter::from_fn(move || {
        if off + header > buf.len() {
            return None;
        }
        // `len` is the header's last u32 field.
        let len_at = off + header - 4;
        let len = u32::from_ne_bytes(buf[len_at..len_at + 4].try_into().ok()?) as usize;
        let name = buf.get(off + header..off + header + len)?;
        off += header + len;
        Some(name.split(|b| *b == 0).next().unwrap_or_default())
    })
}

/// The pid of the agent's process in container `id` (its cgroup path ends with it).
pub(super) fn agent_pid(id: &str) -> Option<u32> {
    fs::read_dir("/proc").ok()?.flatten().find_map(|e| {
        let pid: u32 = e.file_name().to_str()?.parse().ok()?;
        let comm = fs::read_to_string(e.path().join("comm")).ok()?;
        let cgroup = fs::read_to_string(e.path().join("cgroup")).ok()?;
        (comm.trim() == "reloadscope" && cgroup.contains(id)).then_some(pid)
    })
}

/// The fanotify marks an agent holds, from its groups' fdinfo.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Marks {
    pub inode: usize,
    pub ignoring: usize,
    pub filesystem: usize,
    pub mount: usize,
}

pub(super) fn marks(pid: u32) -> Option<Marks> {
    let fds = fs::read_dir(format!("/proc/{pid}/fd")).ok()?;
    let mut total = Marks::default();
    for fd in fds.flatten() {
        let is_fanotify = fs::read_link(fd.path())
            .is_ok_and(|l| l.as_os_str().as_bytes() == b"anon_inode:[fanotify]");
        if is_fanotify
            && let Ok(info) = fs::read_to_string(format!(
                "/proc/{pid}/fdinfo/{}",
                fd.file_name().to_string_lossy()
            ))
        {
            let m = fdinfo_marks(&info);
            total.inode += m.inode;
            total.ignoring += m.ignoring;
            total.filesystem += m.filesystem;
            total.mount += m.mount;
        }
    }
    Some(total)
}

pub(super) fn fdinfo_marks(info: &str) -> Marks {
    let mut m = Marks::default();
    for line in info.lines() {
        let Some(rest) = line.strip_prefix("fanotify ") else {
            continue;
        };
        if rest.starts_with("ino:") {
            m.inode += 1;
            let ignoring = rest
                .split_whitespace()
                .find_map(|f| f.strip_prefix("ignored_mask:"))
                .is_some_and(|v| u64::from_str_radix(v, 16).is_ok_and(|v| v != 0));
            m.ignoring += usize::from(ignoring);
        } else if rest.starts_with("mnt_id:") {
            m.mount += 1;
        } else if rest.starts_with("sdev:") {
            m.filesystem += 1;
        }
    }
    m
}

/// The CPU periods and the throttled ones of `pid`'s cgroup (v1's cpu controller, or
/// v2's unified tree).
pub(super) fn cpu_stat(pid: u32) -> Option<(u64, u64)> {
    let cgroups = fs::read_to_string(format!("/proc/{pid}/cgroup")).ok()?;
    let path = cgroups
        .lines()
        .find_map(|l| {
            let mut f = l.splitn(3, ':');
            let (_, controllers, path) = (f.next()?, f.next()?, f.next()?);
            controllers
                .split(',')
                .any(|c| c == "cpu")
                .then(|| format!("/sys/fs/cgroup/cpu{path}"))
        })
        .or_else(|| {
            let path = cgroups.lines().find_map(|l| l.strip_prefix("0::"))?;
            Some(format!("/sys/fs/cgroup{path}"))
        })?;
    let stat = fs::read_to_string(format!("{path}/cpu.stat")).ok()?;
    let field = |name: &str| {
        stat.lines()
            .find_map(|l| l.strip_prefix(name)?.trim().parse::<u64>().ok())
    };
    Some((field("nr_periods ")?, field("nr_throttled ")?))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fdinfo_lines_count_each_kind_of_mark() {
        let info = "pos:\t0\nflags:\t02004002\nmnt_id:\t15\nino:\t1057\n\
fanotify flags:10 event-flags:0\n\
fanotify ino:1a2 sdev:800001 mflags:0 mask:40000020 ignored_mask:0 fhandle-bytes:8 fhandle-type:1 f_handle:a201000000000000\n\
fanotify ino:1a3 sdev:800001 mflags:0 mask:0 ignored_mask:40000020 fhandle-bytes:8 fhandle-type:1 f_handle:a301000000000000\n\
fanotify sdev:2d mflags:0 mask:20 ignored_mask:0\n\
fanotify mnt_id:5c mflags:0 mask:20 ignored_mask:0\n";
        assert_eq!(
            fdinfo_marks(info),
            Marks {
                inode: 2,
                ignoring: 1,
                filesystem: 1,
                mount: 1
            }
        );
    }

    #[test]
    fn inotify_events_give_their_names() {
        let header = std::mem::size_of::<libc::inotify_event>();
        let mut buf = Vec::new();
        for name in [&b"..2026_12_06"[..], b"..data"] {
            let len = name.len().div_ceil(16) * 16;
            let mut ev = vec![0u8; header];
            ev[header - 4..].copy_from_slice(&(len as u32).to_ne_bytes());
            buf.extend(ev);
            let mut padded = name.to_vec();
            padded.resize(len, 0);
            buf.extend(padded);
        }
        let names: Vec<&[u8]> = inotify_names(&buf).collect();
        assert_eq!(names, [&b"..2026_12_06"[..], b"..data"]);
    }

    #[test]
    fn the_trace_gives_the_kubelets_last_mkdir_before_its_one_rename() {
        let trace = "\
# tracer: nop
#           TASK-PID     CPU#  |||||  TIMESTAMP  FUNCTION
         kubelet-900     [000] .....  100.000100: sys_mkdirat(dfd: 0xffffff9c, pathname: 0xc000, mode: 0x1ed)
           mkdir-4247    [001] .....  100.000200: sys_mkdir(pathname: 0x7fff, mode: 0x1ff)
         kubelet-901     [001] .....  100.000300: sys_mkdirat(dfd: 0xffffff9c, pathname: 0xc001, mode: 0x1ed)
         kubelet-901     [001] .....  100.000800: sys_renameat(olddfd: 0xffffff9c, oldname: 0xc002, newdfd: 0xffffff9c, newname: 0xc003)
         kubelet-900     [000] .....  100.000900: sys_mkdirat(dfd: 0xffffff9c, pathname: 0xc004, mode: 0x1ed)
";
        let (m, r) = kubelet_window(trace).unwrap();
        assert_eq!((m, r), (100.0003, 100.0008));
        let two =
            format!("{trace}         kubelet-900     [000] .....  100.001000: sys_renameat(x)\n");
        assert_eq!(kubelet_window(&two), None);
        assert_eq!(kubelet_window("# nothing\n"), None);
    }
}
