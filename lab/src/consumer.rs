//! The process inside a lab container: `reloadscope-lab consumer`, started by
//! [`LabContainer::start`](super::LabContainer::start).
//!
//! It sets itself up the way a container runtime sets up a container (its cgroup, its
//! own mount namespace, a bind mount of the volume at its mount path), then consumes
//! the file with one [`Strategy`], or execs an external program given after `--`
//! (see [`ConsumerArgs::exec`]), which then runs as the container's process.
//!
//! Each open of the file appends one line to the open log, in the format of
//! [`lab_consumer::openlog`] (`open <unix nanos> <head>`). Each line is one write(2) on
//! an O_APPEND file, so a reader sees whole lines only (it skips an unfinished last
//! one). After its watch is in place and its first open is logged it writes `ready\n`
//! to its stdout.
//!
//! With a program after `--` there is no open log and no `ready`: once set up, it
//! writes `exec\n` to its stdout, moves that pipe to a close-on-exec descriptor, points
//! stdout at `--output` (stdin at /dev/null, as a runtime does for a container without
//! `stdin: true`) and execs the program, in place (same pid). A successful execve(2)
//! closes the pipe, so the lab reads `exec\n` then end of file; a failed one writes
//! `exec failed\n` first, and the process exits with the error on stderr.

use std::{
    ffi::OsString,
    fs::{self, File, OpenOptions},
    io::{self, Write as _},
    os::{
        fd::{AsRawFd, BorrowedFd, FromRawFd as _, OwnedFd},
        unix::process::CommandExt as _,
    },
    path::{Path, PathBuf},
    time::Duration,
};

use anyhow::Context as _;
use lab_consumer::{Host, Open, READY, Target, Wake, wait};
use nix::{
    errno::Errno,
    mount::{MntFlags, MsFlags},
    sched::CloneFlags,
    sys::{
        signal::{SigSet, Signal},
        signalfd::{SfdFlags, SignalFd},
    },
};

use super::{Strategy, container::mountinfo};

/// Options of the hidden `reloadscope-lab consumer` command. Only
/// [`LabContainer::start`](super::LabContainer::start) runs it.
#[derive(Clone, Debug, clap::Args)]
pub struct ConsumerArgs {
    /// How the file is consumed (unless a program is given after `--`).
    #[arg(long, value_enum, required_unless_present = "exec")]
    pub strategy: Option<Strategy>,
    /// cgroup v2 directory to move into first (`.../cri-containerd-<id>.scope`).
    #[arg(long, value_name = "DIR")]
    pub cgroup: PathBuf,
    /// What to bind-mount: the volume dir, or with --sub-path the kubelet's subPath
    /// bind (`<root>/pods/<uid>/volume-subpaths/<volume>/<container>/0`).
    #[arg(long, value_name = "PATH")]
    pub source: PathBuf,
    /// The container's mount path: the volume is bound onto it (with --sub-path onto
    /// `<mount dir>/<key>`), in the process's own mount namespace.
    #[arg(long, value_name = "DIR")]
    pub mount_dir: PathBuf,
    /// The key (file name in the volume) it reads.
    #[arg(long)]
    pub key: String,
    /// The volume is a subPath mount of the key's file.
    #[arg(long)]
    pub sub_path: bool,
    /// Seconds between two reads (timer-poller).
    #[arg(long, value_name = "SECONDS", default_value_t = 1.0)]
    pub period: f64,
    /// The open log (appended to); a strategy's only.
    #[arg(long, value_name = "FILE", required_unless_present = "exec")]
    pub log: Option<PathBuf>,
    /// Where an external program's stdout goes (default /dev/null).
    #[arg(long, value_name = "FILE", requires = "exec")]
    pub output: Option<PathBuf>,
    /// Detach every mount at or under DIR from the process's namespace once its own
    /// mount is made (repeatable; the lab passes the kubelet root): a runtime's
    /// container, in its own root, never sees the kubelet's volume and subPath mounts.
    #[arg(long, value_name = "DIR")]
    pub hide: Vec<PathBuf>,
    /// Exit when stdin reaches end of file: the lab keeps its write end open, so the
    /// process goes away with the lab even when the lab cannot kill it.
    #[arg(long)]
    pub exit_with_stdin: bool,
    /// An external program and its arguments, run instead of a strategy: once the
    /// container is set up, the process execs it (it keeps the pid, the cgroup and the
    /// mount namespace). No placeholder is replaced here (the lab does that).
    #[arg(last = true, value_name = "PROGRAM", conflicts_with_all = ["strategy", "log"])]
    pub exec: Vec<OsString>,
}

/// What the process does once set up.
enum Run {
    Strategy(Strategy, File),
    Exec(Vec<OsString>, Option<PathBuf>),
}

