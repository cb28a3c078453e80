//! The session graph of Native-to-Web SSO: what it answers, and how a
//! change reaches the store.
//!
//! ```text
//!  native session ──refresh tokens          (root: a hub refresh token, or an
//!        │  └─ transfer tokens (60 s, once)  upstream session (iss, sid))
//!        └──► web sessions ── web refresh tokens, codes
//! ```
//!
//! * `model` — the entities, grouped per user ([`model::UserGraph`]).
//! * `rules` — what opens, joins, revokes and cascades (unit-tested).
//! * `secrets` — how secrets are made and checked (digests only are kept).
//! * `binding` — the client address and ASN a transfer token is bound to.
//!
//! Every operation finds its user (directly, or through a pointer: a
//! secret's digest, a session id), then *mutates* that user's graph: load
//! it with its version, apply the rules, and save it only if the version is
//! unchanged (`store::graph`); on a conflict it runs again on the fresh
//! graph. Nothing is answered before the save is durable, and a save that
//! lost a race never reaches the store, so nothing revoked or used can come
//! back, after any restart.
//!
//! Must not: write to sockets (the caller pushes [`Ended`] through the
//! logout path), sign tokens, or parse HTTP.

pub mod binding;
mod end;
pub mod model;
mod native;
pub mod rules;
pub mod secrets;
mod web;

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::Arc;

pub use binding::Binding;
pub use end::{Settled, label};
pub use model::{Notice, NoticeKind};
use model::{UserGraph, UserTag, pointer};
pub use rules::{Clients, Ended, Revoked, hub_subject, issuer_tag};
use secrets::digest;

use crate::config::{ClientKind, ClientSettings, Config};
use crate::store::graph::{GraphRecord, GraphStore, LocalGraphs};
use crate::store::{Kind, Record, StoreError};
use crate::util;

/// Changes to one user that lose this many races in a row give up (503).
const MAX_ATTEMPTS: usize = 32;
/// Live native or web sessions one user may hold.
pub const MAX_SESSIONS_PER_USER: usize = 1_000;

/// Why a session operation was refused. `error.rs` maps these to RFC 6749
/// error codes.
#[derive(Debug, thiserror::Error)]
pub enum SessionError {
    #[error("unknown client_id")]
    UnknownClient,
    #[error("{0}")]
    UnauthorizedClient(String),
    #[error("{0}")]
    InvalidGrant(String),
    #[error("{0}")]
    InvalidRequest(String),
    /// A revocation named an id the graph does not know.
    #[error("{0}")]
    NotFound(String),
    /// A retired refresh token came back: its family was revoked (the
    /// caller pushes what ended, then refuses the grant).
    #[error("the refresh token was already used; its sessions were revoked")]
    Reuse(Revoked),
    #[error(transparent)]
    Store(#[from] StoreError),
}

/// What `POST /v1/revocations` names.
#[derive(Clone, Debug)]
pub enum Revoke {
    /// By the token itself or by its public id (`rt_...`).
    RefreshToken(String),
    /// A native (`ns_...`) or web (`ws_...`) session.
    Session(String),
    /// Native sessions rooted at an upstream session.
    External { iss: String, sid: String },
    /// Every session of a user (of one root issuer, if named).
    User { sub: String, iss: Option<String> },
}

/// A freshly minted transfer token.
#[derive(Debug)]
pub struct Minted {
    pub transfer_token: String,
    pub expires_in: u64,
    /// The rotated refresh token, when the native client rotates.
    pub refresh_token: Option<String>,
    /// For the audit trail: the user (root issuer and subject) and the
    /// native session the token stands for.
    pub iss: String,
    pub sub: String,
    pub native_session: String,
}

/// A native session just opened.
#[derive(Debug)]
pub struct NativeGrant {
    pub native_session: String,
    pub refresh_token: String,
    /// When the session (and its refresh token) ends (ms).
    pub expires_ms: i64,
}

/// What a session token is made of.
#[derive(Clone, Debug)]
pub struct WebGrant {
    /// The web session (the token's `sid`).
    pub sid: String,
    /// The hub subject ([`hub_subject`]).
    pub sub: String,
    /// Who the user is at their issuer (shown, never used as identity).
    pub upstream_iss: String,
    pub upstream_sub: String,
    /// The client the token is for (its `aud`).
    pub client_id: String,
    /// When the session ends at the latest (ms); tokens must not outlive it.
    pub session_expires_ms: i64,
    /// A new web refresh token, when the client allows them.
    pub refresh_token: Option<String>,
}

/// The inputs of `/authorize` that the graph decides on.
pub struct AuthorizeRequest<'a> {
    pub client: &'a ClientSettings,
    pub redirect_uri: &'a str,
    pub code_challenge: &'a str,
    pub transfer_token: Option<&'a str>,
    /// The hub's web-session cookie, if the browser sent one.
    pub session_cookie: Option<&'a str>,
    pub ip: IpAddr,
}

