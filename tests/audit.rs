//! The audit trail, as an operator asks it: every source of a logout, every
//! revocation and transfer-token mint and redemption leaves one entry with
//! who, what and the outcome; pages stay stable while new entries arrive;
//! retention removes the oldest; entries survive kill -9; and no token or
//! secret appears in an entry or a log line.

mod common;

use common::pusher::{APP_ID, APP_SECRET, pusher_app, signed};
use common::sso::*;
use common::{API_KEY, TEST_AUD, TEST_ISS, TEST_SECRET, TestHub, forge, hs256_token};
use serde_json::{Value, json};
use slo_hub::config::{ApiKeySettings, Config};

const AUDITOR: &str = "slo_auditor-key-for-the-audit-tests-0001";
const ADMIN: &str = "slo_admin-key-for-the-audit-tests-000001";

fn keys(c: &mut Config) {
    for (name, key, scope) in [("auditor", AUDITOR, "audit:read"), ("ops", ADMIN, "admin")] {
        c.api_keys.push(ApiKeySettings {
            name: name.into(),
            sha256: common::sha256_hex(key),
            scopes: vec![scope.into()],
        });
    }
}

async fn audit(hub: &TestHub, query: &str) -> Value {
    let r = hub
        .http
        .get(format!("{}/v1/audit?{query}", hub.url))
        .bearer_auth(AUDITOR)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    r.json().await.unwrap()
}

