//! Where the session graph lives: one versioned record per user, replaced
//! only by compare-and-set.
//!
//! [`GraphStore`] is the boundary the session layer talks to: load a user's
//! record and its version, resolve a pointer (a secret's digest or an id) to
//! its user, save a new record *if the version is still the one loaded*,
//! and list web sessions whose deadline has passed. The version is assigned
//! by the store, under its lock (or Redis's), so two writers can never
//! interleave and an older copy can never replace a newer one, whatever
//! order their writes reach the disk in.
//!
//! [`LocalGraphs`] keeps every record in memory and writes each save
//! through the durable journal before it becomes visible (embedded store),
//! or nowhere (`store = "memory"`).
//!
//! Must not: interpret a record (the session layer does), or decide rules.

use std::collections::{BTreeSet, HashMap};
use std::sync::{Arc, Mutex, MutexGuard};

use tokio::sync::Notify;

use super::{BoxFuture, Durable, Kind, Record, StoreError};

/// One user's graph as the store keeps it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct GraphRecord {
    /// The user's tag (the record's key).
    pub tag: String,
    /// The graph, serialized by the session layer.
    pub data: String,
    /// Keys that lead to this user (secret digests, ids).
    pub pointers: Vec<String>,
    /// Live web sessions: (deadline ms, session id).
    pub deadlines: Vec<(i64, String)>,
    /// When the earliest pending notice (a logout to push, a backend to
    /// tell) is due, if any: the graph's own outbox.
    pub notice_due: Option<i64>,
    /// When the whole record may be forgotten (ms).
    pub expires_ms: i64,
}

/// A loaded record and the version a save must name.
#[derive(Clone, Debug)]
pub struct Versioned {
    pub version: u64,
    pub data: String,
}

pub trait GraphStore: Send + Sync {
    /// The user's record, if any. What a load returns is durable.
    fn load<'a>(&'a self, tag: &'a str) -> BoxFuture<'a, Result<Option<Versioned>, StoreError>>;

    /// The user a pointer leads to, if any.
    fn resolve<'a>(&'a self, pointer: &'a str)
    -> BoxFuture<'a, Result<Option<String>, StoreError>>;

    /// Saves `record` if the stored version is still `expected` (0: none
    /// yet), durably, before returning `Ok(true)`. `Ok(false)`: someone
    /// saved first; load again and retry. `previous`: the record loaded
    /// (its index entries that `record` no longer has are retired).
    fn save<'a>(
        &'a self,
        expected: u64,
        previous: Option<&'a GraphRecord>,
        record: &'a GraphRecord,
    ) -> BoxFuture<'a, Result<bool, StoreError>>;

    /// Web sessions whose deadline is at or before `now`: (user, session).
    fn due<'a>(&'a self, now: i64) -> BoxFuture<'a, Result<Vec<(String, String)>, StoreError>>;

    /// Users with a notice due at or before `now`.
    fn notices_due<'a>(&'a self, now: i64) -> BoxFuture<'a, Result<Vec<String>, StoreError>>;

    /// Drops index entries that turned out stale (a crash between a save
    /// and its index update leaves some on Redis): the deadline of a web
    /// session, or the user's notice entry.
    fn forget<'a>(
        &'a self,
        tag: &'a str,
        web: Option<&'a str>,
    ) -> BoxFuture<'a, Result<(), StoreError>>;

    /// The earliest deadline this node knows of, if any.
    fn next_deadline(&self) -> Option<i64>;

    /// Woken when a deadline earlier than the known first appears.
    fn deadline_changed(&self) -> &Notify;

    /// Forgets records past their expiry (memory only; durable copies
    /// expire with the journal or Redis).
    fn purge(&self, now: i64);
}

#[derive(Default)]
struct Entry {
    version: u64,
    data: Arc<str>,
    pointers: Vec<String>,
    deadlines: Vec<(i64, String)>,
    notice_due: Option<i64>,
    expires_ms: i64,
}

#[derive(Default)]
struct State {
    /// Committed records only: what a load sees is durable.
    graphs: HashMap<String, Entry>,
    pointers: HashMap<String, String>,
    /// (deadline, user, web session), earliest first.
    deadlines: BTreeSet<(i64, String, String)>,
    /// (due, user) of pending notices, earliest first.
    notices: BTreeSet<(i64, String)>,
    /// Users with a save on its way to the journal; a second writer waits.
    writing: HashMap<String, Arc<Notify>>,
}

