//! What must outlive a process, and what several nodes must share.
//!
//! The boundary, as Centrifugo draws it between a node and its broker:
//!
//! * [`Durable`] — records that must survive a restart: logout watermarks,
//!   identifiers used once (`jti`s), signing keys. `write` is never
//!   answered before the record is durable.
//! * [`Broker`] — what other nodes must hear at once: every logout. A
//!   node applies what it hears to its own sockets (`revocation`).
//! * [`graph::GraphStore`] — the Native-to-Web session graph, one record
//!   per user, changed only by compare-and-set.
//! * [`presence::Presence`] — Pusher channel occupancy and presence
//!   members, counted across nodes.
//!
//! Two implementations of each: in this process (`local`: memory, or the
//! embedded redb journal, `embedded`), and on Redis (`redis`: a single
//! server or a Redis Cluster), which several nodes share. The rest of the
//! hub holds trait objects and never knows which it has.
//!
//! Must not: talk to sockets or decide revocation rules; it stores, hands
//! over and answers.

pub mod audit;
pub mod embedded;
pub mod graph;
pub mod local;
pub mod presence;
pub mod redis;
mod watermarks;

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;

use serde::{Deserialize, Serialize};

pub use watermarks::Watermarks;

pub type BoxFuture<'a, T> = Pin<Box<dyn Future<Output = T> + Send + 'a>>;

/// The kinds of state that must outlive the process. Each has its own key
/// space (a redb table, a Redis key prefix) and its records expire by
/// themselves.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Kind {
    /// The latest logout of a user or session ([`StoredEvent`]).
    Watermark,
    /// An identifier acted on once (a logout token's or a client
    /// assertion's `jti`; key `{namespace}\x1f{id}`), kept until it expires.
    LogoutJti,
    /// One user's part of the Native-to-Web session graph (`sessions`),
    /// keyed by the user's tag, versioned by `store::graph`.
    SessionGraph,
    /// The keys the hub signs with (`auth::keys`), shared by every node.
    SigningKeys,
    /// A Pusher webhook request not yet delivered (one node's journal;
    /// key `{app}\x1f{url index}\x1f{sequence}`, data the body).
    PusherWebhook,
}

impl Kind {
    pub const ALL: [Kind; 5] = [
        Kind::Watermark,
        Kind::LogoutJti,
        Kind::SessionGraph,
        Kind::SigningKeys,
        Kind::PusherWebhook,
    ];

    /// The table / key-prefix name (stable: it is on disk and in Redis).
    pub fn name(self) -> &'static str {
        match self {
            Kind::Watermark => "watermarks",
            Kind::LogoutJti => "logout_jtis",
            Kind::SessionGraph => "user_graphs",
            Kind::SigningKeys => "signing_keys",
            Kind::PusherWebhook => "pusher_webhooks",
        }
    }
}

/// One durable record. A record never replaces one with a higher
/// `version` (for watermarks: the logout's time), and is gone after
/// `expires_at_ms`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Record {
    #[serde(skip, default = "default_kind")]
    pub kind: Kind,
    #[serde(skip)]
    pub key: String,
    pub version: i64,
    pub expires_at_ms: i64,
    /// The record's content, JSON.
    pub data: String,
}

fn default_kind() -> Kind {
    Kind::Watermark
}

/// A logout as it is stored and as it travels between nodes: the event,
/// with the issuer by name (issuer ids are positions in the config and may
/// differ between nodes and starts).
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, Eq)]
pub struct StoredEvent {
    pub iss: String,
    /// `"user"` or `"session"`.
    pub scope: String,
    /// The user's sub (user scope) or the session's sid (session scope).
    pub key: String,
    pub id: String,
    pub sub: Option<String>,
    pub sid: Option<String>,
    pub reason: String,
    pub at_ms: i64,
    /// The node that took the trigger waits for acknowledgements: other
    /// nodes report the acks of their sockets (`Broker::report_ack`).
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub report_acks: bool,
}

impl StoredEvent {
    /// The key of its watermark record.
    pub fn watermark_key(&self) -> String {
        watermark_key(self.scope == "session", &self.iss, &self.key)
    }
}

