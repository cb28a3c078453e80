//! The Pusher protocol on three hub processes sharing one real Redis, with
//! every socket and every HTTP call on another node: the real libraries'
//! scenario (the seed sample, private and presence channels, client
//! events, batch, sign-in, sendToUser, terminate, the logout bridge);
//! presence counted per user across nodes; a killed node's members removed.

mod common;

use std::time::{Duration, Instant};

use common::cluster::{Node, pusher_config, redis_bin, single_redis};
use common::pusher::{APP_ID, APP_SECRET, join, run_scenario, signed, socket, users};
use serde_json::{Value, json};

fn port(node: &Node) -> String {
    node.base.rsplit(':').next().unwrap().to_string()
}

/// The next event of `ws`, with its data parsed.
async fn next_event(ws: &mut common::Ws) -> (String, Value) {
    let m = ws.recv_json().await;
    let data = m["data"]
        .as_str()
        .and_then(|d| serde_json::from_str(d).ok())
        .unwrap_or(Value::Null);
    (m["event"].as_str().unwrap_or("").to_string(), data)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pusher_js_and_the_sdk_run_the_whole_scenario_across_three_nodes() {
    let Some(bin) = redis_bin() else { return };
    slo_hub::auth::crypto::install();
    let dir = tempfile::tempdir().unwrap();
    let redis = single_redis(&bin, dir.path());
    let config = pusher_config(&redis.url());
    let nodes = [
        Node::start(&config),
        Node::start(&config),
        Node::start(&config),
    ];
    let ports: Vec<String> = nodes.iter().map(port).collect();
    if run_scenario(&ports).await.is_none() {
        return;
    }
    // Everyone left: no node sees a member.
    for node in &nodes {
        assert!(users(&node.base, "presence-room").await.is_empty());
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_member_is_added_and_removed_once_whatever_node_their_sockets_are_on() {
    let Some(bin) = redis_bin() else { return };
    slo_hub::auth::crypto::install();
    let dir = tempfile::tempdir().unwrap();
    let redis = single_redis(&bin, dir.path());
    let config = pusher_config(&redis.url());
    let n = [
        Node::start(&config),
        Node::start(&config),
        Node::start(&config),
    ];
    let room = "presence-room";
    let (mut watcher, wid) = socket(&n[0].base).await;
    join(&mut watcher, &wid, room, "watcher").await;
    // Carol's first socket (node 1): one member_added on node 0.
    let (mut c1, id1) = socket(&n[1].base).await;
    let p = join(&mut c1, &id1, room, "carol").await;
    assert_eq!(p["presence"]["count"], 2, "{p}");
    let (event, data) = next_event(&mut watcher).await;
    assert_eq!(
        (event.as_str(), &data["user_id"]),
        ("pusher_internal:member_added", &json!("carol"))
    );
    // Her second socket (node 2) is not a new member.
    let (mut c2, id2) = socket(&n[2].base).await;
    let p = join(&mut c2, &id2, room, "carol").await;
    assert_eq!(p["presence"]["count"], 2, "{p}");
    // The first socket leaves: she is still there. Then the second leaves:
    // one member_removed. A marker event proves nothing came in between.
    c1.close().await;
    c2.close().await;
    let (event, data) = next_event(&mut watcher).await;
    assert_eq!(
        (event.as_str(), &data["user_id"]),
        ("pusher_internal:member_removed", &json!("carol"))
    );
    let body = json!({"name": "marker", "channel": room, "data": "{}"}).to_string();
    let path = format!("/apps/{APP_ID}/events");
    let url = format!(
        "{}{}",
        n[1].base,
        signed(
            "POST",
            &path,
            &body,
            slo_hub::util::now_secs(),
            APP_SECRET,
            &[]
        )
    );
    let r = reqwest::Client::new()
        .post(url)
        .header("content-type", "application/json")
        .body(body)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    let (event, _) = next_event(&mut watcher).await;
    assert_eq!(
        event, "marker",
        "nothing between the removal and the marker"
    );
    assert_eq!(users(&n[2].base, room).await, ["watcher"]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_killed_nodes_presence_members_are_removed_in_bounded_time() {
    let Some(bin) = redis_bin() else { return };
    slo_hub::auth::crypto::install();
    let dir = tempfile::tempdir().unwrap();
    let redis = single_redis(&bin, dir.path());
    let config = pusher_config(&redis.url());
    let survivor = Node::start(&config);
    let mut victim = Node::start(&config);
    let room = "presence-room";
    let (mut watcher, wid) = socket(&survivor.base).await;
    join(&mut watcher, &wid, room, "watcher").await;
    let (mut doomed, did) = socket(&victim.base).await;
    join(&mut doomed, &did, room, "dora").await;
    let (event, _) = next_event(&mut watcher).await;
    assert_eq!(event, "pusher_internal:member_added");
    assert_eq!(users(&survivor.base, room).await, ["dora", "watcher"]);

    let killed = Instant::now();
    victim.kill9();
    // The bound: the node's heartbeat lifetime (6 s) plus one sweep (2 s).
    let m = watcher.recv_json_within(Duration::from_secs(20)).await;
    let data: Value = serde_json::from_str(m["data"].as_str().unwrap_or("null")).unwrap();
    let event = m["event"].as_str().unwrap_or("").to_string();
    assert_eq!(
        (event.as_str(), &data["user_id"]),
        ("pusher_internal:member_removed", &json!("dora"))
    );
    eprintln!(
        "member of a killed node removed after {:?}",
        killed.elapsed()
    );
    assert_eq!(users(&survivor.base, room).await, ["watcher"]);
}

/// Webhooks on three nodes: each change of a presence channel is sent
/// once by the cluster, whichever nodes its sockets are on.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn webhooks_fire_once_per_cluster_not_once_per_node() {
    use common::pusher::{events_until, receiver};
    let Some(bin) = redis_bin() else { return };
    slo_hub::auth::crypto::install();
    let dir = tempfile::tempdir().unwrap();
    let redis = single_redis(&bin, dir.path());
    let (url, mut rx) = receiver(0).await;
    let config = pusher_config(&redis.url()).replacen(
        "enable_client_messages = true\n",
        &format!("enable_client_messages = true\nwebhooks = [{{ url = \"{url}\" }}]\n"),
        1,
    );
    let n = [
        Node::start(&config),
        Node::start(&config),
        Node::start(&config),
    ];
    let room = "presence-room";
    let mut seen = Vec::new();
    let (mut a1, id) = socket(&n[0].base).await;
    join(&mut a1, &id, room, "alice").await;
    events_until(&mut rx, &mut seen, 2).await;
    let (mut a2, id) = socket(&n[1].base).await;
    join(&mut a2, &id, room, "alice").await;
    let (mut b, id) = socket(&n[2].base).await;
    join(&mut b, &id, room, "bob").await;
    events_until(&mut rx, &mut seen, 3).await;
    b.close().await;
    events_until(&mut rx, &mut seen, 4).await;
    a1.close().await;
    a2.close().await;
    events_until(&mut rx, &mut seen, 6).await;
    let names: Vec<String> = seen
        .iter()
        .map(|e| format!("{} {}", e["name"], e["user_id"]))
        .collect();
    assert_eq!(
        names,
        [
            "\"channel_occupied\" null",
            "\"member_added\" \"alice\"",
            "\"member_added\" \"bob\"",
            "\"member_removed\" \"bob\"",
            "\"member_removed\" \"alice\"",
            "\"channel_vacated\" null",
        ]
    );
    // Nothing more comes: a marker channel's own events arrive next.
    let (mut m, id) = socket(&n[2].base).await;
    join(&mut m, &id, "presence-marker", "m").await;
    events_until(&mut rx, &mut seen, 8).await;
    assert_eq!(seen[6]["channel"], "presence-marker", "{seen:?}");
}
