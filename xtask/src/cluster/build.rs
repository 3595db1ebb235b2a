//! Kubernetes v1.20.2 from Debian bookworm's `kubernetes` source package, built
//! once into `target/cluster/kubernetes-1.20.2/bin/`.
//!
//! Newer Debian `kubernetes` sources are kubectl-only, and Go modules cannot be
//! fetched here, so this tree (whose `vendor/` holds every dependency) is the one
//! complete Kubernetes at hand. With Debian's Go 1.19 it builds in GOPATH mode only
//! (module mode wants go.mod updates); the API server needs the OpenAPI definitions
//! the release tarball leaves out, generated here with the vendored `openapi-gen`
//! as the tree's `Makefile.generated_files` would. Debian's patches touch kubectl's
//! printing only and are not applied. The pause binary is the tree's own C file,
//! linked statically. Cold, on 2 cores: about 4 min for the Go binaries (Go's build
//! cache, in the user's home, makes a rebuild take seconds).

use std::fs;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Instant;

use anyhow::{Context, Result, bail};

use crate::{cmd, prereqs};

pub const VERSION: &str = "1.20.2";
/// Debian's version of the source package (bookworm, with its security update).
const DEBIAN_VERSION: &str = "1.20.5+really1.20.2-1.1+deb12u1";

/// What the node runs besides the Kubernetes binaries, and what builds them.
const PACKAGES: &[&str] = &[
    "golang-go",
    "etcd-server",
    "containerd",
    "runc",
    "containernetworking-plugins",
    "iptables",
    "conntrack",
    "openssl",
    "gcc",
    "libc6-dev",
];

/// The Go commands built, by their directory under `cmd/`.
const COMMANDS: &[&str] = &[
    "kube-apiserver",
    "kube-controller-manager",
    "kube-scheduler",
    "kube-proxy",
    "kubelet",
];

/// A `deb-src` entry for bookworm main, added when no source list has one.
const DEB_SRC_LIST: &str = "/etc/apt/sources.list.d/reloadscope-deb-src.sources";
const DEB_SRC: &str = "Types: deb-src
URIs: http://deb.debian.org/debian
Suites: bookworm
Components: main
Signed-By: /usr/share/keyrings/debian-archive-keyring.gpg
";

/// The built programs.
#[derive(Clone, Debug)]
pub struct Binaries {
    pub dir: PathBuf,
    /// The pause image, as an archive `ctr images import` takes.
    pub pause_image: PathBuf,
}

impl Binaries {
    pub fn at(dir: &Path) -> Self {
        Self {
            dir: dir.to_owned(),
            pause_image: dir.join("pause.tar"),
        }
    }
    pub fn kube_apiserver(&self) -> PathBuf {
        self.dir.join("kube-apiserver")
    }
    pub fn kube_controller_manager(&self) -> PathBuf {
        self.dir.join("kube-controller-manager")
    }
    pub fn kube_scheduler(&self) -> PathBuf {
        self.dir.join("kube-scheduler")
    }
    pub fn kube_proxy(&self) -> PathBuf {
        self.dir.join("kube-proxy")
    }
    pub fn kubelet(&self) -> PathBuf {
        self.dir.join("kubelet")
    }

    fn complete(&self) -> bool {
        COMMANDS.iter().all(|c| self.dir.join(c).is_file()) && self.pause_image.is_file()
    }
}

/// `target/cluster/kubernetes-<version>/`.
fn work_dir() -> PathBuf {
    cmd::target_dir()
        .join("cluster")
        .join(format!("kubernetes-{VERSION}"))
}

pub fn bin_dir() -> PathBuf {
    work_dir().join("bin")
}

/// Installs the Debian packages the node needs, if any is missing.
pub fn ensure_packages() -> Result<()> {
    prereqs::ensure_packages(PACKAGES)
}

