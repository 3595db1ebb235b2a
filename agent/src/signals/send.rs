//! Sending one signal to a container's process, safely: through a pidfd, so that a
//! pid reused after the check is never signalled.
//!
//! 1. `pidfd_open(pid)` pins the process that has the pid now.
//! 2. Its `/proc/<pid>/cgroup` must name the expected pod and container, and its
//!    `/proc/<pid>/stat` the expected start time. Read after the pidfd is open: if the
//!    pid was reused before, these are the new process's and do not match; if the
//!    pinned process exits after, step 3 fails with ESRCH.
//! 3. `pidfd_send_signal(pidfd, sig)` signals the pinned process, or nothing.
//!
//! The pids are those of `/proc`, the agent's own pid namespace; `<proc_root>/self`
//! must name the agent's own pid, else the pids read there are another namespace's and
//! nothing is sent.

use std::{
    io,
    os::fd::{AsRawFd as _, FromRawFd as _, OwnedFd},
    path::Path,
};

use crate::node::{cgroup::parse_proc_cgroup, stat};

/// The process to signal, as the consumer scan found it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Target {
    pub pid: u32,
    pub start_ticks: u64,
    pub pod_uid: String,
    pub container_id: String,
}

/// Why a signal was not sent: the `reason` label of
/// `reloadscope_reload_signals_failed_total`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Failure {
    /// The annotation names no signal.
    UnknownSignal,
    /// No running process of the container was found.
    NoProcess,
    /// The pid now belongs to another process (another container's, a host process,
    /// a later start): not signalled.
    PidReused,
    /// The process exited before the signal.
    ProcessGone,
    /// The kernel refused (EPERM: the agent lacks CAP_KILL).
    Permission,
    /// Another error (no pidfd support before Linux 5.3, pids of another namespace).
    Error,
}

impl Failure {
    pub const ALL: [Failure; 6] = [
        Failure::UnknownSignal,
        Failure::NoProcess,
        Failure::PidReused,
        Failure::ProcessGone,
        Failure::Permission,
        Failure::Error,
    ];

    pub fn label(self) -> &'static str {
        match self {
            Failure::UnknownSignal => "unknown_signal",
            Failure::NoProcess => "no_process",
            Failure::PidReused => "pid_reused",
            Failure::ProcessGone => "process_gone",
            Failure::Permission => "permission",
            Failure::Error => "error",
        }
    }

    /// Said in a Warning Event's note and the log.
    pub fn describe(self) -> &'static str {
        match self {
            Failure::UnknownSignal => {
                "the reloadscope.dev/reload-signal annotation names no signal"
            }
            Failure::NoProcess => "no running process of the container was found",
            Failure::PidReused => "its process changed (restarted) before the signal; not sent",
            Failure::ProcessGone => "its process exited before the signal",
            Failure::Permission => "the agent may not signal it (the KILL capability is missing)",
            Failure::Error => "the signal could not be sent",
        }
    }
}

/// Whether `target` is still the process found, by what `/proc/<pid>` says now.
pub fn matches(proc_root: &Path, target: &Target) -> Result<(), Failure> {
    let dir = proc_root.join(target.pid.to_string());
    let cgroup = std::fs::read_to_string(dir.join("cgroup")).map_err(|_| Failure::ProcessGone)?;
    let stat = std::fs::read_to_string(dir.join("stat")).map_err(|_| Failure::ProcessGone)?;
    let Some(c) = parse_proc_cgroup(&cgroup) else {
        return Err(Failure::PidReused);
    };
    let Some(st) = stat::parse(&stat) else {
        return Err(Failure::PidReused);
    };
    if c.pod_uid != target.pod_uid
        || c.container_id != target.container_id
        || st.start_ticks != target.start_ticks
    {
        return Err(Failure::PidReused);
    }
    Ok(())
}

/// Whether `<proc_root>` numbers processes as the agent's own pid namespace does.
fn same_pid_namespace(proc_root: &Path) -> bool {
    std::fs::read_link(proc_root.join("self"))
        .ok()
        .and_then(|p| p.to_str()?.parse::<u32>().ok())
        == Some(std::process::id())
}

/// Sends `signal` to `target` (steps 1-3 above).
pub fn send(proc_root: &Path, target: &Target, signal: i32) -> Result<(), Failure> {
    if target.pid <= 1 || !same_pid_namespace(proc_root) {
        return Err(Failure::Error);
    }
    // SAFETY: pidfd_open takes a pid and flags and returns a new fd or -1.
    let fd = unsafe { libc::syscall(libc::SYS_pidfd_open, target.pid as libc::pid_t, 0) };
    if fd < 0 {
        return Err(match io::Error::last_os_error().raw_os_error() {
            Some(libc::ESRCH) => Failure::ProcessGone,
            _ => Failure::Error,
        });
    }
    // SAFETY: a new fd that nothing else owns.
    let pidfd = unsafe { OwnedFd::from_raw_fd(fd as i32) };
    matches(proc_root, target)?;
    // SAFETY: a valid pidfd, a signal number, no siginfo, no flags.
    let r = unsafe {
        libc::syscall(
            libc::SYS_pidfd_send_signal,
            pidfd.as_raw_fd(),
            signal,
            std::ptr::null::<libc::siginfo_t>(),
            0,
        )
    };
    if r < 0 {
        return Err(match io::Error::last_os_error().raw_os_error() {
            Some(libc::ESRCH) => Failure::ProcessGone,
            Some(libc::EPERM) => Failure::Permission,
            _ => Failure::Error,
        });
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// This process, as a target: the cgroup it is in names no container, so it is
    /// never signalled, whatever the rest says.
    #[test]
    fn a_process_outside_any_container_is_refused() {
        let stat = std::fs::read_to_string("/proc/self/stat").unwrap();
        let target = Target {
            pid: std::process::id(),
            start_ticks: stat::parse(&stat).unwrap().start_ticks,
            pod_uid: "0b5c7f2e-1a2b-4c3d-8e9f-001122334455".into(),
            container_id: "a".repeat(64),
        };
        assert_eq!(
            matches(Path::new("/proc"), &target),
            Err(Failure::PidReused)
        );
        assert_eq!(
            send(Path::new("/proc"), &target, libc::SIGUSR2),
            Err(Failure::PidReused)
        );
    }

    #[test]
    fn a_gone_pid_is_gone() {
        let child = std::process::Command::new("true").spawn().unwrap();
        let pid = child.id();
        let mut child = child;
        child.wait().unwrap();
        let target = Target {
            pid,
            start_ticks: 1,
            pod_uid: "p".into(),
            container_id: "c".into(),
        };
        // Reaped: the pid is free (or reused by a process outside any container).
        assert!(matches!(
            send(Path::new("/proc"), &target, libc::SIGHUP),
            Err(Failure::ProcessGone | Failure::PidReused)
        ));
    }

    #[test]
    fn other_pid_namespaces_and_pid_1_are_refused() {
        let t = tempfile::tempdir().unwrap();
        let target = Target {
            pid: std::process::id(),
            start_ticks: 0,
            pod_uid: "p".into(),
            container_id: "c".into(),
        };
        assert_eq!(send(t.path(), &target, libc::SIGHUP), Err(Failure::Error));
        let init = Target { pid: 1, ..target };
        assert_eq!(
            send(Path::new("/proc"), &init, libc::SIGHUP),
            Err(Failure::Error)
        );
    }
}
