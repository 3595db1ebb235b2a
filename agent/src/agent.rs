//! `reloadscope agent`: wires the sources to the state and the state to HTTP.
//!
//! probe reader ─┐
//! inotify walk ─┼─ events ─▶ state loop (Tracker, Reloads) ◀─ scrapes (metrics)
//! fanotify ─────┘                │ marks to place      ▲
//!      ▲─────────────────────────┘                     │ consumers
//!                                     /proc scan ──────┘ (after updates, every 10 s)

use std::{
    collections::{HashMap, HashSet},
    net::SocketAddr,
    path::PathBuf,
    sync::{Arc, atomic::Ordering::Relaxed},
    time::{Duration, Instant, SystemTime},
};

use tokio::{
    sync::{Notify, mpsc, watch},
    task::JoinHandle,
};
use tracing::{info, warn};

use crate::{
    checkpoint, clock, consumers, events,
    events::Event,
    fanotify::Fanotify,
    linter, metrics,
    node::volumes::{Roots, VolumeKey},
    opens,
    opens::{Approx, Opens},
    probe,
    probe::Probe,
    reloads::MountKind,
    server,
    state::Shared,
    updates::Tracker,
    walker,
    walker::Walker,
};

/// How long one source's report waits for the other's before it is a gap.
pub const PAIR_WINDOW: Duration = Duration::from_secs(2);
const TICK: Duration = Duration::from_millis(250);
/// Upper bound on shutdown: in-flight scrapes get this long to finish.
const DRAIN: Duration = Duration::from_millis(200);

#[derive(Clone, Debug)]
pub struct Config {
    pub kubelet_roots: Vec<PathBuf>,
    pub pod_logs_dir: PathBuf,
    pub container_logs_dir: PathBuf,
    pub proc_root: PathBuf,
    pub listen: SocketAddr,
    pub ebpf: bool,
    /// Which probe variant (with `ebpf`).
    pub probe: probe::Choice,
    /// Measure reloads (fanotify and /proc scans); off: detection only.
    pub reloads: bool,
    /// What becomes of a settled volume's fanotify marks.
    pub settled_marks: opens::SettledMarks,
    pub ring_bytes: u32,
    /// Labels kept on the reload latency histogram (of namespace, pod, container, volume).
    pub histogram_labels: Vec<String>,
    /// Where pending reload measurements are checkpointed across restarts.
    pub state_file: Option<PathBuf>,
    /// How long a container has to add a file watch again after an update before it
    /// is `not_rewatched`.
    pub rewatch_grace: Duration,
    /// How often consumers are looked for regardless of events; None: every
    /// [`consumers::RESCAN`], or [`consumers::RESCAN_FOLLOWED`] while container cgroups
    /// are followed.
    pub rescan: Option<Duration>,
    /// The Kubernetes API, when one is configured.
    pub kube: Option<crate::kubeapi::Settings>,
    /// Which labels and series are exported.
    pub labels: crate::metrics::LabelControls,
}

impl Config {
    /// Defaults of a real node, with eBPF on and the metrics port 9741.
    pub fn node_defaults() -> Self {
        Config {
            kubelet_roots: vec![PathBuf::from("/var/lib/kubelet")],
            pod_logs_dir: PathBuf::from("/var/log/pods"),
            container_logs_dir: PathBuf::from("/var/log/containers"),
            proc_root: PathBuf::from("/proc"),
            listen: SocketAddr::from(([0, 0, 0, 0], 9741)),
            ebpf: true,
            probe: probe::Choice::Auto,
            reloads: true,
            settled_marks: opens::SettledMarks::Auto,
            ring_bytes: probe::DEFAULT_RING_BYTES,
            state_file: None,
            rescan: None,
            rewatch_grace: linter::REWATCH_GRACE,
            kube: None,
            labels: crate::metrics::LabelControls::default(),
            histogram_labels: ["namespace", "workload", "pod", "container", "volume"]
                .map(String::from)
                .to_vec(),
        }
    }
}

/// A running agent.
pub struct Running {
    pub addr: SocketAddr,
    pub shared: Arc<Shared>,
    stop: watch::Sender<bool>,
    tasks: Vec<JoinHandle<()>>,
    server: JoinHandle<()>,
}

