//! Back-channel logout *sending*: when the hub ends one of its own web
//! sessions (revoked, cascaded, expired, logged out), it tells the client's
//! backend with an OpenID Back-Channel Logout 1.0 logout token, signed by
//! the hub's session key (public at `/.well-known/jwks.json`), POSTed as
//! `logout_token=<JWT>` to the client's `backchannel_logout_uri`.
//!
//! Delivery is at least once while the hub runs: each notification is its
//! own task that retries network errors, timeouts, 408, 429 and 5xx with
//! doubling backoff (`[notify]`); a 2xx is delivered, any other answer is a
//! refusal (the backend judged the token) and is not retried. Each attempt
//! carries a fresh token (`iat`, `exp`, `jti`), so a slow retry never
//! presents an expired one. The queue is bounded by `notify.queue_size`
//! (waiting + in flight); beyond it a notification is dropped, counted and
//! logged. Every outcome is a metric.
//!
//! Must not: delay or fail the logout that caused it (sockets are told
//! first, by the caller; this runs beside it), follow redirects, or keep
//! notifications across a restart (what is pending at shutdown is counted
//! as abandoned).

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use serde_json::json;
use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::auth::signer::Signer;
use crate::config::{ClientSettings, NotifySettings};
use crate::metrics::Metrics;
use crate::sessions::Ended;
use crate::util;

/// The `events` member that makes a JWT a logout token.
pub const BACKCHANNEL_EVENT: &str = "http://schemas.openid.net/event/backchannel-logout";
/// Lifetime of one logout token (the spec recommends at most two minutes).
const TOKEN_TTL_SECS: i64 = 120;

/// Sends logout tokens; cheap to clone.
#[derive(Clone)]
pub struct Notifier {
    inner: Arc<Inner>,
}

struct Inner {
    settings: NotifySettings,
    /// client_id → its backend's back-channel logout URI.
    targets: HashMap<String, String>,
    signer: Arc<Signer>,
    http: reqwest::Client,
    /// One permit per notification waiting or in flight: the bounded queue.
    queued: Arc<Semaphore>,
    /// One permit per request on the wire.
    sending: Semaphore,
    metrics: Arc<Metrics>,
    tasks: TaskTracker,
    shutdown: CancellationToken,
}

/// How one attempt went.
enum Attempt {
    Delivered,
    Refused(String),
    Retry(String),
}

impl Notifier {
    pub fn new(
        settings: &NotifySettings,
        clients: &[ClientSettings],
        signer: Arc<Signer>,
        metrics: Arc<Metrics>,
        tasks: TaskTracker,
        shutdown: CancellationToken,
    ) -> Result<Notifier, reqwest::Error> {
        let targets = clients
            .iter()
            .filter_map(|c| {
                let uri = c.backchannel_logout_uri.clone()?;
                Some((c.client_id.clone(), uri))
            })
            .collect();
        let http = reqwest::Client::builder()
            .redirect(reqwest::redirect::Policy::none())
            .timeout(Duration::from_millis(settings.request_timeout_ms))
            .build()?;
        Ok(Notifier {
            inner: Arc::new(Inner {
                settings: settings.clone(),
                targets,
                signer,
                http,
                queued: Arc::new(Semaphore::new(settings.queue_size)),
                sending: Semaphore::new(settings.concurrency),
                metrics,
                tasks,
                shutdown,
            }),
        })
    }

    /// Queues a logout token for each ended session whose client has a
    /// back-channel logout URI. Never waits.
    pub fn sessions_ended(&self, ended: &[Ended]) {
        for (e, client_id) in ended
            .iter()
            .flat_map(|e| e.clients.iter().map(move |c| (e, c)))
        {
            let Some(uri) = self.inner.targets.get(client_id) else {
                continue;
            };
            let Ok(slot) = self.inner.queued.clone().try_acquire_owned() else {
                self.inner.metrics.backchannel_sent("dropped");
                tracing::warn!(
                    client_id = %client_id,
                    queue_size = self.inner.settings.queue_size,
                    "back-channel logout queue full: notification dropped"
                );
                continue;
            };
            let inner = self.inner.clone();
            let to = Notice {
                uri: uri.clone(),
                client_id: client_id.clone(),
                sid: e.sid.clone(),
                sub: e.sub.clone(),
            };
            self.inner
                .tasks
                .spawn(async move { inner.deliver(&to, slot).await });
        }
    }
}

