//! The watch linter end to end: lab containers watching their volume the ways real
//! applications do, each classified from its own inotify watches (/proc fdinfo), before
//! any update where the masks prove it, and after the first update for a watch that is
//! not added again, and a file re-watcher whose file a subPath sibling pins. Needs root.

use std::{collections::BTreeSet, ffi::OsString, path::Path, time::Duration};

use crate::support::*;
use reloadscope::node::volumes::VolumeType;
use reloadscope_lab::{
    CallStyle, ContainerSpec, LabContainer, LabNode, Strategy, payload, scrape::Samples,
};

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

/// A lab container: a strategy (subPath or not) or a real watcher program.
enum Runs {
    Strategy(Strategy, bool),
    Program(Vec<OsString>),
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
    let args = |a: &[&str]| Runs::Program(a.iter().map(OsString::from).collect());
    let notify = reloadscope_lab::example_bin("notify_consumer").unwrap();
    let notify = notify.to_str().unwrap();
    // Name, what it runs, its findings before any update, and once an update and the
    // grace period are over.
    let cases: Vec<(&str, Runs, &[&str], &[&str])> = vec![
        (
            "watcher",
            Runs::Strategy(Strategy::DataDirWatcher, false),
            &["ok"],
            &["ok"],
        ),
        (
            "rewatcher",
            Runs::Strategy(Strategy::FileRewatcher, false),
            &["ok"],
            &["ok"],
        ),
        (
            "naive",
            Runs::Strategy(Strategy::NaiveModify, false),
            &["no_delete_self"],
            &["no_delete_self"],
        ),
        (
            "nofollow",
            Runs::Strategy(Strategy::DontFollow, false),
            &["dont_follow"],
            &["dont_follow"],
        ),
        (
            "tsdir",
            Runs::Strategy(Strategy::TimestampedDirWatcher, false),
            &["watches_timestamped_dir"],
            &["watches_timestamped_dir"],
        ),
        (
            "norewatch",
            Runs::Strategy(Strategy::FileWatcherNoRewatch, false),
            &["ok"],
            &["not_rewatched"],
        ),
        (
            "poller",
            Runs::Strategy(Strategy::TimerPoller, false),
            &[],
            &[],
        ),
        ("once", Runs::Strategy(Strategy::ReadOnce, false), &[], &[]),
        (
            "pinned",
            Runs::Strategy(Strategy::TimerPoller, true),
            &["subpath"],
            &["subpath"],
        ),
        // Real watchers: inotifywait on the file, and the notify crate (fdinfo shows
        // it watching the file with IN_DELETE_SELF, never again after it fires).
        (
            "inotifywait",
            args(&["inotifywait", "-m", "-e", "modify,delete_self", "{file}"]),
            &["ok"],
            &["not_rewatched"],
        ),
        (
            "notify",
            args(&[notify, "{file}"]),
            &["ok"],
            &["not_rewatched"],
        ),
    ];
    let bin = &reloadscope_lab::lab_bin().unwrap();
    let mut ctrs = Vec::new();
    for (name, runs, _, _) in &cases {
        let c = match runs {
            Runs::Strategy(s, sub) => lab_container(&node, &pod, &w, name, *s, *sub),
            Runs::Program(cmd) => {
                let spec = ContainerSpec::program(name, w.dir(), KEY, cmd);
                let c = LabContainer::start(bin, &node, &pod, &spec).unwrap();
                // Running is not watching yet: wait for its watch.
                let pid = c.pid;
                wait_for("the program's watch", || async move {
                    let w = reloadscope::node::fdinfo::of_process(Path::new("/proc"), pid, drop)
                        .ok()?;
                    (!w.is_empty()).then_some(())
                })
                .await;
                c
            }
        };
        ctrs.push(c);
    }
    let agent = start_with(reloadscope::agent::Config {
        rewatch_grace: Duration::from_millis(500),
        ..reloadscope_lab::agent_config(&node, true, "127.0.0.1:0".parse().unwrap())
    })
    .await;
    let before: Vec<(&str, &[&str])> = cases.iter().map(|(n, _, b, _)| (*n, *b)).collect();
    let before = expect(&before);
    let m = wait_metrics(agent.addr, "every finding before the update", |m| {
        findings(m) == before
    })
    .await;
    let observed = m.sum(
        "reloadscope_inotify_watches_observed",
        &[("namespace", "shop")],
    );
    assert!(observed >= 8.0, "{observed} watches observed");

