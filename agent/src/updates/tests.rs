use super::*;

const W: Duration = Duration::from_secs(2);

fn key(v: &str) -> VolumeKey {
    VolumeKey {
        pod_uid: "uid-1".into(),
        volume_type: VolumeType::Secret,
        name: v.into(),
    }
}

fn det(source: Source, v: &str, ts: &str, secs: u64) -> Detection {
    Detection {
        source,
        key: key(v),
        ts_dir: ts.into(),
        at: SystemTime::UNIX_EPOCH + Duration::from_secs(secs),
    }
}

fn tracker_with(v: &str, current: Option<&str>, t0: Instant) -> Tracker {
    let mut t = Tracker::new(W, true);
    t.volume_found(
        key(v),
        "/x".into(),
        current.map(Into::into),
        t0,
        SystemTime::UNIX_EPOCH,
        || None,
    );
    t
}

#[test]
fn both_sources_make_one_update_with_the_probe_time() {
    let t0 = Instant::now();
    let mut t = tracker_with("a", Some("..1"), t0);
    t.detect(det(Source::Inotify, "a", "..2", 20), t0);
    t.detect(det(Source::Ebpf, "a", "..2", 10), t0);
    let v = t.volume(&key("a")).unwrap();
    assert_eq!(v.updates, 1);
    assert_eq!(v.last_seen_by, [true, true]);
    assert_eq!(v.current.as_deref(), Some("..2"));
    assert_eq!(
        v.last_update,
        Some(SystemTime::UNIX_EPOCH + Duration::from_secs(10))
    );
    assert_eq!(t.detections, [1, 1]);
    t.tick(t0 + W * 2);
    assert_eq!(t.gaps, [0, 0]);
    // A late duplicate changes nothing.
    t.detect(det(Source::Inotify, "a", "..2", 30), t0 + W * 3);
    assert_eq!(
        (t.volume(&key("a")).unwrap().updates, t.detections),
        (1, [1, 1])
    );
}

#[test]
fn initial_population_and_baseline_are_not_updates() {
    let t0 = Instant::now();
    let mut t = tracker_with("a", None, t0);
    t.detect(det(Source::Ebpf, "a", "..1", 1), t0);
    t.detect(det(Source::Inotify, "a", "..1", 1), t0);
    let mut u = tracker_with("b", Some("..1"), t0);
    u.detect(det(Source::Ebpf, "b", "..1", 1), t0);
    for (tr, k) in [(&t, "a"), (&u, "b")] {
        assert_eq!(tr.volume(&key(k)).unwrap().updates, 0);
        assert_eq!(tr.detections, [0, 0]);
    }
}

#[test]
fn early_probe_report_waits_for_the_volume() {
    let t0 = Instant::now();
    let mut t = Tracker::new(W, true);
    // The swap of a new pod's volume: the probe reports it before the walk finds it.
    t.detect(det(Source::Ebpf, "a", "..1", 1), t0);
    t.volume_found(
        key("a"),
        "/x".into(),
        Some("..1".into()),
        t0,
        SystemTime::UNIX_EPOCH,
        || None,
    );
    assert_eq!(t.volume(&key("a")).unwrap().updates, 0);
    // A real update reported early, volume found with the old target: it counts.
    let mut u = Tracker::new(W, true);
    u.detect(det(Source::Ebpf, "a", "..2", 1), t0);
    u.volume_found(
        key("a"),
        "/x".into(),
        Some("..1".into()),
        t0,
        SystemTime::UNIX_EPOCH,
        || None,
    );
    assert_eq!(u.volume(&key("a")).unwrap().updates, 1);
    // Never found: dropped after the window.
    let mut w = Tracker::new(W, true);
    w.detect(det(Source::Ebpf, "zz", "..2", 1), t0);
    w.tick(t0 + W);
    assert_eq!(w.unmatched, 1);
}

#[test]
fn one_sided_updates_become_gaps_of_the_other() {
    let t0 = Instant::now();
    let mut t = tracker_with("a", Some("..1"), t0);
    t.detect(det(Source::Inotify, "a", "..2", 1), t0);
    t.detect(det(Source::Ebpf, "a", "..3", 2), t0);
    t.tick(t0 + W - Duration::from_millis(1));
    assert_eq!(t.gaps, [0, 0]);
    t.tick(t0 + W);
    assert_eq!(t.gaps, [1, 1]);
    assert_eq!(t.volume(&key("a")).unwrap().updates, 2);
}