/// Every record in this process, written through `durable` on each save.
///
/// A save changes memory only once the journal has the record, so a load
/// never sees what might not survive a crash. Saves of one user go one at
/// a time (the next waits for the commit); different users' saves share
/// the journal's group commits.
pub struct LocalGraphs {
    inner: Arc<Inner>,
}

struct Inner {
    state: Mutex<State>,
    durable: Arc<dyn Durable>,
    deadline_changed: Notify,
}

impl Inner {
    fn lock(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }
}

impl LocalGraphs {
    pub fn new(durable: Arc<dyn Durable>) -> LocalGraphs {
        LocalGraphs {
            inner: Arc::new(Inner {
                state: Mutex::new(State::default()),
                durable,
                deadline_changed: Notify::new(),
            }),
        }
    }

    /// Loads a record read from the journal at start (its version as stored).
    pub fn restore(&self, version: u64, record: GraphRecord) {
        self.inner.lock().put(version, record);
    }

    /// Records held (for metrics and tests).
    pub fn len(&self) -> usize {
        self.inner.lock().graphs.len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

impl State {
    fn put(&mut self, version: u64, r: GraphRecord) {
        let old = self.graphs.remove(&r.tag).unwrap_or_default();
        for p in &old.pointers {
            if !r.pointers.contains(p) {
                self.pointers.remove(p);
            }
        }
        for p in &r.pointers {
            self.pointers.insert(p.clone(), r.tag.clone());
        }
        for (t, ws) in &old.deadlines {
            self.deadlines.remove(&(*t, r.tag.clone(), ws.clone()));
        }
        for (t, ws) in &r.deadlines {
            self.deadlines.insert((*t, r.tag.clone(), ws.clone()));
        }
        if let Some(due) = old.notice_due {
            self.notices.remove(&(due, r.tag.clone()));
        }
        if let Some(due) = r.notice_due {
            self.notices.insert((due, r.tag.clone()));
        }
        self.graphs.insert(
            r.tag,
            Entry {
                version,
                data: r.data.into(),
                pointers: r.pointers,
                deadlines: r.deadlines,
                notice_due: r.notice_due,
                expires_ms: r.expires_ms,
            },
        );
    }

    fn remove(&mut self, tag: &str) {
        if let Some(old) = self.graphs.remove(tag) {
            for p in old.pointers {
                self.pointers.remove(&p);
            }
            for (t, ws) in old.deadlines {
                self.deadlines.remove(&(t, tag.to_string(), ws));
            }
            if let Some(due) = old.notice_due {
                self.notices.remove(&(due, tag.to_string()));
            }
        }
    }
}

/// Runs one save to its end: the journal write, then the memory update.
/// In a task of its own, so a caller that goes away (a dropped request)
/// cannot leave the journal ahead of memory, or the user locked.
async fn commit(
    inner: Arc<Inner>,
    version: u64,
    record: GraphRecord,
    done: Arc<Notify>,
) -> Result<(), StoreError> {
    let written = inner
        .durable
        .write(Record {
            kind: Kind::SessionGraph,
            key: record.tag.clone(),
            version: version as i64,
            expires_at_ms: record.expires_ms,
            data: record.data.clone(),
        })
        .await;
    let earlier = {
        let mut st = inner.lock();
        st.writing.remove(&record.tag);
        if written.is_err() {
            false
        } else {
            let first = st.deadlines.first().map(|(t, _, _)| *t);
            st.put(version, record);
            let new_first = st.deadlines.first().map(|(t, _, _)| *t);
            new_first.is_some() && new_first != first
        }
    };
    done.notify_waiters();
    if earlier {
        inner.deadline_changed.notify_one();
    }
    written
}

impl GraphStore for LocalGraphs {
    fn load<'a>(&'a self, tag: &'a str) -> BoxFuture<'a, Result<Option<Versioned>, StoreError>> {
        let found = self.inner.lock().graphs.get(tag).map(|e| Versioned {
            version: e.version,
            data: e.data.to_string(),
        });
        Box::pin(async move { Ok(found) })
    }

    fn resolve<'a>(
        &'a self,
        pointer: &'a str,
    ) -> BoxFuture<'a, Result<Option<String>, StoreError>> {
        let found = self.inner.lock().pointers.get(pointer).cloned();
        Box::pin(async move { Ok(found) })
    }

