//! Running out of file descriptors: the hub's connection limit follows the
//! process's descriptor limit, so connections beyond it are answered 503 at
//! once instead of hanging unanswered at EMFILE (the audit: `/healthz` and
//! triggers timed out, and "accept failed" was logged every 50 ms).

mod common;

use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::time::Duration;

use common::process::Running;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpSocket;

#[test]
fn beyond_the_descriptor_limit_connections_are_answered_503_not_left_hanging() {
    slo_hub::auth::crypto::install();
    let dir = tempfile::tempdir().unwrap();
    let hub = Running::start_with_fd_limit(
        128,
        &["--no-demo", "--listen", "127.0.0.1:0"],
        &[],
        dir.path(),
    );
    let base = hub.line("hub").unwrap();
    let addr: SocketAddr = base.trim_start_matches("http://").parse().unwrap();
    let rt = tokio::runtime::Runtime::new().unwrap();
    let (answered, mut held) = rt.block_on(async {
        // 150 connections from 150 addresses: more than 128 descriptors.
        let mut conns = Vec::new();
        for i in 0..150u8 {
            let s = TcpSocket::new_v4().unwrap();
            s.bind(SocketAddr::new(
                IpAddr::V4(Ipv4Addr::new(127, 0, 1, i + 1)),
                0,
            ))
            .unwrap();
            conns.push(s.connect(addr).await.unwrap());
        }
        let probes = conns.into_iter().map(|mut c| async move {
            let mut buf = [0u8; 512];
            let read = tokio::time::timeout(Duration::from_secs(1), c.read(&mut buf)).await;
            (c, read.ok().and_then(|r| r.ok()).map(|n| buf[..n].to_vec()))
        });
        let mut answered = 0;
        let mut held = Vec::new();
        for (c, got) in futures_util::future::join_all(probes).await {
            match got {
                Some(bytes) if !bytes.is_empty() => {
                    let head = String::from_utf8_lossy(&bytes).to_string();
                    assert!(head.starts_with("HTTP/1.1 503"), "{head}");
                    answered += 1;
                }
                // Admitted: waiting for its request (nothing sent yet).
                _ => held.push(c),
            }
        }
        (answered, held)
    });
    assert!(
        held.len() < 128 && answered + held.len() == 150,
        "{answered} answered 503, {} held",
        held.len()
    );
    assert!(answered >= 150 - 128, "{answered}");
    // The admitted ones work, and once they go, everyone is served again.
    rt.block_on(async {
        let mut c = held.pop().unwrap();
        c.write_all(b"GET /healthz HTTP/1.1\r\nHost: hub\r\nConnection: close\r\n\r\n")
            .await
            .unwrap();
        let mut out = String::new();
        c.read_to_string(&mut out).await.unwrap();
        assert!(out.starts_with("HTTP/1.1 200"), "{out}");
    });
    drop(held);
    let ok = rt.block_on(async {
        for _ in 0..50 {
            if let Ok(r) = reqwest::get(format!("{base}/healthz")).await
                && r.status() == 200
            {
                return true;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        false
    });
    assert!(ok, "served again once the connections closed");
    let (code, log) = hub.terminate();
    assert_eq!(code, 0);
    assert!(log.contains("connection limits"), "{log}");
    let accept_failures = log.matches("accept failed").count();
    assert!(
        accept_failures <= 2,
        "the log is not flooded: {accept_failures}"
    );
}
