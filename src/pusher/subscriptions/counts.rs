//! `subscription_count` throttling: at most one count per channel per
//! second, the latest one, so churn on a big channel cannot turn each join
//! into a broadcast to every subscriber.
//!
//! Must not: send anything (the subscription task does).

use std::collections::HashMap;
use std::time::{Duration, Instant};

/// A channel's `subscription_count` goes out at most once per
/// [`COUNT_EVERY`]; changes within it are coalesced into the latest count,
/// so churn on a big channel cannot turn each join into a broadcast.
pub(super) const COUNT_EVERY: Duration = Duration::from_secs(1);

type ChannelKey = (usize, Box<str>);

#[derive(Default)]
pub(super) struct CountThrottle {
    sent: HashMap<ChannelKey, Instant>,
    pub(super) pending: HashMap<ChannelKey, u64>,
}

impl CountThrottle {
    /// True if `sockets` may be sent now; otherwise it waits as pending.
    pub(super) fn admit(&mut self, key: ChannelKey, sockets: u64, now: Instant) -> bool {
        if self.sent.len() >= 4096 {
            self.sent
                .retain(|_, at| now.duration_since(*at) < COUNT_EVERY);
        }
        match self.sent.get(&key) {
            Some(at) if now.duration_since(*at) < COUNT_EVERY => {
                self.pending.insert(key, sockets);
                false
            }
            _ => {
                self.pending.remove(&key);
                self.sent.insert(key, now);
                true
            }
        }
    }

    /// Pending counts whose channel may be told again.
    pub(super) fn due(&mut self, now: Instant) -> Vec<(ChannelKey, u64)> {
        let sent = &mut self.sent;
        let mut due = Vec::new();
        self.pending.retain(|key, n| {
            let ready = sent
                .get(key)
                .is_none_or(|at| now.duration_since(*at) >= COUNT_EVERY);
            if ready {
                sent.insert(key.clone(), now);
                due.push((key.clone(), *n));
            }
            !ready
        });
        due
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counts_within_a_second_are_coalesced_into_the_latest() {
        let mut t = CountThrottle::default();
        let start = Instant::now();
        let key = || (0, Box::<str>::from("news"));
        assert!(t.admit(key(), 1, start), "the first count goes at once");
        for n in 2..=50 {
            assert!(!t.admit(key(), n, start + Duration::from_millis(n * 10)));
        }
        assert!(t.due(start + Duration::from_millis(900)).is_empty());
        assert_eq!(t.due(start + COUNT_EVERY), vec![(key(), 50)]);
        assert!(t.pending.is_empty());
        assert!(
            t.admit((0, "other".into()), 7, start),
            "channels are throttled apart"
        );
    }
}
