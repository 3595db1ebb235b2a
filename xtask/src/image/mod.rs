//! `cargo xtask image`: the agent's image and the real-node test image, built from
//! the working tree with no container engine and no registry.
//!
//! Each image is one layer ([`rootfs::for_binary`]): a release binary at
//! `/usr/bin/<name>`, exactly the shared objects and the ELF interpreter it loads
//! (copied from this machine, where `ldd` finds them), and an `/etc/passwd` and
//! `/etc/group` naming root; no shell. It is written to `target/images/` as a
//! docker-archive ([`archive`]) that `ctr images import`, `docker load` and `podman
//! load` take, or, with `--rootfs DIR`, laid out in a directory: the Dockerfile's
//! build stage does that, and its `FROM scratch` stage copies the directory, so both
//! ways hold the same files.

mod archive;
mod check;
mod rootfs;

use std::fs;
use std::path::{Path, PathBuf};

use anyhow::{Context, Result, bail, ensure};
use serde_json::{Value, json};

use crate::{cmd, prereqs};

pub use check::check;

/// The tag of both images: the workspace version.
pub const TAG: &str = env!("CARGO_PKG_VERSION");

/// The config's `created`: fixed, so that the config's digest is the tree's.
const CREATED: &str = "1970-01-01T00:00:00Z";

/// PATH in the config, as `docker run` sets it: `kubectl exec <pod> -- reloadscope`.
const PATH_ENV: &str = "PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin";

/// One image: its binary and how it runs.
#[derive(Debug)]
pub struct Spec {
    /// Its name on the command line.
    pub name: &'static str,
    pub repository: &'static str,
    /// Its archive's name in `target/images/`.
    pub file: &'static str,
    /// The cargo package and binary installed at `/usr/bin/<binary>`, the Entrypoint.
    pub package: &'static str,
    pub binary: &'static str,
    /// The config's Cmd: the Entrypoint's default arguments.
    pub cmd: &'static [&'static str],
    /// The config's ExposedPorts.
    pub ports: &'static [&'static str],
    /// Its `org.opencontainers.image.description` label.
    pub description: &'static str,
}

/// The agent: what `deploy/` runs.
pub const AGENT: Spec = Spec {
    name: "agent",
    repository: "ghcr.io/reloadscope/reloadscope",
    file: "reloadscope.tar",
    package: "reloadscope",
    binary: "reloadscope",
    cmd: &["agent"],
    ports: &["9741/tcp"],
    description: "reloadscope: ConfigMap and Secret volume updates and container reloads, as Prometheus metrics",
};

/// The real-node test's consumer: `reloadscope-consumer --strategy ... --file ...`.
pub const CONSUMER: Spec = Spec {
    name: "consumer",
    repository: "reloadscope-test/consumer",
    file: "consumer.tar",
    package: "lab-consumer",
    binary: "reloadscope-consumer",
    cmd: &["--help"],
    ports: &[],
    description: "reloadscope's test consumer: reads a mounted file as one kind of application does",
};

pub const SPECS: [&Spec; 2] = [&AGENT, &CONSUMER];

impl Spec {
    /// `repository:tag`.
    pub fn reference(&self) -> String {
        format!("{}:{TAG}", self.repository)
    }

    /// `target/images/<file>`.
    pub fn archive(&self) -> PathBuf {
        images_dir().join(self.file)
    }

    fn entrypoint(&self) -> String {
        format!("/{}", rootfs::bin_path(self.binary))
    }

    /// The image config (the OCI image config, which Docker's is) for a layer whose
    /// uncompressed digest is `diff_id` (`sha256:...`).
    fn config(&self, diff_id: &str) -> Value {
        let ports: serde_json::Map<String, Value> = self
            .ports
            .iter()
            .map(|port| ((*port).to_owned(), json!({})))
            .collect();
        json!({
            "architecture": architecture(),
            "os": "linux",
            "created": CREATED,
            "config": {
                "User": "0",
                "Env": [PATH_ENV],
                "Entrypoint": [self.entrypoint()],
                "Cmd": self.cmd,
                "ExposedPorts": ports,
                "Labels": {
                    "org.opencontainers.image.title": self.binary,
                    "org.opencontainers.image.description": self.description,
                    "org.opencontainers.image.version": TAG,
                },
            },
            "rootfs": {"type": "layers", "diff_ids": [diff_id]},
            "history": [{"created": CREATED, "created_by": "cargo xtask image"}],
        })
    }

