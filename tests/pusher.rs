//! Pusher protocol v7 and HTTP API: the real libraries (pusher-js and the
//! `pusher` server SDK for Node, from `tests/node`) drive the hub through
//! the seed article's sample and every feature; refusals are checked with
//! hand-signed requests and raw sockets.

mod common;

use common::pusher::*;
use common::{TestHub, Ws, require_program};
use serde_json::{Value, json};

fn now() -> u64 {
    slo_hub::util::now_secs()
}

#[tokio::test]
async fn pusher_js_and_the_pusher_sdk_run_every_feature_and_the_seed_sample() {
    let hub = TestHub::with(pusher_app).await;
    let port = hub.url.rsplit(':').next().unwrap().to_string();
    if run_scenario(&[port]).await.is_none() {
        return;
    }
    // Every socket left: no channel or user entry remains.
    let left = hub
        .app()
        .pusher
        .presence()
        .channels(APP_ID, "")
        .await
        .unwrap();
    assert!(left.is_empty(), "{left:?}");
}

#[tokio::test]
async fn the_http_api_refuses_bad_signatures_stale_timestamps_and_oversized_events() {
    let hub = TestHub::with(pusher_app).await;
    let path = format!("/apps/{APP_ID}/events");
    let body = json!({"name": "e", "channel": "c", "data": "{}"}).to_string();

    let ok = signed("POST", &path, &body, now(), APP_SECRET, &[]);
    assert_eq!(api(&hub, "POST", &ok, &body).await, (200, "{}".into()));

    let wrong_secret = signed("POST", &path, &body, now(), "another-secret-0123456", &[]);
    let (s, text) = api(&hub, "POST", &wrong_secret, &body).await;
    assert_eq!(s, 401);
    assert!(text.contains("Invalid signature"), "{text}");

    let stale = signed("POST", &path, &body, now() - 601, APP_SECRET, &[]);
    let (s, text) = api(&hub, "POST", &stale, &body).await;
    assert_eq!(s, 401);
    assert!(text.contains("Timestamp expired"), "{text}");

    // Signed for one body, sent with another.
    let other = json!({"name": "e", "channel": "d", "data": "{}"}).to_string();
    let (s, text) = api(&hub, "POST", &ok, &other).await;
    assert_eq!(s, 401);
    assert!(text.contains("body_md5"), "{text}");

    let unknown = signed("POST", "/apps/999/events", &body, now(), APP_SECRET, &[]);
    let (s, text) = api(&hub, "POST", &unknown, &body).await;
    assert_eq!(s, 404);
    assert!(text.contains("Unknown app_id"), "{text}");

    let big = json!({"name": "e", "channel": "c", "data": "x".repeat(10 * 1024 + 1)}).to_string();
    let q = signed("POST", &path, &big, now(), APP_SECRET, &[]);
    let (s, text) = api(&hub, "POST", &q, &big).await;
    assert_eq!(s, 413);
    assert!(text.contains("larger than 10240"), "{text}");

    let many: Vec<String> = (0..101).map(|i| format!("c{i}")).collect();
    let body = json!({"name": "e", "channels": many, "data": "{}"}).to_string();
    let q = signed("POST", &path, &body, now(), APP_SECRET, &[]);
    let (s, text) = api(&hub, "POST", &q, &body).await;
    assert_eq!(s, 400);
    assert!(text.contains("1 to 100 channels"), "{text}");

    let body = json!({"name": "e", "channel": "bad name", "data": "{}"}).to_string();
    let q = signed("POST", &path, &body, now(), APP_SECRET, &[]);
    assert_eq!(api(&hub, "POST", &q, &body).await.0, 400);

    // A GET is signed too: users of a public channel are refused as such.
    let users = format!("/apps/{APP_ID}/channels/public/users");
    let q = signed("GET", &users, "", now(), APP_SECRET, &[]);
    let (s, text) = api(&hub, "GET", &q, "").await;
    assert_eq!(s, 400);
    assert!(text.contains("presence channels only"), "{text}");

    assert_eq!(
        hub.metric("slo_hub_http_rejections_total{endpoint=\"pusher_api\",error=\"unauthorized\"}")
            .await,
        3.0
    );
}

