//! Faults of the kubelet tree under the agent: pods removed before or while it walks
//! them, a kubelet root that appears late, symlinks, files and loops where dirs should
//! be. Through all of them an ordinary volume elsewhere keeps counting. Needs root.

use std::{
    collections::BTreeSet,
    net::SocketAddr,
    os::unix::fs::symlink,
    path::{Path, PathBuf},
};

use crate::support::*;
use reloadscope::{agent::Running, node::volumes::VolumeType};
use reloadscope_lab::{
    self, AtomicWriter, CallStyle, LabNode, WriteOutcome, payload, scrape::Samples,
};

fn write(w: &AtomicWriter, v: &str) {
    let out = w.write(&payload(&[("k", v)]), CallStyle::GoAt).unwrap();
    assert!(matches!(out, WriteOutcome::Written { .. }), "{out:?}");
}

/// The volume names with an update series.
fn known(m: &Samples) -> BTreeSet<String> {
    m.matching("reloadscope_volume_updates_total", &[])
        .map(|s| s.labels["volume"].clone())
        .collect()
}

/// An ordinary pod `ok` with a ConfigMap volume `ok-cfg`, populated.
fn ordinary(node: &mut LabNode) -> AtomicWriter {
    let pod = node.add_pod("ns", "ok").unwrap();
    let w = node
        .add_volume(&pod, VolumeType::ConfigMap, "ok-cfg")
        .unwrap();
    write(&w, "v0");
    w
}

/// Updates `ok-cfg` and waits for it to count `n` updates in all, from both sources.
async fn still_counts(agent: &Running, ok: &AtomicWriter, n: f64) -> Samples {
    write(ok, &format!("v{n}"));
    let m = wait_metrics(agent.addr, "the ordinary volume's update", |m| {
        m.get("reloadscope_volume_updates_total", &[("volume", "ok-cfg")]) == Some(n)
            && m.get(
                "reloadscope_volume_last_update_timestamp_seconds",
                &[("volume", "ok-cfg")],
            )
            .is_some()
    })
    .await;
    wait_metrics(agent.addr, "both sources", |m| {
        detections(m, "ebpf") >= n && detections(m, "inotify") >= n
    })
    .await;
    m
}

/// The walker's watches, as the kernel has them.
fn walker_watches(node: &LabNode) -> usize {
    kernel_group_watches(&node.kubelet_root().join("pods"))
}

/// No watch leaks: the walker holds `want` watches, and counts as many.
async fn watches_settle(agent: &Running, node: &LabNode, want: usize) {
    wait_for("the walker's watches", || async {
        let counted = agent
            .shared
            .watches
            .load(std::sync::atomic::Ordering::Relaxed);
        (walker_watches(node) == want && counted == want).then_some(())
    })
    .await;
}

