//! Lab containers: real processes consuming a lab volume the way applications in pods
//! do, set up the way the kubelet and a container runtime (containerd, systemd cgroup
//! driver) set up a container (docs/design.md 2):
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
//! The process is `reloadscope-lab consumer` ([`consumer_main`](super::consumer_main)):
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
    time::{Duration, Instant, SystemTime},
};

use anyhow::{Context as _, bail};
use nix::mount::MsFlags;

mod setup;

use reloadscope::node::mountinfo::{self, Mount};
pub use setup::cgroup2_mount;
pub(super) use setup::mountinfo;
use setup::*;

use super::{LabNode, LabPod, Strategy, node::unmount};

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

/// The directory of the running executable's build profile: `target/<profile>` for a
/// test or bench binary (`target/<profile>/deps/...`) or a binary of the workspace.
fn profile_dir() -> anyhow::Result<PathBuf> {
    let exe = std::env::current_exe().context("find the running executable")?;
    let dir = exe
        .parent()
        .context("the running executable has no directory")?;
    Ok(if dir.file_name() == Some(OsStr::new("deps")) {
        dir.parent().context("deps dir has no parent")?
    } else {
        dir
    }
    .to_owned())
}

/// The path of example binary `name` of this crate, built next to the running
/// executable: `target/<profile>/examples/<name>`. `cargo test` and `cargo build
/// --examples` build them; `cargo test --test X` alone does not, and then this fails,
/// saying so.
pub fn example_bin(name: &str) -> anyhow::Result<PathBuf> {
    let bin = profile_dir()?.join("examples").join(name);
    if !bin.is_file() {
        bail!(
            "no example binary {bin:?}: build it with `cargo build -p reloadscope-lab --examples` \
             (plain `cargo test` builds it too)"
        );
    }
    Ok(bin)
}

/// The `reloadscope-lab` binary, which runs as each lab container's process
/// ([`LabContainer::start`]): the running executable when it is that binary, else the
/// one built beside it (`target/<profile>/reloadscope-lab`). `cargo test --workspace`
/// builds it; a test of another crate run alone may not, and then this fails, saying so.
pub fn lab_bin() -> anyhow::Result<PathBuf> {
    let exe = std::env::current_exe().context("find the running executable")?;
    if exe.file_name() == Some(OsStr::new("reloadscope-lab")) {
        return Ok(exe);
    }
    let bin = profile_dir()?.join("reloadscope-lab");
    if !bin.is_file() {
        bail!("no lab binary {bin:?}: build it with `cargo build -p reloadscope-lab`");
    }
    Ok(bin)
}

/// One open of the file, from the process's open log.
pub use lab_consumer::Open;

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
    /// `bin` is the lab binary ([`lab_bin`]): the container process is `bin consumer
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
        cmd.arg("consumer")
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
            .map(|l| Open::parse(l).with_context(|| format!("bad open log line {l:?}")))
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
        // Its other processes (a program's children) go too, as a runtime stops them
        // all (cgroup v2's `cgroup.kill`; absent, the removal below says busy).
        let _ = fs::write(self.cgroup_dir.join("cgroup.kill"), "1");
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
