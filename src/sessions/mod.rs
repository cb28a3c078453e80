//! The session graph of Native-to-Web SSO, and the rules that revoke along it.
//!
//! ```text
//!  native session ──refresh tokens          (root: a hub refresh token, or an
//!        │  └─ transfer tokens (60 s, once)  upstream session (iss, sid))
//!        └──► web sessions ── web refresh tokens
//! ```
//!
//! * A native session is opened for a native client (dev login, or an
//!   upstream token exchanged for a hub refresh token) or found by its
//!   upstream root. It mints transfer tokens (STT) if its client may.
//! * `/authorize` redeems an STT into a web session (the four outcomes of
//!   [`Sessions::authorize`]); the code exchange gives the SPA a hub-signed
//!   session token whose `sid` is the web session's id.
//! * Revocation walks the links: a native refresh token or session cascades
//!   to its web sessions when the native client has
//!   `enforce_cascade_revocation`; an ending web session takes its refresh
//!   tokens when the web client has `enforce_online_refresh_tokens`; a
//!   revoked parent voids its unused transfer tokens. Every web session that
//!   ends is returned as [`Ended`], so the caller can push its logout.
//!
//! Secrets (refresh tokens, STTs, codes, session cookies) are kept only as
//! SHA-256 digests. Every change is written through the durable store
//! (`store::Kind::SessionGraph`) before the caller answers; authorization
//! codes are not (they live 60 s, and losing one only means a new login).
//!
//! All state sits behind one mutex: operations are rare next to socket
//! traffic, and one lock makes "single use" and cascades atomic.
//!
//! Must not: write to sockets (the caller pushes [`Ended`] through
//! `revocation`), sign tokens, or parse HTTP.

pub mod binding;

use std::collections::{BTreeSet, HashMap};
use std::net::IpAddr;
use std::sync::{Arc, Mutex, MutexGuard};

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use serde::{Deserialize, Serialize};
use subtle::ConstantTimeEq;
use tokio::sync::Notify;

use crate::auth::api_keys::hex;
use crate::config::{ClientKind, ClientSettings, Config, DeviceBinding};
use crate::revocation::Durable;
use crate::store::{Kind, Record, StoreError};
use crate::util;
pub use binding::Binding;

/// Lifetime of an authorization code.
const CODE_TTL_MS: i64 = 60_000;
/// Ended entities are kept this long after they end (answers stay precise
/// for a replay, e.g. "already used" rather than "unknown").
const KEEP_ENDED_MS: i64 = 10 * 60_000;

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
    /// A retired refresh token came back: its family was revoked (the
    /// caller pushes what ended, then refuses the grant).
    #[error("the refresh token was already used; its sessions were revoked")]
    Reuse(Revoked),
    #[error(transparent)]
    Store(#[from] StoreError),
}

/// A web session that ended: its SPAs must be told.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct Ended {
    pub sid: String,
    pub sub: String,
    /// The web client the session belongs to (whose backend may be told).
    pub client_id: String,
}

/// What a revocation ended.
#[derive(Clone, Debug, Default, Serialize)]
pub struct Revoked {
    pub web_sessions: Vec<Ended>,
    pub native_sessions: Vec<String>,
    pub refresh_tokens: Vec<String>,
    pub transfer_tokens: usize,
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
}

/// A native session just opened.
#[derive(Debug)]
pub struct NativeGrant {
    pub native_session: String,
    pub refresh_token: String,
}

/// What a session token is made of.
#[derive(Clone, Debug)]
pub struct WebGrant {
    /// The web session (the token's `sid`).
    pub sid: String,
    pub sub: String,
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
    },
    /// Redirect with `error=login_required`. `ended`: the session of a
    /// different user this browser had (outcome 3), to be pushed.
    LoginRequired {
        ended: Vec<Ended>,
        clear_cookie: bool,
        why: &'static str,
    },
}

#[derive(Clone, Debug, Serialize, Deserialize)]
struct Native {
    id: String,
    client_id: String,
    /// The user's issuer (upstream, or the dev issuer) and subject.
    iss: String,
    sub: String,
    /// The upstream session this native session stands for, if any.
    ext_sid: Option<String>,
    expires_ms: i64,
    revoked: bool,
}

#[derive(Clone, Debug, Serialize, Deserialize)]
struct Web {
    id: String,
    client_id: String,
    iss: String,
    sub: String,
    /// The native session it was transferred from.
    parent: String,
    /// Digest of the hub's session cookie.
    cookie: String,
    idle_ms: i64,
    abs_ms: i64,
    ended: bool,
}

