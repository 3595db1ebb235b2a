//! `reloadscope-lab` as a user runs it: it must show updates seen by both sources and
//! leave no mount and no directory behind. Needs root.

use std::{
    io::{BufRead, BufReader},
    process::{Command, Stdio},
};

#[test]
#[ignore = "needs root: run cargo xtask test"]
fn lab_reports_updates_from_both_sources_and_cleans_up() {
    let out = Command::new(env!("CARGO_BIN_EXE_reloadscope-lab"))
        .args([
            "--duration",
            "3.5",
            "--interval",
            "0.2",
            "--plain",
            "--pods",
            "1",
            "--listen",
            "127.0.0.1:0",
        ])
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "lab failed: {stderr}");
    let base = stderr
        .lines()
        .find_map(|l| l.strip_prefix("lab node at ")?.split(';').next())
        .unwrap_or_else(|| panic!("no lab node line in: {stderr}"));

    // Rows: VOLUME TYPE WRITTEN UPDATES LAST-UPDATE("1.2s ago"|"-") SOURCE
    let rows: Vec<Vec<&str>> = stdout
        .lines()
        .filter(|l| l.starts_with("lab/"))
        .map(|l| l.split_whitespace().collect())
        .collect();
    let seen_by_both = rows.iter().any(|r| {
        let (written, updates) = (
            r[2].parse::<u64>().unwrap(),
            r[3].parse::<u64>().unwrap_or(0),
        );
        written >= 1 && updates == written && r.last() == Some(&"ebpf+inotify")
    });
    assert!(
        seen_by_both,
        "no volume shown as updated by both sources:\n{stdout}"
    );
    for ty in ["configmap", "secret", "projected", "downward_api"] {
        assert!(
            rows.iter().any(|r| r[1] == ty),
            "no {ty} volume in the table"
        );
    }

    // Consumers: CONSUMER VOLUME STRATEGY MOUNT RELOADS LAST-LATENCY("0.3 ms"|"-") STALE
    let last = |name: &str| -> Vec<&str> {
        let line = stdout.lines().rev().find(|l| l.starts_with(name));
        line.unwrap_or_else(|| panic!("no {name} row:\n{stdout}"))
            .split_whitespace()
            .collect()
    };
    let watcher = last("app-0/watcher");
    assert!(
        watcher[4].parse::<u64>().unwrap() >= 1,
        "the ..data watcher reloaded: {watcher:?}"
    );
    let naive = last("app-0/naive");
    assert_eq!(
        naive[4], "0",
        "the IN_MODIFY watcher never reloads: {naive:?}"
    );
    let pinned = last("app-0/pinned");
    assert_eq!(
        (pinned[3], pinned.last().copied()),
        ("subpath", Some("never")),
        "{pinned:?}"
    );

    let mounts = std::fs::read_to_string("/proc/self/mountinfo").unwrap();
    assert!(
        !mounts.contains(base),
        "lab mounts left behind under {base}"
    );
    assert!(
        !std::path::Path::new(base).exists(),
        "lab dir {base} left behind"
    );
}

#[test]
#[ignore = "needs root: run cargo xtask test"]
fn ctrl_c_stops_the_lab_and_removes_its_node() {
    let mut child = Command::new(env!("CARGO_BIN_EXE_reloadscope-lab"))
        .args(["--plain", "--pods", "1", "--listen", "127.0.0.1:0"])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut err = BufReader::new(child.stderr.take().unwrap());
    // The agent's own log lines come first.
    let base = loop {
        let mut line = String::new();
        assert!(
            err.read_line(&mut line).unwrap() > 0,
            "lab exited before naming its node"
        );
        if let Some(rest) = line.strip_prefix("lab node at ") {
            break rest.split(';').next().unwrap().to_owned();
        }
    };
    // The first table is drawn once the agent runs.
    let mut out = BufReader::new(child.stdout.take().unwrap());
    let mut row = String::new();
    while !row.starts_with("VOLUME") {
        row.clear();
        assert!(
            out.read_line(&mut row).unwrap() > 0,
            "lab exited before drawing its table"
        );
    }
    assert!(
        std::fs::read_to_string("/proc/self/mountinfo")
            .unwrap()
            .contains(&base),
        "tmpfs volumes mounted"
    );
    // SAFETY: our child's pid.
    unsafe { libc::kill(child.id() as i32, libc::SIGINT) };
    // Its stdout is no longer read: a lab that ignored the signal would block on it.
    let start = std::time::Instant::now();
    let status = loop {
        if let Some(s) = child.try_wait().unwrap() {
            break s;
        }
        if start.elapsed() > std::time::Duration::from_secs(10) {
            child.kill().unwrap();
            panic!("lab still running 10 s after SIGINT");
        }
        std::thread::sleep(std::time::Duration::from_millis(10));
    };
    assert!(status.success(), "{status:?}");
    assert!(
        !std::fs::read_to_string("/proc/self/mountinfo")
            .unwrap()
            .contains(&base),
        "mounts left behind"
    );
    assert!(
        !std::path::Path::new(&base).exists(),
        "lab dir {base} left behind"
    );
}
