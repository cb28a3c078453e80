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
pub mod model;
pub mod rules;
pub mod secrets;

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::Arc;

pub use binding::Binding;
use model::{RtState, UserGraph, UserTag, pointer};
pub use rules::{Clients, Ended, Revoked, hub_subject, issuer_tag};
use secrets::digest;

use crate::config::{ClientKind, ClientSettings, Config, DeviceBinding};
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
            if self.store.save(version, &record_of(&g)).await? {
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

    /// Opens a native session for `sub` (of issuer `iss`), optionally
    /// standing for an upstream session, and issues its refresh token. The
    /// session ends at `ends_ms` at the latest (a token exchange's subject
    /// token), else after the configured native session lifetime.
    pub async fn open_native(
        &self,
        client_id: &str,
        iss: &str,
        sub: &str,
        ext_sid: Option<&str>,
        ends_ms: Option<i64>,
    ) -> Result<NativeGrant, SessionError> {
        self.native_client(client_id)?;
        let tag = UserTag::of(iss, sub);
        self.mutate(&tag, Some((iss, sub)), |g, now| {
            if g.live_counts(now).0 >= MAX_SESSIONS_PER_USER {
                return Err(too_many());
            }
            let expires = ends_ms.map_or(now + self.native_ttl_ms, |e| {
                e.min(now + self.native_ttl_ms)
            });
            let native = g.find_or_open_native(client_id, ext_sid, expires, now);
            let expires = g.native(&native).map_or(expires, |n| n.expires_ms);
            let token = g.issue_refresh(&native, client_id, expires);
            Ok(NativeGrant {
                native_session: native,
                refresh_token: token,
                expires_ms: expires,
            })
        })
        .await?
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
        let client = self.native_client(client_id)?;
        let d = digest(refresh_token);
        let tag = self
            .user_of(&pointer::refresh(&d))
            .await?
            .ok_or_else(|| grant("unknown refresh token"))?;
        self.mutate(&tag, None, |g, now| {
            self.mint_locked(g, &client, &d, ip, now)
        })
        .await?
    }

    fn mint_locked(
        &self,
        g: &mut UserGraph,
        client: &ClientSettings,
        d: &str,
        ip: IpAddr,
        now: i64,
    ) -> Result<Minted, SessionError> {
        let rt = g
            .refresh_by_digest(d)
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
                g.revoke_native(&rt.owner, &self.clients, &mut revoked, now);
                return Err(SessionError::Reuse(revoked));
            }
            RtState::Active => {}
        }
        if now >= rt.expires_ms {
            return Err(grant("the refresh token has expired"));
        }
        let native = g
            .native(&rt.owner)
            .filter(|n| !n.revoked && now < n.expires_ms)
            .cloned()
            .ok_or_else(|| grant("the refresh token's session has ended"))?;
        if !client.can_create_session_transfer_token {
            return Err(cannot_mint());
        }
        let refresh_token = client.rotate_refresh_token.then(|| {
            g.set_refresh_state(d, RtState::Rotated);
            g.issue_refresh(&native.id, &client.client_id, rt.expires_ms)
        });
        let transfer_token = self.issue_transfer(g, &native.id, Some(rt.id), ip, now)?;
        Ok(Minted {
            transfer_token,
            expires_in: (self.transfer_ttl_ms / 1000) as u64,
            refresh_token,
        })
    }

    fn issue_transfer(
        &self,
        g: &mut UserGraph,
        native: &str,
        refresh: Option<String>,
        ip: IpAddr,
        now: i64,
    ) -> Result<String, SessionError> {
        let ip = util::canonical(ip);
        g.issue_transfer(
            native,
            refresh,
            ip,
            self.binding.asn_of(ip),
            self.transfer_ttl_ms,
            now,
        )
        .ok_or_else(|| grant("the native session has ended"))
    }

    /// The RFC 8693 mint: an upstream token of the native app (already
    /// verified, not hub-issued) stands for the native session, which ends
    /// at `ends_ms` at the latest.
    #[allow(clippy::too_many_arguments)]
    pub async fn mint_for_upstream_session(
        &self,
        client_id: &str,
        iss: &str,
        sub: &str,
        ext_sid: &str,
        ends_ms: Option<i64>,
        ip: IpAddr,
    ) -> Result<Minted, SessionError> {
        let client = self.native_client(client_id)?;
        if !client.can_create_session_transfer_token {
            return Err(cannot_mint());
        }
        let tag = UserTag::of(iss, sub);
        self.mutate(&tag, Some((iss, sub)), |g, now| {
            if g.live_counts(now).0 >= MAX_SESSIONS_PER_USER {
                return Err(too_many());
            }
            let expires = ends_ms.map_or(now + self.native_ttl_ms, |e| {
                e.min(now + self.native_ttl_ms)
            });
            let native = g.find_or_open_native(client_id, Some(ext_sid), expires, now);
            Ok(Minted {
                transfer_token: self.issue_transfer(g, &native, None, ip, now)?,
                expires_in: (self.transfer_ttl_ms / 1000) as u64,
                refresh_token: None,
            })
        })
        .await?
    }

    /// Uses up a transfer token without redeeming it (refused before the
    /// graph could judge it, e.g. by its delivery method).
    pub async fn burn_transfer(&self, token: &str) -> Result<(), SessionError> {
        let d = digest(token);
        if let Some(tag) = self.user_of(&pointer::transfer(&d)).await? {
            self.mutate(&tag, None, |g, _| {
                if let Some(t) = g.transfer_mut(&d) {
                    t.used = true;
                }
            })
            .await?;
        }
        Ok(())
    }

    /// `/authorize`: the four outcomes of the seeds.
    ///
    /// 1. valid STT, no live session in this browser → a new web session;
    /// 2. valid STT, a live session of the same user → that session is
    ///    reused (the client joins it, the STT's native session becomes
    ///    one of its parents, its idle deadline moves);
    /// 3. valid STT, a live session of a different user → that session is
    ///    revoked, `login_required`;
    /// 4. invalid STT (unknown, used, expired, wrong IP/ASN, wrong client,
    ///    revoked parent) → `login_required`, nothing created or changed.
    ///
    /// Without an STT, a live session gives a code (silent SSO). An STT is
    /// burnt by its first presentation, whatever the outcome.
    pub async fn authorize(&self, r: AuthorizeRequest<'_>) -> Result<Authorized, SessionError> {
        let cookie = r.session_cookie.map(digest);
        let cookie_user = match &cookie {
            Some(c) => self.user_of(&pointer::cookie(c)).await?,
            None => None,
        };
        let Some(stt) = r.transfer_token else {
            let (Some(tag), Some(cookie)) = (cookie_user, cookie) else {
                return Ok(login_required("no session_transfer_token and no session"));
            };
            return Ok(self
                .mutate(&tag, None, |g, now| {
                    let Some(web) = g.web_by_cookie(&cookie).filter(|w| w.alive(now)) else {
                        return login_required("no session_transfer_token and no session");
                    };
                    let web = web.id.clone();
                    g.join_web(&web, r.client, None, now);
                    Authorized::Code {
                        code: g.issue_code(
                            &web,
                            &r.client.client_id,
                            r.redirect_uri,
                            r.code_challenge,
                            now,
                        ),
                        set_cookie: None,
                        outcome: "existing_session",
                    }
                })
                .await?);
        };
        let d = digest(stt);
        let Some(stt_user) = self.user_of(&pointer::transfer(&d)).await? else {
            return Ok(login_required("unknown session_transfer_token"));
        };
        let step = self
            .mutate(&stt_user, None, |g, now| {
                let native = match g.redeem_transfer(&d, now, |t| self.transfer_fits(t, &r)) {
                    Ok(n) => n,
                    Err(why) => return Step::Refused(why),
                };
                let same_user = cookie_user.as_ref() == Some(&stt_user);
                let live = cookie
                    .as_deref()
                    .and_then(|c| g.web_by_cookie(c))
                    .filter(|w| w.alive(now))
                    .map(|w| w.id.clone());
                match (same_user, live) {
                    (true, Some(web)) => {
                        g.join_web(&web, r.client, Some(&native), now);
                        Step::Code(Authorized::Code {
                            code: g.issue_code(
                                &web,
                                &r.client.client_id,
                                r.redirect_uri,
                                r.code_challenge,
                                now,
                            ),
                            set_cookie: None,
                            outcome: "same_user",
                        })
                    }
                    (false, _) if cookie_user.is_some() => Step::OtherUser(native),
                    _ => Step::Code(self.new_web(g, &native, &r, now)),
                }
            })
            .await?;
        match step {
            Step::Refused(why) => Ok(login_required(why)),
            Step::Code(a) => Ok(a),
            Step::OtherUser(native) => {
                let (Some(other), Some(cookie)) = (cookie_user, cookie) else {
                    unreachable!("OtherUser needs a cookie's user");
                };
                // Outcome 3 if that session is alive; else it is outcome 1.
                let ended = self
                    .mutate(&other, None, |g, now| {
                        let live = g
                            .web_by_cookie(&cookie)
                            .filter(|w| w.alive(now))
                            .map(|w| w.id.clone());
                        let mut revoked = Revoked::default();
                        if let Some(web) = &live {
                            g.end_web(web, &self.clients, &mut revoked, now);
                        }
                        live.map(|_| revoked.web_sessions)
                    })
                    .await?;
                if let Some(ended) = ended {
                    return Ok(Authorized::LoginRequired {
                        ended,
                        clear_cookie: true,
                        why: "the session_transfer_token belongs to a different user than this browser's session, which was revoked",
                    });
                }
                Ok(self
                    .mutate(&stt_user, None, |g, now| {
                        if g.native(&native)
                            .is_some_and(|n| !n.revoked && now < n.expires_ms)
                        {
                            self.new_web(g, &native, &r, now)
                        } else {
                            login_required("the session_transfer_token's native session has ended")
                        }
                    })
                    .await?)
            }
        }
    }

    fn new_web(
        &self,
        g: &mut UserGraph,
        native: &str,
        r: &AuthorizeRequest<'_>,
        now: i64,
    ) -> Authorized {
        if g.live_counts(now).1 >= MAX_SESSIONS_PER_USER {
            return login_required("this user has too many web sessions");
        }
        let (web, cookie) = g.open_web(native, r.client, now);
        Authorized::Code {
            code: g.issue_code(
                &web,
                &r.client.client_id,
                r.redirect_uri,
                r.code_challenge,
                now,
            ),
            set_cookie: Some(cookie),
            outcome: "new_session",
        }
    }

    /// Device binding and the native client's `transfer_to`.
    fn transfer_fits(
        &self,
        t: &model::Transfer,
        r: &AuthorizeRequest<'_>,
    ) -> Result<(), &'static str> {
        let bound = match r.client.enforce_device_binding {
            DeviceBinding::None => true,
            DeviceBinding::Ip => t.ip == util::canonical(r.ip),
            DeviceBinding::Asn => t.asn.is_some() && t.asn == self.binding.asn_of(r.ip),
        };
        if !bound {
            return Err("the session_transfer_token is bound to another device");
        }
        let allowed = self.clients.get(&t.client_id).is_some_and(|c| {
            c.transfer_to.is_empty() || c.transfer_to.contains(&r.client.client_id)
        });
        if !allowed {
            return Err("the session_transfer_token may not open this client");
        }
        Ok(())
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
        if !secrets::is_pkce_verifier(verifier) {
            return Err(SessionError::InvalidRequest(
                "code_verifier must be 43 to 128 characters of A-Z a-z 0-9 - . _ ~ (RFC 7636)"
                    .into(),
            ));
        }
        let d = digest(code);
        let tag = self
            .user_of(&pointer::code(&d))
            .await?
            .ok_or_else(|| grant("unknown or already used authorization code"))?;
        self.mutate(&tag, None, |g, now| {
            let w = g
                .take_code(client_id, &d, redirect_uri, verifier, now)
                .map_err(grant)?;
            let refresh_token = client.allow_refresh_token.then(|| {
                let expires = if client.enforce_online_refresh_tokens {
                    w.abs_ms
                } else {
                    now + client.session_lifetime_secs as i64 * 1000
                };
                g.issue_refresh(&w.id, client_id, expires)
            });
            Ok(self.web_grant(g, &w.id, client_id, w.abs_ms, refresh_token))
        })
        .await?
    }

    fn web_grant(
        &self,
        g: &UserGraph,
        sid: &str,
        client_id: &str,
        session_expires_ms: i64,
        refresh_token: Option<String>,
    ) -> WebGrant {
        WebGrant {
            sid: sid.to_string(),
            sub: g.hub_subject(),
            upstream_iss: g.iss.clone(),
            upstream_sub: g.sub.clone(),
            client_id: client_id.to_string(),
            session_expires_ms,
            refresh_token,
        }
    }

    /// A web refresh token buys a new session token (and is rotated; a
    /// retired one coming back revokes the whole family).
    pub async fn refresh_web(
        &self,
        client_id: &str,
        refresh_token: &str,
    ) -> Result<WebGrant, SessionError> {
        let client = self.known_client(client_id)?;
        let d = digest(refresh_token);
        let tag = self
            .user_of(&pointer::refresh(&d))
            .await?
            .ok_or_else(|| grant("unknown refresh token"))?;
        self.mutate(&tag, None, |g, now| {
            let rt = g
                .refresh_by_digest(&d)
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
                    g.revoke_owned_refresh(&rt.owner, &mut revoked, now);
                    return Err(SessionError::Reuse(revoked));
                }
                RtState::Active => {}
            }
            if now >= rt.expires_ms {
                return Err(grant("the refresh token has expired"));
            }
            let w = g
                .web(&rt.owner)
                .cloned()
                .ok_or_else(|| grant("the refresh token's session is unknown"))?;
            // Online or not is the token's own client's rule.
            let online = client.enforce_online_refresh_tokens;
            if online && !w.alive(now) {
                return Err(grant("the refresh token's session has ended"));
            }
            g.set_refresh_state(&d, RtState::Rotated);
            let new = g.issue_refresh(&w.id, &client.client_id, rt.expires_ms);
            if w.alive(now) {
                g.join_web(&w.id, &client, None, now);
            }
            let until = if online { w.abs_ms } else { rt.expires_ms };
            Ok(self.web_grant(g, &w.id, &client.client_id, until, Some(new)))
        })
        .await?
    }

    /// Revokes along the graph by the rules in `rules`. An unknown refresh
    /// token or session id is `NotFound` (a typo must not look like success).
    pub async fn revoke(&self, what: &Revoke) -> Result<Revoked, SessionError> {
        let unknown =
            |what: &str| SessionError::NotFound(format!("no {what} with this id is known"));
        match what {
            Revoke::RefreshToken(token_or_id) => {
                // A public id (`rt_` and 24 hex digits) or the token itself.
                let by_id = self.user_of(&pointer::refresh_id(token_or_id)).await?;
                let (tag, d) = match by_id {
                    Some(tag) => (Some(tag), None),
                    None => {
                        let d = digest(token_or_id);
                        (self.user_of(&pointer::refresh(&d)).await?, Some(d))
                    }
                };
                let tag = tag.ok_or_else(|| unknown("refresh token"))?;
                Ok(self
                    .mutate(&tag, None, |g, now| {
                        let digest = match &d {
                            Some(d) => Some(d.clone()),
                            None => g.refresh_by_id(token_or_id).map(|r| r.digest.clone()),
                        };
                        let mut revoked = Revoked::default();
                        if let Some(d) = digest {
                            g.revoke_refresh(&d, &self.clients, &mut revoked, now);
                        }
                        revoked
                    })
                    .await?)
            }
            Revoke::Session(id) => {
                let tag = self
                    .user_of(&pointer::session(id))
                    .await?
                    .ok_or_else(|| unknown("session"))?;
                Ok(self
                    .mutate(&tag, None, |g, now| {
                        let mut revoked = Revoked::default();
                        if id.starts_with("ws_") {
                            g.end_web(id, &self.clients, &mut revoked, now);
                        } else {
                            g.revoke_native(id, &self.clients, &mut revoked, now);
                        }
                        revoked
                    })
                    .await?)
            }
            Revoke::External { iss, sid } => {
                let Some(tag) = self.user_of(&pointer::external(iss, sid)).await? else {
                    return Ok(Revoked::default());
                };
                Ok(self
                    .mutate(&tag, None, |g, now| {
                        let ids: Vec<String> = g
                            .natives
                            .iter()
                            .filter(|n| &g.iss == iss && n.ext_sid.as_deref() == Some(sid.as_str()))
                            .map(|n| n.id.clone())
                            .collect();
                        let mut revoked = Revoked::default();
                        for id in ids {
                            g.revoke_native(&id, &self.clients, &mut revoked, now);
                        }
                        revoked
                    })
                    .await?)
            }
            Revoke::User { sub, iss } => {
                let issuers: Vec<&str> = match iss {
                    Some(i) => vec![i.as_str()],
                    None => self.issuers_by_tag.values().map(String::as_str).collect(),
                };
                let mut all = Revoked::default();
                for iss in issuers {
                    all.append(self.revoke_user(&UserTag::of(iss, sub)).await?);
                }
                Ok(all)
            }
        }
    }

    async fn revoke_user(&self, tag: &UserTag) -> Result<Revoked, StoreError> {
        self.mutate(tag, None, |g, now| {
            let mut revoked = Revoked::default();
            let natives: Vec<String> = g.natives.iter().map(|n| n.id.clone()).collect();
            for id in natives {
                g.revoke_native(&id, &self.clients, &mut revoked, now);
            }
            revoked.append(g.end_webs_where(|_| true, &self.clients, now));
            revoked
        })
        .await
    }

    /// RFC 7009 for a public client: revokes `token` (a refresh token) along
    /// the graph if it was issued to `client_id`; anything else changes
    /// nothing and is not told apart (the answer is the same).
    pub async fn revoke_own_refresh_token(
        &self,
        client_id: &str,
        token: &str,
    ) -> Result<Revoked, SessionError> {
        self.known_client(client_id)?;
        let d = digest(token);
        let Some(tag) = self.user_of(&pointer::refresh(&d)).await? else {
            return Ok(Revoked::default());
        };
        Ok(self
            .mutate(&tag, None, |g, now| {
                let mut revoked = Revoked::default();
                if g.refresh_by_digest(&d)
                    .is_some_and(|r| r.client_id == client_id)
                {
                    g.revoke_refresh(&d, &self.clients, &mut revoked, now);
                }
                revoked
            })
            .await?)
    }

    /// Marks web sessions ended by a logout that already pushed to them
    /// (a hub session token's own logout): the session `sid`, or every web
    /// session of the hub subject `sub`. Native sessions stay: the user
    /// logged out of the web. Returns the sessions it ended.
    pub async fn logged_out(
        &self,
        sid: Option<&str>,
        sub: Option<&str>,
    ) -> Result<Vec<Ended>, StoreError> {
        let (tag, only) = match (sid, sub) {
            (Some(sid), _) => match self.user_of(&pointer::session(sid)).await? {
                Some(tag) => (tag, Some(sid)),
                None => return Ok(Vec::new()),
            },
            (None, Some(sub)) => match self.user_of_subject(sub) {
                Some(tag) => (tag, None),
                None => return Ok(Vec::new()),
            },
            (None, None) => return Ok(Vec::new()),
        };
        let revoked = self
            .mutate(&tag, None, |g, now| {
                g.end_webs_where(|w| only.is_none_or(|s| w.id == s), &self.clients, now)
            })
            .await?;
        Ok(revoked.web_sessions)
    }

    /// The user of a hub subject (`{issuer tag}|{sub}`).
    fn user_of_subject(&self, subject: &str) -> Option<UserTag> {
        let (tag, sub) = subject.split_once('|')?;
        let iss = self.issuers_by_tag.get(tag)?;
        Some(UserTag::of(iss, sub))
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

    /// When the next web session expires (ms), if any is live.
    pub fn next_deadline(&self) -> Option<i64> {
        self.store.next_deadline()
    }

    /// Woken when a web session with an earlier deadline appears.
    pub fn deadline_changed(&self) -> &tokio::sync::Notify {
        self.store.deadline_changed()
    }

    /// Ends every web session past its idle or absolute deadline.
    pub async fn expire_due(&self) -> Result<Vec<Ended>, StoreError> {
        let due = self.store.due(util::now_ms()).await?;
        let mut ended = Vec::new();
        for (tag, web) in due {
            let revoked = self
                .mutate(&UserTag(tag), None, |g, now| {
                    g.end_webs_where(|w| w.id == web && w.deadline() <= now, &self.clients, now)
                })
                .await?;
            ended.extend(revoked.web_sessions);
        }
        Ok(ended)
    }

    /// Forgets users whose whole graph has expired.
    pub fn purge(&self, now: i64) {
        self.store.purge(now);
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
