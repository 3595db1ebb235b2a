//! /metrics rendered from hand-built state ([`node`]): labels kept and merged,
//! filters, and the Kubernetes API's families.

mod budget;
mod node;

use std::{sync::Arc, time::Duration};

use node::{node, t0};
use reloadscope_lab::scrape::{Sample, Samples, parse};

use super::*;
use crate::kubeapi::propagation::BUCKETS as DELAY_BUCKETS;

/// Every consumer label: the histogram restricted by nothing.
const ALL: [&str; 5] = CONSUMER_LABELS;

fn controls(consumer: &[&str]) -> LabelControls {
    LabelControls {
        consumer: consumer.iter().map(|s| s.to_string()).collect(),
        ..LabelControls::default()
    }
}

/// /metrics as text, and parsed.
fn render(shared: Arc<Shared>, labels: LabelControls, histogram: &[&str]) -> (String, Samples) {
    let names: Vec<String> = histogram.iter().map(|s| s.to_string()).collect();
    let keep = histogram_labels(&names).unwrap();
    let text = Exporter::new(shared, labels, &keep)
        .unwrap()
        .render()
        .unwrap();
    let samples = parse(&text).unwrap();
    (text, samples)
}

fn names(s: &Sample) -> Vec<&str> {
    s.labels.keys().map(String::as_str).collect()
}

/// The label names of the first line of `family`, in the order written.
fn order(text: &str, family: &str) -> Vec<String> {
    let line = text
        .lines()
        .find(|l| l.starts_with(&format!("{family}{{")))
        .unwrap_or_else(|| panic!("no {family} in\n{text}"));
    let inner = &line[family.len() + 1..line.find('}').unwrap()];
    inner
        .split(',')
        .map(|p| p.split_once('=').unwrap().0.to_owned())
        .collect()
}

#[test]
fn default_labels_name_each_consumer_its_workload_and_each_volume_its_sources() {
    let (text, m) = render(node(true), LabelControls::default(), &ALL);
    let vol = [("pod", "web-0"), ("volume", "app-config")];
    let updates = m
        .matching("reloadscope_volume_updates_total", &vol)
        .next()
        .unwrap();
    assert_eq!(updates.labels["source_kind"], "ConfigMap");
    assert_eq!(updates.labels["source_name"], "app");
    assert_eq!(updates.value, 1.0);
    let token = [
        ("source_kind", "ConfigMap,DownwardAPI,ServiceAccountToken"),
        ("source_name", "kube-root-ca.crt,,"),
    ];
    assert!(
        m.get("reloadscope_volume_last_update_timestamp_seconds", &token)
            .is_some()
    );

    assert_eq!(
        order(&text, "reloadscope_consumer_info"),
        [
            "namespace",
            "workload_kind",
            "workload",
            "pod",
            "container",
            "volume",
            "mount",
            "measurement",
            "reads"
        ]
    );
    let info: Vec<_> = m.matching("reloadscope_consumer_info", &[]).collect();
    assert_eq!(info.len(), 6, "one per container");
    assert!(info.iter().all(|s| s.value == 1.0));
    let naive = [
        ("workload_kind", "StatefulSet"),
        ("workload", "web"),
        ("pod", "web-1"),
        ("container", "naive"),
    ];
    assert_eq!(m.get("reloadscope_consumer_info", &naive), Some(1.0));
    let cron = [("workload_kind", "CronJob"), ("workload", "backup")];
    assert_eq!(m.get("reloadscope_consumer_info", &cron), Some(1.0));

    for family in [
        "reloadscope_consumer_stale_seconds",
        "reloadscope_consumer_last_reload_timestamp_seconds",
        "reloadscope_reload_latency_seconds_count",
    ] {
        assert_eq!(order(&text, family), CONSUMER_LABELS, "{family}");
    }
    assert_eq!(
        m.matching("reloadscope_consumer_stale_seconds", &[])
            .count(),
        4,
        "subPath is never stale, and a container never seen reading has no series"
    );
    let main = [("container", "main")];
    assert_eq!(m.get("reloadscope_consumer_stale_seconds", &main), None);
    let reads = |c: &str| {
        let with = [("container", c)];
        let mut s = m.matching("reloadscope_consumer_info", &with);
        s.next().map(|s| s.labels["reads"].clone())
    };
    assert_eq!(reads("main").as_deref(), Some("unknown"));
    for c in ["app", "naive", "c"] {
        assert_eq!(reads(c).as_deref(), Some("yes"), "{c}");
    }
    assert!(
        m.get("reloadscope_consumer_stale_seconds", &naive[2..])
            .unwrap()
            > 3000.0
    );
    assert_eq!(
        m.get(
            "reloadscope_consumer_stale_seconds",
            &[("pod", "web-0"), ("container", "app")]
        ),
        Some(0.0)
    );
    assert_eq!(
        order(&text, "reloadscope_consumer_watch_findings"),
        [
            "namespace",
            "workload",
            "pod",
            "container",
            "volume",
            "finding"
        ]
    );
    assert_eq!(
        m.matching("reloadscope_consumer_watch_findings", &[])
            .count(),
        4
    );
    assert_eq!(m.get("reloadscope_kube_api_up", &[]), Some(1.0));
}

