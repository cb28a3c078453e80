//! Native-to-Web SSO: minting and redeeming session transfer tokens, the
//! four `/authorize` outcomes, and revocation along the session graph —
//! each rule with a live socket that must (or must not) be logged out.

mod common;

use std::time::Duration;

use common::sso::*;
use common::{API_KEY, EVENT_TIMEOUT, TEST_AUD, TEST_ISS, TestHub, hs256_token};
use serde_json::{Value, json};

/// Outcome 1 end to end: mint, redeem by query, exchange the code; the
/// session token is hub-signed, transfer-marked, bounded by the session,
/// and opens a socket like any other token.
#[tokio::test]
async fn outcome_1_valid_token_and_no_session_creates_a_web_session() {
    let sso = Sso::start().await;
    let refresh = sso.native_login("native", "alice").await;
    let stt = sso.stt("native", &refresh).await;
    assert!(stt.len() >= 4 + 43, "at least 256 random bits: {stt}");
    let mut browser = Browser::default();
    let login = sso.open_web(&mut browser, "web", &stt).await;
    assert!(browser.session_cookie.is_some());
    let c = claims(&login.token);
    assert_eq!(c["iss"], sso.hub.url);
    // The subject names the issuer too; who the user is upstream is shown.
    let subject = slo_hub::sessions::hub_subject(&sso.hub.dev_iss(), "alice");
    assert_eq!(c["sub"], subject);
    assert_eq!(c["upstream_sub"], "alice");
    assert_eq!(c["upstream_iss"], sso.hub.dev_iss());
    assert_eq!(c["aud"], "web");
    assert_eq!(c["sid"], login.sid);
    assert_eq!(c["slo_transfer"], true);
    let lifetime = c["exp"].as_i64().unwrap() - c["iat"].as_i64().unwrap();
    assert!(lifetime <= 600, "{c}");
    let (mut ws, ready) = sso.hub.socket(&login.token).await;
    assert_eq!(ready["sub"], subject);
    // The session cookie alone signs in again (silent SSO).
    let (_, challenge) = pkce();
    let again = sso.authorize(&browser, "web", None, None, &challenge).await;
    assert!(again.param("code").is_some(), "{again:?}");
    ws.assert_quiet().await;
    // /v1/logout takes the session token like any other: the session ends.
    let (status, v) = sso
        .hub
        .logout(&login.token, json!({"scope": "session"}))
        .await;
    assert_eq!((status, v["delivered"].as_u64()), (200, Some(1)), "{v}");
    assert_eq!(ws.recv_json().await["sid"], login.sid);
    let r = sso.authorize(&browser, "web", None, None, &challenge).await;
    assert_eq!(r.param("error"), Some("login_required"), "{r:?}");
}

#[tokio::test]
async fn outcome_2_same_user_reuses_the_session() {
    let sso = Sso::start().await;
    let refresh = sso.native_login("native", "alice").await;
    let mut browser = Browser::default();
    let first = sso
        .open_web(&mut browser, "web", &sso.stt("native", &refresh).await)
        .await;
    let (mut ws, _) = sso.hub.socket(&first.token).await;
    let second = sso
        .open_web(&mut browser, "web", &sso.stt("native", &refresh).await)
        .await;
    assert_eq!(second.sid, first.sid, "the same session is reused");
    ws.assert_quiet().await;
}

#[tokio::test]
async fn outcome_3_different_user_revokes_the_existing_session_live() {
    let sso = Sso::start().await;
    let alice = sso.native_login("native", "alice").await;
    let bob = sso.native_login("native", "bob").await;
    let mut browser = Browser::default();
    let login = sso
        .open_web(&mut browser, "web", &sso.stt("native", &alice).await)
        .await;
    let (mut ws, _) = sso.hub.socket(&login.token).await;
    let bob_stt = sso.stt("native", &bob).await;
    let (_, challenge) = pkce();
    let r = sso
        .authorize(&browser, "web", Some(&bob_stt), None, &challenge)
        .await;
    assert_eq!(r.param("error"), Some("login_required"), "{r:?}");
    assert!(r.param("code").is_none());
    let msg = ws.recv_json().await;
    assert_eq!(msg["type"], "logout");
    assert_eq!(msg["sid"], login.sid);
    assert_eq!(msg["reason"], "session_replaced");
    // Alice's session is gone: its cookie no longer signs in.
    let r = sso.authorize(&browser, "web", None, None, &challenge).await;
    assert_eq!(r.param("error"), Some("login_required"));
    // And Bob's token was used up by its presentation.
    let r = sso
        .authorize(&Browser::default(), "web", Some(&bob_stt), None, &challenge)
        .await;
    assert_eq!(r.param("error"), Some("login_required"));
}

#[tokio::test]
async fn outcome_4_invalid_token_with_a_session_changes_nothing() {
    let sso = Sso::start().await;
    let alice = sso.native_login("native", "alice").await;
    let mut browser = Browser::default();
    let stt = sso.stt("native", &alice).await;
    let login = sso.open_web(&mut browser, "web", &stt).await;
    let (mut ws, _) = sso.hub.socket(&login.token).await;
    let (_, challenge) = pkce();
    for bad in [
        stt.as_str(),
        "stt_guessed-guessed-guessed-guessed-guessed-gue",
        "",
    ] {
        let r = sso
            .authorize(
                &browser,
                "web",
                Some(bad).filter(|b| !b.is_empty()),
                None,
                &challenge,
            )
            .await;
        if bad.is_empty() {
            // No token at all: the live session signs in.
            assert!(r.param("code").is_some(), "{r:?}");
        } else {
            assert_eq!(r.param("error"), Some("login_required"), "{bad}: {r:?}");
            assert!(session_cookie(&r).is_none(), "nothing created");
        }
    }
    ws.assert_quiet().await;
    assert_eq!(
        sso.hub
            .app()
            .sessions
            .user_counts(&sso.hub.dev_iss(), "alice")
            .await
            .unwrap()
            .1,
        1,
        "one web session, still live"
    );
}

#[tokio::test]
async fn a_transfer_token_is_redeemed_exactly_once_under_concurrency() {
    let sso = Sso::start().await;
    let refresh = sso.native_login("native", "alice").await;
    for _round in 0..5 {
        let stt = sso.stt("native", &refresh).await;
        let (_, challenge) = pkce();
        let fresh = Browser::default();
        let tries = (0..12).map(|_| sso.authorize(&fresh, "web", Some(&stt), None, &challenge));
        let results = futures_util::future::join_all(tries).await;
        let codes = results.iter().filter(|r| r.param("code").is_some()).count();
        let refused = results
            .iter()
            .filter(|r| r.param("error") == Some("login_required"))
            .count();
        assert_eq!((codes, refused), (1, 11));
    }
    let counted = |o: &str| format!("slo_hub_authorize_outcomes_total{{outcome=\"{o}\"}}");
    assert_eq!(sso.hub.metric(&counted("new_session")).await, 5.0);
    assert_eq!(sso.hub.metric(&counted("login_required")).await, 55.0);
    assert_eq!(
        sso.hub.metric("slo_hub_transfer_tokens_minted_total").await,
        5.0
    );
}

