//! `reloadscope-lab`: the real agent on a lab node, with a kubelet-like writer updating
//! volumes on a schedule and a live table of what the agent reports.

use std::{
    fmt::Write as _,
    io::Write as _,
    net::SocketAddr,
    path::PathBuf,
    time::{Duration, Instant, SystemTime},
};

use anyhow::Context as _;
use reloadscope::{
    agent,
    node::volumes::{VolumeKey, VolumeType},
    updates::Source,
};

use super::{
    AtomicWriter, CallStyle, ContainerSpec, LabContainer, LabNode, LabPod, Strategy, api, payload,
};

/// Options of `reloadscope-lab`.
#[derive(Clone, Debug, clap::Args)]
pub struct LabArgs {
    /// Pods on the lab node, each with one volume of every type.
    #[arg(long, default_value_t = 3)]
    pub pods: usize,
    /// Seconds between two volume updates (round robin over the volumes).
    #[arg(long, default_value_t = 2.0)]
    pub interval: f64,
    /// Seconds between the kubelet-style no-op re-reads of every volume.
    #[arg(long, default_value_t = 5.0)]
    pub resync: f64,
    /// Stop after this many seconds (default: run until Ctrl-C).
    #[arg(long)]
    pub duration: Option<f64>,
    /// Where the agent serves /metrics, /healthz and /readyz.
    #[arg(long, default_value = "127.0.0.1:9741")]
    pub listen: SocketAddr,
    /// Run the agent without its eBPF probe (inotify alone).
    #[arg(long)]
    pub no_ebpf: bool,
    /// Lab node directory (default: a new temporary one, removed on exit).
    #[arg(long, value_name = "DIR")]
    pub base: Option<PathBuf>,
    /// Print the table as plain lines instead of redrawing the screen.
    #[arg(long)]
    pub plain: bool,
    /// Run no consumer containers (volumes and updates only).
    #[arg(long)]
    pub no_containers: bool,
    /// Run no test API server: the agent names volumes and pods from the node alone
    /// and measures no propagation delays.
    #[arg(long)]
    pub no_api: bool,
}

/// A lab container and the volume it consumes.
struct Ctr {
    pod: LabPod,
    key: VolumeKey,
    strategy: Strategy,
    c: LabContainer,
}

struct Vol {
    pod: LabPod,
    key: VolumeKey,
    writer: AtomicWriter,
    written: u64,
}

/// The containers of each lab pod, on its ConfigMap volume: (name, strategy, subPath).
/// With the API, `hup` and `naive` are signalled at each swap (`api::SIGNALLED`).
const CONTAINERS: [(&str, Strategy, bool); 5] = [
    ("watcher", Strategy::DataDirWatcher, false),
    ("poller", Strategy::TimerPoller, false),
    ("naive", Strategy::NaiveModify, false),
    ("pinned", Strategy::TimerPoller, true),
    ("hup", Strategy::SighupReloader, false),
];

const VOLUMES: [(VolumeType, &str); 4] = [
    (VolumeType::ConfigMap, "app-config"),
    (VolumeType::Secret, "tls"),
    (VolumeType::Projected, "kube-api-access"),
    (VolumeType::DownwardApi, "podinfo"),
];

fn secs(s: f64, what: &str) -> anyhow::Result<Duration> {
    Duration::try_from_secs_f64(s)
        .map_err(|_| anyhow::anyhow!("--{what} {s}: not a duration in seconds"))
}

