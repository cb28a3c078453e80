//! The audit trail: every logout (whatever its source), every revocation
//! and every session transfer token minted and redeemed, with who asked,
//! what it aimed at and what it reached — recorded in the store before the
//! caller hears back, kept for `audit.retention_days` (at most
//! `audit.max_entries`), and logged as one structured line each.
//!
//! What an entry holds is chosen so that it can be shown to an operator:
//! names (an API key's, a client's, an issuer), subjects and session ids,
//! reasons and counts — never a token, a secret or a key.
//!
//! Must not: decide anything; it records what the logout service and the
//! endpoints did, and answers queries.

use std::sync::Arc;

use serde::{Deserialize, Serialize};
use serde_json::Value;

use crate::metrics::Metrics;
use crate::store::StoreError;
use crate::store::audit::AuditLog;
use crate::util;

/// Who asked.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum Caller {
    /// A backend (or an admin in the console) with an API key: its name.
    ApiKey { name: String },
    /// A user with their own token.
    User {
        iss: String,
        sub: String,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        client: Option<String>,
    },
    /// An identity provider (a back-channel logout token, a security event).
    Issuer { iss: String },
    /// An OAuth client of the hub (its own token endpoint, revocation).
    Client { client_id: String },
    /// A Pusher app's backend (its signed HTTP API).
    PusherApp { app: String },
    /// The hub itself (an expiry, a cascade).
    Hub,
}

impl Caller {
    /// One short label for logs and the console.
    pub fn label(&self) -> String {
        match self {
            Caller::ApiKey { name } => format!("api_key:{name}"),
            Caller::User { sub, client, .. } => match client {
                Some(c) => format!("user:{sub} via {c}"),
                None => format!("user:{sub}"),
            },
            Caller::Issuer { iss } => format!("issuer:{iss}"),
            Caller::Client { client_id } => format!("client:{client_id}"),
            Caller::PusherApp { app } => format!("pusher_app:{app}"),
            Caller::Hub => "hub".into(),
        }
    }
}

/// What an entry is about.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Action {
    Logout,
    Revocation,
    TransferTokenMinted,
    TransferTokenRedeemed,
}

impl Action {
    pub fn as_str(self) -> &'static str {
        match self {
            Action::Logout => "logout",
            Action::Revocation => "revocation",
            Action::TransferTokenMinted => "transfer_token_minted",
            Action::TransferTokenRedeemed => "transfer_token_redeemed",
        }
    }
}

/// Whom it aimed at.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Subject {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub iss: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sub: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sid: Option<String>,
}

/// One audited act.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Entry {
    /// Set when read back (the store assigns it).
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub id: String,
    pub at_ms: i64,
    pub action: Action,
    /// How it came: `user`, `api_key`, `backchannel`, `caep`, `revocation`,
    /// `session_expired`, `pusher_terminate`, `frontchannel`, `oauth`, ...
    pub source: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub event_id: Option<String>,
    pub caller: Caller,
    pub target: Subject,
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub reason: String,
    /// What it reached: sockets matched, delivered, acked; what a cascade
    /// or revocation ended.
    #[serde(default)]
    pub outcome: Value,
}

impl Entry {
    pub fn new(action: Action, source: &str, caller: Caller, target: Subject) -> Entry {
        Entry {
            id: String::new(),
            at_ms: util::now_ms(),
            action,
            source: source.into(),
            event_id: None,
            caller,
            target,
            reason: String::new(),
            outcome: Value::Null,
        }
    }
}

/// Which entries a query wants (all filters optional).
#[derive(Clone, Debug, Default, Deserialize)]
pub struct Query {
    pub sub: Option<String>,
    pub sid: Option<String>,
    pub source: Option<String>,
    pub action: Option<String>,
    /// Milliseconds since the epoch, inclusive.
    pub since: Option<i64>,
    pub until: Option<i64>,
    pub limit: Option<usize>,
    /// Where the previous page ended.
    pub cursor: Option<String>,
}

impl Query {
    fn wants(&self, e: &Entry) -> bool {
        let eq = |want: &Option<String>, have: Option<&str>| {
            want.as_deref().is_none_or(|w| have == Some(w))
        };
        eq(&self.sub, e.target.sub.as_deref())
            && eq(&self.sid, e.target.sid.as_deref())
            && eq(&self.source, Some(&e.source))
            && eq(&self.action, Some(e.action.as_str()))
            && self.until.is_none_or(|u| e.at_ms <= u)
    }
}

