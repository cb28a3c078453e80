//! slo-bench: puts slo-hub beside peer servers in one run and reports medians.
//!
//! Each server runs pinned to one core (`--server-cpu`, default 0); run this
//! load generator pinned to another (`bench/run.sh` does both). For every
//! server and repetition a fresh process is started, then:
//!
//! 1. **connect**: users × tabs sockets, at most `--concurrency` connecting at
//!    once → sockets/s; **idle memory**: RSS growth / sockets after 1 s.
//! 2. **latency**: `--latency-triggers` users, one trigger at a time →
//!    trigger request written → last tab's frame read, p50/p99.
//! 3. **saturated**: the remaining users, `--concurrency` triggers in flight,
//!    `--rounds` times (slo-hub's sockets log in again between rounds, untimed)
//!    → triggers/s, server CPU per trigger and p99.
//! 4. **broadcast**: users × tabs sockets of one user, one trigger → server
//!    CPU per delivered message.
//! 5. slo-hub only, **authenticated triggers**: users' own HS256 and RS256
//!    tokens (no sockets) → triggers/s.
//!
//! Results: `bench/results/<date>.json` and `.md` (with slo-hub / best peer
//! ratios) and `.svg`.

mod cluster;
mod floods;
mod http;
mod proto;
mod report;
mod servers;
mod watermarks;

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use clap::Parser;
use jsonwebtoken::{Algorithm, EncodingKey, Header};
use proto::{Board, Kind, TriggerCred};
use servers::{Env, Measured, Meter, Server};
use tokio::sync::Semaphore;
use tokio::task::JoinHandle;

#[derive(Parser, Clone)]
#[command(name = "slo-bench")]
pub struct Opts {
    /// Servers to run, comma-separated: slo-hub, uws, ws, socketio, soketi,
    /// slo-hub-pusher (slo-hub on the Pusher protocol, beside Soketi).
    #[arg(long, default_value = "slo-hub,uws,ws,socketio,soketi,slo-hub-pusher")]
    servers: String,
    /// Repetitions per server (each on a fresh process); medians are reported.
    #[arg(long, default_value_t = 3)]
    reps: usize,
    #[arg(long, default_value_t = 5000)]
    pub users: usize,
    #[arg(long, default_value_t = 3)]
    pub tabs: usize,
    /// Users triggered one at a time in the latency phase.
    #[arg(long, default_value_t = 1000)]
    pub latency_triggers: usize,
    /// Connects and triggers in flight at once.
    #[arg(long, default_value_t = 64)]
    pub concurrency: usize,
    /// Rounds of the saturated phase: each triggers every one of its users
    /// once. Between rounds, untimed, slo-hub's logged-out sockets log in
    /// again on the same socket with a fresh token (the peers' sockets stay
    /// subscribed), so the phase runs long enough to measure.
    #[arg(long, default_value_t = 3)]
    rounds: usize,
    /// Triggers per authenticated-trigger phase (slo-hub only).
    #[arg(long, default_value_t = 8000)]
    auth_triggers: usize,
    /// CPU list the servers are pinned to.
    #[arg(long, default_value = "0")]
    pub server_cpu: String,
    /// The slo-hub binary (bench/run.sh builds it: `--profile benchmark`).
    #[arg(long, default_value = "target/benchmark/slo-hub")]
    hub_bin: PathBuf,
    /// Where results go.
    #[arg(long, default_value = "bench/results")]
    pub out: PathBuf,
    /// Extra TOML appended to slo-hub's generated config (e.g. a store setting).
    #[arg(long, default_value = "")]
    hub_extra: String,
    /// slo-hub's store: "memory" (the default here, to compare the socket
    /// path alone) or "embedded" (durable; every trigger waits for an fsync).
    #[arg(long, default_value = "memory", value_parser = ["memory", "embedded"])]
    hub_store: String,
    /// A label for this run's slo-hub variant in the report.
    #[arg(long, default_value = "")]
    hub_label: String,
    /// slo-hub's clients do not acknowledge logouts (the peers' clients never
    /// do): shows what the acks cost slo-hub's trigger.
    #[arg(long)]
    no_acks: bool,
    /// Instead of the comparison: slo-hub's trigger-to-last-tab latency on
    /// one node versus this many nodes sharing a Redis (needs redis-server).
    #[arg(long)]
    cluster_nodes: Option<usize>,
    /// Instead of the comparison: a node on a Redis holding this many
    /// logout watermarks: its start time, memory and `auth` latency.
    #[arg(long)]
    watermarks: Option<usize>,
    /// Instead of the comparison: slo-hub under floods (slow consumers,
    /// an upgrade flood from one address, slowloris); see `floods.rs`.
    #[arg(long)]
    floods: bool,
    /// First port to use.
    #[arg(long, default_value_t = 9100)]
    pub port: u16,
}

