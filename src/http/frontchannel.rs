//! `/v1/logout/frontchannel`: the hub's logout page for its own web
//! sessions (OpenID Front-Channel Logout 1.0, the hub as the OP).
//!
//! * `GET ?returnTo=…` — if the browser's hub session cookie stands for a
//!   live web session, a page that asks to confirm, with a form that POSTs
//!   back here; otherwise a page that says there is nothing to log out.
//!   A GET ends nothing and frames nothing: any site can link to it.
//! * `POST` (the page's form: `csrf`, `returnTo`) — accepted only from the
//!   hub's own origin (`Origin`, `Sec-Fetch-Site`) and with the page's
//!   token, which is bound to the session cookie (a digest of it, so it
//!   needs no server key and works on any node). It logs the web session
//!   out through the one logout path (sockets told, graph ended, backends
//!   told), clears the cookie, and loads the `frontchannel_logout_uri` of
//!   every client that joined the session in a hidden iframe, with `iss`
//!   and `sid` (§2–3); each app clears its session and answers with
//!   `postMessage({type: "slo-hub:frontchannel-logout"})`. The page waits
//!   for them or `notify.frontchannel_timeout_ms`, then goes to `returnTo`.
//!
//! `returnTo` must be exactly one of some client's
//! `post_logout_redirect_uris`; anything else is answered 400 before
//! anything loads (no open redirect). The page's logic is
//! `static/frontchannel.js`; its data is JSON in the page.
//!
//! Must not: end a session on a GET, or embed a value in script or markup
//! without escaping.

use std::sync::Arc;

use axum::Router;
use axum::extract::{Request, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, Uri, header};
use axum::response::{Html, IntoResponse, Response};
use axum::routing::get;
use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use serde_json::{Value, json};
use subtle::ConstantTimeEq;

use super::oauth::SESSION_COOKIE;
use super::{error_page, html_escape, no_store};
use crate::App;
use crate::registry::{SessionKey, Target};
use crate::revocation::LogoutOrder;
use crate::sessions::LiveWeb;

pub const FRONTCHANNEL_JS: &str = include_str!("../../static/frontchannel.js");

pub fn router() -> Router<Arc<App>> {
    Router::new()
        .route("/v1/logout/frontchannel", get(page).post(confirmed))
        .route("/static/frontchannel.js", get(script))
}

fn invalid(message: &str) -> Response {
    error_page("This logout link is not valid", message)
}

fn forbidden(message: &str) -> Response {
    let mut resp = error_page("This logout was not confirmed here", message);
    *resp.status_mut() = StatusCode::FORBIDDEN;
    resp.extensions_mut()
        .insert(crate::error::ErrorCode("forbidden"));
    resp
}

/// The page's token for a session cookie: proves the form was served to
/// the browser that holds the cookie (which is HttpOnly, 256 random bits).
fn csrf_of(cookie: &str) -> String {
    let d = ring::digest::digest(
        &ring::digest::SHA256,
        format!("slo-hub:frontchannel-csrf\u{1f}{cookie}").as_bytes(),
    );
    URL_SAFE_NO_PAD.encode(d.as_ref())
}

/// `returnTo` from parameters: absent, or exactly a registered address.
fn return_to(app: &App, params: &[(String, String)]) -> Result<Option<String>, &'static str> {
    let mut found = None;
    for (k, v) in params {
        if k == "returnTo" {
            if found.is_some() {
                return Err("returnTo is given twice");
            }
            found = Some(v.clone());
        }
    }
    if let Some(r) = &found {
        let registered = app
            .sessions
            .clients()
            .iter()
            .any(|c| c.post_logout_redirect_uris.iter().any(|u| u == r));
        if !registered {
            return Err("returnTo is not a registered post-logout redirect URI");
        }
    }
    Ok(found)
}

fn pairs(bytes: &[u8]) -> Vec<(String, String)> {
    form_urlencoded::parse(bytes).into_owned().collect()
}

async fn live_session(
    app: &App,
    headers: &HeaderMap,
) -> Result<Option<(String, LiveWeb)>, crate::store::StoreError> {
    let Some(cookie) = super::oauth::cookie(headers, SESSION_COOKIE) else {
        return Ok(None);
    };
    Ok(app
        .sessions
        .web_of_cookie(&cookie)
        .await?
        .map(|w| (cookie, w)))
}

