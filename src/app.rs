//! The hub's state: one [`App`] behind an `Arc`, built once by `startup`
//! and shared by every request, socket and background task.
//!
//! Each field is a component with its own module; the concurrency of each
//! (maps, locks, atomics) is that module's business. `App` holds no logic
//! beyond small answers composed from its parts.
//!
//! Must not: start anything (that is `startup` and `background`).

use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::auth::clients::ClientAuth;
use crate::auth::dev_issuer::DevIssuer;
use crate::auth::signer::Signer;
use crate::auth::{Authenticator, IssuerId, Principal};
use crate::config::Config;
use crate::metrics::Metrics;
use crate::notify::Notifier;
use crate::pusher::Pusher;
use crate::registry::{Registry, SessionKey, UserKey};
use crate::revocation::Revocation;
use crate::server::ConnLimits;
use crate::sessions::Sessions;
use crate::store::{Broker, StoreError};
use crate::util::KeyedLimiter;
use crate::ws;

/// The issuers the hub signs for itself.
pub struct HubIssuers {
    /// The dev-mode token minter, when enabled, and its issuer id.
    pub dev: Option<DevIssuer>,
    pub dev_id: Option<IssuerId>,
    /// Signs the session tokens of transfer-created web sessions (and the
    /// back-channel logout tokens about them).
    pub session: Arc<Signer>,
    pub session_id: IssuerId,
}

/// Who may call the hub from a browser.
pub struct Origins {
    /// Origins that may open sockets (config, web clients and, in dev
    /// mode, the demo apps).
    pub sockets: Vec<String>,
    /// Origins that may call the HTTP API (CORS).
    pub cors: Vec<String>,
}

/// Everything a request or socket needs, shared behind one `Arc`.
pub struct App {
    /// The validated settings.
    pub config: Config,
    /// Verifies tokens and API keys.
    pub auth: Authenticator,
    /// Authenticates OAuth clients at the token endpoint.
    pub client_auth: ClientAuth,
    pub hub_issuers: HubIssuers,
    pub origins: Origins,
    /// Connected sockets by user and session.
    pub registry: Arc<Registry>,
    /// Watermarks and the core of the logout path.
    pub revocation: Revocation,
    /// Native-to-Web SSO: clients, transfer tokens, web sessions.
    pub sessions: Sessions,
    /// Tells client backends which web sessions ended.
    pub notifier: Notifier,
    /// Pusher-protocol apps, channels and users.
    pub pusher: Pusher,
    /// The console's samples and Pusher debug feed.
    pub console: Arc<crate::console::Console>,
    /// Every logout, revocation and transfer, recorded.
    pub audit: crate::audit::Audit,
    /// The other nodes, when there are any (`cluster`).
    pub broker: Option<Arc<dyn Broker>>,
    pub metrics: Arc<Metrics>,
    /// Connection counts and connect rates per address.
    pub limits: Arc<ConnLimits>,
    /// Trusted proxies: who the client behind them is.
    pub proxies: crate::net::Proxies,
    /// Trigger rate per user token.
    pub user_trigger_limits: KeyedLimiter<UserKey>,
    /// Every task the hub spawns, so shutdown can wait for them.
    pub tasks: TaskTracker,
    /// Cancelled once, when shutdown starts.
    pub shutdown: CancellationToken,
    /// Origins and user agents of sockets, shared (`ConnMeta`).
    pub interned: crate::util::Interner,
    /// Memory held by frames still arriving, over every socket.
    pub partial_memory: Arc<ws::partial::PartialMemory>,
    /// Parked sockets that were woken (from whatever thread), polled on the
    /// runtime the hub started on.
    pub(crate) woken: ws::parked::Woken,
    /// Dev mode: a file holding an API key with every scope.
    pub dev_api_key_file: Option<PathBuf>,
    pub(crate) next_conn: AtomicU64,
}

impl App {
    pub fn next_conn_id(&self) -> u64 {
        self.next_conn.fetch_add(1, Ordering::Relaxed)
    }

    /// Whether a logout revoked this user token: its user's or session's
    /// watermark, or, for a hub session token, the end of its web session
    /// in the graph (which holds even where the watermark was never written).
    pub async fn principal_revoked(&self, p: &Principal) -> Result<bool, StoreError> {
        let user = UserKey {
            iss: p.issuer,
            sub: p.sub.clone(),
        };
        let session = p.sid.as_ref().map(|sid| SessionKey {
            iss: p.issuer,
            sid: sid.clone(),
        });
        if self
            .revocation
            .revoked_token(p.iat, &user, session.as_ref())
            .await?
            .is_some()
        {
            return Ok(true);
        }
        match (&p.sid, p.issuer == self.hub_issuers.session_id) {
            (Some(sid), true) => self.sessions.ended_before(sid, p.iat).await,
            _ => Ok(false),
        }
    }

    /// Whether the hub can do its job: what `/readyz` reports, answered at
    /// once (nothing here waits on I/O).
    pub fn problems(&self) -> Vec<&'static str> {
        let mut problems = Vec::new();
        if self.shutdown.is_cancelled() {
            problems.push("shutting down");
        }
        if !self.auth.keys_ready_now() {
            problems.push("issuer keys not loaded");
        }
        if self.config.idle_warning().is_some() {
            problems.push("nothing configured: no issuer, API key, SSO client or Pusher app");
        }
        if self.broker.as_ref().is_some_and(|b| !b.is_ready()) {
            problems.push("Redis (cluster) unreachable: new logins are refused");
        }
        problems
    }
}
