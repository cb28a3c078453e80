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
}

/// `/metrics`: on the main listener, or the operator's (`console.listen`).
pub fn metrics_router() -> Router<Arc<App>> {
    Router::new().route("/metrics", get(metrics))
}

/// Answers at once: nothing it reads waits on I/O (a JWKS fetch or Redis
/// in progress is reported as it stands).
async fn readyz(State(app): State<Arc<App>>) -> impl IntoResponse {
    let problems = app.problems();
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
    app.metrics.ready.set(i64::from(app.problems().is_empty()));
    if let Some(b) = &app.broker {
        app.metrics.cluster_connected.set(i64::from(b.is_ready()));
    }
    (
        [(
            header::CONTENT_TYPE,
            "application/openmetrics-text; version=1.0.0; charset=utf-8",
        )],
        app.metrics.render(),
    )
}
