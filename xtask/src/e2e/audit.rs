//! The API server's audit log, read for what the agent asked of Secrets: it must
//! only ever have listed and watched their metadata (`PartialObjectMetadata`),
//! never got a Secret or received its data.

use std::fs;
use std::path::Path;

use anyhow::{Context, Result, ensure};
use serde_json::Value;

/// The agent's service account, as deploy/ names it.
pub const AGENT_USER: &str = "system:serviceaccount:reloadscope:reloadscope";

/// Checks every request of the agent on Secrets in the audit log at `path`; returns
/// how many there were (at least one: the agent does watch Secrets' metadata).
pub fn agent_secret_requests(path: &Path) -> Result<usize> {
    let text =
        fs::read_to_string(path).with_context(|| format!("could not read {}", path.display()))?;
    let mut seen = 0;
    for line in text.lines() {
        let event: Value =
            serde_json::from_str(line).with_context(|| format!("not JSON: {line}"))?;
        if let Some(problem) = secret_data_requested(&event) {
            anyhow::bail!("the agent asked for Secret data: {problem}\n{line}");
        }
        if is_agents_secret_request(&event) {
            seen += 1;
        }
    }
    ensure!(
        seen > 0,
        "no request of {AGENT_USER} on Secrets in the audit log"
    );
    Ok(seen)
}

fn is_agents_secret_request(event: &Value) -> bool {
    event["user"]["username"] == AGENT_USER && event["objectRef"]["resource"] == "secrets"
}

/// What is wrong with one audit event of the agent on Secrets: a verb other than
/// list or watch, or a response holding Secret objects rather than their metadata.
fn secret_data_requested(event: &Value) -> Option<String> {
    if !is_agents_secret_request(event) {
        return None;
    }
    let verb = event["verb"].as_str().unwrap_or_default();
    if verb != "list" && verb != "watch" {
        return Some(format!("verb {verb}"));
    }
    // A list's response is logged whole (the policy asks for RequestResponse); a
    // watch's stream is not logged, and its Accept header is the list's.
    match event["responseObject"]["kind"].as_str() {
        None | Some("PartialObjectMetadataList" | "Status") => None,
        Some(kind) => Some(format!("a {verb} answered with {kind}")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn event(verb: &str, kind: Option<&str>) -> Value {
        let mut e = serde_json::json!({
            "verb": verb,
            "user": {"username": AGENT_USER},
            "objectRef": {"resource": "secrets"},
        });
        if let Some(kind) = kind {
            e["responseObject"] = serde_json::json!({"kind": kind});
        }
        e
    }

    #[test]
    fn metadata_lists_and_watches_pass_and_data_fails() {
        assert_eq!(
            secret_data_requested(&event("list", Some("PartialObjectMetadataList"))),
            None
        );
        assert_eq!(secret_data_requested(&event("watch", None)), None);
        assert!(secret_data_requested(&event("list", Some("SecretList"))).is_some());
        assert!(secret_data_requested(&event("get", None)).is_some());
        let mut other = event("get", Some("Secret"));
        other["user"]["username"] = "admin".into();
        assert_eq!(
            secret_data_requested(&other),
            None,
            "only the agent's requests count"
        );
    }
}
