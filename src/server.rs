//! The TCP and HTTP front door: accept, admit, serve.
//!
//! Every connection is admitted against three limits before any byte of it
//! is parsed: open connections in total (503), open connections per client IP
//! (429) and new connections per second per IP (429). A refused connection
//! gets a complete HTTP answer with `Connection: close`, not a reset.
//!
//! The total follows the file descriptor limit ([`Capacity`]), so the hub
//! answers 503 before the process runs out of descriptors; should it run
//! out anyway (other files, a lower limit), one spare descriptor is kept to
//! accept, answer 503 and close, instead of leaving clients hanging. Each
//! accepted socket gets a fixed kernel send buffer: with the per-socket
//! outbound limit it bounds what a peer that stops reading can pin.
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

/// How many connections the process can serve, from its file descriptor
/// limit (raised to the hard limit at start) and the settings.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Capacity {
    pub max_total: usize,
    pub max_per_ip: usize,
    /// Descriptors the process may open, and how many are kept for the
    /// hub's own files and outgoing connections.
    pub fd_limit: usize,
    pub reserve: usize,
}

impl Capacity {
    /// Raises the soft descriptor limit to the hard one and derives the
    /// connection limits; a configured total above what the descriptors
    /// allow is lowered (a hub at EMFILE can answer nobody), with a warning.
    pub fn of(config: &Config) -> Capacity {
        use rustix::process::{Resource, getrlimit, setrlimit};
        let mut lim = getrlimit(Resource::Nofile);
        if lim
            .maximum
            .is_some_and(|h| lim.current.is_none_or(|s| s < h))
        {
            let raised = rustix::process::Rlimit {
                current: lim.maximum,
                maximum: lim.maximum,
            };
            if setrlimit(Resource::Nofile, raised).is_ok() {
                lim = raised;
            }
        }
        let fd_limit = lim.current.map_or(1 << 20, |n| n.min(1 << 24) as usize);
        Capacity::derive(config, fd_limit)
    }

    fn derive(config: &Config, fd_limit: usize) -> Capacity {
        let l = &config.limits;
        let reserve = 64 + config.notify.concurrency + fd_limit / 50;
        let possible = fd_limit.saturating_sub(reserve).max(1);
        let max_total = match l.max_connections {
            Some(n) if n > possible => {
                tracing::warn!(
                    configured = n,
                    fd_limit,
                    used = possible,
                    "limits.max_connections is more than the file descriptor limit allows; raise the limit (ulimit -n, LimitNOFILE=) to serve more"
                );
                possible
            }
            Some(n) => n,
            None => possible,
        };
        let max_per_ip = l
            .max_connections_per_ip
            .unwrap_or((max_total / 8).clamp(64, 4096))
            .min(max_total);
        Capacity {
            max_total,
            max_per_ip,
            fd_limit,
            reserve,
        }
    }
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
    pub fn label(self) -> &'static str {
        match self {
            Refusal::TooManyTotal => "connections_total",
            Refusal::TooManyForIp => "connections_per_ip",
            Refusal::TooFastForIp => "connect_rate_per_ip",
        }
    }
}

/// Keeps a connection counted until dropped (by the HTTP connection, and by
/// the socket task after an upgrade): in the total, against its client's
/// address, or both.
pub struct ConnGuard {
    limits: Arc<ConnLimits>,
    total: bool,
    /// The address it counts against, if any (not a trusted proxy's).
    ip: Option<IpAddr>,
    /// A proxied socket's client guard holds its connection's guard.
    _connection: Option<Arc<ConnGuard>>,
}

impl Drop for ConnGuard {
    fn drop(&mut self) {
        if self.total {
            self.limits.total.fetch_sub(1, Ordering::AcqRel);
        }
        let Some(ip) = self.ip else { return };
        if let dashmap::mapref::entry::Entry::Occupied(mut e) = self.limits.per_ip.entry(ip) {
            *e.get_mut() -= 1;
            if *e.get() == 0 {
                e.remove();
            }
        }
    }
}

