//! A minimal HTTP/1.1 keep-alive client for triggers: one connection per
//! worker, requests prebuilt as bytes, responses read by Content-Length.
//! Reconnects when the server closes (Soketi answers `Connection: close`).

use std::io;
use std::net::SocketAddr;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

pub struct HttpConn {
    addr: SocketAddr,
    stream: Option<TcpStream>,
    buf: Vec<u8>,
}

impl HttpConn {
    pub fn new(addr: SocketAddr) -> HttpConn {
        HttpConn {
            addr,
            stream: None,
            buf: Vec::with_capacity(4096),
        }
    }

    /// Connects now (if not connected), so that a timed phase does not
    /// count its connects.
    pub async fn connect(&mut self) -> io::Result<()> {
        if self.stream.is_none() {
            let s = TcpStream::connect(self.addr).await?;
            tune(&s)?;
            self.stream = Some(s);
            self.buf.clear();
        }
        Ok(())
    }

    /// Sends one request; returns the status and the body.
    pub async fn request(&mut self, req: &[u8]) -> io::Result<(u16, Vec<u8>)> {
        self.connect().await?;
        let stream = self.stream.as_mut().expect("connected above");
        stream.write_all(req).await?;
        let (head_end, status, length, close) = loop {
            if let Some(parsed) = parse_head(&self.buf)? {
                break parsed;
            }
            let mut chunk = [0u8; 4096];
            let n = stream.read(&mut chunk).await?;
            if n == 0 {
                self.stream = None;
                return Err(io::Error::new(io::ErrorKind::UnexpectedEof, "closed"));
            }
            self.buf.extend_from_slice(&chunk[..n]);
        };
        while self.buf.len() < head_end + length {
            let mut chunk = [0u8; 4096];
            let n = stream.read(&mut chunk).await?;
            if n == 0 {
                break;
            }
            self.buf.extend_from_slice(&chunk[..n]);
        }
        let end = (head_end + length).min(self.buf.len());
        let body = self.buf[head_end..end].to_vec();
        self.buf.drain(..end);
        if close {
            self.stream = None;
        }
        Ok((status, body))
    }
}

/// Settings of every socket the load generator opens: no Nagle delay, and
/// a reset instead of TIME_WAIT when it closes. The generator opens 30,000
/// sockets per repetition from one address; left in TIME_WAIT, they fill the
/// ephemeral port range, and each later `connect` searched it (perf: 34 % of
/// the generator's CPU in `__inet_hash_connect` and its helpers), which
/// slowed every phase after the first and every server after the first.
pub fn tune(stream: &TcpStream) -> io::Result<()> {
    stream.set_nodelay(true)?;
    stream.set_zero_linger()
}

/// `n` connections to `addr`, connected.
pub async fn connected(addr: SocketAddr, n: usize) -> Vec<HttpConn> {
    let mut conns = Vec::with_capacity(n);
    for _ in 0..n {
        let mut c = HttpConn::new(addr);
        c.connect().await.expect("connect");
        conns.push(c);
    }
    conns
}

/// (end of head, status, content length, connection close) once the head is complete.
fn parse_head(buf: &[u8]) -> io::Result<Option<(usize, u16, usize, bool)>> {
    let Some(pos) = buf.windows(4).position(|w| w == b"\r\n\r\n") else {
        return Ok(None);
    };
    let head = std::str::from_utf8(&buf[..pos]).map_err(|_| bad("head is not utf-8"))?;
    let mut lines = head.split("\r\n");
    let status = lines
        .next()
        .and_then(|l| l.split(' ').nth(1))
        .and_then(|s| s.parse().ok())
        .ok_or_else(|| bad("no status"))?;
    let mut length = 0;
    let mut close = false;
    for l in lines {
        let Some((k, v)) = l.split_once(':') else {
            continue;
        };
        let v = v.trim();
        if k.eq_ignore_ascii_case("content-length") {
            length = v.parse().map_err(|_| bad("content-length"))?;
        } else if k.eq_ignore_ascii_case("connection") && v.eq_ignore_ascii_case("close") {
            close = true;
        } else if k.eq_ignore_ascii_case("transfer-encoding") {
            return Err(bad("chunked responses are not supported"));
        }
    }
    Ok(Some((pos + 4, status, length, close)))
}

fn bad(msg: &str) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidData, msg.to_string())
}

/// A POST with a JSON body.
pub fn post_json(path: &str, auth: Option<&str>, body: &str) -> Vec<u8> {
    let auth = auth
        .map(|a| format!("authorization: Bearer {a}\r\n"))
        .unwrap_or_default();
    format!(
        "POST {path} HTTP/1.1\r\nhost: 127.0.0.1\r\n{auth}content-type: application/json\r\ncontent-length: {}\r\n\r\n{body}",
        body.len()
    )
    .into_bytes()
}
