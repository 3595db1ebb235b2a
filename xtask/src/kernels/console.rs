//! One boot: QEMU with the serial console on its stdout, streamed line by line,
//! and what the console said (the marks of /init and libtest's lines).

use std::io::{BufRead, BufReader, Read};
use std::path::Path;
use std::process::{Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use anyhow::{Context, Result};

use super::initramfs::{BTF, EXIT, START, SUITE_END, SUITE_START};
use crate::cmd;

/// A kernel that has not started /init by then is stuck: under TCG these kernels
/// reach it in 2-5 s.
pub const BOOT_TIMEOUT: Duration = Duration::from_secs(90);

/// How QEMU runs the guest.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Accel {
    /// Hardware-assisted KVM. `-cpu host` aborts in nested setups (docs/design.md 8);
    /// these features are what x86-64-v2 code may use.
    Kvm,
    /// QEMU's own emulation: slower, but runs any kernel anywhere.
    Tcg,
}

impl Accel {
    fn args(self) -> &'static [&'static str] {
        match self {
            Accel::Kvm => &[
                "-accel",
                "kvm",
                "-cpu",
                "qemu64,+ssse3,+sse4.1,+sse4.2,+popcnt",
            ],
            Accel::Tcg => &["-accel", "tcg", "-cpu", "max"],
        }
    }
}

/// How the console ended.
#[derive(Debug, PartialEq, Eq)]
pub enum End {
    /// QEMU exited (after /init powered off, or after a kernel panic).
    Exited(String),
    /// Still running at the deadline (or not yet at /init after [`BOOT_TIMEOUT`]): killed.
    TimedOut(Duration),
}

/// One test binary's run, as the console showed it.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Suite {
    pub label: String,
    pub exit: Option<i32>,
    pub passed: Vec<String>,
    pub failed: Vec<String>,
    /// libtest's `test result: ...` line.
    pub summary: Option<String>,
    /// Every console line of the run.
    pub output: Vec<String>,
}

/// What a boot's console said.
#[derive(Debug, Default)]
pub struct Transcript {
    /// `uname -r` and CPUs, from the start mark.
    pub started: Option<String>,
    /// `present` or `absent`: /sys/kernel/btf/vmlinux as the tests see it.
    pub btf: Option<String>,
    pub suites: Vec<Suite>,
    /// /init's exit code: nonzero when any test binary failed.
    pub exit: Option<i32>,
    /// A kernel panic or oops line, if one was seen.
    pub kernel_trouble: Option<String>,
    /// From QEMU's start to the start mark, and to the exit mark.
    pub boot_time: Option<Duration>,
    pub total_time: Option<Duration>,
}

impl Transcript {
    /// Takes one console line (without its line end).
    pub fn line(&mut self, line: &str, elapsed: Duration) {
        if let Some(at) = line.find("RELOADSCOPE-VM-") {
            let mark = &line[at..];
            if let Some(rest) = mark.strip_prefix(START) {
                self.started = Some(rest.trim().to_owned());
                self.boot_time = Some(elapsed);
            } else if let Some(rest) = mark.strip_prefix(BTF) {
                self.btf = Some(rest.trim().to_owned());
            } else if let Some(label) = mark.strip_prefix(SUITE_START) {
                self.suites.push(Suite {
                    label: label.trim().to_owned(),
                    ..Suite::default()
                });
            } else if let Some(rest) = mark.strip_prefix(SUITE_END) {
                if let (Some(suite), Some((_, code))) =
                    (self.suites.last_mut(), rest.rsplit_once(" exit="))
                {
                    suite.exit = code.trim().parse().ok();
                }
            } else if let Some(code) = mark.strip_prefix(EXIT) {
                self.exit = code.trim().parse().ok();
                self.total_time = Some(elapsed);
            }
            return;
        }
        if self.kernel_trouble.is_none()
            && ["Kernel panic", "BUG: ", "Oops: ", "WARNING: CPU:"]
                .iter()
                .any(|sign| line.contains(sign))
        {
            self.kernel_trouble = Some(line.trim().to_owned());
        }
        let Some(suite) = self.suites.last_mut().filter(|suite| suite.exit.is_none()) else {
            return;
        };
        suite.output.push(line.to_owned());
        if line.starts_with("test result: ") {
            suite.summary = Some(line.trim().to_owned());
        } else if let Some(rest) = line.strip_prefix("test ")
            && let Some((name, result)) = rest.rsplit_once(" ... ")
        {
            match result.trim() {
                "ok" => suite.passed.push(name.to_owned()),
                result if result.starts_with("FAILED") => suite.failed.push(name.to_owned()),
                _ => {}
            }
        }
    }
}

