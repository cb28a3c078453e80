//! The re-login window of logged-out sockets.
//!
//! After a logout a socket stays open for `ws.relogin_secs`, so the SPA can
//! log in again and send a new `auth` on the same connection; then the hub
//! closes it with 4000. The socket stays parked meanwhile (its acks and a new
//! `auth` arrive through the same poll as before), and the end of its window
//! comes from here: every window has the same length, so windows end in the
//! order they began, and one FIFO queue with one timer serves them all. A
//! task and a timer-wheel entry per logged-out socket cost more than the rest
//! of a logout's delivery in user space (the broadcast of one logout to
//! 15,000 sockets started 15,000 of them).
//!
//! Must not: keep a socket alive (the queue holds `Weak`s: a socket that
//! closed or logged in again takes its `Conn` apart, and its entry no longer
//! upgrades), or hold its lock while closing a socket.

use std::collections::VecDeque;
use std::sync::{Arc, Mutex, MutexGuard, Weak};
use std::time::Duration;

use tokio::sync::Notify;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use super::conn::Conn;
use crate::error::CloseCode;

/// The logged-out sockets whose window is still open, oldest first.
pub struct Windows {
    length: Duration,
    queue: Mutex<Queue>,
    /// Wakes the closer when the queue stops being empty.
    started: Notify,
}

#[derive(Default)]
struct Queue {
    ending: VecDeque<(Instant, Weak<Conn>)>,
    /// Set at shutdown: windows that open from then on close at once.
    shut: bool,
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

    /// Starts the window of a socket that was just logged out.
    pub fn open(&self, conn: &Arc<Conn>) {
        let mut q = self.lock();
        if q.shut {
            drop(q);
            conn.close(CloseCode::LoggedOut);
            return;
        }
        q.ending
            .push_back((Instant::now() + self.length, Arc::downgrade(conn)));
        if q.ending.len() == 1 {
            // `notify_one` keeps a permit if the closer is not waiting yet.
            self.started.notify_one();
        }
    }

    /// Closes each socket whose window ended, until shutdown; then closes
    /// the rest, and any socket that logs out later, at once.
    pub async fn run(&self, shutdown: CancellationToken) {
        loop {
            let next = self.close_ended(Instant::now());
            tokio::select! {
                _ = shutdown.cancelled() => break,
                _ = self.started.notified(), if next.is_none() => {}
                _ = sleep_until(next), if next.is_some() => {}
            }
        }
        let rest = {
            let mut q = self.lock();
            q.shut = true;
            std::mem::take(&mut q.ending)
        };
        close(rest.into_iter().map(|(_, conn)| conn));
    }

    /// Closes the sockets whose window ended by `now`; returns when the next
    /// one ends.
    fn close_ended(&self, now: Instant) -> Option<Instant> {
        let mut ended = Vec::new();
        let next = {
            let mut q = self.lock();
            while let Some((end, _)) = q.ending.front() {
                if *end > now {
                    break;
                }
                ended.extend(q.ending.pop_front().map(|(_, conn)| conn));
            }
            q.ending.front().map(|(end, _)| *end)
        };
        close(ended);
        next
    }
}

async fn sleep_until(at: Option<Instant>) {
    if let Some(at) = at {
        tokio::time::sleep_until(at).await;
    }
}

/// Closes with 4000 the sockets still there (`Conn::close` keeps the code
/// of one already closing).
fn close(conns: impl IntoIterator<Item = Weak<Conn>>) {
    for conn in conns.into_iter().filter_map(|c| c.upgrade()) {
        conn.close(CloseCode::LoggedOut);
    }
}