#[tokio::test]
async fn an_expired_transfer_token_is_refused() {
    let sso = Sso::with(|c| c.transfer.token_ttl_secs = 1).await;
    let refresh = sso.native_login("native", "alice").await;
    let (_, v) = sso.mint("native", &refresh).await;
    assert_eq!(v["expires_in"], 1);
    let stt = v["access_token"].as_str().unwrap();
    // Time must pass for a token to expire; nothing else is awaited here.
    tokio::time::sleep(Duration::from_millis(1_100)).await;
    let (_, challenge) = pkce();
    let r = sso
        .authorize(&Browser::default(), "web", Some(stt), None, &challenge)
        .await;
    assert_eq!(r.param("error"), Some("login_required"));
    assert!(
        r.param("error_description").unwrap().contains("expired"),
        "{r:?}"
    );
}

#[tokio::test]
async fn a_transfer_token_is_bound_to_the_minting_ip() {
    let sso = Sso::start().await;
    let refresh = sso.native_login("native", "alice").await;
    let (_, challenge) = pkce();
    // Minted from 127.0.0.1, redeemed from 127.0.0.2: another device.
    let stt = sso.stt("native", &refresh).await;
    let elsewhere = Browser {
        from: Some("127.0.0.2".parse().unwrap()),
        ..Browser::default()
    };
    let r = sso
        .authorize(&elsewhere, "web", Some(&stt), None, &challenge)
        .await;
    assert_eq!(r.param("error"), Some("login_required"), "{r:?}");
    assert!(
        r.param("error_description")
            .unwrap()
            .contains("another device")
    );
    // A spoofed X-Forwarded-For from an untrusted peer changes nothing.
    let stt = sso.stt("native", &refresh).await;
    let r = sso
        .authorize_to(
            &elsewhere,
            "web",
            CB,
            Some(&stt),
            None,
            &challenge,
            Some("127.0.0.1"),
        )
        .await;
    assert_eq!(r.param("error"), Some("login_required"), "{r:?}");
    // `enforce_device_binding = "none"` accepts any address.
    let sso =
        Sso::with(|c| c.clients[5].enforce_device_binding = slo_hub::config::DeviceBinding::None)
            .await;
    let refresh = sso.native_login("native", "alice").await;
    let stt = sso.stt("native", &refresh).await;
    let r = sso
        .authorize(&elsewhere, "web", Some(&stt), None, &challenge)
        .await;
    assert!(r.param("code").is_some(), "{r:?}");
}

#[tokio::test]
async fn behind_a_trusted_proxy_the_forwarded_address_is_bound() {
    let sso = Sso::with(|c| c.transfer.trusted_proxies = vec!["127.0.0.1".into()]).await;
    let refresh = sso.native_login("native", "alice").await;
    let body = json!({"grant_type": "refresh_token", "client_id": "native",
        "refresh_token": refresh, "audience": AUD});
    let (_, challenge) = pkce();
    let (_, v) = sso
        .token_from(None, body.clone(), Some("203.0.113.5"))
        .await;
    let stt = v["access_token"].as_str().unwrap().to_string();
    let b = Browser::default();
    let r = sso
        .authorize_to(
            &b,
            "web",
            CB,
            Some(&stt),
            None,
            &challenge,
            Some("203.0.113.6"),
        )
        .await;
    assert_eq!(r.param("error"), Some("login_required"), "{r:?}");
    let (_, v) = sso.token_from(None, body, Some("203.0.113.5")).await;
    let stt = v["access_token"].as_str().unwrap().to_string();
    let r = sso
        .authorize_to(
            &b,
            "web",
            CB,
            Some(&stt),
            None,
            &challenge,
            Some("10.0.0.1, 203.0.113.5"),
        )
        .await;
    assert!(r.param("code").is_some(), "{r:?}");
}

#[tokio::test]
async fn minting_is_refused_with_rfc6749_errors() {
    let sso = Sso::start().await;
    let refresh = sso.native_login("native", "alice").await;
    let weak = sso.native_login("native-weak", "alice").await;
    let cases = [
        (
            sso.mint("native-weak", &weak).await,
            400,
            "unauthorized_client",
        ),
        (sso.mint("native", "rt_unknown").await, 400, "invalid_grant"),
        (sso.mint("nobody", &refresh).await, 401, "invalid_client"),
        (sso.mint("web", &refresh).await, 400, "unauthorized_client"),
        (
            sso.mint("native-rotating", &refresh).await,
            400,
            "invalid_grant",
        ),
        (
            // RFC 8693 §2.2.2: an audience the hub does not serve.
            sso.token(json!({"grant_type": "refresh_token", "client_id": "native",
                "refresh_token": refresh, "audience": "urn:other"}))
                .await,
            400,
            "invalid_target",
        ),
        (
            sso.token(json!({"grant_type": "password", "client_id": "native"}))
                .await,
            400,
            "unsupported_grant_type",
        ),
        (
            sso.token(json!({"grant_type": "refresh_token", "client_id": "native"}))
                .await,
            400,
            "invalid_request",
        ),
    ];
    for (i, ((status, v), want_status, want)) in cases.into_iter().enumerate() {
        assert_eq!(
            (status, v["error"].as_str().unwrap()),
            (want_status, want),
            "case {i}: {v}"
        );
        assert!(
            v["error_description"]
                .as_str()
                .is_some_and(|d| !d.is_empty())
        );
    }
    // A form body naming a parameter twice.
    let (status, _, v) = sso
        .hub
        .post_body(
            "/oauth/token",
            "application/x-www-form-urlencoded",
            "grant_type=refresh_token&client_id=native&client_id=native-weak&refresh_token=x",
        )
        .await;
    assert_eq!(
        (status, v["error"].as_str()),
        (400, Some("invalid_request"))
    );
    // The form body works like JSON.
    let form = format!(
        "grant_type=refresh_token&client_id=native&refresh_token={refresh}&audience={}",
        urlencode(AUD)
    );
    let (status, _, v) = sso
        .hub
        .post_body("/oauth/token", "application/x-www-form-urlencoded", &form)
        .await;
    assert_eq!(status, 200, "{v}");
    let metric = sso
        .hub
        .metric("slo_hub_http_rejections_total{endpoint=\"oauth_token\",error=\"invalid_grant\"}")
        .await;
    assert!(metric >= 2.0, "{metric}");
}

