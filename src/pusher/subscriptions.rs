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
use std::time::{Duration, Instant};

use serde_json::{Map, Value, json};
use tokio::sync::mpsc;

use super::channels::PConn;
use super::protocol::{self, PusherCode};
use crate::App;
use crate::store::presence::{Joined, Left, Member};

mod counts;
use counts::{COUNT_EVERY, CountThrottle};

/// The internal channel every socket of an app with `max_connections`
/// joins, so the app's sockets are counted cluster-wide like a channel's.
/// `#` keeps it out of every client channel name and listing.
pub const CONNECTIONS: &str = "#connections";

/// Joins waiting at most; past it a subscribe is refused (retry), so a
/// slow store cannot make the queue grow without bound. Leaves always queue.
const MAX_PENDING_JOINS: usize = 10_000;
const RETRY: Duration = Duration::from_secs(1);

pub enum Op {
    /// A new socket of an app with a connection quota: counted, then
    /// `established` is sent, or it is refused 4004.
    Connect {
        conn: Arc<PConn>,
        established: Vec<u8>,
        max: u64,
    },
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
    /// Only the subscription task uses it; a mutex keeps `App` `Sync`.
    counts: Mutex<CountThrottle>,
}

impl Default for Subscriptions {
    fn default() -> Self {
        let (tx, rx) = mpsc::unbounded_channel();
        Subscriptions {
            tx,
            rx: Mutex::new(Some(rx)),
            joins: AtomicUsize::new(0),
            counts: Mutex::default(),
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

    /// Queues the count of a new socket (its app has a connection quota).
    pub fn connect(&self, conn: &Arc<PConn>, established: Vec<u8>, max: u64) {
        let _ = self.tx.send(Op::Connect {
            conn: conn.clone(),
            established,
            max,
        });
    }

    fn counts(&self) -> std::sync::MutexGuard<'_, CountThrottle> {
        self.counts.lock().unwrap_or_else(|e| e.into_inner())
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
    let mut flush = tokio::time::interval(COUNT_EVERY / 4);
    flush.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Skip);
    loop {
        let op = tokio::select! {
            _ = app.shutdown.cancelled() => return,
            op = rx.recv() => op,
            _ = tokio::time::sleep(RETRY), if !unrecorded.is_empty() => {
                record_leaves(&app, &mut unrecorded).await;
                continue;
            }
            // An interval, not a fresh sleep: a busy queue must not keep
            // postponing what is pending.
            _ = flush.tick(), if counts_pending(&app) => {
                let due = app.pusher.subscriptions().counts().due(Instant::now());
                for ((index, channel), n) in due {
                    send_count(&app, index, &channel, n).await;
                }
                continue;
            }
        };
        let Some(op) = op else { return };
        match op {
            Op::Connect {
                conn,
                established,
                max,
            } => {
                if connect(&app, &conn, &established, max, &mut unrecorded).await {
                    joined.insert((conn.app, conn.socket_id.clone(), CONNECTIONS.into()));
                }
            }
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

/// Counts a new socket against its app's quota; true if it is in.
async fn connect(
    app: &App,
    conn: &Arc<PConn>,
    established: &[u8],
    max: u64,
    unrecorded: &mut VecDeque<Unrecorded>,
) -> bool {
    let app_id = &app.pusher.apps()[conn.app].id;
    match app
        .pusher
        .presence()
        .join(app_id, CONNECTIONS, None, usize::MAX)
        .await
    {
        Ok(Joined::Ok { sockets, .. }) if sockets <= max => {
            conn.send(established);
            true
        }
        Ok(_) => {
            unrecorded.push_back((app_id.clone(), CONNECTIONS.into(), None));
            record_leaves(app, unrecorded).await;
            conn.send(&protocol::error_frame(
                Some(PusherCode::OverQuota.code()),
                &format!("the app is at its maximum of {max} connections"),
            ));
            conn.close(PusherCode::OverQuota);
            false
        }
        Err(e) => {
            tracing::warn!(error = %e, "pusher: a connection could not be counted; refused");
            conn.send(&protocol::error_frame(
                Some(PusherCode::OverCapacity.code()),
                "the cluster store is unreachable; reconnect later",
            ));
            conn.close(PusherCode::OverCapacity);
            false
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
    let settings = &app.pusher.apps()[conn.app];
    let app_id = &settings.id;
    let presence = app.pusher.presence();
    let joined = if first {
        presence
            .join(
                app_id,
                channel,
                member.as_ref(),
                settings.max_presence_members,
            )
            .await
    } else {
        // Answered again, with who is there now; counted once.
        presence
            .members(app_id, channel)
            .await
            .map(|members| Joined::Ok {
                channel_first: false,
                sockets: 0,
                member_first: false,
                members,
            })
    };
    let (channel_first, sockets, member_first, members) = match joined {
        Ok(Joined::Ok {
            channel_first,
            sockets,
            member_first,
            members,
        }) => (channel_first, sockets, member_first, members),
        Ok(Joined::Full) => {
            conn.send(&protocol::subscription_error_frame(
                channel,
                403,
                &format!(
                    "the presence channel has its maximum of {} members",
                    settings.max_presence_members
                ),
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
    if protocol::is_cache(channel) {
        replay(app, conn, channel).await;
    }
    if channel_first {
        app.pusher
            .webhook(conn.app, "channel_occupied", channel, json!({}));
    }
    if let (Some(m), true) = (&member, member_first) {
        app.pusher.webhook(
            conn.app,
            "member_added",
            channel,
            json!({ "user_id": m.user_id }),
        );
        let data = json!({ "user_id": m.user_id, "user_info": info(&m.info) }).to_string();
        let text = protocol::event_text("pusher_internal:member_added", Some(channel), &data);
        app.pusher
            .publish(conn.app, channel, text, Some(&conn.socket_id))
            .await;
    }
    if first && member.is_none() {
        subscription_count(app, conn.app, channel, sockets).await;
    }
    true
}

/// A cache channel's last event to its new subscriber, or `pusher:cache_miss`.
async fn replay(app: &App, conn: &PConn, channel: &str) {
    let id = &app.pusher.apps()[conn.app].id;
    match app.pusher.presence().cache_get(id, channel).await {
        Ok(Some(text)) => {
            conn.send(&crate::ws::codec::text_frame(&text));
        }
        Ok(None) => {
            conn.send(&protocol::event_frame(
                "pusher:cache_miss",
                Some(channel),
                "{}",
            ));
            app.pusher
                .webhook(conn.app, "cache_miss", channel, json!({}));
        }
        Err(e) => {
            tracing::warn!(error = %e, "pusher: a cache channel's event could not be read");
            conn.send(&protocol::event_frame(
                "pusher:cache_miss",
                Some(channel),
                "{}",
            ));
        }
    }
}

/// Tells a public or private channel's sockets how many they are, if the
/// app asked for it (Pusher's `subscription_count`; not on presence).
async fn subscription_count(app: &App, index: usize, channel: &str, sockets: u64) {
    if !app.pusher.apps()[index].subscription_count
        || sockets == 0
        || channel.starts_with('#')
        || channel.starts_with("presence-")
    {
        return;
    }
    let key = (index, Box::<str>::from(channel));
    if app
        .pusher
        .subscriptions()
        .counts()
        .admit(key, sockets, Instant::now())
    {
        send_count(app, index, channel, sockets).await;
    }
}

fn counts_pending(app: &App) -> bool {
    !app.pusher.subscriptions().counts().pending.is_empty()
}

async fn send_count(app: &App, index: usize, channel: &str, sockets: u64) {
    let data = json!({ "subscription_count": sockets }).to_string();
    let text = protocol::event_text("pusher_internal:subscription_count", Some(channel), &data);
    app.pusher.publish(index, channel, text, None).await;
    app.pusher.webhook(
        index,
        "subscription_count",
        channel,
        json!({ "subscription_count": sockets }),
    );
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
                if let Some(index) = app.pusher.app_by_id(app_id) {
                    announce_leave(app, index, channel, user_id.as_deref(), &left).await;
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

/// What a recorded leave changed, told to the channel and the webhooks.
async fn announce_leave(app: &App, index: usize, channel: &str, user: Option<&str>, left: &Left) {
    if let (true, Some(user)) = (left.member_last, user) {
        app.pusher
            .webhook(index, "member_removed", channel, json!({ "user_id": user }));
        app.pusher.member_removed(index, channel, user).await;
    }
    if left.channel_empty {
        app.pusher
            .webhook(index, "channel_vacated", channel, json!({}));
    } else if user.is_none() {
        subscription_count(app, index, channel, left.sockets).await;
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
