//! The `reloadscope` command.

use std::{net::SocketAddr, path::PathBuf, process::ExitCode};

use clap::{Parser, Subcommand};
use reloadscope::{
    agent::{self, Config, defaults},
    logging::{LogFormat, init_logging},
};
use tracing::{error, info, warn};

/// Sees every ConfigMap, Secret, projected and downwardAPI volume update on a
/// Kubernetes node, at the moment of the kubelet's `..data` swap, and exports it as
/// Prometheus metrics.
#[derive(Parser)]
#[command(version, about, long_about = None)]
struct Cli {
    #[command(subcommand)]
    command: Command,
    /// Log line format.
    #[arg(long, global = true, value_enum, default_value_t = LogFormat::Text)]
    log_format: LogFormat,
    /// Log level, or a tracing filter such as `info,reloadscope::walker=debug`.
    #[arg(long, global = true, default_value = "info", env = "RELOADSCOPE_LOG")]
    log_level: String,
}

#[derive(Subcommand)]
enum Command {
    /// Run the node agent (the DaemonSet's main job).
    Agent(Box<AgentArgs>),
    /// Show every volume on this node, its consumers, its last update and, per
    /// consumer, reloaded / stale / subPath, with a hint for each problem. Works without
    /// the agent running.
    Inspect(reloadscope::inspect::InspectArgs),
}

#[derive(clap::Args)]
struct AgentArgs {
    /// Kubelet root directory; repeat for nodes with several (k3s, MicroK8s, k0s use
    /// other paths). Must be mounted at the same path the kubelet uses.
    #[arg(
        long = "kubelet-root",
        value_name = "DIR",
        default_value = defaults::KUBELET_ROOT
    )]
    kubelet_roots: Vec<PathBuf>,
    /// Pod log directory, `<namespace>_<pod>_<uid>/` entries: gives pod names.
    #[arg(long, value_name = "DIR", default_value = defaults::POD_LOGS_DIR)]
    pod_logs_dir: PathBuf,
    /// Container log directory, `<pod>_<namespace>_<container>-<id>.log` entries: gives
    /// container names (for consumer tracking; swap detection does not read it).
    #[arg(long, value_name = "DIR", default_value = defaults::CONTAINER_LOGS_DIR)]
    container_logs_dir: PathBuf,
    /// Where the host's /proc is mounted (the node's, not the container's).
    #[arg(long, value_name = "DIR", default_value = defaults::PROC_ROOT)]
    proc_root: PathBuf,
    /// Address for /metrics, /healthz and /readyz.
    #[arg(long, value_name = "ADDR", default_value = defaults::LISTEN)]
    listen: SocketAddr,
    /// Do not load the eBPF probe; detect updates with inotify alone (as --probe off).
    #[arg(long)]
    no_ebpf: bool,
    /// The eBPF probe variant: fentry (fentry/fexit on the syscalls' functions: only
    /// the hooked calls pay; needs BTF, x86_64), tracepoint (syscall tracepoints: every
    /// syscall on the node takes the slow path), auto (fentry, else tracepoint, else
    /// none), off (inotify alone).
    #[arg(long, value_enum, value_name = "VARIANT", default_value_t = defaults::PROBE)]
    probe: reloadscope::probe::Choice,
    /// Detect updates only: no fanotify group, no /proc scans, no reload metrics.
    /// Needs no CAP_SYS_ADMIN and costs openers of volume files nothing.
    #[arg(long)]
    no_reloads: bool,
    /// Signal the containers of pods annotated reloadscope.dev/reload-signal (e.g.
    /// SIGHUP) at the kubelet's swap of a volume they consume, once per update. Needs
    /// the Kubernetes API (the annotations) and CAP_KILL.
    #[arg(long, conflicts_with = "no_reloads")]
    reload_signals: bool,
    /// What becomes of a volume's fanotify marks once every consumer has its data:
    /// ignore (an ignore mask; every reload is seen, and each open of the volume's files
    /// costs its opener about 0.5 us more), remove (no cost between updates; a reload
    /// made in the microseconds before the next data dir is marked is seen only at the
    /// consumer's next open, or in the files it holds open), or auto (ignore on the
    /// volumes a consumer watches with inotify, remove on the others). Measured in
    /// BENCHMARKS.md.
    #[arg(long, value_enum, value_name = "WHAT", default_value_t = defaults::SETTLED_MARKS)]
    settled_marks: reloadscope::opens::SettledMarks,
    /// Forward the kernel programs' own log lines (a full ring buffer or in-flight map,
    /// an unreadable path: counted in any case) to this log. Off, the verifier drops
    /// their logging code.
    #[arg(long)]
    kernel_log: bool,
    /// Size of the probe's ring buffer in bytes (a power of two, at least the page size).
    #[arg(long, value_name = "BYTES", default_value_t = defaults::RING_BYTES, hide = true)]
    ring_bytes: u32,
    /// Labels the reload latency histogram keeps, of those --metric-labels keeps.
    /// Consumers sharing the kept labels share one histogram (26 series): by default a
    /// workload's replicas; add `pod` for one per container, drop `container` for
    /// fewer.
    #[arg(
        long,
        value_delimiter = ',',
        default_value = defaults::HISTOGRAM_LABELS
    )]
    histogram_labels: Vec<String>,
    /// File where pending reload measurements are checkpointed (every 10 s and at
    /// shutdown, written atomically), so an agent restart or upgrade loses none. Put it
    /// on a hostPath that outlives the pod.
    #[arg(long, value_name = "FILE")]
    state_file: Option<PathBuf>,
    /// Seconds a container has, after an update removed its inotify watch on a file,
    /// to add one again before it is reported `not_rewatched`.
    #[arg(long, value_name = "SECONDS", default_value_t = defaults::REWATCH_GRACE_SECONDS, value_parser = seconds)]
    rewatch_grace: f64,
    #[command(flatten)]
    kube: KubeArgs,
    #[command(flatten)]
    labels: LabelArgs,
}

