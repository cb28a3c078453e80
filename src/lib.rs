//! slo-hub: a single-logout push hub.
//!
//! When a user logs out of one application, every other application the user
//! has open — SPAs on other domains, web sessions a native app handed off —
//! is told over a WebSocket within milliseconds and clears its session.
//!
//! ```text
//!  trigger (POST /v1/logout)          SPA socket (GET /v1/ws)
//!        │                                   │
//!        ▼                                   ▼
//!   http::logout ──► auth ◄──────────── ws::socket (first message: auth)
//!        │                                   │ register, then check watermark
//!        ▼                                   ▼
//!   revocation ── 1. watermark (store) ──► registry ◄── 2. publish
//!                                            │
//!                                            ▼
//!                                  ws::conn (direct, bounded write) ──► socket
//! ```
//!
//! * [`config`] — settings, layered and validated once.
//! * [`server`] — accept, connection limits, HTTP/1.1 with a header timeout.
//! * [`http`] — the HTTP endpoints; [`ws`] — the socket endpoint.
//! * [`auth`] — JWTs (per issuer, JWKS), API keys, the dev issuer.
//! * [`sessions`] — the Native-to-Web session graph (transfer tokens, web
//!   sessions, refresh tokens) and the rules that revoke along it.
//! * [`revocation`] — a logout becomes a watermark, then a push.
//! * [`registry`] — who is connected, by user and by session.
//! * [`notify`] — back-channel logout tokens to app backends when the hub
//!   ends one of its own web sessions.
//! * [`pusher`] — Pusher protocol v7 and HTTP API, bridged with the logout.
//! * [`store`] — watermarks (what must outlive a socket).
//! * [`error`] — every status and close code, mapped in one place.
//! * [`metrics`] — Prometheus counters.
//!
//! [`Hub::start`] wires them together; `main.rs` only parses the command line.

pub mod auth;
pub mod cluster;
pub mod config;
pub mod demo;
pub mod error;
pub mod http;
pub mod metrics;
pub mod notify;
pub mod pusher;
pub mod registry;
pub mod revocation;
pub mod server;
pub mod sessions;
pub mod store;
pub mod util;
pub mod ws;

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::auth::dev_issuer::DevIssuer;
use crate::auth::signer::Signer;
use crate::auth::{ApiKeys, Authenticator, IssuerId};
use crate::config::{Config, StoreKind};
use crate::metrics::Metrics;
use crate::registry::{Registry, UserKey};
use crate::revocation::Durable;
use crate::revocation::{LogoutOrder, Revocation};
use crate::server::ConnLimits;
use crate::sessions::{Ended, Sessions};
use crate::util::KeyedLimiter;

/// Everything a request or socket needs, shared behind one `Arc`.
pub struct App {
    /// The validated settings.
    pub config: Config,
    /// Verifies tokens and API keys.
    pub auth: Authenticator,
    /// Connected sockets by user and session.
    pub registry: Arc<Registry>,
    /// Watermarks and the logout path.
    pub revocation: Revocation,
    pub metrics: Arc<Metrics>,
    /// Connection counts and connect rates per address.
    pub limits: Arc<ConnLimits>,
    /// Trigger rate per user token.
    pub user_trigger_limits: KeyedLimiter<UserKey>,
    /// The dev-mode token minter, when enabled, and its issuer id.
    pub dev_issuer: Option<DevIssuer>,
    pub dev_issuer_id: Option<IssuerId>,
    /// Origins that may open sockets (config plus, in dev mode, the demo apps).
    pub allowed_origins: Vec<String>,
    /// Origins that may call the HTTP API from a browser.
    pub cors_origins: Vec<String>,
    /// Every task the hub spawns, so shutdown can wait for them.
    pub tasks: TaskTracker,
    /// Parked sockets that were woken (from whatever thread), polled on the
    /// runtime the hub started on.
    pub(crate) woken: ws::parked::Woken,
    /// Cancelled once, when shutdown starts.
    pub shutdown: CancellationToken,
    /// Dev mode: a file holding an API key with every scope (new each start).
    pub dev_api_key_file: Option<PathBuf>,
    /// Set when several nodes share Redis (`cluster`).
    pub cluster: Option<Arc<cluster::Cluster>>,
    /// Native-to-Web SSO: clients, transfer tokens, web sessions.
    pub sessions: Sessions,
    /// Signs the session tokens of transfer-created web sessions (and the
    /// back-channel logout tokens about them).
    pub session_signer: Arc<Signer>,
    pub session_issuer_id: IssuerId,
    /// Tells client backends which web sessions the hub ended.
    pub notifier: notify::Notifier,
    /// Authenticates OAuth clients at the token endpoint.
    pub client_auth: auth::clients::ClientAuth,
    /// Pusher-protocol apps, channels and users.
    pub pusher: pusher::Pusher,
    next_conn: AtomicU64,
}

