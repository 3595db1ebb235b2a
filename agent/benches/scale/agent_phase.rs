//! One phase with an agent as its own process (the release binary): as deployed
//! (eBPF probe + inotify + fanotify), or in its inotify-only mode (`--no-ebpf
//! --no-reloads`). Start-up scan, watches, memory, idle CPU, then the sustained
//! writer's updates with a scrape every few seconds, as Prometheus would make.

use std::{
    collections::HashMap,
    process::Stdio,
    sync::atomic::{AtomicBool, Ordering::Relaxed},
    thread,
    time::{Duration, Instant},
};

use anyhow::Context as _;
use reloadscope::agent::PAIR_WINDOW;
use reloadscope_lab::scrape::Samples;

use super::{
    Params,
    churn::Churn,
    node::{CONSUMER, NAMESPACE, ScaleNode},
    writer::{Burst, sustained, update_at},
};
use crate::common::{
    agent_process::AgentProcess,
    procfs::{MachineCpu, inotify_watches, proc_cpu, proc_status_kib, self_cpu},
    revision::{first_opens, unix_ns},
};

/// How long the counts may take to settle after the burst.
const SETTLE_MAX: Duration = Duration::from_secs(10);
const START_MAX: Duration = Duration::from_secs(120);
/// Scrapes whose agent CPU is measured, back to back, at idle.
pub const COST_SCRAPES: u32 = 20;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Mode {
    /// As deployed: eBPF probe + inotify, reloads measured with fanotify.
    Full,
    /// `--no-ebpf --no-reloads`.
    InotifyOnly,
}

impl Mode {
    pub fn args(self) -> &'static [&'static str] {
        match self {
            Mode::Full => &["--log-level", "warn"],
            Mode::InotifyOnly => &["--log-level", "warn", "--no-ebpf", "--no-reloads"],
        }
    }

    pub fn tag(self) -> &'static str {
        match self {
            Mode::Full => "agent",
            Mode::InotifyOnly => "inotify-only agent",
        }
    }
}

/// CPU over a window of wall time.
#[derive(Clone, Copy, Debug, Default)]
pub struct Window {
    pub wall: Duration,
    /// The measured process's (agent or poller).
    pub cpu: Duration,
    /// All CPUs of the machine, and this benchmark process (writer, scraper).
    pub machine: MachineCpu,
    pub bench: Duration,
    /// Other pods' container cgroups that appeared or disappeared meanwhile.
    pub churn: Option<usize>,
}

impl Window {
    /// % of one core.
    pub fn pct(&self) -> f64 {
        100.0 * self.cpu.as_secs_f64() / self.wall.as_secs_f64()
    }

    /// What the rest of the machine (lab consumers, other users) used, in % of one
    /// core: all CPUs' busy time minus the measured process and this benchmark.
    pub fn others_pct(&self) -> f64 {
        let rest =
            self.machine.busy.as_secs_f64() - self.cpu.as_secs_f64() - self.bench.as_secs_f64();
        100.0 * rest.max(0.0) / self.wall.as_secs_f64()
    }

    pub fn steal_pct(&self) -> f64 {
        100.0 * self.machine.steal.as_secs_f64() / self.wall.as_secs_f64()
    }
}

/// Starts a [`Window`] on `pid`; [`WindowStart::end`] closes it.
pub struct WindowStart {
    pid: u32,
    at: Instant,
    cpu: Duration,
    machine: MachineCpu,
    bench: Duration,
    churn: Churn,
}

impl WindowStart {
    pub fn now(pid: u32, sn: &ScaleNode) -> anyhow::Result<WindowStart> {
        Ok(WindowStart {
            pid,
            churn: Churn::start(sn.slice_uids.clone()),
            cpu: proc_cpu(pid).context("CPU time")?,
            machine: MachineCpu::now(),
            bench: self_cpu(),
            at: Instant::now(),
        })
    }

    pub fn end(self) -> anyhow::Result<Window> {
        let cpu = proc_cpu(self.pid).context("CPU time")?;
        let wall = self.at.elapsed();
        let machine = MachineCpu::now().since(self.machine);
        let bench = self_cpu().saturating_sub(self.bench);
        Ok(Window {
            wall,
            cpu: cpu.saturating_sub(self.cpu),
            machine,
            bench,
            churn: self.churn.end(),
        })
    }
}

