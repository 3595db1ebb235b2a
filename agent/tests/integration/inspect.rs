//! `reloadscope inspect` end to end: the built binary on a kubelet-style tree, without
//! the agent. The lab tests (root) run real containers consuming a volume with the
//! strategies of docs/design.md 5 and check each one's verdict after an update.

use std::{
    fs,
    os::unix::fs::symlink,
    path::{Path, PathBuf},
    process::{Child, Command, Output, Stdio},
    time::{Duration, SystemTime, UNIX_EPOCH},
};

use crate::support::{KEY, SUB_KEY, lab_container};
use reloadscope::node::volumes::VolumeType;
use reloadscope_lab::{CallStyle, LabContainer, LabNode, Strategy, WriteOutcome, payload};
use serde_json::Value;

const SUBPATH_HINT: &str = "subPath mount: never receives updates; mount the volume as a directory and read the file through it";
const OLD_DATA_HINT: &str = "still reading data from before the last update";

fn bin() -> &'static Path {
    Path::new(env!("CARGO_BIN_EXE_reloadscope"))
}

fn secs(t: SystemTime) -> f64 {
    t.duration_since(UNIX_EPOCH).unwrap().as_secs_f64()
}

/// `reloadscope inspect` with these roots and log dirs.
fn inspect(roots: &[&Path], pod_logs: &Path, container_logs: &Path, json: bool) -> Output {
    let mut cmd = Command::new(bin());
    cmd.arg("inspect");
    for r in roots {
        cmd.arg("--kubelet-root").arg(r);
    }
    cmd.arg("--pod-logs-dir")
        .arg(pod_logs)
        .arg("--container-logs-dir")
        .arg(container_logs);
    if json {
        cmd.arg("--json");
    }
    cmd.output().expect("run reloadscope inspect")
}

fn parse(out: &Output) -> Value {
    serde_json::from_slice(&out.stdout).unwrap_or_else(|e| {
        panic!(
            "not JSON ({e}): {}\nstderr: {}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        )
    })
}

/// The text of a table row in the column headed `name`.
fn cell<'a>(header: &str, row: &'a str, name: &str) -> Option<&'a str> {
    let start = header.find(name)?;
    let rest = row.get(start..)?;
    // Ages are two words ("4.2s ago"); columns are two spaces apart.
    Some(rest.split("  ").next()?.trim()).filter(|c| !c.is_empty())
}

fn volume<'a>(doc: &'a Value, name: &str) -> &'a Value {
    doc["volumes"]
        .as_array()
        .unwrap()
        .iter()
        .find(|v| v["volume"] == name)
        .unwrap_or_else(|| panic!("no volume {name} in {doc:#}"))
}

/// Each consumer's verdict, by container name.
fn verdicts(v: &Value) -> Vec<(String, String)> {
    let mut out: Vec<(String, String)> = v["consumers"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| {
            (
                c["container"].as_str().unwrap().to_owned(),
                c["verdict"].as_str().unwrap().to_owned(),
            )
        })
        .collect();
    out.sort();
    out
}

/// A plain kubelet-style tree: `<root>/pods/<uid>/volumes/<plugin>/<volume>/` with a
/// data dir and `..data`, as the kubelet leaves it.
fn fake_volume(root: &Path, uid: &str, plugin: &str, name: &str, ts: &str) -> PathBuf {
    let dir = root
        .join("pods")
        .join(uid)
        .join("volumes")
        .join(plugin)
        .join(name);
    fs::create_dir_all(dir.join(ts)).unwrap();
    fs::write(dir.join(ts).join(KEY), "secret content").unwrap();
    symlink(ts, dir.join("..data")).unwrap();
    symlink(format!("..data/{KEY}"), dir.join(KEY)).unwrap();
    dir
}