/// Figures of one repetition.
#[derive(Clone, Debug, Default, serde::Serialize)]
pub struct Rep {
    pub kib_per_socket: f64,
    pub connects_per_s: f64,
    pub lat_p50_us: f64,
    pub lat_p99_us: f64,
    pub sat_triggers_per_s: f64,
    pub sat_p99_ms: f64,
    /// Saturated phase: server CPU time per trigger.
    pub sat_cpu_us_per_trigger: f64,
    /// Saturated phase: how busy the server's core and the load generator's
    /// core were (CPU time / wall time, %). A generator near 100 % means the
    /// rate measured is the generator's, not the server's.
    pub sat_server_busy_pct: f64,
    pub sat_generator_busy_pct: f64,
    /// Saturated phase, server CPU per trigger in the first round (sockets
    /// idle since they connected, as a logout hub's usually are) and in the
    /// later ones (caches warm, node peers' JIT done); NaN with one round.
    pub sat_first_round_cpu_us: f64,
    pub sat_later_rounds_cpu_us: f64,
    pub bcast_cpu_us_per_delivery: f64,
    /// The same, counting work the server does after the last arrival (a
    /// node peer's garbage collection, say): server CPU until the server has
    /// been idle for 200 ms. (The broadcast's clients send no acks.)
    pub bcast_cpu_settled_us_per_delivery: f64,
    pub bcast_ms: f64,
    pub hs256_triggers_per_s: Option<f64>,
    pub rs256_triggers_per_s: Option<f64>,
    /// Authenticated triggers: server CPU time per trigger, so the server's
    /// capacity per core (1e6 / this) shows even when the generator is the bound.
    pub hs256_cpu_us_per_trigger: Option<f64>,
    pub rs256_cpu_us_per_trigger: Option<f64>,
    /// Connect phase: server CPU time per socket, and how busy the server's
    /// and the generator's cores were (%).
    pub connect_cpu_us_per_socket: f64,
    pub connect_server_busy_pct: f64,
    pub connect_generator_busy_pct: f64,
    /// Expected arrivals that never came (should be 0).
    pub missed: u64,
    /// Sockets that failed to connect, or to log in again between the
    /// saturated phase's rounds (should be 0).
    pub connect_failures: u64,
}