#[tokio::test]
async fn a_socket_with_an_unknown_key_or_protocol_is_told_why_and_closed() {
    let hub = TestHub::with(pusher_app).await;
    let base = hub.url.replacen("http", "ws", 1);
    for (path, code) in [
        ("/app/nope?protocol=7".to_string(), 4001),
        (format!("/app/{APP_KEY}"), 4008),
        (format!("/app/{APP_KEY}?protocol=6"), 4007),
    ] {
        let mut ws = Ws::connect(&format!("{base}{path}"), None)
            .await
            .expect("upgraded");
        let err = ws.recv_json().await;
        assert_eq!(err["event"], "pusher:error", "{path}: {err}");
        assert_eq!(err["data"]["code"], code, "{path}: {err}");
        assert_eq!(ws.close_code().await, Some(code), "{path}");
    }

    // The right key and protocol: connection_established, then ping/pong.
    let mut ws = Ws::connect(&format!("{base}/app/{APP_KEY}?protocol=7&client=js"), None)
        .await
        .unwrap();
    let hello = ws.recv_json().await;
    assert_eq!(hello["event"], "pusher:connection_established");
    let data: Value = serde_json::from_str(hello["data"].as_str().unwrap()).unwrap();
    assert_eq!(data["activity_timeout"], 120);
    assert!(data["socket_id"].as_str().unwrap().contains('.'));
    ws.send_json(json!({"event": "pusher:ping", "data": {}}))
        .await;
    assert_eq!(ws.recv_json().await["event"], "pusher:pong");
    // A user channel is joined only by that user, after signing in.
    ws.send_json(
        json!({"event": "pusher:subscribe", "data": {"channel": "#server-to-user-alice"}}),
    )
    .await;
    let refused = ws.recv_json().await;
    assert_eq!(refused["event"], "pusher:subscription_error", "{refused}");
    assert_eq!(refused["data"]["status"], 403);
    // A bad sign-in closes 4009.
    ws.send_json(json!({"event": "pusher:signin", "data": {"auth": "x:y", "user_data": "{\"id\":\"alice\"}"}}))
        .await;
    assert_eq!(ws.recv_json().await["data"]["code"], 4009);
    assert_eq!(ws.close_code().await, Some(4009));
}

/// A raw protocol-7 socket (tokio-tungstenite), subscribed and signed in by
/// hand-made signatures, as the target of the Python SDK.
async fn raw_socket(hub: &TestHub) -> (Ws, String) {
    let url = format!(
        "{}/app/{APP_KEY}?protocol=7",
        hub.url.replacen("http", "ws", 1)
    );
    let mut ws = Ws::connect(&url, None).await.unwrap();
    let hello = ws.recv_json().await;
    let data: Value = serde_json::from_str(hello["data"].as_str().unwrap()).unwrap();
    let socket_id = data["socket_id"].as_str().unwrap().to_string();
    (ws, socket_id)
}

fn auth(message: &str) -> String {
    format!(
        "{APP_KEY}:{}",
        slo_hub::pusher::protocol::sign(APP_SECRET, message)
    )
}