fn urlencode(s: &str) -> String {
    form_urlencoded::byte_serialize(s.as_bytes()).collect()
}

#[tokio::test]
async fn nested_transfer_is_refused() {
    let sso = Sso::start().await;
    let (_, _, login) = sso.alice_on("web").await;
    // The web session's refresh token cannot mint...
    let web_rt = login.refresh_token.unwrap();
    let (status, v) = sso.mint("native", &web_rt).await;
    assert_eq!((status, v["error"].as_str()), (400, Some("invalid_grant")));
    assert!(
        v["error_description"].as_str().unwrap().contains("nested"),
        "{v}"
    );
    // ...nor its session token, exchanged as a subject token (RFC 8693
    // §2.2.2: an unacceptable subject token is invalid_request).
    let (status, v) = sso
        .token(json!({
            "grant_type": "urn:ietf:params:oauth:grant-type:token-exchange",
            "client_id": "native", "subject_token": login.token,
            "subject_token_type": "urn:ietf:params:oauth:token-type:access_token",
            "audience": AUD,
        }))
        .await;
    assert_eq!(
        (status, v["error"].as_str()),
        (400, Some("invalid_request"))
    );
    assert!(
        v["error_description"].as_str().unwrap().contains("nested"),
        "{v}"
    );
}

/// An exchange of an upstream token of the test issuer for a web session.
async fn exchanged_login(sso: &Sso, browser: &mut Browser, upstream: &str) -> WebLogin {
    let (status, v) = sso
        .token(json!({
            "grant_type": "urn:ietf:params:oauth:grant-type:token-exchange",
            "client_id": "native", "subject_token": upstream,
            "subject_token_type": "urn:ietf:params:oauth:token-type:access_token",
            "audience": AUD,
        }))
        .await;
    assert_eq!(status, 200, "{v}");
    sso.open_web(browser, "web", v["access_token"].as_str().unwrap())
        .await
}

/// Two issuers may both have an "alice"; they are two people. A user-wide
/// logout of one (through its hub session token) leaves the other alone.
#[tokio::test]
async fn users_of_two_issuers_with_one_sub_are_two_users() {
    let sso = Sso::start().await;
    let (_, _, dev_alice) = sso.alice_on("web").await;
    let upstream = hs256_token(json!({"sub": "alice", "sid": "up-a", "azp": "native"}));
    let test_alice = exchanged_login(&sso, &mut Browser::default(), &upstream).await;
    assert_ne!(
        claims(&dev_alice.token)["sub"],
        claims(&test_alice.token)["sub"]
    );
    let (mut dev_ws, _) = sso.hub.socket(&dev_alice.token).await;
    let (mut test_ws, _) = sso.hub.socket(&test_alice.token).await;
    let (status, v) = sso
        .hub
        .logout(&dev_alice.token, json!({"scope": "user"}))
        .await;
    assert_eq!((status, v["delivered"].as_u64()), (200, Some(1)), "{v}");
    assert_eq!(dev_ws.recv_json().await["type"], "logout");
    test_ws.assert_quiet().await;
}

/// RFC 8693: an upstream token of the native app mints directly; a
/// logout of that upstream session cascades to the web sessions.
#[tokio::test]
async fn token_exchange_mints_and_an_upstream_logout_cascades() {
    let sso = Sso::start().await;
    let upstream = hs256_token(json!({"sub": "carol", "sid": "up-1", "azp": "native"}));
    let (status, v) = sso
        .token(json!({
            "grant_type": "urn:ietf:params:oauth:grant-type:token-exchange",
            "client_id": "native", "subject_token": upstream,
            "subject_token_type": "urn:ietf:params:oauth:token-type:access_token",
            "audience": AUD,
        }))
        .await;
    assert_eq!(status, 200, "{v}");
    let stt = v["access_token"].as_str().unwrap();
    let mut browser = Browser::default();
    let login = sso.open_web(&mut browser, "web", stt).await;
    let (mut ws, _) = sso.hub.socket(&login.token).await;
    // The identity provider logs the upstream session out.
    let (status, _) = sso
        .hub
        .logout(API_KEY, json!({"iss": TEST_ISS, "sid": "up-1"}))
        .await;
    assert_eq!(status, 200);
    let msg = ws.recv_json().await;
    assert_eq!(
        (msg["type"].as_str(), msg["reason"].as_str()),
        (Some("logout"), Some("cascade"))
    );
    assert_eq!(msg["sid"], login.sid);
}

/// Revoking a native refresh token, with the native client cascading: the
/// web session ends live, its (online) refresh token dies with it, and the
/// answer lists what was revoked.
#[tokio::test]
async fn cascade_on_revokes_derived_web_sessions_live() {
    let sso = Sso::start().await;
    let (refresh, _, login) = sso.alice_on("web").await;
    let unused = sso.stt("native", &refresh).await;
    let (mut ws, _) = sso.hub.socket(&login.token).await;
    let v = sso
        .revoke(json!({"type": "refresh_token", "token": refresh}))
        .await;
    assert_eq!(revoked_counts(&v), (1, 1, 2, 1), "{v}");
    assert_eq!(v["web_sessions"][0], login.sid);
    let msg = ws.recv_json().await;
    assert_eq!(
        (msg["type"].as_str(), msg["reason"].as_str()),
        (Some("logout"), Some("session_revoked"))
    );
    // The session token no longer opens a socket; the refresh tokens are dead.
    let mut again = common::Ws::connect(&sso.hub.ws_url, None).await.unwrap();
    again
        .send_json(json!({"type": "auth", "token": login.token}))
        .await;
    assert_eq!(again.close_code().await, Some(4000));
    let (status, v) = sso
        .token(json!({"grant_type": "refresh_token", "client_id": "web",
            "refresh_token": login.refresh_token.unwrap()}))
        .await;
    assert_eq!((status, v["error"].as_str()), (400, Some("invalid_grant")));
    let (_, challenge) = pkce();
    let r = sso
        .authorize(&Browser::default(), "web", Some(&unused), None, &challenge)
        .await;
    assert_eq!(
        r.param("error"),
        Some("login_required"),
        "revoked parent voids the STT"
    );
    let (status, _) = sso.mint("native", &refresh).await;
    assert_eq!(status, 400);
}

