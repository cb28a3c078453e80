//! The HTTP API: one module per endpoint group, merged into one router here.
//!
//! * `logout` — `POST /v1/logout`, the trigger.
//! * `backchannel` — `POST /v1/backchannel-logout`, OpenID Back-Channel Logout.
//! * `caep` — `POST /v1/events`, CAEP `session-revoked` SETs (RFC 8935 push).
//! * `oauth` — `POST /oauth/token`, `POST /oauth/revoke`, `GET /authorize`: Native-to-Web SSO.
//! * `revocations` — `POST /v1/revocations`, revoking along the session graph.
//! * `frontchannel` — `GET /v1/logout/frontchannel`, the common logout page.
//! * `dev` — `POST /dev/token`, `POST /dev/native-session`, `GET /.well-known/jwks.json`.
//! * `health` — `/healthz`, `/readyz`, `/metrics`.
//! * `assets` — the JS client library and the pages the hub serves.
//! * `/v1/ws` is routed to `ws::upgrade`; `/app/{key}` and `/apps/{id}/...`
//!   to `pusher` (Pusher protocol v7 and HTTP API).
//!
//! Cross-cutting rules live here: [`ApiJson`] gives malformed, oversized and
//! mistyped bodies our error format (400 / 413 / 415), and one middleware
//! counts every refused request by endpoint and error code.
//!
//! Must not: contain business rules; handlers authenticate, validate and call
//! `revocation`.

pub mod admin;
pub mod assets;
pub mod backchannel;
pub mod caep;
pub mod console;
pub mod dev;
pub mod frontchannel;
pub mod health;
pub mod logout;
pub mod oauth;
pub mod revocations;

use std::sync::Arc;

use axum::Router;
use axum::extract::{FromRequest, MatchedPath, Request, State};
use axum::http::{HeaderValue, Method, header};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use serde::de::DeserializeOwned;
use tower_http::cors::{AllowOrigin, CorsLayer};

use crate::App;
use crate::auth::Credential;
use crate::error::{ApiError, AuthError, ErrorCode};

/// Everything apps and users reach; with the operator's endpoints too,
/// unless those have a listener of their own (`console.listen`).
pub fn router(app: Arc<App>) -> Router {
    let cors = cors(&app);
    let api = Router::new()
        .merge(logout::router())
        .merge(backchannel::router())
        .merge(caep::router())
        .merge(oauth::router())
        .merge(revocations::router())
        .merge(dev::router())
        .layer(cors);
    let mut r = Router::new()
        .route("/v1/ws", get(crate::ws::upgrade))
        .merge(crate::pusher::router())
        .merge(api)
        .merge(frontchannel::router())
        .merge(health::router())
        .merge(assets::router());
    if app.config.console.listen.is_none() {
        r = r.merge(operator(&app));
    }
    finish(app, r)
}

/// The operator's endpoints alone (metrics, audit, admin API, console),
/// for `console.listen`; health too, for that port's checks.
pub fn operator_router(app: Arc<App>) -> Router {
    let r = operator(&app).merge(health::router());
    finish(app, r)
}

fn operator(app: &App) -> Router<Arc<App>> {
    let mut r = health::metrics_router().merge(admin::router());
    if app.config.console.enabled {
        r = r.merge(console::router());
    }
    r
}

fn finish(app: Arc<App>, r: Router<Arc<App>>) -> Router {
    r.fallback(|| async { ApiError::NotFound })
        .layer(middleware::from_fn_with_state(
            app.clone(),
            count_rejections,
        ))
        .with_state(app)
}

fn cors(app: &App) -> CorsLayer {
    let origins: Vec<HeaderValue> = app
        .origins
        .cors
        .iter()
        .filter_map(|o| HeaderValue::from_str(o).ok())
        .collect();
    let allow = if app.origins.cors.iter().any(|o| o == "*") {
        AllowOrigin::any()
    } else {
        AllowOrigin::list(origins)
    };
    CorsLayer::new()
        .allow_origin(allow)
        .allow_methods([Method::GET, Method::POST])
        .allow_headers([header::AUTHORIZATION, header::CONTENT_TYPE])
        .max_age(std::time::Duration::from_secs(600))
}

async fn count_rejections(State(app): State<Arc<App>>, req: Request, next: Next) -> Response {
    let endpoint = endpoint_label(req.extensions().get::<MatchedPath>());
    let mut resp = next.run(req).await;
    if resp.status() == axum::http::StatusCode::METHOD_NOT_ALLOWED
        && resp.extensions().get::<ErrorCode>().is_none()
    {
        // The router's own 405 has no body: answer in our format, keeping `Allow`.
        let allow = resp.headers().get(header::ALLOW).cloned();
        resp = ApiError::MethodNotAllowed.into_response();
        if let Some(allow) = allow {
            resp.headers_mut().insert(header::ALLOW, allow);
        }
    }
    if let Some(ErrorCode(code)) = resp.extensions().get::<ErrorCode>() {
        app.metrics.http_rejection(endpoint, code);
    }
    resp
}

fn endpoint_label(path: Option<&MatchedPath>) -> &'static str {
    match path.map(|p| p.as_str()) {
        Some("/v1/logout") => "logout",
        Some("/v1/backchannel-logout") => "backchannel_logout",
        Some("/v1/events") => "events",
        Some("/v1/ws") => "ws",
        Some("/dev/token") => "dev_token",
        Some("/oauth/token") => "oauth_token",
        Some("/authorize") => "authorize",
        Some("/oauth/revoke") => "oauth_revoke",
        Some("/v1/revocations") => "revocations",
        Some("/v1/logout/frontchannel") => "frontchannel_logout",
        Some("/app/{key}") => "pusher_ws",
        Some(p) if p.starts_with("/apps/") || p.starts_with("/users/") => "pusher_api",
        Some(_) => "other",
        None => "unrouted",
    }
}