impl App {
    pub fn next_conn_id(&self) -> u64 {
        self.next_conn.fetch_add(1, Ordering::Relaxed)
    }

    /// Whether a logout revoked this user token: its user's or session's
    /// watermark, or, for a hub session token, the end of its web session
    /// in the graph (which holds even where the watermark was never written).
    pub async fn principal_revoked(&self, p: &auth::Principal) -> Result<bool, store::StoreError> {
        let user = registry::UserKey {
            iss: p.issuer,
            sub: p.sub.clone(),
        };
        let session = p.sid.as_ref().map(|sid| registry::SessionKey {
            iss: p.issuer,
            sid: sid.clone(),
        });
        if self
            .revocation
            .revoked_token(p.iat, &user, session.as_ref())
            .is_some()
        {
            return Ok(true);
        }
        match (&p.sid, p.issuer == self.session_issuer_id) {
            (Some(sid), true) => self.sessions.ended_before(sid, p.iat).await,
            _ => Ok(false),
        }
    }

    /// A logout by any trigger (`/v1/logout`, back-channel, CAEP): the one
    /// logout path, then the session graph follows it. A logout of a hub
    /// web session (or user) ends those web sessions; a logout of an
    /// upstream session or user revokes the native sessions rooted there
    /// and, by the cascade rule, pushes to their web sessions.
    pub async fn logout(
        &self,
        order: LogoutOrder,
    ) -> Result<revocation::LogoutOutcome, store::StoreError> {
        let target = order.target.clone();
        let reason = order.reason.clone();
        let outcome = self.revocation.logout(order).await?;
        self.follow_logout(&target, &reason).await?;
        Ok(outcome)
    }

    /// [`App::logout`] for a token with a `jti`, once (see
    /// `Revocation::logout_once`): `Ok(false)` for a replay.
    pub async fn logout_once(
        &self,
        iss: IssuerId,
        jti: &str,
        expires_at_ms: i64,
        order: LogoutOrder,
    ) -> Result<bool, store::StoreError> {
        let target = order.target.clone();
        let reason = order.reason.clone();
        let first = self
            .revocation
            .logout_once(iss, jti, expires_at_ms, order)
            .await?;
        if first {
            self.follow_logout(&target, &reason).await?;
        }
        Ok(first)
    }

    /// A user's logout also reaches their signed-in Pusher sockets (apps
    /// whose `logout_issuer` is the user's issuer).
    fn bridge_to_pusher(&self, target: &registry::Target, reason: &str) {
        if let registry::Target::User(k) = target {
            let iss = self.auth.issuer_name(k.iss);
            self.pusher.user_logged_out(iss, &k.sub, reason);
        }
    }

    /// What follows a logout once its sockets were told: the user's Pusher
    /// sockets, then the session graph.
    async fn follow_logout(
        &self,
        target: &registry::Target,
        reason: &str,
    ) -> Result<(), store::StoreError> {
        use registry::Target;
        use sessions::Revoke;
        self.bridge_to_pusher(target, reason);
        let iss = match target {
            Target::User(k) => k.iss,
            Target::Session(k) => k.iss,
        };
        if iss == self.session_issuer_id {
            // The sockets were told by the logout itself.
            let (sid, sub) = match target {
                Target::Session(k) => (Some(&*k.sid), None),
                Target::User(k) => (None, Some(&*k.sub)),
            };
            let ended = self.sessions.logged_out(sid, sub).await?;
            self.notifier.sessions_ended(&ended);
            return Ok(());
        }
        let iss = self.auth.issuer_name(iss).to_string();
        let what = match target {
            Target::Session(k) => Revoke::External {
                iss,
                sid: k.sid.to_string(),
            },
            Target::User(k) => Revoke::User {
                sub: k.sub.to_string(),
                iss: Some(iss),
            },
        };
        let revoked = match self.sessions.revoke(&what).await {
            Ok(r) => r,
            Err(sessions::SessionError::Store(s)) => return Err(s),
            // Nothing of this user or session is in the graph.
            Err(_) => return Ok(()),
        };
        self.end_web_sessions(&revoked.web_sessions, "cascade", "cascade")
            .await
    }

