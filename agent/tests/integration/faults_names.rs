//! Odd names under the kubelet root: spaces and characters the exposition format must
//! escape, non-UTF-8 bytes, 255-byte components, and a volume whose paths come within
//! a few bytes of PATH_MAX. Needs root.

use std::{
    collections::BTreeMap,
    ffi::OsStr,
    net::SocketAddr,
    os::unix::ffi::OsStrExt,
    path::{Path, PathBuf},
};

use crate::support::*;
use reloadscope::node::volumes::VolumeType;
use reloadscope_lab::{AtomicWriter, CallStyle, LabNode, WriteOutcome, payload};

fn write(w: &AtomicWriter, v: &str) {
    let out = w.write(&payload(&[("k", v)]), CallStyle::GoAt).unwrap();
    assert!(matches!(out, WriteOutcome::Written { .. }), "{out:?}");
}

/// `<root>/pods/<uid>/volumes/kubernetes.io~configmap/<name>`, made by hand (the lab
/// only makes names a kubelet would), populated.
fn by_hand(root: &Path, uid: &OsStr, name: &OsStr) -> AtomicWriter {
    let dir = (root.join("pods").join(uid).join("volumes"))
        .join(VolumeType::ConfigMap.plugin_dir())
        .join(name);
    std::fs::create_dir_all(&dir).unwrap();
    let w = AtomicWriter::new(dir);
    write(&w, "v0");
    w
}

/// The longest file path in a volume dir is `<dir>/..<timestamp>.<u32>/k`: at most
/// 35 bytes more. This leaves the volume dir that much under PATH_MAX (4096 with the
/// NUL).
const DEEP_DIR_LEN: usize = 4095 - 35;
const UID: &str = "0b5c7f2e-1a2b-4c3d-8e9f-001122334455";

/// A kubelet root under `base` deep enough that the volume dir `deep` of pod `UID`
/// is exactly `DEEP_DIR_LEN` bytes long.
fn deep_root(base: &Path) -> PathBuf {
    let below = format!(
        "/pods/{UID}/volumes/{}/deep",
        VolumeType::ConfigMap.plugin_dir()
    );
    let want = DEEP_DIR_LEN - below.len();
    let mut root = base.join("deep");
    while root.as_os_str().len() < want {
        let room = want - root.as_os_str().len() - 1;
        root.push("d".repeat(room.min(255)));
    }
    assert_eq!(root.as_os_str().len(), want);
    root
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs root: run cargo xtask test"]
async fn odd_names_are_counted_or_refused_out_loud() {
    let panics0 = panics();
    let logs = Logs::capture();
    let mut node = LabNode::temp().unwrap();
    let pod = node.add_pod("ns", "p").unwrap();
    let root = node.kubelet_root();
    let long_ascii = "v".repeat(255);
    let long_utf8 = format!("{}x", "é".repeat(127));
    assert_eq!(long_utf8.len(), 255);
    // Names with a volume series, by their label value.
    let mut counted: BTreeMap<String, AtomicWriter> = BTreeMap::new();
    for name in [
        "ok-cfg",
        "with space",
        "q\"uote\\back",
        "new\nline",
        &long_ascii,
        &long_utf8,
    ] {
        let w = node.add_volume(&pod, VolumeType::ConfigMap, name).unwrap();
        write(&w, "v0");
        counted.insert(name.to_owned(), w);
    }
    let spaced = by_hand(&root, OsStr::new("uid with space"), OsStr::new("cfg-s"));
    counted.insert("cfg-s".to_owned(), spaced);
    let long_uid = "u".repeat(255);
    let w = by_hand(&root, OsStr::new(&long_uid), OsStr::new("cfg-l"));
    counted.insert("cfg-l".to_owned(), w);
    // Refused: a non-UTF-8 volume name, and a pod uid.
    let bad_vol = by_hand(
        &root,
        OsStr::new(&pod.uid),
        OsStr::from_bytes(b"bad\xffname"),
    );
    let bad_pod = by_hand(&root, OsStr::from_bytes(b"uid\xfe"), OsStr::new("cfg-b"));
    // Paths near PATH_MAX, under a second root.
    let deep = deep_root(node.base());
    let deep_w = by_hand(&deep, OsStr::new(UID), OsStr::new("deep"));
    assert_eq!(deep_w.dir().as_os_str().len(), DEEP_DIR_LEN);

    let cfg = reloadscope::agent::Config {
        kubelet_roots: vec![root.clone(), deep.clone()],
        ..reloadscope_lab::agent_config(&node, true, SocketAddr::from(([127, 0, 0, 1], 0)))
    };
    let agent = start_with(cfg).await;
    for w in counted.values().chain([&deep_w, &bad_vol, &bad_pod]) {
        write(w, "v1");
    }
    let n = counted.len() as f64;
    // The probe keeps 512 bytes of a path (README, Limits): the deep volume's swap
    // is inotify's alone, a gap of the probe.
    let m = wait_metrics(agent.addr, "every update", |m| {
        detections(m, "inotify") >= n + 1.0
            && detections(m, "ebpf") >= n
            && m.get(
                "reloadscope_update_detection_gaps_total",
                &[("missed_by", "ebpf")],
            ) == Some(1.0)
    })
    .await;
    for name in counted.keys() {
        assert_eq!(
            m.get("reloadscope_volume_updates_total", &[("volume", name)]),
            Some(1.0),
            "{name:?}"
        );
    }
    assert_eq!(
        m.get("reloadscope_volume_updates_total", &[("volume", "deep")]),
        Some(1.0)
    );
    assert_eq!(
        m.get(
            "reloadscope_volume_updates_total",
            &[("pod", "uid with space")]
        ),
        Some(1.0)
    );
    assert_eq!(m.sum("reloadscope_volume_updates_total", &[]), n + 1.0);
    assert_eq!(m.sum("reloadscope_watched_volumes", &[]), n + 1.0);
    assert_eq!(detections(&m, "inotify"), n + 1.0);
    assert_eq!(detections(&m, "ebpf"), n);
    assert_eq!(
        m.get(
            "reloadscope_update_detection_gaps_total",
            &[("missed_by", "inotify")]
        ),
        Some(0.0)
    );
    assert!(kernel_watches(deep_w.dir()));
    for w in [&bad_vol, &bad_pod] {
        assert!(!kernel_watches(w.dir()), "{:?}", w.dir());
    }

    // Each refusal says so once, naming the path.
    let warnings = logs.warnings();
    for (what, name) in [("volume", r"/bad\xffname"), ("pod", r"/uid\xfe")] {
        let said: Vec<String> = (warnings.iter())
            .map(|l| serde_json::from_str::<serde_json::Value>(l).unwrap())
            .filter(|v| v["message"] == format!("{what} not followed"))
            .map(|v| v["error"].as_str().unwrap_or_default().to_lowercase())
            .filter(|e| e.contains(name))
            .collect();
        assert_eq!(said.len(), 1, "{what}: {warnings:#?}");
        assert!(said[0].contains("not valid utf-8"), "{said:?}");
    }
    assert_eq!(warnings.len(), 2, "{warnings:#?}");

    // Still counting.
    write(&counted["ok-cfg"], "v2");
    wait_metrics(agent.addr, "one more update", |m| {
        m.get("reloadscope_volume_updates_total", &[("volume", "ok-cfg")]) == Some(2.0)
    })
    .await;
    assert_eq!(panics(), panics0, "the agent panicked");
    agent.stop().await;
}
