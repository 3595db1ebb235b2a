//! `--kernel-log`: the kernel programs' failures reach the agent's log when asked for;
//! when not, their logging code is not in the programs the kernel runs (the loader
//! sets the level to 0 and the verifier drops the code as dead). Needs root.

use std::{fs, os::unix::fs::symlink, path::Path};

use reloadscope::probe::{Choice, DEFAULT_RING_BYTES, Probe};

use crate::support::*;

/// `n` swaps of `..data` in `dir`, as the kubelet makes them: each is two calls the
/// probe keeps (the `..data_tmp` symlink and its rename).
fn swaps(dir: &Path, n: usize) {
    for i in 0..n {
        let tmp = dir.join("..data_tmp");
        let _ = fs::remove_file(&tmp);
        symlink(format!("..{i}"), &tmp).unwrap();
        fs::rename(&tmp, dir.join("..data")).unwrap();
    }
}

fn load(ring_bytes: u32, kernel_log: bool) -> Probe {
    let choice = Choice::from_env().unwrap_or_default();
    let ((probe, _ring), _) = Probe::load_choice(choice, ring_bytes, kernel_log)
        .unwrap_or_else(|e| panic!("no probe of {choice:?} loads as root: {e:?}"));
    probe
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs root: run cargo xtask test"]
async fn a_full_ring_is_said_in_the_agents_log_with_the_kernel_log() {
    let logs = Logs::capture();
    let dir = tempfile::tempdir().unwrap();
    // A ring of one page holds 3 records: nothing drains it here.
    let mut probe = load(4096, true);
    let log = probe.take_kernel_log().expect("the kernel log, asked for");
    let reader = tokio::spawn(log.run(std::future::pending()));
    swaps(dir.path(), 20);
    assert!(probe.stats().lost > 0, "{:?}", probe.stats());
    let said = |l: &String| {
        l.contains("swap event lost: the ring buffer is full")
            && l.contains("\"level\":\"WARN\"")
            && l.contains("agent_ebpf")
    };
    wait_for("the kernel programs' warning", || {
        std::future::ready(logs.lines().iter().any(said).then_some(()))
    })
    .await;
    reader.abort();
    // Off: nothing to read it with.
    assert!(load(4096, false).take_kernel_log().is_none());
}

#[test]
#[ignore = "needs root: run cargo xtask test"]
fn without_the_kernel_log_its_code_is_not_in_the_verified_programs() {
    let off = load(DEFAULT_RING_BYTES, false).translated_sizes();
    let on = load(DEFAULT_RING_BYTES, true).translated_sizes();
    println!("translated sizes, kernel log off / on: {off:?} / {on:?}");
    assert_eq!(
        off.keys().collect::<Vec<_>>(),
        on.keys().collect::<Vec<_>>()
    );
    // The swap exits (or fexits) log a full ring: each is smaller without.
    let logging: Vec<&String> = (on.keys())
        .filter(|n| n.contains("exit") && !n.contains("watch"))
        .collect();
    assert!(!logging.is_empty(), "{on:?}");
    for name in logging {
        assert!(
            off[name] < on[name],
            "{name}: {} off, {} on",
            off[name],
            on[name]
        );
    }
    // None grows without it.
    for (name, size) in &off {
        assert!(*size <= on[name], "{name}");
    }
}
