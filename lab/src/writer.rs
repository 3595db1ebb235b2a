//! The kubelet's AtomicWriter (`pkg/volume/util/atomic_writer.go`, docs/design.md 1),
//! step by step and with the same system calls, so that the agent sees exactly what it
//! sees on a node.
//!
//! Layout after a write of `{"a", "sub/b"}`:
//!
//! ```text
//! <vol>/..2026_11_25_14_10_06.2914482033/a        regular file, 0644
//! <vol>/..2026_11_25_14_10_06.2914482033/sub/b    regular file, 0644
//! <vol>/..data -> ..2026_11_25_14_10_06.2914482033
//! <vol>/a      -> ..data/a
//! <vol>/sub    -> ..data/sub
//! ```
//!
//! Keys in subdirectories get one user-visible link for their top-level component, as
//! current kubelets make it; kubelets from before 2018 made `sub/b -> ../..data/sub/b`
//! inside a real `sub` dir instead.

use std::{
    collections::{BTreeMap, BTreeSet},
    ffi::{OsStr, OsString},
    fs,
    io::{self, Write as _},
    path::{Path, PathBuf},
    time::{SystemTime, UNIX_EPOCH},
};

use anyhow::Context as _;

use super::sys::{self, CallStyle};

/// The data directory link: its rename onto itself is the commit point.
const DATA_DIR: &str = "..data";
/// The new data directory link, renamed onto `..data`.
const DATA_TMP: &str = "..data_tmp";
const MAX_NAME_LEN: usize = 255;
const MAX_PATH_LEN: usize = 4096;
/// Mode of the timestamped directory, after `MkdirTemp`'s 0700.
const TS_DIR_MODE: u32 = 0o755;
/// The default mode of ConfigMap, Secret and projected files.
const FILE_MODE: u32 = 0o644;
/// Go's `os.ModePerm`, what `os.MkdirAll` creates subdirectories with (before umask).
const SUBDIR_MODE: u32 = 0o777;

/// Key (relative path, may contain `/`) to content.
pub type Payload = BTreeMap<String, Vec<u8>>;

/// A payload from string pairs: `payload(&[("key", "value")])`.
pub fn payload(items: &[(&str, &str)]) -> Payload {
    items
        .iter()
        .map(|(k, v)| (k.to_string(), v.as_bytes().to_vec()))
        .collect()
}

/// What a [`AtomicWriter::write`] did.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum WriteOutcome {
    /// The payload matched the files on disk: nothing was written.
    Unchanged,
    Written {
        /// The new timestamped directory's name (`..2026_11_25_14_10_06.2914482033`).
        ts_dir: String,
        /// No `..data` existed before: the volume's initial population, not an update.
        initial: bool,
        /// Taken right after the rename onto `..data` returned.
        swapped_at: SystemTime,
    },
}

/// Why a payload key was refused (kubelet `validatePath`). Nothing is written then.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum KeyError {
    #[error("invalid key {0:?}: must not be empty")]
    Empty(String),
    #[error("invalid key {0:?}: must be a relative path")]
    Absolute(String),
    #[error("invalid key {0:?}: longer than {MAX_PATH_LEN} bytes")]
    PathTooLong(String),
    #[error("invalid key {0:?}: a component is longer than {MAX_NAME_LEN} bytes")]
    NameTooLong(String),
    #[error("invalid key {0:?}: must not contain a '..' component")]
    DotDot(String),
    #[error("invalid key {0:?}: must not start with '..'")]
    Reserved(String),
    #[error("invalid key {0:?}: contains a NUL byte")]
    Nul(String),
    #[error("invalid key {0:?}: it is also a directory of key {1:?}")]
    FileAndDir(String, String),
}

/// Writes payloads into one volume directory the way the kubelet does.
#[derive(Clone, Debug)]
pub struct AtomicWriter {
    dir: PathBuf,
    gate: super::SwapGate,
}

impl AtomicWriter {
    pub fn new(volume_dir: PathBuf) -> Self {
        Self::gated(volume_dir, super::SwapGate::default())
    }