/// Boots `kernel` with `initrd`, streaming the console to stdout with `prefix`,
/// until QEMU exits or `timeout` passes.
///
/// QEMU's default `pc` machine: under TCG its `microvm` hung in 2 boots of 6
/// with 2 CPUs (timer setup), `pc` in none of 25, and boots as fast (SeaBIOS
/// takes well under a second).
pub fn boot(
    accel: Accel,
    kernel: &Path,
    initrd: &Path,
    cmdline: &str,
    prefix: &str,
    timeout: Duration,
) -> Result<(Transcript, End)> {
    let mut qemu = Command::new("qemu-system-x86_64");
    qemu.args(accel.args())
        .args(["-smp", "2", "-m", "1024"])
        .args(["-nic", "none", "-nographic", "-no-reboot"])
        .arg("-kernel")
        .arg(kernel)
        .arg("-initrd")
        .arg(initrd)
        .arg("-append")
        .arg(cmdline)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    let start = Instant::now();
    let mut child = qemu.spawn().with_context(|| {
        format!(
            "could not start `{}` (apt package qemu-system-x86)",
            cmd::display(&qemu)
        )
    })?;
    let (tx, rx) = mpsc::channel();
    let stdout = child.stdout.take().expect("piped stdout");
    std::thread::spawn(move || {
        let mut reader = BufReader::new(stdout);
        let mut buf = Vec::new();
        while reader.read_until(b'\n', &mut buf).is_ok_and(|n| n > 0) {
            if tx.send(String::from_utf8_lossy(&buf).into_owned()).is_err() {
                return;
            }
            buf.clear();
        }
    });
    let mut stderr = child.stderr.take().expect("piped stderr");
    let stderr = std::thread::spawn(move || {
        let mut text = String::new();
        let _ = stderr.read_to_string(&mut text);
        text
    });

    let mut transcript = Transcript::default();
    let end = loop {
        let limit = if transcript.started.is_some() {
            timeout
        } else {
            timeout.min(BOOT_TIMEOUT)
        };
        let left = (start + limit).saturating_duration_since(Instant::now());
        match rx.recv_timeout(left) {
            Ok(raw) => {
                let line = printable(&raw);
                println!("{prefix}{line}");
                transcript.line(&line, start.elapsed());
            }
            Err(mpsc::RecvTimeoutError::Disconnected) => {
                let status = child.wait().context("waiting for qemu")?;
                let said = stderr.join().unwrap_or_default();
                let said = said.trim();
                break End::Exited(if said.is_empty() {
                    format!("{status}")
                } else {
                    format!("{status}: {said}")
                });
            }
            Err(mpsc::RecvTimeoutError::Timeout) => {
                // Our own child, by its handle.
                let _ = child.kill();
                let _ = child.wait();
                break End::TimedOut(limit);
            }
        }
    };
    Ok((transcript, end))
}

/// The line without its end and without terminal control characters (the BIOS
/// clears the screen).
fn printable(raw: &str) -> String {
    let mut out = String::with_capacity(raw.len());
    let mut chars = raw.trim_end_matches(['\r', '\n']).chars().peekable();
    while let Some(c) = chars.next() {
        if c == '\u{1b}' {
            // ESC [ params final, or ESC and one character.
            if chars.next_if_eq(&'[').is_some() {
                while chars.next().is_some_and(|c| !c.is_ascii_alphabetic()) {}
            } else {
                chars.next();
            }
        } else if c == '\t' || !c.is_control() {
            out.push(c);
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn transcript(lines: &str) -> Transcript {
        let mut t = Transcript::default();
        for (i, line) in lines.lines().enumerate() {
            t.line(line, Duration::from_secs(i as u64));
        }
        t
    }

    #[test]
    fn marks_and_libtest_lines_make_the_transcript() {
        let t = transcript(
            "SeaBIOS (version 1.16)\n\
             RELOADSCOPE-VM-START kernel=6.1.0-56-cloud-amd64 cpus=2\n\
             RELOADSCOPE-VM-BTF=absent\n\
             RELOADSCOPE-VM-SUITE-START probe\n\
             running 2 tests\n\
             test a_test ... ok\n\
             test b_test ... FAILED\n\
             failures:\n\
             test result: FAILED. 1 passed; 1 failed; 0 ignored; 0 measured; 0 filtered out\n\
             RELOADSCOPE-VM-SUITE-END probe exit=101\n\
             RELOADSCOPE-VM-SUITE-START detect/fentry\n\
             test c_test ... ok\n\
             RELOADSCOPE-VM-SUITE-END detect/fentry exit=0\n\
             test not_in_a_suite ... ok\n\
             [    3.1] reboot: RELOADSCOPE-VM-EXIT=101\n",
        );
        assert_eq!(
            t.started.as_deref(),
            Some("kernel=6.1.0-56-cloud-amd64 cpus=2")
        );
        assert_eq!(t.boot_time, Some(Duration::from_secs(1)));
        assert_eq!(t.btf.as_deref(), Some("absent"));
        assert_eq!(t.exit, Some(101));
        assert_eq!(t.total_time, Some(Duration::from_secs(14)));
        assert_eq!(t.suites.len(), 2);
        let (probe, detect) = (&t.suites[0], &t.suites[1]);
        assert_eq!(
            (
                probe.label.as_str(),
                probe.exit,
                &probe.passed[..],
                &probe.failed[..]
            ),
            (
                "probe",
                Some(101),
                &["a_test".to_owned()][..],
                &["b_test".to_owned()][..]
            )
        );
        assert_eq!(
            probe.summary.as_deref(),
            Some("test result: FAILED. 1 passed; 1 failed; 0 ignored; 0 measured; 0 filtered out")
        );
        assert_eq!(probe.output.len(), 5, "{:?}", probe.output);
        assert_eq!(probe.output[3], "failures:");
        assert_eq!(
            (detect.label.as_str(), detect.exit, &detect.passed[..]),
            ("detect/fentry", Some(0), &["c_test".to_owned()][..])
        );
        assert!(detect.failed.is_empty() && detect.summary.is_none());
        assert!(t.kernel_trouble.is_none());
    }

    #[test]
    fn panics_are_noted_and_control_characters_dropped() {
        let t = transcript("[ 1.0] Kernel panic - not syncing: Attempted to kill init!\n");
        assert!(t.kernel_trouble.unwrap().contains("Attempted to kill init"));
        assert_eq!(
            printable("\u{1b}c\u{1b}[2J\u{1b}[0;37mSeaBIOS\r\n"),
            "SeaBIOS"
        );
        assert_eq!(printable("test a ... ok\r\n"), "test a ... ok");
    }
}