impl Running {
    /// Stops every task; returns within about [`DRAIN`].
    pub async fn stop(self) {
        let _ = self.stop.send(true);
        for t in self.tasks {
            let _ = t.await;
        }
        let mut server = self.server;
        if tokio::time::timeout(DRAIN, &mut server).await.is_err() {
            server.abort();
        }
    }
}

async fn stopped(mut rx: watch::Receiver<bool>) {
    let _ = rx.wait_for(|&s| s).await;
}

pub async fn start(cfg: Config) -> anyhow::Result<Running> {
    clock::monotonic_ms();
    crate::limits::raise_nofile();
    let roots = Roots::new(cfg.kubelet_roots.iter().cloned());
    let listener = server::bind(cfg.listen).await?;
    let addr = listener.local_addr()?;
    let shared = Arc::new(Shared::new(Tracker::new(PAIR_WINDOW, false)));
    let keep = metrics::histogram_labels(&cfg.histogram_labels).map_err(anyhow::Error::msg)?;
    let exporter = metrics::Exporter::new(shared.clone(), cfg.labels.clone(), &keep)?;
    *shared.linter.lock().expect("linter lock") = linter::Linter::new(cfg.rewatch_grace);
    let journal = match &cfg.state_file {
        Some(path) => {
            let generation = restore(&shared, path);
            shared.reloads.lock().expect("reloads lock").journal();
            let journal = checkpoint::Journal::open(path, generation).map_err(|e| {
                anyhow::anyhow!("--state-file {}: the journal: {e}", path.display())
            })?;
            Some((journal, generation))
        }
        None => None,
    };
    let (stop, stop_rx) = watch::channel(false);
    let (tx, rx) = events::channel();
    let mut tasks = Vec::new();

    let rescan = Arc::new(Notify::new());
    let choice = if cfg.ebpf {
        cfg.probe
    } else {
        probe::Choice::Off
    };
    shared
        .ebpf_enabled
        .store(choice != probe::Choice::Off, Relaxed);
    shared.reloads_enabled.store(cfg.reloads, Relaxed);
    if choice != probe::Choice::Off {
        match Probe::load_choice(choice, cfg.ring_bytes) {
            Ok(((mut probe, ring), tried)) => {
                for (v, e) in tried {
                    info!("eBPF {} probe unavailable, trying the next: {e}", v.label());
                }
                let renames = probe.rename_hook().map_or("syscalls", |h| h.label());
                info!(
                    probe = probe.variant().label(),
                    renames, "eBPF swap probe attached"
                );
                if cfg.reloads {
                    match probe.watch_calls() {
                        Ok(calls) => {
                            let (proc_root, rescan) = (cfg.proc_root.clone(), rescan.clone());
                            let stop = stopped(stop_rx.clone());
                            let calls =
                                probe::watch_calls::read_calls(calls, proc_root, rescan, stop);
                            tasks.push(tokio::spawn(calls));
                        }
                        Err(e) => warn!("inotify watch calls not traced (scans only): {e}"),
                    }
                }
                *shared.probe.lock().expect("probe lock") = Some(probe);
                shared.tracker.lock().expect("tracker lock").set_ebpf(true);
                let (roots, proc_root, tx, stats) = (
                    roots.clone(),
                    cfg.proc_root.clone(),
                    tx.clone(),
                    shared.reader.clone(),
                );
                tasks.push(tokio::spawn(async move {
                    if let Err(e) = probe::read_events(ring, roots, proc_root, tx, stats).await {
                        warn!(error = %e, "reading the probe's ring buffer failed; inotify goes on alone");
                    }
                }));
            }
            Err(failed) => {
                let why: Vec<String> = (failed.iter())
                    .map(|(v, e)| format!("{}: {e}", v.label()))
                    .collect();
                warn!(
                    "eBPF swap probe unavailable, running on inotify alone: {}",
                    why.join("; ")
                );
            }
        }
    } else {
        info!("eBPF disabled (--probe off or --no-ebpf); running on inotify alone");
    }

    let mut marker = None;
    let marks = if !cfg.reloads {
        info!("reloads not measured (--no-reloads): detection only");
        None
    } else {
        match Fanotify::new() {
            Ok(fan) => {
                shared.fanotify.store(true, Relaxed);
                marker = Some(fan.marker());
                let (cmds, cmd_rx) = mpsc::unbounded_channel();
                let source = Opens::new(
                    fan,
                    cfg.settled_marks,
                    cfg.proc_root.clone(),
                    shared.clone(),
                );
                tasks.push(tokio::spawn(source.run(cmd_rx, tx.clone())));
                Some(cmds)
            }
            Err(e) => approximate(&shared, &mut tasks, &tx, e),
        }
    };
    if cfg.reloads {
        let followed = consumers::follow::Follower::start(
            consumers::follow::cgroup_base(&cfg.proc_root),
            shared.cgroup_watches.clone(),
        );
        // A tree that appears later (the kubelet starting after the agent) is
        // followed too, but the periodic scan stays frequent.
        let follows_pods = followed.as_ref().is_some_and(|(f, _)| f.has_pods_tree());
        let every = cfg.rescan.unwrap_or(if follows_pods {
            consumers::RESCAN_FOLLOWED
        } else {
            consumers::RESCAN
        });
        if let Some((follower, stream)) = followed {
            let stop = stopped(stop_rx.clone());
            let run = follower.run(stream, rescan.clone(), tx.clone(), stop);
            tasks.push(tokio::spawn(run));
        }
        let consumers = consumer_loop(
            shared.clone(),
            cfg.clone(),
            every,
            marks.clone(),
            rescan.clone(),
            stop_rx.clone(),
        );
        tasks.push(tokio::spawn(consumers));
    }

    if let Some(settings) = cfg.kube.clone() {
        shared.meta.state.lock().expect("meta lock").configured = true;
        tasks.push(crate::apiclient::spawn(
            settings,
            shared.clone(),
            stop_rx.clone(),
        ));
    }

    // The state loop runs before the walk starts, so the walk can never fill the queue.
    let state = StateLoop {
        shared: shared.clone(),
        // Without filesystem or mount marks (`remove`, `auto` on an unwatched volume),
        // nothing sees what a late mark missed; the files consumers hold open may.
        held_files_fallback: marks.is_some() && cfg.settled_marks != opens::SettledMarks::Ignore,
        marks,
        rescan,
        state_file: cfg.state_file.clone(),
        journal,
        settled: HashMap::new(),
    };
    tasks.push(tokio::spawn(state.run(rx, stop_rx.clone())));
    let (walker, reader) = Walker::start(
        roots,
        cfg.pod_logs_dir.clone(),
        marker,
        tx,
        shared.blind.clone(),
    )
    .await?;
    tasks.push(tokio::spawn(walker::run(
        walker,
        reader,
        shared.watches.clone(),
    )));

    let server = tokio::spawn({
        let shared = shared.clone();
        async move {
            if let Err(e) = server::serve(listener, exporter, shared, stopped(stop_rx)).await {
                warn!(error = %e, "metrics server failed");
            }
        }
    });
    info!(%addr, "serving /metrics, /healthz and /readyz");
    Ok(Running {
        addr,
        shared,
        stop,
        tasks,
        server,
    })
}