    /// Builds the release binary, then its root filesystem.
    fn rootfs(&self) -> Result<rootfs::Rootfs> {
        cmd::run(&mut cmd::cargo([
            "build",
            "--release",
            "--locked",
            "-p",
            self.package,
            "--bin",
            self.binary,
        ]))?;
        let binary = cmd::target_dir().join("release").join(self.binary);
        ensure!(
            binary.is_file(),
            "`cargo build -p {} --release` did not produce {}",
            self.package,
            binary.display()
        );
        rootfs::for_binary(&binary, self.binary)
    }

    /// The docker-archive of `rootfs` as this image.
    fn archive_bytes(&self, rootfs: &rootfs::Rootfs) -> Result<Vec<u8>> {
        self.archive_bytes_as(rootfs, &self.reference())
    }

    /// The docker-archive of `rootfs` as this image, tagged `reference`.
    fn archive_bytes_as(&self, rootfs: &rootfs::Rootfs, reference: &str) -> Result<Vec<u8>> {
        let layer = archive::layer(rootfs)?;
        let diff_id = format!("sha256:{}", archive::sha256_hex(&layer));
        let config = serde_json::to_vec(&self.config(&diff_id))?;
        archive::docker_archive(&config, &layer, &[reference.to_owned()])
    }
}

/// Writes, to `out`, the image `reference` of a binary built elsewhere (the
/// cluster's static pause binary), laid out as the project's own images are, with
/// `/usr/bin/<name>` its Entrypoint.
pub fn write_binary_image(
    binary: &Path,
    name: &'static str,
    reference: &str,
    out: &Path,
) -> Result<()> {
    let spec = Spec {
        name,
        repository: "",
        file: "",
        package: "",
        binary: name,
        cmd: &[],
        ports: &[],
        description: "",
    };
    let bytes = spec.archive_bytes_as(&rootfs::for_binary(binary, name)?, reference)?;
    fs::write(out, bytes).with_context(|| format!("writing {}", out.display()))
}

/// The GOARCH name of this machine's architecture, the binaries'.
fn architecture() -> &'static str {
    match std::env::consts::ARCH {
        "x86_64" => "amd64",
        "aarch64" => "arm64",
        "x86" => "386",
        other => other,
    }
}

pub fn images_dir() -> PathBuf {
    cmd::target_dir().join("images")
}

/// The archives [`build_all`] wrote.
pub struct Images {
    pub agent: PathBuf,
    pub consumer: PathBuf,
    /// Both images' tag.
    pub tag: String,
}

/// Builds both images' archives (their build prerequisites first).
pub fn build_all() -> Result<Images> {
    prereqs::ensure_build()?;
    for spec in SPECS {
        write_archive(spec)?;
    }
    Ok(Images {
        agent: AGENT.archive(),
        consumer: CONSUMER.archive(),
        tag: TAG.to_owned(),
    })
}

/// Writes `target/images/<file>` (atomically: a reader never sees half of it).
fn write_archive(spec: &Spec) -> Result<()> {
    let bytes = spec.archive_bytes(&spec.rootfs()?)?;
    let out = spec.archive();
    fs::create_dir_all(images_dir())?;
    let tmp = out.with_extension("tar.tmp");
    fs::write(&tmp, &bytes).with_context(|| format!("writing {}", tmp.display()))?;
    fs::rename(&tmp, &out).with_context(|| format!("renaming to {}", out.display()))?;
    println!(
        "image: {} -> {} ({:.1} MiB)",
        spec.reference(),
        out.strip_prefix(cmd::workspace_root())
            .unwrap_or(&out)
            .display(),
        bytes.len() as f64 / (1024.0 * 1024.0)
    );
    Ok(())
}