/// The binaries, built first if any is missing.
pub fn ensure() -> Result<Binaries> {
    let bins = Binaries::at(&bin_dir());
    if bins.complete() {
        return Ok(bins);
    }
    let start = Instant::now();
    let tree = source_tree()?;
    fs::create_dir_all(&bins.dir)?;
    generate_openapi(&tree)?;
    go_build(&tree, &bins.dir)?;
    build_pause(&tree, &bins)?;
    println!(
        "cluster: built Kubernetes {VERSION} in {:.0} s",
        start.elapsed().as_secs_f64()
    );
    Ok(bins)
}

/// The source tree, linked into a GOPATH as `k8s.io/kubernetes`; fetched with
/// `apt-get source` and unpacked the first time.
fn source_tree() -> Result<PathBuf> {
    let work = work_dir();
    let gopath_tree = work.join("gopath/src/k8s.io/kubernetes");
    let tree = work.join(format!("kubernetes-{VERSION}"));
    if !tree.join("cmd/kubelet").is_dir() {
        let download = work.join("download");
        fs::create_dir_all(&download)?;
        let orig = download.join(format!("kubernetes_{VERSION_ORIG}.orig.tar.gz"));
        if !orig.is_file() {
            fetch_source(&download)?;
        }
        let t = Instant::now();
        let partial = work.join("unpacking");
        let _ = fs::remove_dir_all(&partial);
        fs::create_dir_all(&partial)?;
        cmd::run(
            Command::new("tar")
                .arg("-xzf")
                .arg(&orig)
                .arg("-C")
                .arg(&partial),
        )?;
        let _ = fs::remove_dir_all(&tree);
        fs::rename(partial.join(format!("kubernetes-{VERSION}")), &tree)?;
        fs::remove_dir_all(&partial)?;
        println!(
            "cluster: unpacked the source ({:.1} s)",
            t.elapsed().as_secs_f64()
        );
    }
    if !gopath_tree.exists() {
        fs::create_dir_all(gopath_tree.parent().expect("has a parent"))?;
        std::os::unix::fs::symlink(&tree, &gopath_tree)?;
    }
    Ok(gopath_tree)
}

/// The upstream version in the orig tarball's name.
const VERSION_ORIG: &str = "1.20.5+really1.20.2";

/// `apt-get source --download-only kubernetes=<version>`: apt checks the files
/// against the signed source index. Adds a bookworm `deb-src` entry first if none
/// is configured.
fn fetch_source(download: &Path) -> Result<()> {
    let t = Instant::now();
    let has_deb_src = Command::new("sh")
        .args(["-c", "grep -rqsE '^(Types: *deb-src|deb-src )' /etc/apt/sources.list /etc/apt/sources.list.d/"])
        .status()
        .is_ok_and(|s| s.success());
    if !has_deb_src {
        fs::write(DEB_SRC_LIST, DEB_SRC)
            .with_context(|| format!("could not write {DEB_SRC_LIST}"))?;
    }
    let fetch = || {
        cmd::run(
            Command::new("apt-get")
                .args(["source", "--download-only", "-q"])
                .arg(format!("kubernetes={DEBIAN_VERSION}"))
                .current_dir(download),
        )
    };
    if fetch().is_err() {
        // The source index may be missing or old: update it, then once more.
        cmd::run(Command::new("apt-get").args(["update", "-q"]))?;
        fetch()?;
    }
    println!(
        "cluster: fetched Debian's kubernetes {DEBIAN_VERSION} source ({:.1} s)",
        t.elapsed().as_secs_f64()
    );
    Ok(())
}

/// GOPATH mode, no cgo (static binaries), the tree's own GOPATH.
fn go(tree: &Path) -> Command {
    let gopath = tree
        .ancestors()
        .nth(3)
        .expect("the tree is <gopath>/src/k8s.io/kubernetes");
    let mut go = Command::new("nice");
    // Go finds the package's import path from the working directory as $PWD names
    // it: the GOPATH's symlink, not the real directory getcwd(3) would give.
    go.arg("go")
        .current_dir(tree)
        .env("PWD", tree)
        .env("GOPATH", gopath)
        .env("GO111MODULE", "off")
        .env("CGO_ENABLED", "0")
        .env("GOFLAGS", "");
    go
}

