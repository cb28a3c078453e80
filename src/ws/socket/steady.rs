//! A registered socket's steady state: flush what publishers queued, read
//! and decode what came (acks, pings, a re-login's `auth`), and stay
//! parked otherwise. Polled by the socket's `Parked` waker, never as a task.
//!
//! Must not: await, or keep a read buffer between frames.

use std::io;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use super::Exit;
use crate::App;
use crate::error::CloseCode;
use crate::util::{self, Budget};
use crate::ws::codec::{self, Decoder, Flow, Message, Role};
use crate::ws::conn::{Conn, LogoutFrame, Sent, State, read_available};
use crate::ws::partial::Held;
use crate::ws::protocol::{self, ClientMessage};

/// Read chunk (on the stack, never kept).
pub(super) const READ_CHUNK: usize = 4096;
/// Reads per wake-up before yielding, so one fast sender cannot monopolise a worker.
const READS_PER_WAKE: usize = 16;

/// Rounds of flush/read one poll may do before yielding to other tasks.
const POLL_ROUNDS: usize = 8;

/// The steady state of a registered socket, polled by its `Parked` waker:
/// flush what publishers queued, read what came, and otherwise stay
/// registered with the stream's readiness and the waker in `Conn`. A
/// logged-out socket stays here too, reading its ack or a new `auth`, until
/// its re-login window (`window`) closes it.
pub(super) fn poll_steady(
    app: &App,
    conn: &Conn,
    reader: &mut Reader,
    cx: &mut Context<'_>,
) -> Poll<Exit> {
    if reader.held.poll_overdue(cx).is_ready() {
        return Poll::Ready(Exit::Close(CloseCode::PolicyViolation));
    }
    if std::mem::take(&mut reader.leftover)
        && let Some(exit) = reader.on_readable(app, conn)
    {
        return Poll::Ready(exit);
    }
    for _ in 0..POLL_ROUNDS {
        let want_write = {
            let mut out = conn.lock();
            if let State::Closing(code) = &out.state {
                return Poll::Ready(Exit::Close(*code));
            }
            out.park(cx);
            out.backlog.has_pending()
        };
        if want_write {
            match conn.stream.poll_write_ready(cx) {
                Poll::Ready(Ok(())) => {
                    if conn.flush().is_err() {
                        return Poll::Ready(Exit::Gone);
                    }
                    // Look again: what is left needs a fresh registration.
                    continue;
                }
                Poll::Ready(Err(_)) => return Poll::Ready(Exit::Gone),
                Poll::Pending => {}
            }
        }
        match conn.stream.poll_read_ready(cx) {
            Poll::Ready(Ok(())) => {
                if let Some(exit) = reader.on_readable(app, conn) {
                    return Poll::Ready(exit);
                }
            }
            Poll::Ready(Err(_)) => return Poll::Ready(Exit::Gone),
            Poll::Pending => return Poll::Pending,
        }
    }
    // Still busy: let other sockets run first.
    cx.waker().wake_by_ref();
    Poll::Pending
}

/// Per-socket input state: the decoder, an incomplete frame if any, and the
/// client's frame budget.
pub(super) struct Reader {
    decoder: Decoder,
    /// Bytes of an incomplete frame; empty (and unallocated) between frames.
    pub(super) partial: Vec<u8>,
    /// Every frame costs one, whatever it carries.
    budget: Budget,
    /// `partial` holds bytes that came behind `auth`, already read from the
    /// stream: no readiness will announce them, so the first poll does.
    leftover: bool,
    errors: u32,
    /// Whether the logout's ack came (each is counted once).
    acked: bool,
    /// `partial` and the decoder's fragments, in the hub-wide budget.
    held: Held,
}

impl Reader {
    pub(super) fn new(app: &App, leftover: Vec<u8>) -> Reader {
        Reader {
            decoder: Decoder::new(Role::Server, app.config.ws.max_message_bytes),
            leftover: !leftover.is_empty(),
            partial: leftover,
            budget: Budget::new(app.config.ws.message_burst),
            errors: 0,
            acked: false,
            held: Held::default(),
        }
    }

    /// Reads everything available and handles it; then accounts what is
    /// left of an unfinished frame. `Some` ends the socket.
    fn on_readable(&mut self, app: &App, conn: &Conn) -> Option<Exit> {
        if let Some(exit) = self.read_all(app, conn) {
            return Some(exit);
        }
        let bytes = self.partial.capacity() + self.decoder.held();
        let timeout = Duration::from_millis(app.config.ws.frame_timeout_ms);
        self.held
            .set(bytes, &app.partial_memory, timeout)
            .err()
            .map(|_| Exit::Close(CloseCode::TryAgainLater))
    }

