//! The TCP and HTTP front door: accept, admit, serve.
//!
//! Every connection is admitted against three limits before any byte of it
//! is parsed: open connections in total (503), open connections per client IP
//! (429) and new connections per second per IP (429). A refused connection
//! gets a complete HTTP answer with `Connection: close`, not a reset.
//!
//! Admitted connections are served by hyper's HTTP/1.1 server directly (not
//! `axum::serve`) because only that lets us give hyper a timer and a
//! header-read timeout: without one, a client trickling headers holds a
//! connection for ever. Upgrades are enabled; `ws` takes them over.
//!
//! Shutdown: the accept loop stops, each HTTP connection is told to finish
//! its in-flight request and close, and `ws` closes sockets with 1012.
//!
//! Must not: know about routes or authentication.

use std::io;
use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use axum::Router;
use axum::extract::ConnectInfo;
use dashmap::DashMap;
use hyper::body::Incoming;
use hyper::server::conn::http1;
use hyper_util::rt::{TokioIo, TokioTimer};
use hyper_util::service::TowerToHyperService;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpSocket, TcpStream};

use crate::App;
use crate::config::Config;
use crate::util::KeyedLimiter;

/// Accept backlog: bursts of thousands of connects are normal for a hub.
const BACKLOG: u32 = 4096;

/// Binds a listener with a large backlog.
pub fn bind(addr: SocketAddr) -> io::Result<TcpListener> {
    let socket = if addr.is_ipv4() {
        TcpSocket::new_v4()?
    } else {
        TcpSocket::new_v6()?
    };
    socket.set_reuseaddr(true)?;
    socket.bind(addr)?;
    socket.listen(BACKLOG)
}

/// Connection counts and connect rates.
pub struct ConnLimits {
    max_total: usize,
    max_per_ip: usize,
    total: AtomicUsize,
    per_ip: DashMap<IpAddr, usize>,
    rates: KeyedLimiter<IpAddr>,
}

/// Why a connection was refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Refusal {
    TooManyTotal,
    TooManyForIp,
    TooFastForIp,
}

impl Refusal {
    fn label(self) -> &'static str {
        match self {
            Refusal::TooManyTotal => "connections_total",
            Refusal::TooManyForIp => "connections_per_ip",
            Refusal::TooFastForIp => "connect_rate_per_ip",
        }
    }
}

/// Keeps a connection counted until dropped (by the HTTP connection, and by
/// the socket task after an upgrade).
pub struct ConnGuard {
    limits: Arc<ConnLimits>,
    ip: IpAddr,
}

impl Drop for ConnGuard {
    fn drop(&mut self) {
        self.limits.total.fetch_sub(1, Ordering::AcqRel);
        if let dashmap::mapref::entry::Entry::Occupied(mut e) = self.limits.per_ip.entry(self.ip) {
            *e.get_mut() -= 1;
            if *e.get() == 0 {
                e.remove();
            }
        }
    }
}

impl ConnLimits {
    pub fn new(config: &Config) -> ConnLimits {
        let l = &config.limits;
        ConnLimits {
            max_total: l.max_connections,
            max_per_ip: l.max_connections_per_ip,
            total: AtomicUsize::new(0),
            per_ip: DashMap::new(),
            rates: KeyedLimiter::new(l.connects_per_ip_per_sec, l.connect_burst),
        }
    }

    pub fn admit(self: &Arc<Self>, ip: IpAddr) -> Result<Arc<ConnGuard>, Refusal> {
        if !self.rates.try_take(&ip) {
            return Err(Refusal::TooFastForIp);
        }
        if self.total.fetch_add(1, Ordering::AcqRel) >= self.max_total {
            self.total.fetch_sub(1, Ordering::AcqRel);
            return Err(Refusal::TooManyTotal);
        }
        {
            let mut n = self.per_ip.entry(ip).or_insert(0);
            if *n >= self.max_per_ip {
                drop(n);
                self.total.fetch_sub(1, Ordering::AcqRel);
                return Err(Refusal::TooManyForIp);
            }
            *n += 1;
        }
        Ok(Arc::new(ConnGuard {
            limits: self.clone(),
            ip,
        }))
    }

