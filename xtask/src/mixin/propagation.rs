//! The dashboard's Propagation row: how long a ConfigMap or Secret change seen on the
//! API takes to be swapped into the volumes on each node, and the changes still
//! pending there. Needs the agent's Kubernetes API access.

use serde_json::Value;

use super::Config;
use super::panels::{RATE, heatmap, percentiles, pods, table};

pub fn panels(cfg: &Config) -> Vec<Value> {
    let buckets = format!(
        "reloadscope_propagation_delay_seconds_bucket{}[{RATE}]",
        cfg.select(r#"namespace=~"$namespace""#)
    );
    let heatmap = heatmap(
        "Propagation delay",
        "Time from a ConfigMap or Secret change seen on the API to the kubelet's swap of \
         each volume holding it on the node: the kubelet's sync period and cache TTL at \
         work.",
        &buckets,
    );
    let percentiles = percentiles(
        "Propagation delay p50 / p99",
        "Median and 99th percentile of the time from a change on the API to its swap on \
         the nodes, over the selected namespaces.",
        &buckets,
    );
    let pending = table(
        "Pending propagations",
        "Volumes holding a ConfigMap or Secret changed on the API that the kubelet has not \
         swapped within the agent's --propagation-timeout: the node still serves the old \
         data to every consumer.",
        "short",
        format!("reloadscope_propagation_pending{} == 1", pods(cfg)),
        "Pending",
    );
    vec![heatmap, percentiles, pending]
}
