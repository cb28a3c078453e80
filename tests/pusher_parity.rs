//! What a team moving from Pusher or Soketi relies on beyond the core
//! protocol: webhooks (signed, batched, retried, filtered), cache channels,
//! per-app limits and switches with Pusher's codes, per-app origins
//! (Laravel Echo in Chromium), many channels per socket across a restart,
//! and client addresses behind a reverse proxy.

mod common;

use std::time::Duration;

use common::pusher::*;
use common::{TestHub, Ws};
use serde_json::{Value, json};
use slo_hub::config::{Config, PusherAppSettings, WebhookSettings};
use slo_hub::pusher::protocol::sign;

const WAIT: Duration = Duration::from_secs(10);

fn names(events: &[Value]) -> Vec<String> {
    events
        .iter()
        .map(|e| match e["user_id"].as_str() {
            Some(u) => format!("{} {u}", e["name"].as_str().unwrap()),
            None => e["name"].as_str().unwrap().to_string(),
        })
        .collect()
}

#[tokio::test]
async fn webhooks_tell_a_presence_channels_life_once_signed_and_retried() {
    let (all_url, mut all) = receiver(1).await;
    let (added_url, mut added) = receiver(0).await;
    let hub = TestHub::with(|c| {
        pusher_app(c);
        c.pusher_apps[0].webhooks = vec![
            WebhookSettings {
                url: all_url,
                event_types: vec![],
            },
            WebhookSettings {
                url: added_url,
                event_types: vec!["member_added".into()],
            },
        ];
    })
    .await;
    let mut seen = Vec::new();
    let (mut a, a_id) = socket(&hub.url).await;
    join(&mut a, &a_id, "presence-room", "alice").await;
    // The first request was answered 503: these came with the retry.
    events_until(&mut all, &mut seen, 2).await;
    let (mut a2, a2_id) = socket(&hub.url).await;
    join(&mut a2, &a2_id, "presence-room", "alice").await;
    let (mut b, b_id) = socket(&hub.url).await;
    join(&mut b, &b_id, "presence-room", "bob").await;
    events_until(&mut all, &mut seen, 3).await;
    b.close().await;
    events_until(&mut all, &mut seen, 4).await;
    // Alice's second socket leaving is no change of membership.
    a2.close().await;
    a.close().await;
    events_until(&mut all, &mut seen, 6).await;
    assert_eq!(
        names(&seen),
        [
            "channel_occupied",
            "member_added alice",
            "member_added bob",
            "member_removed bob",
            "member_removed alice",
            "channel_vacated",
        ]
    );
    assert!(
        seen.iter().all(|e| e["channel"] == "presence-room"),
        "{seen:?}"
    );
    let mut only_added = Vec::new();
    events_until(&mut added, &mut only_added, 2).await;
    assert_eq!(
        names(&only_added),
        ["member_added alice", "member_added bob"]
    );
    assert!(
        hub.metric("slo_hub_pusher_webhooks_total{outcome=\"retried\"}")
            .await
            >= 1.0
    );
    assert!(
        hub.metric("slo_hub_pusher_webhooks_total{outcome=\"delivered\"}")
            .await
            >= 2.0
    );
}

#[tokio::test]
async fn client_events_reach_the_webhook_with_their_sender() {
    let (url, mut rx) = receiver(0).await;
    let hub = TestHub::with(|c| {
        pusher_app(c);
        c.pusher_apps[0].webhooks = vec![WebhookSettings {
            url,
            event_types: vec!["client_event".into()],
        }];
    })
    .await;
    let (mut a, a_id) = socket(&hub.url).await;
    join(&mut a, &a_id, "presence-chat", "alice").await;
    a.send_json(json!({"event": "client-typing", "channel": "presence-chat", "data": {"n": 1}}))
        .await;
    let mut seen = Vec::new();
    events_until(&mut rx, &mut seen, 1).await;
    assert_eq!(
        seen[0],
        json!({"name": "client_event", "channel": "presence-chat", "event": "client-typing",
               "data": "{\"n\":1}", "socket_id": a_id, "user_id": "alice"})
    );
}

async fn subscribe(ws: &mut Ws, channel: &str) -> Value {
    ws.send_json(json!({"event": "pusher:subscribe", "data": {"channel": channel}}))
        .await;
    ws.recv_json().await
}

