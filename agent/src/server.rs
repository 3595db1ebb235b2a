//! HTTP: /metrics (Prometheus text format), /healthz (the state loop turns), /readyz
//! (the first walk of every root is done, and every path under the roots is followed).
//!
//! The server is on the agent's own descriptors and CPU, so no client can hold it:
//! a connection must send a request's headers within [`HEADER_TIMEOUT`] of opening
//! or of its last answer (an idle keep-alive connection is closed then), takes at most
//! [`MAX_HEADER_BYTES`] of headers and no body, and lives at most [`MAX_LIFETIME`]
//! (then closed after its answer, or [`CLOSE_GRACE`] later, a reader that stopped
//! reading included). At most [`max_connections`] are open: one more closes the
//! oldest that is not being answered (`reloadscope_http_connections_evicted_total`),
//! so a scrape is answered whatever other clients hold. Failed accepts for want of
//! descriptors are counted and retried.

use std::{
    collections::BTreeMap,
    net::SocketAddr,
    sync::{
        Arc, Mutex,
        atomic::{AtomicBool, Ordering::Relaxed},
    },
    time::Duration,
};

use axum::{
    Router,
    body::Body,
    extract::State,
    http::{Request, Response, StatusCode, header},
    response::IntoResponse,
    routing::get,
};
use hyper_util::rt::{TokioIo, TokioTimer};
use tokio::sync::Notify;
use tower::ServiceExt;
use tracing::{debug, info, warn};

use crate::{clock::monotonic_ms, memory, metrics::Exporter, state::Shared};

/// The state loop ticks every 250 ms; silent this long means it is stuck.
const STUCK_AFTER: Duration = Duration::from_secs(10);
/// A request's headers must arrive within this of the connection's opening or of the
/// previous answer; an idle connection is closed then.
pub const HEADER_TIMEOUT: Duration = Duration::from_secs(5);
/// The read buffer, and so the largest request head (hyper's smallest allowed).
pub const MAX_HEADER_BYTES: usize = 8192;
/// A connection is closed after its answer in progress once it is this old.
pub const MAX_LIFETIME: Duration = Duration::from_secs(60);
/// How long an answer may still take once a connection must close.
pub const CLOSE_GRACE: Duration = Duration::from_secs(10);
/// The cap on open connections, whatever the descriptor limit.
const CONNECTIONS_CAP: usize = 1024;
/// How long accepting pauses after it failed for want of descriptors.
const ACCEPT_BACKOFF: Duration = Duration::from_millis(50);

/// Open connections allowed: [`CONNECTIONS_CAP`], or a quarter of the descriptor limit
/// `nofile` when that is less, so that they never take the descriptors the watches and
/// scans need.
pub fn max_connections(nofile: u64) -> usize {
    (nofile / 4).clamp(1, CONNECTIONS_CAP as u64) as usize
}

#[derive(Clone)]
struct App {
    exporter: Arc<Exporter>,
    shared: Arc<Shared>,
}

async fn metrics(State(app): State<App>) -> impl IntoResponse {
    // Tens of ms of CPU on a big node: off the runtime's workers.
    match tokio::task::spawn_blocking(move || render(&app.exporter)).await {
        Ok(Ok(body)) => ([(header::CONTENT_TYPE, prometheus::TEXT_FORMAT)], body).into_response(),
        Ok(Err(e)) => (
            StatusCode::INTERNAL_SERVER_ERROR,
            format!("encoding metrics: {e}\n"),
        )
            .into_response(),
        Err(e) => (
            StatusCode::INTERNAL_SERVER_ERROR,
            format!("gathering metrics: {e}\n"),
        )
            .into_response(),
    }
}

/// Renders every family, then hands the memory that took back to the kernel
/// ([`memory::release`]).
fn render(exporter: &Exporter) -> prometheus::Result<String> {
    let body = exporter.render();
    memory::release();
    body
}

async fn healthz(State(app): State<App>) -> (StatusCode, &'static str) {
    let age = monotonic_ms().saturating_sub(app.shared.heartbeat_ms.load(Relaxed));
    if age <= STUCK_AFTER.as_millis() as u64 {
        (StatusCode::OK, "ok\n")
    } else {
        (StatusCode::SERVICE_UNAVAILABLE, "state loop stuck\n")
    }
}

async fn readyz(State(app): State<App>) -> (StatusCode, String) {
    if !app.shared.ready.load(Relaxed) {
        return (
            StatusCode::SERVICE_UNAVAILABLE,
            "initial scan in progress\n".into(),
        );
    }
    match app.shared.blind.not_followed().as_slice() {
        [] => (StatusCode::OK, "ready\n".into()),
        by_reason => {
            let said: Vec<String> = (by_reason.iter())
                .map(|(reason, n)| format!("{n} {}", reason.label()))
                .collect();
            (
                StatusCode::SERVICE_UNAVAILABLE,
                format!(
                    "paths under the kubelet roots not followed: {} (reloadscope_unwatched_paths)\n",
                    said.join(", ")
                ),
            )
        }
    }
}

/// Binds `addr` (port 0 picks one). The returned address is the bound one.
pub async fn bind(addr: SocketAddr) -> anyhow::Result<tokio::net::TcpListener> {
    tokio::net::TcpListener::bind(addr)
        .await
        .map_err(|e| anyhow::anyhow!("cannot listen on {addr}: {e}"))
}

/// One open connection, as the accept loop sees it.
struct Conn {
    /// An answer is being made.
    busy: AtomicBool,
    /// Told to close (evicted).
    close: Notify,
}

/// Open connections by age (ids ascend).
#[derive(Default)]
struct Conns {
    next: u64,
    open: BTreeMap<u64, Arc<Conn>>,
}

