//! Lab containers: real processes consuming a lab volume the way applications in pods
//! do, set up the way the kubelet and a container runtime (containerd, systemd cgroup
//! driver) set up a container (DOMAIN.md 2):
//!
//! ```text
//! <cgroup2>/kubepods.slice/kubepods-burstable.slice/
//!     kubepods-burstable-pod<uid, '-' as '_'>.slice/cri-containerd-<id>.scope   its cgroup
//! <pod logs>/<namespace>_<pod>_<uid>/<container>/<n>.log                       empty
//! <container logs>/<pod>_<namespace>_<container>-<id>.log -> the file above
//! <root>/pods/<uid>/volume-subpaths/<volume>/<container>/0   subPath: the file, bound
//! <base>/containers/<id>/          its mount path (the volume is bound on it, in the
//!                                  process's own mount namespace only)
//! <base>/containers/<id>.opens     its open log (see `consumer`); a strategy's only
//! <base>/containers/<id>.stdout    an external program's stdout
//! <base>/containers/<id>.stderr    its stderr
//! ```
//!
//! The process is `reloadscope lab-consumer` ([`consumer_main`](super::consumer_main)):
//! it moves itself into the cgroup, unshares its mount namespace, binds the volume
//! (read-only) and consumes the file with a [`Strategy`], logging every open. It keeps
//! the host's root, so paths are the same inside and out, but detaches the copies of
//! the kubelet's mounts (every volume and subPath of the node) from its namespace, as
//! a runtime's container, in a root of its own, never has them: its mountinfo shows
//! its own volume mount only, as on a node.
//!
//! With [`ContainerSpec::command`] set, the same process, once set up the same way,
//! execs that program instead of running a strategy: a real watcher (`inotifywait`, a
//! `notify`-based binary such as [`example_bin`]`("notify_consumer")`) runs as the
//! container's process, with the same pid, cgroup and mount namespace.

use std::{
    ffi::{OsStr, OsString},
    fs::{self, DirBuilder, File, OpenOptions},
    io::{self, Read as _},
    os::{
        fd::AsRawFd,
        unix::{
            ffi::{OsStrExt as _, OsStringExt as _},
            fs::{DirBuilderExt, OpenOptionsExt},
        },
    },
    path::{Path, PathBuf},
    process::{Child, ChildStdin, ChildStdout, Command, Stdio},
    time::{Duration, Instant, SystemTime, UNIX_EPOCH},
};

use anyhow::{Context as _, bail};
use nix::mount::MsFlags;

use super::{LabNode, LabPod, Strategy, node::unmount};
use crate::consumers::mountinfo::{self, Mount};

/// How long [`LabContainer::start`] waits for the process to report ready.
const READY_TIMEOUT: Duration = Duration::from_secs(10);
/// The timer poller's default period.
const DEFAULT_PERIOD: Duration = Duration::from_secs(1);
/// How long a stop waits for the kernel to let go of an emptied cgroup.
const CGROUP_RMDIR_TIMEOUT: Duration = Duration::from_secs(2);
/// The kubelet creates `volume-subpaths` dirs 0750 and the bind target file 0640.
const SUBPATH_DIR_MODE: u32 = 0o750;
const SUBPATH_FILE_MODE: u32 = 0o640;
/// At most this much of a dead process's stderr goes into an error.
const STDERR_IN_ERRORS: usize = 4096;

/// What to run in a [`LabContainer`].
#[derive(Clone, Copy, Debug)]
pub struct ContainerSpec<'a> {
    /// Container name: a DNS label, as in a pod spec.
    pub name: &'a str,
    /// Host path of the volume (a [`LabNode`] volume dir of the pod).
    pub volume_dir: &'a Path,
    /// The file the process reads (a key of the volume's payload).
    pub key: &'a str,
    /// Ignored when `command` is set.
    pub strategy: Strategy,
    /// Mount only the key's file (a `subPath` volumeMount) instead of the volume.
    pub sub_path: bool,
    /// The timer poller's period.
    pub period: Duration,
    /// An external program and its arguments to run as the container's process instead
    /// of the lab consumer: set up the same way (cgroup, mount namespace, the volume
    /// bound read-only, the kubelet's mounts hidden), the process then execs it.
    /// `{file}` in any argument (the program's name too) becomes the file as the
    /// container sees it ([`LabContainer::file`]), `{dir}` its mount path
    /// ([`LabContainer::mount_dir`]). The program is looked up in `PATH`. Its stdout
    /// goes to a file ([`LabContainer::output`]), its stderr where the consumer's goes,
    /// its stdin is /dev/null; it has no open log. Unlike the lab consumer, it has no
    /// lifeline on stdin: [`LabContainer::stop`] or a drop kills it (SIGKILL, same
    /// pid), but a lab process killed outright leaves it running.
    pub command: Option<&'a [OsString]>,
}

