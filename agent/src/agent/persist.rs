//! `--state-file` at start and at each save: the checkpoint and its journal read back
//! into the state ([`restore`]), and what a save writes of a volume ([`to_saved`]).

use std::{
    collections::HashMap,
    time::{Duration, SystemTime},
};

use tracing::{info, warn};

use crate::{
    checkpoint,
    node::{self, volumes::VolumeKey},
    state::Shared,
};

/// How often the state file is written (and once more at shutdown).
pub(super) const SAVE_EVERY: Duration = Duration::from_secs(10);
/// Events journaled with one sync at most.
pub(super) const JOURNAL_BATCH: usize = 256;

/// Loads the checkpoint: each volume's data dir then (a volume found pointing elsewhere
/// was updated while no agent ran), and the pending reload measurements of the volumes
/// that still point at the data dir they name.
/// The journal written since replays over it (see [`merge_journal`]). Returns the
/// checkpoint's generation, which the journal goes on from.
pub(super) fn restore(shared: &Shared, path: &std::path::Path) -> u64 {
    let mut cp = match checkpoint::read(path) {
        Ok(Some(cp)) => cp,
        Ok(None) => checkpoint::Checkpoint::default(),
        Err(e) => {
            warn!("state file unusable, starting afresh: {e}");
            checkpoint::Checkpoint::default()
        }
    };
    match checkpoint::read_journal(path, cp.generation) {
        Ok(entries) => merge_journal(&mut cp, entries),
        Err(e) => {
            warn!(error = %e, "state journal unreadable: the updates since the last checkpoint are not known")
        }
    }
    let generation = cp.generation;
    let mut t = shared.tracker.lock().expect("tracker lock");
    let mut r = shared.reloads.lock().expect("reloads lock");
    let mut restored = 0;
    for mut v in cp.volumes {
        let Some(key) = v.key() else { continue };
        let swap = (v.swap_unix_ns != 0).then(|| v.swap());
        t.saved(key.clone(), v.ts_dir.clone(), swap);
        // Whether each consumer reads the volume holds whatever its data dir now.
        let readers = std::mem::take(&mut v.readers);
        r.restore_reads(&key, readers, std::mem::take(&mut v.non_readers));
        // No update known then (swap 0): nothing pending to restore.
        let current = node::read_target(&v.dir.join(crate::node::volumes::DATA));
        if v.swap_unix_ns == 0 || current.as_deref() != Some(v.ts_dir.as_str()) {
            continue;
        }
        let swap = v.swap();
        restored += v.consumers.iter().filter(|(_, stale)| *stale).count();
        r.restore(key, v.ts_dir, swap, v.consumers);
    }
    info!(path = %path.display(), pending = restored, "restored pending reload measurements");
    generation
}

/// Applies the journal's lines to the checkpoint they follow, in order. A data dir:
/// each volume's as last seen; an update (a swap time) newer than the checkpoint makes
/// every consumer it knew stale at that swap. A volume's consumers: as they were
/// after their last change (reloaded, found, seen reading or not), replacing what
/// came before.
fn merge_journal(cp: &mut checkpoint::Checkpoint, lines: Vec<checkpoint::Line>) {
    let id =
        |v: &checkpoint::SavedVolume| (v.pod_uid.clone(), v.volume_type.clone(), v.name.clone());
    let mut at: HashMap<(String, String, String), usize> = (cp.volumes.iter().enumerate())
        .map(|(i, v)| (id(v), i))
        .collect();
    for line in lines {
        let e = match line {
            checkpoint::Line::Volume(v) => {
                match at.get(&id(&v)) {
                    Some(&i) => cp.volumes[i] = v,
                    None => {
                        at.insert(id(&v), cp.volumes.len());
                        cp.volumes.push(v);
                    }
                }
                continue;
            }
            checkpoint::Line::Dir(e) => e,
        };
        let key = (e.pod_uid.clone(), e.volume_type.clone(), e.name.clone());
        let i = *at.entry(key).or_insert_with(|| {
            cp.volumes.push(checkpoint::SavedVolume {
                pod_uid: e.pod_uid.clone(),
                volume_type: e.volume_type.clone(),
                name: e.name.clone(),
                dir: e.dir.clone(),
                ts_dir: e.ts_dir.clone(),
                swap_unix_ns: 0,
                consumers: Vec::new(),
                readers: Vec::new(),
                non_readers: Vec::new(),
            });
            cp.volumes.len() - 1
        });
        let v = &mut cp.volumes[i];
        if e.swap_unix_ns != 0 {
            if v.ts_dir != e.ts_dir || v.swap_unix_ns == 0 {
                v.swap_unix_ns = e.swap_unix_ns;
                for (_, stale) in &mut v.consumers {
                    *stale = true;
                }
            } else {
                // The same update, seen earlier by the other source.
                v.swap_unix_ns = v.swap_unix_ns.min(e.swap_unix_ns);
            }
        }
        v.ts_dir = e.ts_dir;
    }
}

