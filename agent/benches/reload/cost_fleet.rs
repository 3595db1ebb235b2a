//! The cost measure's lab node (1,000 volumes, one read-once container each), its agent
//! starts (waiting until steady: every volume, consumer and mark, each volume settled),
//! and the stale window: the two target volumes updated, and the wait until the agent
//! shows their consumers stale and the kernel reports their new data dirs.

use std::{
    net::SocketAddr,
    sync::atomic::Ordering::Relaxed,
    time::{Duration, Instant},
};

use anyhow::{Context as _, bail};
use reloadscope::{
    agent,
    agent::Running,
    node::volumes::{VolumeKey, VolumeType},
    opens::SettledMarks,
};
use reloadscope_lab::{
    self, AtomicWriter, CallStyle, ContainerSpec, LabContainer, LabNode, Strategy, WriteOutcome,
    payload,
};

use super::{
    cost::Side,
    fanotify_marks::{MarkKind, Marks, inode_id, own_fanotify_mark_lines, own_fanotify_marks},
};

/// The volumes of every pod: three ConfigMaps on disk, two Secrets on tmpfs.
pub const POD_VOLUMES: [(VolumeType, &str); 5] = [
    (VolumeType::ConfigMap, "app-config"),
    (VolumeType::ConfigMap, "features"),
    (VolumeType::ConfigMap, "routes"),
    (VolumeType::Secret, "tls"),
    (VolumeType::Secret, "db-creds"),
];
/// The key every consumer reads and the loops open.
pub const KEY: &str = "config.yaml";
/// How long an agent start may take to find every volume, consumer and mark.
const STEADY_MAX: Duration = Duration::from_secs(60);
/// How long the agent may take to show an update of the targets.
const STALE_MAX: Duration = Duration::from_secs(10);

pub struct Fleet {
    pub node: LabNode,
    pub volumes: Vec<(VolumeKey, AtomicWriter)>,
    /// One per volume, in the order of `volumes`.
    pub containers: Vec<LabContainer>,
    pub setup: Duration,
}

impl Fleet {
    pub fn secrets(&self) -> usize {
        self.volumes
            .iter()
            .filter(|(k, _)| k.volume_type.is_tmpfs())
            .count()
    }

    /// What `side`'s agent holds once steady, every volume settled. With reloads and
    /// `--settled-marks ignore`: a dir mark on each volume's data dir with an ignore
    /// mask, a filesystem mark on each Secret tmpfs, a mount mark on each consumer's
    /// bind mount; with `remove` (and `auto`, no consumer watching): no mark at all. Detection only: no fanotify group.
    pub fn expected_marks(&self, side: Side, settled: SettledMarks) -> Marks {
        match (side.reloads(), settled) {
            (false, _) => Marks::default(),
            // `auto`: this fleet's consumers read once and watch nothing.
            (true, SettledMarks::Remove | SettledMarks::Auto) => Marks {
                groups: 1,
                ..Marks::default()
            },
            (true, SettledMarks::Ignore) => Marks {
                groups: 1,
                inode: self.volumes.len(),
                mount: self.containers.len(),
                filesystem: self.secrets(),
                ignored: self.volumes.len(),
            },
        }
    }

    /// Stops every container, then the node goes (unmounting its tmpfs volumes).
    pub fn teardown(self) -> anyhow::Result<()> {
        let mut first = None;
        for c in self.containers {
            if let Err(e) = c.stop() {
                first.get_or_insert(e);
            }
        }
        drop(self.node);
        first.map_or(Ok(()), Err)
    }
}

fn content(key: &str, pod: usize, rev: u64) -> String {
    format!("rev={rev:06}\npod={pod}\nkey={key}\nlog.level=info\n")
}

fn volume_payload(pod: usize, rev: u64) -> reloadscope_lab::Payload {
    payload(&[
        (KEY, &content(KEY, pod, rev)),
        ("extra.properties", "a=1\nb=2\n"),
    ])
}

