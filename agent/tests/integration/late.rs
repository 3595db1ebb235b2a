//! A data dir marked after its swap (a late mark): the race that the agent loses when
//! it cannot run between the kubelet's creation of a data dir and its swap, decided
//! here by the test: the agent (the real binary) is stopped with SIGSTOP before the
//! update and continued after the consumers have read the new data. The update is
//! still recorded, with the probe's swap time, and the late mark is counted. With
//! `--settled-marks ignore` the consumers' mount marks saw every read: all are
//! credited; so with `auto`, whose watchers make the volume a watched one. With
//! `remove` a consumer that opens the data again is credited at that open, and one
//! that read it only while no mark was there is not (README, limits), unless it still
//! holds the file open: the consumer scan finds it in its fds.
//! Needs root.

use std::{
    ffi::OsString,
    net::SocketAddr,
    process::{Child, Stdio},
    time::{SystemTime, UNIX_EPOCH},
};

use crate::support::*;
use nix::{sys::signal, unistd::Pid};
use reloadscope::node::volumes::VolumeType;
use reloadscope_lab::{
    AtomicWriter, CallStyle, ContainerSpec, LabContainer, LabNode, Strategy, marks::fdinfos,
    payload,
};

fn secs(t: SystemTime) -> f64 {
    t.duration_since(UNIX_EPOCH).unwrap().as_secs_f64()
}

fn agent(node: &LabNode, port: u16, mode: &str) -> Child {
    let mut cmd = agent_command(node, &format!("127.0.0.1:{port}"), &[]);
    cmd.args(["--settled-marks", mode]).stderr(Stdio::null());
    cmd.spawn().expect("the agent")
}

/// Whether every thread of `pid` is stopped (state `T` in its stat).
fn stopped(pid: u32) -> bool {
    let tasks = std::fs::read_dir(format!("/proc/{pid}/task")).unwrap();
    tasks.flatten().all(|t| {
        let stat = std::fs::read_to_string(t.path().join("stat")).unwrap_or_default();
        // The state follows the command name's closing parenthesis.
        stat.rsplit_once(") ")
            .is_some_and(|(_, rest)| rest.starts_with('T'))
    })
}

/// A container whose shell holds the file open (fd 3), opened again at each `..data`
/// swap that `inotifywait` reports, and says `held` on its output each time.
fn holder(node: &LabNode, pod: &reloadscope_lab::LabPod, w: &AtomicWriter) -> LabContainer {
    let script = "while :; do inotifywait -qq -e moved_to {dir}; exec 3< {file}; echo held; done";
    let argv: Vec<OsString> = ["sh", "-c", script].map(OsString::from).into();
    let spec = ContainerSpec::program("holder", w.dir(), KEY, &argv);
    let bin = &reloadscope_lab::lab_bin().unwrap();
    LabContainer::start(bin, node, pod, &spec).unwrap()
}

/// Whether a child of `pid` has an inotify watch (the holder's `inotifywait` is set up).
fn child_watches(pid: u32) -> bool {
    let children = std::fs::read_to_string(format!("/proc/{pid}/task/{pid}/children"));
    (children.unwrap_or_default().split_whitespace())
        .filter_map(|c| c.parse().ok())
        .any(|c| (fdinfos(c, "anon_inode:inotify").iter()).any(|i| i.contains("inotify wd:")))
}

/// Opens logged at or after `t`.
fn opens_since(c: &LabContainer, t: SystemTime) -> Vec<SystemTime> {
    c.opens().unwrap().into_iter().filter(|o| *o >= t).collect()
}

