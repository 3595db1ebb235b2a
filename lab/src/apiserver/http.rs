//! The fake API server's HTTP side: paths, verbs, lists, watch streams, Status errors.

use std::sync::Arc;

use axum::{
    body::Body,
    extract::{Request, State},
    http::{Method, StatusCode, header},
    response::Response,
};
use serde_json::{Value, json};

use super::{
    Inner, LAB_TOKEN, RequestRecord,
    request::{Route, json_response, selector, status},
    store::{Resource, StoreError},
};

/// Request bodies larger than this are refused (Events are small).
const MAX_BODY: usize = 1 << 20;

pub(super) async fn handle(State(inner): State<Arc<Inner>>, req: Request) -> Response {
    let (parts, body) = req.into_parts();
    let query = parse_query(parts.uri.query().unwrap_or(""));
    let header = |name| {
        parts
            .headers
            .get(name)
            .and_then(|v| v.to_str().ok())
            .unwrap_or("")
            .to_owned()
    };
    let route = Route::parse(parts.uri.path());
    let record = RequestRecord {
        method: parts.method.to_string(),
        path: parts.uri.path().to_owned(),
        watch: query
            .iter()
            .any(|(k, v)| k == "watch" && (v == "true" || v == "1")),
        query,
        accept: header(header::ACCEPT),
        resource: route.as_ref().map(|r| r.resource),
        status: 0,
    };
    let index = {
        let mut requests = inner.requests.lock().expect("requests lock");
        requests.push(record.clone());
        requests.len() - 1
    };
    // A partition: nothing is answered until it heals.
    let mut held = inner.held.subscribe();
    let _ = held.wait_for(|h| !*h).await;
    let authorized = header(header::AUTHORIZATION) == format!("Bearer {LAB_TOKEN}");
    let response = match route {
        _ if !authorized => status(
            StatusCode::UNAUTHORIZED,
            "Unauthorized",
            "Unauthorized".into(),
        ),
        Some(route) if inner.forbidden(route.resource) => {
            forbidden(&parts.method, &route, record.watch)
        }
        Some(route) => serve(&inner, &parts.method, route, &record, body).await,
        None if parts.uri.path() == "/version" => json_response(
            StatusCode::OK,
            &json!({"major": "1", "minor": "33", "gitVersion": "v1.33.0-reloadscope-lab"}),
        ),
        None => status(
            StatusCode::NOT_FOUND,
            "NotFound",
            "the server could not find the requested resource".into(),
        ),
    };
    if let Some(r) = inner.requests.lock().expect("requests lock").get_mut(index) {
        r.status = response.status().as_u16();
    }
    response
}

impl Inner {
    pub(super) fn forbidden(&self, resource: Resource) -> bool {
        if (self.not_granted.lock().expect("grant lock")).contains(&resource) {
            return true;
        }
        let mut until = self.forbidden_until.lock().expect("forbid lock");
        match *until {
            Some(t) if std::time::Instant::now() < t => true,
            Some(_) => {
                *until = None;
                false
            }
            None => false,
        }
    }
}

async fn serve(
    inner: &Arc<Inner>,
    method: &Method,
    route: Route,
    record: &RequestRecord,
    body: Body,
) -> Response {
    let accept = accept_as(&record.accept);
    match (method, &route.name) {
        (&Method::GET, None) if record.watch => {
            if !matches!(accept, None | Some("PartialObjectMetadata")) {
                return not_acceptable(&record.accept);
            }
            super::watches::watch(inner, route, record, accept.is_some())
        }
        (&Method::GET, None) => {
            if !matches!(accept, None | Some("PartialObjectMetadataList")) {
                return not_acceptable(&record.accept);
            }
            list(inner, route, record, accept.is_some())
        }
        (&Method::GET, Some(name)) => {
            if !matches!(accept, None | Some("PartialObjectMetadata")) {
                return not_acceptable(&record.accept);
            }
            let ns = route.namespace.as_deref().unwrap_or("default");
            let st = inner.state.lock().expect("apiserver state lock");
            match st.store.get(route.resource, ns, name) {
                Some(obj) => json_response(
                    StatusCode::OK,
                    &inner.render(route.resource, obj, accept.is_some(), true),
                ),
                None => store_error(StoreError::NotFound(format!(
                    "{} \"{name}\" not found",
                    route.resource.plural()
                ))),
            }
        }
        (&Method::POST, None) => {
            let Some(ns) = route.namespace.clone() else {
                return status(
                    StatusCode::METHOD_NOT_ALLOWED,
                    "MethodNotAllowed",
                    "create needs a namespace".into(),
                );
            };
            let obj: Value = match axum::body::to_bytes(body, MAX_BODY).await {
                Ok(b) => match serde_json::from_slice(&b) {
                    Ok(v) => v,
                    Err(e) => return status(StatusCode::BAD_REQUEST, "BadRequest", e.to_string()),
                },
                Err(e) => return status(StatusCode::BAD_REQUEST, "BadRequest", e.to_string()),
            };
            create(inner, route.resource, &ns, obj)
        }
        (&Method::DELETE, Some(name)) => {
            let ns = route.namespace.as_deref().unwrap_or("default");
            let mut st = inner.state.lock().expect("apiserver state lock");
            match st.store.delete(route.resource, ns, name) {
                Ok((change, obj)) => {
                    inner.broadcast(&mut st, &change);
                    json_response(
                        StatusCode::OK,
                        &inner.render(route.resource, &obj, false, true),
                    )
                }
                Err(e) => store_error(e),
            }
        }
        _ => status(
            StatusCode::METHOD_NOT_ALLOWED,
            "MethodNotAllowed",
            format!("{method} is not supported by this test server"),
        ),
    }
}