impl Web {
    fn alive(&self, now: i64) -> bool {
        !self.ended && now < self.idle_ms && now < self.abs_ms
    }
    fn deadline(&self) -> i64 {
        self.idle_ms.min(self.abs_ms)
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
enum RtState {
    Active,
    /// Replaced by rotation; presenting it again is reuse.
    Rotated,
    Revoked,
}

#[derive(Clone, Debug, Serialize, Deserialize)]
struct Refresh {
    id: String,
    digest: String,
    /// The session it belongs to (native `ns_` or web `ws_`).
    owner: String,
    client_id: String,
    state: RtState,
    expires_ms: i64,
}

#[derive(Clone, Debug, Serialize, Deserialize)]
struct Transfer {
    digest: String,
    native: String,
    /// The refresh token it was minted with, if any.
    refresh: Option<String>,
    client_id: String,
    ip: IpAddr,
    asn: Option<u32>,
    expires_ms: i64,
    /// Presented once (whatever the outcome), or voided by a revocation.
    used: bool,
}

struct Code {
    web: String,
    client_id: String,
    redirect_uri: String,
    challenge: String,
    expires_ms: i64,
}

/// What is written to the store, one record per entity.
#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
enum Entity {
    Native(Native),
    Web(Web),
    Refresh(Refresh),
    Transfer(Transfer),
}

impl Entity {
    fn record(&self) -> Record {
        let (key, expires_ms) = match self {
            Entity::Native(n) => (n.id.clone(), n.expires_ms),
            Entity::Web(w) => (w.id.clone(), w.abs_ms),
            Entity::Refresh(r) => (format!("rt:{}", r.digest), r.expires_ms),
            Entity::Transfer(t) => (format!("stt:{}", t.digest), t.expires_ms),
        };
        Record {
            kind: Kind::SessionGraph,
            key,
            version: util::now_ms(),
            expires_at_ms: expires_ms + KEEP_ENDED_MS,
            // Structs of strings, numbers and addresses always serialize.
            data: serde_json::to_string(self).unwrap_or_default(),
        }
    }
}

#[derive(Default)]
struct Graph {
    natives: HashMap<String, Native>,
    webs: HashMap<String, Web>,
    refresh: HashMap<String, Refresh>,
    refresh_by_id: HashMap<String, String>,
    transfers: HashMap<String, Transfer>,
    codes: HashMap<String, Code>,
    cookies: HashMap<String, String>,
    /// Live web sessions by the moment they expire.
    deadlines: BTreeSet<(i64, String)>,
    /// Entities changed by the operation in progress, to be persisted.
    dirty: Vec<Entity>,
}

pub struct Sessions {
    clients: HashMap<String, Arc<ClientSettings>>,
    transfer_ttl_ms: i64,
    native_ttl_ms: i64,
    audiences: Vec<String>,
    pub binding: Binding,
    graph: Mutex<Graph>,
    durable: Arc<Durable>,
    /// Woken when a web session with an earlier deadline appears.
    pub deadline_changed: Notify,
}

fn digest(secret: &str) -> String {
    hex(ring::digest::digest(&ring::digest::SHA256, secret.as_bytes()).as_ref())
}

fn secret(prefix: &str) -> String {
    format!(
        "{prefix}{}",
        URL_SAFE_NO_PAD.encode(util::random_bytes::<32>())
    )
}

fn id(prefix: &str) -> String {
    format!("{prefix}{}", &util::random_id()[..24])
}

fn grant(msg: &str) -> SessionError {
    SessionError::InvalidGrant(msg.to_string())
}

impl Sessions {
    pub fn new(config: &Config, clients: &[ClientSettings], durable: Arc<Durable>) -> Sessions {
        Sessions {
            clients: clients
                .iter()
                .map(|c| (c.client_id.clone(), Arc::new(c.clone())))
                .collect(),
            transfer_ttl_ms: config.transfer.token_ttl_secs as i64 * 1000,
            native_ttl_ms: config.transfer.native_session_lifetime_secs as i64 * 1000,
            audiences: config.transfer.audiences.clone(),
            binding: Binding::new(&config.transfer),
            graph: Mutex::new(Graph::default()),
            durable,
            deadline_changed: Notify::new(),
        }
    }

    fn lock(&self) -> MutexGuard<'_, Graph> {
        self.graph.lock().unwrap_or_else(|e| e.into_inner())
    }

    pub fn client(&self, client_id: &str) -> Option<&Arc<ClientSettings>> {
        self.clients.get(client_id)
    }

    /// Every registered client, by `client_id`.
    pub fn clients(&self) -> Vec<&Arc<ClientSettings>> {
        let mut all: Vec<_> = self.clients.values().collect();
        all.sort_by(|a, b| a.client_id.cmp(&b.client_id));
        all
    }

    /// Whether `audience` asks for a session transfer token.
    pub fn is_transfer_audience(&self, audience: &str) -> bool {
        self.audiences.iter().any(|a| a == audience)
    }

    /// Rebuilds the graph from the store at start. Returns how many entities.
    pub fn restore(&self, stored: &[Record]) -> usize {
        let now = util::now_ms();
        let mut g = self.lock();
        let mut n = 0;
        for r in stored.iter().filter(|r| r.kind == Kind::SessionGraph) {
            let Ok(entity) = serde_json::from_str::<Entity>(&r.data) else {
                tracing::warn!(key = %r.key, "store: unreadable session-graph record skipped");
                continue;
            };
            g.insert(entity, now);
            n += 1;
        }
        g.dirty.clear();
        n
    }

    /// Runs `op` on the graph under the lock (with the time), then writes
    /// what it changed to the store before the caller answers.
    async fn change<T>(&self, op: impl FnOnce(&mut Graph, i64) -> T) -> Result<T, StoreError> {
        let (out, dirty) = {
            let mut g = self.lock();
            let out = op(&mut g, util::now_ms());
            (out, std::mem::take(&mut g.dirty))
        };
        for e in dirty {
            self.durable.put(e.record()).await?;
        }
        Ok(out)
    }

    fn known_client(&self, client_id: &str) -> Result<Arc<ClientSettings>, SessionError> {
        self.clients
            .get(client_id)
            .cloned()
            .ok_or(SessionError::UnknownClient)
    }

    fn native_client(&self, client_id: &str) -> Result<&Arc<ClientSettings>, SessionError> {
        let c = self
            .clients
            .get(client_id)
            .ok_or(SessionError::UnknownClient)?;
        if c.kind != ClientKind::Native {
            return Err(SessionError::UnauthorizedClient(
                "only a native client can do this".into(),
            ));
        }
        Ok(c)
    }

    /// Opens a native session for `sub` (of issuer `iss`), optionally
    /// standing for an upstream session, and issues its refresh token.
    pub async fn open_native(
        &self,
        client_id: &str,
        iss: &str,
        sub: &str,
        ext_sid: Option<&str>,
    ) -> Result<NativeGrant, SessionError> {
        self.native_client(client_id)?;
        let grant = self
            .change(|g, now| {
                let expires = now + self.native_ttl_ms;
                let native = g.find_or_open_native(client_id, iss, sub, ext_sid, expires);
                let expires = g.natives[&native].expires_ms;
                let token = g.issue_refresh(&native, client_id, expires);
                NativeGrant {
                    native_session: native,
                    refresh_token: token,
                }
            })
            .await?;
        Ok(grant)
    }

    /// The reference product's mint: a native refresh token buys a
    /// transfer token bound to `ip` (rotating the refresh token if the
    /// client rotates).
    pub async fn mint_with_refresh_token(
        &self,
        client_id: &str,
        refresh_token: &str,
        ip: IpAddr,
    ) -> Result<Minted, SessionError> {
        let client = self.native_client(client_id)?.clone();
        self.change(|g, now| self.mint_locked(g, &client, refresh_token, ip, now))
            .await?
    }

    fn mint_locked(
        &self,
        g: &mut Graph,
        client: &ClientSettings,
        refresh_token: &str,
        ip: IpAddr,
        now: i64,
    ) -> Result<Minted, SessionError> {
        let d = digest(refresh_token);
        let rt = g
            .refresh
            .get(&d)
            .cloned()
            .ok_or_else(|| grant("unknown refresh token"))?;
        if rt.owner.starts_with("ws_") {
            return Err(grant(
                "nested Native-to-Web SSO is not allowed: this refresh token belongs to a transfer-created web session",
            ));
        }
        if rt.client_id != client.client_id {
            return Err(grant("the refresh token was issued to another client"));
        }
        match rt.state {
            RtState::Revoked => return Err(grant("the refresh token was revoked")),
            RtState::Rotated => {
                let mut revoked = Revoked::default();
                g.revoke_native(&rt.owner, &self.clients, &mut revoked);
                return Err(SessionError::Reuse(revoked));
            }
            RtState::Active => {}
        }
        let native = g
            .natives
            .get(&rt.owner)
            .filter(|n| !n.revoked && now < n.expires_ms)
            .cloned()
            .ok_or_else(|| grant("the refresh token's session has ended"))?;
        if !client.can_create_session_transfer_token {
            return Err(SessionError::UnauthorizedClient(
                "this client may not create session transfer tokens (can_create_session_transfer_token is off)".into(),
            ));
        }
        let refresh_token = client.rotate_refresh_token.then(|| {
            g.set_refresh_state(&d, RtState::Rotated);
            g.issue_refresh(&native.id, &client.client_id, native.expires_ms)
        });
        let transfer_token = self.issue_transfer(g, &native, Some(rt.id), ip, now);
        Ok(Minted {
            transfer_token,
            expires_in: (self.transfer_ttl_ms / 1000) as u64,
            refresh_token,
        })
    }

    /// The RFC 8693 mint: an upstream token of the native app (already
    /// verified, not hub-issued) stands for the native session.
    pub async fn mint_for_upstream_session(
        &self,
        client_id: &str,
        iss: &str,
        sub: &str,
        ext_sid: &str,
        ip: IpAddr,
    ) -> Result<Minted, SessionError> {
        let client = self.native_client(client_id)?.clone();
        if !client.can_create_session_transfer_token {
            return Err(SessionError::UnauthorizedClient(
                "this client may not create session transfer tokens (can_create_session_transfer_token is off)".into(),
            ));
        }
        let minted = self
            .change(|g, now| {
                let expires = now + self.native_ttl_ms;
                let native = g.find_or_open_native(client_id, iss, sub, Some(ext_sid), expires);
                let native = g.natives[&native].clone();
                Minted {
                    transfer_token: self.issue_transfer(g, &native, None, ip, now),
                    expires_in: (self.transfer_ttl_ms / 1000) as u64,
                    refresh_token: None,
                }
            })
            .await?;
        Ok(minted)
    }

    fn issue_transfer(
        &self,
        g: &mut Graph,
        native: &Native,
        refresh: Option<String>,
        ip: IpAddr,
        now: i64,
    ) -> String {
        let token = secret("stt_");
        let t = Transfer {
            digest: digest(&token),
            native: native.id.clone(),
            refresh,
            client_id: native.client_id.clone(),
            ip,
            asn: self.binding.asn_of(ip),
            expires_ms: (now + self.transfer_ttl_ms).min(native.expires_ms),
            used: false,
        };
        g.dirty.push(Entity::Transfer(t.clone()));
        g.transfers.insert(t.digest.clone(), t);
        token
    }

    /// `/authorize`: the four outcomes of the seeds.
    ///
    /// 1. valid STT, no live session in this browser → a new web session;
    /// 2. valid STT, a live session of the same user → that session is
    ///    reused (its idle deadline moves; its parent stays what it was);
    /// 3. valid STT, a session of a different user → that session is
    ///    revoked, `login_required`;
    /// 4. invalid STT (unknown, used, expired, wrong IP/ASN, wrong client,
    ///    revoked parent) → `login_required`, nothing created or changed.
    ///
    /// Without an STT, a live session gives a code (silent SSO). An STT is
    /// burnt by its first presentation, whatever the outcome.
    pub async fn authorize(&self, r: AuthorizeRequest<'_>) -> Result<Authorized, SessionError> {
        let result = self
            .change(|g, now| self.authorize_locked(g, &r, now))
            .await?;
        if matches!(
            result,
            Authorized::Code {
                outcome: "new_session",
                ..
            }
        ) {
            self.deadline_changed.notify_one();
        }
        Ok(result)
    }

    fn authorize_locked(&self, g: &mut Graph, r: &AuthorizeRequest<'_>, now: i64) -> Authorized {
        let existing = r
            .session_cookie
            .and_then(|c| g.cookies.get(&digest(c)))
            .and_then(|id| g.webs.get(id))
            .filter(|w| w.alive(now))
            .map(|w| w.id.clone());
        let checked = r
            .transfer_token
            .map(|t| self.redeem_transfer(g, t, r.client, r.ip, now));
        let login_required = |ended, clear_cookie, why| Authorized::LoginRequired {
            ended,
            clear_cookie,
            why,
        };
        match (checked, existing) {
            (Some(Err(why)), _) => login_required(Vec::new(), false, why),
            (None, None) => login_required(
                Vec::new(),
                false,
                "no session_transfer_token and no session",
            ),
            (None, Some(web)) => {
                g.touch_web(&web, r.client, now);
                Authorized::Code {
                    code: g.issue_code(&web, r, now),
                    set_cookie: None,
                    outcome: "existing_session",
                }
            }
            (Some(Ok(native)), Some(web)) => {
                let n = &g.natives[&native];
                let w = &g.webs[&web];
                if n.iss == w.iss && n.sub == w.sub {
                    g.touch_web(&web, r.client, now);
                    Authorized::Code {
                        code: g.issue_code(&web, r, now),
                        set_cookie: None,
                        outcome: "same_user",
                    }
                } else {
                    let mut revoked = Revoked::default();
                    g.end_web(&web, &self.clients, &mut revoked);
                    login_required(
                        revoked.web_sessions,
                        true,
                        "the session_transfer_token belongs to a different user than this browser's session, which was revoked",
                    )
                }
            }
            (Some(Ok(native)), None) => {
                let cookie = secret("");
                let n = g.natives[&native].clone();
                let web = Web {
                    id: id("ws_"),
                    client_id: r.client.client_id.clone(),
                    iss: n.iss,
                    sub: n.sub,
                    parent: n.id,
                    cookie: digest(&cookie),
                    idle_ms: now + r.client.session_idle_secs as i64 * 1000,
                    abs_ms: now + r.client.session_lifetime_secs as i64 * 1000,
                    ended: false,
                };
                let web_id = web.id.clone();
                g.dirty.push(Entity::Web(web.clone()));
                g.insert(Entity::Web(web), now);
                Authorized::Code {
                    code: g.issue_code(&web_id, r, now),
                    set_cookie: Some(cookie),
                    outcome: "new_session",
                }
            }
        }
    }

    /// Checks and burns a presented STT; the native session it opens.
    fn redeem_transfer(
        &self,
        g: &mut Graph,
        token: &str,
        web_client: &ClientSettings,
        ip: IpAddr,
        now: i64,
    ) -> Result<String, &'static str> {
        let d = digest(token);
        let t = g
            .transfers
            .get_mut(&d)
            .ok_or("unknown session_transfer_token")?;
        if t.used {
            return Err("the session_transfer_token was already used or revoked");
        }
        t.used = true;
        let t = t.clone();
        g.dirty.push(Entity::Transfer(t.clone()));
        if now >= t.expires_ms {
            return Err("the session_transfer_token has expired");
        }
        let bound = match web_client.enforce_device_binding {
            DeviceBinding::None => true,
            DeviceBinding::Ip => t.ip == util::canonical(ip),
            DeviceBinding::Asn => t.asn.is_some() && t.asn == self.binding.asn_of(ip),
        };
        if !bound {
            return Err("the session_transfer_token is bound to another device");
        }
        let native_client = self.clients.get(&t.client_id);
        let allowed = native_client.is_some_and(|c| {
            c.transfer_to.is_empty() || c.transfer_to.contains(&web_client.client_id)
        });
        if !allowed {
            return Err("the session_transfer_token may not open this client");
        }
        let alive = g
            .natives
            .get(&t.native)
            .is_some_and(|n| !n.revoked && now < n.expires_ms);
        if !alive {
            return Err("the session_transfer_token's native session has ended");
        }
        Ok(t.native)
    }

