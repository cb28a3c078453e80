//! Native-to-Web SSO over OAuth: `POST /oauth/token`, `POST /oauth/revoke`
//! and `GET /authorize`.
//!
//! `/oauth/token` (form or JSON body; RFC 6749 §5.2 errors). Every request
//! first authenticates its client (`auth::clients`: a confidential client's
//! secret or assertion; a public client names itself), then:
//! * `grant_type=refresh_token` + `audience` = a transfer audience: a
//!   native refresh token mints a session transfer token (the reference
//!   product's form). Without an audience, a *web* refresh token buys a new
//!   session token (rotated, with reuse detection).
//! * `grant_type=urn:ietf:params:oauth:grant-type:token-exchange` (RFC
//!   8693, `exchange`): an upstream token issued to the native app mints a
//!   transfer token or opens a hub native session.
//! * `grant_type=authorization_code` with PKCE: a hub-signed session token
//!   (`sid` = the web session), plus a web refresh token if the client
//!   allows them.
//!
//! `POST /oauth/revoke` (RFC 7009): a native app's logout revokes its
//! refresh token, and the cascade rules apply. Access tokens (JWTs) are
//! answered `unsupported_token_type`: they end by a logout (`/v1/logout`).
//!
//! `/authorize` (`authorize`) redeems a transfer token into a web session.
//!
//! Must not: decide session rules (the graph does) or log any token; the
//! transfer token's query form is never written anywhere by the hub.

mod authorize;
mod exchange;

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::Arc;

use axum::extract::{ConnectInfo, Request, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use serde_json::{Value, json};

pub use authorize::{AuthorizeCheck, AuthorizeParams, check_authorize, redirect_location};
pub(crate) use authorize::{cookie, set_cookie};

use super::no_store;
use crate::App;
use crate::audit::{Action, Caller, Entry, Subject};
use crate::auth::clients::{ClientAuthError, Presented, basic_credentials};
use crate::error::OAuthError;
use crate::registry::{SessionKey, UserKey};
use crate::sessions::{Minted, SessionError, WebGrant};
use crate::util;

pub const STT_TOKEN_TYPE: &str = "urn:auth0:params:oauth:token-type:session_transfer_token";
/// The hub's web-session cookie.
pub const SESSION_COOKIE: &str = "slo_hub_session";
pub const STT_COOKIE: &str = "session_transfer_token";

pub fn router() -> Router<Arc<App>> {
    Router::new()
        .route("/oauth/token", post(token))
        .route("/oauth/revoke", post(revoke))
        .route("/authorize", get(authorize::authorize))
        .route("/.well-known/openid-configuration", get(discovery))
}

/// The hub's own authorization server, described for libraries that
/// configure themselves (OpenID Connect Discovery 1.0; RFC 8414 fields).
async fn discovery(State(app): State<Arc<App>>) -> axum::Json<Value> {
    let base = app.config.public_url();
    axum::Json(serde_json::json!({
        "issuer": app.hub_issuers.session.iss,
        "authorization_endpoint": format!("{base}/authorize"),
        "token_endpoint": format!("{base}/oauth/token"),
        "revocation_endpoint": format!("{base}/oauth/revoke"),
        "jwks_uri": format!("{base}/.well-known/jwks.json"),
        "response_types_supported": ["code"],
        "response_modes_supported": ["query"],
        "grant_types_supported": [
            "authorization_code",
            "refresh_token",
            "urn:ietf:params:oauth:grant-type:token-exchange",
        ],
        "code_challenge_methods_supported": ["S256"],
        "token_endpoint_auth_methods_supported": [
            "none",
            "client_secret_basic",
            "client_secret_post",
            "private_key_jwt",
        ],
        "token_endpoint_auth_signing_alg_values_supported": ["RS256", "ES256", "EdDSA"],
        "subject_types_supported": ["public"],
        "backchannel_logout_supported": true,
        "backchannel_logout_session_supported": true,
        "frontchannel_logout_supported": true,
    }))
}

/// Parameters of a token request: a form or a JSON object of strings. A
/// parameter given twice is refused (RFC 6749 §3.2).
fn parameters(headers: &HeaderMap, body: &[u8]) -> Result<HashMap<String, String>, OAuthError> {
    let mut out = HashMap::new();
    if super::has_content_type(headers, "application/json") {
        let v: serde_json::Map<String, Value> = serde_json::from_slice(body)
            .map_err(|e| OAuthError::InvalidRequest(format!("invalid JSON body: {e}")))?;
        for (k, v) in v {
            let Value::String(s) = v else {
                return Err(OAuthError::InvalidRequest(format!(
                    "parameter {k} must be a string"
                )));
            };
            out.insert(k, s);
        }
    } else if super::has_content_type(headers, "application/x-www-form-urlencoded") {
        for (k, v) in form_urlencoded::parse(body) {
            if out.insert(k.to_string(), v.into_owned()).is_some() {
                return Err(OAuthError::InvalidRequest(format!(
                    "parameter {k} is given more than once"
                )));
            }
        }
    } else {
        return Err(OAuthError::InvalidRequest(
            "the body must be application/x-www-form-urlencoded or application/json".into(),
        ));
    }
    Ok(out)
}

fn required<'a>(p: &'a HashMap<String, String>, name: &str) -> Result<&'a str, OAuthError> {
    p.get(name)
        .map(String::as_str)
        .filter(|v| !v.is_empty())
        .ok_or_else(|| OAuthError::InvalidRequest(format!("missing parameter {name}")))
}