/// One logout token to send: which session, to which client's backend.
struct Notice {
    uri: String,
    client_id: String,
    sid: String,
    sub: String,
}

impl Inner {
    async fn deliver(&self, ended: &Notice, _slot: OwnedSemaphorePermit) {
        let uri = ended.uri.as_str();
        let mut backoff = Duration::from_millis(self.settings.first_retry_ms);
        let max_backoff = Duration::from_millis(self.settings.max_retry_ms);
        for attempt in 1..=self.settings.max_attempts {
            let outcome = tokio::select! {
                _ = self.shutdown.cancelled() => None,
                a = self.attempt(uri, ended) => Some(a),
            };
            let reason = match outcome {
                None => break,
                Some(Attempt::Delivered) => {
                    self.metrics.backchannel_sent("delivered");
                    tracing::debug!(client_id = %ended.client_id, attempt, "back-channel logout delivered");
                    return;
                }
                Some(Attempt::Refused(why)) => {
                    self.metrics.backchannel_sent("refused");
                    tracing::warn!(client_id = %ended.client_id, %uri, answer = %why, "back-channel logout refused by the backend");
                    return;
                }
                Some(Attempt::Retry(why)) => why,
            };
            if attempt == self.settings.max_attempts {
                self.metrics.backchannel_sent("failed");
                tracing::warn!(client_id = %ended.client_id, %uri, attempts = attempt, error = %reason, "back-channel logout not delivered; giving up");
                return;
            }
            self.metrics.backchannel_retries.inc();
            tracing::info!(client_id = %ended.client_id, attempt, error = %reason, retry_in_ms = backoff.as_millis() as u64, "back-channel logout failed; retrying");
            tokio::select! {
                _ = self.shutdown.cancelled() => break,
                _ = tokio::time::sleep(backoff) => {}
            }
            backoff = (backoff * 2).min(max_backoff);
        }
        self.metrics.backchannel_sent("abandoned");
        tracing::warn!(client_id = %ended.client_id, "shutting down: back-channel logout abandoned");
    }

    async fn attempt(&self, uri: &str, ended: &Notice) -> Attempt {
        let token = self.logout_token(ended);
        // At most `concurrency` requests on the wire; the semaphore is never closed.
        let Ok(_permit) = self.sending.acquire().await else {
            return Attempt::Retry("sender closed".into());
        };
        let sent = self
            .http
            .post(uri)
            .header(reqwest::header::CACHE_CONTROL, "no-store")
            .form(&[("logout_token", token.as_str())])
            .send()
            .await;
        match sent {
            Err(e) => Attempt::Retry(error_chain(&e)),
            Ok(resp) => {
                let status = resp.status();
                if status.is_success() {
                    Attempt::Delivered
                } else if status.is_server_error()
                    || status == reqwest::StatusCode::REQUEST_TIMEOUT
                    || status == reqwest::StatusCode::TOO_MANY_REQUESTS
                {
                    Attempt::Retry(format!("HTTP {status}"))
                } else {
                    Attempt::Refused(format!("HTTP {status}"))
                }
            }
        }
    }

    /// OpenID Back-Channel Logout 1.0 §2.4: `sub` and `sid` of the session
    /// token the app received, `aud` = the client, the event, no `nonce`.
    fn logout_token(&self, ended: &Notice) -> String {
        let now = util::now_ms() / 1000;
        let claims = json!({
            "iss": self.signer.iss,
            "sub": ended.sub,
            "sid": ended.sid,
            "aud": ended.client_id,
            "iat": now,
            "exp": now + TOKEN_TTL_SECS,
            "jti": util::random_id(),
            "events": { BACKCHANNEL_EVENT: {} },
        });
        self.signer.sign_typed(&claims, "logout+jwt")
    }
}

/// The error and its causes on one line (reqwest's Display alone says
/// only "error sending request").
fn error_chain(e: &dyn std::error::Error) -> String {
    let mut out = e.to_string();
    let mut source = e.source();
    while let Some(s) = source {
        out.push_str(": ");
        out.push_str(&s.to_string());
        source = s.source();
    }
    out
}