#[derive(Default)]
pub struct ReloadFigures {
    /// agent's reload time - the consumer's clock before its open, ns.
    pub errors: Vec<f64>,
    /// The agent's reload time - the writer's swap, ns.
    pub agent_latency: Vec<f64>,
    /// The consumer's open - the writer's swap, ns.
    pub own_latency: Vec<f64>,
    /// Updates made to consumed volumes during the burst.
    pub consumer_updates: u64,
    /// Of those, reloads the consumers' logs show (first open of the new revision).
    pub own_reloads: u64,
    /// Reloads the agent counted (`reloadscope_reload_latency_seconds_count`, over the
    /// burst, summed).
    pub agent_counted: u64,
    /// Per consumer, own reloads the agent's count falls short of, summed.
    pub missed: u64,
    /// Reload times the agent showed for which the consumer's log has no open.
    pub unconfirmed: u64,
}

pub struct AgentFigures {
    pub mode: Mode,
    pub ebpf: bool,
    pub fanotify: bool,
    /// Spawn to /readyz 200: the initial walk is done and the state loop has applied
    /// every volume it found (it sets readiness after them, in order).
    pub ready: Duration,
    /// Spawn to the end of the first scrape with every volume watched (the check).
    pub all_volumes: Duration,
    /// Spawn to every consumer found (`reloadscope_consumer_info`), and how many.
    pub consumers: Option<(Duration, usize)>,
    pub watches_metric: f64,
    /// Instances and watches in the kernel (`/proc/<pid>/fdinfo`).
    pub kernel_watches: (usize, usize),
    /// At /readyz 200, before any /metrics scrape.
    pub rss_ready: Option<u64>,
    /// Every consumer found, 2 s later (after the start-up's scrapes).
    pub rss_steady: Option<u64>,
    /// Of it, anonymous memory (the heap, stacks) and file pages (the binary, its
    /// libraries, the probe's ring buffer): `RssAnon`, `RssFile`.
    pub rss_steady_parts: (Option<u64>, Option<u64>),
    /// After the idle window and the scrapes that measure a scrape's cost.
    pub rss_scraped: Option<u64>,
    pub rss_end: Option<u64>,
    pub hwm_end: Option<u64>,
    pub idle: Window,
    pub scrape_cpu: Duration,
    pub scrape_wall: Duration,
    pub scrape_samples: usize,
    pub burst: Burst,
    pub burst_window: Window,
    /// From the end of the burst to the final scrape, and the scrapes in it.
    pub settle: Window,
    pub settle_scrapes: usize,
    pub scrapes_during: usize,
    pub counted: u64,
    pub all_counted_at: Option<Duration>,
    pub wrong_volumes: usize,
    pub detections: (u64, u64),
    pub gaps: (u64, u64),
    pub ebpf_lost: u64,
    pub inotify_overflows: u64,
    pub fanotify_overflows: u64,
    pub late_marks: u64,
    /// `..._last_update_timestamp_seconds` - the writer's swap, ns, per update seen
    /// (the last value the scrapes showed for it).
    pub swap_err: Vec<f64>,
    /// Volume samples in the scrapes since the burst began.
    pub swap_seen: usize,
    pub reloads: Option<ReloadFigures>,
    pub stop: (String, Duration),
}

/// Where a sample's labels point: volume and consumer indices.
struct Index {
    vols: HashMap<String, u32>,
    ctrs: HashMap<String, u32>,
}

impl Index {
    fn new(sn: &ScaleNode) -> Index {
        let vols = sn
            .vols
            .iter()
            .enumerate()
            .map(|(i, v)| (format!("{}/{}", v.pod, v.name), i as u32))
            .collect();
        let ctrs = sn
            .ctrs
            .iter()
            .enumerate()
            .map(|(i, c)| (sn.vols[c.vol].pod.clone(), i as u32))
            .collect();
        Index { vols, ctrs }
    }
}

/// What one scrape showed: each volume's last update time and each consumer's last
/// reload time (seconds since the epoch).
#[derive(Default)]
struct Snapshot {
    vols: Vec<(u32, f64)>,
    ctrs: Vec<(u32, f64)>,
}

