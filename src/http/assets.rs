//! Files the hub serves itself, embedded in the binary so it runs from any
//! directory: the JS client library and the landing page.

use std::sync::Arc;

use axum::Router;
use axum::http::header;
use axum::response::{Html, IntoResponse};
use axum::routing::get;

use crate::App;

pub const CLIENT_JS: &str = include_str!("../../static/slo-client.js");
const INDEX_HTML: &str = include_str!("../../static/index.html");

pub fn router() -> Router<Arc<App>> {
    Router::new()
        .route("/", get(|| async { Html(INDEX_HTML) }))
        .route("/static/slo-client.js", get(client_js))
}

async fn client_js() -> impl IntoResponse {
    (
        [
            (header::CONTENT_TYPE, "text/javascript; charset=utf-8"),
            (header::CACHE_CONTROL, "public, max-age=300"),
        ],
        CLIENT_JS,
    )
}
