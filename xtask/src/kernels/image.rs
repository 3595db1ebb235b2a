//! Debian cloud kernel images: `apt-get download` once, `dpkg -x` into
//! `target/kernels/<package>/`, then reused.

use std::fs;
use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::{Context, Result, bail};

use crate::cmd;

/// A Debian kernel package to boot.
pub struct Kernel {
    /// Short name in messages and on the command line: `6.1`.
    pub name: &'static str,
    /// The pinned binary package, e.g. `linux-image-6.1.0-56-cloud-amd64`.
    pub package: &'static str,
    /// The meta-package that depends on the newest such package; used, with a
    /// warning, once the archive no longer has the pinned one.
    pub meta: &'static str,
}

/// An unpacked kernel package.
pub struct Image {
    pub package: String,
    /// The Debian version of the package, e.g. `6.1.192-2`.
    pub version: String,
    pub vmlinuz: PathBuf,
}

/// Written last into an unpacked package: the name of the .deb it came from.
const STAMP: &str = ".reloadscope-deb";

/// The unpacked image of `kernel`, downloaded and unpacked first if it is not cached.
pub fn ensure(kernel: &Kernel, cache: &Path) -> Result<Image> {
    if let Some(image) = cached(cache, kernel.package)? {
        return Ok(image);
    }
    let pinned_err = match fetch(cache, kernel.package) {
        Ok(image) => return Ok(image),
        Err(err) => err,
    };
    let current = current_package(kernel.meta).with_context(|| {
        format!(
            "could not download {} ({pinned_err:#}), nor find what {} depends on now",
            kernel.package, kernel.meta
        )
    })?;
    eprintln!(
        "kernels: WARNING: {} cannot be downloaded ({pinned_err:#}); using {current}, \
         which {} depends on now. Update KERNELS in xtask/src/kernels.rs.",
        kernel.package, kernel.meta
    );
    match cached(cache, &current)? {
        Some(image) => Ok(image),
        None => fetch(cache, &current),
    }
}

fn cached(cache: &Path, package: &str) -> Result<Option<Image>> {
    let dir = cache.join(package);
    let Ok(deb) = fs::read_to_string(dir.join(STAMP)) else {
        return Ok(None);
    };
    let version = version_of(deb.trim())
        .with_context(|| format!("{}: not a .deb name: {deb:?}", dir.join(STAMP).display()))?;
    Ok(Some(Image {
        package: package.to_owned(),
        version,
        vmlinuz: vmlinuz(&dir)?,
    }))
}

/// `apt-get download` then `dpkg -x`, through a scratch directory so that an
/// interrupted run leaves nothing that looks complete.
fn fetch(cache: &Path, package: &str) -> Result<Image> {
    let scratch = cache.join(format!(".fetch-{}", std::process::id()));
    let _ = fs::remove_dir_all(&scratch);
    fs::create_dir_all(&scratch).with_context(|| format!("create {}", scratch.display()))?;
    let result = fetch_into(&scratch, cache, package);
    let _ = fs::remove_dir_all(&scratch);
    result
}

