//! The alert rules: a Prometheus rule file (`groups:`) as a JSON value.

use serde_json::{Value, json};

use super::Config;

struct Alert<'a> {
    name: &'static str,
    expr: String,
    r#for: &'a str,
    severity: &'static str,
    summary: &'static str,
    description: String,
}

impl Alert<'_> {
    fn rule(self, cfg: &Config) -> Value {
        json!({
            "alert": self.name,
            "expr": self.expr,
            "for": self.r#for,
            "labels": {"severity": self.severity},
            "annotations": {
                "summary": self.summary,
                "description": self.description,
                // The section's anchor as Markdown renderers make it from `## Name`.
                "runbook_url": format!("{}#{}", cfg.runbook_url, self.name.to_lowercase()),
            },
        })
    }
}

/// `template` with each `<name>` of `values` replaced. Plain replacement rather
/// than `format!`, so Prometheus' `{{ $labels.x }}` templates read as they are.
fn fill(template: &str, values: &[(&str, &str)]) -> String {
    values
        .iter()
        .fold(template.to_owned(), |text, (name, value)| {
            text.replace(&format!("<{name}>"), value)
        })
}

/// The rule file for `cfg`.
pub fn rule_file(cfg: &Config) -> Value {
    let group = |name: &str, alerts: Vec<Alert>| {
        let rules: Vec<Value> = alerts.into_iter().map(|a| a.rule(cfg)).collect();
        json!({"name": name, "rules": rules})
    };
    json!({"groups": [
        group("reloadscope-consumers", consumer_alerts(cfg)),
        group("reloadscope-signals", signal_alerts(cfg)),
        group("reloadscope-propagation", propagation_alerts(cfg)),
        group("reloadscope-agent", agent_alerts(cfg)),
    ]})
}

fn consumer_alerts(cfg: &Config) -> Vec<Alert<'_>> {
    let pod_volume = cfg.by("namespace, pod, volume");
    let values = [
        ("job", cfg.job_selector.as_str()),
        ("stale_for", &cfg.stale_for),
        ("window", &cfg.subpath_window),
        ("finding_for", &cfg.finding_for),
        ("pod_volume", &pod_volume),
    ];
    vec![
        // `> 0` held for `stale_for`, rather than `stale_seconds > threshold`: the
        // gauge counts from the newest swap, so under updates more frequent than the
        // threshold a container that never reloads would saw-tooth below it forever.
        // `for` asks for "stale at every evaluation", which that container is. Only a
        // container seen reading the volume has the series: one that mounts a volume
        // it never reads (a `kube-api-access-*` token) never fires.
        Alert {
            name: "ReloadscopeConsumerStale",
            expr: fill("reloadscope_consumer_stale_seconds{<job>} > 0", &values),
            r#for: &cfg.stale_for,
            severity: "warning",
            summary: "A container has not reloaded an updated volume.",
            description: fill(
                "Container {{ $labels.container }} of pod {{ $labels.namespace }}/{{ $labels.pod }} \
                 has not reloaded volume {{ $labels.volume }} for more than <stale_for> after it \
                 was updated: it still serves the old configuration (its newest update is \
                 {{ $value | humanizeDuration }} old).",
                &values,
            ),
        },
        // The updates are summed per volume first: across an agent restart the
        // counter has two series (two `instance`s) in the window, which would make
        // the match many-to-many.
        Alert {
            name: "ReloadscopeSubPathVolumeUpdated",
            expr: fill(
                "reloadscope_consumer_info{<job>, mount=\"subpath\"}\n  \
                 * on (<pod_volume>) group_left ()\n  \
                 (sum by (<pod_volume>) \
                 (increase(reloadscope_volume_updates_total{<job>}[<window>])) > 0)",
                &values,
            ),
            r#for: "0s",
            severity: "warning",
            summary: "A volume was updated but a container mounts it through subPath.",
            description: fill(
                "Volume {{ $labels.volume }} of pod {{ $labels.namespace }}/{{ $labels.pod }} was \
                 updated in the last <window>, but container {{ $labels.container }} binds it \
                 through subPath and never receives updates: it keeps the old data until it \
                 restarts.",
                &values,
            ),
        },
        // Found from the masks and inodes of its watches, usually before any update
        // proves it (README, "Watch findings"); `not_rewatched` after the first one.
        Alert {
            name: "ReloadscopeWatchFinding",
            expr: fill(
                "reloadscope_consumer_watch_findings{<job>, finding!=\"ok\"} > 0",
                &values,
            ),
            r#for: &cfg.finding_for,
            severity: "warning",
            summary: "A container watches a volume in a way that misses updates.",
            description: fill(
                "Container {{ $labels.container }} of pod {{ $labels.namespace }}/{{ $labels.pod }} \
                 watches volume {{ $labels.volume }} with inotify in a way that will miss its \
                 updates ({{ $labels.finding }}), and has for <finding_for>.",
                &values,
            ),
        },
    ]
}

