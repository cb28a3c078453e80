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

/// Native-to-Web SSO in the browser: the native-app simulator mints a
/// transfer token and opens app A with it (query parameter, then cookie);
/// app A opens logged in without a login form, with the token gone from its
/// address bar. Logging out of the native app (revoking its refresh token)
/// logs app A out live through the cascade.
#[tokio::test]
async fn the_native_app_opens_app_a_logged_in_and_its_logout_reaches_app_a() {
    let Some(mut chrome) = Chrome::start().await else {
        return;
    };
    let hub = TestHub::with(|c| c.dev.demo = true).await;
    let sim = format!("{}/demo/native-sim/", hub.url);
    let a_url = hub.demo_url("app-a");
    let b = chrome.session().await;
    const SIM_STATE: &str = "return document.getElementById('status').dataset.state";

    b.goto(&sim).await.unwrap();
    click(&b, "[data-login=alice]").await;
    wait_for_js(&b, SIM_STATE, json!("in"), WAIT).await;

    // By query parameter, in this tab.
    let tab_query = b.window().await.unwrap();
    click(&b, "#open-query").await;
    wait_for_js(&b, STATE, json!("in"), WAIT).await;
    wait_for_js(&b, CONN, json!("connected"), WAIT).await;
    let url = b.current_url().await.unwrap();
    assert_eq!(
        url.as_str(),
        format!("{a_url}/"),
        "token and code stripped from the address bar"
    );
    let note = b
        .execute("return document.getElementById('log').textContent", vec![])
        .await
        .unwrap();
    assert!(
        note.as_str().unwrap().contains("Native-to-Web SSO"),
        "{note}"
    );
    screenshot(&b, "native-sso-app-a-by-query").await;

    // By cookie, in a second tab: the same user's session is reused.
    let tab_cookie = b.new_window(true).await.unwrap().handle;
    b.switch_to_window(tab_cookie.clone()).await.unwrap();
    b.goto(&sim).await.unwrap();
    wait_for_js(&b, SIM_STATE, json!("in"), WAIT).await;
    click(&b, "#open-cookie").await;
    wait_for_js(&b, CONN, json!("connected"), WAIT).await;
    assert_eq!(b.current_url().await.unwrap().as_str(), format!("{a_url}/"));
    let dev_iss = format!("{}/dev", hub.url);
    let (natives, webs) = hub
        .app()
        .sessions
        .user_counts(&dev_iss, "alice")
        .await
        .unwrap();
    assert_eq!(
        (natives, webs),
        (1, 1),
        "one native session, one reused web session"
    );
    assert_eq!(hub.app().registry.sizes().2, 2, "two app A tabs connected");

    // The native app logs out: both app A tabs are logged out live.
    let tab_native = b.new_window(true).await.unwrap().handle;
    b.switch_to_window(tab_native).await.unwrap();
    b.goto(&sim).await.unwrap();
    wait_for_js(&b, SIM_STATE, json!("in"), WAIT).await;
    click(&b, "#logout").await;
    wait_for_js(&b, SIM_STATE, json!("out"), WAIT).await;
    for tab in [tab_query, tab_cookie] {
        b.switch_to_window(tab).await.unwrap();
        wait_for_js(&b, STATE, json!("out"), WAIT).await;
        let note = b
            .execute("return document.getElementById('note').textContent", vec![])
            .await
            .unwrap();
        assert!(note.as_str().unwrap().contains("session_revoked"), "{note}");
    }
    screenshot(&b, "native-sso-app-a-logged-out").await;
    assert_eq!(
        hub.app()
            .sessions
            .user_counts(&dev_iss, "alice")
            .await
            .unwrap(),
        (0, 0)
    );
    b.close().await.unwrap();
}