#[tokio::test]
async fn the_python_sdk_triggers_queries_and_terminates() {
    let Some(python) = require_program("python3", &[]) else {
        return;
    };
    let has_sdk = std::process::Command::new(&python)
        .args(["-c", "import pusher"])
        .status()
        .is_ok_and(|s| s.success());
    if !has_sdk {
        let msg = "the Python package pusher is not installed: this test needs it (python3 -m pip install pusher==3.3.4)";
        assert!(
            std::env::var("SLO_HUB_REQUIRE_ALL").as_deref() != Ok("1"),
            "{msg}; SLO_HUB_REQUIRE_ALL=1 makes that a failure"
        );
        eprintln!("\n!!!!!!!! SKIPPED: {msg} !!!!!!!!\n");
        return;
    }
    let hub = TestHub::with(pusher_app).await;
    let (mut ws, socket_id) = raw_socket(&hub).await;
    ws.send_json(json!({"event": "pusher:subscribe", "data": {"channel": "visitor42_incognito"}}))
        .await;
    assert_eq!(
        ws.recv_json().await["event"],
        "pusher_internal:subscription_succeeded"
    );
    let channel_data = json!({"user_id": "carol"}).to_string();
    ws.send_json(json!({"event": "pusher:subscribe", "data": {
        "channel": "presence-room",
        "auth": auth(&format!("{socket_id}:presence-room:{channel_data}")),
        "channel_data": channel_data,
    }}))
    .await;
    let ok = ws.recv_json().await;
    assert_eq!(
        ok["event"], "pusher_internal:subscription_succeeded",
        "{ok}"
    );
    let user_data = json!({"id": "carol"}).to_string();
    ws.send_json(json!({"event": "pusher:signin", "data": {
        "auth": auth(&format!("{socket_id}::user::{user_data}")),
        "user_data": user_data,
    }}))
    .await;
    assert_eq!(ws.recv_json().await["event"], "pusher:signin_success");

    let port = hub.url.rsplit(':').next().unwrap().to_string();
    let script = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/python/pusher_http.py");
    let out = tokio::process::Command::new(&python)
        .args([script, "127.0.0.1", &port, APP_ID, APP_KEY, APP_SECRET])
        .output()
        .await
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{stdout}\n{stderr}");
    let calls: Vec<Value> = stdout
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    let result = |name: &str| {
        calls
            .iter()
            .find(|c| c["call"] == name)
            .unwrap_or_else(|| panic!("no {name}: {stdout}"))["result"]
            .clone()
    };
    assert_eq!(
        result("channels_info"),
        json!({"channels": {"presence-room": {"user_count": 1}}})
    );
    assert_eq!(
        result("channel_info"),
        json!({"occupied": true, "user_count": 1, "subscription_count": 1})
    );
    assert_eq!(result("users_info"), json!({"users": [{"id": "carol"}]}));
    assert!(
        result("wrong_secret")
            .as_str()
            .unwrap()
            .starts_with("refused"),
        "{stdout}"
    );

    // What the socket saw: the seed sample's event, the batch, then the
    // termination.
    let slo = ws.recv_json().await;
    assert_eq!(
        (&slo["event"], &slo["channel"]),
        (&json!("slo-event"), &json!("visitor42_incognito"))
    );
    let data: Value = serde_json::from_str(slo["data"].as_str().unwrap()).unwrap();
    assert_eq!(data, json!({"slo": true}));
    for channel in ["visitor42_incognito", "presence-room"] {
        let b = ws.recv_json().await;
        assert_eq!(
            (&b["event"], &b["channel"]),
            (&json!("batched"), &json!(channel))
        );
    }
    assert_eq!(ws.close_code().await, Some(4009));
    assert!(
        hub.app()
            .pusher
            .presence()
            .channels(APP_ID, "")
            .await
            .unwrap()
            .is_empty()
    );
}

