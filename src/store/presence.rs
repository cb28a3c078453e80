//! Who is where, across every node: Pusher channel occupancy and presence
//! members (Centrifugo's `PresenceManager`). Counts are per socket; a user
//! is a member while any of their sockets on any node is in the channel,
//! so `member_added` / `member_removed` happen once per user, not per node.
//!
//! [`LocalPresence`] keeps it in memory for one node; the Redis one
//! (`redis::presence`) shares it and removes a dead node's part.
//!
//! Must not: hold sockets or send frames (the Pusher layer does).

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use tokio_util::sync::CancellationToken;

use super::{BoxFuture, StoreError};

/// A presence member joining: user id and `user_info` (JSON text).
#[derive(Clone, Debug)]
pub struct Member {
    pub user_id: String,
    pub info: String,
}

/// What a join did.
#[derive(Debug)]
pub enum Joined {
    /// The presence channel already has its maximum of members.
    Full,
    Ok {
        /// The channel was empty before (cluster-wide).
        channel_first: bool,
        /// Sockets in the channel now, cluster-wide.
        sockets: u64,
        /// Presence: the user had no socket there before.
        member_first: bool,
        /// Presence: every member (user id, `user_info` JSON).
        members: Vec<(String, String)>,
    },
}

/// What a leave did.
#[derive(Debug, Default)]
pub struct Left {
    /// The channel has no socket left (cluster-wide).
    pub channel_empty: bool,
    /// Sockets left in the channel, cluster-wide.
    pub sockets: u64,
    /// Presence: the user's last socket there left.
    pub member_last: bool,
}

/// Something that ended without a leave: a dead node's part, removed.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Vanished {
    Member {
        app: String,
        channel: String,
        user_id: String,
    },
    Channel {
        app: String,
        channel: String,
    },
    /// This node's own part was removed (it was cut off too long): its
    /// sockets must join again.
    Us,
}

/// How long a cache channel keeps its last event (Pusher: 30 minutes).
pub const CACHE_TTL_MS: i64 = 30 * 60 * 1000;

/// One occupied channel: name, sockets, presence users.
pub type Occupied = (String, u64, u64);

pub trait Presence: Send + Sync {
    /// A socket of this node joins `channel` of `app` (as `member`).
    fn join<'a>(
        &'a self,
        app: &'a str,
        channel: &'a str,
        member: Option<&'a Member>,
        max_members: usize,
    ) -> BoxFuture<'a, Result<Joined, StoreError>>;

    /// A socket of this node leaves (as the user id it joined with).
    fn leave<'a>(
        &'a self,
        app: &'a str,
        channel: &'a str,
        user_id: Option<&'a str>,
    ) -> BoxFuture<'a, Result<Left, StoreError>>;

    /// Occupied channels of `app` whose name starts with `prefix`, sorted.
    fn channels<'a>(
        &'a self,
        app: &'a str,
        prefix: &'a str,
    ) -> BoxFuture<'a, Result<Vec<Occupied>, StoreError>>;

    /// Presence members of a channel (user id, `user_info`), sorted.
    fn members<'a>(
        &'a self,
        app: &'a str,
        channel: &'a str,
    ) -> BoxFuture<'a, Result<Vec<(String, String)>, StoreError>>;

    /// Keeps `event` (its JSON text) as the last of cache channel `channel`
    /// for [`CACHE_TTL_MS`].
    fn cache_put<'a>(
        &'a self,
        app: &'a str,
        channel: &'a str,
        event: &'a str,
    ) -> BoxFuture<'a, Result<(), StoreError>>;

    /// The last event of a cache channel, if one is kept.
    fn cache_get<'a>(
        &'a self,
        app: &'a str,
        channel: &'a str,
    ) -> BoxFuture<'a, Result<Option<String>, StoreError>>;

    /// Removes dead nodes' parts and reports what vanished, until `stop`.
    fn maintain(
        self: Arc<Self>,
        sink: Arc<dyn Fn(Vanished) + Send + Sync>,
        stop: CancellationToken,
    ) -> BoxFuture<'static, ()>;
}

#[derive(Default)]
struct Channel {
    sockets: u64,
    /// user id → (sockets, user_info).
    members: HashMap<String, (u64, String)>,
}

/// Presence of one node, in memory.
#[derive(Default)]
pub struct LocalPresence {
    channels: Mutex<HashMap<(String, String), Channel>>,
    /// Cache channels' last events: (app, channel) → (event, expires at ms).
    cache: Mutex<HashMap<(String, String), (String, i64)>>,
}

impl LocalPresence {
    fn with<T>(&self, f: impl FnOnce(&mut HashMap<(String, String), Channel>) -> T) -> T {
        f(&mut self.channels.lock().unwrap_or_else(|e| e.into_inner()))
    }
}

fn sorted(members: &HashMap<String, (u64, String)>) -> Vec<(String, String)> {
    let mut v: Vec<_> = members
        .iter()
        .map(|(k, (_, i))| (k.clone(), i.clone()))
        .collect();
    v.sort();
    v
}

