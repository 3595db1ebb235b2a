//! The simplest alternative a user might run instead: a tight poller, as a naive
//! sidecar does it. It walks `<kubelet root>/pods/*/volumes/*/*` once, then every
//! 100 ms (on a ticker: a pass that overruns its slot drops the ticks it missed)
//! readlinks every volume's `..data` and counts a change whenever the target differs
//! from the last one it read. Two updates of one volume within one interval are one
//! change: a missed update. It runs as a process of its own (the benchmarks' program
//! again, as `scale` [`FLAG`]) so that its CPU time and memory are its own; it keeps
//! 12 bytes per change it sees, for the benchmark, and no other state than the last
//! target of each volume.

use std::{
    ffi::CString,
    fs,
    io::{BufRead as _, BufReader, Write as _},
    os::unix::ffi::OsStrExt as _,
    path::Path,
    process::{Command, ExitCode, Stdio},
    thread,
    time::{Duration, Instant, SystemTime},
};

use anyhow::{Context as _, bail};

use super::{
    Params,
    agent_phase::{Window, WindowStart},
    node::ScaleNode,
    writer::{Burst, sustained, update_at},
};
use crate::common::{procfs::proc_status_kib, revision::unix_ns};

/// First argument after `scale` when the benchmarks' program runs as the poller.
pub const FLAG: &str = "--poller-child";

pub struct PollerFigures {
    pub interval: Duration,
    pub volumes: usize,
    /// Spawn to its first pass over every volume done.
    pub ready: Duration,
    pub rss_steady: Option<u64>,
    pub rss_end: Option<u64>,
    pub hwm_end: Option<u64>,
    pub idle: Window,
    pub burst: Burst,
    pub burst_window: Window,
    /// Changes it counted during the burst.
    pub counted: u64,
    /// Updates it never saw (made - matched).
    pub missed: u64,
    /// Changes that match no update.
    pub unmatched: u64,
    /// Its sighting - the writer's swap, ns, per update seen.
    pub swap_err: Vec<f64>,
    pub passes: u64,
    pub overruns: u64,
    pub max_pass: Duration,
}

fn readlink<'b>(path: &CString, buf: &'b mut [u8]) -> &'b [u8] {
    // SAFETY: `path` is NUL-terminated; `buf` is writable for its length.
    let n = unsafe { libc::readlink(path.as_ptr(), buf.as_mut_ptr().cast(), buf.len()) };
    if n < 0 { &[] } else { &buf[..n as usize] }
}

/// Waits up to `timeout` for stdin to close (the benchmark's signal to stop).
fn stdin_closed(timeout: Duration) -> bool {
    let mut fds = [libc::pollfd {
        fd: libc::STDIN_FILENO,
        events: libc::POLLIN,
        revents: 0,
    }];
    let ts = libc::timespec {
        tv_sec: timeout.as_secs() as libc::time_t,
        tv_nsec: timeout.subsec_nanos() as libc::c_long,
    };
    // SAFETY: one valid pollfd; a valid timespec; no signal mask.
    let n = unsafe { libc::ppoll(fds.as_mut_ptr(), 1, &ts, std::ptr::null()) };
    n > 0 && fds[0].revents != 0
}

fn volume_links(root: &Path) -> anyhow::Result<Vec<CString>> {
    let mut out = Vec::new();
    let pods = root.join("pods");
    for pod in fs::read_dir(&pods).with_context(|| format!("list {pods:?}"))? {
        let Ok(plugins) = fs::read_dir(pod?.path().join("volumes")) else {
            continue;
        };
        for plugin in plugins {
            for vol in fs::read_dir(plugin?.path())? {
                let link = vol?.path().join("..data");
                out.push(CString::new(link.as_os_str().as_bytes())?);
            }
        }
    }
    Ok(out)
}

/// The poller process: `<bench> --poller-child <kubelet root> <out file> <interval µs>`.
pub fn child_main(args: &[String]) -> ExitCode {
    match child(args) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("[scale] poller: {e:#}");
            ExitCode::FAILURE
        }
    }
}

fn child(args: &[String]) -> anyhow::Result<()> {
    let [root, out, interval] = args else {
        bail!("usage: {FLAG} <kubelet root> <out file> <interval µs>");
    };
    let interval = Duration::from_micros(interval.parse().context("interval")?);
    let links = volume_links(Path::new(root))?;
    let mut buf = [0u8; 4096];
    let mut last: Vec<Vec<u8>> = links
        .iter()
        .map(|l| readlink(l, &mut buf).to_vec())
        .collect();
    let mut stdout = std::io::stdout();
    writeln!(stdout, "ready {}", links.len())?;
    stdout.flush()?;

    let mut seen: Vec<(u32, i64)> = Vec::new();
    let (mut passes, mut overruns, mut max_pass) = (0u64, 0u64, Duration::ZERO);
    let t0 = Instant::now();
    let mut k = 1u32;
    loop {
        let due = t0 + interval * k;
        if stdin_closed(due.saturating_duration_since(Instant::now())) {
            break;
        }
        let start = Instant::now();
        for (i, l) in links.iter().enumerate() {
            let target = readlink(l, &mut buf);
            if target != last[i].as_slice() {
                last[i] = target.to_vec();
                seen.push((i as u32, unix_ns(SystemTime::now())));
            }
        }
        passes += 1;
        max_pass = max_pass.max(start.elapsed());
        k += 1;
        // A ticker drops the ticks a slow pass ran over.
        let behind = (t0.elapsed().as_nanos() / interval.as_nanos().max(1)) as u32;
        if behind >= k {
            overruns += 1;
            k = behind + 1;
        }
    }
    let mut f = std::io::BufWriter::new(fs::File::create(out)?);
    writeln!(
        f,
        "{passes} {overruns} {} {}",
        max_pass.as_nanos(),
        links.len()
    )?;
    // Its volumes in its own (walk) order, then what it saw.
    for l in &links {
        f.write_all(l.as_bytes())?;
        f.write_all(b"\n")?;
    }
    for (i, at) in &seen {
        writeln!(f, "{i} {at}")?;
    }
    f.flush()?;
    Ok(())
}

