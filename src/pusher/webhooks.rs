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
//! Must not: delay a socket or a trigger (a full queue drops the event and
//! counts it), follow redirects, or send an event type a target did not ask for.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use serde_json::{Value, json};
use tokio::sync::mpsc;

use super::protocol;
use crate::App;
use crate::config::WebhookSettings;
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

/// One event of one app (its index in `[[pusher_apps]]`).
type Queued = (usize, Value);

pub struct Webhooks {
    tx: mpsc::Sender<Queued>,
    rx: Mutex<Option<mpsc::Receiver<Queued>>>,
    /// Apps that have at least one webhook (by index).
    wanted: Vec<bool>,
}

impl Webhooks {
    pub fn new(targets: impl Iterator<Item = bool>) -> Webhooks {
        let (tx, rx) = mpsc::channel(QUEUE);
        Webhooks {
            tx,
            rx: Mutex::new(Some(rx)),
            wanted: targets.collect(),
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

/// The node's webhook sender, until shutdown (what is queued then is lost).
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
    let targets: Vec<Vec<mpsc::Sender<String>>> = app
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
            for (target, tx) in settings.webhooks.iter().zip(&targets[index]) {
                let chosen: Vec<&Value> = events.iter().filter(|e| wants(target, e)).collect();
                for chunk in chosen.chunks(MAX_BATCH) {
                    let body = json!({ "time_ms": util::now_ms(), "events": chunk }).to_string();
                    if tx.try_send(body).is_err() {
                        app.metrics.webhook("dropped");
                    }
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
    mut rx: mpsc::Receiver<String>,
) {
    loop {
        let body = tokio::select! {
            _ = app.shutdown.cancelled() => return,
            b = rx.recv() => match b { Some(b) => b, None => return },
        };
        let signature = protocol::sign(secret, &body);
        deliver(app, http, url, key, &signature, body).await;
    }
}

fn wants(target: &WebhookSettings, event: &Value) -> bool {
    target.event_types.is_empty()
        || event["name"]
            .as_str()
            .is_some_and(|n| target.event_types.iter().any(|t| t == n))
}

/// One request, retried until delivered, refused, out of attempts or shut down.
async fn deliver(app: &App, http: &reqwest::Client, url: &str, key: &str, sig: &str, body: String) {
    let mut wait = FIRST_RETRY;
    for attempt in 1..=ATTEMPTS {
        let sent = http
            .post(url)
            .header("content-type", "application/json")
            .header("x-pusher-key", key)
            .header("x-pusher-signature", sig)
            .body(body.clone())
            .send()
            .await;
        let why = match sent {
            Ok(r) if r.status().is_success() => {
                app.metrics.webhook("delivered");
                return;
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
                return;
            }
            Err(e) => e.to_string(),
        };
        if attempt == ATTEMPTS {
            app.metrics.webhook("failed");
            tracing::warn!(url, attempts = ATTEMPTS, error = %why, "pusher: a webhook was not delivered; giving up");
            return;
        }
        app.metrics.webhook("retried");
        tracing::debug!(url, attempt, error = %why, "pusher: webhook failed; retrying");
        tokio::select! {
            _ = app.shutdown.cancelled() => return,
            _ = tokio::time::sleep(wait) => {}
        }
        wait *= 2;
    }
}
