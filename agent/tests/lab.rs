//! `reloadscope lab` as a user runs it: it must show updates seen by both sources and
//! leave no mount and no directory behind. Needs root.

use std::process::Command;

#[test]
#[ignore = "needs root: run cargo xtask test"]
fn lab_reports_updates_from_both_sources_and_cleans_up() {
    let out = Command::new(env!("CARGO_BIN_EXE_reloadscope"))
        .args([
            "lab",
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
