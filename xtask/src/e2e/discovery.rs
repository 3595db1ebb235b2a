//! Service discovery of the agent's pods for the real-node test's Prometheus.
//!
//! Debian's Prometheus is built without `kubernetes_sd_configs` (its packaging
//! removed Kubernetes discovery for the client library's dependencies), so the test
//! serves Prometheus' HTTP discovery (`http_sd_configs`) itself: at each refresh it
//! lists the pods of a namespace through the real API and answers one target per
//! container port, labelled with the `__meta_kubernetes_pod_*` names
//! `kubernetes_sd_configs` gives (role `pod`), so the relabelling is the one a
//! Kubernetes-discovering Prometheus would use.

use std::io::{BufRead, BufReader, Write};
use std::net::TcpListener;

use anyhow::Result;
use serde_json::{Map, Value, json};

use crate::cluster::{self, Layout};

/// Serves the discovery on a loopback port, on a thread of its own that lives as
/// long as the process; returns the URL.
pub fn serve(layout: &Layout, namespace: &'static str) -> Result<String> {
    let listener = TcpListener::bind("127.0.0.1:0")?;
    let url = format!("http://{}/targets", listener.local_addr()?);
    let layout = layout.clone();
    std::thread::spawn(move || {
        for stream in listener.incoming().flatten() {
            let mut reader = BufReader::new(&stream);
            // The request line and headers; the answer does not depend on them.
            let mut line = String::new();
            while reader.read_line(&mut line).is_ok_and(|n| n > 2) {
                line.clear();
            }
            let body = cluster::kubectl(&layout, &["-n", namespace, "get", "pods", "-o", "json"])
                .ok()
                .and_then(|pods| serde_json::from_str(&pods).ok())
                .map_or_else(|| "[]".to_owned(), |pods| target_groups(&pods).to_string());
            let _ = write!(
                &stream,
                "HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\
                 Connection: close\r\n\r\n{body}",
                body.len()
            );
        }
    });
    Ok(url)
}

/// One target group per container port of each running pod with an IP, from a
/// `kubectl get pods -o json` list.
fn target_groups(pods: &Value) -> Value {
    let mut groups = Vec::new();
    for pod in pods["items"].as_array().into_iter().flatten() {
        let Some(ip) = pod["status"]["podIP"].as_str() else {
            continue;
        };
        let mut pod_labels = Map::new();
        let meta = &pod["metadata"];
        pod_labels.insert(
            "__meta_kubernetes_namespace".into(),
            meta["namespace"].clone(),
        );
        pod_labels.insert("__meta_kubernetes_pod_name".into(), meta["name"].clone());
        pod_labels.insert("__meta_kubernetes_pod_ip".into(), json!(ip));
        pod_labels.insert(
            "__meta_kubernetes_pod_node_name".into(),
            pod["spec"]["nodeName"].clone(),
        );
        for (k, v) in meta["labels"].as_object().into_iter().flatten() {
            pod_labels.insert(
                format!("__meta_kubernetes_pod_label_{}", sanitize(k)),
                v.clone(),
            );
        }
        for container in pod["spec"]["containers"].as_array().into_iter().flatten() {
            for port in container["ports"].as_array().into_iter().flatten() {
                let mut labels = pod_labels.clone();
                labels.insert(
                    "__meta_kubernetes_pod_container_name".into(),
                    container["name"].clone(),
                );
                labels.insert(
                    "__meta_kubernetes_pod_container_port_name".into(),
                    port["name"].clone(),
                );
                labels.insert(
                    "__meta_kubernetes_pod_container_port_number".into(),
                    json!(port["containerPort"].to_string()),
                );
                groups.push(json!({
                    "targets": [format!("{ip}:{}", port["containerPort"])],
                    "labels": labels,
                }));
            }
        }
    }
    Value::Array(groups)
}

/// A Kubernetes label name as a Prometheus label name part.
fn sanitize(name: &str) -> String {
    name.chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || c == '_' {
                c
            } else {
                '_'
            }
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn each_port_of_each_pod_with_an_ip_is_a_target() {
        let pods = json!({"items": [
            {
                "metadata": {"name": "reloadscope-x", "namespace": "reloadscope",
                             "labels": {"app.kubernetes.io/name": "reloadscope"}},
                "spec": {"nodeName": "localhost", "containers": [
                    {"name": "agent", "ports": [{"name": "metrics", "containerPort": 9741}]}
                ]},
                "status": {"podIP": "10.217.0.2"}
            },
            {
                "metadata": {"name": "pending", "namespace": "reloadscope"},
                "spec": {"containers": [{"name": "agent", "ports": [{"containerPort": 1}]}]},
                "status": {}
            }
        ]});
        let groups = target_groups(&pods);
        assert_eq!(groups.as_array().unwrap().len(), 1);
        let g = &groups[0];
        assert_eq!(g["targets"], json!(["10.217.0.2:9741"]));
        let l = &g["labels"];
        assert_eq!(
            l["__meta_kubernetes_pod_label_app_kubernetes_io_name"],
            "reloadscope"
        );
        assert_eq!(l["__meta_kubernetes_pod_container_port_name"], "metrics");
        assert_eq!(l["__meta_kubernetes_pod_container_port_number"], "9741");
        assert_eq!(l["__meta_kubernetes_pod_name"], "reloadscope-x");
    }
}
