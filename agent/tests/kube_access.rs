//! What the agent may and may not ask of the API: a role without Secrets, watches
//! limited to `--namespaces`, and an API that stops answering. The agent's client,
//! unmodified, against the lab's test API server; inotify alone, no root needed.

mod support;

use std::time::{Duration, Instant};

use reloadscope::{
    lab::{LabNode, LabPod, apiserver::Resource},
    volumes::VolumeType,
};
use support::{kube::*, *};

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
