//! `/healthz` (the process answers), `/readyz` (it can do its job: keys
//! loaded, not shutting down) and `/metrics` (Prometheus text).

use std::sync::Arc;

use axum::extract::State;
use axum::http::{StatusCode, header};
use axum::response::IntoResponse;
use axum::routing::get;
use axum::{Json, Router};
use serde_json::json;

use crate::App;

pub fn router() -> Router<Arc<App>> {
    Router::new()
        .route("/healthz", get(|| async { "ok\n" }))
        .route("/readyz", get(readyz))
        .route("/metrics", get(metrics))
}

async fn readyz(State(app): State<Arc<App>>) -> impl IntoResponse {
    let mut problems = Vec::new();
    if app.shutdown.is_cancelled() {
        problems.push("shutting down");
    }
    if !app.auth.keys_ready().await {
        problems.push("issuer keys not loaded");
    }
    if app.cluster.as_ref().is_some_and(|c| !c.is_ready()) {
        problems.push("Redis (cluster) unreachable");
    }
    let status = if problems.is_empty() {
        StatusCode::OK
    } else {
        StatusCode::SERVICE_UNAVAILABLE
    };
    (
        status,
        Json(json!({ "ready": problems.is_empty(), "problems": problems })),
    )
}

async fn metrics(State(app): State<Arc<App>>) -> impl IntoResponse {
    (
        [(
            header::CONTENT_TYPE,
            "application/openmetrics-text; version=1.0.0; charset=utf-8",
        )],
        app.metrics.render(),
    )
}