    /// Synchronous on purpose: the read buffer lives on the stack of this
    /// call, not in the socket's future.
    fn read_all(&mut self, app: &App, conn: &Conn) -> Option<Exit> {
        if !self.partial.is_empty() {
            // Bytes left from the auth phase or an earlier partial frame.
            if let Some(exit) = self.drain_partial(app, conn) {
                return Some(exit);
            }
        }
        for _ in 0..READS_PER_WAKE {
            let mut chunk = [0u8; READ_CHUNK];
            let n = if self.partial.is_empty() {
                match read_available(&conn.stream, &mut chunk) {
                    Ok(0) => return Some(Exit::Gone),
                    Ok(n) => n,
                    Err(e) if e.kind() == io::ErrorKind::WouldBlock => return None,
                    Err(_) => return Some(Exit::Gone),
                }
            } else {
                // Mid-frame: read straight into the partial buffer.
                let start = self.partial.len();
                let want = self.decoder.needed(&self.partial).clamp(1, 64 * 1024);
                self.partial.resize(start + want, 0);
                match read_available(&conn.stream, &mut self.partial[start..]) {
                    Ok(0) => return Some(Exit::Gone),
                    Ok(n) => {
                        self.partial.truncate(start + n);
                        if let Some(exit) = self.drain_partial(app, conn) {
                            return Some(exit);
                        }
                        continue;
                    }
                    Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                        self.partial.truncate(start);
                        return None;
                    }
                    Err(_) => return Some(Exit::Gone),
                }
            };
            let mut exit = None;
            let consumed = {
                let (decoder, mut handler) = self.split();
                match decoder.decode(&mut chunk[..n], |m| handler.handle(app, conn, m, &mut exit)) {
                    Ok(c) => c,
                    Err(code) => return Some(Exit::Close(code)),
                }
            };
            if let Some(exit) = exit {
                if matches!(exit, Exit::Relogin(_)) {
                    // The next login reads what followed its auth.
                    self.partial.extend_from_slice(&chunk[consumed..n]);
                }
                return Some(exit);
            }
            if consumed < n {
                self.partial.extend_from_slice(&chunk[consumed..n]);
            }
        }
        None
    }

    fn drain_partial(&mut self, app: &App, conn: &Conn) -> Option<Exit> {
        let mut exit = None;
        let mut partial = std::mem::take(&mut self.partial);
        let consumed = {
            let (decoder, mut handler) = self.split();
            match decoder.decode(&mut partial, |m| handler.handle(app, conn, m, &mut exit)) {
                Ok(c) => c,
                Err(code) => return Some(Exit::Close(code)),
            }
        };
        if consumed == partial.len() {
            // Free the buffer: an idle socket keeps none.
            self.partial = Vec::new();
        } else {
            partial.drain(..consumed);
            self.partial = partial;
        }
        exit
    }

    fn split(&mut self) -> (&mut Decoder, Handler<'_>) {
        (
            &mut self.decoder,
            Handler {
                acked: &mut self.acked,
                budget: &mut self.budget,
                errors: &mut self.errors,
            },
        )
    }
}

/// Message handling, split from the decoder so both can be borrowed at once.
struct Handler<'a> {
    acked: &'a mut bool,
    budget: &'a mut Budget,
    errors: &'a mut u32,
}

impl Handler<'_> {
    fn handle(&mut self, app: &App, conn: &Conn, m: Message<'_>, exit: &mut Option<Exit>) -> Flow {
        let ws = &app.config.ws;
        // Alive is what sends whole frames; trickled bytes do not count.
        conn.touch(util::now_secs() as u32);
        // Every frame costs one, whatever it carries.
        if !self
            .budget
            .take(1, ws.max_messages_per_sec, ws.message_burst)
        {
            *exit = Some(Exit::Close(CloseCode::RateLimited));
            return Flow::Stop;
        }
        let result = match m {
            Message::Text(t) => self.on_text(app, conn, t),
            Message::Binary(_) => Some(Exit::Close(CloseCode::UnsupportedData)),
            Message::Ping(p) => {
                let mut pong = Vec::with_capacity(p.len() + 2);
                codec::encode_frame(&mut pong, codec::OP_PONG, p, None);
                conn.send(&pong);
                None
            }
            Message::Pong(_) | Message::Fragment => None,
            Message::Close(c) => Some(Exit::PeerClosed(c.map(|(code, _)| code))),
        };
        match result {
            Some(e) => {
                *exit = Some(e);
                Flow::Stop
            }
            None => Flow::Continue,
        }
    }

    fn on_text(&mut self, app: &App, conn: &Conn, text: &str) -> Option<Exit> {
        let ws = &app.config.ws;
        let error = match protocol::parse(text) {
            Ok(ClientMessage::Ack { id }) => {
                let ours: Option<Arc<LogoutFrame>> = conn.logged_out_with();
                match ours {
                    Some(f) if f.event_id == id && !*self.acked => {
                        *self.acked = true;
                        app.revocation.acked(&id);
                        if ws.relogin_secs == 0 {
                            // No re-login window: the client has what it needs.
                            return Some(Exit::Close(CloseCode::LoggedOut));
                        }
                        return None;
                    }
                    _ => (
                        "unknown_event",
                        "no logout with this id was sent on this socket",
                    ),
                }
            }
            Ok(ClientMessage::Auth { .. })
                if ws.relogin_secs > 0 && conn.logged_out_with().is_some() =>
            {
                return Some(Exit::Relogin(text.into()));
            }
            Ok(ClientMessage::Ping) => {
                conn.send(&codec::text_frame(protocol::PONG_JSON));
                return None;
            }
            Ok(ClientMessage::Auth { .. }) => (
                "already_authenticated",
                "this socket is already authenticated",
            ),
            Err(e) => (e.code(), "the message was not understood"),
        };
        *self.errors += 1;
        if *self.errors > ws.max_protocol_errors {
            return Some(Exit::Close(CloseCode::BadProtocol));
        }
        if conn.send(&protocol::error_frame(error.0, error.1)) == Sent::No {
            return Some(Exit::Gone);
        }
        None
    }
}