#[tokio::test]
async fn cascade_off_keeps_web_sessions_but_voids_unused_transfer_tokens() {
    let sso = Sso::start().await;
    let refresh = sso.native_login("native-nocascade", "alice").await;
    let mut browser = Browser::default();
    let login = sso
        .open_web(
            &mut browser,
            "web",
            &sso.stt("native-nocascade", &refresh).await,
        )
        .await;
    let unused = sso.stt("native-nocascade", &refresh).await;
    let (mut ws, _) = sso.hub.socket(&login.token).await;
    let v = sso
        .revoke(json!({"type": "refresh_token", "token": refresh}))
        .await;
    assert_eq!(revoked_counts(&v), (0, 0, 1, 1), "{v}");
    ws.assert_quiet().await;
    let (_, challenge) = pkce();
    let r = sso
        .authorize(&Browser::default(), "web", Some(&unused), None, &challenge)
        .await;
    assert_eq!(r.param("error"), Some("login_required"));
    // The web session lives on: its cookie still signs in.
    let r = sso.authorize(&browser, "web", None, None, &challenge).await;
    assert!(r.param("code").is_some(), "{r:?}");
}

#[tokio::test]
async fn online_refresh_tokens_end_with_their_session_and_offline_ones_do_not() {
    let sso = Sso::start().await;
    let refresh = sso.native_login("native", "alice").await;
    for (client, survives) in [("web", false), ("web-offline", true)] {
        let mut browser = Browser::default();
        let login = sso
            .open_web(&mut browser, client, &sso.stt("native", &refresh).await)
            .await;
        let (mut ws, _) = sso.hub.socket(&login.token).await;
        let v = sso
            .revoke(json!({"type": "session", "id": login.sid}))
            .await;
        assert_eq!(v["revoked"]["web_sessions"], 1, "{v}");
        assert_eq!(
            v["revoked"]["refresh_tokens"],
            if survives { 0 } else { 1 },
            "{v}"
        );
        assert_eq!(ws.recv_json().await["reason"], "session_revoked");
        let (status, v) = sso
            .token(json!({"grant_type": "refresh_token", "client_id": client,
                "refresh_token": login.refresh_token.unwrap()}))
            .await;
        if survives {
            assert_eq!(status, 200, "{client}: {v}");
            // A new token of the same sid, issued after the logout, works.
            sso.hub.socket(v["access_token"].as_str().unwrap()).await;
        } else {
            assert_eq!(
                (status, v["error"].as_str()),
                (400, Some("invalid_grant")),
                "{client}"
            );
        }
    }
}

#[tokio::test]
async fn web_refresh_tokens_rotate_and_reuse_revokes_the_family() {
    let sso = Sso::start().await;
    let (_, _, login) = sso.alice_on("web").await;
    let first = login.refresh_token.unwrap();
    let body =
        |rt: &str| json!({"grant_type": "refresh_token", "client_id": "web", "refresh_token": rt});
    let (status, v) = sso.token(body(&first)).await;
    assert_eq!(status, 200, "{v}");
    let second = v["refresh_token"].as_str().unwrap().to_string();
    assert_ne!(second, first);
    assert_eq!(
        claims(v["access_token"].as_str().unwrap())["sid"],
        login.sid
    );
    // The retired token comes back: refused, and the family goes with it.
    let (status, v) = sso.token(body(&first)).await;
    assert_eq!((status, v["error"].as_str()), (400, Some("invalid_grant")));
    let (status, _) = sso.token(body(&second)).await;
    assert_eq!(status, 400, "the newer token was revoked too");
}

#[tokio::test]
async fn native_refresh_tokens_rotate_when_the_client_says_so() {
    let sso = Sso::start().await;
    let first = sso.native_login("native-rotating", "alice").await;
    let (status, v) = sso.mint("native-rotating", &first).await;
    assert_eq!(status, 200);
    let second = v["refresh_token"].as_str().unwrap().to_string();
    let mut browser = Browser::default();
    let login = sso
        .open_web(&mut browser, "web", v["access_token"].as_str().unwrap())
        .await;
    let (mut ws, _) = sso.hub.socket(&login.token).await;
    // Reuse of the rotated token: invalid_grant, and the native session
    // (cascading to the web session) is revoked.
    let (status, v) = sso.mint("native-rotating", &first).await;
    assert_eq!((status, v["error"].as_str()), (400, Some("invalid_grant")));
    assert_eq!(ws.recv_json().await["reason"], "refresh_token_reuse");
    assert_eq!(sso.mint("native-rotating", &second).await.0, 400);
}

#[tokio::test]
async fn an_expiring_web_session_is_pushed_at_that_moment() {
    let sso = Sso::start().await;
    let refresh = sso.native_login("native", "alice").await;
    let mut browser = Browser::default();
    let started = std::time::Instant::now();
    let login = sso
        .open_web(
            &mut browser,
            "web-short",
            &sso.stt("native", &refresh).await,
        )
        .await;
    let c = claims(&login.token);
    assert!(
        c["exp"].as_i64().unwrap() - c["iat"].as_i64().unwrap() <= 3,
        "{c}"
    );
    let (mut ws, _) = sso.hub.socket(&login.token).await;
    let msg = ws.recv_json().await;
    let after = started.elapsed();
    assert_eq!(
        (msg["type"].as_str(), msg["reason"].as_str()),
        (Some("logout"), Some("session_expired"))
    );
    assert!(
        after >= Duration::from_millis(1_900),
        "not before the deadline: {after:?}"
    );
    assert!(after < Duration::from_millis(2_000) + EVENT_TIMEOUT);
    let (_, challenge) = pkce();
    let r = sso
        .authorize(&browser, "web-short", None, None, &challenge)
        .await;
    assert_eq!(r.param("error"), Some("login_required"));
}

#[tokio::test]
async fn redirect_uri_and_client_are_checked_before_any_redirect() {
    let sso = Sso::start().await;
    let (_, challenge) = pkce();
    let b = Browser::default();
    for (client, uri) in [
        ("web", "https://evil.test/cb"),
        ("web", "https://web.test/cb/"),
        ("web", "https://web.test/cb?x=1"),
        ("nobody", CB),
        ("native", CB),
    ] {
        let r = sso
            .authorize_to(&b, client, uri, None, None, &challenge, None)
            .await;
        assert_eq!(r.status, 400, "{client} {uri}");
        assert!(r.location.is_none(), "never a redirect: {r:?}");
        assert!(r.body.contains("not valid"), "{}", r.body);
    }
    // RFC 6749 §3.1: a parameter given twice (here a second redirect_uri
    // that would win in a last-wins parser) is refused, not redirected.
    let query: String = form_urlencoded::Serializer::new(String::new())
        .extend_pairs([
            ("client_id", "web"),
            ("redirect_uri", CB),
            ("response_type", "code"),
            ("code_challenge", challenge.as_str()),
            ("code_challenge_method", "S256"),
            ("redirect_uri", "https://evil.test/cb"),
        ])
        .finish();
    let r = client_from(None)
        .get(format!("{}/authorize?{query}", sso.hub.url))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 400);
    assert!(r.headers().get("location").is_none());
    assert!(r.text().await.unwrap().contains("given twice"));
}

