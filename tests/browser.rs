//! The demo, in a real headless Chromium: two apps on two origins, the same
//! user in both, two tabs of app B. Logging out in app A logs out both tabs of
//! app B live, within a second, without a reload; another user is untouched.

mod common;

use std::time::Duration;

use common::TestHub;
use common::browser::{Chrome, click, screenshot, wait_for_js};
use serde_json::json;

const STATE: &str = "return document.getElementById('status').dataset.state";
const CONN: &str = "return document.getElementById('conn').textContent";
const WAIT: Duration = Duration::from_secs(10);

async fn log_in(client: &fantoccini::Client, url: &str, user: &str) {
    client.goto(url).await.unwrap();
    wait_for_js(client, "return typeof SloHub", json!("object"), WAIT).await;
    click(client, &format!("[data-login={user}]")).await;
    wait_for_js(client, STATE, json!("in"), WAIT).await;
    wait_for_js(client, CONN, json!("connected"), WAIT).await;
}

#[tokio::test]
async fn logging_out_in_app_a_logs_out_every_tab_of_app_b() {
    let Some(mut chrome) = Chrome::start().await else {
        return;
    };
    let hub = TestHub::with(|c| c.dev.demo = true).await;
    let (a_url, b_url) = (hub.demo_url("app-a"), hub.demo_url("app-b"));

    // Alice: app A, then app B in a second tab, then a third tab of app B
    // (logged in already: same origin, same storage).
    let alice = chrome.session().await;
    log_in(&alice, &a_url, "alice").await;
    let tab_a = alice.window().await.unwrap();
    let tab_b1 = alice.new_window(true).await.unwrap().handle;
    alice.switch_to_window(tab_b1.clone()).await.unwrap();
    log_in(&alice, &b_url, "alice").await;
    let tab_b2 = alice.new_window(true).await.unwrap().handle;
    alice.switch_to_window(tab_b2.clone()).await.unwrap();
    alice.goto(&b_url).await.unwrap();
    wait_for_js(&alice, CONN, json!("connected"), WAIT).await;

    // Bob, in another browser profile, uses app B.
    let bob = chrome.session().await;
    log_in(&bob, &b_url, "bob").await;
    assert_eq!(
        hub.app().registry.sizes().2,
        4,
        "alice: A + two B tabs, bob: one B tab"
    );

    // Log out in app A.
    alice.switch_to_window(tab_a).await.unwrap();
    click(&alice, "#logout").await;
    let clicked_at = alice
        .execute(
            "return Number(document.body.dataset.logoutClickedAt)",
            vec![],
        )
        .await
        .unwrap()
        .as_f64()
        .unwrap();

    for (i, tab) in [tab_b1, tab_b2].into_iter().enumerate() {
        alice.switch_to_window(tab).await.unwrap();
        wait_for_js(&alice, STATE, json!("out"), WAIT).await;
        let at = alice
            .execute(
                "return Number(document.getElementById('status').dataset.at)",
                vec![],
            )
            .await
            .unwrap()
            .as_f64()
            .unwrap();
        let path = screenshot(&alice, &format!("app-b-tab{}-logged-out", i + 1)).await;
        let after_ms = at - clicked_at;
        assert!(
            (0.0..1000.0).contains(&after_ms),
            "app B tab {} showed the logout {after_ms} ms after the click (see {})",
            i + 1,
            path.display()
        );
        // No reload happened: the page still shows the logout pushed to it.
        let note = alice
            .execute("return document.getElementById('note').textContent", vec![])
            .await
            .unwrap();
        assert!(
            note.as_str().unwrap().contains("Logged out by the hub"),
            "{note}"
        );
    }

    // Bob is still logged in and connected.
    assert_eq!(bob.execute(STATE, vec![]).await.unwrap(), json!("in"));
    assert_eq!(bob.execute(CONN, vec![]).await.unwrap(), json!("connected"));
    screenshot(&bob, "app-b-bob-still-logged-in").await;
    assert_eq!(hub.app().registry.sizes().2, 1, "only bob's socket is left");

    // Alice logs in to app B again: the client logs in on the socket the hub
    // kept open (a re-login, not a reconnect).
    click(&alice, "[data-login=alice]").await;
    wait_for_js(&alice, STATE, json!("in"), WAIT).await;
    wait_for_js(&alice, CONN, json!("connected"), WAIT).await;
    assert_eq!(hub.metric("slo_hub_relogins_total").await, 1.0);
    assert_eq!(hub.app().registry.sizes().2, 2);

    alice.close().await.unwrap();
    bob.close().await.unwrap();
}
