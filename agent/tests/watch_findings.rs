//! The watch linter end to end: lab containers watching their volume the ways real
//! applications do, each classified from its own inotify watches (/proc fdinfo), before
//! any update where the masks prove it, and after the first update for a watch that is
//! not added again. Needs root.

mod support;

use std::{collections::BTreeSet, path::Path, time::Duration};

use reloadscope::{
    lab::{
        AtomicWriter, CallStyle, ContainerSpec, LabContainer, LabNode, LabPod, Strategy, payload,
        scrape::Samples,
    },
    volumes::VolumeType,
};
use support::*;

const KEY: &str = "config.yaml";
/// The subPath consumer binds another key: a subPath bind of `KEY` would pin the old
/// file, and the file re-watcher of `KEY` would never see it deleted (README, limits).
const SUB_KEY: &str = "ca.crt";

fn container(
    node: &LabNode,
    pod: &LabPod,
    w: &AtomicWriter,
    name: &str,
    s: Strategy,
    sub_path: bool,
) -> LabContainer {
    let spec = ContainerSpec {
        period: Duration::from_millis(300),
        sub_path,
        ..ContainerSpec::new(name, w.dir(), if sub_path { SUB_KEY } else { KEY }, s)
    };
    LabContainer::start(
        Path::new(env!("CARGO_BIN_EXE_reloadscope")),
        node,
        pod,
        &spec,
    )
    .unwrap()
}

/// Each container's findings, as /metrics says.
fn findings(m: &Samples) -> Vec<(String, BTreeSet<String>)> {
    let mut by: std::collections::BTreeMap<String, BTreeSet<String>> = Default::default();
    for s in m.matching("reloadscope_consumer_watch_findings", &[]) {
        by.entry(s.labels["container"].clone())
            .or_default()
            .insert(s.labels["finding"].clone());
    }
    by.into_iter().collect()
}

fn expect(cases: &[(&str, &[&str])]) -> Vec<(String, BTreeSet<String>)> {
    let mut v: Vec<_> = cases
        .iter()
        .filter(|(_, f)| !f.is_empty())
        .map(|(c, f)| (c.to_string(), f.iter().map(|s| s.to_string()).collect()))
        .collect();
    v.sort();
    v
}

async fn each_watcher_gets_exactly_its_finding(ty: VolumeType) {
    let mut node = LabNode::temp().unwrap();
    let pod = node.add_pod("shop", "web").unwrap();
    let w = node.add_volume(&pod, ty, "app-config").unwrap();
    w.write(
        &payload(&[(KEY, "revision: 0"), (SUB_KEY, "ca 0")]),
        CallStyle::GoAt,
    )
    .unwrap();
    let cases: [(&str, Strategy, bool, &[&str]); 7] = [
        ("watcher", Strategy::DataDirWatcher, false, &["ok"]),
        ("rewatcher", Strategy::FileRewatcher, false, &["ok"]),
        ("naive", Strategy::NaiveModify, false, &["no_delete_self"]),
        ("nofollow", Strategy::DontFollow, false, &["dont_follow"]),
        ("poller", Strategy::TimerPoller, false, &[]),
        ("once", Strategy::ReadOnce, false, &[]),
        ("pinned", Strategy::TimerPoller, true, &["subpath"]),
    ];
    let ctrs: Vec<_> = cases
        .iter()
        .map(|(n, s, sub, _)| container(&node, &pod, &w, n, *s, *sub))
        .collect();
    let agent = start_with(reloadscope::agent::Config {
        rewatch_grace: Duration::from_millis(500),
        ..reloadscope::lab::agent_config(&node, true, "127.0.0.1:0".parse().unwrap())
    })
    .await;
    let want: Vec<(&str, &[&str])> = cases.iter().map(|(n, _, _, f)| (*n, *f)).collect();
    let want = expect(&want);
    // Before any update.
    let m = wait_metrics(agent.addr, "every finding before the update", |m| {
        findings(m) == want
    })
    .await;
    let observed = m.sum(
        "reloadscope_inotify_watches_observed",
        &[("namespace", "shop")],
    );
    assert!(observed >= 4.0, "{observed} watches observed");

    // After an update and the grace period: the same, the rewatcher having re-added.
    w.write(
        &payload(&[(KEY, "revision: 1"), (SUB_KEY, "ca 1")]),
        CallStyle::GoAt,
    )
    .unwrap();
    wait_metrics(agent.addr, "the rewatcher's reload", |m| {
        m.get(
            "reloadscope_consumer_last_reload_timestamp_seconds",
            &[("container", "rewatcher")],
        )
        .is_some()
    })
    .await;
    // An inventory taken once the grace is over, then what /metrics says.
    let grace_over = std::time::SystemTime::now() + Duration::from_millis(500);
    let linter = &agent.shared.linter;
    wait_for("an inventory after the grace", || async {
        let at = linter.lock().unwrap().last_inventory;
        at.is_some_and(|t| t > grace_over).then_some(())
    })
    .await;
    let m = metrics(agent.addr).await;
    assert_eq!(findings(&m), want);
    agent.stop().await;
    for c in ctrs {
        c.stop().unwrap();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs root: run cargo xtask test"]
async fn configmap_watchers_get_their_findings() {
    each_watcher_gets_exactly_its_finding(VolumeType::ConfigMap).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs root: run cargo xtask test"]
async fn secret_watchers_get_their_findings() {
    each_watcher_gets_exactly_its_finding(VolumeType::Secret).await;
}