fn list(inner: &Inner, route: Route, record: &RequestRecord, metadata: bool) -> Response {
    let selector = match selector(route.resource, record) {
        Ok(s) => s,
        Err(e) => return status(StatusCode::BAD_REQUEST, "BadRequest", e),
    };
    let st = inner.state.lock().expect("apiserver state lock");
    let items: Vec<Value> = st
        .store
        .list(route.resource, route.namespace.as_deref(), &selector)
        .into_iter()
        .map(|obj| inner.render(route.resource, obj, metadata, metadata))
        .collect();
    let (api_version, kind) = if metadata {
        ("meta.k8s.io/v1", "PartialObjectMetadataList".to_owned())
    } else {
        (
            route.resource.api_version(),
            format!("{}List", route.resource.kind()),
        )
    };
    json_response(
        StatusCode::OK,
        &json!({
            "kind": kind,
            "apiVersion": api_version,
            "metadata": {"resourceVersion": st.store.rv().to_string()},
            "items": items,
        }),
    )
}

fn create(inner: &Inner, resource: Resource, namespace: &str, mut obj: Value) -> Response {
    let in_body = obj["metadata"]["namespace"].as_str().unwrap_or(namespace);
    if in_body != namespace {
        return status(
            StatusCode::BAD_REQUEST,
            "BadRequest",
            "the namespace of the provided object does not match the namespace sent on the request"
                .into(),
        );
    }
    if !obj["metadata"].is_object() {
        obj["metadata"] = json!({});
    }
    obj["metadata"]["namespace"] = namespace.into();
    if resource == Resource::Events
        && let Err(why) = validate_event(&obj)
    {
        return status(
            StatusCode::UNPROCESSABLE_ENTITY,
            "Invalid",
            format!("Event.events.k8s.io is invalid: {}", why.join(", ")),
        );
    }
    if let Some(api_version) = obj["apiVersion"].as_str()
        && api_version != resource.api_version()
    {
        return status(
            StatusCode::BAD_REQUEST,
            "BadRequest",
            format!(
                "apiVersion {api_version} does not match {}",
                resource.api_version()
            ),
        );
    }
    match inner.create(resource, obj, "reloadscope") {
        Ok(obj) => json_response(
            StatusCode::CREATED,
            &inner.render(resource, &obj, false, true),
        ),
        Err(e) => store_error(e),
    }
}

/// The checks of the API server's `events.k8s.io/v1` create validation that a
/// client can get wrong.
fn validate_event(e: &Value) -> Result<(), Vec<String>> {
    let mut why = Vec::new();
    let text = |field: &str| e[field].as_str().unwrap_or("");
    for (field, max) in [
        ("reportingController", 253),
        ("reportingInstance", 128),
        ("action", 128),
        ("reason", 128),
    ] {
        let v = text(field);
        if v.is_empty() {
            why.push(format!("{field}: Required value"));
        } else if v.len() > max {
            why.push(format!("{field}: Too long: may not be longer than {max}"));
        }
    }
    if text("eventTime").is_empty() {
        why.push("eventTime: Required value".into());
    }
    if !matches!(text("type"), "Normal" | "Warning") {
        why.push(format!("type: Unsupported value: {:?}", text("type")));
    }
    if text("note").len() > 1024 {
        why.push("note: Too long: may not be longer than 1024".into());
    }
    if e["metadata"]["name"].as_str().is_none_or(str::is_empty) {
        why.push("metadata.name: Required value".into());
    }
    let ns = e["metadata"]["namespace"].as_str().unwrap_or("");
    match e["regarding"]["namespace"].as_str() {
        Some(r) if r == ns => {}
        _ => why.push("regarding.namespace: Invalid value: does not match event.namespace".into()),
    }
    if why.is_empty() { Ok(()) } else { Err(why) }
}

