use super::*;
use crate::node::volumes::VolumeType;

fn t(ms: u64) -> SystemTime {
    SystemTime::UNIX_EPOCH + Duration::from_millis(1_000_000 + ms)
}

fn vol() -> VolumeKey {
    VolumeKey {
        pod_uid: "pod".into(),
        volume_type: VolumeType::Secret,
        name: "tls".into(),
    }
}

fn found(id: &str, mount: MountKind, started: u64) -> Found {
    Found {
        id: id.into(),
        name: format!("c-{id}"),
        mount,
        started: t(started),
        start_ticks: started,
        mount_path: None,
        holds: Vec::new(),
        listed_at: t(started),
        watches: false,
    }
}

/// A consumer seen reading: it watches the volume.
fn reader(id: &str, mount: MountKind, started: u64) -> Found {
    Found {
        watches: true,
        ..found(id, mount, started)
    }
}

fn me(id: &str) -> Opener {
    Opener::Container {
        pod_uid: "pod".into(),
        id: id.into(),
    }
}

/// `a` reads the whole volume, `s` binds a file of it.
fn reloads() -> Reloads {
    let mut r = Reloads::default();
    r.set_consumers(
        &vol(),
        vec![
            reader("a", MountKind::Volume, 0),
            found("s", MountKind::SubPath, 0),
        ],
    );
    r
}

#[test]
fn reload_after_the_swap_ends_staleness_with_its_latency() {
    let mut r = reloads();
    r.update(&vol(), "..2", t(100));
    let a = r.consumer(&vol(), "a").unwrap();
    assert_eq!(a.stale_seconds(t(1100)), 1.0);
    r.open(me("a"), &vol(), "..1", t(150)); // old data: still stale
    r.open(me("a"), &vol(), "..2", t(142));
    let a = r.consumer(&vol(), "a").unwrap();
    assert_eq!(a.stale_seconds(t(5000)), 0.0);
    assert_eq!(a.last_reload, Some(t(142)));
    assert_eq!(a.latency.count, 1);
    assert!((a.latency.sum - 0.042).abs() < 1e-9);
    assert_eq!(
        a.latency.counts()[BUCKETS.iter().position(|&b| b == 0.05).unwrap()],
        1
    );
    // Further opens of the same data are not further reloads.
    r.open(me("a"), &vol(), "..2", t(900));
    assert_eq!(r.consumer(&vol(), "a").unwrap().latency.count, 1);
}

/// With a journal, every change of a volume's consumers (found, stale by an update,
/// reloaded, decided not to read) is reported once, as the volume's state then; an
/// open that changes nothing is not. Without one, nothing is kept.
#[test]
fn the_journal_gets_each_change_of_a_volumes_consumers_once() {
    let mut quiet = reloads();
    quiet.update(&vol(), "..2", t(100));
    assert_eq!(quiet.take_journal(), []);
    assert!(quiet.unjournaled.is_none());

    let mut r = Reloads::default();
    r.journal();
    r.set_consumers(&vol(), vec![reader("a", MountKind::Volume, 0)]);
    let first = r.take_journal();
    assert_eq!(first.len(), 1);
    assert_eq!(
        (first[0].readers.as_slice(), first[0].stale.len()),
        (&["a".to_string()][..], 0)
    );
    assert_eq!(r.take_journal(), [], "reported once");
    r.update(&vol(), "..2", t(100));
    let stale = r.take_journal();
    assert_eq!(stale[0].stale, [("a".to_string(), true)]);
    assert_eq!(stale[0].newest, Some(("..2".to_string(), t(100))));
    r.open(me("a"), &vol(), "..1", t(150));
    assert_eq!(r.take_journal(), [], "old data: nothing changed");
    r.open(me("a"), &vol(), "..2", t(160));
    assert_eq!(r.take_journal()[0].stale, [("a".to_string(), false)]);
    // One whose start was watched and that did not read, once its window ends.
    r.container_starting("pod", "b", t(200));
    r.set_consumers(
        &vol(),
        vec![
            reader("a", MountKind::Volume, 0),
            found("b", MountKind::Volume, 200),
        ],
    );
    r.take_journal();
    r.tick(t(200) + FIRST_READ_WINDOW);
    assert_eq!(r.take_journal()[0].non_readers, ["b"]);
}

