//! Native sessions and what they mint: opening a native session (a dev
//! login, or an upstream token exchanged for a hub refresh token) and
//! minting transfer tokens with a native refresh token or an upstream
//! session.
//!
//! Must not: redeem anything (`web`) or end anything but what a refresh
//! token's reuse revokes.

use std::net::IpAddr;

use super::model::{RtState, UserGraph, UserTag, pointer};
use super::rules::Revoked;
use super::secrets::digest;
use super::{
    MAX_SESSIONS_PER_USER, Minted, NativeGrant, SessionError, Sessions, cannot_mint, grant,
    too_many,
};
use crate::config::ClientSettings;
use crate::util;

impl Sessions {
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
                let mut revoked = Revoked::because("refresh_token_reuse");
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
            iss: g.iss.clone(),
            sub: g.sub.clone(),
            native_session: native.id.clone(),
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
                iss: g.iss.clone(),
                sub: g.sub.clone(),
                native_session: native,
            })
        })
        .await?
    }
}
