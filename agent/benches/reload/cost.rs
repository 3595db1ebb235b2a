//! Measure 1: what the reload machinery (fanotify marks, /proc scans,
//! the attribution of every open it is told about) adds to an open+close, on a node with
//! 1,000 watched volumes, each consumed by a lab container.
//!
//! Rounds alternate the agent off (baseline), in-process for detection only (`ebpf:
//! false, reloads: false`: the inotify watches on the kubelet dirs, which tax every open
//! on their filesystem a little), with reloads and `ebpf: false` (the reload machinery's
//! own cost is this over detection only; the probe's syscall tracepoints tax every
//! syscall, measured by the detect benchmark, and would mix in), and optionally with
//! `ebpf: true` (the agent as deployed), in the order A B C D, D C B A, ... Each loop
//! runs in a process of its own (see `openloop`).
//!
//! In every side and round, the loops run first with every volume settled (each
//! consumer has its data: the agent has removed the data dirs' marks), then, after an
//! update of the two target volumes whose read-once consumers never reload, again on
//! the paths that follow `..data`: the stale window's cost.

use std::{
    path::{Path, PathBuf},
    sync::atomic::Ordering::Relaxed,
    time::{Duration, Instant},
};

use anyhow::Context as _;
use reloadscope::{agent::Running, node::volumes::VolumeType};

use super::{
    cost_fleet::{Fleet, KEY, POD_VOLUMES, build_fleet, start_steady, update, wait_stale},
    cost_report::report,
    fanotify_marks::Marks,
    openloop,
};
use crate::common::{
    figures::fmt_ns,
    machine::{fs_type, own_fds, tracepoint_prog_holders},
    procfs::self_cpu,
};

pub struct Params {
    pub pods: usize,
    pub rounds: usize,
    /// open+close calls per loop and round.
    pub calls: u64,
    /// Also measure the agent with its eBPF probe (`ebpf: true`).
    pub ebpf_row: bool,
    /// The agent's `--settled-marks`.
    pub settled: reloadscope::opens::SettledMarks,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Side {
    Off,
    /// The agent for detection only: `ebpf: false, reloads: false`.
    Detect,
    /// The agent with reloads measured.
    Agent {
        ebpf: bool,
    },
}

impl Side {
    pub fn label(self) -> &'static str {
        match self {
            Side::Off => "no agent (baseline)",
            Side::Detect => "agent, detection only",
            Side::Agent { ebpf: false } => "agent, `ebpf: false`",
            Side::Agent { ebpf: true } => "agent, `ebpf: true`",
        }
    }

    pub fn ebpf(self) -> bool {
        matches!(self, Side::Agent { ebpf: true })
    }

    pub fn reloads(self) -> bool {
        matches!(self, Side::Agent { .. })
    }
}

/// The sides' places in the rounds and in the stats.
pub const OFF: usize = 0;
pub const DETECT: usize = 1;
pub const AGENT: usize = 2;
pub const EBPF: usize = 3;

#[derive(Clone, Copy, PartialEq, Eq)]
pub enum Group {
    Unrelated,
    Watched,
}

#[derive(Clone, Copy, PartialEq, Eq)]
pub enum Phase {
    /// Every consumer has the volume's data.
    Settled,
    /// After an update its read-once consumer never reloads.
    Stale,
}

/// One loop: a file, opened from the host or from inside a container's namespace.
pub struct Target {
    pub label: String,
    path: PathBuf,
    /// `path` is in the volume's current data dir: `<vol>/<..data's target>/<KEY>`
    /// (it changes at each update), for the volume of this index.
    in_data_dir_of: Option<usize>,
    mntns_of: Option<u32>,
    pub group: Group,
    pub phase: Phase,
}

impl Target {
    fn path(&self, fleet: &Fleet) -> anyhow::Result<PathBuf> {
        let Some(i) = self.in_data_dir_of else {
            return Ok(self.path.clone());
        };
        let w = &fleet.volumes[i].1;
        let ts = w.current().context("volume without ..data")?;
        Ok(w.dir().join(ts).join(KEY))
    }
}

/// A tmpfs mounted for the run, unmounted on drop.
struct Tmpfs {
    dir: tempfile::TempDir,
}

impl Tmpfs {
    fn mount() -> anyhow::Result<Tmpfs> {
        let dir = tempfile::Builder::new()
            .prefix("reloadscope-bench-tmpfs-")
            .tempdir()
            .context("temp dir for a tmpfs")?;
        nix::mount::mount(
            Some("tmpfs"),
            dir.path(),
            Some("tmpfs"),
            nix::mount::MsFlags::empty(),
            Some("size=1m"),
        )
        .context("mount a tmpfs (needs root)")?;
        Ok(Tmpfs { dir })
    }

    fn path(&self) -> &Path {
        self.dir.path()
    }
}

impl Drop for Tmpfs {
    fn drop(&mut self) {
        if let Err(e) = nix::mount::umount2(self.dir.path(), nix::mount::MntFlags::MNT_DETACH) {
            eprintln!("[reload] could not unmount {:?}: {e}", self.dir.path());
        }
    }
}

