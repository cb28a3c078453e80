//! The core hub, end to end over real sockets: fan-out, scopes, missed-logout
//! recovery, every trigger status, every close code, Origin, deadlines, slow
//! consumers, registry cleanup and shutdown.

mod common;

use std::time::{Duration, Instant};

use common::*;
use serde_json::json;
use tokio_tungstenite::tungstenite::Message;

#[tokio::test]
async fn a_logout_reaches_every_socket_of_the_user_and_no_other() {
    let hub = TestHub::start().await;
    let alice_a = hub.token("alice", None).await;
    let alice_b = hub.token("alice", None).await;
    let bob = hub.token("bob", None).await;
    let (mut a1, _) = hub.socket(&alice_a).await;
    let (mut a2, _) = hub.socket(&alice_a).await;
    let (mut a3, _) = hub.socket(&alice_b).await;
    let (mut b1, _) = hub.socket(&bob).await;

    let (status, body) = hub
        .backend_logout(json!({"sub": "alice", "reason": "password changed"}))
        .await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["matched"], 3);
    assert_eq!(body["delivered"], 3);
    let event_id = body["event_id"].as_str().unwrap().to_string();

    for ws in [&mut a1, &mut a2, &mut a3] {
        let m = ws.recv_json().await;
        assert_eq!(m["type"], "logout");
        assert_eq!(m["id"], event_id.as_str());
        assert_eq!(m["scope"], "user");
        assert_eq!(m["sub"], "alice");
        assert_eq!(m["reason"], "password changed");
        assert!(m["at"].as_i64().unwrap() > 0);
        ws.send_json(json!({"type": "ack", "id": event_id})).await;
        // Logged out, but the connection stays for a re-login.
        ws.assert_quiet().await;
    }
    // Bob is untouched: the next thing on his socket is the pong to our probe.
    b1.assert_quiet().await;
    assert_eq!(hub.app().registry.sizes(), (1, 1, 1));
    assert_eq!(hub.metric("slo_hub_messages_acked_total").await, 3.0);
}

#[tokio::test]
async fn a_logged_out_socket_logs_in_again_on_the_same_connection() {
    let hub = TestHub::start().await;
    let old = hub.token("alice", None).await;
    let (mut ws, first) = hub.socket(&old).await;
    let (status, body) = hub.backend_logout(json!({"sub": "alice"})).await;
    assert_eq!(status, 200, "{body}");
    let m = ws.recv_json().await;
    assert_eq!(m["type"], "logout");
    ws.send_json(json!({"type": "ack", "id": m["id"]})).await;
    // Out of the registry: a second logout does not reach it.
    assert_eq!(hub.app().registry.sizes(), (0, 0, 0));

    // A fresh token logs in again over the same connection...
    let new = hub.token("alice", None).await;
    ws.send_json(json!({"type": "auth", "token": new})).await;
    let ready = ws.recv_json().await;
    assert_eq!(ready["type"], "ready", "{ready}");
    assert_ne!(ready["connection_id"], first["connection_id"]);
    assert_eq!(hub.app().registry.sizes(), (1, 1, 1));
    assert_eq!(hub.metric("slo_hub_relogins_total").await, 1.0);
    // ...and the next logout reaches it.
    let (_, body) = hub.backend_logout(json!({"sub": "alice"})).await;
    assert_eq!(body["delivered"], 1);
    assert_eq!(ws.recv_json().await["type"], "logout");

    // The revoked token cannot come back the same way: 4000 at once.
    ws.send_json(json!({"type": "auth", "token": old})).await;
    assert_eq!(ws.close_code().await, Some(4000));
    assert_eq!(hub.app().registry.sizes(), (0, 0, 0));
}

#[tokio::test]
async fn a_logged_out_socket_is_closed_when_the_relogin_window_ends() {
    let hub = TestHub::with(|c| c.ws.relogin_secs = 1).await;
    let mut ws = logged_out_and_acked(&hub, "alice").await;
    assert_eq!(ws.close_code().await, Some(4000));

    // Without a window, the ack itself ends the socket.
    let hub = TestHub::with(|c| c.ws.relogin_secs = 0).await;
    let mut ws = logged_out_and_acked(&hub, "bob").await;
    assert_eq!(ws.close_code().await, Some(4000));
}

