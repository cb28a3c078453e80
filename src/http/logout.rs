//! `POST /v1/logout`: the trigger.
//!
//! * A user's own bearer token logs out itself: `{"scope":"user"}` (default:
//!   every socket of the user, across apps — single logout) or
//!   `{"scope":"session"}` (only sockets of the token's `sid`). Naming another
//!   `sub`, `sid` or `iss` is 403. Rate-limited per user (429).
//! * A backend API key with `logout:any` logs out anyone:
//!   `{"sub", "sid"?, "iss"?, "reason"?}` — with `sid`, that session only.
//! * `"wait_for_acks_ms"` (≤ `limits.max_wait_for_acks_ms`) makes the answer
//!   also count client acknowledgements.
//!
//! Answer: `{"event_id","matched","delivered"}` (+ `"acked"`).

use std::sync::Arc;
use std::time::Duration;

use axum::extract::State;
use axum::routing::post;
use axum::{Json, Router};
use serde::Deserialize;
use serde_json::{Value, json};

use super::{ApiJson, Bearer};
use crate::App;
use crate::audit::Caller;
use crate::auth::{Credential, IssuerId};
use crate::error::ApiError;
use crate::registry::{SessionKey, Target, UserKey};
use crate::revocation::LogoutOrder;
use crate::util::Id;

pub fn router() -> Router<Arc<App>> {
    Router::new().route("/v1/logout", post(logout))
}

/// What a logout addresses when the body says so.
#[derive(Clone, Copy, Debug, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
enum Scope {
    User,
    Session,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct LogoutBody {
    scope: Option<Scope>,
    sub: Option<Id>,
    sid: Option<Id>,
    iss: Option<Id>,
    reason: Option<String>,
    wait_for_acks_ms: Option<u64>,
}

const MAX_REASON: usize = 200;

async fn logout(
    State(app): State<Arc<App>>,
    Bearer(cred): Bearer,
    ApiJson(body): ApiJson<LogoutBody>,
) -> Result<Json<Value>, ApiError> {
    let reason = match body.reason.as_deref() {
        None | Some("") => "logout".to_string(),
        Some(r) if r.len() > MAX_REASON || r.chars().any(char::is_control) => {
            return Err(ApiError::bad_request(
                "bad_request",
                format!("reason must be at most {MAX_REASON} printable characters"),
            ));
        }
        Some(r) => r.to_string(),
    };
    let wait = match body.wait_for_acks_ms {
        None => None,
        Some(ms) if ms > app.config.limits.max_wait_for_acks_ms => {
            return Err(ApiError::bad_request(
                "bad_request",
                format!(
                    "wait_for_acks_ms must be at most {}",
                    app.config.limits.max_wait_for_acks_ms
                ),
            ));
        }
        Some(ms) => Some(Duration::from_millis(ms)),
    };
    let (target, sub, source, caller) = match cred {
        Credential::User(p) => {
            let own_iss = app.auth.issuer_name(p.issuer);
            let other = body.sub.as_deref().is_some_and(|s| s != &*p.sub)
                || body.iss.as_deref().is_some_and(|i| i != own_iss)
                || body.sid.is_some() && body.sid.as_deref() != p.sid.as_deref();
            if other {
                return Err(ApiError::Forbidden(
                    "a user token can only log out its own user or session".into(),
                ));
            }
            let user = UserKey {
                iss: p.issuer,
                sub: p.sub.clone(),
            };
            if !app.user_trigger_limits.try_take(&user) {
                return Err(ApiError::RateLimited);
            }
            let target = match body.scope.unwrap_or(Scope::User) {
                Scope::User => Target::User(user.clone()),
                Scope::Session => {
                    let sid = p.sid.as_deref().ok_or_else(|| {
                        ApiError::bad_request(
                            "bad_request",
                            "this token has no sid claim, so it can only log out its user (scope \"user\")",
                        )
                    })?;
                    Target::Session(SessionKey {
                        iss: p.issuer,
                        sid: sid.into(),
                    })
                }
            };
            let caller = Caller::User {
                iss: own_iss.to_string(),
                sub: p.sub.to_string(),
                client: p.client_id.clone(),
            };
            (target, Some(user.sub), "user", caller)
        }
        Credential::Backend(key) => {
            key.require("logout:any")?;
            let iss = backend_issuer(&app, body.iss.as_deref())?;
            let target = match (body.scope, &body.sub, &body.sid) {
                (None | Some(Scope::Session), _, Some(sid)) => Target::Session(SessionKey {
                    iss,
                    sid: sid.0.as_str().into(),
                }),
                (None | Some(Scope::User), Some(sub), None) => Target::User(UserKey {
                    iss,
                    sub: sub.0.as_str().into(),
                }),
                (Some(Scope::User), _, Some(_)) => {
                    return Err(ApiError::bad_request(
                        "bad_request",
                        "scope \"user\" takes a sub, not a sid",
                    ));
                }
                _ => {
                    return Err(ApiError::bad_request(
                        "bad_request",
                        "name the user (\"sub\") or the session (\"sid\") to log out",
                    ));
                }
            };
            let caller = Caller::ApiKey {
                name: key.name.clone(),
            };
            (target, body.sub.map(|s| s.0.into()), "api_key", caller)
        }
    };
    let outcome = app
        .logout(LogoutOrder {
            target,
            sub,
            reason,
            source,
            caller,
            wait_for_acks: wait,
        })
        .await
        .map_err(|e| {
            ApiError::Unavailable(format!(
                "{e}. Connected sockets were told, but the logout would not survive a restart: retry"
            ))
        })?;
    let mut answer = json!({
        "event_id": outcome.event_id,
        "matched": outcome.delivery.matched,
        "delivered": outcome.delivery.delivered,
    });
    if let Some(acked) = outcome.acked {
        answer["acked"] = json!(acked);
    }
    Ok(Json(answer))
}

/// The issuer a backend request addresses: the named one, or the only one.
fn backend_issuer(app: &App, iss: Option<&str>) -> Result<IssuerId, ApiError> {
    match iss {
        Some(i) => app.auth.issuer_id(i).ok_or_else(|| {
            ApiError::bad_request("unknown_issuer", "no issuer with this iss is configured")
        }),
        None => app
            .auth
            .single_issuer(app.hub_issuers.session_id)
            .ok_or_else(|| {
                ApiError::bad_request(
                    "bad_request",
                    "several issuers are configured: name one with \"iss\"",
                )
            }),
    }
}
