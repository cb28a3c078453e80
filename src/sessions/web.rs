//! The web side: `/authorize` (the four outcomes of the seeds), the code
//! exchange, and web refresh tokens.
//!
//! Must not: mint transfer tokens (`native`) or revoke beyond what an
//! outcome says (outcome 3 ends the other user's session).

use super::model::{RtState, Transfer, UserGraph, pointer};
use super::rules::Revoked;
use super::secrets::{self, digest};
use super::{
    AuthorizeRequest, Authorized, MAX_SESSIONS_PER_USER, SessionError, Sessions, Step, WebGrant,
    grant, login_required,
};
use crate::config::DeviceBinding;
use crate::util;

impl Sessions {
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
                    code_for(g, web, &r, None, "existing_session", now)
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
                        Step::Code(code_for(g, web, &r, None, "same_user", now))
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
                        let mut revoked = Revoked::because("session_replaced");
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
        code_for(g, web, r, Some(cookie), "new_session", now)
    }

    /// Device binding and the native client's `transfer_to`.
    fn transfer_fits(&self, t: &Transfer, r: &AuthorizeRequest<'_>) -> Result<(), &'static str> {
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
}

/// A code for web session `web` and the requesting client (outcome 1, 2 or
/// a session opened now, with its cookie).
fn code_for(
    g: &mut UserGraph,
    web: String,
    r: &AuthorizeRequest<'_>,
    set_cookie: Option<String>,
    outcome: &'static str,
    now: i64,
) -> Authorized {
    Authorized::Code {
        code: g.issue_code(
            &web,
            &r.client.client_id,
            r.redirect_uri,
            r.code_challenge,
            now,
        ),
        sub: g.sub.clone(),
        web_session: web,
        set_cookie,
        outcome,
    }
}
