//! Who is subscribed to what, per Pusher app: channels (with presence
//! members) and signed-in users, and the sockets as publishers see them.
//!
//! A publisher writes a frame straight into the socket's kernel buffer,
//! without waiting; a socket whose backlog passes its bound is cut off
//! (4100, the client reconnects with backoff) rather than slowing the others.
//!
//! Must not: parse client input or check signatures (that is `socket`/`http`).

use std::collections::HashMap;
use std::io;
use std::sync::{Arc, Mutex, MutexGuard};
use std::task::{Context, Poll};

use dashmap::DashMap;
use serde_json::{Value, json};
use tokio::net::TcpStream;

use super::protocol::{self, PusherCode};
use crate::ws::conn::{Backlog, Wrote};

/// One socket, as channels, the HTTP API and its own task see it. Frames
/// are written straight into the kernel under `out`'s lock (so they never
/// interleave) through the same [`Backlog`] as `/v1/ws` sockets: what the
/// kernel does not take waits, bounded by `limit`, for the socket task to
/// flush. The lock is never held across an await.
pub struct PConn {
    pub socket_id: Box<str>,
    pub app: usize,
    pub stream: TcpStream,
    out: Mutex<Outbox>,
    limit: usize,
}

struct Outbox {
    backlog: Backlog,
    /// Set once: the socket task closes with this code (after the backlog,
    /// except for 4100, whose backlog is dropped).
    close: Option<PusherCode>,
}

impl PConn {
    pub fn new(socket_id: String, app: usize, stream: TcpStream, limit: usize) -> PConn {
        PConn {
            socket_id: socket_id.into(),
            app,
            stream,
            out: Mutex::new(Outbox {
                backlog: Backlog::default(),
                close: None,
            }),
            limit,
        }
    }

    fn lock(&self) -> MutexGuard<'_, Outbox> {
        self.out.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Writes a frame (or queues it behind earlier bytes); a backlog over
    /// the limit cuts the socket off (4100).
    pub fn send(&self, frame: &[u8]) -> bool {
        let mut out = self.lock();
        if out.close.is_some() {
            return false;
        }
        match out.backlog.write(&self.stream, frame, self.limit) {
            Wrote::Yes => true,
            Wrote::OverLimit => {
                out.close = Some(PusherCode::OverCapacity);
                false
            }
            Wrote::Broken => {
                out.close = Some(PusherCode::Restart);
                false
            }
        }
    }

    /// Asks the socket task to close with `code`; the first reason wins.
    pub fn close(&self, code: PusherCode) {
        let mut out = self.lock();
        if out.close.is_none() {
            out.close = Some(code);
            if code == PusherCode::OverCapacity {
                out.backlog.drop_pending();
            }
        }
        out.backlog.wake();
    }

    /// Ready once someone wanted the socket task's attention; else parks it.
    pub fn poll_woken(&self, cx: &Context<'_>) -> Poll<()> {
        self.lock().backlog.poll_woken(cx)
    }

    /// (bytes waiting, close requested).
    pub fn state(&self) -> (bool, Option<PusherCode>) {
        let out = self.lock();
        (out.backlog.has_pending(), out.close)
    }

    /// Writes what the kernel takes of the backlog; true if bytes remain.
    pub fn flush(&self) -> io::Result<bool> {
        self.lock().backlog.flush(&self.stream)
    }

    /// The bytes still waiting, taken (at close); none for a 4100.
    pub fn take_pending(&self) -> Vec<u8> {
        self.lock().backlog.take()
    }
}

#[derive(Default)]
struct Channel {
    subs: Vec<Arc<PConn>>,
    /// Presence: user id → (sockets of that user here, user_info).
    members: HashMap<Box<str>, (usize, Value)>,
}

/// What a subscription did.
pub struct Subscribed {
    /// Presence: the `subscription_succeeded` data (ids, hash, count).
    pub presence: Option<Value>,
}

#[derive(Default)]
pub struct Channels {
    channels: DashMap<(usize, Box<str>), Channel>,
    users: DashMap<(usize, Box<str>), Vec<Arc<PConn>>>,
}

