//! The probe's watch calls: `inotify_add_watch` / `inotify_rm_watch` made by pod
//! processes wake the consumer scan, so the watch linter inventories a watch when it
//! is added or removed rather than at the next periodic scan. Each added path is
//! resolved in the caller's own mount namespace for the log.

use std::{
    collections::HashMap,
    ffi::OsStr,
    os::unix::ffi::OsStrExt,
    path::{Path, PathBuf},
    sync::Arc,
};

use agent_common::watch_call::{DecodedWatch, WatchCall};
use aya::maps::{MapData, RingBuf};
use tokio::{io::unix::AsyncFd, sync::Notify};
use tracing::{debug, warn};

use crate::node::cgroup::parse_proc_cgroup;

/// Where `path`, as process `tgid` passed it, is seen from here: through
/// `<proc-root>/<tgid>/root` when absolute, `<proc-root>/<tgid>/cwd` when not.
pub fn resolve_in(proc_root: &Path, tgid: u32, path: &OsStr) -> PathBuf {
    let dir = proc_root.join(tgid.to_string());
    let rel = Path::new(path);
    match rel.strip_prefix("/") {
        Ok(inside) => dir.join("root").join(inside),
        Err(_) => dir.join("cwd").join(rel),
    }
}

/// Reads the watch calls until `stop` completes or the ring's fd fails; wakes `rescan`
/// for each one made by a pod's process. Pod membership is cached per tgid (a tgid's cgroup rarely
/// changes, and the cache is dropped when it grows past a bound).
pub async fn read_calls(
    ring: RingBuf<MapData>,
    proc_root: PathBuf,
    rescan: Arc<Notify>,
    stop: impl Future<Output = ()>,
) {
    tokio::pin!(stop);
    // SAFETY: the ring buffer owns its map fd, which stays open and unchanged until
    // the AsyncFd (and so the RingBuf inside it) is dropped.
    let mut fd = match unsafe { AsyncFd::register(ring) } {
        Ok(fd) => fd,
        Err(e) => {
            warn!(error = %e, "cannot read the probe's watch calls; watches are inventoried by scans only");
            return;
        }
    };
    let mut in_pod: HashMap<u32, Option<String>> = HashMap::new();
    let mut batch = Vec::new();
    loop {
        let mut guard = tokio::select! {
            g = fd.readable_mut() => match g {
                Ok(g) => g,
                Err(_) => return,
            },
            _ = &mut stop => return,
        };
        let ring = guard.get_inner_mut();
        while let Some(item) = ring.next() {
            match DecodedWatch::decode(&item) {
                Ok(w) => batch.push(w),
                Err(e) => warn!(error = %e, "undecodable watch call record"),
            }
        }
        guard.clear_ready();
        let mut wake = false;
        for w in batch.drain(..) {
            if in_pod.len() > 4096 {
                in_pod.clear();
            }
            let container = in_pod.entry(w.tgid).or_insert_with(|| {
                let cgroup =
                    std::fs::read_to_string(proc_root.join(w.tgid.to_string()).join("cgroup"));
                cgroup
                    .ok()
                    .as_deref()
                    .and_then(parse_proc_cgroup)
                    .map(|c| c.container_id)
            });
            let Some(container) = container else { continue };
            wake = true;
            log(&proc_root, container, &w);
        }
        if wake {
            rescan.notify_one();
        }
    }
}

fn log(proc_root: &Path, container: &str, w: &DecodedWatch) {
    let container = &container[..container.len().min(12)];
    match w.call {
        WatchCall::Add => {
            let seen = resolve_in(proc_root, w.tgid, &w.path);
            debug!(
                container,
                pid = w.tgid,
                fd = w.fd,
                wd = w.wd,
                mask = format_args!("{:#x}", w.mask),
                path = %String::from_utf8_lossy(w.path.as_bytes()),
                seen = %seen.display(),
                "inotify watch added"
            );
        }
        WatchCall::Remove => {
            debug!(
                container,
                pid = w.tgid,
                fd = w.fd,
                wd = w.wd,
                "inotify watch removed"
            );
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn paths_resolve_in_the_callers_namespace() {
        let p = Path::new("/host/proc");
        assert_eq!(
            resolve_in(p, 42, OsStr::new("/etc/app/config.yaml")),
            Path::new("/host/proc/42/root/etc/app/config.yaml")
        );
        assert_eq!(
            resolve_in(p, 42, OsStr::new("config.yaml")),
            Path::new("/host/proc/42/cwd/config.yaml")
        );
    }
}
