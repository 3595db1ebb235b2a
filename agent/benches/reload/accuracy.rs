//! Measure 2: how exactly the agent's reload times match what the consumers themselves
//! logged, update after update, and whether it misses any reload.
//!
//! Lab containers that get updates (a `..data` watcher and a timer poller) on ConfigMap
//! and Secret volumes; one update at a time, round robin over the volumes; after each,
//! this thread polls the agent's state until every consumer of the volume has a new
//! reload (or a deadline passes), then reads each consumer's open log for its first open
//! that read the new revision.
//!
//! error = the agent's reload time (`Consumer::last_reload`, what
//! `reloadscope_consumer_last_reload_timestamp_seconds` renders) - the consumer's own
//! clock read right before that open(2).

use std::{
    fmt::Write as _,
    net::SocketAddr,
    sync::atomic::Ordering::Relaxed,
    thread,
    time::{Duration, Instant, SystemTime, UNIX_EPOCH},
};

use anyhow::{Context as _, bail};
use reloadscope::{
    agent,
    agent::Running,
    node::volumes::{VolumeKey, VolumeType},
};
use reloadscope_lab::{
    self, AtomicWriter, CallStyle, ContainerSpec, LabContainer, LabNode, Strategy, WriteOutcome,
    payload, scrape,
};

use crate::common::{
    figures::{fmt_ns, median, percentile},
    revision::ns_between,
};

const KEY: &str = "config.yaml";
/// How long an update's reloads may take to show in the agent's state.
const RELOAD_MAX: Duration = Duration::from_secs(5);
/// How long a consumer's log line may lag the agent's record of its open (the consumer
/// writes it after its read).
const LOG_MAX: Duration = Duration::from_secs(2);
const READY_MAX: Duration = Duration::from_secs(30);
/// Between two looks at the agent's state.
const POLL: Duration = Duration::from_micros(500);

pub struct Params {
    pub updates: usize,
    /// The timer pollers' period.
    pub period: Duration,
    /// The agent's `--settled-marks`.
    pub settled: reloadscope::opens::SettledMarks,
}

struct Vol {
    key: VolumeKey,
    pod: String,
    writer: AtomicWriter,
}

struct Ctr {
    c: LabContainer,
    strategy: Strategy,
    vol: usize,
}

/// Per consumer and update.
#[derive(Clone, Copy)]
struct Sample {
    /// agent - consumer, ns.
    error: i64,
    /// The agent's latency (reload - its swap time), ns.
    agent_latency: i64,
    /// The consumer's own (its open - the writer's clock after the rename), ns.
    own_latency: i64,
}

#[derive(Default)]
struct Row {
    samples: Vec<Sample>,
    /// The consumer's log shows the reload; the agent never recorded it.
    missed: u64,
    /// The agent recorded a reload; the consumer's log shows no open of the new data.
    unconfirmed: u64,
    /// Neither: the consumer did not reload within the deadline.
    no_reload: u64,
}

fn content(rev: usize) -> String {
    format!("rev={rev:06}\nlog.level=info\nfeature.fast-path=true\n")
}

fn secs(t: SystemTime) -> f64 {
    t.duration_since(UNIX_EPOCH)
        .map_or(0.0, |d| d.as_secs_f64())
}

pub fn run(p: &Params) -> anyhow::Result<String> {
    let bin = &reloadscope_lab::lab_bin()?;
    let mut node = LabNode::temp().context("lab node")?;
    let mut vols = Vec::new();
    let mut ctrs: Vec<Ctr> = Vec::new();
    let setup = (|| -> anyhow::Result<()> {
        for pod_name in ["web", "api"] {
            let pod = node.add_pod("shop", pod_name)?;
            for (ty, name, short) in [
                (VolumeType::ConfigMap, "app-config", "cfg"),
                (VolumeType::Secret, "tls", "tls"),
            ] {
                let w = node.add_volume(&pod, ty, name)?;
                match w.write(
                    &payload(&[(KEY, &content(0)), ("ca.crt", "ca 0")]),
                    CallStyle::GoAt,
                )? {
                    WriteOutcome::Written { initial: true, .. } => {}
                    other => bail!("initial population of {name}: {other:?}"),
                }
                for (suffix, strategy) in [
                    ("watcher", Strategy::DataDirWatcher),
                    ("poller", Strategy::TimerPoller),
                ] {
                    let cname = format!("{short}-{suffix}");
                    let spec = ContainerSpec {
                        period: p.period,
                        ..ContainerSpec::new(&cname, w.dir(), KEY, strategy)
                    };
                    let c = LabContainer::start(bin, &node, &pod, &spec)?;
                    ctrs.push(Ctr {
                        c,
                        strategy,
                        vol: vols.len(),
                    });
                }
                vols.push(Vol {
                    key: VolumeKey {
                        pod_uid: pod.uid.clone(),
                        volume_type: ty,
                        name: name.to_owned(),
                    },
                    pod: pod_name.to_owned(),
                    writer: w,
                });
            }
        }
        Ok(())
    })();
    let r = setup.and_then(|()| measure(p, &node, &vols, &ctrs));
    for c in ctrs {
        if let Err(e) = c.c.stop() {
            eprintln!("[reload] accuracy: {e:#}");
        }
    }
    drop(node);
    r
}

