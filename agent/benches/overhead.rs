//! Benchmark `overhead`: what each probe variant, loaded and attached, costs the
//! node's other system calls.
//!
//! Three loops: `getppid` (any syscall), open+close of a file on tmpfs (the syscalls
//! of every reader), and `renameat` of a file back and forth (the family the probe
//! hooks, filtered out in the kernel because the name is not `..data`). Interleaved
//! A/B rounds: **A** no probe, **B** the probe of one variant, loaded and attached in
//! this process through the library (`Probe::load_variant`, as the agent attaches
//! it) and dropped after the side. Each side times each loop in chunks and keeps the
//! fastest (`rounds::CHUNKS`); ratio B/A: the median of the per-round ratios.
//!
//! Run as root: `cargo xtask bench overhead` (this binary on the host, then in each VM
//! kernel of the matrix, one table), or this binary alone:
//! `cargo bench -p reloadscope --bench bench -- overhead [--probe V] [--rounds N] ...`.
//! Progress goes to stderr; stdout gets a Markdown table, or with `--lines` one
//! `RELOADSCOPE-OVERHEAD <json>` line per figure for xtask.

mod report;
mod rounds;

use std::{
    process::ExitCode,
    time::{Duration, Instant},
};

use reloadscope::probe::{Choice, RenameHook, Variant};

use crate::common;

const USAGE: &str = "\
usage: cargo bench -p reloadscope --bench bench -- overhead [--probe VARIANT] [--rounds N]
                                                           [--side-ms MS] [--quick] [--lines]
       (or `cargo xtask bench overhead`: the host, then each VM kernel, one table)

  --probe V     auto (default: every variant), fentry or tracepoint; without it,
                RELOADSCOPE_PROBE when set
  --rounds N    A/B rounds (default 40)
  --side-ms MS  how long each loop runs on each side of a round; the calls per loop
                are set from a first timing (default 50)
  --quick       4 rounds of 20 ms: a smoke run
  --lines       RELOADSCOPE-OVERHEAD <json> lines on stdout instead of Markdown

Needs root (eBPF probe). Runs at nice -10, ahead of the node's other work.";

/// The benchmark's nice value: ahead of builds and other users' work on a shared
/// machine, so that both sides of a round lose less time to them.
const NICE: i32 = -10;

pub struct Args {
    pub choice: Choice,
    pub rounds: usize,
    pub side: Duration,
    pub lines: bool,
}

fn parse_args(raw: &[String]) -> Result<Args, String> {
    let mut args = Args {
        choice: Choice::from_env().unwrap_or_default(),
        rounds: 40,
        side: Duration::from_millis(50),
        lines: false,
    };
    let mut it = raw.iter();
    while let Some(a) = it.next() {
        let mut value = || it.next().ok_or(format!("{a} needs a value"));
        match a.as_str() {
            // cargo bench adds it to every benchmark binary's arguments.
            "--bench" => {}
            "--quick" => {
                args.rounds = 4;
                args.side = Duration::from_millis(20);
            }
            "--lines" => args.lines = true,
            "--probe" => {
                use clap::ValueEnum as _;
                let v = value()?;
                args.choice = Choice::from_str(v, true).map_err(|e| format!("--probe: {e}"))?;
            }
            "--rounds" => {
                let v = value()?;
                args.rounds = v.parse().map_err(|e| format!("--rounds {v:?}: {e}"))?;
            }
            "--side-ms" => {
                let v = value()?;
                let ms: u64 = v.parse().map_err(|e| format!("--side-ms {v:?}: {e}"))?;
                args.side = Duration::from_millis(ms);
            }
            "-h" | "--help" => return Err(String::new()),
            other => return Err(format!("unknown argument {other:?}")),
        }
    }
    if args.rounds == 0 || args.side.is_zero() {
        return Err("--rounds and --side-ms must be positive".into());
    }
    if args.choice == Choice::Off {
        return Err("--probe off measures nothing: name a variant, or auto".into());
    }
    Ok(args)
}

/// `overhead [ARGS]`: the arguments after the benchmark's name.
pub fn main(raw: &[String]) -> ExitCode {
    let args = match common::checked_args("overhead", USAGE, " (eBPF probe)", parse_args(raw)) {
        Ok(a) => a,
        Err(code) => return code,
    };
    // SAFETY: setpriority has no memory preconditions; 0 is the calling thread (the
    // only one yet), whose value the open loop's child processes inherit.
    let nice = if unsafe { libc::setpriority(libc::PRIO_PROCESS, 0, NICE) } == 0 {
        NICE
    } else {
        eprintln!(
            "[overhead] could not set nice {NICE}: {}",
            std::io::Error::last_os_error()
        );
        0
    };
    let started = Instant::now();
    let mut out = report::Report::new(args.lines);
    let files = match rounds::Files::new() {
        Ok(f) => f,
        Err(e) => {
            eprintln!("[overhead] {e:#}");
            return ExitCode::FAILURE;
        }
    };
    out.machine(&args, files.fs, nice);
    let calls = match rounds::calibrate(&files, args.side) {
        Ok(c) => c,
        Err(e) => {
            eprintln!("[overhead] first timing failed: {e:#}");
            return ExitCode::FAILURE;
        }
    };
    out.calls(&calls);
    let mut failed = false;
    let variants: &[Variant] = args.choice.variants();
    for &variant in variants {
        // fentry runs again with the syscall hooks older kernels get, when it hooked
        // renames at vfs_rename.
        let mut hook = Some(RenameHook::VfsRename);
        while let Some(want) = hook.take() {
            match rounds::run(variant, want, &args, &files, &calls) {
                Ok(rounds::Outcome::Measured(figures)) => {
                    out.figures(&figures, &calls);
                    if figures.renames == Some(RenameHook::VfsRename) {
                        hook = Some(RenameHook::Syscalls);
                    }
                }
                Ok(rounds::Outcome::NotAvailable(reason)) => out.not_available(variant, &reason),
                Err(e) => {
                    eprintln!("[overhead] {}: {e:#}", variant.label());
                    out.failed(variant, &format!("{e:#}"));
                    failed = true;
                }
            }
        }
    }
    out.finish(started.elapsed());
    if failed {
        ExitCode::FAILURE
    } else {
        ExitCode::SUCCESS
    }
}
