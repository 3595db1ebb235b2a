//! The state loop: the one task that applies the sources' events to the state (the
//! tracker's updates, the consumers' reloads), settles what the opens source marks,
//! journals and saves the state file, and beats the liveness heartbeat.

use std::{
    collections::{HashMap, HashSet},
    path::PathBuf,
    sync::{Arc, atomic::Ordering::Relaxed},
    time::{Instant, SystemTime},
};

use tokio::sync::{Notify, mpsc, watch};
use tracing::{info, warn};

use super::{
    TICK,
    persist::{JOURNAL_BATCH, SAVE_EVERY, to_saved},
    stopped,
};
use crate::{
    checkpoint, clock, events, events::Event, node::volumes::VolumeKey, opens, signals,
    state::Shared,
};

pub(super) struct StateLoop {
    pub(super) shared: Arc<Shared>,
    pub(super) state_file: Option<PathBuf>,
    /// With a state file: its journal, and the generation of the last checkpoint.
    pub(super) journal: Option<(checkpoint::Journal, u64)>,
    /// Commands for the fanotify source, when it runs.
    pub(super) marks: Option<mpsc::UnboundedSender<opens::Command>>,
    /// Swaps for the signal loop, under `--reload-signals`.
    pub(super) signals: Option<mpsc::UnboundedSender<signals::Swapped>>,
    pub(super) rescan: Arc<Notify>,
    /// Volumes whose data dir the opens source has settled (ignored or unmarked, as
    /// `--settled-marks` says), and that dir.
    pub(super) settled: HashMap<VolumeKey, PathBuf>,
    /// A late mark's reloads are looked for in the files consumers hold open.
    pub(super) held_files_fallback: bool,
}

impl StateLoop {
    pub(super) async fn run(mut self, mut rx: events::Receiver, stop: watch::Receiver<bool>) {
        let mut tick = tokio::time::interval(TICK);
        let mut save = tokio::time::interval(SAVE_EVERY);
        let stopped = stopped(stop);
        tokio::pin!(stopped);
        loop {
            tokio::select! {
                ev = rx.recv() => match ev {
                    Some(ev) => {
                        // What is queued already goes in one journal sync, before any
                        // of it is counted.
                        let mut batch = vec![ev];
                        while batch.len() < JOURNAL_BATCH
                            && let Ok(ev) = rx.try_recv()
                        {
                            batch.push(ev);
                        }
                        self.journal(&batch);
                        for ev in batch {
                            self.apply(ev);
                            self.settle();
                        }
                        self.journal_consumers();
                    }
                    None => break,
                },
                _ = save.tick() => self.save(),
                _ = tick.tick() => {
                    self.shared.tracker.lock().expect("tracker lock").tick(Instant::now());
                    self.shared.reloads.lock().expect("reloads lock").tick(SystemTime::now());
                    self.shared.heartbeat_ms.store(clock::monotonic_ms(), Relaxed);
                    // Consumer scans change who is stale too.
                    self.settle();
                    self.journal_consumers();
                }
                _ = &mut stopped => break,
            }
        }
        self.save();
    }

    /// Journals the data dirs `batch` reports that differ from what the tracker has,
    /// and syncs them, before the batch is applied: a kill at any moment then neither
    /// forgets an update nor has the next run count it again.
    fn journal(&mut self, batch: &[Event]) {
        let Some((journal, _)) = &mut self.journal else {
            return;
        };
        let t = self.shared.tracker.lock().expect("tracker lock");
        let entry =
            |key: &VolumeKey, dir: &std::path::Path, ts_dir: &str, at: Option<SystemTime>| {
                checkpoint::Entry {
                    pod_uid: key.pod_uid.clone(),
                    volume_type: key.volume_type.label().to_owned(),
                    name: key.name.clone(),
                    dir: dir.to_owned(),
                    ts_dir: ts_dir.to_owned(),
                    swap_unix_ns: at
                        .and_then(|at| at.duration_since(SystemTime::UNIX_EPOCH).ok())
                        .map_or(0, |d| d.as_nanos() as u64),
                }
            };
        for ev in batch {
            match ev {
                Event::Detected(d) => {
                    // A new data dir, or the current one's swap seen earlier (the
                    // probe's clock after inotify's).
                    if let Some(v) = t.volume(&d.key)
                        && (v.current.as_deref() != Some(d.ts_dir.as_str())
                            || v.last_update.is_some_and(|at| d.at < at))
                    {
                        let e = entry(&d.key, &v.dir, &d.ts_dir, Some(d.at));
                        journal.append(&checkpoint::Line::Dir(e));
                    }
                }
                Event::VolumeFound {
                    key,
                    dir,
                    current: Some(current),
                } => {
                    let known = t.volume(key).and_then(|v| v.current.as_deref());
                    if known != Some(current.as_str()) {
                        journal.append(&checkpoint::Line::Dir(entry(key, dir, current, None)));
                    }
                }
                _ => {}
            }
        }
        drop(t);
        if let Err(e) = journal.sync() {
            warn!(error = %e, "cannot write the state journal: updates since the last checkpoint may be counted again after a restart");
        }
    }

