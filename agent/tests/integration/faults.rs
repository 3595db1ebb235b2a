//! Faults the agent must survive with its counts intact: an inotify queue overflow and
//! a full probe ring buffer. Needs root. (More faults: faults_tree.rs, faults_names.rs,
//! faults_process.rs.)
//!
//! Stalls are real: a test on a current-thread runtime that does not await runs
//! nothing of the in-process agent (probe reader, inotify reader, state loop), exactly
//! as a starved agent would not, while the kernel queues (or drops) what it sees.

use std::{
    collections::{BTreeMap, BTreeSet},
    net::SocketAddr,
    time::{SystemTime, UNIX_EPOCH},
};

use crate::support::*;
use reloadscope::{agent::Running, node::volumes::VolumeType};
use reloadscope_lab::{
    self, AtomicWriter, CallStyle, LabNode, WriteOutcome, payload, scrape::Samples,
};

const MAX_QUEUED: &str = "/proc/sys/fs/inotify/max_queued_events";

/// A sysctl set for the test, restored on drop (panics included).
struct Sysctl {
    path: &'static str,
    old: String,
}

impl Sysctl {
    fn set(path: &'static str, value: &str) -> Sysctl {
        let old = std::fs::read_to_string(path).unwrap().trim().to_owned();
        std::fs::write(path, value).unwrap();
        Sysctl { path, old }
    }
}

impl Drop for Sysctl {
    fn drop(&mut self) {
        std::fs::write(self.path, &self.old).expect("restore the sysctl");
    }
}

fn write(w: &AtomicWriter, v: &str) -> SystemTime {
    match w.write(&payload(&[("k", v)]), CallStyle::GoAt).unwrap() {
        WriteOutcome::Written { swapped_at, .. } => swapped_at,
        other => panic!("expected a write, got {other:?}"),
    }
}

fn updates(m: &Samples, volume: &str) -> Option<f64> {
    m.get("reloadscope_volume_updates_total", &[("volume", volume)])
}

fn gaps(m: &Samples, missed_by: &str) -> f64 {
    m.sum(
        "reloadscope_update_detection_gaps_total",
        &[("missed_by", missed_by)],
    )
}

/// The volume names with an update series.
fn known(m: &Samples) -> BTreeSet<String> {
    m.matching("reloadscope_volume_updates_total", &[])
        .map(|s| s.labels["volume"].clone())
        .collect()
}

/// One volume of each type on a pod named `pod`, written once (initial population).
fn pod_volumes(node: &mut LabNode, pod: &str) -> Vec<(String, AtomicWriter)> {
    let p = node.add_pod("ns", pod).unwrap();
    VolumeType::ALL
        .into_iter()
        .map(|ty| {
            let name = format!("{pod}-{}", ty.label().replace('_', "-"));
            let w = node.add_volume(&p, ty, &name).unwrap();
            write(&w, "v0");
            (name, w)
        })
        .collect()
}

const BURST: usize = 10;

/// The agent with a 16-event inotify queue: a burst while it is stalled overflows it.
async fn start_with_small_queue(node: &LabNode, ebpf: bool) -> Running {
    let queue = Sysctl::set(MAX_QUEUED, "16");
    let agent = start(node, ebpf).await;
    // An inotify instance keeps the limit it was created with.
    drop(queue);
    agent
}

/// While the agent is stalled: `BURST` updates of every volume of `kept`, pod `doomed`
/// removed, pod `late` added with one volume populated. Returns the last swap times.
fn overflow_burst(
    node: &mut LabNode,
    kept: &[(String, AtomicWriter)],
    doomed: &reloadscope_lab::LabPod,
) -> (BTreeMap<String, SystemTime>, AtomicWriter) {
    let mut last = BTreeMap::new();
    for i in 1..=BURST {
        for (name, w) in kept {
            last.insert(name.clone(), write(w, &format!("v{i}")));
        }
    }
    node.remove_pod(doomed).unwrap();
    let late = node.add_pod("ns", "late").unwrap();
    let w = node
        .add_volume(&late, VolumeType::ConfigMap, "late-cfg")
        .unwrap();
    write(&w, "v0");
    (last, w)
}

/// The walker's own watch count comes to agree with the kernel's (no watch of a
/// removed pod is still counted).
async fn watches_agree(agent: &Running, node: &LabNode) {
    let pods = node.kubelet_root().join("pods");
    wait_for("the walker's watch count to be the kernel's", || {
        let counted = (agent.shared.watches).load(std::sync::atomic::Ordering::Relaxed);
        let kernel = kernel_group_watches(&pods);
        async move { (kernel > 0 && counted == kernel).then_some(()) }
    })
    .await;
}