#[tokio::test]
async fn pkce_is_required_and_checked() {
    let sso = Sso::start().await;
    let refresh = sso.native_login("native", "alice").await;
    let b = Browser::default();
    let stt = sso.stt("native", &refresh).await;
    let r = sso.authorize(&b, "web", Some(&stt), None, "").await;
    assert_eq!(r.param("error"), Some("invalid_request"), "{r:?}");
    let stt = sso.stt("native", &refresh).await;
    let (_, challenge) = pkce();
    let r = sso.authorize(&b, "web", Some(&stt), None, &challenge).await;
    let code = r.param("code").unwrap();
    let (wrong_verifier, _) = pkce();
    let (status, v) = sso.exchange("web", code, &wrong_verifier).await;
    assert_eq!((status, v["error"].as_str()), (400, Some("invalid_grant")));
    assert!(
        v["error_description"]
            .as_str()
            .unwrap()
            .contains("code_verifier")
    );
    // The code was used up by the failed attempt.
    let (status, _) = sso.exchange("web", code, &wrong_verifier).await;
    assert_eq!(status, 400);
}

#[tokio::test]
async fn the_cookie_method_works_and_the_query_method_can_be_refused() {
    let sso = Sso::start().await;
    let refresh = sso.native_login("native", "alice").await;
    let b = Browser::default();
    let (verifier, challenge) = pkce();
    let stt = sso.stt("native", &refresh).await;
    let r = sso
        .authorize(&b, "web-cookie-only", Some(&stt), None, &challenge)
        .await;
    assert_eq!(r.param("error"), Some("invalid_request"), "{r:?}");
    // Refused for how it came, but presented: used up all the same.
    let r = sso
        .authorize(&b, "web-cookie-only", None, Some(&stt), &challenge)
        .await;
    assert_eq!(r.param("error"), Some("login_required"), "{r:?}");
    let stt = sso.stt("native", &refresh).await;
    let r = sso
        .authorize(&b, "web-cookie-only", None, Some(&stt), &challenge)
        .await;
    let code = r.param("code").unwrap_or_else(|| panic!("{r:?}"));
    assert!(
        r.set_cookies
            .iter()
            .any(|c| c.starts_with("session_transfer_token=;") && c.contains("Max-Age=0")),
        "the used cookie is cleared: {:?}",
        r.set_cookies
    );
    assert!(
        r.set_cookies
            .iter()
            .any(|c| c.starts_with("slo_hub_session=") && c.contains("HttpOnly"))
    );
    assert_eq!(
        sso.exchange("web-cookie-only", code, &verifier).await.0,
        200
    );
}

#[tokio::test]
async fn transfer_tokens_open_only_the_web_clients_allowed() {
    let sso = Sso::start().await;
    let refresh = sso.native_login("native-to-other", "alice").await;
    let (_, challenge) = pkce();
    let stt = sso.stt("native-to-other", &refresh).await;
    let r = sso
        .authorize(&Browser::default(), "web", Some(&stt), None, &challenge)
        .await;
    assert_eq!(r.param("error"), Some("login_required"), "{r:?}");
    let stt = sso.stt("native-to-other", &refresh).await;
    let r = sso
        .authorize(
            &Browser::default(),
            "web-other",
            Some(&stt),
            None,
            &challenge,
        )
        .await;
    assert!(r.param("code").is_some(), "{r:?}");
}

#[tokio::test]
async fn revoking_a_user_ends_every_session_and_answers_precisely() {
    let sso = Sso::start().await;
    let refresh = sso.native_login("native", "alice").await;
    let mut sockets = Vec::new();
    for _ in 0..2 {
        let mut browser = Browser::default();
        let login = sso
            .open_web(&mut browser, "web", &sso.stt("native", &refresh).await)
            .await;
        sockets.push(sso.hub.socket(&login.token).await.0);
    }
    let v = sso.revoke(json!({"type": "user", "sub": "alice"})).await;
    assert_eq!(v["revoked"]["web_sessions"], 2, "{v}");
    for ws in &mut sockets {
        assert_eq!(ws.recv_json().await["reason"], "session_revoked");
    }
    // Malformed revocations: precise 400s; no key: 401; a weak key: 403.
    for (body, code) in [
        (json!({"type": "session"}), 400),
        (
            json!({"type": "refresh_token", "id": "a", "token": "b"}),
            400,
        ),
        (json!({"type": "everything"}), 400),
    ] {
        let (status, _, v) = sso.post_revocation(body.clone()).await;
        assert_eq!(status, code, "{body}: {v}");
    }
    let r = sso
        .hub
        .http
        .post(format!("{}/v1/revocations", sso.hub.url))
        .bearer_auth(common::WEAK_API_KEY)
        .json(&json!({"type": "user", "sub": "alice"}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 403);
}

/// Transfer-token use, sessions and revocations survive a restart.
#[tokio::test]
async fn the_session_graph_survives_a_restart() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().to_path_buf();
    let start = || {
        let path = path.clone();
        async move {
            Sso {
                hub: TestHub::with(move |c| {
                    clients(c);
                    c.data_dir = path;
                })
                .await,
            }
        }
    };
    let sso = start().await;
    let refresh = sso.native_login("native", "alice").await;
    let used = sso.stt("native", &refresh).await;
    let pending = sso.stt("native", &refresh).await;
    let mut browser = Browser::default();
    sso.open_web(&mut browser, "web", &used).await;
    sso.hub.shutdown().await;

    let sso = start().await;
    let (_, challenge) = pkce();
    let r = sso
        .authorize(&Browser::default(), "web", Some(&used), None, &challenge)
        .await;
    assert_eq!(
        r.param("error"),
        Some("login_required"),
        "still used after restart"
    );
    let r = sso.authorize(&browser, "web", None, None, &challenge).await;
    assert!(r.param("code").is_some(), "the web session survived: {r:?}");
    let v = sso
        .revoke(json!({"type": "refresh_token", "token": refresh}))
        .await;
    assert_eq!(v["revoked"]["web_sessions"], 1, "{v}");
    assert_eq!(v["revoked"]["transfer_tokens"], 1, "the pending one: {v}");
    sso.hub.shutdown().await;

    let sso = start().await;
    assert_eq!(
        sso.mint("native", &refresh).await.0,
        400,
        "revoked after restart"
    );
    let r = sso
        .authorize(&Browser::default(), "web", Some(&pending), None, &challenge)
        .await;
    assert_eq!(r.param("error"), Some("login_required"));
}