    /// Journals the consumers of each volume whose consumers changed since the last
    /// call (reloaded, found, seen reading or not), and syncs them.
    fn journal_consumers(&mut self) {
        let Some((journal, _)) = &mut self.journal else {
            return;
        };
        let snapshots = self
            .shared
            .reloads
            .lock()
            .expect("reloads lock")
            .take_journal();
        if snapshots.is_empty() {
            return;
        }
        let t = self.shared.tracker.lock().expect("tracker lock");
        for s in snapshots {
            if let Some(v) = t.volume(&s.volume)
                && let Some(saved) = to_saved(&s.volume.clone(), v, Some(s))
            {
                journal.append(&checkpoint::Line::Volume(saved));
            }
        }
        drop(t);
        if let Err(e) = journal.sync() {
            warn!(error = %e, "cannot write the state journal: consumers' reloads since the last checkpoint may be reported stale after a restart");
        }
    }

    /// Writes the checkpoint, when there is a state file, once the first walk is done
    /// (before, the volumes not found yet would be left out), and empties the journal
    /// it now holds.
    fn save(&mut self) {
        let Some(path) = &self.state_file else { return };
        if !self.shared.ready.load(Relaxed) {
            return;
        }
        let generation = self.journal.as_ref().map_or(0, |(_, g)| g + 1);
        let volumes = {
            let t = self.shared.tracker.lock().expect("tracker lock");
            let r = self.shared.reloads.lock().expect("reloads lock");
            let mut known: HashMap<_, _> = (r.snapshot().into_iter())
                .map(|s| (s.volume.clone(), s))
                .collect();
            // Every volume with its data dir, so that the next run sees updates made
            // while none ran.
            t.volumes()
                .filter_map(|(key, v)| to_saved(key, v, known.remove(key)))
                .collect()
        };
        if let Err(e) = checkpoint::write(
            path,
            &checkpoint::Checkpoint {
                version: 0,
                generation,
                volumes,
            },
        ) {
            warn!(path = %path.display(), error = %e, "cannot write the state file");
            return;
        }
        if let Some((journal, g)) = &mut self.journal {
            match journal.reset(generation) {
                Ok(()) => *g = generation,
                Err(e) => warn!(error = %e, "cannot empty the state journal"),
            }
        }
    }

    /// Tells the opens source which data dirs are settled: a volume's current one once
    /// every consumer has it, and no longer when a consumer that lacks it is found.
    fn settle(&mut self) {
        if self.marks.is_none() {
            return;
        }
        let t = self.shared.tracker.lock().expect("tracker lock");
        let mut r = self.shared.reloads.lock().expect("reloads lock");
        let mut cmds = Vec::new();
        let mut changed = r.take_changed();
        let pods = r.take_changed_pods();
        if !pods.is_empty() {
            let of_pods = t.volumes().map(|(k, _)| k);
            changed.extend(of_pods.filter(|k| pods.contains(&k.pod_uid)).cloned());
        }
        for key in changed {
            let current = t.volume(&key).and_then(|v| v.data_dir());
            let want = current.clone().filter(|_| r.settled(&key));
            let had = match &want {
                Some(p) => self.settled.insert(key.clone(), p.clone()),
                None => self.settled.remove(&key),
            };
            match (had, want) {
                (had, Some(p)) if had.as_ref() != Some(&p) => {
                    cmds.push(opens::Command::Settled { key, ts_path: p });
                }
                // Only the current dir matters: an older one is being deleted.
                (Some(p), None) if current.as_ref() == Some(&p) => {
                    cmds.push(opens::Command::Unsettled { key, ts_path: p });
                }
                _ => {}
            }
        }
        drop((t, r));
        for cmd in cmds {
            self.mark(cmd);
        }
    }