/// Reload signals (`--reload-signals`): no series, no alert, without them.
fn signal_alerts(cfg: &Config) -> Vec<Alert<'_>> {
    let ns_workload_reason = cfg.by("namespace, workload, reason");
    let values = [
        ("job", cfg.job_selector.as_str()),
        ("signalled_stale_for", &cfg.signalled_stale_for),
        ("window", &cfg.counter_window),
        ("ns_workload_reason", &ns_workload_reason),
    ];
    vec![
        // The gauge counts from the signal sent for the update the container still
        // lacks: > 0 at every evaluation for the whole `for` means no reload since.
        Alert {
            name: "ReloadscopeSignalledConsumerStale",
            expr: fill(
                "reloadscope_consumer_stale_since_signal_seconds{<job>} > 0",
                &values,
            ),
            r#for: &cfg.signalled_stale_for,
            severity: "warning",
            summary: "A container signalled to reload has not read its new data.",
            description: fill(
                "Container {{ $labels.container }} of pod {{ $labels.namespace }}/{{ $labels.pod }} \
                 was signalled to reload at the update of volume {{ $labels.volume }} \
                 {{ $value | humanizeDuration }} ago and has not read the new data since: \
                 the signal does not make it reload (wrong signal, or it reloads something \
                 else), and it still serves the old configuration.",
                &values,
            ),
        },
        // Summed by namespace, workload and reason: an agent restart leaves two
        // series of one counter in the window.
        Alert {
            name: "ReloadscopeReloadSignalsFailed",
            expr: fill(
                "sum by (<ns_workload_reason>) \
                 (increase(reloadscope_reload_signals_failed_total{<job>}[<window>])) > 0",
                &values,
            ),
            r#for: "0s",
            severity: "warning",
            summary: "Reload signals asked for by pod annotations were not sent.",
            description: fill(
                "Reload signals for workload {{ $labels.workload }} in namespace \
                 {{ $labels.namespace }} were not sent in the last <window> \
                 ({{ $labels.reason }}: {{ $value | humanize }}): its containers keep their old \
                 configuration. Each is a ReloadSignalFailed Event on the pod.",
                &values,
            ),
        },
    ]
}

fn propagation_alerts(cfg: &Config) -> Vec<Alert<'_>> {
    let values = [
        ("job", cfg.job_selector.as_str()),
        ("pending_for", &cfg.pending_for),
        ("api_down_for", &cfg.api_down_for),
    ];
    vec![
        // The gauge is 1 only once a change has waited the agent's
        // --propagation-timeout (5m by default); `for` adds to that.
        Alert {
            name: "ReloadscopePropagationPending",
            expr: fill("reloadscope_propagation_pending{<job>} == 1", &values),
            r#for: &cfg.pending_for,
            severity: "warning",
            summary: "A ConfigMap or Secret change has not reached a node.",
            description: fill(
                "Volume {{ $labels.volume }} of pod {{ $labels.namespace }}/{{ $labels.pod }} \
                 holds a ConfigMap or Secret that changed on the API, and the kubelet on \
                 {{ $labels.instance }} has not swapped the new data in past the agent's \
                 --propagation-timeout and <pending_for> more: the pod's containers still \
                 see the old data.",
                &values,
            ),
        },
        Alert {
            name: "ReloadscopeKubeApiDown",
            expr: fill("reloadscope_kube_api_up{<job>} == 0", &values),
            r#for: &cfg.api_down_for,
            severity: "warning",
            summary: "The agent cannot reach the Kubernetes API.",
            description: fill(
                "The agent on {{ $labels.instance }} has not been able to list or watch the \
                 Kubernetes API for <api_down_for>: volumes and pods keep their on-node names \
                 and no propagation delay is measured. It retries with backoff.",
                &values,
            ),
        },
    ]
}