fn snapshot(m: &Samples, ix: &Index) -> Snapshot {
    let mut s = Snapshot::default();
    for x in &m.0 {
        let label = |k: &str| x.labels.get(k).map_or("", String::as_str);
        if label("namespace") != NAMESPACE {
            continue;
        }
        match x.name.as_str() {
            "reloadscope_volume_last_update_timestamp_seconds" => {
                let key = format!("{}/{}", label("pod"), label("volume"));
                if let Some(&i) = ix.vols.get(&key) {
                    s.vols.push((i, x.value));
                }
            }
            "reloadscope_consumer_last_reload_timestamp_seconds"
                if label("container") == CONSUMER =>
            {
                if let Some(&i) = ix.ctrs.get(label("pod")) {
                    s.ctrs.push((i, x.value));
                }
            }
            _ => {}
        }
    }
    s
}

fn sum(m: &Samples, name: &str, with: &[(&str, &str)]) -> u64 {
    m.sum(name, with) as u64
}

/// Per consumer: reloads the agent counted (histogram count).
fn reload_counts(m: &Samples, ix: &Index) -> HashMap<u32, u64> {
    m.matching(
        "reloadscope_reload_latency_seconds_count",
        &[("namespace", NAMESPACE), ("container", CONSUMER)],
    )
    .filter_map(|x| {
        let pod = x.labels.get("pod")?;
        Some((*ix.ctrs.get(pod)?, x.value as u64))
    })
    .collect()
}

