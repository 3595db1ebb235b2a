//! Shared by the integration tests: a lab node with the real agent attached.

pub mod kube;
pub mod process;

use std::{
    net::SocketAddr,
    time::{Duration, Instant},
};

use reloadscope::agent::{self, Running};
use reloadscope_lab::{
    self, LabNode,
    scrape::{self, Samples},
};

/// Generous: under load these machines have 2 cores.
pub const DEADLINE: Duration = Duration::from_secs(15);

/// Starts the agent on `node` and waits for /readyz.
pub async fn start(node: &LabNode, ebpf: bool) -> Running {
    start_with(reloadscope_lab::agent_config(
        node,
        ebpf,
        SocketAddr::from(([127, 0, 0, 1], 0)),
    ))
    .await
}

/// Starts the agent with `cfg` and waits for /readyz.
pub async fn start_with(cfg: agent::Config) -> Running {
    // The agent runs in this process: swaps wait for its marks (reloadscope_lab::marks), unless
    // it runs on this very thread, where a waiting writer would stall it.
    let flavor = tokio::runtime::Handle::current().runtime_flavor();
    let threads = flavor == tokio::runtime::RuntimeFlavor::MultiThread;
    reloadscope_lab::SwapGate::wait_everywhere_for_marks_of(if threads {
        std::process::id()
    } else {
        0
    });
    let ebpf = cfg.ebpf;
    let running = agent::start(cfg).await.expect("agent starts");
    wait_ready(running.addr).await;
    if ebpf {
        assert!(running.shared.ebpf_loaded(), "the probe must load as root");
    }
    running
}

/// `reloadscope agent` on `node`, listening on `listen`, JSON logs on a piped stderr;
/// behind `wrapper` (such as `setpriv ... --`) when one is given. It dies with the
/// thread that spawns it.
pub fn agent_command(node: &LabNode, listen: &str, wrapper: &[&str]) -> std::process::Command {
    let bin = env!("CARGO_BIN_EXE_reloadscope");
    let mut cmd = match wrapper {
        [] => std::process::Command::new(bin),
        [program, args @ ..] => {
            let mut c = std::process::Command::new(program);
            c.args(args).arg(bin);
            c
        }
    };
    cmd.arg("agent")
        .arg("--kubelet-root")
        .arg(node.kubelet_root())
        .arg("--pod-logs-dir")
        .arg(node.pod_logs_dir())
        .arg("--container-logs-dir")
        .arg(node.container_logs_dir())
        .args(["--listen", listen, "--log-format", "json"])
        .stderr(std::process::Stdio::piped());
    // Killed when the thread that started it ends, so that a test that fails before
    // stopping it leaves no agent running on the machine.
    // SAFETY: prctl only, async-signal-safe, between fork and exec.
    unsafe {
        std::os::unix::process::CommandExt::pre_exec(&mut cmd, || {
            if libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL) != 0 {
                return Err(std::io::Error::last_os_error());
            }
            Ok(())
        });
    }
    cmd
}

pub async fn blocking<T: Send + 'static>(f: impl FnOnce() -> T + Send + 'static) -> T {
    tokio::task::spawn_blocking(f).await.expect("blocking task")
}

pub async fn metrics(addr: SocketAddr) -> Samples {
    blocking(move || scrape::scrape(addr))
        .await
        .expect("scrape")
}

/// A free loopback port, for an agent run as its own process.
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// Waits until the agent at `addr` answers /readyz with 200.
pub async fn wait_ready(addr: SocketAddr) {
    wait_for("/readyz", || async move {
        let (code, _) = blocking(move || scrape::get(addr, "/readyz")).await.ok()?;
        (code == 200).then_some(())
    })
    .await;
}

