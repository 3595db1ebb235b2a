//! Machine prerequisites for building the eBPF programs and running the root
//! tests: Debian packages, the pinned nightly with rust-src, bpf-linker and a
//! mounted tracefs. Everything is checked cheaply first; only what is missing is
//! installed, so a second run does nothing. [`ensure_build`] checks only what a
//! build needs (`cargo xtask image`, the Dockerfile's build stage).

use std::path::{Path, PathBuf};
use std::process::Command;

use crate::cmd::TOOLCHAIN;
use std::time::Instant;

use anyhow::{Context, Result, bail};

use crate::cmd;

/// Debian packages a build needs: LLVM 22 for bpf-linker, and what it links.
/// The Dockerfile's build stage installs these (a test checks it).
pub const BUILD_PACKAGES: &[&str] = &[
    "llvm-22-dev",
    "libpolly-22-dev",
    "libzstd-dev",
    "zlib1g-dev",
];

/// Debian packages the tests need besides: bpftool, and the tools the tests use
/// (prometheus provides the server and promtool; QEMU and a static busybox boot
/// the kernel matrix's VMs).
const TEST_PACKAGES: &[&str] = &[
    "bpftool",
    "prometheus",
    "strace",
    "inotify-tools",
    "python3-pip",
    "qemu-system-x86",
    "busybox-static",
];

/// Components of the pinned toolchain (`cmd::TOOLCHAIN`), whose LLVM major version
/// matches bpf-linker's.
/// rust-src for `-Z build-std=core` on the bpf target; rustfmt and clippy for `test`.
const COMPONENTS: &[&str] = &["rust-src", "rustfmt", "clippy"];
/// Those a build needs.
const BUILD_COMPONENTS: &[&str] = &["rust-src"];

pub const BPF_LINKER_VERSION: &str = "0.13.0";
const LLVM_PREFIX: &str = "/usr/lib/llvm-22";

const TRACEFS: &str = "/sys/kernel/tracing";

/// Validates the rendered deploy/ manifests against Kubernetes' schemas (PyPI).
const KUBERNETES_VALIDATE: &str = "kubernetes-validate";
const KUBERNETES_VALIDATE_VERSION: &str = "1.37.0";
/// A release of it ships the schemas of the Kubernetes versions up to its own from
/// some years back: 1.37.0 those of 1.25 to 1.37. This older one has those of 1.20 to
/// 1.28, for the oldest version the manifests support (`deploy::KUBERNETES_VERSIONS`).
/// It goes, with its dependencies, in a directory of its own that the check puts on
/// `PYTHONPATH`: [`kubernetes_validate_old_dir`].
pub const KUBERNETES_VALIDATE_OLD_VERSION: &str = "1.28.3";

/// Where [`KUBERNETES_VALIDATE_OLD_VERSION`] is installed, under cargo's target dir.
pub fn kubernetes_validate_old_dir() -> PathBuf {
    cmd::target_dir().join(format!(
        "{KUBERNETES_VALIDATE}-{KUBERNETES_VALIDATE_OLD_VERSION}"
    ))
}

/// What is checked: what a build needs, or everything.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Scope {
    Build,
    All,
}

impl Scope {
    fn packages(self) -> Vec<&'static str> {
        match self {
            Scope::Build => BUILD_PACKAGES.to_vec(),
            Scope::All => [BUILD_PACKAGES, TEST_PACKAGES].concat(),
        }
    }

    fn components(self) -> &'static [&'static str] {
        match self {
            Scope::Build => BUILD_COMPONENTS,
            Scope::All => COMPONENTS,
        }
    }
}

/// What the checks found missing.
struct Missing {
    scope: Scope,
    packages: Vec<&'static str>,
    /// `None`: the toolchain itself is not installed.
    components: Option<Vec<&'static str>>,
    bpf_linker: bool,
    tracefs: bool,
    kubernetes_validate: bool,
    kubernetes_validate_old: bool,
}

impl Missing {
    fn check(scope: Scope) -> Result<Self> {
        let all = scope == Scope::All;
        // Python starts slowly: its check runs while the others do.
        let kubernetes_validate = all.then(KubernetesValidateCheck::start);
        Ok(Self {
            scope,
            packages: missing_packages(&scope.packages())?,
            components: missing_components(scope.components())?,
            bpf_linker: !bpf_linker_present(),
            tracefs: all && !tracefs_mounted(),
            kubernetes_validate: kubernetes_validate.is_some_and(|check| !check.present()),
            kubernetes_validate_old: all && !kubernetes_validate_old_present(),
        })
    }

