//! The console: `/console` (a page, its script and its style, served by
//! the hub: no build step, no CDN) and its live feed `GET
//! /v1/console/stream` (NDJSON, API key scope `admin`, sent as a bearer
//! header by the page: never in a URL). Off with `console.enabled = false`.
//!
//! Must not: put data in the page itself (the page holds no secret; all it
//! shows comes through the authenticated API).

use std::convert::Infallible;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use axum::Router;
use axum::body::{Body, Bytes};
use axum::extract::State;
use axum::http::{HeaderValue, header};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use tokio::sync::mpsc;

use super::Bearer;
use super::admin::key_with;
use crate::App;
use crate::error::ApiError;

const PAGE: &str = include_str!("../../static/console/index.html");
const SCRIPT: &str = include_str!("../../static/console/console.js");
const STYLE: &str = include_str!("../../static/console/console.css");

pub fn router() -> Router<Arc<App>> {
    Router::new()
        .route(
            "/console",
            get(|| async { asset(PAGE, "text/html; charset=utf-8") }),
        )
        .route(
            "/console/console.js",
            get(|| async { asset(SCRIPT, "text/javascript; charset=utf-8") }),
        )
        .route(
            "/console/console.css",
            get(|| async { asset(STYLE, "text/css; charset=utf-8") }),
        )
        .route("/v1/console/stream", get(stream))
}

fn asset(body: &'static str, content_type: &'static str) -> Response {
    let mut r = body.into_response();
    let h = r.headers_mut();
    h.insert(header::CONTENT_TYPE, HeaderValue::from_static(content_type));
    h.insert(
        header::CONTENT_SECURITY_POLICY,
        HeaderValue::from_static(
            "default-src 'self'; img-src 'self' data:; style-src 'self'; script-src 'self'; frame-ancestors 'none'",
        ),
    );
    h.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    h.insert(
        "x-content-type-options",
        HeaderValue::from_static("nosniff"),
    );
    r
}

/// Lines from the feed task, as a streamed body.
struct Lines(mpsc::Receiver<String>);

impl futures_core::Stream for Lines {
    type Item = Result<Bytes, Infallible>;

    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        self.0.poll_recv(cx).map(|line| {
            line.map(|mut l| {
                l.push('\n');
                Ok(Bytes::from(l))
            })
        })
    }
}

async fn stream(State(app): State<Arc<App>>, Bearer(cred): Bearer) -> Result<Response, ApiError> {
    key_with(cred, "admin")?;
    // A few lines of slack; a console that stops reading stops its feed.
    let (tx, rx) = mpsc::channel(64);
    app.tasks.spawn(crate::console::feed(app.clone(), tx));
    let mut r = Body::from_stream(Lines(rx)).into_response();
    r.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/x-ndjson"),
    );
    r.headers_mut()
        .insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    Ok(r)
}
