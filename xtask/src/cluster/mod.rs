//! `cargo xtask cluster up|down|status`: a real single-node Kubernetes on this
//! machine, built only from Debian's packages, for trying the agent by hand and for
//! the real-node end-to-end test (`cargo xtask e2e --cluster`).
//!
//! Kubernetes v1.20.2 (Debian bookworm's `kubernetes` source package, the only
//! complete Kubernetes source Debian ships) is built once into `target/cluster/`
//! ([`build`]); etcd, containerd, runc and the CNI plugins are Debian's binaries.
//! Everything listens on loopback or on the node's own bridge ([`net`]): the API
//! server on the bridge's address, which the pods reach through the `kubernetes`
//! Service (kube-proxy, iptables mode) and the host reaches as one of its own
//! addresses. Pods get an address on that bridge and a route to the Service range
//! only, no default route: no pod traffic can leave the machine.
//!
//! `up` records every process it starts by pid and start time ([`daemons`]); `down`
//! stops exactly those, then removes every container, mount, cgroup, network rule
//! and directory the node made ([`teardown`]). The build cache stays.

mod build;
mod daemons;
mod files;
mod net;
mod pki;
mod teardown;

use std::fs;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};

use crate::cmd;

pub use build::Binaries;
pub use build::VERSION as KUBERNETES_VERSION;

/// Where the running node keeps its state (certificates, configuration, etcd,
/// containerd, logs, sockets, pid records); `down` removes it.
pub const STATE: &str = "/var/lib/reloadscope-cluster";
/// The node's name. `localhost` resolves to 127.0.0.1 on every machine, so the API
/// server reaches the kubelet on loopback (`--kubelet-preferred-address-types=Hostname`):
/// the kubelet refuses a loopback node IP, and its InternalIP is another interface's.
pub const NODE: &str = "localhost";
/// The kubelet's root and log dirs: the paths the shipped DaemonSet mounts.
pub const KUBELET_ROOT: &str = "/var/lib/kubelet";
pub const POD_LOGS: &str = "/var/log/pods";
pub const CONTAINER_LOGS: &str = "/var/log/containers";
/// How often the kubelet syncs each pod, and so writes changed ConfigMaps and
/// Secrets to its volumes (the kubelet's default is 1 min, plus up to 50 % jitter).
pub const SYNC_FREQUENCY: &str = "10s";

/// The node's files under [`STATE`].
#[derive(Clone, Debug)]
pub struct Layout {
    pub state: PathBuf,
}

impl Layout {
    pub fn new() -> Self {
        Self {
            state: PathBuf::from(STATE),
        }
    }

    pub fn pki(&self) -> PathBuf {
        self.state.join("pki")
    }
    pub fn etc(&self) -> PathBuf {
        self.state.join("etc")
    }
    pub fn logs(&self) -> PathBuf {
        self.state.join("logs")
    }
    /// Sockets and pid records.
    pub fn run(&self) -> PathBuf {
        self.state.join("run")
    }
    pub fn containerd_socket(&self) -> PathBuf {
        self.run().join("containerd.sock")
    }
    /// A kubeconfig with cluster-admin rights, for kubectl.
    pub fn admin_kubeconfig(&self) -> PathBuf {
        self.state.join("admin.kubeconfig")
    }
    /// The API server's audit log: every request any client made, with its verb and
    /// resource (metadata level: never a request's or response's body).
    pub fn audit_log(&self) -> PathBuf {
        self.logs().join("audit.log")
    }
}

/// The node's processes, in start order; `down` stops them in reverse, the
/// kubelet first.
const DAEMONS: &[&str] = &[
    "etcd",
    "containerd",
    "kube-apiserver",
    "kube-controller-manager",
    "kube-scheduler",
    "kube-proxy",
    "kubelet",
];

#[derive(clap::Subcommand, Debug)]
pub enum Action {
    /// Build Kubernetes if needed (once, into target/cluster/), then start the node
    ///
    /// Installs the Debian packages the node needs (golang-go, etcd-server,
    /// containerd, runc, containernetworking-plugins, iptables, conntrack,
    /// openssl, gcc), fetches Debian's `kubernetes` source package, builds
    /// kube-apiserver, kube-controller-manager, kube-scheduler, kube-proxy,
    /// kubelet and the pause binary, then starts etcd, containerd, the control
    /// plane, kube-proxy and the kubelet, and waits until node `localhost` is
    /// Ready. Then builds the agent's image from the working tree (`cargo xtask
    /// image`) and imports it into the node's containerd, under the tag deploy/
    /// names. Starts nothing if the node is already up (the images are imported
    /// again). On failure it prints the failing process's last log lines and
    /// removes what it started. Then:
    ///   export KUBECONFIG=/var/lib/reloadscope-cluster/admin.kubeconfig
    ///   kubectl apply -k deploy/
    #[command(verbatim_doc_comment)]
    Up,
    /// Stop every process `up` started and remove the node's containers, mounts,
    /// cgroups, network rules and state (the build cache in target/ stays)
    Down,
    /// Which of the node's processes run, and the node's and pods' state
    Status,
}

