//! `GET /v1/logout/frontchannel?returnTo=…`: the common logout page, for
//! browsers where no socket is open (the seed article's second pattern).
//!
//! The page loads every registered client's `frontchannel_logout_uri` in a
//! hidden iframe; each app clears its session there and answers with
//! `postMessage({type: "slo-hub:frontchannel-logout"})` to the hub's origin.
//! The page accepts an answer only from that iframe's window and the
//! origin of its URI, waits for all of them or `notify.frontchannel_timeout_ms`,
//! then sends the browser to `returnTo` — only an exact match of some
//! client's `post_logout_redirect_uris`; any other `returnTo` is answered
//! 400 before anything is loaded (no open redirect). The logic is
//! `static/frontchannel.js`; the page carries its data as JSON.
//!
//! Must not: end server-side sessions (a GET anyone can link to is not an
//! authenticated logout; apps log out through `/v1/logout`), or embed any
//! value in script or markup without escaping.

use std::sync::Arc;

use axum::Router;
use axum::extract::State;
use axum::http::{HeaderValue, Uri, header};
use axum::response::{Html, IntoResponse, Response};
use axum::routing::get;
use serde_json::json;

use super::{error_page, no_store};
use crate::App;

pub const FRONTCHANNEL_JS: &str = include_str!("../../static/frontchannel.js");

pub fn router() -> Router<Arc<App>> {
    Router::new()
        .route("/v1/logout/frontchannel", get(page))
        .route("/static/frontchannel.js", get(script))
}

async fn page(State(app): State<Arc<App>>, uri: Uri) -> Response {
    let mut return_to = None;
    for (k, v) in form_urlencoded::parse(uri.query().unwrap_or("").as_bytes()) {
        match &*k {
            "returnTo" if return_to.is_some() => {
                return error_page("This logout link is not valid", "returnTo is given twice");
            }
            "returnTo" => return_to = Some(v.into_owned()),
            _ => {}
        }
    }
    let clients = app.sessions.clients();
    if let Some(r) = &return_to {
        let registered = clients
            .iter()
            .any(|c| c.post_logout_redirect_uris.iter().any(|u| u == r));
        if !registered {
            return error_page(
                "This logout link is not valid",
                "returnTo is not a registered post-logout redirect URI",
            );
        }
    }
    let mut apps = Vec::new();
    let mut frame_origins = Vec::new();
    for c in &clients {
        let Some(uri) = &c.frontchannel_logout_uri else {
            continue;
        };
        // Validated at start as an absolute http(s) URL.
        let Ok(url) = reqwest::Url::parse(uri) else {
            continue;
        };
        let origin = url.origin().ascii_serialization();
        if !frame_origins.contains(&origin) {
            frame_origins.push(origin.clone());
        }
        apps.push(json!({ "client_id": c.client_id, "uri": uri, "origin": origin }));
    }
    let data = json!({
        "apps": apps,
        "returnTo": return_to,
        "timeoutMs": app.config.notify.frontchannel_timeout_ms,
    });
    let body = format!(
        "<!doctype html>\n<html lang=\"en\"><head><meta charset=\"utf-8\">\
         <meta name=\"viewport\" content=\"width=device-width, initial-scale=1\">\
         <title>Logging out…</title></head>\n<body>\n<main>\
         <h1>Logging out</h1><p id=\"status\">Logging you out of every app…</p>\
         <ul id=\"apps\"></ul></main>\n\
         <script type=\"application/json\" id=\"slo-frontchannel\">{}</script>\n\
         <script src=\"/static/frontchannel.js\"></script>\n</body></html>\n",
        script_json(&data)
    );
    let frame_src = if frame_origins.is_empty() {
        "'none'".to_string()
    } else {
        frame_origins.join(" ")
    };
    let csp = format!(
        "default-src 'none'; script-src 'self'; frame-src {frame_src}; \
         frame-ancestors 'none'; base-uri 'none'; form-action 'none'"
    );
    let mut resp = no_store(Html(body).into_response());
    let h = resp.headers_mut();
    if let Ok(v) = HeaderValue::from_str(&csp) {
        h.insert(header::CONTENT_SECURITY_POLICY, v);
    }
    h.insert(
        header::X_CONTENT_TYPE_OPTIONS,
        HeaderValue::from_static("nosniff"),
    );
    resp
}

async fn script() -> impl IntoResponse {
    (
        [
            (header::CONTENT_TYPE, "text/javascript; charset=utf-8"),
            (header::CACHE_CONTROL, "public, max-age=300"),
        ],
        FRONTCHANNEL_JS,
    )
}

/// JSON safe inside `<script>`: no `<`, `>` or `&` can end the element or
/// start a comment (`\u003c` is the same string to `JSON.parse`).
fn script_json(v: &serde_json::Value) -> String {
    v.to_string()
        .replace('<', "\\u003c")
        .replace('>', "\\u003e")
        .replace('&', "\\u0026")
}

#[cfg(test)]
mod tests {
    #[test]
    fn script_json_cannot_close_the_script_element() {
        let v = serde_json::json!({ "uri": "</script><script>alert(1)</script>&" });
        let s = super::script_json(&v);
        assert!(!s.contains('<') && !s.contains('>') && !s.contains('&'));
        let back: serde_json::Value = serde_json::from_str(&s).unwrap();
        assert_eq!(back, v);
    }
}