/// A socket of `sub` that received a logout and acknowledged it.
async fn logged_out_and_acked(hub: &TestHub, sub: &str) -> Ws {
    let token = hub.token(sub, None).await;
    let (mut ws, _) = hub.socket(&token).await;
    hub.backend_logout(json!({ "sub": sub })).await;
    let m = ws.recv_json().await;
    assert_eq!(m["type"], "logout", "{m}");
    ws.send_json(json!({"type": "ack", "id": m["id"]})).await;
    ws
}

#[tokio::test]
async fn the_old_window_does_not_close_a_socket_that_logged_in_again() {
    let hub = TestHub::with(|c| c.ws.relogin_secs = 1).await;
    let token = hub.token("alice", None).await;
    let (mut ws, _) = hub.socket(&token).await;
    hub.backend_logout(json!({"sub": "alice"})).await;
    assert_eq!(ws.recv_json().await["type"], "logout");
    let new = hub.token("alice", None).await;
    ws.send_json(json!({"type": "auth", "token": new})).await;
    assert_eq!(ws.recv_json().await["type"], "ready");
    // Past the end of the first login's window (1 s, closed within 100 ms
    // more): only a wait can show that nothing happens.
    tokio::time::sleep(Duration::from_millis(1_500)).await;
    ws.assert_quiet().await;
    assert_eq!(hub.app().registry.sizes(), (1, 1, 1));
}

#[tokio::test]
async fn a_user_token_logs_out_its_session_only_with_scope_session() {
    let hub = TestHub::start().await;
    let s1 = hub.token("alice", Some("s1")).await;
    let s2 = hub.token("alice", Some("s2")).await;
    let (mut a, _) = hub.socket(&s1).await;
    let (mut b, _) = hub.socket(&s1).await;
    let (mut other, _) = hub.socket(&s2).await;

    let (status, body) = hub.logout(&s1, json!({"scope": "session"})).await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["matched"], 2);
    for ws in [&mut a, &mut b] {
        let m = ws.recv_json().await;
        assert_eq!(m["type"], "logout");
        assert_eq!(m["scope"], "session");
        assert_eq!(m["sid"], "s1");
    }
    other.assert_quiet().await;

    // And scope "user" (the default) reaches the other session too.
    let (status, body) = hub.logout(&s2, json!({})).await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["matched"], 1);
    assert_eq!(other.recv_json().await["type"], "logout");
}

/// An issuer whose clock runs ahead mints tokens with an `iat` in our
/// future (within its leeway). One minted before a logout must not survive
/// it because of that.
#[tokio::test]
async fn a_token_from_an_issuer_whose_clock_runs_ahead_does_not_survive_a_logout() {
    let hub = TestHub::start().await;
    let ahead = slo_hub::util::now_secs() + 4; // the test issuer's leeway is 5
    let token = hs256_token(json!({"sub": "alice", "iat": ahead, "exp": ahead + 600}));
    let (mut ws, _) = hub.socket(&token).await;
    let (status, _) = hub
        .logout(API_KEY, json!({"sub": "alice", "iss": TEST_ISS}))
        .await;
    assert_eq!(status, 200);
    assert_eq!(ws.recv_json().await["type"], "logout");
    let mut again = Ws::connect(&hub.ws_url, None).await.unwrap();
    again
        .send_json(json!({"type": "auth", "token": token}))
        .await;
    assert_eq!(again.recv_json().await["type"], "logout");
    assert_eq!(again.close_code().await, Some(4000));
    let (status, v) = hub.logout(&token, json!({"scope": "user"})).await;
    assert_eq!((status, v["error"].as_str()), (401, Some("token_revoked")));
}

