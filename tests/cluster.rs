//! Several hub processes on one real Redis, as behind a round-robin
//! balancer without sticky sessions: every user path of the README with
//! each request and each socket on another node; Redis going away and
//! coming back; a node killed mid-load; a trigger whose caller goes away.
//! `cluster_redis_cluster.rs` runs the same on a Redis Cluster.

mod common;

use std::collections::HashSet;
use std::time::Duration;

use common::cluster::{
    ACCESS, EXCHANGE, Node, authorize, exchange, mint, node_config, redis_bin, single_redis,
};
use common::sso::{AUD, CB, pkce};
use common::{API_KEY, TEST_AUD, TEST_ISS, TEST_SECRET, Ws, forge, hs256_token};
use serde_json::{Value, json};

const REFRESH: &str = "urn:ietf:params:oauth:token-type:refresh_token";

async fn dev_token(node: &Node, sub: &str) -> String {
    let (s, v) = node.post("/dev/token", None, json!({"sub": sub})).await;
    assert_eq!(s, 200, "{v}");
    v["access_token"].as_str().unwrap().to_string()
}

fn logout_token(claims: Value) -> String {
    let now = slo_hub::util::now_secs();
    let mut c = json!({
        "iss": TEST_ISS, "aud": TEST_AUD, "iat": now, "exp": now + 120,
        "jti": slo_hub::util::random_id(),
        "events": {"http://schemas.openid.net/event/backchannel-logout": {}},
    });
    for (k, v) in claims.as_object().unwrap() {
        c[k] = v.clone();
    }
    forge(
        &json!({"alg": "HS256", "typ": "logout+jwt"}),
        &c,
        TEST_SECRET.as_bytes(),
    )
}

/// Reads the logout and acknowledges it.
async fn ack(ws: &mut Ws) {
    let m = ws.recv_json().await;
    ws.send_json(json!({"type": "ack", "id": m["id"]})).await;
}

