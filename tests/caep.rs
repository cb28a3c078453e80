//! `POST /v1/events`: CAEP `session-revoked` Security Event Tokens pushed
//! as RFC 8935 says. A verified event logs out the session or user it names
//! (202); a replayed `jti` changes nothing; every invalid SET is a 400 with
//! RFC 8935's error code, counted, and logs nobody out.

mod common;

use common::{TEST_AUD, TEST_ISS, TEST_SECRET, TestHub, forge, hs256_token};
use serde_json::{Value, json};

const REVOKED: &str = "https://schemas.openid.net/secevent/caep/event-type/session-revoked";

fn set(overrides: Value) -> String {
    let now = slo_hub::util::now_secs() as i64;
    let c = json!({
        "iss": TEST_ISS, "aud": TEST_AUD, "iat": now, "jti": slo_hub::util::random_id(),
        "sub_id": {"format": "iss_sub", "iss": TEST_ISS, "sub": "alice"},
        "events": { REVOKED: {"event_timestamp": now} },
    });
    let c = common::with_overrides(c, &overrides);
    forge(
        &json!({"alg": "HS256", "typ": "secevent+jwt"}),
        &c,
        TEST_SECRET.as_bytes(),
    )
}

async fn push(hub: &TestHub, body: &str, content_type: &str) -> (u16, Value) {
    let (status, _, json) = hub.post_body("/v1/events", content_type, body).await;
    (status, json)
}

const SET_TYPE: &str = "application/secevent+jwt";

#[tokio::test]
async fn session_revoked_logs_out_the_session_or_the_user_once() {
    let hub = TestHub::start().await;
    let (mut s1, _) = hub
        .socket(&hs256_token(json!({"sub": "alice", "sid": "s1"})))
        .await;
    let (mut s2, _) = hub
        .socket(&hs256_token(json!({"sub": "alice", "sid": "s2"})))
        .await;

    // A complex subject naming a session: that session only.
    let token = set(json!({"sub_id": {
        "format": "complex",
        "user": {"format": "iss_sub", "iss": TEST_ISS, "sub": "alice"},
        "session": {"format": "opaque", "id": "s1"},
    }}));
    let (status, body) = push(&hub, &token, SET_TYPE).await;
    assert_eq!(status, 202, "{body}");
    let m = s1.recv_json().await;
    assert_eq!(
        (m["scope"].as_str(), m["reason"].as_str()),
        (Some("session"), Some("session_revoked"))
    );
    s2.assert_quiet().await;

    // Replayed: accepted again, nothing happens.
    let delivered = hub.metric("slo_hub_messages_delivered_total").await;
    assert_eq!(push(&hub, &token, SET_TYPE).await.0, 202);
    assert_eq!(
        hub.metric("slo_hub_messages_delivered_total").await,
        delivered
    );
    s2.assert_quiet().await;

    // A user subject: every session.
    assert_eq!(push(&hub, &set(json!({})), SET_TYPE).await.0, 202);
    assert_eq!(s2.recv_json().await["scope"], "user");
}

#[tokio::test]
async fn invalid_sets_get_rfc_8935_errors_and_change_nothing() {
    let hub = TestHub::start().await;
    let (mut alice, _) = hub.socket(&hs256_token(json!({"sub": "alice"}))).await;
    // Signed with another secret: a well-formed token whose signature fails.
    let bad_sig = {
        let t = set(json!({}));
        let (input, _) = t.rsplit_once('.').unwrap();
        let (h, c) = input.split_once('.').unwrap();
        let decode = |p: &str| -> Value {
            use base64::Engine;
            let b = base64::engine::general_purpose::URL_SAFE_NO_PAD
                .decode(p)
                .unwrap();
            serde_json::from_slice(&b).unwrap()
        };
        forge(
            &decode(h),
            &decode(c),
            b"not-the-secret-not-the-secret-not-the-s",
        )
    };
    let cases = [
        (
            "another event type",
            set(
                json!({"events": {"https://schemas.openid.net/secevent/caep/event-type/credential-change": {}}}),
            ),
            "invalid_request",
        ),
        ("no events", set(json!({"events": null})), "invalid_request"),
        (
            "no subject",
            set(json!({"sub_id": null})),
            "invalid_request",
        ),
        (
            "an unknown subject format",
            set(json!({"sub_id": {"format": "email", "email": "a@b.c"}})),
            "invalid_request",
        ),
        ("no jti", set(json!({"jti": null})), "invalid_request"),
        (
            "wrong aud",
            set(json!({"aud": "someone-else"})),
            "invalid_audience",
        ),
        (
            "wrong iss",
            set(json!({"iss": "https://evil.test"})),
            "invalid_issuer",
        ),
        ("bad signature", bad_sig, "invalid_key"),
        (
            "an access token",
            hs256_token(json!({"sub": "alice"})),
            "invalid_request",
        ),
    ];
    for (case, token, err) in &cases {
        let (status, body) = push(&hub, token, SET_TYPE).await;
        assert_eq!(status, 400, "{case}: {body}");
        assert_eq!(body["err"], *err, "{case}: {body}");
        assert!(body["description"].as_str().is_some(), "{case}");
    }
    let (status, body) = push(&hub, &set(json!({})), "application/jwt").await;
    assert_eq!(
        (status, body["err"].as_str()),
        (400, Some("invalid_request"))
    );
    assert_eq!(hub.app().revocation.watermark_count(), 0);
    alice.assert_quiet().await;
}