fn unavailable(e: crate::store::StoreError) -> Response {
    let mut r = error_page(
        "The hub cannot log you out right now",
        &format!("{e}; retry"),
    );
    *r.status_mut() = StatusCode::SERVICE_UNAVAILABLE;
    r
}

async fn page(State(app): State<Arc<App>>, uri: Uri, headers: HeaderMap) -> Response {
    let params = pairs(uri.query().unwrap_or("").as_bytes());
    let return_to = match return_to(&app, &params) {
        Ok(r) => r,
        Err(why) => return invalid(why),
    };
    let live = match live_session(&app, &headers).await {
        Ok(l) => l,
        Err(e) => return unavailable(e),
    };
    let Some((cookie, web)) = live else {
        let data = json!({ "apps": [], "returnTo": return_to, "timeoutMs": 0 });
        return render(
            &data,
            "You are not signed in here: there is nothing to log out.",
            None,
            &[],
        );
    };
    let names: Vec<&str> = web.clients.iter().map(String::as_str).collect();
    let form = format!(
        "<form method=\"post\" action=\"/v1/logout/frontchannel\">\
         <input type=\"hidden\" name=\"csrf\" value=\"{}\">{}\
         <button id=\"confirm\" type=\"submit\">Log out</button></form>",
        html_escape(&csrf_of(&cookie)),
        return_to
            .as_deref()
            .map(|r| format!(
                "<input type=\"hidden\" name=\"returnTo\" value=\"{}\">",
                html_escape(r)
            ))
            .unwrap_or_default(),
    );
    render(
        &json!({ "confirm": true }),
        &format!("Log out of your session with {}?", names.join(", ")),
        Some(&form),
        &[],
    )
}

/// The POST of the page's form: checked, then the logout.
async fn confirmed(State(app): State<Arc<App>>, req: Request) -> Response {
    let headers = req.headers().clone();
    if let Err(why) = same_origin(&app, &headers) {
        app.metrics.auth_failure("frontchannel", "cross_origin");
        return forbidden(why);
    }
    let body = match super::read_body(req, app.config.http.max_body_bytes).await {
        Ok(b) => b,
        Err(_) => return invalid("the form could not be read"),
    };
    let params = pairs(&body);
    let return_to = match return_to(&app, &params) {
        Ok(r) => r,
        Err(why) => return invalid(why),
    };
    let live = match live_session(&app, &headers).await {
        Ok(l) => l,
        Err(e) => return unavailable(e),
    };
    let Some((cookie, web)) = live else {
        let data = json!({ "apps": [], "returnTo": return_to, "timeoutMs": 0 });
        return render(&data, "You are already logged out.", None, &[]);
    };
    let presented = params
        .iter()
        .find(|(k, _)| k == "csrf")
        .map(|(_, v)| v.as_str())
        .unwrap_or("");
    let ok: bool = csrf_of(&cookie)
        .as_bytes()
        .ct_eq(presented.as_bytes())
        .into();
    if !ok {
        app.metrics.auth_failure("frontchannel", "bad_csrf");
        return forbidden("this logout form did not come from the hub's page for your session");
    }
    let logged_out = app
        .logout(LogoutOrder {
            target: Target::Session(SessionKey {
                iss: app.hub_issuers.session_id,
                sid: web.sid.as_str().into(),
            }),
            sub: Some(web.sub.as_str().into()),
            reason: "frontchannel_logout".into(),
            source: "frontchannel",
            caller: crate::audit::Caller::User {
                iss: app.hub_issuers.session.iss.clone(),
                sub: web.sub.clone(),
                client: None,
            },
            wait_for_acks: None,
        })
        .await;
    if let Err(e) = logged_out {
        let mut r = error_page(
            "The hub could not record your logout",
            &format!("{e}; try again"),
        );
        *r.status_mut() = StatusCode::SERVICE_UNAVAILABLE;
        return r;
    }
    let mut apps = Vec::new();
    let mut frame_origins = Vec::new();
    for client in &web.clients {
        let Some(uri) = app
            .sessions
            .client(client)
            .and_then(|c| c.frontchannel_logout_uri.clone())
        else {
            continue;
        };
        // Validated at start as an absolute http(s) URL.
        let Ok(mut url) = url::Url::parse(&uri) else {
            continue;
        };
        let origin = url.origin().ascii_serialization();
        url.query_pairs_mut()
            .append_pair("iss", &app.hub_issuers.session.iss)
            .append_pair("sid", &web.sid);
        if !frame_origins.contains(&origin) {
            frame_origins.push(origin.clone());
        }
        apps.push(json!({ "client_id": client, "uri": url.as_str(), "origin": origin }));
    }
    let data = json!({
        "apps": apps,
        "returnTo": return_to,
        "timeoutMs": app.config.notify.frontchannel_timeout_ms,
    });
    let mut resp = render(&data, "Logging you out of every app…", None, &frame_origins);
    resp.headers_mut().append(
        header::SET_COOKIE,
        super::oauth::set_cookie(&app, "/", SESSION_COOKIE, "", 0),
    );
    resp
}