async fn post_form(node: &Node, path: &str, ctype: &str, body: String) -> u16 {
    reqwest::Client::new()
        .post(format!("{}{path}", node.base))
        .header("content-type", ctype)
        .body(body)
        .send()
        .await
        .unwrap()
        .status()
        .as_u16()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_user_path_works_with_each_request_on_another_node() {
    let Some(bin) = redis_bin() else { return };
    slo_hub::auth::crypto::install();
    let dir = tempfile::tempdir().unwrap();
    let redis = single_redis(&bin, dir.path());
    let config = node_config(&redis.url(), "");
    let n = [
        Node::start(&config),
        Node::start(&config),
        Node::start(&config),
    ];

    // A user's own token (minted on node 1, socket on node 0, trigger on 2).
    let alice = dev_token(&n[1], "alice").await;
    let mut ws = n[0].socket(&alice).await;
    let (s, v) = n[2]
        .post("/v1/logout", Some(&alice), json!({"scope": "user"}))
        .await;
    assert_eq!(s, 200, "{v}");
    assert_eq!(ws.recv_json().await["type"], "logout");
    // ...and that token acts nowhere after it, on any node.
    let (s, _) = n[1]
        .post("/v1/logout", Some(&alice), json!({"scope": "user"}))
        .await;
    assert_eq!(s, 401);

    // An API key; a socket that missed it meets it on another node.
    let bob = hs256_token(json!({"sub": "bob"}));
    let mut ws = n[1].socket(&bob).await;
    let (s, v) = n[2]
        .post(
            "/v1/logout",
            Some(API_KEY),
            json!({"sub": "bob", "iss": TEST_ISS}),
        )
        .await;
    assert_eq!((s, v["delivered"].as_u64()), (200, Some(1)), "{v}");
    assert_eq!(ws.recv_json().await["type"], "logout");
    let mut again = Ws::connect(&n[0].ws_url(), None).await.unwrap();
    again.send_json(json!({"type": "auth", "token": bob})).await;
    assert_eq!(again.recv_json().await["type"], "logout");
    assert_eq!(again.close_code().await, Some(4000));

    // A trigger that waits for acks counts those of every node's sockets.
    let ivy = hs256_token(json!({"sub": "ivy"}));
    let mut near = n[0].socket(&ivy).await;
    let mut far = n[1].socket(&ivy).await;
    let trigger = n[0].post(
        "/v1/logout",
        Some(API_KEY),
        json!({"sub": "ivy", "iss": TEST_ISS, "wait_for_acks_ms": 3000}),
    );
    let ((s, v), (), ()) = tokio::join!(trigger, ack(&mut near), ack(&mut far));
    drop((near, far));
    assert_eq!(s, 200, "{v}");
    assert_eq!(
        (v["delivered"].as_u64(), v["acked"].as_u64()),
        (Some(2), Some(2)),
        "{v}"
    );

    // Native-to-Web SSO across the nodes: exchange on 0, mint on 1,
    // redeem on 2, code on 0, socket on 1; the native refresh token
    // revoked on 2 reaches the socket on 1.
    let upstream = hs256_token(json!({"sub": "carol", "sid": "up-1", "azp": "native"}));
    let (s, v) = n[0]
        .post(
            "/oauth/token",
            None,
            json!({"grant_type": EXCHANGE, "client_id": "native", "subject_token": upstream,
                   "subject_token_type": ACCESS, "requested_token_type": REFRESH}),
        )
        .await;
    assert_eq!(s, 200, "{v}");
    let refresh = v["access_token"].as_str().unwrap().to_string();
    let stt = mint(&n[1], &refresh).await;
    let (verifier, challenge) = pkce();
    let (code, err) = authorize(&n[2], "web", &stt, &challenge).await;
    let code = code.unwrap_or_else(|| panic!("{err:?}"));
    let (s, login) = n[0]
        .post(
            "/oauth/token",
            None,
            json!({"grant_type": "authorization_code", "client_id": "web", "code": code,
                   "redirect_uri": CB, "code_verifier": verifier}),
        )
        .await;
    assert_eq!(s, 200, "{login}");
    let session_token = login["access_token"].as_str().unwrap().to_string();
    let mut web = n[1].socket(&session_token).await;
    let (s, v) = n[2]
        .post(
            "/v1/revocations",
            Some(API_KEY),
            json!({"type": "refresh_token", "token": refresh}),
        )
        .await;
    assert_eq!(
        (s, v["revoked"]["web_sessions"].as_u64()),
        (200, Some(1)),
        "{v}"
    );
    assert_eq!(web.recv_json().await["type"], "logout");
    // The session token opens nothing anywhere any more.
    for node in &n {
        let mut ws = Ws::connect(&node.ws_url(), None).await.unwrap();
        ws.send_json(json!({"type": "auth", "token": session_token}))
            .await;
        assert_eq!(ws.recv_json().await["type"], "logout", "{}", node.base);
    }

    // One transfer token, 20 redemptions at once spread over the nodes:
    // exactly one code.
    let stt = exchange(&n[1], "dave", "up-2").await;
    let (_, challenge) = pkce();
    let redeems = (0..20).map(|i| {
        let (node, stt, challenge) = (&n[i % 3], stt.clone(), challenge.clone());
        async move { authorize(node, "web", &stt, &challenge).await.0 }
    });
    let codes: Vec<Option<String>> = futures_util::future::join_all(redeems).await;
    assert_eq!(codes.iter().filter(|c| c.is_some()).count(), 1, "{codes:?}");

    // Back-channel logout on 1 and CAEP on 0 reach sockets on the others.
    let erin = hs256_token(json!({"sub": "erin", "sid": "bc-1"}));
    let mut ws = n[2].socket(&erin).await;
    let token = logout_token(json!({"sid": "bc-1"}));
    let s = post_form(
        &n[1],
        "/v1/backchannel-logout",
        "application/x-www-form-urlencoded",
        format!("logout_token={token}"),
    )
    .await;
    assert_eq!(s, 200);
    assert_eq!(ws.recv_json().await["reason"], "backchannel_logout");
    // Replayed on another node: accepted, changes nothing.
    let before = hs256_token(json!({"sub": "erin", "sid": "bc-1"}));
    drop(before);
    assert_eq!(
        post_form(
            &n[0],
            "/v1/backchannel-logout",
            "application/x-www-form-urlencoded",
            format!("logout_token={token}")
        )
        .await,
        200
    );
    let frank = hs256_token(json!({"sub": "frank"}));
    let mut ws = n[1].socket(&frank).await;
    let now = slo_hub::util::now_secs();
    let set = forge(
        &json!({"alg": "HS256", "typ": "secevent+jwt"}),
        &json!({"iss": TEST_ISS, "aud": TEST_AUD, "iat": now, "jti": slo_hub::util::random_id(),
                "sub_id": {"format": "iss_sub", "iss": TEST_ISS, "sub": "frank"},
                "events": {"https://schemas.openid.net/secevent/caep/event-type/session-revoked": {}}}),
        TEST_SECRET.as_bytes(),
    );
    assert_eq!(
        post_form(&n[0], "/v1/events", "application/secevent+jwt", set).await,
        202
    );
    assert_eq!(ws.recv_json().await["reason"], "session_revoked");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn logouts_reach_every_node_and_survive_a_redis_outage() {
    let Some(bin) = redis_bin() else { return };
    slo_hub::auth::crypto::install();
    let dir = tempfile::tempdir().unwrap();
    let mut redis = single_redis(&bin, dir.path());
    let config = node_config(&redis.url(), "");
    let nodes = [
        Node::start(&config),
        Node::start(&config),
        Node::start(&config),
    ];

    // Bob connects before anything was ever logged out (an empty stream).
    let mut bob = nodes[2].socket(&hs256_token(json!({"sub": "bob"}))).await;
    // Alice on every node.
    let old = hs256_token(json!({"sub": "alice"}));
    let mut alice = Vec::new();
    for n in &nodes {
        alice.push(n.socket(&old).await);
    }
    let (status, body) = nodes[0]
        .post(
            "/v1/logout",
            Some(API_KEY),
            json!({"sub": "alice", "iss": TEST_ISS}),
        )
        .await;
    assert_eq!(status, 200, "{body}");
    for ws in &mut alice {
        assert_eq!(ws.recv_json().await["type"], "logout");
        // Exactly once: the next thing is the pong to our probe.
        ws.assert_quiet().await;
    }
    bob.assert_quiet().await;

    // Redis goes away: no 2xx for a logout that was not recorded, not
    // ready, and no new login while a node cannot check the watermarks.
    redis.kill();
    let (status, body) = nodes[1]
        .post(
            "/v1/logout",
            Some(API_KEY),
            json!({"sub": "bob", "iss": TEST_ISS}),
        )
        .await;
    assert_eq!(status, 503, "{body}");
    assert!(
        body["message"].as_str().unwrap().contains("Redis"),
        "{body}"
    );
    for n in &nodes {
        n.wait_ready(503).await;
    }
    let mut refused = Ws::connect(&nodes[0].ws_url(), None).await.unwrap();
    refused
        .send_json(json!({"type": "auth", "token": hs256_token(json!({"sub": "zoe"}))}))
        .await;
    assert_eq!(refused.close_code().await, Some(1013), "fail closed");

    // Back (same data): the nodes recover by themselves and serve again,
    // and Bob's socket was not sent away (nothing was missed).
    redis.restart(&bin, false);
    for n in &nodes {
        n.wait_ready(200).await;
    }
    let (status, body) = nodes[1]
        .post(
            "/v1/logout",
            Some(API_KEY),
            json!({"sub": "bob", "iss": TEST_ISS}),
        )
        .await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(bob.recv_json().await["type"], "logout");

    // Nothing from before the outage is forgotten: not by the nodes, and
    // not by a node that joins now and knows it only from Redis.
    let late = Node::start(&config);
    for n in nodes.iter().chain([&late]) {
        let mut ws = Ws::connect(&n.ws_url(), None).await.unwrap();
        ws.send_json(json!({"type": "auth", "token": old})).await;
        assert_eq!(ws.recv_json().await["type"], "logout");
        assert_eq!(ws.close_code().await, Some(4000));
    }
}

/// A node dies (-9) while triggers run on the others: every logout that
/// was answered 2xx is met by every socket when it reconnects elsewhere.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_killed_mid_load_loses_no_logout() {
    let Some(bin) = redis_bin() else { return };
    slo_hub::auth::crypto::install();
    let dir = tempfile::tempdir().unwrap();
    let redis = single_redis(&bin, dir.path());
    let config = node_config(&redis.url(), "");
    let mut nodes = [
        Node::start(&config),
        Node::start(&config),
        Node::start(&config),
    ];
    let users: Vec<String> = (0..30).map(|i| format!("u{i}")).collect();
    let tokens: Vec<String> = users
        .iter()
        .map(|u| hs256_token(json!({"sub": u})))
        .collect();
    let mut on_victim = Vec::new();
    for t in &tokens {
        on_victim.push(nodes[2].socket(t).await);
    }
    let triggers = users.iter().enumerate().map(|(i, u)| {
        let node = &nodes[i % 2];
        async move {
            let (s, _) = node
                .post(
                    "/v1/logout",
                    Some(API_KEY),
                    json!({"sub": u, "iss": TEST_ISS}),
                )
                .await;
            (u.clone(), s)
        }
    });
    let answered = futures_util::future::join_all(triggers);
    let (answered, ()) = tokio::join!(answered, async {
        tokio::time::sleep(Duration::from_millis(5)).await;
    });
    nodes[2].kill9();
    drop(on_victim);
    let logged_out: HashSet<String> = answered
        .into_iter()
        .filter(|(_, s)| *s == 200)
        .map(|(u, _)| u)
        .collect();
    assert_eq!(
        logged_out.len(),
        users.len(),
        "the surviving nodes answered"
    );
    for (i, (u, t)) in users.iter().zip(&tokens).enumerate() {
        let node = &nodes[i % 2];
        let mut ws = Ws::connect(&node.ws_url(), None).await.unwrap();
        ws.send_json(json!({"type": "auth", "token": t})).await;
        assert_eq!(ws.recv_json().await["type"], "logout", "{u}");
    }
}

/// Once a trigger is accepted it is carried out, whatever its caller does:
/// here the caller gives up (its own 300 ms timeout) while Redis is paused,
/// and the logout still reaches the other node and its follow-ups happen.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_trigger_whose_caller_goes_away_is_carried_out_completely() {
    let Some(bin) = redis_bin() else { return };
    slo_hub::auth::crypto::install();
    let dir = tempfile::tempdir().unwrap();
    let redis = single_redis(&bin, dir.path());
    let config = node_config(&redis.url(), "");
    let n = [Node::start(&config), Node::start(&config)];
    // A web session rooted at an upstream session; its socket on node 1.
    let upstream = hs256_token(json!({"sub": "gina", "sid": "up-9", "azp": "native"}));
    let (_, v) = n[0]
        .post(
            "/oauth/token",
            None,
            json!({"grant_type": EXCHANGE, "client_id": "native", "subject_token": upstream,
                   "subject_token_type": ACCESS, "audience": AUD}),
        )
        .await;
    let stt = v["access_token"].as_str().unwrap().to_string();
    let (verifier, challenge) = pkce();
    let code = authorize(&n[1], "web", &stt, &challenge).await.0.unwrap();
    let (_, login) = n[0]
        .post(
            "/oauth/token",
            None,
            json!({"grant_type": "authorization_code", "client_id": "web", "code": code,
                   "redirect_uri": CB, "code_verifier": verifier}),
        )
        .await;
    let mut web = n[1].socket(login["access_token"].as_str().unwrap()).await;
    let mut upstream_ws = n[1].socket(&upstream).await;

    // Redis stops answering writes; the caller times out and goes away.
    redis.cli(&["client", "pause", "1500", "write"]);
    let gone = reqwest::Client::builder()
        .timeout(Duration::from_millis(300))
        .build()
        .unwrap()
        .post(format!("{}/v1/logout", n[0].base))
        .bearer_auth(API_KEY)
        .json(&json!({"iss": TEST_ISS, "sid": "up-9"}))
        .send()
        .await;
    assert!(gone.is_err(), "the caller gave up before the answer");
    // Redis answers again: the logout is recorded, announced (node 1's
    // socket of the upstream session is told), and followed (the web
    // session rooted there is ended and pushed).
    assert_eq!(upstream_ws.recv_json().await["type"], "logout");
    let m = web.recv_json().await;
    assert_eq!(
        (m["type"].as_str(), m["reason"].as_str()),
        (Some("logout"), Some("cascade"))
    );
    let late = Node::start(&config);
    let mut ws = Ws::connect(&late.ws_url(), None).await.unwrap();
    ws.send_json(json!({"type": "auth", "token": upstream}))
        .await;
    assert_eq!(ws.recv_json().await["type"], "logout", "recorded durably");
}
