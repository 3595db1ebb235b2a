//! `cargo xtask bench overhead`: the `overhead` benchmark (agent/benches/overhead.rs,
//! a subcommand of the benchmarks' program) on the host kernel, then inside each VM kernel of the matrix, one boot per kernel
//! with one run of the benchmark per probe variant (`RELOADSCOPE_PROBE`), its
//! figures read back from the console; then one Markdown table of them all.
//!
//! The benchmark prints its figures as `RELOADSCOPE-OVERHEAD <json>` lines
//! (`--lines`; their fields are listed in agent/benches/overhead/report.rs). The same
//! executable runs on the host and in the VMs.

use std::ffi::OsString;
use std::fmt::Write as _;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use clap::Parser;
use serde_json::Value;

use super::console::{self, Accel};
use super::initramfs::{self, Plan, Run};
use super::{AccelChoice, CMDLINE, KERNELS, image};
use crate::cmd;

/// The benchmarks' program: its bench target in agent/benches/.
const PROGRAM: &str = "bench";
/// The benchmark: the program's subcommand, and its name in the VM's runs.
const BENCH: &str = "overhead";
/// Its lines' prefix (agent/benches/overhead/report.rs).
const PREFIX: &str = "RELOADSCOPE-OVERHEAD ";
/// The nice value of the benchmark and of QEMU.
const NICE: i32 = -10;
/// The variants each VM runs, one benchmark run each.
const VARIANTS: [&str; 2] = ["fentry", "tracepoint"];

/// The probe's cost to other syscalls, with and without each variant, on the host
/// kernel and in the VM kernels of the matrix (needs root)
///
/// Builds the benchmarks (`cargo bench --no-run`), runs `overhead` on the host,
/// then, unless --host-only, boots each kernel of the matrix under QEMU (KVM, or TCG
/// where /dev/kvm is kvm_pvm or with --accel tcg) with the benchmark in its
/// initramfs and runs it there once per probe variant (fewer rounds: --vm-rounds).
/// Prints one Markdown table: kernel, variant, loop, A (no probe) and B (probe) ns
/// per call, the ratio B/A, the goal and whether it is met.
#[derive(Parser)]
#[command(name = "cargo xtask bench overhead", verbatim_doc_comment)]
pub struct OverheadArgs {
    /// Only the host kernel: no VM
    #[arg(long)]
    host_only: bool,
    /// VM kernels to boot: 6.1, 6.12 (default: all of the matrix)
    #[arg(long = "kernel", value_name = "NAME")]
    kernels: Vec<String>,
    /// kvm, tcg, or auto: KVM when /dev/kvm is hardware-assisted, TCG when it is
    /// kvm_pvm, no VM without /dev/kvm
    #[arg(long, value_name = "ACCEL", default_value = "auto")]
    accel: AccelChoice,
    /// A/B rounds on the host
    #[arg(long, value_name = "N", default_value_t = 40)]
    rounds: usize,
    /// Milliseconds each loop runs per side of a round on the host
    #[arg(long, value_name = "MS", default_value_t = 50)]
    side_ms: u64,
    /// A/B rounds in each VM (under TCG fentry runs twice, with renames hooked at
    /// vfs_rename and on the syscalls, with a third side per round; with the
    /// defaults a kernel takes 5-6 minutes, both about 11)
    #[arg(long, value_name = "N", default_value_t = 40)]
    vm_rounds: usize,
    /// Milliseconds each loop runs per side of a round in a VM
    #[arg(long, value_name = "MS", default_value_t = 200)]
    vm_side_ms: u64,
    /// Kill a VM still running after this many seconds
    #[arg(long, value_name = "SECONDS", default_value_t = 720)]
    timeout: u64,
}

/// Where the benchmark ran, and what it printed.
struct Place {
    /// `host`, or the matrix's kernel name.
    name: String,
    vm: Option<Accel>,
    /// The `RELOADSCOPE-OVERHEAD` lines, parsed, in order.
    lines: Vec<Value>,
    /// What went wrong, when something did: the run's rows say FAILED.
    trouble: Vec<String>,
    took: Duration,
}

