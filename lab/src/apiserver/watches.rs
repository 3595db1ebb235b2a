//! Watch requests: the history replayed from the asked resourceVersion (or 410 Gone),
//! then live events, as newline-delimited JSON until `timeoutSeconds`.

use std::{
    sync::{Arc, atomic::Ordering::SeqCst},
    time::{Duration, SystemTime},
};

use axum::{
    body::{Body, Bytes},
    http::{StatusCode, header},
    response::Response,
};
use serde_json::{Value, json};
use tokio::sync::mpsc;

use super::{
    Frame, Inner, RequestRecord, SentEvent, Watch,
    request::{Route, selector, status},
    store::{Change, ChangeKind},
};

/// What a watch runs for without `timeoutSeconds` (the API server picks 30-60 min).
const DEFAULT_WATCH_TIMEOUT: Duration = Duration::from_secs(1800);

pub(super) fn watch(
    inner: &Arc<Inner>,
    route: Route,
    record: &RequestRecord,
    metadata: bool,
) -> Response {
    let selector = match selector(route.resource, record) {
        Ok(s) => s,
        Err(e) => return status(StatusCode::BAD_REQUEST, "BadRequest", e),
    };
    if record.param("sendInitialEvents") == Some("true") {
        return status(
            StatusCode::BAD_REQUEST,
            "BadRequest",
            "sendInitialEvents (streaming lists) is not supported by this test server".into(),
        );
    }
    let timeout = record
        .param("timeoutSeconds")
        .and_then(|t| t.parse().ok())
        .map_or(DEFAULT_WATCH_TIMEOUT, Duration::from_secs);
    let rv = record.param("resourceVersion").unwrap_or("");
    let from = match rv {
        "" | "0" => None,
        rv => match rv.parse::<u64>() {
            Ok(n) => Some(n),
            Err(_) => {
                return status(
                    StatusCode::BAD_REQUEST,
                    "BadRequest",
                    format!("invalid resource version: {rv:?}"),
                );
            }
        },
    };
    let (tx, rx) = mpsc::unbounded_channel();
    let mut st = inner.state.lock().expect("apiserver state lock");
    st.next_watch += 1;
    let w = Watch {
        id: st.next_watch,
        resource: route.resource,
        namespace: route.namespace,
        selector,
        metadata,
        bookmarks: record.param("allowWatchBookmarks") == Some("true"),
        tx,
    };
    match from {
        // From "any": the current objects first, as ADDED.
        None => {
            for obj in st
                .store
                .list(w.resource, w.namespace.as_deref(), &w.selector)
            {
                let object = inner.render(w.resource, obj, w.metadata, true);
                let _ = w.tx.send(frame(&w, "ADDED", &object));
            }
        }
        Some(from) => match st.store.changes_after(w.resource, from) {
            Some(changes) => {
                for change in changes {
                    if let Some((event, obj)) = watch_event(&w, change) {
                        let object = inner.render(w.resource, obj, w.metadata, true);
                        let _ = w.tx.send(frame(&w, event, &object));
                    }
                }
            }
            None => {
                let gone = json!({
                    "kind": "Status",
                    "apiVersion": "v1",
                    "metadata": {},
                    "status": "Failure",
                    "message": format!("too old resource version: {from} ({})", st.store.compacted()),
                    "reason": "Expired",
                    "code": 410,
                });
                inner.gone.fetch_add(1, SeqCst);
                let _ = w.tx.send(frame(&w, "ERROR", &gone));
                let _ = w.tx.send(Frame::End);
            }
        },
    }
    st.watches.push(w);
    drop(st);
    let deadline = tokio::time::Instant::now() + timeout;
    let inner = inner.clone();
    let stream = futures_util::stream::unfold((rx, inner), move |(mut rx, inner)| async move {
        let frame = tokio::select! {
            f = rx.recv() => f,
            _ = tokio::time::sleep_until(deadline) => None,
        };
        match frame? {
            Frame::Event(line, mut sent) => {
                sent.at = SystemTime::now();
                inner.sent.lock().expect("sent lock").push(sent);
                Some((Ok(Bytes::from(line)), (rx, inner)))
            }
            Frame::Drop => Some((
                Err(std::io::Error::new(
                    std::io::ErrorKind::ConnectionAborted,
                    "watch dropped by the test",
                )),
                (rx, inner),
            )),
            Frame::End => None,
        }
    });
    Response::builder()
        .status(StatusCode::OK)
        .header(header::CONTENT_TYPE, "application/json")
        .body(Body::from_stream(stream))
        .expect("a valid response")
}

/// What a watch of `w` sees of `change`: an object entering the selection is ADDED,
/// one leaving it DELETED; None when it concerns the watch not at all.
pub(super) fn watch_event<'a>(w: &Watch, change: &'a Change) -> Option<(&'static str, &'a Value)> {
    let ns = change.new["metadata"]["namespace"].as_str().unwrap_or("");
    if w.namespace.as_deref().is_some_and(|want| want != ns) {
        return None;
    }
    let was = change.old.as_ref().is_some_and(|o| w.selector.matches(o));
    let is = w.selector.matches(&change.new);
    let event = match (change.kind, was, is) {
        (ChangeKind::Added, _, true) => "ADDED",
        (ChangeKind::Modified, true, true) => "MODIFIED",
        (ChangeKind::Modified, false, true) => "ADDED",
        (ChangeKind::Modified, true, false) => "DELETED",
        (ChangeKind::Deleted, true, _) => "DELETED",
        _ => return None,
    };
    Some((event, &change.new))
}

/// One watch event line for `w`.
pub(super) fn frame(w: &Watch, event: &'static str, object: &Value) -> Frame {
    let mut line = serde_json::to_string(&json!({"type": event, "object": object}))
        .expect("JSON values serialize");
    line.push('\n');
    let sent = SentEvent {
        watch: w.id,
        resource: w.resource,
        event,
        namespace: object["metadata"]["namespace"]
            .as_str()
            .unwrap_or("")
            .to_owned(),
        name: object["metadata"]["name"].as_str().unwrap_or("").to_owned(),
        resource_version: (object["metadata"]["resourceVersion"].as_str())
            .unwrap_or("")
            .to_owned(),
        metadata_only: w.metadata,
        at: SystemTime::UNIX_EPOCH,
    };
    Frame::Event(line, sent)
}