/// Runs the lab until Ctrl-C, SIGTERM or `--duration`. The node is unmounted and
/// removed on the way out, also on errors.
pub async fn run(args: LabArgs) -> anyhow::Result<()> {
    let interval = secs(args.interval, "interval")?;
    let resync = secs(args.resync, "resync")?;
    let duration = args.duration.map(|d| secs(d, "duration")).transpose()?;
    let mut node = match &args.base {
        Some(b) => LabNode::create(b),
        None => LabNode::temp(),
    }
    .context("creating the lab node (needs root for its tmpfs mounts)")?;
    let mut vols = Vec::new();
    let mut pods = Vec::new();
    for i in 0..args.pods {
        let pod = node.add_pod("lab", &format!("app-{i}"))?;
        if !args.no_api {
            let (ty, name) = api::FROZEN;
            let frozen = node.add_volume(&pod, ty, name)?;
            frozen.write(&payload(&[("config.yaml", "revision: 0")]), CallStyle::GoAt)?;
        }
        pods.push(pod.clone());
        for (ty, name) in VOLUMES {
            let writer = node.add_volume(&pod, ty, name)?;
            writer.write(&payload(&[("config.yaml", "revision: 0")]), CallStyle::GoAt)?;
            let key = VolumeKey {
                pod_uid: pod.uid.clone(),
                volume_type: ty,
                name: name.to_owned(),
            };
            vols.push(Vol {
                pod: pod.clone(),
                key,
                writer,
                written: 0,
            });
        }
    }
    let mut ctrs = Vec::new();
    if !args.no_containers {
        let bin = crate::lab_bin()?;
        for v in vols
            .iter()
            .filter(|v| v.key.volume_type == VolumeType::ConfigMap)
        {
            for (name, strategy, sub_path) in CONTAINERS {
                let spec = ContainerSpec {
                    sub_path,
                    ..ContainerSpec::new(name, v.writer.dir(), "config.yaml", strategy)
                };
                let c = LabContainer::start(&bin, &node, &v.pod, &spec)?;
                ctrs.push(Ctr {
                    pod: v.pod.clone(),
                    key: v.key.clone(),
                    strategy,
                    c,
                });
            }
        }
    }
    let mut cfg = super::agent_config(&node, !args.no_ebpf, args.listen);
    let mut lab_api = None;
    if !args.no_api {
        let mut volumes = VOLUMES.to_vec();
        volumes.push(api::FROZEN);
        let a = api::LabApi::start(node.base(), &pods, &volumes).await?;
        // Pending once three updates' time has passed; an Event for a container
        // stale for two (the lab's never-reloading ones, rate-limited).
        let at_least = |n: u32, min: u64| (interval * n).max(Duration::from_secs(min));
        cfg.kube = Some(a.settings(at_least(3, 3), at_least(2, 2)));
        cfg.reload_signals = true;
        lab_api = Some(a);
    }
    let running = agent::start(cfg).await?;
    eprintln!(
        "lab node at {}; agent on http://{}/metrics; {} volumes; Ctrl-C to stop",
        node.base().display(),
        running.addr,
        vols.len()
    );

    // Created once: a listener made anew each turn would miss a signal arriving between turns.
    use tokio::signal::unix::{SignalKind, signal};
    let (mut term, mut int) = (
        signal(SignalKind::terminate())?,
        signal(SignalKind::interrupt())?,
    );
    let started = Instant::now();
    let mut update = tokio::time::interval(interval);
    let mut reread = tokio::time::interval(resync);
    let mut draw = tokio::time::interval(Duration::from_secs(1));
    let mut next = 0usize;
    let result = loop {
        if duration.is_some_and(|d| started.elapsed() >= d) {
            break Ok(());
        }
        tokio::select! {
            _ = int.recv() => break Ok(()),
            _ = term.recv() => break Ok(()),
            _ = update.tick(), if !vols.is_empty() => {
                let n = vols.len();
                let v = &mut vols[next % n];
                next += 1;
                let body = format!("revision: {}", v.written + 1);
                if let Some(a) = lab_api.as_mut() {
                    // After the agent's first lists: a change they find is not timed.
                    let listed = next > 3 && running.shared.meta.state.lock().expect("meta lock").api_up;
                    let frozen = if listed { a.change_frozen(&pods) } else { Ok(()) };
                    let edited = frozen.and_then(|()| {
                        a.edit(&v.pod, v.key.volume_type, &v.key.name, &body)
                    });
                    if let Err(e) = edited {
                        break Err(e);
                    }
                }
                match v.writer.write(&payload(&[("config.yaml", &body)]), CallStyle::GoAt) {
                    Ok(_) => v.written += 1,
                    Err(e) => break Err(e.context("lab writer")),
                }
            }
            _ = reread.tick() => {
                for v in &vols {
                    if let Err(e) = v.writer.reread() {
                        eprintln!("re-read of {}: {e:#}", v.key);
                    }
                }
            }
            _ = draw.tick() => {
                let mut table = render(&running, &vols);
                if let Some(a) = &lab_api {
                    table.push_str(&render_api(&running, a));
                }
                table.push_str(&render_consumers(&running, &ctrs));
                if args.plain {
                    print!("{table}");
                } else {
                    print!("\x1b[2J\x1b[H{table}");
                }
                let _ = std::io::stdout().flush();
            }
        }
    };
    running.stop().await;
    for c in ctrs {
        c.c.stop().ok();
    }
    for v in &vols {
        node.remove_pod(&v.pod).ok();
    }
    drop(node);
    result
}

