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

use bytes::Bytes;
use tokio::net::TcpStream;

mod close;
mod steady;

pub(crate) use close::close_stream;
use close::{CLOSE_TIMEOUT, finish, record_exit, write_all};
use steady::{READ_CHUNK, Reader, poll_steady};

use super::codec::{self, Decoder, Flow, Message, Role};
use super::conn::{Conn, read_available};
use super::parked::{self, Idle};
use super::protocol::{self, ClientMessage};
use crate::App;
use crate::auth::Principal;
use crate::error::{AuthError, CloseCode};
use crate::registry::{SessionKey, UserKey};
use crate::server::ConnGuard;
use crate::util::{self, Budget};

/// Yields `reclaim` waits for other holders of a connection to let go.
const RECLAIM_TRIES: usize = 100;

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
    pub meta: crate::ws::conn::ConnMeta,
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
    meta: crate::ws::conn::ConnMeta,
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
        // 40 of them say who is at the other end (`ConnMeta`, inline); with
        // the Arc's counts that is jemalloc's 256-byte class exactly.
        assert!(conn <= 240, "Conn is {conn} bytes");
    }
}
