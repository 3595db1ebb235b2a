//! Without CAP_SYS_ADMIN (no fanotify) the agent measures reloads approximately, with
//! inotify `IN_OPEN` on the data dirs: per volume, not per process. The real binary,
//! run by `setpriv` with that capability dropped, on lab containers. Needs root.

use std::time::Duration;

use crate::support::*;
use reloadscope::node::volumes::VolumeType;
use reloadscope_lab::{
    CallStyle, ContainerSpec, LabContainer, LabNode, Strategy, WriteOutcome, payload,
};

const KEY: &str = "config.yaml";

fn unix(t: std::time::SystemTime) -> f64 {
    t.duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs_f64()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs root: run cargo xtask test"]
async fn without_cap_sys_admin_reloads_are_measured_per_volume() {
    let mut node = LabNode::temp().unwrap();
    // One consumer per pod (and volume): per volume is then per container.
    let cases = [
        ("watcher", VolumeType::Secret, Strategy::DataDirWatcher),
        ("poller", VolumeType::ConfigMap, Strategy::TimerPoller),
        ("naive", VolumeType::ConfigMap, Strategy::NaiveModify),
    ];
    let mut vols = Vec::new();
    for (name, ty, strategy) in cases {
        let pod = node.add_pod("shop", &format!("web-{name}")).unwrap();
        let w = node.add_volume(&pod, ty, "app-config").unwrap();
        w.write(&payload(&[(KEY, "revision: 0")]), CallStyle::GoAt)
            .unwrap();
        let spec = ContainerSpec {
            period: Duration::from_millis(300),
            ..ContainerSpec::new(name, w.dir(), KEY, strategy)
        };
        let bin = &reloadscope_lab::lab_bin().unwrap();
        let c = LabContainer::start(bin, &node, &pod, &spec).unwrap();
        vols.push((w, c));
    }
    let port = free_port();
    let drop_admin = ["setpriv", "--bounding-set", "-sys_admin", "--"];
    let child = agent_command(&node, &format!("127.0.0.1:{port}"), &drop_admin)
        .spawn()
        .expect("setpriv (util-linux)");
    let addr = std::net::SocketAddr::from(([127, 0, 0, 1], port));
    // A reload made before the new data dir is watched is seen only through atime,
    // which a read in the same clock tick as the kubelet's write does not move: the
    // swaps wait for the agent's watch (reloadscope_lab::marks).
    node.swap_gate().wait_for_marks_of(child.id());
    wait_ready(addr).await;
    let approximate = [("measurement", "approximate")];
    let m = wait_metrics(addr, "three consumers, measured approximately", |m| {
        m.matching("reloadscope_consumer_info", &approximate)
            .count()
            == 3
    })
    .await;
    assert_eq!(m.get("reloadscope_fanotify_loaded", &[]), Some(0.0));

    let before: Vec<usize> = vols.iter().map(|(_, c)| c.opens().unwrap().len()).collect();
    for (w, _) in &vols {
        let out = w.write(&payload(&[(KEY, "revision: 1")]), CallStyle::GoAt);
        assert!(matches!(out.unwrap(), WriteOutcome::Written { .. }));
    }
    let m = wait_metrics(addr, "the watcher's and the poller's reloads", |m| {
        ["watcher", "poller"].iter().all(|c| {
            m.get(
                "reloadscope_consumer_last_reload_timestamp_seconds",
                &[("container", c)],
            )
            .is_some()
        })
    })
    .await;
    for (i, (_, c)) in vols.iter().enumerate().take(2) {
        let opened = *c.opens().unwrap().get(before[i]).expect("it reopened");
        let seen = m
            .get(
                "reloadscope_consumer_last_reload_timestamp_seconds",
                &[("container", &c.name)],
            )
            .unwrap();
        assert!(
            (seen - unix(opened)).abs() < 0.005,
            "{}: agent saw the reload at {seen}, the consumer opened at {}",
            c.name,
            unix(opened)
        );
    }
    // The writer's own opens of the new files come before the swap: not a reload.
    let naive = [("container", "naive")];
    assert!(m.get("reloadscope_consumer_stale_seconds", &naive).unwrap() > 0.0);
    assert!(
        m.get("reloadscope_consumer_last_reload_timestamp_seconds", &naive)
            .is_none()
    );

    // SAFETY: our child's pid.
    unsafe { libc::kill(child.id() as i32, libc::SIGTERM) };
    let out = blocking(move || child.wait_with_output().unwrap()).await;
    assert!(out.status.success(), "{:?}", out.status);
    let log = String::from_utf8_lossy(&out.stderr);
    assert!(log.contains("measured approximately with inotify"), "{log}");
    for (_, c) in vols {
        c.stop().unwrap();
    }
}
