//! Bytes of frames still arriving, bounded twice so that trickling bytes
//! cannot pin the hub's memory: in time (a frame must be complete
//! `ws.frame_timeout_ms` after its first byte arrived) and, across every
//! socket of both protocols, in memory (`limits.partial_frames_bytes`).
//!
//! Must not: read or decode (the sockets do); it only accounts and times.

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::task::{Context, Poll};
use std::time::Duration;

use tokio::time::Sleep;

/// The hub-wide budget for unfinished frames.
pub struct PartialMemory {
    used: AtomicUsize,
    limit: usize,
}

impl PartialMemory {
    pub fn new(limit: usize) -> PartialMemory {
        PartialMemory {
            used: AtomicUsize::new(0),
            limit,
        }
    }

    /// Bytes held by unfinished frames now.
    pub fn used(&self) -> usize {
        self.used.load(Ordering::Relaxed)
    }
}

/// Why a socket's unfinished frame is refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Overrun {
    /// The hub-wide budget has no room for it.
    Memory,
    /// It did not complete in time.
    Time,
}

/// One socket's share of the budget and the deadline of its frame: one
/// pointer while no frame is unfinished (an idle socket pays 8 bytes).
#[derive(Default)]
pub struct Held(Option<Box<Pending>>);

struct Pending {
    memory: Arc<PartialMemory>,
    charged: usize,
    deadline: Pin<Box<Sleep>>,
}

impl Held {
    /// Accounts the `bytes` the socket holds now for unfinished frames
    /// (0 between frames); the first byte of a frame starts its deadline,
    /// `timeout` from now.
    pub fn set(
        &mut self,
        bytes: usize,
        memory: &Arc<PartialMemory>,
        timeout: Duration,
    ) -> Result<(), Overrun> {
        if bytes == 0 {
            self.0 = None;
            return Ok(());
        }
        let p = self.0.get_or_insert_with(|| {
            Box::new(Pending {
                memory: memory.clone(),
                charged: 0,
                deadline: Box::pin(tokio::time::sleep(timeout)),
            })
        });
        if bytes > p.charged {
            let grow = bytes - p.charged;
            let before = p.memory.used.fetch_add(grow, Ordering::AcqRel);
            if before + grow > p.memory.limit {
                p.memory.used.fetch_sub(grow, Ordering::AcqRel);
                return Err(Overrun::Memory);
            }
        } else {
            p.memory.used.fetch_sub(p.charged - bytes, Ordering::AcqRel);
        }
        p.charged = bytes;
        Ok(())
    }

    /// Ready once the unfinished frame is overdue (registers `cx`).
    pub fn poll_overdue(&mut self, cx: &mut Context<'_>) -> Poll<Overrun> {
        match &mut self.0 {
            Some(p) => p.deadline.as_mut().poll(cx).map(|()| Overrun::Time),
            None => Poll::Pending,
        }
    }

    /// Waits until the unfinished frame is overdue (forever if none).
    pub async fn overdue(&mut self) -> Overrun {
        std::future::poll_fn(|cx| self.poll_overdue(cx)).await
    }
}

impl Drop for Pending {
    fn drop(&mut self) {
        self.memory.used.fetch_sub(self.charged, Ordering::AcqRel);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn the_budget_is_shared_and_given_back() {
        let memory = Arc::new(PartialMemory::new(100));
        let t = Duration::from_secs(10);
        let (mut a, mut b) = (Held::default(), Held::default());
        a.set(60, &memory, t).unwrap();
        assert_eq!(b.set(50, &memory, t), Err(Overrun::Memory));
        b.set(40, &memory, t).unwrap();
        a.set(0, &memory, t).unwrap();
        assert_eq!(memory.used(), 40);
        drop(b);
        assert_eq!(memory.used(), 0);
    }

    #[tokio::test]
    async fn a_frame_is_overdue_a_timeout_after_its_first_byte() {
        let memory = Arc::new(PartialMemory::new(100));
        let t = Duration::from_secs(1);
        let mut held = Held::default();
        let first = tokio::time::Instant::now();
        held.set(1, &memory, t).unwrap();
        tokio::time::sleep(Duration::from_millis(800)).await;
        // More bytes of the same frame do not move its deadline.
        held.set(50, &memory, t).unwrap();
        let more = tokio::time::Instant::now();
        assert_eq!(held.overdue().await, Overrun::Time);
        assert!(first.elapsed() >= Duration::from_secs(1));
        assert!(more.elapsed() < Duration::from_secs(1), "not restarted");
    }
}