/// Pods created and removed while the agent is stalled: it is told of each one, and
/// walks it only after it is gone. current_thread: nothing of the agent runs until
/// the test awaits.
#[tokio::test]
#[ignore = "needs root: run cargo xtask test"]
async fn pods_removed_before_the_agent_walks_them_leave_nothing() {
    let panics0 = panics();
    let logs = Logs::capture();
    let mut node = LabNode::temp().unwrap();
    let ok = ordinary(&mut node);
    let agent = start(&node, true).await;
    let idle = walker_watches(&node);

    for i in 0..10 {
        let p = node.add_pod("ns", &format!("gone-{i}")).unwrap();
        for ty in VolumeType::ALL {
            let w = node.add_volume(&p, ty, "v").unwrap();
            write(&w, "v0");
            write(&w, "v1");
        }
        node.remove_pod(&p).unwrap();
    }
    // Half torn down: the pod dir stays, its volumes dir is gone.
    let half = node.add_pod("ns", "half").unwrap();
    let w = node.add_volume(&half, VolumeType::ConfigMap, "v").unwrap();
    write(&w, "v0");
    std::fs::remove_dir_all(node.pod_dir(&half).join("volumes")).unwrap();

    let m = still_counts(&agent, &ok, 1.0).await;
    assert_eq!(known(&m), BTreeSet::from(["ok-cfg".to_owned()]));
    assert_eq!(m.sum("reloadscope_watched_volumes", &[]), 1.0);
    // The half pod's dir is watched for a volumes dir to come.
    watches_settle(&agent, &node, idle + 1).await;
    assert!(kernel_watches(&node.pod_dir(&half)));
    assert_eq!(logs.warnings(), Vec::<String>::new());
    assert_eq!(panics(), panics0, "the agent panicked");
    agent.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs root: run cargo xtask test"]
async fn a_hundred_pods_churned_while_the_agent_runs_leave_nothing() {
    let panics0 = panics();
    let logs = Logs::capture();
    let mut node = LabNode::temp().unwrap();
    let ok = ordinary(&mut node);
    let agent = start(&node, true).await;
    let idle = walker_watches(&node);
    let mut made = 0.0;
    for i in 0..100 {
        let p = node.add_pod("churn", &format!("p{i}")).unwrap();
        let cfg = node.add_volume(&p, VolumeType::ConfigMap, "cfg").unwrap();
        let tls = node.add_volume(&p, VolumeType::Secret, "tls").unwrap();
        for w in [&cfg, &tls] {
            write(w, "v0");
            write(w, "v1");
        }
        node.remove_pod(&p).unwrap();
        if i % 10 == 0 {
            write(&ok, &format!("churn-{i}"));
            made += 1.0;
        }
    }
    let m = wait_metrics(agent.addr, "every churned pod forgotten", |m| {
        m.sum("reloadscope_watched_volumes", &[]) == 1.0
            && m.get("reloadscope_volume_updates_total", &[("volume", "ok-cfg")]) == Some(made)
    })
    .await;
    assert_eq!(known(&m), BTreeSet::from(["ok-cfg".to_owned()]));
    still_counts(&agent, &ok, made + 1.0).await;
    watches_settle(&agent, &node, idle).await;
    // The one warning a removal race gives: opens/exact.rs logs a tmpfs volume gone before
    // its fanotify mark at WARN level (reported; not a fault of the walk).
    let unexpected: Vec<String> = (logs.warnings().into_iter())
        .filter(|l| {
            !(l.contains("cannot mark volume for opens") && l.contains("No such file or directory"))
        })
        .collect();
    assert_eq!(unexpected, Vec::<String>::new());
    assert_eq!(panics(), panics0, "the agent panicked");
    agent.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs root: run cargo xtask test"]
async fn a_kubelet_root_that_appears_later_is_followed() {
    let panics0 = panics();
    let logs = Logs::capture();
    let mut node = LabNode::temp().unwrap();
    let ok = ordinary(&mut node);
    // Not there yet, nor its parent.
    let later = node.base().join("later/node");
    let cfg = reloadscope::agent::Config {
        kubelet_roots: vec![node.kubelet_root(), later.join("kubelet")],
        ..reloadscope_lab::agent_config(&node, true, SocketAddr::from(([127, 0, 0, 1], 0)))
    };
    let agent = start_with(cfg).await;
    let waiting: Vec<String> = (logs.lines().into_iter())
        .filter(|l| l.contains("does not exist yet"))
        .collect();
    assert_eq!(waiting.len(), 1, "{:#?}", logs.lines());
    assert!(waiting[0].contains("later/node/kubelet"), "{waiting:?}");

    let mut late = LabNode::create(&later).unwrap();
    let pod = late.add_pod("ns", "late").unwrap();
    let mut vols = Vec::new();
    for ty in [VolumeType::ConfigMap, VolumeType::Secret] {
        let w = late
            .add_volume(&pod, ty, &format!("late-{}", ty.label()))
            .unwrap();
        write(&w, "v0");
        vols.push(w);
    }
    for w in &vols {
        let dir = w.dir().to_owned();
        wait_for("the late root's volume to be watched", || {
            let dir = dir.clone();
            async move { kernel_watches(&dir).then_some(()) }
        })
        .await;
    }
    for w in &vols {
        write(w, "v1");
    }
    let m = wait_metrics(agent.addr, "the late root's updates", |m| {
        detections(m, "ebpf") >= 2.0 && detections(m, "inotify") >= 2.0
    })
    .await;
    for ty in ["configmap", "secret"] {
        let v = format!("late-{ty}");
        assert_eq!(
            m.get("reloadscope_volume_updates_total", &[("volume", &v)]),
            Some(1.0),
            "{v}"
        );
    }
    let m = still_counts(&agent, &ok, 1.0).await;
    assert_eq!(m.sum("reloadscope_update_detection_gaps_total", &[]), 0.0);
    assert_eq!(logs.warnings(), Vec::<String>::new());
    assert_eq!(panics(), panics0, "the agent panicked");
    agent.stop().await;
    drop(late);
}

/// A volume-like dir (`..data`, data dir, user-visible link) at `dir`, outside the
/// kubelet root.
fn volume_like(dir: &Path) -> AtomicWriter {
    std::fs::create_dir_all(dir).unwrap();
    let w = AtomicWriter::new(dir.to_owned());
    write(&w, "v0");
    w
}

/// Whether some WARN line names `path` and says it was not followed.
fn refused(warnings: &[String], path: &Path) -> bool {
    let p = path.to_string_lossy();
    warnings
        .iter()
        .any(|l| l.contains(&*p) && l.contains("not followed"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs root: run cargo xtask test"]
async fn symlinks_files_and_loops_in_the_tree_are_not_followed() {
    let panics0 = panics();
    let logs = Logs::capture();
    let mut node = LabNode::temp().unwrap();
    let ok = ordinary(&mut node);
    let outside = node.base().join("outside");
    let pods = node.kubelet_root().join("pods");
    let cm = VolumeType::ConfigMap.plugin_dir();
    // Things planted before the agent starts, each pointing out of the kubelet root.
    let out_vol = volume_like(&outside.join("vol"));
    let out_pod = outside.join("pod");
    let out_pod_vol = volume_like(&out_pod.join("volumes").join(cm).join("cfg"));
    let out_plugin = outside.join("plugin");
    let out_plugin_vol = volume_like(&out_plugin.join("vol2"));
    let p = node.add_pod("ns", "p").unwrap();
    let plugins = node.pod_dir(&p).join("volumes");
    std::fs::create_dir_all(plugins.join(cm)).unwrap();
    let mut planted = vec![
        (out_vol.dir().to_owned(), plugins.join(cm).join("planted")),
        (
            out_pod.clone(),
            pods.join("00000000-0000-4000-8000-00000000e5c1"),
        ),
        (
            out_plugin.clone(),
            plugins.join(VolumeType::Secret.plugin_dir()),
        ),
        // Loops: onto itself, a pair, back up to the root, a volume onto its plugin dir.
        (PathBuf::from("loop"), pods.join("loop")),
        (PathBuf::from("l2"), pods.join("l1")),
        (PathBuf::from("l1"), pods.join("l2")),
        (PathBuf::from(".."), pods.join("up")),
        (PathBuf::from("."), plugins.join(cm).join("self")),
    ];
    for (target, link) in &planted {
        symlink(target, link).unwrap();
    }
    let victim = node
        .add_volume(&p, VolumeType::ConfigMap, "victim")
        .unwrap();
    write(&victim, "v0");
    let gone = node
        .add_volume(&p, VolumeType::ConfigMap, "as-file")
        .unwrap();
    write(&gone, "v0");
    let agent = start(&node, true).await;
    wait_metrics(agent.addr, "the real volumes", |m| {
        known(m) == BTreeSet::from(["ok-cfg", "victim", "as-file"].map(String::from))
    })
    .await;

    // Replaced while watched: a volume dir by a symlink out, another by a file; and a
    // pod dir that is a symlink out appears.
    std::fs::remove_dir_all(victim.dir()).unwrap();
    symlink(out_vol.dir(), victim.dir()).unwrap();
    std::fs::remove_dir_all(gone.dir()).unwrap();
    std::fs::write(gone.dir(), "not a dir").unwrap();
    let out_pod2 = outside.join("pod2");
    let out_pod2_vol = volume_like(&out_pod2.join("volumes").join(cm).join("cfg2"));
    let late_link = pods.join("00000000-0000-4000-8000-00000000e5c2");
    symlink(&out_pod2, &late_link).unwrap();
    planted.push((out_vol.dir().to_owned(), victim.dir().to_owned()));
    planted.push((out_pod2.clone(), late_link.clone()));
    wait_metrics(agent.addr, "the replaced volumes gone", |m| {
        known(m) == BTreeSet::from(["ok-cfg".to_owned()])
    })
    .await;
    // Updates outside, one of them written through the planted pod link.
    for w in [&out_vol, &out_pod_vol, &out_plugin_vol, &out_pod2_vol] {
        write(w, "v1");
    }
    let through = AtomicWriter::new(late_link.join("volumes").join(cm).join("cfg2"));
    write(&through, "v2");
    let m = still_counts(&agent, &ok, 1.0).await;
    assert_eq!(known(&m), BTreeSet::from(["ok-cfg".to_owned()]));
    assert_eq!(m.sum("reloadscope_watched_volumes", &[]), 1.0);
    let mut escaped = vec![outside.clone()];
    for w in [&out_vol, &out_pod_vol, &out_plugin_vol, &out_pod2_vol] {
        escaped.extend(
            w.dir()
                .ancestors()
                .take_while(|a| a.starts_with(&outside))
                .map(Path::to_owned),
        );
    }
    for dir in &escaped {
        assert!(
            !kernel_watches(dir),
            "watch outside the kubelet root: {dir:?}"
        );
    }
    let warnings = logs.warnings();
    for (_, link) in &planted {
        assert!(
            refused(&warnings, link),
            "no warning for {link:?}:\n{warnings:#?}"
        );
    }
    assert!(refused(&warnings, gone.dir()), "{warnings:#?}");
    assert_eq!(panics(), panics0, "the agent panicked");
    agent.stop().await;
}

/// `pods` pods of 5 ConfigMap volumes (on disk: no mount each), populated.
fn disk_pods(node: &mut LabNode, prefix: &str, pods: usize) -> Vec<AtomicWriter> {
    let mut out = Vec::new();
    for i in 0..pods {
        let pod = node.add_pod("ns", &format!("{prefix}{i}")).unwrap();
        for j in 0..5 {
            let w = node
                .add_volume(&pod, VolumeType::ConfigMap, &format!("v{j}"))
                .unwrap();
            write(&w, "v0");
            out.push(w);
        }
    }
    out
}

/// CPU seconds of process `pid` so far (utime + stime).
fn cpu_seconds(pid: u32) -> f64 {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap();
    let rest = &stat[stat.rfind(')').unwrap() + 2..];
    let f: Vec<u64> = (rest.split_whitespace())
        .map(|x| x.parse().unwrap_or(0))
        .collect();
    // SAFETY: sysconf has no preconditions.
    let hz = unsafe { libc::sysconf(libc::_SC_CLK_TCK) } as f64;
    (f[11] + f[12]) as f64 / hz
}

/// The pods dir of 10,000 volumes removed (as `rm -rf` does: leaves first) and made
/// again with 100 pods: the agent forgets the old tree in time linear in it, follows
/// the new pods at once, and counts every update of theirs.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs root: run cargo xtask test"]
async fn a_pods_dir_of_10000_volumes_removed_and_remade_loses_nothing() {
    let mut node = LabNode::temp().unwrap();
    let old = disk_pods(&mut node, "old", 2000);
    assert_eq!(old.len(), 10_000);
    let port = free_port();
    let addr = SocketAddr::from(([127, 0, 0, 1], port));
    let mut cmd = agent_command(&node, &addr.to_string(), &[]);
    cmd.args(["--probe", "off", "--no-reloads", "--no-kube"])
        .stderr(std::process::Stdio::inherit());
    let mut child = cmd.spawn().unwrap();
    let pid = child.id();
    let result = async {
        wait_ready(addr).await;
        wait_metrics(addr, "the 10,000 volumes", |m| {
            m.sum("reloadscope_watched_volumes", &[]) == 10_000.0
        })
        .await;
        let (cpu0, t0) = (cpu_seconds(pid), std::time::Instant::now());
        std::fs::remove_dir_all(node.kubelet_root().join("pods")).unwrap();
        let new = disk_pods(&mut node, "new", 100);
        let m = wait_metrics(addr, "only the 500 new volumes", |m| {
            m.sum("reloadscope_watched_volumes", &[]) == 500.0
        })
        .await;
        let (took, cpu) = (t0.elapsed(), cpu_seconds(pid) - cpu0);
        let overflows = m.get("reloadscope_inotify_queue_overflows_total", &[]);
        println!(
            "10,000 volumes removed, 500 made: followed after {took:?}, agent CPU {cpu:.2} s, \
             overflows {overflows:?}"
        );
        // Debug build, 2 cores: 1.4 s of CPU; 22 s when forgetting a dir scanned the
        // whole tree.
        assert!(cpu < 5.0, "{cpu} s of CPU to forget 10,000 volumes");
        assert_eq!(m.sum("reloadscope_unwatched_paths", &[]), 0.0);
        for w in &new {
            write(w, "v1");
        }
        let m = wait_metrics(addr, "the 500 updates", |m| {
            m.sum("reloadscope_volume_updates_total", &[]) == 500.0
        })
        .await;
        assert_eq!(m.sum("reloadscope_watched_volumes", &[]), 500.0);
        drop(old);
    }
    .await;
    // SAFETY: our child's pid.
    unsafe { libc::kill(pid as i32, libc::SIGTERM) };
    let status = blocking(move || child.wait().unwrap()).await;
    assert!(status.success(), "{status:?}");
    result
}
