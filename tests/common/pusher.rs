//! The Pusher app of the tests and Pusher's request signing, as the
//! server SDKs do it.

use slo_hub::config::{Config, PusherAppSettings};

use super::{TEST_ISS, TestHub};

pub const APP_ID: &str = "4242";
pub const APP_KEY: &str = "slo-app-key";
pub const APP_SECRET: &str = "slo-app-secret-0123456789";

pub fn pusher_app(c: &mut Config) {
    c.pusher_apps = vec![PusherAppSettings {
        id: APP_ID.into(),
        key: APP_KEY.into(),
        secret: APP_SECRET.into(),
        enable_client_messages: true,
        max_event_bytes: 10 * 1024,
        activity_timeout_secs: 120,
        logout_issuer: Some(TEST_ISS.into()),
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