pub fn run(
    p: &Params,
    bin: &std::path::Path,
    sn: &ScaleNode,
    mode: Mode,
    next_rev: &mut u64,
) -> anyhow::Result<AgentFigures> {
    let tag = mode.tag();
    let n = sn.vols.len() as u64;
    let ix = Index::new(sn);
    // SAFETY: sync has no preconditions.
    unsafe { libc::sync() };
    thread::sleep(Duration::from_secs(1));

    eprintln!(
        "[scale] {tag}: starting {} {:?}",
        bin.display(),
        mode.args()
    );
    let mut agent = AgentProcess::spawn(bin, &sn.node, mode.args(), Stdio::inherit())?;
    let pid = agent.pid();
    let ready = agent.wait_ready(START_MAX, Duration::from_millis(10))?;
    // Before any /metrics scrape: the scan's own memory.
    let rss_ready = proc_status_kib(pid, "VmRSS");
    let (m, all_volumes) = agent.wait_scrape(
        START_MAX,
        Duration::from_millis(20),
        "every volume watched",
        |m| sum(m, "reloadscope_watched_volumes", &[]) == n,
    )?;
    let ebpf = m.get("reloadscope_ebpf_loaded", &[]) == Some(1.0);
    let fanotify = m.get("reloadscope_fanotify_loaded", &[]) == Some(1.0);
    eprintln!(
        "[scale] {tag}: ready after {:.3} s, every volume watched after {:.3} s (eBPF {ebpf}, fanotify {fanotify})",
        ready.as_secs_f64(),
        all_volumes.as_secs_f64()
    );
    let consumers = if mode == Mode::Full {
        let want = sn.ctrs.len();
        let (_, at) = agent.wait_scrape(
            START_MAX,
            Duration::from_millis(100),
            "every consumer found",
            |m| {
                m.matching(
                    "reloadscope_consumer_info",
                    &[("namespace", NAMESPACE), ("container", CONSUMER)],
                )
                .count()
                    >= want
            },
        )?;
        eprintln!(
            "[scale] {tag}: {want} consumers found after {:.3} s",
            at.as_secs_f64()
        );
        Some((at, want))
    } else {
        None
    };
    // Marks placed, first consumer scans done.
    thread::sleep(Duration::from_secs(2));
    let m = agent.scrape()?;
    let watches_metric = m.sum("reloadscope_inotify_watches", &[]);
    let kernel_watches = inotify_watches(pid).context("the agent's inotify fdinfo")?;
    let rss_steady = proc_status_kib(pid, "VmRSS");
    let rss_steady_parts = (
        proc_status_kib(pid, "RssAnon"),
        proc_status_kib(pid, "RssFile"),
    );

    eprintln!(
        "[scale] {tag}: idle for {} s ({} kernel watches, {} in the metric)",
        p.idle.as_secs(),
        kernel_watches.1,
        watches_metric
    );
    let w = WindowStart::now(pid, sn)?;
    thread::sleep(p.idle);
    let idle = w.end()?;

    // What one /metrics scrape of this node costs the agent.
    let cpu0 = proc_cpu(pid)?;
    let t = Instant::now();
    let mut scrape_samples = 0;
    for _ in 0..COST_SCRAPES {
        scrape_samples = agent.scrape()?.0.len();
    }
    let scrape_wall = t.elapsed() / COST_SCRAPES;
    let scrape_cpu = proc_cpu(pid)?.saturating_sub(cpu0) / COST_SCRAPES;
    let rss_scraped = proc_status_kib(pid, "VmRSS");

    let before = agent.scrape()?;
    let counts_before = reload_counts(&before, &ix);

    eprintln!(
        "[scale] {tag}: {} updates/s for {} s, a scrape every {:.1} s",
        p.rate,
        p.seconds,
        p.scrape_every.as_secs_f64()
    );
    let addr = agent.addr;
    let stop = AtomicBool::new(false);
    let w = WindowStart::now(pid, sn)?;
    let (burst, snaps) = thread::scope(|s| {
        let scraper = s.spawn(|| {
            let mut snaps = Vec::new();
            let start = Instant::now();
            let mut k = 1u32;
            while !stop.load(Relaxed) {
                let due = start + p.scrape_every * k;
                if Instant::now() < due {
                    thread::sleep(Duration::from_millis(20).min(due - Instant::now()));
                    continue;
                }
                k += 1;
                match reloadscope_lab::scrape::scrape(addr) {
                    Ok(m) => snaps.push(snapshot(&m, &ix)),
                    Err(e) => eprintln!("[scale] {tag}: scrape failed: {e}"),
                }
            }
            snaps
        });
        let burst = sustained(&sn.vols, p.rate, p.seconds, next_rev, tag);
        stop.store(true, Relaxed);
        (burst, scraper.join().expect("scraper thread"))
    });
    let burst_window = w.end()?;
    let scrapes_during = snaps.len();

    // Settle: until the count equals what was made and stops moving, or SETTLE_MAX.
    eprintln!("[scale] {tag}: waiting for the counts to settle");
    let w = WindowStart::now(pid, sn)?;
    let made = burst.made;
    let t_end = burst.t_end;
    let det =
        |m: &Samples, s: &str| sum(m, "reloadscope_update_detections_total", &[("source", s)]);
    let updates = |m: &Samples| sum(m, "reloadscope_volume_updates_total", &[]);
    let (mut last, mut last_change, mut all_counted_at) = (None, t_end, None);
    let mut settle_scrapes = 0;
    loop {
        settle_scrapes += 1;
        if let Ok(m) = agent.scrape() {
            let now = Instant::now();
            let u = updates(&m);
            let state = (u, det(&m, "ebpf"), det(&m, "inotify"));
            if last != Some(state) {
                last = Some(state);
                last_change = now;
            }
            if u >= made && all_counted_at.is_none() {
                all_counted_at = Some(now - t_end);
            }
            let sources_done = (!ebpf || state.1 >= made) && state.2 >= made;
            let still = now - last_change;
            if u >= made && (sources_done || still > PAIR_WINDOW + Duration::from_secs(1)) {
                break;
            }
        }
        if t_end.elapsed() > SETTLE_MAX {
            break;
        }
        thread::sleep(Duration::from_millis(200));
    }
    // Gaps are booked when an update's pairing window closes after the last sighting.
    let gaps_final = t_end + PAIR_WINDOW + Duration::from_millis(600);
    if let Some(wait) = gaps_final.checked_duration_since(Instant::now()) {
        thread::sleep(wait);
    }
    let m = agent.scrape().context("final scrape")?;
    settle_scrapes += 1;
    let settle = w.end()?;
    let rss_end = proc_status_kib(pid, "VmRSS");
    let hwm_end = proc_status_kib(pid, "VmHWM");
    let stop = agent.terminate();
    eprintln!("[scale] {tag}: stopped ({}) in {:.2?}", stop.0, stop.1);

    let counted = updates(&m);
    let by_vol = burst.by_volume(sn.vols.len());
    let wrong_volumes = sn
        .vols
        .iter()
        .zip(&by_vol)
        .filter(|(v, ups)| {
            let got = m
                .get(
                    "reloadscope_volume_updates_total",
                    &[
                        ("namespace", NAMESPACE),
                        ("pod", &v.pod),
                        ("volume", &v.name),
                    ],
                )
                .unwrap_or(0.0) as u64;
            got != ups.len() as u64
        })
        .count();
    let mut snaps = snaps;
    snaps.push(snapshot(&m, &ix));
    let slack = p.slack_ns();
    let since = unix_ns(burst.t0_wall) - slack;

    // Swap times: the last value the scrapes showed for each update (the probe's time
    // can replace inotify's), against the writer's clock after the rename.
    let mut last_shown: HashMap<usize, i64> = HashMap::new();
    let mut swap_seen = 0;
    for s in &snaps {
        for &(v, at) in &s.vols {
            let at_ns = (at * 1e9) as i64;
            if at_ns < since {
                continue;
            }
            swap_seen += 1;
            if let Some(u) = update_at(&burst.log, &by_vol[v as usize], at_ns, slack) {
                last_shown.insert(u, at_ns);
            }
        }
    }
    let swap_err: Vec<f64> = last_shown
        .iter()
        .map(|(&u, &at)| (at - burst.log[u].swapped_ns) as f64)
        .collect();

    let reloads = (mode == Mode::Full)
        .then(|| {
            reload_figures(
                sn,
                &ix,
                &burst,
                &by_vol,
                &snaps,
                &counts_before,
                &m,
                since,
                slack,
            )
        })
        .transpose()?;

    Ok(AgentFigures {
        mode,
        ebpf,
        fanotify,
        ready,
        all_volumes,
        consumers,
        watches_metric,
        kernel_watches,
        rss_ready,
        rss_steady,
        rss_steady_parts,
        rss_scraped,
        rss_end,
        hwm_end,
        idle,
        scrape_cpu,
        scrape_wall,
        scrape_samples,
        scrapes_during,
        burst_window,
        settle,
        settle_scrapes,
        counted,
        all_counted_at,
        wrong_volumes,
        detections: (det(&m, "ebpf"), det(&m, "inotify")),
        gaps: (
            sum(
                &m,
                "reloadscope_update_detection_gaps_total",
                &[("missed_by", "ebpf")],
            ),
            sum(
                &m,
                "reloadscope_update_detection_gaps_total",
                &[("missed_by", "inotify")],
            ),
        ),
        ebpf_lost: sum(&m, "reloadscope_ebpf_events_lost_total", &[]),
        inotify_overflows: sum(&m, "reloadscope_inotify_queue_overflows_total", &[]),
        fanotify_overflows: sum(&m, "reloadscope_fanotify_queue_overflows_total", &[]),
        late_marks: sum(&m, "reloadscope_late_marks_total", &[]),
        swap_err,
        swap_seen,
        reloads,
        stop,
        burst,
    })
}