#[test]
fn without_the_api_the_new_labels_are_empty_and_api_families_absent() {
    let (text, m) = render(node(false), LabelControls::default(), &ALL);
    for s in m.matching("reloadscope_volume_updates_total", &[]) {
        assert_eq!(
            (&*s.labels["source_kind"], &*s.labels["source_name"]),
            ("", "")
        );
    }
    for s in m.matching("reloadscope_consumer_info", &[]) {
        assert_eq!(
            (&*s.labels["workload_kind"], &*s.labels["workload"]),
            ("", "")
        );
    }
    // The pod whose name is not known yet: no namespace, its uid as name.
    let unnamed = [("namespace", ""), ("pod", "u3"), ("volume", "tls")];
    assert_eq!(
        m.get("reloadscope_volume_updates_total", &unnamed),
        Some(1.0)
    );
    assert_eq!(m.matching("reloadscope_consumer_info", &unnamed).count(), 1);
    for family in [
        "reloadscope_kube_api_up",
        "reloadscope_propagation_delay_seconds",
        "reloadscope_propagation_pending",
    ] {
        assert!(!text.contains(family), "{family} without an API");
    }
}

#[test]
fn consumers_sharing_the_kept_labels_share_a_series() {
    let kept = controls(&["volume", "namespace", "workload"]);
    let (text, m) = render(node(true), kept, &ALL);
    let web = [
        ("namespace", "shop"),
        ("workload", "web"),
        ("volume", "app-config"),
    ];
    assert_eq!(
        order(&text, "reloadscope_consumer_stale_seconds"),
        ["namespace", "workload", "volume"]
    );
    // info: 1 for the three whole-volume consumers merged, as every _info series is;
    // mount still tells subPath ones apart.
    let whole = [web.as_slice(), &[("mount", "volume")]].concat();
    assert_eq!(m.get("reloadscope_consumer_info", &whole), Some(1.0));
    let sub = [web.as_slice(), &[("mount", "subpath")]].concat();
    assert_eq!(m.get("reloadscope_consumer_info", &sub), Some(1.0));
    assert_eq!(m.matching("reloadscope_consumer_info", &[]).count(), 4);
    let s = m
        .matching("reloadscope_consumer_info", &whole)
        .next()
        .unwrap();
    assert_eq!(
        names(s),
        [
            "measurement",
            "mount",
            "namespace",
            "reads",
            "volume",
            "workload",
            "workload_kind"
        ]
    );
    // stale: the largest (web-1's naive container), not 0 from those that reloaded.
    assert!(m.get("reloadscope_consumer_stale_seconds", &web).unwrap() > 3000.0);
    // last reload: the latest (web-1's, 3 s after the swap; web-0's after 20 ms).
    let last = m
        .get("reloadscope_consumer_last_reload_timestamp_seconds", &web)
        .unwrap();
    let swap = crate::clock::unix_seconds(t0() + Duration::from_secs(1));
    assert!((last - swap - 3.0).abs() < 0.5, "{last} vs {swap}");
    // latency: one histogram of both reloads.
    assert_eq!(
        m.get("reloadscope_reload_latency_seconds_count", &web),
        Some(2.0)
    );
    let sum = m
        .get("reloadscope_reload_latency_seconds_sum", &web)
        .unwrap();
    assert!((sum - 3.02).abs() < 1e-6, "{sum}");
    let le = |b: &str| {
        m.get(
            "reloadscope_reload_latency_seconds_bucket",
            &[web.as_slice(), &[("le", b)]].concat(),
        )
    };
    assert_eq!(
        (le("0.025"), le("2.5"), le("5")),
        (Some(1.0), Some(1.0), Some(2.0))
    );
    // findings: summed (web-0's sidecar and web-1's pinned container).
    let sub = [web.as_slice(), &[("finding", "subpath")]].concat();
    assert_eq!(
        m.get("reloadscope_consumer_watch_findings", &sub),
        Some(2.0)
    );
}