/// A POST that a page of another origin made the browser send is refused.
/// `Sec-Fetch-Site` (sent by every current browser) is the judge where
/// present; else `Origin` must be the hub's (a `null` origin, which a
/// sandboxed frame of any site can send, is refused). The page's token is
/// the second, independent check.
fn same_origin(app: &App, headers: &HeaderMap) -> Result<(), &'static str> {
    if let Some(site) = headers.get("sec-fetch-site") {
        return if site.as_bytes() == b"same-origin" {
            Ok(())
        } else {
            Err("the logout was sent from another site")
        };
    }
    let hub = url::Url::parse(&app.config.public_url())
        .map(|u| u.origin().ascii_serialization())
        .unwrap_or_default();
    match headers.get(header::ORIGIN).and_then(|o| o.to_str().ok()) {
        Some(o) if o == hub => Ok(()),
        Some(_) => Err("the logout was sent from another origin"),
        None => Ok(()),
    }
}

fn render(data: &Value, status: &str, form: Option<&str>, frame_origins: &[String]) -> Response {
    let body = format!(
        "<!doctype html>\n<html lang=\"en\"><head><meta charset=\"utf-8\">\
         <meta name=\"viewport\" content=\"width=device-width, initial-scale=1\">\
         <title>Log out</title></head>\n<body>\n<main>\
         <h1>Log out</h1><p id=\"status\">{}</p>{}\
         <ul id=\"apps\"></ul></main>\n\
         <script type=\"application/json\" id=\"slo-frontchannel\">{}</script>\n\
         <script src=\"/static/frontchannel.js\"></script>\n</body></html>\n",
        html_escape(status),
        form.unwrap_or(""),
        script_json(data)
    );
    let frame_src = if frame_origins.is_empty() {
        "'none'".to_string()
    } else {
        frame_origins.join(" ")
    };
    let csp = format!(
        "default-src 'none'; script-src 'self'; frame-src {frame_src}; \
         frame-ancestors 'none'; base-uri 'none'; form-action 'self'"
    );
    let mut resp = no_store(Html(body).into_response());
    let h = resp.headers_mut();
    if let Ok(v) = HeaderValue::from_str(&csp) {
        h.insert(header::CONTENT_SECURITY_POLICY, v);
    }
    h.insert(
        header::X_CONTENT_TYPE_OPTIONS,
        HeaderValue::from_static("nosniff"),
    );
    // The form's POST then carries the hub's Origin (with `no-referrer` a
    // browser sends `Origin: null`); nothing leaves the hub's origin.
    h.insert(
        header::REFERRER_POLICY,
        HeaderValue::from_static("same-origin"),
    );
    resp
}

async fn script() -> impl IntoResponse {
    (
        [
            (header::CONTENT_TYPE, "text/javascript; charset=utf-8"),
            (header::CACHE_CONTROL, "public, max-age=300"),
        ],
        FRONTCHANNEL_JS,
    )
}

/// JSON safe inside `<script>`: no `<`, `>` or `&` can end the element or
/// start a comment (`\u003c` is the same string to `JSON.parse`).
fn script_json(v: &Value) -> String {
    v.to_string()
        .replace('<', "\\u003c")
        .replace('>', "\\u003e")
        .replace('&', "\\u0026")
}

#[cfg(test)]
mod tests {
    #[test]
    fn script_json_cannot_close_the_script_element() {
        let v = serde_json::json!({ "uri": "</script><script>alert(1)</script>&" });
        let s = super::script_json(&v);
        assert!(!s.contains('<') && !s.contains('>') && !s.contains('&'));
        let back: serde_json::Value = serde_json::from_str(&s).unwrap();
        assert_eq!(back, v);
    }

    #[test]
    fn the_page_token_is_bound_to_the_cookie() {
        assert_eq!(super::csrf_of("a"), super::csrf_of("a"));
        assert_ne!(super::csrf_of("a"), super::csrf_of("b"));
    }
}