async fn trigger(hub: &TestHub, channel: &str, name: &str, data: Value) {
    let path = format!("/apps/{APP_ID}/events");
    let body = json!({"name": name, "channel": channel, "data": data.to_string()}).to_string();
    let q = signed(
        "POST",
        &path,
        &body,
        slo_hub::util::now_secs(),
        APP_SECRET,
        &[],
    );
    assert_eq!(api(hub, "POST", &q, &body).await.0, 200);
}

#[tokio::test]
async fn a_cache_channel_replays_its_last_event_or_tells_a_miss() {
    let (url, mut rx) = receiver(0).await;
    let hub = TestHub::with(|c| {
        pusher_app(c);
        c.pusher_apps[0].webhooks = vec![WebhookSettings {
            url,
            event_types: vec!["cache_miss".into()],
        }];
    })
    .await;
    let (mut first, _) = socket(&hub.url).await;
    let ok = subscribe(&mut first, "cache-prices").await;
    assert_eq!(ok["event"], "pusher_internal:subscription_succeeded");
    let miss = first.recv_json().await;
    assert_eq!(
        (&miss["event"], &miss["channel"]),
        (&json!("pusher:cache_miss"), &json!("cache-prices"))
    );
    let mut seen = Vec::new();
    events_until(&mut rx, &mut seen, 1).await;
    assert_eq!(
        seen[0],
        json!({"name": "cache_miss", "channel": "cache-prices"})
    );

    trigger(&hub, "cache-prices", "price", json!({"v": 1})).await;
    trigger(&hub, "cache-prices", "price", json!({"v": 2})).await;
    for v in [1, 2] {
        let m = first.recv_json().await;
        assert_eq!(m["data"], json!({"v": v}).to_string());
    }
    // A late subscriber gets the last event right after it joined.
    let (mut late, _) = socket(&hub.url).await;
    let ok = subscribe(&mut late, "cache-prices").await;
    assert_eq!(ok["event"], "pusher_internal:subscription_succeeded");
    let replay = late.recv_json().await;
    assert_eq!(
        (&replay["event"], &replay["channel"], &replay["data"]),
        (
            &json!("price"),
            &json!("cache-prices"),
            &json!(json!({"v": 2}).to_string())
        )
    );
    // An ordinary channel keeps nothing and tells no miss: the next
    // message after its subscription is the next event.
    let ok = subscribe(&mut late, "prices").await;
    assert_eq!(ok["event"], "pusher_internal:subscription_succeeded");
    trigger(&hub, "prices", "price", json!({"v": 3})).await;
    assert_eq!(late.recv_json().await["event"], "price");
}

#[tokio::test]
async fn subscription_counts_are_told_to_subscribers_when_the_app_asks() {
    let hub = TestHub::with(|c| {
        pusher_app(c);
        c.pusher_apps[0].subscription_count = true;
    })
    .await;
    let (mut a, _) = socket(&hub.url).await;
    assert_eq!(
        subscribe(&mut a, "news").await["event"],
        "pusher_internal:subscription_succeeded"
    );
    let count = |m: &Value| -> u64 {
        assert_eq!(m["event"], "pusher_internal:subscription_count", "{m}");
        let d: Value = serde_json::from_str(m["data"].as_str().unwrap()).unwrap();
        d["subscription_count"].as_u64().unwrap()
    };
    assert_eq!(count(&a.recv_json().await), 1);
    let (mut b, _) = socket(&hub.url).await;
    subscribe(&mut b, "news").await;
    assert_eq!(count(&a.recv_json().await), 2);
    assert_eq!(count(&b.recv_json().await), 2);
    b.close().await;
    assert_eq!(count(&a.recv_json().await), 1);
}

/// A raw socket for the app whose key is `key`, with `origin`.
async fn connect(hub: &TestHub, key: &str, origin: Option<&str>) -> (Ws, Value) {
    let url = format!("{}/app/{key}?protocol=7", hub.url.replacen("http", "ws", 1));
    let mut ws = Ws::connect(&url, origin).await.expect("upgrade");
    let first = ws.recv_json().await;
    (ws, first)
}

fn socket_id(established: &Value) -> String {
    assert_eq!(
        established["event"], "pusher:connection_established",
        "{established}"
    );
    let data: Value = serde_json::from_str(established["data"].as_str().unwrap()).unwrap();
    data["socket_id"].as_str().unwrap().to_string()
}

