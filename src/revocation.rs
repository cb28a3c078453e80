//! Revocation: a logout becomes a watermark, then a push to every matching
//! socket, then a durable record that every node hears of.
//!
//! [`Revocation::logout`] is the core of the one logout path (`logout`
//! runs it and what follows it). Its order is the correctness argument
//! against the connect race:
//!
//! 1. record the watermark, then 2. publish to the registry.
//!
//! A connecting socket does the mirror image (`ws::socket`): it registers,
//! then checks the watermark. Both sides go through locks on the same maps,
//! so whichever runs second sees the other: either the publish finds the
//! socket, or the socket finds the watermark. Across nodes the same holds
//! with Redis in the middle: a logout is written to Redis before it is
//! announced, and a socket registers before it reads Redis.
//!
//! With several nodes, memory holds only the recent watermarks (what this
//! node recorded or heard); [`Revocation::revoked_token`] reads Redis for
//! the rest, so a node needs no memory for watermarks it is never asked
//! about, and one cut off from Redis refuses new logins rather than
//! guessing.
//!
//! Must not: authenticate callers (the HTTP layer did) or write to sockets
//! (the registry does).

use std::sync::Arc;
use std::time::{Duration, Instant};

use dashmap::DashMap;

use crate::auth::IssuerId;
use crate::metrics::Metrics;
use crate::registry::{Delivery, Registry, SessionKey, Target, UserKey};
use crate::store::{
    Broker, Durable, Kind, LogoutEvent, Record, Scope, StoreError, StoredEvent, Watermarks,
    watermark_key,
};
use crate::util;
use crate::ws::conn::LogoutFrame;
use crate::ws::{codec, protocol};

mod acks;
use acks::Acks;
pub use acks::{AckCounter, AckWait};

/// How long a node keeps watermarks in memory when memory is only a cache
/// of Redis (positives only: a miss is always read through).
const CACHE_MS: i64 = 10 * 60_000;
/// How long acks of another node's logout are reported at most.
const MAX_ACK_WAIT_MS: i64 = 60_000;

/// A logout to carry out.
#[derive(Debug, Clone)]
pub struct LogoutOrder {
    pub target: Target,
    /// Shown in the pushed message; for a session logout the sub may be unknown.
    pub sub: Option<Arc<str>>,
    pub reason: String,
    /// Metrics label: who asked (`user`, `api_key`, ...).
    pub source: &'static str,
    /// Who, for the audit trail.
    pub caller: crate::audit::Caller,
    /// Wait this long for acknowledgements before answering.
    pub wait_for_acks: Option<Duration>,
}

/// What the trigger's caller learns.
#[derive(Debug, Clone)]
pub struct LogoutOutcome {
    pub event_id: String,
    pub delivery: Delivery,
    pub acked: Option<usize>,
}

/// A logout just carried out, and (if asked) its acknowledgements to wait
/// for. Dropping it stops counting them: nothing is left behind.
pub struct Done {
    pub event_id: String,
    pub delivery: Delivery,
    pub acks: Option<AckWait>,
}

pub struct Revocation {
    watermarks: Watermarks,
    registry: Arc<Registry>,
    metrics: Arc<Metrics>,
    /// Acks being counted for triggers that asked to wait; absent otherwise.
    waiting: Acks,
    /// How long a watermark is kept: the longest token lifetime accepted.
    ttl_ms: i64,
    /// Where logouts are made durable (shared with the session graph).
    durable: Arc<dyn Durable>,
    /// Tells the other nodes, when there are any.
    broker: Option<Arc<dyn Broker>>,
    /// Issuer names by `IssuerId`: records carry names, not positions.
    issuer_names: Vec<String>,
    /// How far each issuer's clock may run ahead (its leeway; 0 for the
    /// hub's own issuers), by `IssuerId`: see `LogoutEvent::revokes_iat`.
    leeways: Vec<i64>,
    /// Identifiers used once, by namespace (an issuer's name for logout
    /// tokens and events, `client:{id}` for client assertions), with when
    /// they may be forgotten (ms).
    jtis: DashMap<(Box<str>, Box<str>), i64>,
    /// Logouts another node took and waits for the acks of: ours are
    /// reported to it (until the time, ms).
    remote_waits: DashMap<String, i64>,
}

/// What a logout heard from another node did here.
pub struct Applied {
    pub target: Target,
    pub event_id: String,
    pub delivery: Delivery,
}

