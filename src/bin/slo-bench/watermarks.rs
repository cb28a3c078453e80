//! The watermark phase: what a node pays when Redis holds millions of
//! logouts. Redis is filled with N watermark records (pipelined SETs, as
//! the hub writes them); then a node starts on it (time to `/readyz` 200,
//! RSS), and sockets authenticate one at a time as users who all have a
//! watermark there (older than their tokens, so each `auth` reads it
//! through and is accepted). The same is measured on one node without
//! Redis for reference. Writes `watermarks-<date>.md`.

use std::io::{Read, Write};
use std::time::{Duration, Instant};

use crate::proto::{self, Kind};
use crate::servers::{self, Env, RedisServer, Server};
use crate::{Opts, percentile};

/// Sockets authenticated one at a time per setup.
const AUTHS: usize = 4000;

struct Row {
    label: String,
    start_s: f64,
    rss_start_mib: f64,
    rss_after_mib: f64,
    p50_us: f64,
    p99_us: f64,
}

pub fn run(opts: &Opts, mut env: Env, rt: &tokio::runtime::Runtime, tokens: &[String], n: usize) {
    let auths = AUTHS.min(tokens.len());
    let mut rows = Vec::new();
    let mut port = opts.port;

    eprintln!("== 1 node, embedded store");
    env.hub_store = "embedded".into();
    rows.push(measure(
        "1 node, embedded store (reference)",
        &env,
        port,
        rt,
        &tokens[..auths],
    ));

    port += 1;
    let redis = RedisServer::start(port, &opts.server_cpu).expect("redis-server starts");
    let t = Instant::now();
    fill(port, n);
    let fill_s = t.elapsed().as_secs_f64();
    let redis_mib = redis_used_mib(port);
    eprintln!("   Redis holds {n} watermarks ({redis_mib:.0} MiB), filled in {fill_s:.1} s");
    env.hub_cluster = Some(redis.url.clone());
    port += 1;
    rows.push(measure(
        &format!("1 node on Redis holding {n} watermarks"),
        &env,
        port,
        rt,
        &tokens[..auths],
    ));
    drop(redis);

    let mut md = format!(
        "# Watermarks in Redis, not in memory\n\nRedis holds {n} watermark records ({redis_mib:.0} MiB in Redis, filled in {fill_s:.1} s). A node starts on it; then {auths} sockets authenticate one at a time, each as a user with a watermark in Redis (older than the token: read through, accepted). Latency is connect + upgrade + `auth` → `ready`. Start is spawn → `/readyz` 200 (including the harness's 300 ms settle after the port opens). Hub and redis-server pinned to CPU {}.\n\n| setup | start (s) | RSS after start (MiB) | RSS after the auths (MiB) | p50 (µs) | p99 (µs) |\n|---|---|---|---|---|---|\n",
        opts.server_cpu
    );
    for r in &rows {
        md.push_str(&format!(
            "| {} | {:.2} | {:.1} | {:.1} | {:.0} | {:.0} |\n",
            r.label, r.start_s, r.rss_start_mib, r.rss_after_mib, r.p50_us, r.p99_us
        ));
    }
    std::fs::create_dir_all(&opts.out).unwrap();
    let path = opts.out.join(format!(
        "watermarks-{}.md",
        crate::report::chrono_like_stamp()
    ));
    std::fs::write(&path, &md).unwrap();
    print!("{md}");
    println!("wrote {}", path.display());
}