/// The four outcomes of the seeds (plus silent SSO with a live session).
#[derive(Debug)]
pub enum Authorized {
    /// Redirect with `code`. `set_cookie`: a new session's cookie value.
    Code {
        code: String,
        set_cookie: Option<String>,
        /// `new_session` (1), `same_user` (2), `existing_session` (no STT).
        outcome: &'static str,
        /// For the audit trail: the user's root subject and the web session.
        sub: String,
        web_session: String,
    },
    /// Redirect with `error=login_required`. `ended`: the session of a
    /// different user this browser had (outcome 3), to be pushed.
    LoginRequired {
        ended: Vec<Ended>,
        clear_cookie: bool,
        why: &'static str,
    },
}

/// A live web session, as the front-channel logout page shows it.
#[derive(Clone, Debug)]
pub struct LiveWeb {
    pub sid: String,
    /// The hub subject.
    pub sub: String,
    /// Every web client that joined it.
    pub clients: Vec<String>,
}

/// What one step of `/authorize` decided inside the transfer token's graph.
enum Step {
    Refused(&'static str),
    Code(Authorized),
    /// Valid and burnt; the browser holds another user's session.
    OtherUser(String),
}

pub struct Sessions {
    clients: Clients,
    transfer_ttl_ms: i64,
    native_ttl_ms: i64,
    audiences: Vec<String>,
    pub binding: Binding,
    store: Arc<dyn GraphStore>,
    /// Root issuers by [`issuer_tag`], to find the user of a hub subject.
    issuers_by_tag: HashMap<String, String>,
}

fn grant(msg: &str) -> SessionError {
    SessionError::InvalidGrant(msg.to_string())
}

fn login_required(why: &'static str) -> Authorized {
    Authorized::LoginRequired {
        ended: Vec::new(),
        clear_cookie: false,
        why,
    }
}

/// Rebuilds the in-memory graph store from the journal at start; returns
/// how many users' graphs it holds.
pub fn restore(local: &LocalGraphs, stored: &[Record]) -> usize {
    let mut n = 0;
    for r in stored.iter().filter(|r| r.kind == Kind::SessionGraph) {
        let Ok(g) = serde_json::from_str::<UserGraph>(&r.data) else {
            tracing::warn!(key = %r.key, "store: unreadable session-graph record skipped");
            continue;
        };
        local.restore(r.version.max(0) as u64, record_of(&g));
        n += 1;
    }
    n
}

fn record_of(g: &UserGraph) -> GraphRecord {
    GraphRecord {
        tag: g.tag().0,
        // Structs of strings, numbers and addresses always serialize.
        data: serde_json::to_string(g).unwrap_or_default(),
        pointers: g.pointers(),
        deadlines: g.deadlines(),
        notice_due: g.notice_due(),
        expires_ms: g.expires_ms(rules::KEEP_ENDED_MS),
    }
}

impl Sessions {
    /// `root_issuers`: every issuer a native session may be rooted at (the
    /// configured ones and the dev issuer).
    pub fn new(
        config: &Config,
        clients: &[ClientSettings],
        store: Arc<dyn GraphStore>,
        root_issuers: &[String],
    ) -> Sessions {
        Sessions {
            clients: Clients(
                clients
                    .iter()
                    .map(|c| (c.client_id.clone(), Arc::new(c.clone())))
                    .collect(),
                2 * config.notify.request_timeout_ms as i64,
            ),
            transfer_ttl_ms: config.transfer.token_ttl_secs as i64 * 1000,
            native_ttl_ms: config.transfer.native_session_lifetime_secs as i64 * 1000,
            audiences: config.transfer.audiences.clone(),
            binding: Binding::new(&config.transfer),
            store,
            issuers_by_tag: root_issuers
                .iter()
                .map(|i| (issuer_tag(i), i.clone()))
                .collect(),
        }
    }

