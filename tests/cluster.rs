//! Several hub processes on one real Redis (a `redis-server` this test
//! starts on an ephemeral port): a logout on any node reaches every node's
//! sockets once; Redis going away answers 503 and makes the nodes not ready;
//! when it is back they serve again and no logout from before is forgotten.

mod common;

use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use common::process::{Running, test_config_file};
use common::{API_KEY, TEST_ISS, Ws, hs256_token};
use serde_json::{Value, json};

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

/// A hub process (production mode) on the shared Redis, with the HS256 test
/// issuer and the test API key.
struct Node {
    process: Option<Running>,
    base: String,
    _dir: tempfile::TempDir,
    _cfg: tempfile::TempDir,
}

impl Node {
    fn start(redis_url: &str) -> Node {
        let listen = format!("127.0.0.1:{}", common::free_port());
        let (cfg, path) =
            test_config_file(&format!("listen = \"{listen}\"\ncluster = \"{redis_url}\""));
        let dir = tempfile::tempdir().unwrap();
        let process = Running::start(&["serve", "--config", &path], &[], dir.path());
        Node {
            process: Some(process),
            base: format!("http://{listen}"),
            _dir: dir,
            _cfg: cfg,
        }
    }

    fn ws_url(&self) -> String {
        format!("{}/v1/ws", self.base.replacen("http", "ws", 1))
    }

    async fn socket(&self, token: &str) -> Ws {
        let mut ws = Ws::connect(&self.ws_url(), None).await.unwrap();
        ws.send_json(json!({"type": "auth", "token": token})).await;
        assert_eq!(ws.recv_json().await["type"], "ready");
        ws
    }

    async fn logout(&self, sub: &str) -> (u16, Value) {
        let r = reqwest::Client::new()
            .post(format!("{}/v1/logout", self.base))
            .bearer_auth(API_KEY)
            .json(&json!({"sub": sub, "iss": TEST_ISS}))
            .send()
            .await
            .unwrap();
        let status = r.status().as_u16();
        (status, r.json().await.unwrap())
    }

    /// Waits (bounded) until /readyz answers `want`.
    async fn wait_ready(&self, want: u16) {
        let deadline = Instant::now() + Duration::from_secs(15);
        loop {
            let status = reqwest::get(format!("{}/readyz", self.base))
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
}

impl Drop for Node {
    fn drop(&mut self) {
        if let Some(p) = self.process.take() {
            p.kill9();
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn three_hub_processes_share_logouts_through_redis_and_survive_its_outage() {
    let Some(bin) = common::require_program("redis-server", &["/usr/bin/redis-server"]) else {
        return;
    };
    slo_hub::auth::crypto::install();
    let dir = tempfile::tempdir().unwrap();
    let port = common::free_port();
    let mut redis = Redis::start(&bin, dir.path(), port);
    let nodes = [
        Node::start(&redis.url()),
        Node::start(&redis.url()),
        Node::start(&redis.url()),
    ];

    // Alice on every node, Bob on node 3.
    let old = hs256_token(json!({"sub": "alice"}));
    let mut alice = Vec::new();
    for n in &nodes {
        alice.push(n.socket(&old).await);
    }
    let mut bob = nodes[2].socket(&hs256_token(json!({"sub": "bob"}))).await;

    let (status, body) = nodes[0].logout("alice").await;
    assert_eq!(status, 200, "{body}");
    for ws in &mut alice {
        assert_eq!(ws.recv_json().await["type"], "logout");
        // Exactly once: the next thing is the pong to our probe.
        ws.assert_quiet().await;
    }
    bob.assert_quiet().await;

    // Redis goes away: no 2xx for a logout that was not recorded, not ready.
    redis.kill();
    let (status, body) = nodes[1].logout("bob").await;
    assert_eq!(status, 503, "{body}");
    assert!(
        body["message"].as_str().unwrap().contains("Redis"),
        "{body}"
    );
    for n in &nodes {
        n.wait_ready(503).await;
    }

    // Back (same data): the nodes recover by themselves and serve again.
    let _redis = Redis::start(&bin, dir.path(), port);
    for n in &nodes {
        n.wait_ready(200).await;
    }
    let (status, body) = nodes[1].logout("bob").await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(bob.recv_json().await["type"], "logout");

    // Nothing from before the outage is forgotten: not by the nodes, and not
    // by a node that joins now and knows it only from Redis.
    let late = Node::start(&format!("redis://127.0.0.1:{port}/"));
    for n in nodes.iter().chain([&late]) {
        let mut ws = Ws::connect(&n.ws_url(), None).await.unwrap();
        ws.send_json(json!({"type": "auth", "token": old})).await;
        assert_eq!(ws.recv_json().await["type"], "logout");
        assert_eq!(ws.close_code().await, Some(4000));
    }
}