impl Place {
    fn new(name: &str, vm: Option<Accel>) -> Self {
        Place {
            name: name.to_owned(),
            vm,
            lines: Vec::new(),
            trouble: Vec::new(),
            took: Duration::ZERO,
        }
    }

    fn take(&mut self, line: &str) {
        let Some(at) = line.find(PREFIX) else {
            return;
        };
        match serde_json::from_str(&line[at + PREFIX.len()..]) {
            Ok(v) => self.lines.push(v),
            Err(e) => self
                .trouble
                .push(format!("unreadable line ({e}): {}", line.trim())),
        }
    }

    fn of_kind<'a>(&'a self, kind: &'a str) -> impl Iterator<Item = &'a Value> + 'a {
        self.lines.iter().filter(move |v| v["kind"] == kind)
    }

    /// The kernel cell: `uname -r` as the benchmark saw it, and where.
    fn kernel(&self) -> String {
        let release = self
            .of_kind("machine")
            .next()
            .and_then(|m| m["kernel"].as_str());
        let release = release.unwrap_or(&self.name);
        match self.vm {
            None => format!("{release} (host)"),
            Some(Accel::Tcg) => format!("{release} (VM, TCG)"),
            Some(Accel::Kvm) => format!("{release} (VM, KVM)"),
        }
    }
}

/// `cargo xtask bench overhead [ARGS]`.
pub fn overhead(given: &[OsString]) -> Result<()> {
    let args = OverheadArgs::try_parse_from(
        std::iter::once(OsString::from("cargo xtask bench overhead")).chain(given.iter().cloned()),
    )
    .unwrap_or_else(|e| e.exit());
    if !cmd::is_root() {
        bail!("`cargo xtask bench overhead` needs root: it loads the eBPF probe");
    }
    let vm_kernels = select(&args.kernels)?;
    let start = Instant::now();
    let date = command_line(Command::new("date").args(["-u", "+%Y-%m-%d %H:%M UTC"]));
    let commit = command_line(Command::new("git").args(["rev-parse", "--short", "HEAD"]));
    let dirty = command_output(Command::new("git").args(["status", "--porcelain"]))
        .map_or(0, |s| s.lines().count());

    let mut cargo = cmd::cargo(["bench", "-p", "reloadscope", "--bench", PROGRAM, "--no-run"]);
    cargo.stderr(Stdio::inherit());
    let exe = super::build_executables(cargo, "bench", &[PROGRAM.to_owned()])?
        .remove(0)
        .1;

    // Ahead of builds and other users' work on a shared machine, for less noise on
    // both sides of each round: inherited by the benchmark and by QEMU's vCPU threads.
    let niced = cmd::status(
        Command::new("renice")
            .args([
                "-n",
                &NICE.to_string(),
                "-p",
                &std::process::id().to_string(),
            ])
            .stdout(Stdio::null()),
    )
    .is_ok_and(|s| s.success());

    let mut places = vec![host(&exe, &args)?];
    let mut vm_note = None;
    let mut pvm = false;
    if args.host_only {
        vm_note = Some("VM kernels: not run (--host-only).".to_owned());
    } else {
        match super::usable_accel(args.accel)? {
            Err(why) => {
                let why = why.trim_start_matches("kernels: skipped: ");
                let note = format!(
                    "VM kernels: not booted: {}",
                    if why.starts_with("no /dev/kvm") {
                        "no /dev/kvm here (`--accel tcg` emulates the CPU without it)"
                    } else {
                        why
                    }
                );
                println!("overhead: {note}");
                vm_note = Some(note);
            }
            Ok((accel, note)) => {
                if let Some(note) = note {
                    println!("{note}");
                    pvm = note == super::PVM;
                }
                for kernel in vm_kernels {
                    places.push(in_vm(kernel, &exe, accel, &args));
                }
            }
        }
    }

    let facts = Facts {
        date,
        commit,
        dirty,
        niced,
        pvm,
        took: start.elapsed(),
    };
    let report = report(given, &args, &places, vm_note.as_deref(), &facts);
    print!("\n{report}");
    let failed: Vec<String> = places
        .iter()
        .filter(|p| !p.trouble.is_empty())
        .map(|p| format!("{}: {}", p.name, p.trouble.join("; ")))
        .collect();
    if !failed.is_empty() {
        bail!("overhead benchmark runs failed:\n  {}", failed.join("\n  "));
    }
    Ok(())
}

