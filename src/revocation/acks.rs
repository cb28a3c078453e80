//! Acknowledgements counted for the logouts whose callers wait for them
//! (`wait_for_acks_ms`): one count per event, removed when its wait ends
//! however it ends.
//!
//! Must not: keep a count after its `AckWait` is dropped.

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use dashmap::DashMap;
use tokio::sync::Notify;

/// The counts being kept, by event id.
#[derive(Default)]
pub(super) struct Acks(Arc<DashMap<String, Arc<AckCount>>>);

impl Acks {
    /// Starts counting `event_id`'s acks for at most `wait`.
    pub(super) fn start(&self, event_id: &str, wait: Duration) -> AckWait {
        let count = Arc::new(AckCount::default());
        self.0.insert(event_id.to_string(), count.clone());
        AckWait {
            count,
            waiting: self.0.clone(),
            event_id: event_id.to_string(),
            expected: 0,
            wait,
        }
    }

    /// Counts one ack of `event_id`; false if no one waits for it here.
    pub(super) fn count(&self, event_id: &str) -> bool {
        let Some(c) = self.0.get(event_id) else {
            return false;
        };
        c.acked.fetch_add(1, Ordering::AcqRel);
        c.changed.notify_waiters();
        true
    }

    pub(super) fn len(&self) -> usize {
        self.0.len()
    }
}

/// Acknowledgements being counted for one logout; removed from the
/// waiting map when dropped (answered, failed or abandoned alike).
pub struct AckWait {
    count: Arc<AckCount>,
    waiting: Arc<DashMap<String, Arc<AckCount>>>,
    event_id: String,
    pub(super) expected: usize,
    wait: Duration,
}

impl AckWait {
    /// Waits until every delivered socket acknowledged, or the wait ends.
    pub async fn acked(self) -> usize {
        let deadline = tokio::time::Instant::now() + self.wait;
        loop {
            // Register interest before reading, so an ack between the read
            // and the await still wakes us.
            let changed = self.count.changed.notified();
            let n = self.count.acked.load(Ordering::Acquire);
            if n >= self.expected {
                return n;
            }
            if tokio::time::timeout_at(deadline, changed).await.is_err() {
                return self.count.acked.load(Ordering::Acquire);
            }
        }
    }
}

/// A running count of one logout's local acks (`AckWait::counter`).
pub struct AckCounter {
    count: Arc<AckCount>,
    /// Keeps the count registered while held.
    _wait: AckWait,
}

impl AckCounter {
    pub fn get(&self) -> usize {
        self.count.acked.load(Ordering::Acquire)
    }
}

impl AckWait {
    /// The count itself, for a caller that also counts other nodes' acks.
    pub fn counter(self) -> AckCounter {
        AckCounter {
            count: self.count.clone(),
            _wait: self,
        }
    }
}

impl Drop for AckWait {
    fn drop(&mut self) {
        self.waiting.remove(&self.event_id);
    }
}

#[derive(Default)]
struct AckCount {
    acked: AtomicUsize,
    changed: Notify,
}
