//! `GET /authorize`: redeems a session transfer token (cookie
//! `session_transfer_token` or query parameter, as the client allows) into
//! a web session; the four outcomes are `sessions::Sessions::authorize`.
//!
//! `client_id` and `redirect_uri` are checked exactly before any redirect:
//! a bad one gets an error page, never a redirect to an unchecked address.
//! A transfer token is used up by its first presentation, whatever follows
//! (also when it came by a method the client refuses).
//!
//! Must not: log or echo the transfer token.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::Arc;

use axum::extract::{ConnectInfo, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, Uri, header};
use axum::response::{IntoResponse, Response};
use cookie::{Cookie, SameSite};

use super::{SESSION_COOKIE, STT_COOKIE};
use crate::App;
use crate::config::{AuthMethod, ClientKind, ClientSettings};
use crate::error::OAuthError;
use crate::http::no_store;
use crate::sessions::{AuthorizeRequest, Authorized};

/// An error page for requests that cannot be redirected (bad client or
/// `redirect_uri`): redirecting would hand the browser to an unchecked URL.
fn error_page(message: &str) -> Response {
    crate::http::error_page("This sign-in link is not valid", message)
}

/// The value of cookie `name` the browser sent, if any.
pub(crate) fn cookie(headers: &HeaderMap, name: &str) -> Option<String> {
    headers
        .get_all(header::COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(Cookie::split_parse)
        .filter_map(Result::ok)
        .find(|c| c.name() == name)
        .map(|c| c.value().to_string())
}

/// `Set-Cookie` for a hub cookie: HttpOnly, SameSite=Lax (a top-level
/// navigation to `/authorize` carries it), Secure outside dev mode.
pub(crate) fn set_cookie(
    app: &App,
    path: &str,
    name: &str,
    value: &str,
    max_age: u64,
) -> HeaderValue {
    let c = Cookie::build((name, value))
        .path(path)
        .http_only(true)
        .same_site(SameSite::Lax)
        .max_age(cookie::time::Duration::seconds(max_age as i64))
        .secure(!app.config.is_dev())
        .build();
    // Names are ours and values base64url or empty: always a valid header.
    HeaderValue::from_str(&c.to_string()).unwrap_or_else(|_| HeaderValue::from_static(""))
}

/// `to` with `params` appended to its query (RFC 6749 §4.1.2): the
/// registered URI, then only encoded parameters.
pub fn redirect_location(to: &str, params: &[(&str, &str)]) -> String {
    match url::Url::parse(to) {
        Ok(mut url) => {
            url.query_pairs_mut().extend_pairs(params);
            url.into()
        }
        // Registered URIs are validated absolute URLs at start.
        Err(_) => to.to_string(),
    }
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
    /// Back to the registered redirect URI with an error. `burn`: a
    /// transfer token that came with the refused request.
    Fail {
        redirect_uri: String,
        state: String,
        error: &'static str,
        description: &'static str,
        burn: Option<String>,
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
    if client.kind != ClientKind::Web {
        return AuthorizeCheck::Page("client_id is not a web client");
    }
    let Some(redirect_uri) = get("redirect_uri")
        .filter(|r| client.redirect_uris.iter().any(|u| u == r))
        .map(str::to_string)
    else {
        return AuthorizeCheck::Page("redirect_uri is not registered for this client");
    };
    let state = get("state").unwrap_or("").to_string();
    let by_query = get("session_transfer_token").map(str::to_string);
    let fail = |error: &'static str, description: &'static str| AuthorizeCheck::Fail {
        redirect_uri: redirect_uri.clone(),
        state: state.clone(),
        error,
        description,
        burn: by_query.clone(),
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
        transfer_token: by_query,
        client,
        redirect_uri,
        state,
    })
}

pub async fn authorize(
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
            burn,
        } => {
            // Refused, but presented: a transfer token is used up by its
            // first presentation, whatever the answer.
            if let Some(t) = burn
                && let Err(e) = app.sessions.burn_transfer(&t).await
            {
                let e = OAuthError::from(e);
                return error_redirect(
                    &redirect_uri,
                    &state,
                    "temporarily_unavailable",
                    &e.to_string(),
                );
            }
            return error_redirect(&redirect_uri, &state, error, description);
        }
        AuthorizeCheck::Proceed(p) => p,
    };
    let AuthorizeParams {
        client,
        redirect_uri,
        state,
        code_challenge,
        transfer_token: by_query,
    } = params;
    let (redirect_uri, state) = (redirect_uri.as_str(), state.as_str());
    let fail =
        |error: &str, description: &str| error_redirect(redirect_uri, state, error, description);
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
            code_challenge: &code_challenge,
            transfer_token: transfer_token.as_deref(),
            session_cookie: session_cookie.as_deref(),
            ip: app.proxies.client_ip(peer.ip(), &headers),
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
            sub,
            web_session,
        }) => {
            tracing::info!(client = %client.client_id, outcome, "authorize: code issued");
            app.metrics.authorize_outcome(outcome);
            if transfer_token.is_some() {
                redeemed(
                    &app,
                    &client.client_id,
                    Some(sub),
                    Some(web_session),
                    outcome,
                )
                .await;
            }
            let mut params = vec![("code", code.as_str())];
            if !state.is_empty() {
                params.push(("state", state));
            }
            let mut resp = redirect(redirect_uri, &params);
            if let Some(c) = new_cookie {
                resp.headers_mut().append(
                    header::SET_COOKIE,
                    set_cookie(&app, "/", SESSION_COOKIE, &c, client.session_lifetime_secs),
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
            if transfer_token.is_some() {
                redeemed(&app, &client.client_id, None, None, why).await;
            }
            if !ended.is_empty() {
                let _ = app.deliver(&ended).await;
            }
            let mut resp = fail("login_required", why);
            if clear_cookie {
                resp.headers_mut().append(
                    header::SET_COOKIE,
                    set_cookie(&app, "/", SESSION_COOKIE, "", 0),
                );
            }
            resp
        }
    };
    if by_cookie.is_some() {
        // Used up whatever happened: do not present it again (a native app
        // may have scoped it to the hub's root or to /authorize).
        for path in ["/", "/authorize"] {
            resp.headers_mut().append(
                header::SET_COOKIE,
                set_cookie(&app, path, STT_COOKIE, "", 0),
            );
        }
    }
    resp
}

/// Audits a presented transfer token: what became of it.
async fn redeemed(
    app: &App,
    client_id: &str,
    sub: Option<String>,
    web_session: Option<String>,
    result: &str,
) {
    let mut entry = crate::audit::Entry::new(
        crate::audit::Action::TransferTokenRedeemed,
        "authorize",
        crate::audit::Caller::Client {
            client_id: client_id.to_string(),
        },
        crate::audit::Subject {
            iss: None,
            sub,
            sid: web_session,
        },
    );
    entry.outcome = serde_json::json!({ "result": result });
    app.audit.record(entry).await;
}