/// Options of `cargo xtask image`.
#[derive(clap::Args)]
pub struct ImageArgs {
    /// Lay out the image's root filesystem in DIR (absent or empty) instead of
    /// writing its archive: the Dockerfile's build stage runs `--rootfs /rootfs agent`
    #[arg(long, value_name = "DIR")]
    pub rootfs: Option<PathBuf>,
    /// The images: agent, consumer (default: both; one with --rootfs)
    #[arg(value_name = "IMAGE", value_parser = ["agent", "consumer"])]
    pub images: Vec<String>,
}

/// `cargo xtask image`.
pub fn run(args: ImageArgs) -> Result<()> {
    let plan = plan(&args)?;
    prereqs::ensure_build()?;
    match plan {
        Plan::Archives(specs) => specs.into_iter().try_for_each(write_archive),
        Plan::Rootfs(spec, dir) => write_rootfs(spec, dir),
    }
}

/// What `cargo xtask image` writes.
#[derive(Debug)]
enum Plan<'a> {
    Archives(Vec<&'static Spec>),
    Rootfs(&'static Spec, &'a Path),
}

fn plan(args: &ImageArgs) -> Result<Plan<'_>> {
    let specs: Vec<&Spec> = if args.images.is_empty() {
        SPECS.to_vec()
    } else {
        args.images
            .iter()
            .map(|name| by_name(name))
            .collect::<Result<_>>()?
    };
    Ok(match &args.rootfs {
        Some(dir) => {
            let [spec] = specs[..] else {
                bail!("--rootfs lays out one image: name it (agent or consumer)");
            };
            Plan::Rootfs(spec, dir)
        }
        None => Plan::Archives(specs),
    })
}

fn by_name(name: &str) -> Result<&'static Spec> {
    SPECS
        .into_iter()
        .find(|spec| spec.name == name)
        .with_context(|| format!("no image {name:?}: agent or consumer"))
}

