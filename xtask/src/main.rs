//! reloadscope's developer commands, run as `cargo xtask <command>` from anywhere
//! in the workspace. Every command runs its children from the workspace root.

mod checks;
mod cluster;
mod cmd;
mod deploy;
mod e2e;
mod image;
mod kernels;
#[cfg(test)]
mod layers;
mod mixin;
mod prereqs;

use std::ffi::OsString;
use std::os::unix::process::CommandExt;
use std::process::{Command, ExitCode};

use anyhow::{Context, Result, bail};
use clap::{Parser, Subcommand};

/// reloadscope's developer commands: prerequisites, checks, lab, end-to-end test,
/// benchmarks, builds and generated dashboards.
///
/// Run from anywhere in the workspace; child commands run from the workspace root
/// and a failing child's exit code is passed on.
#[derive(Parser)]
#[command(bin_name = "cargo xtask", version, verbatim_doc_comment)]
struct Cli {
    #[command(subcommand)]
    command: Task,
}

#[derive(Subcommand)]
enum Task {
    /// Install what building and testing need, if anything is missing
    ///
    /// Checks, and installs only when missing: the Debian packages (LLVM 22,
    /// bpftool, prometheus, strace, inotify-tools, python3-pip, and for the
    /// kernel matrix qemu-system-x86 and busybox-static), the pinned
    /// nightly-2026-07-01 with rust-src, rustfmt and clippy, bpf-linker 0.13.0
    /// built against LLVM 22, tracefs mounted at /sys/kernel/tracing, and
    /// kubernetes-validate 1.37.0 (pip, for python3 on PATH).
    /// Installing packages and mounting tracefs need root. `test`, `lab`,
    /// `bench`, `build` and `e2e` run this first; `image` the part a build
    /// needs (LLVM 22, the toolchain with rust-src, bpf-linker).
    #[command(verbatim_doc_comment)]
    Prereqs,

    /// Run the checks CI runs: rustfmt, clippy, then all tests (needs root)
    ///
    /// In order, stopping at the first failure: `cargo fmt --all --check`,
    /// clippy on every target with warnings denied, the generated dashboards/
    /// files up to date, deploy/ rendered and validated (kubernetes-validate),
    /// `promtool check rules` and `promtool test rules`,
    /// `cargo test` including the `#[ignore]`d root integration tests, one test
    /// at a time (each loads the eBPF probe), the image archives built, read by
    /// skopeo, imported and run by a containerd of their own (`check-image`,
    /// needs containerd, runc and skopeo), the kernel matrix (the eBPF tests
    /// on Debian's 6.1 and 6.12 cloud kernels under QEMU, and 6.12 without BTF;
    /// skipped without /dev/kvm), `cargo xtask e2e`, then `cargo xtask e2e
    /// --cluster` (the real node; its first run builds Kubernetes, about 4 min).
    /// The tests need root.
    /// `.ci/run` runs exactly this.
    #[command(verbatim_doc_comment)]
    Test {
        /// Only the kernel matrix: the eBPF integration tests (probe, detect) on
        /// the host kernel, then on every VM kernel, timing-bound ones included
        #[arg(long)]
        kernels: bool,
    },

    /// Build the lab and run the agent on it: `reloadscope-lab [ARGS]...`
    ///
    /// Builds the debug lab binary (the agent is in it), then replaces this
    /// process with `target/debug/reloadscope-lab [ARGS]...`; its exit code is the
    /// command's. Put `--` before ARGS to pass options such as `--help` to the
    /// lab itself: `cargo xtask lab -- --help`.
    #[command(verbatim_doc_comment)]
    Lab {
        /// Arguments for `reloadscope-lab`
        #[arg(trailing_var_arg = true, allow_hyphen_values = true)]
        args: Vec<OsString>,
    },

    /// Run one benchmark: `cargo bench -p reloadscope --bench bench -- NAME [ARGS]...`
    ///
    /// The benchmarks are one program in agent/benches/ with a subcommand each:
    /// detect, reload, scale, overhead, limits. Put `--` before ARGS to pass
    /// options such as `--help` to the benchmark itself:
    /// `cargo xtask bench detect -- --help`.
    /// Two are xtask's own: `overhead` (the host, then each kernel of the
    /// matrix), and `cluster`: the agent deployed with `kubectl apply -k` on the
    /// real node of `cargo xtask cluster`, once per `--settled-marks` mode
    /// (`cargo xtask bench cluster -- --help`; brought up and taken down again
    /// unless it was up; about 6 min a mode).
    #[command(verbatim_doc_comment)]
    Bench {
        /// Benchmark in agent/benches/: detect, reload, scale, overhead, limits; or
        /// cluster
        name: String,
        /// Arguments for the benchmark binary
        #[arg(trailing_var_arg = true, allow_hyphen_values = true)]
        args: Vec<OsString>,
    },

