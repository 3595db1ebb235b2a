//! `--state-file`: what the agent cannot rebuild after a restart, written atomically,
//! and, between checkpoints, the journal of the data dirs and consumers seen since
//! ([`Journal`]).
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

use crate::node::volumes::{VolumeKey, VolumeType};

const VERSION: u32 = 1;

/// The largest state file read: about 50,000 volumes' worth (10,000 take about 3 MiB).
/// A bigger file is not this agent's (or is damaged): it is refused unread, so that it
/// cannot take the agent's memory (the manifest's limit is 128 MiB).
pub const MAX_BYTES: u64 = 16 << 20;

#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct Checkpoint {
    pub version: u32,
    /// The journal written after this checkpoint carries the same generation; one of
    /// another generation was compacted into a checkpoint already.
    #[serde(default)]
    pub generation: u64,
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

/// One journal line: a volume's data dir as the agent saw it, with its swap time
/// when it was an update (0 when the volume was found pointing there).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Entry {
    pub pod_uid: String,
    pub volume_type: String,
    pub name: String,
    pub dir: PathBuf,
    pub ts_dir: String,
    pub swap_unix_ns: u64,
}

/// One line of the journal: a data dir seen, written before it is counted; or a
/// volume's consumers as they are after a change (a reload, a consumer found, seen
/// reading or not), written as soon as it is made.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(untagged)]
pub enum Line {
    /// First: an [`Entry`]'s fields are a subset of a volume's, and unknown fields are
    /// ignored.
    Volume(SavedVolume),
    Dir(Entry),
}

impl Line {
    /// The volume's name.
    pub fn name(&self) -> &str {
        match self {
            Line::Volume(v) => &v.name,
            Line::Dir(e) => &e.name,
        }
    }

    /// The volume's data dir then.
    pub fn ts_dir(&self) -> &str {
        match self {
            Line::Volume(v) => &v.ts_dir,
            Line::Dir(e) => &e.ts_dir,
        }
    }
}

#[derive(Serialize, Deserialize)]
struct Header {
    generation: u64,
}

/// The journal beside a state file: what happened since the last checkpoint, appended
/// as it happens and synced in batches before the agent acts on it, so that a kill at
/// any moment loses no update nor counts one twice after the restart. Compacted into
/// the checkpoint at each save (a new generation, the journal emptied).
pub struct Journal {
    file: std::fs::File,
    pending: Vec<u8>,
}

impl Journal {
    pub fn path(state: &Path) -> PathBuf {
        state.with_extension("journal")
    }

    /// Opens the journal of `state` to append to it after the checkpoint of
    /// `generation`: kept when it is that generation's, else started empty.
    pub fn open(state: &Path, generation: u64) -> io::Result<Journal> {
        let path = Self::path(state);
        let current = std::fs::File::open(&path).ok().and_then(|f| {
            let mut first = String::new();
            let mut limited = io::BufReader::new(io::Read::take(f, 256));
            io::BufRead::read_line(&mut limited, &mut first).ok()?;
            serde_json::from_str::<Header>(&first).ok()
        });
        let file = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&path)?;
        let mut j = Journal {
            file,
            pending: Vec::new(),
        };
        if current.is_none_or(|h| h.generation != generation) {
            j.reset(generation)?;
        }
        Ok(j)
    }

    /// Queues `line`; written at the next [`Journal::sync`].
    pub fn append(&mut self, line: &Line) {
        serde_json::to_writer(&mut self.pending, line).expect("a line serialises");
        self.pending.push(b'\n');
    }

    /// Writes the queued entries and syncs them to disk.
    pub fn sync(&mut self) -> io::Result<()> {
        if self.pending.is_empty() {
            return Ok(());
        }
        self.file.write_all(&self.pending)?;
        self.pending.clear();
        self.file.sync_data()
    }

    /// Empties the journal for the checkpoint of `generation`, just written.
    pub fn reset(&mut self, generation: u64) -> io::Result<()> {
        self.pending.clear();
        self.file.set_len(0)?;
        let mut header = serde_json::to_vec(&Header { generation }).expect("serialises");
        header.push(b'\n');
        self.file.write_all(&header)?;
        self.file.sync_data()
    }
}

/// The lines of the journal of `state` written after the checkpoint of
/// `generation`, in order; none when there is no journal or it is another
/// generation's. Read with the same bound as the state file; a torn last line (a kill
/// in the middle of a write) ends it.
pub fn read_journal(state: &Path, generation: u64) -> io::Result<Vec<Line>> {
    use std::io::{BufRead as _, Read as _};
    let path = Journal::path(state);
    let file = match std::fs::File::open(&path) {
        Ok(f) => f,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(e) => return Err(e),
    };
    let mut lines = io::BufReader::new(file.take(MAX_BYTES)).lines();
    let header = lines.next().transpose()?;
    match header.and_then(|h| serde_json::from_str::<Header>(&h).ok()) {
        Some(h) if h.generation == generation => {}
        _ => return Ok(Vec::new()),
    }
    let mut out = Vec::new();
    for line in lines {
        match serde_json::from_str(&line?) {
            Ok(e) => out.push(e),
            Err(_) => break,
        }
    }
    Ok(out)
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
            generation: 0,
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

    fn entry(name: &str, ts: &str, swap: u64) -> Line {
        Line::Dir(Entry {
            pod_uid: "u".into(),
            volume_type: "secret".into(),
            name: name.into(),
            dir: "/v".into(),
            ts_dir: ts.into(),
            swap_unix_ns: swap,
        })
    }

    #[test]
    fn the_journal_keeps_what_follows_its_checkpoint() {
        let dir = tempfile::tempdir().unwrap();
        let state = dir.path().join("state.json");
        assert_eq!(read_journal(&state, 0).unwrap(), []);
        let mut j = Journal::open(&state, 3).unwrap();
        let consumers = Line::Volume(SavedVolume {
            consumers: vec![("c".into(), false)],
            readers: vec!["c".into()],
            ..sample().volumes[0].clone()
        });
        j.append(&entry("a", "..1", 0));
        j.append(&entry("a", "..2", 7));
        j.append(&consumers);
        assert_eq!(read_journal(&state, 3).unwrap(), [], "queued, not written");
        j.sync().unwrap();
        // Each line read back as the kind it was written as.
        let want = [entry("a", "..1", 0), entry("a", "..2", 7), consumers];
        assert_eq!(read_journal(&state, 3).unwrap(), want);
        assert_eq!(read_journal(&state, 2).unwrap(), [], "another checkpoint's");
        // Opened again for the same checkpoint (a restart): kept and appended to.
        drop(j);
        let mut j = Journal::open(&state, 3).unwrap();
        j.append(&entry("b", "..1", 0));
        j.sync().unwrap();
        assert_eq!(read_journal(&state, 3).unwrap().len(), 4);
        // A torn last line ends it.
        std::fs::OpenOptions::new()
            .append(true)
            .open(Journal::path(&state))
            .unwrap()
            .write_all(b"{\"pod_uid\": \"u")
            .unwrap();
        assert_eq!(read_journal(&state, 3).unwrap().len(), 4);
        j.reset(4).unwrap();
        assert_eq!(read_journal(&state, 4).unwrap(), []);
        assert_eq!(read_journal(&state, 3).unwrap(), []);
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