#[test]
fn without_the_probe_inotify_alone_is_complete() {
    let t0 = Instant::now();
    let mut t = tracker_with("a", Some("..1"), t0);
    t.set_ebpf(false);
    t.detect(det(Source::Inotify, "a", "..2", 1), t0);
    t.tick(t0 + W * 2);
    assert_eq!((t.gaps, t.detections), ([0, 0], [0, 1]));
    assert_eq!(t.volume(&key("a")).unwrap().updates, 1);
}

#[test]
fn a_late_report_of_an_older_swap_is_counted_but_not_the_newest() {
    let t0 = Instant::now();
    let at = |s| SystemTime::UNIX_EPOCH + Duration::from_secs(s);
    let mut t = tracker_with("a", Some("..1"), t0);
    let det = |source, ts: &str, s| Detection {
        source,
        key: key("a"),
        ts_dir: ts.into(),
        at: at(s),
    };
    // inotify saw only the last of two swaps (an overflow hid the first); the
    // probe's reports of both come after it.
    t.detect(det(Source::Inotify, "..3", 30), t0);
    t.detect(det(Source::Ebpf, "..2", 19), t0);
    t.detect(det(Source::Ebpf, "..3", 29), t0);
    let v = t.volume(&key("a")).unwrap();
    assert_eq!(v.updates, 2);
    assert_eq!(
        (v.current.as_deref(), v.last_update),
        (Some("..3"), Some(at(29)))
    );
}

#[test]
fn a_volume_found_elsewhere_than_a_previous_run_saved_was_updated_meanwhile() {
    let t0 = Instant::now();
    let swapped = SystemTime::UNIX_EPOCH + Duration::from_secs(42);
    let mut t = Tracker::new(W, true);
    t.saved(key("a"), "..1".into(), None);
    t.saved(key("b"), "..1".into(), None);
    let found = |t: &mut Tracker, v: &str, ts: &str| {
        let cur = Some(ts.into());
        t.volume_found(key(v), "/x".into(), cur, t0, SystemTime::UNIX_EPOCH, || {
            Some(swapped)
        })
    };
    assert_eq!(found(&mut t, "a", "..3"), Some(("..3".into(), swapped)));
    assert_eq!(
        found(&mut t, "b", "..1"),
        None,
        "unchanged: nothing happened"
    );
    assert_eq!(found(&mut t, "c", "..1"), None, "not saved: a new volume");
    let a = t.volume(&key("a")).unwrap();
    assert_eq!((a.updates, a.last_update), (1, Some(swapped)));
    assert_eq!(t.volume(&key("b")).unwrap().updates, 0);
    assert_eq!(t.detections, [0, 0], "no source saw it");
    // Found again (a rescan): the saved state is used once.
    assert_eq!(found(&mut t, "a", "..3"), None);
}

#[test]
fn rescan_with_a_new_target_records_the_missed_swap() {
    let t0 = Instant::now();
    let mut t = tracker_with("a", Some("..1"), t0);
    t.volume_found(
        key("a"),
        "/x".into(),
        Some("..1".into()),
        t0,
        SystemTime::UNIX_EPOCH,
        || None,
    );
    assert_eq!(t.volume(&key("a")).unwrap().updates, 0);
    t.volume_found(
        key("a"),
        "/x".into(),
        Some("..2".into()),
        t0,
        SystemTime::UNIX_EPOCH,
        || None,
    );
    assert_eq!(t.volume(&key("a")).unwrap().updates, 1);
}

#[test]
fn a_walk_forgets_what_it_no_longer_finds_under_its_root_only() {
    let t0 = Instant::now();
    let mut t = Tracker::new(W, true);
    for (v, dir) in [
        ("a", "/r1/pods/x"),
        ("b", "/r1/pods/y"),
        ("c", "/r2/pods/z"),
    ] {
        t.volume_found(key(v), dir.into(), None, t0, SystemTime::UNIX_EPOCH, || {
            None
        });
    }
    let found = [key("a")].into_iter().collect();
    t.retain_found_under(std::path::Path::new("/r1/pods"), &found);
    let mut left: Vec<_> = t.volumes().map(|(k, _)| k.name.clone()).collect();
    left.sort();
    assert_eq!(left, ["a", "c"]);
}

#[test]
fn pod_gone_forgets_volumes_pending_and_name() {
    let t0 = Instant::now();
    let mut t = tracker_with("a", Some("..1"), t0);
    t.pod_named(
        "uid-1".into(),
        PodName {
            namespace: "ns".into(),
            name: "p".into(),
        },
    );
    t.detect(det(Source::Ebpf, "b", "..1", 1), t0);
    t.pod_gone("uid-1");
    assert!(t.volume(&key("a")).is_none() && t.pod_name("uid-1").is_none());
    t.tick(t0 + W);
    assert_eq!(t.unmatched, 0);
}
