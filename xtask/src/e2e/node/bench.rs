//! `cargo xtask bench cluster`: the agent as users deploy it (`kubectl apply -k
//! deploy/`: in its pod, under its CPU limit) on the real node of `cargo xtask
//! cluster`, once per `--settled-marks` mode, judged against the kubelet's own swaps
//! and the containers' own logs of their reads.
//!
//! Per mode: a kustomization of its own that takes the workspace's deploy/ and adds
//! only `--settled-marks <mode>` to the agent's args; one bench pod of the test
//! consumer image ([`CONSUMERS`]), left alone until the agent's first-read window
//! after its volumes appeared is over (before that every mode keeps the volumes
//! marked); then updates made one at a time by patching the ConfigMap or the Secret
//! (in turn) through the API, each waited for: the kubelet writes it at the pod's
//! next sync (every 10 s on this node). Each update is judged from the host: the
//! kubelet's data dir and `..data` symlink (birth and modification times), the
//! agent's /metrics read from its pod (polled from the moment inotify reports the
//! swap to this process), and each container's log of its opens.

mod host;
mod manifests;
mod report;

use std::ffi::{CString, OsString};
use std::fs;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::os::unix::ffi::OsStrExt;
use std::path::{Component, Path, PathBuf};
use std::thread::sleep;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail, ensure};
use clap::Parser;

use super::checks::on_disk;
use super::{AGENT_NAMESPACE, AGENT_SELECTOR, RELOAD_TOLERANCE, apply_stdin, now, pod_ready_ip};
use crate::cluster::{self, Layout};
use crate::e2e::api::Api;
use crate::e2e::podlogs;
use crate::e2e::procs::{TempDir, wait_for};
use crate::e2e::workloads::{CONSUMER_IMAGE, head_hex};
use crate::{cmd, image};
use host::{DataSwaps, KubeletTrace, Marks, agent_pid, cpu_stat, marks, realtime_offset};
use manifests::{kustomization_yaml, manifests, relative};

/// The bench pod's namespace; removed after each mode.
const NAMESPACE: &str = "reloadscope-bench";
/// How long after its volume's swap a consumer's reload may be credited before it
/// counts as missed: the poller reads every second, the watchers within ms.
const CREDIT_WAIT: Duration = Duration::from_secs(5);
/// The agent's first-read window (`reloads::FIRST_READ_WINDOW`): a volume that
/// appeared while the agent runs keeps its opens reported that long, whatever
/// `--settled-marks` says; the updates start after it, and a margin.
const FIRST_READ_WINDOW: Duration = Duration::from_secs(125);

#[derive(clap::ValueEnum, Clone, Copy, Debug, PartialEq, Eq)]
pub enum Mode {
    Auto,
    Ignore,
    Remove,
}

impl Mode {
    pub fn name(self) -> &'static str {
        match self {
            Mode::Auto => "auto",
            Mode::Ignore => "ignore",
            Mode::Remove => "remove",
        }
    }
}

/// The agent on the real node, once per `--settled-marks` mode: the kubelet's swap
/// window as the agent sees it, late marks, detection and reload latencies, and the
/// reloads each mode misses. Brings the node up (or uses the one that is up), deploys
/// the agent with `kubectl apply -k` of deploy/ plus `--settled-marks <mode>`, runs
/// a bench pod, patches its ConfigMap and Secret in turn; prints Markdown.
#[derive(Parser, Debug)]
#[command(name = "cargo xtask bench cluster")]
struct Args {
    /// Updates per mode, one object patched each (the ConfigMap and the Secret in
    /// turn); each waits for the kubelet's next sync of the pod (every 10 s)
    #[arg(long, default_value_t = 20, value_parser = clap::value_parser!(u32).range(1..))]
    updates: u32,
    /// The `--settled-marks` modes to run, in this order
    #[arg(
        long,
        value_enum,
        value_delimiter = ',',
        default_value = "auto,ignore,remove"
    )]
    modes: Vec<Mode>,
}