fn agent_alerts(cfg: &Config) -> Vec<Alert<'_>> {
    let instance_reason = cfg.by("instance, reason");
    let values = [
        ("job", cfg.job_selector.as_str()),
        ("window", &cfg.counter_window),
        ("down_for", &cfg.down_for),
        ("absent_for", &cfg.absent_for),
        ("unwatched_for", &cfg.unwatched_for),
        ("instance_reason", &instance_reason),
    ];
    vec![
        // The agent retries every second and recovers alone once the cause goes; a
        // reason that holds this long needs the fix its log line names.
        Alert {
            name: "ReloadscopeUnwatchedPaths",
            expr: fill(
                "sum by (<instance_reason>) (reloadscope_unwatched_paths{<job>}) > 0",
                &values,
            ),
            r#for: &cfg.unwatched_for,
            severity: "warning",
            summary: "The agent cannot follow part of the kubelet's tree.",
            description: fill(
                "The agent on {{ $labels.instance }} has not been able to watch or list \
                 {{ $value }} dirs under the kubelet roots for <unwatched_for> \
                 ({{ $labels.reason }}): updates of the volumes below them are not seen. \
                 It retries every second.",
                &values,
            ),
        },
        Alert {
            name: "ReloadscopeFdExhausted",
            expr: fill(
                "increase(reloadscope_fd_exhausted_total{<job>}[<window>]) > 0",
                &values,
            ),
            r#for: "0s",
            severity: "warning",
            summary: "The agent ran out of file descriptors.",
            description: fill(
                "The agent on {{ $labels.instance }} failed {{ $value | humanize }} times in the \
                 last <window> for want of file descriptors (connections waited, dirs were \
                 followed late).",
                &values,
            ),
        },
        Alert {
            name: "ReloadscopeHttpConnectionsEvicted",
            expr: fill(
                "increase(reloadscope_http_connections_evicted_total{<job>}[<window>]) > 0",
                &values,
            ),
            r#for: "0s",
            severity: "warning",
            summary: "Clients hold more connections to an agent than it keeps open.",
            description: fill(
                "The agent on {{ $labels.instance }} closed {{ $value | humanize }} HTTP \
                 connections in the last <window> to make room under its connection cap: \
                 something opens connections to its port and holds them.",
                &values,
            ),
        },
        Alert {
            name: "ReloadscopeEbpfEventsLost",
            expr: fill(
                "increase(reloadscope_ebpf_events_lost_total{<job>}[<window>]) > 0",
                &values,
            ),
            r#for: "0s",
            severity: "warning",
            summary: "The eBPF probe lost volume swap events.",
            description: fill(
                "The agent on {{ $labels.instance }} lost {{ $value | humanize }} swap events in \
                 the last <window> to a full ring buffer; inotify still reports those updates.",
                &values,
            ),
        },
        Alert {
            name: "ReloadscopeDetectionGaps",
            expr: fill(
                "increase(reloadscope_update_detection_gaps_total{<job>}[<window>]) > 0",
                &values,
            ),
            r#for: "0s",
            severity: "warning",
            summary: "An update was seen by only one of eBPF and inotify.",
            description: fill(
                "The agent on {{ $labels.instance }} counted {{ $value | humanize }} updates in \
                 the last <window> that {{ $labels.missed_by }} did not report within 2 s.",
                &values,
            ),
        },
        // Not where the probe was switched off (--probe off, --no-ebpf: the
        // legacy-kernel component): `unless` rather than `and ... == 1`, so an agent
        // too old to export reloadscope_ebpf_enabled is still alerted on.
        Alert {
            name: "ReloadscopeEbpfNotLoaded",
            expr: fill(
                "reloadscope_ebpf_loaded{<job>} == 0\n  \
                 unless ignoring (probe)\n  \
                 reloadscope_ebpf_enabled{<job>} == 0",
                &values,
            ),
            r#for: &cfg.not_loaded_for,
            severity: "warning",
            summary: "The agent runs without its eBPF probe.",
            description: "The agent on {{ $labels.instance }} could not load its eBPF probe and \
                 detects updates with inotify alone (no kernel timestamps, no cross-check)."
                .into(),
        },
        // Not where reloads are not measured by choice (--no-reloads).
        Alert {
            name: "ReloadscopeFanotifyNotLoaded",
            expr: fill(
                "reloadscope_fanotify_loaded{<job>} == 0\n  \
                 unless\n  \
                 reloadscope_reloads_enabled{<job>} == 0",
                &values,
            ),
            r#for: &cfg.not_loaded_for,
            severity: "warning",
            summary: "The agent does not attribute opens to processes.",
            description: "The agent on {{ $labels.instance }} has no fanotify (CAP_SYS_ADMIN, \
                 Linux 5.9): it measures reloads approximately, per volume with inotify, or not \
                 at all if inotify failed too."
                .into(),
        },
        Alert {
            name: "ReloadscopeAgentDown",
            expr: fill("up{<job>} == 0", &values),
            r#for: &cfg.down_for,
            severity: "warning",
            summary: "Prometheus cannot scrape an agent.",
            description: fill(
                "The reloadscope agent {{ $labels.instance }} has been unreachable for \
                 <down_for>: volume updates and reloads on its node are not observed.",
                &values,
            ),
        },
        // The case `up == 0` cannot see: no target at all (the DaemonSet is gone,
        // or service discovery lost it). `absent` of a comparison has no labels.
        Alert {
            name: "ReloadscopeAgentAbsent",
            expr: fill("absent(up{<job>} == 1)", &values),
            r#for: &cfg.absent_for,
            severity: "critical",
            summary: "No reloadscope agent is up.",
            description: fill(
                "No target of <job> has been up for <absent_for>: no node's volume updates or \
                 reloads are observed.",
                &values,
            ),
        },
    ]
}