    pub fn client(&self, client_id: &str) -> Option<&Arc<ClientSettings>> {
        self.clients.get(client_id)
    }

    /// Every registered client, by `client_id`.
    pub fn clients(&self) -> Vec<&Arc<ClientSettings>> {
        let mut all: Vec<_> = self.clients.0.values().collect();
        all.sort_by(|a, b| a.client_id.cmp(&b.client_id));
        all
    }

    /// Whether `audience` asks for a session transfer token.
    pub fn is_transfer_audience(&self, audience: &str) -> bool {
        self.audiences.iter().any(|a| a == audience)
    }

    /// Runs `op` on the user's graph and saves what it changed, atomically
    /// against every other change to that user: on a lost race the graph
    /// is loaded again and `op` runs again. `root`: the user, when the graph
    /// may not exist yet.
    async fn mutate<T>(
        &self,
        tag: &UserTag,
        root: Option<(&str, &str)>,
        mut op: impl FnMut(&mut UserGraph, i64) -> T,
    ) -> Result<T, StoreError> {
        for _ in 0..MAX_ATTEMPTS {
            let (version, mut g) = match self.store.load(&tag.0).await? {
                Some(v) => (
                    v.version,
                    serde_json::from_str::<UserGraph>(&v.data).map_err(|e| {
                        StoreError::Corrupt(format!("session graph {}: {e}", tag.0))
                    })?,
                ),
                None => match root {
                    Some((iss, sub)) => (0, UserGraph::new(iss, sub)),
                    None => (0, UserGraph::default()),
                },
            };
            let before = g.clone();
            let now = util::now_ms();
            let out = op(&mut g, now);
            g.prune(now);
            if g == before || g.iss.is_empty() {
                return Ok(out);
            }
            let previous = (version > 0).then(|| record_of(&before));
            if self
                .store
                .save(version, previous.as_ref(), &record_of(&g))
                .await?
            {
                return Ok(out);
            }
        }
        Err(StoreError::Contention)
    }

    async fn user_of(&self, pointer: &str) -> Result<Option<UserTag>, StoreError> {
        Ok(self.store.resolve(pointer).await?.map(UserTag))
    }

    fn native_client(&self, client_id: &str) -> Result<Arc<ClientSettings>, SessionError> {
        let c = self
            .clients
            .get(client_id)
            .ok_or(SessionError::UnknownClient)?;
        if c.kind != ClientKind::Native {
            return Err(SessionError::UnauthorizedClient(
                "only a native client can do this".into(),
            ));
        }
        Ok(c.clone())
    }

    fn known_client(&self, client_id: &str) -> Result<Arc<ClientSettings>, SessionError> {
        self.clients
            .get(client_id)
            .cloned()
            .ok_or(SessionError::UnknownClient)
    }

    /// The live web session a hub session cookie stands for, if any.
    pub async fn web_of_cookie(&self, cookie: &str) -> Result<Option<LiveWeb>, StoreError> {
        let d = digest(cookie);
        let Some(tag) = self.user_of(&pointer::cookie(&d)).await? else {
            return Ok(None);
        };
        let Some(v) = self.store.load(&tag.0).await? else {
            return Ok(None);
        };
        let g: UserGraph = serde_json::from_str(&v.data)
            .map_err(|e| StoreError::Corrupt(format!("session graph {}: {e}", tag.0)))?;
        Ok(g.web_by_cookie(&d)
            .filter(|w| w.alive(util::now_ms()))
            .map(|w| LiveWeb {
                sid: w.id.clone(),
                sub: g.hub_subject(),
                clients: w.clients.clone(),
            }))
    }

