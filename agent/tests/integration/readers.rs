//! Who reads a volume: only a container seen reading it can be stale for it. A pod
//! starts while the agent runs: its projected volume appears, then two containers, one
//! that reads its file once at start and one (`sleep`) that mounts the volume and never
//! reads it, as most containers never read their `kube-api-access-*` token. The agent
//! sees the first read, because a volume that appears keeps its opens reported for the
//! first-read window; once the window after the second container's start is over it
//! says that one does not read, and the volume's mark goes. After an update the reader
//! is stale, the other not. Needs root.

use std::{
    ffi::OsString,
    path::PathBuf,
    time::{Duration, Instant},
};

use crate::support::*;
use reloadscope::node::volumes::VolumeType;
use reloadscope_lab::{CallStyle, ContainerSpec, LabContainer, LabNode, Strategy, payload, scrape};

/// Short, so the test sees it end: the start-up read comes well within it.
const WINDOW: Duration = Duration::from_secs(3);

/// The `reads` label of `container`'s `reloadscope_consumer_info`.
fn reads(m: &scrape::Samples, container: &str) -> Option<String> {
    let with = [("container", container)];
    let mut info = m.matching("reloadscope_consumer_info", &with);
    info.next().map(|s| s.labels["reads"].clone())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs root: run cargo xtask test"]
async fn a_container_that_never_reads_its_volume_is_not_stale() {
    let mut node = LabNode::temp().unwrap();
    let pod = node.add_pod("shop", "web").unwrap();
    let agent = start(&node, true).await;
    let reloads = &agent.shared.reloads;
    reloads.lock().unwrap().set_first_read_window(WINDOW);

    // The pod's volume appears while the agent runs (its pod is starting).
    let ty = VolumeType::Projected;
    let w = add_marked_volume(&mut node, &pod, ty, "kube-api-access-4xk2p", "token 0").await;
    let data = w.dir().join("..data");
    let once = lab_container(&node, &pod, &w, "once", Strategy::ReadOnce, false);
    let argv = ["sleep", "infinity"].map(OsString::from);
    let spec = ContainerSpec::program("idle", w.dir(), KEY, &argv);
    let bin = &reloadscope_lab::lab_bin().unwrap();
    let idle = LabContainer::start(bin, &node, &pod, &spec).unwrap();

    let m = wait_metrics(agent.addr, "the read at start seen", |m| {
        reads(m, "once").as_deref() == Some("yes") && reads(m, "idle").is_some()
    })
    .await;
    assert_eq!(
        m.get(
            "reloadscope_consumer_stale_seconds",
            &[("container", "once")]
        ),
        Some(0.0)
    );
    // Its window after its start over, without a read: it does not read.
    let m = wait_metrics(agent.addr, "the window over", |m| {
        reads(m, "idle").as_deref() == Some("no")
    })
    .await;
    assert_eq!(
        m.get(
            "reloadscope_consumer_stale_seconds",
            &[("container", "idle")]
        ),
        None
    );
    // Nobody's first read awaited, nobody stale: the mark goes (`auto`, nobody
    // watches the volume).
    wait_for("the settled volume's mark removed", || {
        std::future::ready((fanotify_mark(&data) == Default::default()).then_some(()))
    })
    .await;

    w.write(&payload(&[(KEY, "token 1")]), CallStyle::GoAt)
        .unwrap();
    let m = wait_metrics(agent.addr, "the reader stale", |m| {
        m.get(
            "reloadscope_consumer_stale_seconds",
            &[("container", "once")],
        )
        .is_some_and(|s| s > 0.0)
    })
    .await;
    assert_eq!(
        m.get(
            "reloadscope_consumer_stale_seconds",
            &[("container", "idle")]
        ),
        None,
        "a container that never read the volume is not stale"
    );
    assert_eq!(reads(&m, "idle").as_deref(), Some("no"));
    assert_eq!(m.sum("reloadscope_volume_updates_total", &[]), 1.0);

    agent.stop().await;
    once.stop().unwrap();
    idle.stop().unwrap();
}

/// A cgroup dir made by the test, removed when dropped.
struct Cgroup(PathBuf);

impl Drop for Cgroup {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir(&self.0);
    }
}

/// A container starting in a running pod: the runtime makes its cgroup before it runs
/// its program, and the agent marks the pod's settled volume again at once (how soon
/// is printed), until a consumer scan finds the container or the window ends. Here no
/// process ever joins the cgroup: the window ends, and the mark goes.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs root: run cargo xtask test"]
async fn a_container_starting_marks_its_pods_volumes_again() {
    let (node, pod, w) = shop_volume(VolumeType::Secret, "tls");
    let running = lab_container(&node, &pod, &w, "running", Strategy::ReadOnce, false);
    let agent = start(&node, true).await;
    agent
        .shared
        .reloads
        .lock()
        .unwrap()
        .set_first_read_window(WINDOW);
    let data = w.dir().join("..data");
    let unmarked =
        || std::future::ready((fanotify_mark(&data) == Default::default()).then_some(()));
    wait_for("the settled volume unmarked", unmarked).await;

    // As a runtime creates a container: its cgroup, in the pod's.
    let id = "ab".repeat(32);
    let scope = running
        .cgroup_dir
        .with_file_name(format!("cri-containerd-{id}.scope"));
    let (made, watched) = (scope.clone(), data.clone());
    let (cgroup, took) = blocking(move || {
        let t = Instant::now();
        std::fs::create_dir(&made).unwrap();
        let cgroup = Cgroup(made);
        // Polled without a pause: the time it takes is the measure.
        while !fanotify_marks(&watched) {
            assert!(t.elapsed() < DEADLINE, "the volume was not marked again");
        }
        (cgroup, t.elapsed())
    })
    .await;
    eprintln!("the pod's volume was marked {took:?} after the container's cgroup appeared");
    wait_for("the window over, the mark gone", unmarked).await;

    drop(cgroup);
    agent.stop().await;
    running.stop().unwrap();
}