/// The Kubernetes API: optional, names volumes' sources and pods' workloads and
/// measures propagation delay.
#[derive(clap::Args)]
#[command(next_help_heading = "Kubernetes API")]
struct KubeArgs {
    /// A kubeconfig file. Without it: the in-cluster config when running in a pod,
    /// else $KUBECONFIG; with neither the agent runs on on-node names alone.
    #[arg(long, value_name = "FILE")]
    kubeconfig: Option<PathBuf>,
    /// Do not use the Kubernetes API even where one is configured.
    #[arg(long, conflicts_with = "kubeconfig")]
    no_kube: bool,
    /// This node's name (the pods watched are those with this spec.nodeName). Default:
    /// the host name.
    #[arg(long, value_name = "NAME", env = "NODE_NAME")]
    node_name: Option<String>,
    /// A ConfigMap or Secret change seen on the API and not swapped on this node within
    /// this time is reported pending (reloadscope_propagation_pending).
    #[arg(long, value_name = "SECONDS", default_value_t = defaults::PROPAGATION_TIMEOUT_SECONDS, value_parser = seconds)]
    propagation_timeout: f64,
    /// Post a `StaleVolumeReload` Event on a pod whose container stays stale past
    /// --stale-after (rate-limited). Needs RBAC to create events.
    #[arg(long)]
    emit_events: bool,
    /// How long a container may stay stale before an Event is posted.
    #[arg(long, value_name = "SECONDS", default_value_t = defaults::STALE_AFTER_SECONDS, value_parser = seconds)]
    stale_after: f64,
}

/// Label and cardinality controls.
#[derive(clap::Args)]
#[command(next_help_heading = "Labels and series")]
struct LabelArgs {
    /// Labels the per-consumer metrics keep, of namespace, workload, pod, container,
    /// volume. Consumers sharing the kept labels share a series.
    #[arg(
        long,
        value_delimiter = ',',
        default_value = defaults::CONSUMER_LABELS
    )]
    metric_labels: Vec<String>,
    /// Export only these namespaces (comma-separated); default: all.
    #[arg(long, value_delimiter = ',', value_name = "NS")]
    namespaces: Vec<String>,
    /// Never export these namespaces (comma-separated).
    #[arg(long, value_delimiter = ',', value_name = "NS")]
    exclude_namespaces: Vec<String>,
    /// Never export volumes whose name matches, e.g. 'kube-api-access-.*' (the
    /// kubelet rewrites those about every 48 minutes). Matched against the whole name.
    #[arg(long, value_name = "REGEX", value_parser = whole_regex)]
    exclude_volumes: Option<regex::Regex>,
}

/// A regex matched against a whole name.
fn whole_regex(s: &str) -> Result<regex::Regex, String> {
    regex::Regex::new(&format!("^(?:{s})$")).map_err(|e| format!("{s:?}: {e}"))
}

