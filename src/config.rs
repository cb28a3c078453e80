//! Settings: one struct, layered and validated once at start.
//!
//! Layers, lowest first: the built-in defaults of the mode (dev or production),
//! the TOML file (`serve --config FILE`), `SLO_HUB_*` environment variables
//! (`SLO_HUB_WS__MAX_MESSAGE_BYTES` sets `ws.max_message_bytes`), then CLI
//! flags. [`Config::load`] returns either a config that [`Config::validate`]
//! accepted or a [`ConfigError`] naming the key and the reason; `main` turns
//! that into exit code 2.
//!
//! This module must not open files other than the config file, bind sockets
//! or read keys: it describes, the rest of the crate acts.

use std::collections::BTreeSet;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use figment::Figment;
use figment::providers::{Env, Format, Serialized, Toml};
use jsonwebtoken::Algorithm;
use serde::{Deserialize, Serialize};

/// Dev mode is what `cargo run` starts: loopback, dev issuer, demo SPAs.
/// Production is `slo-hub serve --config FILE`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Mode {
    Dev,
    Production,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum LogFormat {
    Text,
    Json,
}

/// Where revocation state lives (see `store`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum StoreKind {
    /// Durable, crash-safe file in `data_dir`.
    Embedded,
    /// Process memory: nothing survives a restart.
    Memory,
}

/// Every setting of the hub. Field docs are the reference for the TOML file.
#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Config {
    /// Set by the command line, never by the file.
    #[serde(skip)]
    pub mode: Option<Mode>,
    /// Address the hub listens on.
    pub listen: SocketAddr,
    /// Directory for the dev issuer key and the embedded store; created if missing.
    pub data_dir: PathBuf,
    /// The URL clients use to reach the hub (printed, and the issuer of hub-signed
    /// tokens). Defaults to `http://{listen}`.
    pub public_url: Option<String>,
    /// `text` or `json` logs.
    pub log_format: LogFormat,
    /// Longest token lifetime (`exp - iat`) the hub accepts, in seconds. Logout
    /// watermarks are kept this long, so no token can outlive its watermark.
    pub max_token_lifetime_secs: u64,
    /// `embedded` (default) or `memory`.
    pub store: StoreKind,
    /// Redis shared by several hub nodes: `redis://host:port` (one server,
    /// or `rediss://` with TLS) or `redis-cluster://host:port,host:port`
    /// (a Redis Cluster; any of its nodes as seeds). Needs `public_url`.
    pub cluster: Option<String>,
    pub dev: DevSettings,
    pub ws: WsSettings,
    pub http: HttpSettings,
    pub limits: Limits,
    /// JWT issuers whose access tokens the hub accepts.
    pub issuers: Vec<IssuerSettings>,
    /// Backend API keys (only their SHA-256 hashes).
    pub api_keys: Vec<ApiKeySettings>,
    /// Native-to-Web SSO: session transfer tokens and the sessions they create.
    pub transfer: TransferSettings,
    /// OAuth clients of Native-to-Web SSO (`[[clients]]`).
    pub clients: Vec<ClientSettings>,
    /// Telling client apps about logouts: back-channel logout tokens the hub
    /// sends to their backends, and the front-channel logout page.
    pub notify: NotifySettings,
    /// Pusher protocol v7 apps (`[[pusher_apps]]`): `/app/{key}` and `/apps/{id}/...`.
    pub pusher_apps: Vec<PusherAppSettings>,
    /// The audit trail (`/v1/audit`, the console).
    pub audit: AuditSettings,
    /// The operator's console at `/console` and the admin API.
    pub console: ConsoleSettings,
}

/// How long the audit trail is kept.
#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AuditSettings {
    /// Entries older than this are removed (every minute, in small batches).
    pub retention_days: u64,
    /// At most this many entries are kept (the oldest go first).
    pub max_entries: usize,
}

/// The console (`/console`) and where the operator's endpoints listen.
#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ConsoleSettings {
    /// Serve `/console` (an admin signs in with an API key of scope `admin`).
    pub enabled: bool,
    /// Serve `/console`, `/metrics` and the admin API on this address only
    /// (an internal port), not on `listen`. Unset: on `listen`.
    pub listen: Option<SocketAddr>,
}

/// One Pusher-compatible app: credentials as Pusher issues them.
#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PusherAppSettings {
    /// `app_id` of the HTTP API (`/apps/{id}/...`).
    pub id: String,
    /// Public key of the socket URL (`/app/{key}`) and of signed requests.
    pub key: String,
    /// Signs channel authorisations, user sign-ins and API requests (HMAC-SHA256).
    pub secret: String,
    /// Let clients send `client-*` events on private and presence channels.
    #[serde(default)]
    pub enable_client_messages: bool,
    /// Largest event `data` accepted (Pusher's default: 10 KB).
    #[serde(default = "default_pusher_event_bytes")]
    pub max_event_bytes: usize,
    /// Seconds of silence after which a client should ping (told in
    /// `connection_established`); a socket silent for twice that is closed 4201.
    #[serde(default = "default_pusher_activity")]
    pub activity_timeout_secs: u64,
    /// Bridge with slo-hub's logout: user ids signed in on this app are `sub`s
    /// of this issuer, so a logout of that user by any slo-hub path reaches
    /// their Pusher sockets (`slo-event` on `#server-to-user-{id}`, then 4009).
    #[serde(default)]
    pub logout_issuer: Option<String>,
}

