//! Test harness: a real hub on an ephemeral port, real HTTP and WebSocket
//! clients (reqwest, tokio-tungstenite — an independent RFC 6455
//! implementation), and helpers to mint tokens.
#![allow(dead_code)]

pub mod cluster;
pub mod nginx;
pub mod pusher;
pub mod sso;

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use futures_util::{SinkExt, StreamExt};
use jsonwebtoken::{Algorithm, EncodingKey, Header};
use serde_json::{Value, json};
use slo_hub::config::{ApiKeySettings, Config, IssuerSettings, Mode};
use slo_hub::{App, Hub};
use tokio::net::TcpStream;
use tokio_tungstenite::WebSocketStream;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode;
use tokio_tungstenite::tungstenite::{Error as WsError, Message};

/// An API key with every scope, configured in every test hub.
pub const API_KEY: &str = "slo_test-key-with-every-scope";
/// A key with no scopes.
pub const WEAK_API_KEY: &str = "slo_test-key-without-scopes";
/// A second issuer the tests sign for themselves (HS256).
pub const TEST_ISS: &str = "https://issuer.test";
pub const TEST_AUD: &str = "slo-hub-test";
pub const TEST_SECRET: &str = "test-secret-test-secret-test-secret-0123";

/// How long any single expected event may take before a test fails.
pub const EVENT_TIMEOUT: Duration = Duration::from_secs(5);

pub fn sha256_hex(s: &str) -> String {
    let d = ring::digest::digest(&ring::digest::SHA256, s.as_bytes());
    slo_hub::auth::api_keys::hex(d.as_ref())
}

/// Settings of a test hub: dev mode (dev issuer on), no demo apps, port 0,
/// a temp data dir, the test API keys and the HS256 test issuer.
pub fn test_config(data_dir: PathBuf) -> Config {
    let mut c = Config::defaults(Mode::Dev);
    c.mode = Some(Mode::Dev);
    c.listen = "127.0.0.1:0".parse().unwrap();
    c.data_dir = data_dir;
    c.dev.demo = false;
    c.api_keys = vec![
        ApiKeySettings {
            name: "test".into(),
            sha256: sha256_hex(API_KEY),
            scopes: vec!["logout:any".into(), "revoke".into()],
        },
        ApiKeySettings {
            name: "weak".into(),
            sha256: sha256_hex(WEAK_API_KEY),
            scopes: vec![],
        },
    ];
    c.issuers = vec![IssuerSettings {
        issuer: TEST_ISS.into(),
        audiences: vec![TEST_AUD.into()],
        algorithms: vec![Algorithm::HS256],
        jwks_url: None,
        keys: vec![],
        hs256_secret: Some(TEST_SECRET.into()),
        leeway_secs: 5,
        jwks_min_refetch_secs: 30,
        require_logout_typ: false,
        speaks_for: vec![],
    }];
    c
}

pub struct TestHub {
    hub: Option<Hub>,
    pub url: String,
    pub ws_url: String,
    pub http: reqwest::Client,
    pub dir: tempfile::TempDir,
}

impl TestHub {
    pub async fn start() -> TestHub {
        Self::with(|_| {}).await
    }

    pub async fn with(adjust: impl FnOnce(&mut Config)) -> TestHub {
        let dir = tempfile::tempdir().unwrap();
        let mut config = test_config(dir.path().to_path_buf());
        adjust(&mut config);
        config.validate().expect("test config is valid");
        let hub = Hub::start(config).await.expect("hub starts");
        let url = hub.url();
        let ws_url = format!("{}/v1/ws", url.replacen("http", "ws", 1));
        TestHub {
            hub: Some(hub),
            url,
            ws_url,
            http: reqwest::Client::new(),
            dir,
        }
    }

    pub fn app(&self) -> &Arc<App> {
        self.hub.as_ref().unwrap().app()
    }

