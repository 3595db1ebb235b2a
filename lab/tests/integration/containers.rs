//! Lab containers consuming ConfigMap (disk) and Secret (tmpfs) volumes through the
//! kubelet's atomic updates: each strategy gets the updates docs/design.md 5 says it
//! gets, for the reason it says, and a container leaves nothing behind. Needs root.

use std::{
    fs,
    path::{Path, PathBuf},
    time::{Duration, Instant, SystemTime},
};

use reloadscope::node::volumes::VolumeType;
use reloadscope_lab::{
    AtomicWriter, CallStyle, ContainerSpec, LabContainer, LabNode, LabPod, Open, Strategy,
    WriteOutcome, payload,
};

const KEY: &str = "config.yaml";
/// Longest wait for something that must happen.
const DEADLINE: Duration = Duration::from_secs(10);
/// The period of the timer pollers here.
const PERIOD: Duration = Duration::from_millis(200);
/// What a timer may be late by, on a loaded 2-vCPU machine.
const TIMER_SLACK: Duration = Duration::from_millis(150);

fn bin() -> &'static Path {
    Path::new(env!("CARGO_BIN_EXE_reloadscope-lab"))
}

fn content(rev: u32) -> String {
    format!("revision: {rev}")
}

/// A node with one pod and one volume of `ty` holding `config.yaml` (revision 0) and
/// another key.
fn volume(ty: VolumeType) -> (LabNode, LabPod, AtomicWriter) {
    let mut node = LabNode::temp().unwrap();
    let pod = node.add_pod("lab", "app").unwrap();
    let w = node.add_volume(&pod, ty, "cfg").unwrap();
    w.write(
        &payload(&[(KEY, &content(0)), ("other", "x")]),
        CallStyle::GoAt,
    )
    .unwrap();
    (node, pod, w)
}

/// The kubelet's update to `rev`; returns the time taken right before it started.
fn update(w: &AtomicWriter, rev: u32) -> SystemTime {
    let before = SystemTime::now();
    let out = w
        .write(
            &payload(&[(KEY, &content(rev)), ("other", "x")]),
            CallStyle::GoAt,
        )
        .unwrap();
    assert!(
        matches!(out, WriteOutcome::Written { initial: false, .. }),
        "{out:?}"
    );
    before
}

fn start(
    node: &LabNode,
    pod: &LabPod,
    w: &AtomicWriter,
    name: &str,
    strategy: Strategy,
) -> LabContainer {
    let spec = ContainerSpec {
        period: PERIOD,
        ..ContainerSpec::new(name, w.dir(), KEY, strategy)
    };
    LabContainer::start(bin(), node, pod, &spec).unwrap()
}

/// Polls the open log until it has at least `n` opens.
fn wait_opens(c: &LabContainer, n: usize) -> Vec<Open> {
    let deadline = Instant::now() + DEADLINE;
    loop {
        let reads = c.reads().unwrap();
        if reads.len() >= n {
            return reads;
        }
        assert!(
            Instant::now() < deadline,
            "{}: {} opens after {DEADLINE:?}, expected {n}: {reads:?}",
            c.name,
            reads.len()
        );
        std::thread::sleep(Duration::from_millis(5));
    }
}

/// Polls the open log until an open satisfies `f`; returns it.
fn wait_open(c: &LabContainer, what: &str, f: impl Fn(&Open) -> bool) -> Open {
    let deadline = Instant::now() + DEADLINE;
    loop {
        let reads = c.reads().unwrap();
        if let Some(o) = reads.iter().find(|o| f(o)) {
            return o.clone();
        }
        assert!(
            Instant::now() < deadline,
            "{}: no open {what} after {DEADLINE:?}: {reads:?}",
            c.name
        );
        std::thread::sleep(Duration::from_millis(5));
    }
}

fn head(rev: u32) -> Result<Vec<u8>, i32> {
    Ok(content(rev).into_bytes())
}