fn default_pusher_event_bytes() -> usize {
    10 * 1024
}
fn default_pusher_activity() -> u64 {
    120
}

/// Delivery of the hub's own back-channel logout tokens (OpenID Back-Channel
/// Logout 1.0) to each client's `backchannel_logout_uri`, when the hub ends
/// one of its web sessions.
#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NotifySettings {
    /// Notifications waiting or in flight at most; beyond, new ones are
    /// dropped (counted, logged) rather than growing memory without bound.
    pub queue_size: usize,
    /// Requests in flight at once, over all backends.
    pub concurrency: usize,
    /// Attempts per notification (the first included).
    pub max_attempts: u32,
    /// Wait before the first retry; doubled each retry up to `max_retry_ms`.
    pub first_retry_ms: u64,
    pub max_retry_ms: u64,
    /// One request's deadline (connect, send, answer).
    pub request_timeout_ms: u64,
    /// How long `/v1/logout/frontchannel` waits for the apps' acknowledgements
    /// before it moves on (to `returnTo`, if given).
    pub frontchannel_timeout_ms: u64,
}

/// Session transfer tokens (STT) and the hub's session tokens.
#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TransferSettings {
    /// `audience` values that ask `/oauth/token` for a session transfer token.
    pub audiences: Vec<String>,
    /// Lifetime of a transfer token (single use).
    pub token_ttl_secs: u64,
    /// Lifetime of a native session (and its refresh tokens) the hub keeps.
    pub native_session_lifetime_secs: u64,
    /// Lifetime of one hub-signed session token (capped by its session's expiry).
    pub session_token_ttl_secs: u64,
    /// Older place of `http.trusted_proxies` (both are used).
    pub trusted_proxies: Vec<String>,
    /// IP range → ASN table for `enforce_device_binding = "asn"`.
    pub asn_ranges: Vec<AsnRange>,
}

#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AsnRange {
    /// `10.0.0.0/8`, `2001:db8::/32` or a single address.
    pub cidr: String,
    pub asn: u32,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ClientKind {
    Native,
    Web,
}

/// How a web client receives the transfer token at `/authorize`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum AuthMethod {
    Cookie,
    Query,
}

/// What a transfer token is bound to when it is minted.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "lowercase")]
pub enum DeviceBinding {
    /// The client IP must be the same at redemption.
    #[default]
    Ip,
    /// The client IP's ASN (from `transfer.asn_ranges`) must be the same.
    Asn,
    None,
}

/// One registered client. Settings carry the reference product's names and defaults.
#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ClientSettings {
    pub client_id: String,
    /// `native` (mints transfer tokens) or `web` (redeems them at `/authorize`).
    pub kind: ClientKind,
    /// Exact redirect URIs (web).
    #[serde(default)]
    pub redirect_uris: Vec<String>,
    /// Origins of the web app (added to the socket and CORS allow-lists).
    #[serde(default)]
    pub allowed_origins: Vec<String>,
    /// Native: may mint session transfer tokens.
    #[serde(default)]
    pub can_create_session_transfer_token: bool,
    /// Native: revoking a refresh token also revokes the web sessions and
    /// refresh tokens derived from its session.
    #[serde(default = "yes")]
    pub enforce_cascade_revocation: bool,
    /// Native: each refresh-token grant answers a new refresh token and
    /// retires the old one (reusing a retired one revokes the session).
    #[serde(default)]
    pub rotate_refresh_token: bool,
    /// Native: web clients its transfer tokens may open (empty: any).
    #[serde(default)]
    pub transfer_to: Vec<String>,
    /// Web: how `/authorize` accepts the transfer token.
    #[serde(default = "both_methods")]
    pub allowed_authentication_methods: Vec<AuthMethod>,
    /// Web: `ip` (default), `asn` or `none`.
    #[serde(default)]
    pub enforce_device_binding: DeviceBinding,
    /// Web: the code exchange also answers a refresh token.
    #[serde(default)]
    pub allow_refresh_token: bool,
    /// Web: ending a web session also revokes its refresh tokens.
    #[serde(default = "yes")]
    pub enforce_online_refresh_tokens: bool,
    /// Web: absolute and idle lifetime of transfer-created sessions.
    #[serde(default = "default_session_lifetime")]
    pub session_lifetime_secs: u64,
    #[serde(default = "default_session_idle")]
    pub session_idle_secs: u64,
    /// Web: the app backend's OpenID back-channel logout endpoint. When the
    /// hub ends one of this client's web sessions it POSTs a logout token
    /// there (see `[notify]`).
    #[serde(default)]
    pub backchannel_logout_uri: Option<String>,
    /// Web: a page of the app that clears its session and answers the hub's
    /// front-channel logout page with a `postMessage` (see
    /// `/v1/logout/frontchannel`).
    #[serde(default)]
    pub frontchannel_logout_uri: Option<String>,
    /// Web: where `/v1/logout/frontchannel?returnTo=` may send the browser
    /// afterwards (exact match).
    #[serde(default)]
    pub post_logout_redirect_uris: Vec<String>,
    /// A confidential client: hex SHA-256 of its secret (`client_secret_basic`
    /// or `client_secret_post`). With this or `client_keys` set, every token
    /// request of the client must authenticate; without, it is public.
    #[serde(default)]
    pub client_secret_sha256: Option<String>,
    /// A confidential client's public keys for `private_key_jwt` (RFC 7523
    /// client assertions).
    #[serde(default)]
    pub client_keys: Vec<StaticKey>,
    /// Native: besides its own, the clients whose subject tokens it may
    /// exchange (RFC 8693): a token's `azp`, `client_id` or `aud` must name
    /// this client or one of these.
    #[serde(default)]
    pub token_exchange_subject_clients: Vec<String>,
    /// Native: a session opened by token exchange may outlive the subject
    /// token (by default it ends when the subject token expires, and with
    /// its upstream session's logout either way).
    #[serde(default)]
    pub token_exchange_outlives_subject: bool,
}