#[test]
fn volumes_without_consumers_and_pod_names_from_the_logs_dir() {
    let tmp = tempfile::tempdir().unwrap();
    let root = tmp.path().join("kubelet");
    let (pod_logs, container_logs) = (tmp.path().join("pods"), tmp.path().join("containers"));
    fs::create_dir_all(&container_logs).unwrap();
    let named = "0b5c7f2e-1a2b-4c3d-8e9f-001122334455";
    let unnamed = "9f8e7d6c-1a2b-4c3d-8e9f-001122334455";
    fs::create_dir_all(pod_logs.join(format!("shop_web_{named}"))).unwrap();
    let cfg = fake_volume(
        &root,
        named,
        "kubernetes.io~configmap",
        "app-config",
        "..2026_01_01_00_00_00.1",
    );
    fake_volume(
        &root,
        unnamed,
        "kubernetes.io~downward-api",
        "podinfo",
        "..2026_01_01_00_00_00.2",
    );
    // Not populated yet; and a plugin inspect does not follow.
    let empty = root.join(format!("pods/{named}/volumes/kubernetes.io~secret/tls"));
    fs::create_dir_all(&empty).unwrap();
    fs::create_dir_all(root.join(format!("pods/{named}/volumes/kubernetes.io~csi/x"))).unwrap();

    let out = inspect(&[&root], &pod_logs, &container_logs, true);
    assert!(out.status.success(), "{out:?}");
    let doc = parse(&out);
    assert_eq!(doc["volumes"].as_array().unwrap().len(), 3, "{doc:#}");
    let v = volume(&doc, "app-config");
    assert_eq!(
        (&v["namespace"], &v["pod"], &v["pod_uid"], &v["type"]),
        (
            &Value::from("shop"),
            &Value::from("web"),
            &Value::from(named),
            &Value::from("configmap")
        )
    );
    assert_eq!(v["data_dir"], "..2026_01_01_00_00_00.1");
    let mtime = fs::symlink_metadata(cfg.join("..data"))
        .unwrap()
        .modified()
        .unwrap();
    let seen = v["last_update_unix_seconds"].as_f64().unwrap();
    assert!((seen - secs(mtime)).abs() < 1e-6, "{seen} vs {mtime:?}");
    assert_eq!(v["consumers"], Value::Array(vec![]));
    let p = volume(&doc, "podinfo");
    assert_eq!(
        (&p["namespace"], &p["pod"], &p["type"]),
        (
            &Value::from(""),
            &Value::from(unnamed),
            &Value::from("downward_api")
        )
    );
    let t = volume(&doc, "tls");
    assert!(t["data_dir"].is_null() && t["last_update_unix_seconds"].is_null());

    let out = inspect(&[&root], &pod_logs, &container_logs, false);
    assert!(out.status.success(), "{out:?}");
    let table = String::from_utf8(out.stdout).unwrap();
    let lines: Vec<&str> = table.lines().collect();
    let header = lines[0];
    assert_eq!(
        header
            .split("  ")
            .filter(|c| !c.is_empty())
            .map(str::trim)
            .collect::<Vec<_>>(),
        [
            "NAMESPACE/POD",
            "VOLUME",
            "TYPE",
            "LAST UPDATE",
            "CONTAINER",
            "MOUNT",
            "VERDICT",
            "WATCHES"
        ],
        "{table}"
    );
    let row = lines
        .iter()
        .find(|l| cell(header, l, "VOLUME") == Some("app-config"))
        .expect("a row");
    assert_eq!(cell(header, row, "NAMESPACE/POD"), Some("shop/web"));
    assert!(cell(header, row, "LAST UPDATE").is_some_and(|a| a.ends_with("s ago")));
    for col in ["CONTAINER", "MOUNT", "VERDICT"] {
        assert_eq!(cell(header, row, col), Some("-"), "{table}");
    }
    assert!(
        lines
            .iter()
            .any(|l| l.starts_with(unnamed) && l.contains("podinfo"))
    );
}

