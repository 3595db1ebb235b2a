//! `reloadscope inspect`: a one-shot look at every volume on the node, its consumers,
//! its last update and, per consumer, whether it has the current data. Works from the
//! file system and `/proc` alone, without the agent running.
//!
//! - Volumes: every `<root>/pods/<uid>/volumes/kubernetes.io~<plugin>/<volume>/`; the
//!   current data is the `..data` target, the last update the `..data` symlink's mtime.
//! - Consumers: [`consumers::scan`] (cgroups and mountinfo).
//! - Verdicts ([`Verdict`]): a subPath mount never gets updates; a container whose
//!   process has a file of an older data dir open still reads old data; one that
//!   started after the last update read the current data; of the others only the
//!   running agent knows whether they reloaded.
//!
//! The files of a volume are never opened: only directory listings, `lstat`, and
//! `readlink` of the volume's `..data` and of processes' fds.

mod output;
mod verdict;
mod walk;

use std::{
    io::Write as _,
    path::{Path, PathBuf},
    time::SystemTime,
};

pub use output::{ConsumerReport, Report, VolumeReport};
pub use verdict::{Verdict, assess, old_data_fd};
pub use walk::{Data, read_data};

use crate::{clock, consumers, linter, linter::Finding, node::volumes::Roots, reloads::MountKind};

/// Options of `reloadscope inspect`.
#[derive(Clone, Debug, clap::Args)]
pub struct InspectArgs {
    /// Kubelet root directory; repeat for nodes with several (k3s, MicroK8s, k0s use
    /// other paths).
    #[arg(
        long = "kubelet-root",
        value_name = "DIR",
        default_value = "/var/lib/kubelet"
    )]
    pub kubelet_roots: Vec<PathBuf>,
    /// Pod log directory, `<namespace>_<pod>_<uid>/` entries: gives pod names.
    #[arg(long, value_name = "DIR", default_value = "/var/log/pods")]
    pub pod_logs_dir: PathBuf,
    /// Container log directory, `<pod>_<namespace>_<container>-<id>.log` entries: gives
    /// container names.
    #[arg(long, value_name = "DIR", default_value = "/var/log/containers")]
    pub container_logs_dir: PathBuf,
    /// Where the host's /proc is mounted (the node's, not the container's).
    #[arg(long, value_name = "DIR", default_value = "/proc")]
    pub proc_root: PathBuf,
    /// One JSON document instead of the table.
    #[arg(long)]
    pub json: bool,
}

/// What one inspection found.
#[derive(Debug, Default)]
pub struct Inspection {
    pub report: Report,
    /// Entries skipped (vanished mid-scan, unreadable): worth a line, never an error.
    pub notes: Vec<String>,
    /// Kubelet roots that do not exist or cannot be read.
    pub errors: Vec<String>,
}

