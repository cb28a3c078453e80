//! `POST /v1/events`: Shared Signals push receiver (RFC 8935) for CAEP
//! `session-revoked` Security Event Tokens.
//!
//! The transmitter POSTs the SET itself (`Content-Type:
//! application/secevent+jwt`). A verified event about a session (`sid`)
//! logs that session out, one about a user logs the user out, through
//! `revocation` like every other logout; its `jti` is acted on once.
//! Answers: 202 Accepted, or 400 `{"err","description"}` with RFC 8935's
//! error codes, or 503 if the logout could not be recorded.
//!
//! Must not: accept any other event type as a logout, or an access token.

use std::sync::Arc;

use axum::extract::{Request, State};
use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::post;
use axum::{Json, Router};
use serde_json::json;

use crate::App;
use crate::error::{AuthError, ErrorCode};
use crate::registry::Target;
use crate::revocation::LogoutOrder;

pub fn router() -> Router<Arc<App>> {
    Router::new().route("/v1/events", post(push))
}

fn respond(status: StatusCode, err: Option<(&'static str, String)>) -> Response {
    let mut resp = match err {
        Some((code, description)) => {
            let mut r = (
                status,
                Json(json!({"err": code, "description": description})),
            )
                .into_response();
            r.extensions_mut().insert(ErrorCode(code));
            r
        }
        None => status.into_response(),
    };
    resp.headers_mut()
        .insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    resp
}

/// RFC 8935 §2.3 error codes for a refused SET.
fn err_code(e: &AuthError) -> &'static str {
    match e {
        AuthError::UnknownIssuer | AuthError::WrongIssuer => "invalid_issuer",
        AuthError::WrongAudience => "invalid_audience",
        AuthError::UnknownKey
        | AuthError::BadSignature
        | AuthError::AlgorithmNotAllowed
        | AuthError::KeysUnavailable => "invalid_key",
        _ => "invalid_request",
    }
}

async fn push(State(app): State<Arc<App>>, req: Request) -> Response {
    if !super::has_content_type(req.headers(), "application/secevent+jwt") {
        let why = "the body must be a SET with Content-Type application/secevent+jwt";
        return respond(
            StatusCode::BAD_REQUEST,
            Some(("invalid_request", why.into())),
        );
    }
    let body = match super::read_body(req, app.config.http.max_body_bytes).await {
        Ok(b) => b,
        // In RFC 8935's error shape, 413 included.
        Err(e) => return respond(e.status(), Some(("invalid_request", e.to_string()))),
    };
    let Ok(token) = std::str::from_utf8(&body) else {
        return respond(
            StatusCode::BAD_REQUEST,
            Some(("invalid_request", "not UTF-8".into())),
        );
    };
    let event = match app.auth.verify_session_revoked(token.trim()).await {
        Ok(e) => e,
        Err(e) => {
            app.metrics.auth_failure("caep", e.reason());
            let description = format!("security event refused: {e} ({})", e.reason());
            return respond(StatusCode::BAD_REQUEST, Some((err_code(&e), description)));
        }
    };
    if event.issuer == app.hub_issuers.session_id {
        let why = "the hub does not accept its own tokens as security events";
        return respond(
            StatusCode::BAD_REQUEST,
            Some(("invalid_request", why.into())),
        );
    }
    // An `iss_sub` subject is a user of the issuer it names, which must be
    // configured and one the transmitter may speak for.
    let subject_issuer = match &event.subject_iss {
        None => event.issuer,
        Some(iss) => match app.auth.issuer_id(iss) {
            Some(id) if app.auth.speaks_for(event.issuer, iss) => id,
            Some(_) => {
                let why = "this transmitter may not name users of the subject's issuer";
                return respond(
                    StatusCode::BAD_REQUEST,
                    Some(("invalid_request", why.into())),
                );
            }
            None => {
                let why = "the subject's issuer (iss_sub) is not configured";
                return respond(
                    StatusCode::BAD_REQUEST,
                    Some(("invalid_request", why.into())),
                );
            }
        },
    };
    let Some(target) = Target::session_or_user(subject_issuer, &event.sid, &event.sub) else {
        let why = "the event names neither a user nor a session";
        return respond(
            StatusCode::BAD_REQUEST,
            Some(("invalid_request", why.into())),
        );
    };
    let order = LogoutOrder {
        target,
        sub: event.sub.as_deref().map(Into::into),
        reason: "session_revoked".into(),
        source: "caep",
        caller: crate::audit::Caller::Issuer {
            iss: app.auth.issuer_name(event.issuer).to_string(),
        },
        wait_for_acks: None,
    };
    let keep = event.keep_until.saturating_mul(1000);
    match app.logout_once(event.issuer, &event.jti, keep, order).await {
        Ok(_) => respond(StatusCode::ACCEPTED, None),
        Err(e) => respond(
            StatusCode::SERVICE_UNAVAILABLE,
            Some(("temporarily_unavailable", format!("{e}; retry"))),
        ),
    }
}