fn yes() -> bool {
    true
}
fn both_methods() -> Vec<AuthMethod> {
    vec![AuthMethod::Cookie, AuthMethod::Query]
}
fn default_session_lifetime() -> u64 {
    30 * 60
}
fn default_session_idle() -> u64 {
    15 * 60
}

impl ClientSettings {
    /// A client with every default of its kind.
    pub fn new(client_id: &str, kind: ClientKind) -> ClientSettings {
        ClientSettings {
            client_id: client_id.to_string(),
            kind,
            redirect_uris: Vec::new(),
            allowed_origins: Vec::new(),
            can_create_session_transfer_token: false,
            enforce_cascade_revocation: true,
            rotate_refresh_token: false,
            transfer_to: Vec::new(),
            allowed_authentication_methods: both_methods(),
            enforce_device_binding: DeviceBinding::Ip,
            allow_refresh_token: false,
            enforce_online_refresh_tokens: true,
            session_lifetime_secs: default_session_lifetime(),
            session_idle_secs: default_session_idle(),
            backchannel_logout_uri: None,
            frontchannel_logout_uri: None,
            post_logout_redirect_uris: Vec::new(),
            client_secret_sha256: None,
            client_keys: Vec::new(),
            token_exchange_subject_clients: Vec::new(),
            token_exchange_outlives_subject: false,
        }
    }

    /// Whether the client must authenticate at the token endpoint.
    pub fn is_confidential(&self) -> bool {
        self.client_secret_sha256.is_some() || !self.client_keys.is_empty()
    }
}

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

/// One trusted JWT issuer.
#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct IssuerSettings {
    /// Exact `iss` value.
    pub issuer: String,
    /// Accepted `aud` values; a token must carry at least one of them.
    pub audiences: Vec<String>,
    /// Allowed algorithms. Default: RS256, ES256, EdDSA, plus HS256 if `hs256_secret` is set.
    #[serde(default)]
    pub algorithms: Vec<Algorithm>,
    /// JWKS document URL (keys cached, refetched on an unknown `kid`).
    #[serde(default)]
    pub jwks_url: Option<String>,
    /// Static public keys.
    #[serde(default)]
    pub keys: Vec<StaticKey>,
    /// Shared secret for HS256 (at least 32 bytes). HS256 is refused without it.
    #[serde(default)]
    pub hs256_secret: Option<String>,
    /// Clock leeway for `exp`, `nbf` and `iat`, in seconds.
    #[serde(default = "default_leeway")]
    pub leeway_secs: u64,
    /// Minimum seconds between two JWKS refetches caused by unknown `kid`s.
    #[serde(default = "default_jwks_refetch")]
    pub jwks_min_refetch_secs: u64,
    /// Refuse back-channel logout tokens without `typ: logout+jwt`
    /// (OpenID Back-Channel Logout 1.0 §2.4 recommends the explicit type).
    #[serde(default)]
    pub require_logout_typ: bool,
    /// Other configured issuers whose users this issuer's security events
    /// (CAEP `iss_sub` subjects) may name; by default only its own.
    #[serde(default)]
    pub speaks_for: Vec<String>,
}

fn default_leeway() -> u64 {
    5
}
fn default_jwks_refetch() -> u64 {
    30
}

/// A static verification key: a PEM public key or a JWK (JSON text).
#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct StaticKey {
    #[serde(default)]
    pub kid: Option<String>,
    #[serde(default)]
    pub pem: Option<String>,
    #[serde(default)]
    pub jwk: Option<String>,
}

