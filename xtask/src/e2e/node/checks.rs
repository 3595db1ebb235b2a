//! The real-node test's assertions: what Prometheus holds against the kubelet's
//! own traces (the `..data` symlinks, the containers' logs, the audit log).

use std::fs;
use std::path::Path;
use std::time::{Instant, UNIX_EPOCH};

use anyhow::{Context, Result, bail, ensure};

use super::super::workloads::{self, CHANGES, CONSUMERS, Consumer, Verdict};
use super::super::{audit, podlogs};
use super::{RELOAD_TOLERANCE, Test, now};
use crate::cluster;

impl Test {
    pub(super) fn assertions(&mut self) -> Result<()> {
        self.wait("Prometheus to find the agent and scrape it", 60, |t| {
            t.value(r#"up{job="reloadscope"}"#).and_then(|v| {
                if v == 1.0 {
                    Ok(())
                } else {
                    Err(format!("up = {v}"))
                }
            })
        })?;
        self.consumers_ready()?;
        let patched_at = self.changes_through_the_api()?;
        self.swaps_counted_once_per_source(&patched_at)?;
        self.consumers_judged(CHANGES.iter().map(|c| c.volume).collect())?;
        self.signals_sent_to_the_annotated_only()?;
        self.restarted_container_has_the_new_data()?;
        self.token_refresh()?;
        self.alerts_fire_for_the_never_reloading_only()?;
        self.no_secret_data_requested()
    }

    /// Every strategy consumer has logged `ready` and the agent lists every consumer.
    fn consumers_ready(&mut self) -> Result<()> {
        let t = Instant::now();
        self.wait("every consumer to log ready", 60, |t| {
            let not: Vec<String> = CONSUMERS
                .iter()
                .filter(|c| c.strategy.is_some())
                .filter(|c| !t.lines(c).iter().any(|l| l == "ready"))
                .map(|c| format!("{}/{}", c.namespace, c.container))
                .collect();
            if not.is_empty() {
                Ok(())
            } else {
                Err(format!("not ready: {not:?}"))
            }
        })?;
        self.wait("the agent to list every consumer", 60, |t| {
            let missing: Vec<String> = CONSUMERS
                .iter()
                .filter(|c| {
                    t.query(&format!(
                        "reloadscope_consumer_info{{{}}}",
                        Self::consumer_selector(c)
                    ))
                    .map_or(true, |s| s.is_empty())
                })
                .map(|c| format!("{}/{}", c.namespace, c.container))
                .collect();
            if missing.is_empty() {
                Ok(())
            } else {
                Err(format!("missing: {missing:?}"))
            }
        })?;
        // Owning workloads, from the API.
        for (ns, kind, name) in [
            (workloads::SHOP, "Deployment", "web"),
            (workloads::VAULT, "StatefulSet", "db"),
            (workloads::BATCH, "", ""),
        ] {
            let expr = format!(
                r#"reloadscope_consumer_info{{namespace="{ns}", workload_kind="{kind}", workload="{name}", container!=""}}"#
            );
            let series = self.query(&expr).map_err(anyhow::Error::msg)?;
            let want = CONSUMERS.iter().filter(|c| c.namespace == ns).count();
            ensure!(
                series.len() >= want,
                "{expr}: {} series, want at least {want}",
                series.len()
            );
        }
        println!(
            "e2e: every consumer found, with its owning workload ({:.0} s)",
            t.elapsed().as_secs_f64()
        );
        Ok(())
    }

    /// Patches each object of [`CHANGES`]; returns the wall-clock time of each patch.
    fn changes_through_the_api(&mut self) -> Result<Vec<f64>> {
        let mut at = Vec::new();
        for change in CHANGES {
            at.push(now());
            cluster::kubectl(
                &self.layout,
                &[
                    "-n",
                    change.namespace,
                    "patch",
                    change.kind,
                    change.name,
                    "--type=merge",
                    "-p",
                    &workloads::patch(change),
                ],
            )
            .map_err(anyhow::Error::msg)?;
        }
        Ok(at)
    }

    /// Each change is swapped once on the node, seen by both sources, with its
    /// source's names, at the time the `..data` symlink on disk says, and its
    /// propagation delay measured.
    fn swaps_counted_once_per_source(&mut self, patched_at: &[f64]) -> Result<()> {
        let t = Instant::now();
        for (change, patched) in CHANGES.iter().zip(patched_at) {
            let expr = format!(
                r#"reloadscope_volume_updates_total{{namespace="{}", volume="{}", source_kind="{}", source_name="{}"}}"#,
                change.namespace, change.volume, change.source_kind, change.source_name
            );
            // The kubelet writes it at the pod's next sync: 10 s here, plus jitter.
            self.wait(
                &format!("the swap of {}/{}", change.namespace, change.volume),
                90,
                |t| {
                    t.value(&expr)
                        .and_then(|v| if v >= 1.0 { Ok(v) } else { Err(format!("{v}")) })
                },
            )?;
            let swap = self
                .value(&format!(
                    r#"reloadscope_volume_last_update_timestamp_seconds{{namespace="{}", volume="{}"}}"#,
                    change.namespace, change.volume
                ))
                .map_err(anyhow::Error::msg)?;
            let disk = on_disk(
                change.namespace,
                &self.pods[change.namespace],
                change.volume,
            )?;
            let on_disk = disk.swap;
            ensure!(
                (swap - on_disk).abs() < RELOAD_TOLERANCE,
                "{}/{}: swap at {swap:.6}, but the kubelet made ..data at {on_disk:.6}",
                change.namespace,
                change.volume
            );
            ensure!(
                swap > *patched,
                "{}/{} swapped at {swap:.3}, before its change at {patched:.3}",
                change.namespace,
                change.volume
            );
            let delay = self.wait(
                &format!("the propagation delay of {}", change.namespace),
                30,
                |t| {
                    let count = t.value(&format!(
                        r#"reloadscope_propagation_delay_seconds_count{{namespace="{}"}}"#,
                        change.namespace
                    ))?;
                    if count < 1.0 {
                        return Err(format!("count {count}"));
                    }
                    t.value(&format!(
                        r#"reloadscope_propagation_delay_seconds_sum{{namespace="{}"}}"#,
                        change.namespace
                    ))
                    .map(|sum| sum / count)
                },
            )?;
            // The agent stamps the change when its watch delivers it, a little after
            // the patch: the delay is at most the patch-to-swap time.
            ensure!(
                (0.0..=swap - patched + 0.5).contains(&delay) && delay > swap - patched - 2.0,
                "{}: propagation delay {delay:.3} s, patch to swap {:.3} s",
                change.namespace,
                swap - patched
            );
            println!(
                "e2e: {}/{} swapped {:.1} s after its change (delay measured {delay:.2} s), \
                 at the ..data symlink's time within {:.2} ms",
                change.namespace,
                change.volume,
                swap - patched,
                (swap - on_disk).abs() * 1e3
            );
        }
        let metrics = self
            .agent
            .get("/metrics", &[])
            .map_err(anyhow::Error::msg)?;
        let sum = |family: &str, label: &str| -> f64 {
            metrics
                .lines()
                .filter(|l| l.starts_with(family) && l.contains(label))
                .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
                .sum()
        };
        let updates = sum("reloadscope_volume_updates_total{", "");
        let ebpf = sum("reloadscope_update_detections_total{", r#"source="ebpf""#);
        let inotify = sum(
            "reloadscope_update_detections_total{",
            r#"source="inotify""#,
        );
        let gaps = sum("reloadscope_update_detection_gaps_total{", "");
        ensure!(
            updates >= CHANGES.len() as f64 && ebpf == updates && inotify == updates && gaps == 0.0,
            "updates {updates}, detections ebpf {ebpf} inotify {inotify}, gaps {gaps}"
        );
        let late = sum("reloadscope_late_marks_total", "");
        println!(
            "e2e: {updates} swaps, each counted once by eBPF and once by inotify, no gap; \
             {late} of them marked after the swap ({:.0} s)",
            t.elapsed().as_secs_f64()
        );
        Ok(())
    }

    /// The consumers of `volumes`: reloaders reload at the time of their own log,
    /// never-reloaders stay stale, subPath ones are said to be, watch findings right.
    fn consumers_judged(&mut self, volumes: Vec<&str>) -> Result<()> {
        let t = Instant::now();
        for c in CONSUMERS.iter().filter(|c| volumes.contains(&c.volume)) {
            self.judge(c)?;
        }
        println!(
            "e2e: the consumers of {} judged right ({:.0} s)",
            volumes.join(", "),
            t.elapsed().as_secs_f64()
        );
        Ok(())
    }

    /// The signalled consumer reloaded (judged with the others) because it was
    /// signalled, once per update of its volume; nothing else was signalled, and no
    /// signal failed.
    fn signals_sent_to_the_annotated_only(&mut self) -> Result<()> {
        let signalled: Vec<&Consumer> = (CONSUMERS.iter())
            .filter(|c| c.verdict == Verdict::Signalled)
            .collect();
        for c in &signalled {
            let sel = Self::consumer_selector(c);
            let since = self
                .value(&format!(
                    "reloadscope_consumer_stale_since_signal_seconds{{{sel}}}"
                ))
                .map_err(anyhow::Error::msg)?;
            ensure!(
                since == 0.0,
                "{}/{}: {since} s since its signal without a reload",
                c.namespace,
                c.container
            );
            // Its opens: the one at its start and one per signal, each for an update.
            let opens = podlogs::opens(&self.lines(c)).len();
            let updates = CHANGES
                .iter()
                .filter(|ch| ch.namespace == c.namespace)
                .count();
            ensure!(
                opens == 1 + updates,
                "{}/{}: {opens} opens for {updates} updates:\n{}",
                c.namespace,
                c.container,
                self.lines(c).join("\n")
            );
        }
        let sent = self
            .value(r#"sum(reloadscope_reload_signals_sent_total{namespace="e2e-shop", workload="web"})"#)
            .map_err(anyhow::Error::msg)?;
        let all = self
            .value("sum(reloadscope_reload_signals_sent_total)")
            .map_err(anyhow::Error::msg)?;
        let failed = self
            .value("sum(reloadscope_reload_signals_failed_total)")
            .map_err(anyhow::Error::msg)?;
        ensure!(
            sent >= 1.0 && all == sent && failed == 0.0,
            "signals: {sent} sent to e2e-shop/web, {all} in all, {failed} failed"
        );
        println!(
            "e2e: {sent} SIGHUP sent to the annotated container only, none failed; it reloaded each time"
        );
        Ok(())
    }

    fn judge(&mut self, c: &Consumer) -> Result<()> {
        let sel = Self::consumer_selector(c);
        let swap = self
            .value(&format!(
                r#"reloadscope_volume_last_update_timestamp_seconds{{namespace="{}", volume="{}"}}"#,
                c.namespace, c.volume
            ))
            .map_err(anyhow::Error::msg)?;
        match c.verdict {
            Verdict::Reloads | Verdict::Signalled => {
                let reload = self
                    .wait(
                        &format!("{}/{} to reload", c.namespace, c.container),
                        30,
                        |t| {
                            let v = t.value(&format!(
                                "reloadscope_consumer_last_reload_timestamp_seconds{{{sel}}}"
                            ))?;
                            if v >= swap {
                                Ok(v)
                            } else {
                                Err(format!("last reload {v:.3} < swap {swap:.3}"))
                            }
                        },
                    )
                    .with_context(|| {
                        format!(
                            "swap at {swap:.6}; its own log:\n{}",
                            self.lines(c).join("\n")
                        )
                    })?;
                // The first read of the new content when the test knows it; the
                // token's is the kubelet's (its first bytes are the JWT header, the
                // same in every token): the first read after the swap.
                let new_head = CHANGES
                    .iter()
                    .find(|ch| ch.namespace == c.namespace && ch.volume == c.volume)
                    .map(|ch| workloads::head_hex(ch.after));
                let opens = podlogs::opens(&self.lines(c));
                let first = opens
                    .iter()
                    .find(|o| match &new_head {
                        Some(head) => &o.head == head,
                        None => o.seconds() >= swap,
                    })
                    .with_context(|| {
                        format!(
                            "{}/{}: no open after the swap in its log",
                            c.namespace, c.container
                        )
                    })?;
                ensure!(
                    (reload - first.seconds()).abs() <= RELOAD_TOLERANCE,
                    "{}/{}: reload at {reload:.6}, its own log says {:.6} ({:+.2} ms)",
                    c.namespace,
                    c.container,
                    first.seconds(),
                    (reload - first.seconds()) * 1e3
                );
                let stale = self.value(&format!("reloadscope_consumer_stale_seconds{{{sel}}}"));
                ensure!(
                    stale == Ok(0.0),
                    "{}/{}: stale {stale:?} after its reload",
                    c.namespace,
                    c.container
                );
                println!(
                    "e2e:   {}/{} reloaded {:.2} ms after the swap ({:+.3} ms from its own log)",
                    c.namespace,
                    c.container,
                    (reload - swap) * 1e3,
                    (reload - first.seconds()) * 1e3
                );
            }
            Verdict::Stale | Verdict::Restarted => {
                self.wait(
                    &format!("{}/{} to be stale", c.namespace, c.container),
                    30,
                    |t| {
                        let v = t.value(&format!("reloadscope_consumer_stale_seconds{{{sel}}}"))?;
                        if v > 0.0 {
                            Ok(v)
                        } else {
                            Err(format!("stale {v}"))
                        }
                    },
                )?;
            }
            Verdict::NeverReads => {
                // Never read: no stale value at all (unknown is not fresh, nor stale).
                let stale = self.query(&format!("reloadscope_consumer_stale_seconds{{{sel}}} > 0"));
                ensure!(
                    stale.as_ref().is_ok_and(Vec::is_empty),
                    "{}/{} never read its volume but is stale: {stale:?}",
                    c.namespace,
                    c.container
                );
            }
            Verdict::SubPath => {
                let info = self.query(&format!(
                    r#"reloadscope_consumer_info{{{sel}, mount="subpath"}}"#
                ));
                ensure!(
                    info.as_ref().is_ok_and(|s| s.len() == 1),
                    "{}/{}: not reported as a subPath consumer: {info:?}",
                    c.namespace,
                    c.container
                );
            }
        }
        if let Some(finding) = c.finding {
            self.wait(
                &format!("{}/{}'s watch finding {finding}", c.namespace, c.container),
                30,
                |t| {
                    t.value(&format!(
                        r#"reloadscope_consumer_watch_findings{{{sel}, finding="{finding}"}}"#
                    ))
                    .and_then(|v| {
                        if v == 1.0 {
                            Ok(())
                        } else {
                            Err(format!("{v}"))
                        }
                    })
                },
            )?;
        }
        Ok(())
    }

    /// A container restarted after the update reloaded at its start: its new
    /// process reads the new data, and it is no longer stale.
    fn restarted_container_has_the_new_data(&mut self) -> Result<()> {
        let c = CONSUMERS
            .iter()
            .find(|c| c.verdict == Verdict::Restarted)
            .expect("one consumer restarts");
        let id = cluster::kubectl(
            &self.layout,
            &[
                "-n",
                c.namespace,
                "get",
                "pod",
                &self.pods[c.namespace],
                "-o",
                &format!(
                    r#"jsonpath={{.status.containerStatuses[?(@.name=="{}")].containerID}}"#,
                    c.container
                ),
            ],
        )
        .map_err(anyhow::Error::msg)?;
        let id = id
            .trim()
            .strip_prefix("containerd://")
            .context("a containerd container id")?;
        cluster::ctr(&self.layout, &["tasks", "kill", "--signal", "SIGKILL", id])
            .map_err(anyhow::Error::msg)?;
        let sel = Self::consumer_selector(c);
        self.wait(
            &format!(
                "{}/{} to restart with the new data",
                c.namespace, c.container
            ),
            60,
            |t| {
                let stale = t.value(&format!("reloadscope_consumer_stale_seconds{{{sel}}}"))?;
                if stale == 0.0 {
                    Ok(())
                } else {
                    Err(format!("stale {stale}"))
                }
            },
        )?;
        let change = CHANGES
            .iter()
            .find(|ch| ch.volume == c.volume)
            .expect("its volume changed");
        let last = podlogs::opens(&self.lines(c))
            .pop()
            .context("no open logged")?;
        ensure!(
            last.head == workloads::head_hex(change.after),
            "{}/{} restarted but read {}",
            c.namespace,
            c.container,
            last.head
        );
        println!(
            "e2e: {}/{} restarted after the update and is no longer stale",
            c.namespace, c.container
        );
        Ok(())
    }

    /// The kubelet rewrites the `tok` volume alone when the token passes 80 % of its
    /// lifetime: its poller reloads, its read-once reader goes stale, and the
    /// container that never read it is not its stale consumer.
    fn token_refresh(&mut self) -> Result<()> {
        let t = Instant::now();
        let due = self.pods_started + 0.8 * f64::from(workloads::TOKEN_EXPIRATION_SECONDS);
        println!(
            "e2e: waiting for the kubelet to refresh the token of {}/tok (due in about {:.0} s)",
            workloads::BATCH,
            (due - now()).max(0.0)
        );
        let expr = format!(
            r#"reloadscope_volume_updates_total{{namespace="{}", volume="tok"}}"#,
            workloads::BATCH
        );
        let wait = (due - now()).max(0.0) as u64 + 90;
        self.wait("the token refresh's swap", wait, |t| {
            t.value(&expr).and_then(|v| {
                if v >= 1.0 {
                    Ok(())
                } else {
                    Err(format!("{v}"))
                }
            })
        })?;
        println!(
            "e2e: the kubelet refreshed the token ({:.0} s)",
            t.elapsed().as_secs_f64()
        );
        self.consumers_judged(vec!["tok"])
    }

    /// ReloadscopeConsumerStale fires for every never-reloading consumer and has
    /// never fired for any other.
    fn alerts_fire_for_the_never_reloading_only(&mut self) -> Result<()> {
        let stale: Vec<&Consumer> = CONSUMERS
            .iter()
            .filter(|c| c.verdict == Verdict::Stale)
            .collect();
        self.wait(
            "ReloadscopeConsumerStale to fire for every never-reloading consumer",
            60,
            |t| {
                let firing = t.query(
                    r#"ALERTS{alertname="ReloadscopeConsumerStale", alertstate="firing"}"#,
                )?;
                let missing: Vec<String> = stale
                    .iter()
                    .filter(|c| {
                        !firing.iter().any(|(l, _)| {
                            l.get("namespace").map(String::as_str) == Some(c.namespace)
                                && l.get("container").map(String::as_str) == Some(c.container)
                                && l.get("volume").map(String::as_str) == Some(c.volume)
                        })
                    })
                    .map(|c| format!("{}/{}", c.namespace, c.container))
                    .collect();
                if missing.is_empty() {
                    Ok(())
                } else {
                    Err(format!("not firing: {missing:?}"))
                }
            },
        )?;
        let ever = self
            .query(r#"count_over_time(ALERTS{alertname="ReloadscopeConsumerStale", alertstate="firing"}[1h])"#)
            .map_err(anyhow::Error::msg)?;
        // A container restarted after the update was stale until then.
        let may_have_fired: Vec<&Consumer> = CONSUMERS
            .iter()
            .filter(|c| matches!(c.verdict, Verdict::Stale | Verdict::Restarted))
            .collect();
        let wrong: Vec<String> = ever
            .iter()
            .filter(|(l, _)| {
                !may_have_fired.iter().any(|c| {
                    l.get("namespace").map(String::as_str) == Some(c.namespace)
                        && l.get("container").map(String::as_str) == Some(c.container)
                        && l.get("volume").map(String::as_str) == Some(c.volume)
                })
            })
            .map(|(l, _)| format!("{l:?}"))
            .collect();
        ensure!(
            wrong.is_empty(),
            "ReloadscopeConsumerStale fired for:\n{}",
            wrong.join("\n")
        );
        // It fires for a while after each update of a subPath-mounted volume.
        let subpath = self
            .query(
                r#"count_over_time(ALERTS{alertname="ReloadscopeSubPathVolumeUpdated", alertstate="firing"}[1h])"#,
            )
            .map_err(anyhow::Error::msg)?;
        let pinned: Vec<&Consumer> = CONSUMERS
            .iter()
            .filter(|c| c.verdict == Verdict::SubPath)
            .collect();
        let fired_for = |c: &&Consumer| {
            subpath.iter().any(|(l, _)| {
                l.get("namespace").map(String::as_str) == Some(c.namespace)
                    && l.get("container").map(String::as_str) == Some(c.container)
            })
        };
        ensure!(
            pinned.iter().all(fired_for) && subpath.len() == pinned.len(),
            "ReloadscopeSubPathVolumeUpdated fired for {subpath:?}, not for exactly {pinned:?}"
        );
        println!(
            "e2e: ReloadscopeConsumerStale fires for the never-reloading consumers and never \
             fired for another; ReloadscopeSubPathVolumeUpdated fired for the subPath consumer"
        );
        Ok(())
    }

    fn no_secret_data_requested(&mut self) -> Result<()> {
        let requests = audit::agent_secret_requests(&self.layout.audit_log())?;
        println!(
            "e2e: the audit log holds {} requests of the agent on Secrets, none for their data",
            requests
        );
        Ok(())
    }
}

/// What the kubelet's files say of a volume's last swap: when it made the current
/// `..data` symlink (its lstat mtime: `..data_tmp` is made, then renamed over
/// `..data`, within microseconds), and when it made the data dir that symlink names
/// (its birth time). Both come from the kernel's coarse clock (one tick, 4 ms here),
/// so their difference only bounds the kubelet's window from above; `bench cluster`
/// traces its calls for the window itself.
pub(super) struct OnDisk {
    pub swap: f64,
    pub data_dir_born: Option<f64>,
}

pub(super) fn on_disk(namespace: &str, pod: &str, volume: &str) -> Result<OnDisk> {
    let pods = Path::new(cluster::POD_LOGS);
    let uid = fs::read_dir(pods)?
        .flatten()
        .find_map(|e| {
            let name = e.file_name().to_string_lossy().into_owned();
            name.strip_prefix(&format!("{namespace}_{pod}_"))
                .map(str::to_owned)
        })
        .with_context(|| format!("no log dir for {namespace}/{pod}"))?;
    let volumes = Path::new(cluster::KUBELET_ROOT)
        .join("pods")
        .join(&uid)
        .join("volumes");
    let seconds = |t: std::time::SystemTime| -> Result<f64> {
        Ok(t.duration_since(UNIX_EPOCH)?.as_secs_f64())
    };
    for plugin in fs::read_dir(&volumes)?.flatten() {
        let link = plugin.path().join(volume).join("..data");
        if let Ok(meta) = fs::symlink_metadata(&link) {
            let target = fs::read_link(&link)?;
            let born = fs::symlink_metadata(plugin.path().join(volume).join(target))
                .and_then(|m| m.created())
                .ok();
            return Ok(OnDisk {
                swap: seconds(meta.modified()?)?,
                data_dir_born: born.map(seconds).transpose()?,
            });
        }
    }
    bail!("no ..data for volume {volume} under {}", volumes.display())
}