impl ConnLimits {
    pub fn new(config: &Config, capacity: Capacity) -> ConnLimits {
        let l = &config.limits;
        ConnLimits {
            max_total: capacity.max_total,
            max_per_ip: capacity.max_per_ip,
            total: AtomicUsize::new(0),
            per_ip: DashMap::new(),
            rates: KeyedLimiter::new(l.connects_per_ip_per_sec, l.connect_burst),
        }
    }

    /// A new TCP connection from `ip`: counted in the total and, unless
    /// `ip` is a trusted proxy (whose clients are counted at their
    /// requests, [`ConnLimits::admit_client`]), against `ip`.
    pub fn admit(self: &Arc<Self>, ip: IpAddr, proxy: bool) -> Result<Arc<ConnGuard>, Refusal> {
        if !proxy && !self.rates.try_take(&ip) {
            return Err(Refusal::TooFastForIp);
        }
        if self.total.fetch_add(1, Ordering::AcqRel) >= self.max_total {
            self.total.fetch_sub(1, Ordering::AcqRel);
            return Err(Refusal::TooManyTotal);
        }
        let mut counted = ConnGuard {
            limits: self.clone(),
            total: true,
            ip: None,
            _connection: None,
        };
        if !proxy {
            // On a refusal, dropping `counted` takes it out of the total.
            self.count_ip(ip)?;
            counted.ip = Some(ip);
        }
        Ok(Arc::new(counted))
    }

    /// A socket a trusted proxy opened for `client`: its connect rate and
    /// count against that address; the guard also keeps `connection`.
    pub fn admit_client(
        self: &Arc<Self>,
        client: IpAddr,
        connection: Option<Arc<ConnGuard>>,
    ) -> Result<Arc<ConnGuard>, Refusal> {
        if !self.rates.try_take(&client) {
            return Err(Refusal::TooFastForIp);
        }
        self.count_ip(client)?;
        Ok(Arc::new(ConnGuard {
            limits: self.clone(),
            total: false,
            ip: Some(client),
            _connection: connection,
        }))
    }

