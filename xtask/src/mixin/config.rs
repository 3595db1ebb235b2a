//! The mixin's `_config`: what a user sets without editing Rust. `cargo xtask generate`
//! reads it from dashboards/mixin.json (the defaults, [`Config::default`]) or the
//! file `--config` names, keys left out keeping their defaults, then applies the
//! flags on top.

use std::fs;
use std::path::Path;

use anyhow::{Context, Result, bail, ensure};
use serde::{Deserialize, Serialize};
use serde_json::Value;

/// The knobs of the generated rules and dashboard. Durations are Prometheus
/// durations (`15m`, `5s`).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Config {
    /// Label matchers of the agent's scrape job, put in every query.
    pub job_selector: String,
    /// The label that names the cluster of each series in a Prometheus holding many
    /// (Thanos, Mimir: often `cluster`); empty for none. When set, the alerts keep it
    /// in their aggregations and the dashboard gets a `cluster` variable.
    pub cluster_label: String,
    /// Where runbook.md is served; each alert links to its section there
    /// (`<runbook_url>#<alert name in lower case>`).
    pub runbook_url: String,
    /// How long a container must stay stale (not holding the newest update of a
    /// volume) before ReloadscopeConsumerStale fires.
    pub stale_for: String,
    /// How long a container signalled to reload (--reload-signals) may go on without
    /// reading its new data before ReloadscopeSignalledConsumerStale fires.
    pub signalled_stale_for: String,
    /// How long ReloadscopeSubPathVolumeUpdated keeps firing after an update.
    pub subpath_window: String,
    /// How long a watch finding other than `ok` must hold before
    /// ReloadscopeWatchFinding fires.
    pub finding_for: String,
    /// The window over which lost events, detection gaps, descriptor failures and
    /// evicted connections are counted.
    pub counter_window: String,
    /// How long the probe or fanotify must be unloaded before alerting.
    pub not_loaded_for: String,
    /// How long a dir under the kubelet roots must stay unfollowed before
    /// ReloadscopeUnwatchedPaths fires (the agent retries every second).
    pub unwatched_for: String,
    /// How long a propagation must stay pending (past the agent's
    /// --propagation-timeout) before ReloadscopePropagationPending fires.
    pub pending_for: String,
    /// How long an agent must fail to reach the Kubernetes API before
    /// ReloadscopeKubeApiDown fires.
    pub api_down_for: String,
    /// How long one agent must be unreachable before ReloadscopeAgentDown fires.
    pub down_for: String,
    /// How long no agent at all may be up before ReloadscopeAgentAbsent fires.
    pub absent_for: String,
}

impl Default for Config {
    fn default() -> Self {
        let s = |v: &str| v.to_owned();
        Self {
            job_selector: s(r#"job="reloadscope""#),
            cluster_label: s(""),
            // The repository of the image's registry path (ghcr.io/reloadscope/...).
            runbook_url: s(
                "https://github.com/reloadscope/reloadscope/blob/main/dashboards/runbook.md",
            ),
            // Apps that poll their config typically do so every minute or few; ten
            // minutes of old data is past any reasonable reload strategy.
            stale_for: s("10m"),
            // A program asked to reload by a signal does so in seconds.
            signalled_stale_for: s("5m"),
            subpath_window: s("1h"),
            finding_for: s("15m"),
            counter_window: s("10m"),
            not_loaded_for: s("10m"),
            unwatched_for: s("5m"),
            pending_for: s("5m"),
            api_down_for: s("10m"),
            down_for: s("5m"),
            absent_for: s("15m"),
        }
    }
}

impl Config {
    /// The same rules on a lab's time scale, for the end-to-end test: stale after
    /// 5 s (lab updates come every few seconds), windows of a minute, no waiting
    /// for the health alerts, so everything settles within about a minute.
    pub fn short() -> Self {
        let s = |v: &str| v.to_owned();
        Self {
            stale_for: s("5s"),
            signalled_stale_for: s("5s"),
            subpath_window: s("1m"),
            finding_for: s("5s"),
            counter_window: s("1m"),
            not_loaded_for: s("0s"),
            unwatched_for: s("0s"),
            pending_for: s("0s"),
            api_down_for: s("0s"),
            down_for: s("0s"),
            absent_for: s("0s"),
            ..Self::default()
        }
    }

    /// `{selector, extra}` (or `{selector}`): the braces of a selector.
    pub(super) fn select(&self, extra: &str) -> String {
        if extra.is_empty() {
            format!("{{{}}}", self.job_selector)
        } else {
            format!("{{{}, {extra}}}", self.job_selector)
        }
    }

    /// `labels`, with the cluster label first when there is one: for `by` and `on`,
    /// so that series of two clusters are never summed or matched together.
    pub(super) fn by(&self, labels: &str) -> String {
        if self.cluster_label.is_empty() {
            labels.to_owned()
        } else {
            format!("{}, {labels}", self.cluster_label)
        }
    }

