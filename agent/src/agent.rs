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
    sync::{Arc, OnceLock, atomic::Ordering::Relaxed},
    time::{Duration, Instant, SystemTime},
};

use tokio::{
    sync::{Notify, mpsc, watch},
    task::JoinHandle,
};
use tracing::{info, warn};

use crate::{
    approx::Approx,
    checkpoint, consumers,
    events::{self, Event},
    fanotify::Fanotify,
    metrics::{self, Shared},
    opens::{self, Opens},
    probe::{self, Probe},
    reloads::MountKind,
    server,
    updates::Tracker,
    volumes::{Roots, VolumeKey},
    watch::{self as walk, Walker},
    watches,
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
            rewatch_grace: watches::REWATCH_GRACE,
            kube: None,
            labels: crate::metrics::LabelControls::default(),
            histogram_labels: ["namespace", "workload", "pod", "container", "volume"]
                .map(String::from)
                .to_vec(),
        }
    }
}

/// Milliseconds since the agent's first call, monotonic.
pub fn monotonic_ms() -> u64 {
    static START: OnceLock<Instant> = OnceLock::new();
    START.get_or_init(Instant::now).elapsed().as_millis() as u64
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
    monotonic_ms();
    crate::limits::raise_nofile();
    let roots = Roots::new(cfg.kubelet_roots.iter().cloned());
    let listener = server::bind(cfg.listen).await?;
    let addr = listener.local_addr()?;
    let shared = Arc::new(Shared::new(Tracker::new(PAIR_WINDOW, false)));
    let keep = metrics::histogram_labels(&cfg.histogram_labels).map_err(anyhow::Error::msg)?;
    let exporter = metrics::Exporter::new(shared.clone(), cfg.labels.clone(), &keep)?;
    *shared.linter.lock().expect("linter lock") = watches::Linter::new(cfg.rewatch_grace);
    if let Some(path) = &cfg.state_file {
        restore(&shared, path);
    }
    let (stop, stop_rx) = watch::channel(false);
    let (tx, rx) = events::channel();
    let mut tasks = Vec::new();

    let rescan = Arc::new(Notify::new());
    let choice = if cfg.ebpf {
        cfg.probe
    } else {
        probe::Choice::Off
    };
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
                            let calls = probe::watches::read_calls(calls, proc_root, rescan, stop);
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
        tasks.push(crate::kubeapi::client::spawn(
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
    tasks.push(tokio::spawn(walk::run(
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
            .filter(|(_, s)| s.findings.contains(&watches::Finding::Ok))
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
    inodes: &HashMap<VolumeKey, (Option<String>, watches::VolumeInodes)>,
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
            let seen = watches::Seen {
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

/// Loads the checkpoint: each volume's data dir then (a volume found pointing elsewhere
/// was updated while no agent ran), and the pending reload measurements of the volumes
/// that still point at the data dir they name.
fn restore(shared: &Shared, path: &std::path::Path) {
    let cp = match checkpoint::read(path) {
        Ok(Some(cp)) => cp,
        Ok(None) => return,
        Err(e) => {
            warn!("state file unusable, starting afresh: {e}");
            return;
        }
    };
    let mut t = shared.tracker.lock().expect("tracker lock");
    let mut r = shared.reloads.lock().expect("reloads lock");
    let mut restored = 0;
    for mut v in cp.volumes {
        let Some(key) = v.key() else { continue };
        t.saved(key.clone(), v.ts_dir.clone());
        // Whether each consumer reads the volume holds whatever its data dir now.
        let readers = std::mem::take(&mut v.readers);
        r.restore_reads(&key, readers, std::mem::take(&mut v.non_readers));
        // No update known then (swap 0): nothing pending to restore.
        let current = probe::read_target(&v.dir.join(crate::volumes::DATA));
        if v.swap_unix_ns == 0 || current.as_deref() != Some(v.ts_dir.as_str()) {
            continue;
        }
        let swap = v.swap();
        restored += v.consumers.iter().filter(|(_, stale)| *stale).count();
        r.restore(key, v.ts_dir, swap, v.consumers);
    }
    info!(path = %path.display(), pending = restored, "restored pending reload measurements");
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
                let current = probe::read_target(&dir.join(crate::volumes::DATA));
                let vi = watches::VolumeInodes {
                    pinned: scan.pinned.get(k).cloned().unwrap_or_default(),
                    ..watches::VolumeInodes::read(dir)
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

struct StateLoop {
    shared: Arc<Shared>,
    state_file: Option<PathBuf>,
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
                        self.apply(ev);
                        self.settle();
                    }
                    None => break,
                },
                _ = save.tick() => self.save(),
                _ = tick.tick() => {
                    self.shared.tracker.lock().expect("tracker lock").tick(Instant::now());
                    self.shared.reloads.lock().expect("reloads lock").tick(SystemTime::now());
                    self.shared.heartbeat_ms.store(monotonic_ms(), Relaxed);
                    // Consumer scans change who is stale too.
                    self.settle();
                }
                _ = &mut stopped => break,
            }
        }
        self.save();
    }

    /// Writes the checkpoint, when there is a state file.
    fn save(&self) {
        let Some(path) = &self.state_file else { return };
        let volumes = {
            let t = self.shared.tracker.lock().expect("tracker lock");
            let r = self.shared.reloads.lock().expect("reloads lock");
            let mut known: HashMap<_, _> = (r.snapshot().into_iter())
                .map(|s| (s.volume.clone(), s))
                .collect();
            // Every volume with its data dir, so that the next run sees updates made
            // while none ran; with its newest update and who is stale, when known, and
            // who reads it.
            t.volumes()
                .filter_map(|(key, v)| {
                    let s = known.remove(key);
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
                })
                .collect()
        };
        if let Err(e) = checkpoint::write(
            path,
            &checkpoint::Checkpoint {
                version: 0,
                volumes,
            },
        ) {
            warn!(path = %path.display(), error = %e, "cannot write the state file");
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
                let data = dir.join(crate::volumes::DATA);
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