/// After a late mark, a consumer holding a file of the new data open is credited at
/// the scan that lists it; not without the late mark (its open event is exact and
/// on its way), nor for a file of the old data.
#[test]
fn a_late_marks_reload_is_found_in_the_files_held_open() {
    let holding = |id: &str, ts: &str, at: u64| Found {
        holds: vec![ts.into()],
        listed_at: t(at),
        ..found(id, MountKind::Volume, 0)
    };
    let mut r = reloads();
    r.update(&vol(), "..2", t(100));
    r.set_consumers(&vol(), vec![holding("a", "..2", 130)]);
    assert!(
        r.consumer(&vol(), "a").unwrap().pending.is_some(),
        "no late mark"
    );
    r.late_mark(&vol(), "..2");
    r.set_consumers(&vol(), vec![holding("a", "..1", 140)]);
    assert!(
        r.consumer(&vol(), "a").unwrap().pending.is_some(),
        "old data"
    );
    r.set_consumers(&vol(), vec![holding("a", "..2", 150)]);
    let a = r.consumer(&vol(), "a").unwrap();
    assert!(a.pending.is_none());
    assert_eq!(a.last_reload, Some(t(150)));
    assert!((a.latency.sum - 0.050).abs() < 1e-9);
    // A volume nobody consumes keeps no late mark.
    let other = VolumeKey {
        name: "other".into(),
        ..vol()
    };
    r.late_mark(&other, "..9");
    assert!(!r.late.contains_key(&other));
    // The next update is not credited by the same late mark.
    r.update(&vol(), "..3", t(200));
    r.set_consumers(&vol(), vec![holding("a", "..3", 210)]);
    assert!(r.consumer(&vol(), "a").unwrap().pending.is_some());
}

#[test]
fn a_second_report_of_the_same_update_refines_the_swap_time_only() {
    let mut r = reloads();
    r.update(&vol(), "..2", t(120)); // inotify first
    r.update(&vol(), "..2", t(100)); // then the probe's stamp
    assert_eq!(
        r.consumer(&vol(), "a").unwrap().pending,
        Some(("..2".into(), t(100)))
    );
    r.open(me("a"), &vol(), "..2", t(130));
    r.update(&vol(), "..2", t(90));
    let a = r.consumer(&vol(), "a").unwrap();
    assert!(a.pending.is_none(), "a reload is never undone");
    assert!((a.latency.sum - 0.030).abs() < 1e-9);
}

#[test]
fn subpath_consumers_are_never_stale_and_never_reload() {
    let mut r = reloads();
    r.update(&vol(), "..2", t(100));
    r.open(me("s"), &vol(), "..2", t(200));
    let s = r.consumer(&vol(), "s").unwrap();
    assert_eq!(
        (
            s.stale_seconds(t(9999)),
            s.latency.count,
            s.pending.is_none()
        ),
        (0.0, 0, true)
    );
}

#[test]
fn foreign_opens_are_counted_never_credited() {
    let mut r = reloads();
    r.update(&vol(), "..2", t(100));
    r.open(Opener::Kubelet, &vol(), "..2", t(110));
    r.open(Opener::Host, &vol(), "..2", t(110));
    r.open(
        Opener::Container {
            pod_uid: "other".into(),
            id: "x".into(),
        },
        &vol(),
        "..2",
        t(110),
    );
    r.open(me("not-a-consumer"), &vol(), "..2", t(110));
    assert_eq!(r.foreign, [1, 1, 2]);
    assert!(r.consumer(&vol(), "a").unwrap().pending.is_some());
}

#[test]
fn an_open_read_before_its_update_is_credited_when_the_update_arrives() {
    let mut r = reloads();
    r.open(me("a"), &vol(), "..2", t(130));
    r.update(&vol(), "..2", t(100));
    let a = r.consumer(&vol(), "a").unwrap();
    assert_eq!((a.pending.is_none(), a.last_reload), (true, Some(t(130))));
    // Read before its update's report, with the report's (later) inotify time: the
    // new data proves the reload; latency 0 until the probe's stamp.
    r.open(me("a"), &vol(), "..3", t(140));
    r.update(&vol(), "..3", t(200));
    let a = r.consumer(&vol(), "a").unwrap();
    assert_eq!(
        (a.pending.is_none(), a.latency.count, a.latency.counts()[0]),
        (true, 2, 1)
    );
    // Unclaimed early opens expire.
    r.open(me("a"), &vol(), "..9", t(300));
    r.tick(t(300) + EARLY_KEPT);
    assert!(r.early.is_empty());
}

