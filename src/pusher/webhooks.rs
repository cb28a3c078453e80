//! Pusher webhooks: what happened in an app's channels (occupied, vacated,
//! member added / removed, client events, cache misses, subscription
//! counts) POSTed to the app's webhook URLs as Pusher sends them:
//! `{"time_ms", "events": [...]}`, batched over a short window, signed
//! with `X-Pusher-Key` and `X-Pusher-Signature` (HMAC-SHA256 of the body
//! with the app secret, hex), retried with doubling backoff on network
//! errors, 429 and 5xx; each target gets its requests in order. Every
//! outcome is counted in `/metrics`.
//!
//! Each event is decided once per cluster where it happened (the presence
//! store's counts are atomic), so each node sends only its own events.
//!
//! On one node every request is kept in the journal from the moment it is
//! batched until it is delivered, refused or given up (or for a day), so a
//! restart or a crash sends what was pending, in order, on the next start.
//! On several nodes the queue is each node's memory.
//!
//! Must not: delay a socket or a trigger (a full queue drops the event and
//! counts it), follow redirects, or send an event type a target did not ask for.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use serde_json::{Value, json};
use tokio::sync::mpsc;

use super::protocol;
use crate::App;
use crate::config::WebhookSettings;
use crate::store::{Durable, Kind, Record};
use crate::util;

/// Events waiting to be batched, all apps together.
const QUEUE: usize = 10_000;
/// Events of one app that arrive within this window go in one request.
const BATCH_WINDOW: Duration = Duration::from_millis(250);
/// Events in one request at most.
const MAX_BATCH: usize = 100;
/// Attempts per request, the first included; then it is given up.
const ATTEMPTS: u32 = 6;
const FIRST_RETRY: Duration = Duration::from_millis(500);
/// Requests waiting for one target; past it a request is dropped (counted).
const TARGET_QUEUE: usize = 1_000;
const TIMEOUT: Duration = Duration::from_secs(10);
/// How long a kept request may wait for its target (then it is dropped).
const KEEP_MS: i64 = 24 * 3600 * 1000;

/// One event of one app (its index in `[[pusher_apps]]`).
type Queued = (usize, Value);

/// One request for one target: its journal key (when kept) and its body.
struct Request {
    key: Option<String>,
    body: String,
}

pub struct Webhooks {
    tx: mpsc::Sender<Queued>,
    rx: Mutex<Option<mpsc::Receiver<Queued>>>,
    /// Apps that have at least one webhook (by index).
    wanted: Vec<bool>,
    /// Where requests are kept until they are done (one node's journal).
    journal: Option<Arc<dyn Durable>>,
    /// Requests an earlier run left pending: (key, body), oldest first.
    restored: Mutex<Vec<(String, String)>>,
    /// The last request sequence (time-ordered, so keys sort across restarts).
    sequence: AtomicU64,
}

impl Webhooks {
    pub fn new(targets: impl Iterator<Item = bool>, journal: Option<Arc<dyn Durable>>) -> Webhooks {
        let (tx, rx) = mpsc::channel(QUEUE);
        Webhooks {
            tx,
            rx: Mutex::new(Some(rx)),
            wanted: targets.collect(),
            journal,
            restored: Mutex::default(),
            sequence: AtomicU64::new(0),
        }
    }

    /// Takes the requests an earlier run kept and did not finish.
    pub fn restore(&self, stored: &[Record]) -> usize {
        let mut pending: Vec<(String, String)> = stored
            .iter()
            .filter(|r| r.kind == Kind::PusherWebhook && !r.data.is_empty())
            .map(|r| (r.key.clone(), r.data.clone()))
            .collect();
        pending.sort();
        let n = pending.len();
        *self.restored.lock().unwrap_or_else(|e| e.into_inner()) = pending;
        n
    }

