//! Pusher's HTTP API (`/apps/{id}/...`), signed as Pusher signs it:
//! `auth_key`, `auth_timestamp` (±600 s), `auth_version=1.0`, `body_md5`
//! for a body, and `auth_signature` = HMAC-SHA256 over
//! `METHOD\npath\nsorted query without auth_signature`. Answers are Pusher's:
//! JSON on success, a plain-text reason with 400 / 401 / 403 / 404 / 413
//! otherwise. Connections stay open (keep-alive), unlike Soketi's.
//!
//! Must not: act on anything before the signature is checked.

use std::collections::BTreeMap;
use std::sync::Arc;

use axum::Router;
use axum::extract::{Path, Request, State};
use axum::http::{Method, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use bytes::Bytes;
use md5::{Digest, Md5};
use serde::Deserialize;
use serde_json::{Map, Value, json};
use subtle::ConstantTimeEq;

use super::protocol::{self, ChannelKind};
use crate::App;
use crate::config::PusherAppSettings;
use crate::error::ErrorCode;

/// Signed requests older or newer than this are refused.
const TIMESTAMP_WINDOW_SECS: i64 = 600;
/// Channels one event may go to, and events one batch may hold (Pusher's limits).
const MAX_CHANNELS_PER_EVENT: usize = 100;
const MAX_BATCH: usize = 10;

pub fn router() -> Router<Arc<App>> {
    Router::new()
        .route("/apps/{id}/events", post(events))
        .route("/apps/{id}/batch_events", post(batch_events))
        .route("/apps/{id}/channels", get(channels))
        .route("/apps/{id}/channels/{name}", get(channel))
        .route("/apps/{id}/channels/{name}/users", get(channel_users))
        .route(
            "/apps/{id}/users/{user}/terminate_connections",
            post(terminate),
        )
        // pusher-http-python 3.3 leaves out the `/apps/{id}` prefix here;
        // the app is the one whose key signed the request.
        .route(
            "/users/{user}/terminate_connections",
            post(terminate_unprefixed),
        )
}

/// A refusal: status, stable code (metrics) and Pusher-style text.
#[derive(Debug)]
pub struct PusherHttpError(StatusCode, &'static str, String);

impl IntoResponse for PusherHttpError {
    fn into_response(self) -> Response {
        let mut resp = (
            self.0,
            [(header::CONTENT_TYPE, "text/plain; charset=utf-8")],
            format!("{}\n", self.2),
        )
            .into_response();
        // The body was left unread: say the connection ends, so a client's
        // keep-alive pool does not send its next request into a closed socket.
        if self.1 == "payload_too_large" {
            resp.headers_mut().insert(
                header::CONNECTION,
                header::HeaderValue::from_static("close"),
            );
        }
        resp.extensions_mut().insert(ErrorCode(self.1));
        resp
    }
}

fn bad(message: impl Into<String>) -> PusherHttpError {
    PusherHttpError(StatusCode::BAD_REQUEST, "bad_request", message.into())
}

/// The shared store could not answer (a cluster whose Redis is away).
fn unavailable(e: crate::store::StoreError) -> PusherHttpError {
    PusherHttpError(
        StatusCode::SERVICE_UNAVAILABLE,
        "unavailable",
        format!("The cluster store did not answer: {e}"),
    )
}

fn unauthorized(message: impl Into<String>) -> PusherHttpError {
    PusherHttpError(StatusCode::UNAUTHORIZED, "unauthorized", message.into())
}

/// Checks the app and the request's signature; answers the app's index and
/// the body.
async fn verified(
    app: &App,
    id: &str,
    req: Request,
) -> Result<(usize, Bytes, BTreeMap<String, String>), PusherHttpError> {
    let Some(index) = app.pusher.app_by_id(id) else {
        return Err(PusherHttpError(
            StatusCode::NOT_FOUND,
            "unknown_app",
            format!("Unknown app_id {}", protocol::truncate(id)),
        ));
    };
    let settings = &app.pusher.apps()[index];
    if !settings.enabled {
        return Err(PusherHttpError(
            StatusCode::FORBIDDEN,
            "app_disabled",
            format!("App {} is disabled", protocol::truncate(id)),
        ));
    }
    let method = req.method().clone();
    let path = req.uri().path().to_string();
    let mut query = BTreeMap::new();
    for (k, v) in form_urlencoded::parse(req.uri().query().unwrap_or("").as_bytes()) {
        if query.insert(k.to_string(), v.into_owned()).is_some() {
            return Err(bad(format!("Duplicate query parameter {k}")));
        }
    }
    // Room for a full batch of the largest events, plus JSON around them.
    let limit = settings.max_event_bytes * MAX_BATCH + 16 * 1024;
    let body = crate::http::read_body(req, limit).await.map_err(|_| {
        PusherHttpError(
            StatusCode::PAYLOAD_TOO_LARGE,
            "payload_too_large",
            format!("Request body larger than {limit} bytes"),
        )
    })?;
    check_signature(settings, &method, &path, &query, &body)?;
    Ok((index, body, query))
}

fn check_signature(
    settings: &PusherAppSettings,
    method: &Method,
    path: &str,
    query: &BTreeMap<String, String>,
    body: &[u8],
) -> Result<(), PusherHttpError> {
    let get = |k: &str| query.get(k).map(String::as_str);
    if get("auth_key") != Some(settings.key.as_str()) {
        return Err(unauthorized("Unknown auth_key"));
    }
    if get("auth_version") != Some("1.0") {
        return Err(unauthorized("auth_version must be 1.0"));
    }
    let Some(ts) = get("auth_timestamp").and_then(|t| t.parse::<i64>().ok()) else {
        return Err(unauthorized("auth_timestamp is required"));
    };
    let now = crate::util::now_secs() as i64;
    if (now - ts).abs() > TIMESTAMP_WINDOW_SECS {
        return Err(unauthorized(format!(
            "Timestamp expired: Given timestamp ({ts}) not within {TIMESTAMP_WINDOW_SECS}s of server time ({now})"
        )));
    }
    if !body.is_empty() {
        let md5 = crate::auth::api_keys::hex(&Md5::digest(body));
        if get("body_md5") != Some(md5.as_str()) {
            return Err(unauthorized("body_md5 does not match the body"));
        }
    }
    let signed: Vec<String> = query
        .iter()
        .filter(|(k, _)| k.as_str() != "auth_signature")
        .map(|(k, v)| format!("{}={v}", k.to_ascii_lowercase()))
        .collect();
    let message = format!("{}\n{path}\n{}", method.as_str(), signed.join("&"));
    let expected = protocol::sign(&settings.secret, &message);
    let given = get("auth_signature").unwrap_or("");
    if !bool::from(given.as_bytes().ct_eq(expected.as_bytes())) {
        return Err(unauthorized(
            "Invalid signature: you should have sent HmacSHA256Hex(string_to_sign, your_secret_key)",
        ));
    }
    Ok(())
}

#[derive(Deserialize)]
struct Event {
    name: String,
    data: Value,
    #[serde(default)]
    channels: Option<Vec<String>>,
    #[serde(default)]
    channel: Option<String>,
    #[serde(default)]
    socket_id: Option<String>,
    #[serde(default)]
    info: Option<String>,
}

fn json_body<T: for<'de> Deserialize<'de>>(body: &[u8]) -> Result<T, PusherHttpError> {
    serde_json::from_slice(body).map_err(|e| bad(format!("Invalid JSON body: {e}")))
}

/// An event that passed every check: it can be sent.
struct Checked {
    name: String,
    channels: Vec<String>,
    data: String,
    socket_id: Option<String>,
    info: Option<String>,
}

/// Pusher's limits on one event: 1 to 100 valid channel names, a name of
/// 1 to 200 characters, data within the app's `max_event_bytes`.
fn check(settings: &PusherAppSettings, ev: Event) -> Result<Checked, PusherHttpError> {
    let channels = match (ev.channels, ev.channel) {
        (Some(c), None) => c,
        (None, Some(c)) => vec![c],
        _ => return Err(bad("Give exactly one of channels and channel")),
    };
    if channels.is_empty() || channels.len() > MAX_CHANNELS_PER_EVENT {
        return Err(bad("An event goes to 1 to 100 channels"));
    }
    if ev.name.is_empty() || ev.name.len() > protocol::MAX_EVENT_NAME {
        return Err(bad("Event names are 1 to 200 characters"));
    }
    let data = match ev.data {
        Value::String(s) => s,
        other => other.to_string(),
    };
    if data.len() > settings.max_event_bytes {
        return Err(PusherHttpError(
            StatusCode::PAYLOAD_TOO_LARGE,
            "event_too_large",
            format!("Event data larger than {} bytes", settings.max_event_bytes),
        ));
    }
    for c in &channels {
        protocol::channel_kind(c)
            .map_err(|why| bad(format!("{why}: {}", protocol::truncate(c))))?;
    }
    Ok(Checked {
        name: ev.name,
        channels,
        data,
        socket_id: ev.socket_id,
        info: ev.info,
    })
}

/// Sends a checked event (on every node); answers its channels' info if
/// it asked for it.
async fn send(
    app: &App,
    index: usize,
    ev: &Checked,
) -> Result<Option<Map<String, Value>>, PusherHttpError> {
    for c in &ev.channels {
        let text = protocol::event_text(&ev.name, Some(c), &ev.data);
        app.pusher.remember(index, c, &text).await;
        app.pusher
            .publish(index, c, text, ev.socket_id.as_deref())
            .await;
    }
    let Some(want) = ev.info.as_deref() else {
        return Ok(None);
    };
    let mut out = Map::new();
    for c in &ev.channels {
        out.insert(c.clone(), channel_info(app, index, c, want).await?);
    }
    Ok(Some(out))
}

/// (sockets, presence users) of one channel, cluster-wide.
async fn occupancy(app: &App, index: usize, name: &str) -> Result<(u64, u64), PusherHttpError> {
    let id = &app.pusher.apps()[index].id;
    let found = app
        .pusher
        .presence()
        .channels(id, name)
        .await
        .map_err(unavailable)?;
    Ok(found
        .into_iter()
        .find(|(n, _, _)| n == name)
        .map_or((0, 0), |(_, s, u)| (s, u)))
}

async fn channel_info(
    app: &App,
    index: usize,
    name: &str,
    want: &str,
) -> Result<Value, PusherHttpError> {
    let (subs, users) = occupancy(app, index, name).await?;
    let mut v = Map::new();
    for attr in want.split(',') {
        match attr.trim() {
            "subscription_count" => {
                v.insert("subscription_count".into(), subs.into());
            }
            "user_count" if matches!(protocol::channel_kind(name), Ok(ChannelKind::Presence)) => {
                v.insert("user_count".into(), users.into());
            }
            _ => {}
        }
    }
    Ok(Value::Object(v))
}

async fn events(
    State(app): State<Arc<App>>,
    Path(id): Path<String>,
    req: Request,
) -> Result<axum::Json<Value>, PusherHttpError> {
    let (index, body, _) = verified(&app, &id, req).await?;
    let ev = check(&app.pusher.apps()[index], json_body(&body)?)?;
    Ok(axum::Json(match send(&app, index, &ev).await? {
        Some(info) => json!({ "channels": info }),
        None => json!({}),
    }))
}

#[derive(Deserialize)]
struct Batch {
    batch: Vec<Event>,
}

async fn batch_events(
    State(app): State<Arc<App>>,
    Path(id): Path<String>,
    req: Request,
) -> Result<axum::Json<Value>, PusherHttpError> {
    let (index, body, _) = verified(&app, &id, req).await?;
    let batch: Batch = json_body(&body)?;
    if batch.batch.len() > MAX_BATCH {
        return Err(bad(format!("A batch holds at most {MAX_BATCH} events")));
    }
    // All or nothing: every event is checked before any is sent.
    let settings = &app.pusher.apps()[index];
    let mut checked = Vec::with_capacity(batch.batch.len());
    for ev in batch.batch {
        if ev.channels.is_some() || ev.channel.is_none() {
            return Err(bad("Each batch event has one channel"));
        }
        checked.push(check(settings, ev)?);
    }
    let any_info = checked.iter().any(|e| e.info.is_some());
    let mut answers: Vec<Value> = Vec::with_capacity(checked.len());
    for ev in &checked {
        // One channel each: its info, if asked for.
        let info = send(&app, index, ev)
            .await?
            .and_then(|m| m.into_iter().next());
        answers.push(info.map_or_else(|| json!({}), |(_, v)| v));
    }
    Ok(axum::Json(if any_info {
        json!({ "batch": answers })
    } else {
        json!({})
    }))
}

async fn channels(
    State(app): State<Arc<App>>,
    Path(id): Path<String>,
    req: Request,
) -> Result<axum::Json<Value>, PusherHttpError> {
    let (index, _, query) = verified(&app, &id, req).await?;
    let prefix = query.get("filter_by_prefix").cloned().unwrap_or_default();
    let want_users = query
        .get("info")
        .is_some_and(|i| i.split(',').any(|a| a == "user_count"));
    if want_users && !prefix.starts_with("presence-") {
        return Err(bad("info=user_count needs filter_by_prefix=presence-"));
    }
    let mut out = Map::new();
    let occupied = app
        .pusher
        .presence()
        .channels(&app.pusher.apps()[index].id, &prefix)
        .await
        .map_err(unavailable)?;
    for (name, _, users) in occupied {
        // `#…`: user channels and the internal connection count.
        if name.starts_with('#') {
            continue;
        }
        let v = if want_users {
            json!({ "user_count": users })
        } else {
            json!({})
        };
        out.insert(name, v);
    }
    Ok(axum::Json(json!({ "channels": out })))
}

async fn channel(
    State(app): State<Arc<App>>,
    Path((id, name)): Path<(String, String)>,
    req: Request,
) -> Result<axum::Json<Value>, PusherHttpError> {
    let (index, _, query) = verified(&app, &id, req).await?;
    let kind = protocol::channel_kind(&name).map_err(bad)?;
    let want = query.get("info").cloned().unwrap_or_default();
    if want.split(',').any(|a| a == "user_count") && kind != ChannelKind::Presence {
        return Err(bad("user_count is available for presence channels only"));
    }
    let (subs, _) = occupancy(&app, index, &name).await?;
    let mut v = channel_info(&app, index, &name, &want).await?;
    v["occupied"] = Value::from(subs > 0);
    Ok(axum::Json(v))
}

async fn channel_users(
    State(app): State<Arc<App>>,
    Path((id, name)): Path<(String, String)>,
    req: Request,
) -> Result<axum::Json<Value>, PusherHttpError> {
    let (index, _, _) = verified(&app, &id, req).await?;
    if protocol::channel_kind(&name) != Ok(ChannelKind::Presence) {
        return Err(bad("Users are listed for presence channels only"));
    }
    let users: Vec<Value> = app
        .pusher
        .presence()
        .members(&app.pusher.apps()[index].id, &name)
        .await
        .map_err(unavailable)?
        .into_iter()
        .map(|(id, _)| json!({ "id": id }))
        .collect();
    Ok(axum::Json(json!({ "users": users })))
}

async fn terminate(
    State(app): State<Arc<App>>,
    Path((id, user)): Path<(String, String)>,
    req: Request,
) -> Result<axum::Json<Value>, PusherHttpError> {
    let (index, _, _) = verified(&app, &id, req).await?;
    terminated(&app, index, &user).await;
    Ok(axum::Json(json!({})))
}

async fn terminate_unprefixed(
    State(app): State<Arc<App>>,
    Path(user): Path<String>,
    req: Request,
) -> Result<axum::Json<Value>, PusherHttpError> {
    let key = form_urlencoded::parse(req.uri().query().unwrap_or("").as_bytes())
        .find(|(k, _)| k == "auth_key")
        .map(|(_, v)| v.into_owned())
        .unwrap_or_default();
    let id = app
        .pusher
        .app_by_key(&key)
        .map(|i| app.pusher.apps()[i].id.clone())
        .ok_or_else(|| unauthorized("Unknown auth_key"))?;
    let (index, _, _) = verified(&app, &id, req).await?;
    terminated(&app, index, &user).await;
    Ok(axum::Json(json!({})))
}

/// Closes a user's sockets on every node, audited as a logout by the app.
async fn terminated(app: &App, index: usize, user: &str) {
    app.pusher.terminate(index, user).await;
    let app_id = app.pusher.apps()[index].id.clone();
    let mut entry = crate::audit::Entry::new(
        crate::audit::Action::Logout,
        "pusher_terminate",
        crate::audit::Caller::PusherApp { app: app_id },
        crate::audit::Subject {
            iss: app.pusher.apps()[index].logout_issuer.clone(),
            sub: Some(user.to_string()),
            sid: None,
        },
    );
    entry.reason = "terminate_connections".into();
    app.audit.record(entry).await;
}