#[test]
fn a_container_started_after_the_swap_has_reloaded_at_its_start() {
    let mut r = reloads();
    r.update(&vol(), "..2", t(100));
    r.set_consumers(
        &vol(),
        vec![
            found("a", MountKind::Volume, 400),
            found("s", MountKind::SubPath, 0),
        ],
    );
    let a = r.consumer(&vol(), "a").unwrap();
    assert_eq!((a.pending.is_none(), a.last_reload), (true, Some(t(400))));
    // Found late, older than the newest swap: stale until it opens the new data.
    r.set_consumers(&vol(), vec![found("b", MountKind::Volume, 50)]);
    assert!(r.consumer(&vol(), "a").is_none());
    assert_eq!(
        r.consumer(&vol(), "b").unwrap().pending,
        Some(("..2".into(), t(100)))
    );
    // Found late but younger than the swap: nothing pending at the next update either.
    r.set_consumers(&vol(), vec![found("c", MountKind::Volume, 500)]);
    assert!(r.consumer(&vol(), "c").unwrap().pending.is_none());
    r.update(&vol(), "..3", t(450));
    assert!(r.consumer(&vol(), "c").unwrap().pending.is_none());
}

#[test]
fn the_same_container_scanned_again_is_not_a_restart() {
    let mut r = reloads();
    r.update(&vol(), "..2", t(100));
    // Its start converted again, a hair later: the same ticks, the same process.
    r.set_consumers(
        &vol(),
        vec![Found {
            started: t(1),
            ..found("a", MountKind::Volume, 0)
        }],
    );
    assert!(r.consumer(&vol(), "a").unwrap().pending.is_some());
}

#[test]
fn a_volume_is_settled_once_every_consumer_has_its_newest_update() {
    let mut r = reloads();
    assert!(r.settled(&vol()), "no update yet: nobody is stale");
    r.take_changed();
    r.update(&vol(), "..2", t(100));
    assert_eq!(r.take_changed(), HashSet::from([vol()]));
    assert!(!r.settled(&vol()));
    r.open(me("a"), &vol(), "..2", t(142));
    assert_eq!(r.take_changed(), HashSet::from([vol()]));
    assert!(r.settled(&vol()), "a subPath consumer is never stale");
    // Opens that credit nobody change nothing.
    r.open(me("a"), &vol(), "..2", t(150));
    r.open(Opener::Host, &vol(), "..2", t(150));
    assert!(r.take_changed().is_empty());

    // A checkpoint's stale consumer not found yet keeps its volume unsettled.
    let mut r = Reloads::default();
    r.restore(vol(), "..2".into(), t(100), vec![("a".into(), true)]);
    assert!(!r.settled(&vol()));
    r.set_consumers(&vol(), vec![found("a", MountKind::Volume, 0)]);
    assert!(!r.settled(&vol()));
    r.open(me("a"), &vol(), "..2", t(300));
    assert!(r.settled(&vol()));
}

#[test]
fn an_unattributed_open_credits_every_stale_consumer_of_the_volume() {
    let mut r = reloads();
    r.set_consumers(
        &vol(),
        vec![
            found("a", MountKind::Volume, 0),
            found("b", MountKind::Volume, 0),
            found("s", MountKind::SubPath, 0),
        ],
    );
    r.open(Opener::Unattributed, &vol(), "..2", t(90)); // before its update is known
    r.update(&vol(), "..2", t(80));
    for id in ["a", "b"] {
        let c = r.consumer(&vol(), id).unwrap();
        assert_eq!((c.last_reload, c.latency.count), (Some(t(90)), 1), "{id}");
    }
    assert_eq!(r.consumer(&vol(), "s").unwrap().latency.count, 0);
    assert_eq!(
        r.foreign,
        [0, 0, 0],
        "an unattributed open is nobody's foreign open"
    );
}

#[test]
fn a_restored_checkpoint_keeps_who_was_stale() {
    let mut r = Reloads::default();
    r.restore(
        vol(),
        "..2".into(),
        t(100),
        vec![("a".into(), true), ("b".into(), false)],
    );
    r.set_consumers(
        &vol(),
        vec![
            found("a", MountKind::Volume, 0),
            found("b", MountKind::Volume, 0),
        ],
    );
    assert_eq!(
        r.consumer(&vol(), "a").unwrap().pending,
        Some(("..2".into(), t(100)))
    );
    assert!(
        r.consumer(&vol(), "b").unwrap().pending.is_none(),
        "it had reloaded"
    );
    let snap = r.snapshot();
    assert_eq!(snap.len(), 1);
    let mut known = snap[0].stale.clone();
    known.sort();
    assert_eq!(known, [("a".to_string(), true), ("b".to_string(), false)]);
}

fn reads(r: &Reloads, id: &str) -> Reads {
    r.consumer(&vol(), id).unwrap().reads
}

