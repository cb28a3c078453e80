//! The durable journal of a single node: a redb file in the data directory.
//!
//! Why redb: pure Rust (no C toolchain, no second process), ACID with a
//! crash-safe copy-on-write B-tree and an fsync per commit, an exclusive
//! file lock (a second hub on the same directory is refused instead of
//! corrupting it), one file, maintained. SQLite would bring C and a query
//! language we do not need; fjall's LSM suits write-heavy logs bigger than
//! ours.
//!
//! One writer thread owns the database and **group-commits**: every record
//! waiting when a commit starts goes into the same transaction, so 64
//! concurrent triggers cost one fsync, not 64. Callers await their commit
//! on a oneshot; the fan-out never waits for the disk (`revocation` publishes
//! first and awaits the journal before answering).
//!
//! Each [`Kind`] is a table: key → JSON [`Record`] (version, expiry, data).
//!
//! Must not: be read on the hot path. Everything is loaded into memory at
//! start; afterwards this file is only written.

use std::path::Path;
use std::sync::mpsc;
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;

use redb::{Database, ReadableDatabase, ReadableTable, ReadableTableMetadata, TableDefinition};
use tokio::sync::oneshot;

use super::{Kind, Record, StoreError};

fn table(kind: Kind) -> TableDefinition<'static, &'static str, &'static [u8]> {
    TableDefinition::new(kind.name())
}
/// Records per transaction at most (a bound on one commit's latency).
const MAX_BATCH: usize = 1024;

/// The audit trail: id (ordered by time) → entry JSON. Not loaded at start.
const AUDIT: TableDefinition<'static, &'static str, &'static [u8]> = TableDefinition::new("audit");

type Done<T> = oneshot::Sender<Result<T, StoreError>>;

enum Job {
    Put(Record, Done<()>),
    Audit(String, String, Done<()>),
    Expire(i64, Done<usize>),
    TrimAudit(String, usize, Done<usize>),
}

/// The writer thread's handle, and the database for readers of the audit
/// trail (redb lets reads run beside the writer).
pub struct Journal {
    tx: Mutex<Option<mpsc::Sender<Job>>>,
    thread: Mutex<Option<JoinHandle<()>>>,
    /// Taken at close, so the file (and its lock) is released then.
    db: Mutex<Option<Arc<Database>>>,
}

/// Opens (or creates) the journal in `dir` and returns it with every record
/// not yet expired.
pub fn open(dir: &Path) -> Result<(Journal, Vec<Record>), StoreError> {
    let path = dir.join("slo-hub.redb");
    let place = path.display().to_string();
    let open_error = |e: redb::DatabaseError| StoreError::Open {
        place: place.clone(),
        reason: match &e {
            redb::DatabaseError::DatabaseAlreadyOpen => {
                "the file is locked: another slo-hub process uses this data directory".into()
            }
            other => other.to_string(),
        },
        cause: Some(std::sync::Arc::new(e)),
    };
    std::fs::create_dir_all(dir).map_err(|e| StoreError::Open {
        place: place.clone(),
        reason: e.to_string(),
        cause: Some(std::sync::Arc::new(e)),
    })?;
    let db = Arc::new(Database::create(&path).map_err(open_error)?);
    let events = load(&db, &path)?;
    let (tx, rx) = mpsc::channel();
    let writer_db = db.clone();
    let thread = std::thread::Builder::new()
        .name("slo-hub-journal".into())
        .spawn(move || writer(&writer_db, rx))
        .map_err(|e| StoreError::Open {
            place,
            reason: e.to_string(),
            cause: Some(std::sync::Arc::new(e)),
        })?;
    Ok((
        Journal {
            tx: Mutex::new(Some(tx)),
            thread: Mutex::new(Some(thread)),
            db: Mutex::new(Some(db)),
        },
        events,
    ))
}

/// The session graph's table before it was kept per user (one record per
/// entity, versioned by the writer's clock).
const LEGACY_GRAPH: TableDefinition<'static, &'static str, &'static [u8]> =
    TableDefinition::new("session_graph");

