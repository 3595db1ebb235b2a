//! Benchmark `scale`: the agent on a big node, beside the simplest alternatives a user
//! might run instead, measured in the same run on the same node.
//!
//! 10,000 volumes over 2,000 lab pods, 100 of them consumed by lab containers that
//! reload on `..data`. Three phases, each a process of its own on that node:
//!
//! 1. the agent as deployed (release binary: eBPF probe + inotify + fanotify);
//! 2. the agent in its inotify-only mode (`--no-ebpf --no-reloads`);
//! 3. a tight poller written for the benchmark (`scale/poller.rs`): every 100 ms a
//!    readlink of every volume's `..data`.
//!
//! Each: start-up scan time, inotify watches, RSS, idle CPU; then 1,000 updates/s for
//! 60 s round robin over the volumes: updates lost, CPU, the error of the update times
//! it gives and, for the agent, of the reload times it gives against the consumers'
//! own open logs.
//!
//! Run as root: `cargo xtask bench scale [--quick] [--only PHASES]`. Progress goes to
//! stderr; stdout gets a Markdown section for BENCHMARKS.md.

mod agent_phase;
mod churn;
mod node;
mod poller;
mod report;
mod writer;

use std::{
    fmt::Write as _,
    process::ExitCode,
    time::{Duration, Instant},
};

use crate::common::{self, machine::loadavg};

const USAGE: &str = "\
usage: cargo xtask bench scale [--quick] [--pods N] [--consumers N] [--seconds N] [--idle N]
                               [--agent PATH] [--only PHASES]

  --quick          200 pods, 10 consumers, 10 s of updates, 10 s idle: a smoke run
  --only PHASES    run only these phases, comma-separated, of agent (as deployed),
                   inotify (the inotify-only agent), poller: e.g. `--only agent
                   --idle 10` measures the deployed agent's memory and CPU at full
                   size in about 100 s (the full run: about 400 s)
  --pods N         pods (5 volumes each; default 2000)
  --consumers N    reloading lab containers (default 100; each holds an inotify
                   instance: mind fs.inotify.max_user_instances)
  --seconds N      seconds of 1,000 updates/s (default 60)
  --idle N         seconds of the idle CPU window (default 60)
  --agent PATH     the reloadscope binary to run (default: target/release/reloadscope);
                   a copy of it keeps a rebuild during the run out of the figures

Needs root (tmpfs and bind mounts, a loop-mounted ext4 image, cgroups, fanotify, the
eBPF probe). Runs the agent as its own process: target/release/reloadscope, which
`cargo xtask bench scale` (cargo bench) builds; run this binary directly only after
`cargo build -p reloadscope --release`.";

pub struct Params {
    pub pods: usize,
    pub per_pod: usize,
    /// A Secret (tmpfs) as the last volume of every `secret_every`th pod.
    pub secret_every: usize,
    pub consumers: usize,
    pub rate: u64,
    pub seconds: u64,
    pub idle: Duration,
    /// The poller's interval.
    pub poll: Duration,
    /// Between two scrapes of an agent during the updates.
    pub scrape_every: Duration,
}

impl Params {
    /// How far a report of an update may precede the writer's clock read after the
    /// rename and still be matched to it: half the time between two updates of one
    /// volume (the writer's thread can lose its CPU between the rename and the read).
    pub fn slack_ns(&self) -> i64 {
        let volumes = (self.pods * self.per_pod) as i64;
        volumes * 1_000_000_000 / self.rate as i64 / 2
    }
}

/// The phases of a run, in their order.
const PHASES: [&str; 3] = ["agent", "inotify", "poller"];

struct Args {
    p: Params,
    quick: bool,
    /// Which of [`PHASES`] run.
    only: [bool; 3],
    agent: Option<std::path::PathBuf>,
    given: Vec<String>,
}

fn parse_args(raw: &[String]) -> Result<Args, String> {
    let mut quick = false;
    let mut agent = None;
    let mut only = [true; 3];
    let (mut pods, mut consumers, mut seconds, mut idle) = (None, None, None, None);
    let mut given = Vec::new();
    let mut it = raw.iter();
    while let Some(a) = it.next() {
        let mut num = |slot: &mut Option<u64>| -> Result<(), String> {
            let v = it.next().ok_or(format!("{a} needs a number"))?;
            *slot = Some(v.parse().map_err(|_| format!("{a} {v:?}: not a number"))?);
            given.push(a.clone());
            given.push(v.clone());
            Ok(())
        };
        match a.as_str() {
            // cargo bench adds it to every benchmark binary's arguments.
            "--bench" => {}
            "--quick" => {
                quick = true;
                given.push(a.clone());
            }
            "--pods" => num(&mut pods)?,
            "--consumers" => num(&mut consumers)?,
            "--seconds" => num(&mut seconds)?,
            "--idle" => num(&mut idle)?,
            "--only" => {
                let v = it.next().ok_or("--only needs a list of phases")?;
                only = [false; 3];
                for ph in v.split(',') {
                    let i = PHASES.iter().position(|&x| x == ph).ok_or(format!(
                        "--only {v:?}: unknown phase {ph:?}, choose from {}",
                        PHASES.join(", ")
                    ))?;
                    only[i] = true;
                }
                given.push(a.clone());
                given.push(v.clone());
            }
            "--agent" => {
                let v = it.next().ok_or("--agent needs a path")?;
                agent = Some(std::path::PathBuf::from(v));
            }
            "-h" | "--help" => return Err(String::new()),
            other => return Err(format!("unknown argument {other:?}")),
        }
    }
    let (d_pods, d_consumers, d_seconds, d_idle) = if quick {
        (200, 10, 10, 10)
    } else {
        (2000, 100, 60, 60)
    };
    let pods = pods.unwrap_or(d_pods) as usize;
    let consumers = consumers.unwrap_or(d_consumers) as usize;
    if pods == 0 || consumers > pods {
        return Err("need at least one pod and no more consumers than pods".into());
    }
    let per_pod = 5;
    let rate = 1000;
    // Each volume is updated every volumes/rate seconds: at least two scrapes in between.
    let period = Duration::from_secs_f64((pods * per_pod) as f64 / rate as f64);
    Ok(Args {
        p: Params {
            pods,
            per_pod,
            secret_every: 2,
            consumers,
            rate,
            seconds: seconds.unwrap_or(d_seconds).max(1),
            idle: Duration::from_secs(idle.unwrap_or(d_idle).max(1)),
            poll: Duration::from_millis(100),
            scrape_every: (period / 2).min(Duration::from_secs(5)),
        },
        quick,
        only,
        agent,
        given,
    })
}