async fn a_late_mark_is_counted(ty: VolumeType, mode: &str) {
    let (node, pod, w) = shop_volume(ty, "app-config");
    let watcher = lab_container(&node, &pod, &w, "watcher", Strategy::DataDirWatcher, false);
    let poller = lab_container(&node, &pod, &w, "poller", Strategy::TimerPoller, false);
    let holder = holder(&node, &pod, &w);
    wait_for("the holder's watch", || {
        std::future::ready(child_watches(holder.pid).then_some(()))
    })
    .await;
    let port = free_port();
    let addr = SocketAddr::from(([127, 0, 0, 1], port));
    let mut child = agent(&node, port, mode);
    let pid = Pid::from_raw(child.id() as i32);
    wait_ready(addr).await;
    wait_metrics(addr, "the three consumers", |m| {
        m.matching("reloadscope_consumer_info", &[]).count() == 3
    })
    .await;
    // Settled: the current data dir's opens are ignored, or it carries no mark.
    let data = w.dir().join("..data");
    wait_for("the settled data dir", || {
        let m = reloadscope_lab::marks::inode_mark(child.id(), &data).unwrap_or_default();
        let settled = match mode {
            // `auto`: the watchers make it a watched volume.
            "ignore" | "auto" => m.ignored_mask & libc::FAN_OPEN != 0,
            _ => m == Default::default(),
        };
        std::future::ready(settled.then_some(()))
    })
    .await;

    signal::kill(pid, signal::Signal::SIGSTOP).unwrap();
    // kill(2) returns before every thread has stopped.
    wait_for("every thread of the agent stopped", || {
        std::future::ready(stopped(child.id()).then_some(()))
    })
    .await;
    // The watcher reopens within microseconds of the rename, maybe before the writer
    // reads its clock after it.
    let before = SystemTime::now();
    let swapped_at = match w
        .write(&payload(&[(KEY, "revision: 1")]), CallStyle::GoAt)
        .unwrap()
    {
        reloadscope_lab::WriteOutcome::Written { swapped_at, .. } => swapped_at,
        other => panic!("{other:?}"),
    };
    // All read the new data while the agent cannot mark it; the holder keeps it open.
    wait_for("the consumers' reads of the new data", || {
        let read = |c: &LabContainer| opens_since(c, before).first().copied();
        let held = holder.output().unwrap().contains("held");
        std::future::ready(read(&watcher).zip(read(&poller)).filter(|_| held))
    })
    .await;
    let new_data = std::fs::read_link(w.dir().join("..data")).unwrap();
    let fd3 = std::fs::read_link(format!("/proc/{}/fd/3", holder.pid)).unwrap();
    assert!(
        fd3.starts_with(holder.mount_dir().join(&new_data)),
        "{fd3:?}"
    );
    let continued = SystemTime::now();
    signal::kill(pid, signal::Signal::SIGCONT).unwrap();

    let polled = [("container", "poller")];
    let m = wait_metrics(addr, "the poller's next open credited", |m| {
        m.get(
            "reloadscope_consumer_last_reload_timestamp_seconds",
            &polled,
        )
        .is_some_and(|t| t >= secs(swapped_at))
    })
    .await;
    assert_eq!(m.get("reloadscope_late_marks_total", &[]), Some(1.0));
    assert_eq!(m.sum("reloadscope_volume_updates_total", &[]), 1.0);
    assert_swap_stamped(&m, "app-config", swapped_at);
    let watched = [("container", "watcher")];
    let last = |m: &reloadscope_lab::scrape::Samples, who| {
        m.get(
            "reloadscope_consumer_last_reload_timestamp_seconds",
            &[("container", who)],
        )
    };
    if mode != "remove" {
        // The mount marks saw both reads; fanotify events carry no time, so the agent
        // stamps them when it reads them, after it went on.
        let m = wait_metrics(addr, "the watcher's read credited", |m| {
            last(m, "watcher").is_some_and(|t| t >= secs(swapped_at))
        })
        .await;
        for who in ["watcher", "poller"] {
            let t = last(&m, who).unwrap();
            assert!(t >= secs(continued), "{who} credited at {t}");
        }
        assert_eq!(
            m.get("reloadscope_consumer_stale_seconds", &watched),
            Some(0.0)
        );
    } else {
        // Credited at an open after the mark: one the poller logged after the agent
        // went on, not its first read of the new data.
        let seen = last(&m, "poller").unwrap();
        let after: Vec<f64> = (opens_since(&poller, continued).iter())
            .map(|t| secs(*t))
            .collect();
        assert!(
            after.iter().any(|t| (seen - t).abs() < 0.005),
            "poller credited at {seen}, its opens since the agent went on: {after:?}"
        );
        // The watcher read the new data once, before the mark: not seen, still stale.
        assert!(last(&m, "watcher").is_none_or(|t| t < secs(swapped_at)));
        assert!(
            m.get("reloadscope_consumer_stale_seconds", &watched)
                .unwrap()
                > 0.0
        );
    }

    // The holder's read, which only its held file shows in `remove`: credited once the
    // agent went on.
    let held = [("container", "holder")];
    let m = wait_metrics(addr, "the holder's read credited", |m| {
        m.get("reloadscope_consumer_stale_seconds", &held) == Some(0.0)
    })
    .await;
    assert!(last(&m, "holder").unwrap() >= secs(continued));

    let _ = child.kill();
    let _ = child.wait();
    watcher.stop().unwrap();
    poller.stop().unwrap();
    holder.stop().unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs root: run cargo xtask test"]
async fn configmap_late_mark_with_ignored_settled_marks() {
    a_late_mark_is_counted(VolumeType::ConfigMap, "ignore").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs root: run cargo xtask test"]
async fn secret_late_mark_with_ignored_settled_marks() {
    a_late_mark_is_counted(VolumeType::Secret, "ignore").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs root: run cargo xtask test"]
async fn configmap_late_mark_with_removed_settled_marks() {
    a_late_mark_is_counted(VolumeType::ConfigMap, "remove").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs root: run cargo xtask test"]
async fn secret_late_mark_with_removed_settled_marks() {
    a_late_mark_is_counted(VolumeType::Secret, "remove").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs root: run cargo xtask test"]
async fn configmap_late_mark_with_auto_settled_marks() {
    a_late_mark_is_counted(VolumeType::ConfigMap, "auto").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs root: run cargo xtask test"]
async fn secret_late_mark_with_auto_settled_marks() {
    a_late_mark_is_counted(VolumeType::Secret, "auto").await;
}