/// One volume of the bench pod and the object it comes from.
pub struct Volume {
    pub name: &'static str,
    kind: &'static str,
    object: &'static str,
    key: &'static str,
    /// The kubelet's plugin dir under the pod's `volumes/`.
    plugin: &'static str,
    pub medium: &'static str,
}

pub const VOLUMES: [Volume; 2] = [
    Volume {
        name: "config",
        kind: "configmap",
        object: "bench-config",
        key: "key",
        plugin: "kubernetes.io~configmap",
        medium: "ConfigMap (disk)",
    },
    Volume {
        name: "secret",
        kind: "secret",
        object: "bench-secret",
        key: "tls.crt",
        plugin: "kubernetes.io~secret",
        medium: "Secret (tmpfs)",
    },
];

/// One container of the bench pod: `reloadscope-consumer --strategy` on a volume.
pub struct BenchConsumer {
    pub container: &'static str,
    pub strategy: &'static str,
    /// Index in [`VOLUMES`].
    pub volume: usize,
    mount: &'static str,
}

pub const CONSUMERS: [BenchConsumer; 4] = [
    BenchConsumer {
        container: "watcher",
        strategy: "data-dir-watcher",
        volume: 0,
        mount: "/etc/app",
    },
    BenchConsumer {
        container: "rewatcher",
        strategy: "file-rewatcher",
        volume: 0,
        mount: "/etc/app",
    },
    BenchConsumer {
        container: "poller",
        strategy: "timer-poller",
        volume: 0,
        mount: "/etc/app",
    },
    BenchConsumer {
        container: "secretwatcher",
        strategy: "data-dir-watcher",
        volume: 1,
        mount: "/etc/tls",
    },
];

/// What became of one consumer's reload of one update.
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum Credit {
    /// Credited at the open its log shows first reading the new content (within
    /// 5 ms of it): error = the agent's reload time - the consumer's clock.
    Exact { error: f64 },
    /// Credited, but further than 5 ms from that open: at a later open, or that
    /// open's event read late.
    Later { error: f64 },
    /// The log shows the new content read, and the agent credited nothing within
    /// [`CREDIT_WAIT`] of the swap.
    Missed,
    /// Credited, with no open of the new content in the log.
    Unconfirmed,
    /// Neither read nor credited.
    NoReload,
}

/// One consumer's outcome for one update.
#[derive(Clone, Debug)]
pub struct Outcome {
    /// Index in [`CONSUMERS`].
    pub consumer: usize,
    pub credit: Credit,
    /// The agent's: its reload time - its swap time.
    pub latency_agent: Option<f64>,
    /// The consumer's own: its open of the new content - the traced rename's entry
    /// (the `..data` symlink's mtime when there is no trace).
    pub latency_own: Option<f64>,
}

/// One update, as the kubelet's files, the agent and the consumers say.
#[derive(Clone, Debug)]
pub struct Update {
    /// Index in [`VOLUMES`].
    pub volume: usize,
    /// The patch to the swap (the symlink's mtime).
    pub patch_to_swap: f64,
    /// The kubelet's window, traced: its `mkdir` of the data dir to its `rename`
    /// over `..data` (the syscalls' entries).
    pub window: Option<f64>,
    /// The same from the files: the data dir's birth to the `..data` symlink's mtime.
    pub window_files: Option<f64>,
    /// The agent's swap stamp - the symlink's mtime.
    pub stamp_error: f64,
    /// The agent's swap stamp - the traced rename's entry.
    pub stamp_after_rename: Option<f64>,
    /// The symlink's mtime to the end of the first /metrics read counting the update.
    pub detected: f64,
    /// `reloadscope_late_marks_total` over the update.
    pub late_marks: f64,
    /// Swaps the agent counted on the node during the update besides this one.
    pub other_swaps: f64,
    pub outcomes: Vec<Outcome>,
}

