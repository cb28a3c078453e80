//! What peers that stop reading can pin in the kernel. The audit: 500
//! Pusher subscribers that never read and 700 events of 9 KB drove the
//! machine's TCP memory to 1.5 GB (each send buffer grew to `tcp_wmem` max).
//! Each socket's send buffer is now fixed (`limits.socket_send_buffer_bytes`)
//! and its user-space backlog bounded (`ws.outbound_buffer_bytes`); a socket
//! past both is cut off, and one that does not take its close frame in time
//! is reset, so nothing stays queued for it. This measures the machine-wide
//! figure (`/proc/net/sockstat`) under the same kind of attack.
//!
//! Its own test binary: nothing else of ours runs while it measures.

mod common;

use std::net::SocketAddr;
use std::time::Duration;

use common::TestHub;
use common::pusher::*;
use serde_json::json;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

const SUBSCRIBERS: usize = 200;
const EVENTS: usize = 300;
const EVENT_BYTES: usize = 9 * 1024;

/// TCP memory in use, machine-wide, in pages.
fn tcp_pages() -> u64 {
    let text = std::fs::read_to_string("/proc/net/sockstat").unwrap();
    let line = text.lines().find(|l| l.starts_with("TCP:")).unwrap();
    let mut words = line.split_whitespace();
    while let Some(w) = words.next() {
        if w == "mem" {
            return words.next().unwrap().parse().unwrap();
        }
    }
    panic!("no TCP mem in {line}");
}

/// A Pusher client that subscribes to `flood` and never reads again.
async fn silent_subscriber(addr: SocketAddr) -> TcpStream {
    let mut s = TcpStream::connect(addr).await.unwrap();
    let req = format!(
        "GET /app/{APP_KEY}?protocol=7 HTTP/1.1\r\nHost: {addr}\r\nUpgrade: websocket\r\n\
         Connection: Upgrade\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n\
         Sec-WebSocket-Version: 13\r\n\r\n"
    );
    s.write_all(req.as_bytes()).await.unwrap();
    let mut head = Vec::new();
    let mut b = [0u8; 1];
    while !head.ends_with(b"\r\n\r\n") {
        s.read_exact(&mut b).await.unwrap();
        head.push(b[0]);
    }
    assert!(head.starts_with(b"HTTP/1.1 101"));
    let sub = json!({"event": "pusher:subscribe", "data": {"channel": "flood"}}).to_string();
    let mut frame = Vec::new();
    slo_hub::ws::codec::encode_frame(&mut frame, 0x1, sub.as_bytes(), Some([1, 2, 3, 4]));
    s.write_all(&frame).await.unwrap();
    s
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn peers_that_stop_reading_pin_bounded_kernel_memory() {
    let hub = TestHub::with(|c| {
        pusher_app(c);
        c.limits.max_connections_per_ip = Some(10_000);
        c.limits.connects_per_ip_per_sec = 100_000;
        c.limits.connect_burst = 100_000;
    })
    .await;
    let addr: SocketAddr = hub.url.trim_start_matches("http://").parse().unwrap();
    let before = tcp_pages();
    let mut silent = Vec::new();
    for _ in 0..SUBSCRIBERS {
        silent.push(silent_subscriber(addr).await);
    }
    let presence = hub.app().pusher.presence();
    let subscribed = || async {
        presence
            .channels(APP_ID, "flood")
            .await
            .unwrap()
            .first()
            .map(|c| c.1)
    };
    for _ in 0..500 {
        if subscribed().await == Some(SUBSCRIBERS as u64) {
            break;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    assert_eq!(subscribed().await, Some(SUBSCRIBERS as u64));

    let data = "x".repeat(EVENT_BYTES);
    let mut peak = 0;
    for i in 0..EVENTS {
        let body = json!({"name": "big", "channels": ["flood"], "data": data}).to_string();
        let path = signed(
            "POST",
            &format!("/apps/{APP_ID}/events"),
            &body,
            now(),
            APP_SECRET,
            &[],
        );
        let (status, answer) = api(&hub, "POST", &path, &body).await;
        assert_eq!(status, 200, "event {i}: {answer}");
        peak = peak.max(tcp_pages().saturating_sub(before));
    }
    let offered_mb = SUBSCRIBERS * EVENTS * EVENT_BYTES / (1 << 20);
    eprintln!(
        "{SUBSCRIBERS} silent subscribers offered {offered_mb} MiB: TCP memory peak +{} MiB",
        peak * 4 / 1024
    );
    // Per socket: its fixed send buffer (doubled by the kernel) and the
    // peer's untouched receive buffer, with room to spare: 512 KiB.
    let bound_pages = (SUBSCRIBERS * 512 / 4) as u64;
    assert!(peak <= bound_pages, "peak {peak} pages > {bound_pages}");
    assert_eq!(
        hub.metric("slo_hub_slow_consumers_total").await,
        SUBSCRIBERS as f64,
        "every silent subscriber was cut off"
    );
    // The attacker lets go of what it received; then nothing of the hub's
    // side may stay queued (closed sockets that kept their send queues
    // would, for minutes).
    drop(silent);
    let mut after = u64::MAX;
    for _ in 0..300 {
        after = tcp_pages().saturating_sub(before);
        if after <= bound_pages / 20 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    eprintln!("after the cut-offs: +{} KiB", after * 4);
    assert!(after <= bound_pages / 20, "still held: {after} pages");
}

fn now() -> u64 {
    slo_hub::util::now_secs()
}
