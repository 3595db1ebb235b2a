//! The Markdown of the scale benchmark.

use std::{fmt::Write as _, time::Duration};

use super::{
    Params,
    agent_phase::{AgentFigures, COST_SCRAPES, Window},
    node::ScaleNode,
    poller::PollerFigures,
};
use crate::common::{
    figures::{fmt_ns, percentile},
    procfs::fmt_kib,
};

pub struct Setup {
    pub volumes: usize,
    pub pods: usize,
    pub secrets: usize,
    pub consumers: usize,
    pub consumers_on_secrets: usize,
    pub fs: String,
    pub pods_took: Duration,
    pub consumers_took: Duration,
}

impl Setup {
    pub fn of(sn: &ScaleNode) -> Setup {
        Setup {
            volumes: sn.vols.len(),
            pods: sn.pods,
            secrets: sn.secrets(),
            consumers: sn.ctrs.len(),
            consumers_on_secrets: sn
                .ctrs
                .iter()
                .filter(|c| sn.vols[c.vol].ty.is_tmpfs())
                .count(),
            fs: sn.fs.clone(),
            pods_took: sn.pods_took,
            consumers_took: sn.consumers_took,
        }
    }
}

pub struct Outcome {
    pub setup: Setup,
    pub full: anyhow::Result<AgentFigures>,
    pub inotify: anyhow::Result<AgentFigures>,
    pub poller: anyhow::Result<PollerFigures>,
    pub teardown: super::node::Teardown,
}

/// `a / b` as `0.12x`, or `n/a`.
fn ratio(a: f64, b: f64) -> String {
    if b > 0.0 && a >= 0.0 && a.is_finite() && b.is_finite() {
        if a / b < 0.01 && a > 0.0 {
            format!("{:.4}x", a / b)
        } else {
            format!("{:.2}x", a / b)
        }
    } else {
        "n/a".into()
    }
}

fn secs(d: Duration) -> String {
    format!("{:.3} s", d.as_secs_f64())
}

fn kib(v: Option<u64>) -> f64 {
    v.map_or(f64::NAN, |k| k as f64)
}

fn met(ok: bool) -> &'static str {
    if ok { "met" } else { "**NOT met**" }
}

fn abs_median_max(v: &[f64]) -> (f64, f64, f64) {
    let a: Vec<f64> = v.iter().map(|x| x.abs()).collect();
    (
        percentile(&a, 50.0),
        percentile(&a, 99.0),
        percentile(&a, 100.0),
    )
}

fn fmt_err(v: &[f64]) -> String {
    if v.is_empty() {
        return "n/a".into();
    }
    let (med, p99, max) = abs_median_max(v);
    format!(
        "{} (p99 {}, max {}; {} updates)",
        fmt_ns(med),
        fmt_ns(p99),
        fmt_ns(max),
        v.len()
    )
}

fn cpu_cell(w: &Window, made: u64) -> String {
    format!(
        "{:.1} % ({:.2} s, {:.0} µs per update)",
        w.pct(),
        w.cpu.as_secs_f64(),
        w.cpu.as_secs_f64() * 1e6 / made.max(1) as f64
    )
}

fn churn(w: &Window) -> String {
    w.churn.map_or_else(|| "n/a".to_owned(), |n| n.to_string())
}

/// The error of a phase that `--only` left out.
pub const SKIPPED: &str = "not run (`--only`)";

fn failed<T>(r: &anyhow::Result<T>) -> Option<String> {
    r.as_ref().err().map(|e| match e.to_string() {
        s if s == SKIPPED => s,
        _ => format!("FAILED: {e:#}"),
    })
}