impl Revocation {
    pub fn new(
        registry: Arc<Registry>,
        metrics: Arc<Metrics>,
        ttl_secs: u64,
        durable: Arc<dyn Durable>,
        broker: Option<Arc<dyn Broker>>,
        issuer_names: Vec<String>,
        leeways: Vec<i64>,
    ) -> Revocation {
        Revocation {
            watermarks: Watermarks::default(),
            registry,
            metrics,
            waiting: Acks::default(),
            ttl_ms: ttl_secs as i64 * 1000,
            durable,
            broker,
            issuer_names,
            leeways,
            jtis: DashMap::new(),
            remote_waits: DashMap::new(),
        }
    }

    /// Loads watermarks and used identifiers read from the journal at
    /// start. Those of issuers no longer configured, or older than the
    /// longest token lifetime, are skipped. Returns how many were restored.
    pub fn restore(&self, stored: &[Record]) -> usize {
        let mut restored = 0;
        for r in stored.iter().filter(|r| r.kind == Kind::LogoutJti) {
            let Some((namespace, jti)) = r.key.split_once('\u{1f}') else {
                continue;
            };
            self.jtis
                .insert((namespace.into(), jti.into()), r.expires_at_ms);
            restored += 1;
        }
        for s in stored.iter().filter_map(Record::as_watermark) {
            if let Some((target, event)) = self.event_of_stored(s) {
                self.watermarks.record(&target, Arc::new(event));
                restored += 1;
            }
        }
        restored
    }

    /// A logout another node carried out: remember it and tell our sockets.
    /// Returns what it addressed and reached, for what this node must do
    /// beside (and report).
    pub fn apply_remote(&self, stored: StoredEvent) -> Option<Applied> {
        let report_acks = stored.report_acks;
        let (target, event) = self.event_of_stored(stored)?;
        let event = Arc::new(event);
        if report_acks {
            let until = util::now_ms() + MAX_ACK_WAIT_MS;
            self.remote_waits.insert(event.id.clone(), until);
        }
        self.watermarks.record(&target, event.clone());
        let frame = Arc::new(logout_frame(&event));
        let delivery = self.registry.publish(&target, &frame);
        self.metrics
            .messages_delivered
            .inc_by(delivery.delivered as u64);
        self.metrics.logout_event("cluster");
        Some(Applied {
            target,
            event_id: event.id.clone(),
            delivery,
        })
    }

    /// The event a stored watermark stands for, unless its issuer is no
    /// longer configured or it is older than any token still valid.
    fn event_of_stored(&self, s: StoredEvent) -> Option<(Target, LogoutEvent)> {
        if util::now_ms() - s.at_ms >= self.ttl_ms {
            return None;
        }
        let iss = self.issuer_id(&s.iss)?;
        let (target, scope) = match s.scope.as_str() {
            "session" => (
                Target::Session(SessionKey {
                    iss,
                    sid: s.key.as_str().into(),
                }),
                Scope::Session,
            ),
            _ => (
                Target::User(UserKey {
                    iss,
                    sub: s.key.as_str().into(),
                }),
                Scope::User,
            ),
        };
        let event = LogoutEvent {
            id: s.id,
            scope,
            sub: s.sub.map(Into::into),
            sid: s.sid.map(Into::into),
            reason: s.reason,
            at_ms: s.at_ms,
        };
        Some((target, event))
    }

    /// Claims an identifier that may be used once (a logout token's or a
    /// client assertion's `jti`): true the first time, false for a replay.
    /// Durable like the logouts themselves; across nodes, Redis decides who
    /// is first.
    pub async fn claim_once(
        &self,
        namespace: &str,
        jti: &str,
        expires_at_ms: i64,
    ) -> Result<bool, StoreError> {
        let key = (Box::<str>::from(namespace), Box::<str>::from(jti));
        match self.jtis.entry(key.clone()) {
            dashmap::mapref::entry::Entry::Occupied(_) => return Ok(false),
            dashmap::mapref::entry::Entry::Vacant(v) => {
                v.insert(expires_at_ms);
            }
        }
        let record = Record::used_once(namespace, jti, expires_at_ms);
        let result = self.durable.write_once(record).await;
        if result.is_err() {
            // Not recorded: a retry must not be mistaken for a replay of a
            // logout that was never carried out. (`Ok(false)`: another node
            // was first; the entry stays, as for any replay.)
            self.jtis.remove(&key);
        }
        result
    }

    /// Forgets a claim whose logout failed, so the sender's retry is not
    /// mistaken for a replay.
    pub fn release(&self, namespace: &str, jti: &str) {
        self.jtis
            .remove(&(Box::<str>::from(namespace), Box::<str>::from(jti)));
    }