fn refused_with(first: &Value, code: u16) {
    assert_eq!(first["event"], "pusher:error", "{first}");
    assert_eq!(first["data"]["code"], code, "{first}");
}

fn limited_app(c: &mut Config) {
    pusher_app(c);
    let a = &mut c.pusher_apps[0];
    a.max_connections = Some(2);
    a.max_client_events_per_sec = 2;
    a.max_presence_members = 1;
    a.max_presence_member_bytes = 40;
    a.max_subscriptions_per_socket = 3;
    let mut off = PusherAppSettings::new("off", "off-key", "off-secret-0123456789");
    off.enabled = false;
    c.pusher_apps.push(off);
}

#[tokio::test]
async fn per_app_limits_and_switches_refuse_with_pushers_codes() {
    let hub = TestHub::with(limited_app).await;

    // A disabled app: 4003 on the socket, 403 on the API.
    let (mut ws, first) = connect(&hub, "off-key", None).await;
    refused_with(&first, 4003);
    assert_eq!(ws.close_code().await, Some(4003));
    let body = json!({"name": "e", "channel": "c", "data": "{}"}).to_string();
    let (status, text) = api(&hub, "POST", "/apps/off/events", &body).await;
    assert_eq!((status, text.trim()), (403, "App off is disabled"));

    // Two connections at most; a third is refused 4004 and a place that
    // frees up is taken again.
    let (mut a, first) = connect(&hub, APP_KEY, None).await;
    let a_id = socket_id(&first);
    let (b, first) = connect(&hub, APP_KEY, None).await;
    socket_id(&first);
    let (mut c, first) = connect(&hub, APP_KEY, None).await;
    refused_with(&first, 4004);
    assert_eq!(c.close_code().await, Some(4004));
    b.close().await;
    let mut admitted = None;
    for _ in 0..100 {
        let (ws, first) = connect(&hub, APP_KEY, None).await;
        if first["event"] == "pusher:connection_established" {
            admitted = Some(ws);
            break;
        }
        refused_with(&first, 4004);
    }
    assert!(admitted.is_some(), "a freed place is taken again");

    // Three subscriptions per socket.
    for ch in ["s1", "s2", "s3"] {
        assert_eq!(
            subscribe(&mut a, ch).await["event"],
            "pusher_internal:subscription_succeeded"
        );
    }
    let m = subscribe(&mut a, "s4").await;
    assert_eq!(m["event"], "pusher:subscription_error", "{m}");
    assert_eq!(m["data"]["status"], 429);
    for ch in ["s1", "s2", "s3"] {
        a.send_json(json!({"event": "pusher:unsubscribe", "data": {"channel": ch}}))
            .await;
    }

    // One presence member, of at most 40 bytes of user_info.
    let presence = |id: &str, user: &str, info: Value| {
        let channel_data = json!({"user_id": user, "user_info": info}).to_string();
        presence_subscribe(id, "presence-small", &channel_data)
    };
    a.send_json(presence(&a_id, "bob", json!({"bio": "x".repeat(64)})))
        .await;
    let m = a.recv_json().await;
    assert_eq!(
        (&m["event"], &m["data"]["status"]),
        (&json!("pusher:subscription_error"), &json!(413)),
        "{m}"
    );
    a.send_json(presence(&a_id, "alice", json!({}))).await;
    assert_eq!(
        a.recv_json().await["event"],
        "pusher_internal:subscription_succeeded"
    );

    // Two client events per second; the third is refused 4301.
    let mut refused = None;
    for n in 0..3 {
        a.send_json(json!({"event": "client-x", "channel": "presence-small", "data": {"n": n}}))
            .await;
    }
    a.send_json(json!({"event": "pusher:ping", "data": {}}))
        .await;
    loop {
        let m = a.recv_json().await;
        if m["event"] == "pusher:pong" {
            break;
        }
        if m["event"] == "pusher:error" {
            refused = Some(m["data"]["code"].clone());
        }
    }
    assert_eq!(refused, Some(json!(4301)));
}

