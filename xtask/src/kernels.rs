//! The kernel matrix: the agent's eBPF integration tests on Debian's cloud kernels,
//! each booted under QEMU with a minimal initramfs that holds the test binaries
//! (`cargo xtask vm-test`; `cargo xtask test` runs it as a check). The host kernel's
//! run of the same tests is the `test` check.
//!
//! QEMU runs on KVM where /dev/kvm is hardware-assisted. Where it is kvm_pvm (these
//! build machines: nested, no VMX/SVM), stock kernels stop in its instruction
//! emulator, so QEMU emulates the CPU itself (TCG): slower, but a boot still takes
//! about 3 s. Without /dev/kvm the matrix is skipped, saying so.
//!
//! A boot: the test binaries are built (`cargo test --no-run`), stripped and packed
//! with their shared libraries, the dynamic loader and busybox-static into a cpio
//! archive whose /init mounts proc, sysfs, devtmpfs, tracefs, bpffs, cgroup2 and a
//! tmpfs on /tmp, runs each binary with `--include-ignored --test-threads=1`, prints
//! its exit code and powers off. The serial console comes back on QEMU's stdout and
//! is streamed with the boot's name in front of each line.
//!
//! Probe variants: each run of a boot sets `RELOADSCOPE_PROBE` (see [`Runs`]), which
//! the tests read (`probe::Choice::from_env`) to load that variant; `--probe` on
//! `vm-test` picks others.
//!
//! `cargo xtask bench overhead` ([`bench`]) boots the same kernels the same way, with
//! the `overhead` benchmark in place of the test binaries.

pub mod bench;
mod console;
mod cpio;
mod image;
mod initramfs;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};

use crate::cmd;
use console::Accel;
use image::Kernel;
use initramfs::{Plan, Run};

/// Debian bookworm's cloud kernels (bookworm-security), pinned; the meta-package
/// stands in, with a warning, once the archive drops the pinned build.
/// Both have BTF, kprobes, BPF LSM, tracefs and everything the tests mount built in:
/// no module is loaded.
pub const KERNELS: &[Kernel] = &[
    Kernel {
        name: "6.1",
        package: "linux-image-6.1.0-56-cloud-amd64",
        meta: "linux-image-cloud-amd64",
    },
    Kernel {
        name: "6.12",
        package: "linux-image-6.12.117+deb12-cloud-amd64",
        meta: "linux-image-6.12-cloud-amd64",
    },
];

/// The integration tests' one binary (`agent/tests/integration/`).
const TEST_BINARY: &str = "integration";

/// Tests of one module of the integration tests (`agent/tests/integration/<test>.rs`)
/// run in a VM.
#[derive(Clone, Copy)]
pub struct Suite {
    pub test: &'static str,
    /// Exact test names; empty: all of the binary's tests.
    pub only: &'static [&'static str],
}

/// All of probe.rs: the probe alone, its kernel-side filter and counters, and
/// which variant `auto` takes.
const PROBE: Suite = Suite {
    test: "probe",
    only: &[],
};

/// The kernel programs' log: said when asked for, its code dropped by the verifier
/// when not (each kernel's verifier must accept both).
const KERNEL_LOG: Suite = Suite {
    test: "kernel_log",
    only: &[],
};

/// The tests of detect.rs that count updates through the probe (a failed rename
/// counts zero, the kernel's counter moves) or without it (inotify alone). Left
/// out: the ones that run host programs the VM lacks (promtool, setpriv, the agent
/// binary itself) and the inotify bookkeeping ones, which do not depend on the
/// kernel's eBPF.
const DETECT: Suite = Suite {
    test: "detect",
    only: &[
        "failed_rename_over_data_counts_zero",
        "inotify_alone_counts_every_update_without_the_probe",
    ],
};

