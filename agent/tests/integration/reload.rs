//! Reload measurement end to end: the real agent (probe, inotify, fanotify, /proc
//! scans) and lab containers with the strategies of docs/design.md 5, each logging when
//! it opens the file. The agent's figures are checked against those logs. Needs root.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use crate::support::*;
use reloadscope::node::volumes::VolumeType;
use reloadscope_lab::{CallStyle, LabNode, Strategy, WriteOutcome, payload};

fn secs(t: SystemTime) -> f64 {
    t.duration_since(UNIX_EPOCH).unwrap().as_secs_f64()
}

async fn reload_latency_matches_the_consumers_own_logs(ty: VolumeType) {
    let mut node = LabNode::temp().unwrap();
    let pod = node.add_pod("shop", "web").unwrap();
    let w = node.add_volume(&pod, ty, "app-config").unwrap();
    w.write(
        &payload(&[(KEY, "revision: 0"), (SUB_KEY, "ca 0")]),
        CallStyle::GoAt,
    )
    .unwrap();
    let reloading = [
        ("watcher", Strategy::DataDirWatcher),
        ("rewatcher", Strategy::FileRewatcher),
        ("poller", Strategy::TimerPoller),
    ];
    // `once` read its file at its start, before the agent ran: nothing shows that it
    // reads the volume (no watch, no file held open), so it is not measured. The
    // others watch it: they read it.
    let never = [
        ("naive", Strategy::NaiveModify),
        ("nofollow", Strategy::DontFollow),
        ("once", Strategy::ReadOnce),
    ];
    let mut ctrs = Vec::new();
    for (name, s) in reloading.iter().chain(&never) {
        ctrs.push(lab_container(&node, &pod, &w, name, *s, false));
    }
    let sub = lab_container(&node, &pod, &w, "subpath", Strategy::TimerPoller, true);
    let agent = start(&node, true).await;

    let info = wait_metrics(agent.addr, "every consumer", |m| {
        m.matching("reloadscope_consumer_info", &[]).count() == 7
    })
    .await;
    assert_eq!(
        m_get(&info, "reloadscope_consumer_info", "subpath", "mount"),
        Some("subpath".into())
    );
    for c in &ctrs {
        assert_eq!(
            m_get(&info, "reloadscope_consumer_info", &c.name, "mount"),
            Some("volume".into()),
            "{}",
            c.name
        );
    }
    assert_eq!(info.get("reloadscope_fanotify_loaded", &[]), Some(1.0));

    let before: Vec<usize> = ctrs.iter().map(|c| c.opens().unwrap().len()).collect();
    let swapped_at = match w
        .write(
            &payload(&[(KEY, "revision: 1"), (SUB_KEY, "ca 1")]),
            CallStyle::GoAt,
        )
        .unwrap()
    {
        WriteOutcome::Written { swapped_at, .. } => swapped_at,
        other => panic!("{other:?}"),
    };
    // The kubelet's re-reads of the new data are never anybody's reload.
    host_reread(&w);

    let m = wait_metrics(agent.addr, "the reloading consumers' reloads", |m| {
        reloading.iter().all(|(n, _)| {
            m.get(
                "reloadscope_consumer_last_reload_timestamp_seconds",
                &[("container", n)],
            )
            .is_some()
        })
    })
    .await;
    let swap = assert_swap_stamped(&m, "app-config", swapped_at);
    for (c, n0) in ctrs.iter().zip(&before) {
        let labels = [("container", c.name.as_str())];
        if reloading.iter().any(|(n, _)| *n == c.name) {
            // The consumer's own record: its first open after the swap.
            let opened = c.opens().unwrap()[*n0..]
                .iter()
                .copied()
                .find(|t| secs(*t) >= swap)
                .expect("consumer reopened");
            let seen = m
                .get(
                    "reloadscope_consumer_last_reload_timestamp_seconds",
                    &labels,
                )
                .unwrap();
            assert!(
                (seen - secs(opened)).abs() < 0.005,
                "{}: agent saw the reload at {seen}, consumer opened at {}",
                c.name,
                secs(opened)
            );
            let latency = m
                .get("reloadscope_reload_latency_seconds_sum", &labels)
                .unwrap();
            let own = secs(opened) - swap;
            assert!(
                (latency - own).abs() < 0.005,
                "{}: latency {latency}, consumer's own {own}",
                c.name
            );
            assert_eq!(
                m.get("reloadscope_reload_latency_seconds_count", &labels),
                Some(1.0)
            );
            assert_eq!(
                m.get("reloadscope_consumer_stale_seconds", &labels),
                Some(0.0)
            );
        } else {
            assert_eq!(c.opens().unwrap().len(), *n0, "{} never reopens", c.name);
            assert!(
                m.get(
                    "reloadscope_consumer_last_reload_timestamp_seconds",
                    &labels
                )
                .is_none(),
                "{}",
                c.name
            );
            let reads = m_get(&m, "reloadscope_consumer_info", &c.name, "reads");
            if c.name == "once" {
                assert_eq!(reads.as_deref(), Some("unknown"));
                assert!(
                    m.get("reloadscope_consumer_stale_seconds", &labels)
                        .is_none(),
                    "whether it reads the volume is unknown: not stale"
                );
                continue;
            }
            assert!(
                m.get("reloadscope_consumer_stale_seconds", &labels)
                    .unwrap()
                    > 0.0,
                "{} is stale",
                c.name
            );
        }
        let reads = m_get(&m, "reloadscope_consumer_info", &c.name, "reads");
        assert_eq!(reads.as_deref(), Some("yes"), "{}", c.name);
    }
    // subPath: reported as such, never as stale, although it keeps reading (old data).
    assert!(
        m.get(
            "reloadscope_consumer_stale_seconds",
            &[("container", "subpath")]
        )
        .is_none()
    );
    assert!(
        m.get(
            "reloadscope_consumer_last_reload_timestamp_seconds",
            &[("container", "subpath")]
        )
        .is_none()
    );
    assert!(m.sum("reloadscope_foreign_opens_total", &[("opener", "host")]) >= 1.0);

    agent.stop().await;
    sub.stop().unwrap();
    for c in ctrs {
        c.stop().unwrap();
    }
}

