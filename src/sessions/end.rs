//! How web sessions end, and what follows: revocations along the graph,
//! logouts of hub session tokens, expiry at the deadline, and the outbox
//! of notices (a push, a backend to tell) that every end leaves in the
//! same save, delivered by the node that made it or, when due, by any.
//!
//! Must not: push or send anything itself (the logout service delivers
//! what [`Sessions::claim_notices`] hands out).

use super::model::{Notice, NoticeKind, UserGraph, UserTag, pointer};
use super::rules::{Ended, Revoked};
use super::secrets::digest;
use super::{Revoke, SessionError, Sessions};
use crate::store::StoreError;
use crate::util;

/// What became of a notice handed out for delivery.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Settled {
    /// Delivered, or refused for good, or given up: it leaves the outbox.
    Done,
    /// To be tried again at this time (ms).
    RetryAt(i64),
}

impl Sessions {
    /// Revokes along the graph by the rules in `rules`. An unknown refresh
    /// token or session id is `NotFound` (a typo must not look like success).
    /// `reason`: what the sockets of the web sessions it ends are told.
    pub async fn revoke(&self, what: &Revoke, reason: &str) -> Result<Revoked, SessionError> {
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
                        let mut revoked = Revoked::because(reason);
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
                        let mut revoked = Revoked::because(reason);
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
                        let mut revoked = Revoked::because(reason);
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
                let mut all = Revoked::because(reason);
                for iss in issuers {
                    all.append(self.revoke_user(&UserTag::of(iss, sub), reason).await?);
                }
                Ok(all)
            }
        }
    }

    async fn revoke_user(&self, tag: &UserTag, reason: &str) -> Result<Revoked, StoreError> {
        self.mutate(tag, None, |g, now| {
            let mut revoked = Revoked::because(reason);
            let natives: Vec<String> = g.natives.iter().map(|n| n.id.clone()).collect();
            for id in natives {
                g.revoke_native(&id, &self.clients, &mut revoked, now);
            }
            let reason = revoked.reason.clone();
            revoked.append(g.end_webs_where(|_| true, &self.clients, now, Some(&reason)));
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
                g.end_webs_where(|w| only.is_none_or(|s| w.id == s), &self.clients, now, None)
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
            let (revoked, live) = self
                .mutate(&UserTag(tag.clone()), None, |g, now| {
                    let r = g.end_webs_where(
                        |w| w.id == web && w.deadline() <= now,
                        &self.clients,
                        now,
                        Some("session_expired"),
                    );
                    (r, g.web(&web).is_some_and(|w| w.alive(now)))
                })
                .await?;
            if revoked.web_sessions.is_empty() && !live {
                // Indexed, but gone or ended already: a stale entry.
                self.store.forget(&tag, Some(&web)).await?;
            }
            ended.extend(revoked.web_sessions);
        }
        Ok(ended)
    }

    /// The notices of `user` due now, taken for delivery: each is pushed
    /// back by the lease, so no other node takes it meanwhile, and counted
    /// as an attempt. A user with none due has its stale index entry dropped.
    pub async fn claim_notices(&self, user: &str) -> Result<Vec<Notice>, StoreError> {
        let tag = UserTag(user.to_string());
        let claimed = self
            .mutate(&tag, None, |g, now| {
                let mut taken = Vec::new();
                for n in g.outbox.iter_mut().filter(|n| n.due_ms <= now) {
                    n.due_ms = now + self.clients.notice_lease_ms();
                    n.attempts += 1;
                    taken.push(n.clone());
                }
                taken
            })
            .await?;
        if claimed.is_empty() {
            self.store.forget(user, None).await?;
        }
        Ok(claimed)
    }

    /// The notices a just-ended session left, for the node that ended it to
    /// deliver at once (they are not due for anyone else yet).
    pub async fn notices_of(&self, ended: &Ended) -> Result<Vec<Notice>, StoreError> {
        let Some(v) = self.store.load(&ended.user).await? else {
            return Ok(Vec::new());
        };
        let g: UserGraph = serde_json::from_str(&v.data)
            .map_err(|e| StoreError::Corrupt(format!("session graph {}: {e}", ended.user)))?;
        Ok(g.outbox
            .into_iter()
            .filter(|n| n.sid == ended.sid)
            .collect())
    }

    /// Records what became of delivered notices.
    pub async fn settle_notices(
        &self,
        user: &str,
        outcomes: &[(Notice, Settled)],
    ) -> Result<(), StoreError> {
        if outcomes.is_empty() {
            return Ok(());
        }
        let same = |a: &Notice, b: &Notice| a.sid == b.sid && a.kind == b.kind;
        self.mutate(&UserTag(user.to_string()), None, |g, _| {
            for (notice, settled) in outcomes {
                match settled {
                    Settled::Done => g.outbox.retain(|n| !same(n, notice)),
                    Settled::RetryAt(at) => {
                        for n in g.outbox.iter_mut().filter(|n| same(n, notice)) {
                            n.due_ms = *at;
                            n.attempts = notice.attempts;
                        }
                    }
                }
            }
        })
        .await
    }

    /// Users with notices due now (for the outbox worker).
    pub async fn notices_due(&self) -> Result<Vec<String>, StoreError> {
        self.store.notices_due(util::now_ms()).await
    }
}

/// What a notice asks for, for logs and metrics.
pub fn label(n: &Notice) -> &'static str {
    match n.kind {
        NoticeKind::Push { .. } => "push",
        NoticeKind::Backchannel { .. } => "backchannel",
    }
}
