//! `POST /dev/token` (dev issuer only, loopback peers only) and
//! `GET /.well-known/jwks.json` (the public keys of tokens the hub signs).

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use axum::extract::{ConnectInfo, State};
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
        .route("/.well-known/jwks.json", get(jwks))
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct DevTokenBody {
    sub: String,
    sid: Option<String>,
    client_id: Option<String>,
}

fn valid_id(s: &str) -> bool {
    !s.is_empty() && s.len() <= 255 && !s.chars().any(char::is_control)
}

async fn dev_token(
    State(app): State<Arc<App>>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    ApiJson(body): ApiJson<DevTokenBody>,
) -> Result<Json<Value>, ApiError> {
    let (Some(dev), Some(iss)) = (&app.dev_issuer, app.dev_issuer_id) else {
        return Err(ApiError::NotFound);
    };
    if !peer.ip().is_loopback() {
        return Err(ApiError::Forbidden(
            "the dev issuer answers loopback clients only".into(),
        ));
    }
    let ids = [Some(&body.sub), body.sid.as_ref(), body.client_id.as_ref()];
    if ids.into_iter().flatten().any(|s| !valid_id(s)) {
        return Err(ApiError::bad_request(
            "bad_request",
            "sub, sid and client_id must be 1 to 255 printable characters",
        ));
    }
    // A token minted in the same second as this user's last logout would be
    // revoked by it (iat has one-second resolution): wait for the next second.
    let user = UserKey {
        iss,
        sub: body.sub.as_str().into(),
    };
    let session = body.sid.as_deref().map(|sid| SessionKey {
        iss,
        sid: sid.into(),
    });
    let now = util::now_secs();
    let iat = app.revocation.first_valid_iat(&user, session.as_ref(), now);
    if iat > now {
        let wait_ms = (iat as i64 * 1000 - util::now_ms()).max(0) as u64;
        tokio::time::sleep(Duration::from_millis(wait_ms)).await;
    }
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

async fn jwks(State(app): State<Arc<App>>) -> Json<Value> {
    let keys: Vec<Value> = app.dev_issuer.iter().map(|d| d.jwk()).collect();
    Json(json!({ "keys": keys }))
}