/// A container never seen reading its volume is not its stale consumer (nor a
/// fresh one: nothing is measured); one seen reading it once, in any data dir, is
/// stale after the next update until it opens the new data.
#[test]
fn only_a_consumer_seen_reading_is_stale() {
    let mut r = Reloads::default();
    let whole = MountKind::Volume;
    r.set_consumers(
        &vol(),
        vec![found("quiet", whole, 0), found("once", whole, 0)],
    );
    assert_eq!(reads(&r, "quiet"), Reads::Unknown);
    assert_eq!(reads(&r, "quiet").label(), "unknown");
    r.open(me("once"), &vol(), "..1", t(50)); // the data before any update
    assert_eq!(reads(&r, "once"), Reads::Yes);
    r.update(&vol(), "..2", t(100));
    let quiet = r.consumer(&vol(), "quiet").unwrap();
    let once = r.consumer(&vol(), "once").unwrap();
    assert_eq!((quiet.measured(), once.measured()), (false, true));
    assert_eq!(quiet.stale_seconds(t(1100)), 0.0);
    assert_eq!(once.stale_seconds(t(1100)), 1.0);
    r.open(me("once"), &vol(), "..2", t(200));
    assert_eq!(
        r.consumer(&vol(), "once").unwrap().stale_seconds(t(1100)),
        0.0
    );
    // Its reads unknown, it may read the new data: its opens stay reported.
    assert!(!r.settled(&vol()));
    // Its first open seen is of the new data: a reload, and it reads.
    r.open(me("quiet"), &vol(), "..2", t(300));
    let quiet = r.consumer(&vol(), "quiet").unwrap();
    assert_eq!((quiet.reads, quiet.last_reload), (Reads::Yes, Some(t(300))));
    assert!(r.settled(&vol()));
}

/// Holding a file of the volume open or watching it with inotify is reading it; so
/// is an open by a container of the pod that no scan has found yet (its first
/// read), once a scan finds it consuming the volume; and an unattributed open (the
/// approximate source), for each consumer running then.
#[test]
fn what_counts_as_reading() {
    let whole = MountKind::Volume;
    let mut r = Reloads::default();
    r.open(me("early"), &vol(), "..1", t(10));
    assert_eq!(r.foreign, [0, 0, 1], "not a consumer yet");
    let holding = Found {
        holds: vec!["..1".into()],
        ..found("holding", whole, 0)
    };
    let all = || {
        vec![
            holding.clone(),
            reader("watching", whole, 0),
            found("early", whole, 5),
            found("other", whole, 5),
        ]
    };
    r.set_consumers(&vol(), all());
    for (id, want) in [
        ("holding", Reads::Yes),
        ("watching", Reads::Yes),
        ("early", Reads::Yes),
        ("other", Reads::Unknown),
    ] {
        assert_eq!(reads(&r, id), want, "{id}");
    }
    // A scan that no longer finds the file or the watch takes nothing back.
    let none = all().into_iter().map(|f| found(&f.id, whole, 0)).collect();
    r.set_consumers(&vol(), none);
    assert_eq!(reads(&r, "holding"), Reads::Yes);

    let mut r = Reloads::default();
    r.open(Opener::Unattributed, &vol(), "..1", t(50));
    let both = || vec![found("before", whole, 0), found("after", whole, 60)];
    r.set_consumers(&vol(), both());
    assert_eq!(reads(&r, "before"), Reads::Yes);
    assert_eq!(reads(&r, "after"), Reads::Unknown, "started after the open");
    r.open(Opener::Unattributed, &vol(), "..1", t(70));
    assert_eq!(reads(&r, "after"), Reads::Yes);
}

