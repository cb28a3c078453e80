//! The life of one `/v1/ws` socket, after the HTTP upgrade.
//!
//! 1. **Auth** (in the upgrade's task): the first message must be `auth`
//!    within `ws.auth_timeout_ms`, else close 4401.
//! 2. **Register, then check the watermark** (the order `revocation`'s race
//!    argument relies on); send `ready` only if no logout got there first.
//! 3. **Steady state, parked**: the task ends and the socket's state waits in
//!    a [`parked::Parked`], registered with the stream's readiness and the
//!    waker in `Conn`; a wake-up queues it for one of a few long-lived
//!    tasks that poll woken sockets. It holds no read
//!    buffer: a read borrows a stack buffer inside a synchronous function,
//!    and only an incomplete frame is kept on the heap.
//! 4. **Logged out** (still parked): the socket is out of the registry; it
//!    counts the `ack` and stays open for `ws.relogin_secs` (its window is
//!    in [`Windows`](super::window::Windows)), so the SPA can log in again
//!    and send a new `auth` on the same connection (back to 1, as a task) —
//!    no reconnect and no TCP teardown per logout. After that, close 4000.
//! 5. **Close** (a task): send the close frame, wait briefly for the peer's,
//!    drop.
//!
//! Must not: hold a lock across an await, or let one socket's state grow
//! without bound (partial frames are capped by the decoder's message limit).

use std::future::Future;
use std::io;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use tokio::net::TcpStream;

use super::codec::{self, Decoder, Flow, Message, Role};
use super::conn::{Conn, LogoutFrame, Sent, State, read_available};
use super::parked::{self, Idle};
use super::protocol::{self, ClientMessage};
use crate::App;
use crate::auth::Principal;
use crate::error::{AuthError, CloseCode};
use crate::registry::{SessionKey, UserKey};
use crate::server::ConnGuard;
use crate::util::{self, Budget};
use crate::ws::partial::Held;

/// Read chunk (on the stack, never kept).
const READ_CHUNK: usize = 4096;
/// Reads per wake-up before yielding, so one fast sender cannot monopolise a worker.
const READS_PER_WAKE: usize = 16;
/// Yields `reclaim` waits for other holders of a connection to let go.
const RECLAIM_TRIES: usize = 100;
/// How long the close handshake may take before the socket is just dropped.
const CLOSE_TIMEOUT: Duration = Duration::from_secs(1);

/// How a socket's life (or its current login) ended.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Exit {
    /// A logged-out socket sent a new `auth` (this text): log in again on
    /// the same connection instead of reconnecting.
    Relogin(Box<str>),
    /// The hub closes with this code.
    Close(CloseCode),
    /// The peer sent a close frame (with this code); we echo it.
    PeerClosed(Option<u16>),
    /// The connection is gone (EOF or I/O error): nothing to say.
    Gone,
}

/// Runs a socket from the completed upgrade until it is parked (or ends).
/// `early` holds bytes the client sent right behind the handshake; `guard`
/// counts the connection against its address until the socket ends.
pub async fn run(app: Arc<App>, stream: TcpStream, early: Bytes, guard: Guard) {
    app.metrics.sockets_opened.inc();
    // `early` may be a slice of hyper's whole read buffer: copy the few
    // bytes out and let the buffer go now, not when the socket ends.
    let start = Start::Fresh(early.to_vec());
    drop(early);
    login(app, stream, start, guard).await;
}

/// What a socket carries from its upgrade: what keeps it counted against
/// its address, and who is at the other end.
pub struct Guard {
    pub limit: Option<Arc<ConnGuard>>,
    pub meta: Arc<crate::ws::conn::ConnMeta>,
}

/// One login: authenticate, register, say `ready`, then park the socket:
/// from here on it has no task until something happens on it.
async fn login(app: Arc<App>, stream: TcpStream, start: Start, guard: Guard) {
    let Some((principal, leftover)) = begin(&app, &stream, start).await else {
        return;
    };
    let conn = Arc::new(new_conn(&app, stream, principal, guard.meta));
    if let Some(exit) = enter(&app, &conn).await {
        finish(&app, &conn, exit).await;
        return;
    }
    let reader = Reader::new(&app, leftover);
    parked::park(
        app,
        Live {
            conn,
            reader,
            _limit: guard.limit,
        },
    );
}

