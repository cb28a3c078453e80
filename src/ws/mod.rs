//! `/v1/ws`: the WebSocket endpoint SPAs hold open for logout pushes.
//!
//! * this file — the upgrade: every HTTP-level check (credentials in the URL,
//!   `Origin` allow-list, RFC 6455 handshake headers) happens here, before the
//!   101, because after the upgrade there is no status code left to answer with;
//!   and the heartbeat sweeper.
//! * `socket` — one socket's life after the upgrade: login there,
//!   `socket::steady` (parked reading and flushing), `socket::close`.
//! * `parked` — how an idle socket waits without a task.
//! * `window` — when a logged-out socket's re-login window ends.
//! * `conn` — the socket as publishers see it (direct, bounded writes).
//! * `codec` — RFC 6455 framing; `protocol` — the JSON messages.
//! * `partial` — frames still arriving, bounded in time and memory (both
//!   protocols).
//!
//! Must not: accept a token from anywhere but the first socket message.

pub mod codec;
pub mod conn;
pub(crate) mod parked;
pub mod partial;
pub mod protocol;
mod socket;
pub(crate) mod window;

pub(crate) use socket::{Guard, close_stream};

use std::sync::{Arc, Weak};
use std::time::Duration;

use axum::body::Body;
use axum::extract::{Request, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use bytes::Bytes;
use hyper_util::rt::TokioIo;
use tokio::net::TcpStream;

use crate::App;
use crate::error::{ApiError, AuthError, CloseCode};
use crate::server::ConnGuard;
use crate::util;

/// Query parameters that would carry a credential; their presence is refused
/// (tokens in URLs end up in logs, proxies and browser history).
const CREDENTIAL_PARAMS: &[&str] = &[
    "token",
    "access_token",
    "id_token",
    "jwt",
    "auth",
    "api_key",
    "key",
];

pub fn query_has_credentials(query: Option<&str>) -> bool {
    let Some(q) = query else { return false };
    form_urlencoded::parse(q.as_bytes())
        .any(|(k, _)| CREDENTIAL_PARAMS.iter().any(|p| k.eq_ignore_ascii_case(p)))
}

/// Why an upgrade was refused before the handshake.
fn refuse(app: &App, reason: &'static str, err: ApiError) -> Response {
    app.metrics.upgrade_rejected(reason);
    err.into_response()
}

pub async fn upgrade(State(app): State<Arc<App>>, req: Request) -> Response {
    if query_has_credentials(req.uri().query()) {
        app.metrics
            .auth_failure("ws", AuthError::CredentialsInUrl.reason());
        return refuse(
            &app,
            "credentials_in_url",
            AuthError::CredentialsInUrl.into(),
        );
    }
    accept(&app, req, socket::run)
}

/// The HTTP side of every WebSocket endpoint (`/v1/ws`, Pusher's
/// `/app/{key}`): the `Origin` allow-list and the RFC 6455 handshake are
/// checked before the 101; then `run` gets the upgraded stream (and bytes
/// the client sent behind the handshake) in a task the hub owns, with the
/// guard that counts the connection against its address until `run` drops it.
pub fn accept<F, Fut>(app: &Arc<App>, req: Request, run: F) -> Response
where
    F: FnOnce(Arc<App>, TcpStream, Bytes, Guard) -> Fut + Send + 'static,
    Fut: std::future::Future<Output = ()> + Send + 'static,
{
    if let Err(reason) = check_origin(app, req.headers()) {
        return refuse(
            app,
            reason,
            ApiError::Forbidden("this origin may not open a socket to the hub".into()),
        );
    }
    handshake(app, req, run)
}

/// [`accept`] without the hub's `Origin` allow-list: for an endpoint that
/// checks origins its own way (a Pusher app's list, told on the socket).
pub fn handshake<F, Fut>(app: &Arc<App>, mut req: Request, run: F) -> Response
where
    F: FnOnce(Arc<App>, TcpStream, Bytes, Guard) -> Fut + Send + 'static,
    Fut: std::future::Future<Output = ()> + Send + 'static,
{
    let key = match check_handshake(req.headers()) {
        Ok(k) => k,
        Err(Handshake::WrongVersion) => {
            app.metrics.upgrade_rejected("ws_version");
            let mut resp = ApiError::bad_request(
                "unsupported_websocket_version",
                "only WebSocket version 13 is supported",
            )
            .into_response();
            *resp.status_mut() = StatusCode::UPGRADE_REQUIRED;
            resp.headers_mut()
                .insert("sec-websocket-version", HeaderValue::from_static("13"));
            return resp;
        }
        Err(Handshake::Invalid(msg)) => {
            return refuse(
                app,
                "bad_handshake",
                ApiError::bad_request("bad_handshake", msg),
            );
        }
    };
    let Some(on_upgrade) = req.extensions_mut().remove::<hyper::upgrade::OnUpgrade>() else {
        return ApiError::Internal("connection cannot be upgraded".into()).into_response();
    };
    // Held by the socket task: the connection counts against its IP until
    // it closes. Behind a trusted proxy, against the client's address.
    let mut limit = req.extensions_mut().remove::<Arc<ConnGuard>>();
    let peer = req
        .extensions()
        .get::<axum::extract::ConnectInfo<std::net::SocketAddr>>()
        .map(|c| c.0.ip())
        .unwrap_or(std::net::IpAddr::V4(std::net::Ipv4Addr::UNSPECIFIED));
    let client = app.proxies.client_ip(peer, req.headers());
    if app.proxies.is_trusted(peer) {
        match app.limits.admit_client(client, limit.take()) {
            Ok(g) => limit = Some(g),
            Err(refusal) => {
                return refuse(app, refusal.label(), ApiError::RateLimited);
            }
        }
    }
    let text = |name| req.headers().get(name).and_then(|v| v.to_str().ok());
    let guard = Guard {
        limit,
        meta: conn::ConnMeta::new(
            client,
            text(header::ORIGIN),
            text(header::USER_AGENT),
            &app.interned,
        ),
    };
    let task_app = app.clone();
    app.tasks.spawn(async move {
        let Some((stream, early)) = upgraded_stream(on_upgrade).await else {
            return;
        };
        run(task_app, stream, early, guard).await;
    });
    Response::builder()
        .status(StatusCode::SWITCHING_PROTOCOLS)
        .header(header::UPGRADE, "websocket")
        .header(header::CONNECTION, "Upgrade")
        .header("sec-websocket-accept", codec::accept_key(key.as_bytes()))
        .body(Body::empty())
        .expect("static response parts are valid")
}

/// The TCP stream under a completed upgrade, and bytes already read from it.
async fn upgraded_stream(on_upgrade: hyper::upgrade::OnUpgrade) -> Option<(TcpStream, Bytes)> {
    let upgraded = match on_upgrade.await {
        Ok(u) => u,
        Err(e) => {
            tracing::debug!(error = %e, "upgrade failed");
            return None;
        }
    };
    match upgraded.downcast::<TokioIo<TcpStream>>() {
        Ok(parts) => Some((parts.io.into_inner(), parts.read_buf)),
        Err(_) => {
            tracing::error!("upgraded connection is not a TCP stream");
            None
        }
    }
}

fn check_origin(app: &App, headers: &HeaderMap) -> Result<(), &'static str> {
    let ws = &app.config.ws;
    let Some(origin) = headers.get(header::ORIGIN) else {
        return if ws.allow_missing_origin {
            Ok(())
        } else {
            Err("origin_missing")
        };
    };
    let origin = origin.to_str().map_err(|_| "origin_invalid")?;
    if origin == "null" {
        return if ws.allow_null_origin {
            Ok(())
        } else {
            Err("origin_null")
        };
    }
    if app.origins.sockets.iter().any(|o| o == "*" || o == origin) {
        Ok(())
    } else {
        Err("origin_not_allowed")
    }
}