    fn mark(&self, cmd: opens::Command) {
        if let Some(m) = &self.marks {
            let _ = m.send(cmd);
        }
    }

    /// An update of `key` swapped at `at`: ends a propagation pending for it. Without
    /// an API no change is ever seen to pair with it: the swap is not kept (kept, the
    /// swaps of 10,000 volumes took about 4 MiB).
    fn swapped(&self, key: &VolumeKey, at: SystemTime) {
        let mut meta = self.shared.meta.state.lock().expect("meta lock");
        if meta.configured {
            meta.propagation.swapped(&key.pod_uid, &key.name, at);
        }
    }

    fn apply(&mut self, ev: Event) {
        let shared = &self.shared;
        let now = Instant::now();
        let mut t = shared.tracker.lock().expect("tracker lock");
        match ev {
            Event::Detected(d) => {
                let (key, ts) = (d.key.clone(), d.ts_dir.clone());
                t.detect(d, now);
                let mut r = shared.reloads.lock().expect("reloads lock");
                // Its data dir may be new (the initial one included).
                r.touch(&key);
                // The volume's newest update (new, or its swap time refined): consumers go stale.
                if let Some(v) = t.volume(&key)
                    && v.updates > 0
                    && v.current.as_deref() == Some(ts.as_str())
                    && let Some(at) = v.last_update
                {
                    r.update(&key, &ts, at);
                    self.swapped(&key, at);
                    self.rescan.notify_one();
                    let dir = v.dir.clone();
                    drop(r);
                    if let Some(s) = &self.signals {
                        let (key, ts_dir) = (key.clone(), ts.clone());
                        let _ = s.send(signals::Swapped { key, ts_dir });
                    }
                    self.mark(opens::Command::Swapped {
                        key,
                        dir,
                        ts_dir: ts,
                    });
                }
            }
            Event::VolumeFound { key, dir, current } => {
                let cmd = opens::Command::Volume {
                    key: key.clone(),
                    dir: dir.clone(),
                    current: current.clone(),
                };
                self.mark(cmd);
                {
                    let mut r = shared.reloads.lock().expect("reloads lock");
                    r.touch(&key);
                    // New since the first walk: its pod is starting, and its
                    // containers' first reads are to be seen.
                    if shared.ready.load(Relaxed) && t.volume(&key).is_none() {
                        r.volume_appeared(&key, SystemTime::now());
                    }
                }
                let data = dir.join(crate::node::volumes::DATA);
                let swapped = || {
                    std::fs::symlink_metadata(&data)
                        .and_then(|m| m.modified())
                        .ok()
                };
                let while_down =
                    t.volume_found(key.clone(), dir, current, now, SystemTime::now(), swapped);
                if let Some((ts, at)) = while_down {
                    info!(volume = %key, data_dir = %ts, "updated while no agent ran");
                    shared
                        .reloads
                        .lock()
                        .expect("reloads lock")
                        .update(&key, &ts, at);
                    self.swapped(&key, at);
                    self.rescan.notify_one();
                }
            }
            Event::VolumeGone(key) => {
                self.settled.remove(&key);
                t.volume_gone(&key);
                shared
                    .reloads
                    .lock()
                    .expect("reloads lock")
                    .volume_gone(&key);
                self.mark(opens::Command::Gone { key });
            }
            Event::PodGone { uid } => {
                if !self.settled.is_empty() {
                    self.settled.retain(|k, _| k.pod_uid != uid);
                }
                for key in t.pod_volumes(&uid) {
                    self.mark(opens::Command::Gone { key });
                }
                t.pod_gone(&uid);
                shared.reloads.lock().expect("reloads lock").pod_gone(&uid);
            }
            Event::PodNamed { uid, name } => t.pod_named(uid, name),
            Event::ContainerStarting { pod_uid, id } => {
                let mut r = shared.reloads.lock().expect("reloads lock");
                r.container_starting(&pod_uid, &id, SystemTime::now());
            }
            Event::DataDirCreated {
                key,
                dir,
                ts_dir,
                late,
            } => {
                if late && self.held_files_fallback {
                    let mut r = shared.reloads.lock().expect("reloads lock");
                    r.late_mark(&key, &ts_dir);
                    // The scan that follows the swap may have run before this.
                    self.rescan.notify_one();
                }
                self.mark(opens::Command::DataDir {
                    key,
                    dir,
                    ts_dir,
                    late,
                });
            }
            Event::Opened {
                opener,
                key,
                ts_dir,
                at,
            } => {
                shared
                    .reloads
                    .lock()
                    .expect("reloads lock")
                    .open(opener, &key, &ts_dir, at);
            }
            Event::InotifyOverflow => {
                shared.overflows.fetch_add(1, Relaxed);
            }
            Event::RescanDone { pods_dir, volumes } => {
                let found: HashSet<_> = volumes.into_iter().collect();
                t.retain_found_under(&pods_dir, &found);
            }
            Event::ScanDone => {
                shared.ready.store(true, Relaxed);
                info!(volumes = t.volumes().count(), "initial scan done");
                self.rescan.notify_one();
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;
    use crate::{
        node::volumes::VolumeType,
        updates::{Detection, Source, Tracker},
    };

    fn key() -> VolumeKey {
        VolumeKey {
            pod_uid: "pod".into(),
            volume_type: VolumeType::Secret,
            name: "tls".into(),
        }
    }

    /// A batch is journaled before it is applied: the journal has the new data dir of
    /// an update the tracker then counts once (the second source's report of the same
    /// swap adds nothing to either); the save at the end is a checkpoint of it, the
    /// journal emptied.
    #[test]
    fn each_batch_is_journaled_then_applied_then_saved() {
        let dir = tempfile::tempdir().unwrap();
        let state = dir.path().join("state.json");
        let shared = Arc::new(Shared::new(Tracker::new(Duration::from_secs(2), false)));
        let journal = checkpoint::Journal::open(&state, 0).unwrap();
        let mut l = StateLoop {
            shared: shared.clone(),
            state_file: Some(state.clone()),
            journal: Some((journal, 0)),
            marks: None,
            signals: None,
            rescan: Arc::new(Notify::new()),
            settled: HashMap::new(),
            held_files_fallback: false,
        };
        let found = Event::VolumeFound {
            key: key(),
            dir: "/k/pods/pod/volumes/kubernetes.io~secret/tls".into(),
            current: Some("..1".into()),
        };
        let detected = |source| {
            Event::Detected(Detection {
                source,
                key: key(),
                ts_dir: "..2".into(),
                at: SystemTime::UNIX_EPOCH + Duration::from_secs(1_800_000_000),
            })
        };
        let batches = [
            vec![found, Event::ScanDone],
            vec![detected(Source::Ebpf)],
            vec![detected(Source::Inotify)],
        ];
        for batch in batches {
            l.journal(&batch);
            for ev in batch {
                l.apply(ev);
            }
        }
        let lines = checkpoint::read_journal(&state, 0).unwrap();
        let dirs: Vec<&str> = lines.iter().map(|l| l.ts_dir()).collect();
        assert_eq!(dirs, ["..1", "..2"], "each data dir once");
        let t = shared.tracker.lock().unwrap();
        let v = t.volume(&key()).unwrap();
        assert_eq!((v.current.as_deref(), v.updates), (Some("..2"), 1));
        drop(t);
        l.save();
        let cp = checkpoint::read(&state).unwrap().unwrap();
        assert_eq!((cp.generation, cp.volumes.len()), (1, 1));
        assert_eq!(cp.volumes[0].ts_dir, "..2");
        assert_eq!(checkpoint::read_journal(&state, 1).unwrap(), []);
    }
}
