//! What the fake API server's handlers share: a request's route and field selector, and
//! its answers as JSON (`Status` errors included).

use axum::{
    http::{StatusCode, header},
    response::{IntoResponse, Response},
};
use serde_json::{Value, json};

use super::{
    RequestRecord,
    store::{Resource, Selector},
};

/// `/api/v1/[namespaces/<ns>/]<plural>[/<name>]`, or the same under `/apis/<g>/<v>`.
pub(super) struct Route {
    pub resource: Resource,
    pub namespace: Option<String>,
    pub name: Option<String>,
}

impl Route {
    pub(super) fn parse(path: &str) -> Option<Route> {
        let parts: Vec<&str> = path.trim_matches('/').split('/').collect();
        let (group_version, rest) = match parts.as_slice() {
            ["api", "v1", rest @ ..] => ("v1".to_owned(), rest),
            ["apis", group, version, rest @ ..] => (format!("{group}/{version}"), rest),
            _ => return None,
        };
        let (namespace, plural, name) = match rest {
            [plural] => (None, *plural, None),
            ["namespaces", ns, plural] => (Some(*ns), *plural, None),
            ["namespaces", ns, plural, name] => (Some(*ns), *plural, Some(*name)),
            _ => return None,
        };
        Some(Route {
            resource: Resource::from_path(&group_version, plural)?,
            namespace: namespace.map(str::to_owned),
            name: name.map(str::to_owned),
        })
    }
}

/// The request's field selector; the error is a 400's message.
pub(super) fn selector(resource: Resource, record: &RequestRecord) -> Result<Selector, String> {
    if record.param("labelSelector").is_some_and(|s| !s.is_empty()) {
        return Err("labelSelector is not supported by this test server".into());
    }
    Selector::parse(resource, record.param("fieldSelector").unwrap_or(""))
}

/// A `Status` failure, as the API server answers errors.
pub(super) fn status(code: StatusCode, reason: &str, message: String) -> Response {
    json_response(
        code,
        &json!({
            "kind": "Status",
            "apiVersion": "v1",
            "metadata": {},
            "status": "Failure",
            "message": message,
            "reason": reason,
            "code": code.as_u16(),
        }),
    )
}

pub(super) fn json_response(code: StatusCode, v: &Value) -> Response {
    (
        code,
        [(header::CONTENT_TYPE, "application/json")],
        serde_json::to_vec(v).expect("JSON values serialize"),
    )
        .into_response()
}
