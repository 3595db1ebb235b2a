//! Propagation delay end to end: a ConfigMap changes on the test API server, the lab's
//! writer swaps the pod's volume as the kubelet would a measured time later, and the
//! delay the agent observes is checked against the test's own clock.
//!
//! The API server's clock is set 90 s behind the node's: the delay is measured from
//! when the agent saw the change, never from the server's timestamps.
//!
//! The agent runs on inotify alone without reload measurement: no root needed.

use std::time::{Duration, SystemTime};

use crate::support::{kube::*, *};
use reloadscope::node::volumes::VolumeType;
use reloadscope_lab::{CallStyle, WriteOutcome, apiserver::Resource, payload};

/// How long the "kubelet" takes to swap after the change.
const KUBELET_DELAY: Duration = Duration::from_millis(300);
/// Between the agent's clock readings and the test's: the watch event's delivery, the
/// swap's report by inotify.
const TOLERANCE: f64 = 0.005;

fn secs(d: Duration) -> f64 {
    d.as_secs_f64()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_delay_from_the_change_on_the_api_to_the_swap_matches_the_test_clock() {
    // The server's clock 90 s behind the node's: the delay must come from the
    // agent's own clock, and managedFields times from the server's.
    let api = Api::start().await;
    api.server.shift_clock(Duration::from_secs(90), false);
    let (api, node, pod, w) =
        shop_lab_on(api, &[(VolumeType::ConfigMap, "app-config", "app-config")]);
    // Another pod of the namespace on this node that does not use it.
    let other = api_only_pod("shop", "web-1", 1);
    api.add_pod(&other, &[(VolumeType::ConfigMap, "other", "other")]);

    let agent = start_with(config(&node, api.settings())).await;
    wait_meta(&agent, "the API up with both pods", |m| {
        (m.api_up && m.pods.len() == 2).then_some(())
    })
    .await;
    // Changes are measured from a watch event (one found by a relist has no time).
    wait_for("the ConfigMap watch", || async {
        (api.server.open_watches(Resource::ConfigMaps) == 1).then_some(())
    })
    .await;

    // A label by another manager is no change of data: nothing to wait for on the node.
    // (managedFields times have a 1 s resolution: the server's clock moves on between
    // the writes, as real time would.)
    api.server.shift_clock(Duration::from_secs(5), true);
    let labelled = api
        .server
        .update(
            Resource::ConfigMaps,
            "shop",
            "app-config",
            "kubectl-label",
            |cm| {
                cm["metadata"]["labels"] = serde_json::json!({"tier": "web"});
            },
        )
        .unwrap()
        .unwrap();
    let rv = labelled["metadata"]["resourceVersion"]
        .as_str()
        .unwrap()
        .to_owned();
    api.wait_sent("the label change on the agent's watch", |e| {
        e.resource == Resource::ConfigMaps && e.resource_version == rv
    })
    .await;
    // A gap on the real clock, so that the label change, had it counted, would show.
    tokio::time::sleep(Duration::from_millis(50)).await;

    // The data change.
    api.server.shift_clock(Duration::from_secs(5), true);
    let changed = api
        .server
        .update(
            Resource::ConfigMaps,
            "shop",
            "app-config",
            "kubectl-edit",
            |cm| {
                cm["data"][KEY] = "revision: 1".into();
            },
        )
        .unwrap()
        .unwrap();
    let rv = changed["metadata"]["resourceVersion"]
        .as_str()
        .unwrap()
        .to_owned();
    let sent = api
        .wait_sent("the data change on the agent's watch", |e| {
            e.resource == Resource::ConfigMaps && e.event == "MODIFIED" && e.resource_version == rv
        })
        .await;
    let pending = wait_meta(&agent, "the change pending on this node", |m| {
        let far = SystemTime::now() + Duration::from_secs(3600);
        let all = m.propagation.pending_past(far);
        (!all.is_empty()).then_some(all)
    })
    .await;
    assert_eq!(pending.len(), 1, "{pending:#?}");
    let p = &pending[0];
    assert_eq!(
        (p.pod_uid.as_str(), p.volume.as_str()),
        (pod.uid.as_str(), "app-config")
    );
    let seen_after_sent = p
        .since
        .duration_since(sent.at)
        .unwrap_or_else(|e| panic!("seen {:?} before the server sent it", e.duration()));
    assert!(
        secs(seen_after_sent) < TOLERANCE,
        "seen {seen_after_sent:?} after it was sent: the label change counted?"
    );

    // The kubelet swaps the volume a measured time later.
    tokio::time::sleep(KUBELET_DELAY).await;
    let swapped_at = match w
        .write(&payload(&[(KEY, "revision: 1")]), CallStyle::GoAt)
        .unwrap()
    {
        WriteOutcome::Written { swapped_at, .. } => swapped_at,
        other => panic!("{other:?}"),
    };
    let h = wait_meta(&agent, "the delay observed", |m| {
        let (_, h) = m.propagation.histograms().find(|(ns, _)| *ns == "shop")?;
        (h.count == 1).then(|| h.clone())
    })
    .await;
    let own = secs(swapped_at.duration_since(sent.at).unwrap());
    assert!(own >= secs(KUBELET_DELAY));
    assert!(
        (h.sum - own).abs() < TOLERANCE,
        "agent observed {} s, the test's clock says {own} s",
        h.sum
    );
    let pending = agent
        .shared
        .meta
        .state
        .lock()
        .unwrap()
        .propagation
        .pending_count();
    assert_eq!(pending, 0);
    agent.stop().await;
}
