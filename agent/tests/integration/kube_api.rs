//! The agent's Kubernetes API client, unmodified (kube-rs), against the lab's test API
//! server speaking the list/watch protocol: which pods it keeps, what it asks for,
//! and how it gets through connection drops, 410 Gone, bookmarks and 403s.
//!
//! The agent runs on inotify alone without reload measurement: no root needed.

use crate::support::{kube::*, *};
use reloadscope::node::volumes::VolumeType;
use reloadscope_lab::{LabNode, LabPod, apiserver::Resource};

/// A lab node with one pod `shop/web-0` and its ConfigMap volume `app-config`
/// (written once), the same pod on the API with its ConfigMap and a Secret.
async fn lab() -> (Api, LabNode, LabPod) {
    let (api, node, pod, _) = shop_lab(&[
        (VolumeType::ConfigMap, "app-config", "app-config"),
        (VolumeType::Secret, "tls", "web-tls"),
    ])
    .await;
    (api, node, pod)
}

/// Waits until the API is up for the agent and it holds exactly `pods`.
async fn wait_pods(agent: &reloadscope::agent::Running, pods: &[&LabPod]) {
    let want = uids(pods.iter().copied());
    wait_meta(agent, &format!("the API up with pods {want:?}"), |m| {
        (m.api_up && pod_uids(m) == want).then_some(())
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn only_this_nodes_pods_and_only_metadata_of_configmaps_and_secrets() {
    let (api, node, pod) = lab().await;
    let mut elsewhere = api_only_pod("shop", "web-1", 1);
    let mut obj = reloadscope_lab::cluster::pod(&elsewhere, &[], std::time::SystemTime::now());
    obj["spec"]["nodeName"] = "other-node".into();
    api.server.create(Resource::Pods, obj).unwrap();
    let agent = start_with(config(&node, api.settings())).await;

    wait_pods(&agent, &[&pod]).await;
    {
        let m = agent.shared.meta.state.lock().unwrap();
        assert_eq!(
            m.source_labels(&pod.uid, "app-config"),
            ("ConfigMap".into(), "app-config".into())
        );
        assert_eq!(
            m.source_labels(&pod.uid, "tls"),
            ("Secret".into(), "web-tls".into())
        );
        assert_eq!(m.workload(&pod.uid), ("StatefulSet", "app"));
    }

    // Pods bound later: this node's arrive by the watch, another node's never. The
    // second comes after the first on the same stream, so once it is in, the first
    // would have been too.
    elsewhere.name = "web-2".into();
    elsewhere.uid = api_only_pod("", "", 2).uid;
    let mut obj = reloadscope_lab::cluster::pod(&elsewhere, &[], std::time::SystemTime::now());
    obj["spec"]["nodeName"] = "other-node".into();
    api.server.create(Resource::Pods, obj).unwrap();
    let here = api_only_pod("shop", "web-3", 3);
    api.add_pod(&here, &[]);
    wait_pods(&agent, &[&pod, &here]).await;

    wait_for("the ConfigMap and Secret watches", || async {
        let open = |r| api.server.open_watches(r) == 1;
        (open(Resource::ConfigMaps) && open(Resource::Secrets)).then_some(())
    })
    .await;

    // Pods: asked for with this node's field selector, list and watch.
    let pods = api.requests(Resource::Pods);
    assert!(pods.iter().any(|r| r.watch) && pods.iter().any(|r| !r.watch));
    for r in &pods {
        assert_eq!(
            r.param("fieldSelector"),
            Some("spec.nodeName=lab-node"),
            "{r:?}"
        );
        assert!(!r.metadata_only(), "{r:?}");
    }
    // ConfigMaps and Secrets: metadata only, in every list and watch; no Secret data
    // ever served.
    for resource in [Resource::ConfigMaps, Resource::Secrets] {
        let reqs = api.requests(resource);
        assert!(
            reqs.iter().any(|r| r.watch) && reqs.iter().any(|r| !r.watch),
            "{resource:?} listed and watched: {reqs:?}"
        );
        for r in &reqs {
            assert!(r.metadata_only(), "{r:?}");
            assert_eq!(r.path, format!("/api/v1/{}", resource.plural()));
        }
    }
    assert_eq!(api.server.secret_data_served(), 0);
    api.server
        .update(Resource::Secrets, "shop", "web-tls", "kubectl-edit", |s| {
            s["data"]["tls.key"] = "cm90YXRlZA==".into();
        })
        .unwrap();
    let sent = api
        .wait_sent("the Secret's change on the agent's watch", |e| {
            e.resource == Resource::Secrets && e.event == "MODIFIED"
        })
        .await;
    assert!(sent.metadata_only);
    assert_eq!(api.server.secret_data_served(), 0);
    assert_eq!(api.server.gone_sent(), 0);
    agent.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_pod_deleted_while_the_api_was_unreachable_is_gone_after_the_relist() {
    let (api, node, pod) = lab().await;
    let other = api_only_pod("shop", "web-9", 9);
    api.add_pod(
        &other,
        &[(VolumeType::ConfigMap, "app-config", "app-config")],
    );
    let agent = start_with(config(&node, api.settings())).await;
    wait_pods(&agent, &[&pod, &other]).await;
    let lists = api.lists(Resource::Pods);

    // Every connection reset, and every new one.
    api.server.set_unreachable(true);
    wait_meta(&agent, "the API down", |m| (!m.api_up).then_some(())).await;
    api.server.delete(Resource::Pods, "shop", "web-9").unwrap();
    api.server.set_unreachable(false);

    wait_pods(&agent, &[&pod]).await;
    assert!(api.lists(Resource::Pods) > lists, "relisted");
    agent.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn gone_410_relists_and_nothing_is_lost() {
    let logs = Logs::capture();
    let (api, node, pod) = lab().await;
    let b = api_only_pod("shop", "web-b", 11);
    api.add_pod(&b, &[]);
    let agent = start_with(config(&node, api.settings())).await;
    wait_pods(&agent, &[&pod, &b]).await;
    wait_for("the pod watch", || async {
        (api.server.open_watches(Resource::Pods) == 1).then_some(())
    })
    .await;
    let (lists, gone) = (api.lists(Resource::Pods), api.server.gone_sent());

    // A partition: the watches drop, their resumption waits unanswered.
    api.server.hold_requests(true);
    api.server.drop_watches();
    wait_for("the pod watch to resume into the partition", || async {
        let held = api.requests(Resource::Pods);
        held.iter().any(|r| r.watch && r.status == 0).then_some(())
    })
    .await;
    // Meanwhile: one pod goes, one comes, one is orphaned, and the history is
    // compacted past what the agent saw.
    api.server.delete(Resource::Pods, "shop", "web-b").unwrap();
    let c = api_only_pod("shop", "web-c", 12);
    api.add_pod(&c, &[]);
    api.server
        .update(
            Resource::Pods,
            "shop",
            "web-0",
            "kube-controller-manager",
            |p| {
                p["metadata"]
                    .as_object_mut()
                    .unwrap()
                    .remove("ownerReferences");
            },
        )
        .unwrap();
    api.server.compact();
    api.server.hold_requests(false);

    wait_meta(&agent, "web-0 orphaned, web-b gone, web-c in", |m| {
        (pod_uids(m) == uids([&pod, &c]) && m.workload(&pod.uid) == ("", "")).then_some(())
    })
    .await;
    assert!(
        api.server.gone_sent() > gone,
        "the watch was answered 410 Gone"
    );
    assert_eq!(api.lists(Resource::Pods), lists + 1, "one relist");
    assert!(agent.shared.meta.state.lock().unwrap().api_up);
    // A 410 is the protocol at work, not an outage.
    assert_eq!(
        api_lines(&logs.lines(), &api.server, "Kubernetes API down"),
        Vec::<String>::new()
    );
    agent.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn watches_resume_from_the_last_bookmark() {
    let (api, node, pod) = lab().await;
    let agent = start_with(config(&node, api.settings())).await;
    wait_pods(&agent, &[&pod]).await;
    wait_for("the watches", || async {
        (api.server.open_watches(Resource::Pods) == 1
            && api.server.open_watches(Resource::ConfigMaps) == 1)
            .then_some(())
    })
    .await;
    let (lists, gone) = (api.lists(Resource::Pods), api.server.gone_sent());
    let watches = api.requests(Resource::Pods).len();

    // Writes elsewhere move the resourceVersion past the pod watch's; a bookmark
    // tells it, and only a watch resuming from the bookmark survives the compaction.
    api.add_object("ConfigMap", "other", "unrelated", &[("k", "v")]);
    let rv = api.server.bookmark().to_string();
    api.wait_sent("the bookmark on the pod watch", |e| {
        e.resource == Resource::Pods && e.event == "BOOKMARK" && e.resource_version == rv
    })
    .await;
    api.server.compact();
    api.server.end_watches();

    let resumed = wait_for("the pod watch to resume", || async {
        let reqs = api.requests(Resource::Pods);
        reqs.get(watches..)?.iter().find(|r| r.watch).cloned()
    })
    .await;
    assert_eq!(resumed.param("resourceVersion"), Some(rv.as_str()));
    // The metadata watch took its bookmark (PartialObjectMetadata) the same way.
    wait_for("the ConfigMap watch to resume", || async {
        let reqs = api.requests(Resource::ConfigMaps);
        let last = reqs.iter().rev().find(|r| r.watch)?;
        (last.param("resourceVersion") == Some(rv.as_str())).then_some(())
    })
    .await;
    // And it works: a new pod of this node arrives.
    let d = api_only_pod("shop", "web-d", 21);
    api.add_pod(&d, &[]);
    wait_pods(&agent, &[&pod, &d]).await;
    assert_eq!(api.lists(Resource::Pods), lists, "no relist");
    assert_eq!(api.server.gone_sent(), gone);
    agent.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn forbidden_api_is_down_once_and_up_again_while_the_node_metrics_go_on() {
    let logs = Logs::capture();
    let (api, node, pod) = lab().await;
    let agent = start_with(config(&node, api.settings())).await;
    wait_pods(&agent, &[&pod]).await;

    api.server.forbid(true);
    api.server.drop_watches();
    wait_meta(&agent, "the API down", |m| (!m.api_up).then_some(())).await;
    // Retried with backoff, refused each time.
    wait_for("several refused retries", || async {
        let refused = api
            .server
            .requests()
            .iter()
            .filter(|r| r.status == 403)
            .count();
        (refused >= 6).then_some(())
    })
    .await;
    // The node's own view goes on, named from the node.
    let m = metrics(agent.addr).await;
    assert_eq!(
        m.get(
            "reloadscope_volume_updates_total",
            &[
                ("namespace", "shop"),
                ("pod", "web-0"),
                ("volume", "app-config")
            ]
        ),
        Some(0.0),
        "{:?}",
        m.0.iter()
            .filter(|s| s.name.starts_with("reloadscope_volume"))
            .collect::<Vec<_>>()
    );

    assert_eq!(m.get("reloadscope_kube_api_up", &[]), Some(0.0));

    api.server.forbid(false);
    wait_pods(&agent, &[&pod]).await;
    let m = metrics(agent.addr).await;
    assert_eq!(m.get("reloadscope_kube_api_up", &[]), Some(1.0));

    let lines = logs.lines();
    let down = api_lines(&lines, &api.server, "Kubernetes API down");
    assert_eq!(down.len(), 1, "{down:#?}");
    assert!(
        down[0].contains("\"level\":\"WARN\"") && down[0].contains("403"),
        "{}",
        down[0]
    );
    let up = api_lines(&lines, &api.server, "Kubernetes API up");
    assert_eq!(up.len(), 2, "up at start and once back: {up:#?}");
    agent.stop().await;
}