/// A logged-in socket's state while it waits, parked (see `parked`). Who
/// is at the other end lives in the `Conn` (`meta`).
struct Live {
    conn: Arc<Conn>,
    reader: Reader,
    _limit: Option<Arc<ConnGuard>>,
}

impl Idle for Live {
    type End = Exit;

    fn poll_idle(&mut self, app: &App, cx: &mut Context<'_>) -> Poll<Exit> {
        poll_steady(app, &self.conn, &mut self.reader, cx)
    }

    fn resume(self, app: Arc<App>, exit: Exit) -> impl Future<Output = ()> + Send + 'static {
        after_steady(app, self, exit)
    }

    fn panicked() -> Exit {
        Exit::Close(CloseCode::InternalError)
    }
}

/// After the steady state: a new login on the same connection (a logged-out
/// socket sent `auth`), or the close.
async fn after_steady(app: Arc<App>, live: Live, exit: Exit) {
    let Live {
        conn,
        mut reader,
        _limit: limit,
    } = live;
    let Exit::Relogin(text) = exit else {
        finish(&app, &conn, exit).await;
        return;
    };
    app.metrics.relogins.inc();
    let guard = Guard {
        limit,
        meta: conn.meta.clone(),
    };
    match reclaim(&app, conn).await {
        Reclaimed::Stream(stream) => {
            // Bytes behind the new auth belong to the next login.
            let leftover = std::mem::take(&mut reader.partial);
            drop(reader);
            // Boxed: a re-login is a login again, and an async fn cannot
            // contain itself.
            Box::pin(login(app, stream, Start::Relogin(text, leftover), guard)).await;
        }
        Reclaimed::Busy(conn) => finish(&app, &conn, Exit::Close(CloseCode::LoggedOut)).await,
        Reclaimed::Gone => {}
    }
}

/// Authenticates a login; on failure closes the stream as the error says.
async fn begin(app: &App, stream: &TcpStream, start: Start) -> Option<(Principal, Vec<u8>)> {
    let authed = match start {
        Start::Fresh(buf) => authenticate(app, stream, buf).await,
        Start::Relogin(text, leftover) => verify_auth(app, &text).await.map(|p| (p, leftover)),
    };
    match authed {
        Ok(a) => Some(a),
        Err(exit) => {
            record_exit(app, &exit);
            if let Exit::Close(code) = exit {
                let frame = codec::close_frame(code.code(), code.reason());
                let _ = close_stream(stream, frame).await;
            }
            None
        }
    }
}

enum Reclaimed {
    Stream(TcpStream),
    /// Someone still holds the connection; close it instead.
    Busy(Arc<Conn>),
    Gone,
}

/// Takes the stream back from a logged-out connection for the next login.
/// Publishers and the heartbeat sweeper hold a connection only for the
/// length of one write, so the wait is a few yields at most.
async fn reclaim(app: &App, conn: Arc<Conn>) -> Reclaimed {
    app.registry.unregister(&conn);
    let mut conn = conn;
    for _ in 0..RECLAIM_TRIES {
        match Arc::try_unwrap(conn) {
            Ok(c) => {
                let (stream, pending) = c.into_parts();
                if !pending.is_empty() {
                    let deadline = tokio::time::Instant::now() + CLOSE_TIMEOUT;
                    if write_all(&stream, &pending, deadline).await.is_err() {
                        return Reclaimed::Gone;
                    }
                }
                return Reclaimed::Stream(stream);
            }
            Err(c) => {
                conn = c;
                tokio::task::yield_now().await;
            }
        }
    }
    Reclaimed::Busy(conn)
}

/// How a login on a socket begins.
enum Start {
    /// A new connection: bytes the client sent right behind the handshake.
    Fresh(Vec<u8>),
    /// A logged-out socket's new `auth` text, and the bytes that followed it.
    Relogin(Box<str>, Vec<u8>),
}