impl<'a> ContainerSpec<'a> {
    /// A whole-volume mount, with the default period (1 s).
    pub fn new(name: &'a str, volume_dir: &'a Path, key: &'a str, strategy: Strategy) -> Self {
        ContainerSpec {
            name,
            volume_dir,
            key,
            strategy,
            sub_path: false,
            period: DEFAULT_PERIOD,
            command: None,
        }
    }

    /// A whole-volume mount whose process is `command` (see [`ContainerSpec::command`]).
    pub fn program(
        name: &'a str,
        volume_dir: &'a Path,
        key: &'a str,
        command: &'a [OsString],
    ) -> Self {
        ContainerSpec {
            command: Some(command),
            // Not run.
            ..ContainerSpec::new(name, volume_dir, key, Strategy::ReadOnce)
        }
    }

    /// What runs: the strategy's name, or the program's.
    fn what(&self) -> String {
        match self.command {
            Some(argv) => argv
                .first()
                .map_or("(no program)".into(), |p| p.to_string_lossy().into_owned()),
            None => self.strategy.name().to_owned(),
        }
    }
}

/// The path of example binary `name` of this package, built next to the running
/// executable: `target/<profile>/examples/<name>` for a test binary
/// (`target/<profile>/deps/...`) or the reloadscope binary (`target/<profile>/...`).
/// `cargo test` and `cargo build --examples` build them; `cargo test --test X` alone
/// does not, and then this fails, saying so.
pub fn example_bin(name: &str) -> anyhow::Result<PathBuf> {
    let exe = std::env::current_exe().context("find the running executable")?;
    let dir = exe
        .parent()
        .context("the running executable has no directory")?;
    let profile = if dir.file_name() == Some(OsStr::new("deps")) {
        dir.parent().context("deps dir has no parent")?
    } else {
        dir
    };
    let bin = profile.join("examples").join(name);
    if !bin.is_file() {
        bail!(
            "no example binary {bin:?}: build it with `cargo build -p reloadscope --examples` \
             (plain `cargo test` builds it too)"
        );
    }
    Ok(bin)
}

/// One open of the file, from the process's open log.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Open {
    /// Wall-clock time taken right before open(2).
    pub at: SystemTime,
    /// The first 32 bytes it read, or the errno of a failed open or read.
    pub head: Result<Vec<u8>, i32>,
}

/// A running lab container. See the module docs. Dropping it kills the process and
/// undoes what [`LabContainer::start`] made, as well as it can.
#[derive(Debug)]
pub struct LabContainer {
    pub pid: u32,
    /// 64 hex digits, like a containerd container id.
    pub id: String,
    pub name: String,
    /// Its cgroup v2 directory (absolute, under the cgroup2 mount).
    pub cgroup_dir: PathBuf,
    child: Option<Child>,
    /// The write end of the process's stdin: it exits when that closes.
    lifeline: Option<ChildStdin>,
    /// `kubepods-burstable-pod<uid>.slice`: removed when its last container goes.
    pod_cgroup: PathBuf,
    container_log: PathBuf,
    /// A strategy's open log; `None` for an external program.
    opens_log: Option<PathBuf>,
    /// An external program's stdout; `None` for a strategy.
    output_log: Option<PathBuf>,
    stderr_log: PathBuf,
    /// The kubelet-side subPath bind, once mounted.
    sub_path_bind: Option<PathBuf>,
    mount_dir: PathBuf,
    /// The file as the container sees it.
    file: PathBuf,
    sub_path: bool,
    torn_down: bool,
}

