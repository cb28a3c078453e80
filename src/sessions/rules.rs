//! The rules of the session graph, applied to one user's graph.
//!
//! * A native session mints transfer tokens; a transfer token redeemed at
//!   `/authorize` opens a web session or joins the user's live one.
//! * A web session remembers every native session that opened or joined it
//!   (`parents`) and every web client that joined it (`clients`).
//! * Revoking a native refresh token revokes its native session when the
//!   native client has `enforce_cascade_revocation`; revoking a native
//!   session revokes its refresh tokens, voids its unused transfer tokens
//!   and, with cascade, ends every web session it opened or joined.
//! * Ending a web session revokes each of its refresh tokens whose client
//!   has `enforce_online_refresh_tokens` (the default).
//! * A refresh token presented again after rotation revokes its family.
//!
//! Every web session that ends is reported as [`Ended`], so the caller can
//! push its logout and tell each joined client's backend.
//!
//! Must not: do I/O, read the clock (the caller passes `now`), or know
//! where the graph is stored.

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::Arc;

use serde::Serialize;

use super::model::{Code, Native, Notice, NoticeKind, Refresh, RtState, Transfer, UserGraph, Web};
use super::secrets::{digest, id, pkce_matches, secret};
use crate::config::ClientSettings;

/// Lifetime of an authorization code.
pub const CODE_TTL_MS: i64 = 60_000;
/// Ended entities are kept this long after they end (answers stay precise
/// for a replay, e.g. "already used" rather than "unknown").
pub const KEEP_ENDED_MS: i64 = 10 * 60_000;
/// How long the node that ended a session has to deliver its notices
/// before any node may take them, unless the settings say (`Clients`).
pub const NOTICE_LEASE_MS: i64 = 10_000;

/// The registered clients, as the rules consult them, and how long the
/// node that ends a session has to deliver its notices (twice a
/// back-channel request's deadline) before any node may take them.
#[derive(Clone)]
pub struct Clients(pub HashMap<String, Arc<ClientSettings>>, pub i64);

impl Default for Clients {
    fn default() -> Clients {
        Clients(HashMap::new(), NOTICE_LEASE_MS)
    }
}

impl Clients {
    pub fn notice_lease_ms(&self) -> i64 {
        self.1
    }

    pub fn get(&self, id: &str) -> Option<&Arc<ClientSettings>> {
        self.0.get(id)
    }
    /// Unknown clients get the safe answer: cascade.
    fn cascades(&self, id: &str) -> bool {
        self.get(id).is_none_or(|c| c.enforce_cascade_revocation)
    }
    /// Unknown clients get the safe answer: online.
    fn online(&self, id: &str) -> bool {
        self.get(id).is_none_or(|c| c.enforce_online_refresh_tokens)
    }
}

/// A web session that ended: its SPAs must be told, and the backend of
/// every client that joined it (the graph's outbox holds both until done).
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct Ended {
    /// The user's graph (its tag), where the notices wait.
    #[serde(skip)]
    pub user: String,
    pub sid: String,
    /// The hub subject (the `sub` of the session's tokens).
    pub sub: String,
    pub clients: Vec<String>,
}

/// What a revocation ended (and why: what the ended sessions' sockets are
/// told; empty means `session_revoked`).
#[derive(Clone, Debug, Default, Serialize, PartialEq, Eq)]
pub struct Revoked {
    #[serde(skip)]
    pub reason: String,
    pub web_sessions: Vec<Ended>,
    pub native_sessions: Vec<String>,
    pub refresh_tokens: Vec<String>,
    pub transfer_tokens: usize,
}

impl Revoked {
    /// An empty accumulator whose ended sessions are told `reason`.
    pub fn because(reason: &str) -> Revoked {
        Revoked {
            reason: reason.to_string(),
            ..Revoked::default()
        }
    }

    fn push_reason(&self) -> &str {
        if self.reason.is_empty() {
            "session_revoked"
        } else {
            &self.reason
        }
    }

    pub fn append(&mut self, mut other: Revoked) {
        self.web_sessions.append(&mut other.web_sessions);
        self.native_sessions.append(&mut other.native_sessions);
        self.refresh_tokens.append(&mut other.refresh_tokens);
        self.transfer_tokens += other.transfer_tokens;
    }
}

/// The hub's subject for a user of `iss`: a short tag of the issuer, `|`,
/// and the issuer's `sub` (as Auth0 writes `provider|id`). Two issuers'
/// users with the same `sub` are two subjects.
pub fn hub_subject(iss: &str, sub: &str) -> String {
    format!("{}|{sub}", issuer_tag(iss))
}