/// `pods` pods with the five volumes of [`POD_VOLUMES`] each, populated, and one
/// read-once lab container per volume. Pod by pod: each container's new mount namespace
/// copies (then detaches) the tmpfs mounts made so far.
pub fn build_fleet(pods: usize) -> anyhow::Result<Fleet> {
    let bin = &reloadscope_lab::lab_bin()?;
    let start = Instant::now();
    let mut node = LabNode::temp().context("lab node")?;
    let mut volumes = Vec::new();
    let mut containers = Vec::new();
    let built = (|| -> anyhow::Result<()> {
        for i in 0..pods {
            let pod = node.add_pod("bench", &format!("fleet-{i}"))?;
            let first = volumes.len();
            for (ty, name) in POD_VOLUMES {
                let w = node.add_volume(&pod, ty, name)?;
                match w.write(&volume_payload(i, 0), CallStyle::GoAt)? {
                    WriteOutcome::Written { initial: true, .. } => {}
                    other => bail!("initial population of {name}: {other:?}"),
                }
                let key = VolumeKey {
                    pod_uid: pod.uid.clone(),
                    volume_type: ty,
                    name: name.to_owned(),
                };
                volumes.push((key, w));
            }
            for (key, w) in &volumes[first..] {
                let name = format!("{}-reader", key.name);
                let spec = ContainerSpec::new(&name, w.dir(), KEY, Strategy::ReadOnce);
                containers.push(LabContainer::start(bin, &node, &pod, &spec)?);
            }
            if (i + 1) % 25 == 0 || i + 1 == pods {
                eprintln!(
                    "[reload] cost: {} pods, {} volumes, {} containers up ({:.1} s)",
                    i + 1,
                    volumes.len(),
                    containers.len(),
                    start.elapsed().as_secs_f64()
                );
            }
        }
        Ok(())
    })();
    if let Err(e) = built {
        for c in containers {
            let _ = c.stop();
        }
        return Err(e);
    }
    Ok(Fleet {
        node,
        volumes,
        containers,
        setup: start.elapsed(),
    })
}

/// What one agent start looked like once steady.
pub struct Steady {
    pub running: Running,
    pub took: Duration,
    pub marks: Marks,
    pub consumers: usize,
    pub watches: usize,
}