impl LabContainer {
    /// `bin` is the reloadscope binary: the container process is `bin lab-consumer
    /// [args]` (which execs `spec.command`, if set, once set up). Creates, like the
    /// kubelet and a runtime: the cgroup
    /// `<cgroup2>/kubepods.slice/kubepods-burstable.slice/kubepods-burstable-pod<uid
    /// with '_'>.slice/cri-containerd-<id>.scope`, the container log (empty), for
    /// `sub_path` the file bind mount at `<root>/pods/<uid>/volume-subpaths/<volume>/
    /// <container>/0` of `<volume>/<key>` resolved through `..data` (in this mount
    /// namespace), and the mount dir `<base>/containers/<id>/`. Returns once the
    /// process is ready; fails, with the process's stderr, when it dies first or is not
    /// ready within 10 s. Ready means, for a strategy: its watch is in place and its
    /// first open logged. For `spec.command`: the process is set up and its execve(2)
    /// of the program succeeded (the consumer's close-on-exec pipe to the lab closed
    /// without an `exec failed`) and it has not exited: the program runs, but may not
    /// have set up its watches yet (wait for those as its output or
    /// `/proc/<pid>/fdinfo` shows them).
    pub fn start(
        bin: &Path,
        node: &LabNode,
        pod: &LabPod,
        spec: &ContainerSpec,
    ) -> anyhow::Result<LabContainer> {
        check_name(spec.name)?;
        check_key(spec.key)?;
        if spec.period.is_zero() {
            bail!("container {}: the period must not be zero", spec.name);
        }
        if spec.command.is_some_and(<[_]>::is_empty) {
            bail!("container {}: the command is empty", spec.name);
        }
        let volume_name = spec
            .volume_dir
            .file_name()
            .and_then(|n| n.to_str())
            .with_context(|| format!("volume dir {:?} has no UTF-8 name", spec.volume_dir))?;

        let id = container_id().context("container id")?;
        let cgroup2 = cgroup2_mount()?;
        let pod_cgroup = cgroup2
            .join("kubepods.slice")
            .join("kubepods-burstable.slice")
            .join(format!(
                "kubepods-burstable-pod{}.slice",
                pod.uid.replace('-', "_")
            ));
        let cgroup_dir = pod_cgroup.join(format!("cri-containerd-{id}.scope"));
        let state = node.base().join("containers");
        let mount_dir = state.join(&id);
        let container_log = node.container_logs_dir().join(format!(
            "{}_{}_{}-{id}.log",
            pod.name, pod.namespace, spec.name
        ));
        // From here on, dropping `ctr` undoes what exists.
        let mut ctr = LabContainer {
            pid: 0,
            name: spec.name.to_owned(),
            cgroup_dir,
            child: None,
            lifeline: None,
            pod_cgroup,
            container_log,
            opens_log: spec
                .command
                .is_none()
                .then(|| state.join(format!("{id}.opens"))),
            output_log: spec
                .command
                .is_some()
                .then(|| state.join(format!("{id}.stdout"))),
            stderr_log: state.join(format!("{id}.stderr")),
            sub_path_bind: None,
            file: mount_dir.join(spec.key),
            mount_dir,
            sub_path: spec.sub_path,
            torn_down: false,
            id,
        };

        make_cgroup(&ctr.cgroup_dir)?;
        make_container_log(node, pod, spec.name, &ctr.container_log)?;
        fs::create_dir_all(&state).with_context(|| format!("create {state:?}"))?;
        fs::create_dir(&ctr.mount_dir).with_context(|| format!("create {:?}", ctr.mount_dir))?;
        for log in ctr.opens_log.iter().chain(&ctr.output_log) {
            File::create(log).with_context(|| format!("create {log:?}"))?;
        }
        let stderr = File::create(&ctr.stderr_log)
            .with_context(|| format!("create {:?}", ctr.stderr_log))?;

        let source = if spec.sub_path {
            let bind = node
                .pod_dir(pod)
                .join("volume-subpaths")
                .join(volume_name)
                .join(spec.name)
                .join("0");
            bind_sub_path(spec.volume_dir, spec.key, &bind)?;
            ctr.sub_path_bind = Some(bind.clone());
            bind
        } else {
            spec.volume_dir.to_path_buf()
        };

        let mut cmd = Command::new(bin);
        cmd.arg("lab-consumer")
            .arg("--cgroup")
            .arg(&ctr.cgroup_dir)
            .arg("--source")
            .arg(&source)
            .arg("--mount-dir")
            .arg(&ctr.mount_dir)
            .arg("--key")
            .arg(spec.key)
            .arg("--period")
            .arg(spec.period.as_secs_f64().to_string())
            .arg("--hide")
            .arg(node.kubelet_root())
            .arg("--exit-with-stdin")
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(stderr);
        if spec.sub_path {
            cmd.arg("--sub-path");
        }
        if let Some(log) = &ctr.opens_log {
            cmd.arg("--strategy")
                .arg(spec.strategy.name())
                .arg("--log")
                .arg(log);
        }
        if let Some(argv) = spec.command {
            let out = ctr.output_log.as_ref().expect("a program's output log");
            cmd.arg("--output").arg(out).arg("--");
            cmd.args(
                argv.iter()
                    .map(|a| substitute(a, &ctr.file, &ctr.mount_dir)),
            );
        }
        let mut child = cmd.spawn().with_context(|| format!("start {bin:?}"))?;
        ctr.pid = child.id();
        ctr.lifeline = child.stdin.take();
        let stdout = child.stdout.take().expect("stdout is piped");
        ctr.child = Some(child);

        let deadline = Instant::now() + READY_TIMEOUT;
        let ready = match spec.command {
            None => wait_ready(&stdout, deadline),
            Some(_) => wait_exec(&stdout, deadline, ctr.child.as_mut().expect("spawned")),
        };
        drop(stdout);
        if let Err(why) = ready {
            let status = ctr.kill_and_wait();
            let stderr = ctr.stderr();
            bail!(
                "container {} ({} {}): {why} ({status}); stderr: {stderr}",
                ctr.name,
                spec.what(),
                ctr.pid
            );
        }
        tracing::debug!(
            id = %ctr.id,
            pid = ctr.pid,
            runs = spec.what(),
            "lab container {} started",
            ctr.name
        );
        Ok(ctr)
    }

