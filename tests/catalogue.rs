//! The bad-input catalogue for tokens: one named test per attack. Each
//! offers the bad token both ways a token enters the hub — as the bearer of
//! a trigger (`POST /v1/logout`) and as a socket's `auth` message — and
//! asserts the exact answer (401 + error code; close code), that a metric
//! counted the refusal on both channels, and that nothing changed (no
//! logout recorded, the victim's socket still open and quiet).

mod common;

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD as B64;
use common::{TEST_AUD, TEST_ISS, TEST_SECRET, TestHub, Ws, ec_key, es256, forge, hs256_token};
use serde_json::{Value, json};
use slo_hub::config::{IssuerSettings, StaticKey};

const RS_ISS: &str = "https://rs256.test";
const RS_PUBLIC: &str = include_str!("../bench/keys/rs256-public.pem");
const RS_PRIVATE: &str = include_str!("../bench/keys/rs256-private.pem");

/// A hub with the HS256 test issuer and an RS256 issuer with a static key.
async fn hub() -> TestHub {
    TestHub::with(|c| {
        c.issuers.push(IssuerSettings {
            issuer: RS_ISS.into(),
            audiences: vec![TEST_AUD.into()],
            algorithms: vec![jsonwebtoken::Algorithm::RS256],
            jwks_url: None,
            keys: vec![StaticKey {
                kid: Some("k1".into()),
                pem: Some(RS_PUBLIC.into()),
                jwk: None,
            }],
            hs256_secret: None,
            leeway_secs: 5,
            jwks_min_refetch_secs: 30,
            require_logout_typ: false,
            speaks_for: vec![],
        });
    })
    .await
}

fn b64(v: &Value) -> String {
    common::b64_json(v)
}

fn claims(overrides: Value) -> Value {
    let now = slo_hub::util::now_secs() as i64;
    let c =
        json!({"iss": TEST_ISS, "aud": TEST_AUD, "sub": "mallory", "iat": now, "exp": now + 600});
    common::with_overrides(c, &overrides)
}

fn hs(overrides: Value) -> String {
    forge(
        &json!({"alg": "HS256", "typ": "JWT"}),
        &claims(overrides),
        TEST_SECRET.as_bytes(),
    )
}

/// Offers `token` as a trigger's bearer and as a socket's auth; asserts 401
/// with `reason`, the socket closed with `close`, both refusals counted,
/// and that the victim (alice, connected) was not logged out.
async fn refused(hub: &TestHub, token: &str, reason: &str, close: u16) {
    let alice = hs256_token(json!({"sub": "alice"}));
    let (mut victim, _) = hub.socket(&alice).await;
    let http_metric =
        format!("slo_hub_auth_failures_total{{channel=\"http\",reason=\"{reason}\"}}");
    let ws_metric = format!("slo_hub_auth_failures_total{{channel=\"ws\",reason=\"{reason}\"}}");
    let (http_before, ws_before) = (hub.metric(&http_metric).await, hub.metric(&ws_metric).await);

    let (status, body) = hub.logout(token, json!({"scope": "user"})).await;
    assert_eq!(status, 401, "{body}");
    assert_eq!(body["error"], reason, "{body}");

    let mut ws = Ws::connect(&hub.ws_url, None).await.unwrap();
    ws.send_json(json!({"type": "auth", "token": token})).await;
    assert_eq!(
        ws.close_code().await,
        Some(close),
        "socket auth with a {reason} token"
    );

    assert_eq!(
        hub.metric(&http_metric).await,
        http_before + 1.0,
        "{http_metric}"
    );
    assert_eq!(hub.metric(&ws_metric).await, ws_before + 1.0, "{ws_metric}");
    // Nothing changed: no logout recorded, the victim is still connected.
    assert_eq!(hub.app().revocation.watermark_count(), 0);
    victim.assert_quiet().await;
}

#[tokio::test]
async fn alg_none_in_any_case_is_refused() {
    let hub = hub().await;
    for alg in ["none", "None", "NONE", "nOnE"] {
        let token = format!("{}.{}.", b64(&json!({"alg": alg})), b64(&claims(json!({}))));
        refused(&hub, &token, "malformed", 4401).await;
    }
}

