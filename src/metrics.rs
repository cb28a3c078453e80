//! Prometheus metrics: what the hub counts and how `/metrics` renders it.
//!
//! Hot paths (fan-out, socket loop) hold plain `Counter`/`Gauge` handles, which
//! are single atomics; label families (a lock and a map) are used only where
//! something was refused, which is rare and never on the delivery path.
//!
//! Must not: label by user, session, token or address (unbounded cardinality
//! and personal data).

use prometheus_client::encoding::text::encode;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::Registry;

type Labels = Vec<(&'static str, &'static str)>;

pub struct Metrics {
    registry: Registry,
    /// Authenticated sockets currently registered for pushes.
    pub connections: Gauge,
    /// Sockets that completed the WebSocket handshake.
    pub sockets_opened: Counter,
    /// Logout events accepted, by source (user, api_key, watermark, ...).
    pub logout_events: Family<Labels, Counter>,
    /// Logout messages written to (or queued for) a socket.
    pub messages_delivered: Counter,
    /// Logout messages the client acknowledged.
    pub messages_acked: Counter,
    /// Sockets cut off because they did not read (outbound buffer full).
    pub slow_consumers: Counter,
    pub relogins: Counter,
    pub store_errors: Counter,
    pub store_commit_latency: Histogram,
    /// Trigger received → last socket written, in seconds.
    pub fanout_latency: Histogram,
    /// Refused credentials, by where and why.
    pub auth_failures: Family<Labels, Counter>,
    /// HTTP requests refused, by endpoint and error code.
    pub http_rejections: Family<Labels, Counter>,
    /// WebSocket upgrades refused before the handshake, by reason.
    pub upgrades_rejected: Family<Labels, Counter>,
    /// Sockets closed by the hub, by close code.
    pub ws_closed: Family<Labels, Counter>,
    /// Session transfer tokens minted.
    pub transfer_tokens_minted: Counter,
    /// `/authorize` answers, by outcome (`new_session`, `same_user`,
    /// `existing_session`, `login_required`).
    pub authorize_outcomes: Family<Labels, Counter>,
    /// Back-channel logout tokens the hub sent, by final outcome
    /// (`delivered`, `refused`, `failed`, `dropped`, `abandoned`).
    pub backchannel_sent: Family<Labels, Counter>,
    /// Back-channel logout attempts that failed and were retried.
    pub backchannel_retries: Counter,
    /// Socket polls that panicked (a bug; the socket was closed 1011).
    pub socket_panics: Counter,
    /// Audit entries the store could not record.
    pub audit_errors: Counter,
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

impl Metrics {
    pub fn new() -> Metrics {
        let mut registry = Registry::with_prefix("slo_hub");
        let connections = Gauge::default();
        let sockets_opened = Counter::default();
        let logout_events = Family::<Labels, Counter>::default();
        let messages_delivered = Counter::default();
        let messages_acked = Counter::default();
        let slow_consumers = Counter::default();
        let relogins = Counter::default();
        let store_errors = Counter::default();
        let store_commit_latency = Histogram::new([
            0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.5,
        ]);
        // 10 µs .. ~5 s.
        let fanout_latency = Histogram::new(exponential_buckets(0.000_01, 2.0, 20));
        let auth_failures = Family::<Labels, Counter>::default();
        let http_rejections = Family::<Labels, Counter>::default();
        let upgrades_rejected = Family::<Labels, Counter>::default();
        let ws_closed = Family::<Labels, Counter>::default();
        let transfer_tokens_minted = Counter::default();
        let authorize_outcomes = Family::<Labels, Counter>::default();
        let backchannel_sent = Family::<Labels, Counter>::default();
        let backchannel_retries = Counter::default();
        let socket_panics = Counter::default();
        let audit_errors = Counter::default();
        registry.register(
            "audit_errors",
            "Audit entries the store could not record",
            audit_errors.clone(),
        );
        registry.register(
            "socket_panics",
            "Socket polls that panicked (a bug): the socket was closed with 1011",
            socket_panics.clone(),
        );
        registry.register(
            "backchannel_notifications",
            "Back-channel logout tokens sent to client backends, by final outcome",
            backchannel_sent.clone(),
        );
        registry.register(
            "backchannel_retries",
            "Back-channel logout attempts that failed and were retried",
            backchannel_retries.clone(),
        );
        registry.register(
            "transfer_tokens_minted",
            "Session transfer tokens minted",
            transfer_tokens_minted.clone(),
        );
        registry.register(
            "authorize_outcomes",
            "Answers of /authorize by outcome",
            authorize_outcomes.clone(),
        );
        registry.register(
            "connections",
            "Authenticated sockets registered for logout pushes",
            connections.clone(),
        );
        registry.register(
            "sockets_opened",
            "WebSocket handshakes completed",
            sockets_opened.clone(),
        );
        registry.register(
            "logout_events",
            "Logout events accepted, by source",
            logout_events.clone(),
        );
        registry.register(
            "messages_delivered",
            "Logout messages written to sockets",
            messages_delivered.clone(),
        );
        registry.register(
            "messages_acked",
            "Logout messages acknowledged by clients",
            messages_acked.clone(),
        );
        registry.register(
            "slow_consumers",
            "Sockets disconnected because their outbound buffer was full",
            slow_consumers.clone(),
        );
        registry.register(
            "store_errors",
            "Logouts the durable store could not record (answered 503)",
            store_errors.clone(),
        );
        registry.register(
            "store_commit_seconds",
            "Time from handing a logout to the durable store to its fsynced commit",
            store_commit_latency.clone(),
        );
        registry.register(
            "relogins",
            "Logged-out sockets that logged in again on the same connection",
            relogins.clone(),
        );
        registry.register(
            "fanout_latency_seconds",
            "Time from receiving a logout to writing it to the last matching socket",
            fanout_latency.clone(),
        );
        registry.register(
            "auth_failures",
            "Refused credentials, by channel and reason",
            auth_failures.clone(),
        );
        registry.register(
            "http_rejections",
            "HTTP requests refused, by endpoint and error code",
            http_rejections.clone(),
        );
        registry.register(
            "upgrades_rejected",
            "WebSocket upgrades refused before the handshake, by reason",
            upgrades_rejected.clone(),
        );
        registry.register(
            "ws_closed",
            "Sockets closed by the hub, by close code",
            ws_closed.clone(),
        );
        Metrics {
            registry,
            connections,
            sockets_opened,
            logout_events,
            messages_delivered,
            messages_acked,
            slow_consumers,
            relogins,
            store_errors,
            store_commit_latency,
            fanout_latency,
            auth_failures,
            http_rejections,
            upgrades_rejected,
            ws_closed,
            transfer_tokens_minted,
            authorize_outcomes,
            backchannel_sent,
            backchannel_retries,
            socket_panics,
            audit_errors,
        }
    }