/// Symlinks planted in the tree (a plugin dir, a pod dir, a `volumes` dir, a volume
/// dir) are not followed out of the root, and names with control characters print
/// escaped, in the table and in JSON.
#[test]
fn symlinks_stay_unfollowed_and_names_print_escaped() {
    let tmp = tempfile::tempdir().unwrap();
    let root = tmp.path().join("kubelet");
    let (pod_logs, container_logs) = (tmp.path().join("pods"), tmp.path().join("containers"));
    fs::create_dir_all(&container_logs).unwrap();
    fs::create_dir_all(&pod_logs).unwrap();
    let uid = "0b5c7f2e-1a2b-4c3d-8e9f-001122334455";
    let ts = "..2026_01_01_00_00_00.1";
    fake_volume(&root, uid, "kubernetes.io~configmap", "app-config", ts);
    // Outside the root: a tree that looks like volumes, and /etc.
    let outside = tmp.path().join("outside");
    let elsewhere = fake_volume(&outside, uid, "kubernetes.io~secret", "stolen", ts);
    let plugins = root.join("pods").join(uid).join("volumes");
    symlink("/etc", plugins.join("kubernetes.io~secret")).unwrap();
    symlink(
        &elsewhere,
        plugins.join("kubernetes.io~configmap").join("linked"),
    )
    .unwrap();
    let linked_pod = "1b5c7f2e-1a2b-4c3d-8e9f-001122334455";
    symlink(
        outside.join("pods").join(uid),
        root.join("pods").join(linked_pod),
    )
    .unwrap();
    let linked_volumes = "2b5c7f2e-1a2b-4c3d-8e9f-001122334455";
    fs::create_dir_all(root.join("pods").join(linked_volumes)).unwrap();
    symlink(
        outside.join("pods").join(uid).join("volumes"),
        root.join("pods").join(linked_volumes).join("volumes"),
    )
    .unwrap();
    // A volume name with an escape sequence that clears the screen, and one with a
    // bidi override.
    let evil = "evil\u{1b}[2J\u{1b}[31mred";
    fake_volume(&root, uid, "kubernetes.io~configmap", evil, ts);
    let bidi = "cfg\u{202e}lmay.txt";
    fake_volume(&root, uid, "kubernetes.io~configmap", bidi, ts);

    let out = inspect(&[&root], &pod_logs, &container_logs, true);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let json = String::from_utf8(out.stdout.clone()).unwrap();
    assert!(
        !json.contains('\u{1b}') && !json.contains('\u{202e}'),
        "{json:?}"
    );
    let doc = parse(&out);
    let mut names: Vec<&str> = (doc["volumes"].as_array().unwrap().iter())
        .map(|v| v["volume"].as_str().unwrap())
        .collect();
    names.sort();
    assert_eq!(
        names,
        ["app-config", bidi, evil],
        "only what is inside the root"
    );
    let stderr = String::from_utf8_lossy(&out.stderr);
    for link in ["kubernetes.io~secret", "linked", linked_pod, "volumes"] {
        assert!(
            stderr
                .lines()
                .any(|l| l.contains("is a symlink") && l.contains(link)),
            "{link} not said: {stderr}"
        );
    }

    let out = inspect(&[&root], &pod_logs, &container_logs, false);
    assert!(out.status.success());
    let table = String::from_utf8(out.stdout).unwrap();
    assert!(
        !table
            .chars()
            .any(|c| c != '\n' && (c.is_control() || c == '\u{202e}')),
        "{table:?}"
    );
    assert!(table.contains("evil\\u{1b}[2J\\u{1b}[31mred"), "{table}");
    assert!(table.contains("cfg\\u{202e}lmay.txt"), "{table}");
    assert!(
        !table.contains("stolen") && !table.contains("passwd"),
        "{table}"
    );
}

#[test]
fn nothing_found_is_no_error_a_missing_root_is() {
    let tmp = tempfile::tempdir().unwrap();
    let empty = tmp.path().join("empty");
    fs::create_dir_all(empty.join("pods")).unwrap();
    let logs = tmp.path().join("logs");
    let out = inspect(&[&empty], &logs, &logs, true);
    assert!(out.status.success(), "{out:?}");
    assert_eq!(parse(&out)["volumes"], Value::Array(vec![]));
    let out = inspect(&[&empty], &logs, &logs, false);
    assert!(out.status.success(), "{out:?}");
    assert_eq!(String::from_utf8(out.stdout).unwrap().lines().count(), 1);

    // A missing root is an error, but the others are still reported.
    let real = tmp.path().join("real");
    fake_volume(
        &real,
        "0b5c7f2e-1a2b-4c3d-8e9f-001122334455",
        "kubernetes.io~projected",
        "kube-api-access",
        "..2026_01_01_00_00_00.1",
    );
    let missing = tmp.path().join("no-such-root");
    let out = inspect(&[&missing, &real], &logs, &logs, true);
    assert!(!out.status.success(), "{out:?}");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("does not exist") && stderr.contains("no-such-root"),
        "{stderr}"
    );
    assert_eq!(volume(&parse(&out), "kube-api-access")["type"], "projected");
}