#[test]
fn histogram_labels_restrict_the_histogram_further() {
    // `pod` on the histogram flag, but dropped by --metric-labels: absent.
    let kept = controls(&["namespace", "workload", "volume"]);
    let (text, m) = render(node(true), kept, &["pod", "volume"]);
    assert_eq!(
        order(&text, "reloadscope_reload_latency_seconds_count"),
        ["volume"]
    );
    assert_eq!(
        m.get(
            "reloadscope_reload_latency_seconds_count",
            &[("volume", "app-config")]
        ),
        Some(2.0)
    );
    assert_eq!(
        order(&text, "reloadscope_consumer_stale_seconds"),
        ["namespace", "workload", "volume"]
    );
    // Without workload on the histogram flag, the other families keep it.
    let hist = ["namespace", "pod", "container", "volume"];
    let (text, _) = render(node(true), LabelControls::default(), &hist);
    assert_eq!(
        order(&text, "reloadscope_reload_latency_seconds_count"),
        hist
    );
    assert_eq!(
        order(&text, "reloadscope_consumer_stale_seconds"),
        CONSUMER_LABELS
    );
}

/// (namespace, pod, volume) of every series of the per-volume, per-consumer and
/// propagation families, and the namespaces of the per-namespace ones.
fn exported(m: &Samples) -> (Vec<(String, String)>, Vec<String>) {
    let families = [
        "reloadscope_volume_updates_total",
        "reloadscope_volume_last_update_timestamp_seconds",
        "reloadscope_reload_latency_seconds_count",
        "reloadscope_consumer_stale_seconds",
        "reloadscope_consumer_last_reload_timestamp_seconds",
        "reloadscope_consumer_info",
        "reloadscope_consumer_watch_findings",
        "reloadscope_propagation_pending",
    ];
    let mut pods: Vec<(String, String)> = families
        .iter()
        .flat_map(|f| m.matching(f, &[]))
        .map(|s| (s.labels["pod"].clone(), s.labels["volume"].clone()))
        .collect();
    pods.sort();
    pods.dedup();
    let mut namespaces: Vec<String> = [
        "reloadscope_inotify_watches_observed",
        "reloadscope_propagation_delay_seconds_count",
    ]
    .iter()
    .flat_map(|f| m.matching(f, &[]))
    .map(|s| s.labels["namespace"].clone())
    .collect();
    namespaces.sort();
    (pods, namespaces)
}

fn pairs(items: &[(&str, &str)]) -> Vec<(String, String)> {
    items
        .iter()
        .map(|(a, b)| (a.to_string(), b.to_string()))
        .collect()
}

#[test]
fn namespace_and_volume_filters_apply_to_every_family() {
    let (_, m) = render(node(true), LabelControls::default(), &ALL);
    let (pods, ns) = exported(&m);
    let everyone = [
        ("backup-1", "kube-api-access-abc"),
        ("u3", "tls"),
        ("web-0", "app-config"),
        ("web-1", "app-config"),
    ];
    assert_eq!(pods, pairs(&everyone));
    assert_eq!(ns, ["", "batch", "shop", "shop"]);

    // Only shop: the pod whose namespace is not known is left out too.
    let only = LabelControls {
        namespaces: vec!["shop".into()],
        ..LabelControls::default()
    };
    let (_, m) = render(node(true), only, &ALL);
    let (pods, ns) = exported(&m);
    assert_eq!(
        pods,
        pairs(&[("web-0", "app-config"), ("web-1", "app-config")])
    );
    assert_eq!(ns, ["shop", "shop"]);
    assert_eq!(
        m.get("reloadscope_propagation_pending", &[("pod", "web-1")]),
        Some(1.0)
    );

    // Excluding: the unnamed pod stays.
    let except = LabelControls {
        exclude_namespaces: vec!["shop".into()],
        exclude_volumes: Some(regex::Regex::new("^(?:kube-api-access-.*)$").unwrap()),
        ..LabelControls::default()
    };
    let (_, m) = render(node(true), except, &ALL);
    let (pods, ns) = exported(&m);
    assert_eq!(pods, pairs(&[("u3", "tls")]));
    assert_eq!(ns, ["", "batch"]);
    // Node-wide counts are not filtered.
    assert_eq!(m.sum("reloadscope_watched_volumes", &[]), 4.0);
}

