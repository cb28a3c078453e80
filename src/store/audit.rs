//! Where the audit trail is kept: entries (JSON text) under ids that sort
//! by time, appended durably, read newest first or after a given id, and
//! trimmed by age and count. In memory for `store = "memory"`, in the
//! embedded journal by default, in a Redis stream on several nodes (where
//! the ids are the stream's).
//!
//! Must not: interpret entries (`audit` does).

use std::collections::BTreeMap;
use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};

use std::sync::Arc;

use super::embedded::Journal;
use super::{BoxFuture, StoreError};

/// One stored entry: its id (ordered by time) and its JSON.
pub type Stored = (String, String);

pub trait AuditLog: Send + Sync {
    /// Appends an entry written at `at_ms`; returns its id once durable.
    fn append<'a>(&'a self, at_ms: i64, json: String) -> BoxFuture<'a, Result<String, StoreError>>;

    /// Up to `limit` entries older than `before` (all if `None`) and not
    /// older than `since_ms`, newest first.
    fn before<'a>(
        &'a self,
        before: Option<&'a str>,
        since_ms: i64,
        limit: usize,
    ) -> BoxFuture<'a, Result<Vec<Stored>, StoreError>>;

    /// Up to `limit` entries newer than `after` (from the start if `None`),
    /// oldest first.
    fn after<'a>(
        &'a self,
        after: Option<&'a str>,
        limit: usize,
    ) -> BoxFuture<'a, Result<Vec<Stored>, StoreError>>;

    /// Removes entries older than `cutoff_ms` and beyond the newest `keep`;
    /// returns how many (a bounded batch per call, so it never stalls).
    fn trim<'a>(&'a self, cutoff_ms: i64, keep: usize) -> BoxFuture<'a, Result<usize, StoreError>>;
}

/// Entries removed per trim call at most.
pub const TRIM_BATCH: usize = 10_000;

/// A local id: milliseconds and a sequence number, zero-padded so text
/// order is time order.
pub fn local_id(at_ms: i64, seq: u64) -> String {
    format!("{:013}-{:010}", at_ms.max(0), seq % 10_000_000_000)
}

/// The milliseconds of a local id.
pub fn id_ms(id: &str) -> i64 {
    id.split('-')
        .next()
        .and_then(|m| m.parse().ok())
        .unwrap_or(0)
}

/// The parts of a local id: milliseconds and sequence.
fn id_parts(id: &str) -> Option<(i64, u64)> {
    let (ms, seq) = id.split_once('-')?;
    Some((ms.parse().ok()?, seq.parse().ok()?))
}

/// The audit trail of `store = "memory"`: gone with the process. Keyed by
/// (ms, sequence) as integers: cheaper to order than their text.
#[derive(Default)]
pub struct MemoryAudit {
    entries: Mutex<BTreeMap<(i64, u64), String>>,
    seq: AtomicU64,
}

impl MemoryAudit {
    fn stored(((ms, seq), json): (&(i64, u64), &String)) -> Stored {
        (local_id(*ms, *seq), json.clone())
    }
}