/// A phase `--only` leaves out.
fn skipped<T>() -> anyhow::Result<T> {
    Err(anyhow::anyhow!(report::SKIPPED))
}

/// The commit the agent was built from, and whether agent/ had changes on top.
fn source_state() -> String {
    let git = |args: &[&str]| {
        std::process::Command::new("git")
            .args(args)
            .current_dir(env!("CARGO_MANIFEST_DIR"))
            .output()
            .ok()
            .filter(|o| o.status.success())
            .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_owned())
    };
    match git(&["rev-parse", "--short", "HEAD"]) {
        Some(head) => {
            let dirty = git(&[
                "status",
                "--porcelain",
                "--",
                "src",
                "build.rs",
                "../agent-ebpf",
            ])
            .is_some_and(|s| !s.is_empty());
            if dirty {
                format!("{head}, with uncommitted changes in the agent's sources")
            } else {
                head
            }
        }
        None => "unknown".into(),
    }
}

/// `scale [ARGS]`: the arguments after the benchmark's name.
pub fn main(raw: &[String]) -> ExitCode {
    if raw.first().map(String::as_str) == Some(poller::FLAG) {
        return poller::child_main(&raw[1..]);
    }
    let args = match common::checked_args("scale", USAGE, "", parse_args(raw)) {
        Ok(a) => a,
        Err(code) => return code,
    };
    let found = match args.agent.clone() {
        Some(p) if p.is_file() => Ok(p),
        Some(p) => Err(anyhow::anyhow!("--agent {}: no such file", p.display())),
        None => common::agent_process::agent_binary(),
    };
    let bin = match found {
        Ok(b) => b,
        Err(e) => {
            eprintln!("scale: {e:#}\n{USAGE}");
            return ExitCode::from(2);
        }
    };
    let p = &args.p;
    let started = Instant::now();
    let mut out = common::header("scale", &args.given, args.quick);
    let _ = match &args.agent {
        Some(_) => writeln!(
            out,
            "- agent: `{}` (given with `--agent`); source tree at the start: {}",
            bin.display(),
            source_state()
        ),
        None => writeln!(
            out,
            "- agent: `{}`, built by this run's cargo from: {}",
            bin.display(),
            source_state()
        ),
    };

    eprintln!(
        "[scale] setup: {} pods x {} volumes, {} consumers",
        p.pods, p.per_pod, p.consumers
    );
    let sn = match node::ScaleNode::create(p) {
        Ok(n) => n,
        Err(e) => {
            eprintln!("[scale] setup failed: {e:#}");
            return ExitCode::FAILURE;
        }
    };
    eprintln!(
        "[scale] setup took {:.1} s",
        (sn.pods_took + sn.consumers_took).as_secs_f64()
    );
    let setup = report::Setup::of(&sn);
    let mut rev = 1;
    let full = if args.only[0] {
        agent_phase::run(p, &bin, &sn, agent_phase::Mode::Full, &mut rev)
    } else {
        skipped()
    };
    if let Err(e) = &full
        && args.only[0]
    {
        eprintln!("[scale] agent failed: {e:#}");
    }
    let inotify = if args.only[1] {
        agent_phase::run(p, &bin, &sn, agent_phase::Mode::InotifyOnly, &mut rev)
    } else {
        skipped()
    };
    if let Err(e) = &inotify
        && args.only[1]
    {
        eprintln!("[scale] inotify-only agent failed: {e:#}");
    }
    let poller = if args.only[2] {
        poller::run(p, &sn, &mut rev)
    } else {
        skipped()
    };
    if let Err(e) = &poller
        && args.only[2]
    {
        eprintln!("[scale] poller failed: {e:#}");
    }
    eprintln!("[scale] teardown");
    let teardown = sn.teardown();
    let failed = (args.only[0] && full.is_err())
        || (args.only[1] && inotify.is_err())
        || (args.only[2] && poller.is_err());
    let outcome = report::Outcome {
        setup,
        full,
        inotify,
        poller,
        teardown,
    };
    let _ = writeln!(out, "- load average at the end: {}", loadavg());
    out.push('\n');
    out.push_str(&report::render(p, &outcome));
    common::finish(out, started, failed)
}