/// The key of a watermark record: scope, issuer (by name), sub or sid.
pub fn watermark_key(session: bool, iss: &str, key: &str) -> String {
    let tag = if session { 's' } else { 'u' };
    format!("{tag}\u{1f}{iss}\u{1f}{key}")
}

impl Record {
    /// A watermark record, kept until no token it could revoke is valid.
    pub fn watermark(e: &StoredEvent, ttl_ms: i64) -> Record {
        Record {
            kind: Kind::Watermark,
            key: e.watermark_key(),
            version: e.at_ms,
            expires_at_ms: e.at_ms + ttl_ms,
            // A struct of strings and integers always serializes.
            data: serde_json::to_string(e).unwrap_or_default(),
        }
    }

    /// The stored event of a watermark record.
    pub fn as_watermark(&self) -> Option<StoredEvent> {
        (self.kind == Kind::Watermark)
            .then(|| serde_json::from_str(&self.data).ok())
            .flatten()
    }

    /// An identifier used once, kept until `expires_at_ms`.
    pub fn used_once(namespace: &str, id: &str, expires_at_ms: i64) -> Record {
        Record {
            kind: Kind::LogoutJti,
            key: format!("{namespace}\u{1f}{id}"),
            version: 0,
            expires_at_ms,
            data: String::new(),
        }
    }
}

/// An error of a store's backend (redb, Redis), kept with its cause.
pub type Cause = Arc<dyn std::error::Error + Send + Sync>;

/// Why durable state could not be opened, read or written.
#[derive(Debug, Clone, thiserror::Error)]
pub enum StoreError {
    #[error("store {place}: {reason}")]
    Open {
        /// The file or URL.
        place: String,
        reason: String,
        #[source]
        cause: Option<Cause>,
    },
    #[error("{backend}: {cause}")]
    Backend {
        backend: &'static str,
        #[source]
        cause: Cause,
    },
    #[error("the store is closed (the hub is shutting down)")]
    Closed,
    /// A stored record cannot be read: its owner's operations fail closed.
    #[error("the store holds an unreadable record: {0}")]
    Corrupt(String),
    /// A change kept losing races against others to the same record.
    #[error("too many concurrent changes to the same record; retry")]
    Contention,
}

impl StoreError {
    pub fn backend(
        backend: &'static str,
        e: impl std::error::Error + Send + Sync + 'static,
    ) -> StoreError {
        StoreError::Backend {
            backend,
            cause: Arc::new(e),
        }
    }
}

/// Records that must survive a restart (and, on Redis, be seen by every node).
pub trait Durable: Send + Sync {
    /// Writes `record` unless one of a higher version is stored; returns
    /// once it is durable.
    fn write<'a>(&'a self, record: Record) -> BoxFuture<'a, Result<(), StoreError>>;

    /// Writes `record` unless its key exists: whether this call was first
    /// (across every node sharing the store).
    fn write_once<'a>(&'a self, record: Record) -> BoxFuture<'a, Result<bool, StoreError>>;

    /// The records of `keys` (of one kind), in order; `None` where none.
    fn read<'a>(
        &'a self,
        kind: Kind,
        keys: &'a [String],
    ) -> BoxFuture<'a, Result<Vec<Option<Record>>, StoreError>>;

    /// Whether every record was loaded into memory at start, so a miss in
    /// memory is a miss (the embedded store), or memory is a cache (Redis).
    fn loaded_at_start(&self) -> bool;

    /// Forgets expired records (the journal; Redis expires keys itself).
    fn expire<'a>(&'a self, now_ms: i64) -> BoxFuture<'a, Result<usize, StoreError>>;

    /// Finishes pending writes and releases what the store holds.
    fn close(&self) {}
}

/// What a node hears from the others.
#[derive(Debug, Clone)]
pub enum Heard {
    /// A logout carried out on another node: apply it to ours.
    Logout(StoredEvent),
    /// This node missed logouts the broker no longer holds: its sockets
    /// must reconnect (and meet the watermarks).
    Missed,
    /// A Pusher event, or a question, for this node.
    Node(NodeMessage),
}