fn select(names: &[String]) -> Result<Vec<&'static image::Kernel>> {
    if names.is_empty() {
        return Ok(KERNELS.iter().collect());
    }
    names
        .iter()
        .map(|name| {
            KERNELS.iter().find(|k| k.name == name).with_context(|| {
                let all: Vec<&str> = KERNELS.iter().map(|k| k.name).collect();
                format!("no kernel {name:?}; the matrix has {}", all.join(", "))
            })
        })
        .collect()
}

/// Stdout of `cmd`, if it ran and succeeded.
fn command_output(cmd: &mut Command) -> Option<String> {
    let out = cmd.current_dir(cmd::workspace_root()).output().ok()?;
    out.status
        .success()
        .then(|| String::from_utf8_lossy(&out.stdout).into_owned())
}

fn command_line(cmd: &mut Command) -> String {
    command_output(cmd).map_or_else(|| "unknown".to_owned(), |s| s.trim().to_owned())
}

/// The program's arguments for `rounds` rounds of `side_ms`: the benchmark's name,
/// then its own.
fn bench_args(rounds: usize, side_ms: u64) -> Vec<String> {
    vec![
        BENCH.to_owned(),
        "--lines".to_owned(),
        "--rounds".to_owned(),
        rounds.to_string(),
        "--side-ms".to_owned(),
        side_ms.to_string(),
    ]
}

/// The benchmark on the host, every variant (`--probe auto`); its progress on stderr.
fn host(exe: &Path, args: &OverheadArgs) -> Result<Place> {
    println!("==> host: {BENCH} benchmark, {} rounds", args.rounds);
    let mut run = Command::new(exe);
    run.args(bench_args(args.rounds, args.side_ms))
        .args(["--bench", "--probe", "auto"])
        .current_dir(cmd::workspace_root())
        .env_remove("RELOADSCOPE_PROBE")
        .stdin(Stdio::null())
        .stderr(Stdio::inherit());
    let start = Instant::now();
    let out = run
        .output()
        .with_context(|| format!("could not run `{}`", cmd::display(&run)))?;
    let mut place = Place::new("host", None);
    place.took = start.elapsed();
    for line in String::from_utf8_lossy(&out.stdout).lines() {
        place.take(line);
    }
    if !out.status.success() {
        place
            .trouble
            .push(format!("`{}` failed ({})", cmd::display(&run), out.status));
    }
    Ok(place)
}

/// One boot of `kernel` running the benchmark once per variant. Whatever stops it
/// (no image, no boot, a timeout) goes into the place's trouble, and so into the
/// table; the other kernels still run.
fn in_vm(kernel: &image::Kernel, exe: &Path, accel: Accel, args: &OverheadArgs) -> Place {
    let mut place = Place::new(kernel.name, Some(accel));
    let start = Instant::now();
    if let Err(e) = boot_and_run(kernel, exe, accel, args, &mut place) {
        place.trouble.push(format!("{e:#}"));
    }
    place.took = start.elapsed();
    place
}

