//! `POST /v1/backchannel-logout`: OpenID Back-Channel Logout 1.0 §2.6 as the
//! OpenID RP conformance suite checks it. Every invalid token is a 400 with
//! `{"error","error_description"}` and `Cache-Control: no-store`, counted,
//! and logs nobody out; a valid one logs out the session (`sid`) or the user
//! (`sub`) live; a replayed `jti` is acknowledged once more without a second
//! fan-out.

mod common;

use common::{TEST_AUD, TEST_ISS, TEST_SECRET, TestHub, forge, hs256_token};
use serde_json::{Value, json};

const EVENT: &str = "http://schemas.openid.net/event/backchannel-logout";

fn claims(overrides: Value) -> Value {
    let now = slo_hub::util::now_secs() as i64;
    let c = json!({
        "iss": TEST_ISS, "aud": TEST_AUD, "iat": now, "exp": now + 120,
        "jti": slo_hub::util::random_id(), "sub": "alice",
        "events": { EVENT: {} },
    });
    common::with_overrides(c, &overrides)
}

fn logout_token(overrides: Value) -> String {
    forge(
        &json!({"alg": "HS256", "typ": "logout+jwt"}),
        &claims(overrides),
        TEST_SECRET.as_bytes(),
    )
}

/// POSTs a body; returns status, Cache-Control and the JSON body.
async fn post(hub: &TestHub, body: &str, content_type: &str) -> (u16, String, Value) {
    let (status, headers, json) = hub
        .post_body("/v1/backchannel-logout", content_type, body)
        .await;
    let cache = headers
        .get("cache-control")
        .map(|v| v.to_str().unwrap().to_string())
        .unwrap_or_default();
    (status, cache, json)
}

async fn send(hub: &TestHub, token: &str) -> (u16, String, Value) {
    post(
        hub,
        &format!("logout_token={token}"),
        "application/x-www-form-urlencoded",
    )
    .await
}

