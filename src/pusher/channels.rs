//! The sockets of this node, as publishers see them: by channel and by
//! signed-in user, per Pusher app.
//!
//! A publisher writes a frame straight into the socket's kernel buffer,
//! without waiting; a socket whose backlog passes its bound is cut off
//! (4100, the client reconnects with backoff) rather than slowing the others.
//!
//! Must not: parse client input or check signatures (that is `socket`/`http`).

use std::io;
use std::sync::{Arc, Mutex, MutexGuard};
use std::task::{Context, Poll};

use dashmap::DashMap;
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
    /// Who is at the other end (the admin API).
    pub meta: crate::ws::conn::ConnMeta,
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
    pub fn new(
        socket_id: String,
        app: usize,
        stream: TcpStream,
        limit: usize,
        meta: crate::ws::conn::ConnMeta,
    ) -> PConn {
        PConn {
            socket_id: socket_id.into(),
            app,
            meta,
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

/// This node's sockets by channel and by signed-in user, per app. Who is
/// a member cluster-wide is `store::presence`'s; this only routes frames.
#[derive(Default)]
pub struct Channels {
    channels: DashMap<(usize, Box<str>), Vec<Arc<PConn>>>,
    users: DashMap<(usize, Box<str>), Vec<Arc<PConn>>>,
}

impl Channels {
    /// Adds `conn` to a channel's sockets here (idempotent).
    pub fn subscribe(&self, conn: &Arc<PConn>, name: &str) {
        let mut subs = self.channels.entry((conn.app, name.into())).or_default();
        if !subs.iter().any(|c| Arc::ptr_eq(c, conn)) {
            subs.push(conn.clone());
        }
    }

    /// Removes `conn` from a channel's sockets here.
    pub fn unsubscribe(&self, conn: &PConn, name: &str) {
        let key = (conn.app, Box::<str>::from(name));
        if let Some(mut subs) = self.channels.get_mut(&key) {
            subs.retain(|c| !std::ptr::eq(&**c, conn));
        }
        self.channels.remove_if(&key, |_, subs| subs.is_empty());
    }

    /// Sends `frame` to a channel's sockets here but `except` (a socket
    /// id). A user channel reaches every socket signed in as that user,
    /// subscribed yet or not (pusher-js joins it only after
    /// `signin_success`).
    pub fn publish(&self, app: usize, name: &str, frame: &[u8], except: Option<&str>) -> usize {
        let map = if name.starts_with(protocol::USER_CHANNEL_PREFIX) {
            &self.users
        } else {
            &self.channels
        };
        let key_name = name
            .strip_prefix(protocol::USER_CHANNEL_PREFIX)
            .unwrap_or(name);
        let Some(conns) = map.get(&(app, key_name.into())) else {
            return 0;
        };
        let mut sent = 0;
        for c in conns.iter().filter(|c| Some(&*c.socket_id) != except) {
            sent += usize::from(c.send(frame));
        }
        sent
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

    /// The sockets here signed in as `user_id` on `app`.
    pub fn user_sockets(&self, app: usize, user_id: &str) -> Vec<Arc<PConn>> {
        self.users
            .get(&(app, user_id.into()))
            .map(|v| v.clone())
            .unwrap_or_default()
    }

    /// Closes every socket here in a channel with `code`.
    pub fn close_subscribed(&self, code: PusherCode) {
        for subs in self.channels.iter() {
            for c in subs.iter() {
                c.close(code);
            }
        }
    }
}