    /// The code exchange (PKCE S256): the session it grants, and a web
    /// refresh token when the client allows them.
    pub async fn exchange_code(
        &self,
        client_id: &str,
        code: &str,
        redirect_uri: &str,
        verifier: &str,
    ) -> Result<WebGrant, SessionError> {
        let client = self.known_client(client_id)?;
        self.change(|g, now| g.exchange_locked(&client, code, redirect_uri, verifier, now))
            .await?
    }

    /// A web refresh token buys a new session token (and is rotated; a
    /// retired one coming back revokes the whole family).
    pub async fn refresh_web(
        &self,
        client_id: &str,
        refresh_token: &str,
    ) -> Result<WebGrant, SessionError> {
        let client = self.known_client(client_id)?;
        self.change(|g, now| g.refresh_web_locked(&client, refresh_token, &self.clients, now))
            .await?
    }

    /// Revokes along the graph by the rules in the module doc.
    pub async fn revoke(&self, what: &Revoke) -> Result<Revoked, SessionError> {
        let revoked = self
            .change(|g, _| {
                let mut revoked = Revoked::default();
                match what {
                    Revoke::RefreshToken(token_or_id) => {
                        let d = g
                            .refresh_by_id
                            .get(token_or_id)
                            .cloned()
                            .unwrap_or_else(|| digest(token_or_id));
                        g.revoke_refresh(&d, &self.clients, &mut revoked);
                    }
                    Revoke::Session(id) if id.starts_with("ws_") => {
                        g.end_web(id, &self.clients, &mut revoked)
                    }
                    Revoke::Session(id) => g.revoke_native(id, &self.clients, &mut revoked),
                    Revoke::External { iss, sid } => {
                        let ids: Vec<String> = g
                            .natives
                            .values()
                            .filter(|n| &n.iss == iss && n.ext_sid.as_deref() == Some(sid.as_str()))
                            .map(|n| n.id.clone())
                            .collect();
                        for id in ids {
                            g.revoke_native(&id, &self.clients, &mut revoked);
                        }
                    }
                    Revoke::User { sub, iss } => {
                        let of_user = |u_iss: &str, u_sub: &str| {
                            u_sub == sub && iss.as_deref().is_none_or(|i| i == u_iss)
                        };
                        let natives: Vec<String> = g
                            .natives
                            .values()
                            .filter(|n| of_user(&n.iss, &n.sub))
                            .map(|n| n.id.clone())
                            .collect();
                        let webs: Vec<String> = g
                            .webs
                            .values()
                            .filter(|w| of_user(&w.iss, &w.sub))
                            .map(|w| w.id.clone())
                            .collect();
                        for id in natives {
                            g.revoke_native(&id, &self.clients, &mut revoked);
                        }
                        for id in webs {
                            g.end_web(&id, &self.clients, &mut revoked);
                        }
                    }
                }
                revoked
            })
            .await?;
        Ok(revoked)
    }

