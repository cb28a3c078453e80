//! The re-login window of logged-out sockets.
//!
//! After a logout a socket stays open for `ws.relogin_secs`, so the SPA can
//! log in again and send a new `auth` on the same connection; then the hub
//! closes it with 4000. The socket stays parked meanwhile (its ack and a new
//! `auth` arrive through the same poll as before), and the end of its window
//! comes from here: every window has the same length, so windows end in the
//! order they began, and one FIFO queue with one timer serves them all
//! (cheaper than a task and a timer per socket). The registry opens the
//! windows of the sockets it publishes a logout to, in one batch and
//! without waking them (waking them all at once is a burst of tasks). The
//! queue holds buckets of the sockets logged out within the same `GRAIN`,
//! 8 bytes per socket. Figures: bench/README.md.
//!
//! Must not: keep a socket alive (the queue holds `Weak`s: a socket that
//! closed or logged in again takes its `Conn` apart, and its entry no longer
//! upgrades; only the `Conn`'s allocation, about 230 bytes, waits for the
//! entry to expire), or hold its lock while closing a socket.

use std::collections::VecDeque;
use std::sync::{Arc, Mutex, MutexGuard, Weak};
use std::time::Duration;

use tokio::sync::Notify;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use super::conn::Conn;
use crate::error::CloseCode;

/// Windows that begin within this long of each other end together: a
/// window lasts at least its length and at most this much longer.
const GRAIN: Duration = Duration::from_millis(100);

/// The logged-out sockets whose window is still open, oldest first.
pub struct Windows {
    length: Duration,
    queue: Mutex<Queue>,
    /// Wakes the closer when the queue stops being empty.
    started: Notify,
}

#[derive(Default)]
struct Queue {
    buckets: VecDeque<Bucket>,
    /// Set at shutdown: windows that open from then on close at once.
    shut: bool,
}

/// Sockets whose windows end at the same time.
struct Bucket {
    ends: Instant,
    conns: Vec<Weak<Conn>>,
}

impl Windows {
    pub fn new(length: Duration) -> Windows {
        Windows {
            length,
            queue: Mutex::new(Queue::default()),
            started: Notify::new(),
        }
    }

    fn lock(&self) -> MutexGuard<'_, Queue> {
        self.queue.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Starts the windows of sockets that were just logged out (the
    /// registry calls this as it publishes a logout).
    pub fn open(&self, conns: &[Arc<Conn>]) {
        if conns.is_empty() {
            return;
        }
        let mut q = self.lock();
        if q.shut {
            drop(q);
            for conn in conns {
                conn.close(CloseCode::LoggedOut);
            }
            return;
        }
        let earliest_end = Instant::now() + self.length;
        let bucket = match q.buckets.back_mut() {
            // A bucket begun less than `GRAIN` ago.
            Some(last) if last.ends >= earliest_end => last,
            _ => {
                q.buckets.push_back(Bucket {
                    ends: earliest_end + GRAIN,
                    conns: Vec::new(),
                });
                if q.buckets.len() == 1 {
                    // `notify_one` keeps a permit if the closer is not waiting yet.
                    self.started.notify_one();
                }
                q.buckets.back_mut().expect("just pushed")
            }
        };
        bucket.conns.extend(conns.iter().map(Arc::downgrade));
    }

    /// Closes each socket whose window ended, until shutdown; then closes
    /// the rest, and any socket that logs out later, at once.
    pub async fn run(&self, shutdown: CancellationToken) {
        loop {
            // A bucket opened meanwhile ends after the current first one, so
            // only an empty queue needs to hear of it.
            let wait = async {
                match self.close_ended(Instant::now()) {
                    Some(end) => tokio::time::sleep_until(end).await,
                    None => self.started.notified().await,
                }
            };
            tokio::select! {
                _ = shutdown.cancelled() => break,
                _ = wait => {}
            }
        }
        let rest = {
            let mut q = self.lock();
            q.shut = true;
            std::mem::take(&mut q.buckets)
        };
        close(rest.into_iter().flat_map(|b| b.conns));
    }

    /// Closes the sockets whose window ended by `now`; returns when the next
    /// one ends.
    fn close_ended(&self, now: Instant) -> Option<Instant> {
        let mut ended = Vec::new();
        let next = {
            let mut q = self.lock();
            while q.buckets.front().is_some_and(|b| b.ends <= now) {
                ended.extend(q.buckets.pop_front());
            }
            q.buckets.front().map(|b| b.ends)
        };
        close(ended.into_iter().flat_map(|b| b.conns));
        next
    }
}

/// Closes with 4000 the sockets still there (`Conn::close` keeps the code
/// of one already closing).
fn close(conns: impl IntoIterator<Item = Weak<Conn>>) {
    for conn in conns.into_iter().filter_map(|c| c.upgrade()) {
        conn.close(CloseCode::LoggedOut);
    }
}