/// Waits until the agent is ready and has every volume and consumer.
fn wait_ready(running: &Running, vols: &[Vol], ctrs: &[Ctr]) -> anyhow::Result<()> {
    let start = Instant::now();
    loop {
        let ready = running.shared.ready.load(Relaxed);
        let volumes = {
            let t = running.shared.tracker.lock().expect("tracker lock");
            vols.iter().all(|v| t.volume(&v.key).is_some())
        };
        let consumers = {
            let r = running.shared.reloads.lock().expect("reloads lock");
            ctrs.iter()
                .all(|c| r.consumer(&vols[c.vol].key, &c.c.id).is_some())
        };
        if ready && volumes && consumers {
            return Ok(());
        }
        if start.elapsed() > READY_MAX {
            bail!(
                "agent not ready after {READY_MAX:?}: ready {ready}, all volumes {volumes}, \
                 all consumers {consumers}"
            );
        }
        thread::sleep(Duration::from_millis(10));
    }
}

/// The agent's count of reloads of `c`, and its last reload time.
fn agent_view(running: &Running, key: &VolumeKey, id: &str) -> (u64, Option<SystemTime>) {
    let r = running.shared.reloads.lock().expect("reloads lock");
    r.consumer(key, id)
        .map_or((0, None), |c| (c.latency.count, c.last_reload))
}

/// The consumer's first open at or after log index `from` that read revision `rev`;
/// looks again until `until`.
fn own_reload(
    c: &LabContainer,
    from: usize,
    rev: usize,
    until: Instant,
) -> anyhow::Result<Option<SystemTime>> {
    let marker = format!("rev={rev:06}\n");
    loop {
        let reads = c.reads()?;
        let found = reads.get(from..).unwrap_or_default().iter().find(|o| {
            o.head
                .as_ref()
                .is_ok_and(|h| h.starts_with(marker.as_bytes()))
        });
        if let Some(o) = found {
            return Ok(Some(o.at));
        }
        if Instant::now() >= until {
            return Ok(None);
        }
        thread::sleep(Duration::from_millis(1));
    }
}

fn measure(p: &Params, node: &LabNode, vols: &[Vol], ctrs: &[Ctr]) -> anyhow::Result<String> {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .context("tokio runtime")?;
    let running = rt.block_on(agent::start(agent::Config {
        settled_marks: p.settled,
        ..reloadscope_lab::agent_config(node, true, SocketAddr::from(([127, 0, 0, 1], 0)))
    }))?;
    let r = (|| {
        if !running.shared.ebpf_loaded() {
            bail!("the eBPF probe did not load (the benchmark needs root)");
        }
        wait_ready(&running, vols, ctrs)?;
        rounds(p, &running, vols, ctrs)
    })();
    rt.block_on(running.stop());
    r
}

/// Strategy x volume type, in report order.
fn row_of(c: &Ctr, vols: &[Vol]) -> usize {
    let s = usize::from(c.strategy == Strategy::TimerPoller);
    let t = usize::from(vols[c.vol].key.volume_type == VolumeType::Secret);
    s * 2 + t
}

