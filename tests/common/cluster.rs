//! Several hub processes on a real Redis, as an operator runs them behind a
//! balancer: the same `public_url` on every node, each node its own port.
//! Redis is a `redis-server` of the test's own (one server, or a Redis
//! Cluster made with `redis-cli --cluster create`).

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::{Value, json};

use super::process::{Running, config_file};
use super::sso::{AUD, CB};
use super::{API_KEY, TEST_AUD, TEST_ISS, TEST_SECRET, Ws, require_program, sha256_hex};

/// What every node calls itself (the issuer of its session tokens).
pub const PUBLIC_URL: &str = "http://hub.test";

/// One redis-server of our own.
pub struct RedisServer {
    child: Child,
    pub port: u16,
    dir: PathBuf,
}

/// A free port whose cluster-bus neighbour (+10000) is free too.
fn free_port_pair() -> u16 {
    for _ in 0..200 {
        let p = super::free_port();
        if std::net::TcpListener::bind(("127.0.0.1", p + 10_000)).is_ok() {
            return p;
        }
    }
    panic!("no free port pair");
}

impl RedisServer {
    /// Starts a server persisting to `dir` (AOF, fsync always), so a
    /// restart keeps what it had; `cluster`: as a Redis Cluster node.
    pub fn start(bin: &Path, dir: &Path, port: u16, cluster: bool) -> RedisServer {
        // A directory per server: AOF and cluster files must not be shared.
        let own = dir.join(format!("redis-{port}"));
        std::fs::create_dir_all(&own).unwrap();
        let mut cmd = Command::new(bin);
        cmd.args(["--bind", "127.0.0.1", "--port", &port.to_string()])
            .args([
                "--save",
                "",
                "--appendonly",
                "yes",
                "--appendfsync",
                "always",
            ])
            .arg("--dir")
            .arg(&own);
        if cluster {
            // Replicas sync at once (not after the default 5 s delay).
            cmd.args(["--cluster-enabled", "yes", "--cluster-node-timeout", "1000"])
                .args(["--repl-diskless-sync-delay", "0"])
                .args(["--cluster-config-file", &format!("nodes-{port}.conf")]);
        }
        let child = cmd
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("redis-server starts");
        let deadline = Instant::now() + Duration::from_secs(10);
        while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
            assert!(Instant::now() < deadline, "redis-server did not listen");
            std::thread::sleep(Duration::from_millis(20));
        }
        RedisServer {
            child,
            port,
            dir: dir.to_path_buf(),
        }
    }

    pub fn url(&self) -> String {
        format!("redis://127.0.0.1:{}/", self.port)
    }

    pub fn kill(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    /// Starts it again on the same port and directory.
    pub fn restart(&mut self, bin: &Path, cluster: bool) {
        self.kill();
        *self = RedisServer::start(bin, &self.dir.clone(), self.port, cluster);
    }

    /// Runs `redis-cli` against it.
    pub fn cli(&self, args: &[&str]) -> String {
        let out = Command::new("redis-cli")
            .args(["-p", &self.port.to_string()])
            .args(args)
            .output()
            .expect("redis-cli runs");
        String::from_utf8_lossy(&out.stdout).to_string()
    }
}

impl Drop for RedisServer {
    fn drop(&mut self) {
        self.kill();
    }
}

/// The Redis programs, or a loud skip (a failure under SLO_HUB_REQUIRE_ALL=1).
pub fn redis_bin() -> Option<PathBuf> {
    require_program("redis-cli", &["/usr/bin/redis-cli"])?;
    require_program("redis-server", &["/usr/bin/redis-server"])
}

/// One Redis server for the test.
pub fn single_redis(bin: &Path, dir: &Path) -> RedisServer {
    RedisServer::start(bin, dir, free_port_pair(), false)
}

/// A Redis Cluster of `masters` masters, each with `replicas` replicas.
pub struct RedisCluster {
    pub servers: Vec<RedisServer>,
}

