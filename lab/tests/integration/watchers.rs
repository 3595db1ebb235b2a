//! Lab containers whose watches break in the ways docs/design.md 5 lists, and containers
//! running real watcher programs (`inotifywait`, the `notify` crate's
//! `RecommendedWatcher`) through `ContainerSpec::command`: what each does with the
//! kubelet's atomic updates, seen in its open log or output and in the inotify watches
//! its `/proc/<pid>/fdinfo` lists. Needs root.
//!
//! The `notify` test runs `target/<profile>/examples/notify_consumer`: plain `cargo
//! test` builds it; with `cargo test --test lab_watchers`, run `cargo build -p
//! reloadscope --examples` first.

use std::{
    ffi::OsString,
    fs,
    os::unix::fs::MetadataExt as _,
    path::Path,
    time::{Duration, Instant},
};

use libc::{
    IN_ATTRIB, IN_CLOSE_WRITE, IN_CREATE, IN_DELETE, IN_DELETE_SELF, IN_MODIFY, IN_MOVE_SELF,
    IN_MOVED_FROM, IN_MOVED_TO, IN_OPEN,
};
use reloadscope::node::volumes::VolumeType;
use reloadscope_lab::{
    AtomicWriter, CallStyle, ContainerSpec, LabContainer, LabNode, LabPod, Open, Strategy,
    WriteOutcome, example_bin, payload,
};

const KEY: &str = "config.yaml";
/// Longest wait for something that must happen.
const DEADLINE: Duration = Duration::from_secs(10);

const TYPES: [VolumeType; 2] = [VolumeType::ConfigMap, VolumeType::Secret];

fn bin() -> &'static Path {
    Path::new(env!("CARGO_BIN_EXE_reloadscope-lab"))
}

fn content(rev: u32) -> String {
    format!("revision: {rev}")
}

