//! `cargo xtask e2e`: the lab node with its consumer containers, the real agent
//! (`reloadscope-lab`) and a real Prometheus (/usr/bin/prometheus, Debian's)
//! scraping it every second with the shipped alert rules, generated with
//! [`Config::short`] so they act within seconds. Everything is asserted through
//! Prometheus' HTTP API, waiting on conditions with deadlines.

mod api;
mod audit;
mod discovery;
mod node;
mod podlogs;
mod procs;
mod workloads;

pub use node::bench as bench_cluster;
pub use node::run as run_cluster;

use std::fs;
use std::process::Command;
use std::time::Instant;

use anyhow::{Result, bail};

use crate::cmd;
use crate::mixin::{self, Config};
use api::{Api, non_empty};
use procs::{Proc, TempDir, free_port, wait_on};

/// The scrape job; [`Config::short`]'s selector names it.
const JOB: &str = "reloadscope";
/// Grafana's variables, as the lab has them. 20 s holds several updates of the
/// lab's consumed volume at 1 s scrapes (Grafana's `$__rate_interval` would be
/// at least four scrape intervals).
const VARIABLES: &[(&str, &str)] = &[
    ("$__rate_interval", "20s"),
    ("$namespace", "lab"),
    ("$pod", "app-0"),
    ("$workload", "app"),
    ("$source_name", "app-0-app-config"),
    ("$job", JOB),
    ("$instance", ".+"),
];
/// The lab consumers of app-0's app-config: `naive` never reloads, `watcher` and
/// `poller` do (within a millisecond and a second), `pinned` binds it by subPath.
const NEVER_RELOADS: &str = "naive";
const RELOADERS: &[&str] = &["watcher", "poller"];
const SUBPATH: &str = "pinned";
/// The lab's volume whose ConfigMap changes on the API and is never swapped.
const FROZEN: &str = "flags";

