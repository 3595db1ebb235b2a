//! Swap detection end to end: the real agent (real probe, real inotify) on a lab node
//! whose writer performs the kubelet's AtomicWriter steps. Needs root (eBPF, tmpfs).

use std::{
    collections::BTreeMap,
    ffi::CString,
    os::unix::{ffi::OsStrExt, fs::symlink},
    time::{Duration, SystemTime, UNIX_EPOCH},
};

use crate::support::*;
use reloadscope::{node::volumes::VolumeType, probe::RenameHook};
use reloadscope_lab::{AtomicWriter, CallStyle, LabNode, LabPod, WriteOutcome, payload};

const UPDATES: usize = 3;

fn swapped_at(o: WriteOutcome) -> SystemTime {
    match o {
        WriteOutcome::Written {
            swapped_at,
            initial: false,
            ..
        } => swapped_at,
        other => panic!("expected an update, got {other:?}"),
    }
}

/// One volume of each type on `pod`, populated.
fn volumes(node: &mut LabNode, pod: &LabPod) -> Vec<(VolumeType, String, AtomicWriter)> {
    VolumeType::ALL
        .into_iter()
        .map(|ty| {
            let name = format!("vol-{}", ty.label().replace('_', "-"));
            let w = node.add_volume(pod, ty, &name).unwrap();
            let first = w.write(&payload(&[("k", "v0")]), CallStyle::GoAt).unwrap();
            assert!(matches!(first, WriteOutcome::Written { initial: true, .. }));
            (ty, name, w)
        })
        .collect()
}

