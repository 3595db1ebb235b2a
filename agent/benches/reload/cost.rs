//! Measure 1: what the reload machinery (fanotify marks, inotify watches, /proc scans,
//! the attribution of every open it is told about) adds to an open+close, on a node with
//! 1,000 watched volumes, each consumed by a lab container.
//!
//! Rounds alternate the agent off (baseline), in-process with `ebpf: false` (the
//! reload machinery alone: the probe's syscall tracepoints tax every syscall, measured
//! by the detect benchmark, and would mix in), and optionally with `ebpf: true` (the
//! agent as deployed), in the order A B C, C B A, ... Each loop runs in a process of its
//! own (see `openloop`).

use std::{
    fmt::Write as _,
    net::SocketAddr,
    path::{Path, PathBuf},
    sync::atomic::Ordering::Relaxed,
    time::{Duration, Instant},
};

use anyhow::{Context as _, bail};
use reloadscope::{
    agent::{self, Running},
    lab::{
        self, AtomicWriter, CallStyle, ContainerSpec, LabContainer, LabNode, Strategy,
        WriteOutcome, payload,
    },
    volumes::{VolumeKey, VolumeType},
};

use crate::{
    openloop,
    util::{
        Marks, fmt_delta_ns, fmt_ns, fs_type, median, min_max, own_fanotify_marks, own_fds, ratio3,
        self_cpu, tracepoint_prog_holders,
    },
};

/// The volumes of every pod: three ConfigMaps on disk, two Secrets on tmpfs.
const POD_VOLUMES: [(VolumeType, &str); 5] = [
    (VolumeType::ConfigMap, "app-config"),
    (VolumeType::ConfigMap, "features"),
    (VolumeType::ConfigMap, "routes"),
    (VolumeType::Secret, "tls"),
    (VolumeType::Secret, "db-creds"),
];
/// The key every consumer reads and the loops open.
const KEY: &str = "config.yaml";
/// How long an agent start may take to find every volume, consumer and mark.
const STEADY_MAX: Duration = Duration::from_secs(60);
const UNRELATED_GOAL: f64 = 1.01;
const WATCHED_GOAL: f64 = 1.05;

pub struct Params {
    pub pods: usize,
    pub rounds: usize,
    /// open+close calls per loop and round.
    pub calls: u64,
    /// Also measure the agent with its eBPF probe (`ebpf: true`).
    pub ebpf_row: bool,
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum Side {
    Off,
    Agent { ebpf: bool },
}

impl Side {
    fn label(self) -> &'static str {
        match self {
            Side::Off => "no agent (baseline)",
            Side::Agent { ebpf: false } => "agent, `ebpf: false`",
            Side::Agent { ebpf: true } => "agent, `ebpf: true`",
        }
    }
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum Group {
    Unrelated,
    Watched,
}

/// One loop: a file, opened from the host or from inside a container's namespace.
struct Target {
    label: String,
    path: PathBuf,
    mntns_of: Option<u32>,
    group: Group,
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

struct Fleet {
    node: LabNode,
    volumes: Vec<(VolumeKey, AtomicWriter)>,
    /// One per volume, in the order of `volumes`.
    containers: Vec<LabContainer>,
    setup: Duration,
}

impl Fleet {
    fn secrets(&self) -> usize {
        self.volumes
            .iter()
            .filter(|(k, _)| k.volume_type.is_tmpfs())
            .count()
    }

    fn expected_marks(&self) -> Marks {
        Marks {
            groups: 1,
            inode: self.volumes.len() - self.secrets(),
            mount: self.containers.len(),
            filesystem: self.secrets(),
        }
    }

