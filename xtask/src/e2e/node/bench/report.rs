//! `cargo xtask bench cluster`'s Markdown: the machine and node, then per mode the
//! kubelet's swaps as the agent saw them, the reloads against the containers' logs,
//! and each mode beside a baseline mode.

use std::fmt::Write as _;
use std::fs;
use std::process::Command;

use super::{CONSUMERS, Credit, Mode, ModeRun, Update, VOLUMES};
use crate::cluster::{self, Layout};
use crate::cmd;

/// The machine and node, read before the first mode.
pub struct Header {
    command: String,
    date: String,
    commit: String,
    uncommitted: usize,
    kernel: String,
    nproc: usize,
    cpu: String,
    load: String,
    kubernetes: String,
    containerd: String,
}

fn output(cmd: &mut Command) -> Option<String> {
    let out = cmd.current_dir(cmd::workspace_root()).output().ok()?;
    out.status
        .success()
        .then(|| String::from_utf8_lossy(&out.stdout).trim().to_owned())
}

impl Header {
    pub fn now(modes: &[Mode], updates: u32) -> Self {
        let modes: Vec<&str> = modes.iter().map(|m| m.name()).collect();
        let unknown = || "unknown".to_owned();
        let kubernetes = cluster::kubectl(&Layout::new(), &["version", "-o", "json"])
            .ok()
            .and_then(|s| serde_json::from_str::<serde_json::Value>(&s).ok())
            .and_then(|v| v["serverVersion"]["gitVersion"].as_str().map(str::to_owned))
            // Built from Debian's source without git's version stamps.
            .filter(|v| !v.starts_with("v0.0.0"))
            .unwrap_or_else(|| format!("v{}", cluster::KUBERNETES_VERSION));
        Self {
            command: format!(
                "cargo xtask bench cluster --updates {updates} --modes {}",
                modes.join(",")
            ),
            date: output(Command::new("date").args(["-u", "+%Y-%m-%d from %H:%M UTC"]))
                .unwrap_or_else(unknown),
            commit: output(Command::new("git").args(["rev-parse", "--short", "HEAD"]))
                .unwrap_or_else(unknown),
            uncommitted: output(Command::new("git").args(["status", "--porcelain"]))
                .map_or(0, |s| s.lines().count()),
            kernel: output(Command::new("uname").arg("-r")).unwrap_or_else(unknown),
            nproc: std::thread::available_parallelism().map_or(0, usize::from),
            cpu: fs::read_to_string("/proc/cpuinfo")
                .ok()
                .and_then(|s| {
                    s.lines()
                        .find_map(|l| l.strip_prefix("model name")?.split_once(':'))
                        .map(|(_, m)| m.trim().to_owned())
                })
                .unwrap_or_else(unknown),
            load: fs::read_to_string("/proc/loadavg")
                .map(|s| s.split_whitespace().take(3).collect::<Vec<_>>().join(" "))
                .unwrap_or_else(|_| unknown()),
            kubernetes,
            containerd: output(Command::new("containerd").arg("--version"))
                .and_then(|s| s.split_whitespace().nth(2).map(str::to_owned))
                .unwrap_or_else(unknown),
        }
    }
}

/// Median (mean of the middle two for an even count); NaN when empty.
fn median(values: &[f64]) -> f64 {
    let mut v = values.to_vec();
    v.sort_by(f64::total_cmp);
    match v.len() {
        0 => f64::NAN,
        n if n % 2 == 1 => v[n / 2],
        n => (v[n / 2 - 1] + v[n / 2]) / 2.0,
    }
}

/// Nearest-rank percentile; NaN when empty.
fn percentile(values: &[f64], p: f64) -> f64 {
    let mut v = values.to_vec();
    v.sort_by(f64::total_cmp);
    if v.is_empty() {
        return f64::NAN;
    }
    let rank = ((p / 100.0) * v.len() as f64).ceil().max(1.0) as usize;
    v[rank.min(v.len()) - 1]
}

fn max(values: &[f64]) -> f64 {
    values.iter().copied().fold(f64::NAN, f64::max)
}

fn min(values: &[f64]) -> f64 {
    values.iter().copied().fold(f64::NAN, f64::min)
}

