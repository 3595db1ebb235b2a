//! The benchmarks, one program with a subcommand each: `cargo xtask bench NAME [ARGS]`
//! (which builds the lab binary first), or `cargo bench -p reloadscope --bench bench --
//! NAME [ARGS]`.
//!
//! - [`detect`]: how fast and how completely the agent sees the kubelet's `..data`
//!   swaps, and what its probe costs everything else on the node;
//! - [`reload`]: what measuring consumers' reloads costs a node, and how exact it is;
//! - [`scale`]: the agent on a big node, beside the simplest alternatives;
//! - [`overhead`]: what each probe variant costs the node's other system calls;
//! - [`limits`]: the agent under churn and under slow connections;
//! - [`common`]: what they share.
//!
//! Each takes its own arguments and prints its own usage (`NAME --help`); progress goes
//! to stderr, the report (Markdown for BENCHMARKS.md) to stdout.

mod common;
mod detect;
mod limits;
mod overhead;
mod reload;
mod scale;

use std::process::ExitCode;

const USAGE: &str = "\
usage: cargo xtask bench BENCHMARK [ARGS]...
       cargo bench -p reloadscope --bench bench -- BENCHMARK [ARGS]...

  detect    detection latency, a burst of updates, the probe's cost to other syscalls
  reload    the cost of measuring reloads, and their accuracy
  scale     10,000 volumes: the agent beside an inotify-only agent and a poller
  overhead  each probe variant's cost to other syscalls
  limits    the agent under churn and under slow connections

`BENCHMARK --help` lists a benchmark's own arguments.";

/// A benchmark's entry point: it gets the arguments after its name.
type Main = fn(&[String]) -> ExitCode;

/// Each subcommand and its entry point.
const BENCHMARKS: [(&str, Main); 5] = [
    ("detect", detect::main),
    ("reload", reload::main),
    ("scale", scale::main),
    ("overhead", overhead::main),
    ("limits", limits::main),
];

fn main() -> ExitCode {
    let mut args: Vec<String> = std::env::args().skip(1).collect();
    // cargo bench adds `--bench` to the arguments; the benchmarks skip it where it is.
    let Some(at) = args.iter().position(|a| a != "--bench") else {
        eprintln!("bench: name a benchmark\n{USAGE}");
        return ExitCode::from(2);
    };
    let name = args.remove(at);
    match BENCHMARKS.iter().find(|(n, _)| *n == name) {
        Some((_, run)) => run(&args),
        None if name == "-h" || name == "--help" => {
            eprintln!("{USAGE}");
            ExitCode::from(2)
        }
        None => {
            eprintln!("bench: unknown benchmark {name:?}\n{USAGE}");
            ExitCode::from(2)
        }
    }
}