fn new_conn(
    app: &App,
    stream: TcpStream,
    principal: Principal,
    meta: Arc<crate::ws::conn::ConnMeta>,
) -> Conn {
    let Principal {
        issuer,
        sub,
        sid,
        iat,
        exp,
        ..
    } = principal;
    // The token's strings, shared with the verification cache and the
    // other tabs that sent the same token: no copy per socket.
    let user = UserKey { iss: issuer, sub };
    let session = sid.map(|sid| SessionKey { iss: issuer, sid });
    Conn::new(
        app.next_conn_id(),
        meta,
        stream,
        user,
        session,
        iat,
        exp,
        app.config.ws.outbound_buffer_bytes,
        util::now_secs() as u32,
    )
}

/// Registers a new login, checks the watermark (in that order: see
/// `revocation`) and, for the hub's own session tokens, that the web
/// session is still alive in the graph; then says `ready`. `Some` when the
/// socket must close at once.
async fn enter(app: &App, conn: &Arc<Conn>) -> Option<Exit> {
    app.registry.register(conn);
    if app.shutdown.is_cancelled() {
        // Registered after shutdown's sweep: close it like the others.
        conn.close(CloseCode::ServiceRestart);
    }
    let revoked = app
        .revocation
        .revoked_token(conn.iat, &conn.user, conn.session.as_ref())
        .await;
    match revoked {
        Ok(None) => {}
        Ok(Some(logout)) => {
            // A replayed logout: nobody counts its ack, so close at once. Out
            // of the registry first, as a publish does: once the client reads
            // the logout, no index holds its socket any more.
            app.registry.unregister(conn);
            conn.deliver_logout(&logout);
            return Some(Exit::Close(CloseCode::LoggedOut));
        }
        Err(e) => {
            // The store cannot say (a node cut off from Redis): refuse
            // rather than guess; the client retries with backoff.
            tracing::warn!(error = %e, "watermarks unavailable at socket auth");
            app.registry.unregister(conn);
            return Some(Exit::Close(CloseCode::TryAgainLater));
        }
    }
    if conn.user.iss == app.hub_issuers.session_id
        && let Some(session) = &conn.session
    {
        // The graph is the last word on a hub web session: ended there is
        // ended, even if its logout's watermark never got written.
        match app.sessions.ended_before(&session.sid, conn.iat).await {
            Ok(false) => {}
            Ok(true) => {
                app.registry.unregister(conn);
                let logout = app
                    .revocation
                    .session_ended_frame(&conn.user.sub, &session.sid);
                conn.deliver_logout(&logout);
                return Some(Exit::Close(CloseCode::LoggedOut));
            }
            Err(e) => {
                tracing::warn!(error = %e, "session graph unavailable at socket auth");
                app.registry.unregister(conn);
                return Some(Exit::Close(CloseCode::TryAgainLater));
            }
        }
    }
    let ready = protocol::ready_frame(
        &conn.user.sub,
        conn.session.as_ref().map(|s| &*s.sid),
        conn.id,
        app.config.ws.heartbeat_secs,
    );
    conn.send_if_open(&ready);
    None
}