fn measure(
    label: &str,
    env: &Env,
    port: u16,
    rt: &tokio::runtime::Runtime,
    tokens: &[String],
) -> Row {
    let t = Instant::now();
    let server = Server::start(Kind::SloHub, port, env).expect("hub starts");
    wait_ready(port);
    let start_s = t.elapsed().as_secs_f64();
    let rss_start_mib = server.rss_kib() as f64 / 1024.0;
    let mut lat = rt.block_on(async {
        let mut lat = Vec::with_capacity(tokens.len());
        let mut open = Vec::with_capacity(tokens.len());
        for (i, token) in tokens.iter().enumerate() {
            let t = Instant::now();
            let s = proto::connect(Kind::SloHub, server.addr, &format!("hs-{i}"), token)
                .await
                .expect("auth accepted");
            lat.push(t.elapsed().as_secs_f64() * 1e6);
            open.push(s);
        }
        lat
    });
    let rss_after_mib = server.rss_kib() as f64 / 1024.0;
    let row = Row {
        label: label.into(),
        start_s,
        rss_start_mib,
        rss_after_mib,
        p50_us: percentile(&mut lat, 0.5),
        p99_us: percentile(&mut lat, 0.99),
    };
    eprintln!(
        "   start {:.2} s, RSS {:.1} → {:.1} MiB, p50 {:.0} us, p99 {:.0} us",
        row.start_s, row.rss_start_mib, row.rss_after_mib, row.p50_us, row.p99_us
    );
    server.stop();
    row
}

fn wait_ready(port: u16) {
    let deadline = Instant::now() + Duration::from_secs(120);
    loop {
        if let Ok(mut s) = std::net::TcpStream::connect(("127.0.0.1", port)) {
            let _ = s.write_all(b"GET /readyz HTTP/1.1\r\nhost: x\r\nconnection: close\r\n\r\n");
            let mut head = [0u8; 12];
            if s.read_exact(&mut head).is_ok() && &head[9..12] == b"200" {
                return;
            }
        }
        assert!(Instant::now() < deadline, "the hub never became ready");
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// N watermark records for users `hs-{i}`, as the hub stores them (an
/// hour old, kept for a day), written in pipelined batches.
fn fill(port: u16, n: usize) {
    let mut redis = std::net::TcpStream::connect(("127.0.0.1", port)).unwrap();
    let at = slo_hub::util::now_ms() - 3_600_000;
    let ttl = 24 * 3_600_000i64;
    const BATCH: usize = 20_000;
    let mut buf = Vec::with_capacity(BATCH * 400);
    let mut done = 0;
    while done < n {
        buf.clear();
        let end = (done + BATCH).min(n);
        for i in done..end {
            let key = format!("slo:watermarks:u\u{1f}{}\u{1f}hs-{i}", servers::HS256_ISS);
            let event = serde_json::json!({
                "iss": servers::HS256_ISS, "scope": "user", "key": format!("hs-{i}"),
                "id": format!("bench-{i}"), "sub": format!("hs-{i}"), "sid": null,
                "reason": "user_logout", "at_ms": at,
            });
            let record = serde_json::json!({
                "version": at, "expires_at_ms": at + ttl, "data": event.to_string(),
            })
            .to_string();
            let ttl_s = ttl.to_string();
            let args: [&[u8]; 5] = [
                b"SET",
                key.as_bytes(),
                record.as_bytes(),
                b"PX",
                ttl_s.as_bytes(),
            ];
            buf.extend_from_slice(format!("*{}\r\n", args.len()).as_bytes());
            for a in args {
                buf.extend_from_slice(format!("${}\r\n", a.len()).as_bytes());
                buf.extend_from_slice(a);
                buf.extend_from_slice(b"\r\n");
            }
        }
        redis.write_all(&buf).unwrap();
        // One "+OK\r\n" per SET.
        let mut want = (end - done) * 5;
        let mut sink = [0u8; 65536];
        while want > 0 {
            let got = redis.read(&mut sink[..want.min(65536)]).unwrap();
            assert!(got > 0, "Redis closed the connection");
            want -= got;
        }
        done = end;
        if done % 1_000_000 == 0 {
            eprintln!("   {done} watermarks written");
        }
    }
}

fn redis_used_mib(port: u16) -> f64 {
    let out = std::process::Command::new("redis-cli")
        .args(["-p", &port.to_string(), "info", "memory"])
        .output()
        .expect("redis-cli runs");
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .find_map(|l| l.strip_prefix("used_memory:"))
        .and_then(|v| v.trim().parse::<f64>().ok())
        .map_or(f64::NAN, |b| b / (1024.0 * 1024.0))
}