#[tokio::test]
async fn an_rs256_public_key_used_as_an_hs256_secret_is_refused() {
    let hub = hub().await;
    let token = forge(
        &json!({"alg": "HS256", "kid": "k1"}),
        &claims(json!({"iss": RS_ISS})),
        RS_PUBLIC.as_bytes(),
    );
    refused(&hub, &token, "alg_not_allowed", 4401).await;
}

#[tokio::test]
async fn an_alg_outside_the_issuers_allow_list_is_refused() {
    let hub = hub().await;
    // A real RS256 signature, for the HS256-only issuer.
    let key = jsonwebtoken::EncodingKey::from_rsa_pem(RS_PRIVATE.as_bytes()).unwrap();
    slo_hub::auth::crypto::install();
    let token = jsonwebtoken::encode(
        &jsonwebtoken::Header::new(jsonwebtoken::Algorithm::RS256),
        &claims(json!({})),
        &key,
    )
    .unwrap();
    refused(&hub, &token, "alg_not_allowed", 4401).await;
}

#[tokio::test]
async fn an_expired_token_is_refused() {
    let hub = hub().await;
    let now = slo_hub::util::now_secs() as i64;
    let token = hs(json!({"iat": now - 700, "exp": now - 60}));
    refused(&hub, &token, "expired", 4403).await;
}

#[tokio::test]
async fn nbf_or_iat_in_the_future_beyond_leeway_is_refused() {
    let hub = hub().await;
    let now = slo_hub::util::now_secs() as i64;
    refused(&hub, &hs(json!({"nbf": now + 120})), "not_yet_valid", 4401).await;
    refused(&hub, &hs(json!({"iat": now + 120})), "not_yet_valid", 4401).await;
}

#[tokio::test]
async fn a_missing_exp_is_refused() {
    let hub = hub().await;
    refused(&hub, &hs(json!({"exp": null})), "missing_claim", 4401).await;
}

#[tokio::test]
async fn exp_of_the_wrong_type_or_absurd_size_is_refused() {
    let hub = hub().await;
    let now = slo_hub::util::now_secs() as i64;
    refused(&hub, &hs(json!({"exp": "tomorrow"})), "bad_claims", 4401).await;
    refused(&hub, &hs(json!({"exp": 1e300})), "bad_claims", 4401).await;
    // A huge but well-formed exp: the lifetime cap catches it.
    refused(
        &hub,
        &hs(json!({"exp": now + 10 * 365 * 86_400})),
        "lifetime_too_long",
        4401,
    )
    .await;
}

#[tokio::test]
async fn a_wrong_audience_is_refused_also_in_an_array() {
    let hub = hub().await;
    refused(
        &hub,
        &hs(json!({"aud": "someone-else"})),
        "wrong_audience",
        4401,
    )
    .await;
    refused(
        &hub,
        &hs(json!({"aud": ["a", "b"]})),
        "wrong_audience",
        4401,
    )
    .await;
}

#[tokio::test]
async fn a_wrong_issuer_is_refused_also_with_a_trailing_slash() {
    let hub = hub().await;
    refused(
        &hub,
        &hs(json!({"iss": "https://evil.test"})),
        "unknown_issuer",
        4401,
    )
    .await;
    refused(
        &hub,
        &hs(json!({"iss": format!("{TEST_ISS}/")})),
        "unknown_issuer",
        4401,
    )
    .await;
}

#[tokio::test]
async fn a_kid_with_path_or_injection_characters_is_refused() {
    let hub = hub().await;
    for kid in ["../../etc/passwd", "k1' OR '1'='1", "k1\u{0}", "k1;rm -rf"] {
        let token = forge(
            &json!({"alg": "HS256", "kid": kid}),
            &claims(json!({})),
            TEST_SECRET.as_bytes(),
        );
        refused(&hub, &token, "malformed", 4401).await;
    }
}