    /// A writer whose swaps wait at `gate` (see [`super::marks`]).
    pub fn gated(volume_dir: PathBuf, gate: super::SwapGate) -> Self {
        AtomicWriter {
            dir: volume_dir,
            gate,
        }
    }

    /// The volume directory.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// The current `..data` target name, if any.
    pub fn current(&self) -> Option<String> {
        fs::read_link(self.dir.join(DATA_DIR))
            .ok()
            .map(|t| t.to_string_lossy().into_owned())
    }

    /// The AtomicWriter algorithm (docs/design.md 1, steps 1-10, in that order).
    pub fn write(&self, payload: &Payload, style: CallStyle) -> anyhow::Result<WriteOutcome> {
        // 1. Validate (and clean) the keys; an invalid payload writes nothing.
        let clean = validate_payload(payload)?;

        // 2. The current timestamped dir.
        let old_ts = self.read_data_link(style)?;

        let mut to_remove = BTreeSet::new();
        if let Some(old_ts) = &old_ts {
            let old_path = self.dir.join(old_ts);
            // 3. What the payload no longer has, and whether any file differs.
            to_remove = paths_to_remove(&clean, &old_path)?;
            let changed = payload_differs(&clean, &old_path)?;
            if !changed && to_remove.is_empty() {
                // The kubelet still restores missing user-visible links here
                // (kubernetes#121472); normally they all exist and nothing is written.
                self.create_user_visible(&clean, style)?;
                return Ok(WriteOutcome::Unchanged);
            }
        }

        // 4. The new timestamped dir.
        let ts_name = self.new_ts_dir(style)?;
        let ts_path = self.dir.join(&ts_name);

        // 5. The files.
        if let Err(e) = write_payload(&clean, &ts_path, style) {
            let _ = fs::remove_dir_all(&ts_path);
            return Err(e);
        }

        // The lab's own step: a gated writer waits for the agent's mark here, on an
        // update (the agent marks no dir of a volume's initial population).
        if old_ts.is_some() {
            self.gate.before_swap(&ts_path);
        }

        // 6. `..data_tmp -> <ts name>`.
        let tmp_link = self.dir.join(DATA_TMP);
        if let Err(e) = sys::symlink(style, OsStr::new(&ts_name), &tmp_link) {
            let _ = fs::remove_dir_all(&ts_path);
            return Err(e).with_context(|| format!("symlink {tmp_link:?} -> {ts_name}"));
        }

        // 7. The commit point.
        let data_link = self.dir.join(DATA_DIR);
        if let Err(e) = sys::rename(style, &tmp_link, &data_link) {
            let _ = fs::remove_file(&tmp_link);
            let _ = fs::remove_dir_all(&ts_path);
            return Err(e).with_context(|| format!("rename {tmp_link:?} -> {data_link:?}"));
        }
        let swapped_at = SystemTime::now();
        tracing::debug!(dir = ?self.dir, ts_dir = %ts_name, "lab volume swapped");

        // 8. User-visible links for new top-level names.
        self.create_user_visible(&clean, style)?;

        // 9. User-visible names the payload no longer has.
        self.remove_user_visible(&to_remove, style)?;

        // 10. The old timestamped dir.
        if let Some(old_ts) = &old_ts {
            // Go's RemoveAll: a dir that is already gone is no error.
            let old_path = self.dir.join(old_ts);
            match fs::remove_dir_all(&old_path) {
                Err(e) if e.kind() != io::ErrorKind::NotFound => {
                    return Err(e).with_context(|| format!("remove {old_path:?}"));
                }
                _ => {}
            }
        }

        Ok(WriteOutcome::Written {
            ts_dir: ts_name,
            initial: old_ts.is_none(),
            swapped_at,
        })
    }