    /// RFC 7009 for a public client: revokes `token` (a refresh token) along
    /// the graph if it was issued to `client_id`; anything else changes
    /// nothing and is not told apart (the answer is the same).
    pub async fn revoke_own_refresh_token(
        &self,
        client_id: &str,
        token: &str,
    ) -> Result<Revoked, SessionError> {
        if !self.clients.contains_key(client_id) {
            return Err(SessionError::UnknownClient);
        }
        let owned = {
            let g = self.lock();
            g.refresh
                .get(&digest(token))
                .is_some_and(|r| r.client_id == client_id)
        };
        if !owned {
            return Ok(Revoked::default());
        }
        self.revoke(&Revoke::RefreshToken(token.to_string())).await
    }

    /// Marks web sessions ended by a logout that already pushed to them
    /// (a hub session token's own logout): the session `sid`, or every web
    /// session of `sub`. Native sessions stay: the user logged out of the web.
    /// Returns the sessions it ended (their backends may be told).
    pub async fn logged_out(&self, sid: Option<&str>, sub: Option<&str>) -> Vec<Ended> {
        let ended = self
            .end_webs(|w, _| match (sid, sub) {
                (Some(sid), _) => w.id == sid,
                (None, Some(sub)) => w.sub == sub,
                (None, None) => false,
            })
            .await;
        ended.unwrap_or_else(|e| {
            // The logout itself is recorded (its watermark revokes the
            // session's tokens); the graph catches up at the session's expiry.
            tracing::warn!(error = %e, "session graph: recording a logout failed");
            Vec::new()
        })
    }