    /// `http://addr` of a demo app (`app-a`, `app-b`); needs `dev.demo = true`.
    pub fn demo_url(&self, name: &str) -> String {
        let hub = self.hub.as_ref().unwrap();
        let (_, addr) = hub
            .demos
            .iter()
            .find(|(n, _)| *n == name)
            .unwrap_or_else(|| panic!("no demo app {name}"));
        format!("http://{addr}")
    }

    pub async fn shutdown(mut self) {
        if let Some(h) = self.hub.take() {
            h.shutdown(Duration::from_secs(5)).await;
        }
    }

    /// The dev issuer's `iss` (backends name it when logging a user out).
    pub fn dev_iss(&self) -> String {
        format!("{}/dev", self.url)
    }

    /// A backend logout by API key for a dev-issuer user or session.
    pub async fn backend_logout(&self, mut body: Value) -> (u16, Value) {
        body["iss"] = json!(self.dev_iss());
        self.logout(API_KEY, body).await
    }

    /// A dev-issuer token (optionally for a given session).
    pub async fn token(&self, sub: &str, sid: Option<&str>) -> String {
        let mut body = json!({"sub": sub});
        if let Some(s) = sid {
            body["sid"] = json!(s);
        }
        let r = self
            .http
            .post(format!("{}/dev/token", self.url))
            .json(&body)
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 200);
        r.json::<Value>().await.unwrap()["access_token"]
            .as_str()
            .unwrap()
            .to_string()
    }

    /// POST /v1/logout with a bearer credential; returns (status, body).
    /// POSTs a raw body to `path`: status, headers and the JSON answer
    /// (null if there is none).
    pub async fn post_body(
        &self,
        path: &str,
        content_type: &str,
        body: &str,
    ) -> (u16, reqwest::header::HeaderMap, Value) {
        let r = self
            .http
            .post(format!("{}{path}", self.url))
            .header("content-type", content_type)
            .body(body.to_string())
            .send()
            .await
            .unwrap();
        let (status, headers) = (r.status().as_u16(), r.headers().clone());
        let text = r.text().await.unwrap();
        (
            status,
            headers,
            serde_json::from_str(&text).unwrap_or(Value::Null),
        )
    }

    pub async fn logout(&self, bearer: &str, body: Value) -> (u16, Value) {
        let r = self
            .http
            .post(format!("{}/v1/logout", self.url))
            .bearer_auth(bearer)
            .json(&body)
            .send()
            .await
            .unwrap();
        let status = r.status().as_u16();
        (status, r.json().await.unwrap_or(Value::Null))
    }

    /// A socket authenticated with `token`, its `ready` message consumed.
    pub async fn socket(&self, token: &str) -> (Ws, Value) {
        let mut ws = Ws::connect(&self.ws_url, None).await.expect("upgrade");
        ws.send_json(json!({"type": "auth", "token": token})).await;
        let ready = ws.recv_json().await;
        assert_eq!(ready["type"], "ready", "{ready}");
        (ws, ready)
    }

    /// Current value of a metric line (exact name with labels), 0 if absent.
    pub async fn metric(&self, line_prefix: &str) -> f64 {
        let text = self
            .http
            .get(format!("{}/metrics", self.url))
            .send()
            .await
            .unwrap()
            .text()
            .await
            .unwrap();
        text.lines()
            .filter(|l| !l.starts_with('#'))
            .find_map(|l| {
                let (name, value) = l.rsplit_once(' ')?;
                (name == line_prefix).then(|| value.parse::<f64>().ok())?
            })
            .unwrap_or(0.0)
    }
}

impl Drop for TestHub {
    fn drop(&mut self) {
        if let Some(h) = self.hub.take() {
            // Tests that do not shut down explicitly: stop the tasks anyway.
            h.app().shutdown.cancel();
        }
    }
}

/// `base` with each key of `overrides` set, or removed where it is null.
pub fn with_overrides(mut base: Value, overrides: &Value) -> Value {
    for (k, v) in overrides.as_object().unwrap() {
        if v.is_null() {
            base.as_object_mut().unwrap().remove(k);
        } else {
            base[k] = v.clone();
        }
    }
    base
}