fn load(db: &Database, path: &Path) -> Result<Vec<Record>, StoreError> {
    let corrupt = |e: &dyn std::fmt::Display| StoreError::Open {
        place: path.display().to_string(),
        reason: e.to_string(),
        cause: None,
    };
    // Create the tables on first start, so reads below find them.
    let w = db.begin_write().map_err(|e| corrupt(&e))?;
    for kind in Kind::ALL {
        w.open_table(table(kind)).map_err(|e| corrupt(&e))?;
    }
    w.open_table(AUDIT).map_err(|e| corrupt(&e))?;
    // Dropping the old graph fails closed: every session, refresh and
    // transfer token in it becomes unknown (refused), and apps sign in again.
    let legacy = w
        .open_table(LEGACY_GRAPH)
        .map_err(|e| corrupt(&e))?
        .len()
        .map_err(|e| corrupt(&e))?;
    w.delete_table(LEGACY_GRAPH).map_err(|e| corrupt(&e))?;
    if legacy > 0 {
        tracing::warn!(
            records = legacy,
            "store: the session graph of an older slo-hub was dropped; native apps and transfer-created web sessions must sign in again"
        );
    }
    w.commit().map_err(|e| corrupt(&e))?;
    let now = crate::util::now_ms();
    let r = db.begin_read().map_err(|e| corrupt(&e))?;
    let mut out = Vec::new();
    for kind in Kind::ALL {
        let t = r.open_table(table(kind)).map_err(|e| corrupt(&e))?;
        for row in t.iter().map_err(|e| corrupt(&e))? {
            let (k, v) = row.map_err(|e| corrupt(&e))?;
            let mut record: Record = serde_json::from_slice(v.value())
                .map_err(|e| corrupt(&format!("{} {:?}: {e}", kind.name(), k.value())))?;
            if record.expires_at_ms <= now {
                continue;
            }
            record.kind = kind;
            record.key = k.value().to_string();
            out.push(record);
        }
    }
    Ok(out)
}

impl Journal {
    /// Writes a record durably (fsynced) and returns when it is.
    pub async fn put(&self, record: Record) -> Result<(), StoreError> {
        let (done, wait) = oneshot::channel();
        self.send(Job::Put(record, done))?;
        wait.await.map_err(|_| StoreError::Closed)?
    }

    /// Deletes records expired at `now_ms`; returns how many.
    pub async fn expire(&self, now_ms: i64) -> Result<usize, StoreError> {
        let (done, wait) = oneshot::channel();
        self.send(Job::Expire(now_ms, done))?;
        wait.await.map_err(|_| StoreError::Closed)?
    }

    /// Appends an audit entry, committed with whatever else is waiting.
    pub async fn audit_append(&self, id: String, json: String) -> Result<(), StoreError> {
        let (done, wait) = oneshot::channel();
        self.send(Job::Audit(id, json, done))?;
        wait.await.map_err(|_| StoreError::Closed)?
    }

    /// Removes audit entries below `cutoff` and beyond the newest `keep`,
    /// at most [`super::audit::TRIM_BATCH`] per call.
    pub async fn audit_trim(&self, cutoff: String, keep: usize) -> Result<usize, StoreError> {
        let (done, wait) = oneshot::channel();
        self.send(Job::TrimAudit(cutoff, keep, done))?;
        wait.await.map_err(|_| StoreError::Closed)?
    }

    /// Reads audit entries in `range` (newest first if `rev`), beside the
    /// writer, on a blocking thread.
    pub async fn audit_read(
        &self,
        from: Option<String>,
        to: Option<String>,
        rev: bool,
        limit: usize,
    ) -> Result<Vec<(String, String)>, StoreError> {
        let db = self
            .db
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
            .ok_or(StoreError::Closed)?;
        tokio::task::spawn_blocking(move || {
            let r = db.begin_read().map_err(failed)?;
            let t = r.open_table(AUDIT).map_err(failed)?;
            let range = match (from.as_deref(), to.as_deref()) {
                (Some(a), Some(b)) => t.range(a..b),
                (Some(a), None) => t.range(a..),
                (None, Some(b)) => t.range(..b),
                (None, None) => t.range::<&str>(..),
            }
            .map_err(failed)?;
            let mut out = Vec::new();
            let mut push = |row: Result<
                (redb::AccessGuard<&str>, redb::AccessGuard<&[u8]>),
                redb::StorageError,
            >| {
                let (k, v) = row.map_err(failed)?;
                out.push((
                    k.value().to_string(),
                    String::from_utf8_lossy(v.value()).into_owned(),
                ));
                Ok::<(), StoreError>(())
            };
            if rev {
                for row in range.rev().take(limit) {
                    push(row)?;
                }
            } else {
                for row in range.take(limit) {
                    push(row)?;
                }
            }
            Ok(out)
        })
        .await
        .map_err(|e| StoreError::backend("the embedded store", e))?
    }