/// The one audience rule of both mint forms: present, and a configured
/// transfer audience (`invalid_target` otherwise, RFC 8693 §2.2.2).
fn transfer_audience(app: &App, p: &HashMap<String, String>) -> Result<(), OAuthError> {
    if p.contains_key("resource") {
        return Err(OAuthError::InvalidTarget(
            "resource is not supported: name the transfer audience with audience".into(),
        ));
    }
    let aud = required(p, "audience")?;
    if app.sessions.is_transfer_audience(aud) {
        Ok(())
    } else {
        Err(OAuthError::InvalidTarget(
            "unknown audience: ask for a session transfer token with the configured audience"
                .into(),
        ))
    }
}

/// Reads and parses a token or revocation request, and authenticates its
/// client: the parameters and the client id.
async fn client_request(
    app: &Arc<App>,
    req: Request,
) -> Result<(HashMap<String, String>, HeaderMap, String), OAuthError> {
    if req.uri().query().is_some() {
        return Err(OAuthError::InvalidRequest(
            "token requests carry their parameters in the body, never in the URL".into(),
        ));
    }
    let headers = req.headers().clone();
    let body = super::read_body(req, app.config.http.max_body_bytes).await?;
    let p = parameters(&headers, &body)?;
    let basic = super::authorization(&headers)
        .filter(|v| v.len() > 6 && v[..6].eq_ignore_ascii_case("basic "));
    let basic_creds = match basic {
        Some(v) => Some(basic_credentials(v).ok_or_else(|| {
            OAuthError::InvalidRequest("malformed Basic client credentials".into())
        })?),
        None => None,
    };
    let used_basic = basic_creds.is_some();
    let presented = Presented {
        client_id: p.get("client_id").map(String::as_str),
        basic: basic_creds,
        client_secret: p.get("client_secret").map(String::as_str),
        assertion_type: p.get("client_assertion_type").map(String::as_str),
        assertion: p.get("client_assertion").map(String::as_str),
    };
    let known = |id: &str| app.sessions.client(id).is_some();
    let (client_id, assertion) = app
        .client_auth
        .authenticate(&presented, known, util::now_secs())
        .map_err(|e| {
            app.metrics
                .auth_failure("oauth_client", client_error_label(&e));
            match e {
                ClientAuthError::Malformed(m) => OAuthError::InvalidRequest(m.into()),
                e if used_basic => OAuthError::InvalidClientBasic(e.to_string()),
                e => OAuthError::InvalidClient(e.to_string()),
            }
        })?;
    if let Some(a) = assertion {
        let first = app
            .revocation
            .claim_once(&format!("client:{client_id}"), &a.jti, a.expires_at_ms)
            .await
            .map_err(|e| OAuthError::TemporarilyUnavailable(format!("{e}; retry")))?;
        if !first {
            return Err(OAuthError::InvalidClient(
                "this client assertion was already used".into(),
            ));
        }
    }
    Ok((p, headers, client_id))
}