impl Conns {
    /// Registers a new connection; with `cap` open already, tells the oldest one not
    /// being answered (else the oldest) to close, and returns true.
    fn admit(&mut self, cap: usize) -> (u64, Arc<Conn>, bool) {
        let evicted = self.open.len() >= cap;
        if evicted {
            let victim = (self.open.iter())
                .find(|(_, c)| !c.busy.load(Relaxed))
                .or_else(|| self.open.iter().next())
                .map(|(id, _)| *id);
            if let Some(c) = victim.and_then(|id| self.open.remove(&id)) {
                c.close.notify_one();
            }
        }
        let id = self.next;
        self.next += 1;
        let conn = Arc::new(Conn {
            busy: AtomicBool::new(false),
            close: Notify::new(),
        });
        self.open.insert(id, conn.clone());
        (id, conn, evicted)
    }
}

/// Marks a connection busy while it lives.
struct Busy(Arc<Conn>);

impl Busy {
    fn new(conn: &Arc<Conn>) -> Busy {
        conn.busy.store(true, Relaxed);
        Busy(conn.clone())
    }
}

impl Drop for Busy {
    fn drop(&mut self) {
        self.0.busy.store(false, Relaxed);
    }
}

/// A request with a body (none of ours takes one) is refused, and its connection
/// closed rather than its body read.
fn has_body<B>(req: &Request<B>) -> bool {
    let length = req.headers().get(header::CONTENT_LENGTH);
    req.headers().contains_key(header::TRANSFER_ENCODING)
        || length.is_some_and(|l| l.as_bytes() != b"0")
}

pub async fn serve(
    listener: tokio::net::TcpListener,
    exporter: Exporter,
    shared: Arc<Shared>,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    let cap = max_connections(crate::limits::nofile());
    let app = App {
        exporter: Arc::new(exporter),
        shared: shared.clone(),
    };
    let router = Router::new()
        .route("/metrics", get(metrics))
        .route("/healthz", get(healthz))
        .route("/readyz", get(readyz))
        .with_state(app);
    let conns = Arc::new(Mutex::new(Conns::default()));
    let (stop, stopping) = tokio::sync::watch::channel(false);
    tokio::pin!(shutdown);
    let mut starved = false;
    loop {
        let accepted = tokio::select! {
            a = listener.accept() => a,
            _ = &mut shutdown => break,
        };
        let stream = match accepted {
            Ok((stream, _)) => stream,
            Err(e) if matches!(e.raw_os_error(), Some(libc::EMFILE | libc::ENFILE)) => {
                shared.blind.fd_exhausted();
                if !starved {
                    warn!(
                        error = %e,
                        limit = crate::limits::nofile(),
                        "out of file descriptors: connections wait; raise the agent's RLIMIT_NOFILE \
                         (reloadscope_fd_exhausted_total)"
                    );
                    starved = true;
                }
                // The connection stays queued: accept again once descriptors may be free.
                tokio::time::sleep(ACCEPT_BACKOFF).await;
                continue;
            }
            Err(e) => {
                debug!(error = %e, "accept failed");
                continue;
            }
        };
        if starved {
            info!("file descriptors available again: accepting connections");
            starved = false;
        }
        let (id, conn, evicted) = conns.lock().expect("conns lock").admit(cap);
        if evicted {
            shared.blind.http_evicted();
        }
        let (router, conns, mut stopping) = (router.clone(), conns.clone(), stopping.clone());
        tokio::spawn(async move {
            let service = {
                let conn = conn.clone();
                hyper::service::service_fn(move |req: Request<hyper::body::Incoming>| {
                    let (router, busy) = (router.clone(), Busy::new(&conn));
                    async move {
                        let _busy = busy;
                        if has_body(&req) {
                            let refused = Response::builder()
                                .status(StatusCode::PAYLOAD_TOO_LARGE)
                                .header(header::CONNECTION, "close")
                                .body(Body::from("requests take no body\n"))
                                .expect("a valid response");
                            return Ok(refused);
                        }
                        router.oneshot(req.map(Body::new)).await
                    }
                })
            };
            let mut http = hyper::server::conn::http1::Builder::new();
            http.timer(TokioTimer::new())
                .header_read_timeout(HEADER_TIMEOUT)
                .max_buf_size(MAX_HEADER_BYTES)
                .keep_alive(true);
            let served = http.serve_connection(TokioIo::new(stream), service);
            tokio::pin!(served);
            let must_close = tokio::select! {
                _ = &mut served => false,
                _ = conn.close.notified() => {
                    debug!("connection closed to make room");
                    false
                }
                _ = tokio::time::sleep(MAX_LIFETIME) => true,
                _ = stopping.wait_for(|&s| s) => true,
            };
            if must_close {
                served.as_mut().graceful_shutdown();
                let _ = tokio::time::timeout(CLOSE_GRACE, served).await;
            }
            conns.lock().expect("conns lock").open.remove(&id);
        });
    }
    // In-flight answers end; idle connections close now.
    let _ = stop.send(true);
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn connections_take_at_most_a_quarter_of_the_descriptors() {
        assert_eq!(max_connections(1024), 256);
        assert_eq!(max_connections(4096), 1024);
        assert_eq!(max_connections(1 << 20), CONNECTIONS_CAP);
        assert_eq!(max_connections(32), 8);
    }

    #[test]
    fn the_oldest_idle_connection_makes_room() {
        let mut conns = Conns::default();
        let (a, ca, _) = conns.admit(2);
        let (_, _, evicted) = conns.admit(2);
        assert!(!evicted);
        let _answering = Busy::new(&ca);
        let (_, _, evicted) = conns.admit(2);
        assert!(evicted);
        assert!(conns.open.contains_key(&a), "the busy one stays");
        assert_eq!(conns.open.len(), 2);
    }
}