    fn send(&self, job: Job) -> Result<(), StoreError> {
        let tx = self.tx.lock().unwrap_or_else(|e| e.into_inner());
        tx.as_ref()
            .ok_or(StoreError::Closed)?
            .send(job)
            .map_err(|_| StoreError::Closed)
    }

    /// Finishes pending writes and closes the file (releasing its lock).
    pub fn close(&self) {
        self.tx.lock().unwrap_or_else(|e| e.into_inner()).take();
        if let Some(t) = self.thread.lock().unwrap_or_else(|e| e.into_inner()).take() {
            let _ = t.join();
        }
        self.db.lock().unwrap_or_else(|e| e.into_inner()).take();
    }
}

impl Drop for Journal {
    fn drop(&mut self) {
        self.close();
    }
}

fn writer(db: &Database, rx: mpsc::Receiver<Job>) {
    while let Ok(first) = rx.recv() {
        let mut records = Vec::new();
        let mut audits = Vec::new();
        let mut job = Some(first);
        // Take everything already waiting: one transaction, one fsync.
        while let Some(j) = job.take() {
            match j {
                Job::Put(r, done) => records.push((r, done)),
                Job::Audit(id, json, done) => audits.push((id, json, done)),
                Job::Expire(now, done) => {
                    let _ = done.send(expire(db, now));
                }
                Job::TrimAudit(cutoff, keep, done) => {
                    let _ = done.send(trim_audit(db, &cutoff, keep));
                }
            }
            if records.len() + audits.len() < MAX_BATCH {
                job = rx.try_recv().ok();
            }
        }
        if records.is_empty() && audits.is_empty() {
            continue;
        }
        let result = commit(
            db,
            records.iter().map(|(e, _)| e),
            audits
                .iter()
                .map(|(id, json, _)| (id.as_str(), json.as_str())),
        );
        if let Err(e) = &result {
            tracing::error!(error = %e, "store: a commit failed; its triggers answer 503");
        }
        for (_, done) in records {
            let _ = done.send(result.clone());
        }
        for (_, _, done) in audits {
            let _ = done.send(result.clone());
        }
    }
}

/// Deletes the oldest audit entries: those below `cutoff`, then any beyond
/// the newest `keep`; one bounded batch, so triggers do not wait behind it.
fn trim_audit(db: &Database, cutoff: &str, keep: usize) -> Result<usize, StoreError> {
    let w = db.begin_write().map_err(failed)?;
    let removed = {
        let mut t = w.open_table(AUDIT).map_err(failed)?;
        let total = t.len().map_err(failed)? as usize;
        let over = total.saturating_sub(keep);
        let mut doomed = Vec::new();
        for row in t.iter().map_err(failed)?.take(super::audit::TRIM_BATCH) {
            let (k, _) = row.map_err(failed)?;
            let key = k.value().to_string();
            if key.as_str() >= cutoff && doomed.len() >= over {
                break;
            }
            doomed.push(key);
        }
        for k in &doomed {
            t.remove(k.as_str()).map_err(failed)?;
        }
        doomed.len()
    };
    w.commit().map_err(failed)?;
    Ok(removed)
}

/// A redb failure, with its cause.
fn failed(e: impl Into<redb::Error>) -> StoreError {
    StoreError::backend("the embedded store", e.into())
}

