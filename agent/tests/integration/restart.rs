//! An agent killed (SIGKILL) in the middle of an update burst and started again with
//! the same `--state-file`: every volume updated while it was down is recorded as
//! updated (several updates as one, swapped when its `..data` symlink was made), and
//! a consumer that was stale is stale still (its watch, which showed that it reads the
//! volume, died with the update: the state file keeps that it does). The real binary.
//! Needs root.

use std::{
    path::Path,
    process::{Child, Stdio},
    sync::atomic::{AtomicBool, Ordering::Relaxed},
    time::{SystemTime, UNIX_EPOCH},
};

use crate::support::*;
use reloadscope::{
    checkpoint,
    node::{read_target, volumes::VolumeType},
};
use reloadscope_lab::{CallStyle, ContainerSpec, LabContainer, LabNode, Strategy, payload};

const KEY: &str = "config.yaml";

fn agent(node: &LabNode, port: u16, state: &Path) -> Child {
    let mut cmd = agent_command(node, &format!("127.0.0.1:{port}"), &[]);
    cmd.arg("--state-file").arg(state).stderr(Stdio::null());
    cmd.spawn().expect("the agent")
}

fn unix(t: SystemTime) -> f64 {
    t.duration_since(UNIX_EPOCH).unwrap().as_secs_f64()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs root: run cargo xtask test"]
async fn updates_made_while_the_agent_was_down_are_recorded() {
    let mut node = LabNode::temp().unwrap();
    let pod = node.add_pod("shop", "web").unwrap();
    let names = ["stuck", "busy", "quiet"];
    let ws: Vec<_> = names
        .iter()
        .map(|n| {
            let ty = if *n == "busy" {
                VolumeType::Secret
            } else {
                VolumeType::ConfigMap
            };
            let w = node.add_volume(&pod, ty, n).unwrap();
            w.write(&payload(&[(KEY, "0")]), CallStyle::GoAt).unwrap();
            w
        })
        .collect();
    let bin = &reloadscope_lab::lab_bin().unwrap();
    let spec = ContainerSpec::new("naive", ws[0].dir(), KEY, Strategy::NaiveModify);
    let naive = LabContainer::start(bin, &node, &pod, &spec).unwrap();
    let state_dir = tempfile::tempdir().unwrap();
    let state = state_dir.path().join("state.json");
    let port = free_port();
    let addr = std::net::SocketAddr::from(([127, 0, 0, 1], port));
    let mut first = agent(&node, port, &state);
    wait_ready(addr).await;
    // Its watch on its file, which the update ends, shows that it reads the volume.
    let naive_reads = [("container", "naive"), ("reads", "yes")];
    wait_metrics(addr, "the naive consumer, reading", |m| {
        m.get("reloadscope_consumer_info", &naive_reads).is_some()
    })
    .await;

    // "stuck" is updated and its consumer never reloads.
    ws[0]
        .write(&payload(&[(KEY, "1")]), CallStyle::GoAt)
        .unwrap();
    let stale = [("container", "naive")];
    wait_metrics(addr, "the naive consumer stale", |m| {
        m.get("reloadscope_consumer_stale_seconds", &stale)
            .is_some_and(|s| s > 0.0)
    })
    .await;
    // A checkpoint that knows it (written every 10 s).
    let stuck_ts = read_target(&ws[0].dir().join("..data")).unwrap();
    wait_for("a checkpoint with the stale consumer", || {
        let (state, stuck_ts) = (state.clone(), stuck_ts.clone());
        async move {
            let cp = checkpoint::read(&state).ok()??;
            let v = cp.volumes.iter().find(|v| v.name == "stuck")?;
            (v.ts_dir == stuck_ts && v.consumers.iter().any(|(_, s)| *s) && cp.volumes.len() == 3)
                .then_some(())
        }
    })
    .await;

    // A burst on "busy", during which the agent is killed; it goes on after the kill.
    let writing = AtomicBool::new(true);
    std::thread::scope(|s| {
        s.spawn(|| {
            let mut i = 0;
            while writing.load(Relaxed) || i < 20 {
                ws[1]
                    .write(&payload(&[(KEY, &format!("busy {i}"))]), CallStyle::GoAt)
                    .unwrap();
                i += 1;
            }
        });
        // SAFETY: our child's pid.
        unsafe { libc::kill(first.id() as i32, libc::SIGKILL) };
        first.wait().unwrap();
        writing.store(false, Relaxed);
    });
    let saved = checkpoint::read(&state).unwrap().unwrap();
    // The data dirs journaled since the checkpoint supersede it.
    let journal = checkpoint::read_journal(&state, saved.generation).unwrap();
    let saved_ts = |n: &str| {
        (journal.iter().rev().find(|e| e.name() == n))
            .map(|e| e.ts_dir().to_owned())
            .unwrap_or_else(|| {
                let v = saved.volumes.iter().find(|v| v.name == n).unwrap();
                v.ts_dir.clone()
            })
    };

    let second = agent(&node, port, &state);
    wait_ready(addr).await;
    let m = wait_metrics(addr, "every volume again", |m| {
        m.sum("reloadscope_watched_volumes", &[]) == 3.0
    })
    .await;
    for (n, w) in names.iter().zip(&ws) {
        let vol = [("volume", *n)];
        let now = read_target(&w.dir().join("..data")).unwrap();
        let updated = now != saved_ts(n);
        assert_eq!(
            m.get("reloadscope_volume_updates_total", &vol),
            Some(f64::from(u8::from(updated))),
            "{n}: checkpoint {}, now {now}",
            saved_ts(n)
        );
        if updated {
            let made = std::fs::symlink_metadata(w.dir().join("..data"))
                .unwrap()
                .modified()
                .unwrap();
            let seen = m
                .get("reloadscope_volume_last_update_timestamp_seconds", &vol)
                .unwrap();
            assert!(
                (seen - unix(made)).abs() < 1e-6,
                "{n}: {seen} vs {}",
                unix(made)
            );
        }
    }
    assert!(
        read_target(&ws[1].dir().join("..data")).unwrap() != saved_ts("busy"),
        "the burst went on"
    );
    // The stale consumer is stale still, since the update before the kill.
    let m = wait_metrics(addr, "the naive consumer found again", |m| {
        m.get("reloadscope_consumer_stale_seconds", &stale)
            .is_some()
    })
    .await;
    let swap = saved
        .volumes
        .iter()
        .find(|v| v.name == "stuck")
        .unwrap()
        .swap();
    let stale_for = m.get("reloadscope_consumer_stale_seconds", &stale).unwrap();
    let since = SystemTime::now()
        .duration_since(swap)
        .unwrap()
        .as_secs_f64();
    assert!(
        stale_for > 0.0 && stale_for <= since,
        "{stale_for} s stale, swap {since} s ago"
    );
    // SAFETY: our child's pid.
    unsafe { libc::kill(second.id() as i32, libc::SIGTERM) };
    let out = blocking(move || second.wait_with_output().unwrap()).await;
    assert!(out.status.success(), "{:?}", out.status);
    naive.stop().unwrap();
}

/// An update counted a moment before a SIGKILL (long before the next checkpoint) is
/// neither forgotten nor counted again by the next run: the journal had it before it
/// was counted. What its consumers did is journaled as it is learnt too: the one that
/// never reloaded is a reader, stale still (its watch died with the update, nothing
/// else shows that it reads the volume); the one that reloaded is fresh (without its
/// reload journaled it would be found predating the update, and stale).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs root: run cargo xtask test"]
async fn an_update_just_before_a_sigkill_is_neither_lost_nor_counted_twice() {
    let mut node = LabNode::temp().unwrap();
    let pod = node.add_pod("shop", "web").unwrap();
    let w = node
        .add_volume(&pod, VolumeType::ConfigMap, "stuck")
        .unwrap();
    w.write(&payload(&[(KEY, "0")]), CallStyle::GoAt).unwrap();
    let bin = &reloadscope_lab::lab_bin().unwrap();
    let spec = ContainerSpec::new("naive", w.dir(), KEY, Strategy::NaiveModify);
    let naive = LabContainer::start(bin, &node, &pod, &spec).unwrap();
    let spec = ContainerSpec::new("watcher", w.dir(), KEY, Strategy::DataDirWatcher);
    let watcher = LabContainer::start(bin, &node, &pod, &spec).unwrap();
    let state_dir = tempfile::tempdir().unwrap();
    let state = state_dir.path().join("state.json");
    let port = free_port();
    let addr = std::net::SocketAddr::from(([127, 0, 0, 1], port));
    let mut first = agent(&node, port, &state);
    wait_ready(addr).await;
    let naive_reads = [("container", "naive"), ("reads", "yes")];
    let watcher_reads = [("container", "watcher"), ("reads", "yes")];
    wait_metrics(addr, "both consumers, reading", |m| {
        m.get("reloadscope_consumer_info", &naive_reads).is_some()
            && m.get("reloadscope_consumer_info", &watcher_reads).is_some()
    })
    .await;
    w.write(&payload(&[(KEY, "1")]), CallStyle::GoAt).unwrap();
    let (vol, stale) = ([("volume", "stuck")], [("container", "naive")]);
    let fresh = [("container", "watcher")];
    let m = wait_metrics(addr, "the update counted, one stale, one reloaded", |m| {
        m.get("reloadscope_volume_updates_total", &vol) == Some(1.0)
            && m.get("reloadscope_consumer_stale_seconds", &stale)
                .is_some_and(|s| s > 0.0)
            && m.get("reloadscope_consumer_last_reload_timestamp_seconds", &fresh)
                .is_some()
    })
    .await;
    assert_eq!(
        m.get("reloadscope_consumer_stale_seconds", &fresh),
        Some(0.0)
    );
    let stamped = m
        .get("reloadscope_volume_last_update_timestamp_seconds", &vol)
        .unwrap();
    // SAFETY: our child's pid.
    unsafe { libc::kill(first.id() as i32, libc::SIGKILL) };
    first.wait().unwrap();

    let second = agent(&node, port, &state);
    wait_ready(addr).await;
    let m = wait_metrics(addr, "both consumers found again", |m| {
        m.matching("reloadscope_consumer_info", &stale).count() == 1
            && m.matching("reloadscope_consumer_info", &fresh).count() == 1
    })
    .await;
    assert_eq!(
        m.get("reloadscope_volume_updates_total", &vol),
        Some(0.0),
        "counted again"
    );
    assert_eq!(
        m.get("reloadscope_volume_last_update_timestamp_seconds", &vol),
        Some(stamped),
        "the update's time, as the first run stamped it"
    );
    assert!(
        m.get("reloadscope_consumer_info", &naive_reads).is_some(),
        "the naive consumer's reads, journaled"
    );
    let stale_for = m.get("reloadscope_consumer_stale_seconds", &stale).unwrap();
    let since = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs_f64()
        - stamped;
    assert!(
        stale_for > 0.0 && stale_for <= since,
        "{stale_for} s stale, swap {since} s ago"
    );
    assert!(m.get("reloadscope_consumer_info", &watcher_reads).is_some());
    assert_eq!(
        m.get("reloadscope_consumer_stale_seconds", &fresh),
        Some(0.0),
        "its reload, journaled"
    );
    // SAFETY: our child's pid.
    unsafe { libc::kill(second.id() as i32, libc::SIGTERM) };
    let out = blocking(move || second.wait_with_output().unwrap()).await;
    assert!(out.status.success(), "{:?}", out.status);
    naive.stop().unwrap();
    watcher.stop().unwrap();
}