/// The hub never writes a token to its logs: a real hub process at debug
/// level goes through mint, redemption by query parameter and by cookie,
/// code exchange, refresh and revocation; none of the secrets it handed out
/// or was handed appears in what it printed.
#[tokio::test]
async fn no_token_reaches_the_logs() {
    slo_hub::auth::crypto::install();
    let dir = tempfile::tempdir().unwrap();
    let listen = format!("127.0.0.1:{}", common::free_port());
    // With the demo apps on, app-a is a registered web client.
    let (port_a, port_b) = (common::free_port(), common::free_port());
    let redirect = format!("http://127.0.0.1:{port_a}/");
    let hub = tokio::task::spawn_blocking({
        let path = dir.path().to_path_buf();
        let listen = listen.clone();
        move || {
            let env = [
                ("RUST_LOG", "debug"),
                ("SLO_HUB_DEV__DEMO_A_PORT", &port_a.to_string()),
                ("SLO_HUB_DEV__DEMO_B_PORT", &port_b.to_string()),
            ];
            common::process::Running::start(&["--listen", &listen], &env, &path)
        }
    })
    .await
    .unwrap();
    let base = format!("http://{listen}");
    let http = client_from(None);
    let post = |path: &str, body: Value| http.post(format!("{base}{path}")).json(&body).send();
    let mut secrets = Vec::new();
    let v: Value = post("/dev/native-session", json!({"sub": "alice"}))
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let refresh = v["refresh_token"].as_str().unwrap().to_string();
    secrets.push(refresh.clone());
    for by_cookie in [false, true] {
        let v: Value = post(
            "/oauth/token",
            json!({"grant_type": "refresh_token", "client_id": "native-sim",
                "refresh_token": refresh, "audience": AUD}),
        )
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
        let stt = v["access_token"].as_str().unwrap().to_string();
        secrets.push(stt.clone());
        let (verifier, challenge) = pkce();
        let mut req = http.get(format!(
            "{base}/authorize?client_id=app-a&redirect_uri={}&response_type=code&code_challenge={challenge}&code_challenge_method=S256{}",
            urlencode(&redirect),
            if by_cookie { String::new() } else { format!("&session_transfer_token={stt}") }
        ));
        if by_cookie {
            req = req.header("cookie", format!("session_transfer_token={stt}"));
        }
        let r = req.send().await.unwrap();
        let location = r.headers()["location"].to_str().unwrap().to_string();
        let code = form_urlencoded::parse(location.split_once('?').unwrap().1.as_bytes())
            .find(|(k, _)| k == "code")
            .unwrap_or_else(|| panic!("{location}"))
            .1
            .into_owned();
        for c in r.headers().get_all("set-cookie") {
            let v = c.to_str().unwrap().split(';').next().unwrap();
            if let Some(value) = v.strip_prefix("slo_hub_session=").filter(|v| v.len() > 20) {
                secrets.push(value.to_string());
            }
        }
        secrets.push(code.clone());
        let v: Value = post(
            "/oauth/token",
            json!({"grant_type": "authorization_code", "client_id": "app-a", "code": code,
                "redirect_uri": redirect, "code_verifier": verifier}),
        )
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
        secrets.push(v["access_token"].as_str().unwrap().to_string());
        secrets.push(v["refresh_token"].as_str().unwrap().to_string());
    }
    // Refused requests carrying secrets are logged too (as reasons only).
    let r = post(
        "/oauth/token",
        json!({"grant_type": "refresh_token", "client_id": "native-sim",
            "refresh_token": "rt_not-a-real-one-but-secret", "audience": AUD}),
    )
    .await
    .unwrap();
    assert_eq!(r.status(), 400);
    secrets.push("rt_not-a-real-one-but-secret".into());
    assert!(secrets.len() >= 10, "{secrets:?}");
    let r = http
        .post(format!("{base}/oauth/revoke"))
        .form(&[("token", refresh.as_str()), ("client_id", "native-sim")])
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    let (code, logs) = tokio::task::spawn_blocking(move || hub.terminate())
        .await
        .unwrap();
    assert_eq!(code, 0);
    assert!(
        logs.contains("DEBUG") || logs.contains("debug"),
        "debug logging was on: {logs}"
    );
    for s in &secrets {
        assert!(
            !logs.contains(s.as_str()),
            "a token is in the logs:\n{logs}"
        );
        // Nor a recognisable part of it.
        assert!(
            !logs.contains(&s[4..20]),
            "part of a token is in the logs:\n{logs}"
        );
    }
}

#[tokio::test]
async fn asn_binding_accepts_another_address_of_the_same_network_only() {
    let sso = Sso::with(|c| {
        c.transfer.asn_ranges = vec![
            slo_hub::config::AsnRange {
                cidr: "127.0.0.0/30".into(),
                asn: 64500,
            },
            slo_hub::config::AsnRange {
                cidr: "127.0.0.4/30".into(),
                asn: 64501,
            },
        ];
        c.clients[5].enforce_device_binding = slo_hub::config::DeviceBinding::Asn;
    })
    .await;
    let refresh = sso.native_login("native", "alice").await;
    let (_, challenge) = pkce();
    let at = |ip: &str| Browser {
        from: Some(ip.parse().unwrap()),
        ..Browser::default()
    };
    let stt = sso.stt("native", &refresh).await;
    let r = sso
        .authorize(&at("127.0.0.5"), "web", Some(&stt), None, &challenge)
        .await;
    assert_eq!(
        r.param("error"),
        Some("login_required"),
        "another ASN: {r:?}"
    );
    let stt = sso.stt("native", &refresh).await;
    let r = sso
        .authorize(&at("127.0.0.2"), "web", Some(&stt), None, &challenge)
        .await;
    assert!(r.param("code").is_some(), "same ASN: {r:?}");
}

/// An RFC 8693 exchange by `client` (JSON body): status and answer.
async fn exchange_as(sso: &Sso, client: &str, subject: &str, extra: Value) -> (u16, Value) {
    let mut body = json!({
        "grant_type": TOKEN_EXCHANGE, "client_id": client,
        "subject_token": subject, "subject_token_type": ACCESS_TOKEN_TYPE,
        "audience": AUD,
    });
    for (k, v) in extra.as_object().unwrap() {
        if v.is_null() {
            body.as_object_mut().unwrap().remove(k);
        } else {
            body[k] = v.clone();
        }
    }
    sso.token(body).await
}