/// What the state file keeps of a volume: its data dir; its newest update and who is
/// stale, when known; who reads it. None when it has neither an update nor a data dir.
pub(super) fn to_saved(
    key: &VolumeKey,
    v: &crate::updates::VolumeState,
    s: Option<crate::reloads::Snapshot>,
) -> Option<checkpoint::SavedVolume> {
    let (ts_dir, swap) = match s.as_ref().and_then(|s| s.newest.clone()) {
        Some(n) => n,
        None => (v.current.clone()?, SystemTime::UNIX_EPOCH),
    };
    let (consumers, readers, non_readers) = s
        .map(|s| (s.stale, s.readers, s.non_readers))
        .unwrap_or_default();
    Some(checkpoint::SavedVolume {
        dir: v.dir.clone(),
        pod_uid: key.pod_uid.clone(),
        volume_type: key.volume_type.label().to_owned(),
        name: key.name.clone(),
        ts_dir,
        swap_unix_ns: swap
            .duration_since(SystemTime::UNIX_EPOCH)
            .map_or(0, |d| d.as_nanos() as u64),
        consumers,
        readers,
        non_readers,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn saved(
        name: &str,
        ts: &str,
        swap: u64,
        consumers: &[(&str, bool)],
    ) -> checkpoint::SavedVolume {
        checkpoint::SavedVolume {
            pod_uid: "u".into(),
            volume_type: "configmap".into(),
            name: name.into(),
            dir: format!("/v/{name}").into(),
            ts_dir: ts.into(),
            swap_unix_ns: swap,
            consumers: consumers.iter().map(|(c, s)| ((*c).into(), *s)).collect(),
            readers: Vec::new(),
            non_readers: Vec::new(),
        }
    }

    fn entry(name: &str, ts: &str, swap: u64) -> checkpoint::Line {
        checkpoint::Line::Dir(checkpoint::Entry {
            pod_uid: "u".into(),
            volume_type: "configmap".into(),
            name: name.into(),
            dir: format!("/v/{name}").into(),
            ts_dir: ts.into(),
            swap_unix_ns: swap,
        })
    }

    #[test]
    fn journaled_consumers_replace_what_came_before() {
        let mut cp = checkpoint::Checkpoint {
            volumes: vec![saved("a", "..1", 5, &[("c", false), ("d", false)])],
            ..Default::default()
        };
        let reloaded = checkpoint::SavedVolume {
            readers: vec!["c".into()],
            ..saved("a", "..2", 9, &[("c", false), ("d", true)])
        };
        merge_journal(
            &mut cp,
            vec![
                entry("a", "..2", 9),
                // c reloaded it, d not; c seen reading.
                checkpoint::Line::Volume(reloaded.clone()),
            ],
        );
        assert_eq!(cp.volumes, std::slice::from_ref(&reloaded));
        // A volume first known from the journal, with its consumers.
        let fresh = saved("n", "..1", 0, &[]);
        merge_journal(
            &mut cp,
            vec![
                checkpoint::Line::Volume(fresh.clone()),
                // The next update makes both stale again.
                entry("a", "..3", 20),
            ],
        );
        assert_eq!(cp.volumes[1], fresh);
        let a = &cp.volumes[0];
        assert_eq!((a.ts_dir.as_str(), a.swap_unix_ns), ("..3", 20));
        let stale = [("c".to_string(), true), ("d".to_string(), true)];
        assert_eq!(a.consumers, stale);
        assert_eq!(a.readers, ["c"], "who reads it holds whatever its data dir");
    }

    #[test]
    fn the_journal_replays_over_its_checkpoint() {
        let mut cp = checkpoint::Checkpoint {
            volumes: vec![
                saved("a", "..1", 5, &[("c", false)]),
                saved("q", "..1", 0, &[]),
            ],
            ..Default::default()
        };
        merge_journal(
            &mut cp,
            vec![
                // An update of a after the checkpoint, then the probe's earlier stamp.
                entry("a", "..2", 9),
                entry("a", "..2", 8),
                // b found after it, then updated.
                entry("b", "..1", 0),
                entry("b", "..2", 12),
                // c found after it, never updated.
                entry("c", "..1", 0),
            ],
        );
        let by = |n: &str| cp.volumes.iter().find(|v| v.name == n).unwrap();
        assert_eq!((by("a").ts_dir.as_str(), by("a").swap_unix_ns), ("..2", 8));
        assert_eq!(
            by("a").consumers,
            [("c".to_string(), true)],
            "stale at that swap"
        );
        assert_eq!((by("b").ts_dir.as_str(), by("b").swap_unix_ns), ("..2", 12));
        assert_eq!((by("c").ts_dir.as_str(), by("c").swap_unix_ns), ("..1", 0));
        assert_eq!(by("c").dir, std::path::Path::new("/v/c"));
        assert_eq!((by("q").ts_dir.as_str(), by("q").swap_unix_ns), ("..1", 0));
        assert_eq!(cp.volumes.len(), 4);
    }
}