    /// Build the release agent: `cargo build -p reloadscope --release`
    Build,

    /// Build the image archives in target/images/, or one image's root filesystem
    ///
    /// From the working tree, with no container engine and no registry. Each
    /// image is one layer: the release binary at /usr/bin/<name>, the shared
    /// objects and the ELF interpreter it loads (as ldd finds them on this
    /// machine), /etc/passwd and /etc/group for root; nothing else, no shell.
    ///   agent     ghcr.io/reloadscope/reloadscope:<version>  target/images/reloadscope.tar
    ///   consumer  reloadscope-test/consumer:<version>        target/images/consumer.tar
    /// The archives are docker-archives, for `ctr -n k8s.io images import`,
    /// `docker load`, `podman load` or `skopeo copy docker-archive:<file> ...`;
    /// deterministic (sorted entries, mtime 0, uid and gid 0): the same tree
    /// gives the same digests. `--rootfs DIR agent` lays the agent's root
    /// filesystem out in DIR instead, as the Dockerfile's build stage does.
    /// Checks only what a build needs (LLVM 22, the pinned toolchain with
    /// rust-src, bpf-linker) and installs what is missing.
    #[command(verbatim_doc_comment)]
    Image(image::ImageArgs),

    /// Build the images, read them with skopeo, import and run them with a containerd of the check's own
    #[command(hide = true)]
    CheckImage,

    /// Write the generated files: dashboards/alerts.yaml and dashboards/reloadscope.json
    ///
    /// The alert rules and the Grafana dashboard are generated by
    /// xtask/src/mixin/ from a config: dashboards/mixin.json (the defaults), or
    /// the file --config names (knobs left out keep their defaults), then the
    /// flags on top; `cargo xtask test` fails when the checked-in files differ
    /// from what the defaults give. Then deploy/'s copies of them (a
    /// PrometheusRule, the dashboard) and deploy/reloadscope.yaml (`kubectl
    /// kustomize deploy/`). With --out, only alerts.yaml, reloadscope.json and
    /// prometheusrule.yaml, in that directory.
    #[command(verbatim_doc_comment)]
    Generate(mixin::GenerateArgs),

    /// Fail when a generated file differs from what `generate` would write
    #[command(hide = true)]
    CheckGenerated,

    /// Fail when deploy/ does not render or validate, or a generated file in it is out of date
    #[command(hide = true)]
    CheckDeploy,

    /// A real single-node Kubernetes (v1.20, from Debian's packages) on this machine
    ///
    /// `up` builds it once (into target/cluster/) and starts etcd, containerd,
    /// the control plane, kube-proxy and a kubelet, all on loopback or the node's
    /// own bridge; `down` stops exactly what `up` started and removes every
    /// container, mount, cgroup, network rule and state dir it made; `status`
    /// says what runs. Needs root. Then:
    ///   export KUBECONFIG=/var/lib/reloadscope-cluster/admin.kubeconfig
    ///   kubectl apply -k deploy/
    #[command(verbatim_doc_comment)]
    Cluster {
        #[command(subcommand)]
        action: cluster::Action,
    },

    /// Boot the kernels of the matrix under QEMU and run the eBPF tests in each
    #[command(hide = true)]
    VmTest(kernels::VmTestArgs),

    /// End to end: the lab, the real agent and a real Prometheus with the alert rules (needs root)
    ///
    /// Builds the agent, runs `reloadscope-lab` and /usr/bin/prometheus scraping
    /// it every second with the shipped rules at lab time scales (stale after
    /// 5 s), then asserts through Prometheus' HTTP API that the stale-consumer
    /// alert fires for the container that never reloads and not for those that
    /// do, that every dashboard query returns data, and that the dashboard and
    /// the rules name only metrics and labels the agent exports. About 15 s
    /// once the agent is built.
    ///
    /// With --cluster, on the real node of `cargo xtask cluster` instead (started
    /// for the test and taken down after it, unless it was up already): the
    /// agent's image imported, `kubectl apply -k deploy/`, real pods consuming
    /// ConfigMap, Secret and projected volumes, their objects changed through
    /// the API and a token refreshed by the kubelet, a Prometheus that finds the
    /// agent through the API; every reload time checked against the container's
    /// own log, the swaps against the kubelet's `..data` symlinks, and the API
    /// server's audit log for Secret data. About 12 min once built (8 of them
    /// waiting for the token refresh).
    #[command(verbatim_doc_comment)]
    E2e {
        /// On the real node instead of the lab
        #[arg(long)]
        cluster: bool,
    },
}