#[tokio::test]
async fn a_full_presence_channel_refuses_the_next_member_with_the_apps_limit() {
    let hub = TestHub::with(limited_app).await;
    let (mut a, first) = connect(&hub, APP_KEY, None).await;
    let a_id = socket_id(&first);
    join(&mut a, &a_id, "presence-one", "alice").await;
    let (mut b, first) = connect(&hub, APP_KEY, None).await;
    let b_id = socket_id(&first);
    let channel_data = json!({"user_id": "bob"}).to_string();
    b.send_json(presence_subscribe(&b_id, "presence-one", &channel_data))
        .await;
    let m = b.recv_json().await;
    assert_eq!(m["event"], "pusher:subscription_error", "{m}");
    assert_eq!(m["data"]["status"], 403);
    assert!(
        m["data"]["error"]
            .as_str()
            .unwrap()
            .contains("maximum of 1 members"),
        "{m}"
    );
}

/// pusher-js sends every subscription at once on each connect: with a
/// per-app limit of 200, 150 channels are taken, and taken again after the
/// hub restarts, with no refusal and no reconnect loop.
#[tokio::test]
async fn pusher_js_holds_150_channels_and_takes_them_again_after_a_restart() {
    use tokio::io::AsyncBufReadExt;
    let Some(node) = common::require_program("node", &["/usr/bin/node"]) else {
        return;
    };
    let Some(dir) = common::require_node_packages() else {
        return;
    };
    let port = common::free_port();
    let adjust = move |c: &mut Config| {
        pusher_app(c);
        c.listen = format!("127.0.0.1:{port}").parse().unwrap();
        c.pusher_apps[0].max_subscriptions_per_socket = 200;
    };
    let hub = TestHub::with(adjust).await;
    let mut child = tokio::process::Command::new(node)
        .arg("pusher-channels.mjs")
        .current_dir(&dir)
        .env("HUB_HOST", "127.0.0.1")
        .env("HUB_PORT", port.to_string())
        .env("APP_KEY", APP_KEY)
        .env("CHANNELS", "150")
        .env("ROUNDS", "2")
        .stdout(std::process::Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .unwrap();
    let mut lines = tokio::io::BufReader::new(child.stdout.take().unwrap()).lines();
    let mut seen = Vec::new();
    let mut next_step = async |want: &str| -> Value {
        loop {
            let line = tokio::time::timeout(Duration::from_secs(60), lines.next_line())
                .await
                .unwrap_or_else(|_| panic!("no {want} in time: {seen:?}"))
                .unwrap()
                .unwrap_or_else(|| panic!("node ended before {want}: {seen:?}"));
            let v: Value = serde_json::from_str(&line).unwrap();
            seen.push(v.clone());
            if v["step"] == want {
                return v;
            }
        }
    };
    assert_eq!(next_step("subscribed").await["count"], 150);
    hub.shutdown().await;
    let _hub = TestHub::with(adjust).await;
    let again = next_step("subscribed").await;
    assert_eq!((&again["round"], &again["count"]), (&json!(1), &json!(150)));
    next_step("done").await;
    let connects = seen
        .iter()
        .filter(|s| s["step"] == "state" && s["current"] == "connected")
        .count();
    assert_eq!(connects, 2, "one connect per hub, no loop: {seen:?}");
    // The only refusal is the restart's own 4200 (and the refused TCP
    // connect while the hub was down): no 4100, no subscription error.
    let refused: Vec<&Value> = seen
        .iter()
        .filter(|s| {
            s["step"] == "subscription_error"
                || (s["step"] == "error" && s["error"]["code"].is_number())
        })
        .collect();
    assert_eq!(
        refused
            .iter()
            .map(|s| s["error"]["code"].as_u64())
            .collect::<Vec<_>>(),
        [Some(4200)],
        "{seen:?}"
    );
}

/// A page that runs Laravel Echo (with the web build of pusher-js) against
/// the hub at `port`: it joins `private-orders.1` through an auth endpoint
/// the page's own server answers, as a Laravel backend would.
async fn echo_page(port: &str) -> (String, tokio::task::JoinHandle<()>) {
    let dir = common::require_node_packages().expect("node packages");
    let pusher = std::fs::read_to_string(dir.join("node_modules/pusher-js/dist/web/pusher.min.js"))
        .expect("pusher-js web build");
    let echo = std::fs::read_to_string(dir.join("node_modules/laravel-echo/dist/echo.iife.js"))
        .expect("laravel-echo web build");
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let origin = format!("http://{}", listener.local_addr().unwrap());
    let page = format!(
        r#"<!doctype html><meta charset="utf-8"><title>Echo</title>
<script src="/pusher.min.js"></script>
<script src="/echo.js"></script>
<script>
  window.Pusher = Pusher;
  const echo = new Echo({{
    broadcaster: "pusher", key: "{APP_KEY}", cluster: "local",
    wsHost: "127.0.0.1", wsPort: {port}, forceTLS: false,
    enabledTransports: ["ws"], disableStats: true,
    authEndpoint: "/broadcasting/auth",
  }});
  echo.connector.pusher.connection.bind("error", (e) => {{
    document.body.dataset.error = String(e && e.error && e.error.data && e.error.data.code);
  }});
  echo.private("orders.1")
    .subscribed(() => {{ document.body.dataset.subscribed = "yes"; }})
    .listen(".shipped", (e) => {{ document.body.dataset.shipped = JSON.stringify(e); }});
</script>"#
    );
    let auth = axum::routing::post(
        |axum::Form(f): axum::Form<std::collections::HashMap<String, String>>| async move {
            let sig = sign(
                APP_SECRET,
                &format!("{}:{}", f["socket_id"], f["channel_name"]),
            );
            axum::Json(json!({ "auth": format!("{APP_KEY}:{sig}") }))
        },
    );
    let js = |body: String| {
        axum::routing::get(move || async move { ([("content-type", "text/javascript")], body) })
    };
    let router = axum::Router::new()
        .route(
            "/",
            axum::routing::get(move || async move { axum::response::Html(page) }),
        )
        .route("/pusher.min.js", js(pusher))
        .route("/echo.js", js(echo))
        .route("/broadcasting/auth", auth);
    let server = tokio::spawn(async move {
        let _ = axum::serve(listener, router).await;
    });
    (origin, server)
}

/// A straight swap: Laravel Echo on a page whose origin only the app's own
/// allow-list names (the hub's `ws.allowed_origins` does not) joins a
/// private channel and gets its event; a page of another origin is told
/// 4009 and stays off.
#[tokio::test]
async fn laravel_echo_in_chromium_runs_on_an_origin_the_app_allows() {
    let Some(mut chrome) = common::browser::Chrome::start().await else {
        return;
    };
    if common::require_node_packages().is_none() {
        return;
    }
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    drop(listener);
    let (allowed, _a) = echo_page(&port.to_string()).await;
    let (other, _b) = echo_page(&port.to_string()).await;
    let app_origin = allowed.clone();
    let hub = TestHub::with(move |c| {
        pusher_app(c);
        c.listen = format!("127.0.0.1:{port}").parse().unwrap();
        c.ws.allowed_origins = vec!["https://spa.example".into()];
        c.pusher_apps[0].allowed_origins = vec![app_origin];
    })
    .await;
    let b = chrome.session().await;
    b.goto(&format!("{allowed}/")).await.unwrap();
    let wait = Duration::from_secs(10);
    common::browser::wait_for_js(
        &b,
        "return document.body.dataset.subscribed || null",
        json!("yes"),
        wait,
    )
    .await;
    trigger(&hub, "private-orders.1", "shipped", json!({"order": 1})).await;
    common::browser::wait_for_js(
        &b,
        "return document.body.dataset.shipped || null",
        json!(json!({"order": 1}).to_string()),
        wait,
    )
    .await;
    common::browser::screenshot(&b, "laravel-echo-allowed-origin").await;

    b.goto(&format!("{other}/")).await.unwrap();
    common::browser::wait_for_js(
        &b,
        "return document.body.dataset.error || null",
        json!("4009"),
        wait,
    )
    .await;
    let subscribed = b
        .execute("return document.body.dataset.subscribed || null", vec![])
        .await
        .unwrap();
    assert_eq!(subscribed, Value::Null);
    b.close().await.unwrap();
}

/// Behind a trusted reverse proxy every limit counts the client's address
/// (X-Forwarded-For), not the proxy's: 1,000 connects from 1,000 clients
/// through one nginx all get in, while the same 1,000 from one client are
/// held to its per-address rate.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_thousand_clients_behind_one_proxy_are_not_limited_as_one() {
    use common::nginx::{Nginx, nginx_bin};
    let Some(nginx) = nginx_bin() else { return };
    let hub = TestHub::with(|c| {
        pusher_app(c);
        c.http.trusted_proxies = vec!["127.0.0.1".into()];
        c.limits.connects_per_ip_per_sec = 10;
        c.limits.connect_burst = 100;
    })
    .await;
    let hub_addr = hub.url.trim_start_matches("http://").to_string();
    let proxy_port = common::free_port();
    let site = common::nginx::proxy_site(proxy_port, &hub_addr);
    let _nginx = Nginx::start(&nginx, &site, proxy_port);
    let connect_from = move |source: [u8; 4]| async move {
        let tcp = common::nginx::connect_from(source, proxy_port).await;
        let url = format!("ws://127.0.0.1:{proxy_port}/app/{APP_KEY}?protocol=7");
        match Ws::over(Box::new(tcp), &url, None).await {
            Ok(mut ws) => {
                let hello = ws.recv_json().await;
                assert_eq!(hello["event"], "pusher:connection_established");
                ws.close().await;
                true
            }
            Err(status) => {
                assert_eq!(status, 429);
                false
            }
        }
    };
    let run = |sources: Vec<[u8; 4]>| async move {
        let mut admitted = 0;
        for chunk in sources.chunks(50) {
            let all = futures_util::future::join_all(chunk.iter().map(|s| connect_from(*s))).await;
            admitted += all.into_iter().filter(|ok| *ok).count();
        }
        admitted
    };
    let many: Vec<[u8; 4]> = (0..1000u32)
        .map(|i| [127, 1, (i / 250) as u8, (i % 250 + 1) as u8])
        .collect();
    assert_eq!(
        run(many).await,
        1000,
        "no client is limited for another's connects"
    );
    let one = run(vec![[127, 0, 0, 9]; 1000]).await;
    assert!(
        (100..1000).contains(&one),
        "one client is held to its own rate: {one} of 1000 admitted"
    );
}