enum Handshake {
    WrongVersion,
    Invalid(&'static str),
}

/// RFC 6455 §4.2.1. Returns the client's key.
fn check_handshake(h: &HeaderMap) -> Result<String, Handshake> {
    let has_token = |name: header::HeaderName, token: &str| {
        h.get_all(name).iter().any(|v| {
            v.to_str()
                .map(|s| s.split(',').any(|t| t.trim().eq_ignore_ascii_case(token)))
                .unwrap_or(false)
        })
    };
    if !has_token(header::UPGRADE, "websocket") {
        return Err(Handshake::Invalid("expected `Upgrade: websocket`"));
    }
    if !has_token(header::CONNECTION, "upgrade") {
        return Err(Handshake::Invalid("expected `Connection: Upgrade`"));
    }
    if h.get("sec-websocket-version").and_then(|v| v.to_str().ok()) != Some("13") {
        return Err(Handshake::WrongVersion);
    }
    let key = h
        .get("sec-websocket-key")
        .and_then(|v| v.to_str().ok())
        .ok_or(Handshake::Invalid("missing Sec-WebSocket-Key"))?;
    use base64::Engine;
    match base64::engine::general_purpose::STANDARD.decode(key) {
        Ok(raw) if raw.len() == 16 => Ok(key.to_string()),
        _ => Err(Handshake::Invalid(
            "Sec-WebSocket-Key must be 16 bytes in base64",
        )),
    }
}

/// Sockets a heartbeat sweep pings (or closes) between two yields, so
/// triggers arriving meanwhile do not wait for the whole round.
const SWEEP_CHUNK: usize = 256;

/// Pings every registered socket each `ws.heartbeat_secs`; closes those that
/// stayed silent for two intervals (4408) or whose token expired (4403).
///
/// "Silent for two intervals" is judged against the sweeps, not the clock:
/// a socket is closed when nothing came from it since the sweep before the
/// last one began, so it let two pings go unanswered; a long sweep cannot
/// make an answering socket look silent (history: bench/README.md).
pub async fn heartbeat(app: Arc<App>) {
    let every = Duration::from_secs(app.config.ws.heartbeat_secs);
    let mut ping = Vec::with_capacity(2);
    codec::encode_frame(&mut ping, codec::OP_PING, &[], None);
    // When the last two sweeps began (coarse seconds), older first.
    let mut sweeps: [Option<u32>; 2] = [None, None];
    loop {
        tokio::select! {
            _ = app.shutdown.cancelled() => return,
            _ = tokio::time::sleep(every) => {}
        }
        let now = util::now_secs();
        let cutoff = sweeps[0];
        for (i, conn) in app.registry.snapshot().into_iter().enumerate() {
            if i % SWEEP_CHUNK == SWEEP_CHUNK - 1 {
                tokio::task::yield_now().await;
                if app.shutdown.is_cancelled() {
                    return;
                }
            }
            let Some(conn) = conn.upgrade() else { continue };
            let seen = conn.last_seen.load(std::sync::atomic::Ordering::Relaxed);
            if cutoff.is_some_and(|c| seen < c) {
                conn.close(CloseCode::HeartbeatTimeout);
            } else if conn.exp <= now as i64 {
                conn.close(CloseCode::TokenExpired);
            } else {
                conn.send(&ping);
            }
        }
        sweeps = [sweeps[1], Some(now as u32)];
    }
}

/// Closes every registered socket with 1012 so clients reconnect elsewhere.
pub fn close_all_for_restart(app: &App) {
    for conn in app.registry.snapshot().iter().filter_map(Weak::upgrade) {
        conn.close(CloseCode::ServiceRestart);
    }
}
