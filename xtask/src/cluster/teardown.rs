//! Taking the node down, leaving nothing: the kubelet first (so it restarts no
//! container), every container and sandbox killed through containerd, the other
//! daemons, then the mounts under the kubelet root and containerd's dirs, the
//! pods' network namespaces, the kubelet's cgroups, kube-proxy's and the node's
//! iptables rules, the bridge, and the directories `up` and its pods made.

use std::collections::BTreeSet;
use std::fs;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use anyhow::{Context, Result};

use super::{Binaries, CONTAINER_LOGS, DAEMONS, KUBELET_ROOT, Layout, POD_LOGS, daemons, net};

/// Network namespaces containerd's CRI plugin makes for pod sandboxes.
const NETNS_DIR: &str = "/run/netns";
/// The CNI plugins' state (host-local's leases, cached results): removed whole if
/// the node made it, else only the node network's part of it.
const CNI_STATE: &str = "/var/lib/cni";

/// The agent's `--state-file` directory, a hostPath the shipped DaemonSet has the
/// kubelet create: removed with the node if the node made it, so that no later node
/// restores an earlier one's measurements.
const AGENT_STATE: &str = "/var/lib/reloadscope";

/// Marks, in the record of what existed before `up`, `KUBE-*` iptables chains.
const KUBE_CHAINS: &str = "iptables KUBE-* chains";

/// Notes what existed before `up`, so that `down` removes only what the node made:
/// the log dirs and the sandboxes' network namespaces.
pub fn record_before(layout: &Layout) -> Result<()> {
    let existing: Vec<String> = [POD_LOGS, CONTAINER_LOGS, CNI_STATE, AGENT_STATE]
        .into_iter()
        .filter(|p| Path::new(p).exists())
        .map(str::to_owned)
        .chain(netns_entries())
        .chain(net::kube_chains_exist().then(|| KUBE_CHAINS.to_owned()))
        .collect();
    fs::write(layout.state.join("existed.before"), existing.join("\n"))
        .context("could not record the machine's state before up")
}

fn netns_entries() -> Vec<String> {
    fs::read_dir(NETNS_DIR)
        .into_iter()
        .flatten()
        .flatten()
        .map(|e| e.path().display().to_string())
        .collect()
}

/// Everything, in order; each step runs even when an earlier one failed, and the
/// first error is returned at the end.
pub fn all(layout: &Layout, bins: &Binaries) -> Result<()> {
    let before: BTreeSet<String> = fs::read_to_string(layout.state.join("existed.before"))
        .unwrap_or_default()
        .lines()
        .map(str::to_owned)
        .collect();
    let mut errors: Vec<anyhow::Error> = Vec::new();
    let mut step = |what: &str, result: Result<()>| {
        if let Err(e) = result {
            eprintln!("cluster: {what}: {e:#}");
            errors.push(e.context(what.to_owned()));
        }
    };

    daemons::stop(layout, "kubelet", Duration::from_secs(10));
    step("killing the containers", kill_containers(layout));
    for name in DAEMONS.iter().rev() {
        daemons::stop(layout, name, Duration::from_secs(10));
    }
    step("stopping the containerd shims", kill_shims(layout));
    if bins.kube_proxy().is_file() {
        // kube-proxy's own clean-up of its KUBE-* chains and rules.
        let out = Command::new(bins.kube_proxy()).arg("--cleanup").output();
        step(
            "kube-proxy --cleanup",
            out.map(drop).context("could not run kube-proxy --cleanup"),
        );
    }
    if !before.contains(KUBE_CHAINS) {
        step(
            "removing the KUBE-* iptables chains",
            net::remove_kube_chains(),
        );
    }
    step("unmounting", unmount_all(layout, &before));
    step("removing the kubelet's cgroups", remove_cgroups());
    step("removing the network", net::down(layout));
    let mut dirs: Vec<PathBuf> = vec![KUBELET_ROOT.into(), layout.state.clone()];
    dirs.extend(
        [POD_LOGS, CONTAINER_LOGS, CNI_STATE, AGENT_STATE]
            .into_iter()
            .filter(|d| !before.contains(*d))
            .map(PathBuf::from),
    );
    if before.contains(CNI_STATE) {
        dirs.push(Path::new(CNI_STATE).join("networks/reloadscope"));
        let results = fs::read_dir(Path::new(CNI_STATE).join("results"));
        for entry in results.into_iter().flatten().flatten() {
            if entry
                .file_name()
                .to_string_lossy()
                .starts_with("reloadscope-")
            {
                let _ = fs::remove_file(entry.path());
            }
        }
    }
    for dir in dirs {
        if dir.exists() {
            step(
                &format!("removing {}", dir.display()),
                fs::remove_dir_all(&dir).with_context(|| format!("{}", dir.display())),
            );
        }
    }
    match errors.into_iter().next() {
        None => Ok(()),
        Some(first) => Err(first),
    }
}