fn head(rev: u32) -> Result<Vec<u8>, i32> {
    Ok(content(rev).into_bytes())
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

/// The kubelet's update to `rev`, then its periodic re-read (never a reason to reload).
fn update(w: &AtomicWriter, rev: u32) {
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
    w.reread().unwrap();
}

fn start(
    node: &LabNode,
    pod: &LabPod,
    w: &AtomicWriter,
    name: &str,
    strategy: Strategy,
) -> LabContainer {
    let spec = ContainerSpec::new(name, w.dir(), KEY, strategy);
    LabContainer::start(bin(), node, pod, &spec).unwrap()
}

/// Polls `f` every 5 ms until it gives `Some`; panics with `what` after [`DEADLINE`].
fn poll<T>(what: impl Fn() -> String, mut f: impl FnMut() -> Option<T>) -> T {
    let deadline = Instant::now() + DEADLINE;
    loop {
        if let Some(t) = f() {
            return t;
        }
        assert!(Instant::now() < deadline, "after {DEADLINE:?}: {}", what());
        std::thread::sleep(Duration::from_millis(5));
    }
}

/// Polls the open log until it has at least `n` opens.
fn wait_opens(c: &LabContainer, n: usize) -> Vec<Open> {
    poll(
        || format!("{}: fewer than {n} opens: {:?}", c.name, c.reads()),
        || Some(c.reads().unwrap()).filter(|r| r.len() >= n),
    )
}

/// Polls a program's output until a line satisfies `f`; returns the output.
fn wait_output(c: &LabContainer, what: &str, f: impl Fn(&str) -> bool) -> String {
    poll(
        || format!("{}: no output line {what}: {:?}", c.name, c.output()),
        || Some(c.output().unwrap()).filter(|o| o.lines().any(&f)),
    )
}

/// One inotify watch of a process, from `/proc/<pid>/fdinfo/<fd>` of an inotify fd.
#[derive(Clone, Debug, PartialEq, Eq)]
struct Watch {
    wd: i32,
    ino: u64,
    mask: u32,
}

/// Every inotify watch `pid` holds, on all its inotify fds.
fn watches(pid: u32) -> Vec<Watch> {
    let mut out = Vec::new();
    for fd in fs::read_dir(format!("/proc/{pid}/fd")).unwrap() {
        let fd = fd.unwrap();
        let Ok(target) = fs::read_link(fd.path()) else {
            continue; // closed meanwhile
        };
        if target != Path::new("anon_inode:inotify") {
            continue;
        }
        let info = format!("/proc/{pid}/fdinfo/{}", fd.file_name().to_string_lossy());
        let Ok(text) = fs::read_to_string(&info) else {
            continue;
        };
        for line in text.lines() {
            let Some(rest) = line.strip_prefix("inotify ") else {
                continue;
            };
            let field = |name: &str| {
                rest.split(' ')
                    .find_map(|f| f.strip_prefix(name)?.strip_prefix(':'))
                    .unwrap_or_else(|| panic!("no {name} in {line:?}"))
            };
            out.push(Watch {
                wd: field("wd").parse().unwrap(),
                ino: u64::from_str_radix(field("ino"), 16).unwrap(),
                mask: u32::from_str_radix(field("mask"), 16).unwrap(),
            });
        }
    }
    out
}

/// The inode of the file `<volume>/<key>` names now (through `..data`).
fn file_ino(w: &AtomicWriter) -> u64 {
    fs::metadata(w.dir().join(KEY)).unwrap().ino()
}

/// The process runs in the container: its cgroup is the container's scope, its mount
/// namespace is not the host's, and in it the volume is at the container's path.
fn assert_in_container(c: &LabContainer, rev: u32) {
    let cgroup = fs::read_to_string(format!("/proc/{}/cgroup", c.pid)).unwrap();
    let v2 = cgroup.lines().find_map(|l| l.strip_prefix("0::")).unwrap();
    assert!(
        v2.ends_with(&format!("/cri-containerd-{}.scope", c.id)),
        "{v2}"
    );
    assert!(c.cgroup_dir.ends_with(&v2[1..]), "{:?} {v2}", c.cgroup_dir);
    let procs = fs::read_to_string(c.cgroup_dir.join("cgroup.procs")).unwrap();
    assert_eq!(procs.trim(), c.pid.to_string());
    let ns = |pid: &str| fs::read_link(format!("/proc/{pid}/ns/mnt")).unwrap();
    assert_ne!(ns(&c.pid.to_string()), ns("self"));
    assert!(c.mount_root().unwrap().is_some(), "no volume mount inside");
    // Through its root, in its namespace: the volume's file at the container's path;
    // the host has an empty mount dir there.
    let inside = format!("/proc/{}/root{}", c.pid, c.file().display());
    assert_eq!(fs::read_to_string(&inside).unwrap(), content(rev));
    assert_eq!(fs::read_dir(c.mount_dir()).unwrap().count(), 0);
    assert!(c.file().starts_with(c.mount_dir()));
}

/// Whether `pid` runs (exists and is not a zombie).
fn running(pid: u32) -> bool {
    let Ok(stat) = fs::read_to_string(format!("/proc/{pid}/stat")) else {
        return false;
    };
    // `pid (comm) S ...`: the state follows the last ')'.
    let state = stat.rsplit_once(") ").map(|(_, rest)| rest.as_bytes()[0]);
    state.is_some_and(|s| s != b'Z')
}

/// Stops the containers (each must be running until then), checks they left no
/// process, cgroup or mount dir, removes the pod.
fn finish(mut node: LabNode, pod: LabPod, containers: Vec<LabContainer>) {
    for c in containers {
        let (pid, cgroup, mount_dir) = (c.pid, c.cgroup_dir.clone(), c.mount_dir().to_owned());
        assert!(running(pid), "{} died", c.name);
        c.stop().unwrap();
        assert!(!Path::new(&format!("/proc/{pid}")).exists(), "{pid} lives");
        assert!(!cgroup.exists(), "{cgroup:?}");
        assert!(!mount_dir.exists(), "{mount_dir:?}");
    }
    node.remove_pod(&pod).unwrap();
}

/// It watches the dir `..data` named at start; the update moves `..data` away from it
/// and removes it: no event it asked for, and the watch is gone.
#[test]
#[ignore = "needs root: run cargo xtask test"]
fn timestamped_dir_watcher_never_reopens_after_an_update() {
    for ty in TYPES {
        let (node, pod, w) = volume(ty);
        let c = start(&node, &pod, &w, "app", Strategy::TimestampedDirWatcher);
        let control = start(&node, &pod, &w, "control", Strategy::DataDirWatcher);
        let ts_dir = w.dir().join(w.current().unwrap());
        let ts_ino = fs::metadata(&ts_dir).unwrap().ino();
        let held = watches(c.pid);
        assert_eq!(held.len(), 1, "{ty:?}: {held:?}");
        assert_eq!(held[0].ino, ts_ino, "{ty:?}: not on {ts_dir:?}");
        assert_eq!(
            held[0].mask,
            IN_MODIFY | IN_CLOSE_WRITE | IN_CREATE | IN_MOVED_TO
        );
        // A live watch: what it asks for, it gets (a new entry in the watched dir,
        // which the kubelet never makes).
        let probe = ts_dir.join("probe");
        fs::write(&probe, "").unwrap();
        let got = wait_opens(&c, 2);
        assert_eq!(got[1].head, head(0), "{ty:?}");
        fs::remove_file(&probe).unwrap();
        let n = c.reads().unwrap().len();

        update(&w, 1);
        assert_eq!(wait_opens(&control, 2)[1].head, head(1));
        // The old dir is gone, and its watch with it (IN_IGNORED).
        poll(
            || format!("{ty:?}: watches {:?}", watches(c.pid)),
            || watches(c.pid).is_empty().then_some(()),
        );
        update(&w, 2);
        assert_eq!(wait_opens(&control, 3)[2].head, head(2));
        let reads = c.reads().unwrap();
        assert_eq!(reads.len(), n, "{ty:?}: reopened: {reads:?}");
        assert!(reads.iter().all(|o| o.head == head(0)), "{reads:?}");
        finish(node, pod, vec![c, control]);
    }
}

/// IN_DELETE_SELF of the first update's unlink: one reopen, of the new content; the
/// watch is gone then, and the second update comes and goes unseen.
#[test]
#[ignore = "needs root: run cargo xtask test"]
fn file_watcher_no_rewatch_gets_the_first_update_only() {
    for ty in TYPES {
        let (node, pod, w) = volume(ty);
        let c = start(&node, &pod, &w, "app", Strategy::FileWatcherNoRewatch);
        let control = start(&node, &pod, &w, "control", Strategy::DataDirWatcher);
        assert_eq!(
            watches(c.pid),
            vec![Watch {
                wd: 1,
                ino: file_ino(&w),
                mask: IN_MODIFY | IN_DELETE_SELF
            }]
        );
        update(&w, 1);
        // The control first: inotify merges a queued event with an identical next
        // one (the rename cookie is not compared), so two updates before it reads
        // would be one event to it.
        assert_eq!(wait_opens(&control, 2)[1].head, head(1));
        let got = wait_opens(&c, 2);
        assert_eq!(got[1].head, head(1), "{ty:?}");
        poll(
            || format!("{ty:?}: watches {:?}", watches(c.pid)),
            || watches(c.pid).is_empty().then_some(()),
        );
        update(&w, 2);
        assert_eq!(wait_opens(&control, 3)[2].head, head(2));
        let reads = c.reads().unwrap();
        assert_eq!(reads.len(), 2, "{ty:?}: {reads:?}");
        assert_eq!(reads[1].head, head(1), "{ty:?}");
        finish(node, pod, vec![c, control]);
    }
}

/// Every strategy's name is a `lab-consumer --strategy` value (the names test in the
/// crate checks the list); the broken ones say they do not get updates.
#[test]
fn new_strategies_are_listed() {
    for (s, name, gets) in [
        (
            Strategy::TimestampedDirWatcher,
            "timestamped-dir-watcher",
            false,
        ),
        (
            Strategy::FileWatcherNoRewatch,
            "file-watcher-no-rewatch",
            false,
        ),
    ] {
        assert!(Strategy::ALL.contains(&s));
        assert_eq!(s.name(), name);
        assert_eq!(s.gets_updates(), gets);
    }
}

fn argv(args: &[&str]) -> Vec<OsString> {
    args.iter().map(OsString::from).collect()
}

/// `inotifywait` (inotify-tools) as the container's process: set up as a lab consumer
/// is, it watches the container's path of the file, which is the volume's file.
#[test]
#[ignore = "needs root: run cargo xtask test"]
fn inotifywait_runs_in_the_container() {
    for ty in TYPES {
        let (node, pod, w) = volume(ty);
        let cmd = argv(&["inotifywait", "-m", "-e", "modify,delete_self", "{file}"]);
        let spec = ContainerSpec::program("iw", w.dir(), KEY, &cmd);
        let c = LabContainer::start(bin(), &node, &pod, &spec).unwrap();
        let exe = fs::read_link(format!("/proc/{}/exe", c.pid)).unwrap();
        assert_eq!(exe.file_name().unwrap(), "inotifywait", "{exe:?}");
        let cmdline = fs::read(format!("/proc/{}/cmdline", c.pid)).unwrap();
        let last = cmdline.split(|b| *b == 0).rfind(|a| !a.is_empty()).unwrap();
        assert_eq!(last, c.file().as_os_str().as_encoded_bytes());
        assert_in_container(&c, 0);
        let err = c.opens().unwrap_err().to_string();
        assert!(err.contains("no open log"), "{err}");

        // Its watch, once it has set it up: on the volume's file, by the container's
        // path.
        let held = poll(
            || format!("{ty:?}: no watch: stderr? output {:?}", c.output()),
            || Some(watches(c.pid)).filter(|w| !w.is_empty()),
        );
        assert_eq!(
            held,
            vec![Watch {
                wd: 1,
                ino: file_ino(&w),
                mask: IN_MODIFY | IN_DELETE_SELF
            }]
        );
        update(&w, 1);
        let out = wait_output(&c, "DELETE_SELF", |l| {
            l == format!("{} DELETE_SELF ", c.file().display())
        });
        assert!(!out.contains("MODIFY"), "{out}");
        finish(node, pod, vec![c]);
    }
}

/// `notify`'s RecommendedWatcher on the file (examples/notify_consumer.rs): what it
/// watches, and what it makes of two updates. Prints the watches it held, before and
/// after each, for the record.
#[test]
#[ignore = "needs root: run cargo xtask test"]
fn notify_watcher_in_the_container() {
    let consumer = example_bin("notify_consumer").unwrap();
    for ty in TYPES {
        let (node, pod, w) = volume(ty);
        let cmd = vec![consumer.clone().into_os_string(), "{file}".into()];
        let spec = ContainerSpec::program("notify", w.dir(), KEY, &cmd);
        let c = LabContainer::start(bin(), &node, &pod, &spec).unwrap();
        let control = start(&node, &pod, &w, "control", Strategy::DataDirWatcher);
        assert_in_container(&c, 0);
        let first = format!("reload 0 start {}", content(0));
        let out = wait_output(&c, "of the start", |l| l == first);
        assert!(
            out.starts_with(&format!("watching {}\n", c.file().display())),
            "{out}"
        );
        // NonRecursive on a file: one watch, on the file the symlinks lead to, with
        // notify's full set (its own opens give IN_OPEN, which the consumer skips).
        let before = watches(c.pid);
        eprintln!("{ty:?} notify watches at start: {before:x?}");
        let full = IN_MODIFY
            | IN_ATTRIB
            | IN_CLOSE_WRITE
            | IN_OPEN
            | IN_MOVED_FROM
            | IN_MOVED_TO
            | IN_CREATE
            | IN_DELETE
            | IN_DELETE_SELF
            | IN_MOVE_SELF;
        assert_eq!(
            before,
            vec![Watch {
                wd: 1,
                ino: file_ino(&w),
                mask: full
            }]
        );

        update(&w, 1);
        assert_eq!(wait_opens(&control, 2)[1].head, head(1));
        // The unlink of the old file: IN_ATTRIB (its link count), then IN_DELETE_SELF
        // once no one holds it; each a reload, of the new file.
        let out = wait_output(&c, "of the delete", |l| {
            l.starts_with("reload ") && l.contains(" Remove(File) ")
        });
        eprintln!("{ty:?} notify output after update 1:\n{out}");
        let after = poll(
            || format!("{ty:?}: watches {:?}", watches(c.pid)),
            || Some(watches(c.pid)).filter(|w| w.is_empty() || w[0].wd != 1),
        );
        eprintln!("{ty:?} notify watches after update 1: {after:x?}");
        assert_eq!(after, vec![], "{ty:?}: notify re-added a watch");
        let reloads: Vec<&str> = out.lines().filter(|l| l.starts_with("reload ")).collect();
        assert!(
            reloads[1..].iter().all(|l| l.ends_with(&content(1))),
            "{reloads:?}"
        );

        update(&w, 2);
        assert_eq!(wait_opens(&control, 3)[2].head, head(2));
        let out2 = c.output().unwrap();
        eprintln!(
            "{ty:?} notify watches after update 2: {:x?}",
            watches(c.pid)
        );
        assert!(
            !out2.contains(&content(2)),
            "{ty:?}: notify saw the second update: {out2}"
        );
        finish(node, pod, vec![c, control]);
    }
}

/// A program that cannot be exec'd fails the start, with the reason, and leaves
/// nothing behind; an empty command fails before anything starts.
#[test]
#[ignore = "needs root: run cargo xtask test"]
fn a_program_that_cannot_start_is_reported_and_cleaned_up() {
    let (node, pod, w) = volume(VolumeType::ConfigMap);
    let cmd = argv(&["/nonexistent/watcher", "{file}"]);
    let spec = ContainerSpec::program("app", w.dir(), KEY, &cmd);
    let err = LabContainer::start(bin(), &node, &pod, &spec).unwrap_err();
    let msg = format!("{err:#}");
    assert!(msg.contains("could not exec the program"), "{msg}");
    assert!(msg.contains("/nonexistent/watcher"), "{msg}");
    let state = node.base().join("containers");
    assert_eq!(
        fs::read_dir(&state).unwrap().count(),
        0,
        "state left behind"
    );
    let empty: Vec<OsString> = Vec::new();
    let spec = ContainerSpec::program("app", w.dir(), KEY, &empty);
    assert!(LabContainer::start(bin(), &node, &pod, &spec).is_err());
    finish(node, pod, vec![]);
}
