//! The one logout service: every logout, whatever triggered it, goes
//! through [`App::logout`], in this order:
//!
//! 1. the watermark, in memory (`revocation`);
//! 2. the push to this node's sockets (`registry`);
//! 3. the durable record and its announcement to the other nodes
//!    (`store`: the journal, or Redis and its stream);
//! 4. what follows: the user's Pusher sockets, and the session graph (an
//!    upstream session or user ends the web sessions rooted there; a hub
//!    session's own logout ends it), whose ends leave notices — pushes,
//!    back-channel logout tokens — in the graph's outbox, delivered here at
//!    once and, should this node fail, by any node when they fall due.
//!
//! Steps 1–4 run in a task of their own: once a trigger is accepted, a
//! caller that goes away (its own timeout) cannot cut the sequence short.
//! The caller waits for the result, then for acknowledgements if it asked
//! (that wait is its own; dropping it leaves nothing behind).
//!
//! Other nodes apply what they hear ([`App::hear`]): steps 1, 2 and the
//! Pusher sockets, which are per node; the graph and the backends are told
//! once, by the node that took the trigger.
//!
//! Must not: authenticate (the endpoints do) or decide graph rules.

use std::sync::Arc;
use std::time::Duration;

/// How long a trigger's answer waits for the other nodes' reports.
const REPORT_WAIT: Duration = Duration::from_millis(250);

use crate::App;
use crate::auth::IssuerId;
use crate::notify::Attempt;
use crate::registry::{SessionKey, Target};
use crate::revocation::{Done, LogoutOrder, LogoutOutcome};
use crate::sessions::{Ended, Notice, NoticeKind, Revoke, Settled};
use crate::store::{Heard, NodeMessage, StoreError};
use crate::util;

impl App {
    /// Carries out a logout completely (see the module doc) and answers
    /// what it reached; with `wait_for_acks`, also how many acknowledged.
    /// Everything, the audit entry included, runs in a task of its own.
    pub async fn logout(self: &Arc<Self>, order: LogoutOrder) -> Result<LogoutOutcome, StoreError> {
        let app = self.clone();
        self.tasks
            .spawn(async move { app.logout_to_the_end(order).await })
            .await
            .map_err(|e| StoreError::backend("the logout task", e))?
    }

    async fn logout_to_the_end(
        self: Arc<Self>,
        order: LogoutOrder,
    ) -> Result<LogoutOutcome, StoreError> {
        let wait = order.wait_for_acks;
        let mut entry = self.audit_entry(&order);
        let (done, ended) = self.run_logout(order).await?;
        let mut delivery = done.delivery;
        let acked = match &self.broker {
            None => match done.acks {
                Some(w) => Some(w.acked().await),
                None => None,
            },
            // Several nodes: what the others reached counts as much as ours.
            Some(broker) => {
                let reported = self
                    .gather(
                        broker.as_ref(),
                        &done.event_id,
                        delivery.delivered,
                        wait,
                        done.acks,
                    )
                    .await;
                delivery.matched += reported.0.matched;
                delivery.delivered += reported.0.delivered;
                wait.map(|_| reported.1)
            }
        };
        entry.event_id = Some(done.event_id.clone());
        entry.outcome = serde_json::json!({
            "matched": delivery.matched,
            "delivered": delivery.delivered,
            "acked": acked,
            "web_sessions_ended": ended,
        });
        self.audit.record(entry).await;
        Ok(LogoutOutcome {
            event_id: done.event_id,
            delivery,
            acked,
        })
    }

    /// The audit entry of a logout, before it runs.
    fn audit_entry(&self, order: &LogoutOrder) -> crate::audit::Entry {
        let (iss, sub, sid) = match &order.target {
            Target::User(k) => (k.iss, Some(k.sub.to_string()), None),
            Target::Session(k) => (
                k.iss,
                order.sub.as_deref().map(str::to_string),
                Some(k.sid.to_string()),
            ),
        };
        let mut e = crate::audit::Entry::new(
            crate::audit::Action::Logout,
            order.source,
            order.caller.clone(),
            crate::audit::Subject {
                iss: Some(self.auth.issuer_name(iss).to_string()),
                sub,
                sid,
            },
        );
        e.reason = order.reason.clone();
        e
    }