/// The entries of one source, newest first (waiting, bounded, for the
/// first: an expiry is recorded after its push).
async fn of_source(hub: &TestHub, source: &str) -> Vec<Value> {
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(5);
    loop {
        let v = audit(hub, &format!("source={source}")).await["entries"]
            .as_array()
            .unwrap()
            .clone();
        if !v.is_empty() || std::time::Instant::now() > deadline {
            return v;
        }
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
}

#[tokio::test]
async fn every_kind_of_logout_and_transfer_leaves_one_entry_with_who_what_and_outcome() {
    let sso = Sso::with(|c| {
        keys(c);
        pusher_app(c);
    })
    .await;
    let hub = &sso.hub;

    // A user's own token, with a socket that hears it.
    let token = hs256_token(json!({"sub": "ulla", "sid": "s-u", "azp": "spa"}));
    let (mut ws, _) = hub.socket(&token).await;
    let (s, _) = hub.logout(&token, json!({"scope": "session"})).await;
    assert_eq!(s, 200);
    assert_eq!(ws.recv_json().await["type"], "logout");
    let e = &of_source(hub, "user").await[0];
    assert_eq!(e["action"], "logout");
    assert_eq!(
        e["caller"],
        json!({"kind": "user", "iss": TEST_ISS, "sub": "ulla", "client": "spa"})
    );
    assert_eq!(
        e["target"],
        json!({"iss": TEST_ISS, "sub": "ulla", "sid": "s-u"})
    );
    assert_eq!(
        (
            e["outcome"]["matched"].as_u64(),
            e["outcome"]["delivered"].as_u64()
        ),
        (Some(1), Some(1))
    );
    assert!(e["event_id"].is_string() && e["id"].is_string());

    // An API key, waiting for acks.
    let (mut ws, _) = hub.socket(&hs256_token(json!({"sub": "ada"}))).await;
    let ack = async {
        let m = ws.recv_json().await;
        ws.send_json(json!({"type": "ack", "id": m["id"]})).await;
    };
    let (outcome, ()) = tokio::join!(
        hub.logout(
            API_KEY,
            json!({"sub": "ada", "iss": TEST_ISS, "reason": "password changed", "wait_for_acks_ms": 3000})
        ),
        ack
    );
    assert_eq!(outcome.0, 200);
    let e = &of_source(hub, "api_key").await[0];
    assert_eq!(e["caller"], json!({"kind": "api_key", "name": "test"}));
    assert_eq!(e["reason"], "password changed");
    assert_eq!(e["outcome"]["acked"], 1);

    // Back-channel logout and CAEP: the issuer is the caller.
    let now = slo_hub::util::now_secs();
    let lt = forge(
        &json!({"alg": "HS256", "typ": "logout+jwt"}),
        &json!({"iss": TEST_ISS, "aud": TEST_AUD, "iat": now, "exp": now + 120,
                "jti": slo_hub::util::random_id(), "sid": "s-bc",
                "events": {"http://schemas.openid.net/event/backchannel-logout": {}}}),
        TEST_SECRET.as_bytes(),
    );
    let r = hub
        .http
        .post(format!("{}/v1/backchannel-logout", hub.url))
        .form(&[("logout_token", lt.as_str())])
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    let e = &of_source(hub, "backchannel").await[0];
    assert_eq!(e["caller"], json!({"kind": "issuer", "iss": TEST_ISS}));
    assert_eq!(e["target"]["sid"], "s-bc");
    let set = forge(
        &json!({"alg": "HS256", "typ": "secevent+jwt"}),
        &json!({"iss": TEST_ISS, "aud": TEST_AUD, "iat": now, "jti": slo_hub::util::random_id(),
                "sub_id": {"format": "opaque", "id": "carl"},
                "events": {"https://schemas.openid.net/secevent/caep/event-type/session-revoked": {}}}),
        TEST_SECRET.as_bytes(),
    );
    let r = hub
        .http
        .post(format!("{}/v1/events", hub.url))
        .header("content-type", "application/secevent+jwt")
        .body(set)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 202);
    let e = &of_source(hub, "caep").await[0];
    assert_eq!(e["target"]["sub"], "carl");

    // Native-to-Web SSO: a mint, a redemption, and a revocation whose
    // cascade ends the web session.
    let (refresh, _browser, login) = sso.alice_on("web").await;
    let minted = &audit(hub, "action=transfer_token_minted").await["entries"][0];
    assert_eq!(
        minted["caller"],
        json!({"kind": "client", "client_id": "native"})
    );
    assert_eq!(minted["target"]["sub"], "alice");
    let redeemed = &audit(hub, "action=transfer_token_redeemed").await["entries"][0];
    assert_eq!(redeemed["outcome"]["result"], "new_session");
    assert_eq!(redeemed["target"]["sid"], login.sid.as_str());
    let v = sso
        .revoke(json!({"type": "refresh_token", "token": refresh}))
        .await;
    assert_eq!(v["revoked"]["web_sessions"], 1, "{v}");
    let e = &audit(hub, "action=revocation").await["entries"][0];
    assert_eq!(e["caller"], json!({"kind": "api_key", "name": "test"}));
    assert_eq!(e["outcome"]["revoked"]["web_sessions"], 1);

    // A Pusher app terminating a user's connections.
    let path = format!("/apps/{APP_ID}/users/pia/terminate_connections");
    let url = signed("POST", &path, "{}", now, APP_SECRET, &[]);
    let r = hub
        .http
        .post(format!("{}{url}", hub.url))
        .header("content-type", "application/json")
        .body("{}")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    let e = &of_source(hub, "pusher_terminate").await[0];
    assert_eq!(e["caller"], json!({"kind": "pusher_app", "app": APP_ID}));
    assert_eq!(e["target"]["sub"], "pia");

    // A key without audit:read cannot read it; a user token neither.
    let r = hub
        .http
        .get(format!("{}/v1/audit", hub.url))
        .bearer_auth(API_KEY)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 403);
}

#[tokio::test]
async fn an_expired_web_session_is_audited_by_the_hub() {
    let sso = Sso::with(keys).await;
    let (_, _, login) = sso.alice_on("web-short").await;
    let (mut ws, _) = sso.hub.socket(&login.token).await;
    let m = ws
        .recv_json_within(std::time::Duration::from_secs(10))
        .await;
    assert_eq!(m["reason"], "session_expired");
    let e = &of_source(&sso.hub, "session_expired").await[0];
    assert_eq!(e["caller"], json!({"kind": "hub"}));
    assert_eq!(e["target"]["sid"], login.sid.as_str());
}