    /// The kubelet's periodic no-op re-read (steps 2 and 3 without a payload): opens
    /// and reads every file under the current timestamped dir. Returns how many files
    /// were read; 0 before the initial population.
    pub fn reread(&self) -> anyhow::Result<usize> {
        let Some(ts) = self.read_data_link(CallStyle::GoAt)? else {
            return Ok(0);
        };
        let ts_path = self.dir.join(ts);
        let mut files = Vec::new();
        walk(&ts_path, Path::new(""), &mut |rel, is_dir| {
            if !is_dir {
                files.push(ts_path.join(rel));
            }
        })
        .with_context(|| format!("walk {ts_path:?}"))?;
        for f in &files {
            fs::read(f).with_context(|| format!("read {f:?}"))?;
        }
        Ok(files.len())
    }

    /// Step 2: `readlink <vol>/..data`; `None` when it does not exist.
    fn read_data_link(&self, style: CallStyle) -> anyhow::Result<Option<OsString>> {
        let link = self.dir.join(DATA_DIR);
        match sys::readlink(style, &link) {
            Ok(t) => Ok(Some(t)),
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(e).with_context(|| format!("readlink {link:?}")),
        }
    }

    /// Step 4: Go's `os.MkdirTemp(vol, "..2006_01_02_15_04_05.")` (mkdir 0700, retried
    /// with a new random suffix on EEXIST) then `os.Chmod(dir, 0755)`.
    fn new_ts_dir(&self, style: CallStyle) -> anyhow::Result<String> {
        let prefix = format!("..{}.", utc_stamp(SystemTime::now()));
        for _ in 0..10_000 {
            let name = format!("{prefix}{}", super::random_u32()?);
            let path = self.dir.join(&name);
            match sys::mkdir(style, &path, 0o700) {
                Ok(()) => {
                    sys::chmod(style, &path, TS_DIR_MODE)
                        .with_context(|| format!("chmod {path:?}"))?;
                    return Ok(name);
                }
                Err(e) if e.kind() == io::ErrorKind::AlreadyExists => continue,
                Err(e) => return Err(e).with_context(|| format!("mkdir {path:?}")),
            }
        }
        anyhow::bail!("no free timestamped dir name under {:?}", self.dir)
    }

    /// Step 8: `<name> -> ..data/<name>` for each top-level name, where missing.
    fn create_user_visible(&self, clean: &Clean, style: CallStyle) -> anyhow::Result<()> {
        let tops: BTreeSet<&str> = clean.keys().map(|k| top_level(k)).collect();
        for top in tops {
            let visible = self.dir.join(top);
            match sys::readlink(style, &visible) {
                Err(e) if e.kind() == io::ErrorKind::NotFound => {
                    let target = format!("{DATA_DIR}/{top}");
                    sys::symlink(style, OsStr::new(&target), &visible)
                        .with_context(|| format!("symlink {visible:?} -> {target}"))?;
                }
                // The kubelet leaves anything else (a link, or an error) as it is.
                _ => {}
            }
        }
        Ok(())
    }

    /// Step 9: unlink the top-level names in `to_remove`; deeper paths went away with
    /// the old timestamped dir. Like the kubelet, tries them all and reports the last
    /// failure.
    fn remove_user_visible(
        &self,
        to_remove: &BTreeSet<PathBuf>,
        style: CallStyle,
    ) -> anyhow::Result<()> {
        let mut last = Ok(());
        for rel in to_remove.iter().filter(|p| p.components().count() == 1) {
            let visible = self.dir.join(rel);
            if let Err(e) = sys::unlink(style, &visible) {
                last = Err(e).with_context(|| format!("unlink {visible:?}"));
            }
        }
        last
    }
}

/// A validated payload: cleaned key to content.
type Clean<'a> = BTreeMap<String, &'a [u8]>;

/// The top-level component of a cleaned key.
fn top_level(key: &str) -> &str {
    key.split('/').next().unwrap_or(key)
}

