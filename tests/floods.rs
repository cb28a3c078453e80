//! Floods at the front door: trickled headers and one address opening too
//! many connections. Every refusal is a precise HTTP answer (or a close at
//! the header deadline), counted in a metric, and other clients are served.

mod common;

use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::time::{Duration, Instant};

use common::TestHub;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpSocket, TcpStream};

/// A TCP connection to the hub from a chosen loopback source address.
async fn connect_from(source: Ipv4Addr, hub: &TestHub) -> TcpStream {
    let addr: SocketAddr = hub.url.trim_start_matches("http://").parse().unwrap();
    let socket = TcpSocket::new_v4().unwrap();
    socket.bind(SocketAddr::new(IpAddr::V4(source), 0)).unwrap();
    socket.connect(addr).await.unwrap()
}

/// Sends a WebSocket upgrade and returns the status line's code.
async fn upgrade_status(stream: &mut TcpStream) -> u16 {
    stream
        .write_all(
            b"GET /v1/ws HTTP/1.1\r\nHost: hub\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
              Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n",
        )
        .await
        .unwrap();
    let mut head = Vec::new();
    let mut chunk = [0u8; 512];
    while !head.windows(4).any(|w| w == b"\r\n\r\n") {
        let n = stream.read(&mut chunk).await.unwrap();
        assert!(n > 0, "closed without an answer");
        head.extend_from_slice(&chunk[..n]);
    }
    let line = String::from_utf8_lossy(&head).to_string();
    line[9..12].parse().unwrap()
}

#[tokio::test]
async fn trickled_headers_are_cut_off_at_the_header_deadline() {
    let hub = TestHub::with(|c| c.http.header_read_timeout_ms = 500).await;
    let mut slow = Vec::new();
    for _ in 0..50 {
        let mut s = connect_from(Ipv4Addr::LOCALHOST, &hub).await;
        s.write_all(b"GET /healthz HTTP/1.1\r\nHost: x\r\n")
            .await
            .unwrap();
        slow.push(s);
    }
    let started = Instant::now();
    // Keep trickling one header byte per 100 ms; the hub must still close.
    for s in &mut slow {
        let closed = async {
            let mut buf = [0u8; 64];
            loop {
                let _ = s.write_all(b"X").await;
                match tokio::time::timeout(Duration::from_millis(100), s.read(&mut buf)).await {
                    Ok(Ok(0)) | Ok(Err(_)) => return,
                    _ => {}
                }
            }
        };
        tokio::time::timeout(Duration::from_secs(3), closed)
            .await
            .expect("a trickling client was not cut off");
    }
    assert!(
        started.elapsed() < Duration::from_secs(3),
        "{:?}",
        started.elapsed()
    );
    // Meanwhile a normal client is served.
    let r = reqwest::get(format!("{}/healthz", hub.url)).await.unwrap();
    assert_eq!(r.status(), 200);
}

#[tokio::test]
async fn one_address_over_its_connection_limit_is_refused_while_others_connect() {
    let hub = TestHub::with(|c| c.limits.max_connections_per_ip = Some(5)).await;
    let flooder = Ipv4Addr::new(127, 0, 0, 2);
    let mut held = Vec::new();
    for _ in 0..5 {
        let mut s = connect_from(flooder, &hub).await;
        assert_eq!(upgrade_status(&mut s).await, 101);
        held.push(s);
    }
    for _ in 0..20 {
        let mut s = connect_from(flooder, &hub).await;
        assert_eq!(upgrade_status(&mut s).await, 429);
    }
    assert_eq!(
        hub.metric("slo_hub_upgrades_rejected_total{reason=\"connections_per_ip\"}")
            .await,
        20.0
    );
    // Another address is not affected.
    let mut other = connect_from(Ipv4Addr::new(127, 0, 0, 3), &hub).await;
    assert_eq!(upgrade_status(&mut other).await, 101);
    // And the flooder gets its place back when it lets go of one.
    held.pop();
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        let mut s = connect_from(flooder, &hub).await;
        match upgrade_status(&mut s).await {
            101 => break,
            429 if Instant::now() < deadline => tokio::time::sleep(Duration::from_millis(20)).await,
            other => panic!("got {other} after a connection was released"),
        }
    }
}

/// Sends a request head that announces a body, then nothing more.
async fn stalled_post(stream: &mut TcpStream, path: &str, extra: &str) {
    let head = format!("POST {path} HTTP/1.1\r\nHost: hub\r\n{extra}Content-Length: 100\r\n\r\n");
    stream.write_all(head.as_bytes()).await.unwrap();
}

/// Reads the status code of the answer (then the connection's end).
async fn status_of(stream: &mut TcpStream) -> u16 {
    let mut head = Vec::new();
    let mut chunk = [0u8; 1024];
    loop {
        let n = stream.read(&mut chunk).await.unwrap_or(0);
        if n == 0 {
            break;
        }
        head.extend_from_slice(&chunk[..n]);
        if head.windows(4).any(|w| w == b"\r\n\r\n") {
            break;
        }
    }
    let line = String::from_utf8_lossy(&head).to_string();
    assert!(line.starts_with("HTTP/1.1 "), "no answer: {line:?}");
    line[9..12].parse().unwrap()
}

