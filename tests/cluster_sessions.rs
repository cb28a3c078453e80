//! Native-to-Web sessions on three nodes sharing one real Redis: what must
//! happen once happens once, whichever node gets there first. A cascade's
//! back-channel notice reaches the web client's backend once, and a web
//! session's expiry is pushed to its sockets on every node and notified
//! once, though every node watches the same deadlines and outbox.

mod common;

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::extract::State;
use axum::routing::post;
use common::cluster::{
    ADMIN_KEY, Node, RedisServer, authorize, mint, node_config, redis_bin, single_redis,
};
use common::sso::{AUD, CB, claims, pkce};
use serde_json::{Value, json};

/// A web backend's back-channel endpoint: how many notices per `sid`.
#[derive(Clone, Default)]
struct Backend(Arc<Mutex<HashMap<String, usize>>>);

impl Backend {
    async fn start(&self) -> String {
        async fn receive(State(b): State<Backend>, body: String) {
            let token = form_urlencoded::parse(body.as_bytes())
                .find(|(k, _)| k == "logout_token")
                .map(|(_, v)| v.into_owned())
                .unwrap_or_default();
            let sid = claims(&token)["sid"].as_str().unwrap_or("").to_string();
            *b.0.lock().unwrap().entry(sid).or_default() += 1;
        }
        let router = axum::Router::new()
            .route("/bc", post(receive))
            .with_state(self.clone());
        let listener = tokio::net::TcpListener::bind(SocketAddr::from(([127, 0, 0, 1], 0)))
            .await
            .unwrap();
        let url = format!("http://{}/bc", listener.local_addr().unwrap());
        tokio::spawn(async move { axum::serve(listener, router).await });
        url
    }

    fn count(&self, sid: &str) -> usize {
        self.0.lock().unwrap().get(sid).copied().unwrap_or(0)
    }
}

/// A web session of `sub` for `web2`, each step on another node: (the
/// native refresh token, the session token).
async fn web_session(n: &[Node; 3], sub: &str) -> (String, String) {
    let (s, native) = n[0]
        .post(
            "/dev/native-session",
            None,
            json!({"sub": sub, "client_id": "native"}),
        )
        .await;
    assert_eq!(s, 200, "{native}");
    let refresh = native["refresh_token"].as_str().unwrap().to_string();
    let stt = mint(&n[1], &refresh).await;
    let (verifier, challenge) = pkce();
    let code = authorize(&n[2], "web2", &stt, &challenge).await.0.unwrap();
    let (s, login) = n[0]
        .post(
            "/oauth/token",
            None,
            json!({"grant_type": "authorization_code", "client_id": "web2", "code": code,
                   "redirect_uri": CB, "code_verifier": verifier}),
        )
        .await;
    assert_eq!(s, 200, "{login}");
    (refresh, login["access_token"].as_str().unwrap().to_string())
}

/// Waits until no notice is pending in the shared outbox.
async fn outbox_drained(redis: &RedisServer) {
    let deadline = Instant::now() + Duration::from_secs(20);
    while redis.cli(&["zcard", "slo:notices"]).trim() != "0" {
        assert!(Instant::now() < deadline, "notices still pending");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_notice_and_an_expiry_happen_once_whichever_node_gets_there_first() {
    let Some(bin) = redis_bin() else { return };
    slo_hub::auth::crypto::install();
    let dir = tempfile::tempdir().unwrap();
    let redis = single_redis(&bin, dir.path());
    let backend = Backend::default();
    let url = backend.start().await;
    let config = node_config(
        &redis.url(),
        &format!(
            r#"
[notify]
request_timeout_ms = 500
first_retry_ms = 50

[[clients]]
client_id = "web2"
kind = "web"
redirect_uris = ["{CB}"]
backchannel_logout_uri = "{url}"
session_lifetime_secs = 3
session_idle_secs = 3
enforce_device_binding = "none"
"#
        ),
    );
    let n = [
        Node::start(&config),
        Node::start(&config),
        Node::start(&config),
    ];

    // A cascade: the native refresh token revoked on node 1 ends the web
    // session; its backend hears of it once.
    let (refresh, token) = web_session(&n, "dana").await;
    let dana = claims(&token)["sid"].as_str().unwrap().to_string();
    let status = reqwest::Client::new()
        .post(format!("{}/oauth/revoke", n[1].base))
        .form(&[("token", refresh.as_str()), ("client_id", "native")])
        .send()
        .await
        .unwrap()
        .status();
    assert_eq!(status, 200);

    // An expiry: the session's sockets on every node are told when it
    // ends, and its backend once.
    let (_, token) = web_session(&n, "erin").await;
    let erin = claims(&token)["sid"].as_str().unwrap().to_string();
    let mut sockets = Vec::new();
    for node in &n {
        sockets.push(node.socket(&token).await);
    }
    // An operator on node 2 sees her three sockets, one per node, and the
    // session tree.
    let v: Value = reqwest::Client::new()
        .get(format!("{}/v1/users/erin/connections", n[2].base))
        .bearer_auth(ADMIN_KEY)
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(v["sockets"].as_array().unwrap().len(), 3, "{v}");
    assert_eq!(v["nodes"], json!({"answered": 3, "asked": 3}), "{v}");
    let nodes: std::collections::HashSet<&str> = v["sockets"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| s["node"].as_str().unwrap())
        .collect();
    assert_eq!(nodes.len(), 3, "{v}");
    assert_eq!(
        v["sessions"][0]["native_sessions"][0]["web_sessions"][0]["id"],
        json!(erin),
        "{v}"
    );
    for ws in &mut sockets {
        let m = ws.recv_json_within(Duration::from_secs(15)).await;
        assert_eq!(
            (m["type"].as_str(), m["reason"].as_str()),
            (Some("logout"), Some("session_expired")),
            "{m}"
        );
    }
    outbox_drained(&redis).await;
    assert_eq!(
        (backend.count(&dana), backend.count(&erin)),
        (1, 1),
        "one notice per ended session: {:?}",
        backend.0.lock().unwrap()
    );
    // The audit trail is one for the cluster: read on node 1, the revocation
    // taken by node 1 and the expiry, whichever node ended it.
    let v: Value = reqwest::Client::new()
        .get(format!("{}/v1/audit?limit=100", n[1].base))
        .bearer_auth(ADMIN_KEY)
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let sources: Vec<&str> = v["entries"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["source"].as_str().unwrap())
        .collect();
    assert!(sources.contains(&"oauth_revoke"), "{sources:?}");
    assert_eq!(
        sources.iter().filter(|s| **s == "session_expired").count(),
        1,
        "{sources:?}"
    );
    // The graphs agree on every node: the ended sessions stay ended.
    for node in &n {
        let (s, v): (u16, Value) = node
            .post(
                "/oauth/token",
                None,
                json!({"grant_type": "refresh_token",
                "client_id": "native", "refresh_token": refresh, "audience": AUD}),
            )
            .await;
        assert_eq!(
            (s, v["error"].as_str()),
            (400, Some("invalid_grant")),
            "{v}"
        );
    }
}
