//! `[transfer]`, `[[clients]]` and `[notify]`: Native-to-Web SSO — session
//! transfer tokens, the OAuth clients and the rules they opt into — and
//! the back-channel notices the hub sends their backends.

use std::collections::BTreeSet;

use serde::{Deserialize, Serialize};

use super::{Config, ConfigError, StaticKey, invalid, is_http_url, is_origin, origin_of, range};

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

impl Config {
    pub(super) fn validate_notify(&self) -> Result<(), ConfigError> {
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
        Ok(())
    }

    pub(super) fn validate_transfer(&self) -> Result<(), ConfigError> {
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