/// The mount points of this process's mount namespace.
fn mount_points() -> Vec<PathBuf> {
    fs::read_to_string("/proc/self/mountinfo")
        .unwrap()
        .lines()
        .filter_map(|l| l.split(' ').nth(4))
        .map(|p| PathBuf::from(p.replace("\\040", " ")))
        .collect()
}

fn container_mount_points(c: &LabContainer) -> Vec<PathBuf> {
    fs::read_to_string(format!("/proc/{}/mountinfo", c.pid))
        .unwrap()
        .lines()
        .filter_map(|l| l.split(' ').nth(4))
        .map(PathBuf::from)
        .collect()
}

fn mounts_under(dir: &Path) -> Vec<PathBuf> {
    mount_points()
        .into_iter()
        .filter(|p| p.starts_with(dir))
        .collect()
}

/// What a running container must look like from the host.
fn assert_container(node: &LabNode, pod: &LabPod, w: &AtomicWriter, c: &LabContainer) {
    // Its cgroup, named as the kubelet's systemd driver and containerd name it.
    let scope = format!(
        "/kubepods.slice/kubepods-burstable.slice/kubepods-burstable-pod{}.slice/cri-containerd-{}.scope",
        pod.uid.replace('-', "_"),
        c.id
    );
    assert_eq!(c.id.len(), 64);
    assert!(c.cgroup_dir.ends_with(&scope[1..]), "{:?}", c.cgroup_dir);
    let cgroup = fs::read_to_string(format!("/proc/{}/cgroup", c.pid)).unwrap();
    let v2 = cgroup
        .lines()
        .find_map(|l| l.strip_prefix("0::"))
        .unwrap_or_else(|| panic!("no cgroup v2 line in {cgroup}"));
    assert!(v2.ends_with(&scope), "{v2} does not name {scope}");
    let procs = fs::read_to_string(c.cgroup_dir.join("cgroup.procs")).unwrap();
    assert_eq!(procs.trim(), c.pid.to_string());

    // Its own mount namespace, with the volume bound at its mount path, which the
    // host does not see.
    let ns = |pid: &str| fs::read_link(format!("/proc/{pid}/ns/mnt")).unwrap();
    assert_ne!(ns(&c.pid.to_string()), ns("self"));
    let root = c.mount_root().unwrap().expect("the volume mount");
    let vol = w.dir().to_str().unwrap();
    if fs::read_to_string("/proc/self/mountinfo")
        .unwrap()
        .contains(&format!(" {vol} "))
    {
        // tmpfs volume: the bind is of the tmpfs's root.
        assert_eq!(root, "/");
    } else {
        assert!(vol.ends_with(&root), "{root} is not {vol}");
    }
    assert!(!mount_points().contains(&c.mount_dir().to_path_buf()));
    // None of the kubelet's mounts (the node's volumes) inside; its own once.
    let inside = container_mount_points(c);
    let kubelet: Vec<_> = inside
        .iter()
        .filter(|p| p.starts_with(node.kubelet_root()))
        .collect();
    assert!(kubelet.is_empty(), "{kubelet:?}");
    let own = inside.iter().filter(|p| **p == c.mount_dir()).count();
    assert_eq!(own, 1, "{inside:?}");

    // The container log name the agent reads, linked to the pod's log dir.
    let log = node.container_logs_dir().join(format!(
        "{}_{}_{}-{}.log",
        pod.name, pod.namespace, c.name, c.id
    ));
    assert_eq!(c.container_log(), log);
    assert_eq!(
        fs::read_link(&log).unwrap(),
        node.pod_log_dir(pod).join(&c.name).join("0.log")
    );
}