#[tokio::test]
async fn crit_headers_are_refused_and_jku_x5u_are_never_fetched() {
    let hub = hub().await;
    // RFC 7515 §4.1.11: `crit`, when present, is a non-empty array of
    // extensions the recipient must understand; null or empty is no escape.
    for crit in [json!(["exp"]), json!(null), json!([])] {
        let token = forge(
            &json!({"alg": "HS256", "crit": crit}),
            &claims(json!({})),
            TEST_SECRET.as_bytes(),
        );
        refused(&hub, &token, "crit_not_supported", 4401).await;
    }
    // jku / x5u pointing at a listener of ours: the hub must never call it.
    let trap = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}/jwks.json", trap.local_addr().unwrap());
    for header in [
        json!({"alg": "RS256", "kid": "evil", "jku": url}),
        json!({"alg": "RS256", "kid": "evil", "x5u": url}),
    ] {
        let token = forge(&header, &claims(json!({"iss": RS_ISS})), b"x");
        refused(&hub, &token, "unknown_kid", 4401).await;
    }
    let fetched = tokio::time::timeout(std::time::Duration::from_millis(200), trap.accept()).await;
    assert!(fetched.is_err(), "the hub connected to a jku/x5u URL");
}

#[tokio::test]
async fn malformed_base64_duplicate_keys_and_huge_tokens_are_refused() {
    let hub = hub().await;
    refused(&hub, "e30.e30.%%%", "malformed", 4401).await;
    refused(&hub, "not-a-jwt", "malformed", 4401).await;
    // Duplicate claim names: ambiguous, refused rather than "last one wins".
    let header = B64.encode(r#"{"alg":"HS256"}"#);
    let now = slo_hub::util::now_secs();
    let body = B64.encode(format!(
        r#"{{"iss":"{TEST_ISS}","aud":"{TEST_AUD}","sub":"alice","sub":"mallory","iat":{now},"exp":{}}}"#,
        now + 600
    ));
    let input = format!("{header}.{body}");
    let key = ring::hmac::Key::new(ring::hmac::HMAC_SHA256, TEST_SECRET.as_bytes());
    let sig = B64.encode(ring::hmac::sign(&key, input.as_bytes()).as_ref());
    refused(&hub, &format!("{input}.{sig}"), "bad_claims", 4401).await;
    // 100 KB: refused before any parsing (socket: above the message limit).
    let big = format!(
        "{}.{}.x",
        b64(&json!({"alg": "HS256"})),
        "A".repeat(100_000)
    );
    let (status, body) = hub.logout(&big, json!({"scope": "user"})).await;
    assert!(
        status == 401 || status == 431 || status == 413,
        "{status} {body}"
    );
}

#[tokio::test]
async fn a_logout_token_is_never_accepted_as_an_access_token() {
    let hub = hub().await;
    let token = forge(
        &json!({"alg": "HS256", "typ": "logout+jwt"}),
        &claims(json!({})),
        TEST_SECRET.as_bytes(),
    );
    refused(&hub, &token, "wrong_token_kind", 4401).await;
    let events = json!({"http://schemas.openid.net/event/backchannel-logout": {}});
    refused(
        &hub,
        &hs(json!({"events": events})),
        "wrong_token_kind",
        4401,
    )
    .await;
}

/// Serves `jwks` at `/jwks.json` and counts the requests.
async fn jwks_server(jwks: Value) -> (String, std::sync::Arc<std::sync::atomic::AtomicUsize>) {
    use std::sync::atomic::{AtomicUsize, Ordering};
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}/jwks.json", listener.local_addr().unwrap());
    let hits = std::sync::Arc::new(AtomicUsize::new(0));
    let counter = hits.clone();
    let body = jwks.to_string();
    tokio::spawn(async move {
        while let Ok((mut s, _)) = listener.accept().await {
            let (counter, body) = (counter.clone(), body.clone());
            tokio::spawn(async move {
                let mut buf = [0u8; 4096];
                let _ = s.read(&mut buf).await;
                counter.fetch_add(1, Ordering::SeqCst);
                let resp = format!(
                    "HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{body}",
                    body.len()
                );
                let _ = s.write_all(resp.as_bytes()).await;
            });
        }
    });
    (url, hits)
}

const JWKS_ISS: &str = "https://jwks.test";
const STATIC_ISS: &str = "https://static.test";

fn ec_issuer(iss: &str, jwks_url: Option<String>, jwk: Option<&Value>) -> IssuerSettings {
    IssuerSettings {
        issuer: iss.into(),
        audiences: vec![TEST_AUD.into()],
        algorithms: vec![jsonwebtoken::Algorithm::ES256],
        jwks_url,
        keys: jwk
            .map(|j| {
                vec![StaticKey {
                    kid: None,
                    pem: None,
                    jwk: Some(j.to_string()),
                }]
            })
            .unwrap_or_default(),
        hs256_secret: None,
        leeway_secs: 5,
        jwks_min_refetch_secs: 30,
        require_logout_typ: false,
        speaks_for: vec![],
    }
}

