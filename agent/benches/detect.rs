//! Benchmark `detect`: how fast and how completely the agent sees the kubelet's
//! `..data` swaps, and what its probe costs everything else on the node.
//!
//! 1. Detection latency, swap syscall to metric updated, agent in-process: with the
//!    eBPF probe, and with inotify alone as the baseline.
//! 2. A burst of 1,000 updates/s across hundreds of volumes, agent as its own process:
//!    updates counted and lost, gaps, ring buffer losses, agent CPU and memory.
//! 3. Cost added to unrelated syscalls (`renameat`, `getppid`) by the attached probe,
//!    and by its watch-call programs (`Probe::watch_calls`) to those and to the
//!    `inotify_add_watch` / `inotify_rm_watch` calls they trace.
//!
//! Run as root: `cargo xtask bench detect [--quick] [--only latency|burst|overhead]`.
//! Progress goes to stderr; stdout gets a Markdown section for BENCHMARKS.md.

mod burst;
mod latency;
mod overhead;
mod watch_reader;

use std::{process::ExitCode, time::Instant};

use crate::common;

const USAGE: &str = "\
usage: cargo xtask bench detect [--quick] [--only latency|burst|overhead]... [--state-file]

  --quick       smaller counts, for a smoke run
  --only M      run measure M only (repeatable)
  --state-file  run the burst once more with the agent's --state-file (its journal
                synced before each batch of swaps is counted), beside the first

Needs root (eBPF probe, tmpfs mounts).";

#[derive(Clone, Copy, PartialEq, Eq)]
enum Measure {
    Latency,
    Burst,
    Overhead,
}

struct Args {
    quick: bool,
    state_file: bool,
    only: Vec<Measure>,
    /// As given, for the report's first line.
    given: Vec<String>,
}

fn parse_args(raw: &[String]) -> Result<Args, String> {
    let mut args = Args {
        quick: false,
        state_file: false,
        only: Vec::new(),
        given: Vec::new(),
    };
    let mut it = raw.iter().cloned();
    while let Some(a) = it.next() {
        match a.as_str() {
            // cargo bench adds it to every benchmark binary's arguments.
            "--bench" => continue,
            "--quick" => args.quick = true,
            "--state-file" => args.state_file = true,
            "--only" => {
                let m = it.next().ok_or("--only needs a measure")?;
                args.only.push(match m.as_str() {
                    "latency" => Measure::Latency,
                    "burst" => Measure::Burst,
                    "overhead" => Measure::Overhead,
                    other => return Err(format!("unknown measure {other:?}")),
                });
                args.given.push(a);
                args.given.push(m);
                continue;
            }
            "-h" | "--help" => return Err(String::new()),
            other => return Err(format!("unknown argument {other:?}")),
        }
        args.given.push(a);
    }
    Ok(args)
}

/// `detect [ARGS]`: the arguments after the benchmark's name.
pub fn main(raw: &[String]) -> ExitCode {
    let args = match common::checked_args(
        "detect",
        USAGE,
        " (eBPF probe, tmpfs mounts)",
        parse_args(raw),
    ) {
        Ok(a) => a,
        Err(code) => return code,
    };
    let wants = |m| args.only.is_empty() || args.only.contains(&m);
    let started = Instant::now();
    let binary = common::agent_process::agent_binary();

    let mut out = String::new();
    out.push_str(&common::header("detect", &args.given, args.quick));

    let mut failed = false;
    let mut section = |name: &str, r| common::section("detect", name, r, &mut failed);
    let mut latency_out = None;
    if wants(Measure::Latency) {
        let p = if args.quick {
            latency::Params {
                updates: 100,
                rounds: 2,
                pods: 1,
                warmup: 5,
            }
        } else {
            latency::Params {
                updates: 1000,
                rounds: 2,
                pods: 3,
                warmup: 20,
            }
        };
        latency_out = Some(section("Detection latency", latency::run(&p)));
    }
    let mut burst_out = None;
    if wants(Measure::Burst) {
        let p = if args.quick {
            burst::Params {
                volumes: 100,
                seconds: 2,
                rate: 1000,
                state_file: false,
            }
        } else {
            burst::Params {
                volumes: 500,
                seconds: 10,
                rate: 1000,
                state_file: false,
            }
        };
        let run = |p: &burst::Params| match &binary {
            Ok(bin) => burst::run(p, bin),
            Err(e) => Err(anyhow::anyhow!("{e:#}")),
        };
        let plain = run(&p);
        let mut text = String::new();
        if args.state_file {
            let journaled = run(&burst::Params {
                state_file: true,
                ..p
            });
            if let (Ok(a), Ok(b)) = (&plain, &journaled) {
                text = format!(
                    "\nAgent CPU over the burst with --state-file / without, same run: \
                     {:.2} s / {:.2} s = {}.\n",
                    b.agent_cpu.as_secs_f64(),
                    a.agent_cpu.as_secs_f64(),
                    common::figures::ratio(b.agent_cpu.as_secs_f64(), a.agent_cpu.as_secs_f64())
                );
            }
            let journaled = journaled.map(|b| b.report);
            text = section("Burst with --state-file", journaled) + &text;
        }
        burst_out = Some(section("Burst", plain.map(|b| b.report)) + &text);
    }
    let mut overhead_out = None;
    if wants(Measure::Overhead) {
        let p = if args.quick {
            overhead::Params {
                rounds: 5,
                renames: 20_000,
                getppids: 200_000,
                watch_pairs: 10_000,
            }
        } else {
            overhead::Params {
                rounds: 10,
                renames: 200_000,
                getppids: 2_000_000,
                watch_pairs: 100_000,
            }
        };
        overhead_out = Some(section("Probe overhead", overhead::run(&p)));
    }
    for s in [latency_out, burst_out, overhead_out].into_iter().flatten() {
        out.push('\n');
        out.push_str(&s);
    }
    common::finish(out, started, failed)
}
