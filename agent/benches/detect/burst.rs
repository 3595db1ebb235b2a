//! Measure 2: a burst of updates at a fixed rate across many volumes, with the agent
//! as its own process (the built `reloadscope` binary), read only through /metrics and
//! /proc: does it count every update, and what does it cost?

use std::{
    ffi::OsString,
    fmt::Write as _,
    path::Path,
    process::Stdio,
    thread,
    time::{Duration, Instant},
};

use anyhow::{Context as _, bail};
use reloadscope::{agent::PAIR_WINDOW, node::volumes::VolumeType};
use reloadscope_lab::{
    AtomicWriter, CallStyle, LabNode, Payload, WriteOutcome, payload,
    scrape::{self, Samples},
};

use crate::common::{
    agent_process::AgentProcess,
    figures::ratio,
    lab_disk::LabDisk,
    machine::fs_desc,
    procfs::{fmt_kib, proc_cpu, proc_status_kib, thread_cpu},
};

/// Volumes per pod: the last one of each pod is a Secret (tmpfs), the others ConfigMaps.
const PER_POD: usize = 10;
/// How long the counts may take to settle after the burst.
const SETTLE_MAX: Duration = Duration::from_secs(10);

pub struct Params {
    pub volumes: usize,
    pub seconds: u64,
    pub rate: u64,
    /// The agent keeps `--state-file` (on the lab's disk): each batch of swaps waits
    /// for one sync of its journal before it is counted.
    pub state_file: bool,
}

/// One burst's report, and the agent's CPU over it.
pub struct Burst {
    pub report: String,
    pub agent_cpu: Duration,
}

struct Volume {
    pod: String,
    name: String,
    ty: VolumeType,
    writer: AtomicWriter,
    written: u64,
}

fn update_payload(n: u64) -> Payload {
    payload(&[
        ("app.properties", &format!("revision={n}\nlog.level=info\n")),
        ("endpoints.yaml", "primary: https://10.0.0.1:8443\n"),
    ])
}

fn metric_sum(m: &Samples, name: &str, with: &[(&str, &str)]) -> u64 {
    m.sum(name, with) as u64
}