fn fetch_into(scratch: &Path, cache: &Path, package: &str) -> Result<Image> {
    let start = std::time::Instant::now();
    let mut download = Command::new("apt-get");
    download.current_dir(scratch).args(["-q", "download"]);
    if cmd::is_root() {
        // apt's sandbox user cannot write into target/; root downloads as itself.
        download.args(["-o", "APT::Sandbox::User=root"]);
    }
    download.arg(package);
    let output = download
        .output()
        .with_context(|| format!("could not start `{}`", cmd::display(&download)))?;
    if !output.status.success() {
        bail!(
            "`{}` failed: {}",
            cmd::display(&download),
            String::from_utf8_lossy(&output.stderr).trim()
        );
    }
    let deb = fs::read_dir(scratch)?
        .filter_map(|entry| entry.ok())
        .map(|entry| entry.file_name().to_string_lossy().into_owned())
        .find(|name| name.ends_with(".deb"))
        .with_context(|| format!("`{}` left no .deb", cmd::display(&download)))?;
    let unpacked = scratch.join("root");
    cmd::run(
        Command::new("dpkg")
            .arg("-x")
            .arg(scratch.join(&deb))
            .arg(&unpacked),
    )?;
    let version = version_of(&deb).with_context(|| format!("not a .deb name: {deb}"))?;
    vmlinuz(&unpacked)?;
    fs::write(unpacked.join(STAMP), &deb)?;
    let dir = cache.join(package);
    let _ = fs::remove_dir_all(&dir);
    fs::rename(&unpacked, &dir)
        .with_context(|| format!("move {} to {}", unpacked.display(), dir.display()))?;
    eprintln!(
        "kernels: downloaded {package} {version} into {} ({:.1} s)",
        dir.display(),
        start.elapsed().as_secs_f64()
    );
    Ok(Image {
        package: package.to_owned(),
        version,
        vmlinuz: vmlinuz(&dir)?,
    })
}

fn vmlinuz(dir: &Path) -> Result<PathBuf> {
    let boot = dir.join("boot");
    fs::read_dir(&boot)
        .with_context(|| format!("read {}", boot.display()))?
        .filter_map(|entry| entry.ok())
        .map(|entry| entry.path())
        .find(|path| {
            path.file_name()
                .is_some_and(|name| name.to_string_lossy().starts_with("vmlinuz-"))
        })
        .with_context(|| format!("no vmlinuz-* in {}", boot.display()))
}

/// The version in a .deb file name, `<package>_<version>_<arch>.deb` (apt writes an
/// epoch's `:` as `%3a`).
fn version_of(deb: &str) -> Option<String> {
    let stem = deb.strip_suffix(".deb")?;
    let mut parts = stem.split('_');
    let (_package, version, _arch) = (parts.next()?, parts.next()?, parts.next()?);
    (parts.next().is_none() && !version.is_empty()).then(|| version.replace("%3a", ":"))
}

/// The `linux-image-*` package `meta` depends on in the current apt lists.
fn current_package(meta: &str) -> Result<String> {
    let mut depends = Command::new("apt-cache");
    depends.args(["depends", meta]);
    let output = depends
        .output()
        .with_context(|| format!("could not start `{}`", cmd::display(&depends)))?;
    parse_depends(&String::from_utf8_lossy(&output.stdout))
        .with_context(|| format!("`{}` names no linux-image package", cmd::display(&depends)))
}

fn parse_depends(text: &str) -> Option<String> {
    text.lines()
        .filter_map(|line| line.trim().strip_prefix("Depends:"))
        .map(str::trim)
        .find(|package| package.starts_with("linux-image-"))
        .map(str::to_owned)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn versions_come_from_deb_names() {
        assert_eq!(
            version_of("linux-image-6.1.0-56-cloud-amd64_6.1.192-2_amd64.deb").as_deref(),
            Some("6.1.192-2")
        );
        assert_eq!(
            version_of("linux-image-6.12.117+deb12-cloud-amd64_6.12.117-1~deb12u1_amd64.deb")
                .as_deref(),
            Some("6.12.117-1~deb12u1")
        );
        assert_eq!(
            version_of("qemu-system-x86_1%3a7.2+dfsg-7_amd64.deb").as_deref(),
            Some("1:7.2+dfsg-7")
        );
        assert_eq!(version_of("vmlinuz-6.1"), None);
        assert_eq!(version_of("a_b.deb"), None);
    }

    #[test]
    fn the_meta_packages_kernel_is_its_linux_image_dependency() {
        let text =
            "linux-image-6.12-cloud-amd64\n  Depends: linux-image-6.12.117+deb12-cloud-amd64\n";
        assert_eq!(
            parse_depends(text).as_deref(),
            Some("linux-image-6.12.117+deb12-cloud-amd64")
        );
        assert_eq!(parse_depends("x\n  Depends: initramfs-tools\n"), None);
    }
}
