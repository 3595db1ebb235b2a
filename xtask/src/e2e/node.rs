//! `cargo xtask e2e --cluster`: the agent as users deploy it, on the real node of
//! `cargo xtask cluster`, judged against the kubelet itself.
//!
//! The agent's image (`cargo xtask image`) is imported into the node's containerd
//! and `kubectl apply -k deploy/` installs it, exactly as the README says. The
//! workloads of [`workloads`] consume ConfigMap, Secret and projected volumes; their
//! objects change through the API, and the kubelet refreshes a short-lived token on
//! its own. A real Prometheus finds the agent with `kubernetes_sd_configs` against
//! the API and loads the shipped rules ([`Config::short`] time scales). Every
//! assertion compares what Prometheus holds with the kubelet's own traces: the
//! `..data` symlink on disk, the containers' own logs of their reads, the API
//! server's audit log.

use std::collections::BTreeMap;
use std::fs;
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use anyhow::{Result, bail, ensure};

mod bench;
mod checks;

pub use bench::run as bench;

use super::api::{Api, Series};
use super::procs::{Proc, TempDir, free_port, wait_for, wait_on};
use super::workloads::{self, Consumer};
use super::{discovery, podlogs};
use crate::cluster::{self, Layout};
use crate::mixin::{self, Config};
use crate::{cmd, image};

/// The agent's namespace and pod label in deploy/.
const AGENT_NAMESPACE: &str = "reloadscope";
const AGENT_SELECTOR: &str = "app.kubernetes.io/name=reloadscope";
/// How far a reload time may be from the container's own log of that open.
const RELOAD_TOLERANCE: f64 = 0.005;

pub fn run() -> Result<()> {
    if !cmd::is_root() {
        bail!("`cargo xtask e2e --cluster` needs root: it runs a kubelet and containerd");
    }
    let started = Instant::now();
    let layout = Layout::new();
    let was_up = cluster::is_up(&layout);
    let t = Instant::now();
    cluster::up(&layout)?;
    let node = Node {
        layout: layout.clone(),
        down: !was_up,
    };
    println!("e2e: node up ({:.0} s)", t.elapsed().as_secs_f64());

    cluster::import_project_images(&layout)?;

    let dir = TempDir::new("reloadscope-e2e-cluster")?;
    let result = Test::start(&layout, &dir, image::TAG).and_then(|mut test| {
        let result = test.assertions();
        if result.is_err() {
            test.print_diagnostics();
        }
        result
    });
    if result.is_err() {
        cluster::print_log_tails(&layout, 15);
    }
    drop(node);
    result?;
    println!(
        "e2e --cluster passed in {:.0} s",
        started.elapsed().as_secs_f64()
    );
    Ok(())
}

/// Takes the node down when dropped, if this run started it; else removes what the
/// test added to it.
struct Node {
    layout: Layout,
    down: bool,
}

impl Drop for Node {
    fn drop(&mut self) {
        if self.down {
            if let Err(e) = cluster::down(&self.layout) {
                eprintln!("e2e: taking the node down failed: {e:#}");
            }
        } else {
            for ns in [
                workloads::SHOP,
                workloads::VAULT,
                workloads::BATCH,
                AGENT_NAMESPACE,
            ] {
                let _ =
                    cluster::kubectl(&self.layout, &["delete", "namespace", ns, "--wait=false"]);
            }
        }
    }
}

struct Test {
    layout: Layout,
    prometheus: Proc,
    prom: Api,
    agent: Api,
    /// Pod name of each test namespace's one pod.
    pods: BTreeMap<&'static str, String>,
    /// Wall-clock seconds at the start of the pods (token age).
    pods_started: f64,
}

fn now() -> f64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0.0, |d| d.as_secs_f64())
}

impl Test {
    fn start(layout: &Layout, dir: &TempDir, tag: &str) -> Result<Self> {
        let t = Instant::now();
        let kubectl = |args: &[&str]| cluster::kubectl(layout, args).map_err(anyhow::Error::msg);
        // As deploy/README.md tells users: a kustomization of their own, the default
        // install and a component (reload signals).
        let own = with_component(dir, "reload-signals")?;
        cmd::run(
            Command::new("kubectl")
                .arg("--kubeconfig")
                .arg(layout.admin_kubeconfig())
                .arg("apply")
                .arg("-k")
                .arg(&own),
        )?;
        let agent_ip = wait_for(
            "the agent's pod to be Ready through its own probes",
            Duration::from_secs(180),
            || Ok(()),
            || pod_ready_ip(layout, AGENT_NAMESPACE, AGENT_SELECTOR),
        )?;
        println!(
            "e2e: agent Ready at {agent_ip} ({:.0} s)",
            t.elapsed().as_secs_f64()
        );

        let cfg = Config::short();
        let prom_addr = format!("127.0.0.1:{}", free_port()?);
        let discovery = discovery::serve(layout, AGENT_NAMESPACE)?;
        fs::write(dir.path().join("alerts.yaml"), mixin::alerts_yaml(&cfg))?;
        fs::write(
            dir.path().join("prometheus.yml"),
            prometheus_config(&discovery),
        )?;
        let prometheus = Proc::spawn(
            "prometheus",
            Command::new("/usr/bin/prometheus")
                .arg(format!(
                    "--config.file={}",
                    dir.path().join("prometheus.yml").display()
                ))
                .arg(format!(
                    "--storage.tsdb.path={}",
                    dir.path().join("data").display()
                ))
                .arg(format!("--web.listen-address={prom_addr}")),
            dir.path(),
        )?;

        let t = Instant::now();
        apply_stdin(layout, &workloads::manifests(tag))?;
        let mut pods = BTreeMap::new();
        for (ns, selector) in [
            (workloads::SHOP, "app=web"),
            (workloads::VAULT, "app=db"),
            (workloads::BATCH, ""),
        ] {
            wait_for(
                &format!("the pod of {ns} to be Ready"),
                Duration::from_secs(120),
                || Ok(()),
                || pod_ready_ip(layout, ns, selector),
            )?;
            let name = kubectl(&[
                "-n",
                ns,
                "get",
                "pods",
                "-l",
                selector,
                "-o",
                "jsonpath={.items[0].metadata.name}",
            ])?;
            pods.insert(ns, name);
        }
        let pods_started = now();
        println!("e2e: test pods Ready ({:.0} s)", t.elapsed().as_secs_f64());
        Ok(Self {
            layout: layout.clone(),
            prometheus,
            prom: Api::new(&prom_addr),
            agent: Api::new(&format!("{agent_ip}:9741")),
            pods,
            pods_started,
        })
    }

