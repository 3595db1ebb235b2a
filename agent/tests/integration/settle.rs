//! What reload measurement costs the node's openers. Settled volumes: once every
//! consumer of a volume has its data, that data dir's opens are ignored in the kernel
//! (`--settled-marks ignore`) or its mark goes (`remove`), or the one or the other as
//! a consumer watches the volume or none does (`auto`): they are nobody's reload.
//! The next update is still measured, with its foreign opens counted while a consumer
//! is stale. `--no-reloads`: no fanotify group
//! at all, updates still counted. Needs root.

use crate::support::*;
use reloadscope::{node::volumes::VolumeType, opens::SettledMarks};
use reloadscope_lab::{CallStyle, Strategy, payload};

fn host_opens(m: &reloadscope_lab::scrape::Samples) -> f64 {
    m.sum("reloadscope_foreign_opens_total", &[("opener", "host")])
}

/// Whether the settled data dir `data` is as `mode` leaves it.
fn settled_as(mode: SettledMarks, data: &std::path::Path) -> bool {
    match mode {
        SettledMarks::Ignore => fanotify_ignores(data),
        SettledMarks::Remove => fanotify_mark(data) == Default::default(),
        // The volumes of these tests have a consumer that watches them.
        SettledMarks::Auto => settled_as(SettledMarks::Ignore, data),
    }
}

