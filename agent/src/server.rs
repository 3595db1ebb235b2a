//! HTTP: /metrics (Prometheus text format), /healthz (the state loop turns), /readyz
//! (the first walk of every root is done).

use std::{
    net::SocketAddr,
    sync::{Arc, atomic::Ordering::Relaxed},
    time::Duration,
};

use crate::{
    agent::monotonic_ms,
    memory,
    metrics::{Exporter, Shared},
};
use axum::{
    Router, extract::State, http::StatusCode, http::header, response::IntoResponse, routing::get,
};

/// The state loop ticks every 250 ms; silent this long means it is stuck.
const STUCK_AFTER: Duration = Duration::from_secs(10);

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

async fn readyz(State(app): State<App>) -> (StatusCode, &'static str) {
    if app.shared.ready.load(Relaxed) {
        (StatusCode::OK, "ready\n")
    } else {
        (
            StatusCode::SERVICE_UNAVAILABLE,
            "initial scan in progress\n",
        )
    }
}

/// Binds `addr` (port 0 picks one). The returned address is the bound one.
pub async fn bind(addr: SocketAddr) -> anyhow::Result<tokio::net::TcpListener> {
    tokio::net::TcpListener::bind(addr)
        .await
        .map_err(|e| anyhow::anyhow!("cannot listen on {addr}: {e}"))
}

pub async fn serve(
    listener: tokio::net::TcpListener,
    exporter: Exporter,
    shared: Arc<Shared>,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    let app = App {
        exporter: Arc::new(exporter),
        shared,
    };
    let router = Router::new()
        .route("/metrics", get(metrics))
        .route("/healthz", get(healthz))
        .route("/readyz", get(readyz))
        .with_state(app);
    axum::serve(listener, router)
        .with_graceful_shutdown(shutdown)
        .await
}