/// Waits for the `auth` message and verifies it. Returns the principal and
/// any bytes received after the auth frame.
async fn authenticate(
    app: &App,
    stream: &TcpStream,
    early: Vec<u8>,
) -> Result<(Principal, Vec<u8>), Exit> {
    let deadline = tokio::time::Instant::now() + app.config.auth_timeout();
    let mut buf = early;
    let mut decoder = Decoder::new(Role::Server, app.config.ws.max_message_bytes);
    // Before `auth` too, every frame (a ping, a pong) costs budget.
    let ws = &app.config.ws;
    let mut budget = Budget::new(ws.message_burst);
    loop {
        let mut first: Option<Result<String, Exit>> = None;
        let mut pongs: Vec<u8> = Vec::new();
        let consumed = decoder
            .decode(&mut buf, |m| {
                if !budget.take(1, ws.max_messages_per_sec, ws.message_burst) {
                    first = Some(Err(Exit::Close(CloseCode::RateLimited)));
                    return Flow::Stop;
                }
                match m {
                    Message::Text(t) => {
                        first = Some(Ok(t.to_string()));
                        Flow::Stop
                    }
                    Message::Binary(_) => {
                        first = Some(Err(Exit::Close(CloseCode::UnsupportedData)));
                        Flow::Stop
                    }
                    Message::Close(c) => {
                        first = Some(Err(Exit::PeerClosed(c.map(|(code, _)| code))));
                        Flow::Stop
                    }
                    Message::Ping(p) => {
                        codec::encode_frame(&mut pongs, codec::OP_PONG, p, None);
                        Flow::Continue
                    }
                    Message::Pong(_) | Message::Fragment => Flow::Continue,
                }
            })
            .map_err(Exit::Close)?;
        buf.drain(..consumed);
        if !pongs.is_empty() {
            write_all(stream, &pongs, deadline)
                .await
                .map_err(|_| Exit::Gone)?;
        }
        match first {
            Some(Ok(text)) => {
                // Keep only what follows the auth frame, in a buffer of its
                // own size: the read chunk's capacity must not outlive auth.
                let leftover = if buf.is_empty() {
                    Vec::new()
                } else {
                    buf.clone()
                };
                drop(buf);
                return verify_auth(app, &text).await.map(|p| (p, leftover));
            }
            Some(Err(exit)) => return Err(exit),
            None => {}
        }
        tokio::select! {
            _ = tokio::time::sleep_until(deadline) => {
                app.metrics.auth_failure("ws", "deadline");
                return Err(Exit::Close(CloseCode::Unauthorized));
            }
            _ = app.shutdown.cancelled() => return Err(Exit::Close(CloseCode::ServiceRestart)),
            r = stream.readable() => r.map_err(|_| Exit::Gone)?,
        }
        let start = buf.len();
        buf.resize(start + READ_CHUNK, 0);
        match read_available(stream, &mut buf[start..]) {
            Ok(0) => return Err(Exit::Gone),
            Ok(n) => buf.truncate(start + n),
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => buf.truncate(start),
            Err(_) => return Err(Exit::Gone),
        }
    }
}

async fn verify_auth(app: &App, text: &str) -> Result<Principal, Exit> {
    let token = match protocol::parse(text) {
        Ok(ClientMessage::Auth { token }) => token,
        _ => {
            app.metrics.auth_failure("ws", "first_message_not_auth");
            return Err(Exit::Close(CloseCode::BadProtocol));
        }
    };
    app.auth.verify_token(&token).await.map_err(|e: AuthError| {
        app.metrics.auth_failure("ws", e.reason());
        tracing::debug!(reason = e.reason(), "socket auth refused");
        Exit::Close(e.close_code())
    })
}

/// Rounds of flush/read one poll may do before yielding to other tasks.
const POLL_ROUNDS: usize = 8;

