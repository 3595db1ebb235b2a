//! Reload signals (`--reload-signals`): lab containers running the `sighup-reloader`
//! strategy (reads its file at start and on each SIGHUP, never on its own) in pods on
//! the test API server. Without the annotation such a container is stale after an
//! update; with `reloadscope.dev/reload-signal: SIGHUP` it is signalled at the swap and
//! reloads within [`LATENCY_BOUND`]. A host process of the same name, a process that
//! took a signalled container's pid, and a pod whose annotation names no signal are
//! never signalled. Needs root.

use std::{
    io::Read as _,
    net::SocketAddr,
    path::{Path, PathBuf},
    process::{Child, Command, Stdio},
    time::Duration,
};

use crate::support::{kube::*, *};
use reloadscope::{agent, node::volumes::VolumeType};
use reloadscope_lab::{
    CallStyle, LabContainer, LabNode, LabPod, Strategy, apiserver::Resource, cluster, payload,
};
use serde_json::{Value, json};

/// From the swap to the signalled container's first open of the new data: the
/// batching window (50 ms), the signal, the consumer's reopen, and a loaded machine's
/// scheduling. Measured in the lab: about 55 ms.
const LATENCY_BOUND: Duration = Duration::from_millis(500);

fn update(w: &reloadscope_lab::AtomicWriter, revision: u32) {
    let data = payload(&[(KEY, &format!("revision: {revision}"))]);
    w.write(&data, CallStyle::GoAt).unwrap();
}

/// The agent with the API and `--reload-signals`, the probe on.
async fn agent_with_signals(node: &LabNode, api: &Api) -> agent::Running {
    start_with(agent::Config {
        kube: Some(api.settings()),
        reload_signals: true,
        ..reloadscope_lab::agent_config(node, true, SocketAddr::from(([127, 0, 0, 1], 0)))
    })
    .await
}

/// Sets the pod's `reloadscope.dev/` annotations on the API, and waits until the agent
/// has them.
async fn annotate(api: &Api, agent: &agent::Running, pod: &LabPod, annotations: Value) {
    api.server
        .update(Resource::Pods, &pod.namespace, &pod.name, "kubectl", |p| {
            p["metadata"]["annotations"] = annotations.clone();
        })
        .unwrap();
    let want: Vec<(String, String)> = annotations
        .as_object()
        .unwrap()
        .iter()
        .map(|(k, v)| (k.clone(), v.as_str().unwrap().to_owned()))
        .collect();
    wait_meta(agent, "the pod's annotations", |m| {
        let p = m.pods.get(&pod.uid)?;
        let have: Vec<(String, String)> = p.annotations.clone().into_iter().collect();
        (have == want).then_some(())
    })
    .await;
}

/// A pod with one ConfigMap volume `app-config` written once, on the API (with
/// `annotations`) and on the node, its data marked by the agent.
async fn pod_with_volume(
    node: &mut LabNode,
    api: &Api,
    agent: &agent::Running,
    name: &str,
    annotations: Value,
) -> (LabPod, reloadscope_lab::AtomicWriter) {
    let pod = node.add_pod("shop", name).unwrap();
    let mut obj = cluster::pod(
        &pod,
        &[(VolumeType::ConfigMap, "app-config", "app-config")],
        std::time::SystemTime::now(),
    );
    obj["metadata"]["annotations"] = annotations;
    api.server.create(Resource::Pods, obj).unwrap();
    wait_meta(agent, "the pod on the API", |m| {
        m.pods.get(&pod.uid).map(drop)
    })
    .await;
    let w = node
        .add_volume(&pod, VolumeType::ConfigMap, "app-config")
        .unwrap();
    w.write(&payload(&[(KEY, "revision: 0")]), CallStyle::GoAt)
        .unwrap();
    let data = w.dir().join("..data");
    wait_for("the new volume's data marked", || {
        std::future::ready(fanotify_marks(&data).then_some(()))
    })
    .await;
    (pod, w)
}

