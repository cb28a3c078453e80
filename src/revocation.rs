//! Revocation: a logout becomes a watermark, then a push to every matching socket.
//!
//! [`Revocation::logout`] is the one path every trigger takes (user tokens,
//! API keys, and later back-channel logout and the session graph). Its order
//! is the correctness argument against the connect race:
//!
//! 1. record the watermark, then 2. publish to the registry.
//!
//! A connecting socket does the mirror image (`ws::socket`): it registers,
//! then checks the watermark. Both sides go through locks on the same maps,
//! so whichever runs second sees the other: either the publish finds the
//! socket, or the socket finds the watermark. No interleaving leaves a socket
//! with a revoked token live.
//!
//! Must not: authenticate callers (the HTTP layer did) or write to sockets
//! (the registry does).

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use dashmap::DashMap;
use tokio::sync::Notify;

use crate::auth::IssuerId;
use crate::metrics::Metrics;
use crate::registry::{Delivery, Registry, SessionKey, Target, UserKey};
use crate::store::embedded::{Journal, StoredEvent};
use crate::store::{Kind, LogoutEvent, Record, Scope, StoreError, Watermarks};
use crate::util;
use crate::ws::conn::LogoutFrame;
use crate::ws::{codec, protocol};

/// A logout to carry out.
#[derive(Debug, Clone)]
pub struct LogoutOrder {
    pub target: Target,
    /// Shown in the pushed message; for a session logout the sub may be unknown.
    pub sub: Option<Arc<str>>,
    pub reason: String,
    /// Metrics label: who asked (`user`, `api_key`, ...).
    pub source: &'static str,
    /// Wait this long for acknowledgements before answering.
    pub wait_for_acks: Option<Duration>,
}

/// Where logouts are recorded beyond this process.
pub enum Durable {
    /// `store = "memory"`: nowhere.
    Nothing,
    /// The embedded journal in the data directory.
    Journal(Journal),
    /// Redis, shared with the other nodes (which it also tells).
    Cluster(Arc<crate::cluster::Cluster>),
}

impl Durable {
    /// Records `record` (before a trigger may be answered).
    pub async fn put(&self, record: Record) -> Result<(), StoreError> {
        match self {
            Durable::Nothing => Ok(()),
            Durable::Journal(j) => j.put(record).await,
            Durable::Cluster(c) => c.put(&record).await,
        }
    }

    /// Records `record` unless its key exists: whether this call was first.
    /// A single node decides that in memory beforehand; across nodes Redis
    /// decides.
    async fn put_once(&self, record: Record) -> Result<bool, StoreError> {
        match self {
            Durable::Cluster(c) => c.put_once(&record).await,
            local => local.put(record).await.map(|()| true),
        }
    }
}

/// What the trigger's caller learns.
#[derive(Debug, Clone)]
pub struct LogoutOutcome {
    pub event_id: String,
    pub delivery: Delivery,
    pub acked: Option<usize>,
}

pub struct Revocation {
    watermarks: Watermarks,
    registry: Arc<Registry>,
    metrics: Arc<Metrics>,
    /// Acks being counted for triggers that asked to wait; absent otherwise.
    waiting: DashMap<String, Arc<AckCount>>,
    /// How long a watermark is kept: the longest token lifetime accepted.
    ttl_ms: i64,
    /// Where watermarks are made durable (shared with the session graph).
    durable: Arc<Durable>,
    /// Issuer names by `IssuerId`: the journal stores names, not positions.
    issuer_names: Vec<String>,
    /// How far each issuer's clock may run ahead (its leeway; 0 for the
    /// hub's own issuers), by `IssuerId`: see `LogoutEvent::revokes_iat`.
    leeways: Vec<i64>,
    /// Identifiers used once, by namespace (an issuer's name for logout
    /// tokens and events, `client:{id}` for client assertions), with when
    /// they may be forgotten (ms).
    jtis: DashMap<(Box<str>, Box<str>), i64>,
}

#[derive(Default)]
struct AckCount {
    acked: AtomicUsize,
    changed: Notify,
}