    /// Every time the process opened the file so far: the wall-clock time taken right
    /// before open(2), in order. An error for an external program's container: it
    /// keeps no open log (an empty list would read as "never reopened").
    pub fn opens(&self) -> anyhow::Result<Vec<SystemTime>> {
        Ok(self.reads()?.into_iter().map(|o| o.at).collect())
    }

    /// Every open so far with what it read. An error for an external program's
    /// container, as [`LabContainer::opens`].
    pub fn reads(&self) -> anyhow::Result<Vec<Open>> {
        let Some(log) = &self.opens_log else {
            bail!(
                "container {} runs an external program: it keeps no open log",
                self.name
            );
        };
        let raw = fs::read(log).with_context(|| format!("read {log:?}"))?;
        let text = String::from_utf8(raw).context("open log is not UTF-8")?;
        // An unfinished last line is not an open yet.
        let complete = text.rfind('\n').map_or("", |end| &text[..end]);
        complete
            .lines()
            .map(|l| parse_open(l).with_context(|| format!("bad open log line {l:?}")))
            .collect()
    }

    /// What an external program wrote to its stdout so far. An error for a strategy's
    /// container (its stdout is the lab's ready pipe).
    pub fn output(&self) -> anyhow::Result<String> {
        let Some(log) = &self.output_log else {
            bail!(
                "container {} runs a strategy: its output is its open log",
                self.name
            );
        };
        let raw = fs::read(log).with_context(|| format!("read {log:?}"))?;
        Ok(String::from_utf8_lossy(&raw).into_owned())
    }

    /// The container's mount path: the volume (or, for a subPath, the directory of
    /// the file) as the process sees it.
    pub fn mount_dir(&self) -> &Path {
        &self.mount_dir
    }

    /// The file as the process sees it (`<mount dir>/<key>`).
    pub fn file(&self) -> &Path {
        &self.file
    }

    /// `<container logs>/<pod>_<namespace>_<container>-<id>.log`
    pub fn container_log(&self) -> &Path {
        &self.container_log
    }

    /// The kubelet-side subPath bind (`.../volume-subpaths/<volume>/<container>/0`).
    pub fn sub_path_bind(&self) -> Option<&Path> {
        self.sub_path_bind.as_deref()
    }

