//! The agent binary's start and stop: every bad path or flag is a usage error said in
//! one line (exit code 2) before anything starts; a log dir that does not exist yet is
//! said and followed once it appears; SIGTERM stops it within a second while a consumer
//! scan of a big node is under way.

use std::{
    net::SocketAddr,
    path::Path,
    process::{Command, Stdio},
    time::{Duration, Instant},
};

use crate::support::{process::*, *};
use reloadscope::node::volumes::VolumeType;
use reloadscope_lab::{CallStyle, LabNode, payload};

fn bin() -> Command {
    Command::new(env!("CARGO_BIN_EXE_reloadscope"))
}

/// `reloadscope agent` with `args` after a loopback `--listen` and the probe and
/// reloads off; returns its exit code and stderr.
fn agent_fails(args: &[&str]) -> (Option<i32>, String) {
    let start = Instant::now();
    let out = bin()
        .args(["agent", "--listen", "127.0.0.1:0", "--probe", "off"])
        .args(["--no-reloads", "--no-kube", "--log-format", "json"])
        .args(args)
        .stdin(Stdio::null())
        .output()
        .unwrap();
    assert!(start.elapsed() < Duration::from_secs(5), "{args:?}: ran on");
    (
        out.status.code(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

#[test]
fn every_bad_path_or_flag_is_a_usage_error_named_in_one_line() {
    let tmp = tempfile::tempdir().unwrap();
    let file = tmp.path().join("file");
    std::fs::write(&file, "x").unwrap();
    let (dir, file, nowhere) = (
        tmp.path().to_str().unwrap(),
        file.to_str().unwrap(),
        tmp.path().join("nowhere"),
    );
    let in_file = format!("{file}/state.json");
    let in_nowhere = format!("{}/state.json", nowhere.display());
    let cases: &[(&[&str], &str)] = &[
        (
            &["--kubelet-root", "/etc/passwd"],
            "--kubelet-root /etc/passwd: not a directory",
        ),
        (
            &["--kubelet-root", dir, "--pod-logs-dir", file],
            "--pod-logs-dir",
        ),
        (
            &["--kubelet-root", dir, "--container-logs-dir", file],
            "--container-logs-dir",
        ),
        (
            &["--kubelet-root", dir, "--proc-root", "/nonexistent"],
            "--proc-root",
        ),
        (
            &["--kubelet-root", dir, "--state-file", &in_file],
            "--state-file",
        ),
        (
            &["--kubelet-root", dir, "--state-file", &in_nowhere],
            "--state-file",
        ),
        // A file system that takes no new files.
        (
            &["--kubelet-root", dir, "--state-file", "/proc/state.json"],
            "--state-file",
        ),
        (
            &["--kubelet-root", dir, "--state-file", dir],
            "--state-file",
        ),
        (
            &["--kubelet-root", dir, "--metric-labels", "node"],
            "--metric-labels",
        ),
        (
            &["--kubelet-root", dir, "--histogram-labels", "node"],
            "--histogram-labels",
        ),
        (
            &["--kubelet-root", dir, "--log-level", "info,[=x"],
            "--log-level",
        ),
        // clap's own: an unknown flag and a bad value.
        (&["--kubelet-root", dir, "--no-such-flag"], "--no-such-flag"),
        (
            &["--kubelet-root", dir, "--stale-after=-1"],
            "--stale-after",
        ),
    ];
    for (args, says) in cases {
        let (code, err) = agent_fails(args);
        assert_eq!(code, Some(2), "{args:?}: {err}");
        assert!(err.contains(says), "{args:?} must name {says:?}: {err}");
        assert!(!err.contains("serving /metrics"), "{args:?} started: {err}");
    }
    // --kubeconfig conflicts with --no-kube: checked without it.
    let out = bin()
        .args([
            "agent",
            "--listen",
            "127.0.0.1:0",
            "--probe",
            "off",
            "--no-reloads",
        ])
        .args([
            "--kubelet-root",
            dir,
            "--kubeconfig",
            "/nonexistent/kubeconfig",
        ])
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{err}");
    assert!(
        err.contains("--kubeconfig /nonexistent/kubeconfig"),
        "{err}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs root: run cargo xtask test"]
async fn a_pod_logs_dir_that_appears_later_is_said_and_followed() {
    let mut node = LabNode::temp().unwrap();
    let pod = node.add_pod("shop", "web").unwrap();
    let w = node
        .add_volume(&pod, VolumeType::ConfigMap, "app-config")
        .unwrap();
    w.write(&payload(&[("k", "v0")]), CallStyle::GoAt).unwrap();
    let logs = node.base().join("later-logs");
    let port = free_port();
    let addr = SocketAddr::from(([127, 0, 0, 1], port));
    let mut cmd = bin();
    cmd.args([
        "agent",
        "--listen",
        &addr.to_string(),
        "--log-format",
        "json",
    ])
    .args([
        "--probe",
        "off",
        "--no-reloads",
        "--no-kube",
        "--kubelet-root",
    ])
    .arg(node.kubelet_root())
    .arg("--pod-logs-dir")
    .arg(&logs)
    .stderr(Stdio::piped());
    let mut agent = Agent(Some(cmd.spawn().unwrap()));
    ready(agent.0.as_mut().unwrap(), addr).await;
    let m = metrics(addr).await;
    let series = ("volume", "app-config");
    assert_eq!(
        m.get(
            "reloadscope_volume_updates_total",
            &[series, ("pod", &pod.uid)]
        ),
        Some(0.0),
        "named by its uid while there are no pod logs"
    );
    std::fs::create_dir(&logs).unwrap();
    std::fs::create_dir(logs.join(pod.log_dir_name())).unwrap();
    wait_metrics(addr, "the pod's name", |m| {
        m.get(
            "reloadscope_volume_updates_total",
            &[series, ("namespace", "shop"), ("pod", "web")],
        ) == Some(0.0)
    })
    .await;
    let (_, log) = stop(agent).await;
    let said: Vec<&str> = (log.lines())
        .filter(|l| l.contains("\"level\":\"WARN\"") && l.contains("--pod-logs-dir"))
        .collect();
    assert_eq!(said.len(), 1, "{log}");
    assert!(said[0].contains(&*logs.to_string_lossy()), "{}", said[0]);
}

/// A /proc with `containers` containers of `pod`, each with a mountinfo of
/// `mounts` lines (one file, linked into each): a consumer scan of it reads and parses
/// them all.
fn big_proc(dir: &Path, pod: &str, containers: usize, mounts: usize) {
    let mountinfo = dir.join("mountinfo");
    let lines: String = (0..mounts)
        .map(|i| {
            format!(
                "{} 1 0:{} / /mnt/{i} rw,relatime - tmpfs tmpfs rw\n",
                100 + i,
                50 + i
            )
        })
        .collect();
    std::fs::write(&mountinfo, lines).unwrap();
    for c in 0..containers {
        let pid = dir.join((1000 + c).to_string());
        std::fs::create_dir(&pid).unwrap();
        let id = format!("{c:064x}");
        let cgroup = format!(
            "0::/kubepods.slice/kubepods-pod{}.slice/cri-containerd-{id}.scope\n",
            pod.replace('-', "_")
        );
        std::fs::write(pid.join("cgroup"), cgroup).unwrap();
        let stat = format!("{} (app) S {}\n", 1000 + c, ["0"; 48].join(" "));
        std::fs::write(pid.join("stat"), stat).unwrap();
        std::os::unix::fs::symlink(&mountinfo, pid.join("mountinfo")).unwrap();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs root: run cargo xtask test"]
async fn sigterm_stops_the_agent_within_a_second_during_a_long_consumer_scan() {
    let mut node = LabNode::temp().unwrap();
    let pod = node.add_pod("shop", "web").unwrap();
    let w = node
        .add_volume(&pod, VolumeType::ConfigMap, "app-config")
        .unwrap();
    w.write(&payload(&[("k", "v0")]), CallStyle::GoAt).unwrap();
    let proc_root = tempfile::tempdir().unwrap();
    big_proc(proc_root.path(), &pod.uid, 400, 20_000);
    let port = free_port();
    let addr = SocketAddr::from(([127, 0, 0, 1], port));
    let mut cmd = agent_command(&node, &addr.to_string(), &[]);
    cmd.args(["--probe", "off", "--no-kube", "--proc-root"])
        .arg(proc_root.path());
    let mut agent = Agent(Some(cmd.spawn().unwrap()));
    // The first consumer scan starts as the initial walk ends.
    ready(agent.0.as_mut().unwrap(), addr).await;
    let (took, log) = stop(agent).await;
    println!("stopped in {took:?} during a scan of 400 containers' mounts");
    assert!(took < Duration::from_secs(1), "took {took:?}: {log}");
}

/// A state file of 1 GiB (sparse: no disk taken) is refused unread: the agent's peak
/// memory stays small, it says so once, and writes a state of its own at its stop.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs root: run cargo xtask test"]
async fn a_huge_state_file_is_refused_unread() {
    let mut node = LabNode::temp().unwrap();
    let pod = node.add_pod("shop", "web").unwrap();
    let w = node
        .add_volume(&pod, VolumeType::ConfigMap, "app-config")
        .unwrap();
    w.write(&payload(&[("k", "v0")]), CallStyle::GoAt).unwrap();
    let state = node.base().join("state.json");
    std::fs::File::create(&state)
        .unwrap()
        .set_len(1 << 30)
        .unwrap();
    let port = free_port();
    let addr = SocketAddr::from(([127, 0, 0, 1], port));
    let mut cmd = agent_command(&node, &addr.to_string(), &[]);
    cmd.args([
        "--probe",
        "off",
        "--no-reloads",
        "--no-kube",
        "--state-file",
    ])
    .arg(&state);
    let mut agent = Agent(Some(cmd.spawn().unwrap()));
    let pid = agent.0.as_ref().unwrap().id();
    ready(agent.0.as_mut().unwrap(), addr).await;
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    let peak_kib: u64 = (status.lines())
        .find_map(|l| l.strip_prefix("VmHWM:"))
        .and_then(|v| v.split_whitespace().next()?.parse().ok())
        .unwrap();
    println!("peak RSS with a 1 GiB state file: {peak_kib} KiB");
    assert!(peak_kib < 64 << 10, "{peak_kib} KiB");
    let (_, log) = stop(agent).await;
    let said: Vec<&str> = (log.lines())
        .filter(|l| l.contains("\"level\":\"WARN\""))
        .collect();
    assert_eq!(said.len(), 1, "{log}");
    assert!(said[0].contains("not read"), "{}", said[0]);
    let saved = std::fs::metadata(&state).unwrap().len();
    assert!(saved < 4096, "the agent's own state: {saved} bytes");
    let doc: serde_json::Value = serde_json::from_slice(&std::fs::read(&state).unwrap()).unwrap();
    assert_eq!(doc["volumes"].as_array().unwrap().len(), 1);
}
