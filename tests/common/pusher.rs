//! The Pusher app of the tests and Pusher's request signing, as the
//! server SDKs do it.

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use axum::http::HeaderMap;
use serde_json::Value;
use slo_hub::config::{Config, PusherAppSettings};
use slo_hub::pusher::protocol::sign;
use tokio::sync::mpsc;

use super::{TEST_ISS, TestHub};

pub const APP_ID: &str = "4242";
pub const APP_KEY: &str = "slo-app-key";
pub const APP_SECRET: &str = "slo-app-secret-0123456789";

pub fn pusher_app(c: &mut Config) {
    c.pusher_apps = vec![PusherAppSettings {
        enable_client_messages: true,
        logout_issuer: Some(TEST_ISS.into()),
        ..PusherAppSettings::new(APP_ID, APP_KEY, APP_SECRET)
    }];
}

pub fn hex(bytes: &[u8]) -> String {
    slo_hub::auth::api_keys::hex(bytes)
}

/// A request signed as Pusher's SDKs sign it (optionally wrongly).
pub fn signed(
    method: &str,
    path: &str,
    body: &str,
    ts: u64,
    secret: &str,
    extra: &[(&str, &str)],
) -> String {
    use md5::Digest;
    let mut params: Vec<(String, String)> = vec![
        ("auth_key".into(), APP_KEY.into()),
        ("auth_timestamp".into(), ts.to_string()),
        ("auth_version".into(), "1.0".into()),
    ];
    if !body.is_empty() {
        params.push(("body_md5".into(), hex(&md5::Md5::digest(body.as_bytes()))));
    }
    for (k, v) in extra {
        params.push((k.to_string(), v.to_string()));
    }
    params.sort();
    let query: Vec<String> = params.iter().map(|(k, v)| format!("{k}={v}")).collect();
    let query = query.join("&");
    let sig = slo_hub::pusher::protocol::sign(secret, &format!("{method}\n{path}\n{query}"));
    format!("{path}?{query}&auth_signature={sig}")
}

pub async fn api(hub: &TestHub, method: &str, path_and_query: &str, body: &str) -> (u16, String) {
    let url = format!("{}{path_and_query}", hub.url);
    let req = match method {
        "POST" => hub
            .http
            .post(url)
            .header("content-type", "application/json")
            .body(body.to_string()),
        _ => hub.http.get(url),
    };
    let r = req.send().await.unwrap();
    (r.status().as_u16(), r.text().await.unwrap())
}

/// Runs `tests/node/pusher-scenario.mjs` (pusher-js and the Node server
/// SDK) against the hub nodes listening on `ports` and checks every step;
/// `None` (a loud skip) without node or the packages.
pub async fn run_scenario(ports: &[String]) -> Option<Vec<serde_json::Value>> {
    use serde_json::{Value, json};
    let node = super::require_program("node", &["/usr/bin/node"])?;
    let dir = super::require_node_packages()?;
    let out = tokio::process::Command::new(node)
        .arg("pusher-scenario.mjs")
        .current_dir(&dir)
        .env("HUB_HOST", "127.0.0.1")
        .env("HUB_PORTS", ports.join(","))
        .env("APP_ID", APP_ID)
        .env("APP_KEY", APP_KEY)
        .env("APP_SECRET", APP_SECRET)
        .env("HUB_API_KEY", super::API_KEY)
        .env("LOGOUT_ISS", TEST_ISS)
        .stderr(std::process::Stdio::inherit())
        .kill_on_drop(true)
        .output();
    let out = tokio::time::timeout(std::time::Duration::from_secs(60), out)
        .await
        .expect("the scenario finished")
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    let steps: Vec<Value> = stdout
        .lines()
        .filter_map(|l| serde_json::from_str(l).ok())
        .collect();
    assert!(out.status.success(), "scenario failed:\n{stdout}");
    let step = |name: &str| -> &Value {
        steps
            .iter()
            .find(|s| s["step"] == name)
            .unwrap_or_else(|| panic!("no step {name}:\n{stdout}"))
    };
    assert_eq!(step("seed_sample_slo_event")["data"], json!({"slo": true}));
    assert_eq!(step("private_event")["data"], json!({"n": 1}));
    assert_eq!(step("forged_refused")["status"], 401);
    let p = step("presence");
    assert_eq!(
        (&p["first_count"], &p["second_count"]),
        (&json!(1), &json!(2))
    );
    assert_eq!(p["added"], "bob");
    assert_eq!(p["added_info"], json!({"name": "BOB"}));
    assert_eq!(p["me"], "bob");
    let q = step("channel_queries");
    let mut users: Vec<String> = q["users"]["users"]
        .as_array()
        .unwrap()
        .iter()
        .map(|u| u["id"].as_str().unwrap().to_string())
        .collect();
    users.sort();
    assert_eq!(users, ["alice", "bob"]);
    assert_eq!(
        q["list"],
        json!({"channels": {"presence-room": {"user_count": 2}}})
    );
    assert_eq!(
        q["one"],
        json!({"occupied": true, "user_count": 2, "subscription_count": 2})
    );
    assert_eq!(step("client_event")["data"], json!({"who": "alice"}));
    assert_eq!(
        (&step("batch")["a"], &step("batch")["b"]),
        (&json!({"i": 1}), &json!({"i": 2}))
    );
    let after = step("after_413");
    assert_eq!(after["refused"], 413, "{after}");
    assert_eq!(after["data"], json!({"ok": true}), "{after}");
    assert_eq!(step("member_removed")["id"], "bob");
    assert_eq!(step("send_to_user")["data"], json!({"to": "bob"}));
    assert_ne!(step("terminated")["state"], "connected");
    let bridged = step("bridged_logout");
    assert_eq!(bridged["data"]["slo"], true, "{bridged}");
    assert_eq!(bridged["close_code"], 4009, "{bridged}");
    step("done");
    Some(steps)
}

