//! Several hub nodes on one real Redis (a `redis-server` this test starts on
//! an ephemeral port): a logout on any node reaches every node's sockets
//! once; Redis going away answers 503 and makes the nodes not ready; when
//! it is back they serve again and no logout from before is forgotten.

mod common;

use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use common::{API_KEY, TEST_ISS, TestHub, hs256_token};
use serde_json::json;

/// A redis-server of our own, persisting to `dir` (AOF, fsync always) so a
/// restart keeps what it had, as a production Redis would be configured.
struct Redis {
    child: Child,
    port: u16,
}

impl Redis {
    fn start(bin: &Path, dir: &Path, port: u16) -> Redis {
        let child = Command::new(bin)
            .args(["--bind", "127.0.0.1", "--port", &port.to_string()])
            .args([
                "--save",
                "",
                "--appendonly",
                "yes",
                "--appendfsync",
                "always",
            ])
            .arg("--dir")
            .arg(dir)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("redis-server starts");
        let deadline = Instant::now() + Duration::from_secs(10);
        while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
            assert!(Instant::now() < deadline, "redis-server did not listen");
            std::thread::sleep(Duration::from_millis(20));
        }
        Redis { child, port }
    }

    fn url(&self) -> String {
        format!("redis://127.0.0.1:{}/", self.port)
    }

    fn kill(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Drop for Redis {
    fn drop(&mut self) {
        self.kill();
    }
}

async fn node(url: &str) -> TestHub {
    let url = url.to_string();
    TestHub::with(move |c| c.cluster = Some(url)).await
}

async fn logout_alice(hub: &TestHub) -> (u16, serde_json::Value) {
    hub.logout(API_KEY, json!({"sub": "alice", "iss": TEST_ISS}))
        .await
}

/// Waits (bounded) until /readyz answers `want`.
async fn wait_ready(hub: &TestHub, want: u16) {
    let deadline = Instant::now() + Duration::from_secs(15);
    loop {
        let status = hub
            .http
            .get(format!("{}/readyz", hub.url))
            .send()
            .await
            .unwrap()
            .status()
            .as_u16();
        if status == want {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "/readyz stayed {status}, wanted {want}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn three_nodes_share_logouts_through_redis_and_survive_its_outage() {
    let Some(bin) = common::require_program("redis-server", &["/usr/bin/redis-server"]) else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let port = common::free_port();
    let mut redis = Redis::start(&bin, dir.path(), port);
    let nodes = [
        node(&redis.url()).await,
        node(&redis.url()).await,
        node(&redis.url()).await,
    ];

    // Alice on every node, Bob on node 3.
    let old = hs256_token(json!({"sub": "alice"}));
    let mut alice = Vec::new();
    for n in &nodes {
        alice.push(n.socket(&old).await.0);
    }
    let (mut bob, _) = nodes[2].socket(&hs256_token(json!({"sub": "bob"}))).await;

    let (status, body) = logout_alice(&nodes[0]).await;
    assert_eq!(status, 200, "{body}");
    for ws in &mut alice {
        assert_eq!(ws.recv_json().await["type"], "logout");
        // Exactly once: the next thing is the pong to our probe.
        ws.assert_quiet().await;
    }
    bob.assert_quiet().await;

    // Redis goes away: no 2xx for a logout that was not recorded, not ready.
    redis.kill();
    let (status, body) = nodes[1]
        .logout(API_KEY, json!({"sub": "bob", "iss": TEST_ISS}))
        .await;
    assert_eq!(status, 503, "{body}");
    assert!(
        body["message"].as_str().unwrap().contains("Redis"),
        "{body}"
    );
    for n in &nodes {
        wait_ready(n, 503).await;
    }

    // Back (same data): the nodes recover by themselves and serve again.
    let _redis = Redis::start(&bin, dir.path(), port);
    for n in &nodes {
        wait_ready(n, 200).await;
    }
    let (status, body) = nodes[1]
        .logout(API_KEY, json!({"sub": "bob", "iss": TEST_ISS}))
        .await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(bob.recv_json().await["type"], "logout");

    // Nothing from before the outage is forgotten: not by the nodes, and not
    // by a node that joins now and knows it only from Redis.
    let late = node(&redis_url(port)).await;
    for n in nodes.iter().chain([&late]) {
        let mut ws = common::Ws::connect(&n.ws_url, None).await.unwrap();
        ws.send_json(json!({"type": "auth", "token": old})).await;
        assert_eq!(ws.recv_json().await["type"], "logout");
        assert_eq!(ws.close_code().await, Some(4000));
    }
}

fn redis_url(port: u16) -> String {
    format!("redis://127.0.0.1:{port}/")
}
