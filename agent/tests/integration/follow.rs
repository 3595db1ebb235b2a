//! Containers are followed through their cgroups: with the periodic scan an hour away,
//! a container that starts is found, and one that stops goes, within seconds. Real lab
//! containers in kubelet-named cgroup v2 dirs. Needs root.

use std::time::Duration;

use crate::support::*;
use reloadscope::node::volumes::VolumeType;
use reloadscope_lab::{ContainerSpec, LabContainer, Strategy};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs root: run cargo xtask test"]
async fn containers_starting_and_stopping_are_seen_without_polling() {
    let (node, pod, w) = shop_volume(VolumeType::ConfigMap, "app-config");
    let agent = start_with(reloadscope::agent::Config {
        rescan: Some(Duration::from_secs(3600)),
        ..reloadscope_lab::agent_config(&node, true, "127.0.0.1:0".parse().unwrap())
    })
    .await;
    let info = |n| {
        move |m: &reloadscope_lab::scrape::Samples| {
            m.matching("reloadscope_consumer_info", &[]).count() == n
        }
    };
    // The first scan (at readiness) found nobody.
    wait_metrics(agent.addr, "no consumer", info(0)).await;

    let bin = &reloadscope_lab::lab_bin().unwrap();
    let spec = ContainerSpec::new("watcher", w.dir(), "config.yaml", Strategy::DataDirWatcher);
    let watcher = LabContainer::start(bin, &node, &pod, &spec).unwrap();
    let m = wait_metrics(agent.addr, "the new container", info(1)).await;
    assert!(
        m.get("reloadscope_consumer_info", &[("container", "watcher")])
            .is_some()
    );

    watcher.stop().unwrap();
    wait_metrics(agent.addr, "the stopped container gone", info(0)).await;
    agent.stop().await;
}