/// Identifiers are capped at 255 printable bytes wherever they come from:
/// an API key cannot make the hub store a 15 KB `sub` for a day.
#[tokio::test]
async fn oversized_or_control_character_identifiers_are_refused() {
    let hub = TestHub::start().await;
    let huge = "x".repeat(15 * 1024);
    for body in [
        json!({"sub": huge}),
        json!({"sid": huge}),
        json!({"sub": "a\u{0}b"}),
        json!({"sub": "alice", "iss": huge}),
    ] {
        let (status, v) = hub.logout(API_KEY, body.clone()).await;
        assert_eq!(
            (status, v["error"].as_str()),
            (400, Some("bad_request")),
            "{v}"
        );
        assert!(v["message"].as_str().unwrap().contains("255"), "{v}");
    }
    for body in [
        json!({"type": "session", "id": huge}),
        json!({"type": "user", "sub": huge}),
        json!({"type": "external_session", "iss": TEST_ISS, "sid": huge}),
    ] {
        let r = hub
            .http
            .post(format!("{}/v1/revocations", hub.url))
            .bearer_auth(API_KEY)
            .json(&body)
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 400);
    }
    assert_eq!(hub.app().revocation.watermark_count(), 0, "nothing stored");
}

/// A token that a logout revoked acts nowhere: a leaked, logged-out token
/// cannot go on logging its user out of every new session.
#[tokio::test]
async fn a_revoked_token_cannot_trigger_a_logout() {
    let hub = TestHub::start().await;
    let old = hub.token("alice", Some("s1")).await;
    let (status, _) = hub.backend_logout(json!({"sub": "alice"})).await;
    assert_eq!(status, 200);
    // Alice logs in again, after the logout.
    let fresh = hub.token("alice", Some("s2")).await;
    let (mut ws, _) = hub.socket(&fresh).await;
    for scope in ["user", "session"] {
        let (status, v) = hub.logout(&old, json!({"scope": scope})).await;
        assert_eq!(
            (status, v["error"].as_str()),
            (401, Some("token_revoked")),
            "{v}"
        );
    }
    ws.assert_quiet().await;
    let (status, _) = hub.logout(&fresh, json!({"scope": "user"})).await;
    assert_eq!(status, 200);
    assert_eq!(ws.recv_json().await["type"], "logout");
}

#[tokio::test]
async fn a_backend_can_log_out_one_session_by_sid() {
    let hub = TestHub::start().await;
    let s1 = hub.token("alice", Some("s1")).await;
    let s2 = hub.token("alice", Some("s2")).await;
    let (mut a, _) = hub.socket(&s1).await;
    let (mut b, _) = hub.socket(&s2).await;
    let (status, body) = hub.backend_logout(json!({"sid": "s1"})).await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["matched"], 1);
    assert_eq!(a.recv_json().await["sid"], "s1");
    b.assert_quiet().await;
}

#[tokio::test]
async fn a_socket_that_missed_a_logout_is_logged_out_when_it_reconnects() {
    let hub = TestHub::start().await;
    let old = hub.token("alice", Some("s-old")).await;
    // Nobody is connected when the logout happens.
    let (status, body) = hub.backend_logout(json!({"sub": "alice"})).await;
    assert_eq!(status, 200);
    assert_eq!(body["matched"], 0);
    let event_id = body["event_id"].clone();

    let mut ws = Ws::connect(&hub.ws_url, None).await.unwrap();
    ws.send_json(json!({"type": "auth", "token": old})).await;
    let m = ws.recv_json().await;
    assert_eq!(m["type"], "logout", "{m}");
    assert_eq!(m["id"], event_id);
    assert_eq!(ws.close_code().await, Some(4000));

    // A token minted after the logout works (the dev issuer waits for the next second).
    let fresh = hub.token("alice", None).await;
    let (mut ws, ready) = hub.socket(&fresh).await;
    assert_eq!(ready["sub"], "alice");
    ws.assert_quiet().await;

    // A session-scoped logout is remembered per session.
    let s = hub.token("bob", Some("bob-1")).await;
    hub.backend_logout(json!({"sid": "bob-1"})).await;
    let mut ws = Ws::connect(&hub.ws_url, None).await.unwrap();
    ws.send_json(json!({"type": "auth", "token": s})).await;
    assert_eq!(ws.recv_json().await["scope"], "session");
    assert_eq!(ws.close_code().await, Some(4000));
}