/// An `iss_sub` subject names a user *of that issuer*: not the
/// transmitter's user of the same name. An issuer that is not configured,
/// or that the transmitter may not speak for, is refused.
#[tokio::test]
async fn an_iss_sub_subject_is_a_user_of_the_issuer_it_names() {
    let hub = TestHub::start().await;
    let dev_iss = hub.dev_iss();
    let (mut test_alice, _) = hub.socket(&hs256_token(json!({"sub": "alice"}))).await;
    let (mut dev_alice, _) = hub.socket(&hub.token("alice", None).await).await;
    for iss in ["https://unknown-idp.example", dev_iss.as_str()] {
        let token = set(json!({"sub_id": {"format": "iss_sub", "iss": iss, "sub": "alice"}}));
        let (status, body) = push(&hub, &token, SET_TYPE).await;
        assert_eq!(
            (status, body["err"].as_str()),
            (400, Some("invalid_request")),
            "{iss}: {body}"
        );
    }
    test_alice.assert_quiet().await;
    dev_alice.assert_quiet().await;

    // A second issuer the transmitter may speak for: its alice, and only her.
    const SECOND: &str = "https://second.test";
    const SECOND_SECRET: &str = "second-secret-second-secret-second-0123";
    let hub = TestHub::with(|c| {
        let mut second = c.issuers[0].clone();
        second.issuer = SECOND.into();
        second.hs256_secret = Some(SECOND_SECRET.into());
        c.issuers[0].speaks_for = vec![SECOND.into()];
        c.issuers.push(second);
    })
    .await;
    let now = slo_hub::util::now_secs();
    let second_token = forge(
        &json!({"alg": "HS256"}),
        &json!({"iss": SECOND, "aud": TEST_AUD, "sub": "alice", "iat": now, "exp": now + 600}),
        SECOND_SECRET.as_bytes(),
    );
    let (mut test_alice, _) = hub.socket(&hs256_token(json!({"sub": "alice"}))).await;
    let (mut second_alice, _) = hub.socket(&second_token).await;
    let token = set(json!({"sub_id": {"format": "iss_sub", "iss": SECOND, "sub": "alice"}}));
    let (status, body) = push(&hub, &token, SET_TYPE).await;
    assert_eq!(status, 202, "{body}");
    assert_eq!(second_alice.recv_json().await["type"], "logout");
    test_alice.assert_quiet().await;
}

/// A SET need not carry `exp`. Its `jti` is remembered as long as an event
/// is accepted at all, so an old one cannot be replayed once its `jti` is
/// forgotten: events older than that are refused.
#[tokio::test]
async fn an_event_older_than_its_jti_is_remembered_is_refused() {
    let hub = TestHub::start().await;
    let (mut alice, _) = hub.socket(&hs256_token(json!({"sub": "alice"}))).await;
    let day_ago = slo_hub::util::now_secs() as i64 - 25 * 3600;
    let (status, body) = push(&hub, &set(json!({"iat": day_ago})), SET_TYPE).await;
    assert_eq!(status, 400, "{body}");
    alice.assert_quiet().await;
}

#[tokio::test]
async fn an_oversized_body_gets_the_same_error_shape() {
    let hub = TestHub::start().await;
    let (status, body) = push(&hub, &"x".repeat(64 * 1024), SET_TYPE).await;
    assert_eq!(status, 413);
    assert_eq!(body["err"], "invalid_request", "{body}");
    assert!(body["description"].as_str().is_some(), "{body}");
}