/// What a mode's run measured.
pub struct ModeRun {
    pub mode: Mode,
    pub updates: Vec<Update>,
    /// `process_cpu_seconds_total` over the updates, and their wall time.
    pub cpu_seconds: f64,
    pub wall_seconds: f64,
    /// The agent's cgroup's CPU periods and the throttled ones over the updates.
    pub throttling: Option<(u64, u64)>,
    /// The agent's fanotify marks when the updates started (every volume settled).
    pub marks: Option<Marks>,
    /// `reloadscope_ebpf_loaded`'s probe label, and whether fanotify is loaded.
    pub probe: String,
    pub fanotify: bool,
    /// The agent's CPU limit as deployed.
    pub cpu_limit: String,
    /// The load average when the updates started.
    pub load: String,
}

pub fn run(given: &[OsString]) -> Result<()> {
    let args = Args::try_parse_from(
        std::iter::once(OsString::from("cargo xtask bench cluster")).chain(given.iter().cloned()),
    )
    .unwrap_or_else(|e| e.exit());
    if !cmd::is_root() {
        bail!("`cargo xtask bench cluster` needs root: it runs a kubelet and containerd");
    }
    let started = Instant::now();
    let layout = Layout::new();
    let was_up = cluster::is_up(&layout);
    cluster::up(&layout)?;
    let _node = NodeGuard {
        layout: layout.clone(),
        down: !was_up,
    };
    cluster::import_project_images(&layout)?;
    let header = report::Header::now(&args.modes, args.updates);
    let dir = TempDir::new("reloadscope-bench-cluster")?;
    let mut runs = Vec::new();
    for &mode in &args.modes {
        let t = Instant::now();
        let mut bench = Bench::start(&layout, dir.path(), mode)?;
        let run = bench.updates(args.updates)?;
        bench.remove()?;
        eprintln!(
            "bench cluster: {} done ({:.0} s)",
            mode.name(),
            t.elapsed().as_secs_f64()
        );
        runs.push(run);
    }
    print!(
        "{}",
        report::markdown(&header, &runs, started.elapsed().as_secs_f64())
    );
    Ok(())
}

/// Takes the node down when dropped, if this run brought it up.
struct NodeGuard {
    layout: Layout,
    down: bool,
}

impl Drop for NodeGuard {
    fn drop(&mut self) {
        if self.down
            && let Err(e) = cluster::down(&self.layout)
        {
            eprintln!("bench cluster: taking the node down failed: {e:#}");
        }
    }
}

/// One mode's agent and bench pod on the node; removed when dropped unless
/// [`Bench::remove`] did it.
struct Bench {
    layout: Layout,
    mode: Mode,
    kustomization: PathBuf,
    pod: String,
    uid: String,
    agent: Api,
    agent_pid: Option<u32>,
    trace: Option<KubeletTrace>,
    removed: bool,
}

impl Drop for Bench {
    fn drop(&mut self) {
        if !self.removed {
            let k = self.kustomization.to_string_lossy().into_owned();
            for args in [
                &[
                    "delete",
                    "namespace",
                    NAMESPACE,
                    "--ignore-not-found",
                    "--wait=false",
                ][..],
                &["delete", "-k", &k, "--ignore-not-found", "--wait=false"][..],
            ] {
                let _ = cluster::kubectl(&self.layout, args);
            }
        }
    }
}

