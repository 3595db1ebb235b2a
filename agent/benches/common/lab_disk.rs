//! A disk for a lab node (detect's burst, scale's node): a fresh ext4 file system with
//! a journal, on a loop device over an image file, as a node's kubelet dir would have.
//! The machine's own root may lack a journal, and then ext4 skips every inode freed in
//! the last 30 s when it allocates one: under a burst's create/delete churn the writer,
//! not the agent, becomes the bound.

use std::{
    fs,
    path::{Path, PathBuf},
    process::Command,
};

use anyhow::{Context as _, bail};

pub struct LabDisk {
    mount: PathBuf,
    dir: Option<tempfile::TempDir>,
}

fn run(cmd: &mut Command) -> anyhow::Result<()> {
    let out = cmd
        .output()
        .with_context(|| format!("run {:?}", cmd.get_program()))?;
    if !out.status.success() {
        bail!(
            "{:?} failed ({}): {}",
            cmd.get_program(),
            out.status,
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    Ok(())
}

impl LabDisk {
    /// Makes a sparse image of `mib` MiB in the temp dir, formats it ext4 (inode tables
    /// and journal written now, so no lazy init runs during the burst) and mounts it.
    pub fn create(mib: u64) -> anyhow::Result<LabDisk> {
        let dir = tempfile::Builder::new()
            .prefix("reloadscope-bench-disk-")
            .tempdir()
            .context("temp dir for the disk image")?;
        let image = dir.path().join("disk.img");
        fs::File::create(&image)
            .and_then(|f| f.set_len(mib << 20))
            .context("create the disk image")?;
        run(Command::new("mkfs.ext4")
            .args(["-q", "-F", "-E", "lazy_itable_init=0,lazy_journal_init=0"])
            .arg(&image))?;
        let mount = dir.path().join("mnt");
        fs::create_dir(&mount)?;
        // `mount -o loop` sets up the loop device with autoclear: unmounting frees it.
        run(Command::new("mount")
            .args(["-t", "ext4", "-o", "loop"])
            .arg(&image)
            .arg(&mount))?;
        Ok(LabDisk {
            mount,
            dir: Some(dir),
        })
    }

    pub fn path(&self) -> &Path {
        &self.mount
    }
}

impl Drop for LabDisk {
    fn drop(&mut self) {
        let unmounted = nix::mount::umount2(&self.mount, nix::mount::MntFlags::empty())
            .or_else(|_| nix::mount::umount2(&self.mount, nix::mount::MntFlags::MNT_DETACH));
        match unmounted {
            Ok(()) => drop(self.dir.take()),
            Err(e) => {
                // Never remove the dir through a file system still mounted on it.
                eprintln!("[lab disk] could not unmount {:?}: {e}", self.mount);
                if let Some(d) = self.dir.take() {
                    let _ = d.keep();
                }
            }
        }
    }
}
