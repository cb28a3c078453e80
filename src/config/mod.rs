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

mod identity;
mod ops;
mod pusher;
mod sockets;
mod sso;

pub use identity::*;
pub use ops::*;
pub use pusher::*;
pub use sockets::*;
pub use sso::*;

use figment::Figment;
use figment::providers::{Env, Format, Serialized, Toml};
use serde::{Deserialize, Serialize};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

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

    /// Checks every setting; the first problem is returned, naming its key.
    pub fn validate(&self) -> Result<(), ConfigError> {
        self.validate_sockets()?;
        self.validate_ops()?;
        range(
            "max_token_lifetime_secs",
            self.max_token_lifetime_secs,
            60,
            400 * 24 * 3600,
        )?;
        self.validate_notify()?;
        self.validate_pusher()?;
        for (i, origin) in self
            .ws
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

        self.validate_identity()?;
        self.validate_transfer()
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
