//! `reloadscope agent`: wires the sources to the state and the state to HTTP.
//!
//! What runs, each a task: the sources (the probe's reader and its watch-call reader,
//! the walker, the exact or approximate opens source, the cgroup follower), the scan
//! loop ([`scan_loop`]), the Kubernetes API client, the state loop ([`state_loop`],
//! with the state file's side in [`persist`]), and the HTTP server. [`start`] starts
//! them in that order, the state loop before the walk so the walk never fills its
//! queue.
//!
//! probe reader ─┐
//! inotify walk ─┼─ events ─▶ state loop (Tracker, Reloads) ◀─ scrapes (metrics)
//! fanotify ─────┘                │ marks to place      ▲
//!      ▲─────────────────────────┘                     │ consumers
//!                                     /proc scan ──────┘ (after updates, every 10 s)

use std::{
    collections::HashMap,
    net::SocketAddr,
    path::PathBuf,
    sync::{Arc, atomic::Ordering::Relaxed},
    time::Duration,
};

use tokio::{
    sync::{Notify, mpsc, watch},
    task::JoinHandle,
};
use tracing::{info, warn};

pub mod defaults;
mod persist;
mod scan_loop;
mod signal_loop;
mod state_loop;

use crate::{
    checkpoint, clock, consumers, events,
    fanotify::{Fanotify, Marker},
    linter, metrics,
    node::volumes::Roots,
    opens::{self, Approx, Opens},
    probe::{self, Probe},
    server,
    state::Shared,
    updates::Tracker,
    walker::{self, Walker},
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
    /// The kernel programs' log lines to the agent's log (`--kernel-log`).
    pub kernel_log: bool,
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
    /// Signal the consumers of annotated pods at their volumes' swaps.
    pub reload_signals: bool,
}

impl Config {
    /// Defaults of a real node, with eBPF on and the metrics port 9741.
    pub fn node_defaults() -> Self {
        Config {
            kubelet_roots: vec![PathBuf::from(defaults::KUBELET_ROOT)],
            pod_logs_dir: PathBuf::from(defaults::POD_LOGS_DIR),
            container_logs_dir: PathBuf::from(defaults::CONTAINER_LOGS_DIR),
            proc_root: PathBuf::from(defaults::PROC_ROOT),
            listen: defaults::LISTEN
                .parse()
                .expect("the default address parses"),
            ebpf: true,
            probe: defaults::PROBE,
            reloads: true,
            settled_marks: defaults::SETTLED_MARKS,
            ring_bytes: defaults::RING_BYTES,
            kernel_log: false,
            state_file: None,
            rescan: None,
            rewatch_grace: Duration::from_secs_f64(defaults::REWATCH_GRACE_SECONDS),
            kube: None,
            labels: crate::metrics::LabelControls::default(),
            reload_signals: false,
            histogram_labels: defaults::HISTOGRAM_LABELS
                .split(',')
                .map(String::from)
                .collect(),
        }
    }

