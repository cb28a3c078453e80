//! `POST /dev/token` and `POST /dev/native-session` (dev issuer only,
//! loopback peers only) and `GET /.well-known/jwks.json` (the public keys of
//! tokens the hub signs).

use std::net::SocketAddr;
use std::sync::Arc;

use axum::extract::{ConnectInfo, State};
use axum::http::HeaderMap;
use axum::routing::{get, post};
use axum::{Json, Router};
use serde::Deserialize;
use serde_json::{Value, json};

use super::ApiJson;
use crate::App;
use crate::auth::dev_issuer::DEV_TOKEN_TTL_SECS;
use crate::error::ApiError;
use crate::registry::{SessionKey, UserKey};
use crate::util;

pub fn router() -> Router<Arc<App>> {
    Router::new()
        .route("/dev/token", post(dev_token))
        .route("/dev/native-session", post(dev_native_session))
        .route("/.well-known/jwks.json", get(jwks))
}

/// The dev issuer answers loopback clients, and those of `dev.issuer_clients`
/// (a demo behind a proxy); the client, not a local proxy in front of it.
fn may_use_dev_issuer(app: &App, peer: SocketAddr, headers: &HeaderMap) -> Result<(), ApiError> {
    let client = app.proxies.client_ip(peer.ip(), headers);
    let allowed = client.is_loopback()
        || app
            .config
            .dev
            .issuer_clients
            .iter()
            .filter_map(|c| util::IpNet::parse(c).ok())
            .any(|n| n.contains(client));
    if allowed {
        Ok(())
    } else {
        Err(ApiError::Forbidden(
            "the dev issuer answers loopback clients only (and dev.issuer_clients)".into(),
        ))
    }
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct DevTokenBody {
    sub: String,
    sid: Option<String>,
    client_id: Option<String>,
}

async fn dev_token(
    State(app): State<Arc<App>>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    headers: HeaderMap,
    ApiJson(body): ApiJson<DevTokenBody>,
) -> Result<Json<Value>, ApiError> {
    let (Some(dev), Some(iss)) = (&app.hub_issuers.dev, app.hub_issuers.dev_id) else {
        return Err(ApiError::NotFound);
    };
    may_use_dev_issuer(&app, peer, &headers)?;
    let ids = [Some(&body.sub), body.sid.as_ref(), body.client_id.as_ref()];
    if ids.into_iter().flatten().any(|s| !util::is_printable_id(s)) {
        return Err(ApiError::bad_request(
            "bad_request",
            "sub, sid and client_id must be 1 to 255 printable characters",
        ));
    }
    let user = UserKey {
        iss,
        sub: body.sub.as_str().into(),
    };
    let session = body.sid.as_deref().map(|sid| SessionKey {
        iss,
        sid: sid.into(),
    });
    let iat = app
        .revocation
        .valid_iat_now(&user, session.as_ref())
        .await
        .map_err(|e| ApiError::Unavailable(format!("{e}; retry")))?;
    let token = dev.mint(
        &body.sub,
        body.sid.as_deref(),
        body.client_id.as_deref(),
        iat,
    );
    Ok(Json(json!({
        "access_token": token,
        "token_type": "Bearer",
        "expires_in": DEV_TOKEN_TTL_SECS,
    })))
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct NativeSessionBody {
    sub: String,
    client_id: Option<String>,
}

/// Plays a native app's login: a native session of the dev user `sub` for
/// a native client (default `native-sim`), answered with its refresh token.
async fn dev_native_session(
    State(app): State<Arc<App>>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    headers: HeaderMap,
    ApiJson(body): ApiJson<NativeSessionBody>,
) -> Result<Json<Value>, ApiError> {
    let Some(dev) = &app.hub_issuers.dev else {
        return Err(ApiError::NotFound);
    };
    may_use_dev_issuer(&app, peer, &headers)?;
    if !util::is_printable_id(&body.sub) {
        return Err(ApiError::bad_request(
            "bad_request",
            "sub must be 1 to 255 printable characters",
        ));
    }
    let client_id = body.client_id.as_deref().unwrap_or("native-sim");
    let grant = app
        .sessions
        .open_native(client_id, dev.iss(), &body.sub, None, None)
        .await
        .map_err(|e| match e {
            crate::sessions::SessionError::Store(s) => ApiError::Unavailable(s.to_string()),
            other => ApiError::bad_request("bad_request", other.to_string()),
        })?;
    Ok(Json(json!({
        "refresh_token": grant.refresh_token,
        "native_session": grant.native_session,
    })))
}

async fn jwks(State(app): State<Arc<App>>) -> Json<Value> {
    let mut keys: Vec<Value> = app.hub_issuers.dev.iter().map(|d| d.jwk()).collect();
    keys.push(app.hub_issuers.session.jwk());
    Json(json!({ "keys": keys }))
}
