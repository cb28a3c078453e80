//! Joins and leaves of channels, applied in order by one task per node:
//! counted in the shared presence store first, then the socket is added to
//! (or removed from) this node's channel index, and what changed
//! cluster-wide — a user's first socket in a presence channel, or their
//! last — is announced once, by the node where it happened.
//!
//! One ordered queue means a socket's leave never overtakes its join, and
//! a join is answered (`subscription_succeeded`) with the members as the
//! whole cluster sees them.
//!
//! Must not: parse client frames or check signatures (`socket` did).

use std::collections::{HashSet, VecDeque};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use serde_json::{Map, Value, json};
use tokio::sync::mpsc;

use super::channels::PConn;
use super::protocol::{self, MAX_PRESENCE_MEMBERS};
use crate::App;
use crate::store::presence::{Joined, Member};

/// Joins waiting at most; past it a subscribe is refused (retry), so a
/// slow store cannot make the queue grow without bound. Leaves always queue.
const MAX_PENDING_JOINS: usize = 10_000;
const RETRY: Duration = Duration::from_secs(1);

pub enum Op {
    Join {
        conn: Arc<PConn>,
        channel: Box<str>,
        member: Option<Member>,
    },
    Leave {
        conn: Arc<PConn>,
        channel: Box<str>,
        user_id: Option<Box<str>>,
    },
}

pub struct Subscriptions {
    tx: mpsc::UnboundedSender<Op>,
    rx: Mutex<Option<mpsc::UnboundedReceiver<Op>>>,
    joins: AtomicUsize,
}

impl Default for Subscriptions {
    fn default() -> Self {
        let (tx, rx) = mpsc::unbounded_channel();
        Subscriptions {
            tx,
            rx: Mutex::new(Some(rx)),
            joins: AtomicUsize::new(0),
        }
    }
}

impl Subscriptions {
    /// Queues a join; false if too many wait (the caller refuses it).
    pub fn join(&self, conn: &Arc<PConn>, channel: &str, member: Option<Member>) -> bool {
        if self.joins.fetch_add(1, Ordering::AcqRel) >= MAX_PENDING_JOINS {
            self.joins.fetch_sub(1, Ordering::AcqRel);
            return false;
        }
        let op = Op::Join {
            conn: conn.clone(),
            channel: channel.into(),
            member,
        };
        if self.tx.send(op).is_err() {
            self.joins.fetch_sub(1, Ordering::AcqRel);
            return false;
        }
        true
    }

    pub fn leave(&self, conn: &Arc<PConn>, channel: &str, user_id: Option<&str>) {
        let _ = self.tx.send(Op::Leave {
            conn: conn.clone(),
            channel: channel.into(),
            user_id: user_id.map(Into::into),
        });
    }
}

/// A leave the store did not take yet: (app id, channel, user id).
type Unrecorded = (String, Box<str>, Option<Box<str>>);

/// The node's one subscription task, until shutdown.
pub async fn run(app: Arc<App>) {
    let Some(mut rx) = app
        .pusher
        .subscriptions()
        .rx
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .take()
    else {
        return;
    };
    let mut joined: HashSet<(usize, Box<str>, Box<str>)> = HashSet::new();
    let mut unrecorded: VecDeque<Unrecorded> = VecDeque::new();
    loop {
        let op = tokio::select! {
            _ = app.shutdown.cancelled() => return,
            op = rx.recv() => op,
            _ = tokio::time::sleep(RETRY), if !unrecorded.is_empty() => {
                record_leaves(&app, &mut unrecorded).await;
                continue;
            }
        };
        let Some(op) = op else { return };
        match op {
            Op::Join {
                conn,
                channel,
                member,
            } => {
                app.pusher
                    .subscriptions()
                    .joins
                    .fetch_sub(1, Ordering::AcqRel);
                let key = (conn.app, conn.socket_id.clone(), channel.clone());
                let first = !joined.contains(&key);
                if join(&app, &conn, &channel, member, first).await && first {
                    joined.insert(key);
                }
            }
            Op::Leave {
                conn,
                channel,
                user_id,
            } => {
                if !joined.remove(&(conn.app, conn.socket_id.clone(), channel.clone())) {
                    continue;
                }
                app.pusher.channels().unsubscribe(&conn, &channel);
                let id = app.pusher.apps()[conn.app].id.clone();
                unrecorded.push_back((id, channel, user_id));
                record_leaves(&app, &mut unrecorded).await;
            }
        }
    }
}

