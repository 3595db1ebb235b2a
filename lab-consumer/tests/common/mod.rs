//! A volume laid out as the kubelet lays out a ConfigMap or Secret volume, in a temp
//! dir, and its update made with the kubelet AtomicWriter's steps.

#![allow(dead_code)] // Each test binary uses its own part.

use std::{
    fs,
    os::unix::fs::symlink,
    path::{Path, PathBuf},
    sync::mpsc,
    time::{Duration, Instant},
};

pub const KEY: &str = "config.yaml";

/// How long a test waits for what must happen.
pub const DEADLINE: Duration = Duration::from_secs(10);

/// `<dir>/..2026_01_01_00_00_<n>.000000001/<key>`, `..data -> ..2026_...`,
/// `<key> -> ..data/<key>`.
pub struct Volume {
    tmp: tempfile::TempDir,
    generation: u32,
}

impl Volume {
    pub fn new(content: &[u8]) -> Volume {
        let tmp = tempfile::tempdir().unwrap();
        let dir = tmp.path();
        let data = Self::data_dir_name(1);
        fs::create_dir(dir.join(&data)).unwrap();
        fs::write(dir.join(&data).join(KEY), content).unwrap();
        symlink(&data, dir.join("..data")).unwrap();
        symlink(Path::new("..data").join(KEY), dir.join(KEY)).unwrap();
        Volume { tmp, generation: 1 }
    }

    fn data_dir_name(generation: u32) -> String {
        format!("..2026_01_01_00_00_{generation:02}.000000001")
    }

    /// The volume dir, as a whole-volume mount shows it.
    pub fn dir(&self) -> &Path {
        self.tmp.path()
    }

    /// The user-visible file.
    pub fn file(&self) -> PathBuf {
        self.dir().join(KEY)
    }

    /// An update: a new timestamped dir with the new content, `..data_tmp` pointing at
    /// it renamed over `..data`, then the old dir removed.
    pub fn swap(&mut self, content: &[u8]) {
        let dir = self.tmp.path();
        let old = Self::data_dir_name(self.generation);
        self.generation += 1;
        let new = Self::data_dir_name(self.generation);
        fs::create_dir(dir.join(&new)).unwrap();
        fs::write(dir.join(&new).join(KEY), content).unwrap();
        symlink(&new, dir.join("..data_tmp")).unwrap();
        fs::rename(dir.join("..data_tmp"), dir.join("..data")).unwrap();
        fs::remove_dir_all(dir.join(old)).unwrap();
    }
}

/// The next item of `rx` that `pick` accepts, skipping others, before `deadline`.
pub fn next_matching<T: std::fmt::Debug>(
    rx: &mpsc::Receiver<T>,
    deadline: Instant,
    mut pick: impl FnMut(&T) -> bool,
) -> Result<T, String> {
    let mut skipped = Vec::new();
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        match rx.recv_timeout(left) {
            Ok(item) if pick(&item) => return Ok(item),
            Ok(item) => skipped.push(item),
            Err(e) => return Err(format!("{e} (after {skipped:?})")),
        }
    }
}