async fn each_update_counts_once_per_source(style: CallStyle) {
    let mut node = LabNode::temp().unwrap();
    // One pod exists before the agent starts, one is created while it runs.
    let before = node.add_pod("ns-a", "before").unwrap();
    let mut vols = volumes(&mut node, &before);
    let agent = start(&node, true).await;
    let after = node.add_pod("ns-b", "after").unwrap();
    let new = volumes(&mut node, &after);
    // On a node, updates come minutes after a pod starts; here they follow at once, so
    // first let the agent take its watches (on the tmpfs itself, once mounted).
    for (_, _, w) in &new {
        let dir = w.dir().to_owned();
        wait_for("the agent to watch the new volume", || {
            let dir = dir.clone();
            async move { kernel_watches(&dir).then_some(()) }
        })
        .await;
    }
    vols.extend(new);
    let total = vols.len() * UPDATES;

    let mut last = BTreeMap::new();
    for i in 1..=UPDATES {
        for (ty, name, w) in &vols {
            // The kubelet's periodic no-op sync between updates reads every file.
            assert!(w.reread().unwrap() > 0);
            let unchanged = payload(&[("k", &format!("v{}", i - 1))]);
            assert_eq!(w.write(&unchanged, style).unwrap(), WriteOutcome::Unchanged);
            let at = swapped_at(
                w.write(&payload(&[("k", &format!("v{i}"))]), style)
                    .unwrap(),
            );
            last.insert((w.dir().to_owned(), *ty, name.clone()), at);
        }
    }
    let m = wait_metrics(agent.addr, "both sources to report every update", |m| {
        detections(m, "ebpf") >= total as f64 && detections(m, "inotify") >= total as f64
    })
    .await;
    assert_eq!(
        detections(&m, "ebpf"),
        total as f64,
        "eBPF reported an update twice"
    );
    assert_eq!(
        detections(&m, "inotify"),
        total as f64,
        "inotify reported an update twice"
    );
    assert_eq!(m.sum("reloadscope_update_detection_gaps_total", &[]), 0.0);
    for pod in [&before, &after] {
        for ty in VolumeType::ALL {
            let labels = [
                ("namespace", pod.namespace.as_str()),
                ("pod", pod.name.as_str()),
                ("volume_type", ty.label()),
            ];
            assert_eq!(
                m.get("reloadscope_volume_updates_total", &labels),
                Some(UPDATES as f64),
                "{pod:?} {ty:?}"
            );
        }
    }
    // The timestamp is the probe's: at the swap, a little before the writer saw it return.
    for ((dir, ty, name), at) in last {
        let pod = if dir.starts_with(node.pod_dir(&before)) {
            &before
        } else {
            &after
        };
        let labels = [
            ("pod", pod.name.as_str()),
            ("volume", name.as_str()),
            ("volume_type", ty.label()),
        ];
        let got = m
            .get("reloadscope_volume_last_update_timestamp_seconds", &labels)
            .unwrap();
        let want = at.duration_since(UNIX_EPOCH).unwrap().as_secs_f64();
        assert!(
            (0.0..0.005).contains(&(want - got)),
            "{name}: swap stamped {got}, writer returned at {want}"
        );
    }
    agent.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs root: run cargo xtask test"]
async fn go_style_at_calls_count_once_per_source() {
    each_update_counts_once_per_source(CallStyle::GoAt).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs root: run cargo xtask test"]
async fn legacy_rename_and_symlink_count_once_per_source() {
    each_update_counts_once_per_source(CallStyle::Legacy).await;
}

fn c(p: &std::path::Path) -> CString {
    CString::new(p.as_os_str().as_bytes()).unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs root: run cargo xtask test"]
async fn failed_rename_over_data_counts_zero() {
    let mut node = LabNode::temp().unwrap();
    let pod = node.add_pod("ns", "p").unwrap();
    let w = node.add_volume(&pod, VolumeType::Secret, "tls").unwrap();
    w.write(&payload(&[("tls.crt", "a")]), CallStyle::GoAt)
        .unwrap();
    let agent = start(&node, true).await;
    let failed_before = agent
        .shared
        .probe
        .lock()
        .unwrap()
        .as_ref()
        .unwrap()
        .stats()
        .failed;

    // `mv -T` style: RENAME_NOREPLACE onto the existing ..data fails with EEXIST.
    let staged = w.dir().join("..2026_01_01_00_00_00.42");
    std::fs::create_dir(&staged).unwrap();
    let tmp = w.dir().join("..data_tmp");
    symlink("..2026_01_01_00_00_00.42", &tmp).unwrap();
    // SAFETY: valid C strings.
    let rc = unsafe {
        libc::syscall(
            libc::SYS_renameat2,
            libc::AT_FDCWD,
            c(&tmp).as_ptr(),
            libc::AT_FDCWD,
            c(&w.dir().join("..data")).as_ptr(),
            libc::RENAME_NOREPLACE,
        )
    };
    assert_eq!(rc, -1);
    std::fs::remove_file(&tmp).unwrap();
    std::fs::remove_dir(&staged).unwrap();

    // Then one real update: once it is in, the failed call (earlier in the ring) is too.
    swapped_at(
        w.write(&payload(&[("tls.crt", "b")]), CallStyle::GoAt)
            .unwrap(),
    );
    let m = wait_metrics(agent.addr, "the real update", |m| {
        detections(m, "ebpf") >= 1.0 && detections(m, "inotify") >= 1.0
    })
    .await;
    assert_eq!(
        m.get("reloadscope_volume_updates_total", &[("volume", "tls")]),
        Some(1.0)
    );
    assert_eq!(
        (detections(&m, "ebpf"), detections(&m, "inotify")),
        (1.0, 1.0)
    );
    let (failed, renames) = {
        let probe = agent.shared.probe.lock().unwrap();
        let probe = probe.as_ref().unwrap();
        (probe.stats().failed, probe.rename_hook())
    };
    if renames == Some(RenameHook::VfsRename) {
        // The call failed in the syscall's own checks, before `vfs_rename`.
        assert_eq!(failed, failed_before, "vfs_rename saw a call it never got");
    } else {
        assert!(failed > failed_before, "the kernel counted the failed call");
    }
    agent.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs root: run cargo xtask test"]
async fn inotify_alone_counts_every_update_without_the_probe() {
    let mut node = LabNode::temp().unwrap();
    let pod = node.add_pod("ns", "p").unwrap();
    let vols = volumes(&mut node, &pod);
    let agent = start(&node, false).await;
    for (_, _, w) in &vols {
        swapped_at(w.write(&payload(&[("k", "v1")]), CallStyle::GoAt).unwrap());
    }
    let m = wait_metrics(agent.addr, "inotify to report", |m| {
        detections(m, "inotify") >= vols.len() as f64
    })
    .await;
    assert_eq!(m.get("reloadscope_ebpf_loaded", &[]), Some(0.0));
    assert_eq!(detections(&m, "ebpf"), 0.0);
    assert_eq!(
        m.sum("reloadscope_volume_updates_total", &[]),
        vols.len() as f64
    );
    assert_eq!(m.sum("reloadscope_update_detection_gaps_total", &[]), 0.0);
    agent.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs root: run cargo xtask test"]
async fn pod_removed_mid_update_leaves_no_series_and_no_watch() {
    let mut node = LabNode::temp().unwrap();
    let agent = start(&node, true).await;
    let idle = kernel_inotify_watches();
    let pod = node.add_pod("ns", "doomed").unwrap();
    let vols = volumes(&mut node, &pod);
    let m = wait_metrics(agent.addr, "the pod's volumes", |m| {
        m.sum("reloadscope_watched_volumes", &[]) == 4.0
    })
    .await;
    assert!(
        m.get(
            "reloadscope_volume_updates_total",
            &[("pod", "doomed"), ("volume_type", "secret")]
        )
        .is_some()
    );
    assert!(kernel_inotify_watches() > idle);

    // Half an update: new dir and ..data_tmp written, the swap never comes.
    let (_, _, w) = &vols[0];
    std::fs::create_dir(w.dir().join("..2026_01_01_00_00_00.7")).unwrap();
    symlink("..2026_01_01_00_00_00.7", w.dir().join("..data_tmp")).unwrap();
    node.remove_pod(&pod).unwrap();

    let m = wait_metrics(agent.addr, "the pod to be forgotten", |m| {
        m.sum("reloadscope_watched_volumes", &[]) == 0.0
    })
    .await;
    assert_eq!(
        m.matching("reloadscope_volume_updates_total", &[("pod", "doomed")])
            .count(),
        0
    );
    assert_eq!(
        m.matching("reloadscope_volume_last_update_timestamp_seconds", &[])
            .count(),
        0
    );
    wait_for("the kernel to drop the pod's watches", || async {
        (kernel_inotify_watches() == idle).then_some(())
    })
    .await;
    agent.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs root: run cargo xtask test"]
async fn a_thousand_pods_come_and_go_without_leaking_watches() {
    let mut node = LabNode::temp().unwrap();
    let agent = start(&node, true).await;
    let idle = kernel_inotify_watches();
    let mut pods = Vec::new();
    for i in 0..1000 {
        let pod = node.add_pod("churn", &format!("p{i}")).unwrap();
        let w = node.add_volume(&pod, VolumeType::ConfigMap, "cfg").unwrap();
        w.write(&payload(&[("k", "v")]), CallStyle::GoAt).unwrap();
        pods.push(pod);
    }
    wait_metrics(agent.addr, "1,000 volumes", |m| {
        m.get(
            "reloadscope_watched_volumes",
            &[("volume_type", "configmap")],
        ) == Some(1000.0)
    })
    .await;
    for pod in &pods {
        node.remove_pod(pod).unwrap();
    }
    let m = wait_metrics(agent.addr, "every pod to be forgotten", |m| {
        m.sum("reloadscope_watched_volumes", &[]) == 0.0
    })
    .await;
    assert_eq!(m.sum("reloadscope_volume_updates_total", &[]), 0.0);
    wait_for("the kernel to drop every pod's watches", || async {
        (kernel_inotify_watches() == idle).then_some(())
    })
    .await;
    assert_eq!(m.get("reloadscope_inotify_watches", &[]), Some(idle as f64));
    agent.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs root: run cargo xtask test"]
async fn exported_metrics_pass_promtool() {
    let mut node = LabNode::temp().unwrap();
    let pod = node.add_pod("ns", "p").unwrap();
    let vols = volumes(&mut node, &pod);
    let agent = start(&node, true).await;
    swapped_at(
        vols[0]
            .2
            .write(&payload(&[("k", "v1")]), CallStyle::GoAt)
            .unwrap(),
    );
    wait_metrics(agent.addr, "the update", |m| {
        detections(m, "inotify") >= 1.0
    })
    .await;
    let addr = agent.addr;
    let (_, body) = blocking(move || reloadscope_lab::scrape::get(addr, "/metrics"))
        .await
        .unwrap();
    let mut child = std::process::Command::new("promtool")
        .args(["check", "metrics"])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("promtool (Debian's prometheus package, installed by cargo xtask test)");
    use std::io::Write;
    child
        .stdin
        .take()
        .unwrap()
        .write_all(body.as_bytes())
        .unwrap();
    let out = child.wait_with_output().unwrap();
    let said = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        out.status.success() && said.trim().is_empty(),
        "promtool check metrics:\n{said}"
    );
    assert!(
        body.contains("process_resident_memory_bytes"),
        "process metrics are exported"
    );
    agent.stop().await;
}

#[test]
#[ignore = "needs root: run cargo xtask test"]
fn sigterm_stops_the_agent_within_a_second() {
    let node = LabNode::temp().unwrap();
    let mut child = agent_command(&node, "127.0.0.1:0", &[]).spawn().unwrap();
    // The agent logs "initial scan done" once ready.
    let mut err = std::io::BufReader::new(child.stderr.take().unwrap());
    let mut line = String::new();
    loop {
        line.clear();
        assert!(
            std::io::BufRead::read_line(&mut err, &mut line).unwrap() > 0,
            "agent exited early"
        );
        let v: serde_json::Value = serde_json::from_str(&line).expect("JSON log lines");
        if v["message"] == "initial scan done" {
            break;
        }
    }
    // SAFETY: our child's pid.
    unsafe { libc::kill(child.id() as i32, libc::SIGTERM) };
    let start = std::time::Instant::now();
    let status = loop {
        if let Some(s) = child.try_wait().unwrap() {
            break s;
        }
        assert!(
            start.elapsed() < Duration::from_secs(1),
            "still running 1 s after SIGTERM"
        );
        std::thread::sleep(Duration::from_millis(5));
    };
    assert!(status.success(), "{status:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs root: run cargo xtask test"]
async fn without_cap_bpf_the_agent_says_so_once_and_counts_with_inotify() {
    let mut node = LabNode::temp().unwrap();
    let pod = node.add_pod("ns", "p").unwrap();
    let vols = volumes(&mut node, &pod);
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    // Root without the capabilities eBPF needs (CAP_SYS_ADMIN would stand in for them).
    let listen = format!("127.0.0.1:{port}");
    let drop_caps = [
        "setpriv",
        "--bounding-set",
        "-bpf,-perfmon,-sys_admin",
        "--",
    ];
    let child = agent_command(&node, &listen, &drop_caps)
        .spawn()
        .expect("setpriv (util-linux)");
    let addr = std::net::SocketAddr::from(([127, 0, 0, 1], port));
    wait_for("/readyz", || async move {
        let (code, _) = blocking(move || reloadscope_lab::scrape::get(addr, "/readyz"))
            .await
            .ok()?;
        (code == 200).then_some(())
    })
    .await;
    for (_, _, w) in &vols {
        swapped_at(w.write(&payload(&[("k", "v1")]), CallStyle::GoAt).unwrap());
    }
    let m = wait_metrics(addr, "inotify to report", |m| {
        detections(m, "inotify") >= vols.len() as f64
    })
    .await;
    assert_eq!(m.get("reloadscope_ebpf_loaded", &[]), Some(0.0));
    assert_eq!(
        m.sum("reloadscope_volume_updates_total", &[]),
        vols.len() as f64
    );
    // SAFETY: our child's pid.
    unsafe { libc::kill(child.id() as i32, libc::SIGTERM) };
    let out = blocking(move || child.wait_with_output().unwrap()).await;
    let log = String::from_utf8_lossy(&out.stderr);
    // One line for each missing capability: the probe's, and fanotify's (CAP_SYS_ADMIN).
    let said: Vec<&str> = log
        .lines()
        .filter(|l| l.contains("\"level\":\"WARN\""))
        .collect();
    assert_eq!(said.len(), 2, "two warnings, got:\n{log}");
    assert!(
        said.iter()
            .any(|l| l.contains("probe unavailable") && l.contains("CAP_BPF")),
        "{log}"
    );
    assert!(
        said.iter()
            .any(|l| l.contains("fanotify unavailable") && l.contains("CAP_SYS_ADMIN")),
        "{log}"
    );
}