#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ApiKeySettings {
    /// Shown in logs and metrics instead of the key.
    pub name: String,
    /// Hex SHA-256 of the key (`slo-hub gen-api-key` prints both).
    pub sha256: String,
    /// `logout:any`, `revoke`, `audit:read`, `admin` (the console and the
    /// admin API; it includes the three others).
    pub scopes: Vec<String>,
}

/// Scopes an API key may carry.
pub const API_SCOPES: &[&str] = &["logout:any", "revoke", "audit:read", "admin"];

#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("config: {key}: {reason}")]
    Invalid { key: String, reason: String },
    #[error("config: {0}")]
    Load(String),
}

fn invalid(key: impl Into<String>, reason: impl Into<String>) -> ConfigError {
    ConfigError::Invalid {
        key: key.into(),
        reason: reason.into(),
    }
}

/// Values given on the command line; `None` leaves the lower layers alone.
#[derive(Debug, Default, Clone)]
pub struct Overrides {
    pub listen: Option<SocketAddr>,
    pub data_dir: Option<PathBuf>,
    pub no_demo: bool,
    pub demo_a_port: Option<u16>,
    pub demo_b_port: Option<u16>,
    pub log_format: Option<LogFormat>,
    pub store: Option<StoreKind>,
    pub cluster: Option<String>,
}

impl Config {
    /// The built-in defaults of a mode.
    pub fn defaults(mode: Mode) -> Config {
        let dev = mode == Mode::Dev;
        Config {
            mode: Some(mode),
            listen: if dev {
                SocketAddr::from(([127, 0, 0, 1], 8080))
            } else {
                SocketAddr::from(([0, 0, 0, 0], 8080))
            },
            data_dir: PathBuf::from("./data"),
            public_url: None,
            log_format: LogFormat::Text,
            max_token_lifetime_secs: 24 * 3600,
            store: StoreKind::Embedded,
            cluster: None,
            dev: DevSettings {
                issuer: dev,
                issuer_clients: Vec::new(),
                demo: dev,
                demo_a_port: 0,
                demo_b_port: 0,
            },
            ws: WsSettings {
                allowed_origins: Vec::new(),
                allow_missing_origin: true,
                allow_null_origin: false,
                auth_timeout_ms: 5_000,
                max_message_bytes: 16 * 1024,
                outbound_buffer_bytes: 64 * 1024,
                heartbeat_secs: 30,
                relogin_secs: 30,
                max_messages_per_sec: 20,
                message_burst: 40,
                max_protocol_errors: 5,
                frame_timeout_ms: 10_000,
            },
            http: HttpSettings {
                max_body_bytes: 16 * 1024,
                header_read_timeout_ms: 10_000,
                body_read_timeout_ms: 10_000,
                cors_origins: Vec::new(),
                trusted_proxies: Vec::new(),
            },
            limits: Limits {
                max_connections: None,
                max_connections_per_ip: None,
                socket_send_buffer_bytes: 64 * 1024,
                connects_per_ip_per_sec: 200,
                connect_burst: 400,
                user_triggers_per_sec: 5,
                user_trigger_burst: 10,
                max_wait_for_acks_ms: 5_000,
                partial_frames_bytes: 64 << 20,
            },
            issuers: Vec::new(),
            api_keys: Vec::new(),
            transfer: TransferSettings {
                audiences: vec!["urn:slo-hub:session_transfer".into()],
                token_ttl_secs: 60,
                native_session_lifetime_secs: 30 * 24 * 3600,
                session_token_ttl_secs: 600,
                trusted_proxies: Vec::new(),
                asn_ranges: Vec::new(),
            },
            clients: Vec::new(),
            audit: AuditSettings {
                retention_days: 90,
                max_entries: 1_000_000,
            },
            console: ConsoleSettings {
                enabled: true,
                listen: None,
            },
            notify: NotifySettings {
                queue_size: 10_000,
                concurrency: 16,
                max_attempts: 6,
                first_retry_ms: 1_000,
                max_retry_ms: 60_000,
                request_timeout_ms: 5_000,
                frontchannel_timeout_ms: 5_000,
            },
            pusher_apps: Vec::new(),
        }
    }