#[tokio::test]
async fn pages_are_stable_while_new_entries_arrive() {
    let hub = TestHub::with(keys).await;
    for i in 0..7 {
        hub.backend_logout(json!({"sub": format!("p{i}")})).await;
    }
    let first = audit(&hub, "limit=3").await;
    let cursor = first["next_cursor"].as_str().unwrap().to_string();
    // Newer entries arrive meanwhile.
    for i in 0..5 {
        hub.backend_logout(json!({"sub": format!("q{i}")})).await;
    }
    let second = audit(&hub, &format!("limit=3&cursor={cursor}")).await;
    let third = audit(
        &hub,
        &format!("limit=3&cursor={}", second["next_cursor"].as_str().unwrap()),
    )
    .await;
    let subs: Vec<&str> = [&first, &second, &third]
        .iter()
        .flat_map(|p| p["entries"].as_array().unwrap())
        .map(|e| e["target"]["sub"].as_str().unwrap())
        .collect();
    assert_eq!(subs, ["p6", "p5", "p4", "p3", "p2", "p1", "p0"]);
    assert!(third["next_cursor"].is_null(), "{third}");
    // A cursor the API did not give is refused, not read as "newest".
    let r = hub
        .http
        .get(format!("{}/v1/audit?cursor=p3", hub.url))
        .bearer_auth(AUDITOR)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 400);
    let e: Value = r.json().await.unwrap();
    assert_eq!(e["error"], "invalid_cursor", "{e}");
}

#[tokio::test]
async fn retention_removes_the_oldest_entries() {
    let hub = TestHub::with(|c| {
        keys(c);
        c.audit.max_entries = 1_000;
    })
    .await;
    let app = hub.app();
    // Entries older than the retention (90 days by default) go...
    let mut old = slo_hub::audit::Entry::new(
        slo_hub::audit::Action::Logout,
        "api_key",
        slo_hub::audit::Caller::Hub,
        slo_hub::audit::Subject::default(),
    );
    old.at_ms -= 91 * 86_400_000;
    app.audit.record(old).await;
    // ...and beyond the newest 1,000, the oldest.
    for i in 0..1_005 {
        let mut e = slo_hub::audit::Entry::new(
            slo_hub::audit::Action::Logout,
            "api_key",
            slo_hub::audit::Caller::Hub,
            slo_hub::audit::Subject {
                sub: Some(format!("r{i}")),
                ..Default::default()
            },
        );
        e.at_ms += i;
        app.audit.record(e).await;
    }
    assert_eq!(app.audit.trim().await.unwrap(), 6);
    let export = hub
        .http
        .get(format!("{}/v1/audit/export?limit=5000", hub.url))
        .bearer_auth(AUDITOR)
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    let subs: Vec<String> = export
        .lines()
        .map(|l| {
            serde_json::from_str::<Value>(l).unwrap()["target"]["sub"]
                .as_str()
                .unwrap_or("")
                .to_string()
        })
        .collect();
    assert_eq!(subs.len(), 1_000);
    assert_eq!(subs.last().unwrap(), "r5");
}