/// Step 1 (kubelet `validatePayload`): checks every key and cleans it like Go's
/// `filepath.Clean` (empty and `.` components dropped). Also refuses a key that another
/// key needs as a directory, which the kubelet would only find out while writing.
fn validate_payload(payload: &Payload) -> Result<Clean<'_>, KeyError> {
    let mut clean = Clean::new();
    for (key, content) in payload {
        clean.insert(validate_key(key)?, content.as_slice());
    }
    for key in clean.keys() {
        let mut prefix = key.as_str();
        while let Some((parent, _)) = prefix.rsplit_once('/') {
            if clean.contains_key(parent) {
                return Err(KeyError::FileAndDir(parent.to_string(), key.clone()));
            }
            prefix = parent;
        }
    }
    Ok(clean)
}

/// One key (kubelet `validatePath`); returns the cleaned key.
fn validate_key(key: &str) -> Result<String, KeyError> {
    let err = |f: fn(String) -> KeyError| Err(f(key.to_string()));
    if key.is_empty() {
        return err(KeyError::Empty);
    }
    if key.starts_with('/') {
        return err(KeyError::Absolute);
    }
    if key.len() > MAX_PATH_LEN {
        return err(KeyError::PathTooLong);
    }
    if key.contains('\0') {
        return err(KeyError::Nul);
    }
    for item in key.split('/') {
        if item == ".." {
            return err(KeyError::DotDot);
        }
        if item.len() > MAX_NAME_LEN {
            return err(KeyError::NameTooLong);
        }
    }
    let cleaned: Vec<&str> = key
        .split('/')
        .filter(|c| !c.is_empty() && *c != ".")
        .collect();
    match cleaned.first() {
        None => err(KeyError::Empty),
        Some(first) if first.starts_with("..") => err(KeyError::Reserved),
        Some(_) => Ok(cleaned.join("/")),
    }
}

/// Step 3, first half (kubelet `pathsToRemove`): every path under the old timestamped
/// dir that is neither a key nor a directory of one.
fn paths_to_remove(clean: &Clean, old_ts: &Path) -> anyhow::Result<BTreeSet<PathBuf>> {
    let mut current = BTreeSet::new();
    match walk(old_ts, Path::new(""), &mut |rel, _| {
        current.insert(rel.to_path_buf());
    }) {
        Ok(()) => {}
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(BTreeSet::new()),
        Err(e) => return Err(e).with_context(|| format!("walk {old_ts:?}")),
    }
    for key in clean.keys() {
        let mut p = Path::new(key.as_str());
        loop {
            current.remove(p);
            match p.parent() {
                Some(parent) if !parent.as_os_str().is_empty() => p = parent,
                _ => break,
            }
        }
    }
    Ok(current)
}

/// Step 3, second half (kubelet `shouldWritePayload`): lstat and read every key's file
/// under the old timestamped dir; true when any differs or is missing. Unlike the
/// kubelet, which stops at the first difference, it always reads them all.
fn payload_differs(clean: &Clean, old_ts: &Path) -> anyhow::Result<bool> {
    let mut changed = false;
    for (key, content) in clean {
        let path = old_ts.join(key);
        match fs::symlink_metadata(&path) {
            Err(e) if e.kind() == io::ErrorKind::NotFound => {
                changed = true;
                continue;
            }
            _ => {}
        }
        let on_disk = fs::read(&path).with_context(|| format!("read {path:?}"))?;
        changed |= on_disk != *content;
    }
    Ok(changed)
}

/// Step 5 (kubelet `writePayloadToDir`): for each key, `os.MkdirAll` of its parent,
/// `os.WriteFile` (open O_CREAT|O_TRUNC, write, close), then `os.Chmod` 0644.
fn write_payload(clean: &Clean, ts_path: &Path, style: CallStyle) -> anyhow::Result<()> {
    for (key, content) in clean {
        let path = ts_path.join(key);
        if let Some(parent) = path.parent() {
            mkdir_all(parent, style).with_context(|| format!("mkdir {parent:?}"))?;
        }
        let mut file =
            sys::create_trunc(style, &path, FILE_MODE).with_context(|| format!("open {path:?}"))?;
        file.write_all(content)
            .with_context(|| format!("write {path:?}"))?;
        drop(file);
        sys::chmod(style, &path, FILE_MODE).with_context(|| format!("chmod {path:?}"))?;
    }
    Ok(())
}