/// The steady state of a registered socket, polled by its `Parked` waker:
/// flush what publishers queued, read what came, and otherwise stay
/// registered with the stream's readiness and the waker in `Conn`. A
/// logged-out socket stays here too, reading its ack or a new `auth`, until
/// its re-login window (`window`) closes it.
fn poll_steady(app: &App, conn: &Conn, reader: &mut Reader, cx: &mut Context<'_>) -> Poll<Exit> {
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
struct Reader {
    decoder: Decoder,
    /// Bytes of an incomplete frame; empty (and unallocated) between frames.
    partial: Vec<u8>,
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
    fn new(app: &App, leftover: Vec<u8>) -> Reader {
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

/// Unregisters the socket and closes it as `exit` says.
async fn finish(app: &App, conn: &Arc<Conn>, exit: Exit) {
    app.registry.unregister(conn);
    record_exit(app, &exit);
    if exit == Exit::Gone {
        return;
    }
    if let Exit::Close(CloseCode::SlowConsumer) = exit {
        app.metrics.slow_consumers.inc();
    }
    let frame = match exit {
        Exit::Close(code) => codec::close_frame(code.code(), code.reason()),
        // RFC 6455 §5.5.1: answer a close with a close, echoing the code.
        Exit::PeerClosed(code) => match code {
            Some(c) => codec::close_frame(c, ""),
            None => {
                let mut f = Vec::with_capacity(2);
                codec::encode_frame(&mut f, codec::OP_CLOSE, &[], None);
                f
            }
        },
        Exit::Gone => unreachable!("handled above"),
        // `run` turns a re-login into a new login, never into a finish; if
        // one got here, closing as logged out is the safe answer.
        Exit::Relogin(_) => {
            codec::close_frame(CloseCode::LoggedOut.code(), CloseCode::LoggedOut.reason())
        }
    };
    let mut bytes = {
        let mut out = conn.lock();
        out.state = State::Closing(CloseCode::Normal);
        out.backlog.take()
    };
    // A slow consumer's backlog is not worth waiting for; if it does not
    // take even the close frame in time, `close_stream` resets it.
    if matches!(exit, Exit::Close(CloseCode::SlowConsumer)) {
        bytes.clear();
    }
    bytes.extend_from_slice(&frame);
    let _ = close_stream(&conn.stream, bytes).await;
}

fn record_exit(app: &App, exit: &Exit) {
    match exit {
        Exit::Close(code) => app.metrics.ws_close(code.code()),
        Exit::PeerClosed(_) => app.metrics.ws_close(CloseCode::Normal.code()),
        Exit::Gone | Exit::Relogin(_) => {}
    }
}

/// Ends a connection with a reset once its last handle goes: the kernel
/// drops what it still holds for the peer instead of retrying for minutes.
fn abort(stream: &TcpStream) {
    let _ = socket2::SockRef::from(stream).set_linger(Some(Duration::ZERO));
}

/// Writes the last bytes (ending in a close frame), half-closes, and waits
/// briefly for the peer to finish, so browsers see our close code rather than
/// a reset.
///
/// A peer that does not finish within the deadline is reset: whatever the
/// kernel still holds for it is dropped at once, instead of staying queued
/// for minutes behind a window the peer never opens.
pub(crate) async fn close_stream(stream: &TcpStream, bytes: Vec<u8>) -> io::Result<()> {
    let deadline = tokio::time::Instant::now() + CLOSE_TIMEOUT;
    let finished = close_within(stream, &bytes, deadline).await;
    if finished.is_err() || tokio::time::Instant::now() >= deadline {
        abort(stream);
    }
    finished
}

async fn close_within(
    stream: &TcpStream,
    bytes: &[u8],
    deadline: tokio::time::Instant,
) -> io::Result<()> {
    write_all(stream, bytes, deadline).await?;
    let _ = socket2::SockRef::from(stream).shutdown(std::net::Shutdown::Write);
    let mut sink = [0u8; 512];
    loop {
        tokio::select! {
            _ = tokio::time::sleep_until(deadline) => return Ok(()),
            r = stream.readable() => r?,
        }
        match stream.try_read(&mut sink) {
            Ok(0) => return Ok(()),
            Ok(_) => {}
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => {}
            Err(e) => return Err(e),
        }
    }
}

async fn write_all(
    stream: &TcpStream,
    mut bytes: &[u8],
    deadline: tokio::time::Instant,
) -> io::Result<()> {
    while !bytes.is_empty() {
        match stream.try_write(bytes) {
            Ok(n) => bytes = &bytes[n..],
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                tokio::select! {
                    _ = tokio::time::sleep_until(deadline) => {
                        return Err(io::Error::new(io::ErrorKind::TimedOut, "write deadline"));
                    }
                    r = stream.writable() => r?,
                }
            }
            Err(e) => return Err(e),
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// What an idle socket owns besides the kernel's and tokio's share: its
    /// parked state and its `Conn`. Guards the memory figure of
    /// `bench/`: a field added here is paid 15,000 times.
    #[test]
    fn an_idle_socket_stays_small() {
        let parked = std::mem::size_of::<parked::Parked<Live>>();
        let conn = std::mem::size_of::<Conn>();
        eprintln!(
            "Parked<Live> {parked} B, Conn {conn} B, Reader {} B",
            std::mem::size_of::<Reader>()
        );
        assert!(parked <= 128, "Parked<Live> is {parked} bytes");
        // 8 of them point at who is at the other end (`ConnMeta`, ~80 B).
        assert!(conn <= 208, "Conn is {conn} bytes");
    }
}