/// Stops the containers, checks they left nothing, removes the pod, checks the node
/// has no mount left.
fn finish(mut node: LabNode, pod: LabPod, containers: Vec<LabContainer>) {
    let base = node.base().to_path_buf();
    for c in containers {
        let (pid, cgroup, mount_dir) = (c.pid, c.cgroup_dir.clone(), c.mount_dir().to_owned());
        let bind = c.sub_path_bind().map(Path::to_path_buf);
        c.stop().unwrap();
        assert!(!cgroup.exists(), "{cgroup:?}");
        assert!(!mount_dir.exists(), "{mount_dir:?}");
        assert!(!Path::new(&format!("/proc/{pid}")).exists(), "{pid} lives");
        if let Some(bind) = bind {
            assert!(!bind.exists(), "{bind:?}");
        }
        // Only the node's own tmpfs volumes are mounted under its base.
        for m in mounts_under(&base) {
            assert!(m.starts_with(node.pod_dir(&pod).join("volumes")), "{m:?}");
            assert!(!m.starts_with(base.join("containers")), "{m:?}");
        }
    }
    let pod_slice = cgroup_pod_slice(&pod);
    assert!(!pod_slice.exists(), "{pod_slice:?}");
    node.remove_pod(&pod).unwrap();
    assert_eq!(mounts_under(&base), Vec::<PathBuf>::new());
}

fn cgroup_pod_slice(pod: &LabPod) -> PathBuf {
    let v2 = reloadscope_lab::cgroup2_mount().unwrap();
    v2.join("kubepods.slice/kubepods-burstable.slice")
        .join(format!(
            "kubepods-burstable-pod{}.slice",
            pod.uid.replace('-', "_")
        ))
}

const TYPES: [VolumeType; 2] = [VolumeType::ConfigMap, VolumeType::Secret];

/// A strategy that must reopen once per update, and read the new content then.
fn reopens_after_each_update(strategy: Strategy) {
    for ty in TYPES {
        let (node, pod, w) = volume(ty);
        let c = start(&node, &pod, &w, "app", strategy);
        assert_container(&node, &pod, &w, &c);
        let first = c.reads().unwrap();
        assert_eq!(first.len(), 1, "{ty:?} {first:?}");
        assert_eq!(first[0].head, head(0));
        for rev in 1..=2u32 {
            let before = update(&w, rev);
            // The kubelet's periodic re-read in between: never a reason to reopen.
            w.reread().unwrap();
            let reads = wait_opens(&c, 1 + rev as usize);
            let last = reads.last().unwrap();
            assert!(last.at >= before, "{ty:?}: reopened before the update");
            assert_eq!(last.head, head(rev), "{ty:?}");
        }
        // Exactly one open per update.
        let opens = c.opens().unwrap();
        assert_eq!(opens.len(), 3, "{ty:?}: {opens:?}");
        assert!(opens.is_sorted());
        finish(node, pod, vec![c]);
    }
}

/// A strategy that must never reopen: a data dir watcher on the same volume proves
/// each update reached the pod.
fn never_reopens(strategy: Strategy) {
    for ty in TYPES {
        let (node, pod, w) = volume(ty);
        let c = start(&node, &pod, &w, "app", strategy);
        let control = start(&node, &pod, &w, "control", Strategy::DataDirWatcher);
        assert_container(&node, &pod, &w, &c);
        for rev in 1..=2u32 {
            update(&w, rev);
            w.reread().unwrap();
            let seen = wait_opens(&control, 1 + rev as usize);
            assert_eq!(seen.last().unwrap().head, head(rev));
            let reads = c.reads().unwrap();
            assert_eq!(reads.len(), 1, "{ty:?} {strategy:?} reopened: {reads:?}");
            assert_eq!(reads[0].head, head(0));
        }
        // The volume file was replaced twice; the process still holds revision 0.
        assert_eq!(fs::read_to_string(w.dir().join(KEY)).unwrap(), content(2));
        finish(node, pod, vec![c, control]);
    }
}

#[test]
#[ignore = "needs root: run cargo xtask test"]
fn data_dir_watcher_reopens_after_each_update() {
    reopens_after_each_update(Strategy::DataDirWatcher);
}

#[test]
#[ignore = "needs root: run cargo xtask test"]
fn file_rewatcher_reopens_after_each_update() {
    reopens_after_each_update(Strategy::FileRewatcher);
}

#[test]
#[ignore = "needs root: run cargo xtask test"]
fn naive_modify_never_reopens() {
    never_reopens(Strategy::NaiveModify);
}

#[test]
#[ignore = "needs root: run cargo xtask test"]
fn dont_follow_never_reopens() {
    never_reopens(Strategy::DontFollow);
}