/// Starts `side`'s agent and waits until it has every volume, every consumer and every
/// mark the fleet calls for, every volume settled (its data dir ignored or unmarked); detection
/// only: ready with every volume known. After [`STEADY_MAX`] what it had is reported.
pub fn start_steady(
    rt: &tokio::runtime::Runtime,
    fleet: &Fleet,
    side: Side,
    settled: SettledMarks,
) -> anyhow::Result<Steady> {
    let t = Instant::now();
    let mut cfg = reloadscope_lab::agent_config(
        &fleet.node,
        side.ebpf(),
        SocketAddr::from(([127, 0, 0, 1], 0)),
    );
    cfg.reloads = side.reloads();
    cfg.settled_marks = settled;
    let running = rt.block_on(agent::start(cfg))?;
    if side.ebpf() && !running.shared.ebpf_loaded() {
        rt.block_on(running.stop());
        bail!("the eBPF probe did not load (the benchmark needs root)");
    }
    if side.reloads() && !running.shared.fanotify.load(Relaxed) {
        rt.block_on(running.stop());
        bail!("the agent runs without fanotify (the benchmark needs root)");
    }
    let want = fleet.expected_marks(side, settled);
    let want_consumers = if side.reloads() {
        fleet.containers.len()
    } else {
        0
    };
    loop {
        let ready = running.shared.ready.load(Relaxed);
        let volumes = {
            let tr = running.shared.tracker.lock().expect("tracker lock");
            fleet
                .volumes
                .iter()
                .filter(|(k, _)| tr.volume(k).is_some())
                .count()
        };
        let consumers = running
            .shared
            .reloads
            .lock()
            .expect("reloads lock")
            .consumers()
            .count();
        let marks = own_fanotify_marks();
        let steady =
            ready && volumes == fleet.volumes.len() && consumers == want_consumers && marks == want;
        if steady || t.elapsed() > STEADY_MAX {
            if !steady {
                eprintln!(
                    "[reload] cost: WARNING {} not steady after {:.0} s: ready {ready}, \
                     {volumes} volumes, {consumers} consumers, marks {marks:?} (want {want:?})",
                    side.label(),
                    STEADY_MAX.as_secs_f64()
                );
            }
            return Ok(Steady {
                took: t.elapsed(),
                marks,
                consumers,
                watches: running.shared.watches.load(Relaxed),
                running,
            });
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// Writes the volumes `vols` anew (revision `rev`, the kubelet's calls), as the kubelet
/// does on an update: their read-once consumers go stale. Returns the new data dirs.
pub fn update(fleet: &Fleet, vols: &[usize], rev: u64) -> anyhow::Result<Vec<String>> {
    let mut dirs = Vec::new();
    for &i in vols {
        let (key, w) = &fleet.volumes[i];
        let pod = i / POD_VOLUMES.len();
        match w.write(&volume_payload(pod, rev), CallStyle::GoAt)? {
            WriteOutcome::Written { ts_dir, .. } => dirs.push(ts_dir),
            other => bail!("update of {}: {other:?}", key.name),
        }
    }
    Ok(dirs)
}

/// The stale window, as the agent and the kernel show it.
pub struct Stale {
    /// From the updates' end until the agent's state showed them: the new data dirs
    /// and, with reloads, each volume's consumer stale (pending, the volume not
    /// settled). `None`: not within [`STALE_MAX`].
    pub state: Option<Duration>,
    /// With reloads, until the kernel also reported opens of each new dir (an inode
    /// mark on it, no ignore).
    pub kernel: Option<Duration>,
    pub marks: Marks,
}

/// Waits until the agent shows the update of each of `vols` (its data dir now
/// `dirs[n]`), in its state, then (with reloads) in the kernel.
pub fn wait_stale(
    agent: &Running,
    side: Side,
    fleet: &Fleet,
    vols: &[usize],
    dirs: &[String],
) -> Stale {
    let t = Instant::now();
    let (mut state, mut kernel) = (None, None);
    loop {
        if state.is_none()
            && vols
                .iter()
                .zip(dirs)
                .all(|(&i, ts)| state_shows(agent, side, fleet, i, ts))
        {
            state = Some(t.elapsed());
        }
        if state.is_some() && side.reloads() && kernel_reports(fleet, vols, dirs) {
            kernel = Some(t.elapsed());
        }
        let done = state.is_some() && (kernel.is_some() || !side.reloads());
        if done || t.elapsed() > STALE_MAX {
            let marks = own_fanotify_marks();
            if !done {
                eprintln!(
                    "[reload] cost: WARNING {} did not show the targets' update within {:.0} s \
                     (state: {}, kernel: {}); marks {marks:?}",
                    side.label(),
                    STALE_MAX.as_secs_f64(),
                    state.is_some(),
                    kernel.is_some(),
                );
            }
            return Stale {
                state,
                kernel,
                marks,
            };
        }
        std::thread::sleep(Duration::from_micros(200));
    }
}

fn state_shows(agent: &Running, side: Side, fleet: &Fleet, i: usize, ts: &str) -> bool {
    let key = &fleet.volumes[i].0;
    let current = {
        let tr = agent.shared.tracker.lock().expect("tracker lock");
        tr.volume(key)
            .is_some_and(|v| v.updates > 0 && v.current.as_deref() == Some(ts))
    };
    if !side.reloads() || !current {
        return current;
    }
    let r = agent.shared.reloads.lock().expect("reloads lock");
    let pending = r
        .consumer(key, &fleet.containers[i].id)
        .and_then(|c| c.pending.as_ref())
        .is_some_and(|(p, _)| p == ts);
    pending && !r.settled(key)
}

/// Whether the agent's fanotify group reports opens in each new data dir: the dir has
/// its inode mark, and no mark ignores it.
fn kernel_reports(fleet: &Fleet, vols: &[usize], dirs: &[String]) -> bool {
    let (_, lines) = own_fanotify_mark_lines();
    vols.iter().zip(dirs).all(|(&i, ts)| {
        let (_, w) = &fleet.volumes[i];
        let Some(id) = inode_id(&w.dir().join(ts)) else {
            return false;
        };
        let on_dir: Vec<_> = lines.iter().filter(|l| l.is_on(id)).collect();
        let ignored = on_dir.iter().any(|l| l.ignored != 0);
        let marked = on_dir
            .iter()
            .any(|l| l.kind == MarkKind::Inode && l.mask != 0);
        !ignored && marked
    })
}
