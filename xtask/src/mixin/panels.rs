//! Building blocks of Grafana panels: JSON values with the fields every panel of
//! the dashboard shares (data source variable, description, unit, refIds), the grid
//! that places them, and the queries read back from a dashboard.

use serde_json::{Value, json};

use super::Config;

pub fn ds() -> Value {
    json!({"type": "prometheus", "uid": "${datasource}"})
}

/// A dashboard variable: a multi-value list of `label`'s values on `series`, with "All" as `.*`.
pub fn variable(label: &str, series: &str) -> Value {
    let query = format!("label_values({series}, {label})");
    json!({
        "name": label, "label": label, "type": "query", "datasource": ds(),
        "query": {"query": query, "refId": label}, "definition": query,
        "includeAll": true, "multi": true, "allValue": ".*", "current": {},
        "refresh": 2, "sort": 1, "hide": 0, "regex": "",
    })
}

pub trait With {
    fn with(self, key: &str, value: Value) -> Self;
}

impl With for Value {
    fn with(mut self, key: &str, value: Value) -> Self {
        self[key] = value;
        self
    }
}

pub fn target(expr: String, legend: &str) -> Value {
    json!({"datasource": ds(), "expr": expr, "legendFormat": legend, "range": true})
}

pub fn panel(
    kind: &str,
    title: &str,
    description: &str,
    unit: &str,
    mut targets: Vec<Value>,
) -> Value {
    for (i, t) in targets.iter_mut().enumerate() {
        t["refId"] = json!(char::from(b'A' + i as u8).to_string());
    }
    json!({
        "type": kind, "title": title, "description": description, "datasource": ds(),
        "targets": targets, "fieldConfig": {"defaults": {"unit": unit}, "overrides": []},
    })
}

pub fn timeseries(title: &str, description: &str, unit: &str, targets: Vec<Value>) -> Value {
    panel("timeseries", title, description, unit, targets)
        .with(
            "fieldConfig",
            json!({
                "defaults": {"unit": unit, "custom": {"fillOpacity": 10, "showPoints": "never"}},
                "overrides": [],
            }),
        )
        .with(
            "options",
            json!({
                "legend": {"displayMode": "list", "placement": "bottom", "showLegend": true},
                "tooltip": {"mode": "multi", "sort": "desc"},
            }),
        )
}

/// An instant table of `expr`'s series, its value column named `value` and sorted
/// on, highest first.
pub fn table(title: &str, description: &str, unit: &str, expr: String, value: &str) -> Value {
    let t = target(expr, "")
        .with("instant", json!(true))
        .with("range", json!(false))
        .with("format", json!("table"));
    panel("table", title, description, unit, vec![t])
        .with(
            "transformations",
            json!([{"id": "organize", "options": {
                "excludeByName": {"Time": true, "__name__": true, "job": true, "mount": true},
                "renameByName": {"Value": value, "instance": "agent"},
            }}]),
        )
        .with(
            "options",
            json!({
                "showHeader": true, "cellHeight": "sm",
                "sortBy": [{"displayName": value, "desc": true}],
            }),
        )
}

/// Panels laid out left to right in rows 24 units wide, with ids in order.
#[derive(Default)]
pub struct Grid {
    x: u32,
    y: u32,
    row_height: u32,
    id: u32,
}

impl Grid {
    pub fn place(&mut self, w: u32, h: u32, panel: Value) -> Value {
        if self.x + w > 24 {
            (self.x, self.y, self.row_height) = (0, self.y + self.row_height, 0);
        }
        self.id += 1;
        let panel = panel
            .with("id", json!(self.id))
            .with("gridPos", json!({"x": self.x, "y": self.y, "w": w, "h": h}));
        self.x += w;
        self.row_height = self.row_height.max(h);
        panel
    }

    pub fn row(&mut self, title: &str) -> Value {
        self.x = 24; // a row starts on a line of its own, and so does what follows
        let row = json!({"type": "row", "title": title, "collapsed": false, "panels": []});
        let row = self.place(24, 1, row);
        self.x = 24;
        row
    }
}