    /// Waits for `what`, failing at once if Prometheus exits.
    fn wait<T>(
        &mut self,
        what: &str,
        secs: u64,
        probe: impl Fn(&Self) -> Result<T, String>,
    ) -> Result<T> {
        wait_on(self, what, secs, |t| t.prometheus.alive(), probe)
    }

    fn query(&self, expr: &str) -> Result<Series, String> {
        self.prom.query(expr)
    }

    /// The one value of `expr`, once it has exactly one series.
    fn value(&self, expr: &str) -> Result<f64, String> {
        match self.query(expr)?.as_slice() {
            [(_, v)] => Ok(*v),
            other => Err(format!("{expr}: {} series: {other:?}", other.len())),
        }
    }

    fn consumer_selector(c: &Consumer) -> String {
        format!(
            r#"namespace="{}", container="{}", volume="{}""#,
            c.namespace, c.container, c.volume
        )
    }

    fn lines(&self, c: &Consumer) -> Vec<String> {
        let files = podlogs::files(
            Path::new(cluster::POD_LOGS),
            c.namespace,
            &self.pods[c.namespace],
            c.container,
        );
        podlogs::lines(&files)
    }

    fn print_diagnostics(&self) {
        for args in [
            &["get", "pods", "-A", "-o", "wide"][..],
            &[
                "-n",
                AGENT_NAMESPACE,
                "logs",
                "-l",
                AGENT_SELECTOR,
                "--tail",
                "40",
            ][..],
        ] {
            match cluster::kubectl(&self.layout, args) {
                Ok(out) => eprintln!("--- kubectl {}:\n{out}", args.join(" ")),
                Err(e) => eprintln!("--- kubectl {}: {e}", args.join(" ")),
            }
        }
        eprintln!(
            "--- last lines of prometheus:\n{}",
            self.prometheus.tail(15)
        );
    }
}

/// The pod IP of the first pod matching `selector` in `namespace`, once it is Ready.
fn pod_ready_ip(layout: &Layout, namespace: &str, selector: &str) -> Result<String, String> {
    let out = cluster::kubectl(
        layout,
        &[
            "-n",
            namespace,
            "get",
            "pods",
            "-l",
            selector,
            "-o",
            r#"jsonpath={.items[0].status.podIP} {.items[0].status.conditions[?(@.type=="Ready")].status}"#,
        ],
    )?;
    match out.split_whitespace().collect::<Vec<_>>().as_slice() {
        [ip, "True"] => Ok((*ip).to_owned()),
        _ => Err(format!("pod: {out:?}")),
    }
}

/// A kustomization in `dir`: deploy/ (the default install) and
/// `deploy/components/<component>`, by relative paths (kustomize refuses absolute ones).
fn with_component(dir: &TempDir, component: &str) -> Result<std::path::PathBuf> {
    let own = dir.path().join("deploy");
    fs::create_dir_all(&own)?;
    let up = "../".repeat(own.components().count().saturating_sub(1));
    let root = cmd::workspace_root()
        .to_string_lossy()
        .trim_start_matches('/')
        .to_owned();
    fs::write(
        own.join("kustomization.yaml"),
        format!(
            "apiVersion: kustomize.config.k8s.io/v1beta1\nkind: Kustomization\n\
             resources:\n  - {up}{root}/deploy\n\
             components:\n  - {up}{root}/deploy/components/{component}\n"
        ),
    )?;
    Ok(own)
}

/// `kubectl apply -f -` as cluster admin.
fn apply_stdin(layout: &Layout, yaml: &str) -> Result<()> {
    let mut child = Command::new("kubectl")
        .arg("--kubeconfig")
        .arg(layout.admin_kubeconfig())
        .args(["apply", "-f", "-"])
        .stdin(Stdio::piped())
        .stdout(Stdio::null())
        .spawn()?;
    std::io::Write::write_all(&mut child.stdin.take().expect("piped"), yaml.as_bytes())?;
    let status = child.wait()?;
    ensure!(
        status.success(),
        "kubectl apply of the test workloads failed ({status})"
    );
    Ok(())
}

/// Prometheus finding the agent's pods through the API (see [`discovery`]) and
/// keeping the agent's metrics port, as a Kubernetes-discovering Prometheus would.
fn prometheus_config(discovery: &str) -> String {
    super::prometheus_config(&format!(
        "    http_sd_configs:
      - url: {discovery}
        refresh_interval: 1s
    relabel_configs:
      - source_labels: [__meta_kubernetes_pod_label_app_kubernetes_io_name, __meta_kubernetes_pod_container_port_name]
        regex: reloadscope;metrics
        action: keep
      - source_labels: [__meta_kubernetes_pod_name]
        target_label: instance
"
    ))
}