#[tokio::test]
async fn wait_for_acks_counts_the_acknowledgements() {
    let hub = TestHub::start().await;
    let t = hub.token("carol", None).await;
    let (mut a, _) = hub.socket(&t).await;
    let (mut b, _) = hub.socket(&t).await;
    let acker = tokio::spawn(async move {
        for ws in [&mut a, &mut b] {
            let m = ws.recv_json().await;
            ws.send_json(json!({"type": "ack", "id": m["id"]})).await;
        }
    });
    let (status, body) = hub
        .backend_logout(json!({"sub": "carol", "wait_for_acks_ms": 3000}))
        .await;
    assert_eq!(status, 200);
    assert_eq!(body["delivered"], 2);
    assert_eq!(body["acked"], 2, "{body}");
    acker.await.unwrap();
    assert_eq!(hub.metric("slo_hub_messages_acked_total").await, 2.0);
}

#[tokio::test]
async fn trigger_errors_have_precise_statuses() {
    let hub = TestHub::with(|c| {
        c.limits.user_triggers_per_sec = 1;
        c.limits.user_trigger_burst = 2;
    })
    .await;
    let url = format!("{}/v1/logout", hub.url);
    let alice = hub.token("alice", Some("s1")).await;

    // 401: no credentials, a bad token, a bad API key; all with WWW-Authenticate.
    let r = hub.http.post(&url).json(&json!({})).send().await.unwrap();
    assert_eq!(r.status(), 401);
    assert!(r.headers().get("www-authenticate").is_some());
    assert_eq!(
        r.json::<serde_json::Value>().await.unwrap()["error"],
        "missing"
    );
    let (s, b) = hub.logout("a.b.c", json!({})).await;
    assert_eq!((s, b["error"].as_str()), (401, Some("malformed")));
    let (s, b) = hub.logout("slo_nope", json!({"sub": "x"})).await;
    assert_eq!((s, b["error"].as_str()), (401, Some("bad_api_key")));
    // A credential in the URL is refused even with a valid header.
    let r = hub
        .http
        .post(format!("{url}?access_token=abc"))
        .bearer_auth(API_KEY)
        .json(&json!({"sub": "x"}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 401);

    // 403: a user token aiming at another user; an API key without the scope.
    let (s, b) = hub.logout(&alice, json!({"sub": "bob"})).await;
    assert_eq!((s, b["error"].as_str()), (403, Some("forbidden")));
    let (s, b) = hub.logout(&alice, json!({"sid": "not-mine"})).await;
    assert_eq!(s, 403, "{b}");
    let (s, b) = hub.logout(WEAK_API_KEY, json!({"sub": "x"})).await;
    assert_eq!((s, b["error"].as_str()), (403, Some("missing_scope")));

    // 400: malformed JSON, unknown fields, bad scope, nothing named, wait too long.
    let r = hub
        .http
        .post(&url)
        .bearer_auth(API_KEY)
        .header("content-type", "application/json")
        .body("{not json")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 400);
    for (body, why) in [
        (json!({"sub": "x", "surprise": 1}), "unknown field"),
        (
            json!({"sub": "x", "scope": "everything"}),
            "expected `user` or `session`",
        ),
        (json!({}), "name the user"),
        (
            json!({"sub": "x", "wait_for_acks_ms": 60_000}),
            "wait_for_acks_ms",
        ),
        (
            json!({"sub": "x", "reason": "x".repeat(300)}),
            "reason must be",
        ),
        (
            json!({"sub": "x", "iss": "https://unknown.example"}),
            "no issuer",
        ),
    ] {
        let mut body = body;
        if body.get("iss").is_none() {
            body["iss"] = json!(hub.dev_iss());
        }
        let (s, b) = hub.logout(API_KEY, body.clone()).await;
        assert_eq!(s, 400, "{body} -> {b}");
        let msg = b["message"].as_str().unwrap();
        assert!(msg.contains(why), "{body}: expected {why:?} in {msg:?}");
    }
    // With several issuers a backend must say which one.
    let (s, b) = hub.logout(API_KEY, json!({"sub": "x"})).await;
    assert_eq!(s, 400);
    assert!(b["message"].as_str().unwrap().contains("several issuers"));

    // 413 and 415.
    let r = hub
        .http
        .post(&url)
        .bearer_auth(API_KEY)
        .header("content-type", "application/json")
        .body(format!("{{\"sub\":\"{}\"}}", "x".repeat(20_000)))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 413);
    let r = hub
        .http
        .post(&url)
        .bearer_auth(API_KEY)
        .header("content-type", "text/plain")
        .body("sub=x")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 415);

    // 429: the user's trigger budget (burst 2) runs out, whichever of
    // her sessions asks (each token logs out its own session).
    let statuses: Vec<u16> = {
        let mut v = Vec::new();
        for sid in ["t1", "t2", "t3"] {
            let token = hub.token("alice", Some(sid)).await;
            v.push(hub.logout(&token, json!({"scope": "session"})).await.0);
        }
        v
    };
    assert_eq!(statuses, vec![200, 200, 429]);

    // Every refusal was counted.
    assert!(
        hub.metric("slo_hub_http_rejections_total{endpoint=\"logout\",error=\"forbidden\"}")
            .await
            >= 2.0
    );
    assert_eq!(
        hub.metric("slo_hub_http_rejections_total{endpoint=\"logout\",error=\"rate_limited\"}")
            .await,
        1.0
    );
}