fn boot_and_run(
    kernel: &image::Kernel,
    exe: &Path,
    accel: Accel,
    args: &OverheadArgs,
    place: &mut Place,
) -> Result<()> {
    let cache = cmd::target_dir().join("kernels");
    std::fs::create_dir_all(&cache).with_context(|| format!("create {}", cache.display()))?;
    let image = image::ensure(kernel, &cache).context("kernel image")?;
    let plan = Plan {
        hide_btf: false,
        runs: VARIANTS
            .iter()
            .map(|v| Run {
                binary: BENCH.to_owned(),
                test: BENCH.to_owned(),
                probe: Some((*v).to_owned()),
                args: bench_args(args.vm_rounds, args.vm_side_ms),
            })
            .collect(),
    };
    let initrd: PathBuf = cache.join(format!("initramfs-{BENCH}-{}.cpio", kernel.name));
    initramfs::build(&initrd, &[(BENCH.to_owned(), exe.to_owned())], &plan)?;
    println!(
        "==> kernel {} ({} {}, {accel:?}): {BENCH} benchmark, {} rounds of {} ms per loop \
         and side, variants {}",
        kernel.name,
        image.package,
        image.version,
        args.vm_rounds,
        args.vm_side_ms,
        VARIANTS.join(", ")
    );
    let (transcript, end) = console::boot(
        accel,
        &image.vmlinuz,
        &initrd,
        CMDLINE,
        &format!("[{}] ", kernel.name),
        Duration::from_secs(args.timeout),
    )?;
    let _ = std::fs::remove_file(&initrd);
    for run in &plan.runs {
        let label = run.label();
        let Some(suite) = transcript.suites.iter().find(|s| s.label == label) else {
            place.trouble.push(format!("{label} did not run"));
            continue;
        };
        let before = place.lines.len();
        for line in &suite.output {
            place.take(line);
        }
        match suite.exit {
            Some(0) if place.lines.len() > before => {}
            Some(0) => place.trouble.push(format!("{label} printed no figures")),
            Some(code) => place.trouble.push(format!("{label} exited with {code}")),
            None => place.trouble.push(format!("{label} did not finish")),
        }
    }
    if transcript.exit.is_none() {
        place.trouble.push(match end {
            console::End::TimedOut(limit) => {
                format!("the VM was stopped after {} s (--timeout)", limit.as_secs())
            }
            console::End::Exited(status) => format!("qemu exited early ({status})"),
        });
    }
    if let Some(trouble) = transcript.kernel_trouble {
        place.trouble.push(format!("kernel said: {trouble}"));
    }
    if let Some(boot) = transcript.boot_time {
        println!(
            "    kernel {}: booted in {:.1} s, done in {:.1} s",
            kernel.name,
            boot.as_secs_f64(),
            transcript.total_time.unwrap_or_default().as_secs_f64()
        );
    }
    Ok(())
}

fn fmt_ns(v: &Value) -> String {
    let Some(ns) = v.as_f64() else {
        return "n/a".to_owned();
    };
    if ns < 1e3 {
        format!("{ns:.0} ns")
    } else if ns < 1e6 {
        format!("{:.2} µs", ns / 1e3)
    } else {
        format!("{:.2} ms", ns / 1e6)
    }
}

fn fmt_ratio(v: &Value) -> String {
    v.as_f64().map_or("n/a".to_owned(), |r| format!("{r:.3}x"))
}

fn fmt_bound(v: &Value) -> String {
    v.as_f64().map_or("n/a".to_owned(), |r| format!("{r:.3}"))
}

