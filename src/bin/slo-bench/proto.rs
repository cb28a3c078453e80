//! The protocols the load generator speaks: slo-hub's, the peers' minimal
//! "user channel" (ws, uWebSockets.js), socket.io's (Engine.IO 4 over a
//! WebSocket) and Pusher's (Soketi). Each socket is raw TCP driven by
//! slo-hub's codec in client role, so 15,000 of them stay cheap.

use std::io;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU32, AtomicU64, AtomicUsize, Ordering};
use std::time::Instant;

use md5::{Digest, Md5};
use slo_hub::ws::codec::{self, Decoder, Flow, Message, Role};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::sync::{Notify, watch};

use crate::http;

pub const PUSHER_APP_ID: &str = "bench";
pub const PUSHER_KEY: &str = "bench-key";
pub const PUSHER_SECRET: &str = "bench-secret-0123456789";

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Kind {
    SloHub,
    Ws,
    Uws,
    SocketIo,
    Soketi,
    /// slo-hub speaking the Pusher protocol (`[[pusher_apps]]`), beside Soketi.
    SloHubPusher,
}

impl Kind {
    pub fn parse(s: &str) -> Option<Kind> {
        Some(match s {
            "slo-hub" => Kind::SloHub,
            "ws" => Kind::Ws,
            "uws" => Kind::Uws,
            "socketio" => Kind::SocketIo,
            "soketi" => Kind::Soketi,
            "slo-hub-pusher" => Kind::SloHubPusher,
            _ => return None,
        })
    }