/// A raw Pusher socket on the hub at `base` (`http://…`): it and its id.
pub async fn socket(base: &str) -> (super::Ws, String) {
    let url = format!(
        "{}/app/{APP_KEY}?protocol=7",
        base.replacen("http", "ws", 1)
    );
    let mut ws = super::Ws::connect(&url, None).await.unwrap();
    let hello = ws.recv_json().await;
    let data: serde_json::Value = serde_json::from_str(hello["data"].as_str().unwrap()).unwrap();
    (ws, data["socket_id"].as_str().unwrap().to_string())
}

/// A `pusher:subscribe` to presence `channel`, signed for `socket_id`.
pub fn presence_subscribe(socket_id: &str, channel: &str, channel_data: &str) -> Value {
    let sig = sign(APP_SECRET, &format!("{socket_id}:{channel}:{channel_data}"));
    serde_json::json!({"event": "pusher:subscribe", "data": {
        "channel": channel, "auth": format!("{APP_KEY}:{sig}"), "channel_data": channel_data}})
}

/// Joins presence `channel` as `user`; returns the presence data.
pub async fn join(
    ws: &mut super::Ws,
    socket_id: &str,
    channel: &str,
    user: &str,
) -> serde_json::Value {
    use serde_json::json;
    let channel_data = json!({"user_id": user, "user_info": {"name": user}}).to_string();
    ws.send_json(presence_subscribe(socket_id, channel, &channel_data))
        .await;
    let m = ws.recv_json().await;
    assert_eq!(m["event"], "pusher_internal:subscription_succeeded", "{m}");
    serde_json::from_str(m["data"].as_str().unwrap()).unwrap()
}

/// `GET /apps/{id}/channels/{channel}/users` on the hub at `base`, signed.
pub async fn users(base: &str, channel: &str) -> Vec<String> {
    let path = format!("/apps/{APP_ID}/channels/{channel}/users");
    let url = format!(
        "{base}{}",
        signed("GET", &path, "", slo_hub::util::now_secs(), APP_SECRET, &[])
    );
    let v: serde_json::Value = reqwest::get(url).await.unwrap().json().await.unwrap();
    let mut ids: Vec<String> = v["users"]
        .as_array()
        .unwrap_or_else(|| panic!("{v}"))
        .iter()
        .map(|u| u["id"].as_str().unwrap().to_string())
        .collect();
    ids.sort();
    ids
}

/// A webhook endpoint on loopback: every request's headers and body, in
/// arrival order; the first `fail_first` requests are answered 503.
pub async fn receiver(fail_first: usize) -> (String, mpsc::UnboundedReceiver<(HeaderMap, String)>) {
    let (tx, rx) = mpsc::unbounded_channel();
    let failures = Arc::new(AtomicUsize::new(fail_first));
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}/pusher/webhooks", listener.local_addr().unwrap());
    let route = axum::routing::post(move |headers: HeaderMap, body: String| async move {
        let failing = failures
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |n| n.checked_sub(1))
            .is_ok();
        if failing {
            return axum::http::StatusCode::SERVICE_UNAVAILABLE;
        }
        let _ = tx.send((headers, body));
        axum::http::StatusCode::OK
    });
    let router = axum::Router::new().route("/pusher/webhooks", route);
    tokio::spawn(async move { axum::serve(listener, router).await });
    (url, rx)
}

/// Webhook events received until there are `n`, each request's signature
/// checked as Pusher's SDKs check it.
pub async fn events_until(
    rx: &mut mpsc::UnboundedReceiver<(HeaderMap, String)>,
    seen: &mut Vec<Value>,
    n: usize,
) {
    while seen.len() < n {
        let (headers, body) = tokio::time::timeout(Duration::from_secs(10), rx.recv())
            .await
            .unwrap_or_else(|_| panic!("no webhook in time; so far {seen:?}"))
            .unwrap();
        assert_eq!(headers["x-pusher-key"], APP_KEY);
        assert_eq!(
            headers["x-pusher-signature"].to_str().unwrap(),
            sign(APP_SECRET, &body),
            "signed with the app secret over the exact body"
        );
        assert_eq!(headers["content-type"], "application/json");
        let v: Value = serde_json::from_str(&body).unwrap();
        let age = slo_hub::util::now_ms() - v["time_ms"].as_i64().unwrap();
        assert!((0..60_000).contains(&age), "time_ms is now: {v}");
        seen.extend(v["events"].as_array().unwrap().iter().cloned());
    }
}