/// The value of label `label` on the one sample of `name` with `container`.
fn m_get(
    m: &reloadscope_lab::scrape::Samples,
    name: &str,
    container: &str,
    label: &str,
) -> Option<String> {
    let with = [("container", container)];
    let mut it = m.matching(name, &with);
    let s = it.next()?;
    assert!(it.next().is_none(), "several {name} for {container}");
    s.labels.get(label).cloned()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs root: run cargo xtask test"]
async fn configmap_reloads_match_the_consumers_logs() {
    reload_latency_matches_the_consumers_own_logs(VolumeType::ConfigMap).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs root: run cargo xtask test"]
async fn secret_reloads_match_the_consumers_logs() {
    reload_latency_matches_the_consumers_own_logs(VolumeType::Secret).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs root: run cargo xtask test"]
async fn the_state_file_keeps_who_is_stale_across_a_restart() {
    let mut node = LabNode::temp().unwrap();
    let pod = node.add_pod("shop", "web").unwrap();
    let state = tempfile::tempdir().unwrap();
    let cfg = reloadscope::agent::Config {
        state_file: Some(state.path().join("state.json")),
        ..reloadscope_lab::agent_config(
            &node,
            true,
            std::net::SocketAddr::from(([127, 0, 0, 1], 0)),
        )
    };
    let consumers = |m: &reloadscope_lab::scrape::Samples| {
        m.matching("reloadscope_consumer_info", &[]).count() == 2
    };

    let first = start_with(cfg.clone()).await;
    // The pod starts while the agent runs: the read-once container's read at its start
    // is seen (a volume that appears keeps its opens reported for a while).
    let ty = VolumeType::ConfigMap;
    let w = add_marked_volume(&mut node, &pod, ty, "app-config", "revision: 0").await;
    let once = lab_container(&node, &pod, &w, "once", Strategy::ReadOnce, false);
    let watcher = lab_container(&node, &pod, &w, "watcher", Strategy::DataDirWatcher, false);
    wait_metrics(first.addr, "both consumers, both reading", |m| {
        consumers(m) && m.sum("reloadscope_consumer_info", &[("reads", "yes")]) == 2.0
    })
    .await;
    w.write(&payload(&[(KEY, "revision: 1")]), CallStyle::GoAt)
        .unwrap();
    let m = wait_metrics(first.addr, "the watcher's reload", |m| {
        m.get(
            "reloadscope_consumer_last_reload_timestamp_seconds",
            &[("container", "watcher")],
        )
        .is_some()
    })
    .await;
    let swap = m
        .get(
            "reloadscope_volume_last_update_timestamp_seconds",
            &[("volume", "app-config")],
        )
        .unwrap();
    first.stop().await;

    // A new agent (an upgrade): the read-once container is still stale since that swap,
    // the watcher still is not; without the state file neither would be stale, and
    // whether the read-once one reads the volume would be unknown.
    let second = start_with(cfg).await;
    let m = wait_metrics(second.addr, "both consumers again", consumers).await;
    let now = secs(SystemTime::now());
    let stale = m
        .get(
            "reloadscope_consumer_stale_seconds",
            &[("container", "once")],
        )
        .unwrap();
    assert!(
        (stale - (now - swap)).abs() < 0.5,
        "stale {stale} s, swap was {} s ago",
        now - swap
    );
    assert_eq!(
        m.get(
            "reloadscope_consumer_stale_seconds",
            &[("container", "watcher")]
        ),
        Some(0.0)
    );
    second.stop().await;
    once.stop().unwrap();
    watcher.stop().unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs root: run cargo xtask test"]
async fn a_container_started_after_the_update_has_it() {
    let (node, pod, w) = shop_volume(VolumeType::Secret, "tls");
    // It watches its file (it reads it), and the watch never fires.
    let old = lab_container(&node, &pod, &w, "old", Strategy::NaiveModify, false);
    let agent = start(&node, true).await;
    wait_metrics(agent.addr, "the old container", |m| {
        m.matching("reloadscope_consumer_info", &[]).count() == 1
    })
    .await;
    let swapped = SystemTime::now();
    w.write(&payload(&[(KEY, "revision: 1")]), CallStyle::GoAt)
        .unwrap();
    wait_metrics(agent.addr, "the old one stale", |m| {
        m.get(
            "reloadscope_consumer_stale_seconds",
            &[("container", "old")],
        )
        .is_some_and(|s| s > 0.0)
    })
    .await;
    // A new container (a restart gets a new container id, as the runtime gives it),
    // started after the swap: it read the new data at its start, seen while the old
    // one, stale, keeps the volume's opens reported.
    // Process starts are known to a clock tick (10 ms), truncated: one in the swap's own
    // tick counts as before it. A runtime restarts a container seconds later; make sure
    // the clock has left the swap's tick.
    past_the_tick_of(swapped);
    let new = lab_container(&node, &pod, &w, "new", Strategy::ReadOnce, false);
    wait_metrics(agent.addr, "the new container seen reading", |m| {
        m.get(
            "reloadscope_consumer_info",
            &[("container", "new"), ("reads", "yes")],
        )
        .is_some()
    })
    .await;
    old.stop().unwrap();
    let m = wait_metrics(agent.addr, "the new container, and the old one gone", |m| {
        m.matching("reloadscope_consumer_info", &[]).count() == 1
            && m.get("reloadscope_consumer_info", &[("container", "new")])
                .is_some()
    })
    .await;
    assert_eq!(
        m.get(
            "reloadscope_consumer_stale_seconds",
            &[("container", "new")]
        ),
        Some(0.0)
    );
    assert!(
        m.get(
            "reloadscope_consumer_stale_seconds",
            &[("container", "old")]
        )
        .is_none(),
        "its series went with it"
    );
    agent.stop().await;
    new.stop().unwrap();
}

/// Returns once the clock is two clock ticks past `t` (not a wait for an event: the
/// passing of time is the condition).
fn past_the_tick_of(t: SystemTime) {
    // SAFETY: sysconf has no preconditions.
    let hz = unsafe { libc::sysconf(libc::_SC_CLK_TCK) }.max(1) as u32;
    if let Ok(d) = (t + 2 * (Duration::from_secs(1) / hz)).duration_since(SystemTime::now()) {
        std::thread::sleep(d);
    }
}
