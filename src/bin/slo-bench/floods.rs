//! The flood phase (`--floods`): slo-hub under abuse, bounded in time and
//! count, loopback only. Three runs, each on a fresh hub pinned like the
//! others:
//!
//! 1. **Slow consumers**: 100 clients that never read (4 KiB receive
//!    buffer) ask for pongs as fast as they can, beside 1,000 normal
//!    clients; the normal ones' trigger → logout latency, when each slow
//!    one was cut off, and the hub's RSS.
//! 2. **Connect flood**: 10,000 upgrade attempts from 127.0.0.2 within
//!    10 s, 64 at a time, while 127.0.0.3 connects 100 authenticated sockets.
//! 3. **Slowloris**: 1,000 connections (from 127.0.1.1–10) that trickle
//!    header bytes; when each was closed, against the header timeout, and a
//!    normal request meanwhile.
//!
//! Writes `floods-<date>.md` next to the other results.

use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpSocket, TcpStream};
use tokio::sync::Semaphore;

use crate::proto::{Board, Kind, TriggerCred};
use crate::servers::{self, Env, Server};
use crate::{Opts, await_arrivals, connect_all, http, percentile};

const NORMAL: usize = 1_000;
const SLOW: usize = 100;
const OUTBOUND_LIMIT: usize = 64 * 1024;
const UPGRADES: usize = 10_000;
const SLOWLORIS: usize = 1_000;
const HEADER_TIMEOUT_MS: u64 = 2_000;

pub fn run(opts: &Opts, mut env: Env, rt: &tokio::runtime::Runtime, tokens: &[String]) {
    assert!(
        tokens.len() >= NORMAL + SLOW,
        "--auth-triggers must be at least 1100"
    );
    let mut md = String::from(
        "# slo-hub under floods\n\nHub pinned to one core, clients on another; loopback.\n\n",
    );
    let mut port = opts.port;

    // 1. Slow consumers.
    env.hub_extra = format!(
        "[ws]\noutbound_buffer_bytes = {OUTBOUND_LIMIT}\nmax_messages_per_sec = 100000\nmessage_burst = 100000\n"
    );
    port += 1;
    let hub = Server::start(Kind::SloHub, port, &env).expect("hub starts");
    let s = rt.block_on(slow_consumers(&hub, opts, tokens));
    hub.stop();
    md.push_str(&format!(
        "## 1. {SLOW} clients that never read beside {NORMAL} normal ones\n\n\
         Outbound limit {OUTBOUND_LIMIT} bytes per socket; the slow ones send 125-byte pings without reading the pongs.\n\n\
         | figure | value |\n|---|---|\n\
         | normal clients' logout latency p50 / p99 (µs), during the flood | {:.0} / {:.0} |\n\
         | normal logouts missed | {} |\n\
         | slow clients cut off | {} of {SLOW} (hub counted {}) |\n\
         | time to cut off p50 / max (ms) | {:.0} / {:.0} |\n\
         | hub RSS before / peak / after (MiB) | {:.1} / {:.1} / {:.1} |\n\n",
        s.p50_us, s.p99_us, s.missed, s.cut_off, s.counted, s.cut_p50_ms, s.cut_max_ms,
        s.rss[0], s.rss[1], s.rss[2],
    ));

    // 2 and 3: real limits (the generated config's are lifted for the benchmark).
    env.hub_extra = format!(
        "[http]\nheader_read_timeout_ms = {HEADER_TIMEOUT_MS}\n\n[limits]\nmax_connections = 100000\nmax_connections_per_ip = 20000\nconnects_per_ip_per_sec = 200\nconnect_burst = 400\nuser_triggers_per_sec = 5\nuser_trigger_burst = 10\n"
    );
    port += 1;
    let hub = Server::start(Kind::SloHub, port, &env).expect("hub starts");
    let c = rt.block_on(connect_flood(&hub, opts, tokens));
    md.push_str(&format!(
        "## 2. {UPGRADES} upgrade attempts from one address\n\n\
         Limit: 200 connections/s per address, burst 400.\n\n\
         | figure | value |\n|---|---|\n\
         | attempts / seconds | {} / {:.1} |\n\
         | upgraded (101) / refused 429 / other | {} / {} / {} |\n\
         | another address meanwhile: sockets connected and authenticated | {} of 100 |\n\
         | its connect p50 / p99 (ms) | {:.1} / {:.1} |\n\n",
        c.attempts,
        c.secs,
        c.upgraded,
        c.refused,
        c.other,
        c.other_ok,
        c.other_p50_ms,
        c.other_p99_ms,
    ));
    let l = rt.block_on(slowloris(&hub));
    hub.stop();
    md.push_str(&format!(
        "## 3. {SLOWLORIS} slowloris connections\n\n\
         Header timeout {HEADER_TIMEOUT_MS} ms; each connection sends a partial request, then one byte every 500 ms.\n\n\
         | figure | value |\n|---|---|\n\
         | closed by the hub | {} of {SLOWLORIS} |\n\
         | closed after p50 / max (ms) | {:.0} / {:.0} |\n\
         | a normal `GET /healthz` meanwhile (ms) | {:.1} |\n",
        l.closed, l.p50_ms, l.max_ms, l.healthz_ms,
    ));

    std::fs::create_dir_all(&opts.out).unwrap();
    let path = opts
        .out
        .join(format!("floods-{}.md", crate::report::chrono_like_stamp()));
    std::fs::write(&path, &md).unwrap();
    print!("{md}");
    println!("wrote {}", path.display());
}