/// Go's `os.MkdirAll(path, 0777)`: stat, then create missing parents first.
fn mkdir_all(path: &Path, style: CallStyle) -> io::Result<()> {
    match fs::metadata(path) {
        Ok(m) if m.is_dir() => return Ok(()),
        Ok(_) => return Err(io::Error::from_raw_os_error(libc::ENOTDIR)),
        Err(_) => {}
    }
    if let Some(parent) = path.parent() {
        mkdir_all(parent, style)?;
    }
    match sys::mkdir(style, path, SUBDIR_MODE) {
        Err(e) if e.kind() == io::ErrorKind::AlreadyExists && path.is_dir() => Ok(()),
        other => other,
    }
}

/// Visits every entry under `root` (depth first, parents before children), without
/// following symlinks. `f` gets the path relative to `root` and whether it is a dir.
fn walk(root: &Path, rel: &Path, f: &mut dyn FnMut(&Path, bool)) -> io::Result<()> {
    for entry in fs::read_dir(root.join(rel))? {
        let entry = entry?;
        let child = rel.join(entry.file_name());
        let is_dir = entry.file_type()?.is_dir();
        f(&child, is_dir);
        if is_dir {
            walk(root, &child, f)?;
        }
    }
    Ok(())
}

/// `YYYY_MM_DD_HH_MM_SS` in UTC: Go's layout `2006_01_02_15_04_05`.
fn utc_stamp(t: SystemTime) -> String {
    let secs = t.duration_since(UNIX_EPOCH).map_or(0, |d| d.as_secs());
    let (y, m, d) = civil_from_days((secs / 86_400) as i64);
    let s = secs % 86_400;
    format!(
        "{y:04}_{m:02}_{d:02}_{:02}_{:02}_{:02}",
        s / 3600,
        s / 60 % 60,
        s % 60
    )
}

/// The proleptic Gregorian date of a day count since 1970-01-01 (H. Hinnant's
/// `civil_from_days`).
pub(super) fn civil_from_days(days: i64) -> (i64, u32, u32) {
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = (doy - (153 * mp + 2) / 5 + 1) as u32;
    let m = if mp < 10 { mp + 3 } else { mp - 9 } as u32;
    let y = yoe + era * 400 + i64::from(m <= 2);
    (y, m, d)
}

#[cfg(test)]
mod tests {
    use std::{
        ffi::OsString,
        os::unix::{ffi::OsStringExt, fs::PermissionsExt},
        time::Duration,
    };

    use reloadscope::node::volumes::VolumeType;

    use super::*;
    use crate::LabNode;

    /// A node and one disk-backed (ConfigMap) volume on it.
    fn disk_volume() -> (LabNode, AtomicWriter) {
        let mut node = LabNode::temp().unwrap();
        let pod = node.add_pod("default", "web").unwrap();
        let w = node.add_volume(&pod, VolumeType::ConfigMap, "cfg").unwrap();
        (node, w)
    }

    fn names(dir: &Path) -> BTreeSet<String> {
        fs::read_dir(dir)
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .collect()
    }

    fn link(path: &Path) -> String {
        fs::read_link(path).unwrap().to_string_lossy().into_owned()
    }

    fn written(outcome: WriteOutcome) -> (String, bool) {
        match outcome {
            WriteOutcome::Written {
                ts_dir, initial, ..
            } => (ts_dir, initial),
            WriteOutcome::Unchanged => panic!("expected a write"),
        }
    }