/// Every update through Go-style and legacy calls counts once per source: they
/// also assert that the probe's stamp, turned into wall time, falls within 0-5 ms
/// before the writer saw its call return. Under TCG that bound fails now and then
/// (seen: -5 us, the gap between `clock::boot_to_wall`'s two clock reads; +12.6 ms,
/// a vCPU descheduled on a loaded host), so there they run only with `--timed`.
const DETECT_TIMED: Suite = Suite {
    test: "detect",
    only: &[
        "go_style_at_calls_count_once_per_source",
        "legacy_rename_and_symlink_count_once_per_source",
    ],
};

/// What a run must show.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Expect {
    Pass,
    /// Fail, with each of these in its output.
    FailWith(&'static [&'static str]),
}

/// A suite run once per variant, each with `RELOADSCOPE_PROBE=<variant>` (which
/// the tests read through `probe::Choice::from_env`); `None` leaves it unset.
pub struct Runs {
    pub suite: Suite,
    pub variants: &'static [Option<&'static str>],
    pub expect: Expect,
    /// Timing bounds TCG's slowness can break: under TCG, only with `--timed`.
    pub timed: bool,
}

/// Both probe variants: the kernels of the matrix load either.
const BOTH: &[Option<&str>] = &[Some("tracepoint"), Some("fentry")];

/// One VM boot of the matrix.
pub struct Boot {
    pub name: &'static str,
    pub kernel: &'static Kernel,
    /// BTF hidden from user space (see `initramfs::init_script`).
    pub hide_btf: bool,
    pub runs: &'static [Runs],
}

const BOTH_VARIANTS: &[Runs] = &[
    Runs {
        suite: PROBE,
        variants: BOTH,
        expect: Expect::Pass,
        timed: false,
    },
    Runs {
        suite: KERNEL_LOG,
        variants: BOTH,
        expect: Expect::Pass,
        timed: false,
    },
    Runs {
        suite: DETECT,
        variants: BOTH,
        expect: Expect::Pass,
        timed: false,
    },
    Runs {
        suite: DETECT_TIMED,
        variants: BOTH,
        expect: Expect::Pass,
        timed: true,
    },
];

/// Without BTF, fentry cannot load and `auto` must fall back to tracepoints: the
/// probe's tests and one of the agent's (which needs the probe loaded) pass with `auto`, and fentry alone is refused
/// for want of BTF (probe.rs panics naming the variant and the loader's error).
const NO_BTF: &[Runs] = &[
    Runs {
        suite: PROBE,
        variants: &[Some("auto")],
        expect: Expect::Pass,
        timed: false,
    },
    Runs {
        suite: Suite {
            test: "detect",
            only: &["failed_rename_over_data_counts_zero"],
        },
        variants: &[Some("auto")],
        expect: Expect::Pass,
        timed: false,
    },
    Runs {
        suite: Suite {
            test: "probe",
            only: &["failed_rename_over_data_is_counted_as_failed_not_emitted"],
        },
        variants: &[Some("fentry")],
        expect: Expect::FailWith(&["no probe of Fentry loads", "Btf("]),
        timed: false,
    },
];

pub const BOOTS: &[Boot] = &[
    Boot {
        name: "6.1",
        kernel: &KERNELS[0],
        hide_btf: false,
        runs: BOTH_VARIANTS,
    },
    Boot {
        name: "6.12",
        kernel: &KERNELS[1],
        hide_btf: false,
        runs: BOTH_VARIANTS,
    },
    Boot {
        name: "6.12-no-btf",
        kernel: &KERNELS[1],
        hide_btf: true,
        runs: NO_BTF,
    },
];

/// A boot that does not finish in this long is killed and fails.
const DEFAULT_TIMEOUT_SECS: u64 = 300;

