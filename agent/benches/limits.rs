//! Benchmark `limits`: the agent at two limits a node puts it under, each beside a
//! baseline measured in the same run, on the same node, by the same agent process
//! (the release binary, `--probe off --no-reloads`: inotify alone, no BPF program):
//!
//! 1. churn: a node of 10,000 volumes (2,000 pods of 5). Baseline: 100 pods (500
//!    volumes) added beside them, each volume updated once right after the pods are
//!    made. Churn: the pods dir removed (leaves first, as `rm -rf`) and the same 100
//!    pods made and updated again in a new one. Each: the time until the agent follows
//!    exactly the new volumes, its CPU for that, queue overflows, and updates lost;
//! 2. slow connections: the agent under a 1024-descriptor limit (soft and hard, so it
//!    cannot raise it). Baseline: 200 scrapes one after the other with nothing else
//!    connected. Then 1,000 idle connections and 100 that sent half a request's
//!    headers are held, and 200 scrapes again: their latency, the agent's descriptors,
//!    evictions, and how long until the agent has closed every held connection.
//!
//! Run as root: `cargo xtask bench limits [--quick]`. stdout gets a Markdown section
//! for BENCHMARKS.md.

use std::{
    io::{Read, Write},
    net::TcpStream,
    process::{ExitCode, Stdio},
    time::{Duration, Instant},
};

use anyhow::{Context, bail};
use reloadscope::node::volumes::VolumeType;
use reloadscope_lab::{AtomicWriter, CallStyle, LabNode, payload, scrape};

use crate::common::{
    self,
    agent_process::{AgentProcess, agent_binary},
    figures::percentile,
    machine::loadavg,
    procfs::proc_cpu,
};

const USAGE: &str = "\
usage: cargo xtask bench limits [--quick]

  --quick   1,000 volumes instead of 10,000, 100 held connections instead of 1,100

Needs root (the kubelet-style tree, prlimit). Runs target/release/reloadscope.";

struct Args {
    quick: bool,
}

fn parse(args: &[String]) -> Result<Args, String> {
    let mut quick = false;
    for a in args {
        match a.as_str() {
            "--quick" => quick = true,
            "--bench" => {}
            other => return Err(format!("unknown argument {other:?}")),
        }
    }
    Ok(Args { quick })
}

fn update(w: &AtomicWriter, v: &str) -> anyhow::Result<()> {
    w.write(&payload(&[("k", v)]), CallStyle::GoAt)?;
    Ok(())
}

/// `pods` pods of 5 ConfigMap volumes named `<prefix><i>`, populated.
fn make_pods(node: &mut LabNode, prefix: &str, pods: usize) -> anyhow::Result<Vec<AtomicWriter>> {
    let mut out = Vec::new();
    for i in 0..pods {
        let pod = node.add_pod("ns", &format!("{prefix}{i}"))?;
        for j in 0..5 {
            let w = node.add_volume(&pod, VolumeType::ConfigMap, &format!("v{j}"))?;
            update(&w, "v0")?;
            out.push(w);
        }
    }
    Ok(out)
}

fn total(m: &scrape::Samples, name: &str) -> f64 {
    m.sum(name, &[])
}

struct Follow {
    took: Duration,
    cpu: Duration,
    overflows: f64,
    lost: f64,
}

/// Makes `pods` new pods and updates each volume once at once; waits until the agent
/// follows `want` volumes and has counted what it can.
fn follow_new(
    agent: &mut AgentProcess,
    node: &mut LabNode,
    remove_first: bool,
    prefix: &str,
    want: f64,
) -> anyhow::Result<Follow> {
    let m0 = agent.scrape()?;
    let (updates0, overflows0) = (
        total(&m0, "reloadscope_volume_updates_total"),
        total(&m0, "reloadscope_inotify_queue_overflows_total"),
    );
    let (cpu0, t0) = (proc_cpu(agent.pid())?, Instant::now());
    if remove_first {
        std::fs::remove_dir_all(node.kubelet_root().join("pods"))?;
    }
    let new = make_pods(node, prefix, 100)?;
    for w in &new {
        update(w, "v1")?;
    }
    let (m, _) = agent.wait_scrape(
        Duration::from_secs(120),
        Duration::from_millis(20),
        "the new volumes followed",
        |m| total(m, "reloadscope_watched_volumes") == want,
    )?;
    let (took, cpu) = (t0.elapsed(), proc_cpu(agent.pid())? - cpu0);
    let base = if remove_first { 0.0 } else { updates0 };
    // The agent counts an update it saw; one made before it watched the volume is part
    // of the volume as found (lost). What it will ever count is there by now: wait for
    // the last updates to be read, then count.
    let (m2, _) = agent
        .wait_scrape(
            Duration::from_secs(2),
            Duration::from_millis(20),
            "the counts to settle",
            |m2| total(m2, "reloadscope_volume_updates_total") >= base + new.len() as f64,
        )
        .unwrap_or((m.clone(), Duration::ZERO));
    let counted = total(&m2, "reloadscope_volume_updates_total") - base;
    Ok(Follow {
        took,
        cpu,
        overflows: total(&m2, "reloadscope_inotify_queue_overflows_total") - overflows0,
        lost: new.len() as f64 - counted,
    })
}