/// A leaked token of some SPA, or of another app, opens no web session: the
/// subject token must have been issued to the exchanging client (or to a
/// client it lists).
#[tokio::test]
async fn token_exchange_accepts_only_subject_tokens_issued_to_the_client() {
    let sso = Sso::start().await;
    for claims in [
        json!({"sid": "s1", "azp": "some-spa"}),
        json!({"sid": "s2", "client_id": "some-spa"}),
        json!({"sid": "s3"}),
    ] {
        let leaked = hs256_token(claims.clone());
        let (status, v) = exchange_as(&sso, "native", &leaked, json!({})).await;
        assert_eq!(
            (status, v["error"].as_str()),
            (400, Some("invalid_request")),
            "{claims}: {v}"
        );
        let (status, _) = exchange_as(
            &sso,
            "native",
            &leaked,
            json!({"requested_token_type": "urn:ietf:params:oauth:token-type:refresh_token", "audience": null}),
        )
        .await;
        assert_eq!(status, 400, "{claims}: no refresh token either");
    }
    for (claims, client) in [
        (json!({"sid": "s4", "azp": "native"}), "native"),
        (json!({"sid": "s5", "client_id": "native"}), "native"),
        (json!({"sid": "s6", "aud": [TEST_AUD, "native"]}), "native"),
        (
            json!({"sid": "s7", "azp": "partner-app"}),
            "native-trusting",
        ),
    ] {
        let (status, v) = exchange_as(&sso, client, &hs256_token(claims.clone()), json!({})).await;
        assert_eq!(status, 200, "{claims}: {v}");
    }
}

/// A 3-second access token does not become a 30-day hub refresh token:
/// what an exchange yields ends when the subject token does (unless the
/// client says otherwise), and with the upstream session's logout.
#[tokio::test]
async fn what_a_token_exchange_yields_never_outlives_the_subject_token() {
    let sso = Sso::start().await;
    let now = slo_hub::util::now_secs();
    let short = hs256_token(json!({"sid": "short-1", "azp": "native", "exp": now + 2}));
    let refresh_type = "urn:ietf:params:oauth:token-type:refresh_token";
    let (status, v) = exchange_as(
        &sso,
        "native",
        &short,
        json!({"requested_token_type": refresh_type, "audience": null}),
    )
    .await;
    assert_eq!(status, 200, "{v}");
    assert!(v["expires_in"].as_i64().unwrap() <= 2, "{v}");
    let hub_refresh = v["access_token"].as_str().unwrap().to_string();
    assert_eq!(
        sso.mint("native", &hub_refresh).await.0,
        200,
        "works while the subject does"
    );
    // A client that says so keeps its session past the subject token.
    let partner = hs256_token(json!({"sid": "short-2", "azp": "partner-app", "exp": now + 2}));
    let (status, v) = exchange_as(
        &sso,
        "native-trusting",
        &partner,
        json!({"requested_token_type": refresh_type, "audience": null}),
    )
    .await;
    assert_eq!(status, 200, "{v}");
    let long_refresh = v["access_token"].as_str().unwrap().to_string();
    // The subject tokens' time passes.
    let wait_ms = (now as i64 + 2) * 1000 - slo_hub::util::now_ms() + 50;
    tokio::time::sleep(Duration::from_millis(wait_ms.max(0) as u64)).await;
    let (status, v) = sso.mint("native", &hub_refresh).await;
    assert_eq!(
        (status, v["error"].as_str()),
        (400, Some("invalid_grant")),
        "{v}"
    );
    assert_eq!(sso.mint("native-trusting", &long_refresh).await.0, 200);
    // ...but not past its upstream session's logout.
    let (status, _) = sso
        .hub
        .logout(API_KEY, json!({"iss": TEST_ISS, "sid": "short-2"}))
        .await;
    assert_eq!(status, 200);
    assert_eq!(sso.mint("native-trusting", &long_refresh).await.0, 400);
}

/// A confidential client authenticates every token request: by HTTP Basic,
/// by `client_secret`, or not at all, which is `invalid_client`.
#[tokio::test]
async fn a_confidential_client_must_authenticate() {
    let sso = Sso::start().await;
    let subject = hs256_token(json!({"sid": "c1", "azp": "native-secret"}));
    let body = json!({
        "grant_type": TOKEN_EXCHANGE, "subject_token": subject,
        "subject_token_type": ACCESS_TOKEN_TYPE, "audience": AUD,
    });
    let with = |extra: Value| common::with_overrides(body.clone(), &extra);
    let (status, v) = sso.token(with(json!({"client_id": "native-secret"}))).await;
    assert_eq!(
        (status, v["error"].as_str()),
        (401, Some("invalid_client")),
        "{v}"
    );
    let (status, v) = sso
        .token(with(
            json!({"client_id": "native-secret", "client_secret": "wrong"}),
        ))
        .await;
    assert_eq!(
        (status, v["error"].as_str()),
        (401, Some("invalid_client")),
        "{v}"
    );
    let (status, v) = sso
        .token(with(
            json!({"client_id": "native-secret", "client_secret": CLIENT_SECRET}),
        ))
        .await;
    assert_eq!(status, 200, "client_secret_post: {v}");
    // client_secret_basic, with the 401's challenge when it is wrong.
    for (secret, want) in [("wrong", 401), (CLIENT_SECRET, 200)] {
        let r = client_from(None)
            .post(format!("{}/oauth/token", sso.hub.url))
            .basic_auth("native-secret", Some(secret))
            .json(&body)
            .send()
            .await
            .unwrap();
        assert_eq!(r.status().as_u16(), want);
        if want == 401 {
            assert!(
                r.headers()["www-authenticate"]
                    .to_str()
                    .unwrap()
                    .starts_with("Basic")
            );
        }
    }
    // Its refresh tokens cannot be used without its credentials either.
    let (status, v) = sso
        .token(with(json!({
            "client_id": "native-secret", "client_secret": CLIENT_SECRET,
            "requested_token_type": "urn:ietf:params:oauth:token-type:refresh_token",
            "audience": null,
        })))
        .await;
    assert_eq!(status, 200, "{v}");
    let rt = v["access_token"].as_str().unwrap();
    assert_eq!(sso.mint("native-secret", rt).await.0, 401);
}

