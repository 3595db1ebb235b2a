//! What the agent may and may not ask of the API: a role without Secrets, watches
//! limited to `--namespaces`, an API that stops answering, and one not there yet. The
//! agent's client, unmodified, against the lab's test API server; inotify alone, no
//! root needed.

use std::{
    io::BufRead,
    net::SocketAddr,
    process::Child,
    sync::{Arc, Mutex},
    time::{Duration, Instant},
};

use crate::support::{kube::*, *};
use reloadscope::node::volumes::VolumeType;
use reloadscope_lab::{
    LabNode, LabPod,
    apiserver::{self, FakeApiServer, Resource},
};

/// A lab node with `shop/web-0` and its ConfigMap volume, on the API too.
async fn lab() -> (Api, LabNode, LabPod) {
    let (api, node, pod, _) =
        shop_lab(&[(VolumeType::ConfigMap, "app-config", "app-config")]).await;
    (api, node, pod)
}

/// deploy/base/rbac.yaml allows deleting `secrets` from the role: the API is up
/// without them, the 403 is logged once, and granting them later is picked up.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn secrets_not_granted_leave_the_api_up() {
    let logs = Logs::capture();
    let (api, node, pod) = lab().await;
    api.server.grant(Resource::Secrets, false);
    let agent = start_with(config(&node, api.settings())).await;
    wait_meta(&agent, "the API up without Secrets", |m| {
        (m.api_up && m.pods.contains_key(&pod.uid)).then_some(())
    })
    .await;
    let refused = |api: &Api| {
        let reqs = api.requests(Resource::Secrets);
        reqs.iter().filter(|r| r.status == 403).count()
    };
    wait_for("two refused Secret lists", || async {
        (refused(&api) >= 2).then_some(())
    })
    .await;
    assert!(agent.shared.meta.state.lock().unwrap().api_up);

    api.server.grant(Resource::Secrets, true);
    wait_for("the Secrets listed", || async {
        let reqs = api.requests(Resource::Secrets);
        reqs.iter()
            .any(|r| r.watch && r.status == 200)
            .then_some(())
    })
    .await;
    let lines = logs.lines();
    let not_granted: Vec<&String> = lines
        .iter()
        .filter(|l| l.contains("not granted (403)") && l.contains("\"watch\":\"secrets\""))
        .collect();
    // Other tests of this binary may run alongside: theirs name no 403 of secrets
    // alone, so one line here is this agent's.
    assert_eq!(not_granted.len(), 1, "{not_granted:#?}");
    assert_eq!(
        api_lines(&lines, &api.server, "Kubernetes API down"),
        Vec::<String>::new()
    );
    agent.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_namespaces_configmaps_and_secrets_are_watched_in_those_alone() {
    let (api, node, pod) = lab().await;
    let settings = reloadscope::kubeapi::Settings {
        namespaces: vec!["shop".into(), "payments".into()],
        ..api.settings()
    };
    let agent = start_with(config(&node, settings)).await;
    wait_meta(&agent, "the API up", |m| {
        (m.api_up && m.pods.contains_key(&pod.uid)).then_some(())
    })
    .await;
    for resource in [Resource::ConfigMaps, Resource::Secrets] {
        for ns in ["shop", "payments"] {
            let path = format!("/api/v1/namespaces/{ns}/{}", resource.plural());
            wait_for(&format!("a watch of {path}"), || async {
                let reqs = api.requests(resource);
                reqs.iter().any(|r| r.path == path && r.watch).then_some(())
            })
            .await;
        }
        let reqs = api.requests(resource);
        let outside: Vec<_> = reqs
            .iter()
            .filter(|r| !r.path.starts_with("/api/v1/namespaces/shop/"))
            .filter(|r| !r.path.starts_with("/api/v1/namespaces/payments/"))
            .collect();
        assert!(outside.is_empty(), "{outside:#?}");
    }
    // Pods: this node's, in every namespace.
    for r in api.requests(Resource::Pods) {
        assert_eq!(r.path, "/api/v1/pods");
    }
    agent.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_agent_stops_promptly_while_the_api_hangs() {
    let (api, node, pod) = lab().await;
    let agent = start_with(config(&node, api.settings())).await;
    wait_meta(&agent, "the API up", |m| {
        (m.api_up && m.pods.contains_key(&pod.uid)).then_some(())
    })
    .await;
    let before = api.server.requests().len();
    api.server.hold_requests(true);
    api.server.drop_watches();
    wait_for("requests hanging", || async {
        let reqs = api.server.requests();
        reqs.get(before..)
            .is_some_and(|r| r.iter().filter(|r| r.status == 0).count() >= 3)
            .then_some(())
    })
    .await;
    let start = Instant::now();
    agent.stop().await;
    assert!(
        start.elapsed() < Duration::from_secs(1),
        "stopped in {:?}",
        start.elapsed()
    );
}

/// The agent process, killed if the test fails before stopping it.
struct Agent(Child);

impl Drop for Agent {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// The lines the agent writes to stderr, read as they come until it exits.
struct Stderr {
    lines: Arc<Mutex<Vec<String>>>,
    reader: Option<std::thread::JoinHandle<()>>,
}

impl Stderr {
    fn read(child: &mut Child) -> Stderr {
        let pipe = std::io::BufReader::new(child.stderr.take().unwrap());
        let lines = Arc::new(Mutex::new(Vec::new()));
        let into = lines.clone();
        let reader = std::thread::spawn(move || {
            for line in pipe.lines().map_while(Result::ok) {
                into.lock().unwrap().push(line);
            }
        });
        Stderr {
            lines,
            reader: Some(reader),
        }
    }

    /// Waits until the agent, which has exited, has had every line read.
    fn finish(&mut self) {
        if let Some(reader) = self.reader.take() {
            reader.join().unwrap();
        }
    }

    fn with(&self, text: &str) -> Vec<String> {
        let lines = self.lines.lock().unwrap();
        lines.iter().filter(|l| l.contains(text)).cloned().collect()
    }

    fn all(&self) -> String {
        self.lines.lock().unwrap().join("\n")
    }
}

/// The real binary, with its own log filter, given a kubeconfig whose server is a
/// loopback port nothing listens on (a node whose kube-proxy is not up yet): every
/// list is refused, and each watcher retries with backoff. The README promises one
/// line when the API goes and one when it is back, not kube-client's ERROR line per
/// failed request. Then an API server starts on that port, and the agent says once
/// that the API is up.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unreachable_api_is_logged_once_and_its_return_once() {
    let node = LabNode::temp().unwrap();
    let api_addr = SocketAddr::from(([127, 0, 0, 1], free_port()));
    let dir = tempfile::tempdir().unwrap();
    let kubeconfig = dir.path().join("kubeconfig");
    apiserver::write_kubeconfig(&kubeconfig, &format!("http://{api_addr}")).unwrap();
    let port = free_port();
    let addr = SocketAddr::from(([127, 0, 0, 1], port));
    let mut cmd = agent_command(&node, &format!("127.0.0.1:{port}"), &[]);
    // Debug for the agent's API client alone: its `watch failed` line per retry is
    // how the test counts them. No kube target is named, so the filter's quiet
    // directives for kube's crates are those of the default `info`.
    cmd.args(["--no-ebpf", "--no-reloads", "--node-name", NODE])
        .args(["--log-level", "info,reloadscope::apiclient=debug"])
        .arg("--kubeconfig")
        .arg(&kubeconfig);
    let mut agent = Agent(cmd.spawn().expect("the agent"));
    let mut stderr = Stderr::read(&mut agent.0);
    wait_ready(addr).await;

    // pods, configmaps and secrets: three refused lists each, 1.5 s of backoff.
    wait_for("three refused lists of each watch", || {
        let failed = stderr.with("\"message\":\"watch failed\"");
        async move {
            let each = ["pods", "configmaps", "secrets"].map(|part| {
                let part = format!("\"watch\":\"{part}\"");
                failed.iter().filter(|l| l.contains(&part)).count()
            });
            each.iter().all(|n| *n >= 3).then_some(())
        }
    })
    .await;
    let m = metrics(addr).await;
    assert_eq!(m.get("reloadscope_kube_api_up", &[]), Some(0.0));
    let down = stderr.with("Kubernetes API down");
    assert_eq!(down.len(), 1, "{}", stderr.all());
    assert!(down[0].contains("\"level\":\"WARN\""), "{}", down[0]);
    let loud = |stderr: &Stderr| {
        let lines = stderr.lines.lock().unwrap();
        let loud = lines
            .iter()
            .filter(|l| l.contains("\"level\":\"ERROR\"") || l.contains("\"target\":\"kube"));
        loud.cloned().collect::<Vec<_>>()
    };
    assert_eq!(loud(&stderr), Vec::<String>::new());

    let server = FakeApiServer::start_on(api_addr).await.unwrap();
    wait_metrics(addr, "the API up", |m| {
        m.get("reloadscope_kube_api_up", &[]) == Some(1.0)
    })
    .await;
    wait_for("the line saying the API is up", || {
        let up = stderr.with("Kubernetes API up");
        async move { (!up.is_empty()).then_some(()) }
    })
    .await;
    assert!(
        server.requests().iter().any(|r| r.watch),
        "a watch after the lists"
    );
    // SAFETY: our child's pid.
    unsafe { libc::kill(agent.0.id() as i32, libc::SIGTERM) };
    let status = blocking(move || agent.0.wait().unwrap()).await;
    assert!(status.success(), "{status:?}");
    stderr.finish();
    assert_eq!(
        stderr.with("Kubernetes API up").len(),
        1,
        "{}",
        stderr.all()
    );
    assert_eq!(stderr.with("Kubernetes API down").len(), 1);
    assert_eq!(loud(&stderr), Vec::<String>::new());
}