/// Signs a token for the HS256 test issuer with the given claims merged over
/// valid defaults (iss, aud, sub, iat=now, exp=now+600).
pub fn hs256_token(overrides: Value) -> String {
    let now = slo_hub::util::now_secs();
    let claims = json!({
        "iss": TEST_ISS, "aud": TEST_AUD, "sub": "alice",
        "iat": now, "exp": now + 600,
    });
    let claims = with_overrides(claims, &overrides);
    slo_hub::auth::crypto::install();
    jsonwebtoken::encode(
        &Header::new(Algorithm::HS256),
        &claims,
        &EncodingKey::from_secret(TEST_SECRET.as_bytes()),
    )
    .unwrap()
}

/// base64url (no padding) of a JSON value, as in a JWT.
pub fn b64_json(v: &Value) -> String {
    use base64::Engine;
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(v.to_string())
}

/// A token from raw header and claims JSON, HMAC-SHA256-signed with `secret`
/// whatever the header says: for tokens no honest library would produce.
pub fn forge(header: &Value, claims: &Value, secret: &[u8]) -> String {
    use base64::Engine;
    let input = format!("{}.{}", b64_json(header), b64_json(claims));
    let key = ring::hmac::Key::new(ring::hmac::HMAC_SHA256, secret);
    let sig = ring::hmac::sign(&key, input.as_bytes());
    let sig = base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(sig.as_ref());
    format!("{input}.{sig}")
}

/// A P-256 key pair: (signing key, public JWK JSON with `kid`).
pub fn ec_key(kid: &str) -> (jsonwebtoken::EncodingKey, Value) {
    use base64::Engine;
    use ring::signature::{ECDSA_P256_SHA256_FIXED_SIGNING, EcdsaKeyPair, KeyPair};
    let rng = ring::rand::SystemRandom::new();
    let pkcs8 = EcdsaKeyPair::generate_pkcs8(&ECDSA_P256_SHA256_FIXED_SIGNING, &rng).unwrap();
    let pair =
        EcdsaKeyPair::from_pkcs8(&ECDSA_P256_SHA256_FIXED_SIGNING, pkcs8.as_ref(), &rng).unwrap();
    let public = pair.public_key().as_ref(); // 0x04 || x || y
    let enc = |b: &[u8]| base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(b);
    let jwk = json!({
        "kty": "EC", "crv": "P-256", "alg": "ES256", "use": "sig", "kid": kid,
        "x": enc(&public[1..33]), "y": enc(&public[33..65]),
    });
    (jsonwebtoken::EncodingKey::from_ec_der(pkcs8.as_ref()), jwk)
}

/// An ES256 JWT of `claims` with header `kid`.
pub fn es256(key: &jsonwebtoken::EncodingKey, kid: &str, claims: &Value) -> String {
    slo_hub::auth::crypto::install();
    let mut h = jsonwebtoken::Header::new(jsonwebtoken::Algorithm::ES256);
    h.kid = Some(kid.into());
    jsonwebtoken::encode(&h, claims, key).unwrap()
}

/// What a test socket saw next.
#[derive(Debug)]
pub enum Seen {
    Json(Value),
    Close(Option<u16>),
    Other(String),
}

/// A byte stream a test socket runs over: TCP, or TLS through a proxy.
pub trait Io: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send {}
impl<T: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send> Io for T {}

pub struct Ws {
    inner: WebSocketStream<Box<dyn Io>>,
}

impl Ws {
    /// Opens a socket; on a refused upgrade returns the HTTP status.
    pub async fn connect(url: &str, origin: Option<&str>) -> Result<Ws, u16> {
        let req = url.into_client_request().unwrap();
        let host = req.uri().host().unwrap().to_string();
        let port = req.uri().port_u16().unwrap_or(80);
        let tcp = TcpStream::connect((host.as_str(), port)).await.unwrap();
        Self::over(Box::new(tcp), url, origin).await
    }