/// The table's rows of one place: a row per loop of each variant that loaded, one
/// per variant that did not (with why), and one per failure.
fn rows(place: &Place, goals: &mut Vec<(String, bool)>) -> String {
    let kernel = place.kernel();
    let mut out = String::new();
    for line in &place.lines {
        let variant = line["variant"].as_str().unwrap_or("?");
        match line["kind"].as_str() {
            Some("loop") => {
                let goal = line["goal"].as_f64();
                let met = line["met"].as_bool();
                if let Some(met) = met {
                    goals.push((
                        format!(
                            "{} {variant} {}: {} (95% CI {}-{}; goal ≤ {:.2}x)",
                            place.name,
                            line["loop"].as_str().unwrap_or("?"),
                            fmt_ratio(&line["ratio"]),
                            fmt_bound(&line["ci_lo"]),
                            fmt_bound(&line["ci_hi"]),
                            goal.unwrap_or_default()
                        ),
                        met,
                    ));
                }
                let _ = writeln!(
                    out,
                    "| {kernel} | {variant} | {} | {} × {} | {} | {} | {} ({}-{}) | {} | {} |",
                    line["loop"].as_str().unwrap_or("?"),
                    line["calls"],
                    line["rounds"],
                    fmt_ns(&line["a_ns"]),
                    fmt_ns(&line["b_ns"]),
                    fmt_ratio(&line["ratio"]),
                    fmt_bound(&line["ci_lo"]),
                    fmt_bound(&line["ci_hi"]),
                    goal.map_or("-".to_owned(), |g| format!("≤ {g:.2}x")),
                    match met {
                        Some(true) => "met",
                        Some(false) => "**not met**",
                        None => "-",
                    }
                );
            }
            Some("variant") if line["available"] == false => {
                let _ = writeln!(
                    out,
                    "| {kernel} | {variant} | all | | not available: {} | | | | |",
                    line["reason"].as_str().unwrap_or("?")
                );
            }
            Some("variant") if line["failed"].is_string() => {
                let _ = writeln!(
                    out,
                    "| {kernel} | {variant} | all | | FAILED: {} | | | | |",
                    line["failed"].as_str().unwrap_or("?")
                );
            }
            _ => {}
        }
    }
    if !place.trouble.is_empty() {
        let _ = writeln!(
            out,
            "| {kernel} | | | | FAILED: {} | | | | |",
            place.trouble.join("; ")
        );
    }
    out
}

/// A sentence for each goal that a no-op program alone already misses at `place`:
/// there no program on that call can meet it.
fn above_floor(place: &Place) -> Vec<String> {
    let loops: Vec<&Value> = place.of_kind("loop").collect();
    let mut out = Vec::new();
    for floor in loops.iter().filter(|l| {
        l["variant"]
            .as_str()
            .is_some_and(|v| v.ends_with(", no-op program"))
    }) {
        let goal = loops
            .iter()
            .find(|l| l["variant"] == floor["floor_of"] && l["loop"] == floor["loop"]);
        let Some(goal) = goal.and_then(|l| l["goal"].as_f64()) else {
            continue;
        };
        if floor["ratio"].as_f64().is_some_and(|r| r > goal) {
            out.push(format!(
                "Floor: on {}, a no-op fexit program alone costs the {} loop {} (95% CI {}-{}; \
                 goal ≤ {goal:.2}x): no {} program on that call can meet the goal there.",
                place.name,
                floor["loop"].as_str().unwrap_or("?"),
                fmt_ratio(&floor["ratio"]),
                fmt_bound(&floor["ci_lo"]),
                fmt_bound(&floor["ci_hi"]),
                floor["floor_of"].as_str().unwrap_or("?"),
            ));
        }
    }
    out
}

/// The benchmark's chunks per side, from its `calls` lines.
fn chunks(places: &[Place]) -> String {
    let mut seen: Vec<String> = (places.iter())
        .flat_map(|p| p.of_kind("calls"))
        .map(|c| c["chunks"].to_string())
        .collect();
    seen.sort();
    seen.dedup();
    if seen.is_empty() {
        "?".to_owned()
    } else {
        seen.join(" or ")
    }
}