/// Seconds as µs, ms or s with 3-4 significant digits; `n/a` for NaN.
fn time(s: f64) -> String {
    let a = s.abs();
    if s.is_nan() {
        "n/a".into()
    } else if a < 1e-3 {
        format!("{:.1} µs", s * 1e6)
    } else if a < 1.0 {
        format!("{:.2} ms", s * 1e3)
    } else {
        format!("{s:.2} s")
    }
}

/// `x / base` as `1.23x`, or why there is none.
fn ratio(x: f64, base: f64) -> String {
    if base == 0.0 {
        if x == 0.0 {
            "= (both 0)".into()
        } else {
            format!("n/a (baseline 0; +{x})")
        }
    } else {
        format!("{:.2}x", x / base)
    }
}

fn count(us: &[&Update], f: impl Fn(&Credit) -> bool) -> usize {
    us.iter()
        .flat_map(|u| &u.outcomes)
        .filter(|o| f(&o.credit))
        .count()
}

fn logged(c: &Credit) -> bool {
    matches!(
        c,
        Credit::Exact { .. } | Credit::Later { .. } | Credit::Missed
    )
}

pub fn markdown(h: &Header, runs: &[ModeRun], took: f64) -> String {
    let mut out = String::new();
    let base = runs
        .iter()
        .position(|r| r.mode == Mode::Ignore)
        .unwrap_or(0);
    let first = &runs[0];
    let _ = writeln!(out, "## `cargo xtask bench cluster`\n");
    let _ = writeln!(
        out,
        "_`{}`, run on {} (agent at {}{}); took {:.0} s._\n",
        h.command,
        h.date,
        h.commit,
        if h.uncommitted > 0 {
            format!(", {} uncommitted files in the tree", h.uncommitted)
        } else {
            String::new()
        },
        took
    );
    let _ = writeln!(
        out,
        "- kernel (`uname -r`): {}\n- nproc: {}\n- CPU: {}\n- load average at start: {}",
        h.kernel, h.nproc, h.cpu, h.load
    );
    let _ = writeln!(
        out,
        "- node: `cargo xtask cluster` (Kubernetes {}, kubelet syncing each pod every {}, \
         containerd {}, cgroupfs)\n- agent: its image from the working tree, deployed with \
         `kubectl apply -k` of deploy/ plus `--settled-marks <mode>`, in its pod under its \
         CPU limit ({}); probe: {}; fanotify: {}",
        h.kubernetes,
        cluster::SYNC_FREQUENCY,
        h.containerd,
        if first.cpu_limit.is_empty() {
            "unknown"
        } else {
            &first.cpu_limit
        },
        first.probe,
        if first.fanotify {
            "loaded"
        } else {
            "not loaded"
        },
    );
    let _ = writeln!(
        out,
        "- bench pod, per mode: `reloadscope-consumer` containers (the test consumer \
         image): {} on a ConfigMap volume (disk), {} on a Secret volume (tmpfs); updates \
         start once the agent's first-read window after the pod's volumes appeared (120 s) \
         is over, and patch the ConfigMap and the Secret in turn through the API, one at a \
         time, each waited for\n",
        CONSUMERS
            .iter()
            .filter(|c| c.volume == 0)
            .map(|c| format!("a `{}`", c.strategy))
            .collect::<Vec<_>>()
            .join(", "),
        CONSUMERS
            .iter()
            .filter(|c| c.volume == 1)
            .map(|c| format!("a `{}`", c.strategy))
            .collect::<Vec<_>>()
            .join(", "),
    );

    let _ = writeln!(out, "### The kubelet's swaps as the agent sees them\n");
    let _ = writeln!(
        out,
        "Kubelet's window: from its `mkdir` of the new data dir to its `rename` of \
         `..data_tmp` over `..data` (the syscalls' entries, traced by an ftrace instance \
         filtering on their paths): the time the agent has to mark the new dir before a \
         consumer can reach it. From the files: the data dir's birth time to the `..data` \
         symlink's mtime (`on_disk`), which the kernel takes from its coarse clock (a \
         tick is 4 ms here) unless someone asked for a fine one since. Swap stamp: \
         `reloadscope_volume_last_update_timestamp_seconds` - the traced rename's entry, \
         and - the symlink's mtime. Detection: the symlink's mtime to the end of the \
         first read of the agent's /metrics counting the update (this process wakes on \
         the swap through inotify, then reads /metrics every millisecond: an upper bound, \
         with an HTTP request in it). Late marks: `reloadscope_late_marks_total` over the \
         update (one swap each). Medians (min-max).\n"
    );
    let _ = writeln!(
        out,
        "| mode | volume | updates | patch to swap | kubelet's window, traced | p90 | from the files | agent's swap stamp - rename entry | - symlink mtime | detection, at most | p90 | late marks | other swaps on the node |"
    );
    let _ = writeln!(out, "|---|---|---|---|---|---|---|---|---|---|---|---|---|");
    for r in runs {
        for (vi, v) in VOLUMES.iter().enumerate() {
            let us: Vec<&Update> = r.updates.iter().filter(|u| u.volume == vi).collect();
            if us.is_empty() {
                continue;
            }
            let col = |f: fn(&Update) -> Option<f64>| -> Vec<f64> {
                us.iter().filter_map(|u| f(u)).collect()
            };
            let p2s = col(|u| Some(u.patch_to_swap));
            let win = col(|u| u.window);
            let files = col(|u| u.window_files);
            let after = col(|u| u.stamp_after_rename);
            let stamp = col(|u| Some(u.stamp_error));
            let det = col(|u| Some(u.detected));
            let late: f64 = us.iter().map(|u| u.late_marks).sum();
            let other: f64 = us.iter().map(|u| u.other_swaps).sum();
            let _ = writeln!(
                out,
                "| `{}` | {} | {} | {} ({}-{}) | {} ({}-{}) | {} | {} ({}-{}) | {} ({}-{}) | {} ({}-{}) | {} ({}-{}) | {} | {} of {} | {} |",
                r.mode.name(),
                v.medium,
                us.len(),
                time(median(&p2s)),
                time(min(&p2s)),
                time(max(&p2s)),
                time(median(&win)),
                time(min(&win)),
                time(max(&win)),
                time(percentile(&win, 90.0)),
                time(median(&files)),
                time(min(&files)),
                time(max(&files)),
                time(median(&after)),
                time(min(&after)),
                time(max(&after)),
                time(median(&stamp)),
                time(min(&stamp)),
                time(max(&stamp)),
                time(median(&det)),
                time(min(&det)),
                time(max(&det)),
                time(percentile(&det, 90.0)),
                late,
                us.len(),
                other,
            );
        }
    }

    let _ = writeln!(out, "\n### Reloads against the containers' own logs\n");
    let _ = writeln!(
        out,
        "Each consumer's log is its own record: the wall-clock time taken right before each \
         open(2) and the head of what it read. Its reload of an update is its first open \
         whose head is the new content. Credited within 5 ms of it: the agent's \
         `reloadscope_consumer_last_reload_timestamp_seconds` moved to a time that close \
         (error = the agent's time - the consumer's clock); more than 5 ms after it: \
         further (at a later open, or that open's event read late); missed: the log shows \
         the new content read and the agent credited nothing within 5 s of the swap. \
         Errors and the agent's latency over the reloads credited within 5 ms; latency, \
         agent: its reload - its swap stamp; latency, consumer's own: its open - the \
         traced rename's entry (medians).\n"
    );
    let _ = writeln!(
        out,
        "| mode | consumer | volume | reloads logged | credited within 5 ms of it | credited more than 5 ms after it | missed | median error | p99 \\|error\\| | max \\|error\\| | latency, agent | latency, consumer's own |"
    );
    let _ = writeln!(out, "|---|---|---|---|---|---|---|---|---|---|---|---|");
    let mut odd = Vec::new();
    for r in runs {
        for (ci, c) in CONSUMERS.iter().enumerate() {
            let os: Vec<&super::Outcome> = r
                .updates
                .iter()
                .flat_map(|u| &u.outcomes)
                .filter(|o| o.consumer == ci)
                .collect();
            let n = |f: &dyn Fn(&Credit) -> bool| os.iter().filter(|o| f(&o.credit)).count();
            let errors: Vec<f64> = os
                .iter()
                .filter_map(|o| match o.credit {
                    Credit::Exact { error } => Some(error),
                    _ => None,
                })
                .collect();
            let abs: Vec<f64> = errors.iter().map(|e| e.abs()).collect();
            let agent: Vec<f64> = os
                .iter()
                .filter(|o| matches!(o.credit, Credit::Exact { .. }))
                .filter_map(|o| o.latency_agent)
                .collect();
            let own: Vec<f64> = os.iter().filter_map(|o| o.latency_own).collect();
            let unconfirmed = n(&|c| matches!(c, Credit::Unconfirmed));
            let none = n(&|c| matches!(c, Credit::NoReload));
            if unconfirmed + none > 0 {
                odd.push(format!(
                    "`{}`, {}: {unconfirmed} credited with no open of the new content in its \
                     log, {none} neither read nor credited",
                    r.mode.name(),
                    c.container
                ));
            }
            let _ = writeln!(
                out,
                "| `{}` | {} (`{}`) | {} | {} | {} | {} | {} | {} | {} | {} | {} | {} |",
                r.mode.name(),
                c.container,
                c.strategy,
                VOLUMES[c.volume].medium,
                n(&logged),
                n(&|c| matches!(c, Credit::Exact { .. })),
                n(&|c| matches!(c, Credit::Later { .. })),
                n(&|c| matches!(c, Credit::Missed)),
                time(median(&errors)),
                time(percentile(&abs, 99.0)),
                time(max(&abs)),
                time(median(&agent)),
                time(median(&own)),
            );
        }
    }
    for line in &odd {
        let _ = writeln!(out, "\n- {line}");
    }

    let b = &runs[base];
    let why = if b.mode == Mode::Ignore {
        ": it keeps every volume's marks (an ignore mask between updates, mount marks on \
         the consumers), so no reload there depends on marking the new data dir in time"
    } else {
        " (`ignore` was not run)"
    };
    let _ = writeln!(
        out,
        "\n### Each mode against `{0}`\n\nThe baseline is `{0}`{why}. Late marks are placed \
         by the same reader thread in every mode; CPU is the agent's \
         `process_cpu_seconds_total` over the updates, in % of one core of their wall time; \
         throttled: CFS periods of the agent's container cgroup that hit its CPU limit, of \
         those it ran in. Marks: the agent's fanotify groups (fdinfo) when the updates \
         started, every volume settled.\n",
        b.mode.name(),
    );
    let _ = writeln!(
        out,
        "| mode | updates | late marks | / baseline's | reloads logged | missed | / baseline's | credited more than 5 ms after | agent CPU | / baseline's | CPU periods throttled | marks: inode / with an ignore mask / filesystem / mount | load average at the first update |"
    );
    let _ = writeln!(out, "|---|---|---|---|---|---|---|---|---|---|---|---|---|");
    let cpu = |r: &ModeRun| r.cpu_seconds / r.wall_seconds;
    let missed = |r: &ModeRun| {
        let us: Vec<&Update> = r.updates.iter().collect();
        count(&us, |c| matches!(c, Credit::Missed))
    };
    let late = |r: &ModeRun| r.updates.iter().map(|u| u.late_marks).sum::<f64>();
    for r in runs {
        let us: Vec<&Update> = r.updates.iter().collect();
        let _ = writeln!(
            out,
            "| `{}` | {} | {} | {} | {} | {} | {} | {} | {:.2} % | {} | {} | {} | {} |",
            r.mode.name(),
            r.updates.len(),
            late(r),
            ratio(late(r), late(b)),
            count(&us, logged),
            missed(r),
            ratio(missed(r) as f64, missed(b) as f64),
            count(&us, |c| matches!(c, Credit::Later { .. })),
            cpu(r) * 100.0,
            ratio(cpu(r), cpu(b)),
            r.throttling
                .map_or("unknown".into(), |(p, t)| format!("{t} of {p}")),
            r.marks.map_or("unknown".into(), |m| format!(
                "{} / {} / {} / {}",
                m.inode, m.ignoring, m.filesystem, m.mount
            )),
            r.load,
        );
    }
    out
}

