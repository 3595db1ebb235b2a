//! `cargo xtask test`: the named checks CI runs, in order, stopping at the first
//! failure. A new check is one more entry in [`STEPS`].

use std::process::Command;
use std::time::Instant;

use anyhow::{Context, Result, bail};

use crate::cmd;

/// One named check: a command line run from the workspace root.
pub struct Step {
    pub name: &'static str,
    /// Program and arguments split on whitespace (no quoting). The program is
    /// `cargo`, a program on PATH, or a script path relative to the workspace root.
    pub command: &'static str,
    /// Why the step needs root, if it does; without root it fails with this reason.
    pub needs_root: Option<&'static str>,
}

impl Step {
    const fn new(name: &'static str, command: &'static str) -> Self {
        Self {
            name,
            command,
            needs_root: None,
        }
    }

    const fn root(self, reason: &'static str) -> Self {
        Self {
            needs_root: Some(reason),
            ..self
        }
    }

    fn command(&self) -> Command {
        let root = cmd::workspace_root();
        let mut words = self.command.split_whitespace();
        let program = words.next().unwrap_or_default();
        // A path (`.ci/check-x`) is resolved against the root, not xtask's cwd.
        let mut command = if program == "cargo" {
            cmd::cargo(std::iter::empty::<&str>())
        } else if program.contains('/') {
            Command::new(root.join(program))
        } else {
            Command::new(program)
        };
        command.args(words).current_dir(root);
        command
    }
}

// Root tests are `#[ignore]`d for plain `cargo test`; each loads its own copy of
// the node-wide eBPF probe, so they run one at a time.
#[rustfmt::skip]
pub const STEPS: &[Step] = &[
    Step::new("fmt", "cargo fmt --all --check"),
    Step::new("clippy", "cargo clippy --workspace --exclude agent-ebpf --all-targets -- -D warnings"),
    Step::new("generated", "cargo xtask check-generated"),
    Step::new("deploy", "cargo xtask check-deploy"),
    Step::new("rules", "promtool check rules dashboards/alerts.yaml"),
    Step::new("rule-tests", "promtool test rules dashboards/tests/alerts_test.yaml"),
    Step::new("test", "cargo test --workspace --exclude agent-ebpf -- --include-ignored --test-threads=1")
        .root("the integration tests load eBPF programs"),
    Step::new("image", "cargo xtask check-image")
        .root("containerd imports the images and runs them with runc"),
    KERNELS,
    Step::new("e2e", "cargo xtask e2e")
        .root("the lab mounts tmpfs and runs containers; the agent loads eBPF"),
    Step::new("e2e-cluster", "cargo xtask e2e --cluster")
        .root("the real node runs a kubelet, containerd and iptables rules"),
];

/// The eBPF integration tests on the kernels of the matrix, under QEMU (xtask/src/kernels.rs).
const KERNELS: Step = Step::new("kernels", "cargo xtask vm-test");

/// `cargo xtask test --kernels`: the eBPF integration tests on every kernel, nothing
/// else, with the VMs' timing-bound tests even under TCG (where they may flake).
#[rustfmt::skip]
pub const KERNEL_STEPS: &[Step] = &[
    Step::new("host-kernel", "cargo test -p reloadscope --test integration -- --include-ignored --test-threads=1 probe:: detect::")
        .root("the integration tests load eBPF programs"),
    Step::new("kernels", "cargo xtask vm-test --timed"),
];

/// Runs every step (with `kernels`, every kernel step) in order and stops at the
/// first failure.
pub fn run(kernels: bool) -> Result<()> {
    let start = Instant::now();
    let steps = if kernels { KERNEL_STEPS } else { STEPS };
    for step in steps {
        run_step(step)?;
    }
    println!(
        "all {} checks passed ({:.1} s)",
        steps.len(),
        start.elapsed().as_secs_f64()
    );
    Ok(())
}

fn run_step(step: &Step) -> Result<()> {
    println!("==> {}", step.name);
    if let Some(reason) = step.needs_root
        && !cmd::is_root()
    {
        bail!(
            "check `{}` needs root ({reason}); rerun `cargo xtask test` as root",
            step.name
        );
    }
    let start = Instant::now();
    let result = cmd::run(&mut step.command());
    let elapsed = start.elapsed().as_secs_f64();
    match result {
        Ok(()) => {
            println!("    {} ok ({elapsed:.1} s)", step.name);
            Ok(())
        }
        Err(err) => {
            println!("    {} FAILED ({elapsed:.1} s)", step.name);
            Err(err).with_context(|| format!("check `{}` failed", step.name))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn steps_are_named_uniquely_and_not_empty() {
        for steps in [STEPS, KERNEL_STEPS] {
            for (i, step) in steps.iter().enumerate() {
                assert!(
                    !step.command.trim().is_empty(),
                    "check {} has no command",
                    step.name
                );
                assert!(
                    steps[..i].iter().all(|other| other.name != step.name),
                    "duplicate check name {}",
                    step.name
                );
            }
        }
    }

    #[test]
    fn script_paths_resolve_against_the_workspace_root() {
        let step = Step::new("script", ".ci/check-example --strict");
        let command = step.command();
        assert_eq!(
            command.get_program(),
            cmd::workspace_root().join(".ci/check-example")
        );
        assert_eq!(command.get_args().collect::<Vec<_>>(), ["--strict"]);
        assert_eq!(command.get_current_dir(), Some(cmd::workspace_root()));
    }
}