#[tokio::test]
async fn socket_auth_failures_close_with_documented_codes() {
    let hub = TestHub::start().await;
    let cases = [
        ("not a jwt", 4401),
        (
            &*hs256_token(
                json!({"sub": "alice", "exp": slo_hub::util::now_secs() - 60, "iat": slo_hub::util::now_secs() - 120}),
            ),
            4403,
        ),
        (&*hs256_token(json!({"aud": "someone-else"})), 4401),
        (&*hs256_token(json!({"iat": null})), 4401),
    ];
    for (token, code) in cases {
        let mut ws = Ws::connect(&hub.ws_url, None).await.unwrap();
        ws.send_json(json!({"type": "auth", "token": token})).await;
        assert_eq!(ws.close_code().await, Some(code), "token {token}");
    }
    // A valid token of the HS256 issuer works.
    let (mut ws, ready) = hub.socket(&hs256_token(json!({"sub": "dave"}))).await;
    assert_eq!(ready["sub"], "dave");
    ws.assert_quiet().await;
    assert_eq!(
        hub.metric("slo_hub_auth_failures_total{channel=\"ws\",reason=\"expired\"}")
            .await,
        1.0
    );
}

#[tokio::test]
async fn protocol_violations_close_with_documented_codes() {
    let hub = TestHub::start().await;
    let token = hub.token("alice", None).await;

    // The first message must be auth: 4400.
    let mut ws = Ws::connect(&hub.ws_url, None).await.unwrap();
    ws.send_json(json!({"type": "ack", "id": "x"})).await;
    assert_eq!(ws.close_code().await, Some(4400));

    // Binary: 1003.
    let (mut ws, _) = hub.socket(&token).await;
    ws.send(Message::binary(vec![1, 2, 3])).await;
    assert_eq!(ws.close_code().await, Some(1003));

    // Invalid UTF-8 in a text message: 1007 (a raw client; tungstenite
    // would not send it).
    let mut raw = RawClient::connect(&hub.url).await;
    raw.send_text(&json!({"type": "auth", "token": token}).to_string())
        .await;
    raw.write(&RawClient::frame(0x1, &[b'{', 0xff, 0xfe, b'}']))
        .await
        .unwrap();
    assert_eq!(raw.read_until_close().await, Some(1007));

    // Over the size limit: 1009.
    let (mut ws, _) = hub.socket(&token).await;
    ws.send(Message::text("x".repeat(20_000))).await;
    assert_eq!(ws.close_code().await, Some(1009));

    // Malformed and unknown messages: an error frame each, then 4400 after the limit.
    let (mut ws, _) = hub.socket(&token).await;
    ws.send(Message::text("{nope")).await;
    let e = ws.recv_json().await;
    assert_eq!(
        (e["type"].as_str(), e["code"].as_str()),
        (Some("error"), Some("bad_json"))
    );
    ws.send_json(json!({"type": "subscribe"})).await;
    assert_eq!(ws.recv_json().await["code"], "unknown_type");
    ws.send_json(json!({"type": "auth", "token": "again"}))
        .await;
    assert_eq!(ws.recv_json().await["code"], "already_authenticated");
    for _ in 0..3 {
        ws.send_json(json!({"type": "nope"})).await;
    }
    assert_eq!(ws.close_code().await, Some(4400));
}