/// One query the dashboard runs: a panel's target, or a variable's (as the PromQL
/// `group by (label) (series)` that has the values `label_values` lists).
#[derive(Debug)]
pub struct Query {
    pub panel: String,
    pub expr: String,
    /// Labels the legend names (`{{label}}`).
    pub legend: Vec<String>,
}

/// Every query of `dashboard`, variables first.
pub fn queries(dashboard: &Value) -> Vec<Query> {
    let mut out = Vec::new();
    for var in dashboard["templating"]["list"]
        .as_array()
        .into_iter()
        .flatten()
    {
        let Some(def) = var["definition"].as_str() else {
            continue;
        };
        let inner = def
            .trim_start_matches("label_values(")
            .trim_end_matches(')');
        let (series, label) = inner.rsplit_once(',').expect("label_values(series, label)");
        out.push(Query {
            panel: format!("variable {}", var["name"].as_str().unwrap_or_default()),
            expr: format!("group by ({}) ({series})", label.trim()),
            legend: Vec::new(),
        });
    }
    for panel in dashboard["panels"].as_array().into_iter().flatten() {
        for t in panel["targets"].as_array().into_iter().flatten() {
            let legend = t["legendFormat"].as_str().unwrap_or_default();
            out.push(Query {
                panel: format!(
                    "{} ({})",
                    panel["title"].as_str().unwrap_or_default(),
                    t["refId"].as_str().unwrap_or_default()
                ),
                expr: t["expr"].as_str().unwrap_or_default().to_owned(),
                legend: legend
                    .split("{{")
                    .skip(1)
                    .filter_map(|s| s.split_once("}}"))
                    .map(|(l, _)| l.trim().to_owned())
                    .collect(),
            });
        }
    }
    out
}

pub(super) const RATE: &str = "$__rate_interval";

/// The selector of the chosen namespaces and pods.
pub(super) fn pods(cfg: &Config) -> String {
    cfg.select(r#"namespace=~"$namespace", pod=~"$pod""#)
}

/// The selector of the chosen workloads: the latency histogram's, which by default
/// keeps no pod label (a workload's replicas share it).
pub(super) fn workloads(cfg: &Config) -> String {
    cfg.select(r#"namespace=~"$namespace", workload=~"$workload""#)
}

/// The selector of the chosen consumers: namespaces, workloads and pods.
pub(super) fn consumers(cfg: &Config) -> String {
    cfg.select(r#"namespace=~"$namespace", workload=~"$workload", pod=~"$pod""#)
}

/// The selector of the chosen volumes: namespaces, pods and sources.
pub(super) fn volumes(cfg: &Config) -> String {
    cfg.select(r#"namespace=~"$namespace", pod=~"$pod", source_name=~"$source_name""#)
}

/// A heatmap of a histogram's buckets: `buckets` is `<name>_bucket{..}[range]`.
pub(super) fn heatmap(title: &str, description: &str, buckets: &str) -> Value {
    panel(
        "heatmap",
        title,
        description,
        "short",
        vec![
            target(format!("sum by (le) (increase({buckets}))"), "{{le}}")
                .with("format", json!("heatmap")),
        ],
    )
    .with(
        "options",
        json!({
            "calculate": false,
            "yAxis": {"unit": "s", "axisPlacement": "left"},
            "rowsFrame": {"layout": "auto"},
            "color": {"mode": "scheme", "scheme": "Oranges", "scale": "exponential",
                      "exponent": 0.5, "steps": 64},
            "cellGap": 1,
            "tooltip": {"mode": "single", "yHistogram": true},
            "legend": {"show": true},
        }),
    )
}

/// p50 and p99 of a histogram in seconds: `buckets` as for [`heatmap`].
pub(super) fn percentiles(title: &str, description: &str, buckets: &str) -> Value {
    let quantile = |q: &str, name: &str| {
        target(
            format!("histogram_quantile({q}, sum by (le) (rate({buckets})))"),
            name,
        )
    };
    timeseries(
        title,
        description,
        "s",
        vec![quantile("0.5", "p50"), quantile("0.99", "p99")],
    )
}