// ---- lab: real containers, needs root ----

/// A process of a container that opened the file once and keeps it open, as an
/// application holding its config file does: `sleep` with the file as its stdin (open
/// from its birth), moved into the container's cgroup. Killed on drop.
struct Holder(Child);

impl Holder {
    fn start(ctr: &LabContainer, file: &Path) -> Holder {
        let f = fs::File::open(file).unwrap();
        let child = Command::new("sleep")
            .arg("600")
            .stdin(Stdio::from(f))
            .spawn()
            .unwrap();
        let holder = Holder(child);
        fs::write(
            ctr.cgroup_dir.join("cgroup.procs"),
            holder.0.id().to_string(),
        )
        .unwrap();
        holder
    }
}

impl Drop for Holder {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// `/proc` gives process start times in clock ticks (10 ms at USER_HZ 100), truncated:
/// a process started in the same tick as the swap may as well have started before it,
/// and inspect then rightly says `unknown`. Not a wait for anything to happen: the
/// clock passing the swap's tick is what makes a later start certain.
fn past_the_tick_of(t: SystemTime) {
    // SAFETY: sysconf has no preconditions.
    let hz = unsafe { libc::sysconf(libc::_SC_CLK_TCK) }.max(1) as u32;
    let until = t + 2 * (Duration::from_secs(1) / hz);
    if let Ok(d) = until.duration_since(SystemTime::now()) {
        std::thread::sleep(d);
    }
}

fn verdicts_after_an_update(ty: VolumeType) {
    let mut node = LabNode::temp().unwrap();
    let pod = node.add_pod("shop", "web").unwrap();
    let w = node.add_volume(&pod, ty, "app-config").unwrap();
    let idle = node.add_volume(&pod, VolumeType::Secret, "tls").unwrap();
    idle.write(&payload(&[("tls.crt", "cert")]), CallStyle::GoAt)
        .unwrap();
    w.write(
        &payload(&[(KEY, "revision: 0"), (SUB_KEY, "ca 0")]),
        CallStyle::GoAt,
    )
    .unwrap();
    let watcher = lab_container(&node, &pod, &w, "watcher", Strategy::DataDirWatcher, false);
    let stuck = lab_container(&node, &pod, &w, "stuck", Strategy::ReadOnce, false);
    let sub = lab_container(&node, &pod, &w, "sub", Strategy::TimerPoller, true);
    let holder = Holder::start(&stuck, &w.dir().join(KEY));

    let before = SystemTime::now();
    let (ts_dir, swapped_at) = match w
        .write(
            &payload(&[(KEY, "revision: 1"), (SUB_KEY, "ca 1")]),
            CallStyle::GoAt,
        )
        .unwrap()
    {
        WriteOutcome::Written {
            ts_dir, swapped_at, ..
        } => (ts_dir, swapped_at),
        other => panic!("{other:?}"),
    };
    past_the_tick_of(swapped_at);
    let late = lab_container(&node, &pod, &w, "late", Strategy::DataDirWatcher, false);
    // Its watch is on the current data: one made before the update went with the old
    // file, and only the running agent remembers what it was.
    let naive = lab_container(&node, &pod, &w, "naive", Strategy::NaiveModify, false);

    let kubelet = node.kubelet_root();
    let (pod_logs, ctr_logs) = (node.pod_logs_dir(), node.container_logs_dir());
    let out = inspect(&[&kubelet], &pod_logs, &ctr_logs, true);
    assert!(out.status.success(), "{out:?}");
    let doc = parse(&out);
    let v = volume(&doc, "app-config");
    assert_eq!(
        (&v["namespace"], &v["pod"]),
        (&"shop".into(), &"web".into())
    );
    assert_eq!(v["type"], ty.label());
    assert_eq!(v["data_dir"], ts_dir.as_str());
    let at = v["last_update_unix_seconds"].as_f64().unwrap();
    assert!(
        secs(before) <= at && at <= secs(swapped_at),
        "last update {at}: the swap was between {before:?} and {swapped_at:?}"
    );
    assert_eq!(
        verdicts(v),
        [
            ("late", "reloaded-at-start"),
            ("naive", "reloaded-at-start"),
            ("stuck", "holds-old-data"),
            ("sub", "subpath"),
            ("watcher", "unknown"),
        ]
        .map(|(c, v)| (c.to_owned(), v.to_owned())),
        "{doc:#}"
    );
    for c in v["consumers"].as_array().unwrap() {
        let id = c["container_id"].as_str().unwrap();
        let ctr = [&watcher, &stuck, &naive, &sub, &late]
            .into_iter()
            .find(|x| x.name == c["container"])
            .unwrap();
        assert_eq!(id, ctr.id);
        let hint = c["hint"].as_str();
        match c["verdict"].as_str().unwrap() {
            "subpath" => {
                assert_eq!(c["mount"], "subpath");
                assert_eq!(hint, Some(SUBPATH_HINT));
            }
            "reloaded-at-start" => assert_eq!(hint, None),
            "holds-old-data" => assert!(hint.unwrap().starts_with(OLD_DATA_HINT)),
            _ => assert!(hint.unwrap().contains("consumer_stale_seconds")),
        }
        // What its inotify watches will do (from its own fdinfo).
        let watches = match ctr.name.as_str() {
            "watcher" | "late" => vec!["ok"],
            "naive" => vec!["no_delete_self"],
            "sub" => vec!["subpath"],
            _ => vec![],
        };
        assert_eq!(c["watches"], serde_json::json!(watches), "{}", ctr.name);
        if c["verdict"] != "subpath" {
            assert_eq!(c["mount"], "volume");
            assert_eq!(c["mount_path"], ctr.mount_dir().to_str().unwrap());
        }
    }
    let tls = volume(&doc, "tls");
    assert_eq!(tls["type"], "secret");
    assert_eq!(tls["consumers"], Value::Array(vec![]));

    let out = inspect(&[&kubelet], &pod_logs, &ctr_logs, false);
    assert!(out.status.success(), "{out:?}");
    let table = String::from_utf8(out.stdout).unwrap();
    let lines: Vec<&str> = table.lines().collect();
    let row = |name: &str| {
        lines
            .iter()
            .position(|l| cell(lines[0], l, "CONTAINER") == Some(name))
            .unwrap_or_else(|| panic!("no row for {name}:\n{table}"))
    };
    let hint_under = |i: usize| lines.get(i + 1).and_then(|l| l.strip_prefix("    hint: "));
    let s = row("sub");
    assert_eq!(cell(lines[0], lines[s], "MOUNT"), Some("subpath"));
    assert_eq!(cell(lines[0], lines[s], "VERDICT"), Some("subpath"));
    assert_eq!(hint_under(s), Some(SUBPATH_HINT), "{table}");
    let h = row("stuck");
    assert_eq!(cell(lines[0], lines[h], "NAMESPACE/POD"), Some("shop/web"));
    assert!(
        hint_under(h).is_some_and(|t| t.starts_with(OLD_DATA_HINT)),
        "{table}"
    );
    let l = row("late");
    assert_eq!(
        cell(lines[0], lines[l], "VERDICT"),
        Some("reloaded-at-start")
    );
    assert_eq!(hint_under(l), None, "no hint without a problem:\n{table}");
    assert!(hint_under(row("watcher")).is_some_and(|t| t.contains("consumer_stale_seconds")));
    let n = row("naive");
    assert_eq!(cell(lines[0], lines[n], "WATCHES"), Some("no_delete_self"));
    assert!(
        hint_under(n).is_some_and(|l| l.contains("add IN_DELETE_SELF")),
        "the watch finding's fix:\n{table}"
    );
    assert_eq!(cell(lines[0], lines[row("watcher")], "WATCHES"), Some("ok"));
    let tls = lines
        .iter()
        .find(|l| cell(lines[0], l, "VOLUME") == Some("tls"))
        .expect("a row for the volume without consumers");
    for col in ["CONTAINER", "MOUNT", "VERDICT"] {
        assert_eq!(cell(lines[0], tls, col), Some("-"), "{table}");
    }

    drop(holder);
    for c in [watcher, stuck, naive, sub, late] {
        c.stop().unwrap();
    }
}

#[test]
#[ignore = "needs root: run cargo xtask test"]
fn verdicts_on_a_configmap() {
    verdicts_after_an_update(VolumeType::ConfigMap);
}

#[test]
#[ignore = "needs root: run cargo xtask test"]
fn verdicts_on_a_secret() {
    verdicts_after_an_update(VolumeType::Secret);
}
