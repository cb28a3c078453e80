//! Starting the servers under test (pinned with `taskset`), reading their
//! memory and CPU from /proc, and stopping them.

use std::io;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use crate::proto::{Kind, PUSHER_APP_ID, PUSHER_KEY, PUSHER_SECRET};

pub struct Server {
    child: Child,
    pub addr: SocketAddr,
}

/// Paths and settings the servers need.
pub struct Env {
    pub repo: PathBuf,
    pub hub_bin: PathBuf,
    pub work: PathBuf,
    pub cpu: String,
    /// Extra hub settings (TOML appended to the generated config).
    pub hub_extra: String,
    /// slo-hub's `store` setting.
    pub hub_store: String,
    /// slo-hub's `cluster` setting (a Redis URL), for the cluster phase.
    pub hub_cluster: Option<String>,
}

pub const BENCH_API_KEY: &str = "slo_bench-api-key-for-load-generator";
pub const HS256_ISS: &str = "https://bench-hs256.invalid";
pub const RS256_ISS: &str = "https://bench-rs256.invalid";
pub const AUD: &str = "bench";
pub const HS256_SECRET: &str = "bench-secret-bench-secret-bench-secret!!";

impl Server {
    pub fn start(kind: Kind, port: u16, env: &Env) -> io::Result<Server> {
        let addr: SocketAddr = ([127, 0, 0, 1], port).into();
        let peers = env.repo.join("bench/peers");
        let mut cmd = Command::new("taskset");
        cmd.arg("-c").arg(&env.cpu);
        match kind {
            Kind::SloHub | Kind::SloHubPusher => {
                let config = write_hub_config(env, port)?;
                cmd.arg(&env.hub_bin)
                    .arg("serve")
                    .arg("--config")
                    .arg(config);
                cmd.env("RUST_LOG", "warn");
            }
            Kind::Ws => {
                cmd.arg("node").arg(peers.join("ws-server.js"));
            }
            Kind::Uws => {
                cmd.arg("node").arg(peers.join("uws-server.js"));
            }
            Kind::SocketIo => {
                cmd.arg("node").arg(peers.join("socketio-server.js"));
            }
            Kind::Soketi => {
                cmd.arg("node")
                    .arg(peers.join("node_modules/@soketi/soketi/bin/server.js"))
                    .arg("start")
                    .env("SOKETI_PORT", port.to_string())
                    .env("SOKETI_DEFAULT_APP_ID", PUSHER_APP_ID)
                    .env("SOKETI_DEFAULT_APP_KEY", PUSHER_KEY)
                    .env("SOKETI_DEFAULT_APP_SECRET", PUSHER_SECRET)
                    .env("SOKETI_DEFAULT_APP_MAX_CONNS", "-1")
                    .env("SOKETI_DEFAULT_APP_MAX_BACKEND_EVENTS_PER_SEC", "-1")
                    .env("SOKETI_DEFAULT_APP_MAX_CLIENT_EVENTS_PER_SEC", "-1")
                    .env("SOKETI_DEFAULT_APP_MAX_READ_REQ_PER_SEC", "-1")
                    .env("SOKETI_METRICS_ENABLED", "false");
            }
        }
        let log = std::fs::File::create(env.work.join(format!("{}-{port}.log", kind.name())))?;
        cmd.env("PORT", port.to_string())
            .stdin(Stdio::null())
            .stdout(log.try_clone()?)
            .stderr(log);
        let child = cmd.spawn()?;
        let server = Server { child, addr };
        server.wait_ready()?;
        Ok(server)
    }