fn main() {
    let opts = Opts::parse();
    slo_hub::auth::crypto::install();
    let kinds: Vec<Kind> = opts
        .servers
        .split(',')
        .map(|s| Kind::parse(s.trim()).unwrap_or_else(|| panic!("unknown server {s:?}")))
        .collect();
    let repo = servers::repo_root();
    let work = std::env::temp_dir().join(format!("slo-bench-{}", std::process::id()));
    std::fs::create_dir_all(&work).unwrap();
    let env = Env {
        hub_bin: repo.join(&opts.hub_bin),
        repo: repo.clone(),
        work: work.clone(),
        cpu: opts.server_cpu.clone(),
        hub_extra: opts.hub_extra.replace("\\n", "\n"),
        hub_store: opts.hub_store.clone(),
        hub_cluster: None,
    };
    if kinds.contains(&Kind::SloHub) || kinds.contains(&Kind::SloHubPusher) {
        assert!(
            env.hub_bin.is_file(),
            "{} is missing: run `cargo build --profile benchmark` first",
            env.hub_bin.display()
        );
    }
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let tokens = kinds
        .contains(&Kind::SloHub)
        .then(|| AuthTokens::generate(&repo, opts.auth_triggers));
    if let Some(n) = opts.cluster_nodes {
        let tokens = tokens.expect("the cluster phase runs slo-hub");
        cluster::run(&opts, env, &rt, &tokens.hs256, n);
        return;
    }
    if let Some(n) = opts.watermarks {
        let tokens = tokens.expect("the watermark phase runs slo-hub");
        watermarks::run(&opts, env, &rt, &tokens.hs256, n);
        return;
    }
    if opts.floods {
        let tokens = tokens.expect("the flood phase runs slo-hub");
        floods::run(&opts, env, &rt, &tokens.hs256);
        return;
    }
    let mut results = Vec::new();
    let mut port = opts.port;
    for kind in kinds {
        let mut reps = Vec::new();
        for rep in 0..opts.reps {
            port += 1;
            eprintln!("== {} rep {} (port {port})", kind.label(), rep + 1);
            let server = Server::start(kind, port, &env).expect("server starts");
            let r = rt.block_on(run_rep(kind, &server, &opts, rep, tokens.as_ref()));
            eprintln!("   {r:?}");
            server.stop();
            reps.push(r);
        }
        let label = if kind == Kind::SloHub && !opts.hub_label.is_empty() {
            format!("slo-hub ({})", opts.hub_label)
        } else {
            kind.label().to_string()
        };
        results.push(report::ServerResult::new(kind.name(), &label, reps));
    }
    let _ = std::fs::remove_dir_all(&work);
    let paths = report::write(
        &opts.out,
        &results,
        &std::env::args().collect::<Vec<_>>().join(" "),
    )
    .expect("writing results");
    for p in paths {
        println!("wrote {}", p.display());
    }
}

/// Tokens of users who log themselves out (slo-hub's authenticated-trigger phases).
pub struct AuthTokens {
    hs256: Vec<String>,
    rs256: Vec<String>,
}

impl AuthTokens {
    fn generate(repo: &std::path::Path, n: usize) -> AuthTokens {
        let now = slo_hub::util::now_secs();
        let sign = |alg: Algorithm, key: &EncodingKey, iss: &str, prefix: &str| -> Vec<String> {
            let mut header = Header::new(alg);
            if alg == Algorithm::RS256 {
                header.kid = Some("bench".into());
            }
            (0..n)
                .map(|i| {
                    let claims = serde_json::json!({
                        "iss": iss, "aud": servers::AUD, "sub": format!("{prefix}-{i}"),
                        "iat": now, "exp": now + 3 * 3600, "sid": format!("{prefix}-s{i}"),
                    });
                    jsonwebtoken::encode(&header, &claims, key).unwrap()
                })
                .collect()
        };
        eprintln!("signing {n} HS256 and {n} RS256 tokens…");
        let hs = EncodingKey::from_secret(servers::HS256_SECRET.as_bytes());
        let pem = std::fs::read(repo.join("bench/keys/rs256-private.pem")).unwrap();
        let rs = EncodingKey::from_rsa_pem(&pem).unwrap();
        AuthTokens {
            hs256: sign(Algorithm::HS256, &hs, servers::HS256_ISS, "hs"),
            rs256: sign(Algorithm::RS256, &rs, servers::RS256_ISS, "rs"),
        }
    }
}