/// A volume that appears while the agent runs, and a pod one of whose containers is
/// starting, keep their opens reported; a consumer found then is watched for its
/// first reads through the window after its start, and does not read if none
/// comes. Volumes of other pods settle as before.
#[test]
fn first_reads_are_awaited_through_the_window_after_a_start() {
    let whole = MountKind::Volume;
    let window = || {
        let mut r = Reloads::default();
        r.set_first_read_window(Duration::from_secs(10));
        r
    };
    let mut r = window();
    r.volume_appeared(&vol(), t(0));
    assert!(!r.settled(&vol()), "its pod is starting");
    r.set_consumers(
        &vol(),
        vec![found("quiet", whole, 100), found("once", whole, 100)],
    );
    assert_eq!(reads(&r, "quiet"), Reads::Undecided { until: t(10_100) });
    assert_eq!(reads(&r, "quiet").label(), "unknown");
    r.open(me("once"), &vol(), "..1", t(150));
    assert_eq!(reads(&r, "once"), Reads::Yes);
    r.tick(t(10_000)); // the volume's window is over, not the quiet one's
    assert!(!r.settled(&vol()));
    r.take_changed();
    r.tick(t(10_100));
    assert_eq!(reads(&r, "quiet"), Reads::No);
    assert_eq!(reads(&r, "quiet").label(), "no");
    assert!(r.take_changed().contains(&vol()));
    assert!(r.settled(&vol()), "no first read is awaited");
    // An update: the reader is stale; the other neither stale nor waited for.
    r.update(&vol(), "..2", t(20_000));
    assert!(!r.settled(&vol()));
    let quiet = r.consumer(&vol(), "quiet").unwrap();
    assert_eq!(
        (quiet.measured(), quiet.stale_seconds(t(21_000))),
        (false, 0.0)
    );
    r.open(me("once"), &vol(), "..2", t(20_050));
    assert!(r.settled(&vol()));
    // Seen reading after all: it reads from then on.
    r.open(me("quiet"), &vol(), "..2", t(30_000));
    assert_eq!(reads(&r, "quiet"), Reads::Yes);

    let mut r = window();
    r.set_consumers(&vol(), vec![reader("a", whole, 0)]);
    r.container_starting("pod", "new", t(1000));
    assert_eq!(r.take_changed_pods(), HashSet::from(["pod".to_owned()]));
    assert!(!r.settled(&vol()));
    let other = VolumeKey {
        pod_uid: "other".into(),
        ..vol()
    };
    assert!(r.settled(&other));
    let with_new = || vec![reader("a", whole, 0), found("new", whole, 1001)];
    r.set_consumers(&vol(), with_new());
    assert_eq!(reads(&r, "new"), Reads::Undecided { until: t(11_001) });
    r.scanned(&HashSet::from(["a".to_owned(), "new".to_owned()]));
    assert_eq!(r.take_changed_pods(), HashSet::from(["pod".to_owned()]));
    assert!(!r.settled(&vol()), "its own window goes on");
    r.open(me("new"), &vol(), "..1", t(1500));
    assert!(r.settled(&vol()), "seen reading");
    // A starting container no scan sees: until its window ends.
    r.container_starting("pod", "gone", t(2000));
    r.tick(t(11_999));
    assert!(!r.settled(&vol()));
    r.tick(t(12_000));
    assert_eq!(r.take_changed_pods(), HashSet::from(["pod".to_owned()]));
    assert!(r.settled(&vol()));
    // One whose start nothing watched: unknown.
    let with_old = [with_new(), vec![found("old", whole, 0)]].concat();
    r.set_consumers(&vol(), with_old);
    assert_eq!(reads(&r, "old"), Reads::Unknown);
}

/// Who reads a volume is kept by a checkpoint, for every consumed volume, updated or
/// not, and comes back whatever data dir the volume points at then.
#[test]
fn a_checkpoint_keeps_who_reads() {
    let whole = MountKind::Volume;
    let mut r = Reloads::default();
    r.set_first_read_window(Duration::from_secs(10));
    r.container_starting("pod", "no", t(0));
    let three = || {
        vec![
            reader("yes", whole, 0),
            found("unknown", whole, 0),
            found("no", whole, 1),
        ]
    };
    r.set_consumers(&vol(), three());
    r.tick(t(20_000));
    let snap = r.snapshot();
    assert_eq!(
        snap,
        [Snapshot {
            volume: vol(),
            newest: None,
            stale: Vec::new(),
            readers: vec!["yes".into()],
            non_readers: vec!["no".into()],
        }],
        "consumed, never updated"
    );

    let mut r = Reloads::default();
    let s = snap.into_iter().next().unwrap();
    r.restore_reads(&vol(), s.readers, s.non_readers);
    let unmarked = three()
        .into_iter()
        .map(|f| found(&f.id, whole, 0))
        .collect();
    r.set_consumers(&vol(), unmarked);
    for (id, want) in [
        ("yes", Reads::Yes),
        ("unknown", Reads::Unknown),
        ("no", Reads::No),
    ] {
        assert_eq!(reads(&r, id), want, "{id}");
    }
}

#[test]
fn pods_and_volumes_going_away_take_their_consumers() {
    let mut r = reloads();
    r.update(&vol(), "..2", t(100));
    r.pod_gone("pod");
    assert_eq!(r.consumers().count(), 0);
    let mut r = reloads();
    r.volume_gone(&vol());
    assert_eq!(r.consumers().count(), 0);
}
