//! Back-channel logout *sending*: when the hub ends one of its own web
//! sessions (revoked, cascaded, expired, logged out), it tells each joined
//! client's backend with an OpenID Back-Channel Logout 1.0 logout token,
//! signed by the hub's session key (public at `/.well-known/jwks.json`),
//! POSTed as `logout_token=<JWT>` to the client's `backchannel_logout_uri`.
//!
//! This module makes one attempt at a time and says how it went; what to
//! send, when to retry and when to give up is the outbox's (`logout`, the
//! notices in the session graph), so a restart or a node's death loses no
//! pending notification. Network errors, timeouts, 408, 429 and 5xx are
//! worth a retry (doubling backoff, `[notify]`); a 2xx is delivered; any
//! other answer is the backend's verdict on the token and final. Each
//! attempt carries a fresh token (`iat`, `exp`, `jti`), so a slow retry
//! never presents an expired one. Every outcome is a metric.
//!
//! Must not: delay the logout that caused it, follow redirects, or keep
//! any notification of its own.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use serde_json::json;
use tokio::sync::Semaphore;

use crate::auth::signer::Signer;
use crate::config::{ClientSettings, NotifySettings};
use crate::metrics::Metrics;
use crate::util;

/// The `events` member that makes a JWT a logout token.
pub const BACKCHANNEL_EVENT: &str = "http://schemas.openid.net/event/backchannel-logout";
/// Lifetime of one logout token (the spec recommends at most two minutes).
const TOKEN_TTL_SECS: i64 = 120;

/// How one attempt went.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Attempt {
    Delivered,
    /// The backend answered and said no: final.
    Refused(String),
    /// Worth trying again later.
    Retry(String),
    /// The client has no back-channel URI (any more): nothing to send.
    Unknown,
}

pub struct Notifier {
    settings: NotifySettings,
    /// client_id → its backend's back-channel logout URI.
    targets: HashMap<String, String>,
    signer: Arc<Signer>,
    http: reqwest::Client,
    /// One permit per request on the wire.
    sending: Semaphore,
    metrics: Arc<Metrics>,
}

impl Notifier {
    pub fn new(
        settings: &NotifySettings,
        clients: &[ClientSettings],
        signer: Arc<Signer>,
        metrics: Arc<Metrics>,
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
            settings: settings.clone(),
            targets,
            signer,
            http,
            sending: Semaphore::new(settings.concurrency),
            metrics,
        })
    }

    /// Attempts a notice may take, the first included.
    pub fn max_attempts(&self) -> u32 {
        self.settings.max_attempts
    }

    /// The wait before the next attempt, after `attempts` failed ones.
    pub fn backoff(&self, attempts: u32) -> Duration {
        let first = self.settings.first_retry_ms;
        let ms = first.saturating_mul(1 << attempts.saturating_sub(1).min(20));
        Duration::from_millis(ms.min(self.settings.max_retry_ms))
    }

    /// Counts a notice that will be tried again.
    pub fn will_retry(&self) {
        self.metrics.backchannel_retries.inc();
    }

    /// Counts a notice given up after its last attempt.
    pub fn gave_up(&self, client_id: &str, attempts: u32) {
        self.metrics.backchannel_sent("failed");
        tracing::warn!(
            client_id,
            attempts,
            "back-channel logout not delivered; giving up"
        );
    }

    /// Tells `client_id`'s backend that web session `sid` of `sub` ended:
    /// one attempt, at most `notify.concurrency` on the wire at once.
    pub async fn attempt(&self, client_id: &str, sid: &str, sub: &str) -> Attempt {
        let Some(uri) = self.targets.get(client_id) else {
            return Attempt::Unknown;
        };
        let token = self.logout_token(client_id, sid, sub);
        // The semaphore is never closed.
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
        let attempt = match sent {
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
        };
        match &attempt {
            Attempt::Delivered => {
                self.metrics.backchannel_sent("delivered");
                tracing::debug!(client_id, "back-channel logout delivered");
            }
            Attempt::Refused(why) => {
                self.metrics.backchannel_sent("refused");
                tracing::warn!(client_id, %uri, answer = %why, "back-channel logout refused by the backend");
            }
            Attempt::Retry(why) => {
                tracing::info!(client_id, error = %why, "back-channel logout failed");
            }
            Attempt::Unknown => {}
        }
        attempt
    }

    /// OpenID Back-Channel Logout 1.0 §2.4: `sub` and `sid` of the session
    /// token the app received, `aud` = the client, the event, no `nonce`.
    fn logout_token(&self, client_id: &str, sid: &str, sub: &str) -> String {
        let now = util::now_ms() / 1000;
        let claims = json!({
            "iss": self.signer.iss,
            "sub": sub,
            "sid": sid,
            "aud": client_id,
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