    /// Layers defaults, the optional file, `SLO_HUB_*` env and CLI overrides, then validates.
    pub fn load(
        mode: Mode,
        file: Option<&Path>,
        overrides: &Overrides,
    ) -> Result<Config, ConfigError> {
        let mut fig = Figment::from(Serialized::defaults(Config::defaults(mode)));
        if let Some(path) = file {
            if !path.is_file() {
                return Err(invalid(
                    "--config",
                    format!("{} is not a readable file", path.display()),
                ));
            }
            fig = fig.merge(Toml::file_exact(path));
        }
        // SLO_HUB_CONFIG and SLO_HUB_REQUIRE_ALL belong to the CLI and the tests.
        fig = fig.merge(
            Env::prefixed("SLO_HUB_")
                .ignore(&["config", "require_all"])
                .split("__"),
        );
        let o = overrides;
        if let Some(v) = o.listen {
            fig = fig.merge(Serialized::global("listen", v));
        }
        if let Some(v) = &o.data_dir {
            fig = fig.merge(Serialized::global("data_dir", v));
        }
        if o.no_demo {
            fig = fig.merge(Serialized::global("dev.demo", false));
        }
        if let Some(v) = o.demo_a_port {
            fig = fig.merge(Serialized::global("dev.demo_a_port", v));
        }
        if let Some(v) = o.demo_b_port {
            fig = fig.merge(Serialized::global("dev.demo_b_port", v));
        }
        if let Some(v) = o.log_format {
            fig = fig.merge(Serialized::global("log_format", v));
        }
        if let Some(v) = o.store {
            fig = fig.merge(Serialized::global("store", v));
        }
        if let Some(v) = &o.cluster {
            fig = fig.merge(Serialized::global("cluster", v));
        }
        let mut config: Config = fig.extract().map_err(|e| {
            // figment names keys by profile ("default.ws.x"); we have one profile.
            let mut text = e.to_string().replace("for key \"default.", "for key \"");
            // A value from the environment: name the variable to fix.
            if e.metadata
                .as_ref()
                .is_some_and(|m| m.name.contains("environment"))
            {
                let var = format!("SLO_HUB_{}", e.path.join("__").to_uppercase());
                text.push_str(&format!(" (set by the environment variable {var})"));
            }
            ConfigError::Load(text)
        })?;
        config.mode = Some(mode);
        config.validate()?;
        Ok(config)
    }

    pub fn mode(&self) -> Mode {
        self.mode.unwrap_or(Mode::Production)
    }

    pub fn is_dev(&self) -> bool {
        self.mode() == Mode::Dev
    }

    /// What this config sets up, in one line (`slo-hub check`).
    pub fn summary(&self) -> String {
        format!(
            "{} mode, listen {}, {} issuer(s), {} API key(s), {} SSO client(s), {} Pusher app(s), store {}",
            if self.is_dev() { "dev" } else { "production" },
            self.listen,
            self.issuers.len() + usize::from(self.dev.issuer),
            self.api_keys.len(),
            self.clients.len(),
            self.pusher_apps.len(),
            match (&self.cluster, self.store) {
                (Some(_), _) => "redis (cluster)",
                (None, StoreKind::Embedded) => "embedded",
                (None, StoreKind::Memory) => "memory",
            }
        )
    }