    fn is_empty(&self) -> bool {
        self.packages.is_empty()
            && self.components.as_ref().is_some_and(Vec::is_empty)
            && !self.bpf_linker
            && !self.tracefs
            && !self.kubernetes_validate
            && !self.kubernetes_validate_old
    }

    /// Installing packages and mounting tracefs need root; the rest installs
    /// into the user's rustup and cargo homes.
    fn needs_root(&self) -> bool {
        !self.packages.is_empty() || self.tracefs
    }

    /// Everything missing, for the error message.
    fn describe(&self) -> String {
        let mut items = Vec::new();
        if !self.packages.is_empty() {
            items.push(format!("apt packages {}", self.packages.join(", ")));
        }
        match &self.components {
            None => items.push(format!("toolchain {TOOLCHAIN}")),
            Some(components) if !components.is_empty() => {
                items.push(format!("{} for {TOOLCHAIN}", components.join(", ")));
            }
            Some(_) => {}
        }
        if self.bpf_linker {
            items.push(format!("bpf-linker {BPF_LINKER_VERSION}"));
        }
        if self.tracefs {
            items.push(format!("tracefs (not mounted at {TRACEFS})"));
        }
        if self.kubernetes_validate {
            items.push(format!(
                "{KUBERNETES_VALIDATE} {KUBERNETES_VALIDATE_VERSION}"
            ));
        }
        if self.kubernetes_validate_old {
            items.push(format!(
                "{KUBERNETES_VALIDATE} {KUBERNETES_VALIDATE_OLD_VERSION} in {}",
                kubernetes_validate_old_dir().display()
            ));
        }
        items.join("; ")
    }
}

/// Checks every prerequisite and installs what is missing.
pub fn ensure() -> Result<()> {
    ensure_scope(Scope::All)
}

/// Checks what a build of the release binaries needs (the apt LLVM, the pinned
/// toolchain with rust-src, bpf-linker) and installs what is missing; not the
/// tools only the tests use.
pub fn ensure_build() -> Result<()> {
    ensure_scope(Scope::Build)
}

fn ensure_scope(scope: Scope) -> Result<()> {
    let start = Instant::now();
    let missing = Missing::check(scope)?;
    let what = match scope {
        Scope::Build => "build prerequisites",
        Scope::All => "prerequisites",
    };
    if missing.is_empty() {
        eprintln!("{what} present ({} ms)", start.elapsed().as_millis());
        return Ok(());
    }

    if missing.needs_root() && !cmd::is_root() {
        bail!(
            "missing prerequisites: {}. Installing apt packages and mounting tracefs \
             need root: rerun `cargo xtask prereqs` as root",
            missing.describe()
        );
    }

    // Order matters: bpf-linker builds against the apt LLVM, with the pinned nightly.
    if !missing.packages.is_empty() {
        step(
            &format!("installed apt packages {}", missing.packages.join(", ")),
            || install_packages(&missing.packages),
        )?;
    }
    match &missing.components {
        None => step(&format!("installed toolchain {TOOLCHAIN}"), || {
            install_toolchain(missing.scope.components())
        })?,
        Some(components) if !components.is_empty() => step(
            &format!("added {} to {TOOLCHAIN}", components.join(", ")),
            || add_components(components),
        )?,
        Some(_) => {}
    }
    if missing.bpf_linker {
        step(
            &format!("installed bpf-linker {BPF_LINKER_VERSION}"),
            install_bpf_linker,
        )?;
    }
    if missing.tracefs {
        step(&format!("mounted tracefs at {TRACEFS}"), mount_tracefs)?;
    }
    if missing.kubernetes_validate {
        step(
            &format!("installed {KUBERNETES_VALIDATE} {KUBERNETES_VALIDATE_VERSION}"),
            install_kubernetes_validate,
        )?;
    }
    if missing.kubernetes_validate_old {
        step(
            &format!(
                "installed {KUBERNETES_VALIDATE} {KUBERNETES_VALIDATE_OLD_VERSION} in {}",
                kubernetes_validate_old_dir().display()
            ),
            install_kubernetes_validate_old,
        )?;
    }

    eprintln!("{what} ready ({:.1} s)", start.elapsed().as_secs_f64());
    Ok(())
}

