//! Native-to-Web SSO over OAuth: `POST /oauth/token` and `GET /authorize`.
//!
//! `/oauth/token` (JSON or form body; RFC 6749 §5.2 errors):
//! * `grant_type=refresh_token` + `audience` = a transfer audience: a
//!   native refresh token mints a session transfer token (the reference
//!   product's form). Without an audience, a *web* refresh token buys a new
//!   session token (rotated, with reuse detection).
//! * `grant_type=urn:ietf:params:oauth:grant-type:token-exchange` (RFC
//!   8693): an upstream access or ID token of the native app
//!   (`subject_token`, verified like any access token, with a `sid`) mints a
//!   transfer token, or with `requested_token_type` = refresh token, opens
//!   a hub native session and answers its refresh token.
//! * `grant_type=authorization_code` with PKCE: a hub-signed session token
//!   (`sid` = the web session), plus a web refresh token if the client
//!   allows them.
//!
//! `POST /oauth/revoke` (RFC 7009, public clients): a native app's logout
//! revokes its refresh token, and the cascade rules apply.
//!
//! `/authorize` redeems a transfer token (cookie `session_transfer_token`
//! or query parameter, as the client allows) into a web session; the four
//! outcomes are `sessions::Sessions::authorize`. `redirect_uri` is checked
//! exactly before any redirect: a bad one gets an error page.
//!
//! Must not: decide session rules (the graph does) or log any token; the
//! transfer token's query form is never written anywhere by the hub.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::Arc;

