//! Who is subscribed where: authenticated sockets by user and by session.
//!
//! Two indexes over the same `Arc<Conn>`s: (issuer, sub) → sockets and
//! (issuer, sid) → sockets, both `DashMap`s so unrelated users never contend.
//! Each socket remembers its position in both vectors (`Conn::user_slot`,
//! `session_slot`), so add and remove are O(1) (`swap_remove` and fix the
//! moved neighbour's slot), even for one user with 15,000 sockets. Empty
//! entries are removed at once.
//!
//! [`Registry::publish`] takes the matching sockets *out* of the indexes and
//! then writes to them outside any map lock, so a logout reaches each socket
//! exactly once and a slow socket never holds up a shard; then it hands them
//! to their re-login window (`ws::window`), in one batch, without waking
//! them. No lock is held across an `.await` anywhere in this module (there
//! is no `.await` here).
//!
//! Must not: decide whether a logout is allowed, or remember logouts (that is
//! `revocation`); it only knows who is connected now.

use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{Arc, Weak};

use dashmap::DashMap;
use dashmap::mapref::entry::Entry;
use prometheus_client::metrics::gauge::Gauge;

use crate::auth::IssuerId;
use crate::ws::conn::{Conn, LogoutFrame, NO_SLOT, Sent};
use crate::ws::window::Windows;

/// A user, scoped by issuer: two issuers may use the same `sub` for different people.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct UserKey {
    pub iss: IssuerId,
    pub sub: Arc<str>,
}

/// A session, scoped by issuer.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct SessionKey {
    pub iss: IssuerId,
    pub sid: Arc<str>,
}

/// What a logout addresses.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Target {
    User(UserKey),
    Session(SessionKey),
}

impl Target {
    /// The session when one is named (the narrower logout), else the user.
    pub fn session_or_user(
        iss: IssuerId,
        sid: &Option<String>,
        sub: &Option<String>,
    ) -> Option<Target> {
        match (sid, sub) {
            (Some(sid), _) => Some(Target::Session(SessionKey {
                iss,
                sid: sid.as_str().into(),
            })),
            (None, Some(sub)) => Some(Target::User(UserKey {
                iss,
                sub: sub.as_str().into(),
            })),
            (None, None) => None,
        }
    }
}

/// How far a publish got: sockets that matched, and those the frame was
/// written to or queued for.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Delivery {
    pub matched: usize,
    pub delivered: usize,
}

pub struct Registry {
    users: DashMap<UserKey, Vec<Arc<Conn>>>,
    sessions: DashMap<SessionKey, Vec<Arc<Conn>>>,
    /// Registered sockets (the `connections` metric).
    gauge: Gauge,
    /// Where logged-out sockets wait for their re-login window to end.
    windows: Arc<Windows>,
}

impl Registry {
    pub fn new(gauge: Gauge, windows: Arc<Windows>) -> Registry {
        Registry {
            users: DashMap::new(),
            sessions: DashMap::new(),
            gauge,
            windows,
        }
    }

    /// Adds a socket to both indexes.
    pub fn register(&self, conn: &Arc<Conn>) {
        insert(&self.users, conn.user.clone(), conn, &conn.user_slot);
        if let Some(sk) = &conn.session {
            insert(&self.sessions, sk.clone(), conn, &conn.session_slot);
        }
        self.gauge.inc();
    }

    /// Removes a socket from both indexes; a no-op for one already removed.
    pub fn unregister(&self, conn: &Conn) {
        if remove(&self.users, &conn.user, conn, |c| &c.user_slot) {
            self.gauge.dec();
        }
        if let Some(sk) = &conn.session {
            remove(&self.sessions, sk, conn, |c| &c.session_slot);
        }
    }

