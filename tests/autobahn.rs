//! RFC 6455 conformance of the hub's own codec (`ws::codec`): the Autobahn
//! TestSuite cases 1–10, driven by `kosoku` (PyPI; it runs Autobahn's own
//! case files) against an echo server built on the codec exactly as the
//! hub's socket uses it. Every case's verdict is compared with
//! `tests/autobahn/expected.json` (all OK, or NON-STRICT/INFORMATIONAL where
//! Autobahn says the RFC allows it); nothing may be FAILED or UNCLEAN.

mod common;

use std::collections::BTreeMap;
use std::process::Command;

use slo_hub::ws::codec::{self, Decoder, Flow, Message, Role};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

/// Big enough for Autobahn's largest messages (case 9: 16 MiB).
const MAX_MESSAGE: usize = 32 << 20;

async fn echo(mut stream: TcpStream) {
    let _ = stream.set_nodelay(true);
    let mut buf = Vec::new();
    let mut chunk = vec![0u8; 64 * 1024];
    // The upgrade: just enough HTTP for Autobahn's client.
    let head_end = loop {
        let Ok(n) = stream.read(&mut chunk).await else {
            return;
        };
        if n == 0 {
            return;
        }
        buf.extend_from_slice(&chunk[..n]);
        if let Some(i) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
            break i + 4;
        }
    };
    let head = String::from_utf8_lossy(&buf[..head_end]).to_string();
    let Some(key) = head.lines().find_map(|l| {
        let (k, v) = l.split_once(':')?;
        k.trim()
            .eq_ignore_ascii_case("sec-websocket-key")
            .then(|| v.trim().to_string())
    }) else {
        let _ = stream
            .write_all(b"HTTP/1.1 400 Bad Request\r\ncontent-length: 0\r\n\r\n")
            .await;
        return;
    };
    let resp = format!(
        "HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Accept: {}\r\n\r\n",
        codec::accept_key(key.as_bytes())
    );
    if stream.write_all(resp.as_bytes()).await.is_err() {
        return;
    }
    buf.drain(..head_end);
    let mut decoder = Decoder::new(Role::Server, MAX_MESSAGE);
    loop {
        let mut out = Vec::new();
        let mut closing = false;
        let result = decoder.decode(&mut buf, |m| {
            match m {
                Message::Text(t) => {
                    codec::encode_frame(&mut out, codec::OP_TEXT, t.as_bytes(), None)
                }
                Message::Binary(b) => codec::encode_frame(&mut out, codec::OP_BINARY, b, None),
                Message::Ping(p) => codec::encode_frame(&mut out, codec::OP_PONG, p, None),
                Message::Pong(_) | Message::Fragment => {}
                Message::Close(c) => {
                    match c {
                        Some((code, _)) => out.extend_from_slice(&codec::close_frame(code, "")),
                        None => codec::encode_frame(&mut out, codec::OP_CLOSE, &[], None),
                    }
                    closing = true;
                    return Flow::Stop;
                }
            }
            Flow::Continue
        });
        match result {
            Ok(consumed) => {
                buf.drain(..consumed);
            }
            Err(code) => {
                out.extend_from_slice(&codec::close_frame(code.code(), ""));
                closing = true;
            }
        }
        if !out.is_empty() && stream.write_all(&out).await.is_err() {
            return;
        }
        if closing {
            let _ = stream.shutdown().await;
            // Drain until the peer closes, so it sees our close, not a reset.
            while matches!(stream.read(&mut chunk).await, Ok(n) if n > 0) {}
            return;
        }
        match stream.read(&mut chunk).await {
            Ok(0) | Err(_) => return,
            Ok(n) => buf.extend_from_slice(&chunk[..n]),
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_codec_passes_autobahn_cases_1_to_10() {
    let Some(kosoku) = common::require_program("kosoku", &[]) else {
        return;
    };
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        while let Ok((s, _)) = listener.accept().await {
            tokio::spawn(echo(s));
        }
    });
    let out = tempfile::tempdir().unwrap();
    let mut cmd = Command::new(kosoku);
    cmd.arg(addr.to_string())
        .arg("-o")
        .arg(out.path())
        .arg("-p")
        .arg("4");
    // Autobahn has no section 8.
    for case in [1, 2, 3, 4, 5, 6, 7, 9, 10] {
        cmd.arg("-i").arg(format!("{case}.*"));
    }
    let status = tokio::task::spawn_blocking(move || cmd.output())
        .await
        .unwrap()
        .unwrap();
    let report = find_index(out.path()).unwrap_or_else(|| {
        panic!(
            "kosoku wrote no index.json ({}): {}",
            status.status,
            String::from_utf8_lossy(&status.stderr)
        )
    });
    let verdicts = verdicts(&report);
    assert!(verdicts.len() > 200, "only {} cases ran", verdicts.len());
    let bad: Vec<_> = verdicts
        .iter()
        .filter(|(_, v)| v.as_str() == "FAILED" || v.as_str() == "UNCLEAN")
        .collect();
    assert!(bad.is_empty(), "failed or unclean: {bad:?}");
    let expected: BTreeMap<String, String> =
        serde_json::from_str(include_str!("autobahn/expected.json")).unwrap();
    if std::env::var("SLO_HUB_BLESS").as_deref() == Ok("1") {
        std::fs::write(
            concat!(env!("CARGO_MANIFEST_DIR"), "/tests/autobahn/expected.json"),
            serde_json::to_string_pretty(&verdicts).unwrap() + "\n",
        )
        .unwrap();
        return;
    }
    assert_eq!(
        verdicts, expected,
        "verdicts differ from tests/autobahn/expected.json"
    );
}

fn find_index(dir: &std::path::Path) -> Option<serde_json::Value> {
    for entry in walk(dir) {
        if entry.file_name().is_some_and(|n| n == "index.json") {
            return serde_json::from_slice(&std::fs::read(&entry).ok()?).ok();
        }
    }
    None
}

fn walk(dir: &std::path::Path) -> Vec<std::path::PathBuf> {
    let mut out = Vec::new();
    if let Ok(rd) = std::fs::read_dir(dir) {
        for e in rd.flatten() {
            let p = e.path();
            if p.is_dir() {
                out.extend(walk(&p));
            } else {
                out.push(p);
            }
        }
    }
    out
}

/// case id → behavior, from Autobahn's index.json ({agent: {case: {behavior}}}).
fn verdicts(index: &serde_json::Value) -> BTreeMap<String, String> {
    let mut out = BTreeMap::new();
    if let Some(agents) = index.as_object() {
        for cases in agents.values() {
            for (case, r) in cases.as_object().into_iter().flatten() {
                let b = r["behavior"].as_str().unwrap_or("?").to_string();
                let close = r["behaviorClose"].as_str().unwrap_or("OK");
                let v = if close == "UNCLEAN" || close == "FAILED" {
                    close.to_string()
                } else {
                    b
                };
                out.insert(case.clone(), v);
            }
        }
    }
    out
}