    let update = payload(&[(KEY, "revision: 1"), (SUB_KEY, "ca 1")]);
    let swapped_at = match w.write(&update, CallStyle::GoAt).unwrap() {
        reloadscope_lab::WriteOutcome::Written { swapped_at, .. } => swapped_at,
        other => panic!("{other:?}"),
    };
    wait_metrics(agent.addr, "the rewatcher's reload", |m| {
        m.get(
            "reloadscope_consumer_last_reload_timestamp_seconds",
            &[("container", "rewatcher")],
        )
        .is_some()
    })
    .await;
    // An inventory taken once the grace is over, then what /metrics says.
    // The grace runs from the swap.
    let grace_over = swapped_at + Duration::from_millis(500);
    let linter = &agent.shared.linter;
    wait_for("an inventory after the grace", || async {
        let at = linter.lock().unwrap().last_inventory;
        at.is_some_and(|t| t > grace_over).then_some(())
    })
    .await;
    let m = metrics(agent.addr).await;
    let after: Vec<(&str, &[&str])> = cases.iter().map(|(n, _, _, a)| (*n, *a)).collect();
    assert_eq!(findings(&m), expect(&after));
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

/// With the periodic scan an hour away and no container starting, a watch added by a
/// running container is seen when it is added: the probe traces inotify_add_watch.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs root: run cargo xtask test"]
async fn a_watch_added_later_is_seen_when_it_is_added() {
    let (node, pod, w) = shop_volume(VolumeType::ConfigMap, "app-config");
    let go = tempfile::tempdir().unwrap();
    let go = go.path().join("go");
    // Waits for `go` to exist, then watches its file for IN_MODIFY only.
    let script = format!(
        "while [ ! -e '{}' ]; do sleep 0.05; done; exec inotifywait -m -e modify {{file}}",
        go.display()
    );
    let cmd: Vec<OsString> = ["sh", "-c", &script].iter().map(OsString::from).collect();
    let agent = start_with(reloadscope::agent::Config {
        rescan: Some(Duration::from_secs(3600)),
        ..reloadscope_lab::agent_config(&node, true, "127.0.0.1:0".parse().unwrap())
    })
    .await;
    let bin = &reloadscope_lab::lab_bin().unwrap();
    let spec = ContainerSpec::program("late", w.dir(), KEY, &cmd);
    let late = LabContainer::start(bin, &node, &pod, &spec).unwrap();
    wait_metrics(agent.addr, "the new container", |m| {
        m.get("reloadscope_consumer_info", &[("container", "late")])
            .is_some()
    })
    .await;
    // The scans its cgroup woke (at once and a second later) are over once none has
    // run for longer than that second: no scan is due any more.
    let linter = &agent.shared.linter;
    wait_for("the scans of the container's start to be over", || async {
        let at = linter.lock().unwrap().last_inventory?;
        let quiet = at.elapsed().ok()?;
        (quiet > Duration::from_millis(1200)).then_some(())
    })
    .await;
    let m = metrics(agent.addr).await;
    assert!(findings(&m).is_empty(), "no watch yet: {:?}", findings(&m));

    std::fs::write(&go, "").unwrap();
    let m = wait_metrics(agent.addr, "the finding of the watch just added", |m| {
        !findings(m).is_empty()
    })
    .await;
    assert_eq!(findings(&m), expect(&[("late", &["no_delete_self"][..])]));
    agent.stop().await;
    late.stop().unwrap();
}

/// Each (pod, container)'s findings, as /metrics says.
fn pod_findings(m: &Samples) -> Vec<((String, String), BTreeSet<String>)> {
    let mut by: std::collections::BTreeMap<(String, String), BTreeSet<String>> = Default::default();
    for s in m.matching("reloadscope_consumer_watch_findings", &[]) {
        let at = (s.labels["pod"].clone(), s.labels["container"].clone());
        by.entry(at)
            .or_default()
            .insert(s.labels["finding"].clone());
    }
    by.into_iter().collect()
}

fn pod_expect(cases: &[(&str, &str, &str)]) -> Vec<((String, String), BTreeSet<String>)> {
    let mut v: Vec<_> = (cases.iter())
        .map(|(p, c, f)| {
            (
                (p.to_string(), c.to_string()),
                BTreeSet::from([f.to_string()]),
            )
        })
        .collect();
    v.sort();
    v
}

/// `reloadscope inspect`'s findings for `container` of pod `pod`, and their fixes.
fn inspected(node: &LabNode, pod: &str, container: &str) -> (Vec<String>, Vec<String>) {
    let args = reloadscope::inspect::InspectArgs {
        kubelet_roots: vec![node.kubelet_root()],
        pod_logs_dir: node.pod_logs_dir(),
        container_logs_dir: node.container_logs_dir(),
        proc_root: "/proc".into(),
        json: true,
    };
    let found = reloadscope::inspect::inspect(&args);
    let v = (found.report.volumes.iter())
        .find(|v| v.pod == pod)
        .unwrap_or_else(|| panic!("no volume of {pod}: {:?}", found.report));
    let c = (v.consumers.iter())
        .find(|c| c.container == container)
        .unwrap_or_else(|| panic!("no {container} in {pod}: {v:?}"));
    let owned = |s: &[&str]| s.iter().map(|s| s.to_string()).collect();
    (owned(&c.watches), owned(&c.watch_hints))
}

/// The inotify watches of process `pid` on inode `ino`.
fn watching(pid: u32, ino: u64) -> bool {
    let w = reloadscope::node::fdinfo::of_process(Path::new("/proc"), pid, drop).unwrap();
    w.iter().any(|w| w.ino == ino)
}

/// What the real node showed: a subPath mount of a key in one container keeps the old
/// file alive after an update (its bind holds the dentry), so a file re-watcher of that
/// key in another container of the pod never gets `IN_DELETE_SELF` and never reloads;
/// with the subPath mount on another key (the control pod) it reloads. The re-watcher
/// is `pinned_by_subpath` before the update and after it, in /metrics and in
/// `reloadscope inspect`, and `ok` once the subPath container is gone and it has
/// watched the new file.
async fn a_subpath_sibling_pins_the_rewatchers_file(ty: VolumeType) {
    use std::os::unix::fs::MetadataExt;
    let mut node = LabNode::temp().unwrap();
    let data = |rev: u32| {
        payload(&[
            (KEY, &format!("revision: {rev}")),
            (SUB_KEY, &format!("ca {rev}")),
        ])
    };
    let mut vols = Vec::new();
    for name in ["pinned", "control"] {
        let pod = node.add_pod("shop", name).unwrap();
        let w = node.add_volume(&pod, ty, "app-config").unwrap();
        w.write(&data(0), CallStyle::GoAt).unwrap();
        vols.push((pod, w));
    }
    let [(pinned_pod, wp), (control_pod, wc)] = &vols[..] else {
        unreachable!()
    };
    let bin = &reloadscope_lab::lab_bin().unwrap();
    // The pinned pod's subPath container binds the re-watcher's own key.
    let spec = ContainerSpec {
        sub_path: true,
        ..ContainerSpec::new("pinner", wp.dir(), KEY, Strategy::ReadOnce)
    };
    let pinner = LabContainer::start(bin, &node, pinned_pod, &spec).unwrap();
    let rewatcher = lab_container(
        &node,
        pinned_pod,
        wp,
        "rewatcher",
        Strategy::FileRewatcher,
        false,
    );
    // The control's binds another key.
    let c_pinner = lab_container(&node, control_pod, wc, "pinner", Strategy::ReadOnce, true);
    let c_rewatcher = lab_container(
        &node,
        control_pod,
        wc,
        "rewatcher",
        Strategy::FileRewatcher,
        false,
    );
    let old = std::fs::metadata(wp.dir().join(KEY)).unwrap().ino();
    assert!(watching(rewatcher.pid, old));

    let agent = start_with(reloadscope::agent::Config {
        rewatch_grace: Duration::from_millis(500),
        ..reloadscope_lab::agent_config(&node, true, "127.0.0.1:0".parse().unwrap())
    })
    .await;
    let want = |rewatcher: &str| {
        pod_expect(&[
            ("pinned", "rewatcher", rewatcher),
            ("pinned", "pinner", "subpath"),
            ("control", "rewatcher", "ok"),
            ("control", "pinner", "subpath"),
        ])
    };
    wait_metrics(agent.addr, "the findings before the update", |m| {
        pod_findings(m) == want("pinned_by_subpath")
    })
    .await;
    let (found, hints) = inspected(&node, "pinned", "rewatcher");
    assert_eq!(found, ["pinned_by_subpath"]);
    assert!(hints[0].contains("subPath"), "{hints:?}");
    assert_eq!(inspected(&node, "control", "rewatcher").0, ["ok"]);

    // The same update in both pods; the control's re-watcher reloads.
    wp.write(&data(1), CallStyle::GoAt).unwrap();
    let swapped_at = match wc.write(&data(1), CallStyle::GoAt).unwrap() {
        reloadscope_lab::WriteOutcome::Written { swapped_at, .. } => swapped_at,
        other => panic!("{other:?}"),
    };
    let new_head = Ok(b"revision: 1".to_vec());
    wait_for("the control's re-watcher to reread", || async {
        let reads = c_rewatcher.reads().unwrap();
        (reads.len() == 2 && reads[1].head == new_head).then_some(())
    })
    .await;
    // The old file is unlinked (the pinned pod's write removed its data dir before it
    // returned), yet the re-watcher's watch on it stands: the kernel sent no
    // IN_DELETE_SELF, which would have removed it (IN_IGNORED), and it did not reread.
    assert!(std::fs::metadata(wp.dir().join(KEY)).unwrap().ino() != old);
    let root = pinner.mount_root().unwrap().unwrap();
    assert!(root.ends_with("//deleted"), "{root}");
    assert!(
        watching(rewatcher.pid, old),
        "the watch on the old file went"
    );
    assert_eq!(rewatcher.reads().unwrap().len(), 1);

    // An inventory once the grace is over: still pinned, not not_rewatched.
    let grace_over = swapped_at + Duration::from_millis(500);
    let linter = &agent.shared.linter;
    wait_for("an inventory after the grace", || async {
        let at = linter.lock().unwrap().last_inventory;
        at.is_some_and(|t| t > grace_over).then_some(())
    })
    .await;
    assert_eq!(
        pod_findings(&metrics(agent.addr).await),
        want("pinned_by_subpath")
    );
    assert_eq!(
        inspected(&node, "pinned", "rewatcher").0,
        ["pinned_by_subpath"]
    );
    assert_eq!(rewatcher.reads().unwrap().len(), 1);

    // The subPath container gone, the old file goes: IN_DELETE_SELF, a reread of the
    // new data and a watch on it.
    pinner.stop().unwrap();
    wait_for("the pinned re-watcher to reread", || async {
        let reads = rewatcher.reads().unwrap();
        (reads.len() == 2 && reads[1].head == new_head).then_some(())
    })
    .await;
    let gone = |m: &Samples| {
        let mut want = want("ok");
        want.retain(|((p, c), _)| (p.as_str(), c.as_str()) != ("pinned", "pinner"));
        pod_findings(m) == want
    };
    wait_metrics(agent.addr, "the re-watcher ok once unpinned", gone).await;
    agent.stop().await;
    for c in [rewatcher, c_pinner, c_rewatcher] {
        c.stop().unwrap();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs root: run cargo xtask test"]
async fn configmap_rewatcher_pinned_by_a_subpath_sibling() {
    a_subpath_sibling_pins_the_rewatchers_file(VolumeType::ConfigMap).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs root: run cargo xtask test"]
async fn secret_rewatcher_pinned_by_a_subpath_sibling() {
    a_subpath_sibling_pins_the_rewatchers_file(VolumeType::Secret).await;
}