    /// Why a hub with this config could do nothing at all, if it could not:
    /// no way for anyone to authenticate a socket or a trigger.
    pub fn idle_warning(&self) -> Option<&'static str> {
        let nothing = self.issuers.is_empty()
            && !self.dev.issuer
            && self.api_keys.is_empty()
            && self.clients.is_empty()
            && self.pusher_apps.is_empty();
        nothing.then_some(
            "no [[issuers]], [[api_keys]], [[clients]] or [[pusher_apps]]: no socket and no trigger can authenticate",
        )
    }

    /// The URL clients use to reach the hub.
    pub fn public_url(&self) -> String {
        match &self.public_url {
            Some(u) => u.trim_end_matches('/').to_string(),
            None => format!("http://{}", self.listen),
        }
    }

    /// Ports of the two demo apps (0 in the settings means: follow the hub's port).
    pub fn demo_ports(&self) -> (u16, u16) {
        let base = self.listen.port();
        let pick = |p: u16, off: u16| {
            if p != 0 {
                p
            } else if base == 0 {
                0
            } else {
                base.saturating_add(off)
            }
        };
        (pick(self.dev.demo_a_port, 1), pick(self.dev.demo_b_port, 2))
    }

    pub fn auth_timeout(&self) -> Duration {
        Duration::from_millis(self.ws.auth_timeout_ms)
    }

    /// How long a logged-out socket stays open (see `ws.relogin_secs`).
    pub fn relogin_window(&self) -> Duration {
        match self.ws.relogin_secs {
            0 => Duration::from_secs(5),
            s => Duration::from_secs(s),
        }
    }

    /// Checks every rule that serde cannot express. The first violation wins.
    pub fn validate(&self) -> Result<(), ConfigError> {
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
        range("audit.retention_days", self.audit.retention_days, 1, 3_650)?;
        range(
            "audit.max_entries",
            self.audit.max_entries as u64,
            1_000,
            1_000_000_000,
        )?;
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
        range(
            "max_token_lifetime_secs",
            self.max_token_lifetime_secs,
            60,
            400 * 24 * 3600,
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
        let n = &self.notify;
        range("notify.queue_size", n.queue_size as u64, 1, 10_000_000)?;
        range("notify.concurrency", n.concurrency as u64, 1, 10_000)?;
        range("notify.max_attempts", n.max_attempts as u64, 1, 100)?;
        range("notify.first_retry_ms", n.first_retry_ms, 1, 3_600_000)?;
        range(
            "notify.max_retry_ms",
            n.max_retry_ms,
            n.first_retry_ms,
            24 * 3_600_000,
        )?;
        range(
            "notify.request_timeout_ms",
            n.request_timeout_ms,
            10,
            300_000,
        )?;
        range(
            "notify.frontchannel_timeout_ms",
            n.frontchannel_timeout_ms,
            100,
            60_000,
        )?;
        self.validate_pusher()?;
        for (i, origin) in ws
            .allowed_origins
            .iter()
            .chain(self.http.cors_origins.iter())
            .enumerate()
        {
            if origin != "*" && !is_origin(origin) {
                return Err(invalid(
                    format!("ws.allowed_origins[{i}]"),
                    format!("{origin:?} is not an origin of the form scheme://host[:port]"),
                ));
            }
        }
        if let Some(url) = &self.public_url
            && !(url.starts_with("http://") || url.starts_with("https://"))
        {
            return Err(invalid("public_url", "must start with http:// or https://"));
        }
        if let Some(url) = &self.cluster {
            let scheme_ok = ["redis://", "rediss://", "redis-cluster://"]
                .iter()
                .any(|s| url.starts_with(s));
            if !scheme_ok {
                return Err(invalid(
                    "cluster",
                    "must be a redis://, rediss:// or redis-cluster://host:port,host:port URL",
                ));
            }
            if self.public_url.is_none() {
                // Each node would otherwise sign as its own listen address,
                // and a token of one would be foreign to the others.
                return Err(invalid(
                    "public_url",
                    "is required with cluster: the one URL clients reach every node by (the balancer's)",
                ));
            }
        }

        let mut seen = BTreeSet::new();
        for (i, iss) in self.issuers.iter().enumerate() {
            let key = |k: &str| format!("issuers[{i}].{k}");
            if iss.issuer.is_empty() {
                return Err(invalid(key("issuer"), "must not be empty"));
            }
            if !seen.insert(iss.issuer.as_str()) {
                return Err(invalid(
                    key("issuer"),
                    format!("{:?} is configured twice", iss.issuer),
                ));
            }
            if iss.audiences.is_empty() {
                return Err(invalid(
                    key("audiences"),
                    "at least one audience is required",
                ));
            }
            if iss.jwks_url.is_none() && iss.keys.is_empty() && iss.hs256_secret.is_none() {
                return Err(invalid(
                    key("jwks_url"),
                    "an issuer needs jwks_url, keys or hs256_secret",
                ));
            }
            if let Some(url) = &iss.jwks_url
                && !(url.starts_with("https://") || url.starts_with("http://"))
            {
                return Err(invalid(key("jwks_url"), "must be an http(s) URL"));
            }
            if iss.hs256_secret.as_ref().is_some_and(|s| s.len() < 32) {
                return Err(invalid(
                    key("hs256_secret"),
                    "must be at least 32 bytes (RFC 7518 §3.2)",
                ));
            }
            for alg in &iss.algorithms {
                let hmac = matches!(alg, Algorithm::HS256 | Algorithm::HS384 | Algorithm::HS512);
                if hmac && iss.hs256_secret.is_none() {
                    return Err(invalid(
                        key("algorithms"),
                        format!("{alg:?} needs hs256_secret"),
                    ));
                }
            }
            for (k, sk) in iss.keys.iter().enumerate() {
                if sk.pem.is_some() == sk.jwk.is_some() {
                    return Err(invalid(
                        format!("issuers[{i}].keys[{k}]"),
                        "set exactly one of pem and jwk",
                    ));
                }
            }
            range(key("leeway_secs").as_str(), iss.leeway_secs, 0, 300)?;
        }
        let mut names = BTreeSet::new();
        for (i, k) in self.api_keys.iter().enumerate() {
            if !names.insert(k.name.as_str()) {
                return Err(invalid(
                    format!("api_keys[{i}].name"),
                    format!("{:?} is used twice", k.name),
                ));
            }
            let hex_ok = k.sha256.len() == 64 && k.sha256.bytes().all(|b| b.is_ascii_hexdigit());
            if !hex_ok {
                return Err(invalid(
                    format!("api_keys[{i}].sha256"),
                    "must be 64 hex digits (the SHA-256 of the key)",
                ));
            }
            for s in &k.scopes {
                if !API_SCOPES.contains(&s.as_str()) {
                    return Err(invalid(
                        format!("api_keys[{i}].scopes"),
                        format!("unknown scope {s:?}; known: {}", API_SCOPES.join(", ")),
                    ));
                }
            }
        }
        self.validate_transfer()
    }

    fn validate_pusher(&self) -> Result<(), ConfigError> {
        let mut seen = BTreeSet::new();
        for (i, a) in self.pusher_apps.iter().enumerate() {
            let key = |k: &str| format!("pusher_apps[{i}].{k}");
            for (name, v) in [("id", &a.id), ("key", &a.key)] {
                let ok = !v.is_empty()
                    && v.len() <= 64
                    && v.bytes()
                        .all(|b| b.is_ascii_alphanumeric() || b"-_.".contains(&b));
                if !ok {
                    return Err(invalid(key(name), "must be 1 to 64 of A-Z a-z 0-9 - _ ."));
                }
                if !seen.insert((name, v.as_str())) {
                    return Err(invalid(key(name), format!("{v:?} is used by two apps")));
                }
            }
            if a.secret.len() < 16 {
                return Err(invalid(key("secret"), "must be at least 16 characters"));
            }
            range(
                &key("max_event_bytes"),
                a.max_event_bytes as u64,
                1,
                1 << 20,
            )?;
            range(
                &key("activity_timeout_secs"),
                a.activity_timeout_secs,
                1,
                3600,
            )?;
        }
        Ok(())
    }

    fn validate_transfer(&self) -> Result<(), ConfigError> {
        let t = &self.transfer;
        range("transfer.token_ttl_secs", t.token_ttl_secs, 1, 600)?;
        range(
            "transfer.session_token_ttl_secs",
            t.session_token_ttl_secs,
            10,
            self.max_token_lifetime_secs,
        )?;
        range(
            "transfer.native_session_lifetime_secs",
            t.native_session_lifetime_secs,
            60,
            400 * 24 * 3600,
        )?;
        if t.audiences.is_empty() {
            return Err(invalid(
                "transfer.audiences",
                "at least one audience is required",
            ));
        }
        for (i, p) in t.trusted_proxies.iter().enumerate() {
            crate::util::IpNet::parse(p)
                .map_err(|e| invalid(format!("transfer.trusted_proxies[{i}]"), e))?;
        }
        for (i, p) in self.http.trusted_proxies.iter().enumerate() {
            crate::util::IpNet::parse(p)
                .map_err(|e| invalid(format!("http.trusted_proxies[{i}]"), e))?;
        }
        for (i, p) in self.dev.issuer_clients.iter().enumerate() {
            crate::util::IpNet::parse(p)
                .map_err(|e| invalid(format!("dev.issuer_clients[{i}]"), e))?;
        }
        for (i, r) in t.asn_ranges.iter().enumerate() {
            crate::util::IpNet::parse(&r.cidr)
                .map_err(|e| invalid(format!("transfer.asn_ranges[{i}].cidr"), e))?;
        }
        let mut ids = BTreeSet::new();
        for (i, c) in self.clients.iter().enumerate() {
            let key = |k: &str| format!("clients[{i}].{k}");
            if !crate::util::is_printable_id(&c.client_id) {
                return Err(invalid(
                    key("client_id"),
                    "must be 1 to 255 printable characters",
                ));
            }
            if !ids.insert(c.client_id.as_str()) {
                return Err(invalid(
                    key("client_id"),
                    format!("{:?} is registered twice", c.client_id),
                ));
            }
            let uris = c
                .redirect_uris
                .iter()
                .enumerate()
                .map(|(j, u)| (format!("redirect_uris[{j}]"), u))
                .chain(
                    c.post_logout_redirect_uris
                        .iter()
                        .enumerate()
                        .map(|(j, u)| (format!("post_logout_redirect_uris[{j}]"), u)),
                )
                .chain(
                    c.backchannel_logout_uri
                        .iter()
                        .map(|u| ("backchannel_logout_uri".to_string(), u)),
                )
                .chain(
                    c.frontchannel_logout_uri
                        .iter()
                        .map(|u| ("frontchannel_logout_uri".to_string(), u)),
                );
            for (k, uri) in uris {
                if !is_http_url(uri) {
                    return Err(invalid(
                        key(&k),
                        "must be an absolute http(s) URL without a fragment",
                    ));
                }
            }
            for (j, o) in c.allowed_origins.iter().enumerate() {
                if !is_origin(o) {
                    return Err(invalid(
                        format!("clients[{i}].allowed_origins[{j}]"),
                        format!("{o:?} is not an origin of the form scheme://host[:port]"),
                    ));
                }
            }
            if let Some(h) = &c.client_secret_sha256
                && (h.len() != 64 || !h.bytes().all(|b| b.is_ascii_hexdigit()))
            {
                return Err(invalid(
                    key("client_secret_sha256"),
                    "must be 64 hex digits (the SHA-256 of the secret)",
                ));
            }
            for (j, k) in c.client_keys.iter().enumerate() {
                if k.pem.is_some() == k.jwk.is_some() {
                    return Err(invalid(
                        format!("clients[{i}].client_keys[{j}]"),
                        "give exactly one of pem and jwk",
                    ));
                }
            }
            if let Some(fc) = &c.frontchannel_logout_uri {
                // Front-Channel Logout 1.0 §2: its origin must be that of one
                // of the client's redirect URIs.
                let origin = origin_of(fc);
                if !c.redirect_uris.iter().any(|r| origin_of(r) == origin) {
                    return Err(invalid(
                        key("frontchannel_logout_uri"),
                        "its scheme, host and port must match one of the client's redirect_uris",
                    ));
                }
            }
            if c.kind == ClientKind::Web {
                if c.redirect_uris.is_empty() {
                    return Err(invalid(
                        key("redirect_uris"),
                        "a web client needs at least one",
                    ));
                }
                if c.allowed_authentication_methods.is_empty() {
                    return Err(invalid(
                        key("allowed_authentication_methods"),
                        "allow \"cookie\", \"query\" or both",
                    ));
                }
                if c.enforce_device_binding == DeviceBinding::Asn && t.asn_ranges.is_empty() {
                    return Err(invalid(
                        key("enforce_device_binding"),
                        "\"asn\" needs an IP-range table in transfer.asn_ranges",
                    ));
                }
                range(
                    key("session_lifetime_secs").as_str(),
                    c.session_lifetime_secs,
                    1,
                    400 * 24 * 3600,
                )?;
                range(
                    key("session_idle_secs").as_str(),
                    c.session_idle_secs,
                    1,
                    c.session_lifetime_secs,
                )?;
            }
        }
        for (i, c) in self.clients.iter().enumerate() {
            for target in &c.transfer_to {
                let web = self
                    .clients
                    .iter()
                    .any(|w| &w.client_id == target && w.kind == ClientKind::Web);
                if !web {
                    return Err(invalid(
                        format!("clients[{i}].transfer_to"),
                        format!("{target:?} is not a registered web client"),
                    ));
                }
            }
        }
        Ok(())
    }
}