fn client_error_label(e: &ClientAuthError) -> &'static str {
    match e {
        ClientAuthError::Unknown => "unknown_client",
        ClientAuthError::Required => "client_auth_required",
        ClientAuthError::Wrong => "bad_client_credentials",
        ClientAuthError::Assertion(_) => "bad_client_assertion",
        ClientAuthError::Malformed(_) => "malformed_client_auth",
    }
}

async fn token(
    State(app): State<Arc<App>>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    req: Request,
) -> Response {
    match token_inner(&app, peer, req).await {
        Ok(v) => {
            let mut resp = Json(v).into_response();
            let h = resp.headers_mut();
            h.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
            h.insert(header::PRAGMA, HeaderValue::from_static("no-cache"));
            resp
        }
        Err(e) => e.into_response(),
    }
}

async fn token_inner(app: &Arc<App>, peer: SocketAddr, req: Request) -> Result<Value, OAuthError> {
    let (p, headers, client_id) = client_request(app, req).await?;
    let client_id = client_id.as_str();
    let ip = app.proxies.client_ip(peer.ip(), &headers);
    match required(&p, "grant_type")? {
        "refresh_token" => {
            let refresh = required(&p, "refresh_token")?;
            if p.contains_key("audience") || p.contains_key("resource") {
                transfer_audience(app, &p)?;
                let minted = app
                    .sessions
                    .mint_with_refresh_token(client_id, refresh, ip)
                    .await;
                Ok(transfer_answer(app, client_id, minted).await?)
            } else {
                let granted = app.sessions.refresh_web(client_id, refresh).await;
                let granted = refused_after_push(app, granted).await?;
                session_token_answer(app, granted).await
            }
        }
        exchange::GRANT => exchange::exchange(app, &p, client_id, ip).await,
        "authorization_code" => {
            let granted = app
                .sessions
                .exchange_code(
                    client_id,
                    required(&p, "code")?,
                    required(&p, "redirect_uri")?,
                    required(&p, "code_verifier")?,
                )
                .await?;
            session_token_answer(app, granted).await
        }
        other => Err(OAuthError::UnsupportedGrantType(format!(
            "grant_type {other:?} is not supported"
        ))),
    }
}

/// Whether `token` is shaped like a JWT (an access or session token).
fn looks_like_jwt(token: &str) -> bool {
    token.bytes().filter(|&b| b == b'.').count() == 2
}

async fn revoke(State(app): State<Arc<App>>, req: Request) -> Response {
    let answer = async {
        let (p, _, client_id) = client_request(&app, req).await?;
        let token = required(&p, "token")?;
        if looks_like_jwt(token) {
            // RFC 7009 §2.2.1: access tokens end by a logout, not here.
            return Err(OAuthError::UnsupportedTokenType(
                "access and session tokens are revoked by a logout (POST /v1/logout); this endpoint revokes refresh tokens".into(),
            ));
        }
        let revoked = app
            .sessions
            .revoke_own_refresh_token(&client_id, token)
            .await?;
        app.deliver(&revoked.web_sessions)
            .await
            .map_err(|e| OAuthError::TemporarilyUnavailable(format!("{e}; retry")))?;
        if !revoked.refresh_tokens.is_empty() {
            let mut entry = Entry::new(
                Action::Revocation,
                "oauth_revoke",
                Caller::Client { client_id },
                Subject {
                    sub: revoked.web_sessions.first().map(|e| e.sub.clone()),
                    ..Subject::default()
                },
            );
            entry.outcome = json!({ "revoked": {
                "web_sessions": revoked.web_sessions.len(),
                "native_sessions": revoked.native_sessions.len(),
                "refresh_tokens": revoked.refresh_tokens.len(),
            }});
            app.audit.record(entry).await;
        }
        Ok(())
    };
    match answer.await {
        // RFC 7009 §2.2: 200 whether or not the token was known.
        Ok(()) => no_store(StatusCode::OK.into_response()),
        Err(e) => e.into_response(),
    }
}

