//! The console in a real headless Chromium at 1280×800: an operator signs
//! in with an admin key (a key without `admin` is refused), watches
//! logouts triggered from outside arrive in the live audit stream and the
//! plot, looks up a user who has the demo apps open in two tabs, logs them
//! out from the console — the tabs log out and the audit names the key —
//! and watches a Pusher app's events. Screenshots go to
//! target/browser-evidence/console-*.png.

mod common;

use std::time::{Duration, Instant};

use common::browser::{Chrome, click, screenshot, wait_for_js};
use common::pusher::{APP_ID, APP_SECRET, pusher_app, signed};
use common::{TEST_ISS, TestHub};
use serde_json::json;
use slo_hub::config::ApiKeySettings;

const ADMIN: &str = "slo_console-admin-key-for-the-browser-test";
const READER: &str = "slo_console-reader-key-without-admin-scope";
const WAIT: Duration = Duration::from_secs(10);

async fn sign_in(client: &fantoccini::Client, key: &str) {
    client
        .find(fantoccini::Locator::Css("#key"))
        .await
        .unwrap()
        .send_keys(key)
        .await
        .unwrap();
    click(client, "#signin-form button").await;
}

/// Waits until `script` returns true; how long it took.
async fn within(client: &fantoccini::Client, script: &str, limit: Duration) -> Duration {
    let started = Instant::now();
    wait_for_js(client, script, json!(true), limit).await;
    started.elapsed()
}

#[tokio::test]
async fn an_operator_watches_looks_up_and_logs_out_from_the_console() {
    let Some(mut chrome) = Chrome::start().await else {
        return;
    };
    let hub = TestHub::with(|c| {
        c.dev.demo = true;
        pusher_app(c);
        for (name, key, scope) in [("ops", ADMIN, "admin"), ("reader", READER, "audit:read")] {
            c.api_keys.push(ApiKeySettings {
                name: name.into(),
                sha256: common::sha256_hex(key),
                scopes: vec![scope.into()],
            });
        }
    })
    .await;
    let console_url = format!("{}/console", hub.url);

    // Without admin: refused, and said why.
    let ops = chrome.session().await;
    ops.set_window_size(1280, 800).await.unwrap();
    ops.goto(&console_url).await.unwrap();
    sign_in(&ops, READER).await;
    wait_for_js(
        &ops,
        "return document.getElementById('signin-error').textContent.includes('lacks the scope admin')",
        json!(true),
        WAIT,
    )
    .await;
    screenshot(&ops, "console-refused-without-admin").await;
    let r = hub
        .http
        .get(format!("{}/v1/console/stream", hub.url))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 401, "no key, no feed");

    // With the admin key: live.
    sign_in(&ops, ADMIN).await;
    wait_for_js(
        &ops,
        "return document.getElementById('state').dataset.state",
        json!("live"),
        WAIT,
    )
    .await;

    // Logouts from outside reach the stream and the plot.
    for i in 0..3 {
        let (s, _) = hub
            .logout(
                common::API_KEY,
                json!({"sub": format!("x{i}"), "iss": TEST_ISS}),
            )
            .await;
        assert_eq!(s, 200);
    }
    let in_stream = within(
        &ops,
        "return !!document.querySelector('#audit tr[data-sub=\"x2\"]')",
        WAIT,
    )
    .await;
    let in_plot = within(
        &ops,
        "return Number(document.getElementById('plot-logouts').dataset.total) >= 3",
        WAIT,
    )
    .await;
    eprintln!("in the stream after {in_stream:?}, in the plot after {in_plot:?}");
    assert!(in_stream < Duration::from_millis(1500), "{in_stream:?}");
    assert!(in_plot < Duration::from_millis(2500), "{in_plot:?}");
    screenshot(&ops, "console-live").await;

    // Alice has the demo apps open in two tabs.
    let alice = chrome.session().await;
    for (i, app) in ["app-a", "app-b"].into_iter().enumerate() {
        if i > 0 {
            let tab = alice.new_window(true).await.unwrap().handle;
            alice.switch_to_window(tab).await.unwrap();
        }
        alice.goto(&hub.demo_url(app)).await.unwrap();
        wait_for_js(&alice, "return typeof SloHub", json!("object"), WAIT).await;
        click(&alice, "[data-login=alice]").await;
        wait_for_js(
            &alice,
            "return document.getElementById('conn').textContent",
            json!("connected"),
            WAIT,
        )
        .await;
    }

    // The operator looks her up and logs her out.
    ops.find(fantoccini::Locator::Css("#lookup"))
        .await
        .unwrap()
        .send_keys("alice")
        .await
        .unwrap();
    click(&ops, "#lookup-form button").await;
    wait_for_js(
        &ops,
        "return document.querySelectorAll('#sockets tbody tr').length",
        json!(2),
        WAIT,
    )
    .await;
    screenshot(&ops, "console-user-lookup").await;
    ops.execute("window.confirm = () => true; return true", vec![])
        .await
        .unwrap();
    click(&ops, "#logout-user").await;
    for handle in alice.windows().await.unwrap() {
        alice.switch_to_window(handle).await.unwrap();
        wait_for_js(
            &alice,
            "return document.getElementById('status').dataset.state",
            json!("out"),
            WAIT,
        )
        .await;
    }
    screenshot(&alice, "console-demo-tab-logged-out").await;
    within(
        &ops,
        "return [...document.querySelectorAll('#audit tr[data-sub=\"alice\"]')].some(r => r.textContent.includes('key ops'))",
        WAIT,
    )
    .await;
    screenshot(&ops, "console-after-logout").await;

    // The Pusher debug view shows a channel event as it is triggered.
    click(&ops, ".tabs button[data-tab=pusher]").await;
    let body =
        json!({"name": "order-shipped", "channel": "orders", "data": "{\"id\":7}"}).to_string();
    let path = format!("/apps/{APP_ID}/events");
    let url = signed(
        "POST",
        &path,
        &body,
        slo_hub::util::now_secs(),
        APP_SECRET,
        &[],
    );
    let r = hub
        .http
        .post(format!("{}{url}", hub.url))
        .header("content-type", "application/json")
        .body(body)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    within(
        &ops,
        "return document.getElementById('pusher-events').textContent.includes('order-shipped')",
        WAIT,
    )
    .await;
    screenshot(&ops, "console-pusher-debug").await;
    ops.close().await.unwrap();
    alice.close().await.unwrap();
}