/// Polls `probe` until it answers, or panics naming `what` after [`DEADLINE`].
pub async fn wait_for<T, F, Fut>(what: &str, mut probe: F) -> T
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Option<T>>,
{
    let start = Instant::now();
    loop {
        if let Some(v) = probe().await {
            return v;
        }
        assert!(start.elapsed() < DEADLINE, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

/// Waits until the scraped metrics satisfy `cond`, and returns them.
/// On timeout the last scrape is printed, so the failure says what the agent saw.
pub async fn wait_metrics(
    addr: SocketAddr,
    what: &str,
    cond: impl Fn(&Samples) -> bool,
) -> Samples {
    let start = Instant::now();
    loop {
        let m = metrics(addr).await;
        if cond(&m) {
            return m;
        }
        if start.elapsed() >= DEADLINE {
            let body = match blocking(move || scrape::get(addr, "/metrics")).await {
                Ok((_, body)) => body,
                Err(e) => format!("reloadscope_ (the last scrape failed: {e})"),
            };
            let ours: Vec<&str> = body
                .lines()
                .filter(|l| l.starts_with("reloadscope_"))
                .collect();
            panic!(
                "timed out waiting for {what}; last scrape:\n{}",
                ours.join("\n")
            );
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

pub fn detections(m: &Samples, source: &str) -> f64 {
    m.sum("reloadscope_update_detections_total", &[("source", source)])
}

/// The fdinfo of every fd of this process that is the anonymous inode `kind`
/// (`inotify`, `[fanotify]`).
fn fdinfos(kind: &str) -> Vec<String> {
    reloadscope_lab::marks::fdinfos(std::process::id(), &format!("anon_inode:{kind}"))
}

/// The lines starting with `prefix` in [`fdinfos`] of `kind`.
fn fdinfo_lines(kind: &str, prefix: &str) -> Vec<String> {
    let infos = fdinfos(kind);
    let lines = infos.iter().flat_map(|i| i.lines());
    lines
        .filter(|l| l.starts_with(prefix))
        .map(str::to_owned)
        .collect()
}

/// The `inotify wd:` lines of every inotify fd of this process.
fn kernel_watch_lines() -> Vec<String> {
    fdinfo_lines("inotify", "inotify wd:")
}

pub fn kernel_inotify_watches() -> usize {
    kernel_watch_lines().len()
}

/// Whether this process holds an inotify watch on the inode `path` names now.
pub fn kernel_watches(path: &std::path::Path) -> bool {
    let Some(want) = reloadscope_lab::marks::fdinfo_inode(path) else {
        return false;
    };
    kernel_watch_lines().iter().any(|l| l.contains(&want))
}

/// fanotify groups this process holds.
pub fn fanotify_groups() -> usize {
    fdinfos("[fanotify]").len()
}

/// The inode mark this process's fanotify groups hold on the inode `path` names now:
/// masks 0 when there is none.
pub fn fanotify_mark(path: &std::path::Path) -> reloadscope_lab::marks::InodeMark {
    reloadscope_lab::marks::inode_mark(std::process::id(), path).unwrap_or_default()
}

/// Whether that mark ignores opens in the dir (`FAN_OPEN` in its ignored mask).
pub fn fanotify_ignores(path: &std::path::Path) -> bool {
    fanotify_mark(path).ignored_mask & libc::FAN_OPEN != 0
}

/// Whether that mark reports opens in the dir (`FAN_OPEN` in its mask, not ignored).
pub fn fanotify_marks(path: &std::path::Path) -> bool {
    let m = fanotify_mark(path);
    m.mask & libc::FAN_OPEN != 0 && m.ignored_mask & libc::FAN_OPEN == 0
}

/// A volume added to `pod` while the agent runs (its pod starting), its first data
/// (`KEY`: `content`) written, once the agent's fanotify mark is on that data.
pub async fn add_marked_volume(
    node: &mut LabNode,
    pod: &reloadscope_lab::LabPod,
    ty: reloadscope::node::volumes::VolumeType,
    name: &str,
    content: &str,
) -> reloadscope_lab::AtomicWriter {
    let w = node.add_volume(pod, ty, name).unwrap();
    let payload = reloadscope_lab::payload(&[(KEY, content)]);
    w.write(&payload, reloadscope_lab::CallStyle::GoAt).unwrap();
    let data = w.dir().join("..data");
    wait_for("the new volume's data marked", || {
        std::future::ready(fanotify_marks(&data).then_some(()))
    })
    .await;
    w
}

/// Mount marks in this process's fanotify groups (`fanotify mnt_id:` fdinfo lines).
pub fn fanotify_mount_marks() -> usize {
    let groups = reloadscope_lab::marks::fdinfos(std::process::id(), "anon_inode:[fanotify]");
    (groups.iter().flat_map(|g| g.lines()))
        .filter(|l| l.starts_with("fanotify mnt_id:"))
        .count()
}

static PANICS: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);

/// Panics in this process so far (any thread, the agent's tasks included); the first
/// call installs the counting hook, so call it before starting the agent.
pub fn panics() -> usize {
    static HOOK: std::sync::Once = std::sync::Once::new();
    HOOK.call_once(|| {
        let prev = std::panic::take_hook();
        std::panic::set_hook(Box::new(move |info| {
            PANICS.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
            prev(info)
        }));
    });
    PANICS.load(std::sync::atomic::Ordering::SeqCst)
}

static LOG: std::sync::Mutex<Vec<u8>> = std::sync::Mutex::new(Vec::new());

struct LogWriter;

impl std::io::Write for LogWriter {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        LOG.lock().unwrap().extend_from_slice(buf);
        Ok(buf.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

/// The log lines (JSON, as `--log-format json` writes them, level info) of the
/// in-process agent from the moment of [`Logs::capture`] on.
pub struct Logs(usize);

impl Logs {
    /// Installs the process's capturing subscriber on first use.
    pub fn capture() -> Logs {
        static INIT: std::sync::Once = std::sync::Once::new();
        INIT.call_once(|| {
            let _ = tracing_subscriber::fmt()
                .json()
                .flatten_event(true)
                .with_env_filter(tracing_subscriber::EnvFilter::new("info"))
                .with_writer(|| LogWriter)
                .try_init();
        });
        Logs(LOG.lock().unwrap().len())
    }

    pub fn lines(&self) -> Vec<String> {
        let log = LOG.lock().unwrap();
        String::from_utf8_lossy(&log[self.0..])
            .lines()
            .map(str::to_owned)
            .collect()
    }

    /// The WARN and ERROR lines.
    pub fn warnings(&self) -> Vec<String> {
        self.lines()
            .into_iter()
            .filter(|l| l.contains("\"level\":\"WARN\"") || l.contains("\"level\":\"ERROR\""))
            .collect()
    }
}

/// The inotify watches, as the kernel has them, of the one inotify instance of this
/// process that watches `dir` (given a kubelet `pods` dir: the agent's walker), or 0.
/// Unlike [`kernel_inotify_watches`], it does not move with the node's cgroups.
pub fn kernel_group_watches(dir: &std::path::Path) -> usize {
    let Some(want) = reloadscope_lab::marks::fdinfo_inode(dir) else {
        return 0;
    };
    for info in fdinfos("inotify") {
        let watches: Vec<&str> = info
            .lines()
            .filter(|l| l.starts_with("inotify wd:"))
            .collect();
        if watches.iter().any(|l| l.contains(&want)) {
            return watches.len();
        }
    }
    0
}

/// The file lab containers read, and the one a subPath container binds instead: a
/// subPath bind of `KEY` would pin the old file, and a file re-watcher of `KEY` in the
/// same pod would never see it deleted (README, limits).
pub const KEY: &str = "config.yaml";
pub const SUB_KEY: &str = "ca.crt";

/// A lab container on `w`'s volume running `strategy` on `KEY` (on `SUB_KEY`, bound
/// through subPath, when `sub_path`), re-reading every 300 ms where it polls.
pub fn lab_container(
    node: &LabNode,
    pod: &reloadscope_lab::LabPod,
    w: &reloadscope_lab::AtomicWriter,
    name: &str,
    strategy: reloadscope_lab::Strategy,
    sub_path: bool,
) -> reloadscope_lab::LabContainer {
    let key = if sub_path { SUB_KEY } else { KEY };
    let spec = reloadscope_lab::ContainerSpec {
        period: Duration::from_millis(300),
        sub_path,
        ..reloadscope_lab::ContainerSpec::new(name, w.dir(), key, strategy)
    };
    let bin = &reloadscope_lab::lab_bin().unwrap();
    reloadscope_lab::LabContainer::start(bin, node, pod, &spec).unwrap()
}

/// A lab node with one pod, `shop/web`, and one volume of it, written once (`KEY`:
/// `revision: 0`).
pub fn shop_volume(
    ty: reloadscope::node::volumes::VolumeType,
    name: &str,
) -> (
    LabNode,
    reloadscope_lab::LabPod,
    reloadscope_lab::AtomicWriter,
) {
    let mut node = LabNode::temp().unwrap();
    let pod = node.add_pod("shop", "web").unwrap();
    let w = node.add_volume(&pod, ty, name).unwrap();
    w.write(
        &reloadscope_lab::payload(&[(KEY, "revision: 0")]),
        reloadscope_lab::CallStyle::GoAt,
    )
    .unwrap();
    (node, pod, w)
}

/// `cat`s `KEY` of `w`'s volume from a host process, as the kubelet's sync re-reads it.
pub fn host_reread(w: &reloadscope_lab::AtomicWriter) {
    let status = std::process::Command::new("cat")
        .arg(w.dir().join(KEY))
        .stdout(std::process::Stdio::null())
        .status()
        .unwrap();
    assert!(status.success());
}

/// Asserts that `volume`'s last update is stamped at most 5 ms before the writer's
/// clock right after its rename returned (and not after it); returns the stamp.
pub fn assert_swap_stamped(m: &Samples, volume: &str, swapped_at: std::time::SystemTime) -> f64 {
    let swap = m
        .get(
            "reloadscope_volume_last_update_timestamp_seconds",
            &[("volume", volume)],
        )
        .unwrap();
    let writer = swapped_at
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs_f64();
    assert!(
        (writer - swap) < 0.005 && swap <= writer,
        "swap stamped {swap}, writer saw it at {swapped_at:?}"
    );
    swap
}