    fn save<'a>(
        &'a self,
        expected: u64,
        _previous: Option<&'a GraphRecord>,
        record: &'a GraphRecord,
    ) -> BoxFuture<'a, Result<bool, StoreError>> {
        enum Next {
            Busy(Arc<Notify>),
            Stale,
            Write(Arc<Notify>),
        }
        Box::pin(async move {
            let next = {
                let mut st = self.inner.lock();
                if let Some(busy) = st.writing.get(&record.tag) {
                    Next::Busy(busy.clone())
                } else if st.graphs.get(&record.tag).map_or(0, |e| e.version) != expected {
                    Next::Stale
                } else {
                    let done = Arc::new(Notify::new());
                    st.writing.insert(record.tag.clone(), done.clone());
                    Next::Write(done)
                }
            };
            let done = match next {
                Next::Stale => return Ok(false),
                Next::Busy(busy) => {
                    // Another save of this user is on its way to the disk:
                    // wait for it (unless it finished meanwhile), then the
                    // caller loads again.
                    let wait = busy.notified();
                    tokio::pin!(wait);
                    wait.as_mut().enable();
                    if self.inner.lock().writing.contains_key(&record.tag) {
                        wait.await;
                    }
                    return Ok(false);
                }
                Next::Write(done) => done,
            };
            // Versions only grow under the lock above, and the journal never
            // replaces a record of a higher version.
            let task = tokio::spawn(commit(
                self.inner.clone(),
                expected + 1,
                record.clone(),
                done,
            ));
            match task.await {
                Ok(written) => written.map(|()| true),
                Err(e) => Err(StoreError::backend("the session-graph commit task", e)),
            }
        })
    }

    fn due<'a>(&'a self, now: i64) -> BoxFuture<'a, Result<Vec<(String, String)>, StoreError>> {
        let due = self
            .inner
            .lock()
            .deadlines
            .iter()
            .take_while(|(t, _, _)| *t <= now)
            .map(|(_, tag, ws)| (tag.clone(), ws.clone()))
            .collect();
        Box::pin(async move { Ok(due) })
    }

    fn notices_due<'a>(&'a self, now: i64) -> BoxFuture<'a, Result<Vec<String>, StoreError>> {
        let due = self
            .inner
            .lock()
            .notices
            .iter()
            .take_while(|(t, _)| *t <= now)
            .map(|(_, tag)| tag.clone())
            .collect();
        Box::pin(async move { Ok(due) })
    }

    fn forget<'a>(
        &'a self,
        _tag: &'a str,
        _web: Option<&'a str>,
    ) -> BoxFuture<'a, Result<(), StoreError>> {
        // The local indexes follow every save exactly: nothing goes stale.
        Box::pin(async { Ok(()) })
    }

    fn next_deadline(&self) -> Option<i64> {
        self.inner.lock().deadlines.first().map(|(t, _, _)| *t)
    }

    fn deadline_changed(&self) -> &Notify {
        &self.inner.deadline_changed
    }

    fn purge(&self, now: i64) {
        let mut st = self.inner.lock();
        let gone: Vec<String> = st
            .graphs
            .iter()
            .filter(|(_, e)| e.expires_ms <= now)
            .map(|(k, _)| k.clone())
            .collect();
        for tag in gone {
            st.remove(&tag);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rec(tag: &str, data: &str, pointers: &[&str], deadline: Option<i64>) -> GraphRecord {
        GraphRecord {
            tag: tag.into(),
            data: data.into(),
            pointers: pointers.iter().map(|p| p.to_string()).collect(),
            deadlines: deadline
                .map(|d| (d, "ws_1".to_string()))
                .into_iter()
                .collect(),
            notice_due: None,
            expires_ms: i64::MAX,
        }
    }

    #[tokio::test]
    async fn saves_are_compare_and_set_and_keep_pointers_and_deadlines_in_step() {
        let g = LocalGraphs::new(Arc::new(crate::store::local::Local::memory()));
        assert!(
            g.save(0, None, &rec("u", "v1", &["a", "b"], Some(50)))
                .await
                .unwrap()
        );
        // A writer that loaded before the first save loses.
        assert!(
            !g.save(0, None, &rec("u", "stale", &[], None))
                .await
                .unwrap()
        );
        assert_eq!(g.resolve("a").await.unwrap().as_deref(), Some("u"));
        assert_eq!(g.due(50).await.unwrap().len(), 1);
        assert!(
            g.save(1, None, &rec("u", "v2", &["b", "c"], None))
                .await
                .unwrap()
        );
        let v = g.load("u").await.unwrap().unwrap();
        assert_eq!((v.version, v.data.as_str()), (2, "v2"));
        assert_eq!(g.resolve("a").await.unwrap(), None, "gone with the entity");
        assert_eq!(g.resolve("c").await.unwrap().as_deref(), Some("u"));
        assert!(g.due(i64::MAX).await.unwrap().is_empty());
    }
}