fn write_rootfs(spec: &Spec, dir: &Path) -> Result<()> {
    spec.rootfs()?.write_dir(dir)?;
    println!(
        "image: {}'s root filesystem in {}",
        spec.reference(),
        dir.display()
    );
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_configs_say_how_each_image_runs() {
        let config = AGENT.config("sha256:abc");
        assert_eq!(config["os"], "linux");
        assert_eq!(config["architecture"], architecture());
        assert_eq!(
            config["rootfs"],
            json!({"type": "layers", "diff_ids": ["sha256:abc"]})
        );
        let run = &config["config"];
        assert_eq!(run["Entrypoint"], json!(["/usr/bin/reloadscope"]));
        assert_eq!(run["Cmd"], json!(["agent"]));
        assert_eq!(run["User"], "0");
        assert_eq!(run["ExposedPorts"], json!({"9741/tcp": {}}));
        let path = run["Env"][0].as_str().unwrap();
        assert!(
            path.strip_prefix("PATH=")
                .unwrap()
                .split(':')
                .any(|d| d == "/usr/bin")
        );
        assert_eq!(run["Labels"]["org.opencontainers.image.version"], TAG);

        let run = &CONSUMER.config("sha256:abc")["config"];
        assert_eq!(run["Entrypoint"], json!(["/usr/bin/reloadscope-consumer"]));
        assert_eq!(run["ExposedPorts"], json!({}));
        assert_eq!(
            CONSUMER.reference(),
            format!("reloadscope-test/consumer:{TAG}")
        );
        assert_eq!(
            AGENT.reference(),
            format!("ghcr.io/reloadscope/reloadscope:{TAG}")
        );
    }

    #[test]
    fn the_config_is_the_same_for_the_same_layer() {
        let a = serde_json::to_vec(&AGENT.config("sha256:1")).unwrap();
        assert_eq!(a, serde_json::to_vec(&AGENT.config("sha256:1")).unwrap());
        assert_ne!(a, serde_json::to_vec(&AGENT.config("sha256:2")).unwrap());
    }

    #[test]
    fn an_archive_holds_its_config_and_layer() {
        let mut fs = rootfs::Rootfs::default();
        fs.add_file("usr/bin/reloadscope", 0o755, b"\x7fELF".to_vec())
            .unwrap();
        let bytes = AGENT.archive_bytes(&fs).unwrap();
        let mut files = std::collections::BTreeMap::new();
        for entry in tar::Archive::new(&bytes[..]).entries().unwrap() {
            let mut entry = entry.unwrap();
            let mut content = Vec::new();
            std::io::Read::read_to_end(&mut entry, &mut content).unwrap();
            files.insert(entry.path().unwrap().to_str().unwrap().to_owned(), content);
        }
        let manifest: Value = serde_json::from_slice(&files["manifest.json"]).unwrap();
        let manifest = &manifest[0];
        assert_eq!(manifest["RepoTags"], json!([AGENT.reference()]));
        let config: Value =
            serde_json::from_slice(&files[manifest["Config"].as_str().unwrap()]).unwrap();
        let layer = &files[manifest["Layers"][0].as_str().unwrap()];
        assert_eq!(
            config["rootfs"]["diff_ids"][0],
            format!("sha256:{}", archive::sha256_hex(layer))
        );
        assert_eq!(
            config,
            AGENT.config(config["rootfs"]["diff_ids"][0].as_str().unwrap())
        );
    }

    #[test]
    fn rootfs_takes_exactly_one_image() {
        let args = |rootfs: Option<&str>, images: &[&str]| ImageArgs {
            rootfs: rootfs.map(PathBuf::from),
            images: images.iter().map(|&i| i.to_owned()).collect(),
        };
        fn names(plan: Result<Plan<'_>>) -> Vec<&'static str> {
            match plan {
                Ok(Plan::Archives(specs)) => specs.iter().map(|s| s.name).collect(),
                other => panic!("{other:?}"),
            }
        }
        assert_eq!(names(plan(&args(None, &[]))), ["agent", "consumer"]);
        assert_eq!(names(plan(&args(None, &["consumer"]))), ["consumer"]);
        let one = args(Some("/rootfs"), &["agent"]);
        assert!(
            matches!(plan(&one), Ok(Plan::Rootfs(spec, dir)) if spec.name == "agent" && dir == Path::new("/rootfs"))
        );
        assert!(plan(&args(Some("/rootfs"), &[])).is_err());
        assert!(plan(&args(Some("/rootfs"), &["agent", "consumer"])).is_err());
        assert!(plan(&args(None, &["shell"])).is_err());
    }

    /// The Dockerfile's stages: its build stage installs what `prereqs::ensure_build`
    /// checks, and its runtime stage's config is the archive's.
    #[test]
    fn the_dockerfile_agrees() {
        let dockerfile = fs::read_to_string(cmd::workspace_root().join("Dockerfile")).unwrap();
        let has = |what: &str| {
            assert!(dockerfile.contains(what), "the Dockerfile lacks {what:?}");
        };
        for package in prereqs::BUILD_PACKAGES {
            has(&format!(" {package}"));
        }
        has(&format!("ARG TOOLCHAIN={}", cmd::TOOLCHAIN));
        has("-c rust-src");
        has(&format!(
            "bpf-linker --version {}",
            prereqs::BPF_LINKER_VERSION
        ));
        has("cargo xtask image --rootfs /rootfs agent");
        has("FROM scratch");
        has("COPY --from=build /rootfs /");
        let config = AGENT.config("sha256:0");
        let run = &config["config"];
        has(&format!("ENV {PATH_ENV}"));
        has(&format!("USER {}", run["User"].as_str().unwrap()));
        has(&format!("EXPOSE {}", AGENT.ports.join(" ")));
        has(&format!("ENTRYPOINT {}", run["Entrypoint"]));
        has(&format!("CMD {}", run["Cmd"]));
    }
}