/// The `as=` parameter of an Accept header (`PartialObjectMetadataList`, `Table`...).
pub(super) fn accept_as(accept: &str) -> Option<&str> {
    accept
        .split(',')
        .next()?
        .split(';')
        .map(str::trim)
        .find_map(|p| p.strip_prefix("as="))
}

fn not_acceptable(accept: &str) -> Response {
    status(
        StatusCode::NOT_ACCEPTABLE,
        "NotAcceptable",
        format!(
            "only the following media types are accepted: application/json, not {accept:?} here"
        ),
    )
}

fn forbidden(method: &Method, route: &Route, watch: bool) -> Response {
    let verb = match (method, &route.name) {
        (&Method::GET, None) if watch => "watch",
        (&Method::GET, None) => "list",
        (&Method::GET, Some(_)) => "get",
        (&Method::POST, _) => "create",
        (&Method::DELETE, _) => "delete",
        _ => "update",
    };
    let plural = route.resource.plural();
    let group = route
        .resource
        .api_version()
        .rsplit_once('/')
        .map_or("", |(g, _)| g);
    let scope = match &route.namespace {
        Some(ns) => format!("in the namespace \"{ns}\""),
        None => "at the cluster scope".into(),
    };
    status(
        StatusCode::FORBIDDEN,
        "Forbidden",
        format!(
            "{plural} is forbidden: User \"system:serviceaccount:reloadscope:reloadscope\" \
             cannot {verb} resource \"{plural}\" in API group \"{group}\" {scope}"
        ),
    )
}

fn store_error(e: StoreError) -> Response {
    match e {
        StoreError::Invalid(m) => status(StatusCode::UNPROCESSABLE_ENTITY, "Invalid", m),
        StoreError::NotFound(m) => status(StatusCode::NOT_FOUND, "NotFound", m),
        StoreError::AlreadyExists(m) => status(StatusCode::CONFLICT, "AlreadyExists", m),
    }
}

/// `a=1&b=x%3Dy` to pairs, percent- and `+`-decoded.
fn parse_query(q: &str) -> Vec<(String, String)> {
    q.split('&')
        .filter(|p| !p.is_empty())
        .map(|p| {
            let (k, v) = p.split_once('=').unwrap_or((p, ""));
            (decode(k), decode(v))
        })
        .collect()
}

fn decode(s: &str) -> String {
    let hex = |c: u8| (c as char).to_digit(16).map(|d| d as u8);
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        match b[i] {
            b'+' => out.push(b' '),
            b'%' if i + 2 < b.len() => match (hex(b[i + 1]), hex(b[i + 2])) {
                (Some(h), Some(l)) => {
                    out.push(h << 4 | l);
                    i += 2;
                }
                _ => out.push(b'%'),
            },
            c => out.push(c),
        }
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn queries_decode_as_sent() {
        assert_eq!(
            parse_query("fieldSelector=spec.nodeName%3Dlab-node&watch=true&x=a+b&bad=%zz&end=%4"),
            [
                ("fieldSelector".into(), "spec.nodeName=lab-node".into()),
                ("watch".into(), "true".into()),
                ("x".into(), "a b".into()),
                ("bad".into(), "%zz".into()),
                ("end".into(), "%4".into()),
            ]
        );
    }

    #[test]
    fn accept_names_the_metadata_forms() {
        assert_eq!(
            accept_as("application/json;as=PartialObjectMetadataList;g=meta.k8s.io;v=v1"),
            Some("PartialObjectMetadataList")
        );
        assert_eq!(
            accept_as("application/json;as=PartialObjectMetadata;g=meta.k8s.io;v=v1"),
            Some("PartialObjectMetadata")
        );
        assert_eq!(accept_as("application/json"), None);
    }

    #[test]
    fn paths_name_resources() {
        let r = Route::parse("/api/v1/namespaces/shop/configmaps/app").unwrap();
        assert_eq!(
            (r.resource, r.namespace.as_deref(), r.name.as_deref()),
            (Resource::ConfigMaps, Some("shop"), Some("app"))
        );
        let r = Route::parse("/apis/events.k8s.io/v1/namespaces/shop/events").unwrap();
        assert_eq!(r.resource, Resource::Events);
        assert!(Route::parse("/api/v1/nodes").is_none());
        assert!(Route::parse("/apis/apps/v1/namespaces/x/pods").is_none());
    }
}