impl Bench {
    /// Deploys the agent with `--settled-marks <mode>`, then the bench pod, and
    /// waits until the agent knows every consumer as a reader, the watchers' watches,
    /// and the first-read window after the pod's volumes appeared is over.
    fn start(layout: &Layout, dir: &Path, mode: Mode) -> Result<Self> {
        let t = Instant::now();
        let kustomization = dir.join(mode.name());
        fs::create_dir_all(&kustomization)?;
        let deploy = relative(&kustomization, &cmd::workspace_root().join("deploy"))?;
        fs::write(
            kustomization.join("kustomization.yaml"),
            kustomization_yaml(&deploy, mode),
        )?;
        let kubectl = |args: &[&str]| cluster::kubectl(layout, args).map_err(anyhow::Error::msg);
        let k = kustomization.to_string_lossy().into_owned();
        let mut bench = Self {
            layout: layout.clone(),
            mode,
            kustomization,
            pod: format!("bench-{}", mode.name()),
            uid: String::new(),
            agent: Api::new("127.0.0.1:9"),
            agent_pid: None,
            trace: None,
            removed: false,
        };
        kubectl(&["apply", "-k", &k])?;
        let ip = wait_for(
            "the agent's pod to be Ready through its own probes",
            Duration::from_secs(180),
            || Ok(()),
            || pod_ready_ip(layout, AGENT_NAMESPACE, AGENT_SELECTOR),
        )?;
        bench.agent = Api::new(&format!("{ip}:9741"));
        let args = kubectl(&[
            "-n",
            AGENT_NAMESPACE,
            "get",
            "pods",
            "-l",
            AGENT_SELECTOR,
            "-o",
            "jsonpath={.items[0].spec.containers[0].args}",
        ])?;
        ensure!(
            args.contains(&format!(r#""--settled-marks","{}""#, mode.name())),
            "the agent's pod runs with {args}"
        );
        let id = kubectl(&[
            "-n",
            AGENT_NAMESPACE,
            "get",
            "pods",
            "-l",
            AGENT_SELECTOR,
            "-o",
            "jsonpath={.items[0].status.containerStatuses[0].containerID}",
        ])?;
        bench.agent_pid = id.trim().strip_prefix("containerd://").and_then(agent_pid);
        eprintln!(
            "bench cluster: {}: agent Ready at {ip} ({:.0} s), pid {:?}",
            mode.name(),
            t.elapsed().as_secs_f64(),
            bench.agent_pid
        );

        let applied = Instant::now();
        apply_stdin(layout, &manifests(&bench.pod, image::TAG, mode))?;
        let pod = bench.pod.clone();
        wait_for(
            "the bench pod to be Ready",
            Duration::from_secs(120),
            || Ok(()),
            || {
                let out = cluster::kubectl(
                    layout,
                    &[
                        "-n",
                        NAMESPACE,
                        "get",
                        "pod",
                        &pod,
                        "-o",
                        r#"jsonpath={.status.conditions[?(@.type=="Ready")].status}"#,
                    ],
                )?;
                if out.trim() == "True" {
                    Ok(())
                } else {
                    Err(format!("Ready={out:?}"))
                }
            },
        )?;
        bench.uid = kubectl(&[
            "-n",
            NAMESPACE,
            "get",
            "pod",
            &pod,
            "-o",
            "jsonpath={.metadata.uid}",
        ])?
        .trim()
        .to_owned();
        wait_for(
            "every bench consumer to log ready",
            Duration::from_secs(60),
            || Ok(()),
            || {
                let not: Vec<&str> = CONSUMERS
                    .iter()
                    .filter(|c| !bench.lines(c).iter().any(|l| l == "ready"))
                    .map(|c| c.container)
                    .collect();
                if not.is_empty() {
                    Ok(())
                } else {
                    Err(format!("not ready: {not:?}"))
                }
            },
        )?;
        wait_for(
            "the agent to know every consumer as a reader, and the watchers' watches",
            Duration::from_secs(60),
            || Ok(()),
            || {
                let metrics = bench.agent.get("/metrics", &[])?;
                let missing: Vec<String> = CONSUMERS
                    .iter()
                    .filter(|c| {
                        let mut sel = bench.selector(c);
                        sel.push(("reads", "yes".into()));
                        let reader = sum(&metrics, "reloadscope_consumer_info", &sel) == 1.0;
                        let watches = c.strategy == "timer-poller" || {
                            let mut sel = bench.selector(c);
                            sel.push(("finding", "ok".into()));
                            sum(&metrics, "reloadscope_consumer_watch_findings", &sel) == 1.0
                        };
                        !(reader && watches)
                    })
                    .map(|c| c.container.to_owned())
                    .collect();
                if missing.is_empty() {
                    Ok(())
                } else {
                    Err(format!("not yet: {missing:?}"))
                }
            },
        )?;
        bench.trace = KubeletTrace::start()
            .inspect_err(|e| eprintln!("bench cluster: no trace of the kubelet's calls: {e:#}"))
            .ok();
        let left = FIRST_READ_WINDOW.saturating_sub(applied.elapsed());
        eprintln!(
            "bench cluster: {}: pod {} and its consumers known; {:.0} s to the end of the \
             first-read window",
            mode.name(),
            bench.pod,
            left.as_secs_f64()
        );
        sleep(left);
        Ok(bench)
    }

    fn selector(&self, c: &BenchConsumer) -> Vec<(&'static str, String)> {
        vec![
            ("namespace", NAMESPACE.into()),
            ("pod", self.pod.clone()),
            ("container", c.container.into()),
            ("volume", VOLUMES[c.volume].name.into()),
        ]
    }

    fn lines(&self, c: &BenchConsumer) -> Vec<String> {
        let files = podlogs::files(
            Path::new(cluster::POD_LOGS),
            NAMESPACE,
            &self.pod,
            c.container,
        );
        podlogs::lines(&files)
    }

    fn metrics(&self) -> Result<String> {
        self.agent.get("/metrics", &[]).map_err(anyhow::Error::msg)
    }

    fn updates(&self, n: u32) -> Result<ModeRun> {
        let first = self.metrics()?;
        let probe = first
            .lines()
            .find(|l| l.starts_with("reloadscope_ebpf_loaded{") && l.ends_with(" 1"))
            .and_then(|l| label(l, "probe"))
            .unwrap_or_else(|| "none".into());
        let fanotify = sum(&first, "reloadscope_fanotify_loaded", &[]) == 1.0;
        let cpu_limit = cluster::kubectl(
            &self.layout,
            &[
                "-n",
                AGENT_NAMESPACE,
                "get",
                "pods",
                "-l",
                AGENT_SELECTOR,
                "-o",
                "jsonpath={.items[0].spec.containers[0].resources.limits.cpu}",
            ],
        )
        .unwrap_or_default();
        let marks = self.agent_pid.and_then(marks);
        let throttled = self.agent_pid.and_then(cpu_stat);
        let cpu = sum(&first, "process_cpu_seconds_total", &[]);
        let load = fs::read_to_string("/proc/loadavg")
            .map(|s| s.split_whitespace().take(3).collect::<Vec<_>>().join(" "))
            .unwrap_or_default();
        let t = Instant::now();
        let mut updates = Vec::new();
        for k in 0..n {
            let u = self.update(k)?;
            eprintln!(
                "bench cluster: {} update {}/{n} ({}): window {} (files: {}), detected by \
                 {:.2} ms, late marks {}, {}",
                self.mode.name(),
                k + 1,
                VOLUMES[u.volume].name,
                u.window
                    .map_or("unknown".into(), |w| format!("{:.3} ms", w * 1e3)),
                u.window_files
                    .map_or("unknown".into(), |w| format!("{:.3} ms", w * 1e3)),
                u.detected * 1e3,
                u.late_marks,
                u.outcomes
                    .iter()
                    .map(|o| format!("{}: {:?}", CONSUMERS[o.consumer].container, o.credit))
                    .collect::<Vec<_>>()
                    .join(", ")
            );
            updates.push(u);
        }
        let wall_seconds = t.elapsed().as_secs_f64();
        let last = self.metrics()?;
        let throttling = match (throttled, self.agent_pid.and_then(cpu_stat)) {
            (Some(a), Some(b)) => Some((b.0 - a.0, b.1 - a.1)),
            _ => None,
        };
        Ok(ModeRun {
            mode: self.mode,
            updates,
            cpu_seconds: sum(&last, "process_cpu_seconds_total", &[]) - cpu,
            wall_seconds,
            throttling,
            marks,
            probe,
            fanotify,
            cpu_limit: cpu_limit.trim().to_owned(),
            load,
        })
    }

    /// Update `k`: patches the ConfigMap (even `k`) or the Secret (odd) with content
    /// of its own, waits for the kubelet's swap and the agent's count of it, then for
    /// each consumer's credit or [`CREDIT_WAIT`], and reads the consumers' logs.
    fn update(&self, k: u32) -> Result<Update> {
        let vi = k as usize % VOLUMES.len();
        let v = &VOLUMES[vi];
        let content = format!("{}-{k:03}", self.mode.name());
        let head = head_hex(&content);
        let vsel = vec![
            ("namespace", NAMESPACE.to_owned()),
            ("pod", self.pod.clone()),
            ("volume", v.name.to_owned()),
        ];
        let consumers: Vec<usize> = (0..CONSUMERS.len())
            .filter(|&i| CONSUMERS[i].volume == vi)
            .collect();
        let before = self.metrics()?;
        let count = sum(&before, "reloadscope_volume_updates_total", &vsel);
        let all = sum(&before, "reloadscope_volume_updates_total", &[]);
        let late = sum(&before, "reloadscope_late_marks_total", &[]);
        let last_reload = |metrics: &str, i: usize| {
            sum(
                metrics,
                "reloadscope_consumer_last_reload_timestamp_seconds",
                &self.selector(&CONSUMERS[i]),
            )
        };
        let previous: Vec<f64> = consumers.iter().map(|&i| last_reload(&before, i)).collect();
        let dir = Path::new(cluster::KUBELET_ROOT)
            .join("pods")
            .join(&self.uid)
            .join("volumes")
            .join(v.plugin)
            .join(v.name);
        let swaps = DataSwaps::watch(&dir)?;
        if let Some(trace) = &self.trace {
            trace.clear()?;
        }

        let patched = now();
        let field = if v.kind == "secret" {
            "stringData"
        } else {
            "data"
        };
        cluster::kubectl(
            &self.layout,
            &[
                "-n",
                NAMESPACE,
                "patch",
                v.kind,
                v.object,
                "--type=merge",
                "-p",
                &format!(r#"{{"{field}":{{"{}":"{content}"}}}}"#, v.key),
            ],
        )
        .map_err(anyhow::Error::msg)?;
        swaps.wait(Duration::from_secs(60))?;
        // From the swap on, /metrics as fast as it answers, until it counts it.
        let deadline = Instant::now() + Duration::from_secs(5);
        let (seen, after) = loop {
            let text = self.metrics()?;
            let t = now();
            if sum(&text, "reloadscope_volume_updates_total", &vsel) > count {
                break (t, text);
            }
            ensure!(
                Instant::now() < deadline,
                "the agent did not count the swap of {} within 5 s",
                v.name
            );
            sleep(Duration::from_millis(1));
        };
        let disk = on_disk(NAMESPACE, &self.pod, v.name)?;
        let traced = self.trace.as_ref().and_then(KubeletTrace::window);
        let offset = realtime_offset();
        let renamed = traced.map(|(_, r)| r + offset);
        let swap = sum(
            &after,
            "reloadscope_volume_last_update_timestamp_seconds",
            &vsel,
        );

        // Each consumer credited by the agent, or the wait is over.
        let deadline = Instant::now() + CREDIT_WAIT;
        let mut credited: Vec<Option<f64>> = vec![None; consumers.len()];
        let mut metrics = after;
        loop {
            for (n, &i) in consumers.iter().enumerate() {
                let r = last_reload(&metrics, i);
                if credited[n].is_none() && r > previous[n] {
                    credited[n] = Some(r);
                }
            }
            if credited.iter().all(Option::is_some) || Instant::now() >= deadline {
                break;
            }
            sleep(Duration::from_millis(50));
            metrics = self.metrics()?;
        }
        // The opens of the new content in the logs (the kubelet writes them a little
        // after the container): each credited consumer's, or any, for a while.
        let logged = wait_for(
            "the consumers' logs of the new content",
            Duration::from_secs(2),
            || Ok(()),
            || {
                let opens: Vec<Option<f64>> = consumers
                    .iter()
                    .map(|&i| {
                        podlogs::opens(&self.lines(&CONSUMERS[i]))
                            .into_iter()
                            .find(|o| o.head == head)
                            .map(|o| o.seconds())
                    })
                    .collect();
                if opens.iter().all(Option::is_some) {
                    Ok(opens)
                } else {
                    Err(format!("{opens:?}"))
                }
            },
        )
        .unwrap_or_else(|_| {
            consumers
                .iter()
                .map(|&i| {
                    podlogs::opens(&self.lines(&CONSUMERS[i]))
                        .into_iter()
                        .find(|o| o.head == head)
                        .map(|o| o.seconds())
                })
                .collect()
        });
        let end = self.metrics()?;
        let outcomes = consumers
            .iter()
            .enumerate()
            .map(|(n, &i)| Outcome {
                consumer: i,
                credit: judge(credited[n], logged[n]),
                latency_agent: credited[n].map(|r| r - swap),
                latency_own: logged[n].map(|o| o - renamed.unwrap_or(disk.swap)),
            })
            .collect();
        Ok(Update {
            volume: vi,
            patch_to_swap: disk.swap - patched,
            window: traced.map(|(m, r)| r - m),
            window_files: disk.data_dir_born.map(|b| disk.swap - b),
            stamp_error: swap - disk.swap,
            stamp_after_rename: renamed.map(|r| swap - r),
            detected: seen - disk.swap,
            late_marks: sum(&end, "reloadscope_late_marks_total", &[]) - late,
            other_swaps: sum(&end, "reloadscope_volume_updates_total", &[]) - all - 1.0,
            outcomes,
        })
    }

    /// Deletes the bench pod's namespace and the agent, and waits until they are gone.
    fn remove(&mut self) -> Result<()> {
        let k = self.kustomization.to_string_lossy().into_owned();
        for args in [
            &["delete", "namespace", NAMESPACE][..],
            &["delete", "-k", &k][..],
        ] {
            let wait = [
                "--ignore-not-found",
                "--timeout=120s",
                "--request-timeout=120s",
            ];
            cluster::kubectl(&self.layout, &[args, &wait[..]].concat())
                .map_err(anyhow::Error::msg)?;
        }
        self.removed = true;
        Ok(())
    }
}

/// A consumer's credit from the agent's reload time and its log's first open of the
/// new content.
fn judge(credited: Option<f64>, logged: Option<f64>) -> Credit {
    match (credited, logged) {
        (Some(r), Some(o)) if (r - o).abs() <= RELOAD_TOLERANCE => Credit::Exact { error: r - o },
        (Some(r), Some(o)) => Credit::Later { error: r - o },
        (None, Some(_)) => Credit::Missed,
        (Some(_), None) => Credit::Unconfirmed,
        (None, None) => Credit::NoReload,
    }
}

/// The sum of the samples of `family` (the name exactly) whose labels include each
/// of `labels`; 0 when none.
fn sum(metrics: &str, family: &str, labels: &[(&str, String)]) -> f64 {
    metrics
        .lines()
        .filter(|l| !l.starts_with('#'))
        .filter(|l| {
            let name_end = l.find(['{', ' ']).unwrap_or(l.len());
            &l[..name_end] == family
                && labels
                    .iter()
                    .all(|(k, v)| label(l, k).as_deref() == Some(v.as_str()))
        })
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum()
}

/// The value of label `name` in a sample line `family{a="x",b="y"} 1`.
fn label(line: &str, name: &str) -> Option<String> {
    let body = &line[line.find('{')? + 1..line.rfind('}')?];
    let mut rest = body;
    while !rest.is_empty() {
        let eq = rest.find('=')?;
        let key = rest[..eq].trim_start_matches([',', ' ']);
        let value_start = eq + 2; // `="`
        let mut value = String::new();
        let mut chars = rest.get(value_start..)?.char_indices();
        let mut end = None;
        while let Some((i, ch)) = chars.next() {
            match ch {
                '\\' => {
                    if let Some((_, esc)) = chars.next() {
                        value.push(if esc == 'n' { '\n' } else { esc });
                    }
                }
                '"' => {
                    end = Some(value_start + i + 1);
                    break;
                }
                _ => value.push(ch),
            }
        }
        if key == name {
            return Some(value);
        }
        rest = &rest[end?..];
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn arguments_default_to_twenty_updates_in_every_mode() {
        let args = Args::try_parse_from(["x"]).unwrap();
        assert_eq!(args.updates, 20);
        assert_eq!(args.modes, [Mode::Auto, Mode::Ignore, Mode::Remove]);
        let args =
            Args::try_parse_from(["x", "--updates", "4", "--modes", "remove,ignore"]).unwrap();
        assert_eq!(
            (args.updates, args.modes),
            (4, vec![Mode::Remove, Mode::Ignore])
        );
        assert!(Args::try_parse_from(["x", "--updates", "0"]).is_err());
        assert!(Args::try_parse_from(["x", "--modes", "sometimes"]).is_err());
    }

    #[test]
    fn samples_are_summed_by_exact_name_and_labels() {
        let text = "\
# TYPE reloadscope_late_marks_total counter
reloadscope_late_marks_total 3
reloadscope_late_marks_total_x 100
reloadscope_consumer_info{namespace=\"b\",workload_kind=\"\",workload=\"\",pod=\"p\",container=\"watcher\",volume=\"config\",reads=\"yes\"} 1
reloadscope_consumer_info{namespace=\"b\",workload_kind=\"\",workload=\"\",pod=\"p\",container=\"secretwatcher\",volume=\"secret\",reads=\"yes\"} 1
reloadscope_ebpf_loaded{probe=\"tracepoint\"} 1
";
        assert_eq!(sum(text, "reloadscope_late_marks_total", &[]), 3.0);
        let sel = |c: &str| vec![("container", c.to_owned()), ("reads", "yes".to_owned())];
        assert_eq!(sum(text, "reloadscope_consumer_info", &sel("watcher")), 1.0);
        assert_eq!(sum(text, "reloadscope_consumer_info", &sel("atcher")), 0.0);
        assert_eq!(sum(text, "reloadscope_consumer_info", &[]), 2.0);
        assert_eq!(
            label("x{a=\"1\",kind=\"q\\\"r\",b=\"\"} 1", "kind").as_deref(),
            Some("q\"r")
        );
        assert_eq!(label("x{a=\"1\",b=\"\"} 1", "b").as_deref(), Some(""));
        assert_eq!(label("x 1", "b"), None);
        assert_eq!(
            label(text.lines().nth(5).unwrap(), "probe").as_deref(),
            Some("tracepoint")
        );
    }

    #[test]
    fn credits_are_judged_against_the_log() {
        assert!(matches!(
            judge(Some(10.001), Some(10.0)),
            Credit::Exact { .. }
        ));
        assert!(matches!(
            judge(Some(11.0), Some(10.0)),
            Credit::Later { .. }
        ));
        assert_eq!(judge(None, Some(10.0)), Credit::Missed);
        assert_eq!(judge(Some(10.0), None), Credit::Unconfirmed);
        assert_eq!(judge(None, None), Credit::NoReload);
    }
}