/// Counts a join and answers it; true if the socket is in the channel.
/// `first`: not a repeated subscribe of the same socket.
async fn join(
    app: &App,
    conn: &Arc<PConn>,
    channel: &str,
    member: Option<Member>,
    first: bool,
) -> bool {
    let app_id = &app.pusher.apps()[conn.app].id;
    let presence = app.pusher.presence();
    let joined = if first {
        presence
            .join(app_id, channel, member.as_ref(), MAX_PRESENCE_MEMBERS)
            .await
    } else {
        // Answered again, with who is there now; counted once.
        presence
            .members(app_id, channel)
            .await
            .map(|members| Joined::Ok {
                channel_first: false,
                member_first: false,
                members,
            })
    };
    let (member_first, members) = match joined {
        Ok(Joined::Ok {
            member_first,
            members,
            ..
        }) => (member_first, members),
        Ok(Joined::Full) => {
            conn.send(&protocol::subscription_error_frame(
                channel,
                403,
                "the presence channel has its maximum of 100 members",
            ));
            return false;
        }
        Err(e) => {
            tracing::warn!(error = %e, "pusher: a subscription could not be counted; refused");
            conn.send(&protocol::subscription_error_frame(
                channel,
                503,
                "the cluster store is unreachable; retry",
            ));
            return false;
        }
    };
    app.pusher.channels().subscribe(conn, channel);
    let data = match &member {
        Some(_) => presence_data(&members).to_string(),
        None => "{}".to_string(),
    };
    conn.send(&protocol::event_frame(
        "pusher_internal:subscription_succeeded",
        Some(channel),
        &data,
    ));
    if let (Some(m), true) = (member, member_first) {
        let data = json!({ "user_id": m.user_id, "user_info": info(&m.info) }).to_string();
        let text = protocol::event_text("pusher_internal:member_added", Some(channel), &data);
        app.pusher
            .publish(conn.app, channel, text, Some(&conn.socket_id))
            .await;
    }
    true
}

/// Records leaves in order; what the store refuses waits for the next try
/// (a dead node's part is taken back by the others anyway).
async fn record_leaves(app: &App, unrecorded: &mut VecDeque<Unrecorded>) {
    while let Some((app_id, channel, user_id)) = unrecorded.front() {
        let left = app
            .pusher
            .presence()
            .leave(app_id, channel, user_id.as_deref())
            .await;
        match left {
            Ok(left) => {
                if let (true, Some(user), Some(index)) =
                    (left.member_last, user_id, app.pusher.app_by_id(app_id))
                {
                    app.pusher.member_removed(index, channel, user).await;
                }
                unrecorded.pop_front();
            }
            Err(e) => {
                tracing::debug!(error = %e, pending = unrecorded.len(), "pusher: leaves not recorded yet");
                return;
            }
        }
    }
}

fn info(text: &str) -> Value {
    serde_json::from_str(text).unwrap_or_else(|_| json!({}))
}

/// `subscription_succeeded` data of a presence channel.
fn presence_data(members: &[(String, String)]) -> Value {
    let ids: Vec<&str> = members.iter().map(|(id, _)| id.as_str()).collect();
    let hash: Map<String, Value> = members
        .iter()
        .map(|(id, i)| (id.clone(), info(i)))
        .collect();
    json!({ "presence": { "ids": ids, "hash": hash, "count": members.len() } })
}
