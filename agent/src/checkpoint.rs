//! `--state-file`: what the agent cannot rebuild after a restart, written atomically.
//!
//! Rebuilt from the node alone: volumes, their current data dir, consumers, their start.
//! Not rebuildable: which consumers had not reloaded the newest update yet (a stale
//! consumer looks exactly like one that reloaded and closed its file), which consumers
//! read the volume (a container that read it once at its start left no trace), and
//! whether a volume was updated while no agent ran. So every volume's data dir is
//! saved, with its newest update's swap time (0 when none was seen), per consumer known
//! then whether it was still pending, and the consumers seen reading it or seen not
//! reading it at their start. On start a volume found pointing elsewhere was updated
//! meanwhile; the pending measurements are used only while it still points at the same
//! data dir, who reads it whatever it points at. Files from before the readers were
//! saved read as none known: those consumers' reads are unknown.

use std::{
    io::{self, Write as _},
    path::{Path, PathBuf},
    time::{Duration, SystemTime},
};

use serde::{Deserialize, Serialize};

use crate::volumes::{VolumeKey, VolumeType};

const VERSION: u32 = 1;

/// The largest state file read: about 50,000 volumes' worth (10,000 take about 3 MiB).
/// A bigger file is not this agent's (or is damaged): it is refused unread, so that it
/// cannot take the agent's memory (the manifest's limit is 128 MiB).
pub const MAX_BYTES: u64 = 16 << 20;

#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct Checkpoint {
    pub version: u32,
    pub volumes: Vec<SavedVolume>,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct SavedVolume {
    pub pod_uid: String,
    pub volume_type: String,
    pub name: String,
    pub dir: PathBuf,
    pub ts_dir: String,
    pub swap_unix_ns: u64,
    /// Consumers known when saved: container id, and whether it was still stale.
    pub consumers: Vec<(String, bool)>,
    /// The ids of the consumers seen reading the volume.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub readers: Vec<String>,
    /// The ids of the consumers whose start was watched and that were not seen reading.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub non_readers: Vec<String>,
}

impl SavedVolume {
    pub fn key(&self) -> Option<VolumeKey> {
        let volume_type = VolumeType::ALL
            .into_iter()
            .find(|t| t.label() == self.volume_type)?;
        Some(VolumeKey {
            pod_uid: self.pod_uid.clone(),
            volume_type,
            name: self.name.clone(),
        })
    }

    pub fn swap(&self) -> SystemTime {
        SystemTime::UNIX_EPOCH + Duration::from_nanos(self.swap_unix_ns)
    }
}

/// Writes `cp` to a temporary file beside `path`, syncs it, and renames it over `path`:
/// a reader (or a crash) sees the old file or the new one, never a part.
pub fn write(path: &Path, cp: &Checkpoint) -> io::Result<()> {
    let tmp = path.with_extension("tmp");
    let mut f = std::fs::File::create(&tmp)?;
    f.write_all(&serde_json::to_vec(&Checkpoint {
        version: VERSION,
        ..cp.clone()
    })?)?;
    f.sync_all()?;
    std::fs::rename(&tmp, path)
}

/// Whether a state file can be written at `path`: its directory exists and takes the
/// temporary file [`write`] makes there (made and removed again), and `path` is not a
/// directory. Checked at start, so a bad path is said at once rather than at the first
/// save.
pub fn check_writable(path: &Path) -> io::Result<()> {
    if path.is_dir() {
        return Err(io::Error::new(io::ErrorKind::IsADirectory, "a directory"));
    }
    let tmp = path.with_extension("tmp");
    std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(false)
        .open(&tmp)?;
    std::fs::remove_file(&tmp)
}

/// The saved state; `None` when there is no file yet. A file this version cannot read,
/// or bigger than [`MAX_BYTES`], is an error saying so (the caller starts afresh and
/// overwrites it). Parsed as it is read, never held whole.
pub fn read(path: &Path) -> io::Result<Option<Checkpoint>> {
    use std::io::Read as _;
    let file = match std::fs::File::open(path) {
        Ok(f) => f,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(e),
    };
    let len = file.metadata()?.len();
    if len > MAX_BYTES {
        let msg = format!(
            "{}: {len} bytes, more than the {} MiB a state file takes: not read",
            path.display(),
            MAX_BYTES >> 20
        );
        return Err(io::Error::new(io::ErrorKind::InvalidData, msg));
    }
    // The bound holds if the file grows while it is read.
    let reader = io::BufReader::new(file.take(MAX_BYTES));
    let cp: Checkpoint = serde_json::from_reader(reader).map_err(|e| {
        io::Error::new(
            io::ErrorKind::InvalidData,
            format!("{}: not a reloadscope state file: {e}", path.display()),
        )
    })?;
    if cp.version != VERSION {
        let msg = format!(
            "{}: state file version {}, this agent reads {VERSION}",
            path.display(),
            cp.version
        );
        return Err(io::Error::new(io::ErrorKind::InvalidData, msg));
    }
    Ok(Some(cp))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample() -> Checkpoint {
        Checkpoint {
            version: VERSION,
            volumes: vec![SavedVolume {
                pod_uid: "u".into(),
                volume_type: "secret".into(),
                name: "tls".into(),
                dir: "/k/pods/u/volumes/kubernetes.io~secret/tls".into(),
                ts_dir: "..2026_01_01_00_00_00.1".into(),
                swap_unix_ns: 1_795_000_000_123_456_789,
                consumers: vec![("a".into(), true), ("b".into(), false)],
                readers: vec!["a".into()],
                non_readers: vec!["c".into()],
            }],
        }
    }

    #[test]
    fn round_trips_and_replaces_atomically() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("state.json");
        assert_eq!(read(&path).unwrap(), None);
        write(&path, &sample()).unwrap();
        write(&path, &sample()).unwrap();
        assert_eq!(read(&path).unwrap(), Some(sample()));
        assert!(!path.with_extension("tmp").exists());
        let v = &sample().volumes[0];
        assert_eq!(v.key().unwrap().volume_type, VolumeType::Secret);
        assert_eq!(
            v.swap()
                .duration_since(SystemTime::UNIX_EPOCH)
                .unwrap()
                .as_nanos(),
            1_795_000_000_123_456_789
        );
    }

    /// A file written before the readers were saved: read, with none known.
    #[test]
    fn a_file_without_readers_reads_as_none_known() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("state.json");
        let old = r#"{"version": 1, "volumes": [{"pod_uid": "u", "volume_type": "secret",
            "name": "tls", "dir": "/v", "ts_dir": "..1", "swap_unix_ns": 5,
            "consumers": [["a", true]]}]}"#;
        std::fs::write(&path, old).unwrap();
        let v = &read(&path).unwrap().unwrap().volumes[0];
        assert_eq!(v.consumers, [("a".to_string(), true)]);
        assert!(v.readers.is_empty() && v.non_readers.is_empty());
    }

    #[test]
    fn a_file_past_the_bound_is_refused_unread() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("state.json");
        let f = std::fs::File::create(&path).unwrap();
        f.set_len(MAX_BYTES + 1).unwrap();
        let e = read(&path).unwrap_err().to_string();
        assert!(e.contains("more than the 16 MiB"), "{e}");
    }

    #[test]
    fn unreadable_files_are_clear_errors() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("state.json");
        std::fs::write(&path, b"{ not json").unwrap();
        assert!(
            read(&path)
                .unwrap_err()
                .to_string()
                .contains("not a reloadscope state file")
        );
        std::fs::write(&path, br#"{"version": 99, "volumes": []}"#).unwrap();
        assert!(read(&path).unwrap_err().to_string().contains("version 99"));
    }
}
