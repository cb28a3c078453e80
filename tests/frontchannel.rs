//! The front-channel logout page (`/v1/logout/frontchannel`): a GET anyone
//! can link to ends nothing and frames nothing; the confirmed POST, from
//! the hub's own page only, ends the hub session and frames the session's
//! apps with `iss` and `sid` (HTTP); and the whole flow in a real headless
//! Chromium with the demo app on its own origin.

mod common;

use std::time::Duration;

use common::TestHub;
use common::browser::{Chrome, click, screenshot, wait_for_js};
use common::sso::*;
use serde_json::{Value, json};

const STATE: &str = "return document.getElementById('status').dataset.state";
const CONN: &str = "return document.getElementById('conn').textContent";
const WAIT: Duration = Duration::from_secs(10);
const FC: &str = "https://web.test/fc";
const BYE: &str = "https://web.test/bye";

/// The SSO test clients, the web app with a front-channel page.
async fn sso() -> Sso {
    Sso::with(|c| {
        for client in &mut c.clients {
            if client.client_id == "web" {
                client.frontchannel_logout_uri = Some(FC.into());
                client.post_logout_redirect_uris = vec![BYE.into()];
            }
        }
    })
    .await
}

/// The page's data: the JSON in its `slo-frontchannel` script element.
fn page_data(html: &str) -> Value {
    const OPEN: &str = "id=\"slo-frontchannel\">";
    let start = html.find(OPEN).expect("page data") + OPEN.len();
    let end = start + html[start..].find("</script>").unwrap();
    serde_json::from_str(&html[start..end]).unwrap()
}

/// The confirmation form's token.
fn csrf(html: &str) -> String {
    const OPEN: &str = "name=\"csrf\" value=\"";
    let start = html.find(OPEN).expect("a confirmation form") + OPEN.len();
    html[start..start + html[start..].find('"').unwrap()].to_string()
}

async fn get_page(
    sso: &Sso,
    cookie: Option<&str>,
    query: &str,
) -> (u16, reqwest::header::HeaderMap, String) {
    let mut req = sso
        .hub
        .http
        .get(format!("{}/v1/logout/frontchannel{query}", sso.hub.url));
    if let Some(c) = cookie {
        req = req.header("cookie", format!("slo_hub_session={c}"));
    }
    let r = req.send().await.unwrap();
    let (s, h) = (r.status().as_u16(), r.headers().clone());
    (s, h, r.text().await.unwrap())
}

async fn post_page(
    sso: &Sso,
    cookie: &str,
    form: &str,
    headers: &[(&str, &str)],
) -> (u16, reqwest::header::HeaderMap, String) {
    let mut req = sso
        .hub
        .http
        .post(format!("{}/v1/logout/frontchannel", sso.hub.url))
        .header("cookie", format!("slo_hub_session={cookie}"))
        .header("content-type", "application/x-www-form-urlencoded")
        .body(form.to_string());
    for (k, v) in headers {
        req = req.header(*k, *v);
    }
    let r = req.send().await.unwrap();
    let (s, h) = (r.status().as_u16(), r.headers().clone());
    (s, h, r.text().await.unwrap())
}

fn return_to(to: &str) -> String {
    let q: String = form_urlencoded::Serializer::new(String::new())
        .append_pair("returnTo", to)
        .finish();
    format!("?{q}")
}

async fn still_signed_in(sso: &Sso, browser: &Browser) -> bool {
    let (_, challenge) = pkce();
    let r = sso.authorize(browser, "web", None, None, &challenge).await;
    r.param("code").is_some()
}