impl KubeArgs {
    /// The API settings, or None when no API is configured (or --no-kube).
    fn settings(self, namespaces: &[String]) -> Option<reloadscope::kubeapi::Settings> {
        let configured = self.kubeconfig.is_some()
            || std::env::var_os("KUBERNETES_SERVICE_HOST").is_some()
            || std::env::var_os("KUBECONFIG").is_some();
        if self.no_kube || !configured {
            info!("no Kubernetes API configured: volumes and pods keep their on-node names");
            return None;
        }
        let node_name = self.node_name.unwrap_or_else(|| {
            let host = nix::unistd::gethostname()
                .map(|h| h.to_string_lossy().to_lowercase())
                .unwrap_or_default();
            info!(node = %host, "--node-name not set: using the host name");
            host
        });
        Some(reloadscope::kubeapi::Settings {
            kubeconfig: self.kubeconfig,
            node_name,
            propagation_timeout: std::time::Duration::from_secs_f64(self.propagation_timeout),
            emit_events: self.emit_events,
            stale_after: std::time::Duration::from_secs_f64(self.stale_after),
            namespaces: namespaces.to_vec(),
        })
    }
}

impl LabelArgs {
    fn controls(self) -> anyhow::Result<reloadscope::metrics::LabelControls> {
        use reloadscope::metrics::CONSUMER_LABELS;
        if let Some(bad) = self
            .metric_labels
            .iter()
            .find(|l| !CONSUMER_LABELS.contains(&l.as_str()))
        {
            anyhow::bail!(
                "--metric-labels: unknown label {bad:?}: choose from {}",
                CONSUMER_LABELS.join(", ")
            );
        }
        Ok(reloadscope::metrics::LabelControls {
            consumer: self.metric_labels,
            namespaces: self.namespaces,
            exclude_namespaces: self.exclude_namespaces,
            exclude_volumes: self.exclude_volumes,
        })
    }
}

/// A non-negative, finite number of seconds.
fn seconds(s: &str) -> Result<f64, String> {
    match s.parse::<f64>() {
        Ok(v) if v.is_finite() && v >= 0.0 => Ok(v),
        _ => Err(format!("{s:?} is not a number of seconds (0 or more)")),
    }
}

/// What the command line names that cannot work: said before anything starts, and
/// the agent exits with 2. Paths that may appear later (a kubelet root, the log dirs)
/// are only warned about; those that exist must be directories, a state file must be
/// writable where it is named, a kubeconfig must be a file.
fn check(args: &AgentArgs) -> Result<(), String> {
    use std::io::ErrorKind::NotFound;
    let dir = |flag: &str, path: &std::path::Path, may_appear: bool| match std::fs::metadata(path) {
        Ok(m) if m.is_dir() => Ok(()),
        Ok(_) => Err(format!("{flag} {}: not a directory", path.display())),
        Err(e) if e.kind() == NotFound && may_appear => Ok(()),
        Err(e) => Err(format!("{flag} {}: {e}", path.display())),
    };
    for root in &args.kubelet_roots {
        dir("--kubelet-root", root, true)?;
    }
    dir("--pod-logs-dir", &args.pod_logs_dir, true)?;
    dir("--container-logs-dir", &args.container_logs_dir, true)?;
    dir("--proc-root", &args.proc_root, false)?;
    if let Some(path) = &args.state_file {
        reloadscope::checkpoint::check_writable(path).map_err(|e| {
            format!(
                "--state-file {}: cannot write a file there: {e}",
                path.display()
            )
        })?;
    }
    if let Some(path) = &args.kube.kubeconfig {
        match std::fs::metadata(path) {
            Ok(m) if m.is_file() => {}
            Ok(_) => return Err(format!("--kubeconfig {}: not a file", path.display())),
            Err(e) => return Err(format!("--kubeconfig {}: {e}", path.display())),
        }
    }
    reloadscope::metrics::histogram_labels(&args.histogram_labels)
        .map_err(|e| format!("--histogram-labels: {e}"))?;
    if let Some(bad) = (args.labels.metric_labels.iter())
        .find(|l| !reloadscope::metrics::CONSUMER_LABELS.contains(&l.as_str()))
    {
        return Err(format!(
            "--metric-labels: unknown label {bad:?}: choose from {}",
            reloadscope::metrics::CONSUMER_LABELS.join(", ")
        ));
    }
    Ok(())
}