pub fn run(p: &Params, sn: &ScaleNode, next_rev: &mut u64) -> anyhow::Result<PollerFigures> {
    let exe = std::env::current_exe().context("own path")?;
    let dir = tempfile::Builder::new()
        .prefix("reloadscope-bench-poller-")
        .tempdir()?;
    let out = dir.path().join("seen");
    // SAFETY: sync has no preconditions.
    unsafe { libc::sync() };
    thread::sleep(Duration::from_secs(1));

    eprintln!("[scale] poller: starting (every {} ms)", p.poll.as_millis());
    let started = Instant::now();
    let mut child = Command::new(&exe)
        .args(["scale", FLAG])
        .arg(sn.node.kubelet_root())
        .arg(&out)
        .arg(p.poll.as_micros().to_string())
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .context("start the poller")?;
    let pid = child.id();
    let mut line = String::new();
    BufReader::new(child.stdout.take().expect("piped"))
        .read_line(&mut line)
        .context("the poller's ready line")?;
    let ready = started.elapsed();
    let volumes: usize = match line.trim().strip_prefix("ready ") {
        Some(n) => n.parse().context("the poller's ready line")?,
        None => {
            let _ = child.kill();
            let _ = child.wait();
            bail!("the poller did not start: {line:?}");
        }
    };
    let stdin = child.stdin.take();
    let r = (|| {
        if volumes != sn.vols.len() {
            bail!("the poller found {volumes} volumes, not {}", sn.vols.len());
        }
        eprintln!(
            "[scale] poller: ready after {:.3} s; idle for {} s",
            ready.as_secs_f64(),
            p.idle.as_secs()
        );
        thread::sleep(Duration::from_secs(2));
        let rss_steady = proc_status_kib(pid, "VmRSS");
        let w = WindowStart::now(pid, sn)?;
        thread::sleep(p.idle);
        let idle = w.end()?;
        eprintln!("[scale] poller: {} updates/s for {} s", p.rate, p.seconds);
        let w = WindowStart::now(pid, sn)?;
        let burst = sustained(&sn.vols, p.rate, p.seconds, next_rev, "poller");
        let burst_window = w.end()?;
        // A few more passes for the last updates.
        thread::sleep(Duration::from_secs(1));
        Ok((
            rss_steady,
            proc_status_kib(pid, "VmRSS"),
            proc_status_kib(pid, "VmHWM"),
            idle,
            burst,
            burst_window,
        ))
    })();
    drop(stdin);
    let status = child.wait().context("wait for the poller")?;
    let (rss_steady, rss_end, hwm_end, idle, burst, burst_window) = r?;
    if !status.success() {
        bail!("the poller failed: {status}");
    }
    let text = fs::read_to_string(&out).context("the poller's output")?;
    let mut lines = text.lines();
    let head: Vec<u64> = lines
        .next()
        .unwrap_or_default()
        .split_whitespace()
        .filter_map(|x| x.parse().ok())
        .collect();
    let [passes, overruns, max_pass_ns, n] = head[..] else {
        bail!("bad poller output head");
    };
    // Its index of each volume to ours.
    let ours: std::collections::HashMap<&[u8], usize> = sn
        .vols
        .iter()
        .enumerate()
        .map(|(i, v)| (v.writer.dir().as_os_str().as_bytes(), i))
        .collect();
    let mut map = Vec::with_capacity(n as usize);
    for _ in 0..n {
        let l = lines.next().unwrap_or_default();
        let dir = l.strip_suffix("/..data").unwrap_or(l);
        map.push(
            *ours
                .get(dir.as_bytes())
                .with_context(|| format!("the poller's volume {l:?} is not the bench's"))?,
        );
    }
    let by_vol = burst.by_volume(sn.vols.len());
    let mut matched = vec![false; burst.log.len()];
    let (mut counted, mut unmatched, mut swap_err) = (0u64, 0u64, Vec::new());
    let slack = p.slack_ns();
    let since = unix_ns(burst.t0_wall) - slack;
    for l in lines {
        let Some((v, at)) = l.split_once(' ') else {
            continue;
        };
        let (v, at): (usize, i64) = (v.parse()?, at.parse()?);
        let v = *map
            .get(v)
            .context("bad volume index in the poller's output")?;
        if at < since {
            continue;
        }
        counted += 1;
        match update_at(&burst.log, &by_vol[v], at, slack) {
            Some(u) if !matched[u] => {
                matched[u] = true;
                swap_err.push((at - burst.log[u].swapped_ns) as f64);
            }
            _ => unmatched += 1,
        }
    }
    let missed = matched.iter().filter(|m| !**m).count() as u64;
    Ok(PollerFigures {
        interval: p.poll,
        volumes,
        ready,
        rss_steady,
        rss_end,
        hwm_end,
        idle,
        burst,
        burst_window,
        counted,
        missed,
        unmatched,
        swap_err,
        passes,
        overruns,
        max_pass: Duration::from_nanos(max_pass_ns),
    })
}