pub fn run(p: &Params, binary: &Path) -> anyhow::Result<Burst> {
    let disk = match LabDisk::create(512) {
        Ok(d) => Some(d),
        Err(e) => {
            eprintln!("[detect] burst: no ext4 image for the lab ({e:#}); it goes to the temp dir");
            None
        }
    };
    let mut node = match &disk {
        Some(d) => LabNode::create(&d.path().join("node")),
        None => LabNode::temp(),
    }
    .context("lab node")?;
    let on_image = disk.is_some();
    eprintln!("[detect] burst: creating {} volumes", p.volumes);
    let mut volumes = Vec::new();
    while volumes.len() < p.volumes {
        let pod_name = format!("burst-{}", volumes.len() / PER_POD);
        let pod = node.add_pod("bench", &pod_name)?;
        for j in 0..PER_POD.min(p.volumes - volumes.len()) {
            let (ty, name) = if j == PER_POD - 1 {
                (VolumeType::Secret, "creds".to_owned())
            } else {
                (VolumeType::ConfigMap, format!("cfg-{j}"))
            };
            let writer = node.add_volume(&pod, ty, &name)?;
            match writer.write(&update_payload(0), CallStyle::GoAt)? {
                WriteOutcome::Written { initial: true, .. } => {}
                other => bail!("initial population of {name}: {other:?}"),
            }
            volumes.push(Volume {
                pod: pod_name.clone(),
                name,
                ty,
                writer,
                written: 0,
            });
        }
    }
    // Dirty pages of the setup (and of earlier measures) written back now.
    // SAFETY: sync has no preconditions.
    unsafe { libc::sync() };
    let disk_fs = fs_desc(&node.kubelet_root());
    let secrets = volumes
        .iter()
        .filter(|v| v.ty == VolumeType::Secret)
        .count();

    let mut args: Vec<OsString> = vec![
        "--kubelet-root".into(),
        node.kubelet_root().into(),
        "--pod-logs-dir".into(),
        node.pod_logs_dir().into(),
        "--log-level".into(),
        "warn".into(),
    ];
    // Beside the node: on the ext4 image when there is one, as a node's hostPath is on
    // its disk.
    let state = node.base().join("state.json");
    if p.state_file {
        args.extend(["--state-file".into(), state.clone().into()]);
    }
    let mut agent = AgentProcess::start(binary, &args, Stdio::inherit())?;
    let start = Instant::now();
    let (pid, addr) = (agent.pid(), agent.addr);
    eprintln!("[detect] burst: started {} on {addr}", binary.display());
    agent.wait_ready(Duration::from_secs(20), Duration::from_millis(20))?;
    let n = p.volumes as u64;
    let (m, _) = agent.wait_scrape(
        Duration::from_secs(15),
        Duration::from_millis(20),
        "all volumes",
        |m| metric_sum(m, "reloadscope_watched_volumes", &[]) == n,
    )?;
    let ebpf = m.get("reloadscope_ebpf_loaded", &[]) == Some(1.0);
    let ready_after = start.elapsed();
    let rss_before = proc_status_kib(pid, "VmRSS");
    let hwm_before = proc_status_kib(pid, "VmHWM");

    // The burst: an absolute schedule; a late write goes at once, without sleeping.
    let total = p.rate * p.seconds;
    eprintln!(
        "[detect] burst: {total} updates at {}/s over {} volumes (eBPF loaded: {ebpf})",
        p.rate, p.volumes
    );
    let (mut made, mut errors, mut max_late) = (0u64, 0u64, Duration::ZERO);
    let mut first_error = None;
    let agent_cpu0 = proc_cpu(pid)?;
    let writer_cpu0 = thread_cpu();
    let t0 = Instant::now();
    for i in 0..total {
        let due = t0 + Duration::from_nanos(i * 1_000_000_000 / p.rate);
        let now = Instant::now();
        if now < due {
            thread::sleep(due - now);
        } else {
            max_late = max_late.max(now - due);
        }
        let k = (i % n) as usize;
        let v = &mut volumes[k];
        match v.writer.write(&update_payload(i + 1), CallStyle::GoAt) {
            Ok(WriteOutcome::Written { initial: false, .. }) => {
                made += 1;
                v.written += 1;
            }
            Ok(other) => {
                errors += 1;
                first_error.get_or_insert(format!("not an update: {other:?}"));
            }
            Err(e) => {
                errors += 1;
                first_error.get_or_insert(format!("{e:#}"));
            }
        }
        if (i + 1) % p.rate == 0 {
            eprintln!("[detect] burst: {}s, {made} updates", (i + 1) / p.rate);
        }
    }
    let t_end = Instant::now();
    let burst = t_end - t0;
    let writer_cpu = thread_cpu() - writer_cpu0;
    let agent_cpu = proc_cpu(pid)? - agent_cpu0;
    if let Some(e) = &first_error {
        eprintln!("[detect] burst: {errors} failed writes, first: {e}");
    }

    // Settle: until the count equals what was made and stops moving, or SETTLE_MAX.
    eprintln!("[detect] burst: waiting for the counts to settle");
    let updates = |m: &Samples| metric_sum(m, "reloadscope_volume_updates_total", &[]);
    let det = |m: &Samples, s: &str| {
        metric_sum(m, "reloadscope_update_detections_total", &[("source", s)])
    };
    let mut last = None;
    let mut last_change = t_end;
    let mut all_counted_at = None;
    loop {
        if let Ok(m) = scrape::scrape(addr) {
            // After the scrape: the count it shows was there by now.
            let now = Instant::now();
            let u = updates(&m);
            let state = (u, det(&m, "ebpf"), det(&m, "inotify"));
            if last != Some(state) {
                last = Some(state);
                last_change = now;
            }
            if u == made && all_counted_at.is_none() {
                all_counted_at = Some(now - t_end);
            }
            let sources_done = (!ebpf || state.1 >= made) && state.2 >= made;
            let still = now - last_change;
            if u == made && (sources_done || still > PAIR_WINDOW + Duration::from_secs(1)) {
                break;
            }
        }
        if t_end.elapsed() > SETTLE_MAX {
            break;
        }
        thread::sleep(Duration::from_millis(50));
    }
    // Gaps are booked when an update's pairing window closes after the last sighting.
    let gaps_final = t_end + PAIR_WINDOW + Duration::from_millis(600);
    if let Some(wait) = gaps_final.checked_duration_since(Instant::now()) {
        thread::sleep(wait);
    }
    let m = scrape::scrape(addr).context("final scrape")?;
    let rss_after = proc_status_kib(pid, "VmRSS");
    let hwm_after = proc_status_kib(pid, "VmHWM");
    let (end, stop_took) = agent.terminate();
    eprintln!("[detect] burst: agent stopped ({end}) in {stop_took:.2?}");

    let counted = updates(&m);
    let wrong_volumes = volumes
        .iter()
        .filter(|v| {
            let got = m
                .get(
                    "reloadscope_volume_updates_total",
                    &[("pod", &v.pod), ("volume", &v.name)],
                )
                .unwrap_or(0.0) as u64;
            got != v.written
        })
        .count();
    drop(node);
    drop(disk);

    let secs = burst.as_secs_f64();
    let achieved = made as f64 / secs;
    let pct = |d: Duration| 100.0 * d.as_secs_f64() / secs;
    let image = if on_image {
        ", a loop-mounted image made for the run"
    } else {
        ""
    };
    let mut s = String::new();
    let _ = writeln!(
        s,
        "### Burst: {}/s for {} s across {} volumes, agent as its own process{}\n\n\
         `{}` (`agent --log-level warn{}`, eBPF loaded: {}), {} configmap volumes on disk \
         ({disk_fs}{image}) and {secrets} secret volumes on tmpfs, 2 keys each, in {} pods; \
         ready with all volumes watched {:.2} s after start. The writer, one thread, makes \
         the kubelet's calls on the volumes in turn on an absolute schedule.\n",
        p.rate,
        p.seconds,
        p.volumes,
        if p.state_file {
            ", with a state file"
        } else {
            ""
        },
        binary.display(),
        if p.state_file {
            " --state-file <node dir>/state.json"
        } else {
            ""
        },
        if ebpf { "yes" } else { "NO" },
        p.volumes - secrets,
        p.volumes.div_ceil(PER_POD),
        ready_after.as_secs_f64(),
    );
    let _ = writeln!(s, "| | value | beside |");
    let _ = writeln!(s, "|---|---|---|");
    let _ = writeln!(
        s,
        "| updates made | {made} in {secs:.2} s ({achieved:.0}/s, latest start {:.1} ms behind schedule; {errors} failed writes) | {} of the {}/s target |",
        max_late.as_secs_f64() * 1e3,
        ratio(achieved, p.rate as f64),
        p.rate
    );
    let all_counted = all_counted_at.map_or_else(
        || "never, within 10 s".to_owned(),
        |d| {
            format!(
                "by a scrape ending {:.1} ms after the burst",
                d.as_secs_f64() * 1e3
            )
        },
    );
    let _ = writeln!(
        s,
        "| updates counted (`reloadscope_volume_updates_total`, summed) | {counted} (all counted: {all_counted}) | {} of made |",
        ratio(counted as f64, made as f64)
    );
    let _ = writeln!(
        s,
        "| lost (made - counted; goal 0) | {} | volumes with a wrong count: {wrong_volumes} |",
        made as i64 - counted as i64
    );
    let _ = writeln!(
        s,
        "| detections ebpf / inotify | {} / {} | |",
        det(&m, "ebpf"),
        det(&m, "inotify")
    );
    let _ = writeln!(
        s,
        "| detection gaps, missed by ebpf / inotify | {} / {} | |",
        metric_sum(
            &m,
            "reloadscope_update_detection_gaps_total",
            &[("missed_by", "ebpf")]
        ),
        metric_sum(
            &m,
            "reloadscope_update_detection_gaps_total",
            &[("missed_by", "inotify")]
        )
    );
    let _ = writeln!(
        s,
        "| `reloadscope_ebpf_events_lost_total` | {} | inotify queue overflows: {} |",
        metric_sum(&m, "reloadscope_ebpf_events_lost_total", &[]),
        metric_sum(&m, "reloadscope_inotify_queue_overflows_total", &[])
    );
    let _ = writeln!(
        s,
        "| agent CPU over the burst (utime + stime) | {:.1} % of one core ({:.2} s, {:.0} µs per update) | writer (baseline) {:.1} % of one core ({:.2} s): agent/writer {} |",
        pct(agent_cpu),
        agent_cpu.as_secs_f64(),
        agent_cpu.as_secs_f64() * 1e6 / made.max(1) as f64,
        pct(writer_cpu),
        writer_cpu.as_secs_f64(),
        ratio(agent_cpu.as_secs_f64(), writer_cpu.as_secs_f64())
    );
    let kib = |v: Option<u64>| v.map_or(f64::NAN, |k| k as f64);
    let _ = writeln!(
        s,
        "| agent VmRSS before / after | {} / {} | after/before {} |",
        fmt_kib(rss_before),
        fmt_kib(rss_after),
        ratio(kib(rss_after), kib(rss_before))
    );
    let _ = writeln!(
        s,
        "| agent VmHWM before / after | {} / {} | after/before {} |",
        fmt_kib(hwm_before),
        fmt_kib(hwm_after),
        ratio(kib(hwm_after), kib(hwm_before))
    );
    let _ = writeln!(
        s,
        "| agent shutdown on SIGTERM | {end} after {:.0} ms | |",
        stop_took.as_secs_f64() * 1e3
    );
    if achieved < 0.95 * p.rate as f64 {
        let _ = writeln!(
            s,
            "\nThe writer fell behind its schedule while using {:.0} % of one core itself \
             (the agent: {:.1} %): the bound was the writer's own system calls on the lab's \
             file systems, not the agent.{}",
            pct(writer_cpu),
            pct(agent_cpu),
            if disk_fs == "ext4 without a journal" {
                " ext4 without a journal skips inodes deleted in the last 30 s when it \
                 allocates one: an earlier run's churn slows the writer, so rerun after a \
                 minute's rest."
            } else {
                ""
            }
        );
    }
    Ok(Burst {
        report: s,
        agent_cpu,
    })
}