async fn run_rep(
    kind: Kind,
    server: &Server,
    opts: &Opts,
    rep: usize,
    tokens: Option<&AuthTokens>,
) -> Rep {
    let addr = server.addr;
    let mut r = Rep::default();
    let users: Vec<String> = (0..opts.users).map(|i| format!("r{rep}u{i}")).collect();
    let cred = TriggerCred {
        api_key: servers::BENCH_API_KEY.into(),
        iss: format!("http://{addr}/dev"),
    };
    let user_tokens = if kind == Kind::SloHub {
        dev_tokens(addr, &users).await
    } else {
        vec![String::new(); users.len()]
    };

    eprintln!("   connect {} users x {} tabs", users.len(), opts.tabs);
    // 1. Connect, then idle memory.
    let board = Board::new(users.len(), !opts.no_acks);
    let rss0 = server.rss_kib();
    let fds0 = server.fds();
    let meter = Meter::start(server);
    let slots: Vec<(usize, &str, &str)> = (0..users.len())
        .flat_map(|u| (0..opts.tabs).map(move |_| u))
        .map(|u| (u, users[u].as_str(), user_tokens[u].as_str()))
        .collect();
    let (readers, failures) = connect_all(kind, addr, &board, &slots, opts.concurrency).await;
    let n_sockets = readers.len();
    r.connect_failures = failures;
    let m = meter.stop(server);
    r.connects_per_s = m.rate(n_sockets);
    r.connect_cpu_us_per_socket = m.server_us_per(n_sockets);
    r.connect_server_busy_pct = m.server_busy_pct();
    r.connect_generator_busy_pct = m.generator_busy_pct();
    // Let the allocator and (for node) the GC settle before reading RSS.
    tokio::time::sleep(Duration::from_secs(1)).await;
    let rss1 = server.rss_kib();
    r.kib_per_socket = rss1.saturating_sub(rss0) as f64 / n_sockets.max(1) as f64;

    eprintln!("   latency");
    // 2. One trigger at a time.
    let tabs = opts.tabs as u32;
    let lat_users = opts.latency_triggers.min(users.len());
    let mut http = http::HttpConn::new(addr);
    let mut lat = Vec::with_capacity(lat_users);
    for (u, user) in users.iter().enumerate().take(lat_users) {
        let req = kind.trigger(user, &cred);
        let t0 = board.now_ns();
        let (status, _) = http.request(&req).await.expect("trigger");
        assert!(status < 300, "trigger answered {status}");
        if await_arrivals(&board, u, tabs, Duration::from_secs(5)).await {
            lat.push((board.slot(u).last_ns.load(Ordering::Acquire) - t0) as f64 / 1000.0);
        } else {
            r.missed += 1;
        }
    }
    r.lat_p50_us = percentile(&mut lat, 0.50);
    r.lat_p99_us = percentile(&mut lat, 0.99);

    eprintln!("   saturated");
    // 3. Saturated: the remaining users, `concurrency` in flight, `rounds` times.
    let users = Arc::new(users);
    let rounds = opts.rounds.max(1);
    let per_round = users.len() - lat_users;
    let mut conns = http::connected(addr, opts.concurrency).await;
    let mut measured = Measured::default();
    let mut later = Measured::default();
    let mut sat = Vec::new();
    for round in 0..rounds {
        if round > 0 {
            for u in lat_users..users.len() {
                board.slot(u).arrived.store(0, Ordering::Release);
            }
        }
        if round > 0 && kind == Kind::SloHub {
            let fresh = dev_tokens(addr, &users[lat_users..]).await;
            let sockets = per_round * opts.tabs;
            let failed = board
                .relogin(
                    lat_users..users.len(),
                    &fresh,
                    sockets,
                    Duration::from_secs(30),
                )
                .await;
            if failed > 0 {
                eprintln!("   re-login: {failed} of {sockets} sockets not ready");
            }
            r.connect_failures += failed as u64;
        }
        let next = Arc::new(AtomicUsize::new(lat_users));
        let meter = Meter::start(server);
        let mut workers = Vec::new();
        for mut http in std::mem::take(&mut conns) {
            let (board, next, users, cred) =
                (board.clone(), next.clone(), users.clone(), cred.clone());
            workers.push(tokio::spawn(async move {
                let mut lat = Vec::new();
                let mut missed = 0;
                loop {
                    let u = next.fetch_add(1, Ordering::Relaxed);
                    if u >= users.len() {
                        return (http, lat, missed);
                    }
                    let req = kind.trigger(&users[u], &cred);
                    let t0 = board.now_ns();
                    let (status, _) = http.request(&req).await.expect("trigger");
                    assert!(status < 300, "trigger answered {status}");
                    if await_arrivals(&board, u, tabs, Duration::from_secs(5)).await {
                        lat.push(
                            (board.slot(u).last_ns.load(Ordering::Acquire) - t0) as f64 / 1000.0,
                        );
                    } else {
                        missed += 1;
                    }
                }
            }));
        }
        for w in workers {
            let (http, l, m) = w.await.unwrap();
            conns.push(http);
            sat.extend(l);
            r.missed += m;
        }
        let m = meter.stop(server);
        eprintln!(
            "   round {}: {:.0} triggers/s, {:.1} µs server CPU each",
            round + 1,
            m.rate(per_round),
            m.server_us_per(per_round)
        );
        if round == 0 {
            r.sat_first_round_cpu_us = m.server_us_per(per_round);
        } else {
            later += m;
        }
        measured += m;
    }
    r.sat_later_rounds_cpu_us = if rounds > 1 {
        later.server_us_per(per_round * (rounds - 1))
    } else {
        f64::NAN
    };
    let m = measured;
    let triggers = per_round * rounds;
    r.sat_server_busy_pct = m.server_busy_pct();
    r.sat_generator_busy_pct = m.generator_busy_pct();
    r.sat_triggers_per_s = m.rate(triggers);
    r.sat_cpu_us_per_trigger = m.server_us_per(triggers);
    r.sat_p99_ms = percentile(&mut sat, 0.99) / 1000.0;
    // (bench/profile.sh saturated stops sampling here, before the teardown.)
    eprintln!("   saturated: done");
    for h in readers {
        h.abort();
    }
    server.settle(fds0).await;

    eprintln!("   broadcast");
    // 4. Broadcast: every socket belongs to one user.
    let bcast_user = format!("r{rep}-everyone");
    let bcast_token = if kind == Kind::SloHub {
        dev_tokens(addr, std::slice::from_ref(&bcast_user))
            .await
            .remove(0)
    } else {
        String::new()
    };
    let board = Board::new(1, false);
    let slots: Vec<(usize, &str, &str)> = (0..n_sockets)
        .map(|_| (0, bcast_user.as_str(), bcast_token.as_str()))
        .collect();
    let (readers, failures) = connect_all(kind, addr, &board, &slots, opts.concurrency).await;
    r.connect_failures += failures;
    // (A profiler may attach at this line; the trigger comes 500 ms later.)
    eprintln!("   broadcast: connected");
    tokio::time::sleep(Duration::from_millis(500)).await;
    let req = kind.trigger(&bcast_user, &cred);
    let cpu0 = server.cpu_ns();
    let t0 = board.now_ns();
    let mut http = http::HttpConn::new(addr);
    let (status, _) = http.request(&req).await.expect("broadcast trigger");
    assert!(status < 300, "broadcast answered {status}");
    let all = readers.len() as u32;
    if !await_arrivals(&board, 0, all, Duration::from_secs(60)).await {
        r.missed += (all - board.slot(0).arrived.load(Ordering::Acquire)) as u64;
    }
    let cpu1 = server.cpu_ns();
    r.bcast_ms = (board.slot(0).last_ns.load(Ordering::Acquire) - t0) as f64 / 1e6;
    r.bcast_cpu_us_per_delivery = (cpu1 - cpu0) as f64 / 1000.0 / all.max(1) as f64;
    let cpu2 = server.cpu_settled().await;
    eprintln!("   broadcast: settled");
    r.bcast_cpu_settled_us_per_delivery = (cpu2 - cpu0) as f64 / 1000.0 / all.max(1) as f64;
    for h in readers {
        h.abort();
    }
    server.settle(fds0).await;

    // 5. Triggers authenticated by the users' own JWTs (slo-hub only).
    eprintln!("   authenticated triggers");
    if let (Kind::SloHub, Some(t)) = (kind, tokens) {
        let (rate, cpu) = auth_triggers(server, &t.hs256, opts.concurrency).await;
        (r.hs256_triggers_per_s, r.hs256_cpu_us_per_trigger) = (Some(rate), Some(cpu));
        let (rate, cpu) = auth_triggers(server, &t.rs256, opts.concurrency).await;
        (r.rs256_triggers_per_s, r.rs256_cpu_us_per_trigger) = (Some(rate), Some(cpu));
    }
    r
}