#[derive(Default)]
pub struct SideStats {
    /// Per target, ns per call, one per round.
    pub ns: Vec<Vec<f64>>,
    /// Per target, this process's CPU over the loop / its wall time, one per round: the
    /// agent's threads (the main thread only waits for the loop's process).
    pub cpu_share: Vec<Vec<f64>>,
    pub steady_took: Vec<f64>,
    /// Opens of volume files the agent attributed to host processes during the loops.
    pub host_opens: Vec<f64>,
    /// Per target, opens the agent was told of during the loop, one per round.
    pub told: Vec<Vec<f64>>,
    /// Per target, this process's CPU seconds over the loop, one per round.
    pub cpu_secs: Vec<Vec<f64>>,
    pub marks: Vec<Marks>,
    pub consumers: Vec<usize>,
    pub watches: Vec<usize>,
    /// Seconds from the targets' update to the agent's state showing it, and to the
    /// kernel reporting their new dirs too (with reloads), one per round it did.
    pub stale_state: Vec<f64>,
    pub stale_kernel: Vec<f64>,
    /// Rounds where it did not all show within the wait.
    pub stale_missed: usize,
    pub stale_marks: Vec<Marks>,
    pub overflows: u64,
    /// Data dirs the agent marked only after their swap.
    pub late_marks: u64,
}

/// What the report needs beside the stats.
pub struct Run<'a> {
    pub p: &'a Params,
    pub fleet: &'a Fleet,
    pub sides: Vec<Side>,
    pub targets: Vec<Target>,
    pub stats: Vec<SideStats>,
    pub rounds_took: Duration,
    pub leftovers: Vec<String>,
    pub holders: Vec<String>,
}

pub fn run(p: &Params) -> anyhow::Result<String> {
    eprintln!(
        "[reload] cost: starting {} pods x {} volumes and one container per volume",
        p.pods,
        POD_VOLUMES.len()
    );
    let fleet = build_fleet(p.pods)?;
    let r = measure(p, &fleet);
    let t = Instant::now();
    let down = fleet.teardown();
    eprintln!(
        "[reload] cost: fleet torn down in {:.1} s",
        t.elapsed().as_secs_f64()
    );
    let out = r?;
    down.context("tear the fleet down")?;
    Ok(out)
}

/// The loops: unrelated files, then for the first ConfigMap and the first Secret of the
/// fleet its file by each path while settled, and by the paths through `..data` while
/// its consumer is stale. Returns them and the two volumes' indexes.
fn targets(
    fleet: &Fleet,
    root_file: &Path,
    tmpfs_file: &Path,
) -> anyhow::Result<(Vec<Target>, Vec<usize>)> {
    let target = |label: String, path: PathBuf, group| Target {
        label,
        path,
        in_data_dir_of: None,
        mntns_of: None,
        group,
        phase: Phase::Settled,
    };
    let root_fs = fs_type(root_file.parent().unwrap_or(root_file));
    let mut settled = vec![
        target(
            format!("unrelated file, temp dir on the root fs ({root_fs})"),
            root_file.to_path_buf(),
            Group::Unrelated,
        ),
        target(
            "unrelated file, a tmpfs of its own".into(),
            tmpfs_file.to_path_buf(),
            Group::Unrelated,
        ),
    ];
    let mut stale = Vec::new();
    let mut vols = Vec::new();
    for ty in [VolumeType::ConfigMap, VolumeType::Secret] {
        let i = fleet
            .volumes
            .iter()
            .position(|(k, _)| k.volume_type == ty)
            .with_context(|| format!("no {} volume", ty.label()))?;
        vols.push(i);
        let (key, w) = &fleet.volumes[i];
        let what = format!("{} volume ({})", key.volume_type.label(), fs_type(w.dir()));
        settled.push(Target {
            in_data_dir_of: Some(i),
            ..target(
                format!("{what}: host path in the timestamped dir, `<vol>/..<ts>/{KEY}`"),
                PathBuf::new(),
                Group::Watched,
            )
        });
        let c = &fleet.containers[i];
        for phase in [Phase::Settled, Phase::Stale] {
            let tail = if phase == Phase::Stale {
                " while its consumer is stale"
            } else {
                ""
            };
            let list = if phase == Phase::Stale {
                &mut stale
            } else {
                &mut settled
            };
            list.push(Target {
                phase,
                ..target(
                    format!("{what}: host path through the symlinks, `<vol>/{KEY}`{tail}"),
                    w.dir().join(KEY),
                    Group::Watched,
                )
            });
            list.push(Target {
                phase,
                mntns_of: Some(c.pid),
                ..target(
                    format!(
                        "{what}: as its consumer sees it, in its mount namespace, \
                         `<mount>/{KEY}`{tail}"
                    ),
                    c.file().to_path_buf(),
                    Group::Watched,
                )
            });
        }
    }
    settled.extend(stale);
    Ok((settled, vols))
}