    /// `..YYYY_MM_DD_HH_MM_SS.<u32 digits>`
    fn is_ts_name(name: &str) -> bool {
        let Some(rest) = name.strip_prefix("..") else {
            return false;
        };
        let Some((stamp, suffix)) = rest.split_once('.') else {
            return false;
        };
        let shape = stamp.len() == 19
            && stamp.char_indices().all(|(i, c)| {
                if [4, 7, 10, 13, 16].contains(&i) {
                    c == '_'
                } else {
                    c.is_ascii_digit()
                }
            });
        shape
            && !suffix.is_empty()
            && suffix.bytes().all(|b| b.is_ascii_digit())
            && suffix.parse::<u32>().is_ok()
    }

    /// The layout docs/design.md 1 describes (top-level links for subdirectory keys),
    /// with `ts` the current timestamped dir.
    fn assert_layout(w: &AtomicWriter, p: &Payload, ts: &str) {
        let dir = w.dir();
        let tops: BTreeSet<String> = p.keys().map(|k| top_level(k).to_string()).collect();
        let mut expected: BTreeSet<String> = tops.clone();
        expected.insert(DATA_DIR.into());
        expected.insert(ts.into());
        assert_eq!(names(dir), expected);
        assert!(is_ts_name(ts), "{ts}");
        assert_eq!(link(&dir.join(DATA_DIR)), ts);
        assert_eq!(w.current().as_deref(), Some(ts));
        for top in &tops {
            assert_eq!(link(&dir.join(top)), format!("..data/{top}"));
        }
        let ts_meta = fs::symlink_metadata(dir.join(ts)).unwrap();
        assert!(ts_meta.is_dir());
        assert_eq!(ts_meta.permissions().mode() & 0o7777, 0o755);
        for (k, v) in p {
            let real = dir.join(ts).join(k);
            let meta = fs::symlink_metadata(&real).unwrap();
            assert!(meta.is_file(), "{real:?}");
            assert_eq!(meta.permissions().mode() & 0o7777, 0o644);
            assert_eq!(&fs::read(&real).unwrap(), v);
            // Through the user-visible link, as a consumer reads it.
            assert_eq!(&fs::read(dir.join(k)).unwrap(), v);
        }
    }

    #[test]
    fn initial_update_noop() {
        let (_node, w) = disk_volume();
        assert_eq!(w.current(), None);
        assert_eq!(w.reread().unwrap(), 0);

        let p1 = payload(&[("a.conf", "one"), ("b.conf", "two")]);
        let before = SystemTime::now();
        let out = w.write(&p1, CallStyle::GoAt).unwrap();
        let WriteOutcome::Written { swapped_at, .. } = out.clone() else {
            panic!("expected a write");
        };
        assert!(swapped_at >= before && swapped_at <= SystemTime::now());
        let (ts1, initial) = written(out);
        assert!(initial);
        assert_layout(&w, &p1, &ts1);

        let p2 = payload(&[("a.conf", "one"), ("b.conf", "TWO")]);
        let (ts2, initial) = written(w.write(&p2, CallStyle::GoAt).unwrap());
        assert!(!initial);
        assert_ne!(ts1, ts2);
        assert_layout(&w, &p2, &ts2);
        assert!(!w.dir().join(&ts1).exists());

        assert_eq!(
            w.write(&p2, CallStyle::GoAt).unwrap(),
            WriteOutcome::Unchanged
        );
        assert_layout(&w, &p2, &ts2);
        assert_eq!(w.reread().unwrap(), 2);
    }

    #[test]
    fn legacy_style_same_layout() {
        let (_node, w) = disk_volume();
        let p1 = payload(&[("k", "v1"), ("sub/x", "x")]);
        let (ts1, initial) = written(w.write(&p1, CallStyle::Legacy).unwrap());
        assert!(initial);
        assert_layout(&w, &p1, &ts1);
        let p2 = payload(&[("k", "v2")]);
        let (ts2, _) = written(w.write(&p2, CallStyle::Legacy).unwrap());
        assert_layout(&w, &p2, &ts2);
        assert_eq!(
            w.write(&p2, CallStyle::Legacy).unwrap(),
            WriteOutcome::Unchanged
        );
    }