/// Connects every (slot, user, token) socket, `concurrency` at a time; returns
/// the reader tasks and the number of failures.
pub async fn connect_all(
    kind: Kind,
    addr: SocketAddr,
    board: &Arc<Board>,
    sockets: &[(usize, &str, &str)],
    concurrency: usize,
) -> (Vec<JoinHandle<()>>, u64) {
    let sem = Arc::new(Semaphore::new(concurrency));
    let mut pending = Vec::with_capacity(sockets.len());
    for &(slot, user, token) in sockets {
        let permit = sem.clone().acquire_owned().await.unwrap();
        let (user, token, board) = (user.to_string(), token.to_string(), board.clone());
        pending.push(tokio::spawn(async move {
            let s = proto::connect(kind, addr, &user, &token).await;
            drop(permit);
            s.map(|s| tokio::spawn(proto::run_socket(kind, s, board, slot)))
        }));
    }
    let mut readers = Vec::with_capacity(pending.len());
    let mut failures = 0;
    for p in pending {
        match p.await.unwrap() {
            Ok(h) => readers.push(h),
            Err(e) => {
                if failures == 0 {
                    eprintln!("   connect failed: {e}");
                }
                failures += 1;
            }
        }
    }
    (readers, failures)
}

pub async fn await_arrivals(board: &Board, slot: usize, n: u32, timeout: Duration) -> bool {
    let s = board.slot(slot);
    let deadline = tokio::time::Instant::now() + timeout;
    loop {
        let notified = s.notify.notified();
        if s.arrived.load(Ordering::Acquire) >= n {
            return true;
        }
        if tokio::time::timeout_at(deadline, notified).await.is_err() {
            return s.arrived.load(Ordering::Acquire) >= n;
        }
    }
}