pub fn render(p: &Params, o: &Outcome) -> String {
    let mut s = String::new();
    let st = &o.setup;
    let _ = writeln!(
        s,
        "### {} volumes in {} pods; {}/s for {} s; {} consumers reloading\n",
        st.volumes, st.pods, p.rate, p.seconds, st.consumers
    );
    let _ = writeln!(
        s,
        "Lab node: {} pods x {} volumes = {} volumes: {} ConfigMap volumes on disk ({}) and \
         {} Secret volumes, each on a tmpfs of its own (the last volume of one pod in {}: \
         a tmpfs in every pod, or several, would make every lab container's mount \
         namespace copy and detach them all; to the agent a Secret differs from a \
         ConfigMap only in being on a tmpfs, which {} of them are), 2 keys each. {} lab containers (`data-dir-watcher`: \
         inotify on its mount of the volume, reopens the key on `..data`; each holds one \
         inotify instance), one per pod in one pod of {}, {} of them on a Secret, the others \
         on a ConfigMap. Set up in {:.1} s (pods, volumes and their first data: {:.1} s; \
         consumers: {:.1} s); torn down in {:.1} s, every tmpfs unmounted: {} mount(s) left \
         under the node{}.\n",
        st.pods,
        p.per_pod,
        st.volumes,
        st.volumes - st.secrets,
        st.fs,
        st.secrets,
        p.secret_every,
        st.secrets,
        st.consumers,
        (st.pods / st.consumers.max(1)).max(1),
        st.consumers_on_secrets,
        (st.pods_took + st.consumers_took).as_secs_f64(),
        st.pods_took.as_secs_f64(),
        st.consumers_took.as_secs_f64(),
        o.teardown.took.as_secs_f64(),
        o.teardown.mounts_left,
        if o.teardown.errors.is_empty() {
            String::new()
        } else {
            format!("; teardown errors: {}", o.teardown.errors.join("; "))
        }
    );
    let ran = [failed(&o.full), failed(&o.inotify), failed(&o.poller)]
        .iter()
        .filter(|e| e.as_deref() != Some(SKIPPED))
        .count();
    let phases = match ran {
        3 => "Three phases on that node, one after the other, each with the same steps",
        2 => "Two phases (`--only`) on that node, one after the other, each with the same steps",
        _ => "One phase (`--only`) on that node, with these steps",
    };
    let rescan = if p.idle >= Duration::from_secs(60) {
        "the window holds one"
    } else {
        "this shorter window may hold none"
    };
    let _ = writeln!(
        s,
        "{phases}: \
         start, and time from the process's spawn to `/readyz` 200 and to the end of the \
         first scrape whose `reloadscope_watched_volumes` sums to {} (scrapes every 20 ms \
         once ready; the poller: to the end of its first pass); 2 s; inotify watches \
         (`/proc/<pid>/fdinfo` of its inotify fds) and VmRSS; {} s without updates (idle \
         CPU: utime + stime from `/proc/<pid>/stat`, in 10 ms ticks; the agent's periodic \
         consumer rescan runs every 60 s, {rescan}); then {} updates/s for \
         {} s from one thread of this process: the kubelet's calls \
         (`AtomicWriter::write`, `CallStyle::GoAt`) on the volumes in turn, so each \
         volume is updated every {:.0} s, on an absolute schedule, with a `/metrics` scrape \
         every {:.1} s for the agents (as Prometheus would; its cost is measured at idle \
         and given below); then scrapes until the counts stop moving (deadline 10 s). \
         Lost updates = made - counted (`reloadscope_volume_updates_total` summed, or the \
         poller's changes). Swap time error = the time a tool gives an update \
         (`reloadscope_volume_last_update_timestamp_seconds` in the scrapes, each distinct \
         value; the poller's clock when its readlink saw the change) - the writer's clock \
         right after the rename returned. Reload latency error = the agent's reload time \
         (`reloadscope_consumer_last_reload_timestamp_seconds`, each distinct value in the \
         scrapes, matched to the update it follows) - the consumer's own clock read right \
         before the open(2) that first read that update's revision (its open log).\n",
        st.volumes,
        p.idle.as_secs(),
        p.rate,
        p.seconds,
        st.volumes as f64 / p.rate as f64,
        p.scrape_every.as_secs_f64(),
    );

    for (name, e) in [
        ("agent", failed(&o.full)),
        ("inotify-only agent", failed(&o.inotify)),
        ("poller", failed(&o.poller)),
    ] {
        if let Some(e) = e {
            let _ = writeln!(s, "**{name}: {e}**\n");
        }
    }

    let (f, i, q) = (
        o.full.as_ref().ok(),
        o.inotify.as_ref().ok(),
        o.poller.as_ref().ok(),
    );
    let na = || "n/a".to_owned();
    // A phase's cell: its figure, or why there is none.
    let why = |e: Option<String>| match e.as_deref() {
        Some(SKIPPED) => "not run",
        _ => "failed",
    };
    let (why_f, why_i, why_q) = (
        why(failed(&o.full)),
        why(failed(&o.inotify)),
        why(failed(&o.poller)),
    );
    let cell_f = |x: Option<String>| x.unwrap_or_else(|| why_f.to_owned());
    let cell_i = |x: Option<String>| x.unwrap_or_else(|| why_i.to_owned());
    let cell_q = |x: Option<String>| x.unwrap_or_else(|| why_q.to_owned());
    let _ = writeln!(
        s,
        "| measure | goal | agent as deployed (eBPF + inotify + fanotify) | goal met | \
         agent, inotify only (`--no-ebpf --no-reloads`) | agent / inotify only | \
         poller (readlink of every `..data` every {} ms) | agent / poller |",
        p.poll.as_millis()
    );
    let _ = writeln!(s, "|---|---|---|---|---|---|---|---|");

    // Start-up.
    let scan = |a: &AgentFigures| a.ready.as_secs_f64();
    let _ = writeln!(
        s,
        "| start-up scan: spawn to `/readyz` 200 (every volume known) | < 1 s | {} | {} | {} | {} | {} | {} |",
        cell_f(f.map(|a| format!(
            "{} (first scrape showing all {}: ended at {}{})",
            secs(a.ready),
            st.volumes,
            secs(a.all_volumes),
            a.consumers.map_or(String::new(), |(at, n)| format!(
                "; all {n} consumers found at {}",
                secs(at)
            ))
        ))),
        cell_f(f.map(|a| met(scan(a) < 1.0).to_owned())),
        cell_i(i.map(|a| format!(
            "{} (scrape showing all: {})",
            secs(a.ready),
            secs(a.all_volumes)
        ))),
        match (f, i) {
            (Some(a), Some(b)) => ratio(scan(a), scan(b)),
            _ => na(),
        },
        cell_q(q.map(|x| format!("{} (walk + first pass)", secs(x.ready)))),
        match (f, q) {
            (Some(a), Some(x)) => ratio(scan(a), x.ready.as_secs_f64()),
            _ => na(),
        },
    );

    // Watches.
    let per_vol = |a: &AgentFigures| a.kernel_watches.1 as f64 / st.volumes as f64;
    let _ = writeln!(
        s,
        "| inotify watches per volume (kernel: `/proc/<pid>/fdinfo`) | ≤ 2 | {} | {} | {} | {} | 0 (none) | n/a |",
        cell_f(f.map(|a| format!(
            "{:.2} ({} watches in {} instances; `reloadscope_inotify_watches` {})",
            per_vol(a),
            a.kernel_watches.1,
            a.kernel_watches.0,
            a.watches_metric
        ))),
        cell_f(f.map(|a| met(per_vol(a) <= 2.0).to_owned())),
        cell_i(i.map(|a| format!(
            "{:.2} ({} in {}; metric {})",
            per_vol(a),
            a.kernel_watches.1,
            a.kernel_watches.0,
            a.watches_metric
        ))),
        match (f, i) {
            (Some(a), Some(b)) => ratio(per_vol(a), per_vol(b)),
            _ => na(),
        },
    );

    // Memory.
    let _ = writeln!(
        s,
        "| VmRSS when steady (before the idle window) | < 64 MiB | {} | {} | {} | {} | {} | {} |",
        cell_f(f.map(|a| fmt_kib(a.rss_steady))),
        cell_f(f.map(|a| met(kib(a.rss_steady) < 64.0 * 1024.0).to_owned())),
        cell_i(i.map(|a| fmt_kib(a.rss_steady))),
        match (f, i) {
            (Some(a), Some(b)) => ratio(kib(a.rss_steady), kib(b.rss_steady)),
            _ => na(),
        },
        cell_q(q.map(|x| fmt_kib(x.rss_steady))),
        match (f, q) {
            (Some(a), Some(x)) => ratio(kib(a.rss_steady), kib(x.rss_steady)),
            _ => na(),
        },
    );
    let _ = writeln!(
        s,
        "| peak RSS (VmHWM after the burst; VmRSS then) | < 64 MiB | {} | {} | {} | {} | {} | {} |",
        cell_f(f.map(|a| format!("{} ({})", fmt_kib(a.hwm_end), fmt_kib(a.rss_end)))),
        cell_f(f.map(|a| met(kib(a.hwm_end) < 64.0 * 1024.0).to_owned())),
        cell_i(i.map(|a| format!("{} ({})", fmt_kib(a.hwm_end), fmt_kib(a.rss_end)))),
        match (f, i) {
            (Some(a), Some(b)) => ratio(kib(a.hwm_end), kib(b.hwm_end)),
            _ => na(),
        },
        cell_q(q.map(|x| format!("{} ({})", fmt_kib(x.hwm_end), fmt_kib(x.rss_end)))),
        match (f, q) {
            (Some(a), Some(x)) => ratio(kib(a.hwm_end), kib(x.hwm_end)),
            _ => na(),
        },
    );

    // Idle CPU.
    let idle_cell = |w: &Window| {
        format!(
            "{:.2} % ({:.2} s in {:.0} s)",
            w.pct(),
            w.cpu.as_secs_f64(),
            w.wall.as_secs_f64()
        )
    };
    let _ = writeln!(
        s,
        "| idle CPU, % of one core | < 1 % | {} | {} | {} | {} | {} | {} |",
        cell_f(f.map(|a| idle_cell(&a.idle))),
        cell_f(f.map(|a| met(a.idle.pct() < 1.0).to_owned())),
        cell_i(i.map(|a| idle_cell(&a.idle))),
        match (f, i) {
            (Some(a), Some(b)) => ratio(a.idle.pct(), b.idle.pct()),
            _ => na(),
        },
        cell_q(q.map(|x| idle_cell(&x.idle))),
        match (f, q) {
            (Some(a), Some(x)) => ratio(a.idle.pct(), x.idle.pct()),
            _ => na(),
        },
    );

    // Lost updates.
    let lost = |a: &AgentFigures| a.burst.made as i64 - a.counted as i64;
    let lost_cell = |a: &AgentFigures| {
        format!(
            "{} of {} made (counted {}{}; volumes with a wrong count: {})",
            lost(a),
            a.burst.made,
            a.counted,
            a.all_counted_at.map_or_else(
                || ", not all within 10 s".to_owned(),
                |d| format!(
                    ", all by a scrape ending {:.0} ms after the burst",
                    d.as_secs_f64() * 1e3
                )
            ),
            a.wrong_volumes
        )
    };
    let _ = writeln!(
        s,
        "| updates lost (made - counted) | 0 | {} | {} | {} | {} | {} | {} |",
        cell_f(f.map(lost_cell)),
        cell_f(f.map(|a| met(lost(a) == 0).to_owned())),
        cell_i(i.map(lost_cell)),
        match (f, i) {
            (Some(a), Some(b)) if lost(a) == 0 && lost(b) == 0 => "0 / 0".to_owned(),
            (Some(a), Some(b)) => ratio(lost(a) as f64, lost(b) as f64),
            _ => na(),
        },
        cell_q(q.map(|x| format!(
            "{} of {} made ({} changes counted{})",
            x.missed,
            x.burst.made,
            x.counted,
            if x.unmatched > 0 {
                format!(", {} matching no update", x.unmatched)
            } else {
                String::new()
            }
        ))),
        match (f, q) {
            (Some(a), Some(x)) if lost(a) == 0 && x.missed == 0 => "0 / 0".to_owned(),
            (Some(a), Some(x)) => ratio(lost(a) as f64, x.missed as f64),
            _ => na(),
        },
    );

    // CPU under the burst.
    let _ = writeln!(
        s,
        "| CPU during the {} s of updates, % of one core | | {} | | {} | {} | {} | {} |",
        p.seconds,
        cell_f(f.map(|a| cpu_cell(&a.burst_window, a.burst.made))),
        cell_i(i.map(|a| cpu_cell(&a.burst_window, a.burst.made))),
        match (f, i) {
            (Some(a), Some(b)) => ratio(a.burst_window.pct(), b.burst_window.pct()),
            _ => na(),
        },
        cell_q(q.map(|x| cpu_cell(&x.burst_window, x.burst.made))),
        match (f, q) {
            (Some(a), Some(x)) => ratio(a.burst_window.pct(), x.burst_window.pct()),
            _ => na(),
        },
    );

    // Swap time error.
    let med = |v: &[f64]| abs_median_max(v).0;
    let _ = writeln!(
        s,
        "| swap time error: the update's time as the tool gives it - the writer's clock after the rename, median \\|error\\| | | {} | | {} | {} | {} | {} |",
        cell_f(f.map(|a| fmt_err(&a.swap_err))),
        cell_i(i.map(|a| fmt_err(&a.swap_err))),
        match (f, i) {
            (Some(a), Some(b)) => ratio(med(&a.swap_err), med(&b.swap_err)),
            _ => na(),
        },
        cell_q(q.map(|x| fmt_err(&x.swap_err))),
        match (f, q) {
            (Some(a), Some(x)) => ratio(med(&a.swap_err), med(&x.swap_err)),
            _ => na(),
        },
    );

    // Reloads.
    let rl = f.and_then(|a| a.reloads.as_ref());
    let _ = writeln!(
        s,
        "| reload latency error: agent's reload time - consumer's own open, median \\|error\\| | median < 1 ms | {} | {} | not measured (`--no-reloads`) | n/a | cannot see reloads | n/a |",
        cell_f(rl.map(|r| fmt_err(&r.errors))),
        cell_f(rl.map(|r| met(!r.errors.is_empty() && med(&r.errors) < 1e6).to_owned())),
    );
    let _ = writeln!(
        s,
        "| reloads the agent missed (consumers' logs - the agent's count) | | {} | | n/a | n/a | n/a | n/a |",
        cell_f(rl.map(|r| format!(
            "{} of {} (agent counted {}; updates of consumed volumes {})",
            r.missed, r.own_reloads, r.agent_counted, r.consumer_updates
        ))),
    );

    // Details.
    let _ = writeln!(s, "\nDetails:\n");
    for a in [f, i].into_iter().flatten() {
        let _ = writeln!(s, "- {}:", a.mode.tag());
        let _ = writeln!(
            s,
            "  eBPF loaded: {}, fanotify: {}; detections ebpf / inotify {} / {}; gaps missed by ebpf / inotify {} / {}; \
             `reloadscope_ebpf_events_lost_total` {}; inotify queue overflows {}; fanotify queue overflows {}; late marks {}.",
            a.ebpf,
            a.fanotify,
            a.detections.0,
            a.detections.1,
            a.gaps.0,
            a.gaps.1,
            a.ebpf_lost,
            a.inotify_overflows,
            a.fanotify_overflows,
            a.late_marks
        );
        let _ = writeln!(
            s,
            "  VmRSS at `/readyz` 200 (before any scrape) {}, steady (after the start-up's scrapes) {} \
             ({} anonymous: the heap; {} file pages: the binary, its libraries and, when loaded, the probe's ring buffer), \
             after the idle window and {COST_SCRAPES} more scrapes {}, after the updates {}; VmHWM then {}.",
            fmt_kib(a.rss_ready),
            fmt_kib(a.rss_steady),
            fmt_kib(a.rss_steady_parts.0),
            fmt_kib(a.rss_steady_parts.1),
            fmt_kib(a.rss_scraped),
            fmt_kib(a.rss_end),
            fmt_kib(a.hwm_end),
        );
        let _ = writeln!(
            s,
            "  Writer: {} updates in {:.2} s ({:.0}/s; latest start {:.1} ms behind schedule; {} failed writes{}), \
             {:.1} % of one core. Volume update times in the scrapes since the updates began: {} (updates they show: {}). {} scrapes during the updates; one scrape ({} samples) costs the agent {:.1} ms \
             of CPU at idle and takes {:.0} ms (a Prometheus scraping every 15 s: {:.2} % of a core). \
             After the updates, to the final scrape ({} scrapes, every 200 ms until the counts stopped moving, then {:.1} s for the detection gaps to be booked): {:.2} s of agent CPU in {:.1} s. \
             Rest of the machine (lab consumers, other users) during the idle window / the updates: \
             {:.0} % / {:.0} % of one core; steal {:.1} % / {:.1} %; other pods' containers started or \
             stopped (cgroup scopes, sampled every 200 ms): {} / {}. Stopped on SIGTERM: {} after {:.0} ms.",
            a.burst.made,
            a.burst.secs(),
            a.burst.made as f64 / a.burst.secs(),
            a.burst.max_late.as_secs_f64() * 1e3,
            a.burst.errors,
            a.burst
                .first_error
                .as_ref()
                .map_or(String::new(), |e| format!(", first: {e}")),
            100.0 * a.burst.writer_cpu.as_secs_f64() / a.burst.secs(),
            a.swap_seen,
            a.swap_err.len(),
            a.scrapes_during,
            a.scrape_samples,
            a.scrape_cpu.as_secs_f64() * 1e3,
            a.scrape_wall.as_secs_f64() * 1e3,
            100.0 * a.scrape_cpu.as_secs_f64() / 15.0,
            a.settle_scrapes,
            (reloadscope::agent::PAIR_WINDOW + Duration::from_millis(600)).as_secs_f64(),
            a.settle.cpu.as_secs_f64(),
            a.settle.wall.as_secs_f64(),
            a.idle.others_pct(),
            a.burst_window.others_pct(),
            a.idle.steal_pct(),
            a.burst_window.steal_pct(),
            churn(&a.idle),
            churn(&a.burst_window),
            a.stop.0,
            a.stop.1.as_secs_f64() * 1e3,
        );
        if let Some(r) = &a.reloads {
            let _ = writeln!(
                s,
                "  Reloads: {} samples (distinct reload times in the scrapes) of {} consumer reloads; \
                 reload times no consumer open confirms: {}; median error (signed) {}; latency, agent \
                 (its reload time - the writer's swap) median {}; the consumers' own (open - swap) median {}.",
                r.errors.len(),
                r.own_reloads,
                r.unconfirmed,
                fmt_ns(percentile(&r.errors, 50.0)),
                fmt_ns(percentile(&r.agent_latency, 50.0)),
                fmt_ns(percentile(&r.own_latency, 50.0)),
            );
        }
    }
    if let Some(x) = q {
        let _ = writeln!(
            s,
            "- poller: {} volumes; {} passes, {} overran their {} ms slot, longest pass {}; \
             writer: {} updates in {:.2} s ({:.0}/s; latest start {:.1} ms behind schedule; {} failed writes). \
             Rest of the machine during the idle window / the updates: {:.0} % / {:.0} % of one core; \
             other pods' containers started or stopped: {} / {}.",
            x.volumes,
            x.passes,
            x.overruns,
            x.interval.as_millis(),
            fmt_ns(x.max_pass.as_nanos() as f64),
            x.burst.made,
            x.burst.secs(),
            x.burst.made as f64 / x.burst.secs(),
            x.burst.max_late.as_secs_f64() * 1e3,
            x.burst.errors,
            x.idle.others_pct(),
            x.burst_window.others_pct(),
            churn(&x.idle),
            churn(&x.burst_window),
        );
    }
    s
}