/// One page of a query, newest first.
#[derive(Debug, Serialize)]
pub struct Page {
    pub entries: Vec<Entry>,
    /// Pass as `cursor` for the next (older) page; absent at the end.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub next_cursor: Option<String>,
}

/// Entries a query examines at most per page (filters that match rarely
/// answer a short page with a cursor rather than scan the whole trail).
const MAX_SCAN: usize = 20_000;
pub const MAX_LIMIT: usize = 1_000;

pub struct Audit {
    log: Arc<dyn AuditLog>,
    metrics: Arc<Metrics>,
    retention_ms: i64,
    max_entries: usize,
}

impl Audit {
    pub fn new(
        log: Arc<dyn AuditLog>,
        metrics: Arc<Metrics>,
        retention_days: u64,
        max_entries: usize,
    ) -> Audit {
        Audit {
            log,
            metrics,
            retention_ms: (retention_days as i64).saturating_mul(86_400_000),
            max_entries,
        }
    }

    /// Records an entry durably and logs it. A store failure is logged and
    /// counted; it does not undo what was done.
    pub async fn record(&self, e: Entry) {
        // Sized for a typical entry, so serializing does not regrow the buffer.
        let mut buf = Vec::with_capacity(512);
        let json = match serde_json::to_writer(&mut buf, &e) {
            // serde_json writes UTF-8 only.
            Ok(()) => String::from_utf8(buf).unwrap_or_default(),
            Err(_) => String::new(),
        };
        let id = match self.log.append(e.at_ms, json).await {
            Ok(id) => id,
            Err(err) => {
                self.metrics.audit_errors.inc();
                tracing::error!(error = %err, action = e.action.as_str(), source = %e.source, "audit: an entry was not recorded");
                String::new()
            }
        };
        tracing::info!(
            target: "slo_hub::audit",
            audit_id = %id,
            action = e.action.as_str(),
            source = %e.source,
            event_id = e.event_id.as_deref().unwrap_or(""),
            caller = %e.caller.label(),
            iss = e.target.iss.as_deref().unwrap_or(""),
            sub = e.target.sub.as_deref().unwrap_or(""),
            sid = e.target.sid.as_deref().unwrap_or(""),
            reason = %e.reason,
            outcome = %e.outcome,
            "audit"
        );
    }

    /// A page of entries matching `q`, newest first.
    pub async fn page(&self, q: &Query) -> Result<Page, StoreError> {
        let limit = q.limit.unwrap_or(100).clamp(1, MAX_LIMIT);
        let since = q.since.unwrap_or(0);
        let mut cursor = q.cursor.clone();
        let mut entries = Vec::new();
        let mut scanned = 0;
        loop {
            let batch = self
                .log
                .before(cursor.as_deref(), since, (limit * 4).max(100))
                .await?;
            let full = batch.len() >= (limit * 4).max(100);
            for (id, json) in batch {
                scanned += 1;
                cursor = Some(id.clone());
                let Ok(mut e) = serde_json::from_str::<Entry>(&json) else {
                    continue;
                };
                e.id = id;
                if q.wants(&e) {
                    entries.push(e);
                    if entries.len() == limit {
                        return Ok(Page {
                            entries,
                            next_cursor: cursor,
                        });
                    }
                }
            }
            if !full {
                return Ok(Page {
                    entries,
                    next_cursor: None,
                });
            }
            if scanned >= MAX_SCAN {
                return Ok(Page {
                    entries,
                    next_cursor: cursor,
                });
            }
        }
    }

    /// Entries newer than `after`, oldest first (the console's live feed).
    pub async fn newer(&self, after: Option<&str>, limit: usize) -> Result<Vec<Entry>, StoreError> {
        let rows = self.log.after(after, limit).await?;
        Ok(rows
            .into_iter()
            .filter_map(|(id, json)| {
                let mut e = serde_json::from_str::<Entry>(&json).ok()?;
                e.id = id;
                Some(e)
            })
            .collect())
    }

    /// The newest entry's id (where a live feed starts).
    pub async fn newest_id(&self) -> Result<Option<String>, StoreError> {
        Ok(self.log.before(None, 0, 1).await?.pop().map(|(id, _)| id))
    }

    /// Forgets entries past the retention, in bounded batches.
    pub async fn trim(&self) -> Result<usize, StoreError> {
        let cutoff = util::now_ms().saturating_sub(self.retention_ms);
        let mut total = 0;
        loop {
            let n = self.log.trim(cutoff, self.max_entries).await?;
            total += n;
            if n < crate::store::audit::TRIM_BATCH {
                return Ok(total);
            }
            // Let triggers' commits in between batches.
            tokio::task::yield_now().await;
        }
    }
}