/// Dev-issuer tokens for `users`, over one keep-alive connection.
async fn dev_tokens(addr: SocketAddr, users: &[String]) -> Vec<String> {
    let mut http = http::HttpConn::new(addr);
    let mut out = Vec::with_capacity(users.len());
    for u in users {
        let req = http::post_json("/dev/token", None, &format!(r#"{{"sub":"{u}"}}"#));
        let (status, body) = http.request(&req).await.expect("dev token");
        assert_eq!(status, 200, "{}", String::from_utf8_lossy(&body));
        let v: serde_json::Value = serde_json::from_slice(&body).unwrap();
        out.push(v["access_token"].as_str().unwrap().to_string());
    }
    out
}

/// Triggers/s with each user logging itself out with its own token, and the
/// server's CPU µs per trigger.
async fn auth_triggers(server: &Server, tokens: &[String], concurrency: usize) -> (f64, f64) {
    let addr = server.addr;
    let reqs: Arc<Vec<Vec<u8>>> = Arc::new(
        tokens
            .iter()
            .map(|t| http::post_json("/v1/logout", Some(t), r#"{"scope":"user"}"#))
            .collect(),
    );
    let next = Arc::new(AtomicUsize::new(0));
    let conns = http::connected(addr, concurrency).await;
    let meter = Meter::start(server);
    let mut workers = Vec::new();
    for mut http in conns {
        let (reqs, next) = (reqs.clone(), next.clone());
        workers.push(tokio::spawn(async move {
            loop {
                let i = next.fetch_add(1, Ordering::Relaxed);
                if i >= reqs.len() {
                    return;
                }
                let (status, body) = http.request(&reqs[i]).await.expect("trigger");
                assert_eq!(status, 200, "{}", String::from_utf8_lossy(&body));
            }
        }));
    }
    for w in workers {
        w.await.unwrap();
    }
    let m = meter.stop(server);
    (m.rate(tokens.len()), m.server_us_per(tokens.len()))
}

pub fn percentile(v: &mut [f64], q: f64) -> f64 {
    if v.is_empty() {
        return f64::NAN;
    }
    v.sort_by(|a, b| a.total_cmp(b));
    let i = ((v.len() as f64 - 1.0) * q).round() as usize;
    v[i]
}