    #[test]
    fn keys_in_subdirs() {
        let (_node, w) = disk_volume();
        let p = payload(&[
            ("top", "t"),
            ("sub/x", "x"),
            ("sub/deeper/y", "y"),
            ("other/z", "z"),
        ]);
        let (ts, _) = written(w.write(&p, CallStyle::GoAt).unwrap());
        assert_layout(&w, &p, &ts);
        // Subdirectories are real dirs inside the timestamped dir only.
        assert!(
            fs::symlink_metadata(w.dir().join(&ts).join("sub/deeper"))
                .unwrap()
                .is_dir()
        );
        assert!(
            fs::symlink_metadata(w.dir().join("sub"))
                .unwrap()
                .is_symlink()
        );
        assert_eq!(w.reread().unwrap(), 4);
    }

    #[test]
    fn removed_keys() {
        let (_node, w) = disk_volume();
        let p1 = payload(&[
            ("a", "a"),
            ("b", "b"),
            ("sub/x", "x"),
            ("sub/y", "y"),
            ("gone/z", "z"),
        ]);
        w.write(&p1, CallStyle::GoAt).unwrap();
        let p2 = payload(&[("a", "a"), ("sub/x", "x")]);
        // Same content for what remains: the removal alone forces a write.
        let (ts, initial) = written(w.write(&p2, CallStyle::GoAt).unwrap());
        assert!(!initial);
        assert_layout(&w, &p2, &ts);
        assert!(!w.dir().join("sub/y").exists());
        assert!(fs::symlink_metadata(w.dir().join("b")).is_err());
        assert!(fs::symlink_metadata(w.dir().join("gone")).is_err());
    }

    #[test]
    fn noop_restores_missing_visible_link() {
        let (_node, w) = disk_volume();
        let p = payload(&[("a", "1"), ("b", "2")]);
        let (ts, _) = written(w.write(&p, CallStyle::GoAt).unwrap());
        fs::remove_file(w.dir().join("b")).unwrap();
        assert_eq!(
            w.write(&p, CallStyle::GoAt).unwrap(),
            WriteOutcome::Unchanged
        );
        assert_layout(&w, &p, &ts);
    }

    #[test]
    fn key_validation() {
        let (_node, w) = disk_volume();
        let long_name = "n".repeat(256);
        let long_path = ["d"; 2049].join("/");
        let cases: Vec<(String, KeyError)> = vec![
            ("".into(), KeyError::Empty(String::new())),
            (".".into(), KeyError::Empty(".".into())),
            ("/abs".into(), KeyError::Absolute("/abs".into())),
            ("../x".into(), KeyError::DotDot("../x".into())),
            ("a/../b".into(), KeyError::DotDot("a/../b".into())),
            ("a/..".into(), KeyError::DotDot("a/..".into())),
            (long_name.clone(), KeyError::NameTooLong(long_name.clone())),
            (
                format!("d/{long_name}"),
                KeyError::NameTooLong(format!("d/{long_name}")),
            ),
            (long_path.clone(), KeyError::PathTooLong(long_path.clone())),
            ("..data".into(), KeyError::Reserved("..data".into())),
            ("./..x".into(), KeyError::Reserved("./..x".into())),
            ("a\0b".into(), KeyError::Nul("a\0b".into())),
        ];
        for (key, expected) in cases {
            let mut p = payload(&[("ok", "ok")]);
            p.insert(key.clone(), b"v".to_vec());
            let err = w.write(&p, CallStyle::GoAt).unwrap_err();
            assert_eq!(err.downcast_ref::<KeyError>(), Some(&expected), "{key:?}");
            assert!(names(w.dir()).is_empty(), "{key:?} wrote something");
        }
        let p = payload(&[("a", "file"), ("a/b", "under a file")]);
        let err = w.write(&p, CallStyle::GoAt).unwrap_err();
        assert_eq!(
            err.downcast_ref::<KeyError>(),
            Some(&KeyError::FileAndDir("a".into(), "a/b".into()))
        );
        assert!(names(w.dir()).is_empty());

        // The limits themselves are fine; keys are cleaned like Go's filepath.Clean.
        let name255 = "n".repeat(255);
        let p: Payload = [
            (name255.clone(), b"x".to_vec()),
            ("./s//k/".into(), b"k".to_vec()),
        ]
        .into_iter()
        .collect();
        let (ts, _) = written(w.write(&p, CallStyle::GoAt).unwrap());
        let cleaned: Payload = [(name255, b"x".to_vec()), ("s/k".into(), b"k".to_vec())]
            .into_iter()
            .collect();
        assert_layout(&w, &cleaned, &ts);
    }