    /// Waits for the other nodes' reports of a logout (bounded: a node that
    /// does not report in time is not counted), and, if asked, for the
    /// acknowledgements of every socket reached: (reports, acks in all).
    async fn gather(
        &self,
        broker: &dyn crate::store::Broker,
        event_id: &str,
        delivered_here: usize,
        wait: Option<Duration>,
        local_acks: Option<crate::revocation::AckWait>,
    ) -> (crate::store::Reported, usize) {
        let started = tokio::time::Instant::now();
        let others = broker.other_nodes().await.unwrap_or(0);
        let mut reported = crate::store::Reported::default();
        let report_deadline = started + REPORT_WAIT;
        let ack_deadline = started + wait.unwrap_or_default();
        let local = local_acks.map(|w| w.counter());
        loop {
            if let Ok(r) = broker.reported(event_id).await {
                reported = r;
            }
            let now = tokio::time::Instant::now();
            let all_reported = reported.nodes >= others;
            let acked = local.as_ref().map_or(0, |c| c.get()) + reported.acked;
            let expected = delivered_here + reported.delivered;
            let acks_done = wait.is_none() || acked >= expected || now >= ack_deadline;
            if (all_reported || now >= report_deadline) && acks_done {
                return (reported, acked);
            }
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    }

    /// [`App::logout`] for a token with a `jti` (a back-channel logout
    /// token, a security event), once: `Ok(false)` for a replay, which
    /// changes nothing. A logout that fails releases the `jti`, so the
    /// sender's retry is not mistaken for a replay.
    pub async fn logout_once(
        self: &Arc<Self>,
        iss: IssuerId,
        jti: &str,
        expires_at_ms: i64,
        order: LogoutOrder,
    ) -> Result<bool, StoreError> {
        let namespace = self.revocation.issuer_name(iss).to_string();
        if !self
            .revocation
            .claim_once(&namespace, jti, expires_at_ms)
            .await?
        {
            self.metrics.logout_event("replay");
            return Ok(false);
        }
        match self.logout(order).await {
            Ok(_) => Ok(true),
            Err(e) => {
                self.revocation.release(&namespace, jti);
                Err(e)
            }
        }
    }

    /// Steps 1–4; also how many web sessions the graph ended.
    async fn run_logout(self: &Arc<Self>, order: LogoutOrder) -> Result<(Done, usize), StoreError> {
        let target = order.target.clone();
        let reason = order.reason.clone();
        let done = self.revocation.logout(order).await?;
        self.bridge_to_pusher(&target, &reason);
        let ended = self.follow_in_graph(&target).await?;
        Ok((done, ended))
    }

    /// A user's logout also reaches their signed-in Pusher sockets (apps
    /// whose `logout_issuer` is the user's issuer), on every node.
    fn bridge_to_pusher(&self, target: &Target, reason: &str) {
        if let Target::User(k) = target {
            let iss = self.auth.issuer_name(k.iss);
            self.pusher.user_logged_out(iss, &k.sub, reason);
        }
    }

    /// The session graph follows a logout, once (on this node): a hub web
    /// session's (or hub subject's) own logout ends those web sessions
    /// (already pushed); an upstream session or user revokes the native
    /// sessions rooted there and, by the cascade rule, their web sessions.
    async fn follow_in_graph(self: &Arc<Self>, target: &Target) -> Result<usize, StoreError> {
        let iss = match target {
            Target::User(k) => k.iss,
            Target::Session(k) => k.iss,
        };
        let ended = if iss == self.hub_issuers.session_id {
            let (sid, sub) = match target {
                Target::Session(k) => (Some(&*k.sid), None),
                Target::User(k) => (None, Some(&*k.sub)),
            };
            self.sessions.logged_out(sid, sub).await?
        } else {
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
            match self.sessions.revoke(&what, "cascade").await {
                Ok(r) => r.web_sessions,
                Err(crate::sessions::SessionError::Store(s)) => return Err(s),
                // Nothing of this user or session is in the graph.
                Err(_) => Vec::new(),
            }
        };
        self.deliver(&ended).await?;
        Ok(ended.len())
    }

    /// Delivers at once what the end of these web sessions left in the
    /// graph's outbox: their pushes (awaited: a trigger answers 2xx only
    /// once they are recorded) and their back-channel notices (in tasks of
    /// their own: a slow backend holds up no answer). What cannot be done
    /// now stays in the outbox for the worker.
    pub async fn deliver(self: &Arc<Self>, ended: &[Ended]) -> Result<(), StoreError> {
        let mut first_error = None;
        for e in ended {
            let notices = match self.sessions.notices_of(e).await {
                Ok(n) => n,
                Err(err) => {
                    first_error.get_or_insert(err);
                    continue;
                }
            };
            let (pushes, backchannel): (Vec<Notice>, Vec<Notice>) = notices
                .into_iter()
                .partition(|n| matches!(n.kind, NoticeKind::Push { .. }));
            let mut settled = Vec::new();
            for n in pushes {
                match self.push(&n).await {
                    Ok(()) => settled.push((n, Settled::Done)),
                    Err(err) => {
                        first_error.get_or_insert(err);
                    }
                }
            }
            if let Err(err) = self.sessions.settle_notices(&e.user, &settled).await {
                first_error.get_or_insert(err);
            }
            if !backchannel.is_empty() {
                let app = self.clone();
                let user = e.user.clone();
                self.tasks.spawn(async move {
                    let settled = app.tell_backends(backchannel).await;
                    if let Err(err) = app.sessions.settle_notices(&user, &settled).await {
                        tracing::warn!(error = %err, "back-channel outcomes not recorded; they will be retried");
                    }
                });
            }
        }
        first_error.map_or(Ok(()), Err)
    }

    /// A web session's logout, pushed to its sockets on every node.
    async fn push(&self, n: &Notice) -> Result<(), StoreError> {
        let NoticeKind::Push { reason } = &n.kind else {
            return Ok(());
        };
        self.revocation
            .logout(LogoutOrder {
                target: Target::Session(SessionKey {
                    iss: self.hub_issuers.session_id,
                    sid: n.sid.as_str().into(),
                }),
                sub: Some(n.sub.as_str().into()),
                reason: reason.clone(),
                source: "revocation",
                caller: crate::audit::Caller::Hub,
                wait_for_acks: None,
            })
            .await
            .map(drop)
    }

    /// One attempt per back-channel notice; what became of each.
    async fn tell_backends(&self, notices: Vec<Notice>) -> Vec<(Notice, Settled)> {
        let mut out = Vec::with_capacity(notices.len());
        for mut n in notices {
            let NoticeKind::Backchannel { client } = &n.kind else {
                continue;
            };
            let attempt = self.notifier.attempt(client, &n.sid, &n.sub).await;
            // A claim counted this attempt; the first, at once, counts here.
            n.attempts = n.attempts.max(1);
            let settled = match attempt {
                Attempt::Delivered | Attempt::Refused(_) | Attempt::Unknown => Settled::Done,
                Attempt::Retry(_) if n.attempts >= self.notifier.max_attempts() => {
                    self.notifier.gave_up(client, n.attempts);
                    Settled::Done
                }
                Attempt::Retry(_) => {
                    self.notifier.will_retry();
                    let wait = self.notifier.backoff(n.attempts);
                    Settled::RetryAt(util::now_ms() + wait.as_millis() as i64)
                }
            };
            out.push((n, settled));
        }
        out
    }

    /// What another node carried out: its logouts reach this node's sockets
    /// (and Pusher sockets); a gap the broker cannot fill sends every
    /// socket of this node to reconnect.
    pub fn hear(&self, heard: Heard) {
        match heard {
            Heard::Node(NodeMessage::Connections { query, users }) => {
                self.answer_connections(query, users)
            }
            Heard::Node(message) => self.pusher.heard(message),
            Heard::Logout(event) => {
                let reason = event.reason.clone();
                let Some(applied) = self.revocation.apply_remote(event) else {
                    return;
                };
                self.bridge_to_pusher(&applied.target, &reason);
                if let Some(broker) = self.broker.clone() {
                    self.tasks.spawn(async move {
                        let d = applied.delivery;
                        if let Err(e) = broker
                            .report_delivery(&applied.event_id, d.matched, d.delivered)
                            .await
                        {
                            tracing::debug!(error = %e, "a delivery was not reported to its node");
                        }
                    });
                }
            }
            Heard::Missed => crate::ws::close_all_for_restart(self),
        }
    }
}

/// The outbox worker: delivers notices that fell due (their node did not
/// settle them in time: it failed, or a backend asked to be retried), on
/// whichever node gets to them first; each is claimed by a
/// compare-and-set, so no two nodes take it at once.
pub async fn outbox(app: Arc<App>) {
    loop {
        tokio::select! {
            _ = app.shutdown.cancelled() => return,
            _ = tokio::time::sleep(Duration::from_secs(1)) => {}
        }
        let users = match app.sessions.notices_due().await {
            Ok(u) => u,
            Err(e) => {
                tracing::debug!(error = %e, "outbox: cannot list due notices");
                continue;
            }
        };
        for user in users.into_iter().take(app.config.notify.queue_size) {
            if app.shutdown.is_cancelled() {
                return;
            }
            let notices = match app.sessions.claim_notices(&user).await {
                Ok(n) => n,
                Err(e) => {
                    tracing::debug!(error = %e, "outbox: claim failed");
                    continue;
                }
            };
            let (pushes, backchannel): (Vec<Notice>, Vec<Notice>) = notices
                .into_iter()
                .partition(|n| matches!(n.kind, NoticeKind::Push { .. }));
            let mut settled = Vec::new();
            for n in pushes {
                if app.push(&n).await.is_ok() {
                    settled.push((n, Settled::Done));
                }
            }
            settled.extend(app.tell_backends(backchannel).await);
            if let Err(e) = app.sessions.settle_notices(&user, &settled).await {
                tracing::warn!(error = %e, "outbox: outcomes not recorded; they will be retried");
            }
        }
    }
}