impl Channels {
    /// Adds `conn` to a channel (idempotent); for presence, as `member`
    /// (user id, user info), telling the others if the user is new there.
    /// `None` if the presence channel already has its maximum of members.
    pub fn subscribe(
        &self,
        conn: &Arc<PConn>,
        name: &str,
        member: Option<(&str, Value)>,
    ) -> Option<Subscribed> {
        let mut ch = self.channels.entry((conn.app, name.into())).or_default();
        if let Some((id, _)) = &member {
            let full = ch.members.len() >= protocol::MAX_PRESENCE_MEMBERS;
            if full && !ch.members.contains_key(*id) {
                drop(ch);
                self.channels
                    .remove_if(&(conn.app, name.into()), |_, ch| ch.subs.is_empty());
                return None;
            }
        }
        if !ch.subs.iter().any(|c| Arc::ptr_eq(c, conn)) {
            ch.subs.push(conn.clone());
            if let Some((id, info)) = &member {
                let entry = ch.members.entry((*id).into()).or_insert((0, info.clone()));
                entry.0 += 1;
                if entry.0 == 1 {
                    let data = json!({ "user_id": id, "user_info": info }).to_string();
                    let frame =
                        protocol::event_frame("pusher_internal:member_added", Some(name), &data);
                    for other in ch.subs.iter().filter(|c| !Arc::ptr_eq(c, conn)) {
                        other.send(&frame);
                    }
                }
            }
        }
        let presence = member.map(|_| {
            let ids: Vec<&str> = ch.members.keys().map(|k| &**k).collect();
            let hash: serde_json::Map<String, Value> = ch
                .members
                .iter()
                .map(|(k, (_, info))| (k.to_string(), info.clone()))
                .collect();
            json!({ "presence": { "ids": ids, "hash": hash, "count": ch.members.len() } })
        });
        Some(Subscribed { presence })
    }

    /// Removes `conn` from a channel; for presence (`member` = its user id),
    /// tells the others when that user's last socket there left.
    pub fn unsubscribe(&self, conn: &PConn, name: &str, member: Option<&str>) {
        let key = (conn.app, Box::<str>::from(name));
        if let Some(mut ch) = self.channels.get_mut(&key) {
            let before = ch.subs.len();
            ch.subs.retain(|c| !std::ptr::eq(&**c, conn));
            if let (Some(id), true) = (member, ch.subs.len() < before) {
                let gone = match ch.members.get_mut(id) {
                    Some(m) => {
                        m.0 -= 1;
                        m.0 == 0
                    }
                    None => false,
                };
                if gone {
                    ch.members.remove(id);
                    let data = json!({ "user_id": id }).to_string();
                    let frame =
                        protocol::event_frame("pusher_internal:member_removed", Some(name), &data);
                    for other in &ch.subs {
                        other.send(&frame);
                    }
                }
            }
        }
        self.channels.remove_if(&key, |_, ch| ch.subs.is_empty());
    }

    /// Sends `frame` to a channel's sockets but `except` (a socket id). A
    /// user channel reaches every socket signed in as that user, subscribed
    /// yet or not (pusher-js joins it only after `signin_success`).
    pub fn publish(&self, app: usize, name: &str, frame: &[u8], except: Option<&str>) -> usize {
        if let Some(id) = name.strip_prefix(protocol::USER_CHANNEL_PREFIX) {
            let Some(conns) = self.users.get(&(app, id.into())) else {
                return 0;
            };
            let mut sent = 0;
            for c in conns.iter().filter(|c| Some(&*c.socket_id) != except) {
                sent += usize::from(c.send(frame));
            }
            return sent;
        }
        let Some(ch) = self.channels.get(&(app, name.into())) else {
            return 0;
        };
        let mut sent = 0;
        for c in ch.subs.iter().filter(|c| Some(&*c.socket_id) != except) {
            sent += usize::from(c.send(frame));
        }
        sent
    }

    /// Occupied channels of `app` starting with `prefix`: (name, sockets,
    /// presence users).
    pub fn list(&self, app: usize, prefix: &str) -> Vec<(String, usize, usize)> {
        let mut out: Vec<_> = self
            .channels
            .iter()
            .filter(|e| e.key().0 == app && e.key().1.starts_with(prefix))
            .map(|e| (e.key().1.to_string(), e.subs.len(), e.members.len()))
            .collect();
        out.sort();
        out
    }

    /// (sockets, presence users) of one channel; `None` if unoccupied.
    pub fn info(&self, app: usize, name: &str) -> Option<(usize, usize)> {
        self.channels
            .get(&(app, name.into()))
            .map(|ch| (ch.subs.len(), ch.members.len()))
    }

    /// Presence user ids of a channel.
    pub fn members(&self, app: usize, name: &str) -> Vec<String> {
        let mut ids: Vec<String> = self
            .channels
            .get(&(app, name.into()))
            .map(|ch| ch.members.keys().map(|k| k.to_string()).collect())
            .unwrap_or_default();
        ids.sort();
        ids
    }

    pub fn sign_in(&self, conn: &Arc<PConn>, user_id: &str) {
        self.users
            .entry((conn.app, user_id.into()))
            .or_default()
            .push(conn.clone());
    }

    pub fn sign_out(&self, conn: &PConn, user_id: &str) {
        let key = (conn.app, Box::<str>::from(user_id));
        if let Some(mut v) = self.users.get_mut(&key) {
            v.retain(|c| !std::ptr::eq(&**c, conn));
        }
        self.users.remove_if(&key, |_, v| v.is_empty());
    }

    /// The sockets signed in as `user_id` on `app`.
    pub fn user_sockets(&self, app: usize, user_id: &str) -> Vec<Arc<PConn>> {
        self.users
            .get(&(app, user_id.into()))
            .map(|v| v.clone())
            .unwrap_or_default()
    }
}