/// Runs one install step and prints one line once it is done.
fn step(done: &str, action: impl FnOnce() -> Result<()>) -> Result<()> {
    let start = Instant::now();
    action()?;
    eprintln!("prereqs: {done} ({:.1} s)", start.elapsed().as_secs_f64());
    Ok(())
}

/// Installs those of `packages` that are missing (needs root then), with one
/// `apt-get update` first; does nothing when all are installed.
pub fn ensure_packages(packages: &[&'static str]) -> Result<()> {
    let missing = missing_packages(packages)?;
    if missing.is_empty() {
        return Ok(());
    }
    if !cmd::is_root() {
        bail!(
            "missing apt packages {}: installing them needs root",
            missing.join(", ")
        );
    }
    step(
        &format!("installed apt packages {}", missing.join(", ")),
        || install_packages(&missing),
    )
}

fn missing_packages(packages: &[&'static str]) -> Result<Vec<&'static str>> {
    // dpkg-query exits 1 when a package is unknown to dpkg; the output still
    // lists the others, so the exit status is not used.
    let output = Command::new("dpkg-query")
        .arg("-W")
        .arg("-f=${Package}\t${Status}\n")
        .args(packages)
        .output()
        .context("could not run dpkg-query (xtask expects a Debian machine)")?;
    let stdout = String::from_utf8_lossy(&output.stdout);
    let installed: Vec<&str> = stdout
        .lines()
        .filter_map(|line| line.split_once('\t'))
        .filter(|(_, status)| *status == "install ok installed")
        .map(|(package, _)| package)
        .collect();
    Ok(packages
        .iter()
        .copied()
        .filter(|package| !installed.contains(package))
        .collect())
}

fn install_packages(packages: &[&str]) -> Result<()> {
    cmd::run(Command::new("apt-get").arg("update"))?;
    cmd::run(
        Command::new("apt-get")
            .env("DEBIAN_FRONTEND", "noninteractive")
            .args(["install", "-y", "--no-install-recommends"])
            .args(packages),
    )
}

/// The components missing from the pinned toolchain, or `None` when the
/// toolchain is not installed at all.
fn missing_components(wanted: &[&'static str]) -> Result<Option<Vec<&'static str>>> {
    let output = Command::new("rustup")
        .args(["component", "list", "--installed", "--toolchain", TOOLCHAIN])
        .output()
        .context("could not run rustup (is it installed and on PATH?)")?;
    if !output.status.success() {
        return Ok(None);
    }
    let stdout = String::from_utf8_lossy(&output.stdout);
    // Lines are `rust-src` or `clippy-x86_64-unknown-linux-gnu`.
    let installed = |component: &str| {
        stdout.lines().any(|line| {
            line.strip_prefix(component)
                .is_some_and(|rest| rest.is_empty() || rest.starts_with('-'))
        })
    };
    Ok(Some(
        wanted
            .iter()
            .copied()
            .filter(|component| !installed(component))
            .collect(),
    ))
}

// Both use the default RUSTUP_HOME, whose settings keep rustup from replacing itself.
fn install_toolchain(components: &[&str]) -> Result<()> {
    let mut rustup = Command::new("rustup");
    rustup.args(["toolchain", "install", TOOLCHAIN, "--profile", "minimal"]);
    for component in components {
        rustup.args(["-c", component]);
    }
    cmd::run(&mut rustup)
}

fn add_components(components: &[&str]) -> Result<()> {
    cmd::run(
        Command::new("rustup")
            .args(["component", "add", "--toolchain", TOOLCHAIN])
            .args(components),
    )
}

fn bpf_linker_present() -> bool {
    Command::new("bpf-linker")
        .arg("--version")
        .output()
        .is_ok_and(|output| {
            String::from_utf8_lossy(&output.stdout)
                .split_whitespace()
                .any(|word| word == BPF_LINKER_VERSION)
        })
}

/// Builds bpf-linker against the apt LLVM 22. Tries the pinned nightly first and
/// the stable toolchain only if that fails, each with `--locked` and then without.
fn install_bpf_linker() -> Result<()> {
    let path = match std::env::var_os("PATH") {
        Some(path) => {
            let mut dirs = vec![Path::new(LLVM_PREFIX).join("bin")];
            dirs.extend(std::env::split_paths(&path));
            std::env::join_paths(dirs).context("PATH holds an entry with ':'")?
        }
        None => Path::new(LLVM_PREFIX).join("bin").into_os_string(),
    };
    let mut failures = Vec::new();
    // The pinned toolchain first (its LLVM is bpf-linker's), stable as a fallback.
    for toolchain in [TOOLCHAIN, "stable"] {
        for locked in [true, false] {
            let mut cargo = cmd::cargo([format!("+{toolchain}")]);
            cargo
                .args(["install", "bpf-linker", "--version", BPF_LINKER_VERSION])
                .args(["--no-default-features", "--features", "llvm-22"])
                .args(locked.then_some("--locked"))
                .env("PATH", &path)
                .env("LLVM_SYS_221_PREFIX", LLVM_PREFIX);
            match cmd::run(&mut cargo) {
                Ok(()) if bpf_linker_present() => return Ok(()),
                Ok(()) => bail!(
                    "`{}` succeeded but `bpf-linker --version` does not report {BPF_LINKER_VERSION}; \
                     is cargo's bin directory (~/.cargo/bin) on PATH?",
                    cmd::display(&cargo)
                ),
                Err(err) => {
                    eprintln!("prereqs: {err}");
                    failures.push(err.to_string());
                }
            }
        }
    }
    bail!(
        "could not install bpf-linker {BPF_LINKER_VERSION}:\n  {}",
        failures.join("\n  ")
    )
}

fn tracefs_mounted() -> bool {
    // A mounted tracefs is mode 0700, so without root `events` looks absent;
    // the mount table still shows it.
    Path::new(TRACEFS).join("events").exists()
        || std::fs::read_to_string("/proc/self/mounts").is_ok_and(|mounts| {
            mounts.lines().any(|line| {
                let mut fields = line.split_whitespace().skip(1);
                fields.next() == Some(TRACEFS) && fields.next() == Some("tracefs")
            })
        })
}

fn mount_tracefs() -> Result<()> {
    cmd::run(Command::new("mount").args(["-t", "tracefs", "tracefs", TRACEFS]))?;
    if !tracefs_mounted() {
        bail!("mounted tracefs at {TRACEFS} but {TRACEFS}/events is still missing");
    }
    Ok(())
}

/// `python3 -c` printing the installed kubernetes-validate's version, started
/// early and read last.
struct KubernetesValidateCheck(Option<std::process::Child>);

impl KubernetesValidateCheck {
    fn start() -> Self {
        let script =
            format!("import importlib.metadata as m; print(m.version('{KUBERNETES_VALIDATE}'))");
        let child = Command::new("python3")
            .args(["-c", &script])
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::null())
            .spawn();
        Self(child.ok())
    }

    fn present(self) -> bool {
        self.0
            .and_then(|child| child.wait_with_output().ok())
            .is_some_and(|output| {
                String::from_utf8_lossy(&output.stdout).trim() == KUBERNETES_VALIDATE_VERSION
            })
    }
}

/// Into the `python3` on PATH, the one `cargo xtask test` runs it with
/// (`python3 -m kubernetes_validate`). Debian marks its Python externally managed;
/// this tool and its few dependencies go in all the same.
fn install_kubernetes_validate() -> Result<()> {
    cmd::run(
        Command::new("python3")
            .args(["-m", "pip", "install", "--quiet", "--break-system-packages"])
            .arg("--root-user-action=ignore")
            .arg(format!(
                "{KUBERNETES_VALIDATE}=={KUBERNETES_VALIDATE_VERSION}"
            )),
    )
}

/// Its package and its dist-info directory (which names the version) are there.
fn kubernetes_validate_old_present() -> bool {
    let dir = kubernetes_validate_old_dir();
    let dist_info = format!("kubernetes_validate-{KUBERNETES_VALIDATE_OLD_VERSION}.dist-info");
    dir.join(dist_info).is_dir() && dir.join("kubernetes_validate").is_dir()
}

/// With its own dependencies, in its directory alone (`--target`: the environment's
/// packages stay as they are; `--upgrade` replaces what an interrupted install left).
fn install_kubernetes_validate_old() -> Result<()> {
    cmd::run(
        Command::new("python3")
            .args(["-m", "pip", "install", "--quiet", "--upgrade"])
            .args(["--break-system-packages", "--root-user-action=ignore"])
            .arg("--target")
            .arg(kubernetes_validate_old_dir())
            .arg(format!(
                "{KUBERNETES_VALIDATE}=={KUBERNETES_VALIDATE_OLD_VERSION}"
            )),
    )
}
