//! Keeps an issuer's keys in step with its JWKS document.
//!
//! Fetches happen at start, every [`PERIODIC_REFRESH`], and when a token names
//! an unknown `kid` — then at most once per `jwks_min_refetch_secs`, and only
//! one fetch per issuer is in flight (concurrent callers wait for it), so a
//! flood of made-up kids costs one request, not one per token. Keys that
//! disappear from the document stay usable for [`RETIRED_KEY_GRACE`], so
//! tokens signed just before a rotation still verify.
//!
//! Must not: fetch any URL but the configured one, or follow redirects to
//! another host (reqwest's policy is limited below).

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use jsonwebtoken::DecodingKey;
use jsonwebtoken::jwk::{Jwk, PublicKeyUse};
use std::sync::atomic::{AtomicBool, Ordering};

use tokio::sync::Mutex;

use super::jwt::{Issuer, VerifyKey};

pub const PERIODIC_REFRESH: Duration = Duration::from_secs(300);
pub const RETIRED_KEY_GRACE: Duration = Duration::from_secs(600);
const MAX_JWKS_BYTES: usize = 1 << 20;
const FETCH_TIMEOUT: Duration = Duration::from_secs(5);

#[derive(Debug, thiserror::Error)]
pub enum JwksError {
    #[error("fetching {url}: {reason}")]
    Fetch { url: String, reason: String },
    #[error("{url}: not a JWKS document: {reason}")]
    Parse { url: String, reason: String },
}

/// Fetch bookkeeping of one JWKS-backed issuer.
pub struct JwksSource {
    pub issuer: Arc<Issuer>,
    url: String,
    /// Held across the fetch: this is what makes concurrent unknown-kid
    /// lookups share one request. A tokio mutex because it spans an await.
    state: Mutex<FetchState>,
    /// A fetch has succeeded: read without the lock, so readiness never
    /// waits for a fetch in progress.
    loaded: AtomicBool,
}

#[derive(Default)]
struct FetchState {
    last_attempt: Option<Instant>,
    last_success: Option<Instant>,
    /// kid → (key, when it left the document).
    retired: HashMap<Option<String>, (Arc<VerifyKey>, Instant)>,
}

impl JwksSource {
    pub fn new(issuer: Arc<Issuer>, url: String) -> JwksSource {
        JwksSource {
            issuer,
            url,
            state: Mutex::new(FetchState::default()),
            loaded: AtomicBool::new(false),
        }
    }

    /// True once a fetch has succeeded; answers at once.
    pub fn has_keys(&self) -> bool {
        self.loaded.load(Ordering::Acquire)
    }

    /// Called on an unknown kid: refetches unless one happened within the
    /// minimum interval. Returns whether a fetch was made and succeeded.
    pub async fn refetch_if_allowed(&self, http: &reqwest::Client) -> bool {
        let min = Duration::from_secs(self.issuer.jwks_min_refetch_secs);
        let mut st = self.state.lock().await;
        if st.last_attempt.is_some_and(|t| t.elapsed() < min) {
            return false;
        }
        self.fetch_locked(http, &mut st).await.is_ok()
    }

    /// Unconditional fetch (start-up and the periodic refresh).
    pub async fn refresh(&self, http: &reqwest::Client) -> Result<usize, JwksError> {
        let mut st = self.state.lock().await;
        self.fetch_locked(http, &mut st).await
    }

    async fn fetch_locked(
        &self,
        http: &reqwest::Client,
        st: &mut FetchState,
    ) -> Result<usize, JwksError> {
        st.last_attempt = Some(Instant::now());
        let result = fetch(http, &self.url).await.and_then(|body| {
            parse(&body).map_err(|reason| JwksError::Parse {
                url: self.url.clone(),
                reason,
            })
        });
        let jwks = match result {
            Ok(j) => j,
            Err(e) => {
                tracing::warn!(issuer = %self.issuer.iss, error = %e, "JWKS fetch failed");
                return Err(e);
            }
        };
        let mut fresh = HashMap::new();
        for jwk in jwks {
            if matches!(jwk.common.public_key_use, Some(PublicKeyUse::Encryption)) {
                continue;
            }
            let Ok(key) = DecodingKey::from_jwk(&jwk) else {
                continue;
            };
            if let Some(vk) = self.issuer.verify_key(key) {
                fresh.insert(jwk.common.key_id.clone(), vk);
            }
        }
        let now = Instant::now();
        let old = self.issuer.keys_snapshot();
        for (kid, key) in old.iter() {
            if !fresh.contains_key(kid) && !st.retired.contains_key(kid) {
                st.retired.insert(kid.clone(), (key.clone(), now));
            }
        }
        st.retired.retain(|kid, (_, since)| {
            !fresh.contains_key(kid) && since.elapsed() < RETIRED_KEY_GRACE
        });
        let count = fresh.len();
        let mut merged = fresh;
        for (kid, (key, _)) in &st.retired {
            merged.entry(kid.clone()).or_insert_with(|| key.clone());
        }
        self.issuer.replace_keys(merged);
        st.last_success = Some(now);
        self.loaded.store(true, Ordering::Release);
        tracing::info!(issuer = %self.issuer.iss, keys = count, retired = st.retired.len(), "JWKS loaded");
        Ok(count)
    }
}

async fn fetch(http: &reqwest::Client, url: &str) -> Result<Vec<u8>, JwksError> {
    let err = |reason: String| JwksError::Fetch {
        url: url.to_string(),
        reason,
    };
    let mut resp = http
        .get(url)
        .timeout(FETCH_TIMEOUT)
        .send()
        .await
        .map_err(|e| err(e.to_string()))?;
    if !resp.status().is_success() {
        return Err(err(format!("status {}", resp.status())));
    }
    let mut body = Vec::new();
    while let Some(chunk) = resp.chunk().await.map_err(|e| err(e.to_string()))? {
        if body.len() + chunk.len() > MAX_JWKS_BYTES {
            return Err(err("document larger than 1 MiB".into()));
        }
        body.extend_from_slice(&chunk);
    }
    Ok(body)
}

/// Parses key by key, so one key of an unsupported kind does not hide the rest.
fn parse(body: &[u8]) -> Result<Vec<Jwk>, String> {
    #[derive(serde::Deserialize)]
    struct Doc {
        keys: Vec<serde_json::Value>,
    }
    let doc: Doc = serde_json::from_slice(body).map_err(|e| e.to_string())?;
    Ok(doc
        .keys
        .into_iter()
        .filter_map(|v| serde_json::from_value::<Jwk>(v).ok())
        .collect())
}
