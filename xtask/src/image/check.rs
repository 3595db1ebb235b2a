//! `cargo xtask check-image`: both images built, then read by the tools that take
//! them. skopeo finds each archive's tag and reports its config; a containerd of the
//! check's own (its socket, root and state in a temp dir, stopped at the end) imports
//! them into its `k8s.io` namespace as a node's does, and runs each with runc: the
//! agent's `reloadscope --version`, the consumer with its image's default arguments.
//! A missing library or interpreter, a wrong Entrypoint or a malformed archive fails
//! here, not on a node. The agent's release binary must also hold no code of the lab
//! crate ([`lab_markers`]), which is a test tool only.

use std::fs::{self, File};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::thread::sleep;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail, ensure};
use serde_json::Value;

use super::{AGENT, CONSUMER, Spec};
use crate::prereqs;

/// What the check runs: containerd and its runc, skopeo.
const PACKAGES: &[&str] = &["containerd", "runc", "skopeo"];

/// containerd's namespace for Kubernetes: where a node's kubelet finds its images.
const NAMESPACE: &str = "k8s.io";

pub fn check() -> Result<()> {
    prereqs::ensure_packages(PACKAGES)?;
    let images = super::build_all()?;
    let built = Instant::now();
    no_lab_code()?;
    let archives = [(&AGENT, &images.agent), (&CONSUMER, &images.consumer)];
    for (spec, archive) in archives {
        skopeo(spec, archive)?;
    }
    let dir = ScratchDir::new()?;
    let containerd = Containerd::start(dir.path())?;
    for (spec, archive) in archives {
        containerd.import(spec, archive)?;
    }
    let version = containerd.run(&AGENT, &[AGENT.entrypoint().as_str(), "--version"])?;
    ensure!(
        version.trim() == format!("{} {}", AGENT.binary, images.tag),
        "`reloadscope --version` in the image said {version:?}"
    );
    let help = containerd.run(&CONSUMER, &[])?;
    ensure!(
        help.contains("--strategy <NAME>"),
        "the consumer image's default command did not print its help: {help:?}"
    );
    containerd.stop()?;
    dir.remove()?;
    println!(
        "image check: skopeo and containerd take both archives, and their binaries run \
         ({:.1} s after the build)",
        built.elapsed().as_secs_f64()
    );
    Ok(())
}

/// What linked lab code leaves in a binary: the lab crate's name in its symbols, and its
/// source paths in its panic locations.
const LAB_MARKERS: [&str; 2] = ["reloadscope_lab", "lab/src/"];

/// The [`LAB_MARKERS`] found in `binary`.
fn lab_markers(binary: &Path) -> Result<Vec<&'static str>> {
    let bytes = fs::read(binary).with_context(|| format!("read {}", binary.display()))?;
    Ok((LAB_MARKERS.into_iter())
        .filter(|m| bytes.windows(m.len()).any(|w| w == m.as_bytes()))
        .collect())
}

/// The release agent has none of [`LAB_MARKERS`], and the lab's own binary, the
/// control, has them all (the check can see lab code where there is some).
fn no_lab_code() -> Result<()> {
    let agent = crate::cmd::target_dir().join("release").join(AGENT.binary);
    let found = lab_markers(&agent)?;
    ensure!(
        found.is_empty(),
        "{} holds lab code: {found:?} found in it",
        agent.display()
    );
    crate::cmd::run(&mut crate::cmd::cargo(["build", "-p", "reloadscope-lab"]))?;
    let lab = crate::cmd::target_dir().join("debug/reloadscope-lab");
    let control = lab_markers(&lab)?;
    ensure!(
        control == LAB_MARKERS,
        "the lab binary {} shows only {control:?} of {LAB_MARKERS:?}: the check cannot \
         see lab code",
        lab.display()
    );
    println!("image check: the agent's release binary holds no lab code");
    Ok(())
}

fn output(command: &mut Command) -> Result<Output> {
    let output = command
        .output()
        .with_context(|| format!("could not run `{}`", crate::cmd::display(command)))?;
    if !output.status.success() {
        bail!(
            "`{}` failed ({}): {}{}",
            crate::cmd::display(command),
            output.status,
            String::from_utf8_lossy(&output.stdout),
            String::from_utf8_lossy(&output.stderr)
        );
    }
    Ok(output)
}