#[test]
#[ignore = "needs root: run cargo xtask test"]
fn read_once_never_reopens() {
    never_reopens(Strategy::ReadOnce);
}

#[test]
#[ignore = "needs root: run cargo xtask test"]
fn timer_poller_reopens_within_a_period() {
    for ty in TYPES {
        let (node, pod, w) = volume(ty);
        let c = start(&node, &pod, &w, "app", Strategy::TimerPoller);
        assert_container(&node, &pod, &w, &c);
        // It keeps reading on its own.
        let steady = wait_opens(&c, 3);
        assert!(steady.iter().all(|o| o.head == head(0)), "{steady:?}");
        for rev in 1..=2u32 {
            let before = update(&w, rev);
            let done = SystemTime::now();
            let got = wait_open(&c, "of the new content", |o| o.head == head(rev));
            assert!(got.at >= before);
            let late = got.at.duration_since(done).unwrap_or_default();
            assert!(
                late <= PERIOD + TIMER_SLACK,
                "{ty:?}: new content read {late:?} after the update"
            );
        }
        finish(node, pod, vec![c]);
    }
}

#[test]
#[ignore = "needs root: run cargo xtask test"]
fn sub_path_timer_poller_keeps_the_old_file() {
    for ty in TYPES {
        let (node, pod, w) = volume(ty);
        let spec = ContainerSpec {
            sub_path: true,
            period: PERIOD,
            ..ContainerSpec::new("app", w.dir(), KEY, Strategy::TimerPoller)
        };
        let c = LabContainer::start(bin(), &node, &pod, &spec).unwrap();
        let control = start(&node, &pod, &w, "control", Strategy::DataDirWatcher);

        // The kubelet's bind of the resolved file, in the host's namespace.
        let bind = node.pod_dir(&pod).join("volume-subpaths/cfg/app/0");
        assert_eq!(c.sub_path_bind(), Some(bind.as_path()));
        assert!(mount_points().contains(&bind));
        let ts = w.current().unwrap();
        let root = c.mount_root().unwrap().expect("the subPath mount");
        assert!(root.ends_with(&format!("/{ts}/{KEY}")), "{root}");
        assert_eq!(c.file(), c.mount_dir().join(KEY));
        // cgroup and namespace as for a whole-volume mount.
        let ns = |pid: &str| fs::read_link(format!("/proc/{pid}/ns/mnt")).unwrap();
        assert_ne!(ns(&c.pid.to_string()), ns("self"));
        let cgroup = fs::read_to_string(format!("/proc/{}/cgroup", c.pid)).unwrap();
        assert!(cgroup.contains(&format!("/cri-containerd-{}.scope", c.id)));

        update(&w, 1);
        let done = SystemTime::now();
        wait_opens(&control, 2);
        // Opens after the update was complete still read revision 0.
        let after = wait_open(&c, "after the update", |o| o.at > done);
        assert_eq!(after.head, head(0), "{ty:?}");
        let n = c.reads().unwrap().len();
        let reads = wait_opens(&c, n + 2);
        assert!(reads.iter().all(|o| o.head == head(0)), "{reads:?}");
        let root = c.mount_root().unwrap().unwrap();
        assert!(
            root.ends_with(&format!("/{ts}/{KEY}//deleted")),
            "{ty:?}: {root}"
        );
        finish(node, pod, vec![c, control]);
    }
}

#[test]
#[ignore = "needs root: run cargo xtask test"]
fn a_process_that_dies_is_reported_and_cleaned_up() {
    let (node, pod, w) = volume(VolumeType::ConfigMap);
    let base = node.base().to_path_buf();
    // No such key: the watch cannot be added.
    let spec = ContainerSpec::new("app", w.dir(), "missing", Strategy::NaiveModify);
    let err = LabContainer::start(bin(), &node, &pod, &spec).unwrap_err();
    let msg = format!("{err:#}");
    assert!(msg.contains("inotify_add_watch"), "{msg}");
    assert!(msg.contains("exited before it was ready"), "{msg}");
    assert!(!cgroup_pod_slice(&pod).exists());
    assert_eq!(
        fs::read_dir(base.join("containers")).unwrap().count(),
        0,
        "state left behind"
    );
    // A subPath of a missing key fails before any process starts.
    let spec = ContainerSpec {
        sub_path: true,
        ..spec
    };
    assert!(LabContainer::start(bin(), &node, &pod, &spec).is_err());
    finish(node, pod, vec![]);
}