/// Tells the opens source which volumes some consumer watches in a way that fires at
/// an update (the linter's `ok`), where that changed since `told`.
fn tell_watched(
    shared: &Shared,
    marks: &mpsc::UnboundedSender<opens::Command>,
    told: &mut HashSet<VolumeKey>,
) {
    let now: HashSet<VolumeKey> = {
        let l = shared.linter.lock().expect("linter lock");
        (l.consumers())
            .filter(|(_, s)| s.findings.contains(&linter::Finding::Ok))
            .map(|(k, _)| k.clone())
            .collect()
    };
    let changed: Vec<(VolumeKey, bool)> = (now.difference(told).map(|k| (k.clone(), true)))
        .chain(told.difference(&now).map(|k| (k.clone(), false)))
        .collect();
    let t = shared.tracker.lock().expect("tracker lock");
    let r = shared.reloads.lock().expect("reloads lock");
    for (key, on) in changed {
        let settled = (t.volume(&key))
            .filter(|_| r.settled(&key))
            .and_then(|v| v.data_dir());
        let _ = marks.send(opens::Command::Watched { key, on, settled });
    }
    *told = now;
}

/// Gives the watch linter one scan's inventory of each consumer's inotify watches;
/// returns the consumers (volume, container id) with a watch on their volume.
fn lint(
    shared: &Shared,
    scan: &consumers::Scan,
    inodes: &HashMap<VolumeKey, (Option<String>, linter::VolumeInodes)>,
    updated: &HashMap<VolumeKey, SystemTime>,
) -> HashSet<(VolumeKey, String)> {
    let mut watching = HashSet::new();
    let now = SystemTime::now();
    let mut l = shared.linter.lock().expect("linter lock");
    let mut observed: HashMap<String, usize> = HashMap::new();
    let mut counted = HashSet::new();
    for (key, found) in &scan.consumers {
        let Some((current, vi)) = inodes.get(key) else {
            continue;
        };
        for f in found {
            let held = scan.watches.get(&f.id).map_or(&[][..], Vec::as_slice);
            if counted.insert(&f.id) {
                *observed.entry(key.pod_uid.clone()).or_default() += held.len();
            }
            let seen = linter::Seen {
                key,
                id: &f.id,
                name: &f.name,
                mount: f.mount,
                current: current.as_deref(),
                updated_at: updated.get(key).copied(),
                inodes: vi,
                watches: held,
            };
            if l.observe(seen, now) {
                watching.insert((key.clone(), f.id.clone()));
            }
        }
    }
    l.observed = observed;
    l.last_inventory = Some(now);
    let found = |k: &VolumeKey, id: &str| {
        (scan.consumers.get(k)).is_some_and(|fs| fs.iter().any(|f| f.id == id))
    };
    l.retain(found);
    watching
}