fn measure(p: &Params, fleet: &Fleet) -> anyhow::Result<String> {
    let root_dir = tempfile::Builder::new()
        .prefix("reloadscope-bench-")
        .tempdir()
        .context("temp dir")?;
    let root_file = root_dir.path().join("unrelated.conf");
    std::fs::write(&root_file, "a=1\n").context("write the unrelated file")?;
    let tmpfs = Tmpfs::mount()?;
    let tmpfs_file = tmpfs.path().join("unrelated.conf");
    std::fs::write(&tmpfs_file, "a=1\n").context("write the unrelated tmpfs file")?;
    let (targets, vols) = targets(fleet, &root_file, &tmpfs_file)?;

    let mut sides = vec![Side::Off, Side::Detect, Side::Agent { ebpf: false }];
    if p.ebpf_row {
        sides.push(Side::Agent { ebpf: true });
    }
    let mut stats: Vec<SideStats> = sides
        .iter()
        .map(|_| SideStats {
            ns: vec![Vec::new(); targets.len()],
            cpu_share: vec![Vec::new(); targets.len()],
            told: vec![Vec::new(); targets.len()],
            cpu_secs: vec![Vec::new(); targets.len()],
            ..SideStats::default()
        })
        .collect();

    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .context("tokio runtime")?;
    let holders_before = tracepoint_prog_holders();
    let mut leftovers = Vec::new();
    // Warm the page cache, the dentries and the CPU's frequency.
    for t in &targets {
        openloop::measure(&t.path(fleet)?, (p.calls / 10).max(1), t.mntns_of)?;
    }
    // Dirty pages of the setup written back now, not during the rounds.
    // SAFETY: sync has no preconditions.
    unsafe { libc::sync() };
    let started = Instant::now();
    let mut rev = 0;
    for round in 0..p.rounds {
        let mut order: Vec<usize> = (0..sides.len()).collect();
        if round % 2 == 1 {
            order.reverse();
        }
        for si in order {
            let side = sides[si];
            let st = &mut stats[si];
            let agent = match side {
                Side::Off => None,
                _ => Some(start_steady(&rt, fleet, side, p.settled)?),
            };
            let running = agent.as_ref().map(|a| &a.running);
            let opens_before = running.map_or(0, host_opens);
            let mut line = Vec::new();
            for phase in [Phase::Settled, Phase::Stale] {
                if phase == Phase::Stale {
                    rev += 1;
                    let dirs = update(fleet, &vols, rev)?;
                    if let Some(r) = running {
                        let s = wait_stale(r, side, fleet, &vols, &dirs);
                        st.stale_state.extend(s.state.map(|d| d.as_secs_f64()));
                        st.stale_kernel.extend(s.kernel.map(|d| d.as_secs_f64()));
                        let shown = s.state.is_some() && (s.kernel.is_some() || !side.reloads());
                        st.stale_missed += usize::from(!shown);
                        st.stale_marks.push(s.marks);
                    }
                    line.push("| stale:".to_owned());
                }
                for (ti, t) in targets.iter().enumerate() {
                    if t.phase != phase {
                        continue;
                    }
                    let path = t.path(fleet)?;
                    let told0 = running.map_or(0, host_opens);
                    let (cpu0, t0) = (self_cpu(), Instant::now());
                    let ns = openloop::measure(&path, p.calls, t.mntns_of)?;
                    let (cpu, wall) = (self_cpu() - cpu0, t0.elapsed());
                    let told = running.map_or(0, host_opens) - told0;
                    st.ns[ti].push(ns);
                    st.cpu_share[ti].push(cpu.as_secs_f64() / wall.as_secs_f64());
                    st.cpu_secs[ti].push(cpu.as_secs_f64());
                    st.told[ti].push(told as f64);
                    line.push(fmt_ns(ns));
                }
            }
            if let Some(a) = agent {
                st.host_opens
                    .push((host_opens(&a.running) - opens_before) as f64);
                st.steady_took.push(a.took.as_secs_f64());
                st.marks.push(a.marks);
                st.consumers.push(a.consumers);
                st.watches.push(a.watches);
                st.overflows += a.running.shared.fanotify_overflows.load(Relaxed);
                st.late_marks += a.running.shared.late_marks.load(Relaxed);
                rt.block_on(a.running.stop());
                for kind in ["anon_inode:[fanotify]", "anon_inode:bpf-prog"] {
                    let n = own_fds(kind).len();
                    if n > 0 {
                        leftovers.push(format!(
                            "round {}: {n} `{kind}` fd(s) still open after `Running::stop()`",
                            round + 1
                        ));
                    }
                }
            }
            eprintln!(
                "[reload] cost round {}/{} {}: {}",
                round + 1,
                p.rounds,
                side.label(),
                line.join(" ")
            );
        }
    }
    let rounds_took = started.elapsed();
    let mut holders = holders_before;
    holders.extend(tracepoint_prog_holders());
    holders.sort();
    holders.dedup();
    drop(rt);
    drop(tmpfs);

    Ok(report(&Run {
        p,
        fleet,
        sides,
        targets,
        stats,
        rounds_took,
        leftovers,
        holders,
    }))
}

fn host_opens(r: &Running) -> u64 {
    r.shared.reloads.lock().expect("reloads lock").foreign[1]
}