    fn next_key(&self, app_id: &str, target: usize) -> String {
        let now = util::now_ms().max(0) as u64 * 1000;
        let prev = self
            .sequence
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |s| {
                Some(now.max(s + 1))
            })
            .unwrap_or(0);
        format!("{app_id}\u{1f}{target}\u{1f}{:020}", now.max(prev + 1))
    }

    /// Keeps a request in the journal; its key, or None if it is not kept.
    async fn keep(&self, app_id: &str, target: usize, body: &str) -> Option<String> {
        let journal = self.journal.as_ref()?;
        let key = self.next_key(app_id, target);
        let record = Record {
            kind: Kind::PusherWebhook,
            key: key.clone(),
            version: 1,
            expires_at_ms: util::now_ms() + KEEP_MS,
            data: body.to_string(),
        };
        match journal.write(record).await {
            Ok(()) => Some(key),
            Err(e) => {
                tracing::warn!(error = %e, "pusher: a webhook request was not kept; it is sent from memory");
                None
            }
        }
    }

    /// Forgets a kept request (done: delivered, refused or given up).
    async fn forget(&self, key: String) {
        let Some(journal) = &self.journal else { return };
        let record = Record {
            kind: Kind::PusherWebhook,
            key,
            version: 2,
            // Expired at once: gone from the next start and the next sweep.
            expires_at_ms: util::now_ms(),
            data: String::new(),
        };
        if let Err(e) = journal.write(record).await {
            tracing::warn!(error = %e, "pusher: a sent webhook may be sent again after a restart");
        }
    }

    /// Whether `app` has webhooks (to skip building events nobody gets).
    pub fn wanted(&self, app: usize) -> bool {
        self.wanted.get(app).copied().unwrap_or(false)
    }

    /// Queues `event` (`{"name": …, "channel": …, …}`) for `app`'s webhooks;
    /// false (and nothing queued) if the queue is full.
    pub fn emit(&self, app: usize, event: Value) -> bool {
        if !self.wanted(app) {
            return true;
        }
        self.tx.try_send((app, event)).is_ok()
    }
}

/// The node's webhook sender, until shutdown (then what is kept waits for
/// the next start; what is only in memory is lost).
pub async fn run(app: Arc<App>) {
    let Some(mut rx) = app
        .pusher
        .webhooks()
        .rx
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .take()
    else {
        return;
    };
    if !app.pusher.apps().iter().any(|a| !a.webhooks.is_empty()) {
        return;
    }
    let http = match reqwest::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .timeout(TIMEOUT)
        .build()
    {
        Ok(h) => h,
        Err(e) => {
            tracing::error!(error = %e, "pusher: no HTTP client; webhooks are not sent");
            return;
        }
    };
    // One sender per target, so each receives its requests in order (a
    // retry holds back the requests behind it, as an ordered queue must).
    let targets: Vec<Vec<mpsc::Sender<Request>>> = app
        .pusher
        .apps()
        .iter()
        .map(|settings| {
            settings
                .webhooks
                .iter()
                .map(|target| {
                    let (tx, rx) = mpsc::channel(TARGET_QUEUE);
                    let (app, http, url, key) = (
                        app.clone(),
                        http.clone(),
                        target.url.clone(),
                        settings.key.clone(),
                    );
                    let secret = settings.secret.clone();
                    app.tasks.clone().spawn(async move {
                        send_in_order(&app, &http, &url, &key, &secret, rx).await;
                    });
                    tx
                })
                .collect()
        })
        .collect();
    requeue(&app, &targets).await;
    loop {
        let first = tokio::select! {
            _ = app.shutdown.cancelled() => return,
            e = rx.recv() => match e { Some(e) => e, None => return },
        };
        // Collect what arrives within the window, by app, in order.
        let mut batches: Vec<Vec<Value>> = vec![Vec::new(); targets.len()];
        batches[first.0].push(first.1);
        let until = tokio::time::Instant::now() + BATCH_WINDOW;
        loop {
            tokio::select! {
                _ = tokio::time::sleep_until(until) => break,
                e = rx.recv() => match e {
                    Some((i, ev)) => batches[i].push(ev),
                    None => break,
                },
            }
        }
        for (index, events) in batches.iter().enumerate() {
            let settings = &app.pusher.apps()[index];
            let each = settings.webhooks.iter().zip(&targets[index]).enumerate();
            for (i, (target, tx)) in each {
                let chosen: Vec<&Value> = events.iter().filter(|e| wants(target, e)).collect();
                for chunk in chosen.chunks(MAX_BATCH) {
                    let body = json!({ "time_ms": util::now_ms(), "events": chunk }).to_string();
                    let Ok(permit) = tx.try_reserve() else {
                        app.metrics.webhook("dropped");
                        continue;
                    };
                    let key = app.pusher.webhooks().keep(&settings.id, i, &body).await;
                    permit.send(Request { key, body });
                }
            }
        }
    }
}