    /// Pushes the logout of web sessions the session graph ended (revoked,
    /// cascaded, expired), each through the one logout path, and queues the
    /// back-channel logout tokens for their backends. Returns the first
    /// failure to record one; every session is still attempted.
    pub async fn end_web_sessions(
        &self,
        ended: &[Ended],
        reason: &str,
        source: &'static str,
    ) -> Result<(), store::StoreError> {
        let mut first_error = None;
        for e in ended {
            let order = LogoutOrder {
                target: registry::Target::Session(registry::SessionKey {
                    iss: self.session_issuer_id,
                    sid: e.sid.as_str().into(),
                }),
                sub: Some(e.sub.as_str().into()),
                reason: reason.to_string(),
                source,
                wait_for_acks: None,
            };
            if let Err(err) = self.revocation.logout(order).await {
                first_error.get_or_insert(err);
            }
        }
        self.notifier.sessions_ended(ended);
        first_error.map_or(Ok(()), Err)
    }
}

/// Why the hub could not start. `main` exits with code 2 for all of them.
#[derive(Debug, thiserror::Error)]
pub enum StartError {
    #[error("cannot listen on {addr}: {source}")]
    Bind {
        addr: SocketAddr,
        source: std::io::Error,
    },
    #[error("data directory {path}: {source}")]
    DataDir {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error(transparent)]
    Signer(#[from] auth::signer::SignerError),
    #[error("auth: {0}")]
    Auth(String),
    #[error("{0}; refusing to start with an empty store in its place")]
    Store(#[from] store::StoreError),
}

/// A running hub.
pub struct Hub {
    app: Arc<App>,
    /// Where the hub listens.
    pub addr: SocketAddr,
    /// The demo apps: (name, address).
    pub demos: Vec<(&'static str, SocketAddr)>,
}

impl Hub {
    /// Binds, wires every part and starts serving.
    pub async fn start(mut config: Config) -> Result<Hub, StartError> {
        auth::crypto::install();
        let listener = server::bind(config.listen).map_err(|source| StartError::Bind {
            addr: config.listen,
            source,
        })?;
        let addr = listener.local_addr().map_err(|source| StartError::Bind {
            addr: config.listen,
            source,
        })?;
        // Demo ports follow the configured port; with port 0 (tests) they are
        // ephemeral too, since the real port's neighbours may be taken.
        let (demo_a, demo_b) = config.demo_ports();
        // Port 0 becomes the real port, so URLs follow it.
        config.listen = addr;
        let public_url = config.public_url();

        let mut demo_listeners = Vec::new();
        if config.dev.demo {
            for (demo, port) in demo::APPS.iter().zip([demo_a, demo_b]) {
                let at = SocketAddr::new(addr.ip(), port);
                let l = server::bind(at).map_err(|source| StartError::Bind { addr: at, source })?;
                demo_listeners.push((demo, l));
            }
        }
        let demos: Vec<(&'static str, SocketAddr)> = demo_listeners
            .iter()
            .filter_map(|(d, l)| l.local_addr().ok().map(|a| (d.name, a)))
            .collect();

        let mut allowed_origins = config.ws.allowed_origins.clone();
        // (Web clients' origins are added below, once the clients are known.)
        if config.is_dev() {
            allowed_origins.push(public_url.clone());
            for (_, a) in &demos {
                allowed_origins.push(format!("http://{a}"));
                allowed_origins.push(format!("http://localhost:{}", a.port()));
            }
        }

        let data_dir_error = |source| StartError::DataDir {
            path: config.data_dir.clone(),
            source,
        };
        // Always: the hub's session-signing key lives there.
        std::fs::create_dir_all(&config.data_dir).map_err(data_dir_error)?;
        let mut issuers = config.issuers.clone();
        let mut dev_issuer = None;
        let mut dev_issuer_id = None;
        if config.dev.issuer {
            let dev = DevIssuer::load_or_create(&config.data_dir, format!("{public_url}/dev"))?;
            dev_issuer_id = Some(IssuerId(issuers.len() as u16));
            issuers.push(dev.issuer_settings());
            if !config.is_dev() {
                tracing::warn!(
                    "the dev issuer is enabled in production mode: it answers loopback clients only; turn it off (dev.issuer = false) for real deployments"
                );
            }
            dev_issuer = Some(dev);
        }
        let clients = sso_clients(&config, &demos);
        // Native sessions are rooted at these issuers (not the hub's own).
        let root_issuers: Vec<String> = issuers.iter().map(|i| i.issuer.clone()).collect();
        check_issuer_tags(&root_issuers)?;
        let session_signer = Arc::new(Signer::load_or_create(
            &config.data_dir,
            "hub-session.ed25519.pk8",
            "session",
            public_url.clone(),
        )?);
        let session_issuer_id = IssuerId(issuers.len() as u16);
        let mut session_audiences: Vec<String> = clients
            .iter()
            .filter(|c| c.kind == config::ClientKind::Web)
            .map(|c| c.client_id.clone())
            .collect();
        if session_audiences.is_empty() {
            // No web client: no session token can be issued; keep the issuer valid.
            session_audiences.push("slo-hub-session".into());
        }
        issuers.push(session_signer.issuer_settings(session_audiences));
        for c in &clients {
            for o in &c.allowed_origins {
                if !allowed_origins.contains(o) {
                    allowed_origins.push(o.clone());
                }
            }
        }
        let cors_origins = if config.http.cors_origins.is_empty() {
            allowed_origins.clone()
        } else {
            config.http.cors_origins.clone()
        };
        let mut api_keys = ApiKeys::new(&config.api_keys);
        let mut dev_api_key_file = None;
        if config.is_dev() {
            // A fresh key each start, in a 0600 file rather than on the console.
            let (key, _) = auth::api_keys::generate();
            let path = config.data_dir.join("dev-api-key");
            util::write_private_file(&path, format!("{key}\n").as_bytes())
                .map_err(data_dir_error)?;
            api_keys.add("dev", &key, config::API_SCOPES);
            dev_api_key_file = Some(path);
        }
        let http = reqwest::Client::builder()
            .redirect(reqwest::redirect::Policy::none())
            .build()
            .map_err(|e| StartError::Auth(e.to_string()))?;
        let auth = Authenticator::new(&issuers, api_keys, config.max_token_lifetime_secs, http)
            .map_err(StartError::Auth)?;
        auth.load_keys().await;

        let (durable, stored, cluster) = if let Some(url) = &config.cluster {
            // Redis is the shared store; a local file would diverge between nodes.
            let (c, stored) = cluster::Cluster::connect(url).await?;
            let c = Arc::new(c);
            (Arc::new(Durable::Cluster(c.clone())), stored, Some(c))
        } else {
            match config.store {
                StoreKind::Embedded => {
                    let (j, stored) = store::embedded::open(&config.data_dir)?;
                    (Arc::new(Durable::Journal(j)), stored, None)
                }
                StoreKind::Memory => {
                    tracing::warn!(
                        "store = \"memory\": nothing survives a restart: logouts are kept in this process only, and after a restart revoked tokens work again until they expire"
                    );
                    (Arc::new(Durable::Nothing), Vec::new(), None)
                }
            }
        };
        let issuer_names = issuers.iter().map(|i| i.issuer.clone()).collect();
        // The hub's own issuers (dev, sessions) share its clock.
        let own = [dev_issuer_id, Some(session_issuer_id)];
        let leeways = issuers
            .iter()
            .enumerate()
            .map(|(i, s)| {
                let hub_issued = own.contains(&Some(IssuerId(i as u16)));
                if hub_issued { 0 } else { s.leeway_secs as i64 }
            })
            .collect();
        let metrics = Arc::new(Metrics::new());
        let relogin_windows = Arc::new(ws::window::Windows::new(config.relogin_window()));
        let registry = Arc::new(Registry::new(
            metrics.connections.clone(),
            relogin_windows.clone(),
        ));
        let revocation = Revocation::new(
            registry.clone(),
            metrics.clone(),
            config.max_token_lifetime_secs,
            durable.clone(),
            issuer_names,
            leeways,
        );
        let graphs = Arc::new(store::graph::LocalGraphs::new(durable));
        let graph_restored = sessions::restore(&graphs, &stored);
        let sessions = Sessions::new(&config, &clients, graphs, &root_issuers);
        let restored = revocation.restore(stored) + graph_restored;
        match (&config.cluster, config.store) {
            (Some(url), _) => {
                tracing::info!(restored, %url, "cluster: watermarks loaded from Redis")
            }
            (None, StoreKind::Embedded) => tracing::info!(
                restored,
                path = %config.data_dir.join("slo-hub.redb").display(),
                "store opened"
            ),
            (None, StoreKind::Memory) => {}
        }
        let capacity = server::Capacity::of(&config);
        tracing::info!(
            max_connections = capacity.max_total,
            per_address = capacity.max_per_ip,
            fd_limit = capacity.fd_limit,
            fd_reserve = capacity.reserve,
            "connection limits"
        );
        let limits = Arc::new(ConnLimits::new(&config, capacity));
        let user_trigger_limits = KeyedLimiter::new(
            config.limits.user_triggers_per_sec,
            config.limits.user_trigger_burst,
        );
        let tasks = TaskTracker::new();
        let shutdown = CancellationToken::new();
        let notifier = notify::Notifier::new(
            &config.notify,
            &clients,
            session_signer.clone(),
            metrics.clone(),
            tasks.clone(),
            shutdown.clone(),
        )
        .map_err(|e| StartError::Auth(e.to_string()))?;
        let client_auth =
            auth::clients::ClientAuth::new(&clients, &public_url).map_err(StartError::Auth)?;
        let woken = ws::parked::Woken::start(tasks.clone());
        let app = Arc::new(App {
            auth,
            registry,
            revocation,
            metrics,
            limits,
            user_trigger_limits,
            dev_issuer,
            dev_issuer_id,
            allowed_origins,
            cors_origins,
            tasks,
            shutdown,
            dev_api_key_file,
            cluster: cluster.clone(),
            sessions,
            session_signer,
            session_issuer_id,
            notifier,
            client_auth,
            pusher: pusher::Pusher::new(&config.pusher_apps),
            next_conn: AtomicU64::new(1),
            woken,
            config,
        });

        app.auth.spawn_refresh(&app.tasks, app.shutdown.clone());
        app.tasks.spawn(ws::heartbeat(app.clone()));
        let shutdown = app.shutdown.clone();
        app.tasks
            .spawn(async move { relogin_windows.run(shutdown).await });
        app.tasks.spawn(maintenance(app.clone()));
        app.tasks.spawn(expire_web_sessions(app.clone()));
        if let Some(c) = cluster {
            app.tasks.spawn(cluster::follow(app.clone(), c));
        }
        for (demo, l) in demo_listeners {
            demo::spawn(&app, demo, l, &public_url);
        }
        let mut router = http::router(app.clone());
        if app.config.dev.demo {
            router = router.merge(demo::native_sim(&app, &demos));
        }
        app.tasks
            .spawn(server::serve(app.clone(), listener, router));
        Ok(Hub { app, addr, demos })
    }

    pub fn app(&self) -> &Arc<App> {
        &self.app
    }

    /// `http://host:port` of the hub.
    pub fn url(&self) -> String {
        self.app.config.public_url()
    }

    /// Graceful shutdown: stop accepting, finish in-flight requests, close
    /// sockets with 1012, and wait (at most `deadline`) for every task.
    pub async fn shutdown(self, deadline: Duration) {
        self.app.shutdown.cancel();
        ws::close_all_for_restart(&self.app);
        self.app.tasks.close();
        if tokio::time::timeout(deadline, self.app.tasks.wait())
            .await
            .is_err()
        {
            tracing::warn!(
                "shutdown deadline passed with {} tasks still running",
                self.app.tasks.len()
            );
        }
        // Every socket woken above was polled (the tracker counted them).
        self.app.woken.stop();
        // Last: in-flight triggers above have had their commits.
        self.app.revocation.close_journal();
    }
}

/// Periodic housekeeping: expire watermarks, forget idle rate buckets.
async fn maintenance(app: Arc<App>) {
    loop {
        tokio::select! {
            _ = app.shutdown.cancelled() => return,
            _ = tokio::time::sleep(Duration::from_secs(60)) => {}
        }
        let expired = app.revocation.expire().await;
        if expired > 0 {
            tracing::debug!(expired, "watermarks expired");
        }
        app.user_trigger_limits.forget_idle();
        app.auth.expire_cache();
        app.sessions.purge(util::now_ms());
    }
}

/// Ends web sessions at their idle or absolute deadline and pushes their
/// logout (reason `session_expired`) at that moment, not at the next request.
async fn expire_web_sessions(app: Arc<App>) {
    loop {
        let now = util::now_ms();
        // Without a live session, wake at least every minute anyway.
        let wait_ms = app
            .sessions
            .next_deadline()
            .map_or(60_000, |t| (t - now).clamp(0, 60_000));
        tokio::select! {
            _ = app.shutdown.cancelled() => return,
            _ = app.sessions.deadline_changed().notified() => continue,
            _ = tokio::time::sleep(Duration::from_millis(wait_ms as u64)) => {}
        }
        let ended = match app.sessions.expire_due().await {
            Ok(e) => e,
            Err(e) => {
                tracing::warn!(error = %e, "session graph: recording expiries failed; retrying");
                tokio::select! {
                    _ = app.shutdown.cancelled() => return,
                    _ = tokio::time::sleep(Duration::from_secs(1)) => {}
                }
                continue;
            }
        };
        if !ended.is_empty() {
            tracing::info!(sessions = ended.len(), "web sessions expired");
            if let Err(e) = app
                .end_web_sessions(&ended, "session_expired", "expiry")
                .await
            {
                tracing::warn!(error = %e, "expired sessions were pushed but not recorded");
            }
        }
    }
}

/// Hub subjects name their issuer by a 32-bit tag (`sessions::hub_subject`):
/// two configured issuers with one tag would share their users.
fn check_issuer_tags(issuers: &[String]) -> Result<(), StartError> {
    let mut seen = std::collections::HashMap::new();
    for iss in issuers {
        if let Some(other) = seen.insert(sessions::issuer_tag(iss), iss) {
            return Err(StartError::Auth(format!(
                "issuers {other:?} and {iss:?} have the same subject tag; rename one"
            )));
        }
    }
    Ok(())
}

/// The registered clients; in dev mode with none configured, the demo's:
/// `native-sim` (mints transfer tokens) and the demo apps as web clients
/// (with their front-channel logout pages and post-logout addresses).
fn sso_clients(
    config: &Config,
    demos: &[(&'static str, SocketAddr)],
) -> Vec<config::ClientSettings> {
    use config::{ClientKind, ClientSettings};
    if !config.is_dev() || !config.clients.is_empty() {
        return config.clients.clone();
    }
    let mut native = ClientSettings::new("native-sim", ClientKind::Native);
    native.can_create_session_transfer_token = true;
    let mut clients = vec![native];
    for (name, addr) in demos {
        let mut web = ClientSettings::new(name, ClientKind::Web);
        for host in [addr.ip().to_string(), "localhost".into()] {
            let origin = format!("http://{host}:{}", addr.port());
            web.redirect_uris.push(format!("{origin}/"));
            web.post_logout_redirect_uris.push(format!("{origin}/"));
            web.allowed_origins.push(origin);
        }
        // The address the hub prints, so the iframe shares the app's storage.
        web.frontchannel_logout_uri =
            Some(format!("http://{addr}{}", demo::FRONTCHANNEL_LOGOUT_PATH));
        web.allow_refresh_token = true;
        clients.push(web);
    }
    clients
}