/// Any site can send a browser to the page: that alone must neither end
/// the hub session nor make any app clear its own.
#[tokio::test]
async fn a_plain_get_ends_nothing_and_frames_nothing() {
    let sso = sso().await;
    let (_, browser, login) = sso.alice_on("web").await;
    let (mut ws, _) = sso.hub.socket(&login.token).await;
    let cookie = browser.session_cookie.clone().unwrap();
    for c in [None, Some(cookie.as_str())] {
        let (status, headers, html) = get_page(&sso, c, &return_to(BYE)).await;
        assert_eq!(status, 200, "{html}");
        assert_eq!(headers["cache-control"], "no-store");
        let csp = headers["content-security-policy"].to_str().unwrap();
        assert!(csp.contains("frame-src 'none'"), "nothing framed: {csp}");
        assert!(csp.contains("frame-ancestors 'none'") && csp.contains("form-action 'self'"));
        let data = page_data(&html);
        assert!(
            data["apps"].as_array().is_none_or(|a| a.is_empty()),
            "{data}"
        );
        if c.is_some() {
            assert_eq!(data["confirm"], true, "a confirmation, nothing more");
            assert!(html.contains("name=\"returnTo\""), "{html}");
        }
    }
    assert!(still_signed_in(&sso, &browser).await);
    ws.assert_quiet().await;
}

#[tokio::test]
async fn a_post_needs_the_pages_token_and_the_hubs_origin() {
    let sso = sso().await;
    let (_, browser, login) = sso.alice_on("web").await;
    let (mut ws, _) = sso.hub.socket(&login.token).await;
    let cookie = browser.session_cookie.clone().unwrap();
    let (_, _, html) = get_page(&sso, Some(&cookie), "").await;
    let token = csrf(&html);
    let form = |t: &str| format!("csrf={t}");
    let hub_origin = sso.hub.url.clone();
    type Headers<'a> = &'a [(&'a str, &'a str)];
    let cases: [(String, Headers, &str); 5] = [
        (form("forged"), &[], "a wrong token"),
        (String::new(), &[], "no token"),
        (
            form(&token),
            &[("origin", "https://evil.example")],
            "another origin",
        ),
        (form(&token), &[("origin", "null")], "an opaque origin"),
        (
            form(&token),
            &[("sec-fetch-site", "cross-site")],
            "another site",
        ),
    ];
    for (body, headers, why) in cases {
        let (status, _, page) = post_page(&sso, &cookie, &body, headers).await;
        assert_eq!(status, 403, "{why}: {page}");
        assert!(still_signed_in(&sso, &browser).await, "{why}");
    }
    ws.assert_quiet().await;
    // Another browser's session cannot use this page's token either.
    let (_, other, _) = sso.alice_on("web").await;
    let other_cookie = other.session_cookie.clone().unwrap();
    let (status, _, _) = post_page(&sso, &other_cookie, &form(&token), &[]).await;
    assert_eq!(status, 403);
    assert!(still_signed_in(&sso, &other).await);

    let (status, headers, page) = post_page(
        &sso,
        &cookie,
        &format!("{}&returnTo={}", form(&token), urlencode(BYE)),
        &[("origin", &hub_origin), ("sec-fetch-site", "same-origin")],
    )
    .await;
    assert_eq!(status, 200, "{page}");
    let data = page_data(&page);
    assert_eq!(data["returnTo"], BYE);
    let apps = data["apps"].as_array().unwrap();
    assert_eq!(apps.len(), 1, "{data}");
    let framed = url::Url::parse(apps[0]["uri"].as_str().unwrap()).unwrap();
    let q: Vec<(String, String)> = framed.query_pairs().into_owned().collect();
    assert_eq!(
        q,
        vec![
            ("iss".to_string(), sso.hub.url.clone()),
            ("sid".to_string(), login.sid.clone())
        ],
        "Front-Channel Logout 1.0 §3: iss and sid"
    );
    assert!(
        headers["content-security-policy"]
            .to_str()
            .unwrap()
            .contains("frame-src https://web.test;")
    );
    let cleared = headers
        .get_all("set-cookie")
        .iter()
        .any(|v| v.to_str().unwrap().starts_with("slo_hub_session=;"));
    assert!(cleared, "the cookie is cleared");
    // A real logout of the hub session: its socket was told, its cookie
    // signs in no more.
    let msg = ws.recv_json().await;
    assert_eq!(
        (msg["type"].as_str(), msg["reason"].as_str()),
        (Some("logout"), Some("frontchannel_logout"))
    );
    assert!(!still_signed_in(&sso, &browser).await);
    assert!(
        still_signed_in(&sso, &other).await,
        "only this browser's session"
    );
}