/// One machine line of a place, for the notes.
fn machine_note(place: &Place) -> Option<String> {
    let m = place.of_kind("machine").next()?;
    let holders: Vec<&str> = (m["holders"].as_array().into_iter().flatten())
        .filter_map(Value::as_str)
        .collect();
    let mut s = format!(
        "{}: kernel {}, {} CPUs ({}), load average at start {}, files on {}, {} rounds of \
         about {} ms per loop and side, at nice {}; other processes holding tracepoint BPF \
         programs: {}",
        place.name,
        m["kernel"].as_str().unwrap_or("?"),
        m["nproc"],
        m["cpu"].as_str().unwrap_or("?"),
        m["loadavg"].as_str().unwrap_or("?"),
        m["fs"].as_str().unwrap_or("?"),
        m["rounds"],
        m["side_ms"],
        m["nice"],
        if holders.is_empty() {
            "none".to_owned()
        } else {
            holders.join(", ")
        },
    );
    let loads: Vec<String> = place
        .of_kind("variant")
        .filter(|v| v["available"] == true)
        .map(|v| {
            format!(
                "{} load + attach {:.1} ms, detach {:.1} ms",
                v["variant"].as_str().unwrap_or("?"),
                v["load_ms"].as_f64().unwrap_or(f64::NAN),
                v["drop_ms"].as_f64().unwrap_or(f64::NAN)
            )
        })
        .collect();
    if !loads.is_empty() {
        let _ = write!(s, "; {} (medians)", loads.join(", "));
    }
    let _ = write!(s, "; took {:.0} s.", place.took.as_secs_f64());
    Some(s)
}

/// The run's own facts, for the report.
struct Facts {
    date: String,
    commit: String,
    /// Files `git status --porcelain` lists.
    dirty: usize,
    /// Whether QEMU ran at [`NICE`].
    niced: bool,
    /// Whether TCG was chosen because /dev/kvm is kvm_pvm.
    pvm: bool,
    took: Duration,
}