    #[test]
    fn invalid_update_keeps_current_version() {
        let (_node, w) = disk_volume();
        let p = payload(&[("a", "1")]);
        let (ts, _) = written(w.write(&p, CallStyle::GoAt).unwrap());
        assert!(
            w.write(&payload(&[("../evil", "x")]), CallStyle::GoAt)
                .is_err()
        );
        assert_layout(&w, &p, &ts);
    }

    #[test]
    fn non_utf8_volume_dir() {
        let node = LabNode::temp().unwrap();
        let dir = node
            .kubelet_root()
            .join(OsString::from_vec(b"vol-\xff\xfe-name".to_vec()));
        fs::create_dir(&dir).unwrap();
        let w = AtomicWriter::new(dir.clone());
        assert_eq!(w.dir(), dir);
        for style in [CallStyle::GoAt, CallStyle::Legacy] {
            let p = payload(&[("k", "v"), ("s/k", "w")]);
            let (ts, _) = written(w.write(&p, style).unwrap());
            assert_layout(&w, &p, &ts);
            let p = payload(&[("k", "v2")]);
            let (ts, _) = written(w.write(&p, style).unwrap());
            assert_layout(&w, &p, &ts);
            assert_eq!(w.reread().unwrap(), 1);
            fs::remove_dir_all(&dir).unwrap();
            fs::create_dir(&dir).unwrap();
        }
    }

    #[test]
    fn dangling_data_link_is_replaced() {
        let (_node, w) = disk_volume();
        std::os::unix::fs::symlink("..2020_01_01_00_00_00.1", w.dir().join(DATA_DIR)).unwrap();
        let p = payload(&[("a", "1")]);
        let (ts, initial) = written(w.write(&p, CallStyle::GoAt).unwrap());
        assert!(!initial);
        assert_layout(&w, &p, &ts);
    }

    #[test]
    fn empty_payload() {
        let (_node, w) = disk_volume();
        let (ts, initial) = written(w.write(&Payload::new(), CallStyle::GoAt).unwrap());
        assert!(initial);
        assert_layout(&w, &Payload::new(), &ts);
        assert_eq!(
            w.write(&Payload::new(), CallStyle::GoAt).unwrap(),
            WriteOutcome::Unchanged
        );
    }

    #[test]
    fn missing_volume_dir_is_an_error() {
        let node = LabNode::temp().unwrap();
        let w = AtomicWriter::new(node.kubelet_root().join("nope"));
        assert!(w.write(&payload(&[("a", "1")]), CallStyle::GoAt).is_err());
        assert_eq!(w.current(), None);
    }

    #[test]
    fn stamp_format() {
        assert_eq!(utc_stamp(UNIX_EPOCH), "1970_01_01_00_00_00");
        let at = |s| UNIX_EPOCH + Duration::from_secs(s);
        assert_eq!(utc_stamp(at(951_782_400)), "2000_02_29_00_00_00");
        assert_eq!(utc_stamp(at(1_700_000_000)), "2023_11_14_22_13_20");
        assert_eq!(utc_stamp(at(1_795_615_806)), "2026_11_25_14_10_06");
        assert_eq!(utc_stamp(at(4_107_542_399)), "2100_02_28_23_59_59");
        assert!(is_ts_name("..2026_11_25_14_10_06.2914482033"));
        assert!(!is_ts_name("..data"));
        assert!(!is_ts_name("..2026_11_25_14_10_06."));
    }
}