/// 32 bits of the issuer's SHA-256, hex (start-up refuses two configured
/// issuers with the same tag).
pub fn issuer_tag(iss: &str) -> String {
    let d = ring::digest::digest(&ring::digest::SHA256, iss.as_bytes());
    crate::auth::api_keys::hex(&d.as_ref()[..4])
}

/// Why a presented transfer token opens nothing (outcome 4).
pub type Refusal = &'static str;

impl UserGraph {
    pub fn hub_subject(&self) -> String {
        hub_subject(&self.iss, &self.sub)
    }

    fn ended(&self, w: &Web) -> Ended {
        Ended {
            user: self.tag().0,
            sid: w.id.clone(),
            sub: self.hub_subject(),
            clients: w.clients.clone(),
        }
    }

    /// The live native session of `client_id` standing for `ext_sid`, or a
    /// new one (always new without an upstream session).
    pub fn find_or_open_native(
        &mut self,
        client_id: &str,
        ext_sid: Option<&str>,
        expires_ms: i64,
        now: i64,
    ) -> String {
        if let Some(sid) = ext_sid
            && let Some(n) = self.natives.iter().find(|n| {
                !n.revoked
                    && now < n.expires_ms
                    && n.client_id == client_id
                    && n.ext_sid.as_deref() == Some(sid)
            })
        {
            return n.id.clone();
        }
        let n = Native {
            id: id("ns_"),
            client_id: client_id.to_string(),
            ext_sid: ext_sid.map(str::to_string),
            expires_ms,
            revoked: false,
        };
        let native = n.id.clone();
        self.natives.push(n);
        native
    }

    /// A new refresh token for `owner`; returns the secret.
    pub fn issue_refresh(&mut self, owner: &str, client_id: &str, expires_ms: i64) -> String {
        let token = secret("rt_");
        self.refresh.push(Refresh {
            id: id("rt_"),
            digest: digest(&token),
            owner: owner.to_string(),
            client_id: client_id.to_string(),
            state: RtState::Active,
            expires_ms,
        });
        token
    }

    /// Moves a refresh token to `state` (never out of `Revoked`).
    pub fn set_refresh_state(&mut self, digest: &str, state: RtState) -> bool {
        let Some(r) = self.refresh_mut(digest) else {
            return false;
        };
        if r.state == RtState::Revoked || r.state == state {
            return false;
        }
        r.state = state;
        true
    }

    /// A new transfer token of `native`; returns the secret.
    #[allow(clippy::too_many_arguments)]
    pub fn issue_transfer(
        &mut self,
        native: &str,
        refresh: Option<String>,
        ip: IpAddr,
        asn: Option<u32>,
        ttl_ms: i64,
        now: i64,
    ) -> Option<String> {
        let n = self.native(native)?;
        let token = secret("stt_");
        let t = Transfer {
            digest: digest(&token),
            native: n.id.clone(),
            refresh,
            client_id: n.client_id.clone(),
            ip,
            asn,
            expires_ms: (now + ttl_ms).min(n.expires_ms),
            used: false,
        };
        self.transfers.push(t);
        Some(token)
    }

    /// A new authorization code for `web`; returns the secret.
    pub fn issue_code(
        &mut self,
        web: &str,
        client_id: &str,
        redirect_uri: &str,
        challenge: &str,
        now: i64,
    ) -> String {
        let code = secret("");
        self.codes.push(Code {
            digest: digest(&code),
            web: web.to_string(),
            client_id: client_id.to_string(),
            redirect_uri: redirect_uri.to_string(),
            challenge: challenge.to_string(),
            expires_ms: now + CODE_TTL_MS,
        });
        code
    }

    /// Checks and burns a presented transfer token (whatever the outcome);
    /// `check` judges the rest (device binding, target client). Returns
    /// the native session it stands for.
    pub fn redeem_transfer(
        &mut self,
        digest: &str,
        now: i64,
        check: impl FnOnce(&Transfer) -> Result<(), Refusal>,
    ) -> Result<String, Refusal> {
        let t = self
            .transfer_mut(digest)
            .ok_or("unknown session_transfer_token")?;
        if t.used {
            return Err("the session_transfer_token was already used or revoked");
        }
        t.used = true;
        let t = t.clone();
        if now >= t.expires_ms {
            return Err("the session_transfer_token has expired");
        }
        check(&t)?;
        let alive = self
            .native(&t.native)
            .is_some_and(|n| !n.revoked && now < n.expires_ms);
        if !alive {
            return Err("the session_transfer_token's native session has ended");
        }
        Ok(t.native)
    }