/// Looks at every volume under the roots and at their consumers.
pub fn inspect(args: &InspectArgs) -> Inspection {
    let mut notes = Vec::new();
    let roots = Roots::new(args.kubelet_roots.iter().cloned());
    let (volumes, errors) = walk::volumes(&roots, &mut notes);
    let names = walk::pod_names(&args.pod_logs_dir, &mut notes);
    if let Err(e) = std::fs::read_dir(&args.proc_root) {
        notes.push(format!(
            "cannot read {:?}: {e}: consumers unknown",
            args.proc_root
        ));
    }
    let keyed: Vec<_> = volumes
        .iter()
        .map(|v| (v.key.clone(), v.dir.clone()))
        .collect();
    let mut scan = consumers::scan(&args.proc_root, &args.container_logs_dir, &keyed);
    if scan.unreadable > 0 {
        notes.push(format!(
            "{} processes vanished or could not be read while scanned",
            scan.unreadable
        ));
    }
    let pids = walk::container_pids(&args.proc_root);
    let mut fds_unreadable = 0usize;

    let mut report = Report::default();
    for v in &volumes {
        let (namespace, pod) = match names.get(&v.key.pod_uid) {
            Some(n) => (n.namespace.clone(), n.name.clone()),
            None => (String::new(), v.key.pod_uid.clone()),
        };
        // The paths a process may see the volume dir at, besides its mount path.
        let mut host_dirs = vec![v.dir.clone()];
        if let Ok(real) = std::fs::canonicalize(&v.dir)
            && real != v.dir
        {
            host_dirs.push(real);
        }
        let mut consumers = Vec::new();
        let inodes = linter::VolumeInodes {
            pinned: scan.pinned.remove(&v.key).unwrap_or_default(),
            ..linter::VolumeInodes::read(&v.dir)
        };
        for f in scan.consumers.remove(&v.key).unwrap_or_default() {
            let inside = f
                .mount_path
                .as_deref()
                .and_then(|p| walk::inside_path(&args.proc_root, p));
            let held = match (&v.data, f.mount) {
                (Some(data), MountKind::Volume) => {
                    let mut dirs = host_dirs.clone();
                    dirs.extend(inside.clone());
                    let pids = pids.get(&f.id).map(Vec::as_slice).unwrap_or_default();
                    holds_old_data(&args.proc_root, pids, &dirs, &data.dir, &mut fds_unreadable)
                }
                _ => false,
            };
            let verdict = assess(f.mount, f.started, v.data.as_ref().map(|d| d.swapped), held);
            let held_watches = scan.watches.get(&f.id).map_or(&[][..], Vec::as_slice);
            let found = linter::classify(f.mount, held_watches, &inodes).findings;
            // A subPath consumer's verdict says it already.
            let fixes = found.iter().filter(|w| **w != Finding::SubPath);
            consumers.push(ConsumerReport {
                container: f.name,
                container_id: f.id,
                mount: f.mount.label(),
                mount_path: inside.map(|p| p.to_string_lossy().into_owned()),
                verdict: verdict.label(),
                hint: verdict.hint(),
                watch_hints: fixes.map(|w| w.hint()).filter(|h| !h.is_empty()).collect(),
                watches: found.iter().map(|w| w.label()).collect(),
            });
        }
        consumers
            .sort_by(|a, b| (&a.container, &a.container_id).cmp(&(&b.container, &b.container_id)));
        report.volumes.push(VolumeReport {
            namespace,
            pod,
            pod_uid: v.key.pod_uid.clone(),
            volume: v.key.name.clone(),
            volume_type: v.key.volume_type.label(),
            data_dir: v.data.as_ref().map(|d| d.dir.clone()),
            last_update_unix_seconds: v.data.as_ref().map(|d| clock::unix_seconds(d.swapped)),
            consumers,
        });
    }
    if fds_unreadable > 0 {
        notes.push(format!(
            "the open files of {fds_unreadable} processes could not be read (exited, or not root): \
             their containers may hold old data unseen"
        ));
    }
    report.volumes.sort_by(|a, b| {
        (&a.namespace, &a.pod, &a.pod_uid, a.volume_type, &a.volume).cmp(&(
            &b.namespace,
            &b.pod,
            &b.pod_uid,
            b.volume_type,
            &b.volume,
        ))
    });
    Inspection {
        report,
        notes,
        errors,
    }
}

/// Whether any of `pids` has a file of a data dir other than `current` open.
fn holds_old_data(
    proc_root: &Path,
    pids: &[u32],
    dirs: &[PathBuf],
    current: &str,
    unreadable: &mut usize,
) -> bool {
    pids.iter()
        .any(|&pid| match walk::fd_targets(proc_root, pid) {
            Ok(targets) => targets.iter().any(|t| old_data_fd(t, dirs, current)),
            Err(_) => {
                *unreadable += 1;
                false
            }
        })
}

/// `reloadscope inspect`: prints the report (table or JSON) on stdout, notes on
/// stderr; fails, after printing what the other roots hold, when a root is missing.
pub fn run(args: InspectArgs) -> anyhow::Result<()> {
    let found = inspect(&args);
    for n in &found.notes {
        tracing::warn!("{n}");
    }
    let text = if args.json {
        output::json(&found.report)
    } else {
        output::table(&found.report, SystemTime::now())
    };
    let mut out = std::io::stdout().lock();
    match out.write_all(text.as_bytes()).and_then(|()| out.flush()) {
        // Piped into `head`: what was wanted has been read.
        Err(e) if e.kind() == std::io::ErrorKind::BrokenPipe => {}
        other => other?,
    }
    if !found.errors.is_empty() {
        anyhow::bail!("{}", found.errors.join("; "));
    }
    Ok(())
}