    /// The root field of the process's mount of the volume in `/proc/<pid>/mountinfo`:
    /// the volume dir's path on its file system (`/` for a tmpfs volume); for a subPath
    /// the file's, `.../..2026_.../<key>//deleted` once an update replaced it.
    pub fn mount_root(&self) -> anyhow::Result<Option<String>> {
        let at = if self.sub_path {
            &self.file
        } else {
            &self.mount_dir
        };
        let path = PathBuf::from(format!("/proc/{}/mountinfo", self.pid));
        let mounts = mountinfo(&path).with_context(|| format!("read {path:?}"))?;
        // The last one: what the path shows when mounts are stacked.
        Ok(mounts
            .into_iter()
            .rev()
            .find(|m| m.mount_point == *at)
            .map(|m| {
                let root = m.root.to_string_lossy();
                if m.deleted {
                    format!("{root}//deleted")
                } else {
                    root.into_owned()
                }
            }))
    }

    /// Kills the process, waits for it, removes the cgroup dir, the subPath bind mount
    /// and the mount dir (and the open log or output). The container log stays, as the
    /// kubelet keeps an exited container's log. Tries every step; returns the first
    /// failure.
    pub fn stop(mut self) -> anyhow::Result<()> {
        self.teardown()
    }

    /// SIGKILL and reap; describes how it ended.
    fn kill_and_wait(&mut self) -> String {
        self.lifeline = None;
        let Some(mut child) = self.child.take() else {
            return "not running".into();
        };
        // An exited but unreaped child is still there to signal: no error then.
        let _ = child.kill();
        match child.wait() {
            Ok(status) => status.to_string(),
            Err(e) => format!("wait: {e}"),
        }
    }

    /// The process's stderr, or why it cannot be read; shortened.
    fn stderr(&self) -> String {
        let mut buf = Vec::new();
        let read = File::open(&self.stderr_log)
            .and_then(|f| f.take(STDERR_IN_ERRORS as u64).read_to_end(&mut buf));
        match read {
            Ok(_) if buf.is_empty() => "(empty)".into(),
            Ok(_) => String::from_utf8_lossy(&buf).trim_end().to_owned(),
            Err(e) => format!("(unreadable: {e})"),
        }
    }

    fn teardown(&mut self) -> anyhow::Result<()> {
        if self.torn_down {
            return Ok(());
        }
        self.torn_down = true;
        let mut first: Option<anyhow::Error> = None;
        let mut note = |r: anyhow::Result<()>| {
            if let Err(e) = r {
                first.get_or_insert(e);
            }
        };

        if let Some(mut child) = self.child.take() {
            self.lifeline = None;
            let _ = child.kill();
            note(
                child
                    .wait()
                    .map(drop)
                    .with_context(|| format!("wait for container process {}", self.pid)),
            );
        }
        if let Some(bind) = self.sub_path_bind.take() {
            note(unmount(&bind));
            note(remove_file(&bind));
            // `<container>/` and `<volume>/` when nothing else is in them.
            for dir in bind.ancestors().skip(1).take(2) {
                let _ = fs::remove_dir(dir);
            }
        }
        note(remove_cgroup(&self.cgroup_dir));
        // The pod's slice goes with its last container; busy otherwise.
        let _ = fs::remove_dir(&self.pod_cgroup);
        note(match fs::remove_dir_all(&self.mount_dir) {
            Err(e) if e.kind() != io::ErrorKind::NotFound => {
                Err(e).with_context(|| format!("remove {:?}", self.mount_dir))
            }
            _ => Ok(()),
        });
        for log in self.opens_log.iter().chain(&self.output_log) {
            note(remove_file(log));
        }
        note(remove_file(&self.stderr_log));
        match first {
            None => {
                tracing::debug!(id = %self.id, "lab container {} stopped", self.name);
                Ok(())
            }
            Some(e) => Err(e.context(format!("stop container {}", self.name))),
        }
    }
}

impl Drop for LabContainer {
    fn drop(&mut self) {
        if let Err(e) = self.teardown() {
            tracing::warn!("lab container drop: {e:#}");
        }
    }
}

/// A DNS label, as the API server requires of container names; never '_', the
/// separator of log file names.
fn check_name(name: &str) -> anyhow::Result<()> {
    let ok = !name.is_empty()
        && name.len() <= 63
        && name
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
        && !name.starts_with('-')
        && !name.ends_with('-');
    if !ok {
        bail!("invalid container name {name:?}: must be a DNS label");
    }
    Ok(())
}