impl Revocation {
    pub fn new(
        registry: Arc<Registry>,
        metrics: Arc<Metrics>,
        ttl_secs: u64,
        durable: Arc<Durable>,
        issuer_names: Vec<String>,
        leeways: Vec<i64>,
    ) -> Revocation {
        Revocation {
            watermarks: Watermarks::default(),
            registry,
            metrics,
            waiting: DashMap::new(),
            ttl_ms: ttl_secs as i64 * 1000,
            durable,
            issuer_names,
            leeways,
            jtis: DashMap::new(),
        }
    }

    /// Loads watermarks read from the journal at start. Those of issuers no
    /// longer configured, or older than the longest token lifetime, are
    /// skipped. Returns how many were restored.
    pub fn restore(&self, stored: Vec<Record>) -> usize {
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
    pub fn apply_remote(&self, stored: StoredEvent) {
        let Some((target, event)) = self.event_of_stored(stored) else {
            return;
        };
        let event = Arc::new(event);
        self.watermarks.record(&target, event.clone());
        let frame = Arc::new(logout_frame(&event));
        let delivery = self.registry.publish(&target, &frame);
        self.metrics
            .messages_delivered
            .inc_by(delivery.delivered as u64);
        self.metrics.logout_event("cluster");
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
        let record = Record::logout_jti(namespace, jti, expires_at_ms);
        let result = self.durable.put_once(record).await;
        if result.is_err() {
            // Not recorded: a retry must not be mistaken for a replay of a
            // logout that was never carried out. (`Ok(false)`: another node
            // was first; the entry stays, as for any replay.)
            self.jtis.remove(&key);
        }
        result
    }

    fn issuer_id(&self, name: &str) -> Option<IssuerId> {
        let pos = self.issuer_names.iter().position(|n| n == name)?;
        Some(IssuerId(pos as u16))
    }

    fn leeway(&self, id: IssuerId) -> i64 {
        self.leeways.get(id.0 as usize).copied().unwrap_or(0)
    }

    fn issuer_name(&self, id: IssuerId) -> &str {
        self.issuer_names
            .get(id.0 as usize)
            .map_or("", String::as_str)
    }

    /// Carries out a logout announced by a token with this `jti` (a
    /// back-channel logout token, a security event), once: `Ok(false)` for a
    /// replay, which changes nothing. A logout that fails releases the `jti`
    /// so the sender's retry is not mistaken for a replay.
    pub async fn logout_once(
        &self,
        iss: IssuerId,
        jti: &str,
        expires_at_ms: i64,
        order: LogoutOrder,
    ) -> Result<bool, StoreError> {
        let namespace = self.issuer_name(iss).to_string();
        if !self.claim_once(&namespace, jti, expires_at_ms).await? {
            self.metrics.logout_event("replay");
            return Ok(false);
        }
        match self.logout(order).await {
            Ok(_) => Ok(true),
            Err(e) => {
                self.jtis
                    .remove(&(Box::<str>::from(namespace), Box::<str>::from(jti)));
                Err(e)
            }
        }
    }

    /// Finishes pending journal writes and releases the store's file.
    pub fn close_journal(&self) {
        if let Durable::Journal(j) = &*self.durable {
            j.close();
        }
    }

    /// Records and delivers a logout: the watermark in memory, then the
    /// push to every socket, then (awaited) the durable record. An error
    /// means the sockets were told but the logout would not survive a
    /// restart; the caller must not answer success.
    pub async fn logout(&self, order: LogoutOrder) -> Result<LogoutOutcome, StoreError> {
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
        let counter = order.wait_for_acks.map(|_| {
            let c = Arc::new(AckCount::default());
            self.waiting.insert(event.id.clone(), c.clone());
            c
        });
        let delivery = self.registry.publish(&order.target, &frame);
        self.metrics
            .fanout_latency
            .observe(started.elapsed().as_secs_f64());
        self.metrics
            .messages_delivered
            .inc_by(delivery.delivered as u64);
        self.metrics.logout_event(order.source);
        if !matches!(*self.durable, Durable::Nothing) {
            let record = Record::watermark(&self.stored(&order.target, &event), self.ttl_ms);
            let started = Instant::now();
            let result = self.durable.put(record).await;
            self.metrics
                .store_commit_latency
                .observe(started.elapsed().as_secs_f64());
            if let Err(e) = result {
                self.metrics.store_errors.inc();
                return Err(e);
            }
        }
        let acked = match (counter, order.wait_for_acks) {
            (Some(c), Some(wait)) => {
                let n = wait_for(&c, delivery.delivered, wait).await;
                self.waiting.remove(&event.id);
                Some(n)
            }
            _ => None,
        };
        Ok(LogoutOutcome {
            event_id: event.id.clone(),
            delivery,
            acked,
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
        }
    }

    /// The logout that revokes a token issued at `iat` for this user and
    /// session, if any, as the frame to push. Call after registering the socket.
    pub fn revoked_token(
        &self,
        iat: i64,
        user: &UserKey,
        session: Option<&SessionKey>,
    ) -> Option<Arc<LogoutFrame>> {
        let leeway = self.leeway(user.iss);
        let by_user = self
            .watermarks
            .user(user)
            .filter(|e| e.revokes_iat(iat, leeway));
        let by_session = session
            .and_then(|k| self.watermarks.session(k))
            .filter(|e| e.revokes_iat(iat, leeway));
        let latest = match (by_user, by_session) {
            (Some(a), Some(b)) => Some(if a.at_ms >= b.at_ms { a } else { b }),
            (a, b) => a.or(b),
        }?;
        self.metrics.logout_event("watermark");
        Some(Arc::new(logout_frame(&latest)))
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

    /// The earliest `iat` a new token for this user (and session) may carry
    /// so that no existing watermark revokes it (see `LogoutEvent::revokes_iat`).
    pub fn first_valid_iat(
        &self,
        user: &UserKey,
        session: Option<&SessionKey>,
        now_secs: u64,
    ) -> u64 {
        let latest = [
            self.watermarks.user(user),
            session.and_then(|k| self.watermarks.session(k)),
        ]
        .into_iter()
        .flatten()
        .map(|e| (e.at_ms.div_euclid(1000) + self.leeway(user.iss)) as u64 + 1)
        .max();
        latest.map_or(now_secs, |first| now_secs.max(first))
    }

    /// [`Revocation::first_valid_iat`] for a token minted now, waiting for
    /// the next second when a logout happened in this one (`iat` has
    /// one-second resolution, and a same-second logout would revoke it).
    pub async fn valid_iat_now(&self, user: &UserKey, session: Option<&SessionKey>) -> u64 {
        let now = util::now_secs();
        let iat = self.first_valid_iat(user, session, now);
        if iat > now {
            let wait_ms = (iat as i64 * 1000 - util::now_ms()).max(0) as u64;
            tokio::time::sleep(Duration::from_millis(wait_ms)).await;
        }
        iat
    }

    /// Counts a client's acknowledgement of the logout it was sent.
    pub fn acked(&self, event_id: &str) {
        self.metrics.messages_acked.inc();
        if let Some(c) = self.waiting.get(event_id) {
            c.acked.fetch_add(1, Ordering::AcqRel);
            c.changed.notify_waiters();
        }
    }

    /// Forgets watermarks older than the longest token lifetime, in memory
    /// and in the journal.
    pub async fn expire(&self) -> usize {
        let now = util::now_ms();
        let n = self.watermarks.expire(now, self.ttl_ms);
        self.jtis.retain(|_, exp| *exp > now);
        // Redis expires its keys itself (PX).
        if let Durable::Journal(j) = &*self.durable
            && let Err(e) = j.expire(now).await
        {
            tracing::warn!(error = %e, "store: expiring old watermarks failed; retrying later");
        }
        n
    }

    pub fn watermark_count(&self) -> usize {
        self.watermarks.len()
    }
}

async fn wait_for(c: &AckCount, expected: usize, wait: Duration) -> usize {
    let deadline = tokio::time::Instant::now() + wait;
    loop {
        // Register interest before reading, so an ack between the read and
        // the await still wakes us.
        let changed = c.changed.notified();
        let n = c.acked.load(Ordering::Acquire);
        if n >= expected {
            return n;
        }
        if tokio::time::timeout_at(deadline, changed).await.is_err() {
            return c.acked.load(Ordering::Acquire);
        }
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