/// Each consumer's reloads as the agent showed them in the scrapes, against its own
/// open log, update by update.
#[allow(clippy::too_many_arguments)]
fn reload_figures(
    sn: &ScaleNode,
    ix: &Index,
    burst: &Burst,
    by_vol: &[Vec<usize>],
    snaps: &[Snapshot],
    counts_before: &HashMap<u32, u64>,
    last: &Samples,
    since: i64,
    slack: i64,
) -> anyhow::Result<ReloadFigures> {
    let mut f = ReloadFigures::default();
    let counts_after = reload_counts(last, ix);
    for (ci, ctr) in sn.ctrs.iter().enumerate() {
        let ci = ci as u32;
        let ups = &by_vol[ctr.vol];
        let own = first_opens(&ctr.c.reads()?);
        let own_n = ups
            .iter()
            .filter(|&&u| own.contains_key(&burst.log[u].rev))
            .count() as u64;
        f.consumer_updates += ups.len() as u64;
        f.own_reloads += own_n;
        let agent_n = counts_after
            .get(&ci)
            .copied()
            .unwrap_or(0)
            .saturating_sub(counts_before.get(&ci).copied().unwrap_or(0));
        f.agent_counted += agent_n;
        f.missed += own_n.saturating_sub(agent_n);
        // The last reload time shown for each update of the volume.
        let mut shown: HashMap<usize, i64> = HashMap::new();
        for s in snaps {
            for &(c, at) in &s.ctrs {
                let at_ns = (at * 1e9) as i64;
                if c != ci || at_ns < since {
                    continue;
                }
                if let Some(u) = update_at(&burst.log, ups, at_ns, slack) {
                    shown.insert(u, at_ns);
                }
            }
        }
        for (u, at_ns) in shown {
            let u = &burst.log[u];
            match own.get(&u.rev) {
                Some(&o) => {
                    let o = unix_ns(o);
                    f.errors.push((at_ns - o) as f64);
                    f.agent_latency.push((at_ns - u.swapped_ns) as f64);
                    f.own_latency.push((o - u.swapped_ns) as f64);
                }
                None => f.unconfirmed += 1,
            }
        }
    }
    Ok(f)
}