    pub fn auth_failure(&self, channel: &'static str, reason: &'static str) {
        self.auth_failures
            .get_or_create(&vec![("channel", channel), ("reason", reason)])
            .inc();
    }

    pub fn http_rejection(&self, endpoint: &'static str, code: &'static str) {
        self.http_rejections
            .get_or_create(&vec![("endpoint", endpoint), ("error", code)])
            .inc();
    }

    pub fn upgrade_rejected(&self, reason: &'static str) {
        self.upgrades_rejected
            .get_or_create(&vec![("reason", reason)])
            .inc();
    }

    pub fn logout_event(&self, source: &'static str) {
        self.logout_events
            .get_or_create(&vec![("source", source)])
            .inc();
    }

    pub fn authorize_outcome(&self, outcome: &'static str) {
        self.authorize_outcomes
            .get_or_create(&vec![("outcome", outcome)])
            .inc();
    }

    pub fn backchannel_sent(&self, outcome: &'static str) {
        self.backchannel_sent
            .get_or_create(&vec![("outcome", outcome)])
            .inc();
    }

    pub fn ws_close(&self, code: u16) {
        self.ws_closed
            .get_or_create(&vec![("code", close_label(code))])
            .inc();
    }

    /// Prometheus/OpenMetrics text.
    pub fn render(&self) -> String {
        let mut out = String::with_capacity(8 * 1024);
        // Writing into a String cannot fail.
        let _ = encode(&mut out, &self.registry);
        out
    }
}

/// Close codes as static label values (the set is closed, see `error::CloseCode`).
fn close_label(code: u16) -> &'static str {
    match code {
        1000 => "1000",
        1001 => "1001",
        1002 => "1002",
        1003 => "1003",
        1007 => "1007",
        1008 => "1008",
        1009 => "1009",
        1011 => "1011",
        1012 => "1012",
        1013 => "1013",
        4000 => "4000",
        4400 => "4400",
        4401 => "4401",
        4403 => "4403",
        4408 => "4408",
        4409 => "4409",
        4429 => "4429",
        _ => "other",
    }
}