#[tokio::test]
async fn a_message_flood_is_closed_with_4429() {
    let hub = TestHub::with(|c| {
        c.ws.max_messages_per_sec = 5;
        c.ws.message_burst = 5;
    })
    .await;
    let token = hub.token("alice", None).await;
    let (mut ws, _) = hub.socket(&token).await;
    for _ in 0..20 {
        ws.send_json(json!({"type": "ping"})).await;
    }
    assert_eq!(ws.close_code().await, Some(4429));
}

/// Every frame costs the sender budget, also frames that carry no message:
/// pings before `auth`, unsolicited pongs, empty continuation frames of a
/// message that never ends. (One socket sent 114.7 M such frames in 5 s.)
#[tokio::test]
async fn every_frame_costs_budget_even_one_without_a_message() {
    let hub = TestHub::start().await;
    let token = hub.token("alice", None).await;
    let auth = RawClient::frame(
        0x1,
        json!({"type": "auth", "token": token})
            .to_string()
            .as_bytes(),
    );
    let many = |frame: Vec<u8>| -> Vec<u8> { (0..500).flat_map(|_| frame.clone()).collect() };
    // A fragment without FIN: the message goes on, nothing is delivered.
    let unfinished = |opcode: u8, payload: &[u8]| {
        let mut f = RawClient::frame(opcode, payload);
        f[0] &= 0x7F;
        f
    };
    let cases: [(&str, Vec<u8>); 3] = [
        ("pings before auth", many(RawClient::frame(0x9, b""))),
        (
            "unsolicited pongs",
            [auth.clone(), many(RawClient::frame(0xA, b""))].concat(),
        ),
        (
            "empty continuations",
            [
                auth.clone(),
                unfinished(0x1, b"{"),
                many(unfinished(0x0, b"")),
            ]
            .concat(),
        ),
    ];
    for (what, bytes) in cases {
        let mut c = RawClient::connect(&hub.url).await;
        c.write(&bytes).await.unwrap();
        assert_eq!(c.read_until_close().await, Some(4429), "{what}");
    }
}

#[tokio::test]
async fn sockets_that_never_authenticate_are_closed_at_the_deadline() {
    let hub = TestHub::with(|c| c.ws.auth_timeout_ms = 300).await;
    let started = Instant::now();
    let mut ws = Ws::connect(&hub.ws_url, None).await.unwrap();
    assert_eq!(ws.close_code().await, Some(4401));
    assert!(started.elapsed() >= Duration::from_millis(300));
    assert_eq!(
        hub.metric("slo_hub_auth_failures_total{channel=\"ws\",reason=\"deadline\"}")
            .await,
        1.0
    );
}

