//! `POST /v1/revocations`: session-revocation events from backends (API key
//! with the `revoke` scope).
//!
//! `{"type":"refresh_token","id"|"token"}`, `{"type":"session","id"}`,
//! `{"type":"external_session","iss","sid"}`, `{"type":"user","sub","iss"?}`.
//! The session graph revokes along its links (`sessions`); every web session
//! that ends is logged out live. An external session or a user of a
//! configured issuer is also logged out directly, so sockets holding that
//! issuer's own tokens go too. The answer lists what was revoked.
//!
//! Must not: decide the cascade rules (the graph does).

use std::sync::Arc;

use axum::extract::State;
use axum::http::HeaderMap;
use axum::routing::post;
use axum::{Json, Router};
use serde::Deserialize;
use serde_json::{Value, json};

use super::{ApiJson, authorization};
use crate::App;
use crate::auth::Credential;
use crate::error::{ApiError, AuthError};
use crate::registry::{SessionKey, Target, UserKey};
use crate::revocation::LogoutOrder;
use crate::sessions::{Revoke, SessionError};

pub fn router() -> Router<Arc<App>> {
    Router::new().route("/v1/revocations", post(revoke))
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RevocationBody {
    #[serde(rename = "type")]
    kind: String,
    id: Option<String>,
    token: Option<String>,
    iss: Option<String>,
    sid: Option<String>,
    sub: Option<String>,
}

fn field<'a>(v: &'a Option<String>, name: &str, kind: &str) -> Result<&'a str, ApiError> {
    v.as_deref().filter(|s| !s.is_empty()).ok_or_else(|| {
        ApiError::bad_request("bad_request", format!("type {kind:?} needs \"{name}\""))
    })
}

async fn revoke(
    State(app): State<Arc<App>>,
    headers: HeaderMap,
    ApiJson(body): ApiJson<RevocationBody>,
) -> Result<Json<Value>, ApiError> {
    let cred = app
        .auth
        .authenticate_bearer(authorization(&headers))
        .await
        .inspect_err(|e| app.metrics.auth_failure("http", e.reason()))?;
    let Credential::Backend(key) = cred else {
        return Err(AuthError::MissingScope("revoke").into());
    };
    key.require("revoke")?;
    let k = body.kind.as_str();
    let what = match k {
        "refresh_token" => Revoke::RefreshToken(match (&body.id, &body.token) {
            (Some(id), None) if !id.is_empty() => id.clone(),
            (None, Some(t)) if !t.is_empty() => t.clone(),
            _ => {
                return Err(ApiError::bad_request(
                    "bad_request",
                    "type \"refresh_token\" needs exactly one of \"id\" and \"token\"",
                ));
            }
        }),
        "session" => Revoke::Session(field(&body.id, "id", k)?.to_string()),
        "external_session" => Revoke::External {
            iss: field(&body.iss, "iss", k)?.to_string(),
            sid: field(&body.sid, "sid", k)?.to_string(),
        },
        "user" => Revoke::User {
            sub: field(&body.sub, "sub", k)?.to_string(),
            iss: body.iss.clone(),
        },
        _ => {
            return Err(ApiError::bad_request(
                "bad_request",
                "type must be refresh_token, session, external_session or user",
            ));
        }
    };
    let revoked = app.sessions.revoke(&what).await.map_err(|e| match e {
        SessionError::Store(s) => ApiError::Unavailable(format!("{s}; retry")),
        SessionError::NotFound(why) => ApiError::Unknown(why),
        other => ApiError::bad_request("bad_request", other.to_string()),
    })?;
    let unrecorded = |e: crate::store::StoreError| {
        ApiError::Unavailable(format!(
            "{e}. The sessions were revoked and their sockets told, but a logout would not survive a restart: retry"
        ))
    };
    app.end_web_sessions(&revoked.web_sessions, "session_revoked", "revocation")
        .await
        .map_err(unrecorded)?;
    // Sockets holding the upstream issuer's own tokens for this session or user.
    let direct = match &what {
        Revoke::External { iss, sid } => app.auth.issuer_id(iss).map(|iss| {
            Target::Session(SessionKey {
                iss,
                sid: sid.as_str().into(),
            })
        }),
        Revoke::User {
            sub,
            iss: Some(iss),
        } => app.auth.issuer_id(iss).map(|iss| {
            Target::User(UserKey {
                iss,
                sub: sub.as_str().into(),
            })
        }),
        _ => None,
    };
    let mut logged_out = 0;
    if let Some(target) = direct {
        // The one logout path (its graph follow-up finds nothing left to
        // revoke; its Pusher bridge tells the user's Pusher sockets).
        let outcome = app
            .logout(LogoutOrder {
                target,
                sub: body.sub.as_deref().map(Into::into),
                reason: "session_revoked".into(),
                source: "revocation",
                wait_for_acks: None,
            })
            .await
            .map_err(unrecorded)?;
        logged_out = outcome.delivery.delivered;
    }
    Ok(Json(json!({
        "revoked": {
            "web_sessions": revoked.web_sessions.len(),
            "native_sessions": revoked.native_sessions.len(),
            "refresh_tokens": revoked.refresh_tokens.len(),
            "transfer_tokens": revoked.transfer_tokens,
        },
        "web_sessions": revoked.web_sessions.iter().map(|e| &e.sid).collect::<Vec<_>>(),
        "native_sessions": revoked.native_sessions,
        "refresh_tokens": revoked.refresh_tokens,
        "sockets_told_directly": logged_out,
    })))
}