    pub fn name(self) -> &'static str {
        match self {
            Kind::SloHub => "slo-hub",
            Kind::Ws => "ws",
            Kind::Uws => "uws",
            Kind::SocketIo => "socketio",
            Kind::Soketi => "soketi",
            Kind::SloHubPusher => "slo-hub-pusher",
        }
    }

    pub fn label(self) -> &'static str {
        match self {
            Kind::SloHub => "slo-hub",
            Kind::Ws => "node ws 8",
            Kind::Uws => "uWebSockets.js 20.30",
            Kind::SocketIo => "socket.io 4.8",
            Kind::Soketi => "Soketi 1.6.1 (Pusher protocol)",
            Kind::SloHubPusher => "slo-hub (Pusher protocol)",
        }
    }

    fn ws_path(self) -> String {
        match self {
            Kind::SloHub => "/v1/ws".into(),
            Kind::Ws | Kind::Uws => "/ws".into(),
            Kind::SocketIo => "/socket.io/?EIO=4&transport=websocket".into(),
            Kind::Soketi | Kind::SloHubPusher => {
                format!("/app/{PUSHER_KEY}?protocol=7&client=slo-bench&version=1.0")
            }
        }
    }

    /// The HTTP request that pushes to `user`'s sockets. `cred` is slo-hub's
    /// API key plus the issuer to name, unused by the peers.
    pub fn trigger(self, user: &str, cred: &TriggerCred) -> Vec<u8> {
        match self {
            Kind::SloHub => http::post_json(
                "/v1/logout",
                Some(&cred.api_key),
                &format!(r#"{{"sub":"{user}","iss":"{}"}}"#, cred.iss),
            ),
            Kind::Ws | Kind::Uws | Kind::SocketIo => {
                http::post_json("/push", None, &format!(r#"{{"user":"{user}"}}"#))
            }
            Kind::Soketi | Kind::SloHubPusher => pusher_trigger(user),
        }
    }

    /// Whether a text message is the push the benchmark waits for.
    fn is_push(self, text: &str) -> bool {
        match self {
            Kind::SloHub | Kind::Ws | Kind::Uws => text.starts_with(r#"{"type":"logout""#),
            Kind::SocketIo => text.starts_with(r#"42["logout""#),
            Kind::Soketi | Kind::SloHubPusher => text.contains(r#""event":"logout""#),
        }
    }

    /// What a well-behaved client answers to a text message, if anything.
    fn reply(self, text: &str) -> Option<String> {
        match self {
            // slo-hub's client acknowledges a logout.
            Kind::SloHub if text.starts_with(r#"{"type":"logout""#) => {
                let id = text.split(r#""id":""#).nth(1)?.split('"').next()?;
                Some(format!(r#"{{"type":"ack","id":"{id}"}}"#))
            }
            // Engine.IO heartbeat.
            Kind::SocketIo if text == "2" => Some("3".into()),
            Kind::Soketi | Kind::SloHubPusher if text.contains("pusher:ping") => {
                Some(r#"{"event":"pusher:pong","data":{}}"#.into())
            }
            _ => None,
        }
    }
}

/// Credentials for slo-hub triggers.
#[derive(Clone, Debug, Default)]
pub struct TriggerCred {
    pub api_key: String,
    pub iss: String,
}

/// Signs a Pusher HTTP API trigger (auth_version 1.0).
fn pusher_trigger(user: &str) -> Vec<u8> {
    let data = format!(r#"{{\"type\":\"logout\",\"user\":\"{user}\"}}"#);
    let body = format!(r#"{{"name":"logout","channels":["u-{user}"],"data":"{data}"}}"#);
    let md5 = slo_hub::auth::api_keys::hex(&Md5::digest(body.as_bytes()));
    let ts = slo_hub::util::now_secs();
    let path = format!("/apps/{PUSHER_APP_ID}/events");
    let query =
        format!("auth_key={PUSHER_KEY}&auth_timestamp={ts}&auth_version=1.0&body_md5={md5}");
    let to_sign = format!("POST\n{path}\n{query}");
    let key = ring::hmac::Key::new(ring::hmac::HMAC_SHA256, PUSHER_SECRET.as_bytes());
    let sig = slo_hub::auth::api_keys::hex(ring::hmac::sign(&key, to_sign.as_bytes()).as_ref());
    http::post_json(&format!("{path}?{query}&auth_signature={sig}"), None, &body)
}

/// Where sockets report arrivals: one slot per user.
pub struct Board {
    base: Instant,
    slots: Vec<Slot>,
    /// Whether slo-hub sockets acknowledge logouts (off where the phase
    /// measures delivery cost alone).
    acks: bool,
    /// slo-hub sockets that answered a re-login with `ready`.
    relogged: AtomicUsize,
    relogged_notify: Notify,
}

pub struct Slot {
    pub arrived: AtomicU32,
    /// Nanoseconds since `base` of the latest arrival.
    pub last_ns: AtomicU64,
    pub notify: Notify,
    /// A fresh token for the user's logged-out slo-hub sockets: each sends
    /// `auth` with it on the same socket, as a tab does after the user logs
    /// in again.
    relogin: watch::Sender<Arc<str>>,
}

impl Board {
    pub fn new(users: usize, acks: bool) -> Arc<Board> {
        Arc::new(Board {
            base: Instant::now(),
            acks,
            relogged: AtomicUsize::new(0),
            relogged_notify: Notify::new(),
            slots: (0..users)
                .map(|_| Slot {
                    arrived: AtomicU32::new(0),
                    last_ns: AtomicU64::new(0),
                    notify: Notify::new(),
                    relogin: watch::Sender::new(Arc::from("")),
                })
                .collect(),
        })
    }

    /// Logs the sockets of `slots` in again, each user with its token, and
    /// waits (at most `timeout`) until `sockets` of them are ready again.
    /// Returns how many were not.
    pub async fn relogin(
        &self,
        slots: std::ops::Range<usize>,
        tokens: &[String],
        sockets: usize,
        timeout: std::time::Duration,
    ) -> usize {
        self.relogged.store(0, Ordering::Release);
        for (i, token) in slots.zip(tokens) {
            self.slots[i]
                .relogin
                .send_replace(Arc::from(token.as_str()));
        }
        let deadline = tokio::time::Instant::now() + timeout;
        loop {
            let notified = self.relogged_notify.notified();
            if self.relogged.load(Ordering::Acquire) >= sockets {
                return 0;
            }
            if tokio::time::timeout_at(deadline, notified).await.is_err() {
                return sockets - self.relogged.load(Ordering::Acquire).min(sockets);
            }
        }
    }

    pub fn now_ns(&self) -> u64 {
        self.base.elapsed().as_nanos() as u64
    }

    pub fn slot(&self, i: usize) -> &Slot {
        &self.slots[i]
    }

    fn arrive(&self, i: usize) {
        let s = &self.slots[i];
        s.last_ns.store(self.now_ns(), Ordering::Release);
        s.arrived.fetch_add(1, Ordering::AcqRel);
        s.notify.notify_one();
    }
}

static MASK: AtomicU32 = AtomicU32::new(0x9E37_79B9);

fn masked_text(text: &str) -> Vec<u8> {
    let m = MASK.fetch_add(0x6D2B_79F5, Ordering::Relaxed).to_ne_bytes();
    let mut out = Vec::with_capacity(text.len() + 8);
    codec::encode_frame(&mut out, codec::OP_TEXT, text.as_bytes(), Some(m));
    out
}

/// A connected, subscribed socket, ready to be read by [`run_socket`].
pub struct Socket {
    stream: TcpStream,
    buf: Vec<u8>,
    decoder: Decoder,
}

/// Opens a socket and subscribes it to `user` (slo-hub: authenticates with `token`).
pub async fn connect(kind: Kind, addr: SocketAddr, user: &str, token: &str) -> io::Result<Socket> {
    let stream = TcpStream::connect(addr).await?;
    handshake(kind, addr, stream, user, token).await
}

/// [`connect`] from a chosen local (loopback) address.
pub async fn connect_from(
    kind: Kind,
    addr: SocketAddr,
    source: std::net::IpAddr,
    user: &str,
    token: &str,
) -> io::Result<Socket> {
    let socket = tokio::net::TcpSocket::new_v4()?;
    socket.bind(SocketAddr::new(source, 0))?;
    let stream = socket.connect(addr).await?;
    handshake(kind, addr, stream, user, token).await
}

async fn handshake(
    kind: Kind,
    addr: SocketAddr,
    mut stream: TcpStream,
    user: &str,
    token: &str,
) -> io::Result<Socket> {
    crate::http::tune(&stream)?;
    let req = format!(
        "GET {} HTTP/1.1\r\nhost: {addr}\r\nupgrade: websocket\r\nconnection: Upgrade\r\n\
         sec-websocket-key: dGhlIHNhbXBsZSBub25jZQ==\r\nsec-websocket-version: 13\r\n\r\n",
        kind.ws_path()
    );
    stream.write_all(req.as_bytes()).await?;
    let mut buf = Vec::with_capacity(512);
    let head_end = loop {
        let mut chunk = [0u8; 2048];
        let n = stream.read(&mut chunk).await?;
        if n == 0 {
            return Err(io::Error::new(
                io::ErrorKind::UnexpectedEof,
                "closed in handshake",
            ));
        }
        buf.extend_from_slice(&chunk[..n]);
        if let Some(p) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
            break p + 4;
        }
    };
    if !buf.starts_with(b"HTTP/1.1 101") {
        let head = String::from_utf8_lossy(&buf[..head_end]).to_string();
        return Err(io::Error::other(format!("upgrade refused: {head}")));
    }
    buf.drain(..head_end);
    let mut s = Socket {
        stream,
        buf,
        decoder: Decoder::new(Role::Client, 1 << 20),
    };
    match kind {
        Kind::SloHub => {
            s.send(&format!(r#"{{"type":"auth","token":"{token}"}}"#))
                .await?;
            s.expect(|t| t.contains(r#""type":"ready""#)).await?;
        }
        Kind::Ws | Kind::Uws => {
            s.send(&format!(r#"{{"type":"auth","token":"{user}"}}"#))
                .await?;
            s.expect(|t| t == r#"{"type":"ready"}"#).await?;
        }
        Kind::SocketIo => {
            s.expect(|t| t.starts_with('0')).await?;
            s.send("40").await?;
            s.expect(|t| t.starts_with("40")).await?;
            s.send(&format!(r#"42["auth","{user}"]"#)).await?;
            s.expect(|t| t == r#"42["ready"]"#).await?;
        }
        Kind::Soketi | Kind::SloHubPusher => {
            s.expect(|t| t.contains("pusher:connection_established"))
                .await?;
            s.send(&format!(
                r#"{{"event":"pusher:subscribe","data":{{"channel":"u-{user}"}}}}"#
            ))
            .await?;
            s.expect(|t| t.contains("subscription_succeeded")).await?;
        }
    }
    Ok(s)
}

impl Socket {
    async fn send(&mut self, text: &str) -> io::Result<()> {
        self.stream.write_all(&masked_text(text)).await
    }

    /// Reads until a text message satisfies `want`; other texts are ignored.
    async fn expect(&mut self, want: impl Fn(&str) -> bool) -> io::Result<()> {
        loop {
            let mut found = false;
            let mut closed = false;
            let consumed = self
                .decoder
                .decode(&mut self.buf, |m| match m {
                    Message::Text(t) if want(t) => {
                        found = true;
                        Flow::Stop
                    }
                    Message::Close(_) => {
                        closed = true;
                        Flow::Stop
                    }
                    _ => Flow::Continue,
                })
                .map_err(|c| io::Error::other(format!("protocol error {c:?}")))?;
            self.buf.drain(..consumed);
            if found {
                return Ok(());
            }
            if closed {
                return Err(io::Error::other("closed while subscribing"));
            }
            let mut chunk = [0u8; 4096];
            let n = self.stream.read(&mut chunk).await?;
            if n == 0 {
                return Err(io::Error::new(io::ErrorKind::UnexpectedEof, "closed"));
            }
            self.buf.extend_from_slice(&chunk[..n]);
        }
    }
}

/// Reads a subscribed socket until it closes, reporting pushes to `board`
/// slot `slot` and answering as a real client would (acks, heartbeats, pongs).
pub async fn run_socket(kind: Kind, mut s: Socket, board: Arc<Board>, slot: usize) {
    let mut chunk = vec![0u8; 2048];
    let mut relogin = board.slot(slot).relogin.subscribe();
    loop {
        let mut replies: Vec<u8> = Vec::new();
        let mut closed = false;
        let consumed = s.decoder.decode(&mut s.buf, |m| {
            match m {
                Message::Text(t) => {
                    if kind.is_push(t) {
                        board.arrive(slot);
                    } else if kind == Kind::SloHub && t.starts_with(r#"{"type":"ready""#) {
                        board.relogged.fetch_add(1, Ordering::AcqRel);
                        board.relogged_notify.notify_one();
                    }
                    let ack = kind == Kind::SloHub && t.starts_with(r#"{"type":"logout""#);
                    if let Some(r) = kind.reply(t).filter(|_| board.acks || !ack) {
                        replies.extend_from_slice(&masked_text(&r));
                    }
                }
                Message::Ping(p) => {
                    let m = MASK.fetch_add(1, Ordering::Relaxed).to_ne_bytes();
                    codec::encode_frame(&mut replies, codec::OP_PONG, p, Some(m));
                }
                Message::Close(_) => closed = true,
                _ => {}
            }
            Flow::Continue
        });
        let Ok(consumed) = consumed else { return };
        s.buf.drain(..consumed);
        if !replies.is_empty() && s.stream.write_all(&replies).await.is_err() {
            return;
        }
        if closed {
            return;
        }
        tokio::select! {
            read = s.stream.read(&mut chunk) => match read {
                Ok(0) | Err(_) => return,
                Ok(n) => s.buf.extend_from_slice(&chunk[..n]),
            },
            Ok(()) = relogin.changed() => {
                let token = relogin.borrow_and_update().clone();
                let auth = format!(r#"{{"type":"auth","token":"{token}"}}"#);
                if s.stream.write_all(&masked_text(&auth)).await.is_err() {
                    return;
                }
            }
        }
    }
}