/// Warns once for each directory the agent reads that is not there yet: followed
/// (the kubelet root, the pod logs) or read (the container logs) once it appears.
fn warn_missing(args: &AgentArgs) {
    let missing = |p: &std::path::Path| !p.exists();
    if missing(&args.pod_logs_dir) {
        warn!(
            dir = %args.pod_logs_dir.display(),
            "--pod-logs-dir does not exist: pods are named by their uid until it appears"
        );
    }
    if !args.no_reloads && missing(&args.container_logs_dir) {
        warn!(
            dir = %args.container_logs_dir.display(),
            "--container-logs-dir does not exist: containers are named by their id until it appears"
        );
    }
}

/// The agent's configuration from its flags.
fn config(args: AgentArgs) -> anyhow::Result<Config> {
    Ok(Config {
        kubelet_roots: args.kubelet_roots,
        pod_logs_dir: args.pod_logs_dir,
        container_logs_dir: args.container_logs_dir,
        proc_root: args.proc_root,
        listen: args.listen,
        ebpf: !args.no_ebpf,
        probe: args.probe,
        reloads: !args.no_reloads,
        settled_marks: args.settled_marks,
        ring_bytes: args.ring_bytes,
        kernel_log: args.kernel_log,
        histogram_labels: args.histogram_labels,
        state_file: args.state_file,
        rescan: None,
        rewatch_grace: std::time::Duration::from_secs_f64(args.rewatch_grace),
        kube: args.kube.settings(&args.labels.namespaces),
        labels: args.labels.controls()?,
        reload_signals: args.reload_signals,
    })
}

async fn run_agent(args: AgentArgs) -> anyhow::Result<()> {
    let cfg = config(args)?;
    // Before anything can report readiness: a SIGTERM right after must stop us cleanly.
    use tokio::signal::unix::{SignalKind, signal};
    let (mut term, mut int) = (
        signal(SignalKind::terminate())?,
        signal(SignalKind::interrupt())?,
    );
    let running = agent::start(cfg).await?;
    tokio::select! {
        _ = term.recv() => info!("SIGTERM: shutting down"),
        _ = int.recv() => info!("interrupted: shutting down"),
    }
    running.stop().await;
    Ok(())
}

fn main() -> ExitCode {
    reloadscope::memory::configure();
    let cli = Cli::parse();
    if let Err(e) = init_logging(cli.log_format, &cli.log_level) {
        eprintln!("reloadscope: {e:#}");
        return ExitCode::from(2);
    }
    let args = match cli.command {
        // One-shot and synchronous: no runtime needed.
        Command::Inspect(args) => {
            return match reloadscope::inspect::run(args) {
                Ok(()) => ExitCode::SUCCESS,
                Err(e) => {
                    error!("{e:#}");
                    ExitCode::FAILURE
                }
            };
        }
        Command::Agent(args) => *args,
    };
    if let Err(e) = check(&args) {
        error!("{e}");
        return ExitCode::from(2);
    }
    warn_missing(&args);
    let rt = match tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            error!("cannot start the runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    let result = rt.block_on(run_agent(args));
    // Blocking work still running (a consumer scan of a big node, a render) is not
    // waited for: the agent has stopped, its state is saved.
    rt.shutdown_timeout(std::time::Duration::from_millis(100));
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            error!("{e:#}");
            ExitCode::FAILURE
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// `reloadscope agent` without flags is [`Config::node_defaults`]: one source of
    /// defaults for both.
    #[test]
    fn no_flags_is_the_node_defaults() {
        let cli = Cli::try_parse_from(["reloadscope", "agent", "--no-kube"]).unwrap();
        let Command::Agent(args) = cli.command else {
            panic!("not the agent command");
        };
        let (got, want) = (config(*args).unwrap(), Config::node_defaults());
        assert_eq!(got.kubelet_roots, want.kubelet_roots);
        assert_eq!(got.pod_logs_dir, want.pod_logs_dir);
        assert_eq!(got.container_logs_dir, want.container_logs_dir);
        assert_eq!(got.proc_root, want.proc_root);
        assert_eq!(got.listen, want.listen);
        assert_eq!(
            (got.ebpf, got.probe, got.reloads),
            (want.ebpf, want.probe, want.reloads)
        );
        assert_eq!(got.settled_marks, want.settled_marks);
        assert_eq!(got.ring_bytes, want.ring_bytes);
        assert_eq!(got.histogram_labels, want.histogram_labels);
        assert_eq!(got.rewatch_grace, want.rewatch_grace);
        assert_eq!(got.state_file, want.state_file);
        assert!(got.kube.is_none());
        assert_eq!(got.labels.consumer, want.labels.consumer);
    }
}
