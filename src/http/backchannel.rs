//! `POST /v1/backchannel-logout`: OpenID Back-Channel Logout 1.0, receiving.
//!
//! An identity provider (Auth0, Keycloak, Okta, ...) POSTs
//! `logout_token=<JWT>` (form-encoded) here when a session ends. The token is
//! validated as §2.6 says (`auth::Authenticator::verify_logout_token`), its
//! `jti` is claimed once (a replay answers 200 and fans out nothing), and the
//! logout takes the one path every logout takes (`revocation`): by `sid`
//! when the token names a session, else by `sub`.
//!
//! Answers (§2.8): 200 on success, 400 `{"error","error_description"}` for
//! any invalid request, 503 if the logout could not be recorded; always
//! `Cache-Control: no-store`.
//!
//! Must not: accept a logout token anywhere else, or an access token here
//! (the two verifications refuse each other's tokens).

use std::sync::Arc;

use axum::extract::{Request, State};
use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::post;
use axum::{Json, Router};
use serde_json::json;

use crate::App;
use crate::error::ErrorCode;
use crate::registry::Target;
use crate::revocation::LogoutOrder;

pub fn router() -> Router<Arc<App>> {
    Router::new().route("/v1/backchannel-logout", post(backchannel_logout))
}

/// A §2.8 error answer.
fn invalid(description: impl Into<String>) -> Response {
    respond(
        StatusCode::BAD_REQUEST,
        "invalid_request",
        Some(description.into()),
    )
}

fn respond(status: StatusCode, error: &'static str, description: Option<String>) -> Response {
    let mut resp = match description {
        Some(d) => (
            status,
            Json(json!({"error": error, "error_description": d})),
        )
            .into_response(),
        None => status.into_response(),
    };
    resp.headers_mut()
        .insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    if status != StatusCode::OK {
        resp.extensions_mut().insert(ErrorCode(error));
    }
    resp
}

/// The one non-empty `logout_token` of a form body (§2.5), or why not.
pub fn logout_token_from_form(body: &[u8]) -> Result<String, &'static str> {
    let mut tokens = form_urlencoded::parse(body).filter(|(k, _)| k == "logout_token");
    match (tokens.next(), tokens.next()) {
        (Some((_, t)), None) if !t.is_empty() => Ok(t.into_owned()),
        (Some(_), Some(_)) => Err("more than one logout_token"),
        _ => Err("missing logout_token"),
    }
}

async fn backchannel_logout(State(app): State<Arc<App>>, req: Request) -> Response {
    if !super::has_content_type(req.headers(), "application/x-www-form-urlencoded") {
        return invalid("the body must be application/x-www-form-urlencoded with a logout_token");
    }
    if crate::ws::query_has_credentials(req.uri().query()) {
        return invalid("the logout token belongs in the body, not the URL");
    }
    let body = match super::read_body(req, app.config.http.max_body_bytes).await {
        Ok(b) => b,
        // In this endpoint's error shape (§2.8), 413 included.
        Err(e) => return respond(e.status(), "invalid_request", Some(e.to_string())),
    };
    let token = match logout_token_from_form(&body) {
        Ok(t) => t,
        Err(why) => return invalid(why),
    };
    let claims = match app.auth.verify_logout_token(&token).await {
        Ok(c) => c,
        Err(e) => {
            app.metrics.auth_failure("backchannel", e.reason());
            return invalid(format!("logout token refused: {} ({})", e, e.reason()));
        }
    };
    if claims.issuer == app.hub_issuers.session_id {
        // The hub signs logout tokens for its apps' backends; one coming
        // back in is an app replaying it, not an identity provider.
        return invalid("the hub does not accept its own logout tokens");
    }
    let Some(target) = Target::session_or_user(claims.issuer, &claims.sid, &claims.sub) else {
        return invalid("the logout token names neither sub nor sid");
    };
    let order = LogoutOrder {
        target,
        sub: claims.sub.as_deref().map(Into::into),
        reason: "backchannel_logout".into(),
        source: "backchannel",
        caller: crate::audit::Caller::Issuer {
            iss: app.auth.issuer_name(claims.issuer).to_string(),
        },
        wait_for_acks: None,
    };
    // A replayed token is acknowledged again, and nothing else happens.
    let expires = claims.exp.saturating_mul(1000) + 60_000;
    match app
        .logout_once(claims.issuer, &claims.jti, expires, order)
        .await
    {
        Ok(_) => respond(StatusCode::OK, "", None),
        Err(e) => respond(
            StatusCode::SERVICE_UNAVAILABLE,
            "temporarily_unavailable",
            Some(format!("{e}; retry")),
        ),
    }
}