    /// A new web session opened from `native` for `client`; returns its id
    /// and the cookie secret.
    pub fn open_web(
        &mut self,
        native: &str,
        client: &ClientSettings,
        now: i64,
    ) -> (String, String) {
        let cookie = secret("");
        let w = Web {
            id: id("ws_"),
            client_id: client.client_id.clone(),
            clients: vec![client.client_id.clone()],
            parents: vec![native.to_string()],
            cookie: digest(&cookie),
            idle_ms: now + client.session_idle_secs as i64 * 1000,
            abs_ms: now + client.session_lifetime_secs as i64 * 1000,
            ended_at: None,
        };
        let web = w.id.clone();
        self.webs.push(w);
        (web, cookie)
    }

    /// Activity on a live web session by `client` (silent SSO, a redeemed
    /// transfer token, a refresh): the client joins it, a native session
    /// that redeemed into it becomes a parent, and its idle deadline moves
    /// (never past the absolute one).
    pub fn join_web(&mut self, web: &str, client: &ClientSettings, native: Option<&str>, now: i64) {
        let Some(w) = self.web_mut(web) else {
            return;
        };
        if !w.clients.contains(&client.client_id) {
            w.clients.push(client.client_id.clone());
        }
        if let Some(n) = native
            && !w.parents.iter().any(|p| p == n)
        {
            w.parents.push(n.to_string());
        }
        w.idle_ms = (now + client.session_idle_secs as i64 * 1000).max(w.idle_ms);
    }