impl Presence for LocalPresence {
    fn join<'a>(
        &'a self,
        app: &'a str,
        channel: &'a str,
        member: Option<&'a Member>,
        max_members: usize,
    ) -> BoxFuture<'a, Result<Joined, StoreError>> {
        let joined = self.with(|map| {
            let key = (app.to_string(), channel.to_string());
            if let Some(m) = member
                && map.get(&key).is_some_and(|ch| {
                    !ch.members.contains_key(&m.user_id) && ch.members.len() >= max_members
                })
            {
                return Joined::Full;
            }
            let ch = map.entry(key).or_default();
            ch.sockets += 1;
            let mut member_first = false;
            if let Some(m) = member {
                let e = ch
                    .members
                    .entry(m.user_id.clone())
                    .or_insert((0, m.info.clone()));
                e.0 += 1;
                member_first = e.0 == 1;
            }
            Joined::Ok {
                channel_first: ch.sockets == 1,
                sockets: ch.sockets,
                member_first,
                members: if member.is_some() {
                    sorted(&ch.members)
                } else {
                    Vec::new()
                },
            }
        });
        Box::pin(async move { Ok(joined) })
    }

    fn leave<'a>(
        &'a self,
        app: &'a str,
        channel: &'a str,
        user_id: Option<&'a str>,
    ) -> BoxFuture<'a, Result<Left, StoreError>> {
        let left = self.with(|map| {
            let key = (app.to_string(), channel.to_string());
            let Some(ch) = map.get_mut(&key) else {
                return Left::default();
            };
            ch.sockets = ch.sockets.saturating_sub(1);
            let mut member_last = false;
            if let Some(id) = user_id
                && let Some(m) = ch.members.get_mut(id)
            {
                m.0 -= 1;
                if m.0 == 0 {
                    ch.members.remove(id);
                    member_last = true;
                }
            }
            let sockets = ch.sockets;
            let channel_empty = sockets == 0;
            if channel_empty {
                map.remove(&key);
            }
            Left {
                channel_empty,
                sockets,
                member_last,
            }
        });
        Box::pin(async move { Ok(left) })
    }

    fn channels<'a>(
        &'a self,
        app: &'a str,
        prefix: &'a str,
    ) -> BoxFuture<'a, Result<Vec<Occupied>, StoreError>> {
        let mut out: Vec<Occupied> = self.with(|map| {
            map.iter()
                .filter(|((a, c), _)| a == app && c.starts_with(prefix))
                .map(|((_, c), ch)| (c.clone(), ch.sockets, ch.members.len() as u64))
                .collect()
        });
        out.sort();
        Box::pin(async move { Ok(out) })
    }

    fn members<'a>(
        &'a self,
        app: &'a str,
        channel: &'a str,
    ) -> BoxFuture<'a, Result<Vec<(String, String)>, StoreError>> {
        let members = self.with(|map| {
            map.get(&(app.to_string(), channel.to_string()))
                .map(|ch| sorted(&ch.members))
                .unwrap_or_default()
        });
        Box::pin(async move { Ok(members) })
    }

    fn cache_put<'a>(
        &'a self,
        app: &'a str,
        channel: &'a str,
        event: &'a str,
    ) -> BoxFuture<'a, Result<(), StoreError>> {
        let now = crate::util::now_ms();
        let mut cache = self.cache.lock().unwrap_or_else(|e| e.into_inner());
        // Expired entries go as new ones come, so the map stays bounded by
        // the channels written within one TTL.
        if cache.len() >= 1024 && cache.len().is_power_of_two() {
            cache.retain(|_, (_, until)| *until > now);
        }
        cache.insert(
            (app.to_string(), channel.to_string()),
            (event.to_string(), now + CACHE_TTL_MS),
        );
        Box::pin(async { Ok(()) })
    }

    fn cache_get<'a>(
        &'a self,
        app: &'a str,
        channel: &'a str,
    ) -> BoxFuture<'a, Result<Option<String>, StoreError>> {
        let now = crate::util::now_ms();
        let cache = self.cache.lock().unwrap_or_else(|e| e.into_inner());
        let found = cache
            .get(&(app.to_string(), channel.to_string()))
            .filter(|(_, until)| *until > now)
            .map(|(e, _)| e.clone());
        Box::pin(async move { Ok(found) })
    }

    fn maintain(
        self: Arc<Self>,
        _sink: Arc<dyn Fn(Vanished) + Send + Sync>,
        _stop: CancellationToken,
    ) -> BoxFuture<'static, ()> {
        // One node: nothing of anyone else's to remove.
        Box::pin(async {})
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn m(id: &str) -> Member {
        Member {
            user_id: id.into(),
            info: "{}".into(),
        }
    }

    #[tokio::test]
    async fn a_member_is_added_and_removed_once_whatever_its_sockets() {
        let p = LocalPresence::default();
        let a = m("alice");
        let first = p.join("1", "presence-x", Some(&a), 100).await.unwrap();
        assert!(matches!(
            first,
            Joined::Ok {
                channel_first: true,
                member_first: true,
                ..
            }
        ));
        let second = p.join("1", "presence-x", Some(&a), 100).await.unwrap();
        assert!(matches!(
            second,
            Joined::Ok {
                member_first: false,
                ..
            }
        ));
        let left = p.leave("1", "presence-x", Some("alice")).await.unwrap();
        assert!(!left.member_last && !left.channel_empty);
        let left = p.leave("1", "presence-x", Some("alice")).await.unwrap();
        assert!(left.member_last && left.channel_empty);
        assert!(p.channels("1", "").await.unwrap().is_empty());
    }

    #[tokio::test]
    async fn a_full_presence_channel_refuses_a_new_member_only() {
        let p = LocalPresence::default();
        p.join("1", "presence-x", Some(&m("a")), 1).await.unwrap();
        let full = p.join("1", "presence-x", Some(&m("b")), 1).await.unwrap();
        assert!(matches!(full, Joined::Full));
        let again = p.join("1", "presence-x", Some(&m("a")), 1).await.unwrap();
        assert!(matches!(again, Joined::Ok { .. }));
        assert_eq!(
            p.channels("1", "presence-").await.unwrap(),
            vec![("presence-x".to_string(), 2, 1)]
        );
    }
}