async fn settled_data_costs_less_and_the_next_update_is_measured(
    ty: VolumeType,
    mode: SettledMarks,
) {
    let (node, pod, w) = shop_volume(ty, "app-config");
    let watcher = lab_container(&node, &pod, &w, "watcher", Strategy::DataDirWatcher, false);
    let naive = lab_container(&node, &pod, &w, "naive", Strategy::NaiveModify, false);
    let agent = start_with(reloadscope::agent::Config {
        settled_marks: mode,
        ..reloadscope_lab::agent_config(&node, true, "127.0.0.1:0".parse().unwrap())
    })
    .await;
    wait_metrics(agent.addr, "both consumers", |m| {
        m.matching("reloadscope_consumer_info", &[]).count() == 2
    })
    .await;

    // No update yet: nobody is stale; the data dir's opens are ignored, or it carries
    // no mark at all. (It was marked when the volume was found, before any consumer.)
    let data = w.dir().join("..data");
    wait_for("the settled data dir", || {
        std::future::ready(settled_as(mode, &data).then_some(()))
    })
    .await;
    host_reread(&w);

    // An update: its new data dir is marked as it is created, so the watcher's reload
    // is seen; the naive consumer stays stale, so the new data dir stays marked and a
    // re-read counts.
    w.write(&payload(&[(KEY, "revision: 1")]), CallStyle::GoAt)
        .unwrap();
    let reloaded = [("container", "watcher")];
    wait_metrics(agent.addr, "the watcher's reload", |m| {
        m.get("reloadscope_reload_latency_seconds_count", &reloaded) == Some(1.0)
    })
    .await;
    host_reread(&w);
    let m = wait_metrics(agent.addr, "the re-read of the new data", |m| {
        host_opens(m) >= 1.0
    })
    .await;
    // fanotify reports opens in order: had the first re-read been reported, it would
    // have been counted before this one.
    assert_eq!(
        host_opens(&m),
        1.0,
        "the re-read of settled data was reported"
    );
    assert!(
        m.get(
            "reloadscope_consumer_stale_seconds",
            &[("container", "naive")]
        )
        .unwrap()
            > 0.0
    );
    assert!(
        fanotify_marks(&data) || (mode != SettledMarks::Remove && !fanotify_ignores(&data)),
        "a consumer is stale: the new data dir must count"
    );

    agent.stop().await;
    watcher.stop().unwrap();
    naive.stop().unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs root: run cargo xtask test"]
async fn configmap_settled_data_is_ignored() {
    let mode = SettledMarks::Ignore;
    settled_data_costs_less_and_the_next_update_is_measured(VolumeType::ConfigMap, mode).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs root: run cargo xtask test"]
async fn configmap_settled_data_is_unmarked() {
    let mode = SettledMarks::Remove;
    settled_data_costs_less_and_the_next_update_is_measured(VolumeType::ConfigMap, mode).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs root: run cargo xtask test"]
async fn secret_settled_data_is_ignored() {
    let mode = SettledMarks::Ignore;
    settled_data_costs_less_and_the_next_update_is_measured(VolumeType::Secret, mode).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs root: run cargo xtask test"]
async fn secret_settled_data_is_unmarked() {
    let mode = SettledMarks::Remove;
    settled_data_costs_less_and_the_next_update_is_measured(VolumeType::Secret, mode).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs root: run cargo xtask test"]
async fn configmap_settled_data_is_ignored_while_watched() {
    let mode = SettledMarks::Auto;
    settled_data_costs_less_and_the_next_update_is_measured(VolumeType::ConfigMap, mode).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs root: run cargo xtask test"]
async fn secret_settled_data_is_ignored_while_watched() {
    let mode = SettledMarks::Auto;
    settled_data_costs_less_and_the_next_update_is_measured(VolumeType::Secret, mode).await;
}

/// `--settled-marks auto`: a volume no consumer watches loses its settled data dir's
/// mark and has no mount mark; a consumer with a working watch (a `..data` watcher)
/// brings the ignore mask and a mount mark on every consumer's bind mount; when it
/// stops, they go again.
async fn auto_marks_follow_the_consumers_watches(ty: VolumeType) {
    let (node, pod, w) = shop_volume(ty, "app-config");
    let naive = lab_container(&node, &pod, &w, "naive", Strategy::NaiveModify, false);
    let agent = start_with(reloadscope::agent::Config {
        settled_marks: SettledMarks::Auto,
        ..reloadscope_lab::agent_config(&node, true, "127.0.0.1:0".parse().unwrap())
    })
    .await;
    let data = w.dir().join("..data");
    let unwatched = || {
        let removed = settled_as(SettledMarks::Remove, &data);
        std::future::ready((removed && fanotify_mount_marks() == 0).then_some(()))
    };
    wait_for("the unwatched volume's marks removed", unwatched).await;

    let watcher = lab_container(&node, &pod, &w, "watcher", Strategy::DataDirWatcher, false);
    wait_for("the watched volume's marks", || {
        let ignored = settled_as(SettledMarks::Ignore, &data);
        std::future::ready((ignored && fanotify_mount_marks() == 2).then_some(()))
    })
    .await;

    watcher.stop().unwrap();
    wait_for("the marks removed again", unwatched).await;

    agent.stop().await;
    naive.stop().unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs root: run cargo xtask test"]
async fn configmap_auto_marks_follow_the_consumers_watches() {
    auto_marks_follow_the_consumers_watches(VolumeType::ConfigMap).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs root: run cargo xtask test"]
async fn secret_auto_marks_follow_the_consumers_watches() {
    auto_marks_follow_the_consumers_watches(VolumeType::Secret).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs root: run cargo xtask test"]
async fn without_reloads_updates_count_and_no_open_is_watched() {
    let (node, pod, w) = shop_volume(VolumeType::Secret, "tls");
    let watcher = lab_container(&node, &pod, &w, "watcher", Strategy::DataDirWatcher, false);
    assert_eq!(fanotify_groups(), 0);
    let agent = start_with(reloadscope::agent::Config {
        reloads: false,
        ..reloadscope_lab::agent_config(&node, true, "127.0.0.1:0".parse().unwrap())
    })
    .await;
    assert_eq!(fanotify_groups(), 0, "--no-reloads opened a fanotify group");
    w.write(&payload(&[(KEY, "revision: 1")]), CallStyle::GoAt)
        .unwrap();
    let m = wait_metrics(agent.addr, "the update", |m| {
        m.sum("reloadscope_volume_updates_total", &[]) == 1.0
    })
    .await;
    assert_eq!(m.get("reloadscope_fanotify_loaded", &[]), Some(0.0));
    assert_eq!(m.matching("reloadscope_consumer_info", &[]).count(), 0);
    agent.stop().await;
    watcher.stop().unwrap();
}