pub fn run() -> Result<()> {
    if !cmd::is_root() {
        bail!("`cargo xtask e2e` needs root: the lab mounts tmpfs and the agent loads eBPF");
    }
    let started = Instant::now();
    cmd::run(&mut cmd::cargo(["build", "-p", "reloadscope-lab"]))?;
    let cfg = Config::short();
    assert_eq!(cfg.job_selector, format!(r#"job="{JOB}""#));

    let dir = TempDir::new("reloadscope-e2e")?;
    let (lab_addr, prom_addr) = (
        format!("127.0.0.1:{}", free_port()?),
        format!("127.0.0.1:{}", free_port()?),
    );
    fs::write(dir.path().join("alerts.yaml"), mixin::alerts_yaml(&cfg))?;
    fs::write(
        dir.path().join("prometheus.yml"),
        prometheus_config(&format!(
            "    static_configs:\n      - targets: [\"{lab_addr}\"]\n"
        )),
    )?;

    // One pod, one update a second round robin over its 4 volumes: app-config is
    // updated every 4 s. `--duration` stops the lab even if this process is killed.
    let lab_bin = cmd::target_dir().join("debug/reloadscope-lab");
    let lab = Proc::spawn(
        "lab",
        Command::new(lab_bin)
            .args("--pods 1 --interval 1 --plain --duration 600".split(' '))
            .args(["--listen", &lab_addr]),
        dir.path(),
    )?;
    let storage = dir.path().join("data");
    let prometheus = Proc::spawn(
        "prometheus",
        Command::new("/usr/bin/prometheus")
            .arg(format!(
                "--config.file={}",
                dir.path().join("prometheus.yml").display()
            ))
            .arg(format!("--storage.tsdb.path={}", storage.display()))
            .arg(format!("--web.listen-address={prom_addr}")),
        dir.path(),
    )?;
    let mut e2e = E2e {
        lab,
        prometheus,
        lab_api: Api::new(&lab_addr),
        prom: Api::new(&prom_addr),
    };
    let result = e2e.assertions(&cfg);
    if result.is_err() {
        for p in [&e2e.lab, &e2e.prometheus] {
            eprintln!("--- last lines of {}:\n{}", p.name, p.tail(25));
        }
    }
    drop(e2e); // stops both children (the lab first) before the directory goes
    result?;
    println!("e2e passed in {:.1} s", started.elapsed().as_secs_f64());
    Ok(())
}

/// Prometheus scraping and evaluating every second with the rules in
/// `alerts.yaml`, its one job finding the agent as `targets` says (the YAML of the
/// job's discovery and relabelling, indented under it).
fn prometheus_config(targets: &str) -> String {
    // The scrape timeout defaults to 10 s, more than the interval: Prometheus
    // refuses that.
    format!(
        "global:
  scrape_interval: 1s
  scrape_timeout: 1s
  evaluation_interval: 1s
rule_files: [alerts.yaml]
scrape_configs:
  - job_name: {JOB}
{targets}"
    )
}

struct E2e {
    lab: Proc,
    prometheus: Proc,
    lab_api: Api,
    prom: Api,
}

impl E2e {
    fn assertions(&mut self, cfg: &Config) -> Result<()> {
        self.wait("Prometheus to be ready", 30, |e| {
            e.prom.get("/-/ready", &[]).map(drop)
        })?;
        self.alerts_fire_for_the_right_consumers()?;
        // Read only now: the lab has gone through several updates and reloads, and
        // some series exist only after those. Checked before the data, so that a
        // misspelt name fails here, by name, rather than as a query without data.
        let metrics = self
            .lab_api
            .get("/metrics", &[])
            .map_err(anyhow::Error::msg)?;
        let problems = mixin::unexported_names(cfg, &metrics);
        if !problems.is_empty() {
            bail!("names the agent does not export:\n{}", problems.join("\n"));
        }
        println!("the rules and the dashboard name only metrics and labels the agent exports");
        let missing = mixin::families_without_panel(cfg, &metrics);
        if !missing.is_empty() {
            bail!("exported but on no dashboard panel: {}", missing.join(", "));
        }
        println!("every reloadscope_ family the agent exports has a panel");
        self.dashboard_queries_return_data(cfg)
    }

    /// Waits for `what` (up to `secs`), failing at once if a child exits.
    fn wait<T>(
        &mut self,
        what: &str,
        secs: u64,
        probe: impl Fn(&Self) -> Result<T, String>,
    ) -> Result<T> {
        let alive = |e: &mut Self| {
            e.lab.alive()?;
            e.prometheus.alive()
        };
        wait_on(self, what, secs, alive, probe)
    }

    fn alerts_fire_for_the_right_consumers(&mut self) -> Result<()> {
        let expected = [
            ("ReloadscopeConsumerStale", NEVER_RELOADS),
            ("ReloadscopeSubPathVolumeUpdated", SUBPATH),
        ];
        let firing = self.wait("the stale and subPath alerts to fire", 90, |e| {
            let firing = e.prom.firing()?;
            let all = expected
                .iter()
                .all(|(alert, container)| firing.iter().any(|(a, c)| a == alert && c == container));
            if all {
                Ok(firing)
            } else {
                Err(format!("firing: {firing:?}"))
            }
        })?;
        println!("firing: {firing:?}");
        let pending = format!(
            r#"ALERTS{{alertname="ReloadscopePropagationPending", alertstate="firing", volume="{FROZEN}"}}"#
        );
        self.wait("ReloadscopePropagationPending to fire", 60, |e| {
            e.prom.query(&pending).and_then(non_empty)
        })?;
        let others = format!(
            r#"count_over_time(ALERTS{{alertname="ReloadscopePropagationPending", volume!="{FROZEN}"}}[1h])"#
        );
        match self.prom.query(&others) {
            Ok(series) if series.is_empty() => {}
            Ok(series) => {
                bail!("ReloadscopePropagationPending fired for a swapped volume: {series:?}")
            }
            Err(err) => bail!("could not read ALERTS: {err}"),
        }
        println!("ReloadscopePropagationPending fires for the volume never swapped, and no other");
        // The reloading containers must have gone through several updates by now,
        // and ALERTS (every evaluation's alert states) must never have had them firing.
        for container in RELOADERS {
            let reloads = format!(
                r#"reloadscope_reload_latency_seconds_count{{container="{container}"}} >= 3"#
            );
            self.wait(&format!("{container} to reload 3 updates"), 60, |e| {
                e.prom.query(&reloads).and_then(non_empty)
            })?;
        }
        let stale = r#"alertname="ReloadscopeConsumerStale", alertstate="firing""#;
        let reloaders = RELOADERS.join("|");
        let fired = self.prom.query(&format!(
            r#"count_over_time(ALERTS{{{stale}, container=~"{reloaders}"}}[1h])"#
        ));
        match fired {
            Ok(series) if series.is_empty() => Ok(()),
            Ok(series) => {
                bail!("ReloadscopeConsumerStale fired for a container that reloads: {series:?}")
            }
            Err(err) => bail!("could not read ALERTS: {err}"),
        }
    }

    fn dashboard_queries_return_data(&mut self, cfg: &Config) -> Result<()> {
        let mut exprs = Vec::new();
        for q in mixin::dashboard_queries(cfg) {
            let expr = VARIABLES
                .iter()
                .fold(q.expr, |e, (var, value)| e.replace(var, value));
            if expr.contains('$') {
                bail!(
                    "{}: a variable the e2e does not substitute: {expr}",
                    q.panel
                );
            }
            exprs.push((q.panel, expr));
        }
        self.wait("every dashboard query to return data", 60, |e| {
            let empty: Vec<String> = exprs
                .iter()
                .filter_map(|(panel, expr)| {
                    let data = e.prom.query(expr).and_then(non_empty);
                    data.err().map(|why| format!("{panel}: {expr}: {why}"))
                })
                .collect();
            if empty.is_empty() {
                Ok(())
            } else {
                Err(empty.join("\n"))
            }
        })?;
        println!("all {} dashboard queries return data", exprs.len());
        Ok(())
    }
}