#[tokio::test]
async fn the_rp_conformance_cases_are_each_refused_with_400_and_no_store() {
    let hub = TestHub::start().await;
    let (mut alice, _) = hub.socket(&hs256_token(json!({"sub": "alice"}))).await;
    let none = format!(
        "{}.{}.",
        common::b64_json(&json!({"alg": "none"})),
        common::b64_json(&claims(json!({})))
    );
    let rs256_header = forge(
        &json!({"alg": "RS256", "typ": "logout+jwt"}),
        &claims(json!({})),
        b"x",
    );
    let cases = [
        ("alg none", none),
        ("wrong alg", rs256_header),
        ("wrong aud", logout_token(json!({"aud": "someone-else"}))),
        (
            "wrong iss",
            logout_token(json!({"iss": "https://evil.test"})),
        ),
        ("no events", logout_token(json!({"events": null}))),
        (
            "wrong event",
            logout_token(json!({"events": {"http://schemas.openid.net/event/other": {}}})),
        ),
        (
            "event not an object",
            logout_token(json!({"events": {EVENT: "yes"}})),
        ),
        ("with nonce", logout_token(json!({"nonce": "n-0S6_WzA2Mj"}))),
        ("neither sub nor sid", logout_token(json!({"sub": null}))),
        ("no jti", logout_token(json!({"jti": null}))),
        ("no iat", logout_token(json!({"iat": null}))),
        ("expired", logout_token(json!({"iat": 1_000, "exp": 2_000}))),
        ("bad signature", {
            let t = logout_token(json!({}));
            format!("{}x", &t[..t.len() - 1])
        }),
        ("an access token", hs256_token(json!({"sub": "alice"}))),
    ];
    for (case, token) in &cases {
        let (status, cache, body) = send(&hub, token).await;
        assert_eq!(status, 400, "{case}: {body}");
        assert_eq!(cache, "no-store", "{case}");
        assert_eq!(body["error"], "invalid_request", "{case}: {body}");
        assert!(
            body["error_description"].as_str().is_some(),
            "{case}: {body}"
        );
    }
    // Malformed requests, likewise.
    for (body, ctype) in [
        ("", "application/x-www-form-urlencoded"),
        ("token=abc", "application/x-www-form-urlencoded"),
        (
            "logout_token=a&logout_token=b",
            "application/x-www-form-urlencoded",
        ),
        (r#"{"logout_token":"x"}"#, "application/json"),
    ] {
        let (status, cache, b) = post(&hub, body, ctype).await;
        assert_eq!((status, cache.as_str()), (400, "no-store"), "{body}: {b}");
    }
    let refused = hub
        .metric("slo_hub_http_rejections_total{endpoint=\"backchannel_logout\",error=\"invalid_request\"}")
        .await;
    assert_eq!(refused as usize, cases.len() + 4);
    // Nobody was logged out.
    assert_eq!(hub.app().revocation.watermark_count(), 0);
    alice.assert_quiet().await;
}

#[tokio::test]
async fn a_valid_token_logs_out_by_sid_or_sub_and_a_replay_fans_out_nothing() {
    // No leeway: a token of the next second counts as issued after a logout.
    let hub = TestHub::with(|c| c.issuers[0].leeway_secs = 0).await;
    let s1 = hs256_token(json!({"sub": "alice", "sid": "s1"}));
    let s2 = hs256_token(json!({"sub": "alice", "sid": "s2"}));
    let (mut a1, _) = hub.socket(&s1).await;
    let (mut a2, _) = hub.socket(&s2).await;

    // By sid: that session only.
    let token = logout_token(json!({"sid": "s1"}));
    let (status, cache, _) = send(&hub, &token).await;
    assert_eq!((status, cache.as_str()), (200, "no-store"));
    let m = a1.recv_json().await;
    assert_eq!(
        (m["type"].as_str(), m["scope"].as_str()),
        (Some("logout"), Some("session"))
    );
    assert_eq!(m["reason"], "backchannel_logout");
    a2.assert_quiet().await;

    // A new login to session s1 (a token issued after the logout: in the
    // next second), then the same logout token again: 200, and nothing
    // reaches the new socket.
    let next_second = (slo_hub::util::now_secs() + 1) * 1000;
    let wait = next_second as i64 - slo_hub::util::now_ms();
    tokio::time::sleep(std::time::Duration::from_millis(wait.max(0) as u64)).await;
    let fresh = hs256_token(json!({"sub": "alice", "sid": "s1"}));
    let (mut s3, _) = hub.socket(&fresh).await;
    let delivered = hub.metric("slo_hub_messages_delivered_total").await;
    let (status, _, _) = send(&hub, &token).await;
    assert_eq!(status, 200);
    assert_eq!(
        hub.metric("slo_hub_messages_delivered_total").await,
        delivered
    );
    assert_eq!(
        hub.metric("slo_hub_logout_events_total{source=\"replay\"}")
            .await,
        1.0
    );
    s3.assert_quiet().await;

    // By sub: every session of the user.
    let (status, _, _) = send(&hub, &logout_token(json!({}))).await;
    assert_eq!(status, 200);
    assert_eq!(a2.recv_json().await["scope"], "user");
}

#[tokio::test]
async fn typ_logout_jwt_is_enforced_when_the_issuer_requires_it() {
    let hub = TestHub::with(|c| c.issuers[0].require_logout_typ = true).await;
    let untyped = forge(
        &json!({"alg": "HS256"}),
        &claims(json!({})),
        TEST_SECRET.as_bytes(),
    );
    let (status, _, body) = send(&hub, &untyped).await;
    assert_eq!(status, 400, "{body}");
    assert!(
        body["error_description"]
            .as_str()
            .unwrap()
            .contains("wrong_token_kind"),
        "{body}"
    );
    let (status, _, _) = send(&hub, &logout_token(json!({}))).await;
    assert_eq!(status, 200);
}

/// The hub signs logout tokens for its apps' backends. An app (or anyone
/// who saw one) posting it back to the hub's receiver is not an identity
/// provider speaking: refused.
#[tokio::test]
async fn the_hubs_own_logout_tokens_are_refused_as_input() {
    let sso = common::sso::Sso::start().await;
    let (_, _, login) = sso.alice_on("web").await;
    let (mut ws, _) = sso.hub.socket(&login.token).await;
    let now = slo_hub::util::now_secs();
    let own = sso.hub.app().hub_issuers.session.sign_typed(
        &json!({
            "iss": sso.hub.url, "aud": "web", "sid": login.sid,
            "iat": now, "exp": now + 120, "jti": slo_hub::util::random_id(),
            "events": { "http://schemas.openid.net/event/backchannel-logout": {} },
        }),
        "logout+jwt",
    );
    let (status, _, body) = send(&sso.hub, &own).await;
    assert_eq!(
        (status, body["error"].as_str()),
        (400, Some("invalid_request")),
        "{body}"
    );
    ws.assert_quiet().await;
}

/// A body over the limit is answered in this endpoint's error shape too.
#[tokio::test]
async fn an_oversized_body_gets_the_same_error_shape() {
    let hub = TestHub::start().await;
    let big = format!("logout_token={}", "x".repeat(64 * 1024));
    let (status, _, body) = post(&hub, &big, "application/x-www-form-urlencoded").await;
    assert_eq!(status, 413);
    assert_eq!(body["error"], "invalid_request", "{body}");
    assert!(body["error_description"].as_str().is_some(), "{body}");
}
