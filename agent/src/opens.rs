//! The opens source: fanotify `FAN_OPEN` on the volumes' data, attributed to processes.
//!
//! Chosen by measurement (BENCHMARKS.md, DOMAIN.md 7): eBPF on the open path taxes
//! every open on the node on kernels without fentry; fanotify marks cost nothing
//! outside the marked files and name the opener's host pid. Marks:
//! - tmpfs volumes (secret, projected): one filesystem mark each;
//! - disk volumes (configmap, downwardAPI): an inode mark with `FAN_EVENT_ON_CHILD` on
//!   the current timestamped dir, and on each new one as soon as inotify sees it created,
//!   before the kubelet swaps (a mark on the volume dir would not see opens made through
//!   `..data`). A mark placed after the swap is counted as late.
//!
//! The group reports directory handles and names, never file descriptors: the agent
//! holds no Secret file open and reads none.

use std::{
    collections::HashMap,
    path::{Path, PathBuf},
    sync::{Arc, atomic::Ordering::Relaxed},
    time::SystemTime,
};

use tokio::sync::mpsc;
use tracing::{debug, warn};

use crate::{
    consumers::parse_proc_cgroup,
    events::{Event, Sender},
    fanotify::{DirId, FanEvent, Fanotify},
    metrics::Shared,
    probe::read_target,
    reloads::Opener,
    volumes::{DATA, VolumeKey},
};

/// What the state loop tells this source.
#[derive(Debug)]
pub enum Command {
    /// A volume was found; `current` is its data dir.
    Volume {
        key: VolumeKey,
        dir: PathBuf,
        current: Option<String>,
    },
    /// A timestamped dir was created in a volume (an update is under way).
    DataDir {
        key: VolumeKey,
        dir: PathBuf,
        ts_dir: String,
    },
    Gone {
        key: VolumeKey,
    },
}

/// Processes whose opens are the kubelet's own periodic re-reads, by command name
/// (DOMAIN.md 2: kubelet, k3s's embedded one, MicroK8s' kubelite).
const KUBELET_COMMS: [&str; 5] = ["kubelet", "k3s", "k3s-server", "k3s-agent", "kubelite"];

pub struct Opens {
    fan: Fanotify,
    proc_root: PathBuf,
    dirs: HashMap<DirId, (VolumeKey, String)>,
    shared: Arc<Shared>,
}

impl Opens {
    pub fn new(fan: Fanotify, proc_root: PathBuf, shared: Arc<Shared>) -> Self {
        Opens {
            fan,
            proc_root,
            dirs: HashMap::new(),
            shared,
        }
    }

    fn register(&mut self, key: &VolumeKey, ts_path: &Path, ts_dir: &str) {
        match DirId::of(ts_path) {
            Ok(id) => {
                self.dirs.insert(id, (key.clone(), ts_dir.to_owned()));
            }
            Err(e) => {
                debug!(path = %ts_path.display(), error = %e, "no handle for data dir (gone?)")
            }
        }
    }

    fn command(&mut self, cmd: Command) {
        match cmd {
            Command::Volume { key, dir, current } => {
                if key.volume_type.is_tmpfs()
                    && let Err(e) = self.fan.mark_filesystem(&dir)
                {
                    warn!(volume = %key, error = %e, "cannot mark volume for opens");
                }
                if let Some(ts) = current {
                    let ts_path = dir.join(&ts);
                    if !key.volume_type.is_tmpfs()
                        && let Err(e) = self.fan.mark_dir(&ts_path)
                    {
                        debug!(volume = %key, error = %e, "cannot mark data dir");
                    }
                    self.register(&key, &ts_path, &ts);
                }
            }
            Command::DataDir { key, dir, ts_dir } => {
                let ts_path = dir.join(&ts_dir);
                if !key.volume_type.is_tmpfs()
                    && let Err(e) = self.fan.mark_dir(&ts_path)
                {
                    debug!(volume = %key, error = %e, "cannot mark new data dir");
                }
                self.register(&key, &ts_path, &ts_dir);
                if read_target(&dir.join(DATA)).as_deref() == Some(ts_dir.as_str()) {
                    self.shared.late_marks.fetch_add(1, Relaxed);
                }
            }
            Command::Gone { key } => self.dirs.retain(|_, (k, _)| *k != key),
        }
    }

    /// Who `pid` is: a pod container by its cgroup, else the kubelet by name, else host.
    fn opener(&self, pid: i32) -> Opener {
        let dir = self.proc_root.join(pid.to_string());
        if let Some(c) = std::fs::read_to_string(dir.join("cgroup"))
            .ok()
            .as_deref()
            .and_then(parse_proc_cgroup)
        {
            return Opener::Container {
                pod_uid: c.pod_uid,
                id: c.container_id,
            };
        }
        let comm = std::fs::read_to_string(dir.join("comm")).unwrap_or_default();
        if KUBELET_COMMS.contains(&comm.trim_end()) {
            Opener::Kubelet
        } else {
            Opener::Host
        }
    }

    /// Runs until the command channel or the event queue closes.
    pub async fn run(mut self, mut cmds: mpsc::UnboundedReceiver<Command>, tx: Sender) {
        let me = std::process::id() as i32;
        loop {
            tokio::select! {
                cmd = cmds.recv() => match cmd {
                    Some(c) => self.command(c),
                    None => return,
                },
                evs = self.fan.read() => {
                    let evs = match evs {
                        Ok(evs) => evs,
                        Err(e) => {
                            warn!(error = %e, "reading fanotify events failed; reload measurement stops");
                            return;
                        }
                    };
                    let at = SystemTime::now();
                    for ev in evs {
                        match ev {
                            FanEvent::Overflow => {
                                self.shared.fanotify_overflows.fetch_add(1, Relaxed);
                                warn!("fanotify queue overflowed: some opens were not seen");
                            }
                            FanEvent::Open { pid, dir, .. } if pid != me => {
                                let Some((key, ts_dir)) = self.dirs.get(&dir).cloned() else { continue };
                                let opener = self.opener(pid);
                                if tx.send(Event::Opened { opener, key, ts_dir, at }).await.is_err() {
                                    return;
                                }
                            }
                            FanEvent::Open { .. } => {}
                        }
                    }
                }
            }
        }
    }
}