/// What a node's Pusher sockets must hear from another node.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "t", rename_all = "snake_case")]
pub enum NodeMessage {
    /// A frame (its JSON text) for a channel's sockets but `except`.
    Event {
        app: String,
        channel: String,
        frame: String,
        except: Option<String>,
    },
    /// Close every socket signed in as `user` (4009).
    Terminate { app: String, user: String },
    /// The admin API asks every node for its sockets of these users
    /// (issuer name, subject); each answers under `query`.
    Connections {
        query: String,
        users: Vec<(String, String)>,
    },
}

/// What the other nodes reported of one logout.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Reported {
    /// Nodes that reported.
    pub nodes: usize,
    pub matched: usize,
    pub delivered: usize,
    pub acked: usize,
}

/// Tells every other node what must reach their sockets.
pub trait Broker: Send + Sync {
    /// Announces a logout to every other node; returns once the broker has it.
    fn publish<'a>(&'a self, event: &'a StoredEvent) -> BoxFuture<'a, Result<(), StoreError>>;

    /// Hands a Pusher event to every other node (best-effort, as Pusher's).
    fn publish_node<'a>(
        &'a self,
        message: &'a NodeMessage,
    ) -> BoxFuture<'a, Result<(), StoreError>>;

    /// Delivers what other nodes publish to `sink` until `stop`.
    fn follow(
        self: Arc<Self>,
        sink: Arc<dyn Fn(Heard) + Send + Sync>,
        stop: tokio_util::sync::CancellationToken,
    ) -> BoxFuture<'static, ()>;

    /// Connected and caught up.
    fn is_ready(&self) -> bool;

    /// This node's id among the others (random per process).
    fn node_id(&self) -> &str;

    /// How long the node has been cut off from the broker, if it is.
    fn cut_off_for(&self) -> Option<std::time::Duration>;

    /// Other nodes alive now (they keep a heartbeat).
    fn other_nodes<'a>(&'a self) -> BoxFuture<'a, Result<usize, StoreError>>;

    /// Reports what a logout heard from another node reached here.
    fn report_delivery<'a>(
        &'a self,
        event_id: &'a str,
        matched: usize,
        delivered: usize,
    ) -> BoxFuture<'a, Result<(), StoreError>>;

    /// Answers a question another node asked ([`NodeMessage::Connections`]).
    fn answer<'a>(&'a self, query: &'a str, json: String) -> BoxFuture<'a, Result<(), StoreError>>;

    /// The answers to a question so far (one per node).
    fn answers<'a>(&'a self, query: &'a str) -> BoxFuture<'a, Result<Vec<String>, StoreError>>;

    /// Reports one acknowledgement here of a logout another node took.
    fn report_ack<'a>(&'a self, event_id: &'a str) -> BoxFuture<'a, Result<(), StoreError>>;

    /// What the other nodes reported of a logout so far.
    fn reported<'a>(&'a self, event_id: &'a str) -> BoxFuture<'a, Result<Reported, StoreError>>;
}

/// Whether a logout addressed a user or one session.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Scope {
    User,
    Session,
}

impl Scope {
    pub fn as_str(self) -> &'static str {
        match self {
            Scope::User => "user",
            Scope::Session => "session",
        }
    }
}

/// A logout that happened: what the socket protocol pushes and what a
/// watermark remembers.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct LogoutEvent {
    pub id: String,
    pub scope: Scope,
    pub sub: Option<Arc<str>>,
    pub sid: Option<Arc<str>>,
    pub reason: String,
    /// Milliseconds since the epoch.
    pub at_ms: i64,
}

impl LogoutEvent {
    /// Tokens issued in this second or earlier are revoked by this event. A
    /// token issued in the same second as the logout counts as issued before
    /// it: JWT `iat` has one-second resolution, and when in doubt a logout
    /// wins. `leeway`: how far the issuer's clock may run ahead of ours (a
    /// token it minted before the logout may carry an `iat` that far after
    /// it), so tokens up to that many seconds later are revoked too.
    pub fn revokes_iat(&self, iat: i64, leeway: i64) -> bool {
        iat <= self.at_ms.div_euclid(1000) + leeway
    }
}