    /// When the next web session expires (ms), if any is live.
    pub fn next_deadline(&self) -> Option<i64> {
        self.lock().deadlines.first().map(|(t, _)| *t)
    }

    /// Ends every web session past its idle or absolute deadline.
    pub async fn expire_due(&self) -> Vec<Ended> {
        let next = self.next_deadline();
        if next.is_none_or(|t| t > util::now_ms()) {
            return Vec::new();
        }
        self.end_webs(|w, now| w.deadline() <= now)
            .await
            .unwrap_or_else(|e| {
                tracing::warn!(error = %e, "session graph: recording expiries failed");
                Vec::new()
            })
    }

    /// Ends the live web sessions `which` picks (given the time); what ended.
    async fn end_webs(&self, which: impl Fn(&Web, i64) -> bool) -> Result<Vec<Ended>, StoreError> {
        self.change(|g, now| {
            let mut revoked = Revoked::default();
            let ids: Vec<String> = g
                .webs
                .values()
                .filter(|w| !w.ended && which(w, now))
                .map(|w| w.id.clone())
                .collect();
            for id in ids {
                g.end_web(&id, &self.clients, &mut revoked);
            }
            revoked.web_sessions
        })
        .await
    }

    /// Forgets codes, and entities ended or expired long enough ago.
    pub fn purge(&self, now: i64) {
        let mut g = self.lock();
        g.codes.retain(|_, c| c.expires_ms > now);
        let keep = |t: i64| t + KEEP_ENDED_MS > now;
        g.transfers.retain(|_, t| keep(t.expires_ms));
        g.natives.retain(|_, n| keep(n.expires_ms));
        let gone: Vec<String> = g
            .webs
            .values()
            .filter(|w| !keep(w.abs_ms))
            .map(|w| w.id.clone())
            .collect();
        for id in gone {
            if let Some(w) = g.webs.remove(&id) {
                g.cookies.remove(&w.cookie);
            }
        }
        let gone: Vec<String> = g
            .refresh
            .values()
            .filter(|r| !keep(r.expires_ms))
            .map(|r| r.digest.clone())
            .collect();
        for d in gone {
            if let Some(r) = g.refresh.remove(&d) {
                g.refresh_by_id.remove(&r.id);
            }
        }
    }