    fn issuer_id(&self, name: &str) -> Option<IssuerId> {
        let pos = self.issuer_names.iter().position(|n| n == name)?;
        Some(IssuerId(pos as u16))
    }

    fn leeway(&self, id: IssuerId) -> i64 {
        self.leeways.get(id.0 as usize).copied().unwrap_or(0)
    }

    pub fn issuer_name(&self, id: IssuerId) -> &str {
        self.issuer_names
            .get(id.0 as usize)
            .map_or("", String::as_str)
    }

    /// Finishes pending writes and releases the store.
    pub fn close_store(&self) {
        self.durable.close();
    }

    /// The core of a logout: the watermark in memory, the push to every
    /// socket of this node, then (awaited) the durable record and its
    /// announcement to the other nodes. An error means this node's sockets
    /// were told but the logout would not survive a restart or reach every
    /// node; the caller must not answer success.
    pub async fn logout(&self, order: LogoutOrder) -> Result<Done, StoreError> {
        let started = Instant::now();
        let (scope, sid) = match &order.target {
            Target::User(_) => (Scope::User, None),
            Target::Session(k) => (Scope::Session, Some(k.sid.clone())),
        };
        let sub = match &order.target {
            Target::User(k) => Some(k.sub.clone()),
            Target::Session(_) => order.sub.clone(),
        };
        let event = Arc::new(LogoutEvent {
            id: util::unique_id(),
            scope,
            sub,
            sid,
            reason: order.reason,
            at_ms: util::now_ms(),
        });
        self.watermarks.record(&order.target, event.clone());
        let frame = Arc::new(logout_frame(&event));
        let mut acks = order
            .wait_for_acks
            .map(|wait| self.waiting.start(&event.id, wait));
        let delivery = self.registry.publish(&order.target, &frame);
        self.metrics.fanout(started.elapsed().as_secs_f64());
        self.metrics
            .messages_delivered
            .inc_by(delivery.delivered as u64);
        self.metrics.logout_event(order.source);
        let mut stored = self.stored(&order.target, &event);
        stored.report_acks = acks.is_some();
        let started = Instant::now();
        let mut result = self
            .durable
            .write(Record::watermark(&stored, self.ttl_ms))
            .await;
        if let (Ok(()), Some(broker)) = (&result, &self.broker) {
            result = broker.publish(&stored).await;
        }
        self.metrics
            .store_commit_latency
            .observe(started.elapsed().as_secs_f64());
        if let Err(e) = result {
            self.metrics.store_errors.inc();
            return Err(e);
        }
        if let Some(a) = &mut acks {
            a.expected = delivery.delivered;
        }
        Ok(Done {
            event_id: event.id.clone(),
            delivery,
            acks,
        })
    }

    fn stored(&self, target: &Target, e: &LogoutEvent) -> StoredEvent {
        let (iss, key) = match target {
            Target::User(k) => (k.iss, k.sub.to_string()),
            Target::Session(k) => (k.iss, k.sid.to_string()),
        };
        StoredEvent {
            iss: self.issuer_name(iss).to_string(),
            scope: e.scope.as_str().to_string(),
            key,
            id: e.id.clone(),
            sub: e.sub.as_deref().map(str::to_string),
            sid: e.sid.as_deref().map(str::to_string),
            reason: e.reason.clone(),
            at_ms: e.at_ms,
            report_acks: false,
        }
    }

    /// The latest logouts of this user and session: memory, then (when
    /// memory is only a cache) the store for what memory does not settle.
    async fn latest(
        &self,
        iat: i64,
        user: &UserKey,
        session: Option<&SessionKey>,
    ) -> Result<Option<Arc<LogoutEvent>>, StoreError> {
        let leeway = self.leeway(user.iss);
        let revokes = |e: &Arc<LogoutEvent>| e.revokes_iat(iat, leeway);
        let mut by_user = self.watermarks.user(user).filter(revokes);
        let mut by_session = session
            .and_then(|k| self.watermarks.session(k))
            .filter(revokes);
        if !self.durable.loaded_at_start() && by_user.is_none() && by_session.is_none() {
            // Only a positive settles it here: a newer logout than the one
            // cached may be in the store already.
            let iss = self.issuer_name(user.iss);
            let mut keys = vec![watermark_key(false, iss, &user.sub)];
            if let Some(s) = session {
                keys.push(watermark_key(true, iss, &s.sid));
            }
            let found = self.durable.read(Kind::Watermark, &keys).await?;
            for r in found.into_iter().flatten() {
                let Some((target, event)) = r.as_watermark().and_then(|s| self.event_of_stored(s))
                else {
                    continue;
                };
                let event = Arc::new(event);
                self.watermarks.record(&target, event.clone());
                if revokes(&event) {
                    match target {
                        Target::User(_) => by_user = Some(event),
                        Target::Session(_) => by_session = Some(event),
                    }
                }
            }
        }
        Ok(match (by_user, by_session) {
            (Some(a), Some(b)) => Some(if a.at_ms >= b.at_ms { a } else { b }),
            (a, b) => a.or(b),
        })
    }