/// SIGKILL to every task (containers and sandboxes) of the kubelet's namespace,
/// then waits until containerd reports none running.
fn kill_containers(layout: &Layout) -> Result<()> {
    if daemons::running(layout, "containerd").is_none() {
        return Ok(());
    }
    let ids = |status: Option<&str>| -> Vec<String> {
        super::ctr(layout, &["tasks", "ls"])
            .unwrap_or_default()
            .lines()
            .skip(1)
            .filter_map(|l| {
                let f: Vec<&str> = l.split_whitespace().collect();
                let keep = status.is_none_or(|s| f.get(2) == Some(&s));
                keep.then(|| f.first().map(|s| (*s).to_owned())).flatten()
            })
            .collect()
    };
    for id in ids(None) {
        let _ = super::ctr(
            layout,
            &["tasks", "kill", "--signal", "SIGKILL", "--all", &id],
        );
    }
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let left = ids(Some("RUNNING"));
        if left.is_empty() {
            return Ok(());
        }
        if Instant::now() >= deadline {
            anyhow::bail!(
                "tasks still running 30 s after SIGKILL: {}",
                left.join(", ")
            );
        }
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// The shims of the node's containerd outlive it: each one is found by the socket
/// address on its command line, and killed.
fn kill_shims(layout: &Layout) -> Result<()> {
    let socket = layout.containerd_socket().display().to_string();
    let mut pids = Vec::new();
    for entry in fs::read_dir("/proc")?.flatten() {
        let Ok(pid) = entry.file_name().to_string_lossy().parse::<i32>() else {
            continue;
        };
        let Ok(cmdline) = fs::read(entry.path().join("cmdline")) else {
            continue;
        };
        let args: Vec<&[u8]> = cmdline.split(|b| *b == 0).collect();
        let is_shim = args
            .first()
            .is_some_and(|a| a.ends_with(b"containerd-shim-runc-v2"));
        if is_shim && args.contains(&socket.as_bytes()) {
            pids.push(pid);
        }
    }
    for pid in &pids {
        // SAFETY: a plain syscall on a pid whose command line names our socket.
        unsafe { libc::kill(*pid, libc::SIGKILL) };
    }
    let deadline = Instant::now() + Duration::from_secs(10);
    while pids
        .iter()
        .any(|p| daemons::start_time(*p as u32).is_some())
    {
        if Instant::now() >= deadline {
            anyhow::bail!("containerd shims {pids:?} still running 10 s after SIGKILL");
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    Ok(())
}

/// Every mount under the kubelet root and the node's state dir (containers' root
/// filesystems, sandboxes' shm, volumes, subPaths), and the network namespaces the
/// node made, deepest first, detached.
fn unmount_all(layout: &Layout, before: &BTreeSet<String>) -> Result<()> {
    // The kubelet root itself too: the kubelet bind-mounts it onto itself to make
    // it a shared mount.
    let state = layout.state.display().to_string();
    let under = |p: &str, dir: &str| {
        p == dir
            || p.strip_prefix(dir)
                .is_some_and(|rest| rest.starts_with('/'))
    };
    let mountinfo = fs::read_to_string("/proc/self/mountinfo")?;
    let mut points: Vec<String> = mountinfo
        .lines()
        .filter_map(|l| l.split(' ').nth(4))
        .map(unescape)
        .filter(|p| {
            under(p, KUBELET_ROOT)
                || under(p, &state)
                || (p.starts_with(&format!("{NETNS_DIR}/cni-")) && !before.contains(p))
        })
        .collect();
    points.sort_by_key(|p| std::cmp::Reverse(p.len()));
    points.dedup();
    let mut failed = Vec::new();
    for p in &points {
        let c = std::ffi::CString::new(p.as_str())?;
        // SAFETY: a plain syscall on a NUL-terminated path.
        if unsafe { libc::umount2(c.as_ptr(), libc::MNT_DETACH) } != 0 {
            let err = std::io::Error::last_os_error();
            // Gone already: a parent's detach took it along.
            if err.raw_os_error() != Some(libc::EINVAL) && err.raw_os_error() != Some(libc::ENOENT)
            {
                failed.push(format!("{p}: {err}"));
            }
        }
    }
    for entry in netns_entries() {
        if entry.starts_with(&format!("{NETNS_DIR}/cni-")) && !before.contains(&entry) {
            let _ = fs::remove_file(&entry);
        }
    }
    if failed.is_empty() {
        Ok(())
    } else {
        anyhow::bail!("could not unmount {}", failed.join("; "))
    }
}

/// mountinfo escapes space, tab, newline and backslash as octal.
fn unescape(field: &str) -> String {
    field
        .replace("\\040", " ")
        .replace("\\011", "\t")
        .replace("\\012", "\n")
        .replace("\\134", "\\")
}

/// The kubelet's `kubepods` tree (cgroupfs driver) in every cgroup hierarchy,
/// removed bottom-up once its processes are gone.
fn remove_cgroups() -> Result<()> {
    let mountinfo = fs::read_to_string("/proc/self/mountinfo")?;
    let mut failed = Vec::new();
    for line in mountinfo.lines() {
        let Some((left, right)) = line.split_once(" - ") else {
            continue;
        };
        if !right.starts_with("cgroup ") && !right.starts_with("cgroup2 ") {
            continue;
        }
        let Some(point) = left.split(' ').nth(4) else {
            continue;
        };
        let tree = Path::new(&unescape(point)).join("kubepods");
        if tree.is_dir()
            && let Err(e) = rmdir_tree(&tree)
        {
            failed.push(format!("{}: {e}", tree.display()));
        }
    }
    if failed.is_empty() {
        Ok(())
    } else {
        anyhow::bail!("{}", failed.join("; "))
    }
}

/// cgroup dirs are removed with rmdir alone (their files are not real files).
fn rmdir_tree(dir: &Path) -> std::io::Result<()> {
    for entry in fs::read_dir(dir)?.flatten() {
        if entry.file_type()?.is_dir() {
            rmdir_tree(&entry.path())?;
        }
    }
    fs::remove_dir(dir)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn mountinfo_paths_are_unescaped() {
        assert_eq!(unescape("/var/lib/kubelet/a\\040b"), "/var/lib/kubelet/a b");
        assert_eq!(unescape("/x\\134y"), "/x\\y");
    }
}