/// `pkg/generated/openapi/zz_generated.openapi.go`: the definitions of every
/// package that asks for them with a `+k8s:openapi-gen=` tag, as
/// `Makefile.generated_files` selects them (staging packages under their vendor/
/// names, code-generator's and sample-apiserver's left out).
fn generate_openapi(tree: &Path) -> Result<()> {
    let out = tree.join("pkg/generated/openapi/zz_generated.openapi.go");
    if out.is_file() {
        return Ok(());
    }
    let t = Instant::now();
    let tool = bin_dir().join("openapi-gen");
    cmd::run(
        go(tree)
            .args(["build", "-o"])
            .arg(&tool)
            .arg("./vendor/k8s.io/kube-openapi/cmd/openapi-gen"),
    )?;
    let mut dirs = Vec::new();
    collect_openapi_dirs(tree, tree, &mut dirs)?;
    dirs.sort();
    dirs.dedup();
    if dirs.is_empty() {
        bail!(
            "no package in {} asks for OpenAPI definitions",
            tree.display()
        );
    }
    let inputs: Vec<String> = dirs
        .iter()
        .map(|d| format!("k8s.io/kubernetes/{d}"))
        .collect();
    let report = bin_dir().join("openapi-violations.report");
    let gopath = tree.ancestors().nth(3).expect("in a GOPATH");
    cmd::run(
        Command::new(&tool)
            .current_dir(tree)
            .env("PWD", tree)
            .env("GOPATH", gopath)
            .env("GO111MODULE", "off")
            .args(["--logtostderr", "-i", &inputs.join(",")])
            .args(["-p", "k8s.io/kubernetes/pkg/generated/openapi"])
            .args(["-O", "zz_generated.openapi"])
            .args(["-h", "vendor/k8s.io/code-generator/hack/boilerplate.go.txt"])
            .arg("-r")
            .arg(&report),
    )?;
    if !out.is_file() {
        bail!("openapi-gen did not write {}", out.display());
    }
    println!(
        "cluster: generated the OpenAPI definitions of {} packages ({:.1} s)",
        dirs.len(),
        t.elapsed().as_secs_f64()
    );
    Ok(())
}

/// Directories (relative to the tree, staging ones under their vendor/ name) with a
/// Go file holding a `// +k8s:` tag line and `+k8s:openapi-gen=`.
fn collect_openapi_dirs(tree: &Path, dir: &Path, out: &mut Vec<String>) -> Result<()> {
    for entry in fs::read_dir(dir).with_context(|| format!("could not list {}", dir.display()))? {
        let entry = entry?;
        let name = entry.file_name();
        let name = name.to_string_lossy();
        let path = entry.path();
        let rel = path.strip_prefix(tree).expect("below the tree");
        let file_type = entry.file_type()?;
        if file_type.is_dir() {
            if name.starts_with('_') || name.starts_with('.') || rel == Path::new("vendor") {
                continue;
            }
            collect_openapi_dirs(tree, &path, out)?;
        } else if file_type.is_file() && name.ends_with(".go") {
            let Some(vendor_rel) = vendor_name(rel) else {
                continue;
            };
            let text = fs::read_to_string(&path).unwrap_or_default();
            let tagged = text.lines().any(|l| {
                l.strip_prefix("//")
                    .is_some_and(|r| r.trim_start().starts_with("+k8s:"))
            });
            if tagged && text.contains("+k8s:openapi-gen=") {
                let parent = Path::new(&vendor_rel)
                    .parent()
                    .expect("a file has a parent");
                out.push(parent.display().to_string());
            }
        }
    }
    Ok(())
}

