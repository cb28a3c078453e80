//! Start-up: binds, opens the store, builds every component of [`App`] in
//! named steps, starts the background tasks and the server.
//!
//! The order matters in two places: the store is opened before anything
//! is written to the data directory (a second hub on the same directory is
//! refused before it could overwrite the first one's dev API key), and the
//! signing keys come from the store when several nodes share it (a token
//! one node signs must verify on every other).
//!
//! Must not: serve anything before the app is complete.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::AtomicU64;
use std::time::Duration;

use base64::Engine;
use base64::engine::general_purpose::STANDARD as B64;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::app::{App, HubIssuers, Origins};
use crate::auth::dev_issuer::DevIssuer;
use crate::auth::signer::{Signer, SignerError};
use crate::auth::{ApiKeys, Authenticator, IssuerId};
use crate::config::{self, ClientKind, ClientSettings, Config, IssuerSettings, StoreKind};
use crate::metrics::Metrics;
use crate::registry::Registry;
use crate::revocation::Revocation;
use crate::server::{self, Capacity, ConnLimits};
use crate::sessions::{self, Sessions};
use crate::store::audit::AuditLog;
use crate::store::graph::{GraphStore, LocalGraphs};
use crate::store::presence::{LocalPresence, Presence};
use crate::store::{Broker, Durable, Kind, Record, StoreError};
use crate::util::{self, KeyedLimiter};
use crate::{auth, background, demo, http, notify, pusher, store, ws};