    /// The probe variant asked for: none without `ebpf`.
    fn probe_choice(&self) -> probe::Choice {
        if self.ebpf {
            self.probe
        } else {
            probe::Choice::Off
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

/// The events channel's sender, the rescan notice, and the stop signal: what every task
/// started gets.
struct Wiring {
    tx: events::Sender,
    rescan: Arc<Notify>,
    stop: watch::Receiver<bool>,
    tasks: Vec<JoinHandle<()>>,
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
            let generation = persist::restore(&shared, path);
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
    let mut w = Wiring {
        tx,
        rescan: Arc::new(Notify::new()),
        stop: stop_rx,
        tasks: Vec::new(),
    };
    let choice = cfg.probe_choice();
    shared
        .ebpf_enabled
        .store(choice != probe::Choice::Off, Relaxed);
    shared.reloads_enabled.store(cfg.reloads, Relaxed);
    if choice == probe::Choice::Off {
        info!("eBPF disabled (--probe off or --no-ebpf); running on inotify alone");
    } else {
        start_probe(choice, &cfg, &shared, &roots, &mut w);
    }
    let (marks, marker) = if cfg.reloads {
        start_opens(&cfg, &shared, &mut w)
    } else {
        info!("reloads not measured (--no-reloads): detection only");
        (None, None)
    };
    if cfg.reloads {
        start_scans(&cfg, &shared, marks.clone(), &mut w);
    }
    let signals = start_signals(&cfg, &shared, &mut w);
    if let Some(settings) = cfg.kube.clone() {
        shared.meta.state.lock().expect("meta lock").configured = true;
        let client = crate::apiclient::spawn(settings, shared.clone(), w.stop.clone());
        w.tasks.push(client);
    }

    // The state loop runs before the walk starts, so the walk can never fill the queue.
    let state = state_loop::StateLoop {
        shared: shared.clone(),
        // Without filesystem or mount marks (`remove`, `auto` on an unwatched volume),
        // nothing sees what a late mark missed; the files consumers hold open may.
        held_files_fallback: marks.is_some() && cfg.settled_marks != opens::SettledMarks::Ignore,
        marks,
        signals,
        rescan: w.rescan.clone(),
        state_file: cfg.state_file.clone(),
        journal,
        settled: HashMap::new(),
    };
    w.tasks.push(tokio::spawn(state.run(rx, w.stop.clone())));
    let pod_logs = cfg.pod_logs_dir.clone();
    let (walker, reader) =
        Walker::start(roots, pod_logs, marker, w.tx.clone(), shared.blind.clone()).await?;
    let walk = walker::run(walker, reader, shared.watches.clone());
    w.tasks.push(tokio::spawn(walk));

    let server = tokio::spawn({
        let (shared, stopped) = (shared.clone(), stopped(w.stop.clone()));
        async move {
            if let Err(e) = server::serve(listener, exporter, shared, stopped).await {
                warn!(error = %e, "metrics server failed");
            }
        }
    });
    info!(%addr, "serving /metrics, /healthz and /readyz");
    Ok(Running {
        addr,
        shared,
        stop,
        tasks: w.tasks,
        server,
    })
}

/// Loads the probe `choice` names (or the first of its variants that loads) and starts
/// its readers; without it the agent goes on with inotify alone, saying why.
fn start_probe(
    choice: probe::Choice,
    cfg: &Config,
    shared: &Arc<Shared>,
    roots: &Roots,
    w: &mut Wiring,
) {
    let (mut probe, ring) = match Probe::load_choice(choice, cfg.ring_bytes, cfg.kernel_log) {
        Ok(((probe, ring), tried)) => {
            for (v, e) in tried {
                info!("eBPF {} probe unavailable, trying the next: {e}", v.label());
            }
            (probe, ring)
        }
        Err(failed) => {
            let why: Vec<String> = (failed.iter())
                .map(|(v, e)| format!("{}: {e}", v.label()))
                .collect();
            warn!(
                "eBPF swap probe unavailable, running on inotify alone: {}",
                why.join("; ")
            );
            return;
        }
    };
    let renames = probe.rename_hook().map_or("syscalls", |h| h.label());
    info!(
        probe = probe.variant().label(),
        renames, "eBPF swap probe attached"
    );
    if cfg.reloads {
        match probe.watch_calls() {
            Ok(calls) => {
                let (proc_root, rescan) = (cfg.proc_root.clone(), w.rescan.clone());
                let stop = stopped(w.stop.clone());
                let calls = probe::watch_calls::read_calls(calls, proc_root, rescan, stop);
                w.tasks.push(tokio::spawn(calls));
            }
            Err(e) => warn!("inotify watch calls not traced (scans only): {e}"),
        }
    }
    if let Some(log) = probe.take_kernel_log() {
        info!("the kernel programs' log goes to this log (--kernel-log)");
        w.tasks.push(tokio::spawn(log.run(stopped(w.stop.clone()))));
    }
    *shared.probe.lock().expect("probe lock") = Some(probe);
    shared.tracker.lock().expect("tracker lock").set_ebpf(true);
    let (roots, proc_root, tx, stats) = (
        roots.clone(),
        cfg.proc_root.clone(),
        w.tx.clone(),
        shared.reader.clone(),
    );
    w.tasks.push(tokio::spawn(async move {
        if let Err(e) = probe::read_events(ring, roots, proc_root, tx, stats).await {
            warn!(error = %e, "reading the probe's ring buffer failed; inotify goes on alone");
        }
    }));
}

/// Starts the opens source: fanotify, else the approximate one. Returns the channel of
/// its commands and, with fanotify, the marker the walker's reader marks new data dirs
/// with.
fn start_opens(
    cfg: &Config,
    shared: &Arc<Shared>,
    w: &mut Wiring,
) -> (
    Option<mpsc::UnboundedSender<opens::Command>>,
    Option<Marker>,
) {
    match Fanotify::new() {
        Ok(fan) => {
            shared.fanotify.store(true, Relaxed);
            let marker = fan.marker();
            let (cmds, cmd_rx) = mpsc::unbounded_channel();
            let proc_root = cfg.proc_root.clone();
            let source = Opens::new(fan, cfg.settled_marks, proc_root, shared.clone());
            w.tasks.push(tokio::spawn(source.run(cmd_rx, w.tx.clone())));
            (Some(cmds), Some(marker))
        }
        Err(e) => (approximate(shared, &mut w.tasks, &w.tx, e), None),
    }
}

/// Starts the cgroup follower and the scan loop.
fn start_scans(
    cfg: &Config,
    shared: &Arc<Shared>,
    marks: Option<mpsc::UnboundedSender<opens::Command>>,
    w: &mut Wiring,
) {
    let followed = consumers::follow::Follower::start(
        consumers::follow::cgroup_base(&cfg.proc_root),
        shared.cgroup_watches.clone(),
    );
    // A tree that appears later (the kubelet starting after the agent) is followed too,
    // but the periodic scan stays frequent.
    let follows_pods = followed.as_ref().is_some_and(|(f, _)| f.has_pods_tree());
    let every = cfg.rescan.unwrap_or(if follows_pods {
        consumers::RESCAN_FOLLOWED
    } else {
        consumers::RESCAN
    });
    if let Some((follower, stream)) = followed {
        let stop = stopped(w.stop.clone());
        let run = follower.run(stream, w.rescan.clone(), w.tx.clone(), stop);
        w.tasks.push(tokio::spawn(run));
    }
    let scans = scan_loop::ScanLoop::new(
        shared.clone(),
        cfg.proc_root.clone(),
        cfg.container_logs_dir.clone(),
        marks,
        cfg.settled_marks == opens::SettledMarks::Auto,
    );
    let run = scans.run(every, w.rescan.clone(), w.stop.clone());
    w.tasks.push(tokio::spawn(run));
}

/// Starts the signal loop under `--reload-signals`; returns where the state loop tells
/// it of swaps. It signals the consumers the scans find, of pods whose annotations the
/// API gives: without either it would never signal, and says so.
fn start_signals(
    cfg: &Config,
    shared: &Arc<Shared>,
    w: &mut Wiring,
) -> Option<mpsc::UnboundedSender<crate::signals::Swapped>> {
    if !cfg.reload_signals {
        return None;
    }
    if !cfg.reloads || cfg.kube.is_none() {
        warn!(
            "--reload-signals needs the consumers (no --no-reloads) and the Kubernetes API              (the pods' annotations): no signal will be sent"
        );
        return None;
    }
    shared.signals.lock().expect("signals lock").enabled = true;
    let (tx, rx) = mpsc::unbounded_channel();
    let signals = signal_loop::SignalLoop::new(shared.clone(), cfg.proc_root.clone());
    w.tasks.push(tokio::spawn(signals.run(rx, w.stop.clone())));
    Some(tx)
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_probe_is_off_without_ebpf_whatever_the_variant() {
        let cfg = Config {
            probe: probe::Choice::Tracepoint,
            ..Config::node_defaults()
        };
        assert_eq!(cfg.probe_choice(), probe::Choice::Tracepoint);
        let off = Config { ebpf: false, ..cfg };
        assert_eq!(off.probe_choice(), probe::Choice::Off);
    }

    /// Start-up without the probe or reloads (no privilege needed): the agent walks an
    /// empty kubelet root, turns ready, opens the state file's journal, and stops.
    #[tokio::test]
    async fn starts_ready_on_an_empty_root_and_stops() {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path().join("kubelet");
        std::fs::create_dir(&root).unwrap();
        let state = dir.path().join("state.json");
        let cfg = Config {
            kubelet_roots: vec![root],
            pod_logs_dir: dir.path().join("pods"),
            container_logs_dir: dir.path().join("containers"),
            listen: "127.0.0.1:0".parse().unwrap(),
            ebpf: false,
            reloads: false,
            state_file: Some(state.clone()),
            ..Config::node_defaults()
        };
        let running = start(cfg).await.unwrap();
        assert_ne!(running.addr.port(), 0);
        let ready = async {
            while !running.shared.ready.load(Relaxed) {
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
        };
        tokio::time::timeout(Duration::from_secs(10), ready)
            .await
            .expect("ready after the first walk");
        assert!(!running.shared.ebpf_enabled.load(Relaxed));
        assert!(!running.shared.reloads_enabled.load(Relaxed));
        assert!(checkpoint::Journal::path(&state).is_file());
        running.stop().await;
        // The last save, at the stop.
        assert!(checkpoint::read(&state).unwrap().is_some());
    }
}