/// `reloadscope-lab consumer`: joins the cgroup, enters a mount namespace of its own,
/// binds the volume at its mount path, then runs the strategy until killed. Returns
/// only on a setup or I/O error (needs root: cgroup, unshare, mount).
///
/// Call it before the process starts any thread (before an async runtime): a mount
/// namespace is per thread, and the whole process must be in the container's.
pub fn consumer_main(args: ConsumerArgs) -> anyhow::Result<()> {
    let threads = fs::read_dir("/proc/self/task")
        .context("read /proc/self/task")?
        .count();
    if threads != 1 {
        anyhow::bail!("the lab consumer must run single-threaded, not in {threads} threads");
    }
    let period = Duration::try_from_secs_f64(args.period)
        .map_err(|_| anyhow::anyhow!("--period {}: not a duration in seconds", args.period))?;
    let run = match (args.strategy, &args.log) {
        _ if !args.exec.is_empty() => Run::Exec(args.exec, args.output),
        (Some(strategy), Some(path)) => Run::Strategy(
            strategy,
            OpenOptions::new()
                .append(true)
                .create(true)
                .open(path)
                .with_context(|| format!("open log {path:?}"))?,
        ),
        _ => anyhow::bail!("--strategy and --log, or a program after --, are needed"),
    };

    // 1. The cgroup, as the runtime places a container's first process.
    let procs = args.cgroup.join("cgroup.procs");
    fs::write(&procs, format!("{}\n", std::process::id()))
        .with_context(|| format!("join cgroup: write {procs:?}"))?;

    // 2. A mount namespace of its own, with nothing propagating in or out.
    nix::sched::unshare(CloneFlags::CLONE_NEWNS).context("unshare(CLONE_NEWNS)")?;
    nix::mount::mount(
        None::<&str>,
        "/",
        None::<&str>,
        MsFlags::MS_REC | MsFlags::MS_PRIVATE,
        None::<&str>,
    )
    .context("make / rprivate")?;

    // 3. The volume mount, read-only as the kubelet asks for these volumes.
    let file = args.mount_dir.join(&args.key);
    let target = if args.sub_path {
        if let Some(parent) = file.parent() {
            fs::create_dir_all(parent).with_context(|| format!("create {parent:?}"))?;
        }
        File::create(&file).with_context(|| format!("create mount point {file:?}"))?;
        file.clone()
    } else {
        args.mount_dir.clone()
    };
    bind_read_only(&args.source, &target)?;
    for dir in &args.hide {
        hide_mounts_under(dir, &target)?;
    }

    let (strategy, log) = match run {
        Run::Strategy(strategy, log) => (strategy, log),
        Run::Exec(argv, output) => return exec(&argv, output.as_deref()),
    };
    let target = Target {
        file,
        dir: args.mount_dir,
        period,
    };
    // SIGHUP, blocked, waits in a signalfd that every wait polls: the strategies that
    // reload on it see it, the others ignore it.
    let mut hup = SigSet::empty();
    hup.add(Signal::SIGHUP);
    hup.thread_block().context("block SIGHUP")?;
    let hangups = SignalFd::with_flags(&hup, SfdFlags::SFD_NONBLOCK | SfdFlags::SFD_CLOEXEC)
        .context("signalfd")?;
    let mut c = Consumer {
        log,
        lifeline: args.exit_with_stdin,
        hangups,
    };
    strategy.run(&target, &mut c)
}

/// Replaces this process with `argv` (see the module docs for what the lab reads on
/// stdout). Returns only when the exec failed.
fn exec(argv: &[OsString], output: Option<&Path>) -> anyhow::Result<()> {
    let (program, args) = argv.split_first().context("no program to run")?;
    // The lab's pipe, on a close-on-exec descriptor: execve(2) closes it.
    // SAFETY: fcntl on stdout, which is open; the new descriptor is ours alone.
    let pipe = unsafe { libc::fcntl(libc::STDOUT_FILENO, libc::F_DUPFD_CLOEXEC, 3) };
    if pipe < 0 {
        return Err(io::Error::last_os_error()).context("dup stdout");
    }
    // SAFETY: `pipe` was just made and is owned here only.
    let mut pipe = File::from(unsafe { OwnedFd::from_raw_fd(pipe) });
    let out = match output {
        Some(path) => OpenOptions::new()
            .append(true)
            .create(true)
            .open(path)
            .with_context(|| format!("open output {path:?}"))?,
        None => OpenOptions::new()
            .write(true)
            .open("/dev/null")
            .context("open /dev/null")?,
    };
    let null = File::open("/dev/null").context("open /dev/null")?;
    // dup2(2) clears close-on-exec on the new descriptor: the program inherits these.
    nix::unistd::dup2_stdout(&out).context("point stdout at the output")?;
    nix::unistd::dup2_stdin(&null).context("point stdin at /dev/null")?;
    pipe.write_all(b"exec\n").context("report exec")?;
    // Resets SIGPIPE and the signal mask, as std does for every child; searches PATH.
    let err = std::process::Command::new(program).args(args).exec();
    let _ = pipe.write_all(b"exec failed\n");
    Err(err).with_context(|| format!("exec {program:?}"))
}

