//! The walker against real directories: roots appearing later, symlinks, swaps read
//! late, overflow rescans, pod-log dir names.

use super::*;

fn found(rx: &mut crate::events::Receiver) -> Vec<String> {
    let mut names = Vec::new();
    while let Ok(ev) = rx.try_recv() {
        if let Event::VolumeFound { key, .. } = ev {
            names.push(key.name);
        }
    }
    names
}

/// A root missing at start, created later, removed and created again: followed
/// each time it is there.
#[tokio::test]
async fn a_root_that_appears_later_is_followed() {
    let base = tempfile::tempdir().unwrap();
    let logs = tempfile::tempdir().unwrap();
    let root = base.path().join("later/kubelet");
    let vol = root.join("pods/u/volumes/kubernetes.io~configmap/cfg");
    let (tx, mut rx) = crate::events::channel();
    let roots = Roots::new([root.clone()]);
    let (mut w, mut stream) = Walker::start(roots, logs.path().to_owned(), None, tx)
        .await
        .unwrap();
    assert!(w.missing.contains(&root));
    w.tick().await;
    assert_eq!(w.watch_count(), 1, "the pod-logs dir only");
    std::fs::create_dir_all(&vol).unwrap();
    w.tick().await;
    assert!(w.missing.is_empty());
    assert_eq!(found(&mut rx), ["cfg"]);
    std::fs::remove_dir_all(&root).unwrap();
    while !w.missing.contains(&root) {
        let next = tokio::time::timeout(Duration::from_secs(5), stream.next());
        w.handle(next.await.unwrap().unwrap().unwrap()).await;
    }
    std::fs::create_dir_all(&vol).unwrap();
    w.tick().await;
    assert_eq!(found(&mut rx), ["cfg"]);
}

/// A pod dir that is a symlink out of the root: none of its volumes is watched.
#[tokio::test]
async fn a_symlinked_pod_dir_is_not_followed() {
    let root = tempfile::tempdir().unwrap();
    let outside = tempfile::tempdir().unwrap();
    let logs = tempfile::tempdir().unwrap();
    let out_vol = outside.path().join("volumes/kubernetes.io~configmap/cfg");
    std::fs::create_dir_all(out_vol).unwrap();
    std::fs::create_dir(root.path().join("pods")).unwrap();
    let link = root.path().join("pods/u");
    std::os::unix::fs::symlink(outside.path(), &link).unwrap();
    let (tx, mut rx) = crate::events::channel();
    let roots = Roots::new([root.path().to_owned()]);
    let (w, _stream) = Walker::start(roots, logs.path().to_owned(), None, tx)
        .await
        .unwrap();
    assert!(found(&mut rx).is_empty());
    assert_eq!(w.watch_count(), 2, "the pods and pod-logs dirs only");
    assert!(w.by_path.keys().all(|p| !p.starts_with(&link)));
}

/// Two swaps of one volume read in one go: each is credited to its own data dir,
/// though `..data` points to the second by the time the first is read.
#[tokio::test]
async fn a_reader_behind_by_two_swaps_reports_both() {
    let root = tempfile::tempdir().unwrap();
    let logs = tempfile::tempdir().unwrap();
    let vol = root
        .path()
        .join("pods/u/volumes/kubernetes.io~configmap/cfg");
    std::fs::create_dir_all(&vol).unwrap();
    let (tx, mut rx) = crate::events::channel();
    let roots = Roots::new([root.path().to_owned()]);
    let (mut w, mut stream) = Walker::start(roots, logs.path().to_owned(), None, tx)
        .await
        .unwrap();
    let swaps = ["..2026_01_01_00_00_00.1", "..2026_01_01_00_00_00.2"];
    for ts in swaps {
        std::fs::create_dir(vol.join(ts)).unwrap();
        std::os::unix::fs::symlink(ts, vol.join("..data_tmp")).unwrap();
        std::fs::rename(vol.join("..data_tmp"), vol.join(DATA)).unwrap();
    }
    let mut reported = Vec::new();
    while reported.len() < swaps.len() {
        let next = tokio::time::timeout(Duration::from_secs(5), stream.next());
        w.handle(next.await.unwrap().unwrap().unwrap()).await;
        while let Ok(ev) = rx.try_recv() {
            if let Event::Detected(d) = ev {
                reported.push(d.ts_dir);
            }
        }
    }
    assert_eq!(reported, swaps);
}

/// A pod removed while the queue overflowed: its `IN_IGNORED`s are never read here
/// (the kernel drops them in an overflow); the rescan forgets its watches anyway.
#[tokio::test]
async fn an_overflow_rescan_forgets_what_was_removed_meanwhile() {
    let root = tempfile::tempdir().unwrap();
    let logs = tempfile::tempdir().unwrap();
    let pod = |uid: &str| root.path().join("pods").join(uid);
    for uid in ["kept", "gone"] {
        let vol = pod(uid).join("volumes/kubernetes.io~configmap/cfg");
        std::fs::create_dir_all(vol).unwrap();
    }
    let (tx, mut rx) = crate::events::channel();
    let roots = Roots::new([root.path().to_owned()]);
    let (mut w, _stream) = Walker::start(roots, logs.path().to_owned(), None, tx)
        .await
        .unwrap();
    // The pods dir, the pod-logs dir, and each pod's volumes, plugin and volume dirs.
    assert_eq!(w.watch_count(), 8);
    std::fs::remove_dir_all(pod("gone")).unwrap();
    while rx.try_recv().is_ok() {}
    let wd = w.nodes.keys().next().unwrap().clone();
    let overflow = inotify::Event {
        wd,
        mask: EventMask::Q_OVERFLOW,
        cookie: 0,
        name: None,
    };
    w.handle(overflow).await;
    assert_eq!(w.watch_count(), 5);
    assert!(w.by_path.keys().all(|p| !p.starts_with(pod("gone"))));
    let mut got = Vec::new();
    while let Ok(ev) = rx.try_recv() {
        got.push(ev);
    }
    assert!(matches!(got[0], Event::InotifyOverflow), "{got:?}");
    let gone = |uid: &str| {
        (got.iter()).any(|e| matches!(e, Event::VolumeGone(k) if k.pod_uid == uid))
            && (got.iter()).any(|e| matches!(e, Event::PodGone { uid: u } if u == uid))
    };
    assert!(gone("gone"), "{got:?}");
    assert!(!gone("kept"), "{got:?}");
}

#[test]
fn pod_log_dir_names() {
    let (uid, n) = parse_pod_log_dir("kube-system_coredns-5d78c9869d-abcde_0b5c7f2e-1a2b").unwrap();
    assert_eq!(
        (uid.as_str(), n.namespace.as_str(), n.name.as_str()),
        ("0b5c7f2e-1a2b", "kube-system", "coredns-5d78c9869d-abcde")
    );
    for bad in ["a_b", "a_b_c_d", "_b_c", "a__c", "a_b_", "plain"] {
        assert!(parse_pod_log_dir(bad).is_none(), "{bad}");
    }
}
