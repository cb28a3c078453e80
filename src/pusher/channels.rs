//! Who is subscribed to what, per Pusher app: channels (with presence
//! members) and signed-in users, and the sockets as publishers see them.
//!
//! A publisher never writes to a socket: it hands the frame to the socket's
//! bounded outbox without waiting; a socket whose outbox is full is cut off
//! (4100, the client reconnects with backoff) rather than slowing the others.
//!
//! Must not: parse client input or check signatures (that is `socket`/`http`).

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicU16, Ordering};

use bytes::Bytes;
use dashmap::DashMap;
use serde_json::{Value, json};
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

use super::protocol::{self, PusherCode};

/// One socket, as channels and the HTTP API see it.
pub struct PConn {
    pub socket_id: Box<str>,
    pub app: usize,
    outbox: mpsc::Sender<Bytes>,
    stop: CancellationToken,
    stop_code: AtomicU16,
}

impl PConn {
    pub fn new(socket_id: String, app: usize, outbox: mpsc::Sender<Bytes>) -> PConn {
        PConn {
            socket_id: socket_id.into(),
            app,
            outbox,
            stop: CancellationToken::new(),
            stop_code: AtomicU16::new(0),
        }
    }

    /// Queues a frame; a full outbox cuts the socket off.
    pub fn send(&self, frame: Bytes) -> bool {
        match self.outbox.try_send(frame) {
            Ok(()) => true,
            Err(mpsc::error::TrySendError::Full(_)) => {
                self.close(PusherCode::OverCapacity);
                false
            }
            Err(mpsc::error::TrySendError::Closed(_)) => false,
        }
    }

    /// Asks the socket task to close (after what is queued) with `code`;
    /// the first reason wins.
    pub fn close(&self, code: PusherCode) {
        let _ =
            self.stop_code
                .compare_exchange(0, code.code(), Ordering::AcqRel, Ordering::Acquire);
        self.stop.cancel();
    }

    pub fn stopped(&self) -> &CancellationToken {
        &self.stop
    }

    pub fn stop_code(&self) -> u16 {
        self.stop_code.load(Ordering::Acquire)
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
    pub fn subscribe(
        &self,
        conn: &Arc<PConn>,
        name: &str,
        member: Option<(&str, Value)>,
    ) -> Subscribed {
        let mut ch = self.channels.entry((conn.app, name.into())).or_default();
        if !ch.subs.iter().any(|c| Arc::ptr_eq(c, conn)) {
            ch.subs.push(conn.clone());
            if let Some((id, info)) = &member {
                let entry = ch.members.entry((*id).into()).or_insert((0, info.clone()));
                entry.0 += 1;
                if entry.0 == 1 {
                    let data = json!({ "user_id": id, "user_info": info }).to_string();
                    let frame: Bytes =
                        protocol::event_frame("pusher_internal:member_added", Some(name), &data)
                            .into();
                    for other in ch.subs.iter().filter(|c| !Arc::ptr_eq(c, conn)) {
                        other.send(frame.clone());
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
        Subscribed { presence }
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
                    let frame: Bytes =
                        protocol::event_frame("pusher_internal:member_removed", Some(name), &data)
                            .into();
                    for other in &ch.subs {
                        other.send(frame.clone());
                    }
                }
            }
        }
        self.channels.remove_if(&key, |_, ch| ch.subs.is_empty());
    }

    /// Sends `frame` to a channel's sockets but `except` (a socket id). A
    /// user channel reaches every socket signed in as that user, subscribed
    /// yet or not (pusher-js joins it only after `signin_success`).
    pub fn publish(&self, app: usize, name: &str, frame: &Bytes, except: Option<&str>) -> usize {
        if let Some(id) = name.strip_prefix(protocol::USER_CHANNEL_PREFIX) {
            let Some(conns) = self.users.get(&(app, id.into())) else {
                return 0;
            };
            let mut sent = 0;
            for c in conns.iter().filter(|c| Some(&*c.socket_id) != except) {
                sent += usize::from(c.send(frame.clone()));
            }
            return sent;
        }
        let Some(ch) = self.channels.get(&(app, name.into())) else {
            return 0;
        };
        let mut sent = 0;
        for c in ch.subs.iter().filter(|c| Some(&*c.socket_id) != except) {
            sent += usize::from(c.send(frame.clone()));
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