/// skopeo finds the image by its tag in the archive, and its config is ours.
fn skopeo(spec: &Spec, archive: &Path) -> Result<()> {
    let source = format!("docker-archive:{}:{}", archive.display(), spec.reference());
    let raw = output(Command::new("skopeo").args(["inspect", "--config", &source]))?;
    let seen: Value = serde_json::from_slice(&raw.stdout).context("skopeo's config")?;
    let diff_id = seen["rootfs"]["diff_ids"][0]
        .as_str()
        .context("no layer in skopeo's config")?;
    let expected = spec.config(diff_id);
    for key in ["architecture", "os", "rootfs"] {
        ensure!(
            seen[key] == expected[key],
            "{}: skopeo reports {key} {}, not {}",
            spec.file,
            seen[key],
            expected[key]
        );
    }
    for key in ["User", "Env", "Entrypoint", "Cmd", "ExposedPorts", "Labels"] {
        let (seen, expected) = (&seen["config"][key], &expected["config"][key]);
        // skopeo leaves an empty ExposedPorts out.
        let both_empty = expected.as_object().is_some_and(|o| o.is_empty()) && seen.is_null();
        ensure!(
            seen == expected || both_empty,
            "{}: skopeo reports {key} {seen}, not {expected}",
            spec.file
        );
    }
    println!(
        "image check: skopeo reads {} as {}",
        spec.file,
        spec.reference()
    );
    Ok(())
}

/// How containerd names a reference (`docker.io/` for Docker Hub's short names):
/// `ctr` wants that name, and the kubelet asks for it.
fn normalized(reference: &str) -> String {
    match reference.split_once('/') {
        Some((domain, _))
            if domain.contains('.') || domain.contains(':') || domain == "localhost" =>
        {
            reference.to_owned()
        }
        Some(_) => format!("docker.io/{reference}"),
        None => format!("docker.io/library/{reference}"),
    }
}

/// A containerd of the check's own: its config, socket, root and state in `dir`.
struct Containerd {
    child: Option<Child>,
    socket: PathBuf,
    log: PathBuf,
}

impl Containerd {
    fn start(dir: &Path) -> Result<Self> {
        let socket = dir.join("containerd.sock");
        let config = dir.join("config.toml");
        let d = dir.display();
        // Only what a node's import and a plain run use: no CRI, no other snapshotter.
        fs::write(
            &config,
            format!(
                r#"version = 2
root = "{d}/root"
state = "{d}/state"
disabled_plugins = ["io.containerd.grpc.v1.cri", "io.containerd.snapshotter.v1.btrfs", "io.containerd.snapshotter.v1.zfs", "io.containerd.snapshotter.v1.devmapper", "io.containerd.snapshotter.v1.aufs"]

[grpc]
  address = "{d}/containerd.sock"

[ttrpc]
  address = "{d}/containerd.sock.ttrpc"

[plugins."io.containerd.internal.v1.opt"]
  path = "{d}/opt"
"#
            ),
        )?;
        let log = dir.join("containerd.log");
        let out = File::create(&log)?;
        let child = Command::new("containerd")
            .arg("--config")
            .arg(&config)
            .stdin(Stdio::null())
            .stdout(out.try_clone()?)
            .stderr(out)
            .spawn()
            .context("could not start containerd")?;
        let mut containerd = Self {
            child: Some(child),
            socket,
            log,
        };
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            if let Some(status) = containerd.child.as_mut().unwrap().try_wait()? {
                bail!("containerd exited ({status}):\n{}", containerd.log_tail());
            }
            let answered = containerd
                .ctr()
                .arg("version")
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .status()
                .is_ok_and(|s| s.success());
            if answered {
                return Ok(containerd);
            }
            if Instant::now() >= deadline {
                bail!(
                    "containerd did not answer within 30 s:\n{}",
                    containerd.log_tail()
                );
            }
            sleep(Duration::from_millis(100));
        }
    }

    fn ctr(&self) -> Command {
        let mut ctr = Command::new("ctr");
        ctr.arg("--address").arg(&self.socket).args([
            "--namespace",
            NAMESPACE,
            "--timeout",
            "120s",
        ]);
        ctr
    }

    /// `ctr images import` as a node's containerd is given the archive; the image is
    /// then listed under its normalized name.
    fn import(&self, spec: &Spec, archive: &Path) -> Result<()> {
        output(
            self.ctr()
                .args(["images", "import", "--snapshotter", "native"])
                .arg(archive),
        )
        .with_context(|| format!("containerd's log:\n{}", self.log_tail()))?;
        let listed = output(self.ctr().args(["images", "ls", "--quiet"]))?;
        let name = normalized(&spec.reference());
        let listed = String::from_utf8_lossy(&listed.stdout);
        ensure!(
            listed.lines().any(|l| l == name),
            "{} imported, but {name} is not among containerd's images: {listed}",
            spec.file
        );
        println!("image check: containerd imported {} as {name}", spec.file);
        Ok(())
    }

    /// Runs the image (with `args` instead of its Entrypoint and Cmd, unless empty)
    /// and returns its stdout.
    fn run(&self, spec: &Spec, args: &[&str]) -> Result<String> {
        let id = format!("reloadscope-image-check-{}", std::process::id());
        let out = output(
            self.ctr()
                .args(["run", "--rm", "--snapshotter", "native"])
                .arg(normalized(&spec.reference()))
                .arg(&id)
                .args(args),
        )
        .with_context(|| format!("containerd's log:\n{}", self.log_tail()))?;
        println!("image check: {} runs", spec.reference());
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    }

    fn log_tail(&self) -> String {
        let log = fs::read_to_string(&self.log).unwrap_or_default();
        let lines: Vec<&str> = log.lines().collect();
        lines[lines.len().saturating_sub(20)..].join("\n")
    }

    /// SIGTERM, and SIGKILL after 10 s; an error when it had to be killed or failed.
    fn stop(mut self) -> Result<()> {
        self.stop_child()
    }

    fn stop_child(&mut self) -> Result<()> {
        let Some(mut child) = self.child.take() else {
            return Ok(());
        };
        // SAFETY: kill(2) of our own child, not yet waited for.
        unsafe { libc::kill(child.id() as libc::pid_t, libc::SIGTERM) };
        let deadline = Instant::now() + Duration::from_secs(10);
        while Instant::now() < deadline {
            if child.try_wait()?.is_some() {
                return Ok(());
            }
            sleep(Duration::from_millis(50));
        }
        let _ = child.kill();
        let _ = child.wait();
        bail!("containerd did not stop within 10 s of SIGTERM: killed")
    }
}