#[tokio::test]
async fn an_unknown_kid_costs_at_most_one_jwks_refetch_not_a_storm() {
    let (key, jwk) = ec_key("k1");
    let (url, hits) = jwks_server(json!({ "keys": [jwk] })).await;
    let hub = TestHub::with(|c| c.issuers.push(ec_issuer(JWKS_ISS, Some(url), None))).await;
    let loaded = hits.load(std::sync::atomic::Ordering::SeqCst);
    assert_eq!(loaded, 1, "the JWKS is fetched once at start");
    // The right kid verifies without any fetch.
    let good = es256(&key, "k1", &claims(json!({"iss": JWKS_ISS})));
    assert_eq!(hub.socket(&good).await.1["type"], "ready");
    for i in 0..20 {
        let token = es256(
            &key,
            &format!("made-up-{i}"),
            &claims(json!({"iss": JWKS_ISS})),
        );
        refused(&hub, &token, "unknown_kid", 4401).await;
    }
    let after = hits.load(std::sync::atomic::Ordering::SeqCst);
    assert!(
        after <= loaded + 1,
        "{} JWKS fetches for 40 unknown-kid tokens",
        after - loaded
    );
}

#[tokio::test]
async fn the_same_kid_under_two_issuers_never_mixes_their_keys() {
    let (key_a, jwk_a) = ec_key("k1");
    let (key_b, jwk_b) = ec_key("k1");
    let (url, _) = jwks_server(json!({ "keys": [jwk_a] })).await;
    let hub = TestHub::with(|c| {
        c.issuers.push(ec_issuer(JWKS_ISS, Some(url), None));
        c.issuers.push(ec_issuer(STATIC_ISS, None, Some(&jwk_b)));
    })
    .await;
    // Each issuer's own key works...
    let a = es256(&key_a, "k1", &claims(json!({"iss": JWKS_ISS})));
    let b = es256(&key_b, "k1", &claims(json!({"iss": STATIC_ISS})));
    assert_eq!(hub.socket(&a).await.1["type"], "ready");
    assert_eq!(hub.socket(&b).await.1["type"], "ready");
    // ...and the other issuer's key under the same kid does not.
    let a_signed_by_b = es256(&key_b, "k1", &claims(json!({"iss": JWKS_ISS})));
    refused(&hub, &a_signed_by_b, "bad_signature", 4401).await;
    let b_signed_by_a = es256(&key_a, "k1", &claims(json!({"iss": STATIC_ISS})));
    refused(&hub, &b_signed_by_a, "bad_signature", 4401).await;
}

#[tokio::test]
async fn readyz_answers_at_once_while_a_jwks_fetch_hangs() {
    // A JWKS endpoint that accepts connections and never answers.
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}/jwks", listener.local_addr().unwrap());
    tokio::spawn(async move {
        let mut held = Vec::new();
        while let Ok((s, _)) = listener.accept().await {
            held.push(s);
        }
    });
    let hub = TestHub::with(|c| {
        let mut issuer = ec_issuer(JWKS_ISS, Some(url), None);
        issuer.jwks_min_refetch_secs = 0;
        c.issuers.push(issuer);
    })
    .await;
    // A token of that issuer: its `auth` starts a fetch, which hangs.
    let (key, _) = ec_key("k1");
    let now = slo_hub::util::now_secs();
    let token = es256(
        &key,
        "k1",
        &json!({"iss": JWKS_ISS, "aud": TEST_AUD, "sub": "u", "iat": now, "exp": now + 60}),
    );
    let mut ws = Ws::connect(&hub.ws_url, None).await.unwrap();
    ws.send_json(json!({"type": "auth", "token": token})).await;
    // Readiness answers now (not after the fetch timeout) and says why.
    let r = hub
        .http
        .get(format!("{}/readyz", hub.url))
        .timeout(std::time::Duration::from_secs(1))
        .send()
        .await
        .expect("/readyz answered at once");
    assert_eq!(r.status(), 503);
    let body = r.text().await.unwrap();
    assert!(body.contains("issuer keys"), "{body}");
}