    /// The code exchange: the code is gone whatever follows.
    pub fn take_code(
        &mut self,
        client_id: &str,
        code_digest: &str,
        redirect_uri: &str,
        verifier: &str,
        now: i64,
    ) -> Result<Web, &'static str> {
        let pos = self
            .codes
            .iter()
            .position(|c| c.digest == code_digest)
            .ok_or("unknown or already used authorization code")?;
        let c = self.codes.swap_remove(pos);
        if now >= c.expires_ms {
            return Err("the authorization code has expired");
        }
        if c.client_id != client_id {
            return Err("the authorization code was issued to another client");
        }
        if c.redirect_uri != redirect_uri {
            return Err("redirect_uri does not match the authorization request");
        }
        if !pkce_matches(verifier, &c.challenge) {
            return Err("code_verifier does not match the code_challenge");
        }
        self.web(&c.web)
            .filter(|w| w.alive(now))
            .cloned()
            .ok_or("the session has ended")
    }

    /// Revokes every refresh token of `owner`.
    pub fn revoke_owned_refresh(&mut self, owner: &str, revoked: &mut Revoked, now: i64) {
        let owned: Vec<String> = self
            .refresh
            .iter()
            .filter(|r| r.owner == owner && r.state != RtState::Revoked)
            .map(|r| r.digest.clone())
            .collect();
        for d in owned {
            self.revoke_refresh_only(&d, revoked, now);
        }
    }

    /// Revokes one refresh token and voids the transfer tokens minted with it.
    fn revoke_refresh_only(
        &mut self,
        digest: &str,
        revoked: &mut Revoked,
        now: i64,
    ) -> Option<Refresh> {
        let r = self.refresh_by_digest(digest)?.clone();
        if self.set_refresh_state(digest, RtState::Revoked) {
            revoked.refresh_tokens.push(r.id.clone());
        }
        self.void_transfers(
            |t| t.refresh.as_deref() == Some(r.id.as_str()),
            revoked,
            now,
        );
        Some(r)
    }

    fn void_transfers(
        &mut self,
        which: impl Fn(&Transfer) -> bool,
        revoked: &mut Revoked,
        now: i64,
    ) {
        for t in &mut self.transfers {
            if !t.used && now < t.expires_ms && which(t) {
                t.used = true;
                revoked.transfer_tokens += 1;
            }
        }
    }

    /// Revokes a refresh token: a web one alone; a native one takes its
    /// native session when its client cascades.
    pub fn revoke_refresh(
        &mut self,
        digest: &str,
        clients: &Clients,
        revoked: &mut Revoked,
        now: i64,
    ) {
        let Some(r) = self.revoke_refresh_only(digest, revoked, now) else {
            return;
        };
        if r.owner.starts_with("ns_") && clients.cascades(&r.client_id) {
            self.revoke_native(&r.owner, clients, revoked, now);
        }
    }

    /// Ends a native session: its refresh tokens and unused transfer tokens
    /// always; with cascade, every web session it opened or joined.
    pub fn revoke_native(&mut self, id: &str, clients: &Clients, revoked: &mut Revoked, now: i64) {
        let Some(n) = self.native_mut(id) else {
            return;
        };
        if !n.revoked {
            n.revoked = true;
            revoked.native_sessions.push(n.id.clone());
        }
        let client_id = n.client_id.clone();
        self.revoke_owned_refresh(id, revoked, now);
        self.void_transfers(|t| t.native == id, revoked, now);
        if clients.cascades(&client_id) {
            let children: Vec<String> = self
                .webs
                .iter()
                .filter(|w| !w.ended() && w.parents.iter().any(|p| p == id))
                .map(|w| w.id.clone())
                .collect();
            for web in children {
                self.end_web(&web, clients, revoked, now);
            }
        }
    }

    /// Ends a web session (revoked, expired, logged out): each of its
    /// refresh tokens goes too when that token's client keeps them online,
    /// and what must follow waits in the outbox.
    pub fn end_web(&mut self, id: &str, clients: &Clients, revoked: &mut Revoked, now: i64) {
        let reason = revoked.push_reason().to_string();
        self.end_web_as(id, clients, revoked, now, Some(&reason))
    }

    /// [`UserGraph::end_web`], with the reason its sockets are told, or
    /// `None` when a logout already pushed to them.
    pub fn end_web_as(
        &mut self,
        id: &str,
        clients: &Clients,
        revoked: &mut Revoked,
        now: i64,
        push: Option<&str>,
    ) {
        let Some(w) = self.web_mut(id) else {
            return;
        };
        if !w.ended() {
            w.ended_at = Some(now);
            let w = w.clone();
            let ended = self.ended(&w);
            let due_ms = now + clients.notice_lease_ms();
            let notice = |kind| Notice {
                kind,
                sid: ended.sid.clone(),
                sub: ended.sub.clone(),
                due_ms,
                attempts: 0,
            };
            if let Some(reason) = push {
                self.outbox.push(notice(NoticeKind::Push {
                    reason: reason.to_string(),
                }));
            }
            for client in &ended.clients {
                if clients
                    .get(client)
                    .is_some_and(|c| c.backchannel_logout_uri.is_some())
                {
                    self.outbox.push(notice(NoticeKind::Backchannel {
                        client: client.clone(),
                    }));
                }
            }
            revoked.web_sessions.push(ended);
        }
        let online: Vec<String> = self
            .refresh
            .iter()
            .filter(|r| {
                r.owner == id && r.state != RtState::Revoked && clients.online(&r.client_id)
            })
            .map(|r| r.digest.clone())
            .collect();
        for d in online {
            self.revoke_refresh_only(&d, revoked, now);
        }
        // Codes of an ended session can buy nothing.
        self.codes.retain(|c| c.web != id);
    }

    /// Ends every live web session `which` picks; `push` as in `end_web_as`.
    pub fn end_webs_where(
        &mut self,
        which: impl Fn(&Web) -> bool,
        clients: &Clients,
        now: i64,
        push: Option<&str>,
    ) -> Revoked {
        let mut revoked = Revoked::because(push.unwrap_or(""));
        let ids: Vec<String> = self
            .webs
            .iter()
            .filter(|w| !w.ended() && which(w))
            .map(|w| w.id.clone())
            .collect();
        for id in ids {
            self.end_web_as(&id, clients, &mut revoked, now, push);
        }
        revoked
    }

    /// Forgets codes past their expiry and entities ended or expired more
    /// than `KEEP_ENDED_MS` ago.
    pub fn prune(&mut self, now: i64) {
        let keep = |t: i64| t + KEEP_ENDED_MS > now;
        self.codes.retain(|c| c.expires_ms > now);
        self.transfers.retain(|t| keep(t.expires_ms));
        self.refresh.retain(|r| keep(r.expires_ms));
        // A session stays as long as a refresh token of it (an offline one
        // outlives it) may still mint tokens that name it.
        let owners: std::collections::HashSet<&str> =
            self.refresh.iter().map(|r| r.owner.as_str()).collect();
        self.natives
            .retain(|n| keep(n.expires_ms) || owners.contains(n.id.as_str()));
        self.webs
            .retain(|w| keep(w.abs_ms) || owners.contains(w.id.as_str()));
    }

    /// Live native and web sessions.
    pub fn live_counts(&self, now: i64) -> (usize, usize) {
        (
            self.natives
                .iter()
                .filter(|n| !n.revoked && now < n.expires_ms)
                .count(),
            self.webs.iter().filter(|w| w.alive(now)).count(),
        )
    }
}

#[cfg(test)]
mod tests;
