//! Revocation state that must outlive a socket: logout watermarks.
//!
//! A watermark is the latest logout of a user or a session. Reads happen on
//! every connect and must never wait, so the complete set is always held in
//! memory ([`Watermarks`]); entries expire after the longest token lifetime
//! the hub accepts, since no token older than that can still be valid.
//! `embedded` makes the set durable (a redb journal in the data directory,
//! loaded at start); with `store = "memory"` nothing survives a restart.
//!
//! Must not: talk to sockets or decide revocation rules; it stores and answers.

pub mod embedded;
pub mod graph;

use std::sync::Arc;

use dashmap::DashMap;

use crate::registry::{SessionKey, Target, UserKey};

/// The kinds of state that must outlive the process. Each has its own key
/// space (a redb table, a Redis key prefix) and its records expire by
/// themselves.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Kind {
    /// The latest logout of a user or session ([`embedded::StoredEvent`]).
    Watermark,
    /// A back-channel logout token's `jti` already acted on (key
    /// `{iss}\x1f{jti}`), kept until the token expires.
    LogoutJti,
    /// One user's part of the Native-to-Web session graph (`sessions`),
    /// keyed by the user's tag, versioned by `store::graph`.
    SessionGraph,
}

impl Kind {
    pub const ALL: [Kind; 3] = [Kind::Watermark, Kind::LogoutJti, Kind::SessionGraph];

    /// The table / key-prefix name (stable: it is on disk and in Redis).
    pub fn name(self) -> &'static str {
        match self {
            Kind::Watermark => "watermarks",
            Kind::LogoutJti => "logout_jtis",
            Kind::SessionGraph => "user_graphs",
        }
    }

    pub fn from_name(name: &str) -> Option<Kind> {
        Kind::ALL.into_iter().find(|k| k.name() == name)
    }
}

/// One durable record. A record never replaces one with a higher
/// `version` (for watermarks: the logout's time), and is gone after
/// `expires_at_ms`.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
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

impl Record {
    /// A watermark record, kept until no token it could revoke is valid.
    pub fn watermark(e: &embedded::StoredEvent, ttl_ms: i64) -> Record {
        let tag = if e.scope == "session" { 's' } else { 'u' };
        Record {
            kind: Kind::Watermark,
            key: format!("{tag}\u{1f}{}\u{1f}{}", e.iss, e.key),
            version: e.at_ms,
            expires_at_ms: e.at_ms + ttl_ms,
            // A struct of strings and integers always serializes.
            data: serde_json::to_string(e).unwrap_or_default(),
        }
    }

    /// The stored event of a watermark record.
    pub fn as_watermark(&self) -> Option<embedded::StoredEvent> {
        (self.kind == Kind::Watermark)
            .then(|| serde_json::from_str(&self.data).ok())
            .flatten()
    }
}

impl Record {
    /// A used logout-token `jti`, kept until `expires_at_ms`.
    pub fn logout_jti(iss: &str, jti: &str, expires_at_ms: i64) -> Record {
        Record {
            kind: Kind::LogoutJti,
            key: format!("{iss}\u{1f}{jti}"),
            version: 0,
            expires_at_ms,
            data: String::new(),
        }
    }
}

/// Why durable state could not be opened or written.
#[derive(Debug, Clone, thiserror::Error)]
pub enum StoreError {
    #[error("store {path}: {reason}")]
    Open {
        path: std::path::PathBuf,
        reason: String,
    },
    #[error("the store could not record the logout: {0}")]
    Write(String),
    #[error("the store is closed (the hub is shutting down)")]
    Closed,
    /// A stored record cannot be read: its owner's operations fail closed.
    #[error("the store holds an unreadable record: {0}")]
    Corrupt(String),
    /// A change kept losing races against others to the same record.
    #[error("too many concurrent changes to the same record; retry")]
    Contention,
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

/// The in-memory set of watermarks.
#[derive(Default)]
pub struct Watermarks {
    users: DashMap<UserKey, Arc<LogoutEvent>>,
    sessions: DashMap<SessionKey, Arc<LogoutEvent>>,
}

impl Watermarks {
    /// Records a logout; an older event never replaces a newer one.
    pub fn record(&self, target: &Target, event: Arc<LogoutEvent>) {
        match target {
            Target::User(k) => raise(&self.users, k.clone(), event),
            Target::Session(k) => raise(&self.sessions, k.clone(), event),
        }
    }

    pub fn user(&self, key: &UserKey) -> Option<Arc<LogoutEvent>> {
        self.users.get(key).map(|e| e.value().clone())
    }

    pub fn session(&self, key: &SessionKey) -> Option<Arc<LogoutEvent>> {
        self.sessions.get(key).map(|e| e.value().clone())
    }

    /// Drops watermarks older than `ttl_ms`.
    pub fn expire(&self, now_ms: i64, ttl_ms: i64) -> usize {
        let before = self.users.len() + self.sessions.len();
        self.users.retain(|_, e| now_ms - e.at_ms < ttl_ms);
        self.sessions.retain(|_, e| now_ms - e.at_ms < ttl_ms);
        before - (self.users.len() + self.sessions.len())
    }

    pub fn len(&self) -> usize {
        self.users.len() + self.sessions.len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

fn raise<K: std::hash::Hash + Eq>(
    map: &DashMap<K, Arc<LogoutEvent>>,
    key: K,
    event: Arc<LogoutEvent>,
) {
    map.entry(key)
        .and_modify(|cur| {
            if event.at_ms >= cur.at_ms {
                *cur = event.clone();
            }
        })
        .or_insert_with(|| event.clone());
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::auth::IssuerId;

    fn ev(at_ms: i64) -> Arc<LogoutEvent> {
        Arc::new(LogoutEvent {
            id: format!("e{at_ms}"),
            scope: Scope::User,
            sub: Some("alice".into()),
            sid: None,
            reason: "test".into(),
            at_ms,
        })
    }

    #[test]
    fn same_second_counts_as_before() {
        let e = ev(10_500);
        assert!(e.revokes_iat(9, 0));
        assert!(e.revokes_iat(10, 0));
        assert!(!e.revokes_iat(11, 0));
        // An issuer whose clock may run 5 s ahead.
        assert!(e.revokes_iat(15, 5));
        assert!(!e.revokes_iat(16, 5));
    }

    #[test]
    fn watermarks_only_move_forward_and_expire() {
        let w = Watermarks::default();
        let key = UserKey {
            iss: IssuerId(0),
            sub: "alice".into(),
        };
        let t = Target::User(key.clone());
        w.record(&t, ev(2000));
        w.record(&t, ev(1000));
        assert_eq!(w.user(&key).unwrap().at_ms, 2000);
        assert_eq!(w.expire(2500, 1000), 0);
        assert_eq!(w.expire(3500, 1000), 1);
        assert!(w.is_empty());
    }
}