fn urlencode(s: &str) -> String {
    form_urlencoded::byte_serialize(s.as_bytes()).collect()
}

#[tokio::test]
async fn an_unregistered_return_to_is_refused_before_anything_loads() {
    let sso = sso().await;
    let (_, browser, _) = sso.alice_on("web").await;
    let cookie = browser.session_cookie.clone().unwrap();
    for q in [
        return_to("https://evil.example/"),
        // A prefix of a registered address is not that address.
        return_to(&format!("{BYE}/x")),
        format!("{}&returnTo=x", return_to(BYE)),
    ] {
        let (status, headers, body) = get_page(&sso, Some(&cookie), &q).await;
        assert_eq!(status, 400, "{q}");
        assert_eq!(headers["cache-control"], "no-store");
        assert!(headers.get("location").is_none());
        assert!(!body.contains("slo-frontchannel"), "nothing loads: {body}");
        assert!(body.contains("returnTo"), "{body}");
    }
    assert_eq!(
        sso.hub
            .metric(
                "slo_hub_http_rejections_total{endpoint=\"frontchannel_logout\",error=\"invalid_request\"}"
            )
            .await,
        3.0
    );
    assert!(still_signed_in(&sso, &browser).await);
}

/// In Chromium: the native-app simulator opens app A with a transfer token
/// (a hub session); app A's front-channel button leads to the hub's page,
/// the user confirms, app A's front-channel page clears app A's session in
/// a hidden iframe, and the browser is back on app A, logged out — with
/// the hub session ended.
#[tokio::test]
async fn the_confirmed_page_ends_the_session_and_its_apps_clear_theirs() {
    let Some(mut chrome) = Chrome::start().await else {
        return;
    };
    let hub = TestHub::with(|c| {
        c.dev.demo = true;
        c.notify.frontchannel_timeout_ms = 30_000;
    })
    .await;
    let sim = format!("{}/demo/native-sim/", hub.url);
    let a_url = hub.demo_url("app-a");
    let b = chrome.session().await;
    const SIM_STATE: &str = "return document.getElementById('status').dataset.state";
    b.goto(&sim).await.unwrap();
    click(&b, "[data-login=alice]").await;
    wait_for_js(&b, SIM_STATE, json!("in"), WAIT).await;
    click(&b, "#open-query").await;
    wait_for_js(&b, STATE, json!("in"), WAIT).await;
    wait_for_js(&b, CONN, json!("connected"), WAIT).await;
    let dev_iss = format!("{}/dev", hub.url);
    assert_eq!(
        hub.app()
            .sessions
            .user_counts(&dev_iss, "alice")
            .await
            .unwrap()
            .1,
        1
    );

    click(&b, "#frontchannel").await;
    wait_for_js(
        &b,
        "return document.getElementById('confirm') !== null",
        json!(true),
        WAIT,
    )
    .await;
    screenshot(&b, "frontchannel-confirm").await;
    click(&b, "#confirm").await;
    wait_for_js(&b, "return location.href", json!(format!("{a_url}/")), WAIT).await;
    wait_for_js(&b, STATE, json!("out"), WAIT).await;
    let token = "return localStorage.getItem('slo-demo-token')";
    assert_eq!(b.execute(token, vec![]).await.unwrap(), Value::Null);
    screenshot(&b, "frontchannel-back-on-app-a").await;
    assert_eq!(
        hub.app()
            .sessions
            .user_counts(&dev_iss, "alice")
            .await
            .unwrap()
            .1,
        0,
        "the hub session ended"
    );
    b.close().await.unwrap();
}