/// A file's name as the Makefile sees it: `staging/src/X` as `vendor/X`; None for
/// the packages the main OpenAPI definitions leave out.
fn vendor_name(rel: &Path) -> Option<String> {
    let rel = rel.to_str()?;
    let name = match rel.strip_prefix("staging/src/") {
        Some(rest) => format!("vendor/{rest}"),
        None => rel.to_owned(),
    };
    let excluded = [
        "vendor/k8s.io/code-generator/",
        "vendor/k8s.io/sample-apiserver/",
    ];
    (!excluded.iter().any(|e| name.starts_with(e))).then_some(name)
}

/// The five commands in one `go build` (shared packages compile once), with the
/// version stamped as the release build would.
fn go_build(tree: &Path, bin: &Path) -> Result<()> {
    let t = Instant::now();
    let v = "k8s.io/kubernetes/vendor/k8s.io/component-base/version";
    let ldflags = format!(
        "-s -w -X {v}.gitVersion=v{VERSION} -X {v}.gitMajor=1 -X {v}.gitMinor=20 \
         -X {v}.gitTreeState=clean -X {v}.gitCommit=debian-{DEBIAN_VERSION}"
    );
    let mut build = go(tree);
    build
        .arg("build")
        .arg("-o")
        .arg(format!("{}/", bin.display()))
        .args(["-ldflags", &ldflags]);
    for c in COMMANDS {
        build.arg(format!("./cmd/{c}"));
    }
    cmd::run(&mut build)?;
    println!(
        "cluster: built {} ({:.0} s)",
        COMMANDS.join(", "),
        t.elapsed().as_secs_f64()
    );
    Ok(())
}

/// The pause binary, statically linked, as the image `files::PAUSE_IMAGE`.
fn build_pause(tree: &Path, bins: &Binaries) -> Result<()> {
    let binary = bins.dir.join("pause");
    cmd::run(
        Command::new("gcc")
            .args(["-Os", "-static", "-DVERSION=v3.2"])
            .arg("-o")
            .arg(&binary)
            .arg(tree.join("build/pause/linux/pause.c")),
    )?;
    crate::image::write_binary_image(
        &binary,
        "pause",
        super::files::PAUSE_IMAGE,
        &bins.pause_image,
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn staging_files_go_by_their_vendor_names_and_generators_are_left_out() {
        assert_eq!(
            vendor_name(Path::new("staging/src/k8s.io/api/core/v1/doc.go")).as_deref(),
            Some("vendor/k8s.io/api/core/v1/doc.go")
        );
        assert_eq!(
            vendor_name(Path::new("pkg/apis/core/doc.go")).as_deref(),
            Some("pkg/apis/core/doc.go")
        );
        assert_eq!(
            vendor_name(Path::new(
                "staging/src/k8s.io/sample-apiserver/pkg/apis/wardle/v1alpha1/doc.go"
            )),
            None
        );
        assert_eq!(
            vendor_name(Path::new("staging/src/k8s.io/code-generator/x/doc.go")),
            None
        );
    }

    #[test]
    fn openapi_dirs_are_those_with_the_tag() {
        let dir = std::env::temp_dir().join(format!("xtask-openapi-{}", std::process::id()));
        let _ = fs::remove_dir_all(&dir);
        let write = |rel: &str, text: &str| {
            let p = dir.join(rel);
            fs::create_dir_all(p.parent().unwrap()).unwrap();
            fs::write(p, text).unwrap();
        };
        write("pkg/a/doc.go", "// +k8s:openapi-gen=true\npackage a\n");
        write("pkg/b/doc.go", "// +k8s:deepcopy-gen=package\npackage b\n");
        write(
            "staging/src/k8s.io/api/c/doc.go",
            "// +k8s:openapi-gen=true\npackage c\n",
        );
        write("vendor/x/doc.go", "// +k8s:openapi-gen=true\npackage x\n");
        write("_output/y/doc.go", "// +k8s:openapi-gen=true\npackage y\n");
        let mut dirs = Vec::new();
        collect_openapi_dirs(&dir, &dir, &mut dirs).unwrap();
        dirs.sort();
        fs::remove_dir_all(&dir).unwrap();
        assert_eq!(dirs, ["pkg/a", "vendor/k8s.io/api/c"]);
    }
}