// current_thread: see the module docs.
#[tokio::test]
#[ignore = "needs root: run cargo xtask test"]
async fn inotify_overflow_rescans_and_the_probe_keeps_every_update() {
    let panics0 = panics();
    let mut node = LabNode::temp().unwrap();
    let kept = pod_volumes(&mut node, "kept");
    let doomed = node.add_pod("ns", "doomed").unwrap();
    let dw = node
        .add_volume(&doomed, VolumeType::Secret, "doomed-tls")
        .unwrap();
    write(&dw, "v0");
    let agent = start_with_small_queue(&node, true).await;
    wait_metrics(agent.addr, "every volume", |m| known(m).len() == 5).await;

    // Stalled from here to the next await.
    let (_, late) = overflow_burst(&mut node, &kept, &doomed);
    let total = (kept.len() * BURST) as f64;
    let m = wait_metrics(
        agent.addr,
        "the overflow, the rescan and every update",
        |m| {
            m.get("reloadscope_inotify_queue_overflows_total", &[]) == Some(1.0)
                && detections(m, "ebpf") >= total
                && gaps(m, "inotify") + detections(m, "inotify") >= total
        },
    )
    .await;
    let want: BTreeSet<String> = kept
        .iter()
        .map(|(n, _)| n.clone())
        .chain(["late-cfg".to_owned()])
        .collect();
    assert_eq!(known(&m), want, "the volumes on the node, no more, no less");
    assert_eq!(m.sum("reloadscope_watched_volumes", &[]), 5.0);
    // The probe saw every swap; inotify saw those queued before the overflow, and the
    // rescan the last one of each volume. Each update counts once.
    for (name, _) in &kept {
        assert_eq!(updates(&m, name), Some(BURST as f64), "{name}");
    }
    assert_eq!(updates(&m, "late-cfg"), Some(0.0), "its initial population");
    assert_eq!(detections(&m, "ebpf"), total);
    let seen = detections(&m, "inotify");
    assert!(
        seen < total,
        "inotify saw all {total} updates: no overflow?"
    );
    assert_eq!(gaps(&m, "inotify"), total - seen);
    assert_eq!(gaps(&m, "ebpf"), 0.0);
    watches_agree(&agent, &node).await;

    // Every watch still works: one more update of each volume, seen by both sources.
    for (_, w) in kept.iter().chain([&("late-cfg".to_owned(), late)]) {
        write(w, "after");
    }
    let m = wait_metrics(agent.addr, "the updates after the rescan", |m| {
        detections(m, "inotify") >= seen + 5.0 && detections(m, "ebpf") >= total + 5.0
    })
    .await;
    for (name, _) in &kept {
        assert_eq!(updates(&m, name), Some(BURST as f64 + 1.0), "{name}");
    }
    assert_eq!(updates(&m, "late-cfg"), Some(1.0));
    assert_eq!(
        m.get("reloadscope_inotify_queue_overflows_total", &[]),
        Some(1.0)
    );
    watches_agree(&agent, &node).await;
    assert_eq!(panics(), panics0, "the agent panicked");
    agent.stop().await;
}

/// With inotify alone the swaps an overflow hid cannot be counted one by one: a volume
/// counts the updates whose events were queued before the overflow, plus one when the
/// rescan finds its `..data` changed. What holds: every volume is known, each changed
/// one counted at least once and stamped after its last swap, and counting goes on.
#[tokio::test]
#[ignore = "needs root: run cargo xtask test"]
async fn inotify_alone_after_an_overflow_knows_every_volume_and_its_latest_swap() {
    let panics0 = panics();
    let mut node = LabNode::temp().unwrap();
    let kept = pod_volumes(&mut node, "kept");
    let doomed = node.add_pod("ns", "doomed").unwrap();
    let dw = node
        .add_volume(&doomed, VolumeType::Secret, "doomed-tls")
        .unwrap();
    write(&dw, "v0");
    let agent = start_with_small_queue(&node, false).await;
    wait_metrics(agent.addr, "every volume", |m| known(m).len() == 5).await;

    // Stalled from here to the next await.
    let (last, late) = overflow_burst(&mut node, &kept, &doomed);
    let stamped_after_last_swap = |m: &Samples| {
        last.iter().all(|(name, at)| {
            let want = at.duration_since(UNIX_EPOCH).unwrap().as_secs_f64();
            m.get(
                "reloadscope_volume_last_update_timestamp_seconds",
                &[("volume", name)],
            )
            .is_some_and(|got| got >= want)
        })
    };
    let m = wait_metrics(agent.addr, "the overflow and the rescan", |m| {
        m.get("reloadscope_inotify_queue_overflows_total", &[]) == Some(1.0)
            && known(m).len() == 5
            && stamped_after_last_swap(m)
    })
    .await;
    let want: BTreeSet<String> = kept
        .iter()
        .map(|(n, _)| n.clone())
        .chain(["late-cfg".to_owned()])
        .collect();
    assert_eq!(known(&m), want);
    let counted: Vec<f64> = kept.iter().map(|(n, _)| updates(&m, n).unwrap()).collect();
    println!("{BURST} updates of each volume made, inotify alone counted {counted:?}");
    assert!(counted.iter().all(|&c| (1.0..=BURST as f64).contains(&c)));
    let sum: f64 = counted.iter().sum();
    assert!(
        sum < (kept.len() * BURST) as f64,
        "no update hidden: no overflow?"
    );
    assert_eq!(detections(&m, "inotify"), sum);
    assert_eq!(updates(&m, "late-cfg"), Some(0.0));
    assert_eq!(m.sum("reloadscope_update_detection_gaps_total", &[]), 0.0);
    watches_agree(&agent, &node).await;

    for (_, w) in kept.iter().chain([&("late-cfg".to_owned(), late)]) {
        write(w, "after");
    }
    let m = wait_metrics(agent.addr, "the updates after the rescan", |m| {
        detections(m, "inotify") >= sum + 5.0
    })
    .await;
    for ((name, _), c) in kept.iter().zip(&counted) {
        assert_eq!(updates(&m, name), Some(c + 1.0), "{name}");
    }
    assert_eq!(updates(&m, "late-cfg"), Some(1.0));
    assert_eq!(detections(&m, "inotify"), sum + 5.0);
    watches_agree(&agent, &node).await;
    assert_eq!(panics(), panics0, "the agent panicked");
    agent.stop().await;
}

