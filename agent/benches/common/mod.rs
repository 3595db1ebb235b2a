//! Shared by the benchmarks: the arguments' check, the report's header and notes.
//!
//! - [`agent_process`]: the agent binary as a process of its own, read over HTTP;
//! - [`figures`]: medians, percentiles and how the reports write figures;
//! - [`lab_disk`]: an ext4 image with a journal for a lab node's tree;
//! - [`machine`]: the machine's facts for the reports, and this process's BPF programs;
//! - [`procfs`]: a process's CPU time, memory and inotify watches, the machine's busy
//!   time;
//! - [`revision`]: revisions written into a volume key, found again in a lab
//!   consumer's open log;
//! - [`syscall_loops`]: the system-call loops the probe's cost is timed on.

pub mod agent_process;
pub mod figures;
pub mod lab_disk;
pub mod machine;
pub mod procfs;
pub mod revision;
pub mod syscall_loops;

use std::{fmt::Write as _, process::ExitCode, time::Instant};

use machine::{cpu_model, kernel_release, loadavg, nproc, tracepoint_prog_holders};

/// A benchmark's parsed arguments; else, after printing why (their error and the usage,
/// or that it needs root: `needs` says what for), the exit code to return.
pub fn checked_args<A>(
    bench: &str,
    usage: &str,
    needs: &str,
    parsed: Result<A, String>,
) -> Result<A, ExitCode> {
    let args = parsed.map_err(|e| {
        if !e.is_empty() {
            eprintln!("{bench}: {e}");
        }
        eprintln!("{usage}");
        ExitCode::from(2)
    })?;
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } != 0 {
        eprintln!("{bench}: needs root{needs}\n{usage}");
        return Err(ExitCode::from(2));
    }
    Ok(args)
}

/// The report's first lines: the command and the machine it ran on.
pub fn header(bench: &str, given: &[String], quick: bool) -> String {
    let mut cmd = format!("cargo xtask bench {bench}");
    for a in given {
        cmd.push(' ');
        cmd.push_str(a);
    }
    let mut out = format!("## `{cmd}`\n\n");
    out += &format!("- kernel (`uname -r`): {}\n", kernel_release());
    out += &format!("- nproc: {}\n", nproc());
    if let Some(model) = cpu_model() {
        out += &format!("- CPU: {model}\n");
    }
    out += &format!("- load average at start: {}\n", loadavg());
    out += &format!(
        "- sizes: {}\n",
        if quick { "--quick (smoke run)" } else { "full" }
    );
    let holders = tracepoint_prog_holders();
    let holders = if holders.is_empty() {
        "none".to_owned()
    } else {
        holders.join(", ")
    };
    out += &format!("- other processes holding tracepoint BPF programs at start: {holders}\n");
    out
}

/// The report's line on other processes holding tracepoint BPF programs while the
/// rounds ran; `consequence` says what that means for the figures above it.
pub fn holders_note(holders: &[String], consequence: &str) -> String {
    if holders.is_empty() {
        "\nNo other process held tracepoint BPF programs during the rounds.\n".to_owned()
    } else {
        format!(
            "\n**Caveat:** other processes held tracepoint BPF programs during the rounds ({}): {consequence}\n",
            holders.join(", ")
        )
    }
}

/// A measure's section of the report: its own, or when it failed, a FAILED one (the
/// error goes to stderr too, and `failed` is set).
pub fn section(bench: &str, name: &str, r: anyhow::Result<String>, failed: &mut bool) -> String {
    r.unwrap_or_else(|e| {
        eprintln!("[{bench}] {name} failed: {e:#}");
        *failed = true;
        format!("### {name}\n\nFAILED: {e:#}\n")
    })
}

/// The report's last line, how long the run took; prints the report, returns the exit
/// code.
pub fn finish(mut out: String, started: Instant, failed: bool) -> ExitCode {
    let _ = writeln!(
        out,
        "\n_Run took {:.0} s._",
        started.elapsed().as_secs_f64()
    );
    print!("{out}");
    if failed {
        ExitCode::FAILURE
    } else {
        ExitCode::SUCCESS
    }
}