impl RedisCluster {
    pub fn start(bin: &Path, dir: &Path, masters: usize, replicas: usize) -> RedisCluster {
        let n = masters * (1 + replicas);
        let servers: Vec<RedisServer> = (0..n)
            .map(|_| RedisServer::start(bin, dir, free_port_pair(), true))
            .collect();
        let mut args = vec!["--cluster".to_string(), "create".to_string()];
        args.extend(servers.iter().map(|s| format!("127.0.0.1:{}", s.port)));
        args.extend([
            "--cluster-replicas".into(),
            replicas.to_string(),
            "--cluster-yes".into(),
        ]);
        let out = Command::new("redis-cli")
            .args(&args)
            .output()
            .expect("redis-cli --cluster create");
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stdout)
        );
        let cluster = RedisCluster { servers };
        cluster.wait_ok();
        // A replica that never synced will not take over: wait for every link.
        let deadline = Instant::now() + Duration::from_secs(20);
        for s in &cluster.servers {
            while s.cli(&["info", "replication"]).contains("role:slave")
                && !s
                    .cli(&["info", "replication"])
                    .contains("master_link_status:up")
            {
                assert!(Instant::now() < deadline, "a replica did not sync");
                std::thread::sleep(Duration::from_millis(50));
            }
        }
        cluster
    }

    /// Kills the master `victim` and waits until a replica serves its slots.
    pub fn fail_over(&mut self, victim: usize) {
        let addr = format!("127.0.0.1:{}@", self.servers[victim].port);
        self.servers[victim].kill();
        let alive = (victim + 1) % self.servers.len();
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            // Its line in CLUSTER NODES: flagged fail, and no slots left.
            let nodes = self.servers[alive].cli(&["cluster", "nodes"]);
            let line = nodes.lines().find(|l| l.contains(&addr)).unwrap_or("");
            if line.contains("fail") && line.split_whitespace().count() == 8 {
                break;
            }
            assert!(Instant::now() < deadline, "no replica took over: {nodes}");
            std::thread::sleep(Duration::from_millis(100));
        }
        self.wait_ok();
    }

    /// Waits until every node says the cluster is ok.
    pub fn wait_ok(&self) {
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            let ok = self
                .servers
                .iter()
                .filter(|s| s.child_alive())
                .all(|s| s.cli(&["cluster", "info"]).contains("cluster_state:ok"));
            if ok {
                return;
            }
            assert!(Instant::now() < deadline, "the Redis Cluster is not ok");
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    pub fn url(&self) -> String {
        let seeds: Vec<String> = self
            .servers
            .iter()
            .map(|s| format!("127.0.0.1:{}", s.port))
            .collect();
        format!("redis-cluster://{}", seeds.join(","))
    }

    /// The index of the master serving `key`.
    pub fn master_of(&self, key: &str) -> usize {
        let slot = self.servers[0].cli(&["cluster", "keyslot", key]);
        let slot: u16 = slot.trim().parse().unwrap();
        let slots = self.servers[0].cli(&["cluster", "slots"]);
        // Lines: start, end, ip, port, id, (replicas...) repeated.
        let lines: Vec<&str> = slots.lines().map(str::trim).collect();
        let mut i = 0;
        while i + 3 < lines.len() {
            if let (Ok(start), Ok(end)) = (lines[i].parse::<u16>(), lines[i + 1].parse::<u16>())
                && (start..=end).contains(&slot)
            {
                let port: u16 = lines[i + 3].parse().unwrap();
                return self.servers.iter().position(|s| s.port == port).unwrap();
            }
            i += 1;
        }
        panic!("no master for slot {slot}: {slots}");
    }
}

impl RedisServer {
    fn child_alive(&self) -> bool {
        std::net::TcpStream::connect(("127.0.0.1", self.port)).is_ok()
    }
}

/// A hub process of the cluster.
pub struct Node {
    process: Option<Running>,
    /// `http://127.0.0.1:port` (where this node listens).
    pub base: String,
    dir: tempfile::TempDir,
    cfg: (tempfile::TempDir, String),
}

/// The config of every node: the test issuer, the test API key, the dev
/// issuer (loopback only), SSO clients, a Pusher app; `extra` appended.
pub fn node_config(redis_url: &str, extra: &str) -> String {
    format!(
        r#"listen = "127.0.0.1:0"
public_url = "{PUBLIC_URL}"
cluster = "{redis_url}"
{extra}
[dev]
issuer = true

[[issuers]]
issuer = "{TEST_ISS}"
audiences = ["{TEST_AUD}"]
algorithms = ["HS256"]
hs256_secret = "{TEST_SECRET}"
leeway_secs = 0

[[api_keys]]
name = "test"
sha256 = "{}"
scopes = ["logout:any", "revoke"]

[[api_keys]]
name = "ops"
sha256 = "{}"
scopes = ["admin"]

[[clients]]
client_id = "native"
kind = "native"
can_create_session_transfer_token = true
enforce_device_binding = "none"

[[clients]]
client_id = "web"
kind = "web"
redirect_uris = ["{CB}"]
allow_refresh_token = true
enforce_device_binding = "none"
"#,
        sha256_hex(API_KEY),
        sha256_hex(ADMIN_KEY)
    )
}

/// An API key with scope `admin` on every node of `node_config`.
pub const ADMIN_KEY: &str = "slo_ops-admin-key-of-the-cluster-tests";

impl Node {
    pub fn start(config: &str) -> Node {
        let cfg = config_file(config);
        let dir = tempfile::tempdir().unwrap();
        let process = Running::start(&["serve", "--config", &cfg.1], &[], dir.path());
        let base = format!("http://{}", process.line("listening").unwrap());
        Node {
            process: Some(process),
            base,
            dir,
            cfg,
        }
    }