fn bind_read_only(source: &Path, target: &Path) -> anyhow::Result<()> {
    nix::mount::mount(
        Some(source),
        target,
        None::<&str>,
        MsFlags::MS_BIND | MsFlags::MS_REC,
        None::<&str>,
    )
    .with_context(|| format!("bind {source:?} on {target:?}"))?;
    nix::mount::mount(
        None::<&str>,
        target,
        None::<&str>,
        MsFlags::MS_REMOUNT | MsFlags::MS_BIND | MsFlags::MS_RDONLY,
        None::<&str>,
    )
    .with_context(|| format!("remount {target:?} read-only"))
}

/// Lazily detaches, in this mount namespace, every mount at or under `dir` but `keep`
/// and what is under it; deepest first, a few rounds for stacked mounts.
fn hide_mounts_under(dir: &Path, keep: &Path) -> anyhow::Result<()> {
    for _ in 0..8 {
        let mut points: Vec<PathBuf> = mountinfo(Path::new("/proc/self/mountinfo"))
            .context("read /proc/self/mountinfo")?
            .into_iter()
            .map(|m| m.mount_point)
            .filter(|p| p.starts_with(dir) && !p.starts_with(keep))
            .collect();
        if points.is_empty() {
            return Ok(());
        }
        points.sort_by_key(|p| std::cmp::Reverse(p.components().count()));
        for p in points {
            match nix::mount::umount2(&p, MntFlags::MNT_DETACH) {
                // Gone with a parent detached before it.
                Ok(()) | Err(Errno::EINVAL | Errno::ENOENT) => {}
                Err(e) => return Err(e).with_context(|| format!("detach {p:?}")),
            }
        }
    }
    anyhow::bail!("mounts under {dir:?} keep coming back")
}

/// The lab container's side of a strategy: where its opens go, and how it waits.
struct Consumer {
    log: File,
    /// Watch stdin for end of file.
    lifeline: bool,
    /// SIGHUP.
    hangups: SignalFd,
}

impl Host for Consumer {
    /// Appends the open's line to the open log, in one write(2).
    fn log_open(&mut self, open: &Open) -> anyhow::Result<()> {
        self.log
            .write_all(open.line().as_bytes())
            .context("write the open log")
    }

    /// Tells the lab the watch is in place and the first open is logged.
    fn ready(&mut self) -> anyhow::Result<()> {
        let mut out = io::stdout().lock();
        out.write_all(format!("{READY}\n").as_bytes())
            .and_then(|()| out.flush())
            .context("report ready on stdout")
    }

    /// Stops when the lifeline (stdin) is closed.
    fn wait(
        &mut self,
        fd: Option<BorrowedFd<'_>>,
        timeout: Option<Duration>,
    ) -> anyhow::Result<Wake> {
        let mut fds = Vec::with_capacity(3);
        if let Some(fd) = fd {
            fds.push(wait::pollfd(fd.as_raw_fd()));
        }
        fds.push(wait::pollfd(self.hangups.as_raw_fd()));
        if self.lifeline {
            fds.push(wait::pollfd(libc::STDIN_FILENO));
        }
        wait::poll(&mut fds, timeout).context("poll")?;
        if self.lifeline {
            let life = fds.last().expect("lifeline pollfd");
            if wait::ready(life) {
                let mut buf = [0u8; 64];
                // Unbuffered, past std's stdin buffer: anything written to stdin is
                // ignored; end of file (or an error other than EINTR) ends the process.
                // SAFETY: `buf` is writable for its length.
                let n = unsafe { libc::read(life.fd, buf.as_mut_ptr().cast(), buf.len()) };
                let interrupted =
                    n < 0 && io::Error::last_os_error().kind() == io::ErrorKind::Interrupted;
                if n == 0 || (n < 0 && !interrupted) {
                    return Ok(Wake::Stop);
                }
            }
        }
        if fd.is_some() && wait::ready(&fds[0]) {
            return Ok(Wake::Readable);
        }
        let hup = usize::from(fd.is_some());
        if wait::ready(&fds[hup])
            && self
                .hangups
                .read_signal()
                .context("read signalfd")?
                .is_some()
        {
            return Ok(Wake::Hangup);
        }
        Ok(Wake::Idle)
    }
}