#[test]
fn entries_survive_a_kill_9_and_hold_no_token_or_secret() {
    use common::process::Running;
    slo_hub::auth::crypto::install();
    let dir = tempfile::tempdir().unwrap();
    let args = ["--no-demo", "--listen", "127.0.0.1:0"];
    let hub = Running::start(&args, &[], dir.path());
    let base = format!("http://{}", hub.line("listening").unwrap());
    let key = std::fs::read_to_string(dir.path().join("dev-api-key")).unwrap();
    let key = key.trim().to_string();
    let rt = tokio::runtime::Runtime::new().unwrap();
    let http = client_from(None);
    // Every secret the hub handles on the way, to look for afterwards.
    let mut secrets = vec![key.clone()];
    rt.block_on(async {
        let post = |path: &str, bearer: Option<&str>, body: Value| {
            let mut req = http.post(format!("{base}{path}")).json(&body);
            if let Some(b) = bearer {
                req = req.bearer_auth(b);
            }
            async move { req.send().await.unwrap().json::<Value>().await.unwrap() }
        };
        let token = post("/dev/token", None, json!({"sub": "sam", "sid": "s1"})).await;
        let token = token["access_token"].as_str().unwrap().to_string();
        secrets.push(token.clone());
        let native = post(
            "/dev/native-session",
            None,
            json!({"sub": "sam", "client_id": "native-sim"}),
        )
        .await;
        let refresh = native["refresh_token"].as_str().unwrap().to_string();
        secrets.push(refresh.clone());
        let stt = post(
            "/oauth/token",
            None,
            json!({"grant_type": "refresh_token", "client_id": "native-sim",
                   "refresh_token": refresh, "audience": AUD}),
        )
        .await;
        secrets.push(stt["access_token"].as_str().unwrap().to_string());
        let out = post("/v1/logout", Some(&token), json!({"scope": "session"})).await;
        assert!(out["event_id"].is_string(), "{out}");
        let out = post("/v1/logout", Some(&key), json!({"sub": "zoe"})).await;
        assert!(out["event_id"].is_string(), "{out}");
    });
    hub.kill9();
    let hub = Running::start(&args, &[], dir.path());
    let base = format!("http://{}", hub.line("listening").unwrap());
    let key = std::fs::read_to_string(dir.path().join("dev-api-key")).unwrap();
    secrets.push(key.trim().to_string());
    let export = rt.block_on(async {
        // One more, so this run's log has a line to look at too.
        let r = http
            .post(format!("{base}/v1/logout"))
            .bearer_auth(key.trim())
            .json(&json!({"sub": "yves"}))
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 200);
        http.get(format!("{base}/v1/audit/export"))
            .bearer_auth(key.trim())
            .send()
            .await
            .unwrap()
            .text()
            .await
            .unwrap()
    });
    let lines: Vec<Value> = export
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    let actions: Vec<(&str, &str)> = lines
        .iter()
        .map(|e| (e["action"].as_str().unwrap(), e["source"].as_str().unwrap()))
        .collect();
    assert!(actions.contains(&("logout", "api_key")), "{actions:?}");
    assert!(actions.contains(&("logout", "user")), "{actions:?}");
    assert!(
        actions.contains(&("transfer_token_minted", "oauth")),
        "{actions:?}"
    );
    let (_, log) = hub.terminate();
    for s in &secrets {
        assert!(!export.contains(s.as_str()), "a secret in the audit trail");
        assert!(!log.contains(s.as_str()), "a secret in the log");
    }
    // The log has one structured line per logout.
    assert!(log.contains("slo_hub::audit"), "{log}");
}

/// `GET /v1/users/{sub}/connections` says who is at the other end of each
/// socket: address, origin, user agent (present or not), since when.
#[tokio::test]
async fn a_users_connections_say_who_is_at_the_other_end() {
    use tokio_tungstenite::tungstenite::client::IntoClientRequest;
    let hub = TestHub::with(|c| {
        keys(c);
        c.ws.allowed_origins = vec!["https://spa.example".into()];
        c.ws.allow_missing_origin = true;
    })
    .await;
    let token = hs256_token(json!({"sub": "carol", "sid": "s-1"}));
    let mut req = hub.ws_url.as_str().into_client_request().unwrap();
    req.headers_mut()
        .insert("origin", "https://spa.example".parse().unwrap());
    req.headers_mut()
        .insert("user-agent", "Browser/1.0 (test)".parse().unwrap());
    let (mut browser, _) = tokio_tungstenite::connect_async(req).await.unwrap();
    use futures_util::{SinkExt, StreamExt};
    browser
        .send(tokio_tungstenite::tungstenite::Message::text(
            json!({"type": "auth", "token": token}).to_string(),
        ))
        .await
        .unwrap();
    let ready = browser.next().await.unwrap().unwrap();
    assert!(ready.to_text().unwrap().contains("ready"), "{ready}");
    // A second socket without Origin or User-Agent (a server-side client).
    let (_plain, _) = hub.socket(&token).await;
    let before = slo_hub::util::now_ms();
    let v: Value = hub
        .http
        .get(format!("{}/v1/users/carol/connections", hub.url))
        .bearer_auth(ADMIN)
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let sockets = v["sockets"].as_array().unwrap();
    assert_eq!(sockets.len(), 2, "{v}");
    let with = |o: Value| sockets.iter().find(|s| s["origin"] == o).unwrap();
    let b = with(json!("https://spa.example"));
    assert_eq!(
        (&b["protocol"], &b["user_agent"], &b["client_ip"], &b["sid"]),
        (
            &json!("ws"),
            &json!("Browser/1.0 (test)"),
            &json!("127.0.0.1"),
            &json!("s-1")
        ),
        "{v}"
    );
    let since = b["connected_since_ms"].as_i64().unwrap();
    assert!((before - 60_000..=before).contains(&since), "{v}");
    let p = with(Value::Null);
    assert_eq!(p["user_agent"], Value::Null, "{v}");
}