    /// Starts the node again (same config and data directory; a new port).
    pub fn restart(&mut self) {
        if let Some(p) = self.process.take() {
            p.kill9();
        }
        let p = Running::start(&["serve", "--config", &self.cfg.1], &[], self.dir.path());
        self.base = format!("http://{}", p.line("listening").unwrap());
        self.process = Some(p);
    }

    pub fn kill9(&mut self) {
        if let Some(p) = self.process.take() {
            p.kill9();
        }
    }

    pub fn ws_url(&self) -> String {
        format!("{}/v1/ws", self.base.replacen("http", "ws", 1))
    }

    pub async fn socket(&self, token: &str) -> Ws {
        let mut ws = Ws::connect(&self.ws_url(), None).await.unwrap();
        ws.send_json(json!({"type": "auth", "token": token})).await;
        let m = ws.recv_json().await;
        assert_eq!(m["type"], "ready", "{m}");
        ws
    }

    /// POST JSON, with the test API key for the backend endpoints.
    pub async fn post(&self, path: &str, bearer: Option<&str>, body: Value) -> (u16, Value) {
        let mut req = reqwest::Client::new()
            .post(format!("{}{path}", self.base))
            .json(&body);
        if let Some(b) = bearer {
            req = req.bearer_auth(b);
        }
        let r = req.send().await.unwrap();
        let status = r.status().as_u16();
        (status, r.json().await.unwrap_or(Value::Null))
    }

    /// Waits (bounded) until /readyz answers `want`.
    pub async fn wait_ready(&self, want: u16) {
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            let status = reqwest::get(format!("{}/readyz", self.base))
                .await
                .map(|r| r.status().as_u16())
                .unwrap_or(0);
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

    pub fn terminate(mut self) -> (i32, String) {
        self.process.take().unwrap().terminate()
    }
}

impl Drop for Node {
    fn drop(&mut self) {
        if let Some(p) = self.process.take() {
            p.kill9();
        }
    }
}

/// `node_config` with the tests' Pusher app (bridged to the test issuer).
pub fn pusher_config(redis_url: &str) -> String {
    use super::pusher::{APP_ID, APP_KEY, APP_SECRET};
    node_config(
        redis_url,
        &format!(
            r#"
[[pusher_apps]]
id = "{APP_ID}"
key = "{APP_KEY}"
secret = "{APP_SECRET}"
enable_client_messages = true
logout_issuer = "{TEST_ISS}"
"#
        ),
    )
}

/// `/authorize` on `node` with a transfer token: (code, error).
pub async fn authorize(
    node: &Node,
    client_id: &str,
    stt: &str,
    challenge: &str,
) -> (Option<String>, Option<String>) {
    let q: String = form_urlencoded::Serializer::new(String::new())
        .extend_pairs([
            ("client_id", client_id),
            ("redirect_uri", CB),
            ("response_type", "code"),
            ("code_challenge", challenge),
            ("code_challenge_method", "S256"),
            ("session_transfer_token", stt),
        ])
        .finish();
    let r = super::sso::client_from(None)
        .get(format!("{}/authorize?{q}", node.base))
        .send()
        .await
        .unwrap();
    let location = r.headers()["location"].to_str().unwrap().to_string();
    let params: Vec<(String, String)> = url::Url::parse(&location)
        .unwrap()
        .query_pairs()
        .into_owned()
        .collect();
    let get = |k: &str| params.iter().find(|(n, _)| n == k).map(|(_, v)| v.clone());
    (get("code"), get("error"))
}

/// A session transfer token minted with a native refresh token.
pub async fn mint(node: &Node, refresh: &str) -> String {
    let (s, v) = node
        .post(
            "/oauth/token",
            None,
            json!({"grant_type": "refresh_token", "client_id": "native",
                   "refresh_token": refresh, "audience": AUD}),
        )
        .await;
    assert_eq!(s, 200, "{v}");
    v["access_token"].as_str().unwrap().to_string()
}

pub const EXCHANGE: &str = "urn:ietf:params:oauth:grant-type:token-exchange";
pub const ACCESS: &str = "urn:ietf:params:oauth:token-type:access_token";

/// A session transfer token from an RFC 8693 exchange on `node` of an
/// upstream access token of `sub` (session `sid`) issued to `native`.
pub async fn exchange(node: &Node, sub: &str, sid: &str) -> String {
    let upstream = super::hs256_token(serde_json::json!({"sub": sub, "sid": sid, "azp": "native"}));
    let (s, v) = node
        .post(
            "/oauth/token",
            None,
            serde_json::json!({"grant_type": EXCHANGE, "client_id": "native",
                "subject_token": upstream, "subject_token_type": ACCESS,
                "audience": super::sso::AUD}),
        )
        .await;
    assert_eq!(s, 200, "{v}");
    v["access_token"].as_str().unwrap().to_string()
}