/// Starts a SIGHUP reloader in `pod` and waits until the agent has seen it read its
/// volume and knows its main process.
async fn sighup_reloader(
    node: &LabNode,
    pod: &LabPod,
    w: &reloadscope_lab::AtomicWriter,
    agent: &agent::Running,
    name: &str,
) -> LabContainer {
    let c = lab_container(node, pod, w, name, Strategy::SighupReloader, false);
    wait_metrics(agent.addr, "the reloader, seen reading", |m| {
        m.get(
            "reloadscope_consumer_info",
            &[("container", name), ("reads", "yes")],
        ) == Some(1.0)
    })
    .await;
    let main = wait_for("its main process known", || {
        let known = agent
            .shared
            .signals
            .lock()
            .unwrap()
            .main
            .get(&c.id)
            .copied();
        std::future::ready(known)
    })
    .await;
    assert_eq!(
        main.pid, c.pid,
        "the container's only process is its main one"
    );
    c
}

/// A host process (no pod's cgroup) named `name` (its `comm`, as `ps` shows it): a
/// shell that writes `hup` on SIGHUP and `usr1` on SIGUSR1 to its output file.
struct HostProcess {
    child: Child,
    output: PathBuf,
}

impl HostProcess {
    fn start(dir: &Path, name: &str) -> HostProcess {
        // The kernel names a process after the file it executes: a link named `name`.
        let link = dir.join(name);
        if !link.exists() {
            std::os::unix::fs::symlink("/bin/sh", &link).unwrap();
        }
        let output = dir.join(format!("{name}.{}.out", std::process::id()));
        let out = std::fs::File::create(&output).unwrap();
        let script = "trap 'echo hup' HUP; trap 'echo usr1' USR1; echo ready; \
                      while :; do sleep 0.02; done";
        let child = Command::new(&link)
            .args(["-c", script])
            .stdout(out)
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        HostProcess { child, output }
    }

    fn output(&self) -> String {
        let mut s = String::new();
        std::fs::File::open(&self.output)
            .unwrap()
            .read_to_string(&mut s)
            .unwrap();
        s
    }

    async fn wait_line(&self, line: &str) {
        wait_for(&format!("{line:?} from the host process"), || {
            std::future::ready(self.output().lines().any(|l| l == line).then_some(()))
        })
        .await;
    }

    /// Asserts that it was never sent SIGHUP: it handles a SIGUSR1 sent now, and no
    /// SIGHUP before it (a pending SIGHUP is delivered before a SIGUSR1).
    async fn assert_never_hung_up(&self) {
        // SAFETY: kill(2) on our own child, alive.
        assert_eq!(
            unsafe { libc::kill(self.child.id() as i32, libc::SIGUSR1) },
            0
        );
        self.wait_line("usr1").await;
        let lines: Vec<String> = self.output().lines().map(str::to_owned).collect();
        assert_eq!(lines, ["ready", "usr1"], "the host process was signalled");
    }
}