    /// The logout that revokes a token issued at `iat` for this user and
    /// session, if any, as the frame to push. Call after registering the
    /// socket. An error: the store cannot say (fail closed).
    pub async fn revoked_token(
        &self,
        iat: i64,
        user: &UserKey,
        session: Option<&SessionKey>,
    ) -> Result<Option<Arc<LogoutFrame>>, StoreError> {
        let latest = self.latest(iat, user, session).await?;
        Ok(latest.map(|e| {
            self.metrics.logout_event("watermark");
            Arc::new(logout_frame(&e))
        }))
    }

    /// The logout frame for a hub web session the graph knows as ended
    /// (its token is presented again): reason `session_ended`.
    pub fn session_ended_frame(&self, sub: &str, sid: &str) -> Arc<LogoutFrame> {
        self.metrics.logout_event("graph");
        Arc::new(logout_frame(&LogoutEvent {
            id: util::unique_id(),
            scope: Scope::Session,
            sub: Some(sub.into()),
            sid: Some(sid.into()),
            reason: "session_ended".into(),
            at_ms: util::now_ms(),
        }))
    }

    /// The `iat` for a token the hub mints now for this user (and session),
    /// waiting for the next second when a logout happened in this one (`iat`
    /// has one-second resolution, and a same-second logout would revoke it).
    pub async fn valid_iat_now(
        &self,
        user: &UserKey,
        session: Option<&SessionKey>,
    ) -> Result<u64, StoreError> {
        let now = util::now_secs();
        let iat = match self.latest(now as i64, user, session).await? {
            Some(e) => (e.at_ms.div_euclid(1000) + self.leeway(user.iss)) as u64 + 1,
            None => now,
        };
        if iat > now {
            let wait_ms = (iat as i64 * 1000 - util::now_ms()).max(0) as u64;
            tokio::time::sleep(Duration::from_millis(wait_ms)).await;
        }
        Ok(iat.max(now))
    }

    /// Counts a client's acknowledgement of the logout it was sent; one of
    /// a logout another node waits on is reported to it.
    pub fn acked(&self, event_id: &str) {
        self.metrics.messages_acked.inc();
        if !self.waiting.count(event_id)
            && let (Some(broker), true) = (&self.broker, self.remote_waits.contains_key(event_id))
        {
            let (broker, id) = (broker.clone(), event_id.to_string());
            tokio::spawn(async move {
                if let Err(e) = broker.report_ack(&id).await {
                    tracing::debug!(error = %e, "an ack was not reported to its node");
                }
            });
        }
    }

    /// Logouts whose acknowledgements are being counted (tests, metrics).
    pub fn acks_waiting(&self) -> usize {
        self.waiting.len()
    }

    /// Forgets watermarks older than the longest token lifetime (or, when
    /// memory is only a cache, than the cache window), in memory and in
    /// the store.
    pub async fn expire(&self) -> usize {
        let now = util::now_ms();
        let keep = if self.durable.loaded_at_start() {
            self.ttl_ms
        } else {
            self.ttl_ms.min(CACHE_MS)
        };
        let n = self.watermarks.expire(now, keep);
        self.jtis.retain(|_, exp| *exp > now);
        self.remote_waits.retain(|_, until| *until > now);
        if let Err(e) = self.durable.expire(now).await {
            tracing::warn!(error = %e, "store: expiring old records failed; retrying later");
        }
        n
    }

    pub fn watermark_count(&self) -> usize {
        self.watermarks.len()
    }
}

fn logout_frame(e: &LogoutEvent) -> LogoutFrame {
    let msg = protocol::LogoutMessage {
        kind: "logout",
        id: &e.id,
        scope: e.scope.as_str(),
        sub: e.sub.as_deref(),
        sid: e.sid.as_deref(),
        reason: &e.reason,
        at: e.at_ms,
    };
    // Serializing a struct of strings and integers cannot fail.
    let json = serde_json::to_string(&msg).expect("logout message serializes");
    LogoutFrame {
        event_id: e.id.clone(),
        frame: codec::text_frame(&json),
    }
}
