//! The watermarks a node holds in memory: the latest logout of each user
//! and session it knows of.
//!
//! With the embedded store this is every watermark (loaded at start, so a
//! connect never waits). With Redis it is a cache of the recent ones (what
//! this node recorded or heard on the stream); a miss is looked up in Redis
//! (`revocation`), so a node needs no memory for the millions it will never
//! be asked about.
//!
//! Must not: decide revocation rules (`LogoutEvent::revokes_iat` is the one
//! rule it carries, beside the event).

use std::sync::Arc;

use dashmap::DashMap;

use super::LogoutEvent;
use crate::registry::{SessionKey, Target, UserKey};

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
    use crate::store::Scope;

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
