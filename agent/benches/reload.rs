//! Benchmark `reload`: what measuring consumers' reloads costs a node, and how exact
//! the measurement is.
//!
//! 1. Cost: open+close loops on unrelated files and on watched volume files, without
//!    the agent, with the agent for detection only, and with the agent measuring reloads
//!    (in-process, `ebpf: false`; optionally `ebpf: true` too), on a lab node with 1,000
//!    volumes, each consumed by a lab container: every volume settled, then two of them
//!    while their consumers are stale after an update.
//! 2. Accuracy: over 1,000 updates, the agent's reload time of each reloading lab
//!    container against the container's own log of its open; reloads missed.
//! 3. Marks (only when asked for): the cost of each fanotify mark set-up the agent
//!    could leave on a settled volume, no agent running.
//!
//! Run as root: `cargo xtask bench reload [--quick] [--only cost|accuracy|marks] [--no-ebpf-row]
//! [--settled-marks ignore|remove|auto]`.
//! Progress goes to stderr; stdout gets a Markdown section for BENCHMARKS.md.

mod accuracy;
mod cost;
mod cost_fleet;
mod cost_report;
mod fanotify_marks;
mod marks;
mod openloop;

use std::{
    process::ExitCode,
    time::{Duration, Instant},
};

use reloadscope::opens::SettledMarks;

use crate::common;

const USAGE: &str = "\
usage: cargo xtask bench reload [--quick] [--only cost|accuracy|marks]... [--no-ebpf-row]
                               [--settled-marks ignore|remove|auto]

  --quick        smaller counts, for a smoke run
  --only M       run measure M only (repeatable); marks runs only when named
  --no-ebpf-row  leave out the cost of the agent as deployed (ebpf: true)
  --settled-marks MODE
                 the agent's --settled-marks (default auto)

Needs root (tmpfs and bind mounts, cgroups, fanotify, the eBPF probe).";

#[derive(Clone, Copy, PartialEq, Eq)]
enum Measure {
    Cost,
    Accuracy,
    Marks,
}

struct Args {
    quick: bool,
    only: Vec<Measure>,
    ebpf_row: bool,
    settled: SettledMarks,
    /// As given, for the report's first line.
    given: Vec<String>,
}

fn parse_args(raw: &[String]) -> Result<Args, String> {
    let mut args = Args {
        quick: false,
        only: Vec::new(),
        ebpf_row: true,
        settled: SettledMarks::Auto,
        given: Vec::new(),
    };
    let mut it = raw.iter();
    while let Some(a) = it.next() {
        match a.as_str() {
            // cargo bench adds it to every benchmark binary's arguments.
            "--bench" => continue,
            "--quick" => args.quick = true,
            "--no-ebpf-row" => args.ebpf_row = false,
            "--settled-marks" => {
                let m = it
                    .next()
                    .ok_or("--settled-marks needs ignore, remove or auto")?;
                args.settled = match m.as_str() {
                    "ignore" => SettledMarks::Ignore,
                    "remove" => SettledMarks::Remove,
                    "auto" => SettledMarks::Auto,
                    other => return Err(format!("unknown --settled-marks {other:?}")),
                };
                args.given.push(a.clone());
                args.given.push(m.clone());
                continue;
            }
            "--only" => {
                let m = it.next().ok_or("--only needs a measure")?;
                args.only.push(match m.as_str() {
                    "cost" => Measure::Cost,
                    "accuracy" => Measure::Accuracy,
                    "marks" => Measure::Marks,
                    other => return Err(format!("unknown measure {other:?}")),
                });
                args.given.push(a.clone());
                args.given.push(m.clone());
                continue;
            }
            "-h" | "--help" => return Err(String::new()),
            other => return Err(format!("unknown argument {other:?}")),
        }
        args.given.push(a.clone());
    }
    Ok(args)
}

/// `reload [ARGS]`: the arguments after the benchmark's name.
pub fn main(raw: &[String]) -> ExitCode {
    if raw.first().map(String::as_str) == Some(openloop::FLAG) {
        return openloop::child_main(&raw[1..]);
    }
    let args = match common::checked_args("reload", USAGE, "", parse_args(raw)) {
        Ok(a) => a,
        Err(code) => return code,
    };
    let wants = |m| args.only.is_empty() || args.only.contains(&m);
    let started = Instant::now();

    let mut out = String::new();
    out.push_str(&common::header("reload", &args.given, args.quick));

    let mut failed = false;
    let mut section = |name: &str, r| common::section("reload", name, r, &mut failed);
    let mut sections = Vec::new();
    if wants(Measure::Cost) {
        let p = if args.quick {
            cost::Params {
                pods: 20,
                rounds: 3,
                calls: 20_000,
                ebpf_row: args.ebpf_row,
                settled: args.settled,
            }
        } else {
            cost::Params {
                pods: 200,
                rounds: 8,
                calls: 150_000,
                ebpf_row: args.ebpf_row,
                settled: args.settled,
            }
        };
        sections.push(section("Cost", cost::run(&p)));
    }
    if wants(Measure::Accuracy) {
        let p = accuracy::Params {
            updates: if args.quick { 100 } else { 1000 },
            period: Duration::from_millis(50),
            settled: args.settled,
        };
        sections.push(section("Accuracy", accuracy::run(&p)));
    }
    if args.only.contains(&Measure::Marks) {
        let p = if args.quick {
            marks::Params {
                rounds: 3,
                calls: 20_000,
            }
        } else {
            marks::Params {
                rounds: 15,
                calls: 150_000,
            }
        };
        sections.push(section("Marks", marks::run(&p)));
    }
    for s in sections {
        out.push('\n');
        out.push_str(&s);
    }
    common::finish(out, started, failed)
}