/// A relative path without `.` or `..` components.
fn check_key(key: &str) -> anyhow::Result<()> {
    let ok = !key.is_empty()
        && !key.starts_with('/')
        && !key.contains('\0')
        && key
            .split('/')
            .all(|c| !c.is_empty() && c != "." && c != "..");
    if !ok {
        bail!("invalid key {key:?}: must be a relative path without '.' or '..'");
    }
    Ok(())
}

/// 32 random bytes in hex, as containerd's ids.
fn container_id() -> io::Result<String> {
    let mut b = [0u8; 32];
    super::fill_random(&mut b)?;
    Ok(b.iter().map(|x| format!("{x:02x}")).collect())
}

/// The cgroup2 mount point, from `/proc/self/mountinfo` (hybrid hosts have it at
/// `/sys/fs/cgroup/unified`, unified ones at `/sys/fs/cgroup`). A mount of the whole
/// hierarchy (root `/`) is preferred.
pub fn cgroup2_mount() -> anyhow::Result<PathBuf> {
    let mounts =
        mountinfo(Path::new("/proc/self/mountinfo")).context("read /proc/self/mountinfo")?;
    let mut v2 = mounts.iter().filter(|m| m.fs_type == "cgroup2");
    let first = v2.clone().next();
    v2.find(|m| m.root == Path::new("/"))
        .or(first)
        .map(|m| m.mount_point.clone())
        .context("no cgroup2 file system is mounted")
}

/// `mkdir -p`, again when a concurrent teardown removed the pod's slice between two
/// levels.
fn make_cgroup(dir: &Path) -> anyhow::Result<()> {
    let mut attempts = 0;
    loop {
        match fs::create_dir_all(dir) {
            Ok(()) => return Ok(()),
            Err(e) if e.kind() == io::ErrorKind::NotFound && attempts < 5 => attempts += 1,
            Err(e) => return Err(e).with_context(|| format!("create cgroup {dir:?}")),
        }
    }
}

/// Removes an emptied cgroup dir; the kernel may still count a just-reaped process
/// for a moment (EBUSY).
fn remove_cgroup(dir: &Path) -> anyhow::Result<()> {
    let deadline = Instant::now() + CGROUP_RMDIR_TIMEOUT;
    loop {
        match fs::remove_dir(dir) {
            Ok(()) => return Ok(()),
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(()),
            Err(e) if e.raw_os_error() == Some(libc::EBUSY) && Instant::now() < deadline => {
                std::thread::sleep(Duration::from_millis(5));
            }
            Err(e) => return Err(e).with_context(|| format!("remove cgroup {dir:?}")),
        }
    }
}

/// The kubelet's container log: `<pod log dir>/<container>/<n>.log` (the first `n`
/// free: restarts count up), and the runtime's link to it in the container logs dir.
fn make_container_log(node: &LabNode, pod: &LabPod, name: &str, link: &Path) -> anyhow::Result<()> {
    let dir = node.pod_log_dir(pod).join(name);
    fs::create_dir_all(&dir).with_context(|| format!("create {dir:?}"))?;
    let mut n = 0u32;
    let log = loop {
        let log = dir.join(format!("{n}.log"));
        match OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o640)
            .open(&log)
        {
            Ok(_) => break log,
            Err(e) if e.kind() == io::ErrorKind::AlreadyExists => n += 1,
            Err(e) => return Err(e).with_context(|| format!("create {log:?}")),
        }
    };
    std::os::unix::fs::symlink(&log, link).with_context(|| format!("link {link:?} -> {log:?}"))
}

