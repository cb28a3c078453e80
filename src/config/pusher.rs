//! `[[pusher_apps]]`: Pusher-compatible apps, their credentials, limits,
//! origins and webhooks.

use std::collections::BTreeSet;

use serde::{Deserialize, Serialize};

use super::{Config, ConfigError, invalid, range};

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
    /// A disabled app refuses sockets (4003) and API calls.
    #[serde(default = "yes")]
    pub enabled: bool,
    /// Origins whose pages may open a socket; `*` any (Pusher's and
    /// Soketi's default). Clients without `Origin` (servers) are not browsers.
    #[serde(default = "any_origin")]
    pub allowed_origins: Vec<String>,
    /// Sockets open at once across the cluster; more are refused 4004.
    #[serde(default)]
    pub max_connections: Option<u64>,
    /// Client events one socket may send per second (Pusher: 10).
    #[serde(default = "default_client_events")]
    pub max_client_events_per_sec: u32,
    /// Members of one presence channel (Pusher: 100).
    #[serde(default = "default_presence_members")]
    pub max_presence_members: usize,
    /// Bytes of one member's `user_info` (Pusher: 1 KB).
    #[serde(default = "default_member_bytes")]
    pub max_presence_member_bytes: usize,
    /// Channels one socket may hold at once.
    #[serde(default = "default_subscriptions")]
    pub max_subscriptions_per_socket: usize,
    /// Tell subscribers of public and private channels how many sockets
    /// are subscribed (`pusher_internal:subscription_count`).
    #[serde(default)]
    pub subscription_count: bool,
    /// Where channel and member changes, client events and cache misses
    /// are POSTed (Pusher's webhooks).
    #[serde(default)]
    pub webhooks: Vec<WebhookSettings>,
}

/// One webhook target of an app.
#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct WebhookSettings {
    pub url: String,
    /// Events sent (Pusher's names); empty: all of them.
    #[serde(default)]
    pub event_types: Vec<String>,
}

/// Webhook event names, as Pusher calls them.
pub const WEBHOOK_EVENTS: [&str; 7] = [
    "channel_occupied",
    "channel_vacated",
    "member_added",
    "member_removed",
    "client_event",
    "cache_miss",
    "subscription_count",
];

impl PusherAppSettings {
    /// An app with Pusher's defaults for everything but its credentials.
    pub fn new(id: &str, key: &str, secret: &str) -> PusherAppSettings {
        PusherAppSettings {
            id: id.into(),
            key: key.into(),
            secret: secret.into(),
            enable_client_messages: false,
            max_event_bytes: default_pusher_event_bytes(),
            activity_timeout_secs: default_pusher_activity(),
            logout_issuer: None,
            enabled: true,
            allowed_origins: any_origin(),
            max_connections: None,
            max_client_events_per_sec: default_client_events(),
            max_presence_members: default_presence_members(),
            max_presence_member_bytes: default_member_bytes(),
            max_subscriptions_per_socket: default_subscriptions(),
            subscription_count: false,
            webhooks: Vec::new(),
        }
    }

    /// Whether a page of `origin` may open a socket to this app.
    pub fn allows_origin(&self, origin: &str) -> bool {
        self.allowed_origins
            .iter()
            .any(|o| o == "*" || o.eq_ignore_ascii_case(origin))
    }
}

fn default_pusher_event_bytes() -> usize {
    10 * 1024
}
fn default_pusher_activity() -> u64 {
    120
}
fn yes() -> bool {
    true
}
fn any_origin() -> Vec<String> {
    vec!["*".into()]
}
fn default_client_events() -> u32 {
    10
}
fn default_presence_members() -> usize {
    100
}
fn default_member_bytes() -> usize {
    1024
}
fn default_subscriptions() -> usize {
    100
}

impl Config {
    pub(super) fn validate_pusher(&self) -> Result<(), ConfigError> {
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
            range(
                &key("max_client_events_per_sec"),
                a.max_client_events_per_sec.into(),
                1,
                10_000,
            )?;
            range(
                &key("max_presence_members"),
                a.max_presence_members as u64,
                1,
                100_000,
            )?;
            range(
                &key("max_presence_member_bytes"),
                a.max_presence_member_bytes as u64,
                2,
                64 * 1024,
            )?;
            range(
                &key("max_subscriptions_per_socket"),
                a.max_subscriptions_per_socket as u64,
                1,
                10_000,
            )?;
            if let Some(n) = a.max_connections {
                range(&key("max_connections"), n, 1, 10_000_000)?;
            }
            for (j, o) in a.allowed_origins.iter().enumerate() {
                if o != "*"
                    && url::Url::parse(o)
                        .map(|u| u.origin().ascii_serialization() != *o)
                        .unwrap_or(true)
                {
                    return Err(invalid(
                        key(&format!("allowed_origins[{j}]")),
                        format!("{o:?} is not an origin (scheme://host[:port], no path) or \"*\""),
                    ));
                }
            }
            for (j, w) in a.webhooks.iter().enumerate() {
                let wkey = |k: &str| key(&format!("webhooks[{j}].{k}"));
                match url::Url::parse(&w.url) {
                    Ok(u) if matches!(u.scheme(), "http" | "https") && u.host().is_some() => {}
                    _ => return Err(invalid(wkey("url"), "must be an http(s) URL")),
                }
                if let Some(e) = w
                    .event_types
                    .iter()
                    .find(|e| !WEBHOOK_EVENTS.contains(&e.as_str()))
                {
                    return Err(invalid(
                        wkey("event_types"),
                        format!("unknown event {e:?}; known: {}", WEBHOOK_EVENTS.join(", ")),
                    ));
                }
            }
        }
        Ok(())
    }
}
