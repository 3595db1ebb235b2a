//! The agent binary at the kernel's limits: a thousand idle and slow connections under a
//! 1024-descriptor limit, and an inotify watch limit too low for the node's volumes.
//! Each limit is counted, said once with its fix, and recovered from without a
//! restart. Needs root (the watch limit is set in a user namespace of the agent's own,
//! so nothing else on the machine is limited).

use std::{
    io::{Read, Write},
    net::{SocketAddr, TcpStream},
    time::{Duration, Instant},
};

use crate::support::{process::*, *};
use reloadscope::node::volumes::VolumeType;
use reloadscope_lab::{AtomicWriter, CallStyle, LabNode, WriteOutcome, payload, scrape};

fn update(w: &AtomicWriter, v: &str) {
    let out = w.write(&payload(&[("k", v)]), CallStyle::GoAt).unwrap();
    assert!(matches!(out, WriteOutcome::Written { .. }), "{out:?}");
}

fn readyz(addr: SocketAddr) -> Option<(u16, String)> {
    scrape::get(addr, "/readyz").ok()
}

/// This process's soft descriptor limit raised to its hard one (the clients need
/// more than 1024).
fn raise_own_nofile() {
    let mut r = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: reads into and writes from a live struct.
    unsafe {
        assert_eq!(libc::getrlimit(libc::RLIMIT_NOFILE, &mut r), 0);
        r.rlim_cur = r.rlim_max;
        assert_eq!(libc::setrlimit(libc::RLIMIT_NOFILE, &r), 0);
    }
}

const IDLE: usize = 1000;
const SLOW: usize = 100;

/// A volume of each type on each of `pods` new pods named `<prefix>-<i>`, populated.
fn pods(node: &mut LabNode, prefix: &str, pods: usize) -> Vec<(String, AtomicWriter)> {
    let mut out = Vec::new();
    for i in 0..pods {
        let pod = node.add_pod("ns", &format!("{prefix}-{i}")).unwrap();
        for ty in VolumeType::ALL {
            let name = format!("{prefix}-{i}-{}", ty.label().replace('_', "-"));
            let w = node.add_volume(&pod, ty, &name).unwrap();
            update(&w, "v0");
            out.push((name, w));
        }
    }
    out
}