    /// Live counts, for `/metrics` and tests.
    pub fn counts(&self) -> (usize, usize) {
        let g = self.lock();
        let now = util::now_ms();
        (
            g.natives.values().filter(|n| !n.revoked).count(),
            g.webs.values().filter(|w| w.alive(now)).count(),
        )
    }
}

impl Graph {
    /// Adds a restored or new entity to the maps and indexes.
    fn insert(&mut self, e: Entity, now: i64) {
        match e {
            Entity::Native(n) => {
                self.natives.insert(n.id.clone(), n);
            }
            Entity::Web(w) => {
                if let Some(old) = self.webs.get(&w.id) {
                    self.deadlines.remove(&(old.deadline(), old.id.clone()));
                }
                if w.alive(now) {
                    self.deadlines.insert((w.deadline(), w.id.clone()));
                } else if !w.ended {
                    // Expired while the hub was down: expire_due ends it now.
                    self.deadlines.insert((now, w.id.clone()));
                }
                self.cookies.insert(w.cookie.clone(), w.id.clone());
                self.webs.insert(w.id.clone(), w);
            }
            Entity::Refresh(r) => {
                self.refresh_by_id.insert(r.id.clone(), r.digest.clone());
                self.refresh.insert(r.digest.clone(), r);
            }
            Entity::Transfer(t) => {
                self.transfers.insert(t.digest.clone(), t);
            }
        }
    }

    fn find_or_open_native(
        &mut self,
        client_id: &str,
        iss: &str,
        sub: &str,
        ext_sid: Option<&str>,
        expires_ms: i64,
    ) -> String {
        let now = util::now_ms();
        if let Some(sid) = ext_sid
            && let Some(n) = self.natives.values().find(|n| {
                !n.revoked
                    && now < n.expires_ms
                    && n.client_id == client_id
                    && n.iss == iss
                    && n.sub == sub
                    && n.ext_sid.as_deref() == Some(sid)
            })
        {
            return n.id.clone();
        }
        let n = Native {
            id: id("ns_"),
            client_id: client_id.to_string(),
            iss: iss.to_string(),
            sub: sub.to_string(),
            ext_sid: ext_sid.map(str::to_string),
            expires_ms,
            revoked: false,
        };
        let native = n.id.clone();
        self.dirty.push(Entity::Native(n.clone()));
        self.natives.insert(native.clone(), n);
        native
    }