fn churn(quick: bool, out: &mut String) -> anyhow::Result<()> {
    let pods = if quick { 200 } else { 2000 };
    let mut node = LabNode::temp()?;
    let t = Instant::now();
    make_pods(&mut node, "old", pods)?;
    eprintln!("churn: {} volumes made in {:?}", pods * 5, t.elapsed());
    let binary = agent_binary()?;
    let extra = ["--probe", "off", "--no-reloads", "--no-kube"];
    let mut agent = AgentProcess::spawn(&binary, &node, &extra, Stdio::inherit())?;
    agent.wait_ready(Duration::from_secs(120), Duration::from_millis(20))?;
    let all = (pods * 5) as f64;
    agent.wait_scrape(
        Duration::from_secs(60),
        Duration::from_millis(50),
        "every volume",
        |m| total(m, "reloadscope_watched_volumes") == all,
    )?;
    let base = follow_new(&mut agent, &mut node, false, "beside", all + 500.0)?;
    let churned = follow_new(&mut agent, &mut node, true, "new", 500.0)?;
    let (how, stop) = agent.terminate();
    eprintln!("churn: agent stopped ({how}) in {stop:?}");
    let ms = |d: Duration| format!("{:.0} ms", d.as_secs_f64() * 1e3);
    *out += &format!(
        "### Churn: {} volumes, the pods dir removed and made again with 100 pods\n\n",
        pods * 5
    );
    *out += "| | from the removal (or the first new pod) to the new volumes followed | agent CPU | ratio (CPU) | inotify overflows | updates lost (of 500) |\n|---|---|---|---|---|---|\n";
    *out += &format!(
        "| baseline: 100 pods added beside them | {} | {} | 1.00 | {} | {} |\n",
        ms(base.took),
        ms(base.cpu),
        base.overflows,
        base.lost
    );
    *out += &format!(
        "| churn: pods dir removed, 100 pods made | {} | {} | {:.2} | {} | {} |\n\n",
        ms(churned.took),
        ms(churned.cpu),
        churned.cpu.as_secs_f64() / base.cpu.as_secs_f64().max(1e-3),
        churned.overflows,
        churned.lost
    );
    if churned.lost > 0.0 || base.lost > 0.0 {
        bail!("updates lost: {} (baseline {})", churned.lost, base.lost);
    }
    Ok(())
}

/// Latencies of `n` scrapes of /metrics one after the other, in ms.
fn scrapes(agent: &AgentProcess, n: usize) -> anyhow::Result<Vec<f64>> {
    (0..n)
        .map(|_| {
            let t = Instant::now();
            let (code, _) = scrape::get(agent.addr, "/metrics")?;
            if code != 200 {
                bail!("/metrics answered {code}");
            }
            Ok(t.elapsed().as_secs_f64() * 1e3)
        })
        .collect()
}

fn open_fds(pid: u32) -> usize {
    std::fs::read_dir(format!("/proc/{pid}/fd")).map_or(0, |d| d.count())
}

