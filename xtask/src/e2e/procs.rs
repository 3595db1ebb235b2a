//! The e2e's children and scratch directory, each cleaned up when dropped (on
//! success, on failure and on a panic alike).

use std::fs::{self, File};
use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::thread::sleep;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};

/// A directory of its own under the system temp dir, removed with its contents.
pub struct TempDir(PathBuf);

impl TempDir {
    pub fn new(prefix: &str) -> Result<Self> {
        let path = std::env::temp_dir().join(format!("{prefix}-{}", std::process::id()));
        // Left over by a run of the same pid that was killed: start clean.
        let _ = fs::remove_dir_all(&path);
        fs::create_dir_all(&path)
            .with_context(|| format!("could not create {}", path.display()))?;
        Ok(Self(path))
    }

    pub fn path(&self) -> &Path {
        &self.0
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = fs::remove_dir_all(&self.0);
    }
}

/// A child process with its stdout and stderr in a log file; stopped when dropped.
pub struct Proc {
    pub name: &'static str,
    child: Child,
    log: PathBuf,
}

impl Proc {
    pub fn spawn(name: &'static str, command: &mut Command, dir: &Path) -> Result<Self> {
        let log = dir.join(format!("{name}.log"));
        let out =
            File::create(&log).with_context(|| format!("could not create {}", log.display()))?;
        let child = command
            .stdin(Stdio::null())
            .stdout(out.try_clone()?)
            .stderr(out)
            .spawn()
            .with_context(|| {
                format!("could not start {name}: `{}`", crate::cmd::display(command))
            })?;
        Ok(Self { name, child, log })
    }

    /// Fails if the process has exited.
    pub fn alive(&mut self) -> Result<()> {
        match self.child.try_wait()? {
            None => Ok(()),
            Some(status) => bail!("{} exited early ({status})", self.name),
        }
    }

    /// The last `n` lines of its output.
    pub fn tail(&self, n: usize) -> String {
        let text = fs::read_to_string(&self.log).unwrap_or_default();
        let lines: Vec<&str> = text.lines().collect();
        lines[lines.len().saturating_sub(n)..].join("\n")
    }

    /// SIGTERM (the lab then unmounts its node and stops its containers), and
    /// SIGKILL if it has not exited within 10 s.
    fn stop(&mut self) -> Option<ExitStatus> {
        if let Ok(Some(status)) = self.child.try_wait() {
            return Some(status);
        }
        let _ = Command::new("kill")
            .args(["-TERM", &self.child.id().to_string()])
            .status();
        let deadline = Instant::now() + Duration::from_secs(10);
        while Instant::now() < deadline {
            if let Ok(Some(status)) = self.child.try_wait() {
                return Some(status);
            }
            sleep(Duration::from_millis(50));
        }
        eprintln!(
            "{} did not stop within 10 s of SIGTERM: killing it",
            self.name
        );
        let _ = self.child.kill();
        self.child.wait().ok()
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        self.stop();
    }
}

/// A loopback port free at the time of the call.
pub fn free_port() -> Result<u16> {
    Ok(TcpListener::bind("127.0.0.1:0")?.local_addr()?.port())
}

/// Calls `probe` every 250 ms until it succeeds or `timeout` passes; `check` runs
/// first each time (e.g. that the children are still alive) and ends the wait on
/// failure. A probe's error says what it saw; the last one is in the timeout error.
pub fn wait_for<T>(
    what: &str,
    timeout: Duration,
    mut check: impl FnMut() -> Result<()>,
    mut probe: impl FnMut() -> Result<T, String>,
) -> Result<T> {
    let deadline = Instant::now() + timeout;
    loop {
        check()?;
        match probe() {
            Ok(value) => return Ok(value),
            Err(seen) if Instant::now() >= deadline => {
                bail!("timed out after {timeout:?} waiting for {what}; last seen:\n{seen}")
            }
            Err(_) => sleep(Duration::from_millis(250)),
        }
    }
}

/// [`wait_for`] on a value that holds the children: `alive` checks them (it needs
/// the value mutably), `probe` reads it; `secs` is the timeout.
pub fn wait_on<S, T>(
    state: &mut S,
    what: &str,
    secs: u64,
    alive: impl Fn(&mut S) -> Result<()>,
    probe: impl Fn(&S) -> Result<T, String>,
) -> Result<T> {
    let cell = std::cell::RefCell::new(state);
    wait_for(
        what,
        Duration::from_secs(secs),
        || alive(&mut cell.borrow_mut()),
        || probe(&cell.borrow()),
    )
}