/// Webhook requests are kept in the journal until delivered: a hub killed
/// (-9) while the receiver is down sends them after its restart.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn webhooks_pending_at_a_kill_9_are_sent_after_the_restart() {
    use std::sync::Arc;
    use std::sync::atomic::{AtomicBool, Ordering};
    slo_hub::auth::crypto::install();
    let down = Arc::new(AtomicBool::new(true));
    let (attempt_tx, mut attempts) = tokio::sync::mpsc::unbounded_channel::<()>();
    let (got_tx, mut got) = tokio::sync::mpsc::unbounded_channel::<(String, String)>();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}/hooks", listener.local_addr().unwrap());
    let is_down = down.clone();
    let route = axum::routing::post(
        move |headers: axum::http::HeaderMap, body: String| async move {
            if is_down.load(Ordering::Acquire) {
                let _ = attempt_tx.send(());
                return axum::http::StatusCode::SERVICE_UNAVAILABLE;
            }
            let sig = headers["x-pusher-signature"].to_str().unwrap().to_string();
            let _ = got_tx.send((sig, body));
            axum::http::StatusCode::OK
        },
    );
    tokio::spawn(
        async move { axum::serve(listener, axum::Router::new().route("/hooks", route)).await },
    );
    let listen = format!("127.0.0.1:{}", common::free_port());
    let (_cfg, path) = common::process::test_config_file(&format!(
        r#"listen = "{listen}"
[[pusher_apps]]
id = "{APP_ID}"
key = "{APP_KEY}"
secret = "{APP_SECRET}"
webhooks = [{{ url = "{url}" }}]"#
    ));
    let dir = tempfile::tempdir().unwrap();
    let args = ["serve", "--config", path.as_str()];
    let hub = common::process::Running::start(&args, &[], dir.path());
    let (mut ws, _) = socket(&format!("http://{listen}")).await;
    assert_eq!(
        subscribe(&mut ws, "news").await["event"],
        "pusher_internal:subscription_succeeded"
    );
    // The hub tried once (answered 503): the request is batched and kept.
    tokio::time::timeout(WAIT, attempts.recv())
        .await
        .expect("a webhook attempt");
    hub.kill9();
    drop(ws);

    down.store(false, Ordering::Release);
    let hub = common::process::Running::start(&args, &[], dir.path());
    let (sig, body) = tokio::time::timeout(WAIT, got.recv())
        .await
        .expect("the kept request after the restart")
        .unwrap();
    assert_eq!(sig, sign(APP_SECRET, &body));
    let v: Value = serde_json::from_str(&body).unwrap();
    assert_eq!(
        v["events"],
        json!([{"name": "channel_occupied", "channel": "news"}])
    );
    assert_eq!(hub.terminate().0, 0);
}