fn rounds(p: &Params, running: &Running, vols: &[Vol], ctrs: &[Ctr]) -> anyhow::Result<String> {
    let mut rows: [Row; 4] = Default::default();
    let started = Instant::now();
    let (mut updates_made, mut slowest) = (0u64, Duration::ZERO);
    for i in 0..p.updates {
        let vi = i % vols.len();
        let v = &vols[vi];
        let rev = i + 1;
        let mine: Vec<&Ctr> = ctrs.iter().filter(|c| c.vol == vi).collect();
        let mut before = Vec::new();
        for c in &mine {
            let (count, _) = agent_view(running, &v.key, &c.c.id);
            before.push((count, c.c.reads()?.len()));
        }
        let swapped_at = match v.writer.write(
            &payload(&[(KEY, &content(rev)), ("ca.crt", &format!("ca {rev}"))]),
            CallStyle::GoAt,
        )? {
            WriteOutcome::Written {
                initial: false,
                swapped_at,
                ..
            } => swapped_at,
            other => bail!("update {rev} of {}: {other:?}", v.key),
        };
        updates_made += 1;
        let t0 = Instant::now();
        // Every consumer of the volume recorded once more, or the deadline.
        loop {
            let all = mine
                .iter()
                .zip(&before)
                .all(|(c, (n, _))| agent_view(running, &v.key, &c.c.id).0 > *n);
            if all || t0.elapsed() > RELOAD_MAX {
                break;
            }
            thread::sleep(POLL);
        }
        slowest = slowest.max(t0.elapsed());
        let swap = running
            .shared
            .tracker
            .lock()
            .expect("tracker lock")
            .volume(&v.key)
            .and_then(|s| s.last_update);
        for (c, (n, logged)) in mine.iter().zip(&before) {
            let (count, last) = agent_view(running, &v.key, &c.c.id);
            let agent = last.filter(|_| count > *n);
            // A consumer the agent saw reload has its log line within moments; one it did
            // not has had the whole deadline already.
            let until = Instant::now()
                + if agent.is_some() {
                    LOG_MAX
                } else {
                    Duration::ZERO
                };
            let own = own_reload(&c.c, *logged, rev, until)?;
            let row = &mut rows[row_of(c, vols)];
            match (agent, own) {
                (Some(a), Some(o)) => row.samples.push(Sample {
                    error: ns_between(a, o),
                    agent_latency: swap.map_or(i64::MIN, |s| ns_between(a, s)),
                    own_latency: ns_between(o, swapped_at),
                }),
                (None, Some(_)) => row.missed += 1,
                (Some(_), None) => row.unconfirmed += 1,
                (None, None) => row.no_reload += 1,
            }
        }
        if (i + 1) % 100 == 0 || i + 1 == p.updates {
            let missed: u64 = rows.iter().map(|r| r.missed).sum();
            eprintln!(
                "[reload] accuracy: {}/{} updates ({:.1} s), missed so far {missed}",
                i + 1,
                p.updates,
                started.elapsed().as_secs_f64()
            );
        }
    }
    let took = started.elapsed();
    let shared = &running.shared;
    let counted: u64 = {
        let t = shared.tracker.lock().expect("tracker lock");
        vols.iter()
            .filter_map(|v| t.volume(&v.key))
            .map(|s| s.updates)
            .sum()
    };
    let foreign = shared.reloads.lock().expect("reloads lock").foreign;
    let late = shared.late_marks.load(Relaxed);
    let overflows = shared.fanotify_overflows.load(Relaxed);
    let rendered = rendered_matches(running, vols, ctrs);
    Ok(report(
        p,
        vols,
        ctrs,
        &rows,
        took,
        updates_made,
        counted,
        slowest,
        foreign,
        late,
        overflows,
        rendered,
    ))
}

/// How many consumers' `reloadscope_consumer_last_reload_timestamp_seconds` in a
/// /metrics scrape equals the state read directly (within 2 µs: f64 seconds since the
/// epoch), of how many.
fn rendered_matches(
    running: &Running,
    vols: &[Vol],
    ctrs: &[Ctr],
) -> Result<(usize, usize), String> {
    let m = scrape::scrape(running.addr).map_err(|e| format!("scrape: {e}"))?;
    let mut ok = 0;
    for c in ctrs {
        let v = &vols[c.vol];
        let state = agent_view(running, &v.key, &c.c.id).1.map(secs);
        let shown = m.get(
            "reloadscope_consumer_last_reload_timestamp_seconds",
            &[
                ("pod", v.pod.as_str()),
                ("container", c.c.name.as_str()),
                ("volume", v.key.name.as_str()),
            ],
        );
        if let (Some(a), Some(b)) = (state, shown)
            && (a - b).abs() < 2e-6
        {
            ok += 1;
        }
    }
    Ok((ok, ctrs.len()))
}