fn slow_connections(quick: bool, out: &mut String) -> anyhow::Result<()> {
    let (idle, slow) = if quick { (90, 10) } else { (1000, 100) };
    let mut node = LabNode::temp()?;
    make_pods(&mut node, "p", 100)?;
    // This process holds the clients: its soft limit up to its hard one.
    let mut r = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: reads into and writes from a live struct.
    unsafe {
        libc::getrlimit(libc::RLIMIT_NOFILE, &mut r);
        r.rlim_cur = r.rlim_max;
        libc::setrlimit(libc::RLIMIT_NOFILE, &r);
    }
    let binary = agent_binary()?;
    // prlimit(1) runs the agent under soft and hard 1024.
    let prlimit = std::env::temp_dir().join(format!("reloadscope-prlimit-{}", std::process::id()));
    std::fs::write(
        &prlimit,
        format!(
            "#!/bin/sh\nexec prlimit --nofile=1024:1024 {} \"$@\"\n",
            binary.display()
        ),
    )?;
    std::fs::set_permissions(
        &prlimit,
        std::os::unix::fs::PermissionsExt::from_mode(0o755),
    )?;
    let extra = ["--probe", "off", "--no-reloads", "--no-kube"];
    let mut agent = AgentProcess::spawn(&prlimit, &node, &extra, Stdio::inherit())?;
    let ready = agent.wait_ready(Duration::from_secs(60), Duration::from_millis(20));
    let _ = std::fs::remove_file(&prlimit);
    ready?;
    let limit = agent
        .scrape()?
        .get("process_max_fds", &[])
        .context("process_max_fds")?;
    let base = scrapes(&agent, 200)?;
    let base_fds = open_fds(agent.pid());
    let mut held = Vec::new();
    for i in 0..idle + slow {
        let mut s = TcpStream::connect(agent.addr)?;
        if i >= idle {
            s.write_all(b"GET /metrics HTTP/1.1\r\nHost: x\r\n")?;
        }
        held.push(s);
    }
    let cpu0 = proc_cpu(agent.pid())?;
    let loaded = scrapes(&agent, 200)?;
    let cpu = proc_cpu(agent.pid())? - cpu0;
    let loaded_fds = open_fds(agent.pid());
    let m = agent.scrape()?;
    let evicted = m
        .get("reloadscope_http_connections_evicted_total", &[])
        .unwrap_or(0.0);
    let t = Instant::now();
    for s in &mut held {
        s.set_read_timeout(Some(Duration::from_secs(30)))?;
        let mut b = [0u8; 1];
        if let Ok(n) = s.read(&mut b)
            && n > 0
        {
            bail!("a held connection was answered");
        }
    }
    let all_closed = t.elapsed();
    agent.terminate();
    let p = |v: &[f64], q: f64| percentile(v, q);
    *out += &format!(
        "### Slow connections: {idle} idle and {slow} half-sent held, descriptor limit {limit}\n\n"
    );
    *out += "| | scrape p50 | p99 | max | ratio (p99) | agent fds |\n|---|---|---|---|---|---|\n";
    *out += &format!(
        "| baseline: nothing else connected | {:.2} ms | {:.2} ms | {:.2} ms | 1.00 | {base_fds} |\n",
        p(&base, 50.0),
        p(&base, 99.0),
        p(&base, 100.0)
    );
    *out += &format!(
        "| {} connections held | {:.2} ms | {:.2} ms | {:.2} ms | {:.2} | {loaded_fds} |\n\n",
        idle + slow,
        p(&loaded, 50.0),
        p(&loaded, 99.0),
        p(&loaded, 100.0),
        p(&loaded, 99.0) / p(&base, 99.0).max(1e-3)
    );
    *out += &format!(
        "Connections evicted to keep the cap ({} for this limit): {evicted}; agent CPU over \
         the 200 loaded scrapes: {:.0} ms; every held connection closed by the agent {:.1} s \
         after the scrapes (5 s header timeout).\n\n",
        limit as usize / 4,
        cpu.as_secs_f64() * 1e3,
        all_closed.as_secs_f64()
    );
    Ok(())
}

/// `limits [ARGS]`: the arguments after the benchmark's name.
pub fn main(raw: &[String]) -> ExitCode {
    let given: Vec<String> = raw.iter().filter(|a| *a != "--bench").cloned().collect();
    let args = match common::checked_args("limits", USAGE, "", parse(&given)) {
        Ok(a) => a,
        Err(code) => return code,
    };
    // No agent of an earlier run may be measured alongside (the header lists the
    // processes holding tracepoint BPF programs).
    let agents: Vec<String> = std::fs::read_dir("/proc")
        .into_iter()
        .flatten()
        .flatten()
        .filter(|p| {
            std::fs::read_to_string(p.path().join("comm")).is_ok_and(|c| c.trim() == "reloadscope")
        })
        .map(|p| p.file_name().to_string_lossy().into_owned())
        .collect();
    let mut out = common::header("limits", &given, args.quick);
    out += &format!(
        "- other reloadscope processes at start: {}\n\n",
        if agents.is_empty() {
            "none".into()
        } else {
            agents.join(", ")
        },
    );
    for (name, run) in [
        (
            "churn",
            churn as fn(bool, &mut String) -> anyhow::Result<()>,
        ),
        ("slow connections", slow_connections),
    ] {
        if let Err(e) = run(args.quick, &mut out) {
            eprintln!("limits: {name}: {e:#}");
            print!("{out}");
            return ExitCode::FAILURE;
        }
    }
    out += &format!("- load average at the end: {}\n", loadavg());
    print!("{out}");
    ExitCode::SUCCESS
}
