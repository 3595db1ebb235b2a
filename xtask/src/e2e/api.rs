//! Plain HTTP GETs to a server on loopback: the agent's /metrics and Prometheus'
//! HTTP API. Errors are strings saying what came back, for the waits' messages.

use std::collections::BTreeMap;
use std::time::Duration;

use serde_json::Value;

/// Series of an instant query: labels and value.
pub type Series = Vec<(BTreeMap<String, String>, f64)>;

pub struct Api {
    http: ureq::Agent,
    base: String,
}

impl Api {
    /// A client of `http://{addr}`; no proxy (loopback), 5 s per request.
    pub fn new(addr: &str) -> Self {
        let config = ureq::Agent::config_builder()
            .http_status_as_error(false)
            .proxy(None)
            .timeout_global(Some(Duration::from_secs(5)))
            .build();
        Self {
            http: ureq::Agent::new_with_config(config),
            base: format!("http://{addr}"),
        }
    }

    /// The body of a 200 response to `GET path?query`.
    pub fn get(&self, path: &str, query: &[(&str, &str)]) -> Result<String, String> {
        let url = format!("{}{path}", self.base);
        let mut response = query
            .iter()
            .fold(self.http.get(&url), |r, (k, v)| r.query(*k, *v))
            .call()
            .map_err(|e| format!("GET {url}: {e}"))?;
        let status = response.status();
        let body = response
            .body_mut()
            .read_to_string()
            .map_err(|e| format!("GET {url}: {e}"))?;
        if status == 200 {
            Ok(body)
        } else {
            Err(format!("GET {url}: {status}: {body}"))
        }
    }

    /// Prometheus: an instant query's series and values.
    pub fn query(&self, expr: &str) -> Result<Series, String> {
        let body = self.get("/api/v1/query", &[("query", expr)])?;
        let v: Value = serde_json::from_str(&body).map_err(|e| format!("{e}: {body}"))?;
        if v["status"] != "success" {
            return Err(format!("query failed: {body}"));
        }
        let series = v["data"]["result"]
            .as_array()
            .into_iter()
            .flatten()
            .map(|s| {
                let labels = serde_json::from_value(s["metric"].clone()).unwrap_or_default();
                let value = s["value"][1].as_str().and_then(|x| x.parse().ok());
                (labels, value.unwrap_or(f64::NAN))
            });
        Ok(series.collect())
    }

    /// Prometheus: (alertname, container) of every firing alert.
    pub fn firing(&self) -> Result<Vec<(String, String)>, String> {
        let body = self.get("/api/v1/alerts", &[])?;
        let v: Value = serde_json::from_str(&body).map_err(|e| format!("{e}: {body}"))?;
        let alerts = v["data"]["alerts"].as_array().into_iter().flatten();
        Ok(alerts
            .filter(|a| a["state"] == "firing")
            .map(|a| {
                let label = |l: &str| a["labels"][l].as_str().unwrap_or_default().to_owned();
                (label("alertname"), label("container"))
            })
            .collect())
    }
}

/// Ok when at least one series has a finite value.
pub fn non_empty(series: Series) -> Result<(), String> {
    if series.iter().any(|(_, v)| v.is_finite()) {
        Ok(())
    } else {
        Err(format!("no data (series: {series:?})"))
    }
}