/// Delivers one target's requests one after another, until shutdown.
async fn send_in_order(
    app: &App,
    http: &reqwest::Client,
    url: &str,
    key: &str,
    secret: &str,
    mut rx: mpsc::Receiver<Request>,
) {
    loop {
        let request = tokio::select! {
            _ = app.shutdown.cancelled() => return,
            r = rx.recv() => match r { Some(r) => r, None => return },
        };
        let signature = protocol::sign(secret, &request.body);
        // Cut short by shutdown: kept for the next start.
        if !deliver(app, http, url, key, &signature, request.body).await {
            return;
        }
        if let Some(k) = request.key {
            app.pusher.webhooks().forget(k).await;
        }
    }
}

/// Sends what an earlier run kept, before anything new, to targets that
/// still exist; the others' requests are forgotten.
async fn requeue(app: &App, targets: &[Vec<mpsc::Sender<Request>>]) {
    let webhooks = app.pusher.webhooks();
    let pending = std::mem::take(&mut *webhooks.restored.lock().unwrap_or_else(|e| e.into_inner()));
    for (key, body) in pending {
        let mut parts = key.split('\u{1f}');
        let target = match (
            parts.next(),
            parts.next().and_then(|i| i.parse::<usize>().ok()),
        ) {
            (Some(id), Some(i)) => app
                .pusher
                .app_by_id(id)
                .and_then(|a| targets.get(a))
                .and_then(|t| t.get(i)),
            _ => None,
        };
        match target {
            Some(tx) => {
                if tx
                    .send(Request {
                        key: Some(key),
                        body,
                    })
                    .await
                    .is_err()
                {
                    return;
                }
            }
            None => webhooks.forget(key).await,
        }
    }
}

fn wants(target: &WebhookSettings, event: &Value) -> bool {
    target.event_types.is_empty()
        || event["name"]
            .as_str()
            .is_some_and(|n| target.event_types.iter().any(|t| t == n))
}

/// One request, retried until delivered, refused or out of attempts (true),
/// or shut down (false).
async fn deliver(
    app: &App,
    http: &reqwest::Client,
    url: &str,
    key: &str,
    sig: &str,
    body: String,
) -> bool {
    let mut wait = FIRST_RETRY;
    for attempt in 1..=ATTEMPTS {
        let request = http
            .post(url)
            .header("content-type", "application/json")
            .header("x-pusher-key", key)
            .header("x-pusher-signature", sig)
            .body(body.clone())
            .send();
        let sent = tokio::select! {
            _ = app.shutdown.cancelled() => return false,
            r = request => r,
        };
        let why = match sent {
            Ok(r) if r.status().is_success() => {
                app.metrics.webhook("delivered");
                return true;
            }
            Ok(r) if r.status().is_server_error() || r.status().as_u16() == 429 => {
                format!("answered {}", r.status().as_u16())
            }
            Ok(r) => {
                app.metrics.webhook("refused");
                tracing::warn!(
                    url,
                    status = r.status().as_u16(),
                    "pusher: a webhook was refused"
                );
                return true;
            }
            Err(e) => e.to_string(),
        };
        if attempt == ATTEMPTS {
            app.metrics.webhook("failed");
            tracing::warn!(url, attempts = ATTEMPTS, error = %why, "pusher: a webhook was not delivered; giving up");
            return true;
        }
        app.metrics.webhook("retried");
        tracing::debug!(url, attempt, error = %why, "pusher: webhook failed; retrying");
        tokio::select! {
            _ = app.shutdown.cancelled() => return false,
            _ = tokio::time::sleep(wait) => {}
        }
        wait *= 2;
    }
    true
}