#[test]
#[ignore = "needs root: run cargo xtask test"]
fn drop_kills_and_cleans_up() {
    let (node, pod, w) = volume(VolumeType::Secret);
    let spec = ContainerSpec {
        sub_path: true,
        ..ContainerSpec::new("app", w.dir(), KEY, Strategy::FileRewatcher)
    };
    let c = LabContainer::start(bin(), &node, &pod, &spec).unwrap();
    let (pid, cgroup) = (c.pid, c.cgroup_dir.clone());
    let bind = c.sub_path_bind().unwrap().to_path_buf();
    drop(c);
    assert!(!Path::new(&format!("/proc/{pid}")).exists());
    assert!(!cgroup.exists());
    assert!(!mount_points().contains(&bind));
    finish(node, pod, vec![]);
}

/// The broken watchers are broken because the kubelet's updates give their watches
/// nothing, not because they ignore events: what they do watch for, they get.
#[test]
#[ignore = "needs root: run cargo xtask test"]
fn broken_watchers_hold_live_watches() {
    for ty in TYPES {
        let (node, pod, w) = volume(ty);
        let naive = start(&node, &pod, &w, "naive", Strategy::NaiveModify);
        let nofollow = start(&node, &pod, &w, "nofollow", Strategy::DontFollow);
        // A write into the current file itself (the kubelet never does that): its
        // truncate, write and close each wake the watcher, which may read it half done.
        let real = w.dir().join(w.current().unwrap()).join(KEY);
        fs::write(&real, "in place").unwrap();
        wait_open(&naive, "of the rewritten file", |o| {
            o.head == Ok(b"in place".to_vec())
        });
        // A touch of the user-visible symlink itself (nothing else ever changes it).
        let link = w.dir().join(KEY);
        nix::sys::stat::utimensat(
            nix::fcntl::AT_FDCWD,
            &link,
            &nix::sys::time::TimeSpec::UTIME_NOW,
            &nix::sys::time::TimeSpec::UTIME_NOW,
            nix::sys::stat::UtimensatFlags::NoFollowSymlink,
        )
        .unwrap();
        let got = wait_opens(&nofollow, 2);
        assert_eq!(got.len(), 2, "{ty:?}: {got:?}");
        assert_eq!(got[1].head, Ok(b"in place".to_vec()), "{ty:?}");
        finish(node, pod, vec![naive, nofollow]);
    }
}

/// docs/design.md 4: IN_DELETE_SELF waits until nothing holds the old file. A subPath
/// mount of the same key in another container holds it for as long as it runs, so a
/// file rewatcher in the same pod misses the update until that container goes.
#[test]
#[ignore = "needs root: run cargo xtask test"]
fn file_rewatcher_waits_for_a_sub_path_sibling() {
    for ty in TYPES {
        let (node, pod, w) = volume(ty);
        let spec = ContainerSpec {
            sub_path: true,
            ..ContainerSpec::new("pinner", w.dir(), KEY, Strategy::ReadOnce)
        };
        let pinner = LabContainer::start(bin(), &node, &pod, &spec).unwrap();
        let rewatcher = start(&node, &pod, &w, "rewatcher", Strategy::FileRewatcher);
        let control = start(&node, &pod, &w, "control", Strategy::DataDirWatcher);
        update(&w, 1);
        wait_opens(&control, 2);
        assert_eq!(rewatcher.reads().unwrap().len(), 1, "{ty:?}");
        pinner.stop().unwrap();
        let got = wait_opens(&rewatcher, 2);
        assert_eq!(got[1].head, head(1), "{ty:?}");
        finish(node, pod, vec![rewatcher, control]);
    }
}
