//! One authenticated socket as the rest of the hub sees it.
//!
//! A `Conn` is shared between its socket task (which reads) and publishers
//! (the fan-out, the heartbeat sweeper, shutdown), which write. A publisher
//! writes a frame straight into the kernel with `try_write` when nothing is
//! waiting — the common case — so delivering a logout wakes no task. Only
//! when the kernel buffer is full does the rest go to `pending`, bounded by
//! `ws.outbound_buffer_bytes`; past that the socket is cut off as a slow
//! consumer and nobody else waits for it.
//!
//! Frames never interleave: every write, direct or deferred, happens under
//! `out`'s lock. That lock is a std mutex because it is never held across an
//! await; the critical section is one non-blocking syscall at most.
//!
//! Must not: parse input or decide policy (that is `socket` and `registry`).

use std::io::{self, Read};
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::task::{Context, Poll, Waker};

use tokio::io::Interest;
use tokio::net::TcpStream;

use crate::error::CloseCode;
use crate::registry::{SessionKey, UserKey};

/// Slot value meaning "not in that registry index".
pub const NO_SLOT: u32 = u32::MAX;

/// A logout as it goes over the wire: the event id (for acks) and the
/// complete frame, built once and shared by every socket it reaches.
#[derive(Debug)]
pub struct LogoutFrame {
    pub event_id: String,
    pub frame: Vec<u8>,
}

/// Reads what the socket holds, up to `buf.len()` bytes, without waiting.
///
/// A read that returns less than `buf` has emptied the kernel's buffer, so
/// the stream's readiness is cleared right there and the next poll waits for
/// the next edge. `TcpStream::try_read` clears it only on `EAGAIN`, which
/// costs a second `recvfrom` after every short read: one syscall per client
/// message (a logout's ack), 3 per trigger in the benchmark. Tokio's own
/// `poll_read` does the same as this. Clearing is safe against a race: the
/// readiness is cleared only if no new event arrived since it was observed.
pub fn read_available(stream: &TcpStream, buf: &mut [u8]) -> io::Result<usize> {
    let mut short = 0;
    let read = stream.try_io(Interest::READABLE, || {
        let n = (&*socket2::SockRef::from(stream)).read(buf)?;
        if n > 0 && n < buf.len() {
            // Report "would block" so that tokio clears the readiness.
            short = n;
            return Err(io::ErrorKind::WouldBlock.into());
        }
        Ok(n)
    });
    match read {
        Err(e) if e.kind() == io::ErrorKind::WouldBlock && short > 0 => Ok(short),
        other => other,
    }
}

/// Where the socket is in its life, as publishers need to know it.
#[derive(Debug, Clone)]
pub enum State {
    Open,
    /// A logout was delivered; the socket waits for the ack, then closes 4000.
    LoggedOut(Arc<LogoutFrame>),
    /// The hub decided to close with this code; the socket task does it.
    Closing(CloseCode),
}

/// What publishers write through, shared by every socket kind (`/v1/ws`
/// and Pusher's): bytes the kernel has not taken yet, and the parked socket
/// task. Always used under its owner's lock.
#[derive(Default)]
pub struct Backlog {
    /// Bytes accepted for this socket but not yet taken by the kernel.
    pending: Vec<u8>,
    /// The socket task, parked; woken when `pending` or its owner's state
    /// changes. (A waker under the lock the writer takes anyway is 16 bytes;
    /// a `Notify` plus its future in the task would be ten times that.)
    waker: Option<Waker>,
    /// A wake-up happened that the task has not seen yet.
    woken: bool,
}

/// What became of a frame handed to [`Backlog::write`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Wrote {
    /// Written to the kernel or queued behind earlier bytes.
    Yes,
    /// The backlog would pass its limit: what waited is dropped, and the
    /// owner cuts the socket off.
    OverLimit,
    /// The connection is broken.
    Broken,
}

impl Backlog {
    /// Marks the socket task as woken and wakes it.
    pub fn wake(&mut self) {
        self.woken = true;
        if let Some(w) = self.waker.take() {
            w.wake();
        }
    }

    /// Parks the socket task (keeps the waker if it is the same task's).
    pub fn park(&mut self, cx: &Context<'_>) {
        self.woken = false;
        match &self.waker {
            Some(w) if w.will_wake(cx.waker()) => {}
            _ => self.waker = Some(cx.waker().clone()),
        }
    }

    /// Ready once someone wanted the socket task's attention since the last
    /// call; otherwise parks the task.
    pub fn poll_woken(&mut self, cx: &Context<'_>) -> Poll<()> {
        if self.woken {
            self.woken = false;
            Poll::Ready(())
        } else {
            self.park(cx);
            Poll::Pending
        }
    }