    /// The WebSocket handshake for `url` over an open stream.
    pub async fn over(stream: Box<dyn Io>, url: &str, origin: Option<&str>) -> Result<Ws, u16> {
        let mut req = url.into_client_request().unwrap();
        if let Some(o) = origin {
            req.headers_mut().insert("origin", o.parse().unwrap());
        }
        match tokio_tungstenite::client_async(req, stream).await {
            Ok((inner, _)) => Ok(Ws { inner }),
            Err(WsError::Http(resp)) => Err(resp.status().as_u16()),
            Err(e) => panic!("connect failed: {e}"),
        }
    }

    pub async fn send_json(&mut self, v: Value) {
        self.send(Message::text(v.to_string())).await;
    }

    pub async fn send(&mut self, m: Message) {
        self.inner.send(m).await.expect("send");
    }

    /// The next meaningful event (pings are answered by tungstenite itself).
    pub async fn next(&mut self) -> Seen {
        self.next_within(EVENT_TIMEOUT).await
    }

    /// The next JSON message, waiting up to `limit` for it.
    pub async fn recv_json_within(&mut self, limit: Duration) -> Value {
        match self.next_within(limit).await {
            Seen::Json(v) => v,
            other => panic!("expected a JSON message, got {other:?}"),
        }
    }

    async fn next_within(&mut self, limit: Duration) -> Seen {
        loop {
            let item = tokio::time::timeout(limit, self.inner.next())
                .await
                .expect("no event from the hub in time");
            return match item {
                Some(Ok(Message::Text(t))) => Seen::Json(serde_json::from_str(&t).unwrap()),
                Some(Ok(Message::Close(f))) => Seen::Close(f.map(|f| u16::from(f.code))),
                Some(Ok(Message::Ping(_))) | Some(Ok(Message::Pong(_))) => continue,
                Some(Ok(other)) => Seen::Other(format!("{other:?}")),
                Some(Err(e)) => Seen::Other(format!("error: {e}")),
                None => Seen::Other("end of stream".into()),
            };
        }
    }

    pub async fn recv_json(&mut self) -> Value {
        match self.next().await {
            Seen::Json(v) => v,
            other => panic!("expected a JSON message, got {other:?}"),
        }
    }

    /// Reads until the close frame and returns its code.
    pub async fn close_code(&mut self) -> Option<u16> {
        loop {
            match self.next().await {
                Seen::Close(c) => return c,
                Seen::Json(_) => continue,
                other => panic!("expected a close frame, got {other:?}"),
            }
        }
    }

    /// Asserts the socket is alive and has nothing queued before our probe:
    /// sends an app-level ping and expects the pong as the very next message.
    pub async fn assert_quiet(&mut self) {
        self.send_json(json!({"type": "ping"})).await;
        match self.next().await {
            Seen::Json(v) if v["type"] == "pong" => {}
            other => panic!("expected only a pong, got {other:?}"),
        }
    }

    pub async fn close(mut self) {
        let _ = self
            .inner
            .close(Some(tokio_tungstenite::tungstenite::protocol::CloseFrame {
                code: CloseCode::Normal,
                reason: "".into(),
            }))
            .await;
        // Drain until the server's close arrives: then it has unregistered us.
        while let Some(Ok(_)) = self.inner.next().await {}
    }
}

/// A hand-driven client for misbehaviour the real client library would never
/// do: not reading, not answering pings, raw frames.
pub struct RawClient {
    stream: TcpStream,
    buf: Vec<u8>,
}

impl RawClient {
    pub async fn connect(base_url: &str) -> RawClient {
        Self::open(base_url, None, "/v1/ws").await
    }

    /// To another WebSocket path (a Pusher app's `/app/{key}?protocol=7`).
    pub async fn connect_to(base_url: &str, path: &str) -> RawClient {
        Self::open(base_url, None, path).await
    }

