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
use axum::routing::post;
use axum::{Json, Router};
use serde::Deserialize;
use serde_json::{Value, json};

use super::{ApiJson, Bearer};
use crate::App;
use crate::audit::{Action, Caller, Entry, Subject};
use crate::auth::Credential;
use crate::error::{ApiError, AuthError};
use crate::registry::{SessionKey, Target, UserKey};
use crate::revocation::LogoutOrder;
use crate::sessions::{Revoke, SessionError};
use crate::util::Id;

pub fn router() -> Router<Arc<App>> {
    Router::new().route("/v1/revocations", post(revoke))
}

/// The body: one revocation, by its `type`.
#[derive(Debug, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case", deny_unknown_fields)]
enum RevocationBody {
    /// By its public id (`rt_…`) or by the token itself.
    RefreshToken { id: Option<Id>, token: Option<Id> },
    /// A native (`ns_…`) or web (`ws_…`) session.
    Session { id: Id },
    /// The native sessions rooted at an upstream session.
    ExternalSession { iss: Id, sid: Id },
    /// Every session of a user (of one root issuer, if named).
    User { sub: Id, iss: Option<Id> },
}

async fn revoke(
    State(app): State<Arc<App>>,
    Bearer(cred): Bearer,
    ApiJson(body): ApiJson<RevocationBody>,
) -> Result<Json<Value>, ApiError> {
    let Credential::Backend(key) = cred else {
        return Err(AuthError::MissingScope("revoke").into());
    };
    key.require("revoke")?;
    let caller = Caller::ApiKey {
        name: key.name.clone(),
    };
    let (what, sub) = match body {
        RevocationBody::RefreshToken { id, token } => match (id, token) {
            (Some(v), None) | (None, Some(v)) => (Revoke::RefreshToken(v.0), None),
            _ => {
                return Err(ApiError::bad_request(
                    "bad_request",
                    "type \"refresh_token\" needs exactly one of \"id\" and \"token\"",
                ));
            }
        },
        RevocationBody::Session { id } => (Revoke::Session(id.0), None),
        RevocationBody::ExternalSession { iss, sid } => (
            Revoke::External {
                iss: iss.0,
                sid: sid.0,
            },
            None,
        ),
        RevocationBody::User { sub, iss } => (
            Revoke::User {
                sub: sub.0.clone(),
                iss: iss.map(|i| i.0),
            },
            Some(sub.0),
        ),
    };
    let revoked = app
        .sessions
        .revoke(&what, "session_revoked")
        .await
        .map_err(|e| match e {
            SessionError::Store(s) => ApiError::Unavailable(format!("{s}; retry")),
            SessionError::NotFound(why) => ApiError::Unknown(why),
            other => ApiError::bad_request("bad_request", other.to_string()),
        })?;
    let unrecorded = |e: crate::store::StoreError| {
        ApiError::Unavailable(format!(
            "{e}. The sessions were revoked and their sockets told, but a logout would not survive a restart: retry"
        ))
    };
    app.deliver(&revoked.web_sessions)
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
                sub: sub.as_deref().map(Into::into),
                reason: "session_revoked".into(),
                source: "revocation",
                caller: caller.clone(),
                wait_for_acks: None,
            })
            .await
            .map_err(unrecorded)?;
        logged_out = outcome.delivery.delivered;
    }
    let counts = json!({
        "web_sessions": revoked.web_sessions.len(),
        "native_sessions": revoked.native_sessions.len(),
        "refresh_tokens": revoked.refresh_tokens.len(),
        "transfer_tokens": revoked.transfer_tokens,
    });
    let mut entry = Entry::new(Action::Revocation, "revocation", caller, subject_of(&what));
    entry.target.sub = entry
        .target
        .sub
        .or_else(|| revoked.web_sessions.first().map(|e| e.sub.clone()));
    entry.reason = "session_revoked".into();
    entry.outcome = json!({ "revoked": counts, "sockets_told_directly": logged_out });
    app.audit.record(entry).await;
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

/// Whom a revocation aimed at, for the audit trail: names and ids only (a
/// refresh token given by value is not recorded).
fn subject_of(what: &Revoke) -> Subject {
    match what {
        Revoke::User { sub, iss } => Subject {
            iss: iss.clone(),
            sub: Some(sub.clone()),
            sid: None,
        },
        Revoke::External { iss, sid } => Subject {
            iss: Some(iss.clone()),
            sub: None,
            sid: Some(sid.clone()),
        },
        Revoke::Session(id) => Subject {
            iss: None,
            sub: None,
            sid: Some(id.clone()),
        },
        _ => Subject::default(),
    }
}
