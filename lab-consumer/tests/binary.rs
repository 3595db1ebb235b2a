//! `reloadscope-consumer` as a process, on a kubelet-style volume in a temp dir: its
//! stdout lines, an update, SIGTERM; as root, as PID 1 of a pid namespace.

mod common;

use std::{
    io::{BufRead as _, BufReader},
    path::Path,
    process::{Child, Command, ExitStatus, Stdio},
    sync::mpsc,
    thread,
    time::{Duration, Instant},
};

use common::{DEADLINE, Volume, next_matching};
use lab_consumer::{Open, READY};

const BIN: &str = env!("CARGO_BIN_EXE_reloadscope-consumer");

/// A running consumer process and the lines of its stdout.
struct Consumer {
    child: Child,
    lines: mpsc::Receiver<String>,
    /// Every line so far.
    seen: Vec<String>,
}

impl Consumer {
    /// `program args...`, whose stdout (the consumer's) is read line by line.
    fn spawn(program: &str, args: &[&str]) -> Consumer {
        let mut child = Command::new(program)
            .args(args)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .spawn()
            .unwrap();
        let stdout = child.stdout.take().unwrap();
        let (tx, lines) = mpsc::channel();
        thread::spawn(move || {
            for line in BufReader::new(stdout).lines() {
                let Ok(line) = line else { break };
                if tx.send(line).is_err() {
                    break;
                }
            }
        });
        Consumer {
            child,
            lines,
            seen: Vec::new(),
        }
    }

    fn start(strategy: &str, file: &Path) -> Consumer {
        let file = file.to_str().unwrap();
        let mut c = Consumer::spawn(BIN, &["--strategy", strategy, "--file", file]);
        c.expect(|l| l == READY);
        c
    }

    /// Waits for a line `pick` accepts.
    fn expect(&mut self, pick: impl Fn(&str) -> bool) -> String {
        let seen = &mut self.seen;
        let got = next_matching(&self.lines, Instant::now() + DEADLINE, |l| {
            seen.push(l.clone());
            pick(l)
        });
        got.unwrap_or_else(|e| panic!("no such line: {e}"))
    }

    /// The heads of the opens seen so far.
    fn heads(&self) -> Vec<Vec<u8>> {
        self.seen
            .iter()
            .filter_map(|l| Open::parse(l))
            .map(|o| o.head.unwrap())
            .collect()
    }

    /// Sends `signal` to `pid`, waits for the process to exit, and takes the rest of its
    /// stdout.
    fn stop(&mut self, pid: u32, signal: libc::c_int) -> ExitStatus {
        // SAFETY: kill(2) of a process of this test.
        assert_eq!(unsafe { libc::kill(pid as libc::pid_t, signal) }, 0);
        let deadline = Instant::now() + Duration::from_secs(2);
        let status = loop {
            if let Some(status) = self.child.try_wait().unwrap() {
                break status;
            }
            assert!(
                Instant::now() < deadline,
                "still running 2 s after the signal"
            );
            thread::sleep(Duration::from_millis(5));
        };
        // The reader thread ends at end of file.
        while let Ok(line) = self.lines.recv_timeout(DEADLINE) {
            self.seen.push(line);
        }
        status
    }
}

impl Drop for Consumer {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn is_open_of(line: &str, head: &[u8]) -> bool {
    Open::parse(line).is_some_and(|o| o.head.as_deref() == Ok(head))
}

#[test]
fn a_data_dir_watcher_reloads_and_a_naive_watcher_does_not() {
    let mut volume = Volume::new(b"v1");
    let mut watcher = Consumer::start("data-dir-watcher", &volume.file());
    let mut naive = Consumer::start("naive-modify", &volume.file());
    for c in [&watcher, &naive] {
        assert_eq!(c.seen.len(), 2, "{:?}", c.seen);
        assert!(is_open_of(&c.seen[0], b"v1"), "{:?}", c.seen);
    }

    let before = std::time::SystemTime::now();
    volume.swap(b"v2");
    let line = watcher.expect(|l| Open::parse(l).is_some());
    let open = Open::parse(&line).unwrap();
    assert_eq!(open.head.as_deref(), Ok(&b"v2"[..]), "{line}");
    assert!(open.at >= before, "{line}: its time is taken at the open");

    // The update queued whatever events the naive watcher's watch got before the
    // signal: it handles those first, then exits.
    let pid = naive.child.id();
    let status = naive.stop(pid, libc::SIGTERM);
    assert!(status.success(), "{status}");
    assert_eq!(naive.heads(), [b"v1"], "{:?}", naive.seen);

    let pid = watcher.child.id();
    let status = watcher.stop(pid, libc::SIGINT);
    assert!(status.success(), "{status}");
    assert_eq!(watcher.heads(), [b"v1", b"v2"], "{:?}", watcher.seen);
}

#[test]
fn a_timer_poller_rereads_and_a_reader_once_does_not() {
    let mut volume = Volume::new(b"v1");
    let file = volume.file();
    let file = file.to_str().unwrap();
    let args = [
        "--strategy",
        "timer-poller",
        "--period",
        "0.02",
        "--file",
        file,
    ];
    let mut poller = Consumer::spawn(BIN, &args);
    poller.expect(|l| l == READY);
    let mut once = Consumer::start("read-once", &volume.file());
    volume.swap(b"v2");
    poller.expect(|l| is_open_of(l, b"v2"));
    let pid = once.child.id();
    assert!(once.stop(pid, libc::SIGTERM).success());
    assert_eq!(once.heads(), [b"v1"]);
}

#[test]
fn errors_end_it_with_a_message() {
    let volume = Volume::new(b"v1");
    let missing = volume.dir().join("missing/key");
    let out = Command::new(BIN)
        .args(["--strategy", "data-dir-watcher", "--file"])
        .arg(&missing)
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    assert!(out.stdout.is_empty());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("inotify_add_watch"), "{stderr}");

    let out = Command::new(BIN).arg("--strategy").output().unwrap();
    assert!(!out.status.success());
}

/// A container's PID 1 gets no signal whose action is the default: without handling
/// SIGTERM it would run until killed.
#[test]
#[ignore = "needs root: run cargo xtask test"]
fn as_pid_1_it_exits_on_sigterm() {
    let volume = Volume::new(b"v1");
    let file = volume.file();
    let file = file.to_str().unwrap();
    let args = [
        "--pid",
        "--fork",
        "--kill-child",
        "--",
        BIN,
        "--strategy",
        "read-once",
        "--file",
        file,
    ];
    let mut c = Consumer::spawn("unshare", &args);
    c.expect(|l| l == READY);
    // unshare's only child: the consumer, PID 1 in its namespace.
    let unshare = c.child.id();
    let children = format!("/proc/{unshare}/task/{unshare}/children");
    let children = std::fs::read_to_string(children).unwrap();
    let pid: u32 = children.trim().parse().unwrap();
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    let nspid = status.lines().find(|l| l.starts_with("NSpid:")).unwrap();
    assert!(
        nspid.ends_with("\t1"),
        "not PID 1 in its namespace: {nspid}"
    );

    let exited = c.stop(pid, libc::SIGTERM);
    assert!(exited.success(), "{exited}");
    assert_eq!(c.heads(), [b"v1"]);
}