/// The API's line: its state as the agent sees it, propagations and Events.
fn render_api(running: &agent::Running, api: &api::LabApi) -> String {
    let meta = running.shared.meta.state.lock().expect("meta lock");
    let delays: u64 = meta.propagation.histograms().map(|(_, h)| h.count).sum();
    let pending = meta.propagation.pending_past(SystemTime::now()).len();
    format!(
        "api {} {}  pods {}  propagations {delays} measured, {pending} pending  events {}\n",
        api.url(),
        if meta.api_up { "up" } else { "down" },
        meta.pods.len(),
        api.events_posted()
    )
}

fn age(t: Option<SystemTime>) -> String {
    match t.and_then(|t| SystemTime::now().duration_since(t).ok()) {
        Some(d) => format!("{:.1}s ago", d.as_secs_f64()),
        None => "-".into(),
    }
}

/// The live table: one row a volume, as the agent's state (what /metrics renders) has it.
fn render(running: &agent::Running, vols: &[Vol]) -> String {
    let t = running.shared.tracker.lock().expect("tracker lock");
    let mut out = String::new();
    let ebpf = if running.shared.ebpf_loaded() {
        "loaded"
    } else {
        "off"
    };
    let _ = writeln!(
        out,
        "ebpf {ebpf}  detections ebpf={} inotify={}  gaps missed_by ebpf={} inotify={}",
        t.detections[Source::Ebpf as usize],
        t.detections[Source::Inotify as usize],
        t.gaps[Source::Ebpf as usize],
        t.gaps[Source::Inotify as usize],
    );
    let _ = writeln!(
        out,
        "{:<36} {:<13} {:>7} {:>7}  {:<12} SOURCE",
        "VOLUME", "TYPE", "WRITTEN", "UPDATES", "LAST UPDATE"
    );
    for v in vols {
        let (updates, last, by) = match t.volume(&v.key) {
            Some(s) => (s.updates.to_string(), age(s.last_update), s.last_seen_by),
            None => ("-".into(), "-".into(), [false; 2]),
        };
        let source: Vec<&str> = Source::ALL
            .iter()
            .filter(|s| by[**s as usize])
            .map(|s| s.label())
            .collect();
        let name = format!("{}/{}/{}", v.pod.namespace, v.pod.name, v.key.name);
        let _ = writeln!(
            out,
            "{name:<36} {:<13} {:>7} {updates:>7}  {last:<12} {}",
            v.key.volume_type.label(),
            v.written,
            source.join("+")
        );
    }
    out
}

/// The consumers table: per container, what the agent measured of its reloads.
fn render_consumers(running: &agent::Running, ctrs: &[Ctr]) -> String {
    if ctrs.is_empty() {
        return String::new();
    }
    let r = running.shared.reloads.lock().expect("reloads lock");
    let now = SystemTime::now();
    let mut out = String::new();
    let _ = writeln!(
        out,
        "\n{:<20} {:<12} {:<16} {:<8} {:>7} {:>12} {:>9}",
        "CONSUMER", "VOLUME", "STRATEGY", "MOUNT", "RELOADS", "LAST LATENCY", "STALE"
    );
    for c in ctrs {
        let name = format!("{}/{}", c.pod.name, c.c.name);
        let row = match r.consumer(&c.key, &c.c.id) {
            None => format!("{:<8} {:>7} {:>12} {:>9}", "-", "-", "-", "(not found yet)"),
            Some(s) => {
                let latency = s
                    .last_latency
                    .map_or("-".into(), |l| format!("{:.1} ms", l * 1e3));
                let stale = match s.mount {
                    reloadscope::reloads::MountKind::SubPath => "never".to_owned(),
                    _ => format!("{:.1}s", s.stale_seconds(now)),
                };
                format!(
                    "{:<8} {:>7} {latency:>12} {stale:>9}",
                    s.mount.label(),
                    s.latency.count
                )
            }
        };
        let _ = writeln!(
            out,
            "{name:<20} {:<12} {:<16} {row}",
            c.key.name,
            c.strategy.name()
        );
    }
    out
}