fn main() -> ExitCode {
    match run(Cli::parse().command) {
        Ok(()) => ExitCode::SUCCESS,
        Err(err) => {
            eprintln!("error: {err:#}");
            let code = err
                .downcast_ref::<cmd::ChildFailed>()
                .map_or(1, |failed| failed.code);
            ExitCode::from(code)
        }
    }
}

fn run(task: Task) -> Result<()> {
    match task {
        Task::Prereqs => prereqs::ensure(),
        Task::Test { kernels } => {
            prereqs::ensure()?;
            checks::run(kernels)
        }
        Task::Lab { args } => {
            prereqs::ensure()?;
            lab(args)
        }
        Task::Bench { name, args } => {
            prereqs::ensure()?;
            if name == "overhead" {
                // The host, then each VM kernel of the matrix: one table.
                return kernels::bench::overhead(&args);
            }
            if name == "cluster" {
                // The agent as deployed, on the real node of `cargo xtask cluster`.
                return e2e::bench_cluster(&args);
            }
            // The lab binary each lab container runs, beside the bench (release).
            cmd::run(&mut cmd::cargo([
                "build",
                "-p",
                "reloadscope-lab",
                "--release",
            ]))?;
            // The benchmarks' one program, `name` its subcommand.
            let bench = ["bench", "-p", "reloadscope", "--bench", "bench", "--"];
            cmd::run(cmd::cargo(bench).arg(&name).args(args))
        }
        Task::Build => {
            prereqs::ensure()?;
            cmd::run(&mut cmd::cargo(["build", "-p", "reloadscope", "--release"]))
        }
        Task::Generate(args) => {
            let cfg = args.config()?;
            match &args.out {
                Some(dir) => mixin::generate_to(&cfg, dir),
                None => {
                    mixin::generate(&cfg)?;
                    deploy::generate()
                }
            }
        }
        Task::CheckGenerated => mixin::check(),
        Task::CheckDeploy => deploy::check(),
        Task::Image(args) => image::run(args),
        Task::CheckImage => image::check(),
        Task::E2e { cluster } => {
            prereqs::ensure()?;
            if cluster {
                e2e::run_cluster()
            } else {
                e2e::run()
            }
        }
        Task::Cluster { action } => cluster::run(action),
        Task::VmTest(args) => {
            prereqs::ensure()?;
            kernels::run(&args)
        }
    }
}

fn lab(args: Vec<OsString>) -> Result<()> {
    cmd::run(&mut cmd::cargo(["build", "-p", "reloadscope-lab"]))?;
    let binary = cmd::target_dir().join("debug").join("reloadscope-lab");
    if !binary.is_file() {
        bail!(
            "`cargo build -p reloadscope-lab` did not produce {}",
            binary.display()
        );
    }
    let mut lab = Command::new(&binary);
    lab.args(args).current_dir(cmd::workspace_root());
    // `exec` only returns on failure; on success the lab's exit code is ours.
    let err = lab.exec();
    Err(err).with_context(|| format!("could not start `{}`", cmd::display(&lab)))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(args: &[&str]) -> Result<Task, clap::Error> {
        Cli::try_parse_from(std::iter::once("xtask").chain(args.iter().copied()))
            .map(|cli| cli.command)
    }

    fn strings(args: &[OsString]) -> Vec<&str> {
        args.iter().map(|arg| arg.to_str().unwrap()).collect()
    }

    #[test]
    fn cli_is_well_formed() {
        use clap::CommandFactory;
        Cli::command().debug_assert();
    }

    #[test]
    fn lab_forwards_every_argument() {
        let Ok(Task::Lab { args }) = parse(&["lab", "scenario", "--pods", "3", "-v"]) else {
            panic!("lab did not parse");
        };
        assert_eq!(strings(&args), ["scenario", "--pods", "3", "-v"]);

        let Ok(Task::Lab { args }) = parse(&["lab", "--", "--help"]) else {
            panic!("lab -- --help did not parse");
        };
        assert_eq!(strings(&args), ["--help"]);
    }

    #[test]
    fn help_before_the_arguments_is_xtasks_own() {
        let err = parse(&["lab", "--help"])
            .err()
            .expect("help is an early exit");
        assert_eq!(err.kind(), clap::error::ErrorKind::DisplayHelp);
    }

    #[test]
    fn bench_takes_a_name_then_forwards_the_rest() {
        let Ok(Task::Bench { name, args }) = parse(&["bench", "detect", "--events", "1000"]) else {
            panic!("bench did not parse");
        };
        assert_eq!(name, "detect");
        assert_eq!(strings(&args), ["--events", "1000"]);
        assert!(parse(&["bench"]).is_err(), "the bench name is required");
    }
}
