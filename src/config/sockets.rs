//! `[dev]`, `[ws]`, `[http]` and `[limits]`: what the hub accepts from
//! clients, and how much of it.

use serde::{Deserialize, Serialize};

use super::{Config, ConfigError, range};

#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DevSettings {
    /// The built-in dev issuer (`POST /dev/token`). Answers loopback clients
    /// only, and those in `issuer_clients`.
    pub issuer: bool,
    /// Further client networks (CIDRs) the dev issuer answers: a demo
    /// deployment behind a proxy (`deploy/compose.yaml`). Never in production.
    pub issuer_clients: Vec<String>,
    /// Serve the demo SPAs on two further ports.
    pub demo: bool,
    /// Port of demo app A; 0 means listen port + 1.
    pub demo_a_port: u16,
    /// Port of demo app B; 0 means listen port + 2.
    pub demo_b_port: u16,
}

#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct WsSettings {
    /// Exact origins (`scheme://host[:port]`) allowed to open `/v1/ws`. In dev mode
    /// the demo origins and the hub's own are added.
    pub allowed_origins: Vec<String>,
    /// Accept upgrades without an `Origin` header (native and server clients send none;
    /// browsers always send one).
    pub allow_missing_origin: bool,
    /// Accept `Origin: null` (sandboxed iframes, file:// pages). Off by default.
    pub allow_null_origin: bool,
    /// Deadline for the first `auth` message.
    pub auth_timeout_ms: u64,
    /// Largest message (and frame) a client may send.
    pub max_message_bytes: usize,
    /// Bytes a socket may have waiting to be written before it is cut off as a slow consumer.
    pub outbound_buffer_bytes: usize,
    /// Interval of server pings; a socket silent for two intervals is closed.
    pub heartbeat_secs: u64,
    /// How long a logged-out socket stays open for the client's `ack` and a
    /// new `auth` on the same connection, before it is closed with 4000.
    /// 0: close as soon as the ack arrives (or after 5 s without one).
    pub relogin_secs: u64,
    /// Sustained messages per second a client may send, and the burst above it.
    pub max_messages_per_sec: u32,
    pub message_burst: u32,
    /// Malformed or unknown messages tolerated (each answered by an error frame) before close.
    pub max_protocol_errors: u32,
    /// A frame must be complete this long after its first byte arrived
    /// (else close 1008), so trickled bytes cannot hold a socket's buffer.
    pub frame_timeout_ms: u64,
}

#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct HttpSettings {
    /// Largest request body accepted (413 above).
    pub max_body_bytes: usize,
    /// A client must finish sending request headers within this time.
    pub header_read_timeout_ms: u64,
    /// ...and a request body within this time once its headers are in
    /// (408 after it), so a body that never arrives holds nothing for long.
    pub body_read_timeout_ms: u64,
    /// Origins allowed to call the HTTP API from a browser (CORS). Empty: same as `ws.allowed_origins`.
    pub cors_origins: Vec<String>,
    /// Proxies (IPs or CIDRs) whose `X-Forwarded-For` is believed: behind
    /// them, connection limits, device binding and the dev issuer's check
    /// apply to the client's address, not the proxy's.
    pub trusted_proxies: Vec<String>,
}

#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Limits {
    /// Open TCP connections in total (503 above). Default: what the
    /// process's file descriptor limit (`RLIMIT_NOFILE`, raised to its hard
    /// limit at start) allows after a reserve for the hub's own files and
    /// outgoing connections. A larger value is lowered to that, with a warning.
    pub max_connections: Option<usize>,
    /// Open TCP connections per client IP (429 above), so one address
    /// cannot hold every connection. Default: an eighth of
    /// `max_connections`, at least 64 and at most 4096.
    pub max_connections_per_ip: Option<usize>,
    /// The kernel send buffer of each accepted connection (`SO_SNDBUF`; the
    /// kernel doubles it for its bookkeeping). With `ws.outbound_buffer_bytes`
    /// it bounds what a peer that stops reading can pin: without it the
    /// kernel grows each buffer to `tcp_wmem` max (4 MB).
    pub socket_send_buffer_bytes: usize,
    /// New connections per second per client IP, and the burst above it (429 above).
    pub connects_per_ip_per_sec: u32,
    pub connect_burst: u32,
    /// Logout triggers per second per user token, and the burst (429 above). API keys are not limited.
    pub user_triggers_per_sec: u32,
    pub user_trigger_burst: u32,
    /// Longest `wait_for_acks_ms` a trigger may ask for.
    pub max_wait_for_acks_ms: u64,
    /// Memory all sockets together may hold for frames still arriving; a
    /// socket whose unfinished frame finds no room is closed (1013).
    pub partial_frames_bytes: usize,
}

impl Config {
    /// Sockets, HTTP and limits.
    pub(super) fn validate_sockets(&self) -> Result<(), ConfigError> {
        let ws = &self.ws;
        range("ws.auth_timeout_ms", ws.auth_timeout_ms, 100, 60_000)?;
        range(
            "ws.max_message_bytes",
            ws.max_message_bytes as u64,
            256,
            1 << 20,
        )?;
        range(
            "ws.outbound_buffer_bytes",
            ws.outbound_buffer_bytes as u64,
            1024,
            16 << 20,
        )?;
        range("ws.heartbeat_secs", ws.heartbeat_secs, 1, 3600)?;
        range("ws.frame_timeout_ms", ws.frame_timeout_ms, 100, 600_000)?;
        range(
            "limits.partial_frames_bytes",
            self.limits.partial_frames_bytes as u64,
            64 * 1024,
            16 << 30,
        )?;
        range("ws.relogin_secs", ws.relogin_secs, 0, 3_600)?;
        range(
            "ws.max_messages_per_sec",
            ws.max_messages_per_sec as u64,
            1,
            100_000,
        )?;
        range("ws.message_burst", ws.message_burst as u64, 1, 1_000_000)?;
        range(
            "http.max_body_bytes",
            self.http.max_body_bytes as u64,
            256,
            16 << 20,
        )?;
        range(
            "http.header_read_timeout_ms",
            self.http.header_read_timeout_ms,
            100,
            300_000,
        )?;
        if let Some(n) = self.limits.max_connections {
            range("limits.max_connections", n as u64, 1, 10_000_000)?;
        }
        if let Some(n) = self.limits.max_connections_per_ip {
            range("limits.max_connections_per_ip", n as u64, 1, 10_000_000)?;
        }
        range(
            "limits.socket_send_buffer_bytes",
            self.limits.socket_send_buffer_bytes as u64,
            4096,
            16 * 1024 * 1024,
        )?;
        range(
            "http.body_read_timeout_ms",
            self.http.body_read_timeout_ms,
            100,
            600_000,
        )?;
        range(
            "limits.connects_per_ip_per_sec",
            self.limits.connects_per_ip_per_sec as u64,
            1,
            10_000_000,
        )?;
        range(
            "limits.user_triggers_per_sec",
            self.limits.user_triggers_per_sec as u64,
            1,
            1_000_000,
        )?;
        range(
            "limits.max_wait_for_acks_ms",
            self.limits.max_wait_for_acks_ms,
            0,
            60_000,
        )?;
        Ok(())
    }
}
