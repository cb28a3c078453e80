//! The end of a `/v1/ws` socket: unregister it, say why (close frame and
//! metric), wait briefly for the peer's close, and reset a peer that
//! never finishes so the kernel lets go of what it holds for it.
//!
//! Must not: wait longer than `CLOSE_TIMEOUT` for a peer.

use std::io;
use std::sync::Arc;
use std::time::Duration;

use tokio::net::TcpStream;

use super::Exit;
use crate::App;
use crate::error::CloseCode;
use crate::ws::codec;
use crate::ws::conn::{Conn, State};

/// How long the close handshake may take before the socket is just dropped.
pub(super) const CLOSE_TIMEOUT: Duration = Duration::from_secs(1);

/// Unregisters the socket and closes it as `exit` says.
pub(super) async fn finish(app: &App, conn: &Arc<Conn>, exit: Exit) {
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

pub(super) fn record_exit(app: &App, exit: &Exit) {
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

pub(super) async fn write_all(
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