pub fn run(action: Action) -> Result<()> {
    if !cmd::is_root() {
        bail!(
            "`cargo xtask cluster` needs root: it starts a kubelet, containerd and iptables rules"
        );
    }
    let layout = Layout::new();
    match action {
        Action::Up => {
            up(&layout)?;
            import_project_images(&layout)
        }
        Action::Down => down(&layout),
        Action::Status => status(&layout),
    }
}

/// Whether every process of the node runs.
pub fn is_up(layout: &Layout) -> bool {
    DAEMONS
        .iter()
        .all(|name| daemons::running(layout, name).is_some())
}

/// Builds what is missing and starts the node, or returns at once when it is up.
/// On failure, everything started is stopped again.
pub fn up(layout: &Layout) -> Result<Binaries> {
    build::ensure_packages()?;
    let bins = build::ensure()?;
    if is_up(layout) {
        println!("cluster: already up");
        return Ok(bins);
    }
    if layout.state.exists() {
        // A node half up, or left by a killed `up` or `down`: start from nothing.
        println!("cluster: removing the remains of an earlier node");
        teardown::all(layout, &bins)?;
    } else if Path::new(KUBELET_ROOT).exists() {
        bail!(
            "{KUBELET_ROOT} exists but was not made by `cargo xtask cluster up`: another \
             kubelet may use this machine; refusing to start a second one"
        );
    }
    let started = Instant::now();
    match start(layout, &bins) {
        Ok(()) => {
            println!(
                "cluster: node {NODE} Ready in {:.1} s\n\
                 export KUBECONFIG={}",
                started.elapsed().as_secs_f64(),
                layout.admin_kubeconfig().display()
            );
            Ok(bins)
        }
        Err(err) => {
            eprintln!("cluster: up failed: {err:#}");
            print_log_tails(layout, 20);
            teardown::all(layout, &bins).context("and removing what it started failed too")?;
            Err(err)
        }
    }
}

fn start(layout: &Layout, bins: &Binaries) -> Result<()> {
    for dir in [layout.pki(), layout.etc(), layout.logs(), layout.run()] {
        fs::create_dir_all(&dir).with_context(|| format!("could not create {}", dir.display()))?;
    }
    teardown::record_before(layout)?;
    let tokens = pki::write(layout)?;
    files::write(layout, &tokens)?;
    net::up(layout)?;

    let step = |name: &str, what: &str, timeout: u64, ready: &dyn Fn() -> Result<(), String>| {
        let t = Instant::now();
        let daemon = daemons::spec(layout, bins, name);
        daemon.start(layout)?;
        wait(layout, name, what, Duration::from_secs(timeout), ready)?;
        println!("cluster: {name} up ({:.1} s)", t.elapsed().as_secs_f64());
        Ok::<(), anyhow::Error>(())
    };
    step("etcd", "etcd to answer /health", 30, &|| {
        http_ok("http://127.0.0.1:2379/health")
    })?;
    step("containerd", "containerd to answer", 30, &|| {
        ctr(layout, &["version"]).map(drop)
    })?;
    import_image(layout, &bins.pause_image)?;
    step("kube-apiserver", "the API server's /readyz", 90, &|| {
        kubectl(layout, &["get", "--raw", "/readyz"]).map(drop)
    })?;
    step(
        "kube-controller-manager",
        "the default ServiceAccount and kube-root-ca.crt",
        90,
        &|| {
            kubectl(layout, &["-n", "default", "get", "serviceaccount/default"])?;
            kubectl(
                layout,
                &["-n", "default", "get", "configmap/kube-root-ca.crt"],
            )
            .map(drop)
        },
    )?;
    step(
        "kube-scheduler",
        "the scheduler to hold its port",
        60,
        &|| tcp_listening("127.0.0.1:10259"),
    )?;
    step("kube-proxy", "kube-proxy's /healthz", 60, &|| {
        http_ok("http://127.0.0.1:10256/healthz")
    })?;
    step("kubelet", "node localhost to be Ready", 120, &|| {
        let ready = kubectl(
            layout,
            &[
                "get",
                "node",
                NODE,
                "-o",
                "jsonpath={.status.conditions[?(@.type==\"Ready\")].status}",
            ],
        )?;
        if ready.trim() == "True" {
            Ok(())
        } else {
            Err(format!("Ready={ready:?}"))
        }
    })?;
    Ok(())
}

/// Stops the node and removes everything it made.
pub fn down(layout: &Layout) -> Result<()> {
    build::ensure_packages()?;
    let bins = build::Binaries::at(&build::bin_dir());
    if !layout.state.exists() {
        println!("cluster: not up");
        return Ok(());
    }
    let t = Instant::now();
    teardown::all(layout, &bins)?;
    println!("cluster: down ({:.1} s)", t.elapsed().as_secs_f64());
    Ok(())
}

