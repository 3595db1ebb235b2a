//! The open+close loop, run in a process of its own: this benchmark binary again, as
//! `bench reload --open-loop <calls> <path> [<pid>]`. With a pid it first enters that
//! process's mount namespace (a lab container's), so `<path>` is looked up as the
//! container sees it.
//!
//! A separate process, because the agent runs inside the benchmark's process and drops
//! its own opens right after reading them: the loop's opens must reach it as any other
//! process's do (attributed through `/proc/<pid>`).

use std::{
    ffi::CString,
    fs::File,
    io::Write as _,
    os::{fd::AsRawFd, unix::ffi::OsStrExt},
    path::Path,
    process::{Command, ExitCode, Stdio},
    time::Instant,
};

use anyhow::{Context as _, bail};

/// The flag that selects the child mode, first after `reload`.
pub const FLAG: &str = "--open-loop";

/// ns per open+close of `path` over `calls` calls (after `calls / 10` unmeasured
/// ones), in a new process; inside the mount namespace of `mntns_of` when given.
pub fn measure(path: &Path, calls: u64, mntns_of: Option<u32>) -> anyhow::Result<f64> {
    let exe = std::env::current_exe().context("own path")?;
    let mut cmd = Command::new(exe);
    cmd.args(["reload", FLAG]).arg(calls.to_string()).arg(path);
    if let Some(pid) = mntns_of {
        cmd.arg(pid.to_string());
    }
    let out = cmd
        .stdin(Stdio::null())
        .stderr(Stdio::piped())
        .output()
        .context("run the open loop")?;
    if !out.status.success() {
        bail!(
            "open loop on {path:?} failed ({}): {}",
            out.status,
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    let text = String::from_utf8_lossy(&out.stdout);
    text.trim()
        .parse()
        .with_context(|| format!("open loop printed {text:?}"))
}

/// The child: `<calls> <path> [<pid>]`. Prints ns per call on stdout.
pub fn child_main(args: &[String]) -> ExitCode {
    match child(args) {
        Ok(ns) => {
            println!("{ns:.3}");
            let _ = std::io::stdout().flush();
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("open loop: {e:#}");
            ExitCode::FAILURE
        }
    }
}

fn child(args: &[String]) -> anyhow::Result<f64> {
    let [calls, path, rest @ ..] = args else {
        bail!("usage: {FLAG} <calls> <path> [<pid>]");
    };
    let calls: u64 = calls.parse().context("calls")?;
    if calls == 0 {
        bail!("calls must be positive");
    }
    if let [pid] = rest {
        // Single-threaded here (nothing has started a thread): setns may change the
        // mount namespace of the whole process.
        let ns = File::open(format!("/proc/{pid}/ns/mnt")).context("open the mount namespace")?;
        // SAFETY: a valid fd of a mount namespace; CLONE_NEWNS names its kind.
        if unsafe { libc::setns(ns.as_raw_fd(), libc::CLONE_NEWNS) } != 0 {
            return Err(std::io::Error::last_os_error()).context("setns(CLONE_NEWNS)");
        }
    } else if !rest.is_empty() {
        bail!("unexpected arguments {rest:?}");
    }
    let c = CString::new(Path::new(path).as_os_str().as_bytes()).context("NUL in path")?;
    let once = || -> anyhow::Result<()> {
        // SAFETY: a valid NUL-terminated path.
        let fd = unsafe { libc::open(c.as_ptr(), libc::O_RDONLY | libc::O_CLOEXEC) };
        if fd < 0 {
            return Err(std::io::Error::last_os_error()).with_context(|| format!("open {path}"));
        }
        // SAFETY: `fd` was just opened here and is closed once.
        unsafe { libc::close(fd) };
        Ok(())
    };
    for _ in 0..(calls / 10).max(1) {
        once()?;
    }
    let start = Instant::now();
    for _ in 0..calls {
        once()?;
    }
    Ok(start.elapsed().as_nanos() as f64 / calls as f64)
}