#[test]
fn propagation_delay_and_pending() {
    let (text, m) = render(node(true), LabelControls::default(), &ALL);
    // web-0 swapped 3 s after the change was seen.
    let shop = [("namespace", "shop")];
    assert_eq!(
        m.get("reloadscope_propagation_delay_seconds_count", &shop),
        Some(1.0)
    );
    assert_eq!(
        m.get("reloadscope_propagation_delay_seconds_sum", &shop),
        Some(3.0)
    );
    let bounds: Vec<f64> = m
        .matching("reloadscope_propagation_delay_seconds_bucket", &shop)
        .map(|s| s.labels["le"].parse().unwrap())
        .collect();
    let mut expected = DELAY_BUCKETS.to_vec();
    expected.push(f64::INFINITY);
    assert_eq!(bounds, expected);
    let le = |b: &str| {
        m.get(
            "reloadscope_propagation_delay_seconds_bucket",
            &[shop[0], ("le", b)],
        )
    };
    assert_eq!(
        (le("2.5"), le("5"), le("+Inf")),
        (Some(0.0), Some(1.0), Some(1.0))
    );
    assert!(text.contains("# TYPE reloadscope_propagation_delay_seconds histogram"));
    // web-1 and backup-1 never swapped: pending, past the 5 min timeout.
    let pending: Vec<_> = m.matching("reloadscope_propagation_pending", &[]).collect();
    assert_eq!(pending.len(), 2);
    let web1 = [
        ("namespace", "shop"),
        ("pod", "web-1"),
        ("volume", "app-config"),
    ];
    assert_eq!(m.get("reloadscope_propagation_pending", &web1), Some(1.0));
    assert!(
        pending
            .iter()
            .all(|s| names(s) == ["namespace", "pod", "volume"] && s.value == 1.0)
    );

    // The API down: 0, and the rest stays.
    let shared = node(true);
    shared.meta.state.lock().unwrap().api_up = false;
    let (_, m) = render(shared, LabelControls::default(), &ALL);
    assert_eq!(m.get("reloadscope_kube_api_up", &[]), Some(0.0));
    assert_eq!(
        m.matching("reloadscope_propagation_pending", &[]).count(),
        2
    );
}

/// `--reload-signals`: nothing without it; with it, the counters by namespace and
/// workload (every reason at 0 from the workload's first signal), and each signalled
/// reader's time since the signal for the update it still lacks (0 once it has it,
/// or when the signal was for an older update).
#[test]
fn reload_signals_sent_failed_and_stale_since_the_signal() {
    use crate::{node::volumes::VolumeType, signals::Failure};
    let shared = node(true);
    let (_, m) = render(shared.clone(), LabelControls::default(), &ALL);
    assert_eq!(
        m.matching("reloadscope_reload_signals_sent_total", &[])
            .count(),
        0
    );
    assert_eq!(
        m.matching("reloadscope_consumer_stale_since_signal_seconds", &[])
            .count(),
        0
    );

    let key = |uid: &str, ty, name: &str| crate::node::volumes::VolumeKey {
        pod_uid: uid.into(),
        volume_type: ty,
        name: name.into(),
    };
    let sent_at = t0() + Duration::from_secs(2);
    {
        let mut rec = shared.signals.lock().unwrap();
        rec.enabled = true;
        rec.count_sent("shop".into(), "web".into());
        rec.count_sent("shop".into(), "web".into());
        rec.count_failed("shop".into(), "web".into(), Failure::PidReused);
        rec.count_sent("batch".into(), "".into());
        let app1 = key("u1", VolumeType::ConfigMap, "app-config");
        let app0 = key("u0", VolumeType::ConfigMap, "app-config");
        let tls = key("u3", VolumeType::Secret, "tls");
        // naive lacks ..2, signalled for it; app has it; c lacks it, signalled for ..1.
        rec.last
            .insert((app1, "naive".into()), ("..2".into(), sent_at));
        rec.last
            .insert((app0, "app".into()), ("..2".into(), sent_at));
        rec.last.insert((tls, "c".into()), ("..1".into(), sent_at));
    }
    let (_, m) = render(shared.clone(), LabelControls::default(), &ALL);
    let shop = [("namespace", "shop"), ("workload", "web")];
    assert_eq!(
        m.get("reloadscope_reload_signals_sent_total", &shop),
        Some(2.0)
    );
    for f in Failure::ALL {
        let with = [shop[0], shop[1], ("reason", f.label())];
        let want = f64::from(u8::from(f == Failure::PidReused));
        assert_eq!(
            m.get("reloadscope_reload_signals_failed_total", &with),
            Some(want),
            "{f:?}"
        );
    }
    let since = |container: &str| {
        m.get(
            "reloadscope_consumer_stale_since_signal_seconds",
            &[("container", container)],
        )
    };
    let naive = since("naive").unwrap();
    assert!((3590.0..3700.0).contains(&naive), "{naive}");
    assert_eq!(since("app"), Some(0.0));
    assert_eq!(since("c"), Some(0.0), "signalled for an older update");
    assert_eq!(since("main"), None, "never signalled");

    // The namespace filter applies.
    let only_shop = LabelControls {
        namespaces: vec!["shop".into()],
        ..LabelControls::default()
    };
    let (_, m) = render(shared, only_shop, &ALL);
    assert_eq!(
        m.matching(
            "reloadscope_reload_signals_sent_total",
            &[("namespace", "batch")]
        )
        .count(),
        0
    );
    assert_eq!(m.sum("reloadscope_reload_signals_sent_total", &[]), 2.0);
}
