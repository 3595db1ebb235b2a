//! `reloadscope agent`: wires the sources to the state and the state to HTTP.
//!
//! probe reader ─┐
//!               ├─ events ─▶ state loop (Tracker) ◀─ scrapes (metrics)
//! inotify walk ─┘

use std::{
    collections::HashSet,
    net::SocketAddr,
    path::PathBuf,
    sync::{Arc, OnceLock, atomic::Ordering::Relaxed},
    time::{Duration, Instant, SystemTime},
};

use tokio::{sync::watch, task::JoinHandle};
use tracing::{info, warn};

use crate::{
    events::{self, Event},
    metrics::{self, Shared},
    probe::{self, Probe},
    server,
    updates::Tracker,
    volumes::Roots,
    watch::{self as walk, Walker},
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
    pub ring_bytes: u32,
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
            ring_bytes: probe::DEFAULT_RING_BYTES,
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
    let roots = Roots::new(cfg.kubelet_roots.iter().cloned());
    let listener = server::bind(cfg.listen).await?;
    let addr = listener.local_addr()?;
    let shared = Arc::new(Shared::new(Tracker::new(PAIR_WINDOW, false)));
    let registry = metrics::registry(shared.clone())?;
    let (stop, stop_rx) = watch::channel(false);
    let (tx, rx) = events::channel();
    let mut tasks = Vec::new();

    if cfg.ebpf {
        match Probe::load(cfg.ring_bytes) {
            Ok((probe, ring)) => {
                info!("eBPF swap probe attached (syscall tracepoints)");
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
            Err(e) => warn!("eBPF swap probe unavailable, running on inotify alone: {e}"),
        }
    } else {
        info!("eBPF disabled by --no-ebpf; running on inotify alone");
    }

    // The state loop runs before the walk starts, so the walk can never fill the queue.
    tasks.push(tokio::spawn(state_loop(
        shared.clone(),
        rx,
        stop_rx.clone(),
    )));
    let (walker, stream) = Walker::start(roots, cfg.pod_logs_dir.clone(), tx).await?;
    tasks.push(tokio::spawn(walk::run(
        walker,
        stream,
        shared.watches.clone(),
    )));

    let server = tokio::spawn({
        let shared = shared.clone();
        async move {
            if let Err(e) = server::serve(listener, registry, shared, stopped(stop_rx)).await {
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

async fn state_loop(shared: Arc<Shared>, mut rx: events::Receiver, stop: watch::Receiver<bool>) {
    let mut tick = tokio::time::interval(TICK);
    let stopped = stopped(stop);
    tokio::pin!(stopped);
    loop {
        tokio::select! {
            ev = rx.recv() => match ev {
                Some(ev) => apply(&shared, ev),
                None => return,
            },
            _ = tick.tick() => {
                shared.tracker.lock().expect("tracker lock").tick(Instant::now());
                shared.heartbeat_ms.store(monotonic_ms(), Relaxed);
            }
            _ = &mut stopped => return,
        }
    }
}

fn apply(shared: &Shared, ev: Event) {
    let now = Instant::now();
    let mut t = shared.tracker.lock().expect("tracker lock");
    match ev {
        Event::Detected(d) => t.detect(d, now),
        Event::VolumeFound { key, dir, current } => {
            t.volume_found(key, dir, current, now, SystemTime::now())
        }
        Event::VolumeGone(key) => t.volume_gone(&key),
        Event::PodGone { uid } => t.pod_gone(&uid),
        Event::PodNamed { uid, name } => t.pod_named(uid, name),
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
        }
    }
}