    pub fn has_pending(&self) -> bool {
        !self.pending.is_empty()
    }

    /// Writes `frame` straight into the kernel when nothing waits, else
    /// queues it behind the rest, up to `limit` bytes waiting. The task is
    /// woken whenever it has something to do (bytes to flush, a cut-off).
    pub fn write(&mut self, stream: &TcpStream, frame: &[u8], limit: usize) -> Wrote {
        if !self.pending.is_empty() {
            if self.pending.len() + frame.len() > limit {
                self.drop_pending();
                self.wake();
                return Wrote::OverLimit;
            }
            // The task already waits for writability.
            self.pending.extend_from_slice(frame);
            return Wrote::Yes;
        }
        let rest = match stream.try_write(frame) {
            Ok(n) if n == frame.len() => return Wrote::Yes,
            Ok(n) => &frame[n..],
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => frame,
            Err(_) => {
                // The peer is gone; the socket task notices on its next read.
                self.wake();
                return Wrote::Broken;
            }
        };
        self.wake();
        if rest.len() > limit {
            return Wrote::OverLimit;
        }
        self.pending.extend_from_slice(rest);
        Wrote::Yes
    }

    /// Writes as much of `pending` as the kernel takes. Returns whether
    /// bytes remain.
    pub fn flush(&mut self, stream: &TcpStream) -> io::Result<bool> {
        while !self.pending.is_empty() {
            match stream.try_write(&self.pending) {
                Ok(n) => {
                    self.pending.drain(..n);
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return Ok(true),
                Err(e) => return Err(e),
            }
        }
        self.drop_pending();
        Ok(false)
    }

    /// The bytes still waiting, taken.
    pub fn take(&mut self) -> Vec<u8> {
        std::mem::take(&mut self.pending)
    }

    /// Frees the pending buffer's memory, not just its contents: an idle
    /// socket should own no buffer.
    pub fn drop_pending(&mut self) {
        self.pending = Vec::new();
    }
}

pub struct Outbox {
    pub backlog: Backlog,
    pub state: State,
}

impl Outbox {
    fn wake(&mut self) {
        self.backlog.wake();
    }

    /// Parks the socket task.
    pub fn park(&mut self, cx: &Context<'_>) {
        self.backlog.park(cx);
    }
}

/// Who is at the other end of a socket, for the admin API: the client's
/// address (behind trusted proxies, the forwarded one), its `Origin` and
/// `User-Agent`, and when it connected. Kept inline in the socket (40
/// bytes): origin and user agent are one interned string, shared by every
/// socket of the same page and browser.
#[derive(Debug, Clone)]
pub struct ConnMeta {
    pub ip: std::net::IpAddr,
    /// `{origin}\n{user agent}`, `\0` for a missing one.
    client: Arc<str>,
    since_s: u32,
}

const ABSENT: &str = "\0";

impl ConnMeta {
    pub fn new(
        ip: std::net::IpAddr,
        origin: Option<&str>,
        user_agent: Option<&str>,
        interner: &crate::util::Interner,
    ) -> ConnMeta {
        let client = format!(
            "{}\n{}",
            origin.unwrap_or(ABSENT),
            user_agent.unwrap_or(ABSENT)
        );
        ConnMeta {
            ip,
            client: interner.get(&client),
            since_s: crate::util::now_secs().min(u32::MAX as u64) as u32,
        }
    }

    fn parts(&self) -> (Option<&str>, Option<&str>) {
        fn present(s: &str) -> Option<&str> {
            (s != ABSENT).then_some(s)
        }
        match self.client.split_once('\n') {
            Some((o, u)) => (present(o), present(u)),
            // Past the interner's bounds it keeps one stand-in for both.
            None => (Some(&self.client), Some(&self.client)),
        }
    }

    pub fn origin(&self) -> Option<&str> {
        self.parts().0
    }

    pub fn user_agent(&self) -> Option<&str> {
        self.parts().1
    }

    pub fn since_ms(&self) -> i64 {
        i64::from(self.since_s) * 1000
    }
}

pub struct Conn {
    /// Unique within this process; shown to the client as `connection_id`.
    pub id: u64,
    pub meta: ConnMeta,
    pub stream: TcpStream,
    out: Mutex<Outbox>,
    pub user: UserKey,
    pub session: Option<SessionKey>,
    /// The token's `iat` and `exp` (seconds since the epoch).
    pub iat: i64,
    pub exp: i64,
    /// Positions in the registry's per-user and per-session vectors; changed
    /// only under the lock of the registry entry they index.
    pub user_slot: AtomicU32,
    pub session_slot: AtomicU32,
    /// Coarse clock (`Clock::now`) of the last frame received; read by the sweeper.
    pub last_seen: AtomicU32,
    out_limit: u32,
}

/// What happened to a frame handed to [`Conn::send`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Sent {
    /// Written to the kernel or queued behind earlier bytes.
    Yes,
    /// Not sent: the socket is closing, broken or was just cut off.
    No,
}