struct SlowFigures {
    p50_us: f64,
    p99_us: f64,
    missed: u64,
    cut_off: usize,
    counted: f64,
    cut_p50_ms: f64,
    cut_max_ms: f64,
    rss: [f64; 3],
}

async fn slow_consumers(hub: &Server, opts: &Opts, tokens: &[String]) -> SlowFigures {
    let addr = hub.addr;
    let mib = |kib: u64| kib as f64 / 1024.0;
    let rss_before = hub.rss_kib();
    let users: Vec<String> = (0..NORMAL).map(|i| format!("hs-{i}")).collect();
    let board = Board::new(NORMAL, true);
    let slots: Vec<(usize, &str, &str)> = (0..NORMAL)
        .map(|i| (i, users[i].as_str(), tokens[i].as_str()))
        .collect();
    let (readers, failures) =
        connect_all(Kind::SloHub, addr, &board, &slots, opts.concurrency).await;
    assert_eq!(failures, 0, "normal clients failed to connect");

    // The slow ones: authenticated, then pings without reading.
    let started = Instant::now();
    let mut flooders = Vec::new();
    for token in &tokens[NORMAL..NORMAL + SLOW] {
        let mut s = raw_ws(addr, Ipv4Addr::LOCALHOST, Some(4096)).await;
        s.write_all(&masked_text(&format!(
            r#"{{"type":"auth","token":"{token}"}}"#
        )))
        .await
        .unwrap();
        flooders.push(tokio::spawn(async move {
            let ping = masked(0x9, &[7u8; 125]);
            let burst: Vec<u8> = ping
                .iter()
                .copied()
                .cycle()
                .take(ping.len() * 256)
                .collect();
            // Until the hub cuts the connection (or 30 s pass).
            while started.elapsed() < Duration::from_secs(30) {
                if s.write_all(&burst).await.is_err() {
                    return Some(started.elapsed());
                }
            }
            None
        }));
    }
    // RSS, sampled while the flood runs.
    let peak = Arc::new(AtomicU64::new(rss_before));
    let pid = hub.pid();
    let sampler = {
        let peak = peak.clone();
        tokio::spawn(async move {
            loop {
                let kib = servers::rss_kib_of(pid);
                peak.fetch_max(kib, Ordering::Relaxed);
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        })
    };

    // Meanwhile: every normal user logged out, one at a time.
    let cred = TriggerCred {
        api_key: servers::BENCH_API_KEY.into(),
        iss: servers::HS256_ISS.into(),
    };
    let mut conn = http::HttpConn::new(addr);
    let mut lat = Vec::new();
    let mut missed = 0;
    for (u, user) in users.iter().enumerate() {
        let req = Kind::SloHub.trigger(user, &cred);
        let t0 = board.now_ns();
        let (status, _) = conn.request(&req).await.expect("trigger");
        assert!(status < 300, "trigger answered {status}");
        if await_arrivals(&board, u, 1, Duration::from_secs(5)).await {
            let last = board.slot(u).last_ns.load(Ordering::Acquire);
            lat.push((last - t0) as f64 / 1000.0);
        } else {
            missed += 1;
        }
    }
    let mut cut = Vec::new();
    for f in flooders {
        if let Some(t) = f.await.unwrap() {
            cut.push(t.as_secs_f64() * 1000.0);
        }
    }
    sampler.abort();
    for r in readers {
        r.abort();
    }
    let counted = metric(addr, "slo_hub_slow_consumers_total").await;
    let rss_after = hub.rss_kib();
    let cut_off = cut.len();
    SlowFigures {
        p50_us: percentile(&mut lat, 0.5),
        p99_us: percentile(&mut lat, 0.99),
        missed,
        cut_off,
        counted,
        cut_p50_ms: percentile(&mut cut, 0.5),
        cut_max_ms: percentile(&mut cut, 1.0),
        rss: [
            mib(rss_before),
            mib(peak.load(Ordering::Relaxed)),
            mib(rss_after),
        ],
    }
}

struct ConnectFigures {
    attempts: usize,
    secs: f64,
    upgraded: usize,
    refused: usize,
    other: usize,
    other_ok: usize,
    other_p50_ms: f64,
    other_p99_ms: f64,
}

async fn connect_flood(hub: &Server, opts: &Opts, tokens: &[String]) -> ConnectFigures {
    let addr = hub.addr;
    let flooder = Ipv4Addr::new(127, 0, 0, 2);
    let sem = Arc::new(Semaphore::new(opts.concurrency));
    let started = Instant::now();
    let mut attempts = Vec::with_capacity(UPGRADES);
    for _ in 0..UPGRADES {
        if started.elapsed() > Duration::from_secs(10) {
            break;
        }
        let permit = sem.clone().acquire_owned().await.unwrap();
        attempts.push(tokio::spawn(async move {
            let status = upgrade_status(addr, flooder).await;
            drop(permit);
            status
        }));
    }
    // Another address connects (and authenticates) meanwhile.
    let board = Board::new(100, true);
    let mut other_ms = Vec::new();
    let mut other_ok = 0;
    for (i, token) in tokens.iter().take(100).enumerate() {
        let t0 = Instant::now();
        let s = crate::proto::connect_from(
            Kind::SloHub,
            addr,
            IpAddr::V4(Ipv4Addr::new(127, 0, 0, 3)),
            &format!("hs-{i}"),
            token,
        )
        .await;
        if let Ok(s) = s {
            other_ok += 1;
            other_ms.push(t0.elapsed().as_secs_f64() * 1000.0);
            tokio::spawn(crate::proto::run_socket(Kind::SloHub, s, board.clone(), i));
        }
    }
    let (mut upgraded, mut refused, mut other) = (0, 0, 0);
    let n = attempts.len();
    for a in attempts {
        match a.await.unwrap() {
            Some(101) => upgraded += 1,
            Some(429) => refused += 1,
            _ => other += 1,
        }
    }
    ConnectFigures {
        attempts: n,
        secs: started.elapsed().as_secs_f64(),
        upgraded,
        refused,
        other,
        other_ok,
        other_p50_ms: percentile(&mut other_ms, 0.5),
        other_p99_ms: percentile(&mut other_ms, 0.99),
    }
}

struct SlowlorisFigures {
    closed: usize,
    p50_ms: f64,
    max_ms: f64,
    healthz_ms: f64,
}

async fn slowloris(hub: &Server) -> SlowlorisFigures {
    let addr = hub.addr;
    let mut conns = Vec::with_capacity(SLOWLORIS);
    for i in 0..SLOWLORIS {
        let source = Ipv4Addr::new(127, 0, 1, 1 + (i % 10) as u8);
        conns.push(tokio::spawn(async move {
            let Ok(mut s) = tcp_from(addr, source, None).await else {
                return None;
            };
            let opened = Instant::now();
            if s.write_all(b"GET /healthz HTTP/1.1\r\nHost: x\r\n")
                .await
                .is_err()
            {
                return Some(opened.elapsed());
            }
            let mut buf = [0u8; 256];
            // Trickle a header byte every 500 ms until the hub closes (or 10 s).
            while opened.elapsed() < Duration::from_secs(10) {
                match tokio::time::timeout(Duration::from_millis(500), s.read(&mut buf)).await {
                    Ok(Ok(0)) | Ok(Err(_)) => return Some(opened.elapsed()),
                    Ok(Ok(_)) => {}
                    Err(_) => {
                        if s.write_all(b"X").await.is_err() {
                            return Some(opened.elapsed());
                        }
                    }
                }
            }
            None
        }));
    }
    // A normal request once they are all open.
    tokio::time::sleep(Duration::from_millis(300)).await;
    let t0 = Instant::now();
    let mut conn = http::HttpConn::new(addr);
    let (status, _) = conn
        .request(b"GET /healthz HTTP/1.1\r\nHost: hub\r\n\r\n")
        .await
        .expect("healthz");
    assert_eq!(status, 200);
    let healthz_ms = t0.elapsed().as_secs_f64() * 1000.0;
    let mut closed = Vec::new();
    for c in conns {
        if let Some(t) = c.await.unwrap() {
            closed.push(t.as_secs_f64() * 1000.0);
        }
    }
    SlowlorisFigures {
        closed: closed.len(),
        p50_ms: percentile(&mut closed, 0.5),
        max_ms: percentile(&mut closed, 1.0),
        healthz_ms,
    }
}

async fn tcp_from(
    addr: SocketAddr,
    source: Ipv4Addr,
    rcvbuf: Option<u32>,
) -> std::io::Result<TcpStream> {
    let socket = TcpSocket::new_v4()?;
    if let Some(n) = rcvbuf {
        socket.set_recv_buffer_size(n)?;
    }
    socket.bind(SocketAddr::new(IpAddr::V4(source), 0))?;
    socket.connect(addr).await
}

const UPGRADE: &[u8] =
    b"GET /v1/ws HTTP/1.1\r\nHost: hub\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n";

/// The status code of an upgrade from `source`, `None` if the connection failed.
async fn upgrade_status(addr: SocketAddr, source: Ipv4Addr) -> Option<u16> {
    let mut s = tcp_from(addr, source, None).await.ok()?;
    s.write_all(UPGRADE).await.ok()?;
    let mut head = Vec::new();
    let mut chunk = [0u8; 512];
    while !head.windows(4).any(|w| w == b"\r\n\r\n") {
        let n = s.read(&mut chunk).await.ok()?;
        if n == 0 {
            return None;
        }
        head.extend_from_slice(&chunk[..n]);
    }
    std::str::from_utf8(head.get(9..12)?).ok()?.parse().ok()
}

/// An upgraded raw socket (the handshake's answer consumed).
async fn raw_ws(addr: SocketAddr, source: Ipv4Addr, rcvbuf: Option<u32>) -> TcpStream {
    let mut s = tcp_from(addr, source, rcvbuf).await.expect("connect");
    s.write_all(UPGRADE).await.unwrap();
    let mut head = Vec::new();
    let mut byte = [0u8; 1];
    while !head.ends_with(b"\r\n\r\n") {
        let n = s.read(&mut byte).await.unwrap();
        assert!(n == 1, "closed during the handshake");
        head.push(byte[0]);
    }
    assert!(
        head.starts_with(b"HTTP/1.1 101"),
        "{}",
        String::from_utf8_lossy(&head)
    );
    s
}

fn masked(opcode: u8, payload: &[u8]) -> Vec<u8> {
    let mut out = Vec::new();
    slo_hub::ws::codec::encode_frame(&mut out, opcode, payload, Some([1, 2, 3, 4]));
    out
}

fn masked_text(text: &str) -> Vec<u8> {
    masked(0x1, text.as_bytes())
}

async fn metric(addr: SocketAddr, name: &str) -> f64 {
    let mut conn = http::HttpConn::new(addr);
    let Ok((_, body)) = conn
        .request(b"GET /metrics HTTP/1.1\r\nHost: hub\r\n\r\n")
        .await
    else {
        return f64::NAN;
    };
    String::from_utf8_lossy(&body)
        .lines()
        .find_map(|l| l.strip_prefix(name)?.trim().parse().ok())
        .unwrap_or(0.0)
}