#[cfg(test)]
mod tests {
    use super::super::{Marks, Outcome};
    use super::*;

    fn update(volume: usize, late: f64, credits: &[(usize, Credit)]) -> Update {
        Update {
            volume,
            patch_to_swap: 4.0,
            window: Some(0.0004),
            window_files: Some(0.004),
            stamp_error: 0.0001,
            stamp_after_rename: Some(0.00002),
            detected: 0.002,
            late_marks: late,
            other_swaps: 0.0,
            outcomes: credits
                .iter()
                .map(|&(consumer, credit)| Outcome {
                    consumer,
                    credit,
                    latency_agent: Some(0.0002),
                    latency_own: Some(0.0001),
                })
                .collect(),
        }
    }

    fn run(mode: Mode, missed: bool) -> ModeRun {
        let watcher = if missed {
            Credit::Missed
        } else {
            Credit::Exact { error: 0.0001 }
        };
        ModeRun {
            mode,
            updates: vec![
                update(
                    0,
                    1.0,
                    &[
                        (0, watcher),
                        (1, Credit::Exact { error: 0.0002 }),
                        (2, Credit::Later { error: 1.0 }),
                    ],
                ),
                update(1, 0.0, &[(3, Credit::Exact { error: -0.0001 })]),
            ],
            cpu_seconds: 0.1,
            wall_seconds: 10.0,
            throttling: Some((100, 0)),
            marks: Some(Marks {
                inode: 3,
                ignoring: 2,
                filesystem: 1,
                mount: 4,
            }),
            probe: "tracepoint".into(),
            fanotify: true,
            cpu_limit: "500m".into(),
            load: "1.00 1.00 1.00".into(),
        }
    }