fn status(layout: &Layout) -> Result<()> {
    if !layout.state.exists() {
        println!("cluster: not up");
        return Ok(());
    }
    for name in DAEMONS {
        match daemons::running(layout, name) {
            Some(pid) => println!("{name:<24} running (pid {pid})"),
            None => println!("{name:<24} not running"),
        }
    }
    for args in [
        &["get", "nodes", "-o", "wide"][..],
        &["get", "pods", "-A", "-o", "wide"][..],
    ] {
        match kubectl(layout, args) {
            Ok(out) => print!("{out}"),
            Err(err) => println!("kubectl {}: {err}", args.join(" ")),
        }
    }
    println!("export KUBECONFIG={}", layout.admin_kubeconfig().display());
    Ok(())
}

/// Waits for `ready`, failing early with the log's tail if the daemon exits.
fn wait(
    layout: &Layout,
    name: &str,
    what: &str,
    timeout: Duration,
    ready: &dyn Fn() -> Result<(), String>,
) -> Result<()> {
    let deadline = Instant::now() + timeout;
    loop {
        if daemons::running(layout, name).is_none() {
            bail!("{name} exited while waiting for {what}");
        }
        match ready() {
            Ok(()) => return Ok(()),
            Err(seen) if Instant::now() >= deadline => {
                bail!("timed out after {timeout:?} waiting for {what}; last seen: {seen}")
            }
            Err(_) => std::thread::sleep(Duration::from_millis(200)),
        }
    }
}

/// Prints the last lines of every daemon's log.
pub fn print_log_tails(layout: &Layout, lines: usize) {
    for name in DAEMONS {
        let log = layout.logs().join(format!("{name}.log"));
        if let Ok(text) = fs::read_to_string(&log) {
            let all: Vec<&str> = text.lines().collect();
            eprintln!(
                "--- last lines of {}:\n{}",
                log.display(),
                all[all.len().saturating_sub(lines)..].join("\n")
            );
        }
    }
}

/// `kubectl` as cluster admin: its stdout, or what it said on failure.
pub fn kubectl(layout: &Layout, args: &[&str]) -> Result<String, String> {
    output(
        Command::new("kubectl")
            .arg("--kubeconfig")
            .arg(layout.admin_kubeconfig())
            .args(["--request-timeout", "10s"])
            .args(args),
    )
}

/// `ctr` on the node's containerd, in the namespace the kubelet uses.
pub fn ctr(layout: &Layout, args: &[&str]) -> Result<String, String> {
    output(
        Command::new("ctr")
            .arg("--address")
            .arg(layout.containerd_socket())
            .args(["--namespace", "k8s.io"])
            .args(args),
    )
}

/// Builds the agent's and the test consumer's images from the working tree
/// (`cargo xtask image`) and imports them into the node's containerd, where
/// `kubectl apply -k deploy/` finds the agent's by the tag deploy/ names.
pub fn import_project_images(layout: &Layout) -> Result<()> {
    let t = Instant::now();
    let images = crate::image::build_all()?;
    for archive in [&images.agent, &images.consumer] {
        import_image(layout, archive)?;
    }
    println!(
        "cluster: the agent's and the test consumer's images imported ({:.0} s)",
        t.elapsed().as_secs_f64()
    );
    Ok(())
}

/// Imports an image archive (docker-archive or OCI) into the node's containerd.
pub fn import_image(layout: &Layout, archive: &Path) -> Result<()> {
    let archive = archive
        .to_str()
        .with_context(|| format!("{} is not UTF-8", archive.display()))?;
    ctr(layout, &["images", "import", archive])
        .map(drop)
        .map_err(|e| anyhow::anyhow!("could not import {archive}: {e}"))
}

fn output(cmd: &mut Command) -> Result<String, String> {
    let out = cmd
        .output()
        .map_err(|e| format!("could not run `{}`: {e}", cmd::display(cmd)))?;
    if out.status.success() {
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    } else {
        Err(format!(
            "`{}`: {}: {}",
            cmd::display(cmd),
            out.status,
            String::from_utf8_lossy(&out.stderr).trim()
        ))
    }
}

fn http_ok(url: &str) -> Result<(), String> {
    let agent = ureq::Agent::new_with_config(
        ureq::Agent::config_builder()
            .proxy(None)
            .timeout_global(Some(Duration::from_secs(2)))
            .build(),
    );
    agent.get(url).call().map(drop).map_err(|e| e.to_string())
}

fn tcp_listening(addr: &str) -> Result<(), String> {
    let addr = addr.parse().map_err(|e| format!("{addr}: {e}"))?;
    std::net::TcpStream::connect_timeout(&addr, Duration::from_secs(1))
        .map(drop)
        .map_err(|e| e.to_string())
}

impl Default for Layout {
    fn default() -> Self {
        Self::new()
    }
}
