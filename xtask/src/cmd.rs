//! Paths and child processes: every command runs from the workspace root with
//! inherited stdio, and a failing child's exit code becomes xtask's own.

use std::ffi::OsString;
use std::fmt;
use std::os::unix::process::ExitStatusExt;
use std::path::{Path, PathBuf};
use std::process::{Command, ExitStatus};

use anyhow::{Context, Result};

/// The workspace root: the parent of the xtask crate.
pub fn workspace_root() -> &'static Path {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("xtask lives one level below the workspace root")
}

/// Cargo's target directory, as a `cargo` started from the workspace root sees it.
pub fn target_dir() -> PathBuf {
    resolve_target_dir(
        workspace_root(),
        std::env::var_os("CARGO_TARGET_DIR").or_else(|| std::env::var_os("CARGO_BUILD_TARGET_DIR")),
    )
}

fn resolve_target_dir(root: &Path, from_env: Option<OsString>) -> PathBuf {
    match from_env {
        // A relative directory is relative to cargo's working directory, the root;
        // `join` keeps an absolute one as is.
        Some(dir) if !dir.is_empty() => root.join(dir),
        _ => root.join("target"),
    }
}

/// The toolchain everything but xtask itself builds with: aya 0.16 needs rust 1.98,
/// and the eBPF crate needs `-Z build-std=core`, so rust-src. Its LLVM (22) is
/// bpf-linker's. `agent/build.rs` names the same one for the eBPF build (a test
/// checks they agree).
///
/// There is deliberately no `rust-toolchain.toml`: rustup would have to install the
/// toolchain before xtask could run, and machines with `RUSTUP_AUTO_INSTALL=0` refuse.
/// xtask builds with the default toolchain, installs this one, then uses it.
pub const TOOLCHAIN: &str = "nightly-2026-07-01";

/// `cargo` through the rustup proxy, on the pinned [`TOOLCHAIN`] (the proxy gave
/// xtask itself `RUSTUP_TOOLCHAIN` of the default toolchain: it is replaced).
pub fn cargo<I, S>(args: I) -> Command
where
    I: IntoIterator<Item = S>,
    S: AsRef<std::ffi::OsStr>,
{
    let mut cmd = Command::new("cargo");
    cmd.args(args)
        .current_dir(workspace_root())
        .env("RUSTUP_TOOLCHAIN", TOOLCHAIN);
    cmd
}

/// Runs `cmd` to completion with inherited stdin, stdout and stderr.
pub fn status(cmd: &mut Command) -> Result<ExitStatus> {
    cmd.status()
        .with_context(|| format!("could not start `{}`", display(cmd)))
}

/// Runs `cmd` and fails with [`ChildFailed`] unless it exits successfully.
pub fn run(cmd: &mut Command) -> Result<()> {
    let status = status(cmd)?;
    if status.success() {
        Ok(())
    } else {
        Err(ChildFailed::new(cmd, status).into())
    }
}

/// The command line of `cmd`, for messages.
pub fn display(cmd: &Command) -> String {
    std::iter::once(cmd.get_program())
        .chain(cmd.get_args())
        .map(|part| part.to_string_lossy())
        .collect::<Vec<_>>()
        .join(" ")
}

/// A child process that exited unsuccessfully; `main` exits with its code.
#[derive(Debug)]
pub struct ChildFailed {
    pub command: String,
    pub code: u8,
    status: ExitStatus,
}

impl ChildFailed {
    pub fn new(cmd: &Command, status: ExitStatus) -> Self {
        // A child killed by a signal is reported the way shells do: 128 + signal.
        let code = status
            .code()
            .or_else(|| status.signal().map(|signal| 128 + signal))
            .and_then(|code| u8::try_from(code).ok())
            .filter(|&code| code != 0)
            .unwrap_or(1);
        Self {
            command: display(cmd),
            code,
            status,
        }
    }
}

impl fmt::Display for ChildFailed {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "`{}` failed ({})", self.command, self.status)
    }
}

impl std::error::Error for ChildFailed {}

/// Whether this process runs with effective uid 0.
pub fn is_root() -> bool {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|status| effective_uid(&status))
        == Some(0)
}

/// The effective uid from the text of `/proc/<pid>/status`
/// (`Uid:` lists the real, effective, saved and filesystem uids).
fn effective_uid(proc_status: &str) -> Option<u32> {
    proc_status
        .lines()
        .find_map(|line| line.strip_prefix("Uid:"))
        .and_then(|uids| uids.split_whitespace().nth(1))
        .and_then(|uid| uid.parse().ok())
}

#[cfg(test)]
mod tests {
    #[test]
    fn the_ebpf_build_uses_the_pinned_toolchain() {
        let build_rs =
            std::fs::read_to_string(super::workspace_root().join("agent/build.rs")).unwrap();
        assert!(
            build_rs.contains(&format!("Toolchain::Custom(\"{}\")", super::TOOLCHAIN)),
            "agent/build.rs must build the eBPF crate with {}",
            super::TOOLCHAIN
        );
    }

    use super::*;

    #[test]
    fn effective_uid_is_the_second_uid_field() {
        let status =
            "Name:\tcargo\nUmask:\t0022\nUid:\t1000\t0\t0\t0\nGid:\t1000\t1000\t1000\t1000\n";
        assert_eq!(effective_uid(status), Some(0));
        assert_eq!(effective_uid("Uid:\t1000\t1000\t1000\t1000\n"), Some(1000));
        assert_eq!(effective_uid("Name:\tcargo\n"), None);
    }

    fn failure_code(script: &str) -> u8 {
        let err = run(Command::new("sh").args(["-c", script]))
            .context("check `example` failed")
            .expect_err("the script fails");
        err.downcast_ref::<ChildFailed>()
            .expect("the child failure survives added context")
            .code
    }

    #[test]
    fn a_failing_childs_exit_code_is_kept() {
        assert_eq!(failure_code("exit 7"), 7);
        assert_eq!(failure_code("kill -TERM $$"), 128 + 15);
        assert!(run(&mut Command::new("true")).is_ok());
    }

    #[test]
    fn target_dir_defaults_to_root_target_and_honours_the_environment() {
        let root = Path::new("/src/reloadscope");
        assert_eq!(resolve_target_dir(root, None), root.join("target"));
        assert_eq!(
            resolve_target_dir(root, Some("".into())),
            root.join("target")
        );
        assert_eq!(
            resolve_target_dir(root, Some("out".into())),
            root.join("out")
        );
        assert_eq!(
            resolve_target_dir(root, Some("/tmp/t".into())),
            Path::new("/tmp/t")
        );
    }
}