    /// With a tiny receive buffer, so the hub's writes back up quickly.
    pub async fn connect_small_buffer(base_url: &str) -> RawClient {
        Self::open(base_url, Some(4096), "/v1/ws").await
    }

    async fn open(base_url: &str, rcvbuf: Option<u32>, path: &str) -> RawClient {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let addr: std::net::SocketAddr = base_url.trim_start_matches("http://").parse().unwrap();
        let socket = tokio::net::TcpSocket::new_v4().unwrap();
        if let Some(n) = rcvbuf {
            socket.set_recv_buffer_size(n).unwrap();
        }
        let mut stream = socket.connect(addr).await.unwrap();
        let req = format!(
            "GET {path} HTTP/1.1\r\nHost: {addr}\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
             Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n"
        );
        stream.write_all(req.as_bytes()).await.unwrap();
        let mut buf = Vec::new();
        let mut chunk = [0u8; 1024];
        let end = loop {
            let n = stream.read(&mut chunk).await.unwrap();
            assert!(n > 0, "connection closed during the handshake");
            buf.extend_from_slice(&chunk[..n]);
            if let Some(i) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
                break i + 4;
            }
        };
        let head = String::from_utf8_lossy(&buf[..end]).to_string();
        assert!(head.starts_with("HTTP/1.1 101"), "{head}");
        buf.drain(..end);
        RawClient { stream, buf }
    }

    /// A masked client frame.
    pub fn frame(opcode: u8, payload: &[u8]) -> Vec<u8> {
        let mut out = Vec::new();
        slo_hub::ws::codec::encode_frame(&mut out, opcode, payload, Some([0x11, 0x22, 0x33, 0x44]));
        out
    }

    pub async fn send_text(&mut self, text: &str) {
        self.write(&Self::frame(0x1, text.as_bytes()))
            .await
            .unwrap();
    }

    pub async fn write(&mut self, bytes: &[u8]) -> std::io::Result<()> {
        use tokio::io::AsyncWriteExt;
        self.stream.write_all(bytes).await
    }

    /// The next text message, parsed (pings and other frames skipped).
    pub async fn next_json(&mut self) -> Value {
        use slo_hub::ws::codec::{Decoder, Flow, Message, Role};
        use tokio::io::AsyncReadExt;
        let mut decoder = Decoder::new(Role::Client, 1 << 20);
        loop {
            let mut text = None;
            let consumed = decoder
                .decode(&mut self.buf, |m| {
                    if let Message::Text(t) = m {
                        text = Some(t.to_string());
                        return Flow::Stop;
                    }
                    Flow::Continue
                })
                .expect("the hub sent a valid frame");
            self.buf.drain(..consumed);
            if let Some(t) = text {
                return serde_json::from_str(&t).unwrap();
            }
            let mut chunk = [0u8; 4096];
            let n = tokio::time::timeout(EVENT_TIMEOUT, self.stream.read(&mut chunk))
                .await
                .expect("no message in time")
                .unwrap();
            assert!(n > 0, "connection closed");
            self.buf.extend_from_slice(&chunk[..n]);
        }
    }

    /// Writes `bytes` one at a time, `every` apart, until done or the hub
    /// closed the connection (an attacker trickling a frame).
    pub async fn trickle(&mut self, bytes: &[u8], every: Duration) {
        for b in bytes {
            if self.write(std::slice::from_ref(b)).await.is_err() {
                return;
            }
            tokio::time::sleep(every).await;
        }
    }

    /// Reads frames (answering nothing) until a close frame; returns its code.
    pub async fn read_until_close(&mut self) -> Option<u16> {
        use slo_hub::ws::codec::{Decoder, Flow, Message, Role};
        use tokio::io::AsyncReadExt;
        let mut decoder = Decoder::new(Role::Client, 1 << 20);
        let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
        loop {
            let mut code = None;
            let mut closed = false;
            let consumed = decoder
                .decode(&mut self.buf, |m| {
                    if let Message::Close(c) = m {
                        code = c.map(|(c, _)| c);
                        closed = true;
                        return Flow::Stop;
                    }
                    Flow::Continue
                })
                .expect("the hub sent a valid frame");
            self.buf.drain(..consumed);
            if closed {
                return code;
            }
            let mut chunk = [0u8; 4096];
            let n = tokio::time::timeout_at(deadline, self.stream.read(&mut chunk))
                .await
                .expect("no close frame in time")
                .unwrap();
            assert!(n > 0, "connection closed without a close frame");
            self.buf.extend_from_slice(&chunk[..n]);
        }
    }
}