/// A refused grant that revoked something on the way (refresh token
/// reuse): push those logouts before answering.
async fn refused_after_push<T>(
    app: &Arc<App>,
    r: Result<T, SessionError>,
) -> Result<T, OAuthError> {
    if let Err(SessionError::Reuse(revoked)) = &r {
        tracing::warn!(
            sessions = revoked.web_sessions.len(),
            "refresh token reuse detected: its family was revoked"
        );
        let _ = app.deliver(&revoked.web_sessions).await;
    }
    r.map_err(OAuthError::from)
}

async fn transfer_answer(
    app: &Arc<App>,
    client_id: &str,
    minted: Result<Minted, SessionError>,
) -> Result<Value, OAuthError> {
    let minted = refused_after_push(app, minted).await?;
    app.metrics.transfer_tokens_minted.inc();
    let entry = Entry::new(
        Action::TransferTokenMinted,
        "oauth",
        Caller::Client {
            client_id: client_id.to_string(),
        },
        Subject {
            iss: Some(minted.iss.clone()),
            sub: Some(minted.sub.clone()),
            sid: Some(minted.native_session.clone()),
        },
    );
    app.audit.record(entry).await;
    let mut answer = json!({
        "access_token": minted.transfer_token,
        "issued_token_type": STT_TOKEN_TYPE,
        "token_type": "N_A",
        "expires_in": minted.expires_in,
    });
    if let Some(rt) = minted.refresh_token {
        answer["refresh_token"] = json!(rt);
    }
    Ok(answer)
}

/// Signs the session token of a web session: `sub` (the hub subject, which
/// names the issuer too), `sid` = the web session, `aud` = the client,
/// `slo_transfer: true`, the upstream identity for display, and an `exp`
/// that never passes the session's absolute expiry.
async fn session_token_answer(app: &Arc<App>, g: WebGrant) -> Result<Value, OAuthError> {
    let user = UserKey {
        iss: app.hub_issuers.session_id,
        sub: g.sub.as_str().into(),
    };
    let session = SessionKey {
        iss: app.hub_issuers.session_id,
        sid: g.sid.as_str().into(),
    };
    let iat = app
        .revocation
        .valid_iat_now(&user, Some(&session))
        .await
        .map_err(|e| OAuthError::TemporarilyUnavailable(format!("{e}; retry")))?;
    let ttl = app.config.transfer.session_token_ttl_secs;
    let exp = (iat + ttl)
        .min((g.session_expires_ms / 1000) as u64)
        .max(iat + 1);
    let claims = json!({
        "iss": app.hub_issuers.session.iss,
        "sub": g.sub,
        "aud": g.client_id,
        "sid": g.sid,
        "iat": iat,
        "exp": exp,
        "client_id": g.client_id,
        "slo_transfer": true,
        "upstream_iss": g.upstream_iss,
        "upstream_sub": g.upstream_sub,
    });
    let mut answer = json!({
        "access_token": app.hub_issuers.session.sign(&claims),
        "token_type": "Bearer",
        "expires_in": exp.saturating_sub(util::now_secs()),
        "session_id": g.sid,
    });
    if let Some(rt) = g.refresh_token {
        answer["refresh_token"] = json!(rt);
    }
    Ok(answer)
}