use axum::extract::{ConnectInfo, Request, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, Uri, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use serde_json::{Value, json};

use super::no_store;
use crate::App;
use crate::config::ClientSettings;
use crate::error::OAuthError;
use crate::registry::{SessionKey, UserKey};
use crate::sessions::{AuthorizeRequest, Authorized, Minted, SessionError, WebGrant};
use crate::util;

pub const STT_TOKEN_TYPE: &str = "urn:auth0:params:oauth:token-type:session_transfer_token";
const TOKEN_EXCHANGE: &str = "urn:ietf:params:oauth:grant-type:token-exchange";
const REFRESH_TOKEN_TYPE: &str = "urn:ietf:params:oauth:token-type:refresh_token";
const SUBJECT_TYPES: [&str; 3] = [
    "urn:ietf:params:oauth:token-type:access_token",
    "urn:ietf:params:oauth:token-type:id_token",
    "urn:ietf:params:oauth:token-type:jwt",
];
/// The hub's web-session cookie.
pub const SESSION_COOKIE: &str = "slo_hub_session";
pub const STT_COOKIE: &str = "session_transfer_token";

pub fn router() -> Router<Arc<App>> {
    Router::new()
        .route("/oauth/token", post(token))
        .route("/oauth/revoke", post(revoke))
        .route("/authorize", get(authorize))
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

async fn token_inner(app: &App, peer: SocketAddr, req: Request) -> Result<Value, OAuthError> {
    if req.uri().query().is_some() {
        return Err(OAuthError::InvalidRequest(
            "token requests carry their parameters in the body, never in the URL".into(),
        ));
    }
    let headers = req.headers().clone();
    let body = super::read_body(req, app.config.http.max_body_bytes).await?;
    let p = parameters(&headers, &body)?;
    let ip = app.sessions.binding.client_ip(peer.ip(), &headers);
    let client_id = required(&p, "client_id")?;
    match required(&p, "grant_type")? {
        "refresh_token" => {
            let refresh = required(&p, "refresh_token")?;
            match p.get("audience").map(String::as_str) {
                Some(aud) if app.sessions.is_transfer_audience(aud) => {
                    let minted = app
                        .sessions
                        .mint_with_refresh_token(client_id, refresh, ip)
                        .await;
                    Ok(transfer_answer(app, minted).await?)
                }
                Some(_) => Err(OAuthError::InvalidRequest(
                    "unknown audience: ask for a session transfer token with the configured audience".into(),
                )),
                None => {
                    let granted = app.sessions.refresh_web(client_id, refresh).await;
                    let granted = refused_after_push(app, granted).await?;
                    Ok(session_token_answer(app, granted).await)
                }
            }
        }
        TOKEN_EXCHANGE => exchange(app, &p, client_id, ip).await,
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
            Ok(session_token_answer(app, granted).await)
        }
        other => Err(OAuthError::UnsupportedGrantType(format!(
            "grant_type {other:?} is not supported"
        ))),
    }
}

async fn revoke(State(app): State<Arc<App>>, req: Request) -> Response {
    let answer = async {
        if req.uri().query().is_some() {
            return Err(OAuthError::InvalidRequest(
                "revocation requests carry their parameters in the body".into(),
            ));
        }
        let headers = req.headers().clone();
        let body = super::read_body(req, app.config.http.max_body_bytes).await?;
        let p = parameters(&headers, &body)?;
        let revoked = app
            .sessions
            .revoke_own_refresh_token(required(&p, "client_id")?, required(&p, "token")?)
            .await?;
        app.end_web_sessions(&revoked.web_sessions, "session_revoked", "revocation")
            .await
            .map_err(|e| OAuthError::TemporarilyUnavailable(format!("{e}; retry")))?;
        Ok(())
    };
    match answer.await {
        // RFC 7009 §2.2: 200 whether or not the token was known.
        Ok(()) => no_store(StatusCode::OK.into_response()),
        Err(e) => e.into_response(),
    }
}

/// RFC 8693: the native app's upstream token stands for its session.
async fn exchange(
    app: &App,
    p: &HashMap<String, String>,
    client_id: &str,
    ip: std::net::IpAddr,
) -> Result<Value, OAuthError> {
    let subject = required(p, "subject_token")?;
    let subject_type = required(p, "subject_token_type")?;
    if !SUBJECT_TYPES.contains(&subject_type) {
        return Err(OAuthError::InvalidRequest(format!(
            "subject_token_type must be one of {}",
            SUBJECT_TYPES.join(", ")
        )));
    }
    let principal = app.auth.verify_token(subject).await.map_err(|e| {
        app.metrics.auth_failure("token_exchange", e.reason());
        OAuthError::InvalidGrant(format!("subject_token refused: {e}"))
    })?;
    if principal.issuer == app.session_issuer_id {
        return Err(OAuthError::InvalidGrant(
            "nested Native-to-Web SSO is not allowed: the subject is a transfer-created web session"
                .into(),
        ));
    }
    // A subject token already logged out must not open anything.
    let user = UserKey {
        iss: principal.issuer,
        sub: principal.sub.clone(),
    };
    let session = principal.sid.as_deref().map(|sid| SessionKey {
        iss: principal.issuer,
        sid: sid.into(),
    });
    if app
        .revocation
        .revoked_token(principal.iat, &user, session.as_ref())
        .is_some()
    {
        return Err(OAuthError::InvalidGrant(
            "the subject_token was revoked by a logout".into(),
        ));
    }
    let sid = principal.sid.as_deref().ok_or_else(|| {
        OAuthError::InvalidRequest(
            "the subject_token has no sid claim: the hub needs the upstream session to revoke along"
                .into(),
        )
    })?;
    let iss = app.auth.issuer_name(principal.issuer);
    match p.get("requested_token_type").map(String::as_str) {
        Some(REFRESH_TOKEN_TYPE) => {
            let grant = app
                .sessions
                .open_native(client_id, iss, &principal.sub, Some(sid))
                .await?;
            Ok(json!({
                "access_token": grant.refresh_token,
                "issued_token_type": REFRESH_TOKEN_TYPE,
                "token_type": "N_A",
                "native_session": grant.native_session,
            }))
        }
        Some(t) if t != STT_TOKEN_TYPE => Err(OAuthError::InvalidRequest(format!(
            "requested_token_type {t:?} is not supported"
        ))),
        _ => {
            let aud = required(p, "audience")?;
            if !app.sessions.is_transfer_audience(aud) {
                return Err(OAuthError::InvalidRequest(
                    "unknown audience: ask for a session transfer token with the configured audience".into(),
                ));
            }
            let minted = app
                .sessions
                .mint_for_upstream_session(client_id, iss, &principal.sub, sid, ip)
                .await;
            transfer_answer(app, minted).await
        }
    }
}

/// A refused grant that revoked something on the way (refresh token
/// reuse): push those logouts before answering.
async fn refused_after_push<T>(app: &App, r: Result<T, SessionError>) -> Result<T, OAuthError> {
    if let Err(SessionError::Reuse(revoked)) = &r {
        tracing::warn!(
            sessions = revoked.web_sessions.len(),
            "refresh token reuse detected: its family was revoked"
        );
        let _ = app
            .end_web_sessions(&revoked.web_sessions, "refresh_token_reuse", "revocation")
            .await;
    }
    r.map_err(OAuthError::from)
}

async fn transfer_answer(
    app: &App,
    minted: Result<Minted, SessionError>,
) -> Result<Value, OAuthError> {
    let minted = refused_after_push(app, minted).await?;
    app.metrics.transfer_tokens_minted.inc();
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

/// Signs the session token of a web session: `sub`, `sid` = the web
/// session, `aud` = the client, `slo_transfer: true`, and an `exp` that
/// never passes the session's absolute expiry.
async fn session_token_answer(app: &App, g: WebGrant) -> Value {
    let user = UserKey {
        iss: app.session_issuer_id,
        sub: g.sub.as_str().into(),
    };
    let session = SessionKey {
        iss: app.session_issuer_id,
        sid: g.sid.as_str().into(),
    };
    let iat = app.revocation.valid_iat_now(&user, Some(&session)).await;
    let ttl = app.config.transfer.session_token_ttl_secs;
    let exp = (iat + ttl)
        .min((g.session_expires_ms / 1000) as u64)
        .max(iat + 1);
    let claims = json!({
        "iss": app.session_signer.iss,
        "sub": g.sub,
        "aud": g.client_id,
        "sid": g.sid,
        "iat": iat,
        "exp": exp,
        "client_id": g.client_id,
        "slo_transfer": true,
    });
    let mut answer = json!({
        "access_token": app.session_signer.sign(&claims),
        "token_type": "Bearer",
        "expires_in": exp.saturating_sub(util::now_secs()),
        "session_id": g.sid,
    });
    if let Some(rt) = g.refresh_token {
        answer["refresh_token"] = json!(rt);
    }
    answer
}

/// An error page for requests that cannot be redirected (bad client or
/// `redirect_uri`): redirecting would hand the browser to an unchecked URL.
fn error_page(message: &str) -> Response {
    super::error_page("This sign-in link is not valid", message)
}

fn cookie(headers: &HeaderMap, name: &str) -> Option<String> {
    headers
        .get_all(header::COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(';'))
        .filter_map(|kv| kv.trim().split_once('='))
        .find(|(k, _)| *k == name)
        .map(|(_, v)| v.to_string())
}

/// `Set-Cookie` for a hub cookie: HttpOnly, SameSite=Lax (a top-level
/// navigation to `/authorize` carries it), Secure outside dev mode.
fn set_cookie(app: &App, name: &str, value: &str, max_age: u64) -> HeaderValue {
    cookie_at(app, "/", name, value, max_age)
}

fn cookie_at(app: &App, path: &str, name: &str, value: &str, max_age: u64) -> HeaderValue {
    let secure = if app.config.is_dev() { "" } else { "; Secure" };
    let v =
        format!("{name}={value}; Path={path}; HttpOnly; SameSite=Lax; Max-Age={max_age}{secure}");
    // Values are base64url or empty: always a valid header.
    HeaderValue::from_str(&v).unwrap_or_else(|_| HeaderValue::from_static(""))
}

/// `to` with `params` appended as a query (RFC 6749 §4.1.2): the
/// registered URI, then only encoded parameters.
pub fn redirect_location(to: &str, params: &[(&str, &str)]) -> String {
    let mut url = to.to_string();
    let mut ser = form_urlencoded::Serializer::new(String::new());
    for (k, v) in params {
        ser.append_pair(k, v);
    }
    url.push(if to.contains('?') { '&' } else { '?' });
    url.push_str(&ser.finish());
    url
}

fn redirect(to: &str, params: &[(&str, &str)]) -> Response {
    let url = redirect_location(to, params);
    let mut resp = StatusCode::SEE_OTHER.into_response();
    if let Ok(v) = HeaderValue::from_str(&url) {
        resp.headers_mut().insert(header::LOCATION, v);
    }
    no_store(resp)
}

/// Back to the client with an RFC 6749 §4.1.2.1 error (and its `state`).
fn error_redirect(redirect_uri: &str, state: &str, error: &str, description: &str) -> Response {
    let mut params = vec![("error", error), ("error_description", description)];
    if !state.is_empty() {
        params.push(("state", state));
    }
    redirect(redirect_uri, &params)
}

/// What `/authorize`'s query says, checked against the registered clients
/// before anything else happens (pure, so it is fuzzed on its own).
#[derive(Debug)]
pub enum AuthorizeCheck {
    /// Nowhere safe to redirect to: answer an error page.
    Page(&'static str),
    /// Back to the registered redirect URI with an error.
    Fail {
        redirect_uri: String,
        state: String,
        error: &'static str,
        description: &'static str,
    },
    Proceed(AuthorizeParams),
}

#[derive(Debug)]
pub struct AuthorizeParams {
    pub client: Arc<ClientSettings>,
    pub redirect_uri: String,
    pub state: String,
    pub code_challenge: String,
    /// The transfer token, when it came as a query parameter.
    pub transfer_token: Option<String>,
}

/// Checks the query of `/authorize` (RFC 6749 §4.1.1 with PKCE S256).
/// A parameter given twice is refused (§3.1), before any redirect.
pub fn check_authorize(
    query: &str,
    client_by_id: impl Fn(&str) -> Option<Arc<ClientSettings>>,
) -> AuthorizeCheck {
    let mut q: HashMap<String, String> = HashMap::new();
    for (k, v) in form_urlencoded::parse(query.as_bytes()) {
        if q.insert(k.into_owned(), v.into_owned()).is_some() {
            return AuthorizeCheck::Page("a parameter is given twice");
        }
    }
    let get = |k: &str| q.get(k).map(String::as_str).filter(|v| !v.is_empty());
    let Some(client) = get("client_id").and_then(&client_by_id) else {
        return AuthorizeCheck::Page("unknown client_id");
    };
    if client.kind != crate::config::ClientKind::Web {
        return AuthorizeCheck::Page("client_id is not a web client");
    }
    let Some(redirect_uri) = get("redirect_uri")
        .filter(|r| client.redirect_uris.iter().any(|u| u == r))
        .map(str::to_string)
    else {
        return AuthorizeCheck::Page("redirect_uri is not registered for this client");
    };
    let state = get("state").unwrap_or("").to_string();
    let fail = |error: &'static str, description: &'static str| AuthorizeCheck::Fail {
        redirect_uri: redirect_uri.clone(),
        state: state.clone(),
        error,
        description,
    };
    if get("response_type") != Some("code") {
        return fail("unsupported_response_type", "response_type must be code");
    }
    let Some(challenge) = get("code_challenge") else {
        return fail("invalid_request", "PKCE is required: send code_challenge");
    };
    if get("code_challenge_method") != Some("S256") || challenge.len() != 43 {
        return fail(
            "invalid_request",
            "code_challenge_method must be S256 with a 43-character challenge",
        );
    }
    use crate::config::AuthMethod;
    let by_query = get("session_transfer_token");
    if by_query.is_some()
        && !client
            .allowed_authentication_methods
            .contains(&AuthMethod::Query)
    {
        return fail(
            "invalid_request",
            "this client does not accept session_transfer_token as a query parameter",
        );
    }
    AuthorizeCheck::Proceed(AuthorizeParams {
        code_challenge: challenge.to_string(),
        transfer_token: by_query.map(str::to_string),
        client,
        redirect_uri,
        state,
    })
}

async fn authorize(
    State(app): State<Arc<App>>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    headers: HeaderMap,
    uri: Uri,
) -> Response {
    let checked = check_authorize(uri.query().unwrap_or(""), |id| {
        app.sessions.client(id).cloned()
    });
    let params = match checked {
        AuthorizeCheck::Page(why) => return error_page(why),
        AuthorizeCheck::Fail {
            redirect_uri,
            state,
            error,
            description,
        } => return error_redirect(&redirect_uri, &state, error, description),
        AuthorizeCheck::Proceed(p) => p,
    };
    let AuthorizeParams {
        client,
        redirect_uri,
        state,
        code_challenge,
        transfer_token: by_query,
    } = params;
    let (redirect_uri, state, challenge) = (
        redirect_uri.as_str(),
        state.as_str(),
        code_challenge.as_str(),
    );
    let fail =
        |error: &str, description: &str| error_redirect(redirect_uri, state, error, description);
    use crate::config::AuthMethod;
    let by_cookie = cookie(&headers, STT_COOKIE)
        .filter(|_| {
            client
                .allowed_authentication_methods
                .contains(&AuthMethod::Cookie)
        })
        .filter(|v| !v.is_empty());
    let transfer_token = by_query.or(by_cookie.clone());
    let session_cookie = cookie(&headers, SESSION_COOKIE);
    let decided = app
        .sessions
        .authorize(AuthorizeRequest {
            client: &client,
            redirect_uri,
            code_challenge: challenge,
            transfer_token: transfer_token.as_deref(),
            session_cookie: session_cookie.as_deref(),
            ip: app.sessions.binding.client_ip(peer.ip(), &headers),
        })
        .await;
    let mut resp = match decided {
        Err(e) => {
            let e = OAuthError::from(e);
            fail("temporarily_unavailable", &e.to_string())
        }
        Ok(Authorized::Code {
            code,
            set_cookie: new_cookie,
            outcome,
        }) => {
            tracing::info!(client = %client.client_id, outcome, "authorize: code issued");
            app.metrics.authorize_outcome(outcome);
            let mut params = vec![("code", code.as_str())];
            if !state.is_empty() {
                params.push(("state", state));
            }
            let mut resp = redirect(redirect_uri, &params);
            if let Some(c) = new_cookie {
                resp.headers_mut().append(
                    header::SET_COOKIE,
                    set_cookie(&app, SESSION_COOKIE, &c, client.session_lifetime_secs),
                );
            }
            resp
        }
        Ok(Authorized::LoginRequired {
            ended,
            clear_cookie,
            why,
        }) => {
            tracing::info!(client = %client.client_id, why, "authorize: login required");
            app.metrics.authorize_outcome("login_required");
            if !ended.is_empty() {
                let _ = app
                    .end_web_sessions(&ended, "session_replaced", "revocation")
                    .await;
            }
            let mut resp = fail("login_required", why);
            if clear_cookie {
                resp.headers_mut()
                    .append(header::SET_COOKIE, set_cookie(&app, SESSION_COOKIE, "", 0));
            }
            resp
        }
    };
    if by_cookie.is_some() {
        // Used up whatever happened: do not present it again (a native app
        // may have scoped it to the hub's root or to /authorize).
        for path in ["/", "/authorize"] {
            resp.headers_mut()
                .append(header::SET_COOKIE, cookie_at(&app, path, STT_COOKIE, "", 0));
        }
    }
    resp
}
