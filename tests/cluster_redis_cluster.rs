//! Hub nodes on a real Redis Cluster (three masters, each with a replica,
//! made with `redis-cli --cluster create`): logouts and Native-to-Web SSO
//! across the nodes with keys spread over the shards, Pusher presence, and
//! the master that
//! holds the logout stream killed: its replica takes over, the nodes carry
//! on, and no logout answered 2xx is forgotten.

mod common;

use std::time::Duration;

use common::cluster::{Node, RedisCluster, exchange, pusher_config, redis_bin};
use common::pusher::{self, join, socket};
use common::sso::{CB, pkce};
use common::{API_KEY, TEST_ISS, Ws, hs256_token};
use serde_json::json;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nodes_on_a_redis_cluster_share_everything_and_survive_a_master_failover() {
    let Some(bin) = redis_bin() else { return };
    slo_hub::auth::crypto::install();
    let dir = tempfile::tempdir().unwrap();
    let mut redis = RedisCluster::start(&bin, dir.path(), 3, 1);
    let config = pusher_config(&redis.url());
    let n = [Node::start(&config), Node::start(&config)];

    // Logouts across the nodes, users' keys on every shard.
    let users: Vec<String> = (0..12).map(|i| format!("user-{i}")).collect();
    let mut sockets = Vec::new();
    for (i, u) in users.iter().enumerate() {
        let token = hs256_token(json!({"sub": u}));
        sockets.push((token.clone(), n[i % 2].socket(&token).await));
    }
    for (i, u) in users.iter().enumerate() {
        let (s, v) = n[(i + 1) % 2]
            .post(
                "/v1/logout",
                Some(API_KEY),
                json!({"sub": u, "iss": TEST_ISS}),
            )
            .await;
        assert_eq!((s, v["delivered"].as_u64()), (200, Some(1)), "{v}");
    }
    for (_, ws) in &mut sockets {
        assert_eq!(ws.recv_json().await["type"], "logout");
    }

    // Native-to-Web SSO: exchange on node 0, redeem and code on node 1.
    let stt = exchange(&n[0], "carol", "up-c").await;
    let stt = stt.as_str();
    let (verifier, challenge) = pkce();
    let q: String = form_urlencoded::Serializer::new(String::new())
        .extend_pairs([
            ("client_id", "web"),
            ("redirect_uri", CB),
            ("response_type", "code"),
            ("code_challenge", challenge.as_str()),
            ("code_challenge_method", "S256"),
            ("session_transfer_token", stt),
        ])
        .finish();
    let r = common::sso::client_from(None)
        .get(format!("{}/authorize?{q}", n[1].base))
        .send()
        .await
        .unwrap();
    let location = url::Url::parse(r.headers()["location"].to_str().unwrap()).unwrap();
    let code = location
        .query_pairs()
        .find(|(k, _)| k == "code")
        .map(|(_, v)| v.into_owned())
        .unwrap_or_else(|| panic!("{location}"));
    let (s, login) = n[1]
        .post(
            "/oauth/token",
            None,
            json!({"grant_type": "authorization_code", "client_id": "web", "code": code,
                   "redirect_uri": CB, "code_verifier": verifier}),
        )
        .await;
    assert_eq!(s, 200, "{login}");
    let mut web = n[0].socket(login["access_token"].as_str().unwrap()).await;

    // Pusher presence (one hash-tagged slot): joined on one node, seen on
    // the other, and its member_added crosses.
    let (mut p0, id0) = socket(&n[0].base).await;
    join(&mut p0, &id0, "presence-c", "ann").await;
    let (mut p1, id1) = socket(&n[1].base).await;
    let joined = join(&mut p1, &id1, "presence-c", "ben").await;
    assert_eq!(joined["presence"]["count"], 2, "{joined}");
    assert_eq!(
        p0.recv_json().await["event"],
        "pusher_internal:member_added"
    );
    assert_eq!(
        pusher::users(&n[0].base, "presence-c").await,
        ["ann", "ben"]
    );

    // The master holding the logout stream dies; its replica takes over.
    let victim = redis.master_of("slo:logouts");
    redis.fail_over(victim);
    // Both nodes serve again (they may need a moment to find the new master).
    for node in &n {
        node.wait_ready(200).await;
    }
    let mut served = false;
    for _ in 0..100 {
        let (s, _) = n[1]
            .post(
                "/v1/logout",
                Some(API_KEY),
                json!({"iss": TEST_ISS, "sid": "up-c"}),
            )
            .await;
        if s == 200 {
            served = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(served, "the nodes serve after the failover");
    let m = web.recv_json().await;
    assert_eq!(
        (m["type"].as_str(), m["reason"].as_str()),
        (Some("logout"), Some("cascade"))
    );
    // Nothing answered before the failover is forgotten.
    for (i, (token, _)) in sockets.iter().enumerate() {
        let mut ws = Ws::connect(&n[i % 2].ws_url(), None).await.unwrap();
        ws.send_json(json!({"type": "auth", "token": token})).await;
        assert_eq!(ws.recv_json().await["type"], "logout", "{}", users[i]);
    }
}
