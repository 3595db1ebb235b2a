//! The Grafana dashboard, as the JSON model Grafana 10.4 to 12 read (schemaVersion
//! 39; newer releases migrate it on load).

use serde_json::{Value, json};

use super::Config;
use super::panels::{
    Grid, RATE, With, consumers, heatmap, panel, percentiles, table, target, timeseries, variable,
    volumes, workloads,
};

/// The dashboard's stable uid: links and provisioning refer to it.
pub const UID: &str = "reloadscope";

pub fn dashboard(cfg: &Config) -> Value {
    // Every panel's queries select the chosen clusters, jobs and instances; the
    // variables' own, those chosen before them.
    let (variables, cfg) = variables(cfg);
    let cfg = &cfg;
    let mut grid = Grid::default();
    let mut panels = vec![grid.row("Volume updates")];
    panels.push(grid.place(24, 8, updates(cfg)));
    panels.push(grid.row("Reloads"));
    for p in reloads(cfg) {
        panels.push(grid.place(12, 8, p));
    }
    panels.push(grid.row("Propagation"));
    for p in super::propagation::panels(cfg) {
        panels.push(grid.place(8, 8, p));
    }
    panels.push(grid.row("Details"));
    for p in super::details::panels(cfg) {
        panels.push(grid.place(12, 8, p));
    }
    panels.push(grid.row("Agent health"));
    for p in health(cfg) {
        panels.push(grid.place(8, 7, p));
    }
    let all = format!("reloadscope_volume_updates_total{}", cfg.select(""));
    let mut templating = variables;
    let namespaced = format!(
        "reloadscope_volume_updates_total{}",
        cfg.select(r#"namespace=~"$namespace""#)
    );
    let workloads = format!(
        "reloadscope_consumer_info{}",
        cfg.select(r#"namespace=~"$namespace""#)
    );
    templating.extend([
        variable("namespace", &all),
        variable("workload", &workloads),
        variable("pod", &namespaced),
        variable("source_name", &namespaced).with("label", json!("source")),
    ]);
    json!({
        "uid": UID,
        "title": "reloadscope / Volume updates and reloads",
        "description": "ConfigMap, Secret, projected and downwardAPI volume updates on each node, \
            and how long each consuming container takes to reload them.",
        "tags": ["reloadscope", "kubernetes"],
        "editable": true,
        "graphTooltip": 1,
        "refresh": "30s",
        "time": {"from": "now-1h", "to": "now"},
        "timezone": "",
        "schemaVersion": 39,
        "version": 1,
        "links": [],
        "annotations": {"list": [{
            "builtIn": 1, "type": "dashboard", "name": "Annotations & Alerts",
            "enable": true, "hide": true, "iconColor": "rgba(0, 211, 255, 1)",
            "datasource": {"type": "grafana", "uid": "-- Grafana --"},
        }]},
        "templating": {"list": templating},
        "panels": panels,
    })
}

/// The data source, cluster (only with a cluster label), job and instance variables,
/// and `cfg` with its job selector narrowed to what they choose.
fn variables(cfg: &Config) -> (Vec<Value>, Config) {
    let mut list = vec![json!({
        "name": "datasource", "label": "Data source", "type": "datasource",
        "query": "prometheus", "current": {}, "hide": 0, "refresh": 1, "regex": "",
    })];
    let mut narrowed = cfg.clone();
    let mut choose = |name: &str, label: &str, list: &mut Vec<Value>| {
        let series = format!("reloadscope_build_info{}", narrowed.select(""));
        list.push(variable(label, &series).with("name", json!(name)));
        narrowed.job_selector = format!("{}, {label}=~\"${name}\"", narrowed.job_selector);
    };
    if !cfg.cluster_label.is_empty() {
        choose("cluster", &cfg.cluster_label, &mut list);
    }
    choose("job", "job", &mut list);
    choose("instance", "instance", &mut list);
    (list, narrowed)
}

fn updates(cfg: &Config) -> Value {
    let expr = format!(
        "sum by (namespace, pod, volume, source_kind, source_name) \
         (increase(reloadscope_volume_updates_total{}[{RATE}]))",
        volumes(cfg)
    );
    timeseries(
        "Updates per volume",
        "Atomic updates (..data swaps) of each ConfigMap, Secret, projected and downwardAPI \
         volume; a pod's first population is not an update.",
        "short",
        vec![target(
            expr,
            "{{namespace}}/{{pod}} {{volume}} ({{source_kind}} {{source_name}})",
        )],
    )
    .with(
        "fieldConfig",
        json!({"defaults": {"unit": "short", "custom": {"drawStyle": "bars", "fillOpacity": 60}},
               "overrides": []}),
    )
}

fn reloads(cfg: &Config) -> Vec<Value> {
    let pods = consumers(cfg);
    let selected = workloads(cfg);
    let buckets = format!("reloadscope_reload_latency_seconds_bucket{selected}[{RATE}]");
    let heatmap = heatmap(
        "Reload latency",
        "Time from a volume's swap to each consuming container's first open of the new \
         data: how many reloads fell in each latency bucket.",
        &buckets,
    );
    let percentiles = percentiles(
        "Reload latency p50 / p99",
        "Median and 99th percentile of the time from a swap to a container's reload, over \
         the selected workloads' containers (their replicas share one histogram).",
        &buckets,
    );
    let stale = table(
        "Stale consumers",
        "Containers that have not reloaded the newest update of a volume they mount, \
         longest first. Stale for: time since that update's swap.",
        "s",
        format!("sort_desc(reloadscope_consumer_stale_seconds{pods} > 0)"),
        "Stale for",
    );
    let subpath = table(
        "subPath consumers",
        "Containers that bind a file of a volume through subPath: they never receive its \
         updates. Updates: the volume's updates since the agent started, all missed.",
        "short",
        format!(
            "reloadscope_consumer_info{}\n  * on ({}) group_left (volume_type)\n  \
             max by ({}) (reloadscope_volume_updates_total{})",
            cfg.select(
                r#"namespace=~"$namespace", workload=~"$workload", pod=~"$pod", mount="subpath""#
            ),
            cfg.by("namespace, pod, volume"),
            cfg.by("namespace, pod, volume, volume_type"),
            volumes(cfg),
        ),
        "Updates",
    );
    // --reload-signals: empty without it.
    let workloads = cfg.select(r#"namespace=~"$namespace", workload=~"$workload""#);
    let signals = timeseries(
        "Reload signals",
        "Signals sent to containers of pods annotated reloadscope.dev/reload-signal at \
         their volumes' swaps (--reload-signals), and those not sent, by reason (each also \
         a ReloadSignalFailed Event on the pod). Whether a signalled container reloaded is \
         in the latency and stale panels, and the next one.",
        "short",
        vec![
            target(
                format!(
                    "sum by (namespace, workload) \
                     (increase(reloadscope_reload_signals_sent_total{workloads}[{RATE}]))"
                ),
                "sent {{namespace}}/{{workload}}",
            ),
            target(
                format!(
                    "sum by (namespace, workload, reason) \
                     (increase(reloadscope_reload_signals_failed_total{workloads}[{RATE}]))"
                ),
                "not sent {{namespace}}/{{workload}} ({{reason}})",
            ),
        ],
    );
    let signalled_stale = table(
        "Signalled, not reloaded",
        "Containers signalled to reload at an update that have not read its data since, \
         longest first. For: time since the signal.",
        "s",
        format!("sort_desc(reloadscope_consumer_stale_since_signal_seconds{pods} > 0)"),
        "For",
    );
    vec![
        heatmap,
        percentiles,
        stale,
        subpath,
        signals,
        signalled_stale,
    ]
}

fn health(cfg: &Config) -> Vec<Value> {
    let job = cfg.select("");
    let per_agent = |metric: &str, what: &str| {
        target(
            format!("sum by (instance) (increase({metric}{job}[{RATE}]))"),
            &format!("{what} {{{{instance}}}}"),
        )
    };
    let loaded = |metric: &str, what: &str| {
        target(
            format!("min by (instance) ({metric}{job})"),
            &format!("{what} {{{{instance}}}}"),
        )
    };
    // 1 loaded, 0 not loaded, -1 switched off (--probe off, --no-reloads): loaded
    // minus "not enabled".
    let probes = panel(
        "stat",
        "Probes loaded",
        "Per agent: whether the eBPF probe is attached, and in which variant (fentry or \
         tracepoint; else updates are detected by inotify alone), and whether fanotify is \
         (else reloads are measured approximately, per volume), and whether the Kubernetes \
         API answers (else on-node names only, no propagation delays). Off: switched off \
         by the agent's flags (--probe off, --no-ebpf, --no-reloads).",
        "none",
        vec![
            target(
                format!(
                    "reloadscope_ebpf_loaded{job}\n  - ignoring (probe) group_left ()\n  \
                     (1 - reloadscope_ebpf_enabled{job})"
                ),
                "eBPF ({{probe}}) {{instance}}",
            ),
            target(
                format!(
                    "reloadscope_fanotify_loaded{job}\n  - (1 - reloadscope_reloads_enabled{job})"
                ),
                "fanotify {{instance}}",
            ),
            loaded("reloadscope_kube_api_up", "Kubernetes API"),
        ],
    )
    .with(
        "fieldConfig",
        json!({"defaults": {"unit": "none", "mappings": [{"type": "value", "options": {
        "-1": {"text": "off", "color": "blue", "index": 2},
        "0": {"text": "not loaded", "color": "red", "index": 0},
        "1": {"text": "loaded", "color": "green", "index": 1},
    }}]}, "overrides": []}),
    )
    .with(
        "options",
        json!({
            "reduceOptions": {"calcs": ["lastNotNull"], "fields": "", "values": false},
            "colorMode": "background", "graphMode": "none", "textMode": "value_and_name",
            "orientation": "auto", "justifyMode": "auto",
        }),
    );
    let lost = timeseries(
        "Lost events and overflows",
        "Events the agent could not read: eBPF ring buffer full, inotify or fanotify queue \
         overflow (inotify rescans after one; fanotify loses opens). Late marks: new data \
         dirs marked only after their swap.",
        "short",
        vec![
            per_agent("reloadscope_ebpf_events_lost_total", "eBPF events lost"),
            per_agent(
                "reloadscope_inotify_queue_overflows_total",
                "inotify overflows",
            ),
            per_agent(
                "reloadscope_fanotify_queue_overflows_total",
                "fanotify overflows",
            ),
            per_agent("reloadscope_late_marks_total", "late marks"),
        ],
    );
    let by = |label: &str, metric: &str, legend: &str| {
        target(
            format!("sum by ({label}) (increase({metric}{job}[{RATE}]))"),
            legend,
        )
    };
    let detections = timeseries(
        "Detections and gaps",
        "Updates reported by each source, and updates one source reported and the other did \
         not within 2 s (a gap of the silent one).",
        "short",
        vec![
            by(
                "source",
                "reloadscope_update_detections_total",
                "detected by {{source}}",
            ),
            by(
                "missed_by",
                "reloadscope_update_detection_gaps_total",
                "missed by {{missed_by}}",
            ),
        ],
    );
    let cpu = timeseries(
        "Agent CPU",
        "CPU used by each agent, in cores (100% = one core).",
        "percentunit",
        vec![target(
            format!("rate(process_cpu_seconds_total{job}[{RATE}])"),
            "{{instance}}",
        )],
    );
    let memory = timeseries(
        "Agent memory",
        "Resident memory of each agent.",
        "bytes",
        vec![target(
            format!("process_resident_memory_bytes{job}"),
            "{{instance}}",
        )],
    );
    let sum = |metric: &str, what: &str| {
        target(
            format!("sum by (instance) ({metric}{job})"),
            &format!("{what} {{{{instance}}}}"),
        )
    };
    let watches = timeseries(
        "Watched volumes and inotify watches",
        "Volumes each agent follows, and the inotify watches it holds (keep below \
         fs.inotify.max_user_watches).",
        "short",
        vec![
            sum("reloadscope_watched_volumes", "volumes"),
            sum("reloadscope_inotify_watches", "watches"),
        ],
    );
    let blind = timeseries(
        "Blind spots",
        "Dirs under the kubelet roots each agent cannot watch or list now, by reason \
         (watch_limit: fs.inotify.max_user_watches; fd_limit: descriptors): updates below \
         them are not seen until they are followed again (retried every second). Failures \
         for want of file descriptors, and HTTP connections closed to keep the server's cap.",
        "short",
        vec![
            target(
                format!("sum by (instance, reason) (reloadscope_unwatched_paths{job})"),
                "not followed ({{reason}}) {{instance}}",
            ),
            per_agent("reloadscope_fd_exhausted_total", "out of descriptors"),
            per_agent(
                "reloadscope_http_connections_evicted_total",
                "connections evicted",
            ),
        ],
    );
    let fds = timeseries(
        "Agent file descriptors",
        "Descriptors each agent holds, and its limit (the hard RLIMIT_NOFILE it raised its \
         soft limit to at start).",
        "short",
        vec![
            sum("process_open_fds", "open"),
            sum("process_max_fds", "limit"),
        ],
    );
    vec![probes, lost, detections, cpu, memory, watches, blind, fds]
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeSet;

    use super::*;

    fn variable_names(d: &Value) -> Vec<&str> {
        let list = d["templating"]["list"].as_array().unwrap();
        list.iter().map(|v| v["name"].as_str().unwrap()).collect()
    }

    #[test]
    fn the_cluster_variable_comes_with_a_cluster_label() {
        let mut cfg = Config::default();
        let names = [
            "datasource",
            "job",
            "instance",
            "namespace",
            "workload",
            "pod",
        ];
        assert_eq!(variable_names(&dashboard(&cfg))[..6], names);
        cfg.cluster_label = "k8s_cluster".into();
        let d = dashboard(&cfg);
        assert_eq!(
            variable_names(&d)[..4],
            ["datasource", "cluster", "job", "instance"]
        );
        let list = d["templating"]["list"].as_array().unwrap();
        assert_eq!(
            list[1]["definition"],
            r#"label_values(reloadscope_build_info{job="reloadscope"}, k8s_cluster)"#
        );
        // Each variable lists the values of those chosen before it.
        assert_eq!(
            list[3]["definition"],
            r#"label_values(reloadscope_build_info{job="reloadscope", k8s_cluster=~"$cluster", job=~"$job"}, instance)"#
        );
        for p in d["panels"].as_array().unwrap() {
            for t in p["targets"].as_array().into_iter().flatten() {
                let expr = t["expr"].as_str().unwrap();
                assert!(expr.contains(r#"k8s_cluster=~"$cluster""#), "{expr}");
                assert!(!expr.contains(" on (namespace"), "{expr}");
            }
        }
    }

    #[test]
    fn panels_are_described_with_units_in_places_of_their_own() {
        let cfg = Config::default();
        let selector = format!(
            r#"{}, job=~"$job", instance=~"$instance""#,
            cfg.job_selector
        );
        let (mut ids, mut cells) = (BTreeSet::new(), BTreeSet::new());
        for p in dashboard(&cfg)["panels"].as_array().unwrap() {
            let title = p["title"].as_str().unwrap();
            assert!(ids.insert(p["id"].as_u64().unwrap()), "{title}: id taken");
            let at = |k: &str| p["gridPos"][k].as_u64().unwrap();
            assert!(at("x") + at("w") <= 24, "{title}: wider than the grid");
            for x in at("x")..at("x") + at("w") {
                for y in at("y")..at("y") + at("h") {
                    assert!(cells.insert((x, y)), "{title} overlaps another panel");
                }
            }
            if p["type"] == "row" {
                continue;
            }
            assert!(!p["description"].as_str().unwrap().is_empty(), "{title}");
            assert!(p["fieldConfig"]["defaults"]["unit"].is_string(), "{title}");
            assert_eq!(p["datasource"]["uid"], "${datasource}", "{title}");
            for t in p["targets"].as_array().unwrap() {
                let expr = t["expr"].as_str().unwrap();
                assert!(expr.contains(&selector), "{title}: {expr}");
                assert!(
                    !expr.contains('[') || expr.contains("[$__rate_interval]"),
                    "{expr}"
                );
            }
        }
    }
}