impl Conn {
    #[allow(clippy::too_many_arguments)]
    pub fn new(
        id: u64,
        meta: ConnMeta,
        stream: TcpStream,
        user: UserKey,
        session: Option<SessionKey>,
        iat: i64,
        exp: i64,
        out_limit: usize,
        now: u32,
    ) -> Conn {
        Conn {
            id,
            meta,
            stream,
            out: Mutex::new(Outbox {
                backlog: Backlog::default(),
                state: State::Open,
            }),
            user,
            session,
            iat,
            exp,
            user_slot: AtomicU32::new(NO_SLOT),
            session_slot: AtomicU32::new(NO_SLOT),
            last_seen: AtomicU32::new(now),
            out_limit: out_limit.min(u32::MAX as usize) as u32,
        }
    }

    pub fn lock(&self) -> MutexGuard<'_, Outbox> {
        // A poisoned lock means a panic mid-write; the bytes are still
        // consistent enough to close the socket, which is all that follows.
        self.out.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Sends a frame if the socket is open (or logged out: pongs still flow).
    pub fn send(&self, frame: &[u8]) -> Sent {
        let mut out = self.lock();
        if matches!(out.state, State::Closing(_)) {
            return Sent::No;
        }
        self.write_locked(&mut out, frame)
    }

    /// Sends a frame only while the socket is still `Open`; used for `ready`,
    /// so a logout that won the race is never followed by a `ready`.
    pub fn send_if_open(&self, frame: &[u8]) -> Sent {
        let mut out = self.lock();
        if !matches!(out.state, State::Open) {
            return Sent::No;
        }
        self.write_locked(&mut out, frame)
    }

    /// Delivers a logout once: the first logout wins, later ones are ignored.
    pub fn deliver_logout(&self, logout: &Arc<LogoutFrame>) -> Sent {
        let mut out = self.lock();
        if !matches!(out.state, State::Open) {
            return Sent::No;
        }
        out.state = State::LoggedOut(logout.clone());
        // No wake-up: a logged-out socket reads on as before, and the
        // publisher starts its re-login window. (Bytes left unwritten wake it
        // to flush them.) Waking 15,000 parked sockets of one user at once
        // would spawn 15,000 short tasks in one burst.
        self.write_locked(&mut out, &logout.frame)
    }

    /// Asks the socket task to close with `code`. A socket already logged out
    /// closes with 4000 whatever the reason, so the client does not reconnect
    /// with its revoked token; one already closing keeps its code.
    pub fn close(&self, code: CloseCode) {
        let mut out = self.lock();
        out.state = match out.state {
            State::Closing(_) => return,
            State::LoggedOut(_) => State::Closing(CloseCode::LoggedOut),
            State::Open => State::Closing(code),
        };
        out.wake();
    }

    /// The event this socket was logged out with, if any.
    pub fn logged_out_with(&self) -> Option<Arc<LogoutFrame>> {
        match &self.lock().state {
            State::LoggedOut(f) => Some(f.clone()),
            _ => None,
        }
    }

    fn write_locked(&self, out: &mut Outbox, frame: &[u8]) -> Sent {
        match out
            .backlog
            .write(&self.stream, frame, self.out_limit as usize)
        {
            Wrote::Yes => Sent::Yes,
            Wrote::OverLimit => {
                out.state = State::Closing(CloseCode::SlowConsumer);
                Sent::No
            }
            Wrote::Broken => {
                out.state = State::Closing(CloseCode::InternalError);
                Sent::No
            }
        }
    }

    /// Writes as much of the backlog as the kernel takes. Called by the
    /// socket task when the stream is writable. Returns whether bytes remain.
    pub fn flush(&self) -> io::Result<bool> {
        self.lock().backlog.flush(&self.stream)
    }

    /// Takes the stream back, with any bytes still waiting to be written.
    pub fn into_parts(self) -> (TcpStream, Vec<u8>) {
        let mut out = self.out.into_inner().unwrap_or_else(|e| e.into_inner());
        (self.stream, out.backlog.take())
    }

    pub fn touch(&self, now: u32) {
        self.last_seen.store(now, Ordering::Relaxed);
    }
}