fn report(
    given: &[OsString],
    args: &OverheadArgs,
    places: &[Place],
    vm_note: Option<&str>,
    facts: &Facts,
) -> String {
    let Facts {
        date,
        commit,
        dirty,
        niced,
        pvm,
        took,
    } = facts;
    let given: String = (given.iter())
        .map(|a| format!(" {}", a.to_string_lossy()))
        .collect();
    let mut s = "## Probe overhead (`cargo xtask bench overhead`)\n\n".to_owned();
    let _ = writeln!(
        s,
        "Run on {date} with `cargo xtask bench overhead{given}`, built from {commit}{}.\n",
        if *dirty > 0 {
            format!(" (the working tree had uncommitted changes in {dirty} files)")
        } else {
            String::new()
        }
    );
    let _ = writeln!(
        s,
        "Three loops, timed in interleaved A/B rounds (A B, then B A): `getppid`; \
         open+close of a file on tmpfs; `renameat` of a tmpfs file back and forth (the \
         probe's own syscall family, its names filtered out in the kernel). **A**: no probe. \
         **B**: the probe variant loaded and attached in the benchmark's process through \
         the library (`Probe::load_variant`, the agent's own load and attach), dropped \
         after the side. Each loop makes the same number of calls on both sides of a round, \
         set from a first timing so that a side takes about {} ms on the host, {} ms in a \
         VM, timed in {} chunks whose fastest is the side's ns per call (what other work \
         on a shared machine adds only ever slows a chunk). A and B: medians over the \
         rounds; the ratio is the median of the per-round B/A, with the 95% confidence \
         interval of that median (from its order statistics). fentry rounds have a third \
         side (A B F, then F B A) that times the rename loop with only a no-op fexit \
         program on its call: the row `fentry, no-op program` is F against A (the \
         kernel's trampoline, the floor under any fentry or fexit program), `fentry, over \
         no-op` is B against F (the probe's programs' own work). Goals (issue 7), for \
         fentry: at most 1.01x on getppid and open+close, at most 1.03x on rename.\n",
        args.side_ms,
        args.vm_side_ms,
        chunks(places)
    );
    let mut goals = Vec::new();
    s.push_str(
        "| kernel | variant | loop | calls per side × rounds | A: no probe | B: probe | \
         ratio B/A (95% CI) | goal | met |\n|---|---|---|---|---|---|---|---|---|\n",
    );
    for place in places {
        s.push_str(&rows(place, &mut goals));
    }
    s.push('\n');
    if goals.is_empty() {
        s.push_str("Goals: none assessed (fentry loaded nowhere).\n");
    } else {
        let met: Vec<&str> = (goals.iter().filter(|(_, m)| *m))
            .map(|(g, _)| g.as_str())
            .collect();
        let not: Vec<&str> = (goals.iter().filter(|(_, m)| !*m))
            .map(|(g, _)| g.as_str())
            .collect();
        let _ = writeln!(s, "Goals: {} of {} met.", met.len(), goals.len());
        if !not.is_empty() {
            let _ = writeln!(s, "Not met: {}.", not.join("; "));
        }
    }
    for floor in places.iter().flat_map(above_floor) {
        let _ = writeln!(s, "{floor}");
    }
    s.push('\n');
    for place in places {
        if let Some(note) = machine_note(place) {
            let _ = writeln!(s, "- {note}");
        }
    }
    if let Some(note) = vm_note {
        let _ = writeln!(s, "- {note}");
    }
    if places.iter().any(|p| p.vm.is_some()) {
        let _ = writeln!(
            s,
            "- QEMU (`-smp 2 -m 1024`) ran at nice {}.",
            if *niced { NICE } else { 0 }
        );
    }
    for place in places {
        let held = place.of_kind("variant").any(|v| {
            v["holders"]
                .as_array()
                .is_some_and(|holders| !holders.is_empty())
        });
        if held {
            let _ = writeln!(
                s,
                "\n**Caveat ({}):** other processes held tracepoint BPF programs during the \
                 rounds (named above): while one is attached to syscall tracepoints, every \
                 task takes the syscall slow path, so the no-probe side was not probe-free \
                 there and the tracepoint variant's added cost is understated.",
                place.name
            );
        }
    }
    if places.iter().any(|p| p.vm == Some(Accel::Tcg)) {
        let why = if *pvm {
            "/dev/kvm here is kvm_pvm, which cannot run stock kernels"
        } else {
            "--accel tcg"
        };
        let _ = writeln!(
            s,
            "\n**Caveat:** the VM kernels ran under TCG (QEMU emulating the CPU; {why}): \
             their ns per call are emulated and say nothing of real hardware. Their ratios are still A/B of the \
             same run, but emulation weighs the kernel's paths (and the BPF programs' JIT \
             code) differently from a real CPU, and the emulator shares the host's CPUs \
             with its other work."
        );
    }
    let _ = writeln!(s, "\n_Run took {:.0} s._", took.as_secs_f64());
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    fn place(lines: &str, vm: Option<Accel>) -> Place {
        let mut p = Place::new("6.1", vm);
        for line in lines.lines() {
            p.take(line);
        }
        p
    }

    #[test]
    fn lines_become_rows_with_goals() {
        let p = place(
            r#"[6.1] noise
[6.1] RELOADSCOPE-OVERHEAD {"kind":"machine","kernel":"6.1.0-56-cloud-amd64","nproc":2,"cpu":"x","loadavg":"0 0 0","holders":[],"rounds":6,"side_ms":250,"fs":"tmpfs"}
RELOADSCOPE-OVERHEAD {"kind":"variant","variant":"fentry","available":true,"load_ms":900.0,"drop_ms":50.0,"holders":[]}
RELOADSCOPE-OVERHEAD {"kind":"loop","variant":"fentry","loop":"getppid","calls":20000,"rounds":6,"a_ns":1200.0,"b_ns":1210.0,"ratio":1.008,"ratio_min":0.99,"ratio_max":1.02,"ci_lo":0.995,"ci_hi":1.015,"goal":1.01,"met":true}
RELOADSCOPE-OVERHEAD {"kind":"loop","variant":"fentry","loop":"rename","calls":2000,"rounds":6,"a_ns":52000.0,"b_ns":55000.0,"ratio":1.05,"ratio_min":1.01,"ratio_max":1.09,"goal":1.03,"met":false}
RELOADSCOPE-OVERHEAD {"kind":"variant","variant":"tracepoint","available":false,"reason":"no tracefs"}"#,
            Some(Accel::Tcg),
        );
        assert!(p.trouble.is_empty(), "{:?}", p.trouble);
        let mut goals = Vec::new();
        let rows = rows(&p, &mut goals);
        let rows: Vec<&str> = rows.lines().collect();
        assert_eq!(rows.len(), 3, "{rows:?}");
        assert_eq!(
            rows[0],
            "| 6.1.0-56-cloud-amd64 (VM, TCG) | fentry | getppid | 20000 × 6 | 1.20 µs | \
             1.21 µs | 1.008x (0.995-1.015) | ≤ 1.01x | met |"
        );
        assert!(
            rows[1].ends_with("| ≤ 1.03x | **not met** |"),
            "{}",
            rows[1]
        );
        assert!(rows[2].contains("| tracepoint | all | | not available: no tracefs |"));
        assert_eq!(goals.iter().filter(|(_, met)| *met).count(), 1);
        assert!(
            machine_note(&p)
                .unwrap()
                .contains("fentry load + attach 900.0 ms")
        );
    }

    #[test]
    fn a_floor_above_the_goal_is_said() {
        let rename = r#"RELOADSCOPE-OVERHEAD {"kind":"loop","variant":"fentry","loop":"rename","calls":2000,"rounds":6,"a_ns":52000.0,"b_ns":55000.0,"ratio":1.05,"goal":1.03,"met":false}"#;
        let floor = |ratio: f64| {
            format!(
                r#"{rename}
RELOADSCOPE-OVERHEAD {{"kind":"loop","variant":"fentry, no-op program","floor_of":"fentry","loop":"rename","calls":2000,"rounds":6,"a_ns":52000.0,"b_ns":53000.0,"ratio":{ratio},"ci_lo":1.01,"ci_hi":1.05,"goal":null,"met":null}}"#
            )
        };
        let above = above_floor(&place(&floor(1.034), None));
        assert_eq!(
            above,
            [
                "Floor: on 6.1, a no-op fexit program alone costs the rename loop 1.034x (95% CI \
              1.010-1.050; goal ≤ 1.03x): no fentry program on that call can meet the goal \
              there."
            ]
        );
        assert!(above_floor(&place(&floor(1.02), None)).is_empty());
        // The floor's rows carry no goal of their own.
        let mut goals = Vec::new();
        assert_eq!(
            rows(&place(&floor(1.034), None), &mut goals)
                .lines()
                .count(),
            2
        );
        assert_eq!(goals.len(), 1);
    }

    #[test]
    fn a_run_that_stopped_is_a_failed_row() {
        let mut p = place("RELOADSCOPE-OVERHEAD {broken", None);
        assert_eq!(p.trouble.len(), 1);
        p.trouble = vec!["overhead/fentry did not finish".into()];
        let rows = rows(&p, &mut Vec::new());
        assert_eq!(
            rows,
            "| 6.1 (host) | | | | FAILED: overhead/fentry did not finish | | | | |\n"
        );
    }

    #[test]
    fn kernels_are_the_matrixs() {
        assert_eq!(select(&[]).unwrap().len(), KERNELS.len());
        assert_eq!(select(&["6.12".into()]).unwrap()[0].name, "6.12");
        assert!(select(&["5.10".into()]).is_err());
    }

    #[test]
    fn arguments_parse() {
        let a = OverheadArgs::try_parse_from(["x", "--host-only", "--vm-rounds", "4"]).unwrap();
        assert!(a.host_only);
        assert_eq!(a.vm_rounds, 4);
        assert!(OverheadArgs::try_parse_from(["x", "--nope"]).is_err());
    }

    #[test]
    fn the_program_is_told_which_benchmark_first() {
        assert_eq!(
            bench_args(4, 20),
            ["overhead", "--lines", "--rounds", "4", "--side-ms", "20"]
        );
    }
}