/// The kubelet's subPath preparation: resolve `<volume>/<key>` through the user-visible
/// link and `..data` to the file in the current timestamped dir, and bind that file on
/// a new empty file at `bind`.
fn bind_sub_path(volume_dir: &Path, key: &str, bind: &Path) -> anyhow::Result<()> {
    let vol = fs::canonicalize(volume_dir).with_context(|| format!("resolve {volume_dir:?}"))?;
    let real =
        fs::canonicalize(vol.join(key)).with_context(|| format!("resolve {key} in {vol:?}"))?;
    if !real.starts_with(&vol) || real == vol {
        bail!("subPath {key} resolves to {real:?}, outside volume {vol:?}");
    }
    if !real.is_file() {
        bail!("subPath {key} resolves to {real:?}, not a regular file");
    }
    let parent = bind.parent().context("subPath bind path has no parent")?;
    DirBuilder::new()
        .recursive(true)
        .mode(SUBPATH_DIR_MODE)
        .create(parent)
        .with_context(|| format!("create {parent:?}"))?;
    // Never an existing one: that could be a live bind of a volume file.
    OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(SUBPATH_FILE_MODE)
        .open(bind)
        .with_context(|| format!("create subPath mount point {bind:?}"))?;
    let mounted = nix::mount::mount(
        Some(&real),
        bind,
        None::<&str>,
        MsFlags::MS_BIND,
        None::<&str>,
    );
    if let Err(e) = mounted {
        let _ = fs::remove_file(bind);
        return Err(e).with_context(|| format!("bind {real:?} on {bind:?}"));
    }
    Ok(())
}

/// `{file}` and `{dir}` in `arg` replaced by `file` and `dir`.
fn substitute(arg: &OsStr, file: &Path, dir: &Path) -> OsString {
    let mut out = Vec::with_capacity(arg.len());
    let mut rest = arg.as_bytes();
    while !rest.is_empty() {
        if let Some(after) = rest.strip_prefix(b"{file}") {
            out.extend_from_slice(file.as_os_str().as_bytes());
            rest = after;
        } else if let Some(after) = rest.strip_prefix(b"{dir}") {
            out.extend_from_slice(dir.as_os_str().as_bytes());
            rest = after;
        } else {
            out.push(rest[0]);
            rest = &rest[1..];
        }
    }
    OsString::from_vec(out)
}

/// Reads the process's stdout until `ready\n`; `Err` says why not.
fn wait_ready(stdout: &ChildStdout, deadline: Instant) -> Result<(), String> {
    let got = read_stdout(stdout, deadline, Some(b"ready\n"))?;
    if contains(&got, b"ready\n") {
        Ok(())
    } else {
        Err("exited before it was ready".into())
    }
}

/// An external program's start: the consumer writes `exec\n` once set up, then execs
/// it; the pipe is close-on-exec, so end of file after `exec\n` without `exec
/// failed\n` is a successful execve(2), provided the process is alive (not killed in
/// between, nor the program already gone). `Err` says why not.
fn wait_exec(stdout: &ChildStdout, deadline: Instant, child: &mut Child) -> Result<(), String> {
    let got = read_stdout(stdout, deadline, None)?;
    if contains(&got, b"exec failed\n") {
        return Err("could not exec the program".into());
    }
    if !contains(&got, b"exec\n") {
        return Err("exited before it was ready".into());
    }
    match child.try_wait() {
        Ok(None) => Ok(()),
        Ok(Some(_)) => Err("the program exited at once".into()),
        Err(e) => Err(format!("wait: {e}")),
    }
}

fn contains(got: &[u8], what: &[u8]) -> bool {
    got.windows(what.len()).any(|w| w == what)
}

/// Reads the process's stdout until `until` appears in it, or to end of file (`None`,
/// or the process closed it first); returns what it read. `Err` on the deadline or a
/// read error.
fn read_stdout(
    stdout: &ChildStdout,
    deadline: Instant,
    until: Option<&[u8]>,
) -> Result<Vec<u8>, String> {
    let mut got = Vec::new();
    let mut buf = [0u8; 256];
    loop {
        if until.is_some_and(|u| contains(&got, u)) {
            return Ok(got);
        }
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            return Err(format!("not ready after {READY_TIMEOUT:?}"));
        }
        let mut pfd = libc::pollfd {
            fd: stdout.as_raw_fd(),
            events: libc::POLLIN,
            revents: 0,
        };
        let ms = left.as_millis().clamp(1, i32::MAX as u128) as i32;
        // SAFETY: one valid pollfd.
        let n = unsafe { libc::poll(&mut pfd, 1, ms) };
        if n < 0 {
            let e = io::Error::last_os_error();
            if e.kind() == io::ErrorKind::Interrupted {
                continue;
            }
            return Err(format!("poll its stdout: {e}"));
        }
        if n == 0 {
            continue;
        }
        // SAFETY: `buf` is writable for its length; the fd is open (`stdout`).
        let r = unsafe { libc::read(pfd.fd, buf.as_mut_ptr().cast(), buf.len()) };
        match r {
            0 => return Ok(got),
            r if r < 0 => {
                let e = io::Error::last_os_error();
                if e.kind() != io::ErrorKind::Interrupted {
                    return Err(format!("read its stdout: {e}"));
                }
            }
            r => got.extend_from_slice(&buf[..r as usize]),
        }
    }
}