impl AuditLog for MemoryAudit {
    fn append<'a>(&'a self, at_ms: i64, json: String) -> BoxFuture<'a, Result<String, StoreError>> {
        let key = (
            at_ms.max(0),
            self.seq.fetch_add(1, Ordering::Relaxed) % 10_000_000_000,
        );
        self.entries
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .insert(key, json);
        Box::pin(async move { Ok(local_id(key.0, key.1)) })
    }

    fn before<'a>(
        &'a self,
        before: Option<&'a str>,
        since_ms: i64,
        limit: usize,
    ) -> BoxFuture<'a, Result<Vec<Stored>, StoreError>> {
        let entries = self.entries.lock().unwrap_or_else(|e| e.into_inner());
        let floor = (since_ms.max(0), 0);
        let out: Vec<Stored> = match before.and_then(id_parts) {
            Some(b) if b <= floor => Vec::new(),
            Some(b) => entries
                .range(floor..b)
                .rev()
                .take(limit)
                .map(Self::stored)
                .collect(),
            None => entries
                .range(floor..)
                .rev()
                .take(limit)
                .map(Self::stored)
                .collect(),
        };
        Box::pin(async move { Ok(out) })
    }

    fn after<'a>(
        &'a self,
        after: Option<&'a str>,
        limit: usize,
    ) -> BoxFuture<'a, Result<Vec<Stored>, StoreError>> {
        use std::ops::Bound;
        let entries = self.entries.lock().unwrap_or_else(|e| e.into_inner());
        let from = match after.and_then(id_parts) {
            Some(a) => Bound::Excluded(a),
            None => Bound::Unbounded,
        };
        let out: Vec<Stored> = entries
            .range((from, Bound::Unbounded))
            .take(limit)
            .map(Self::stored)
            .collect();
        Box::pin(async move { Ok(out) })
    }

    fn trim<'a>(&'a self, cutoff_ms: i64, keep: usize) -> BoxFuture<'a, Result<usize, StoreError>> {
        let mut entries = self.entries.lock().unwrap_or_else(|e| e.into_inner());
        let mut removed = 0;
        while removed < TRIM_BATCH {
            let Some((&first, _)) = entries.first_key_value() else {
                break;
            };
            if first.0 >= cutoff_ms && entries.len() <= keep {
                break;
            }
            entries.remove(&first);
            removed += 1;
        }
        Box::pin(async move { Ok(removed) })
    }
}

/// The audit trail in the embedded journal: appended in the same group
/// commits as everything else, read beside the writer.
pub struct EmbeddedAudit {
    journal: Arc<Journal>,
    seq: AtomicU64,
}

impl EmbeddedAudit {
    pub fn new(journal: Arc<Journal>) -> EmbeddedAudit {
        // Ids of a new process must not repeat an earlier one's in the same ms.
        let seed = u64::from(u32::from_le_bytes(crate::util::random_bytes::<4>()));
        EmbeddedAudit {
            journal,
            seq: AtomicU64::new(seed),
        }
    }
}

impl AuditLog for EmbeddedAudit {
    fn append<'a>(&'a self, at_ms: i64, json: String) -> BoxFuture<'a, Result<String, StoreError>> {
        let id = local_id(at_ms, self.seq.fetch_add(1, Ordering::Relaxed));
        Box::pin(async move {
            self.journal.audit_append(id.clone(), json).await?;
            Ok(id)
        })
    }

    fn before<'a>(
        &'a self,
        before: Option<&'a str>,
        since_ms: i64,
        limit: usize,
    ) -> BoxFuture<'a, Result<Vec<Stored>, StoreError>> {
        let from = Some(local_id(since_ms, 0));
        let to = before.map(str::to_string);
        Box::pin(async move { self.journal.audit_read(from, to, true, limit).await })
    }

    fn after<'a>(
        &'a self,
        after: Option<&'a str>,
        limit: usize,
    ) -> BoxFuture<'a, Result<Vec<Stored>, StoreError>> {
        // Ids are ASCII of one length: `id` + NUL sorts right after `id`.
        let from = after.map(|a| format!("{a}\u{0}"));
        Box::pin(async move { self.journal.audit_read(from, None, false, limit).await })
    }

    fn trim<'a>(&'a self, cutoff_ms: i64, keep: usize) -> BoxFuture<'a, Result<usize, StoreError>> {
        Box::pin(async move { self.journal.audit_trim(local_id(cutoff_ms, 0), keep).await })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn pages_go_back_in_time_and_trim_keeps_the_newest() {
        let log = MemoryAudit::default();
        let mut ids = Vec::new();
        for i in 0..5 {
            ids.push(log.append(1_000 + i, format!("{i}")).await.unwrap());
        }
        let page = log.before(None, 0, 2).await.unwrap();
        assert_eq!(page.iter().map(|e| &e.1).collect::<Vec<_>>(), ["4", "3"]);
        let next = log.before(Some(&page[1].0), 0, 10).await.unwrap();
        assert_eq!(next.len(), 3);
        assert_eq!(log.after(Some(&ids[3]), 10).await.unwrap().len(), 1);
        assert_eq!(log.trim(1_002, 10).await.unwrap(), 2);
        assert_eq!(log.trim(0, 1).await.unwrap(), 2);
        assert_eq!(log.after(None, 10).await.unwrap()[0].1, "4");
    }
}