fn updates(m: &scrape::Samples, vols: &[(String, AtomicWriter)]) -> f64 {
    (vols.iter())
        .filter_map(|(n, _)| m.get("reloadscope_volume_updates_total", &[("volume", n)]))
        .sum()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs root: run cargo xtask test"]
async fn a_thousand_idle_and_slow_connections_under_1024_descriptors_block_nothing() {
    raise_own_nofile();
    let mut node = LabNode::temp().unwrap();
    let before = pods(&mut node, "before", 2);
    let port = free_port();
    let addr = SocketAddr::from(([127, 0, 0, 1], port));
    // Soft and hard 1024: the agent cannot raise it.
    let wrapper = ["prlimit", "--nofile=1024:1024"];
    let mut cmd = agent_command(&node, &addr.to_string(), &wrapper);
    cmd.args(["--probe", "off", "--no-reloads", "--no-kube"]);
    let mut agent = Agent(Some(cmd.spawn().unwrap()));
    wait_for("/readyz", || {
        let exited = agent.0.as_mut().unwrap().try_wait().unwrap();
        async move {
            assert!(exited.is_none(), "the agent exited: {exited:?}");
            let (code, _) = blocking(move || readyz(addr)).await?;
            (code == 200).then_some(())
        }
    })
    .await;

    // Held: idle connections, and slow ones that sent half a request's headers.
    let held: Vec<TcpStream> = blocking(move || {
        let mut held = Vec::new();
        for i in 0..IDLE + SLOW {
            let mut s = TcpStream::connect(addr).unwrap();
            if i >= IDLE {
                s.write_all(b"GET /metrics HTTP/1.1\r\nHost: x\r\n")
                    .unwrap();
            }
            held.push(s);
        }
        held
    })
    .await;
    // Pods made while they are held are followed; scrapes are answered at once.
    let during = pods(&mut node, "during", 20);
    let start = Instant::now();
    let (code, _) = blocking(move || scrape::get(addr, "/metrics"))
        .await
        .unwrap();
    let answered = start.elapsed();
    println!("{IDLE} idle and {SLOW} slow connections held: a scrape answered in {answered:?}");
    assert_eq!(code, 200);
    assert!(answered < Duration::from_secs(1), "{answered:?}");
    for (_, w) in &during {
        update(w, "v1");
    }
    let m = wait_metrics(addr, "the new pods' updates", |m| {
        updates(m, &during) == during.len() as f64
    })
    .await;
    let evicted = m
        .get("reloadscope_http_connections_evicted_total", &[])
        .unwrap();
    assert!(evicted > 0.0, "1,100 connections under a cap of 256");
    assert_eq!(m.get("process_max_fds", &[]), Some(1024.0));
    assert!(m.get("process_open_fds", &[]).unwrap() < 512.0);
    assert_eq!(m.sum("reloadscope_unwatched_paths", &[]), 0.0);

    // Every held connection is closed by the agent: evicted, or at the header timeout.
    let closed = blocking(move || {
        let mut closed = 0;
        for mut s in held {
            s.set_read_timeout(Some(Duration::from_secs(15))).unwrap();
            let mut b = [0u8; 1];
            if matches!(s.read(&mut b), Ok(0) | Err(_)) {
                closed += 1;
            }
        }
        closed
    })
    .await;
    assert_eq!(closed, IDLE + SLOW);
    for (_, w) in before.iter().chain(&during) {
        update(w, "v2");
    }
    wait_metrics(addr, "every update after the connections", |m| {
        updates(m, &before) == before.len() as f64
            && updates(m, &during) == 2.0 * during.len() as f64
    })
    .await;
    let log = stop(agent).await.1;
    assert!(warnings(&log).is_empty(), "{log}");
}

/// `sh -c` of the agent's user namespace: its inotify watch limit, then the agent.
const LIMITED: &str = "echo 800 > /proc/sys/user/max_inotify_watches && exec \"$@\"";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs root: run cargo xtask test"]
async fn the_inotify_watch_limit_is_counted_said_once_and_recovered_from() {
    let mut node = LabNode::temp().unwrap();
    // 200 pods x 5 volumes: about 2,000 watches, for a limit of 800.
    let mut vols = Vec::new();
    for i in 0..200 {
        let pod = node.add_pod("ns", &format!("p{i}")).unwrap();
        // On disk: no tmpfs mount per volume to make.
        for j in 0..5 {
            let w = node
                .add_volume(&pod, VolumeType::ConfigMap, &format!("v{j}"))
                .unwrap();
            update(&w, "v0");
            vols.push(w);
        }
    }
    assert_eq!(vols.len(), 1000);
    let port = free_port();
    let addr = SocketAddr::from(([127, 0, 0, 1], port));
    let wrapper = [
        "unshare",
        "--user",
        "--map-root-user",
        "sh",
        "-c",
        LIMITED,
        "sh",
    ];
    let mut cmd = agent_command(&node, &addr.to_string(), &wrapper);
    cmd.args(["--probe", "off", "--no-reloads", "--no-kube"]);
    let mut agent = Agent(Some(cmd.spawn().unwrap()));
    let pid = agent.0.as_ref().unwrap().id();

    // Not ready, and says why; the metric counts the dirs not followed.
    let (_, body) = wait_for("/readyz to refuse for the watch limit", || {
        let exited = agent.0.as_mut().unwrap().try_wait().unwrap();
        async move {
            assert!(exited.is_none(), "the agent exited: {exited:?}");
            let (code, body) = blocking(move || readyz(addr)).await?;
            (code == 503 && body.contains("watch_limit")).then_some((code, body))
        }
    })
    .await;
    println!("/readyz: {body}");
    let m = metrics(addr).await;
    let limited = m
        .get("reloadscope_unwatched_paths", &[("reason", "watch_limit")])
        .unwrap();
    let followed = m.sum("reloadscope_watched_volumes", &[]);
    println!("limit 800: {followed} volumes followed, {limited} dirs not followed");
    assert!(limited > 0.0 && followed < 1000.0);

    // Updates made now reach only the volumes followed: each of those counts.
    for w in &vols {
        update(w, "v1");
    }
    let m = wait_metrics(addr, "the followed volumes' updates", |m| {
        m.sum("reloadscope_volume_updates_total", &[]) == m.sum("reloadscope_watched_volumes", &[])
    })
    .await;
    let counted = m.sum("reloadscope_volume_updates_total", &[]);
    println!("1000 updates made under the limit, {counted} counted");

    // The limit raised in the agent's namespace: every dir is followed within a retry.
    let raised = std::process::Command::new("nsenter")
        .args(["--user", "--target", &pid.to_string(), "sh", "-c"])
        .arg("echo 100000 > /proc/sys/user/max_inotify_watches")
        .status()
        .unwrap();
    assert!(raised.success());
    let m = wait_metrics(addr, "every volume followed again", |m| {
        m.sum("reloadscope_unwatched_paths", &[]) == 0.0
            && m.sum("reloadscope_watched_volumes", &[]) == 1000.0
    })
    .await;
    assert_eq!(m.sum("reloadscope_watched_volumes", &[]), 1000.0);
    wait_for("/readyz", || async move {
        let (code, _) = blocking(move || readyz(addr)).await?;
        (code == 200).then_some(())
    })
    .await;
    let before = m.sum("reloadscope_volume_updates_total", &[]);
    for w in &vols {
        update(w, "v2");
    }
    wait_metrics(addr, "all 1,000 updates made after the recovery", |m| {
        m.sum("reloadscope_volume_updates_total", &[]) == before + 1000.0
    })
    .await;
    let log = stop(agent).await.1;
    let warned = warnings(&log);
    assert_eq!(warned.len(), 1, "one line for the limit: {warned:#?}");
    assert!(
        warned[0].contains("fs.inotify.max_user_watches") && warned[0].contains("800"),
        "{}",
        warned[0]
    );
    let recovered = (log.lines())
        .filter(|l| l.contains("followed again"))
        .count();
    assert_eq!(recovered, 1, "{log}");
}

/// The agent's stderr lines as they come, read on a thread of their own.
struct LogLines(std::sync::Arc<std::sync::Mutex<Vec<String>>>);

impl LogLines {
    fn follow(stderr: std::process::ChildStderr) -> LogLines {
        let lines = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
        let out = lines.clone();
        std::thread::spawn(move || {
            use std::io::BufRead;
            for line in std::io::BufReader::new(stderr)
                .lines()
                .map_while(Result::ok)
            {
                out.lock().unwrap().push(line);
            }
        });
        LogLines(lines)
    }

    fn any(&self, f: impl Fn(&str) -> bool) -> bool {
        self.0.lock().unwrap().iter().any(|l| f(l))
    }

    fn count(&self, f: impl Fn(&str) -> bool) -> usize {
        self.0.lock().unwrap().iter().filter(|l| f(l)).count()
    }
}

/// The agent's descriptor limit lowered, while it runs, to the descriptors it holds
/// (`prlimit --pid`): the pods made meanwhile cannot be listed. Said once, with the
/// limit; followed once the limit is raised again, without a restart. (Connections
/// alone cannot do this: they are capped at a quarter of the limit.)
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs root: run cargo xtask test"]
async fn dirs_listed_out_of_descriptors_are_followed_once_there_are_more() {
    let mut node = LabNode::temp().unwrap();
    let port = free_port();
    let addr = SocketAddr::from(([127, 0, 0, 1], port));
    let mut cmd = agent_command(&node, &addr.to_string(), &[]);
    cmd.args(["--probe", "off", "--no-reloads", "--no-kube"]);
    let mut child = cmd.spawn().unwrap();
    let log = LogLines::follow(child.stderr.take().unwrap());
    let pid = child.id();
    let agent = Agent(Some(child));
    // Ready, told by its log rather than by /readyz: a request's connection, closed a
    // moment later, would leave a free descriptor below the limit set next.
    wait_for("the agent's first walk", || {
        let done = log.any(|l| l.contains("initial scan done"));
        async move { done.then_some(()) }
    })
    .await;
    let prlimit = |limit: usize| {
        let status = std::process::Command::new("prlimit")
            .args(["--pid", &pid.to_string(), &format!("--nofile={limit}:")])
            .status()
            .unwrap();
        assert!(status.success());
    };
    // The kernel gives the lowest free descriptor: a limit at it leaves none.
    let fds: std::collections::BTreeSet<usize> = std::fs::read_dir(format!("/proc/{pid}/fd"))
        .unwrap()
        .map(|e| e.unwrap().file_name().to_str().unwrap().parse().unwrap())
        .collect();
    let held = (0..).find(|n| !fds.contains(n)).unwrap();
    prlimit(held);
    let mut vols = Vec::new();
    for i in 0..5 {
        let pod = node.add_pod("ns", &format!("late{i}")).unwrap();
        let w = node.add_volume(&pod, VolumeType::ConfigMap, "cfg").unwrap();
        update(&w, "v0");
        vols.push(w);
    }
    let fd_limit = |l: &str| l.contains("\"reason\":\"fd_limit\"") && l.contains("WARN");
    wait_for("the walker out of descriptors", || {
        let said = log.any(fd_limit);
        async move { said.then_some(()) }
    })
    .await;
    // The soft limit alone moves: raising another process's hard limit back takes
    // CAP_SYS_RESOURCE, which a test machine's root may lack.
    prlimit(1024);
    let m = wait_metrics(addr, "the new pods followed", |m| {
        m.sum("reloadscope_watched_volumes", &[]) == 5.0
            && m.sum("reloadscope_unwatched_paths", &[]) == 0.0
    })
    .await;
    assert!(m.get("reloadscope_fd_exhausted_total", &[]).unwrap() > 0.0);
    for w in &vols {
        update(w, "v1");
    }
    wait_metrics(addr, "their updates", |m| {
        m.sum("reloadscope_volume_updates_total", &[]) == 5.0
    })
    .await;
    let (code, _) = blocking(move || readyz(addr)).await.unwrap();
    assert_eq!(code, 200);
    let mut agent = agent;
    let mut child = agent.0.take().unwrap();
    // SAFETY: our child's pid.
    unsafe { libc::kill(pid as i32, libc::SIGTERM) };
    assert!(blocking(move || child.wait().unwrap()).await.success());
    assert_eq!(log.count(fd_limit), 1, "one line for the descriptors");
    let limit = format!("RLIMIT_NOFILE is {held}");
    assert!(log.any(|l| fd_limit(l) && l.contains(&limit)), "{limit}");
    assert_eq!(log.count(|l| l.contains("followed again")), 1);
}