#[tokio::test]
async fn the_origin_is_checked_before_the_upgrade() {
    let hub = TestHub::with(|c| {
        c.ws.allowed_origins = vec!["https://app.example".into()];
        c.ws.allow_missing_origin = false;
    })
    .await;
    assert_eq!(
        Ws::connect(&hub.ws_url, Some("https://evil.example"))
            .await
            .err(),
        Some(403)
    );
    assert_eq!(
        Ws::connect(&hub.ws_url, Some("null")).await.err(),
        Some(403)
    );
    assert_eq!(Ws::connect(&hub.ws_url, None).await.err(), Some(403));
    assert!(
        Ws::connect(&hub.ws_url, Some("https://app.example"))
            .await
            .is_ok()
    );
    assert_eq!(
        hub.metric("slo_hub_upgrades_rejected_total{reason=\"origin_not_allowed\"}")
            .await,
        1.0
    );
}

#[tokio::test]
async fn a_token_in_the_socket_url_is_refused() {
    let hub = TestHub::start().await;
    let token = hub.token("alice", None).await;
    let url = format!("{}?token={token}", hub.ws_url);
    assert_eq!(Ws::connect(&url, None).await.err(), Some(401));
}

#[tokio::test]
async fn the_registry_is_empty_again_after_disconnects() {
    let hub = TestHub::start().await;
    let mut sockets = Vec::new();
    for (user, sid) in [
        ("a", "a1"),
        ("a", "a1"),
        ("a", "a2"),
        ("b", "b1"),
        ("c", "c1"),
    ] {
        let t = hub.token(user, Some(sid)).await;
        sockets.push(hub.socket(&t).await.0);
    }
    assert_eq!(hub.app().registry.sizes(), (3, 4, 5));
    assert_eq!(hub.metric("slo_hub_connections").await, 5.0);
    for ws in sockets {
        ws.close().await;
    }
    assert_eq!(hub.app().registry.sizes(), (0, 0, 0));
    assert_eq!(hub.metric("slo_hub_connections").await, 0.0);
}

#[tokio::test]
async fn a_silent_peer_is_closed_by_the_heartbeat() {
    let hub = TestHub::with(|c| c.ws.heartbeat_secs = 1).await;
    let token = hub.token("alice", None).await;
    // A raw client that authenticates and then never answers pings.
    let mut raw = RawClient::connect(&hub.url).await;
    raw.send_text(&json!({"type": "auth", "token": token}).to_string())
        .await;
    let started = Instant::now();
    let code = raw.read_until_close().await;
    assert_eq!(code, Some(4408));
    // Two pings went unanswered.
    assert!(started.elapsed() >= Duration::from_secs(2));
}

#[tokio::test]
async fn a_slow_consumer_is_cut_off_and_others_still_get_their_logout() {
    let hub = TestHub::with(|c| {
        c.ws.outbound_buffer_bytes = 16 * 1024;
        c.ws.max_messages_per_sec = 100_000;
        c.ws.message_burst = 100_000;
    })
    .await;
    let slow_token = hub.token("slow", None).await;
    let normal_token = hub.token("normal", None).await;
    let (mut normal, _) = hub.socket(&normal_token).await;

    // The slow client asks for pongs (125-byte pings) and never reads them.
    let mut slow = RawClient::connect_small_buffer(&hub.url).await;
    slow.send_text(&json!({"type": "auth", "token": slow_token}).to_string())
        .await;
    let flood = tokio::spawn(async move {
        let ping = RawClient::frame(0x9, &[7u8; 125]);
        let burst: Vec<u8> = ping
            .iter()
            .copied()
            .cycle()
            .take(ping.len() * 512)
            .collect();
        // Stops when the hub cuts the connection.
        for _ in 0..20_000 {
            if slow.write(&burst).await.is_err() {
                return true;
            }
        }
        false
    });
    // Meanwhile a normal user's logout is delivered promptly.
    let started = Instant::now();
    let (status, body) = hub.backend_logout(json!({"sub": "normal"})).await;
    assert_eq!(status, 200);
    assert_eq!(body["delivered"], 1);
    assert_eq!(normal.recv_json().await["type"], "logout");
    assert!(
        started.elapsed() < Duration::from_secs(2),
        "{:?}",
        started.elapsed()
    );

    assert!(flood.await.unwrap(), "the slow consumer was never cut off");
    assert_eq!(hub.metric("slo_hub_slow_consumers_total").await, 1.0);
    assert_eq!(
        hub.metric("slo_hub_ws_closed_total{code=\"4409\"}").await,
        1.0
    );
}