/// The seed article's SPA side in a real headless Chromium: the web build
/// of pusher-js, on a page of another origin, subscribes to the visitor's
/// channel and logs out on `slo-event` — triggered by a signed API call.
#[tokio::test]
async fn pusher_js_in_chromium_receives_the_seed_samples_slo_event() {
    let Some(mut chrome) = common::browser::Chrome::start().await else {
        return;
    };
    let Some(dir) = common::require_node_packages() else {
        return;
    };
    let lib = std::fs::read_to_string(dir.join("node_modules/pusher-js/dist/web/pusher.min.js"))
        .expect("pusher-js web build");
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let page_origin = format!("http://{}", listener.local_addr().unwrap());
    let hub = TestHub::with(|c| {
        pusher_app(c);
        c.ws.allowed_origins = vec![page_origin.clone()];
    })
    .await;
    let port = hub.url.rsplit(':').next().unwrap().to_string();
    let page = format!(
        r#"<!doctype html><meta charset="utf-8"><title>SPA</title>
<script src="/pusher.min.js"></script>
<script>
  // The seed article's client code, with only host, port and key set.
  const pusher = new Pusher("{APP_KEY}", {{
    wsHost: "127.0.0.1", wsPort: {port}, forceTLS: false,
    enabledTransports: ["ws"], cluster: "local", disableStats: true,
  }});
  const channel = pusher.subscribe("visitor42_incognito");
  channel.bind("pusher:subscription_succeeded", () => {{ document.body.dataset.subscribed = "yes"; }});
  channel.bind("slo-event", (data) => {{
    if (data.slo === true) {{ document.body.dataset.loggedOut = "yes"; }}
  }});
</script>"#
    );
    let router = axum::Router::new()
        .route(
            "/",
            axum::routing::get(move || async move { axum::response::Html(page) }),
        )
        .route(
            "/pusher.min.js",
            axum::routing::get(move || async move { ([("content-type", "text/javascript")], lib) }),
        );
    tokio::spawn(async move { axum::serve(listener, router).await });

    let b = chrome.session().await;
    b.goto(&format!("{page_origin}/")).await.unwrap();
    let wait = std::time::Duration::from_secs(10);
    common::browser::wait_for_js(
        &b,
        "return document.body.dataset.subscribed || null",
        json!("yes"),
        wait,
    )
    .await;
    let path = format!("/apps/{APP_ID}/events");
    let body =
        json!({"name": "slo-event", "channels": ["visitor42_incognito"], "data": "{\"slo\":true}"})
            .to_string();
    let q = signed("POST", &path, &body, now(), APP_SECRET, &[]);
    assert_eq!(api(&hub, "POST", &q, &body).await.0, 200);
    common::browser::wait_for_js(
        &b,
        "return document.body.dataset.loggedOut || null",
        json!("yes"),
        wait,
    )
    .await;
    common::browser::screenshot(&b, "pusher-js-chromium-slo-event").await;
    b.close().await.unwrap();
}

/// A socket silent for twice the activity timeout is closed 4201 (the
/// client reconnects at once); one over the message rate, 4100 (with backoff).
#[tokio::test]
async fn silence_closes_4201_and_a_message_flood_4100() {
    let hub = TestHub::with(|c| {
        pusher_app(c);
        c.pusher_apps[0].activity_timeout_secs = 1;
        c.ws.max_messages_per_sec = 5;
        c.ws.message_burst = 5;
        // The burst makes room for every subscription at once, plus 20.
        c.pusher_apps[0].max_subscriptions_per_socket = 1;
    })
    .await;
    let (mut quiet, _) = raw_socket(&hub).await;
    assert_eq!(quiet.close_code().await, Some(4201));

    let (mut flood, _) = raw_socket(&hub).await;
    for _ in 0..40 {
        flood
            .send_json(json!({"event": "pusher:ping", "data": {}}))
            .await;
    }
    let mut pongs = 0;
    let code = loop {
        match flood.next().await {
            common::Seen::Json(v) if v["event"] == "pusher:pong" => pongs += 1,
            common::Seen::Close(code) => break code,
            other => panic!("unexpected {other:?}"),
        }
    };
    assert_eq!((pongs, code), (21, Some(4100)));
}

