//! The front-channel logout page (`/v1/logout/frontchannel`): what it
//! serves (HTTP), and what it does in a real headless Chromium with the two
//! demo apps on their own origins.

mod common;

use std::time::Duration;

use common::TestHub;
use common::browser::{Chrome, click, screenshot, wait_for_js};
use serde_json::{Value, json};
use slo_hub::config::{ClientKind, ClientSettings};

const STATE: &str = "return document.getElementById('status').dataset.state";
const CONN: &str = "return document.getElementById('conn').textContent";
const WAIT: Duration = Duration::from_secs(10);

async fn demo_hub(timeout_ms: u64) -> TestHub {
    TestHub::with(|c| {
        c.dev.demo = true;
        c.notify.frontchannel_timeout_ms = timeout_ms;
    })
    .await
}

async fn get_page(hub: &TestHub, query: &str) -> reqwest::Response {
    hub.http
        .get(format!("{}/v1/logout/frontchannel{query}", hub.url))
        .send()
        .await
        .unwrap()
}

fn query(return_to: &str) -> String {
    let q: String = form_urlencoded::Serializer::new(String::new())
        .append_pair("returnTo", return_to)
        .finish();
    format!("?{q}")
}

/// The page's data: the JSON in its `slo-frontchannel` script element.
fn page_data(html: &str) -> Value {
    const OPEN: &str = "id=\"slo-frontchannel\">";
    let start = html.find(OPEN).expect("page data") + OPEN.len();
    let end = start + html[start..].find("</script>").unwrap();
    serde_json::from_str(&html[start..end]).unwrap()
}

#[tokio::test]
async fn the_page_frames_every_registered_app_and_nothing_else() {
    let hub = demo_hub(5_000).await;
    let (a, b) = (hub.demo_url("app-a"), hub.demo_url("app-b"));
    let r = get_page(&hub, &query(&format!("{a}/"))).await;
    assert_eq!(r.status(), 200);
    assert_eq!(r.headers()["cache-control"], "no-store");
    let csp = r.headers()["content-security-policy"].to_str().unwrap();
    assert!(
        csp.contains(&format!("frame-src {a} {b};")),
        "only the apps may be framed: {csp}"
    );
    assert!(csp.contains("script-src 'self'") && csp.contains("frame-ancestors 'none'"));
    let data = page_data(&r.text().await.unwrap());
    assert_eq!(data["returnTo"], format!("{a}/"));
    assert_eq!(data["timeoutMs"], 5000);
    let apps: Vec<(&str, &str)> = data["apps"]
        .as_array()
        .unwrap()
        .iter()
        .map(|x| {
            (
                x["client_id"].as_str().unwrap(),
                x["origin"].as_str().unwrap(),
            )
        })
        .collect();
    assert_eq!(apps, vec![("app-a", a.as_str()), ("app-b", b.as_str())]);
}

#[tokio::test]
async fn an_unregistered_return_to_is_refused_before_anything_loads() {
    let hub = demo_hub(5_000).await;
    let a = hub.demo_url("app-a");
    for q in [
        query("https://evil.example/"),
        // A prefix of a registered address is not that address.
        query(&format!("{a}/x")),
        format!("{}&returnTo=x", query(&format!("{a}/"))),
    ] {
        let r = get_page(&hub, &q).await;
        assert_eq!(r.status(), 400, "{q}");
        assert_eq!(r.headers()["cache-control"], "no-store");
        assert!(r.headers().get("location").is_none());
        let body = r.text().await.unwrap();
        assert!(
            !body.contains("slo-frontchannel"),
            "no app is framed: {body}"
        );
        assert!(body.contains("returnTo"), "{body}");
    }
    assert_eq!(
        hub.metric(
            "slo_hub_http_rejections_total{endpoint=\"frontchannel_logout\",error=\"invalid_request\"}"
        )
        .await,
        3.0
    );
}

/// Alice is logged in to app A and app B. From app B she uses the
/// front-channel page: both apps clear their sessions in hidden iframes,
/// app A's open tab sees it at once, and she is back on app B — before the
/// page's 30 s timeout, so every app acknowledged.
#[tokio::test]
async fn the_page_logs_out_every_app_and_returns() {
    let Some(mut chrome) = Chrome::start().await else {
        return;
    };
    let hub = demo_hub(30_000).await;
    let (a_url, b_url) = (hub.demo_url("app-a"), hub.demo_url("app-b"));
    let alice = chrome.session().await;
    for (i, url) in [&a_url, &b_url].into_iter().enumerate() {
        if i > 0 {
            let tab = alice.new_window(true).await.unwrap().handle;
            alice.switch_to_window(tab).await.unwrap();
        }
        alice.goto(url).await.unwrap();
        wait_for_js(&alice, "return typeof SloHub", json!("object"), WAIT).await;
        click(&alice, "[data-login=alice]").await;
        wait_for_js(&alice, CONN, json!("connected"), WAIT).await;
    }
    let tabs = alice.windows().await.unwrap();

    click(&alice, "#frontchannel").await;
    wait_for_js(
        &alice,
        "return location.href",
        json!(format!("{b_url}/")),
        WAIT,
    )
    .await;
    wait_for_js(&alice, STATE, json!("out"), WAIT).await;
    let token = "return localStorage.getItem('slo-demo-token')";
    assert_eq!(alice.execute(token, vec![]).await.unwrap(), Value::Null);
    screenshot(&alice, "frontchannel-back-on-app-b").await;

    alice.switch_to_window(tabs[0].clone()).await.unwrap();
    wait_for_js(&alice, STATE, json!("out"), WAIT).await;
    let note = alice
        .execute("return document.getElementById('note').textContent", vec![])
        .await
        .unwrap();
    assert!(
        note.as_str().unwrap().contains("front-channel"),
        "app A's open tab was told: {note}"
    );
    assert_eq!(alice.execute(token, vec![]).await.unwrap(), Value::Null);
    screenshot(&alice, "frontchannel-app-a-tab").await;
    alice.close().await.unwrap();
}

/// An app that never answers is reported once the timeout passes, and an
/// acknowledgement from a window other than that app's iframe (here the
/// page itself) does not count for it.
#[tokio::test]
async fn a_silent_app_is_reported_and_a_forged_ack_does_not_count() {
    let Some(mut chrome) = Chrome::start().await else {
        return;
    };
    let hub = TestHub::with(|c| {
        let mut silent = ClientSettings::new("silent", ClientKind::Web);
        silent.redirect_uris = vec!["https://silent.test/".into()];
        // Nothing listens on port 1: the frame loads an error page, never an ack.
        silent.frontchannel_logout_uri = Some("http://127.0.0.1:1/logout".into());
        c.clients = vec![silent];
        c.notify.frontchannel_timeout_ms = 1_500;
    })
    .await;
    let b = chrome.session().await;
    b.goto(&format!("{}/v1/logout/frontchannel", hub.url))
        .await
        .unwrap();
    b.execute(
        "window.postMessage({type: 'slo-hub:frontchannel-logout'}, '*')",
        vec![],
    )
    .await
    .unwrap();
    wait_for_js(
        &b,
        "return document.body.dataset.result || null",
        json!(r#"{"acknowledged":0,"missing":["silent"]}"#),
        WAIT,
    )
    .await;
    let state = "return document.querySelector('[data-client-id=silent]').dataset.state";
    assert_eq!(b.execute(state, vec![]).await.unwrap(), json!("timeout"));
    screenshot(&b, "frontchannel-silent-app").await;
    b.close().await.unwrap();
}