    fn count_ip(&self, ip: IpAddr) -> Result<(), Refusal> {
        let mut n = self.per_ip.entry(ip).or_insert(0);
        if *n >= self.max_per_ip {
            return Err(Refusal::TooManyForIp);
        }
        *n += 1;
        Ok(())
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
    let mut spare = Spare::open();
    let mut failures = FailureLog::default();
    // Refusals answered politely at once (each holds its descriptor for up
    // to REFUSAL_TIME); beyond that, a flood's refusals are written and
    // closed on the spot, so refusing cannot itself exhaust descriptors.
    let polite = Arc::new(tokio::sync::Semaphore::new(MAX_POLITE_REFUSALS));
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
                    failures.note(&e);
                    if is_out_of_descriptors(&e) && spare.answer_one(&listener) {
                        app.metrics.upgrade_rejected("out_of_descriptors");
                        continue;
                    }
                    // Back off instead of spinning on the error.
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
        };
        set_send_buffer(&stream, app.config.limits.socket_send_buffer_bytes);
        let proxy = app.proxies.is_trusted(peer.ip());
        let guard = match app.limits.admit(peer.ip(), proxy) {
            Ok(g) => g,
            Err(refusal) => {
                app.metrics.upgrade_rejected(refusal.label());
                match polite.clone().try_acquire_owned() {
                    Ok(permit) => {
                        app.tasks.spawn(async move {
                            refuse(stream, refusal).await;
                            drop(permit);
                        });
                    }
                    Err(_) => {
                        let _ = stream.try_write(refusal_response(refusal).as_bytes());
                    }
                }
                continue;
            }
        };
        let _ = stream.set_nodelay(true);
        let body_deadline =
            crate::http::BodyDeadline(Duration::from_millis(app.config.http.body_read_timeout_ms));
        let svc = tower::ServiceExt::map_request(
            router.clone(),
            move |mut req: axum::http::Request<Incoming>| {
                req.extensions_mut().insert(ConnectInfo(peer));
                req.extensions_mut().insert(guard.clone());
                req.extensions_mut().insert(body_deadline);
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

/// The kernel send buffer of an accepted socket: fixed, so the kernel does
/// not grow it (up to `tcp_wmem` max) for a peer that stopped reading.
fn set_send_buffer(stream: &TcpStream, bytes: usize) {
    let _ = socket2::SockRef::from(stream).set_send_buffer_size(bytes);
}

fn is_out_of_descriptors(e: &io::Error) -> bool {
    use rustix::io::Errno;
    e.raw_os_error()
        .is_some_and(|n| n == Errno::MFILE.raw_os_error() || n == Errno::NFILE.raw_os_error())
}

/// One descriptor held in reserve: at EMFILE it is let go, a waiting
/// connection is accepted with it, told 503 and closed, and the descriptor
/// is taken again. Without it the clients would hang unanswered.
struct Spare(Option<std::fs::File>);

impl Spare {
    fn open() -> Spare {
        Spare(std::fs::File::open("/dev/null").ok())
    }

    fn answer_one(&mut self, listener: &TcpListener) -> bool {
        if self.0.take().is_none() {
            *self = Spare::open();
            return false;
        }
        // The listener is non-blocking: this takes a waiting connection or
        // returns at once.
        let answered = match socket2::SockRef::from(listener).accept() {
            Ok((s, _)) => {
                let _ = s.send(OUT_OF_DESCRIPTORS);
                true
            }
            Err(_) => false,
        };
        *self = Spare::open();
        answered
    }
}

const OUT_OF_DESCRIPTORS: &[u8] = b"HTTP/1.1 503 Service Unavailable\r\ncontent-type: application/json\r\ncontent-length: 74\r\nretry-after: 1\r\nconnection: close\r\n\r\n{\"error\":\"too_many_connections\",\"message\":\"the hub is out of descriptors\"}";

/// Accept errors, logged at most every 10 s with how many there were (at
/// EMFILE there is one per connection attempt).
#[derive(Default)]
struct FailureLog {
    since_last: u64,
    last: Option<std::time::Instant>,
}

impl FailureLog {
    fn note(&mut self, e: &io::Error) {
        self.since_last += 1;
        let due = self
            .last
            .is_none_or(|t| t.elapsed() >= Duration::from_secs(10));
        if due {
            tracing::warn!(error = %e, failures = self.since_last, "accept failed");
            self.since_last = 0;
            self.last = Some(std::time::Instant::now());
        }
    }
}

/// Refusals in flight at once (see `serve`), and how long each may take.
const MAX_POLITE_REFUSALS: usize = 256;
const REFUSAL_TIME: Duration = Duration::from_millis(500);

fn refusal_response(refusal: Refusal) -> String {
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
    format!(
        "HTTP/1.1 {status}\r\ncontent-type: application/json\r\ncontent-length: {}\r\nretry-after: 1\r\nconnection: close\r\n\r\n{body}",
        body.len()
    )
}

/// Answers a refused connection with a real HTTP status. Reads the request
/// head first (briefly) so closing does not turn into a reset that hides the answer.
async fn refuse(mut stream: TcpStream, refusal: Refusal) {
    let response = refusal_response(refusal);
    let io = async {
        let mut head = [0u8; 2048];
        let _ = tokio::time::timeout(Duration::from_millis(100), stream.read(&mut head)).await;
        stream.write_all(response.as_bytes()).await?;
        stream.shutdown().await?;
        let mut sink = [0u8; 1024];
        while stream.read(&mut sink).await? > 0 {}
        io::Result::Ok(())
    };
    let _ = tokio::time::timeout(REFUSAL_TIME, io).await;
}