    fn issue_refresh(&mut self, owner: &str, client_id: &str, expires_ms: i64) -> String {
        let token = secret("rt_");
        let r = Refresh {
            id: id("rt_"),
            digest: digest(&token),
            owner: owner.to_string(),
            client_id: client_id.to_string(),
            state: RtState::Active,
            expires_ms,
        };
        self.dirty.push(Entity::Refresh(r.clone()));
        self.insert(Entity::Refresh(r), 0);
        token
    }

    fn set_refresh_state(&mut self, digest: &str, state: RtState) -> bool {
        let Some(r) = self.refresh.get_mut(digest) else {
            return false;
        };
        if r.state == RtState::Revoked || r.state == state {
            return false;
        }
        r.state = state;
        let r = r.clone();
        self.dirty.push(Entity::Refresh(r));
        true
    }

    fn issue_code(&mut self, web: &str, r: &AuthorizeRequest<'_>, now: i64) -> String {
        let code = secret("");
        self.codes.insert(
            digest(&code),
            Code {
                web: web.to_string(),
                client_id: r.client.client_id.clone(),
                redirect_uri: r.redirect_uri.to_string(),
                challenge: r.code_challenge.to_string(),
                expires_ms: now + CODE_TTL_MS,
            },
        );
        code
    }

    /// Activity on a web session moves its idle deadline (never past the
    /// absolute one).
    fn touch_web(&mut self, web: &str, client: &ClientSettings, now: i64) {
        let Some(w) = self.webs.get(web).cloned() else {
            return;
        };
        let mut w2 = w.clone();
        w2.idle_ms = (now + client.session_idle_secs as i64 * 1000).max(w.idle_ms);
        if w2.idle_ms != w.idle_ms {
            self.dirty.push(Entity::Web(w2.clone()));
            self.insert(Entity::Web(w2), now);
        }
    }

    fn exchange_locked(
        &mut self,
        client: &ClientSettings,
        code: &str,
        redirect_uri: &str,
        verifier: &str,
        now: i64,
    ) -> Result<WebGrant, SessionError> {
        // Single use: the code is gone whatever follows.
        let c = self
            .codes
            .remove(&digest(code))
            .ok_or_else(|| grant("unknown or already used authorization code"))?;
        if now >= c.expires_ms {
            return Err(grant("the authorization code has expired"));
        }
        if c.client_id != client.client_id {
            return Err(grant("the authorization code was issued to another client"));
        }
        if c.redirect_uri != redirect_uri {
            return Err(grant(
                "redirect_uri does not match the authorization request",
            ));
        }
        let computed = URL_SAFE_NO_PAD
            .encode(ring::digest::digest(&ring::digest::SHA256, verifier.as_bytes()).as_ref());
        let pkce_ok: bool = computed.as_bytes().ct_eq(c.challenge.as_bytes()).into();
        if !pkce_ok {
            return Err(grant("code_verifier does not match the code_challenge"));
        }
        let w = self
            .webs
            .get(&c.web)
            .filter(|w| w.alive(now))
            .cloned()
            .ok_or_else(|| grant("the session has ended"))?;
        let refresh_token = client.allow_refresh_token.then(|| {
            let expires = self.web_refresh_expiry(&w, client, now);
            self.issue_refresh(&w.id, &client.client_id, expires)
        });
        Ok(WebGrant {
            sid: w.id,
            sub: w.sub,
            client_id: client.client_id.clone(),
            session_expires_ms: w.abs_ms,
            refresh_token,
        })
    }

    /// Online refresh tokens live as long as their session at most;
    /// offline ones as long as the session's absolute lifetime from now.
    fn web_refresh_expiry(&self, w: &Web, client: &ClientSettings, now: i64) -> i64 {
        if client.enforce_online_refresh_tokens {
            w.abs_ms
        } else {
            now + client.session_lifetime_secs as i64 * 1000
        }
    }