/// `open <unix nanos> <hex | - | !errno>`
fn parse_open(line: &str) -> Option<Open> {
    let mut parts = line.split(' ');
    if parts.next()? != "open" {
        return None;
    }
    let nanos: u64 = parts.next()?.parse().ok()?;
    let head = parts.next()?;
    if parts.next().is_some() {
        return None;
    }
    let head = if head == "-" {
        Ok(Vec::new())
    } else if let Some(errno) = head.strip_prefix('!') {
        Err(errno.parse().ok()?)
    } else {
        Ok(unhex(head)?)
    };
    Some(Open {
        at: UNIX_EPOCH + Duration::from_nanos(nanos),
        head,
    })
}

fn unhex(s: &str) -> Option<Vec<u8>> {
    if s.is_empty() || !s.len().is_multiple_of(2) {
        return None;
    }
    (0..s.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(s.get(i..i + 2)?, 16).ok())
        .collect()
}

fn remove_file(path: &Path) -> anyhow::Result<()> {
    match fs::remove_file(path) {
        Err(e) if e.kind() != io::ErrorKind::NotFound => {
            Err(e).with_context(|| format!("remove {path:?}"))
        }
        _ => Ok(()),
    }
}

/// The mounts listed in a mountinfo file (the agent's own parser).
pub(super) fn mountinfo(path: &Path) -> io::Result<Vec<Mount>> {
    Ok(mountinfo::parse_bytes(&fs::read(path)?).0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn open_log_lines() {
        let at = UNIX_EPOCH + Duration::from_nanos(1_795_615_806_123_456_789);
        assert_eq!(
            parse_open("open 1795615806123456789 72657600ff"),
            Some(Open {
                at,
                head: Ok(b"rev\0\xff".to_vec())
            })
        );
        assert_eq!(
            parse_open("open 1795615806123456789 -").unwrap().head,
            Ok(vec![])
        );
        assert_eq!(
            parse_open("open 1795615806123456789 !2").unwrap().head,
            Err(2)
        );
        for bad in [
            "",
            "open",
            "open 1",
            "open x 00",
            "open 1 0",
            "open 1 zz",
            "open 1 00 extra",
            "close 1 00",
        ] {
            assert_eq!(parse_open(bad), None, "{bad:?}");
        }
    }

    #[test]
    fn names_and_keys() {
        for ok in ["app", "a-1", "x"] {
            check_name(ok).unwrap();
        }
        for bad in ["", "-a", "a-", "a_b", "A", "a/b", &"a".repeat(64)] {
            assert!(check_name(bad).is_err(), "{bad:?}");
        }
        for ok in ["config.yaml", "sub/key", "..data-free"] {
            check_key(ok).unwrap();
        }
        for bad in ["", "/abs", "a/../b", "..", ".", "a//b", "a/", "a\0b"] {
            assert!(check_key(bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn placeholders() {
        let (file, dir) = (Path::new("/c/x/config.yaml"), Path::new("/c/x"));
        for (arg, want) in [
            ("{file}", "/c/x/config.yaml"),
            ("--dir={dir}/", "--dir=/c/x/"),
            ("{dir}{file}", "/c/x/c/x/config.yaml"),
            ("{file}s {files} {di}", "/c/x/config.yamls {files} {di}"),
            ("plain", "plain"),
            ("", ""),
        ] {
            assert_eq!(substitute(OsStr::new(arg), file, dir), want, "{arg:?}");
        }
        let odd = OsStr::from_bytes(b"\xff{file}");
        assert_eq!(
            substitute(odd, file, dir).as_bytes(),
            b"\xff/c/x/config.yaml"
        );
    }

    #[test]
    fn ids_are_64_hex() {
        let a = container_id().unwrap();
        let b = container_id().unwrap();
        assert_eq!(a.len(), 64);
        assert!(
            a.bytes()
                .all(|c| c.is_ascii_hexdigit() && !c.is_ascii_uppercase())
        );
        assert_ne!(a, b);
    }
}
