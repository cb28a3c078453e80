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
    let hub = TestHub::with(|c| c.limits.max_connections_per_ip = 5).await;
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