/// Request bodies that never arrive (the audit: 20,000 of them held every
/// descriptor and 288 MB) hold their connection only until the body
/// deadline (408), one address holds at most its share, and everyone else
/// is served meanwhile: health, a trigger, a new socket.
#[tokio::test]
async fn bodies_that_never_arrive_are_cut_off_and_starve_no_one() {
    let hub = TestHub::with(|c| {
        c.http.body_read_timeout_ms = 1_000;
        c.limits.max_connections_per_ip = Some(40);
    })
    .await;
    let attacker = Ipv4Addr::new(127, 0, 0, 2);
    let mut stalled = Vec::new();
    let mut refused = 0;
    for _ in 0..60 {
        let mut s = connect_from(attacker, &hub).await;
        let form = "Content-Type: application/x-www-form-urlencoded\r\n";
        stalled_post(&mut s, "/oauth/token", form).await;
        stalled.push(s);
    }
    // The 20 over the address's share are told so at once.
    for s in stalled.iter_mut().skip(40) {
        assert_eq!(status_of(s).await, 429);
        refused += 1;
    }
    assert_eq!(refused, 20);
    // Everyone else is served while the 40 wait.
    let started = Instant::now();
    let r = hub
        .http
        .get(format!("{}/healthz", hub.url))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    let (status, _) = hub
        .backend_logout(serde_json::json!({"sub": "someone"}))
        .await;
    assert_eq!(status, 200);
    let token = hub.token("alice", None).await;
    let (_ws, ready) = hub.socket(&token).await;
    assert_eq!(ready["type"], "ready");
    assert!(
        started.elapsed() < Duration::from_millis(900),
        "served while the bodies stall"
    );
    // The stalled ones end at the body deadline.
    for s in stalled.iter_mut().take(40) {
        assert_eq!(status_of(s).await, 408);
    }
    assert!(started.elapsed() < Duration::from_secs(5));
}

/// Where the credentials are in the headers, they are checked before the
/// body is read: an unauthenticated caller never gets to hold a body open.
#[tokio::test]
async fn credentials_in_headers_are_checked_before_the_body_is_read() {
    let hub = TestHub::with(|c| c.http.body_read_timeout_ms = 30_000).await;
    for path in ["/v1/logout", "/v1/revocations"] {
        let mut s = connect_from(Ipv4Addr::LOCALHOST, &hub).await;
        let headers = "Content-Type: application/json\r\nAuthorization: Bearer slo_not-a-key\r\n";
        stalled_post(&mut s, path, headers).await;
        let answered = tokio::time::timeout(Duration::from_secs(2), status_of(&mut s)).await;
        assert_eq!(answered.ok(), Some(401), "{path}");
    }
}

/// A logged-in `/v1/ws` client, raw.
async fn raw_ready(hub: &TestHub, sub: &str) -> common::RawClient {
    let mut raw = common::RawClient::connect(&hub.url).await;
    let token = hub.token(sub, None).await;
    raw.send_text(&serde_json::json!({"type": "auth", "token": token}).to_string())
        .await;
    assert_eq!(raw.next_json().await["type"], "ready");
    raw
}

#[tokio::test]
async fn a_frame_trickled_byte_by_byte_is_closed_at_its_deadline() {
    let hub = TestHub::with(|c| {
        c.ws.frame_timeout_ms = 300;
        common::pusher::pusher_app(c);
    })
    .await;
    let frame = common::RawClient::frame(0x1, &[b'x'; 1000]);
    // Twelve bytes 50 ms apart: the frame's first byte is 600 ms old, and
    // each byte would have counted as a sign of life.
    let mut raw = raw_ready(&hub, "alice").await;
    raw.trickle(&frame[..12], Duration::from_millis(50)).await;
    assert_eq!(raw.read_until_close().await, Some(1008));
    // The same on a Pusher socket.
    let path = format!("/app/{}?protocol=7", common::pusher::APP_KEY);
    let mut pusher = common::RawClient::connect_to(&hub.url, &path).await;
    assert_eq!(
        pusher.next_json().await["event"],
        "pusher:connection_established"
    );
    pusher
        .trickle(&frame[..12], Duration::from_millis(50))
        .await;
    assert_eq!(pusher.read_until_close().await, Some(1008));
    // Given back once the sockets' tasks end (after their close handshake).
    let deadline = Instant::now() + Duration::from_secs(5);
    while hub.app().partial_memory.used() != 0 {
        assert!(Instant::now() < deadline, "the budget was not given back");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[tokio::test]
async fn unfinished_frames_share_one_bounded_budget_and_starve_no_one() {
    const BUDGET: usize = 64 * 1024;
    let hub = TestHub::with(|c| c.limits.partial_frames_bytes = BUDGET).await;
    // Sockets that each send 15 of a 16 KB frame's kilobytes, then stall.
    let frame = common::RawClient::frame(0x1, &[b'x'; 16_000]);
    let mut stalled = Vec::new();
    for i in 0..12 {
        let mut raw = raw_ready(&hub, &format!("attacker-{i}")).await;
        let _ = raw.write(&frame[..15_000]).await;
        stalled.push(raw);
    }
    // Those that found no room were closed 1013; the budget held.
    let mut refused = 0;
    for raw in &mut stalled {
        if let Ok(code) =
            tokio::time::timeout(Duration::from_millis(200), raw.read_until_close()).await
        {
            assert_eq!(code, Some(1013));
            refused += 1;
        }
    }
    assert!(refused > 0, "some unfinished frames were refused");
    assert!(hub.app().partial_memory.used() <= BUDGET);
    // A client speaking in whole messages is served meanwhile.
    let (mut ws, _) = hub.socket(&hub.token("bob", None).await).await;
    let (status, body) = hub.backend_logout(serde_json::json!({"sub": "bob"})).await;
    assert_eq!(
        (status, body["delivered"].as_u64()),
        (200, Some(1)),
        "{body}"
    );
    assert_eq!(ws.recv_json().await["type"], "logout");
}