/// A one-page ring holds three swap records: a burst while the reader is stalled
/// overflows it. The probe sees every process's swaps, so records of other writers
/// on the machine may share the ring: the bounds below allow for them.
#[tokio::test]
#[ignore = "needs root: run cargo xtask test"]
async fn a_full_ring_loses_probe_events_and_inotify_records_every_update() {
    let panics0 = panics();
    let mut node = LabNode::temp().unwrap();
    let vols = pod_volumes(&mut node, "p");
    let cfg = reloadscope::agent::Config {
        ring_bytes: 4096,
        ..reloadscope_lab::agent_config(&node, true, SocketAddr::from(([127, 0, 0, 1], 0)))
    };
    let agent = start_with(cfg).await;
    let stats = || {
        let p = agent.shared.probe.lock().unwrap();
        let s = p.as_ref().unwrap().stats();
        (s.emitted, s.lost)
    };
    let (emitted0, lost0) = stats();

    // Stalled from here to the next await: nothing drains the ring.
    for i in 1..=BURST {
        for (_, w) in &vols {
            write(w, &format!("v{i}"));
        }
    }
    let (emitted1, lost1) = stats();
    let total = (vols.len() * BURST) as f64;
    // Each update is two calls the probe keeps (symlinkat ..data_tmp, renameat ..data).
    let kept = 2 * vols.len() as u64 * BURST as u64;
    assert!((emitted1 - emitted0) + (lost1 - lost0) >= kept);
    assert!(emitted1 - emitted0 <= 3, "a 4096-byte ring holds 3 records");
    let m = wait_metrics(agent.addr, "inotify's updates and the probe's gaps", |m| {
        detections(m, "inotify") >= total && detections(m, "ebpf") + gaps(m, "ebpf") >= total
    })
    .await;
    let lost = m.get("reloadscope_ebpf_events_lost_total", &[]).unwrap();
    assert!(
        lost >= (kept - 3) as f64 && lost <= stats().1 as f64,
        "{lost}"
    );
    for (name, _) in &vols {
        assert_eq!(updates(&m, name), Some(BURST as f64), "{name}");
    }
    let ebpf = detections(&m, "ebpf");
    println!("ring of 4096 bytes: {lost} records lost, the probe reported {ebpf} of {total}");
    assert!(ebpf <= 2.0);
    assert_eq!(detections(&m, "inotify"), total);
    assert_eq!(gaps(&m, "ebpf"), total - ebpf);
    assert_eq!(gaps(&m, "inotify"), 0.0);

    // With the reader running, the ring takes the next updates again: one at a time,
    // each waited for (a foreign burst may still fill the ring for one of them).
    for (i, (_, w)) in vols.iter().enumerate() {
        write(w, "after");
        let n = 1.0 + i as f64;
        wait_metrics(agent.addr, "the update from both sources, or a gap", |m| {
            detections(m, "inotify") >= total + n
                && detections(m, "ebpf") + gaps(m, "ebpf") >= total + n
        })
        .await;
    }
    let m = metrics(agent.addr).await;
    assert!(detections(&m, "ebpf") > ebpf, "the probe reports again");
    assert_eq!(detections(&m, "ebpf") + gaps(&m, "ebpf"), total + 4.0);
    assert_eq!(gaps(&m, "inotify"), 0.0);
    assert_eq!(panics(), panics0, "the agent panicked");
    agent.stop().await;
}