/// Without fanotify: the approximate source (inotify, unattributed), or nothing.
fn approximate(
    shared: &Arc<Shared>,
    tasks: &mut Vec<JoinHandle<()>>,
    tx: &events::Sender,
    why: std::io::Error,
) -> Option<mpsc::UnboundedSender<opens::Command>> {
    match Approx::new(shared.clone()) {
        Ok((source, stream)) => {
            warn!(
                "fanotify unavailable, reloads are measured approximately with inotify \
                 (credited per volume, not per process): {why}"
            );
            shared.approximate.store(true, Relaxed);
            let (cmds, cmd_rx) = mpsc::unbounded_channel();
            tasks.push(tokio::spawn(source.run(stream, cmd_rx, tx.clone())));
            Some(cmds)
        }
        Err(e) => {
            warn!("fanotify unavailable ({why}) and inotify too ({e}): reloads are not measured");
            None
        }
    }
}

/// How often the state file is written (and once more at shutdown).
const SAVE_EVERY: Duration = Duration::from_secs(10);
/// Events journaled with one sync at most.
const JOURNAL_BATCH: usize = 256;

/// Loads the checkpoint: each volume's data dir then (a volume found pointing elsewhere
/// was updated while no agent ran), and the pending reload measurements of the volumes
/// that still point at the data dir they name.
/// The journal written since replays over it (see [`merge_journal`]). Returns the
/// checkpoint's generation, which the journal goes on from.
fn restore(shared: &Shared, path: &std::path::Path) -> u64 {
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
        let current = crate::node::read_target(&v.dir.join(crate::node::volumes::DATA));
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

/// Looks for the consumers of every volume: after updates and container changes (at
/// most once a second) and every `every`. The /proc walk runs off the async workers.
async fn consumer_loop(
    shared: Arc<Shared>,
    cfg: Config,
    every: Duration,
    marks: Option<mpsc::UnboundedSender<opens::Command>>,
    rescan: Arc<Notify>,
    stop: watch::Receiver<bool>,
) {
    let mut every = tokio::time::interval(every);
    // The first tick is immediate: the first scan waits for the initial walk instead
    // (ScanDone notifies), so it has the volumes to match.
    every.tick().await;
    let mut marked = HashSet::new();
    // The volumes some consumer watches (`--settled-marks auto`), as last told.
    let mut watched = HashSet::new();
    let stopped = stopped(stop);
    tokio::pin!(stopped);
    loop {
        // A rewatch grace period ending is due an inventory too.
        let due = shared.linter.lock().expect("linter lock").next_deadline();
        let grace_over = async {
            match due {
                Some(at) => {
                    let wait = at.duration_since(SystemTime::now()).unwrap_or_default();
                    tokio::time::sleep(wait).await;
                }
                None => std::future::pending().await,
            }
        };
        tokio::select! {
            _ = rescan.notified() => {}
            _ = every.tick() => {}
            _ = grace_over => {}
            _ = &mut stopped => return,
        }
        // Every volume, and its last update as the scan starts (only the consumed
        // volumes' are kept: the node's volumes are many, their consumers few).
        let (volumes, updates): (Vec<_>, Vec<_>) = {
            let t = shared.tracker.lock().expect("tracker lock");
            t.volumes()
                .map(|(k, v)| ((k.clone(), v.dir.clone()), v.last_update))
                .unzip()
        };
        let (proc_root, logs) = (cfg.proc_root.clone(), cfg.container_logs_dir.clone());
        let scan = tokio::task::spawn_blocking(move || {
            let scan = consumers::scan(&proc_root, &logs, &volumes);
            let consumed =
                (volumes.iter().zip(updates)).filter(|((k, _), _)| scan.consumers.contains_key(k));
            // The inodes of the consumed volumes, for the watch linter.
            let mut inodes = HashMap::new();
            let mut updated = HashMap::new();
            for ((k, dir), at) in consumed {
                let current = crate::node::read_target(&dir.join(crate::node::volumes::DATA));
                let vi = linter::VolumeInodes {
                    pinned: scan.pinned.get(k).cloned().unwrap_or_default(),
                    ..linter::VolumeInodes::read(dir)
                };
                inodes.insert(k.clone(), (current, vi));
                if let Some(at) = at {
                    updated.insert(k.clone(), at);
                }
            }
            (scan, inodes, updated)
        });
        // A scan of a big node takes seconds (10,000 volumes: about 2 s): a stop does
        // not wait for it; the runtime's shutdown leaves the thread to finish alone.
        let done = tokio::select! {
            done = scan => done,
            _ = &mut stopped => return,
        };
        let Ok((mut scan, inodes, updated)) = done else {
            return;
        };
        let watching = lint(&shared, &scan, &inodes, &updated);
        for (key, fs) in scan.consumers.iter_mut() {
            for f in fs {
                f.watches = watching.contains(&(key.clone(), f.id.clone()));
            }
        }
        if let Some(m) = &marks {
            // Each consumer's own mount is told once, when first found.
            for (key, fs) in &scan.consumers {
                for f in fs {
                    if let Some(p) = &f.mount_path
                        && f.mount == MountKind::Volume
                        && marked.insert(p.clone())
                    {
                        let (key, mount_path) = (key.clone(), p.clone());
                        let _ = m.send(opens::Command::Consumer { key, mount_path });
                    }
                }
            }
            if cfg.settled_marks == opens::SettledMarks::Auto {
                tell_watched(&shared, m, &mut watched);
            }
        }
        {
            let mut r = shared.reloads.lock().expect("reloads lock");
            // The volumes consumed before and not now lose their consumers.
            let gone: Vec<_> = (r.consumed())
                .filter(|k| !scan.consumers.contains_key(*k))
                .cloned()
                .collect();
            for key in gone {
                r.set_consumers(&key, Vec::new());
            }
            for (key, found) in scan.consumers.drain() {
                r.set_consumers(&key, found);
            }
            r.scanned(&scan.ids);
        }
        tokio::select! {
            _ = tokio::time::sleep(Duration::from_secs(1)) => {}
            _ = &mut stopped => return,
        }
    }
}

/// What the state file keeps of a volume: its data dir; its newest update and who is
/// stale, when known; who reads it. None when it has neither an update nor a data dir.
fn to_saved(
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

struct StateLoop {
    shared: Arc<Shared>,
    state_file: Option<PathBuf>,
    /// With a state file: its journal, and the generation of the last checkpoint.
    journal: Option<(checkpoint::Journal, u64)>,
    /// Commands for the fanotify source, when it runs.
    marks: Option<mpsc::UnboundedSender<opens::Command>>,
    rescan: Arc<Notify>,
    /// Volumes whose data dir the opens source has settled (ignored or unmarked, as
    /// `--settled-marks` says), and that dir.
    settled: HashMap<VolumeKey, PathBuf>,
    /// A late mark's reloads are looked for in the files consumers hold open.
    held_files_fallback: bool,
}

impl StateLoop {
    async fn run(mut self, mut rx: events::Receiver, stop: watch::Receiver<bool>) {
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
