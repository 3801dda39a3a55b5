//! The operator's HTTP endpoints: `/metrics` and `/healthz`.

use std::{net::SocketAddr, sync::Arc};

use axum::{Router, extract::State, routing::get};

use crate::metrics::Metrics;

/// Serves the admin endpoints on `address` until the process exits.
pub async fn serve(address: SocketAddr, metrics: Arc<Metrics>) -> std::io::Result<()> {
    let app = Router::new()
        .route("/metrics", get(|State(m): State<Arc<Metrics>>| async move { m.encode() }))
        .route("/healthz", get(|| async { "ok" }))
        .with_state(metrics);
    let listener = tokio::net::TcpListener::bind(address).await?;
    axum::serve(listener, app).await
}