    /// Open connections (all kinds).
    pub fn open(&self) -> usize {
        self.total.load(Ordering::Acquire)
    }

    /// Forgets rate buckets that are full again, so the map stays small.
    pub fn forget_idle(&self) {
        self.rates.forget_idle();
    }
}

/// Accepts until shutdown. Each admitted connection runs in its own task.
pub async fn serve(app: Arc<App>, listener: TcpListener, router: Router) {
    let mut builder = http1::Builder::new();
    builder
        .timer(TokioTimer::new())
        .header_read_timeout(Duration::from_millis(
            app.config.http.header_read_timeout_ms,
        ))
        .keep_alive(true)
        .max_buf_size(64 * 1024);
    let mut sweep = tokio::time::interval(Duration::from_secs(10));
    loop {
        let (stream, peer) = tokio::select! {
            _ = app.shutdown.cancelled() => break,
            _ = sweep.tick() => {
                app.limits.forget_idle();
                continue;
            }
            r = listener.accept() => match r {
                Ok(x) => x,
                Err(e) => {
                    // EMFILE and friends: back off instead of spinning.
                    tracing::warn!(error = %e, "accept failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
        };
        let guard = match app.limits.admit(peer.ip()) {
            Ok(g) => g,
            Err(refusal) => {
                app.metrics.upgrade_rejected(refusal.label());
                app.tasks.spawn(refuse(stream, refusal));
                continue;
            }
        };
        let _ = stream.set_nodelay(true);
        let svc = tower::ServiceExt::map_request(
            router.clone(),
            move |mut req: axum::http::Request<Incoming>| {
                req.extensions_mut().insert(ConnectInfo(peer));
                req.extensions_mut().insert(guard.clone());
                req
            },
        );
        let conn = builder
            .serve_connection(TokioIo::new(stream), TowerToHyperService::new(svc))
            .with_upgrades();
        let shutdown = app.shutdown.clone();
        app.tasks.spawn(async move {
            tokio::pin!(conn);
            tokio::select! {
                r = conn.as_mut() => {
                    if let Err(e) = r {
                        tracing::debug!(error = %e, "http connection ended with an error");
                    }
                }
                _ = shutdown.cancelled() => {
                    conn.as_mut().graceful_shutdown();
                    let _ = conn.await;
                }
            }
        });
    }
}

/// Answers a refused connection with a real HTTP status. Reads the request
/// head first (briefly) so closing does not turn into a reset that hides the answer.
async fn refuse(mut stream: TcpStream, refusal: Refusal) {
    let (status, code, message) = match refusal {
        Refusal::TooManyTotal => (
            "503 Service Unavailable",
            "too_many_connections",
            "the hub is at its connection limit",
        ),
        Refusal::TooManyForIp => (
            "429 Too Many Requests",
            "too_many_connections",
            "too many open connections from this address",
        ),
        Refusal::TooFastForIp => (
            "429 Too Many Requests",
            "rate_limited",
            "too many new connections from this address",
        ),
    };
    let body = format!(r#"{{"error":"{code}","message":"{message}"}}"#);
    let response = format!(
        "HTTP/1.1 {status}\r\ncontent-type: application/json\r\ncontent-length: {}\r\nretry-after: 1\r\nconnection: close\r\n\r\n{body}",
        body.len()
    );
    let io = async {
        let mut head = [0u8; 2048];
        let _ = tokio::time::timeout(Duration::from_millis(200), stream.read(&mut head)).await;
        stream.write_all(response.as_bytes()).await?;
        stream.shutdown().await?;
        let mut sink = [0u8; 1024];
        while stream.read(&mut sink).await? > 0 {}
        io::Result::Ok(())
    };
    let _ = tokio::time::timeout(Duration::from_secs(1), io).await;
}