/// `cargo xtask vm-test`: boots of the kernel matrix.
#[derive(clap::Args)]
pub struct VmTestArgs {
    /// Boots to run: 6.1, 6.12, 6.12-no-btf (default: all)
    #[arg(value_name = "BOOT")]
    boots: Vec<String>,
    /// Only these test binaries of each boot (probe, detect); any agent/tests/ name
    /// when test arguments follow `--`
    #[arg(long = "test", value_name = "NAME")]
    tests: Vec<String>,
    /// Run each test binary once per VARIANT with RELOADSCOPE_PROBE=VARIANT
    /// (auto, fentry, tracepoint, off), instead of the boot's own runs
    #[arg(long = "probe", value_name = "VARIANT")]
    probes: Vec<String>,
    /// Hide BTF (/sys/kernel/btf) in every boot run
    #[arg(long)]
    no_btf: bool,
    /// Under TCG too, run the tests with millisecond timing bounds (detect.rs's
    /// go_style_at_calls... and legacy_rename...), which then fail now and then
    #[arg(long)]
    timed: bool,
    /// kvm, tcg, or auto: KVM when /dev/kvm is hardware-assisted, TCG when it is
    /// kvm_pvm, skipped without /dev/kvm
    #[arg(long, value_name = "ACCEL", default_value = "auto")]
    accel: AccelChoice,
    /// Kill a boot still running after this many seconds
    #[arg(long, value_name = "SECONDS", default_value_t = DEFAULT_TIMEOUT_SECS)]
    timeout: u64,
    /// Arguments for each test binary instead of the boot's test names
    /// (`--include-ignored --test-threads=1` are always passed)
    #[arg(last = true, value_name = "TEST_ARGS")]
    test_args: Vec<String>,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
enum AccelChoice {
    Auto,
    Kvm,
    Tcg,
}

/// One test binary run of a job.
#[derive(Debug, PartialEq, Eq)]
struct JobRun {
    test: String,
    /// After `--include-ignored --test-threads=1`.
    args: Vec<String>,
    probe: Option<String>,
    expect: Expect,
    timed: bool,
}

/// What one boot runs, resolved from the matrix and the command line.
struct Job {
    name: String,
    kernel: &'static Kernel,
    hide_btf: bool,
    runs: Vec<JobRun>,
}

impl Job {
    fn plan(&self) -> Plan {
        let runs = self
            .runs
            .iter()
            .map(|run| {
                let mut args = vec![
                    "--include-ignored".to_owned(),
                    "--test-threads=1".to_owned(),
                ];
                args.extend(run.args.iter().cloned());
                Run {
                    binary: TEST_BINARY.to_owned(),
                    test: run.test.clone(),
                    probe: run.probe.clone(),
                    args,
                }
            })
            .collect();
        Plan {
            hide_btf: self.hide_btf,
            runs,
        }
    }
}

/// libtest's arguments selecting `suite` in the one binary: its module's tests, or
/// exactly the ones named.
fn suite_args(suite: &Suite) -> Vec<String> {
    if suite.only.is_empty() {
        return vec![format!("{}::", suite.test)];
    }
    std::iter::once("--exact".to_owned())
        .chain(
            suite
                .only
                .iter()
                .map(|name| format!("{}::{name}", suite.test)),
        )
        .collect()
}

fn jobs(args: &VmTestArgs) -> Result<Vec<Job>> {
    let boots: Vec<&Boot> = if args.boots.is_empty() {
        BOOTS.iter().collect()
    } else {
        args.boots
            .iter()
            .map(|name| {
                BOOTS
                    .iter()
                    .find(|boot| boot.name == name)
                    .with_context(|| {
                        let names: Vec<&str> = BOOTS.iter().map(|boot| boot.name).collect();
                        format!("no boot {name:?}; the matrix has {}", names.join(", "))
                    })
            })
            .collect::<Result<_>>()?
    };
    let mut jobs = Vec::new();
    for boot in boots {
        let selected = |test: &str| args.tests.is_empty() || args.tests.iter().any(|t| t == test);
        let mut runs: Vec<JobRun> = Vec::new();
        if args.probes.is_empty() && args.test_args.is_empty() {
            for spec in boot.runs.iter().filter(|spec| selected(spec.suite.test)) {
                for variant in spec.variants {
                    runs.push(JobRun {
                        test: spec.suite.test.to_owned(),
                        args: suite_args(&spec.suite),
                        probe: variant.map(str::to_owned),
                        expect: spec.expect,
                        timed: spec.timed,
                    });
                }
            }
        } else {
            // The boot's tests that must pass (or those named, with the arguments
            // given), once per variant given (or the boot's).
            let mut suites: Vec<(String, Vec<String>, bool)> = Vec::new();
            let mut variants: Vec<Option<String>> = Vec::new();
            for spec in boot.runs.iter().filter(|spec| spec.expect == Expect::Pass) {
                let suite = (
                    spec.suite.test.to_owned(),
                    suite_args(&spec.suite),
                    spec.timed,
                );
                if selected(spec.suite.test) && !suites.contains(&suite) {
                    suites.push(suite);
                }
                for variant in spec.variants {
                    let variant = variant.map(str::to_owned);
                    if !variants.contains(&variant) {
                        variants.push(variant);
                    }
                }
            }
            if !args.test_args.is_empty() {
                if args.tests.is_empty() {
                    // The same arguments for each binary once.
                    let mut seen = Vec::new();
                    suites.retain(|(test, _, _)| {
                        let first = !seen.contains(test);
                        seen.push(test.clone());
                        first
                    });
                } else {
                    suites = args
                        .tests
                        .iter()
                        .map(|t| (t.clone(), Vec::new(), false))
                        .collect();
                }
                for (_, suite_args, timed) in &mut suites {
                    *suite_args = args.test_args.clone();
                    // Asked for by name: run as asked.
                    *timed = false;
                }
            }
            if !args.probes.is_empty() {
                variants = args.probes.iter().cloned().map(Some).collect();
            }
            for (test, suite_args, timed) in &suites {
                for probe in &variants {
                    runs.push(JobRun {
                        test: test.clone(),
                        args: suite_args.clone(),
                        probe: probe.clone(),
                        expect: Expect::Pass,
                        timed: *timed,
                    });
                }
            }
        }
        if runs.is_empty() {
            bail!(
                "boot {} runs none of the tests {:?}; pass test arguments after `--` to run others",
                boot.name,
                args.tests
            );
        }
        let hide_btf = boot.hide_btf || args.no_btf;
        let name = if hide_btf && !boot.hide_btf {
            format!("{}-no-btf", boot.name)
        } else {
            boot.name.to_owned()
        };
        jobs.push(Job {
            name,
            kernel: boot.kernel,
            hide_btf,
            runs,
        });
    }
    Ok(jobs)
}

const KVM: &str = "/dev/kvm";

/// Said when there is no /dev/kvm: the matrix is skipped, and the check passes.
const NO_KVM: &str = "kernels: skipped: no /dev/kvm, so no VM kernel runs here (the host \
    kernel's run is the `test` check; `cargo xtask vm-test --accel tcg` emulates instead)";

const PVM: &str = "kernels: /dev/kvm is kvm_pvm (no hardware virtualization), whose \
    instruction emulator stops stock kernels (on BMI2 in the decompressor, then cmpxchg16b, \
    xrstor, int3): the VMs run under TCG";

/// How the VMs run, from the choice and what the machine has: the accelerator
/// and what to say about it, or `Err` with what to say when nothing runs.
fn decide(
    choice: AccelChoice,
    kvm_exists: bool,
    pvm_only: bool,
) -> std::result::Result<(Accel, Option<&'static str>), &'static str> {
    match choice {
        AccelChoice::Tcg => Ok((
            Accel::Tcg,
            Some("kernels: TCG (--accel tcg): QEMU emulates the CPU"),
        )),
        _ if !kvm_exists => Err(NO_KVM),
        AccelChoice::Auto if pvm_only => Ok((Accel::Tcg, Some(PVM))),
        _ => Ok((Accel::Kvm, None)),
    }
}

/// How the VMs can run here: the accelerator and what to say about it, or `Err`
/// with why none runs (no /dev/kvm and no `--accel tcg`).
type Usable = std::result::Result<(Accel, Option<&'static str>), &'static str>;

fn usable_accel(choice: AccelChoice) -> Result<Usable> {
    let module = |name: &str| Path::new("/sys/module").join(name).exists();
    let pvm_only = module("kvm_pvm") && !module("kvm_intel") && !module("kvm_amd");
    let kvm_exists = Path::new(KVM).exists();
    let (accel, note) = match decide(choice, kvm_exists, pvm_only) {
        Ok(decided) => decided,
        Err(_) if choice == AccelChoice::Kvm => bail!("--accel kvm, but there is no {KVM}"),
        Err(skipped) => return Ok(Err(skipped)),
    };
    if accel == Accel::Kvm {
        std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .open(KVM)
            .with_context(|| {
                format!("{KVM} exists but cannot be opened: run as root or join the kvm group")
            })?;
    }
    Ok(Ok((accel, note)))
}

/// How the VMs run here; `Ok(None)` (after saying so) when they cannot.
fn accelerator(choice: AccelChoice) -> Result<Option<Accel>> {
    match usable_accel(choice)? {
        Ok((accel, note)) => {
            if let Some(note) = note {
                println!("{note}");
            }
            Ok(Some(accel))
        }
        Err(skipped) => {
            println!("{skipped}");
            Ok(None)
        }
    }
}

/// The kernel command line of every boot: the console on the first serial port, with
/// warnings and what comes with them (a soft lockup's stack trace) but not the boot's
/// informational lines.
const CMDLINE: &str = "console=ttyS0 loglevel=5 panic=-1";

/// Whether the kernel's first complaint on the console was a soft lockup.
fn soft_lockup(transcript: &console::Transcript) -> bool {
    (transcript.kernel_trouble.as_deref()).is_some_and(|t| t.contains("BUG: soft lockup"))
}

/// Runs the boots `args` selects and fails naming each failing kernel and test.
pub fn run(args: &VmTestArgs) -> Result<()> {
    let mut jobs = jobs(args)?;
    let Some(accel) = accelerator(args.accel)? else {
        return Ok(());
    };
    if accel == Accel::Tcg && !args.timed {
        let mut left_out = Vec::new();
        for job in &mut jobs {
            job.runs.retain(|run| {
                if run.timed && !left_out.contains(&run.args) {
                    left_out.push(run.args.clone());
                }
                !run.timed
            });
        }
        jobs.retain(|job| !job.runs.is_empty());
        for args in left_out {
            let names: Vec<&str> = args
                .iter()
                .map(String::as_str)
                .filter(|a| *a != "--exact")
                .collect();
            println!(
                "kernels: left out under TCG, for their millisecond timing bounds (--timed runs them): {}",
                names.join(", ")
            );
        }
    }
    let start = Instant::now();
    let cache = cmd::target_dir().join("kernels");
    std::fs::create_dir_all(&cache).with_context(|| format!("create {}", cache.display()))?;

    let binaries = build_tests(&[TEST_BINARY.to_owned()])?;

    let mut images = BTreeMap::new();
    for job in &jobs {
        if !images.contains_key(job.kernel.name) {
            images.insert(job.kernel.name, image::ensure(job.kernel, &cache)?);
        }
    }

    let mut results = Vec::new();
    for job in &jobs {
        let image = &images[job.kernel.name];
        let initrd = cache.join(format!("initramfs-{}.cpio", job.name));
        let plan = job.plan();
        let packed = Instant::now();
        initramfs::build(&initrd, &binaries, &plan)?;
        println!(
            "==> kernel {} ({} {}{}, {accel:?}): {} test run(s), initramfs {} MB in {:.1} s",
            job.name,
            image.package,
            image.version,
            if job.hide_btf { ", BTF hidden" } else { "" },
            plan.runs.len(),
            std::fs::metadata(&initrd).map_or(0, |m| m.len() >> 20),
            packed.elapsed().as_secs_f64()
        );
        let prefix = format!("[{}] ", job.name);
        let boot = || {
            console::boot(
                accel,
                &image.vmlinuz,
                &initrd,
                CMDLINE,
                &prefix,
                Duration::from_secs(args.timeout),
            )
        };
        let (mut transcript, end) = boot()?;
        let mut verdict = verdict(job, &plan, &transcript, &end);
        if verdict.is_err() && accel == Accel::Tcg && soft_lockup(&transcript) {
            // Seen now and then on 6.1 under emulation, in a test that a second boot
            // passes: booted once more, and said loudly. A hang that repeats fails.
            println!(
                "    kernel {}: SOFT LOCKUP under TCG in the first boot ({}); booting once more",
                job.name,
                verdict.as_ref().err().map_or("", String::as_str)
            );
            let (again, end) = boot()?;
            verdict = self::verdict(job, &plan, &again, &end)
                .map_err(|why| format!("{why} (after a soft lockup in the first boot)"));
            transcript = again;
        }
        if verdict.is_ok() {
            // Kept after a failure, to boot again by hand.
            let _ = std::fs::remove_file(&initrd);
        }
        println!(
            "    kernel {}: {}",
            job.name,
            summary_line(job, &transcript, &verdict)
        );
        results.push((job, image, transcript, verdict));
    }

    println!(
        "kernel matrix ({accel:?}, {:.1} s):",
        start.elapsed().as_secs_f64()
    );
    let mut failures = Vec::new();
    for (job, image, transcript, verdict) in &results {
        println!(
            "  {:<12} {:<58} {}",
            job.name,
            format!("{} {}", image.package, image.version),
            summary_line(job, transcript, verdict)
        );
        if let Err(why) = verdict {
            failures.push(format!(
                "kernel {} ({} {}): {why}",
                job.name, image.package, image.version
            ));
        }
    }
    if !failures.is_empty() {
        bail!("the kernel matrix failed:\n  {}", failures.join("\n  "));
    }
    Ok(())
}

/// `Ok(())` when every run of the boot did what it must, else why not.
fn verdict(
    job: &Job,
    plan: &Plan,
    transcript: &console::Transcript,
    end: &console::End,
) -> std::result::Result<(), String> {
    let mut why = Vec::new();
    for (i, (run, planned)) in job.runs.iter().zip(&plan.runs).enumerate() {
        let label = planned.label();
        let Some(suite) = transcript
            .suites
            .get(i)
            .filter(|suite| suite.label == label)
        else {
            why.push(format!("{label} did not run"));
            continue;
        };
        match run.expect {
            Expect::Pass if !suite.failed.is_empty() => {
                why.push(format!("{label} failed: {}", suite.failed.join(", ")));
            }
            Expect::Pass if suite.exit != Some(0) => why.push(format!(
                "{label} exited with {} ({})",
                suite.exit.map_or("no code".to_owned(), |c| c.to_string()),
                suite.summary.as_deref().unwrap_or("no libtest summary")
            )),
            Expect::Pass if suite.passed.is_empty() => {
                why.push(format!(
                    "{label} ran no test (do the test names still exist?)"
                ));
            }
            Expect::Pass => {}
            Expect::FailWith(_) if suite.exit == Some(0) || suite.failed.is_empty() => {
                why.push(format!("{label} was to fail and did not"));
            }
            Expect::FailWith(signs) => {
                let missing: Vec<&str> = signs
                    .iter()
                    .copied()
                    .filter(|sign| !suite.output.iter().any(|line| line.contains(sign)))
                    .collect();
                if !missing.is_empty() {
                    why.push(format!(
                        "{label} failed, but its output lacks {missing:?} (failed for another reason?)"
                    ));
                }
            }
        }
    }
    if transcript.exit.is_none() {
        let how = match end {
            console::End::TimedOut(limit) => format!("timed out after {} s", limit.as_secs()),
            console::End::Exited(status) => format!("qemu exited ({status})"),
        };
        let reached = match transcript.suites.last() {
            None if transcript.started.is_none() => "before /init started".to_owned(),
            None => "before the first test binary".to_owned(),
            Some(suite) if suite.exit.is_none() => format!("during {}", suite.label),
            Some(suite) => format!("after {}", suite.label),
        };
        why.push(format!("no end mark: {how} {reached}"));
    }
    if let Some(trouble) = &transcript.kernel_trouble {
        why.push(format!("kernel said: {trouble}"));
    }
    if job.hide_btf && transcript.btf.as_deref() != Some("absent") {
        why.push(format!(
            "BTF was to be hidden, /sys/kernel/btf/vmlinux: {}",
            transcript.btf.as_deref().unwrap_or("not reported")
        ));
    }
    if why.is_empty() {
        Ok(())
    } else {
        Err(why.join("; "))
    }
}

fn summary_line(
    job: &Job,
    transcript: &console::Transcript,
    verdict: &std::result::Result<(), String>,
) -> String {
    let secs =
        |d: Option<Duration>| d.map_or("-".to_owned(), |d| format!("{:.1} s", d.as_secs_f64()));
    let passed: usize = transcript.suites.iter().map(|s| s.passed.len()).sum();
    let (mut failed, mut refused) = (0, 0);
    for (suite, run) in transcript.suites.iter().zip(&job.runs) {
        match run.expect {
            Expect::Pass => failed += suite.failed.len(),
            Expect::FailWith(_) => refused += suite.failed.len(),
        }
    }
    let refused = if refused > 0 {
        format!(" ({refused} more failed as expected)")
    } else {
        String::new()
    };
    let tests = match (transcript.boot_time, transcript.total_time) {
        (Some(boot), Some(total)) => Some(total.saturating_sub(boot)),
        _ => None,
    };
    format!(
        "{}: boot {}, tests {}, {passed} passed, {failed} failed{refused}, BTF {}",
        if verdict.is_ok() { "ok" } else { "FAILED" },
        secs(transcript.boot_time),
        secs(tests),
        transcript.btf.as_deref().unwrap_or("?"),
    )
}

/// Builds the agent's integration tests `tests` (`cargo test --no-run`) and returns
/// each one's executable. The lab's integration tests share the binary's name: the
/// package is named.
fn build_tests(tests: &[String]) -> Result<Vec<(String, PathBuf)>> {
    let mut cargo = cmd::cargo(["test", "-p", "reloadscope"]);
    for test in tests {
        cargo.args(["--test", test]);
    }
    cargo.arg("--no-run");
    build_executables(cargo, "test", tests)
}

/// Runs `cargo` (a `--no-run` build) with JSON messages and returns the executable
/// of each target of `kind` (`test`, `bench`) named in `names`.
fn build_executables(
    mut cargo: std::process::Command,
    kind: &str,
    names: &[String],
) -> Result<Vec<(String, PathBuf)>> {
    cargo
        .arg("--message-format=json-render-diagnostics")
        .stdout(Stdio::piped());
    let output = cargo
        .spawn()
        .and_then(|child| child.wait_with_output())
        .with_context(|| format!("could not run `{}`", cmd::display(&cargo)))?;
    if !output.status.success() {
        return Err(cmd::ChildFailed::new(&cargo, output.status).into());
    }
    let stdout = String::from_utf8_lossy(&output.stdout);
    let found = executables(&stdout, kind);
    names
        .iter()
        .map(|name| {
            found
                .iter()
                .find(|(found, _)| found == name)
                .cloned()
                .with_context(|| {
                    format!(
                        "`{}` built no executable for {kind} {name}",
                        cmd::display(&cargo)
                    )
                })
        })
        .collect()
}

/// (target name, executable) of each target of `kind` in cargo's JSON messages.
fn executables(messages: &str, kind: &str) -> Vec<(String, PathBuf)> {
    messages
        .lines()
        .filter_map(|line| serde_json::from_str::<serde_json::Value>(line).ok())
        .filter(|msg| msg["reason"] == "compiler-artifact")
        .filter(|msg| {
            msg["target"]["kind"]
                .as_array()
                .is_some_and(|kinds| kinds.iter().any(|k| k == kind))
        })
        .filter_map(|msg| {
            let name = msg["target"]["name"].as_str()?.to_owned();
            let exe = msg["executable"].as_str()?;
            Some((name, PathBuf::from(exe)))
        })
        .collect()
}

#[cfg(test)]
mod tests;