    /// Stops every container, then the node goes (unmounting its tmpfs volumes).
    fn teardown(self) -> anyhow::Result<()> {
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

fn content(key: &str, pod: usize) -> String {
    format!("rev=000000\npod={pod}\nkey={key}\nlog.level=info\n")
}

/// `pods` pods with the five volumes of [`POD_VOLUMES`] each, populated, and one
/// read-once lab container per volume. Pod by pod: each container's new mount namespace
/// copies (then detaches) the tmpfs mounts made so far.
fn build_fleet(pods: usize) -> anyhow::Result<Fleet> {
    let bin = Path::new(env!("CARGO_BIN_EXE_reloadscope"));
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
                let p = payload(&[(KEY, &content(KEY, i)), ("extra.properties", "a=1\nb=2\n")]);
                match w.write(&p, CallStyle::GoAt)? {
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
struct Steady {
    running: Running,
    took: Duration,
    marks: Marks,
    consumers: usize,
    watches: usize,
}

/// Starts the agent and waits until it has every volume, every consumer and every mark
/// the fleet calls for (or [`STEADY_MAX`] passed: what it had then is reported).
fn start_steady(rt: &tokio::runtime::Runtime, fleet: &Fleet, ebpf: bool) -> anyhow::Result<Steady> {
    let t = Instant::now();
    let running = rt.block_on(agent::start(lab::agent_config(
        &fleet.node,
        ebpf,
        SocketAddr::from(([127, 0, 0, 1], 0)),
    )))?;
    if ebpf && !running.shared.ebpf_loaded() {
        rt.block_on(running.stop());
        bail!("the eBPF probe did not load (the benchmark needs root)");
    }
    let want = fleet.expected_marks();
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
        let steady = ready
            && volumes == fleet.volumes.len()
            && consumers == fleet.containers.len()
            && marks == want;
        if steady || t.elapsed() > STEADY_MAX {
            if !steady {
                eprintln!(
                    "[reload] cost: WARNING agent not steady after {:.0} s: ready {ready}, \
                     {volumes} volumes, {consumers} consumers, marks {marks:?} (want {want:?})",
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

#[derive(Default)]
struct SideStats {
    /// Per target, ns per call, one per round.
    ns: Vec<Vec<f64>>,
    /// Per target, this process's CPU over the loop / its wall time, one per round: the
    /// agent's threads (the main thread only waits for the loop's process).
    cpu_share: Vec<Vec<f64>>,
    steady_took: Vec<f64>,
    /// Opens of volume files the agent attributed to host processes during the loops.
    host_opens: Vec<f64>,
    /// Per target, opens the agent was told of during the loop, one per round.
    told: Vec<Vec<f64>>,
    /// Per target, this process's CPU seconds over the loop, one per round.
    cpu_secs: Vec<Vec<f64>>,
    marks: Vec<Marks>,
    consumers: Vec<usize>,
    watches: Vec<usize>,
    overflows: u64,
    late_marks: u64,
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

    // The watched files: the first pod's first ConfigMap and first Secret.
    let pick = |ty: VolumeType| {
        fleet
            .volumes
            .iter()
            .position(|(k, _)| k.volume_type == ty)
            .with_context(|| format!("no {} volume", ty.label()))
    };
    let mut targets = vec![
        Target {
            label: format!(
                "unrelated file, temp dir on the root fs ({})",
                fs_type(root_dir.path())
            ),
            path: root_file.clone(),
            mntns_of: None,
            group: Group::Unrelated,
        },
        Target {
            label: "unrelated file, a tmpfs of its own".into(),
            path: tmpfs_file.clone(),
            mntns_of: None,
            group: Group::Unrelated,
        },
    ];
    for ty in [VolumeType::ConfigMap, VolumeType::Secret] {
        let i = pick(ty)?;
        let (key, w) = &fleet.volumes[i];
        let ts = w.current().context("volume without ..data")?;
        let fs = fs_type(w.dir());
        let what = format!("{} volume ({fs})", key.volume_type.label());
        targets.push(Target {
            label: format!("{what}: host path in the timestamped dir, `<vol>/..<ts>/{KEY}`"),
            path: w.dir().join(&ts).join(KEY),
            mntns_of: None,
            group: Group::Watched,
        });
        targets.push(Target {
            label: format!("{what}: host path through the symlinks, `<vol>/{KEY}`"),
            path: w.dir().join(KEY),
            mntns_of: None,
            group: Group::Watched,
        });
        let c = &fleet.containers[i];
        targets.push(Target {
            label: format!(
                "{what}: as its consumer sees it, in its mount namespace, `<mount>/{KEY}`"
            ),
            path: c.file().to_path_buf(),
            mntns_of: Some(c.pid),
            group: Group::Watched,
        });
    }

    let mut sides = vec![Side::Off, Side::Agent { ebpf: false }];
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
        openloop::measure(&t.path, (p.calls / 10).max(1), t.mntns_of)?;
    }
    // Dirty pages of the setup written back now, not during the rounds.
    // SAFETY: sync has no preconditions.
    unsafe { libc::sync() };
    let started = Instant::now();
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
                Side::Agent { ebpf } => Some(start_steady(&rt, fleet, ebpf)?),
            };
            let opens_before = agent.as_ref().map(|a| host_opens(&a.running));
            let mut line = Vec::new();
            for (ti, t) in targets.iter().enumerate() {
                let told0 = agent.as_ref().map_or(0, |a| host_opens(&a.running));
                let (cpu0, t0) = (self_cpu(), Instant::now());
                let ns = openloop::measure(&t.path, p.calls, t.mntns_of)?;
                let (cpu, wall) = (self_cpu() - cpu0, t0.elapsed());
                let told = agent.as_ref().map_or(0, |a| host_opens(&a.running)) - told0;
                st.ns[ti].push(ns);
                st.cpu_share[ti].push(cpu.as_secs_f64() / wall.as_secs_f64());
                st.cpu_secs[ti].push(cpu.as_secs_f64());
                st.told[ti].push(told as f64);
                line.push(fmt_ns(ns));
            }
            if let Some(a) = agent {
                st.host_opens
                    .push((host_opens(&a.running) - opens_before.unwrap_or(0)) as f64);
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
    let holders_after = tracepoint_prog_holders();
    drop(rt);
    drop(tmpfs);

    Ok(report(
        p,
        fleet,
        &sides,
        &targets,
        &stats,
        rounds_took,
        &leftovers,
        &holders_before,
        &holders_after,
    ))
}

fn host_opens(r: &Running) -> u64 {
    r.shared.reloads.lock().expect("reloads lock").foreign[1]
}

#[allow(clippy::too_many_arguments)]
fn report(
    p: &Params,
    fleet: &Fleet,
    sides: &[Side],
    targets: &[Target],
    stats: &[SideStats],
    rounds_took: Duration,
    leftovers: &[String],
    holders_before: &[String],
    holders_after: &[String],
) -> String {
    let mut s = String::new();
    let want = fleet.expected_marks();
    let cms = fleet.volumes.len() - fleet.secrets();
    let _ = writeln!(
        s,
        "### Cost added to open+close by the reload machinery, {} watched volumes\n\n\
         Lab node: {} pods x {} volumes = {} volumes ({cms} ConfigMap volumes on disk, {} Secret \
         volumes each on a tmpfs of its own), and {} lab containers, one per volume, each binding \
         its volume whole in a mount namespace of its own and reading `{KEY}` once at start \
         (`read-once`: they sit in poll(2) afterwards, so only the loops below open volume \
         files); set up in {:.0} s. The agent runs in-process (2 tokio workers), started and \
         stopped for each of its rounds; before its loops run it has every volume, every \
         consumer and every fanotify mark the node calls for: {} inode marks (the current \
         timestamped dir of each ConfigMap volume), {} filesystem marks (each Secret tmpfs), \
         {} mount marks (each container's bind mount of its volume), counted in \
         `/proc/self/fdinfo` of its fanotify group.\n",
        fleet.volumes.len(),
        p.pods,
        POD_VOLUMES.len(),
        fleet.volumes.len(),
        fleet.secrets(),
        fleet.containers.len(),
        fleet.setup.as_secs_f64(),
        want.inode,
        want.filesystem,
        want.mount,
    );
    let mut order = String::new();
    for (i, side) in sides.iter().enumerate() {
        let _ = write!(order, "{}{}", if i == 0 { "" } else { ", " }, side.label());
    }
    let _ = writeln!(
        s,
        "{} rounds; each runs every loop once per side ({order}), sides in the order A B{}, \
         then reversed, alternately. Each loop is {} `open(O_RDONLY)` + `close` calls (after {} \
         unmeasured ones) in a process of its own, a host process outside any pod (the agent \
         attributes each open it is told about through `/proc/<pid>`, then counts it as a \
         foreign opener's), so the agent's own threads compete with it for the 2 CPUs as they \
         would on a node. Figures: medians of the per-round ns per call, spread = min-max over \
         rounds. The `ebpf: false` column is the measure asked for: it leaves out the probe's \
         syscall tracepoints, whose cost on every syscall the detect benchmark measures \
         separately{}.\n",
        p.rounds,
        if sides.len() > 2 { " C" } else { "" },
        p.calls,
        (p.calls / 10).max(1),
        if sides.len() > 2 {
            "; the last columns are the agent as deployed, probe attached"
        } else {
            ""
        },
    );
    let mut head = "| open+close of | no agent (baseline) | agent, `ebpf: false` | added | ratio | goal | agent's CPU meanwhile |"
        .to_owned();
    let mut rule = "|---|---|---|---|---|---|---|".to_owned();
    if sides.len() > 2 {
        head.push_str(" agent, `ebpf: true` | added | ratio |");
        rule.push_str("---|---|---|");
    }
    let _ = writeln!(s, "{head}\n{rule}");
    let spread = |v: &[f64]| {
        let (lo, hi) = min_max(v);
        format!("{} ({}-{})", fmt_ns(median(v)), fmt_ns(lo), fmt_ns(hi))
    };
    let mut worst = [(0.0f64, true), (0.0f64, true)];
    for (ti, t) in targets.iter().enumerate() {
        let base = median(&stats[0].ns[ti]);
        let on = median(&stats[1].ns[ti]);
        let goal = match t.group {
            Group::Unrelated => UNRELATED_GOAL,
            Group::Watched => WATCHED_GOAL,
        };
        let g = usize::from(t.group == Group::Watched);
        let r = on / base;
        worst[g].0 = worst[g].0.max(r);
        worst[g].1 &= r < goal;
        let mut row = format!(
            "| {} | {} | {} | {} | {} | < {goal:.2}x: {} | {:.0} % |",
            t.label,
            spread(&stats[0].ns[ti]),
            spread(&stats[1].ns[ti]),
            fmt_delta_ns(on - base),
            ratio3(on, base),
            if r < goal { "met" } else { "**NOT met**" },
            median(&stats[1].cpu_share[ti]) * 100.0,
        );
        if sides.len() > 2 {
            let e = median(&stats[2].ns[ti]);
            let _ = write!(
                row,
                " {} | {} | {} |",
                spread(&stats[2].ns[ti]),
                fmt_delta_ns(e - base),
                ratio3(e, base)
            );
        }
        let _ = writeln!(s, "{row}");
    }
    let verdict = |(r, ok): (f64, bool)| {
        format!(
            "**{}** (worst {:.3}x)",
            if ok { "met" } else { "NOT met" },
            r
        )
    };
    let _ = writeln!(
        s,
        "\nGoals with `ebpf: false`: unrelated files under {UNRELATED_GOAL:.2}x {}; watched \
         volume files under {WATCHED_GOAL:.2}x {}.\n",
        verdict(worst[0]),
        verdict(worst[1]),
    );

    let _ = writeln!(s, "| per agent round | {} |", {
        sides[1..]
            .iter()
            .map(|x| x.label())
            .collect::<Vec<_>>()
            .join(" | ")
    });
    let _ = writeln!(s, "|---|{}", "---|".repeat(sides.len() - 1));
    let agent_stats = &stats[1..];
    let row = |name: &str, f: &dyn Fn(&SideStats) -> String| {
        let cells: Vec<String> = agent_stats.iter().map(f).collect();
        format!("| {name} | {} |", cells.join(" | "))
    };
    let range = |v: Vec<f64>, fmt: &dyn Fn(f64) -> String| {
        let (lo, hi) = min_max(&v);
        if lo == hi {
            fmt(lo)
        } else {
            format!("{} ({}-{})", fmt(median(&v)), fmt(lo), fmt(hi))
        }
    };
    let lines = [
        row("start to steady (every volume, consumer and mark)", &|st| {
            range(st.steady_took.clone(), &|x| format!("{x:.2} s"))
        }),
        row("consumers found", &|st| {
            range(st.consumers.iter().map(|&c| c as f64).collect(), &|x| {
                format!("{x:.0}")
            })
        }),
        row("fanotify marks: inode / filesystem / mount", &|st| {
            let f = |g: fn(&Marks) -> usize| {
                range(st.marks.iter().map(|m| g(m) as f64).collect(), &|x| {
                    format!("{x:.0}")
                })
            };
            format!(
                "{} / {} / {}",
                f(|m| m.inode),
                f(|m| m.filesystem),
                f(|m| m.mount)
            )
        }),
        row("inotify watches", &|st| {
            range(st.watches.iter().map(|&c| c as f64).collect(), &|x| {
                format!("{x:.0}")
            })
        }),
        row(
            "opens of volume files attributed (foreign, host) per round",
            &|st| range(st.host_opens.clone(), &|x| format!("{x:.0}")),
        ),
        row("fanotify queue overflows (all rounds)", &|st| {
            st.overflows.to_string()
        }),
    ];
    for l in lines {
        let _ = writeln!(s, "{l}");
    }
    let base_cpu = stats[0]
        .cpu_share
        .iter()
        .map(|v| median(v))
        .fold(0.0, f64::max)
        * 100.0;
    let _ = writeln!(
        s,
        "\n\"agent's CPU meanwhile\": this process's CPU time (getrusage, all threads: the \
         agent's; the main thread waits for the loop's process) over the loop's wall time, in \
         % of one core, median over rounds (`ebpf: false`); without the agent it is at most \
         {base_cpu:.1} %. {} loops ran in {:.0} s of rounds.",
        targets.len() * sides.len() * p.rounds,
        rounds_took.as_secs_f64()
    );
    let opened = p.calls + (p.calls / 10).max(1);
    let _ = writeln!(
        s,
        "\nWhere the agent's CPU goes (`ebpf: false`, medians over rounds): each loop opens \
         its file {opened} times; fanotify merges an open into an identical event still \
         queued, so the agent is told of fewer, and attributes each one it is told of \
         through `/proc/<pid>`.\n"
    );
    let _ = writeln!(
        s,
        "| open+close of | opens the agent was told of | agent CPU | agent CPU per open told of |"
    );
    let _ = writeln!(s, "|---|---|---|---|");
    for (ti, t) in targets.iter().enumerate() {
        if t.group != Group::Watched {
            continue;
        }
        let told = median(&stats[1].told[ti]);
        let per: Vec<f64> = stats[1].cpu_secs[ti]
            .iter()
            .zip(&stats[1].told[ti])
            .filter(|(_, n)| **n > 0.0)
            .map(|(c, n)| c * 1e9 / n)
            .collect();
        let _ = writeln!(
            s,
            "| {} | {told:.0} ({:.0} %) | {:.2} s | {} |",
            t.label,
            told * 100.0 / opened as f64,
            median(&stats[1].cpu_secs[ti]),
            fmt_ns(median(&per)),
        );
    }
    for l in leftovers {
        let _ = writeln!(s, "\n**Agent issue:** {l}.");
    }
    let mut holders: Vec<String> = holders_before
        .iter()
        .chain(holders_after)
        .cloned()
        .collect();
    holders.sort();
    holders.dedup();
    s.push_str(&crate::common::holders_note(
        &holders,
        "if attached to syscall tracepoints, every side ran on the syscall slow path.",
    ));
    s
}