pub mod browser;
pub mod process;

/// Finds an outside program a test needs. Missing: the test says so loudly
/// and is skipped — unless `SLO_HUB_REQUIRE_ALL=1` (CI), where it fails.
pub fn require_program(name: &str, candidates: &[&str]) -> Option<PathBuf> {
    let found = candidates
        .iter()
        .map(PathBuf::from)
        .find(|p| p.is_file())
        .or_else(|| {
            std::env::var_os("PATH").and_then(|path| {
                std::env::split_paths(&path)
                    .map(|d| d.join(name))
                    .find(|p| p.is_file())
            })
        });
    if found.is_none() {
        let msg = format!("{name} is not installed: this test needs it (apt-get install {name})");
        if std::env::var("SLO_HUB_REQUIRE_ALL").as_deref() == Ok("1") {
            panic!("{msg}; SLO_HUB_REQUIRE_ALL=1 makes that a failure");
        }
        eprintln!("\n!!!!!!!! SKIPPED: {msg} !!!!!!!!\n");
    }
    found
}

/// `tests/node` with its npm packages installed (`npm ci --prefix
/// tests/node`, which `.ci/run` does). Missing: a loud skip, or a failure
/// under `SLO_HUB_REQUIRE_ALL=1`.
pub fn require_node_packages() -> Option<PathBuf> {
    let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/node");
    if dir.join("node_modules/.package-lock.json").is_file() {
        return Some(dir);
    }
    let msg = "the npm packages of tests/node are not installed: this test needs them (npm ci --prefix tests/node)";
    if std::env::var("SLO_HUB_REQUIRE_ALL").as_deref() == Ok("1") {
        panic!("{msg}; SLO_HUB_REQUIRE_ALL=1 makes that a failure");
    }
    eprintln!("\n!!!!!!!! SKIPPED: {msg} !!!!!!!!\n");
    None
}

/// A free loopback port (for programs that cannot be given port 0).
pub fn free_port() -> u16 {
    use std::sync::atomic::{AtomicU32, Ordering};
    // Outside the kernel's ephemeral range, so no port-0 bind and no
    // outgoing connection of a parallel test can take it between our
    // check and the program's bind; and never handed out twice here. Kept
    // below ephemeral minus 10000: a Redis Cluster node also binds port +
    // 10000 for its bus.
    static NEXT: AtomicU32 = AtomicU32::new(0);
    let ephemeral_low: u32 = std::fs::read_to_string("/proc/sys/net/ipv4/ip_local_port_range")
        .ok()
        .and_then(|r| r.split_whitespace().next()?.parse().ok())
        .unwrap_or(32768);
    let (low, high) = (10_000u32, ephemeral_low.saturating_sub(10_000).max(12_000));
    let span = high - low;
    let _ = NEXT.compare_exchange(
        0,
        std::process::id() % span + 1,
        Ordering::AcqRel,
        Ordering::Acquire,
    );
    for _ in 0..span {
        let port = (low + NEXT.fetch_add(1, Ordering::AcqRel) % span) as u16;
        if std::net::TcpListener::bind(("127.0.0.1", port)).is_ok() {
            return port;
        }
    }
    panic!("no free port below the ephemeral range");
}