    fn refresh_web_locked(
        &mut self,
        client: &ClientSettings,
        refresh_token: &str,
        clients: &HashMap<String, Arc<ClientSettings>>,
        now: i64,
    ) -> Result<WebGrant, SessionError> {
        let d = digest(refresh_token);
        let rt = self
            .refresh
            .get(&d)
            .cloned()
            .ok_or_else(|| grant("unknown refresh token"))?;
        if rt.client_id != client.client_id {
            return Err(grant("the refresh token was issued to another client"));
        }
        if !rt.owner.starts_with("ws_") {
            return Err(grant(
                "a native refresh token only mints transfer tokens here (audience)",
            ));
        }
        match rt.state {
            RtState::Revoked => return Err(grant("the refresh token was revoked")),
            RtState::Rotated => {
                // Reuse: the family (every refresh token of this session) goes.
                let mut revoked = Revoked::default();
                self.revoke_owned_refresh(&rt.owner, &mut revoked);
                return Err(SessionError::Reuse(revoked));
            }
            RtState::Active => {}
        }
        if now >= rt.expires_ms {
            return Err(grant("the refresh token has expired"));
        }
        let w = self
            .webs
            .get(&rt.owner)
            .cloned()
            .ok_or_else(|| grant("the refresh token's session is unknown"))?;
        let web_client = clients.get(&w.client_id);
        let online = web_client.is_none_or(|c| c.enforce_online_refresh_tokens);
        if online && !w.alive(now) {
            return Err(grant("the refresh token's session has ended"));
        }
        self.set_refresh_state(&d, RtState::Rotated);
        let new = self.issue_refresh(&w.id, &client.client_id, rt.expires_ms);
        if w.alive(now) {
            self.touch_web(&w.id, client, now);
        }
        Ok(WebGrant {
            sid: w.id,
            sub: w.sub,
            client_id: client.client_id.clone(),
            session_expires_ms: if online { w.abs_ms } else { rt.expires_ms },
            refresh_token: Some(new),
        })
    }

    fn revoke_owned_refresh(&mut self, owner: &str, revoked: &mut Revoked) {
        let owned: Vec<String> = self
            .refresh
            .values()
            .filter(|r| r.owner == owner && r.state != RtState::Revoked)
            .map(|r| r.digest.clone())
            .collect();
        for d in owned {
            self.revoke_refresh_only(&d, revoked);
        }
    }

    fn revoke_refresh_only(&mut self, digest: &str, revoked: &mut Revoked) -> Option<Refresh> {
        let r = self.refresh.get(digest)?.clone();
        if self.set_refresh_state(digest, RtState::Revoked) {
            revoked.refresh_tokens.push(r.id.clone());
        }
        // Transfer tokens minted with it are void.
        self.void_transfers(|t| t.refresh.as_deref() == Some(r.id.as_str()), revoked);
        Some(r)
    }

    fn void_transfers(&mut self, which: impl Fn(&Transfer) -> bool, revoked: &mut Revoked) {
        let now = util::now_ms();
        for t in self.transfers.values_mut() {
            if !t.used && now < t.expires_ms && which(t) {
                t.used = true;
                revoked.transfer_tokens += 1;
                self.dirty.push(Entity::Transfer(t.clone()));
            }
        }
    }

    fn revoke_refresh(
        &mut self,
        digest: &str,
        clients: &HashMap<String, Arc<ClientSettings>>,
        revoked: &mut Revoked,
    ) {
        let Some(r) = self.revoke_refresh_only(digest, revoked) else {
            return;
        };
        // A web refresh token goes alone; a native one takes its session
        // (and so, by the cascade rule, the web sessions) when it cascades.
        let cascade = clients
            .get(&r.client_id)
            .is_none_or(|c| c.enforce_cascade_revocation);
        if r.owner.starts_with("ns_") && cascade {
            self.revoke_native(&r.owner, clients, revoked);
        }
    }

    /// Ends a native session: its refresh tokens and unused transfer tokens
    /// always; its web sessions when its client cascades.
    fn revoke_native(
        &mut self,
        id: &str,
        clients: &HashMap<String, Arc<ClientSettings>>,
        revoked: &mut Revoked,
    ) {
        let Some(n) = self.natives.get_mut(id) else {
            return;
        };
        if !n.revoked {
            n.revoked = true;
            revoked.native_sessions.push(n.id.clone());
            let n = n.clone();
            self.dirty.push(Entity::Native(n));
        }
        self.revoke_owned_refresh(id, revoked);
        self.void_transfers(|t| t.native == id, revoked);
        let client_id = &self.natives[id].client_id;
        let cascade = clients
            .get(client_id)
            .is_none_or(|c| c.enforce_cascade_revocation);
        if cascade {
            let children: Vec<String> = self
                .webs
                .values()
                .filter(|w| w.parent == id && !w.ended)
                .map(|w| w.id.clone())
                .collect();
            for web in children {
                self.end_web(&web, clients, revoked);
            }
        }
    }

    /// Ends a web session (revoked or expired): its refresh tokens too when
    /// its client keeps them online.
    fn end_web(
        &mut self,
        id: &str,
        clients: &HashMap<String, Arc<ClientSettings>>,
        revoked: &mut Revoked,
    ) {
        let Some(w) = self.webs.get_mut(id) else {
            return;
        };
        if !w.ended {
            w.ended = true;
            let w = w.clone();
            self.deadlines.remove(&(w.deadline(), w.id.clone()));
            revoked.web_sessions.push(Ended {
                sid: w.id.clone(),
                sub: w.sub.clone(),
                client_id: w.client_id.clone(),
            });
            self.dirty.push(Entity::Web(w));
        }
        let online = clients
            .get(&self.webs[id].client_id)
            .is_none_or(|c| c.enforce_online_refresh_tokens);
        if online {
            self.revoke_owned_refresh(id, revoked);
        }
    }
}
