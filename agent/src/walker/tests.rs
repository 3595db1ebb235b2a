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

/// Handles the reader's next batch (within 5 s).
async fn handle_next(w: &mut Walker, reader: &mut Reader) {
    let next = tokio::time::timeout(Duration::from_secs(5), reader.next());
    for read in next.await.unwrap().unwrap().unwrap() {
        w.handle_read(read).await;
    }
}

/// A kubelet root with one ConfigMap volume dir, walked; the tree goes with it.
struct OneVolume {
    _dirs: [tempfile::TempDir; 2],
    vol: PathBuf,
    w: Walker,
    reader: Reader,
    rx: crate::events::Receiver,
}

async fn one_volume(marker: Option<Marker>) -> OneVolume {
    let root = tempfile::tempdir().unwrap();
    let logs = tempfile::tempdir().unwrap();
    let vol = root
        .path()
        .join("pods/u/volumes/kubernetes.io~configmap/cfg");
    std::fs::create_dir_all(&vol).unwrap();
    let (tx, rx) = crate::events::channel();
    let roots = Roots::new([root.path().to_owned()]);
    let (w, reader) = Walker::start(
        roots,
        logs.path().to_owned(),
        marker,
        tx,
        Default::default(),
    )
    .await
    .unwrap();
    OneVolume {
        _dirs: [root, logs],
        vol,
        w,
        reader,
        rx,
    }
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
    let (mut w, mut reader) =
        Walker::start(roots, logs.path().to_owned(), None, tx, Default::default())
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
        handle_next(&mut w, &mut reader).await;
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
    let (w, _reader) = Walker::start(roots, logs.path().to_owned(), None, tx, Default::default())
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
    let mut t = one_volume(None).await;
    let swaps = ["..2026_01_01_00_00_00.1", "..2026_01_01_00_00_00.2"];
    for ts in swaps {
        std::fs::create_dir(t.vol.join(ts)).unwrap();
        std::os::unix::fs::symlink(ts, t.vol.join("..data_tmp")).unwrap();
        std::fs::rename(t.vol.join("..data_tmp"), t.vol.join(DATA)).unwrap();
    }
    let mut reported = Vec::new();
    while reported.len() < swaps.len() {
        handle_next(&mut t.w, &mut t.reader).await;
        while let Ok(ev) = t.rx.try_recv() {
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
    let (mut w, _reader) =
        Walker::start(roots, logs.path().to_owned(), None, tx, Default::default())
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

/// The reader thread marks a new data dir as it reads its creation, before the walker
/// has seen the event; the walker then reports it without marking it again.
#[tokio::test]
#[ignore = "needs root: run cargo xtask test"]
async fn the_reader_marks_a_new_data_dir_before_the_walker_runs() {
    use reloadscope_lab::marks::inode_mark;

    use crate::fanotify::Fanotify;
    let fan = Fanotify::new().unwrap();
    let mut t = one_volume(Some(fan.marker())).await;
    let ts = t.vol.join("..2026_01_01_00_00_00.1");
    std::fs::create_dir(&ts).unwrap();
    let next = tokio::time::timeout(Duration::from_secs(5), t.reader.next());
    let batch = next.await.unwrap().unwrap().unwrap();
    let marked: Vec<_> = batch.iter().map(|r| r.marked).collect();
    assert_eq!(
        marked,
        [Some(false)],
        "one creation, marked before any swap"
    );
    let mark = inode_mark(std::process::id(), &ts).unwrap();
    assert_eq!(mark.mask & libc::FAN_OPEN, libc::FAN_OPEN, "{mark:?}");

    // Unmarked behind the walker's back: the walker does not mark it again.
    fan.unmark_dir(&ts).unwrap();
    while t.rx.try_recv().is_ok() {}
    for read in batch {
        t.w.handle_read(read).await;
    }
    let ev = t.rx.try_recv().unwrap();
    assert!(
        matches!(&ev, Event::DataDirCreated { ts_dir, late: false, .. } if ts.ends_with(ts_dir)),
        "{ev:?}"
    );
    assert_eq!(inode_mark(std::process::id(), &ts).unwrap().mask, 0);
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