#[allow(clippy::too_many_arguments)]
fn report(
    p: &Params,
    vols: &[Vol],
    ctrs: &[Ctr],
    rows: &[Row; 4],
    took: Duration,
    made: u64,
    counted: u64,
    slowest: Duration,
    foreign: [u64; 3],
    late: u64,
    overflows: u64,
    rendered: Result<(usize, usize), String>,
) -> String {
    let mut s = String::new();
    let per_vol = ctrs.len() / vols.len().max(1);
    let _ = writeln!(
        s,
        "### Reload times against the consumers' own logs\n\n\
         Agent in-process (2 tokio workers, eBPF probe + inotify + fanotify, as deployed, \
         `--settled-marks {}`), {} volumes in 2 pods (a ConfigMap on disk and a Secret on its own tmpfs in each), \
         {per_vol} lab containers on each: a `data-dir-watcher` (inotify on the mounted dir, \
         reopens on `..data`) and a `timer-poller` (re-reads every {} ms). {} updates, \
         round robin over the volumes, one at a time: the kubelet's calls (`CallStyle::GoAt`); \
         then this thread polls the agent's state (every {} µs, up to {} s) until each \
         consumer of the volume has one more reload, then finds in each consumer's open log \
         its first open that read the new revision. error = the agent's reload time \
         (`last_reload`, which `reloadscope_consumer_last_reload_timestamp_seconds` renders) \
         - the consumer's clock read right before that open(2). Latencies: the agent's \
         (reload - its swap time) and the consumer's own (its open - the writer's clock \
         right after the rename returned).\n",
        super::cost_report::settled_label(p.settled),
        vols.len(),
        p.period.as_millis(),
        p.updates,
        POLL.as_micros(),
        RELOAD_MAX.as_secs(),
    );
    let _ = writeln!(
        s,
        "| consumer | volume | reloads | missed by the agent | median \\|error\\| | p99 \\|error\\| | max \\|error\\| | median error | latency, agent | latency, consumer's own |"
    );
    let _ = writeln!(s, "|---|---|---|---|---|---|---|---|---|---|");
    let names = [
        ("data-dir-watcher", "ConfigMap (disk)"),
        ("data-dir-watcher", "Secret (tmpfs)"),
        ("timer-poller", "ConfigMap (disk)"),
        ("timer-poller", "Secret (tmpfs)"),
    ];
    let line = |who: &str, vol: &str, samples: &[Sample], missed: u64| {
        let abs: Vec<f64> = samples.iter().map(|x| x.error.abs() as f64).collect();
        let err: Vec<f64> = samples.iter().map(|x| x.error as f64).collect();
        let al: Vec<f64> = samples
            .iter()
            .filter(|x| x.agent_latency != i64::MIN)
            .map(|x| x.agent_latency as f64)
            .collect();
        let ol: Vec<f64> = samples.iter().map(|x| x.own_latency as f64).collect();
        format!(
            "| {who} | {vol} | {} | {missed} | {} | {} | {} | {} | {} | {} |",
            samples.len() as u64 + missed,
            fmt_ns(median(&abs)),
            fmt_ns(percentile(&abs, 99.0)),
            fmt_ns(percentile(&abs, 100.0)),
            fmt_ns(median(&err)),
            fmt_ns(median(&al)),
            fmt_ns(median(&ol)),
        )
    };
    for (r, (who, vol)) in rows.iter().zip(names) {
        let _ = writeln!(s, "{}", line(who, vol, &r.samples, r.missed));
    }
    let all: Vec<Sample> = rows.iter().flat_map(|r| r.samples.clone()).collect();
    let missed: u64 = rows.iter().map(|r| r.missed).sum();
    let _ = writeln!(s, "{}", line("**all**", "", &all, missed));
    let unconfirmed: u64 = rows.iter().map(|r| r.unconfirmed).sum();
    let no_reload: u64 = rows.iter().map(|r| r.no_reload).sum();
    let max_abs = all
        .iter()
        .map(|x| x.error.unsigned_abs())
        .max()
        .unwrap_or(0);
    let _ = writeln!(
        s,
        "\nReloads missed by the agent (goal 0): **{missed}** of {}; max \\|error\\| {}.",
        all.len() as u64 + missed,
        fmt_ns(max_abs as f64)
    );
    let negative = all.iter().filter(|x| x.error < 0).count();
    let _ = writeln!(
        s,
        "\n- errors below zero (the agent's time before the consumer's clock read): {negative}\n\
         - reloads the agent recorded that no consumer open of the new data confirms: \
         {unconfirmed}; consumers that did not reload at all within {} s: {no_reload}\n\
         - updates made / counted by the agent: {made} / {counted}; slowest update to its last \
         reload in the agent's state: {}; {} updates took {:.1} s\n\
         - foreign opens counted (kubelet / host / other pod): {} / {} / {}; late marks: \
         {late}; fanotify queue overflows: {overflows}",
        RELOAD_MAX.as_secs(),
        fmt_ns(slowest.as_nanos() as f64),
        p.updates,
        took.as_secs_f64(),
        foreign[0],
        foreign[1],
        foreign[2],
    );
    let _ = match rendered {
        Ok((ok, n)) => writeln!(
            s,
            "- at the end, `reloadscope_consumer_last_reload_timestamp_seconds` in a /metrics \
             scrape equals the state read directly for {ok} of {n} consumers"
        ),
        Err(e) => writeln!(s, "- the final /metrics check failed: {e}"),
    };
    s
}
