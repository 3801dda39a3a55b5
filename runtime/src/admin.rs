//! The admin HTTP server: `/metrics`, `/healthz`, `/readyz`, `/status` and `POST /savepoint`.

use std::{net::SocketAddr, sync::Arc, time::Duration};

use axum::{
    Json, Router,
    extract::{Query, State},
    http::StatusCode,
    response::{IntoResponse, Response},
    routing::{get, post},
};
use serde::Deserialize;
use tokio::{net::TcpListener, sync::oneshot};

use crate::runner::{SavepointRequest, Shared, Status};

/// How long a savepoint may take before the request gives up (it may still complete).
const SAVEPOINT_TIMEOUT: Duration = Duration::from_secs(300);

/// The admin routes over the runtime's shared state.
pub fn router(shared: Arc<Shared>) -> Router {
    Router::new()
        .route("/metrics", get(metrics))
        .route("/healthz", get(|| async { "ok" }))
        .route("/readyz", get(ready))
        .route("/status", get(status))
        .route("/savepoint", post(savepoint))
        .with_state(shared)
}

async fn metrics(State(shared): State<Arc<Shared>>) -> impl IntoResponse {
    ([("content-type", "text/plain; version=0.0.4")], shared.metrics.render())
}

async fn ready(State(shared): State<Arc<Shared>>) -> Response {
    match shared.readiness() {
        Ok(()) => (StatusCode::OK, "ready").into_response(),
        Err(reason) => (StatusCode::SERVICE_UNAVAILABLE, format!("not ready: {reason}")).into_response(),
    }
}

async fn status(State(shared): State<Arc<Shared>>) -> Json<Status> {
    Json(shared.status())
}

/// `POST /savepoint?stop=true&id=...`.
#[derive(Debug, Deserialize)]
struct SavepointQuery {
    #[serde(default)]
    stop: bool,
    id: Option<String>,
}

async fn savepoint(State(shared): State<Arc<Shared>>, Query(query): Query<SavepointQuery>) -> Response {
    if let Some(id) = &query.id
        && (id.is_empty() || !id.chars().all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.')))
    {
        return (StatusCode::BAD_REQUEST, "id: letters, digits, '-', '_' and '.' only").into_response();
    }
    let (reply, answer) = oneshot::channel();
    shared.request_savepoint(SavepointRequest { id: query.id, stop: query.stop, reply });
    match tokio::time::timeout(SAVEPOINT_TIMEOUT, answer).await {
        Ok(Ok(Ok(savepoint))) => Json(savepoint).into_response(),
        Ok(Ok(Err(e))) => (StatusCode::INTERNAL_SERVER_ERROR, e).into_response(),
        Ok(Err(_)) => (StatusCode::SERVICE_UNAVAILABLE, "the job is stopping").into_response(),
        Err(_) => (StatusCode::GATEWAY_TIMEOUT, "the savepoint did not complete in time").into_response(),
    }
}

/// Binds `addr` and serves until the process ends.
pub async fn serve(addr: SocketAddr, shared: Arc<Shared>) -> std::io::Result<()> {
    let listener = TcpListener::bind(addr).await?;
    axum::serve(listener, router(shared)).await
}
