//! The dashboard's Details row: when each volume was last updated and each consumer
//! last reloaded, foreign opens, watch findings, the inotify watches of consumers, and
//! the agents' versions.

use serde_json::Value;

use super::Config;
use super::panels::{RATE, consumers, table, target, timeseries, volumes};

pub fn panels(cfg: &Config) -> Vec<Value> {
    let pods = consumers(cfg);
    let job = cfg.select("");
    let last_update = table(
        "Last update per volume",
        "Time since each volume's last atomic update (..data swap), as the agent saw it \
         (the probe's clock when it caught the swap).",
        "s",
        format!(
            "time() - reloadscope_volume_last_update_timestamp_seconds{}",
            volumes(cfg)
        ),
        "Since update",
    );
    let last_reload = table(
        "Last reload per consumer",
        "Time since each consuming container last opened new data of the volume (its last \
         reload).",
        "s",
        format!("time() - reloadscope_consumer_last_reload_timestamp_seconds{pods}"),
        "Since reload",
    );
    let foreign = timeseries(
        "Foreign opens",
        "Opens of volume files that are nobody's reload, by opener: the kubelet's re-reads, \
         host processes, other pods. Counted while some consumer of the volume is stale.",
        "ops",
        vec![target(
            format!("sum by (opener) (rate(reloadscope_foreign_opens_total{job}[{RATE}]))"),
            "{{opener}}",
        )],
    );
    let findings = table(
        "Watch findings",
        "Containers whose inotify watches on a volume will miss its updates, by finding: \
         dont_follow, no_delete_self, not_rewatched, watches_timestamped_dir, \
         pinned_by_subpath, subpath. \
         `reloadscope inspect` on the node gives the fix for each.",
        "short",
        format!(
            "reloadscope_consumer_watch_findings{}",
            cfg.select(r#"namespace=~"$namespace", pod=~"$pod", finding!="ok""#)
        ),
        "Holds",
    );
    let observed = timeseries(
        "inotify watches of consumers",
        "inotify watches held by the processes of containers that consume a volume, per \
         namespace, at the agent's last inventory.",
        "short",
        vec![target(
            format!(
                "sum by (namespace) (reloadscope_inotify_watches_observed{})",
                cfg.select(r#"namespace=~"$namespace""#)
            ),
            "{{namespace}}",
        )],
    );
    let versions = table(
        "Agent versions",
        "How many agents run each version.",
        "short",
        format!("count by (version) (reloadscope_build_info{job})"),
        "Agents",
    );
    vec![
        last_update,
        last_reload,
        foreign,
        findings,
        observed,
        versions,
    ]
}