fn commit<'a>(
    db: &Database,
    records: impl Iterator<Item = &'a Record>,
    audits: impl Iterator<Item = (&'a str, &'a str)>,
) -> Result<(), StoreError> {
    let w = db.begin_write().map_err(failed)?;
    {
        let mut t = w.open_table(AUDIT).map_err(failed)?;
        for (id, json) in audits {
            t.insert(id, json.as_bytes()).map_err(failed)?;
        }
    }
    for r in records {
        let mut t = w.open_table(table(r.kind)).map_err(failed)?;
        // Never replace a record of a higher version, whatever order
        // commits come in (a watermark only moves forward).
        let newer = match t.get(r.key.as_str()).map_err(failed)? {
            Some(old) => serde_json::from_slice::<Record>(old.value())
                .map(|old| r.version >= old.version)
                .unwrap_or(true),
            None => true,
        };
        if newer {
            // A struct of strings and integers always serializes.
            let value = serde_json::to_vec(r).unwrap_or_default();
            t.insert(r.key.as_str(), value.as_slice()).map_err(failed)?;
        }
    }
    w.commit().map_err(failed)
}

fn expire(db: &Database, now_ms: i64) -> Result<usize, StoreError> {
    let w = db.begin_write().map_err(failed)?;
    let mut removed = 0;
    for kind in Kind::ALL {
        let mut t = w.open_table(table(kind)).map_err(failed)?;
        t.retain(|_, v| {
            let keep = serde_json::from_slice::<Record>(v)
                .map(|r| r.expires_at_ms > now_ms)
                .unwrap_or(false);
            if !keep {
                removed += 1;
            }
            keep
        })
        .map_err(failed)?;
    }
    w.commit().map_err(failed)?;
    Ok(removed)
}

#[cfg(test)]
mod tests {
    use super::*;

    const TTL: i64 = 3_600_000;

    fn ev(key: &str, at_ms: i64) -> Record {
        let e = crate::store::StoredEvent {
            iss: "https://issuer".into(),
            scope: "user".into(),
            key: key.into(),
            id: format!("e{at_ms}"),
            sub: Some(key.into()),
            sid: None,
            reason: "test".into(),
            at_ms,
            report_acks: false,
        };
        // An hour: far beyond any pause of a loaded CI machine, so only the
        // explicit `expire` below removes anything.
        Record::watermark(&e, TTL)
    }

    fn sorted(mut v: Vec<Record>) -> Vec<i64> {
        v.sort_by_key(|r| r.version);
        v.iter().map(|r| r.version).collect()
    }

    #[tokio::test]
    async fn survives_reopen_keeps_the_newest_and_expires() {
        let dir = tempfile::tempdir().unwrap();
        let now = crate::util::now_ms();
        let (j, loaded) = open(dir.path()).unwrap();
        assert!(loaded.is_empty());
        j.put(ev("alice", now + 2_000)).await.unwrap();
        j.put(ev("alice", now + 1_000)).await.unwrap();
        j.put(ev("bob", now + 500)).await.unwrap();
        // A second opener is refused while the first holds the file.
        match open(dir.path()) {
            Err(StoreError::Open { reason, .. }) => assert!(reason.contains("locked"), "{reason}"),
            other => panic!("expected a locked store, got {:?}", other.map(|_| ())),
        }
        j.close();
        let (j, loaded) = open(dir.path()).unwrap();
        assert_eq!(sorted(loaded.clone()), vec![now + 500, now + 2_000]);
        let alice = loaded.iter().find(|r| r.version == now + 2_000).unwrap();
        assert_eq!(alice.as_watermark().unwrap().key, "alice");
        // bob's record expires at now + 500 + TTL, alice's at now + 2,000 + TTL.
        assert_eq!(j.expire(now + TTL + 1_000).await.unwrap(), 1);
        j.close();
        let (_j, loaded) = open(dir.path()).unwrap();
        assert_eq!(sorted(loaded), vec![now + 2_000]);
    }

    #[test]
    fn a_file_that_is_not_a_store_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("slo-hub.redb"), b"not a database at all").unwrap();
        assert!(matches!(open(dir.path()), Err(StoreError::Open { .. })));
    }
}