    /// Reads a config file: a JSON object of knobs, those left out at their defaults.
    pub fn read(path: &Path) -> Result<Self> {
        let text =
            fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))?;
        let cfg: Self =
            serde_json::from_str(&text).with_context(|| format!("reading {}", path.display()))?;
        cfg.validate()
            .with_context(|| format!("in {}", path.display()))?;
        Ok(cfg)
    }

    /// This config with `key` set to `value` (a knob's name as in the file).
    pub fn with(self, key: &str, value: &str) -> Result<Self> {
        let mut json = serde_json::to_value(&self).expect("a config serializes");
        let Some(slot) = json.get_mut(key) else {
            let known: Vec<&String> = json
                .as_object()
                .into_iter()
                .flat_map(|o| o.keys())
                .collect();
            bail!("no knob {key:?}: the knobs are {known:?}");
        };
        *slot = Value::String(value.to_owned());
        let cfg: Self = serde_json::from_value(json).expect("a string is every knob's type");
        cfg.validate().with_context(|| format!("{key}={value}"))?;
        Ok(cfg)
    }

    /// The file's text for this config: pretty JSON, knobs in declaration order.
    pub fn to_json(&self) -> String {
        let mut text = serde_json::to_string_pretty(self).expect("a config serializes");
        text.push('\n');
        text
    }

    /// Fails on values that would make invalid PromQL, YAML or links.
    fn validate(&self) -> Result<()> {
        ensure!(
            !self.job_selector.trim().is_empty()
                && !self.job_selector.contains(['{', '}'])
                && self.job_selector.contains('='),
            "job_selector must be label matchers without braces, such as job=\"reloadscope\", \
             not {:?}",
            self.job_selector
        );
        let label = &self.cluster_label;
        ensure!(
            label.is_empty()
                || (label.starts_with(|c: char| c.is_ascii_alphabetic() || c == '_')
                    && label.chars().all(|c| c.is_ascii_alphanumeric() || c == '_')),
            "cluster_label must be a label name or empty, not {label:?}"
        );
        ensure!(
            !self.runbook_url.is_empty() && !self.runbook_url.contains(['#', ' ']),
            "runbook_url must be a URL without a fragment, not {:?}",
            self.runbook_url
        );
        for (name, value) in self.durations() {
            ensure!(
                is_duration(value),
                "{name} must be a Prometheus duration such as 10m or 1h30m, not {value:?}"
            );
        }
        Ok(())
    }

    fn durations(&self) -> [(&'static str, &str); 11] {
        [
            ("stale_for", &self.stale_for),
            ("signalled_stale_for", &self.signalled_stale_for),
            ("subpath_window", &self.subpath_window),
            ("finding_for", &self.finding_for),
            ("counter_window", &self.counter_window),
            ("not_loaded_for", &self.not_loaded_for),
            ("unwatched_for", &self.unwatched_for),
            ("pending_for", &self.pending_for),
            ("api_down_for", &self.api_down_for),
            ("down_for", &self.down_for),
            ("absent_for", &self.absent_for),
        ]
    }
}

/// A Prometheus duration: one or more `<digits><unit>`, units ms, s, m, h, d, w, y.
fn is_duration(text: &str) -> bool {
    let mut rest = text;
    if rest.is_empty() {
        return false;
    }
    while !rest.is_empty() {
        let digits = rest.len() - rest.trim_start_matches(|c: char| c.is_ascii_digit()).len();
        if digits == 0 {
            return false;
        }
        rest = &rest[digits..];
        let Some(unit) = ["ms", "s", "m", "h", "d", "w", "y"]
            .into_iter()
            .find(|u| rest.starts_with(u))
        else {
            return false;
        };
        rest = &rest[unit.len()..];
    }
    true
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cmd;

    #[test]
    fn the_shipped_file_holds_the_defaults() {
        let path = cmd::workspace_root().join(super::super::CONFIG_FILE);
        assert_eq!(Config::read(&path).unwrap(), Config::default());
        let text = fs::read_to_string(&path).unwrap();
        assert_eq!(text, Config::default().to_json());
    }

    #[test]
    fn a_file_sets_some_knobs_and_the_rest_keep_their_defaults() {
        let dir = std::env::temp_dir().join(format!("reloadscope-mixin-{}", std::process::id()));
        fs::create_dir_all(&dir).unwrap();
        let file = dir.join("mine.json");
        fs::write(&file, r#"{"cluster_label": "cluster", "stale_for": "30m"}"#).unwrap();
        let cfg = Config::read(&file).unwrap();
        assert_eq!(cfg.cluster_label, "cluster");
        assert_eq!(cfg.stale_for, "30m");
        assert_eq!(cfg.down_for, Config::default().down_for);
        fs::write(&file, r#"{"stale": "30m"}"#).unwrap();
        let err = format!("{:#}", Config::read(&file).unwrap_err());
        assert!(err.contains("unknown field `stale`"), "{err}");
        fs::write(&file, r#"{"stale_for": "30 minutes"}"#).unwrap();
        let err = format!("{:#}", Config::read(&file).unwrap_err());
        assert!(
            err.contains("stale_for must be a Prometheus duration"),
            "{err}"
        );
        fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn with_sets_one_knob_and_refuses_unknown_ones_and_bad_values() {
        let cfg = Config::default().with("absent_for", "1h").unwrap();
        assert_eq!(cfg.absent_for, "1h");
        assert!(Config::default().with("absent", "1h").is_err());
        assert!(
            Config::default()
                .with("job_selector", "{job=\"x\"}")
                .is_err()
        );
        assert!(
            Config::default()
                .with("cluster_label", "k8s-cluster")
                .is_err()
        );
        assert!(
            Config::default()
                .with("runbook_url", "https://x/r.md#a")
                .is_err()
        );
    }

    #[test]
    fn durations_are_prometheus_durations() {
        for good in ["0s", "5m", "1h30m", "250ms", "2w"] {
            assert!(is_duration(good), "{good}");
        }
        for bad in ["", "5", "m", "1.5h", "5 m", "10min"] {
            assert!(!is_duration(bad), "{bad}");
        }
    }

    #[test]
    fn by_puts_the_cluster_label_first_when_there_is_one() {
        let mut cfg = Config::default();
        assert_eq!(cfg.by("instance"), "instance");
        cfg.cluster_label = "cluster".into();
        assert_eq!(cfg.by("instance, reason"), "cluster, instance, reason");
    }
}