impl Drop for Containerd {
    fn drop(&mut self) {
        if let Err(err) = self.stop_child() {
            eprintln!("image check: {err}");
        }
    }
}

/// The check's own directory in the system temp dir, removed when dropped.
struct ScratchDir(PathBuf);

impl ScratchDir {
    fn new() -> Result<Self> {
        let dir =
            std::env::temp_dir().join(format!("reloadscope-image-check-{}", std::process::id()));
        // Left by an earlier process with the same pid.
        let _ = fs::remove_dir_all(&dir);
        fs::create_dir(&dir).with_context(|| format!("creating {}", dir.display()))?;
        Ok(Self(dir))
    }

    fn path(&self) -> &Path {
        &self.0
    }

    /// Removes it, failing if containerd left something it cannot remove (a mount).
    fn remove(self) -> Result<()> {
        fs::remove_dir_all(&self.0).with_context(|| format!("removing {}", self.0.display()))
    }
}

impl Drop for ScratchDir {
    fn drop(&mut self) {
        let _ = fs::remove_dir_all(&self.0);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lab_markers_are_found_anywhere_in_a_file() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("bin");
        fs::write(&file, b"\x7fELF..._ZN15reloadscope_lab4node...").unwrap();
        assert_eq!(lab_markers(&file).unwrap(), ["reloadscope_lab"]);
        fs::write(&file, b"lab/src/writer.rs\0reloadscope_lab").unwrap();
        assert_eq!(lab_markers(&file).unwrap(), LAB_MARKERS);
        fs::write(&file, b"agent/src/main.rs reloadscope::agent").unwrap();
        assert!(lab_markers(&file).unwrap().is_empty());
    }

    #[test]
    fn references_are_normalized_as_containerd_does() {
        assert_eq!(
            normalized("reloadscope-test/consumer:0.1.0"),
            "docker.io/reloadscope-test/consumer:0.1.0"
        );
        assert_eq!(
            normalized("ghcr.io/reloadscope/reloadscope:0.1.0"),
            "ghcr.io/reloadscope/reloadscope:0.1.0"
        );
        assert_eq!(normalized("pause:3.2"), "docker.io/library/pause:3.2");
        assert_eq!(normalized("localhost/x:1"), "localhost/x:1");
        assert_eq!(normalized("registry:5000/x:1"), "registry:5000/x:1");
    }
}