    /// Delivers a logout to every socket of the target and removes them from
    /// the registry, so no later event reaches them again.
    pub fn publish(&self, target: &Target, logout: &Arc<LogoutFrame>) -> Delivery {
        let conns = match target {
            Target::User(k) => self.take_user(k),
            Target::Session(k) => self.take_session(k),
        };
        let mut delivered = 0;
        for c in &conns {
            if c.deliver_logout(logout) == Sent::Yes {
                delivered += 1;
            }
        }
        self.windows.open(&conns);
        Delivery {
            matched: conns.len(),
            delivered,
        }
    }

    fn take_user(&self, key: &UserKey) -> Vec<Arc<Conn>> {
        let Some((_, conns)) = self.users.remove(key) else {
            return Vec::new();
        };
        for c in &conns {
            c.user_slot.store(NO_SLOT, Ordering::Relaxed);
            if let Some(sk) = &c.session {
                remove(&self.sessions, sk, c, |c| &c.session_slot);
            }
        }
        self.gauge.dec_by(conns.len() as i64);
        conns
    }

    fn take_session(&self, key: &SessionKey) -> Vec<Arc<Conn>> {
        let Some((_, conns)) = self.sessions.remove(key) else {
            return Vec::new();
        };
        for c in &conns {
            c.session_slot.store(NO_SLOT, Ordering::Relaxed);
            if remove(&self.users, &c.user, c, |c| &c.user_slot) {
                self.gauge.dec();
            }
        }
        conns
    }

    /// Every registered socket (for the heartbeat sweeper and shutdown). The
    /// snapshot is taken shard by shard; sockets added meanwhile may be missed,
    /// which both callers tolerate. Weak: a sweep that yields must not keep a
    /// socket alive, or a re-login could not take its connection back.
    pub fn snapshot(&self) -> Vec<Weak<Conn>> {
        let mut all = Vec::with_capacity(self.gauge.get().max(0) as usize);
        for entry in self.users.iter() {
            all.extend(entry.value().iter().map(Arc::downgrade));
        }
        all
    }

    /// (user entries, session entries, sockets): all zero when nobody is connected.
    pub fn sizes(&self) -> (usize, usize, usize) {
        let sockets = self.users.iter().map(|e| e.value().len()).sum();
        (self.users.len(), self.sessions.len(), sockets)
    }

    /// The sockets registered for a user now (the admin API).
    pub fn conns_of(&self, key: &UserKey) -> Vec<Arc<Conn>> {
        self.users.get(key).map(|v| v.clone()).unwrap_or_default()
    }

    /// Sockets registered for a user (tests and the dashboard).
    pub fn user_sockets(&self, key: &UserKey) -> usize {
        self.users.get(key).map(|v| v.len()).unwrap_or(0)
    }
}

fn insert<K: std::hash::Hash + Eq>(
    map: &DashMap<K, Vec<Arc<Conn>>>,
    key: K,
    conn: &Arc<Conn>,
    slot: &AtomicU32,
) {
    let mut entry = map.entry(key).or_default();
    slot.store(entry.len() as u32, Ordering::Relaxed);
    entry.push(conn.clone());
}

/// Removes `conn` from the entry at `key` if it is still at its recorded slot.
/// Returns whether it was removed.
fn remove<K, F>(map: &DashMap<K, Vec<Arc<Conn>>>, key: &K, conn: &Conn, slot_of: F) -> bool
where
    K: std::hash::Hash + Eq + Clone,
    F: Fn(&Conn) -> &AtomicU32,
{
    let Entry::Occupied(mut entry) = map.entry(key.clone()) else {
        return false;
    };
    let pos = slot_of(conn).load(Ordering::Relaxed) as usize;
    let conns = entry.get_mut();
    // The id check guards against a slot left over from an entry that was
    // taken by a publish and re-created by newer sockets.
    if pos >= conns.len() || conns[pos].id != conn.id {
        return false;
    }
    conns.swap_remove(pos);
    slot_of(conn).store(NO_SLOT, Ordering::Relaxed);
    if let Some(moved) = conns.get(pos) {
        slot_of(moved).store(pos as u32, Ordering::Relaxed);
    }
    if conns.is_empty() {
        entry.remove();
    }
    true
}