    fn wait_ready(&self) -> io::Result<()> {
        let deadline = Instant::now() + Duration::from_secs(30);
        while Instant::now() < deadline {
            if std::net::TcpStream::connect_timeout(&self.addr, Duration::from_millis(200)).is_ok()
            {
                // Listening; give the runtime a moment to finish starting.
                std::thread::sleep(Duration::from_millis(300));
                return Ok(());
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        Err(io::Error::other(format!(
            "server on {} did not start",
            self.addr
        )))
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Resident set size in KiB.
    pub fn rss_kib(&self) -> u64 {
        rss_kib_of(self.pid())
    }

    /// The server's CPU time (see [`cpu_ns_of`]).
    pub fn cpu_ns(&self) -> u64 {
        cpu_ns_of(self.pid())
    }

    /// The server's CPU time (as `cpu_ns`) once it has gone idle: less than
    /// 1 ms of CPU over 200 ms (or after 10 s, whatever it is then).
    pub async fn cpu_settled(&self) -> u64 {
        let window = std::time::Duration::from_millis(200);
        let mut last = self.cpu_ns();
        for _ in 0..50 {
            tokio::time::sleep(window).await;
            let now = self.cpu_ns();
            if now - last < 1_000_000 {
                return now;
            }
            last = now;
        }
        last
    }

    /// Open file descriptors of the server.
    pub fn fds(&self) -> usize {
        std::fs::read_dir(format!("/proc/{}/fd", self.pid()))
            .map(|d| d.count())
            .unwrap_or(0)
    }

    /// Waits until the server has let go of the sockets of a finished phase
    /// (its descriptor count is back near `baseline`), so their teardown is
    /// not billed to the next phase.
    pub async fn settle(&self, baseline: usize) {
        let deadline = Instant::now() + Duration::from_secs(30);
        while self.fds() > baseline + 16 && Instant::now() < deadline {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    pub fn stop(mut self) {
        let _ = Command::new("kill")
            .args(["-TERM", &self.pid().to_string()])
            .status();
        let deadline = Instant::now() + Duration::from_secs(5);
        while Instant::now() < deadline {
            if let Ok(Some(_)) = self.child.try_wait() {
                return;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn write_hub_config(env: &Env, port: u16) -> io::Result<PathBuf> {
    let data = env.work.join(format!("hub-data-{port}"));
    std::fs::create_dir_all(&data)?;
    let public = std::fs::read_to_string(env.repo.join("bench/keys/rs256-public.pem"))?;
    let key_hash = {
        let d = ring::digest::digest(&ring::digest::SHA256, BENCH_API_KEY.as_bytes());
        slo_hub::auth::api_keys::hex(d.as_ref())
    };
    let cluster = env
        .hub_cluster
        .as_ref()
        .map(|u| format!("cluster = \"{u}\"\npublic_url = \"http://127.0.0.1:{port}\"\n"))
        .unwrap_or_default();
    let text = format!(
        r#"{cluster}listen = "127.0.0.1:{port}"
data_dir = "{data}"
store = "{store}"

[dev]
issuer = true

{limits}
[[issuers]]
issuer = "{HS256_ISS}"
audiences = ["{AUD}"]
algorithms = ["HS256"]
hs256_secret = "{HS256_SECRET}"

[[issuers]]
issuer = "{RS256_ISS}"
audiences = ["{AUD}"]
algorithms = ["RS256"]
keys = [{{ kid = "bench", pem = """{public}""" }}]

[[api_keys]]
name = "bench"
sha256 = "{key_hash}"
scopes = ["logout:any"]

[[pusher_apps]]
id = "{PUSHER_APP_ID}"
key = "{PUSHER_KEY}"
secret = "{PUSHER_SECRET}"
{extra}
"#,
        data = data.display(),
        store = env.hub_store,
        // Lifted for the benchmark, unless the extra settings bring their own.
        limits = if env.hub_extra.contains("[limits]") {
            ""
        } else {
            "[limits]\nmax_connections = 1000000\nmax_connections_per_ip = 1000000\nconnects_per_ip_per_sec = 1000000\nconnect_burst = 1000000\nuser_triggers_per_sec = 1000\nuser_trigger_burst = 1000\n"
        },
        extra = env.hub_extra,
    );
    let path = env.work.join(format!("hub-{port}.toml"));
    std::fs::write(&path, text)?;
    Ok(path)
}

/// Resident set size of process `pid` in KiB (0 if it is gone).
pub fn rss_kib_of(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.split_whitespace().next()?.parse().ok())
        .unwrap_or(0)
}

/// A redis-server for the cluster phase, pinned like the hubs.
pub struct RedisServer {
    child: Child,
    pub url: String,
}

impl RedisServer {
    pub fn start(port: u16, cpu: &str) -> io::Result<RedisServer> {
        let child = Command::new("taskset")
            .args(["-c", cpu, "redis-server", "--bind", "127.0.0.1"])
            .args([
                "--port",
                &port.to_string(),
                "--save",
                "",
                "--appendonly",
                "no",
            ])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()?;
        let addr: SocketAddr = ([127, 0, 0, 1], port).into();
        let deadline = Instant::now() + Duration::from_secs(10);
        while std::net::TcpStream::connect(addr).is_err() {
            if Instant::now() > deadline {
                return Err(io::Error::other("redis-server did not start"));
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        Ok(RedisServer {
            child,
            url: format!("redis://127.0.0.1:{port}/"),
        })
    }
}

impl Drop for RedisServer {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

pub fn repo_root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

/// CPU time of all of a process's threads, in nanoseconds (schedstat has
/// nanosecond resolution; /proc/PID/stat only clock ticks).
pub fn cpu_ns_of(pid: u32) -> u64 {
    let Ok(tasks) = std::fs::read_dir(format!("/proc/{pid}/task")) else {
        return 0;
    };
    tasks
        .flatten()
        .filter_map(|t| std::fs::read_to_string(t.path().join("schedstat")).ok())
        .filter_map(|s| s.split_whitespace().next()?.parse::<u64>().ok())
        .sum()
}

/// CPU time of the server and of this load generator, and wall time, over
/// one phase.
pub struct Meter {
    started: std::time::Instant,
    server0: u64,
    generator0: u64,
}

/// What a [`Meter`] saw; several add up (a phase timed in rounds).
#[derive(Default, Clone, Copy)]
pub struct Measured {
    secs: f64,
    server_ns: u64,
    generator_ns: u64,
}

impl Meter {
    pub fn start(server: &Server) -> Meter {
        Meter {
            server0: server.cpu_ns(),
            generator0: cpu_ns_of(std::process::id()),
            started: std::time::Instant::now(),
        }
    }

    pub fn stop(&self, server: &Server) -> Measured {
        Measured {
            secs: self.started.elapsed().as_secs_f64(),
            server_ns: server.cpu_ns() - self.server0,
            generator_ns: cpu_ns_of(std::process::id()) - self.generator0,
        }
    }
}

impl std::ops::AddAssign for Measured {
    fn add_assign(&mut self, other: Measured) {
        self.secs += other.secs;
        self.server_ns += other.server_ns;
        self.generator_ns += other.generator_ns;
    }
}

impl Measured {
    /// `n` per second of wall time.
    pub fn rate(&self, n: usize) -> f64 {
        n as f64 / self.secs
    }

    /// Server CPU µs per one of `n` things done.
    pub fn server_us_per(&self, n: usize) -> f64 {
        self.server_ns as f64 / 1000.0 / n.max(1) as f64
    }

    /// How busy the server's core was (CPU time / wall time, %).
    pub fn server_busy_pct(&self) -> f64 {
        self.server_ns as f64 / 1e7 / self.secs
    }

    /// How busy the load generator's core was (%).
    pub fn generator_busy_pct(&self) -> f64 {
        self.generator_ns as f64 / 1e7 / self.secs
    }
}