    /// Whether a token of web session `sid` issued at `iat` (seconds) was
    /// revoked by the session's end: it ended in that second or later (as
    /// a watermark judges), or it is unknown.
    pub async fn ended_before(&self, sid: &str, iat: i64) -> Result<bool, StoreError> {
        let Some(tag) = self.user_of(&pointer::session(sid)).await? else {
            return Ok(true);
        };
        let Some(v) = self.store.load(&tag.0).await? else {
            return Ok(true);
        };
        let g: UserGraph = serde_json::from_str(&v.data)
            .map_err(|e| StoreError::Corrupt(format!("session graph {}: {e}", tag.0)))?;
        Ok(match g.web(sid) {
            None => true,
            Some(w) => w.ended_at.is_some_and(|t| iat <= t.div_euclid(1000)),
        })
    }

    /// Forgets users whose whole graph has expired.
    pub fn purge(&self, now: i64) {
        self.store.purge(now);
    }

    /// A user's sessions as a tree (native sessions, the web sessions they
    /// opened), for the admin API: ids, clients and deadlines, no secrets.
    pub async fn tree(&self, iss: &str, sub: &str) -> Result<serde_json::Value, StoreError> {
        use serde_json::json;
        let tag = UserTag::of(iss, sub);
        let Some(v) = self.store.load(&tag.0).await? else {
            return Ok(
                json!({ "iss": iss, "sub": sub, "native_sessions": [], "web_sessions": [] }),
            );
        };
        let g: UserGraph = serde_json::from_str(&v.data)
            .map_err(|e| StoreError::Corrupt(format!("session graph {}: {e}", tag.0)))?;
        let now = util::now_ms();
        let web = |w: &model::Web| {
            json!({
                "id": w.id, "clients": w.clients, "alive": w.alive(now),
                "idle_deadline_ms": w.idle_ms, "absolute_deadline_ms": w.abs_ms,
                "ended_at_ms": w.ended_at,
            })
        };
        let natives: Vec<_> = g
            .natives
            .iter()
            .map(|n| {
                let webs: Vec<_> = g
                    .webs
                    .iter()
                    .filter(|w| w.parents.contains(&n.id))
                    .map(web)
                    .collect();
                json!({
                    "id": n.id, "client": n.client_id, "upstream_sid": n.ext_sid,
                    "alive": !n.revoked && now < n.expires_ms, "expires_ms": n.expires_ms,
                    "web_sessions": webs,
                })
            })
            .collect();
        let orphans: Vec<_> = g
            .webs
            .iter()
            .filter(|w| {
                !w.parents
                    .iter()
                    .any(|p| g.natives.iter().any(|n| &n.id == p))
            })
            .map(web)
            .collect();
        Ok(json!({
            "iss": iss, "sub": sub, "hub_subject": g.hub_subject(),
            "native_sessions": natives, "web_sessions": orphans,
        }))
    }

    /// A user's live (native, web) sessions.
    pub async fn user_counts(&self, iss: &str, sub: &str) -> Result<(usize, usize), StoreError> {
        let tag = UserTag::of(iss, sub);
        Ok(match self.store.load(&tag.0).await? {
            Some(v) => serde_json::from_str::<UserGraph>(&v.data)
                .map(|g| g.live_counts(util::now_ms()))
                .unwrap_or_default(),
            None => (0, 0),
        })
    }
}

fn too_many() -> SessionError {
    SessionError::InvalidRequest(format!(
        "this user already has {MAX_SESSIONS_PER_USER} live sessions"
    ))
}

fn cannot_mint() -> SessionError {
    SessionError::UnauthorizedClient(
        "this client may not create session transfer tokens (can_create_session_transfer_token is off)".into(),
    )
}