/// `scheme://host[:port]` of an absolute URL (lowercased), or "".
fn origin_of(uri: &str) -> String {
    match reqwest::Url::parse(uri) {
        Ok(u) => u.origin().ascii_serialization(),
        Err(_) => String::new(),
    }
}

fn is_http_url(uri: &str) -> bool {
    let rest = uri
        .strip_prefix("https://")
        .or_else(|| uri.strip_prefix("http://"));
    rest.is_some_and(|r| !r.is_empty() && !r.starts_with('/')) && !uri.contains('#')
}

fn range(key: &str, value: u64, min: u64, max: u64) -> Result<(), ConfigError> {
    if value < min || value > max {
        return Err(invalid(
            key,
            format!("{value} is out of range; allowed {min}..={max}"),
        ));
    }
    Ok(())
}

/// `scheme://host[:port]` with no path, query or trailing slash: the exact form
/// browsers send in `Origin`.
pub fn is_origin(s: &str) -> bool {
    let Some((scheme, rest)) = s.split_once("://") else {
        return false;
    };
    if !matches!(scheme, "http" | "https") || rest.is_empty() {
        return false;
    }
    !rest.contains(['/', '?', '#', ' ', '@'])
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dev_defaults_validate() {
        Config::defaults(Mode::Dev).validate().unwrap();
        Config::defaults(Mode::Production).validate().unwrap();
    }

    #[test]
    fn demo_ports_follow_the_listen_port() {
        let mut c = Config::defaults(Mode::Dev);
        assert_eq!(c.demo_ports(), (8081, 8082));
        c.listen = "127.0.0.1:9000".parse().unwrap();
        assert_eq!(c.demo_ports(), (9001, 9002));
        c.dev.demo_b_port = 7000;
        assert_eq!(c.demo_ports(), (9001, 7000));
    }

    #[test]
    fn errors_name_the_key() {
        let mut c = Config::defaults(Mode::Production);
        c.ws.max_message_bytes = 10;
        let e = c.validate().unwrap_err().to_string();
        assert!(e.contains("ws.max_message_bytes"), "{e}");
        let mut c = Config::defaults(Mode::Production);
        c.ws.allowed_origins = vec!["https://a.example/".into()];
        let e = c.validate().unwrap_err().to_string();
        assert!(e.contains("ws.allowed_origins[0]"), "{e}");
    }

    #[test]
    fn asn_binding_needs_a_range_table() {
        let mut c = Config::defaults(Mode::Production);
        let mut web = ClientSettings::new("web", ClientKind::Web);
        web.redirect_uris = vec!["https://web.example/cb".into()];
        web.enforce_device_binding = DeviceBinding::Asn;
        c.clients = vec![web];
        let e = c.validate().unwrap_err().to_string();
        assert!(e.contains("clients[0].enforce_device_binding"), "{e}");
        assert!(e.contains("transfer.asn_ranges"), "{e}");
        c.transfer.asn_ranges = vec![AsnRange {
            cidr: "203.0.113.0/24".into(),
            asn: 64500,
        }];
        c.validate().unwrap();
        c.transfer.asn_ranges[0].cidr = "203.0.113.0/40".into();
        let e = c.validate().unwrap_err().to_string();
        assert!(e.contains("transfer.asn_ranges[0].cidr"), "{e}");
    }

    #[test]
    fn origins() {
        assert!(is_origin("https://app.example.com"));
        assert!(is_origin("http://127.0.0.1:8081"));
        assert!(!is_origin("https://app.example.com/"));
        assert!(!is_origin("app.example.com"));
        assert!(!is_origin("ftp://x"));
    }
}