#[tokio::test]
async fn shutdown_closes_sockets_with_1012() {
    let hub = TestHub::start().await;
    let token = hub.token("alice", None).await;
    let (mut a, _) = hub.socket(&token).await;
    let (mut b, _) = hub.socket(&token).await;
    let closing = tokio::spawn(async move { (a.close_code().await, b.close_code().await) });
    hub.shutdown().await;
    assert_eq!(closing.await.unwrap(), (Some(1012), Some(1012)));
}

#[tokio::test]
async fn shutdown_ends_the_relogin_window_of_logged_out_sockets_with_4000() {
    // A window far longer than the test: only shutdown can close it.
    let hub = TestHub::with(|c| c.ws.relogin_secs = 3_600).await;
    let mut ws = logged_out_and_acked(&hub, "alice").await;
    let closing = tokio::spawn(async move { ws.close_code().await });
    hub.shutdown().await;
    assert_eq!(closing.await.unwrap(), Some(4000));
}

#[tokio::test]
async fn health_readiness_and_metrics_answer() {
    let hub = TestHub::start().await;
    let get = |p: &str| hub.http.get(format!("{}{p}", hub.url)).send();
    assert_eq!(get("/healthz").await.unwrap().status(), 200);
    let r = get("/readyz").await.unwrap();
    assert_eq!(r.status(), 200);
    assert_eq!(r.json::<serde_json::Value>().await.unwrap()["ready"], true);
    let text = get("/metrics").await.unwrap().text().await.unwrap();
    for name in [
        "slo_hub_connections",
        "slo_hub_messages_delivered_total",
        "slo_hub_fanout_latency_seconds_bucket",
    ] {
        assert!(text.contains(name), "{name} missing from /metrics");
    }
    let js = get("/static/slo-client.js").await.unwrap();
    assert_eq!(js.status(), 200);
    assert!(js.text().await.unwrap().contains("SloHub"));
    let jwks: serde_json::Value = get("/.well-known/jwks.json")
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(jwks["keys"][0]["kty"], "OKP");
    assert_eq!(get("/nope").await.unwrap().status(), 404);
}

#[tokio::test]
async fn a_logout_the_store_cannot_record_is_never_answered_with_success() {
    let hub = TestHub::start().await;
    let token = hub.token("alice", None).await;
    let (mut ws, _) = hub.socket(&token).await;
    // The store's writer is gone (as when the disk fails or the hub stops).
    hub.app().revocation.close_store();
    let (status, body) = hub.backend_logout(json!({"sub": "alice"})).await;
    assert_eq!(status, 503, "{body}");
    assert_eq!(body["error"], "unavailable", "{body}");
    assert!(
        body["message"]
            .as_str()
            .unwrap()
            .contains("would not survive a restart"),
        "{body}"
    );
    assert_eq!(hub.metric("slo_hub_store_errors_total").await, 1.0);
    // The socket was still told: a failing disk never keeps a logout from a user.
    assert_eq!(ws.recv_json().await["type"], "logout");
}

#[tokio::test]
async fn a_relogin_during_a_heartbeat_sweep_keeps_its_connection() {
    let hub = TestHub::start().await;
    let (mut ws, _) = hub.socket(&hub.token("alice", None).await).await;
    // What the heartbeat sweep holds while it yields between chunks.
    let sweep = hub.app().registry.snapshot();
    let (status, _) = hub.backend_logout(json!({"sub": "alice"})).await;
    assert_eq!(status, 200);
    let m = ws.recv_json().await;
    ws.send_json(json!({"type": "ack", "id": m["id"]})).await;
    // The relogin takes the connection back although the sweep is not done.
    let new = hub.token("alice", None).await;
    ws.send_json(json!({"type": "auth", "token": new})).await;
    let ready = ws.recv_json().await;
    assert_eq!(ready["type"], "ready", "{ready}");
    assert_eq!(sweep.len(), 1);
}