fn comm(pid: u32) -> String {
    std::fs::read_to_string(format!("/proc/{pid}/comm"))
        .unwrap()
        .trim_end()
        .to_owned()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs root: run cargo xtask test"]
async fn a_sighup_reloader_is_stale_without_the_annotation_and_reloads_with_it() {
    let api = Api::start().await;
    let mut node = LabNode::temp().unwrap();
    let agent = agent_with_signals(&node, &api).await;
    let (pod, w) = pod_with_volume(&mut node, &api, &agent, "web-0", json!({})).await;
    let app = sighup_reloader(&node, &pod, &w, &agent, "app").await;
    // A host process with the container's process name, which would reload on SIGHUP.
    let tmp = tempfile::tempdir().unwrap();
    let host = HostProcess::start(tmp.path(), &comm(app.pid));
    host.wait_line("ready").await;
    assert_eq!(comm(host.child.id()), comm(app.pid));
    let app_only = [("container", "app")];

    // No annotation: the update is not signalled, and the container does not reload.
    update(&w, 1);
    wait_metrics(agent.addr, "the reloader stale", |m| {
        m.get("reloadscope_consumer_stale_seconds", &app_only)
            .is_some_and(|s| s > 0.3)
    })
    .await;
    assert_eq!(app.reads().unwrap().len(), 1, "no reopen without a signal");
    let m = metrics(agent.addr).await;
    assert_eq!(m.sum("reloadscope_reload_signals_sent_total", &[]), 0.0);
    assert_eq!(m.sum("reloadscope_reload_signals_failed_total", &[]), 0.0);

    // Annotated: the next swap signals it once, and it reloads.
    annotate(
        &api,
        &agent,
        &pod,
        json!({
            "reloadscope.dev/reload-signal": "SIGHUP",
            "reloadscope.dev/reload-volumes": "app-config",
        }),
    )
    .await;
    update(&w, 2);
    let m = wait_metrics(agent.addr, "the reloader's reload", |m| {
        m.get("reloadscope_reload_latency_seconds_count", &app_only) == Some(1.0)
    })
    .await;
    let latency = m
        .get("reloadscope_reload_latency_seconds_sum", &app_only)
        .unwrap();
    assert!(
        latency < LATENCY_BOUND.as_secs_f64(),
        "reloaded {latency} s after the swap"
    );
    println!("signalled reload latency: {:.1} ms", latency * 1e3);
    assert_eq!(
        m.get("reloadscope_consumer_stale_seconds", &app_only),
        Some(0.0)
    );
    assert_eq!(
        m.get("reloadscope_consumer_stale_since_signal_seconds", &app_only),
        Some(0.0)
    );
    let sent = [("namespace", "shop"), ("workload", cluster::OWNER.1)];
    assert_eq!(
        m.get("reloadscope_reload_signals_sent_total", &sent),
        Some(1.0)
    );
    let reads = app.reads().unwrap();
    let heads: Vec<String> = reads
        .iter()
        .map(|r| String::from_utf8_lossy(r.head.as_deref().unwrap()).into_owned())
        .collect();
    assert_eq!(
        heads,
        ["revision: 0", "revision: 2"],
        "one reopen, of the new data"
    );

    // The probe and inotify both reported that swap: still one signal. And the host
    // process of the same name was never signalled.
    host.assert_never_hung_up().await;
    let m = metrics(agent.addr).await;
    assert_eq!(m.sum("reloadscope_reload_signals_sent_total", &[]), 1.0);
    assert_eq!(m.sum("reloadscope_reload_signals_failed_total", &[]), 0.0);
    assert_eq!(app.reads().unwrap().len(), 2);
    let mut host = host;
    host.child.kill().unwrap();
    host.child.wait().unwrap();
    app.stop().unwrap();
    agent.stop().await;
}

/// Writes `pid - 1` to the kernel's last allocated pid and starts the host process:
/// it gets `pid` unless another process forked in between; tried again then.
fn take_pid(dir: &Path, name: &str, pid: u32) -> HostProcess {
    for _ in 0..50 {
        std::fs::write("/proc/sys/kernel/ns_last_pid", (pid - 1).to_string()).unwrap();
        let mut h = HostProcess::start(dir, name);
        if h.child.id() == pid {
            return h;
        }
        h.child.kill().unwrap();
        h.child.wait().unwrap();
    }
    panic!("pid {pid} could not be taken");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs root: run cargo xtask test"]
async fn a_pid_reused_by_a_host_process_is_never_signalled() {
    let api = Api::start().await;
    let mut node = LabNode::temp().unwrap();
    let agent = agent_with_signals(&node, &api).await;
    let annotations = json!({"reloadscope.dev/reload-signal": "HUP"});
    let (pod, w) = pod_with_volume(&mut node, &api, &agent, "web-1", annotations).await;
    let app = sighup_reloader(&node, &pod, &w, &agent, "app").await;
    let pid = app.pid;
    let name = comm(pid);

    // The container's process dies (its cgroup stays, as while a runtime restarts
    // it) and a host process of the same name takes its pid, before any scan: the
    // agent's main process for the container is that pid.
    // SAFETY: kill and waitpid on our own child.
    unsafe {
        assert_eq!(libc::kill(pid as i32, libc::SIGKILL), 0);
        assert_eq!(
            libc::waitpid(pid as i32, std::ptr::null_mut(), 0),
            pid as i32
        );
    }
    let tmp = tempfile::tempdir().unwrap();
    let host = take_pid(tmp.path(), &name, pid);
    host.wait_line("ready").await;
    let known = agent
        .shared
        .signals
        .lock()
        .unwrap()
        .main
        .get(&app.id)
        .copied();
    assert_eq!(
        known.map(|m| m.pid),
        Some(pid),
        "the agent still has the old process"
    );

    update(&w, 1);
    let m = wait_metrics(agent.addr, "the signal refused", |m| {
        m.sum("reloadscope_reload_signals_failed_total", &[]) == 1.0
    })
    .await;
    // Found with its old start time (pid_reused), or gone from the scan that follows
    // the update (no_process): never sent.
    let refused = m.sum(
        "reloadscope_reload_signals_failed_total",
        &[("reason", "pid_reused")],
    ) + m.sum(
        "reloadscope_reload_signals_failed_total",
        &[("reason", "no_process")],
    );
    assert_eq!(refused, 1.0);
    assert_eq!(m.sum("reloadscope_reload_signals_sent_total", &[]), 0.0);
    host.assert_never_hung_up().await;
    let event = wait_signal_event(&api).await;
    assert_eq!(event["regarding"]["name"], "web-1");
    assert_eq!(event["regarding"]["fieldPath"], "spec.containers{app}");

    // The container's teardown kills and reaps the pid it started, which is now the
    // host process's: that child is reaped there, and its handle must not be used.
    drop(app);
    std::mem::forget(host);
    agent.stop().await;
}

/// Waits for a `ReloadSignalFailed` Event; returns it.
async fn wait_signal_event(api: &Api) -> Value {
    wait_for("a ReloadSignalFailed Event", || {
        let e =
            (api.server.posted_events().into_iter()).find(|e| e["reason"] == "ReloadSignalFailed");
        std::future::ready(e)
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs root: run cargo xtask test"]
async fn an_unknown_signal_is_refused_and_never_sent() {
    let logs = Logs::capture();
    let api = Api::start().await;
    let mut node = LabNode::temp().unwrap();
    let agent = agent_with_signals(&node, &api).await;
    let annotations = json!({"reloadscope.dev/reload-signal": "SIGRELOAD"});
    let (pod, w) = pod_with_volume(&mut node, &api, &agent, "web-2", annotations).await;
    let app = sighup_reloader(&node, &pod, &w, &agent, "app").await;

    update(&w, 1);
    let m = wait_metrics(agent.addr, "the unknown signal refused", |m| {
        m.get(
            "reloadscope_reload_signals_failed_total",
            &[("reason", "unknown_signal"), ("namespace", "shop")],
        ) == Some(1.0)
    })
    .await;
    assert_eq!(m.sum("reloadscope_reload_signals_sent_total", &[]), 0.0);
    let event = wait_signal_event(&api).await;
    let note = event["note"].as_str().unwrap();
    assert!(
        note.starts_with("SIGRELOAD not sent to container \"app\""),
        "{note}"
    );
    assert!(
        logs.warnings()
            .iter()
            .any(|l| l.contains("names no signal") && l.contains("SIGRELOAD")),
        "a log line says why"
    );
    // Still running, stale, and it read nothing more: nothing reached it.
    wait_metrics(agent.addr, "the reloader stale", |m| {
        m.get(
            "reloadscope_consumer_stale_seconds",
            &[("container", "app")],
        )
        .is_some_and(|s| s > 0.0)
    })
    .await;
    assert_eq!(app.reads().unwrap().len(), 1);
    // SAFETY: kill(pid, 0) only checks that the process exists.
    assert_eq!(unsafe { libc::kill(app.pid as i32, 0) }, 0);
    app.stop().unwrap();
    agent.stop().await;
}