mod identity;
use identity::{build_auth, build_issuers, build_origins, leeways, sso_clients};

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
    Signer(#[from] SignerError),
    #[error("issuers: {0}")]
    Issuers(String),
    #[error("the HTTP client cannot be built: {0}")]
    HttpClient(#[from] reqwest::Error),
    #[error("{0}; refusing to start with an empty store in its place")]
    Store(#[from] StoreError),
}

/// A running hub.
pub struct Hub {
    app: Arc<App>,
    /// Where the hub listens.
    pub addr: SocketAddr,
    /// Where the operator's endpoints listen, when not on `addr`.
    pub operator_addr: Option<SocketAddr>,
    /// The demo apps: (name, address).
    pub demos: Vec<(&'static str, SocketAddr)>,
}

/// The listening sockets, bound first so the URLs are known.
struct Listeners {
    main: TcpListener,
    addr: SocketAddr,
    /// The operator's endpoints' own listener (`console.listen`).
    operator: Option<(TcpListener, SocketAddr)>,
    demos: Vec<(&'static demo::DemoApp, TcpListener)>,
    demo_addrs: Vec<(&'static str, SocketAddr)>,
}

/// What the store gave: its parts, and what the embedded one held.
struct Stores {
    durable: Arc<dyn Durable>,
    broker: Option<Arc<dyn Broker>>,
    graphs: Arc<dyn GraphStore>,
    presence: Arc<dyn Presence>,
    audit: Arc<dyn AuditLog>,
    stored: Vec<Record>,
}

fn bind(config: &mut Config) -> Result<Listeners, StartError> {
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
    let mut demos = Vec::new();
    if config.dev.demo {
        for (d, port) in demo::APPS.iter().zip([demo_a, demo_b]) {
            let at = SocketAddr::new(addr.ip(), port);
            let l = server::bind(at).map_err(|source| StartError::Bind { addr: at, source })?;
            demos.push((d, l));
        }
    }
    let demo_addrs = demos
        .iter()
        .filter_map(|(d, l)| l.local_addr().ok().map(|a| (d.name, a)))
        .collect();
    let operator = match config.console.listen {
        Some(at) => {
            let l = server::bind(at).map_err(|source| StartError::Bind { addr: at, source })?;
            let a = l
                .local_addr()
                .map_err(|source| StartError::Bind { addr: at, source })?;
            Some((l, a))
        }
        None => None,
    };
    Ok(Listeners {
        main: listener,
        addr,
        operator,
        demos,
        demo_addrs,
    })
}

async fn open_store(config: &Config) -> Result<Stores, StartError> {
    if let Some(url) = &config.cluster {
        // Redis is the shared store; a local file would diverge between nodes.
        let redis = store::redis::Redis::connect(url).await?;
        tracing::info!(redis = %redis.place, "cluster: sharing state through Redis");
        return Ok(Stores {
            durable: redis.clone(),
            broker: Some(Arc::new(store::redis::RedisBroker::new(redis.clone()))),
            graphs: Arc::new(store::redis::RedisGraphs::new(redis.clone())),
            presence: Arc::new(store::redis::RedisPresence::new(redis.clone())),
            audit: Arc::new(store::redis::RedisAudit::new(redis)),
            stored: Vec::new(),
        });
    }
    type Opened = (Arc<dyn Durable>, Arc<dyn AuditLog>, Vec<Record>);
    let (durable, audit, stored): Opened = match config.store {
        StoreKind::Embedded => {
            let (journal, stored) = store::embedded::open(&config.data_dir)?;
            tracing::info!(
                path = %config.data_dir.join("slo-hub.redb").display(),
                records = stored.len(),
                "store opened"
            );
            let journal = Arc::new(journal);
            (
                Arc::new(store::local::Local::embedded(journal.clone())),
                Arc::new(store::audit::EmbeddedAudit::new(journal)),
                stored,
            )
        }
        StoreKind::Memory => {
            tracing::warn!(
                "store = \"memory\": nothing survives a restart: logouts are kept in this process only, and after a restart revoked tokens work again until they expire"
            );
            (
                Arc::new(store::local::Local::memory()),
                Arc::new(store::audit::MemoryAudit::default()),
                Vec::new(),
            )
        }
    };
    let graphs = LocalGraphs::new(durable.clone());
    sessions::restore(&graphs, &stored);
    Ok(Stores {
        durable,
        broker: None,
        graphs: Arc::new(graphs),
        presence: Arc::new(LocalPresence::default()),
        audit,
        stored,
    })
}

impl Hub {
    /// Binds, wires every part and starts serving.
    pub async fn start(mut config: Config) -> Result<Hub, StartError> {
        auth::crypto::install();
        let listeners = bind(&mut config)?;
        let public_url = config.public_url();
        std::fs::create_dir_all(&config.data_dir).map_err(|source| StartError::DataDir {
            path: config.data_dir.clone(),
            source,
        })?;
        let stores = open_store(&config).await?;
        let clients = sso_clients(&config, &listeners.demo_addrs);
        let (issuers, hub_issuers, roots) =
            build_issuers(&config, &public_url, &clients, &stores).await?;
        if let Some(w) = config.idle_warning() {
            tracing::warn!("{w}; /readyz answers 503 until the config has one");
        }
        let origins = build_origins(&config, &public_url, &listeners.demo_addrs, &clients);
        for a in &config.pusher_apps {
            tracing::info!(
                app = %a.id,
                enabled = a.enabled,
                origins = %a.allowed_origins.join(" "),
                webhooks = a.webhooks.len(),
                "pusher app: pages of these origins may open sockets (\"*\": any)"
            );
        }
        let (auth, dev_api_key_file) = build_auth(&config, &issuers).await?;

        let metrics = Arc::new(Metrics::new());
        let windows = Arc::new(ws::window::Windows::new(config.relogin_window()));
        let registry = Arc::new(Registry::new(metrics.connections.clone(), windows.clone()));
        let revocation = Revocation::new(
            registry.clone(),
            metrics.clone(),
            config.max_token_lifetime_secs,
            stores.durable.clone(),
            stores.broker.clone(),
            issuers.iter().map(|i| i.issuer.clone()).collect(),
            leeways(&issuers, &hub_issuers),
        );
        let restored = revocation.restore(&stores.stored);
        if restored > 0 {
            tracing::info!(restored, "watermarks restored");
        }
        let sessions = Sessions::new(&config, &clients, stores.graphs.clone(), &roots);
        let capacity = Capacity::of(&config);
        tracing::info!(
            max_connections = capacity.max_total,
            per_address = capacity.max_per_ip,
            fd_limit = capacity.fd_limit,
            fd_reserve = capacity.reserve,
            "connection limits"
        );
        let tasks = TaskTracker::new();
        let console = Arc::new(crate::console::Console::default());
        let notifier = notify::Notifier::new(
            &config.notify,
            &clients,
            hub_issuers.session.clone(),
            metrics.clone(),
        )?;
        let client_auth =
            auth::clients::ClientAuth::new(&clients, &public_url).map_err(StartError::Issuers)?;
        let app = Arc::new(App {
            limits: Arc::new(ConnLimits::new(&config, capacity)),
            proxies: crate::net::Proxies::new(
                config
                    .http
                    .trusted_proxies
                    .iter()
                    .chain(&config.transfer.trusted_proxies),
            ),
            user_trigger_limits: KeyedLimiter::new(
                config.limits.user_triggers_per_sec,
                config.limits.user_trigger_burst,
            ),
            auth,
            client_auth,
            hub_issuers,
            origins,
            registry,
            revocation,
            sessions,
            notifier,
            pusher: pusher::Pusher::new(
                &config.pusher_apps,
                stores.presence,
                stores.broker.clone(),
                console.clone(),
                metrics.clone(),
                // One node keeps webhook requests in its journal.
                stores.broker.is_none().then(|| stores.durable.clone()),
            ),
            console,
            broker: stores.broker,
            audit: crate::audit::Audit::new(
                stores.audit,
                metrics.clone(),
                config.audit.retention_days,
                config.audit.max_entries,
            ),
            metrics,
            woken: ws::parked::Woken::start(tasks.clone()),
            interned: crate::util::Interner::new(10_000, 1024),
            partial_memory: Arc::new(ws::partial::PartialMemory::new(
                config.limits.partial_frames_bytes,
            )),
            tasks,
            shutdown: CancellationToken::new(),
            dev_api_key_file,
            next_conn: AtomicU64::new(1),
            config,
        });
        let kept = app.pusher.webhooks().restore(&stores.stored);
        if kept > 0 {
            tracing::info!(requests = kept, "pusher: webhook requests restored");
        }
        background::spawn_all(&app, windows);
        let Listeners {
            main,
            addr,
            operator,
            demos: demo_listeners,
            demo_addrs,
        } = listeners;
        for (d, l) in demo_listeners {
            demo::spawn(&app, d, l, &public_url);
        }
        let mut router = http::router(app.clone());
        if app.config.dev.demo {
            router = router.merge(demo::native_sim(&app, &demo_addrs));
        }
        app.tasks.spawn(server::serve(app.clone(), main, router));
        let operator_addr = operator.map(|(l, a)| {
            let r = http::operator_router(app.clone());
            app.tasks.spawn(server::serve(app.clone(), l, r));
            a
        });
        Ok(Hub {
            app,
            addr,
            operator_addr,
            demos: demo_addrs,
        })
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
        self.app.revocation.close_store();
    }
}
