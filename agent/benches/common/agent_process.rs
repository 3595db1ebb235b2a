//! The agent as a process of its own (the built `reloadscope` binary), read only
//! through its HTTP endpoints and `/proc`, so that its CPU time and memory are its own.

use std::{
    ffi::{OsStr, OsString},
    net::{SocketAddr, TcpListener},
    path::{Path, PathBuf},
    process::{Child, Command, Stdio},
    thread,
    time::{Duration, Instant},
};

use anyhow::{Context as _, bail};
use reloadscope_lab::{
    LabNode,
    scrape::{self, Samples},
};

/// The agent binary cargo builds with a benchmark (`CARGO_BIN_EXE_reloadscope`: `cargo
/// bench` builds it in the release profile, `target/release/reloadscope`), else one
/// next to the running benchmark's `deps/` dir.
pub fn agent_binary() -> anyhow::Result<PathBuf> {
    let mut candidates = vec![PathBuf::from(env!("CARGO_BIN_EXE_reloadscope"))];
    if let Ok(exe) = std::env::current_exe()
        && let Some(profile_dir) = exe.parent().and_then(|deps| deps.parent())
    {
        candidates.push(profile_dir.join("reloadscope"));
        if let Some(target) = profile_dir.parent() {
            candidates.push(target.join("release").join("reloadscope"));
        }
    }
    candidates
        .iter()
        .find(|p| p.is_file())
        .cloned()
        .with_context(|| {
            format!(
                "no reloadscope binary among {candidates:?}: build it with \
                 `cargo build -p reloadscope --release`"
            )
        })
}

/// A free loopback port for the agent's `--listen`.
pub fn free_port() -> anyhow::Result<SocketAddr> {
    let l = TcpListener::bind("127.0.0.1:0").context("bind a free port")?;
    Ok(l.local_addr()?)
}

/// A running `reloadscope agent`; killed if still running when dropped (error paths).
pub struct AgentProcess {
    child: Child,
    pub addr: SocketAddr,
    /// Taken right before the process was spawned.
    pub started: Instant,
}

impl AgentProcess {
    /// `binary agent --kubelet-root .. --pod-logs-dir .. --container-logs-dir ..
    /// --listen <free port> [extra]`, stdout to /dev/null, stderr as given.
    pub fn spawn<S: AsRef<OsStr>>(
        binary: &Path,
        node: &LabNode,
        extra: &[S],
        stderr: Stdio,
    ) -> anyhow::Result<AgentProcess> {
        let mut args: Vec<OsString> = vec![
            "--kubelet-root".into(),
            node.kubelet_root().into(),
            "--pod-logs-dir".into(),
            node.pod_logs_dir().into(),
            "--container-logs-dir".into(),
            node.container_logs_dir().into(),
        ];
        args.extend(extra.iter().map(|a| a.as_ref().to_owned()));
        Self::start(binary, &args, stderr)
    }

    /// `binary agent [args] --listen <free port>`: the agent with exactly these
    /// arguments; stdout to /dev/null, stderr as given.
    pub fn start<S: AsRef<OsStr>>(
        binary: &Path,
        args: &[S],
        stderr: Stdio,
    ) -> anyhow::Result<AgentProcess> {
        let addr = free_port()?;
        let mut cmd = Command::new(binary);
        cmd.arg("agent")
            .args(args)
            .arg("--listen")
            .arg(addr.to_string())
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(stderr);
        let started = Instant::now();
        let child = cmd
            .spawn()
            .with_context(|| format!("start {}", binary.display()))?;
        Ok(AgentProcess {
            child,
            addr,
            started,
        })
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    fn check_alive(&mut self, what: &str) -> anyhow::Result<()> {
        if let Some(status) = self.child.try_wait()? {
            bail!("the agent exited ({status}) while {what}");
        }
        Ok(())
    }

    /// Polls `/readyz` every `every` until it answers 200; returns the time since the
    /// spawn when it did.
    pub fn wait_ready(&mut self, limit: Duration, every: Duration) -> anyhow::Result<Duration> {
        loop {
            self.check_alive("starting")?;
            if scrape::get(self.addr, "/readyz").is_ok_and(|(code, _)| code == 200) {
                return Ok(self.started.elapsed());
            }
            if self.started.elapsed() > limit {
                bail!("the agent was not ready {limit:?} after its start");
            }
            thread::sleep(every);
        }
    }

    /// Scrapes `/metrics` every `every` until `cond` holds on one; returns that scrape
    /// and the time since the spawn when it ended.
    pub fn wait_scrape(
        &mut self,
        limit: Duration,
        every: Duration,
        what: &str,
        cond: impl Fn(&Samples) -> bool,
    ) -> anyhow::Result<(Samples, Duration)> {
        let start = Instant::now();
        loop {
            self.check_alive(&format!("waiting for {what}"))?;
            if let Ok(m) = scrape::scrape(self.addr)
                && cond(&m)
            {
                return Ok((m, self.started.elapsed()));
            }
            if start.elapsed() > limit {
                bail!("timed out after {limit:?} waiting for {what}");
            }
            thread::sleep(every);
        }
    }

    pub fn scrape(&mut self) -> anyhow::Result<Samples> {
        self.check_alive("being scraped")?;
        scrape::scrape(self.addr).context("scrape /metrics")
    }

    /// SIGTERM, then waits up to 5 s; returns how it ended and how long it took.
    pub fn terminate(&mut self) -> (String, Duration) {
        let start = Instant::now();
        let pid = nix::unistd::Pid::from_raw(self.pid() as i32);
        if let Ok(Some(status)) = self.child.try_wait() {
            return (format!("had exited already: {status}"), start.elapsed());
        }
        if let Err(e) = nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGTERM) {
            return (format!("SIGTERM failed: {e}"), start.elapsed());
        }
        while start.elapsed() < Duration::from_secs(5) {
            if let Ok(Some(status)) = self.child.try_wait() {
                return (status.to_string(), start.elapsed());
            }
            thread::sleep(Duration::from_millis(5));
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
        ("still running after 5 s; killed".into(), start.elapsed())
    }
}

impl Drop for AgentProcess {
    fn drop(&mut self) {
        if let Ok(None) = self.child.try_wait() {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}