/// Frames that carry no message still cost budget: a flood of pongs is
/// closed 4100 like a flood of events.
#[tokio::test]
async fn a_flood_of_frames_without_messages_is_closed_4100() {
    let hub = TestHub::with(|c| {
        pusher_app(c);
        c.ws.max_messages_per_sec = 5;
        c.ws.message_burst = 5;
        c.pusher_apps[0].max_subscriptions_per_socket = 1;
    })
    .await;
    let (mut flood, _) = raw_socket(&hub).await;
    for _ in 0..50 {
        flood
            .send(tokio_tungstenite::tungstenite::Message::Pong(
                Vec::new().into(),
            ))
            .await;
    }
    assert_eq!(flood.close_code().await, Some(4100));
}

/// Pusher's presence limits: 100 members per channel (a 101st user is
/// refused; a member's second socket still joins) and 1 KB of user_info.
#[tokio::test]
async fn presence_channels_hold_100_members_with_at_most_1_kb_of_info_each() {
    let hub = TestHub::with(pusher_app).await;
    let join = |socket_id: &str, user: &str, info: Value| {
        let channel_data = json!({"user_id": user, "user_info": info}).to_string();
        json!({"event": "pusher:subscribe", "data": {
            "channel": "presence-big",
            "auth": auth(&format!("{socket_id}:presence-big:{channel_data}")),
            "channel_data": channel_data,
        }})
    };
    let mut sockets = Vec::new();
    for i in 0..100 {
        let (mut ws, id) = raw_socket(&hub).await;
        ws.send_json(join(&id, &format!("u{i}"), json!({}))).await;
        let ok = ws.recv_json().await;
        assert_eq!(
            ok["event"], "pusher_internal:subscription_succeeded",
            "{i}: {ok}"
        );
        sockets.push(ws);
    }
    let (mut extra, id) = raw_socket(&hub).await;
    extra.send_json(join(&id, "u100", json!({}))).await;
    let refused = extra.recv_json().await;
    assert_eq!(
        (&refused["event"], &refused["data"]["status"]),
        (&json!("pusher:subscription_error"), &json!(403)),
        "{refused}"
    );
    // An existing member's second socket is not a new member.
    extra.send_json(join(&id, "u7", json!({}))).await;
    assert_eq!(
        extra.recv_json().await["event"],
        "pusher_internal:subscription_succeeded"
    );
    assert_eq!(
        hub.app()
            .pusher
            .presence()
            .channels(APP_ID, "presence-big")
            .await
            .unwrap(),
        vec![("presence-big".to_string(), 101, 100)]
    );

    let (mut big, id) = raw_socket(&hub).await;
    big.send_json(join(&id, "u7", json!({"bio": "x".repeat(1100)})))
        .await;
    let refused = big.recv_json().await;
    assert_eq!(refused["data"]["status"], 413, "{refused}");
}

/// A batch is all or nothing: one bad event (here an empty name, after a
/// good one) refuses the batch and sends none of it.
#[tokio::test]
async fn a_batch_with_one_bad_event_sends_nothing() {
    let hub = TestHub::with(pusher_app).await;
    let (mut ws, _) = raw_socket(&hub).await;
    ws.send_json(json!({"event": "pusher:subscribe", "data": {"channel": "c"}}))
        .await;
    assert_eq!(
        ws.recv_json().await["event"],
        "pusher_internal:subscription_succeeded"
    );
    let path = format!("/apps/{APP_ID}/batch_events");
    let body = json!({"batch": [
        {"name": "good", "channel": "c", "data": "{}"},
        {"name": "", "channel": "c", "data": "{}"},
    ]})
    .to_string();
    let q = signed("POST", &path, &body, now(), APP_SECRET, &[]);
    let (status, text) = api(&hub, "POST", &q, &body).await;
    assert_eq!(status, 400, "{text}");
    assert!(text.contains("Event names"), "{text}");
    // Nothing arrived before the answer to our ping.
    ws.send_json(json!({"event": "pusher:ping", "data": {}}))
        .await;
    assert_eq!(ws.recv_json().await["event"], "pusher:pong");
}
