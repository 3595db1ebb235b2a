//! `StaleVolumeReload` Events: lab containers (real processes in their own mount
//! namespace and cgroup) consume a ConfigMap volume; one reads it once, at its start
//! (seen: its pod starts while the agent runs), and never again. After an update it stays stale past `--stale-after`, and the agent posts one
//! Warning Event on its pod to the test API server: one per update, none for the
//! container that reloads. Needs root.

use std::{
    net::SocketAddr,
    time::{Duration, SystemTime},
};

use crate::support::{kube::*, *};
use reloadscope::{agent, node::volumes::VolumeType};
use reloadscope_lab::{CallStyle, LabNode, Strategy, WriteOutcome, payload};
use serde_json::Value;

const STALE_AFTER: Duration = Duration::from_secs(1);

fn update(w: &reloadscope_lab::AtomicWriter, revision: u32) -> SystemTime {
    let data = payload(&[(KEY, &format!("revision: {revision}"))]);
    match w.write(&data, CallStyle::GoAt).unwrap() {
        WriteOutcome::Written { swapped_at, .. } => swapped_at,
        other => panic!("{other:?}"),
    }
}

/// Waits until `n` Events were posted; returns them.
async fn wait_events(api: &Api, n: usize) -> Vec<Value> {
    wait_for(&format!("{n} Events posted"), || async {
        let events = api.server.posted_events();
        (events.len() >= n).then_some(events)
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs root: run cargo xtask test"]
async fn a_stale_consumer_gets_one_event_per_update() {
    let api = Api::start().await;
    let mut node = LabNode::temp().unwrap();
    let pod = node.add_pod("shop", "web-0").unwrap();
    api.add_pod(
        &pod,
        &[
            (VolumeType::ConfigMap, "app-config", "app-config"),
            (VolumeType::ConfigMap, "flags", "web-flags"),
        ],
    );
    let settings = reloadscope::kubeapi::Settings {
        emit_events: true,
        stale_after: STALE_AFTER,
        ..api.settings()
    };
    let agent = start_with(agent::Config {
        kube: Some(settings),
        ..reloadscope_lab::agent_config(&node, false, SocketAddr::from(([127, 0, 0, 1], 0)))
    })
    .await;

    // The pod starts while the agent runs, so the reads at start are seen: only a
    // container seen reading its volume can be stale.
    let ty = VolumeType::ConfigMap;
    let app = add_marked_volume(&mut node, &pod, ty, "app-config", "revision: 0").await;
    let flags = add_marked_volume(&mut node, &pod, ty, "flags", "revision: 0").await;
    let once = lab_container(&node, &pod, &app, "once", Strategy::ReadOnce, false);
    let poller = lab_container(&node, &pod, &app, "poller", Strategy::TimerPoller, false);
    let flags_once = lab_container(&node, &pod, &flags, "flags-once", Strategy::ReadOnce, false);
    wait_metrics(agent.addr, "the three consumers, seen reading", |m| {
        m.matching("reloadscope_consumer_info", &[]).count() == 3
            && m.sum("reloadscope_consumer_info", &[("reads", "yes")]) == 3.0
    })
    .await;
    wait_meta(&agent, "the API up", |m| {
        (m.api_up && m.pods.len() == 1).then_some(())
    })
    .await;
    assert!(api.server.posted_events().is_empty());

    let first = update(&app, 1);
    let events = wait_events(&api, 1).await;
    let posted = SystemTime::now();
    let e = &events[0];
    assert!(
        posted.duration_since(first).unwrap() >= STALE_AFTER,
        "posted after the consumer was stale for {STALE_AFTER:?}"
    );
    assert_eq!(e["apiVersion"], "events.k8s.io/v1");
    assert_eq!(e["type"], "Warning");
    assert_eq!(e["reason"], "StaleVolumeReload");
    assert_eq!(e["reportingController"], "reloadscope");
    assert_eq!(e["reportingInstance"], format!("reloadscope-{NODE}"));
    assert_eq!(e["metadata"]["namespace"], "shop");
    let regarding = &e["regarding"];
    assert_eq!(
        (
            &regarding["kind"],
            &regarding["namespace"],
            &regarding["name"]
        ),
        (&"Pod".into(), &"shop".into(), &"web-0".into())
    );
    assert_eq!(regarding["uid"], pod.uid.as_str());
    assert_eq!(regarding["fieldPath"], "spec.containers{once}");
    let note = e["note"].as_str().unwrap();
    assert!(
        note.starts_with(
            "Container \"once\" has not reloaded volume \"app-config\" (ConfigMap app-config) for "
        ),
        "{note}"
    );

    // The other volume's update: its Event comes a stale-after later, after sweeps
    // (every half stale-after) that found `once` still stale for the first update and
    // posted nothing again.
    update(&flags, 1);
    let events = wait_events(&api, 2).await;
    assert_eq!(
        fields(&events),
        [("once", "app-config"), ("flags-once", "flags")]
    );
    assert!(
        events[1]["note"]
            .as_str()
            .unwrap()
            .contains("(ConfigMap web-flags)")
    );

    // A new update of the first volume: one more Event, for it; and none again for
    // the flags, stale all along.
    let second = update(&app, 2);
    let events = wait_events(&api, 3).await;
    assert_eq!(
        fields(&events),
        [
            ("once", "app-config"),
            ("flags-once", "flags"),
            ("once", "app-config")
        ]
    );
    let at = |e: &Value| -> SystemTime {
        let t: k8s_openapi::jiff::Timestamp = e["eventTime"].as_str().unwrap().parse().unwrap();
        t.into()
    };
    // eventTime has microseconds.
    let slack = Duration::from_micros(1);
    assert!(at(&events[0]) + slack >= first + STALE_AFTER, "{events:#?}");
    assert!(
        at(&events[2]) + slack >= second + STALE_AFTER,
        "{events:#?}"
    );
    // The poller reloaded each update: never stale past a second, never an Event.
    let m = metrics(agent.addr).await;
    assert_eq!(
        m.get(
            "reloadscope_reload_latency_seconds_count",
            &[("container", "poller")]
        ),
        Some(2.0)
    );

    agent.stop().await;
    for c in [once, poller, flags_once] {
        c.stop().unwrap();
    }
}

/// Each Event's container (from `regarding.fieldPath`) and volume (from the note).
fn fields(events: &[Value]) -> Vec<(&str, &str)> {
    events
        .iter()
        .map(|e| {
            let path = e["regarding"]["fieldPath"].as_str().unwrap();
            let container = path
                .strip_prefix("spec.containers{")
                .and_then(|c| c.strip_suffix('}'))
                .unwrap();
            let note = e["note"].as_str().unwrap();
            let volume = note.split('"').nth(3).unwrap();
            (container, volume)
        })
        .collect()
}