    #[test]
    fn the_report_compares_each_mode_with_ignore() {
        let h = Header {
            command: "cargo xtask bench cluster --updates 2 --modes remove,ignore".into(),
            date: "2026-12-06 from 03:00 UTC".into(),
            commit: "abc1234".into(),
            uncommitted: 0,
            kernel: "6.18".into(),
            nproc: 2,
            cpu: "AMD EPYC".into(),
            load: "0.1 0.2 0.3".into(),
            kubernetes: "v1.20.2".into(),
            containerd: "1.6.20".into(),
        };
        let md = markdown(
            &h,
            &[run(Mode::Remove, true), run(Mode::Ignore, false)],
            100.0,
        );
        assert!(md.contains("### Each mode against `ignore`"), "{md}");
        // remove: 1 missed where ignore missed none; the same late marks.
        assert!(
            md.contains("| `remove` | 2 | 1 | 1.00x | 4 | 1 | n/a (baseline 0; +1) | 1 | 1.00 % | 1.00x | 0 of 100 | 3 / 2 / 1 / 4 | 1.00 1.00 1.00 |"),
            "{md}"
        );
        assert!(md.contains("| `ignore` | watcher (`data-dir-watcher`) | ConfigMap (disk) | 1 | 1 | 0 | 0 | 100.0 µs |"), "{md}");
        assert!(
            md.contains("| `remove` | ConfigMap (disk) | 1 | 4.00 s (4.00 s-4.00 s) | 400.0 µs (400.0 µs-400.0 µs) | 400.0 µs | 4.00 ms (4.00 ms-4.00 ms) | 20.0 µs"),
            "{md}"
        );
    }

    #[test]
    fn statistics_and_units() {
        assert_eq!(median(&[3.0, 1.0, 2.0]), 2.0);
        assert_eq!(median(&[1.0, 2.0]), 1.5);
        assert!(median(&[]).is_nan());
        assert_eq!(percentile(&[1.0, 2.0, 3.0, 4.0], 90.0), 4.0);
        assert_eq!(percentile(&[1.0, 2.0, 3.0, 4.0], 50.0), 2.0);
        assert_eq!(time(0.000_123_4), "123.4 µs");
        assert_eq!(time(0.0123), "12.30 ms");
        assert_eq!(time(-0.0123), "-12.30 ms");
        assert_eq!(time(2.5), "2.50 s");
        assert_eq!(time(f64::NAN), "n/a");
        assert_eq!(ratio(3.0, 2.0), "1.50x");
        assert_eq!(ratio(0.0, 0.0), "= (both 0)");
    }
}