/// `private_key_jwt` (RFC 7523): an assertion signed by the client's key,
/// for the hub, short-lived, used once.
#[tokio::test]
async fn private_key_jwt_authenticates_a_client_once_per_assertion() {
    let (key, jwk) = common::ec_key("client-k1");
    let sso = Sso::with(|c| {
        c.clients.push(native("native-keyed", |c| {
            c.client_keys = vec![slo_hub::config::StaticKey {
                kid: None,
                pem: None,
                jwk: Some(jwk.to_string()),
            }]
        }))
    })
    .await;
    let now = slo_hub::util::now_secs();
    let assertion = |aud: &str, jti: &str, exp: u64| {
        common::es256(
            &key,
            "client-k1",
            &json!({"iss": "native-keyed", "sub": "native-keyed", "aud": aud,
                    "jti": jti, "iat": now, "exp": exp}),
        )
    };
    let endpoint = format!("{}/oauth/token", sso.hub.url);
    let subject = hs256_token(json!({"sid": "k1", "azp": "native-keyed"}));
    let request = |a: String| {
        json!({
            "grant_type": TOKEN_EXCHANGE, "subject_token": subject,
            "subject_token_type": ACCESS_TOKEN_TYPE, "audience": AUD,
            "client_assertion_type": "urn:ietf:params:oauth:client-assertion-type:jwt-bearer",
            "client_assertion": a,
        })
    };
    let good = assertion(&endpoint, "j1", now + 60);
    let (status, v) = sso.token(request(good.clone())).await;
    assert_eq!(status, 200, "{v}");
    let (status, v) = sso.token(request(good)).await;
    assert_eq!(
        (status, v["error"].as_str()),
        (401, Some("invalid_client")),
        "a replay: {v}"
    );
    for (bad, why) in [
        (
            assertion("https://elsewhere", "j2", now + 60),
            "another audience",
        ),
        (assertion(&endpoint, "j3", now + 3600), "an hour long"),
        (assertion(&endpoint, "j4", now - 60), "expired"),
        (
            common::es256(
                &common::ec_key("client-k1").0,
                "client-k1",
                &json!({"iss": "native-keyed", "sub": "native-keyed", "aud": endpoint,
                        "jti": "j5", "exp": now + 60}),
            ),
            "another key",
        ),
    ] {
        let (status, v) = sso.token(request(bad)).await;
        assert_eq!(
            (status, v["error"].as_str()),
            (401, Some("invalid_client")),
            "{why}: {v}"
        );
    }
}

/// Silent SSO lets a second client join a web session. When the session
/// ends, the joined client's online refresh tokens end with it, whatever
/// the creating client's own rule is.
#[tokio::test]
async fn a_joined_clients_online_refresh_tokens_end_with_the_session() {
    let sso = Sso::start().await;
    let refresh = sso.native_login("native", "alice").await;
    let mut browser = Browser::default();
    // Created by a client whose refresh tokens are offline...
    let first = sso
        .open_web(
            &mut browser,
            "web-offline",
            &sso.stt("native", &refresh).await,
        )
        .await;
    // ...joined by `web` (online) through the session cookie.
    let (verifier, challenge) = pkce();
    let r = sso.authorize(&browser, "web", None, None, &challenge).await;
    let code = r.param("code").expect("silent SSO");
    let (status, v) = sso.exchange("web", code, &verifier).await;
    assert_eq!(status, 200, "{v}");
    assert_eq!(v["session_id"], first.sid, "the same session");
    let joined_refresh = v["refresh_token"].as_str().unwrap().to_string();
    sso.revoke(json!({"type": "session", "id": first.sid}))
        .await;
    let (status, v) = sso
        .token(json!({"grant_type": "refresh_token", "client_id": "web",
            "refresh_token": joined_refresh}))
        .await;
    assert_eq!(
        (status, v["error"].as_str()),
        (400, Some("invalid_grant")),
        "{v}"
    );
    // The creator's offline token lives on, as its client says.
    let (status, v) = sso
        .token(
            json!({"grant_type": "refresh_token", "client_id": "web-offline",
            "refresh_token": first.refresh_token.unwrap()}),
        )
        .await;
    assert_eq!(status, 200, "{v}");
}

/// A second native session of the same user redeemed into the browser's
/// live web session (outcome 2) is one of its parents: revoking it ends
/// the web session, as revoking the first would.
#[tokio::test]
async fn a_web_session_ends_when_any_native_session_that_joined_it_is_revoked() {
    let sso = Sso::start().await;
    let phone = sso.native_login("native", "alice").await;
    let tablet = sso.native_login("native", "alice").await;
    let mut browser = Browser::default();
    let login = sso
        .open_web(&mut browser, "web", &sso.stt("native", &phone).await)
        .await;
    let again = sso
        .open_web(&mut browser, "web", &sso.stt("native", &tablet).await)
        .await;
    assert_eq!(again.sid, login.sid, "outcome 2: the session is reused");
    let (mut ws, _) = sso.hub.socket(&login.token).await;
    let v = sso
        .revoke(json!({"type": "refresh_token", "token": tablet}))
        .await;
    assert_eq!(revoked_counts(&v).0, 1, "{v}");
    let msg = ws.recv_json().await;
    assert_eq!(
        (msg["type"].as_str(), msg["sid"].as_str()),
        (Some("logout"), Some(login.sid.as_str()))
    );
    let (_, challenge) = pkce();
    let r = sso.authorize(&browser, "web", None, None, &challenge).await;
    assert_eq!(r.param("error"), Some("login_required"));
}

/// RFC 7636 §4.1: a verifier is 43 to 128 characters of the unreserved
/// set; anything else is a malformed request (and leaves the code usable).
#[tokio::test]
async fn pkce_verifiers_outside_rfc_7636_are_malformed_requests() {
    let sso = Sso::start().await;
    let refresh = sso.native_login("native", "alice").await;
    let stt = sso.stt("native", &refresh).await;
    let (verifier, challenge) = pkce();
    let r = sso
        .authorize(&Browser::default(), "web", Some(&stt), None, &challenge)
        .await;
    let code = r.param("code").unwrap().to_string();
    for bad in [
        "a".repeat(42),
        "a".repeat(129),
        format!("{}+/", "a".repeat(41)),
    ] {
        let (status, v) = sso.exchange("web", &code, &bad).await;
        assert_eq!(
            (status, v["error"].as_str()),
            (400, Some("invalid_request")),
            "{bad}: {v}"
        );
    }
    let (status, v) = sso.exchange("web", &code, &verifier).await;
    assert_eq!(status, 200, "{v}");
}

/// RFC 7009 §2.2.1: the revocation endpoint revokes refresh tokens; an
/// access or session token is `unsupported_token_type` (it ends by a
/// logout), never a silent 200.
#[tokio::test]
async fn revoking_an_access_token_says_unsupported_token_type() {
    let sso = Sso::start().await;
    let (_, _, login) = sso.alice_on("web").await;
    let (status, _, v) = sso
        .hub
        .post_body(
            "/oauth/revoke",
            "application/x-www-form-urlencoded",
            &format!("client_id=web&token={}", login.token),
        )
        .await;
    assert_eq!(
        (status, v["error"].as_str()),
        (400, Some("unsupported_token_type")),
        "{v}"
    );
}
