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
    /// Pusher webhook requests, by outcome (retries counted once each).
    pub webhooks: Family<Labels, Counter>,
    /// Socket polls that panicked (a bug; the socket was closed 1011).
    pub socket_panics: Counter,
    /// Audit entries the store could not record.
    pub audit_errors: Counter,
    /// 1 when `/readyz` would answer 200 (set at each scrape).
    pub ready: Gauge,
    /// Several nodes: 1 while the broker (Redis) is connected.
    pub cluster_connected: Gauge,
    /// What the console plots, between two of its samples.
    pub console: ConsoleCounts,
}

/// Latencies kept between two console samples at most (a second's worth at
/// any realistic rate; beyond, the sample is of the first ones).
const RECENT_FANOUT: usize = 8192;

/// Counts the console's sampler reads (`console`).
#[derive(Default)]
pub struct ConsoleCounts {
    /// Logouts so far, by source.
    pub logouts: std::sync::Mutex<std::collections::BTreeMap<&'static str, u64>>,
    /// Fan-out latencies (s) since the last sample.
    pub recent_fanout: std::sync::Mutex<Vec<f32>>,
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
        let webhooks = Family::<Labels, Counter>::default();
        registry.register(
            "pusher_webhooks",
            "Pusher webhook requests by outcome: delivered, retried, refused, failed (gave up), dropped (queue full)",
            webhooks.clone(),
        );
        let socket_panics = Counter::default();
        let audit_errors = Counter::default();
        let ready = Gauge::default();
        let cluster_connected = Gauge::default();
        registry.register("ready", "1 when /readyz answers 200", ready.clone());
        registry.register(
            "cluster_connected",
            "1 while this node reaches Redis (several nodes only)",
            cluster_connected.clone(),
        );
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
        // Known series exist from the start, at 0, so `increase()` sees
        // their first event and dashboards show them before it.
        for source in [
            "user",
            "api_key",
            "backchannel",
            "caep",
            "revocation",
            "frontchannel",
        ] {
            drop(logout_events.get_or_create(&vec![("source", source)]));
        }
        for outcome in ["delivered", "refused", "failed"] {
            drop(backchannel_sent.get_or_create(&vec![("outcome", outcome)]));
        }
        for outcome in ["delivered", "retried", "refused", "failed", "dropped"] {
            drop(webhooks.get_or_create(&vec![("outcome", outcome)]));
        }
        for reason in [
            "connections_total",
            "connections_per_ip",
            "connect_rate_per_ip",
        ] {
            drop(upgrades_rejected.get_or_create(&vec![("reason", reason)]));
        }
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
            webhooks,
            socket_panics,
            audit_errors,
            ready,
            cluster_connected,
            console: ConsoleCounts::default(),
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
        *self
            .console
            .logouts
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .entry(source)
            .or_default() += 1;
    }

    /// A trigger's fan-out latency (seconds), for Prometheus and the console.
    pub fn fanout(&self, secs: f64) {
        self.fanout_latency.observe(secs);
        let mut recent = self
            .console
            .recent_fanout
            .lock()
            .unwrap_or_else(|e| e.into_inner());
        if recent.len() < RECENT_FANOUT {
            recent.push(secs as f32);
        }
    }

    pub fn authorize_outcome(&self, outcome: &'static str) {
        self.authorize_outcomes
            .get_or_create(&vec![("outcome", outcome)])
            .inc();
    }

    pub fn webhook(&self, outcome: &'static str) {
        self.webhooks
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
        // The process's own figures, under Prometheus' usual names, before
        // the closing `# EOF`.
        if let Some(eof) = out.rfind("# EOF") {
            out.insert_str(eof, &process_metrics());
        }
        out
    }
}

/// `process_*` metrics from /proc (Linux): resident memory, open and
/// maximum file descriptors, CPU seconds, start time. Empty elsewhere.
fn process_metrics() -> String {
    use std::fmt::Write as _;
    let mut out = String::new();
    let page = 4096.0;
    let ticks = 100.0;
    let stat = std::fs::read_to_string("/proc/self/stat").unwrap_or_default();
    // Fields after the command name (which may hold spaces), from field 3.
    let fields: Vec<&str> = stat
        .rsplit_once(')')
        .map(|(_, rest)| rest.split_whitespace().collect())
        .unwrap_or_default();
    let field = |n: usize| fields.get(n - 3).and_then(|v| v.parse::<f64>().ok());
    let mut gauge = |name: &str, help: &str, kind: &str, v: Option<f64>| {
        if let Some(v) = v {
            let _ = write!(out, "# TYPE {name} {kind}\n# HELP {name} {help}\n");
            let suffix = if kind == "counter" { "_total" } else { "" };
            let _ = writeln!(out, "{name}{suffix} {v}");
        }
    };
    let cpu = field(14).zip(field(15)).map(|(u, s)| (u + s) / ticks);
    gauge(
        "process_cpu_seconds",
        "User and system CPU time spent.",
        "counter",
        cpu,
    );
    let rss = std::fs::read_to_string("/proc/self/statm")
        .ok()
        .and_then(|s| s.split_whitespace().nth(1)?.parse::<f64>().ok())
        .map(|p| p * page);
    gauge(
        "process_resident_memory_bytes",
        "Resident memory size.",
        "gauge",
        rss,
    );
    let fds = std::fs::read_dir("/proc/self/fd")
        .ok()
        .map(|d| d.count() as f64);
    gauge("process_open_fds", "Open file descriptors.", "gauge", fds);
    let max = rustix::process::getrlimit(rustix::process::Resource::Nofile)
        .current
        .map(|v| v as f64);
    gauge(
        "process_max_fds",
        "Maximum open file descriptors.",
        "gauge",
        max,
    );
    let boot = std::fs::read_to_string("/proc/stat").ok().and_then(|s| {
        s.lines()
            .find_map(|l| l.strip_prefix("btime "))
            .and_then(|v| v.trim().parse::<f64>().ok())
    });
    let start = boot.zip(field(22)).map(|(b, t)| b + t / ticks);
    gauge(
        "process_start_time_seconds",
        "Start time since the epoch.",
        "gauge",
        start,
    );
    out
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