/// The verified caller of an endpoint that takes a bearer credential: a
/// backend API key, or a user's token that no logout has revoked (401
/// `token_revoked` otherwise: a logged-out token acts nowhere). Taken from
/// the headers before the body is read, so an unauthenticated caller never
/// gets to send one.
pub struct Bearer(pub Credential);

impl axum::extract::FromRequestParts<Arc<App>> for Bearer {
    type Rejection = ApiError;

    async fn from_request_parts(
        parts: &mut axum::http::request::Parts,
        app: &Arc<App>,
    ) -> Result<Self, ApiError> {
        let refuse = |e: AuthError| {
            app.metrics.auth_failure("http", e.reason());
            ApiError::Unauthorized(e)
        };
        if crate::ws::query_has_credentials(parts.uri.query()) {
            return Err(refuse(AuthError::CredentialsInUrl));
        }
        let cred = app
            .auth
            .authenticate_bearer(authorization(&parts.headers))
            .await
            .map_err(refuse)?;
        if let Credential::User(p) = &cred
            && app.principal_revoked(p).await.map_err(|e| {
                ApiError::Unavailable(format!("{e}; the token cannot be checked now, retry"))
            })?
        {
            return Err(refuse(AuthError::Revoked));
        }
        Ok(Bearer(cred))
    }
}

/// A JSON body, refused in our error format: 415 unless `application/json`,
/// 413 above `http.max_body_bytes`, 400 if it does not parse into `T`.
pub struct ApiJson<T>(pub T);

impl<T: DeserializeOwned> FromRequest<Arc<App>> for ApiJson<T> {
    type Rejection = ApiError;

    async fn from_request(req: Request, app: &Arc<App>) -> Result<Self, ApiError> {
        if !has_content_type(req.headers(), "application/json") {
            return Err(ApiError::UnsupportedMediaType("application/json"));
        }
        let limit = app.config.http.max_body_bytes;
        let bytes = read_body(req, limit).await?;
        serde_json::from_slice(&bytes)
            .map(ApiJson)
            .map_err(|e| ApiError::bad_request("bad_request", format!("invalid JSON body: {e}")))
    }
}

/// Whether the request's media type (parameters aside) is `mime`.
pub fn has_content_type(headers: &axum::http::HeaderMap, mime: &str) -> bool {
    headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.split(';').next())
        .is_some_and(|m| m.trim().eq_ignore_ascii_case(mime))
}

/// Reads a body up to `limit` bytes (413 beyond), within the body deadline
/// (`http.body_read_timeout_ms`; 408 after it): a body that never arrives
/// holds its connection for no longer than that.
pub async fn read_body(req: Request, limit: usize) -> Result<axum::body::Bytes, ApiError> {
    let deadline = req
        .extensions()
        .get::<BodyDeadline>()
        .map_or(std::time::Duration::from_secs(10), |d| d.0);
    match tokio::time::timeout(deadline, read_body_now(req, limit)).await {
        Ok(read) => read,
        Err(_) => Err(ApiError::RequestTimeout),
    }
}

/// How long a request's body may take (set per connection by `server`).
#[derive(Clone, Copy, Debug)]
pub struct BodyDeadline(pub std::time::Duration);

async fn read_body_now(req: Request, limit: usize) -> Result<axum::body::Bytes, ApiError> {
    let declared = req
        .headers()
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok());
    if declared.is_some_and(|n| n > limit as u64) {
        return Err(ApiError::PayloadTooLarge(limit));
    }
    axum::body::to_bytes(req.into_body(), limit)
        .await
        .map_err(|e| {
            let too_large = std::error::Error::source(&e)
                .is_some_and(|s| s.is::<http_body_util::LengthLimitError>());
            if too_large {
                ApiError::PayloadTooLarge(limit)
            } else {
                ApiError::bad_request("bad_request", "the request body could not be read")
            }
        })
}

/// The `Authorization` header as text, if present and visible ASCII.
pub fn authorization(req_headers: &axum::http::HeaderMap) -> Option<&str> {
    req_headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
}

/// A 400 HTML page for a browser that followed a bad link (no redirect to
/// an unregistered address is ever made instead).
pub fn error_page(heading: &str, message: &str) -> Response {
    let body = format!(
        "<!doctype html><meta charset=utf-8><title>slo-hub: invalid request</title>\
         <h1>{}</h1><p>{}</p>",
        html_escape(heading),
        html_escape(message)
    );
    let mut resp = (
        axum::http::StatusCode::BAD_REQUEST,
        axum::response::Html(body),
    )
        .into_response();
    resp.extensions_mut()
        .insert(crate::error::ErrorCode("invalid_request"));
    no_store(resp)
}

pub fn html_escape(s: &str) -> String {
    s.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
        .replace('"', "&quot;")
}

/// Pages the hub serves to browsers are never cached, and never send their
/// URL (which may hold a transfer token) on as `Referer`.
pub fn no_store(mut resp: Response) -> Response {
    let h = resp.headers_mut();
    h.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    h.insert(
        header::REFERRER_POLICY,
        HeaderValue::from_static("no-referrer"),
    );
    resp
}
