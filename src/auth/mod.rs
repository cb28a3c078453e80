//! Authentication: who is calling, proven by a JWT or an API key.
//!
//! * [`Authenticator::verify_token`] — access tokens of configured issuers
//!   (static keys, an HS256 secret, or a JWKS URL kept fresh by `jwks`).
//! * [`Authenticator::authenticate_bearer`] — an `Authorization: Bearer` value,
//!   which is either a user's JWT or a backend API key (`api_keys`).
//! * `dev_issuer` — the dev-mode token minter; to this module it is one more
//!   issuer with a static key.
//! * `signer` — the Ed25519 keys the hub signs with (dev tokens, session tokens).
//! * `crypto` — the ring provider jsonwebtoken signs and verifies with.
//!
//! Must not: decide what a principal may do beyond scopes (that is the
//! endpoint's job), or know about sockets, sessions or watermarks. A token that
//! verifies here may still be revoked; `revocation` decides that.

pub mod api_keys;
pub mod clients;
pub mod crypto;
pub mod dev_issuer;
mod jwks;
pub mod jwt;
pub mod signer;
mod verified;

use std::collections::HashMap;
use std::sync::Arc;

use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::config::IssuerSettings;
use crate::error::AuthError;
use crate::util;
pub use api_keys::{ApiKey, ApiKeys};
pub use jwt::{IssuerId, Principal};

/// A verified caller of the HTTP API.
#[derive(Debug, Clone)]
pub enum Credential {
    /// A user's own access token.
    User(Principal),
    /// A backend API key.
    Backend(Arc<ApiKey>),
}

pub struct Authenticator {
    issuers: Vec<Arc<jwt::Issuer>>,
    by_iss: HashMap<String, IssuerId>,
    /// JWKS source of each issuer that has a `jwks_url` (same index as `issuers`).
    jwks: Vec<Option<Arc<jwks::JwksSource>>>,
    api_keys: ApiKeys,
    max_lifetime: u64,
    http: reqwest::Client,
    verified: verified::VerifiedTokens,
}

impl Authenticator {
    pub fn new(
        issuers: &[IssuerSettings],
        api_keys: ApiKeys,
        max_lifetime: u64,
        http: reqwest::Client,
    ) -> Result<Authenticator, String> {
        crypto::install();
        if issuers.len() > u16::MAX as usize {
            return Err("too many issuers".into());
        }
        let mut list = Vec::new();
        let mut by_iss = HashMap::new();
        let mut sources = Vec::new();
        for (i, s) in issuers.iter().enumerate() {
            let id = IssuerId(i as u16);
            let issuer =
                Arc::new(jwt::Issuer::new(id, s).map_err(|e| format!("issuers[{i}]: {e}"))?);
            sources.push(
                s.jwks_url
                    .as_ref()
                    .map(|url| Arc::new(jwks::JwksSource::new(issuer.clone(), url.clone()))),
            );
            by_iss.insert(s.issuer.clone(), id);
            list.push(issuer);
        }
        Ok(Authenticator {
            issuers: list,
            by_iss,
            jwks: sources,
            api_keys,
            max_lifetime,
            http,
            verified: verified::VerifiedTokens::default(),
        })
    }

    /// First JWKS fetch of every issuer. Failures are logged, not fatal: the
    /// issuer's tokens answer 503 / close 1013 until a later fetch succeeds.
    pub async fn load_keys(&self) {
        for src in self.jwks.iter().flatten() {
            let _ = src.refresh(&self.http).await;
        }
    }

    /// Refreshes every JWKS periodically until `cancel`.
    pub fn spawn_refresh(&self, tracker: &TaskTracker, cancel: CancellationToken) {
        for src in self.jwks.iter().flatten() {
            let src = src.clone();
            let http = self.http.clone();
            let cancel = cancel.clone();
            tracker.spawn(async move {
                loop {
                    tokio::select! {
                        _ = cancel.cancelled() => return,
                        _ = tokio::time::sleep(jwks::PERIODIC_REFRESH) => {
                            let _ = src.refresh(&http).await;
                        }
                    }
                }
            });
        }
    }

    /// True when every JWKS-backed issuer has keys; answers at once, even
    /// while a fetch is in progress.
    pub fn keys_ready_now(&self) -> bool {
        self.jwks.iter().flatten().all(|src| src.has_keys())
    }

    pub fn issuer_id(&self, iss: &str) -> Option<IssuerId> {
        self.by_iss.get(iss).copied()
    }

    /// Every trusted issuer's name, in configuration order.
    pub fn issuer_names(&self) -> Vec<String> {
        self.issuers.iter().map(|i| i.iss.clone()).collect()
    }

    pub fn issuer_name(&self, id: IssuerId) -> &str {
        &self.issuers[id.0 as usize].iss
    }

    /// Whether security events of `transmitter` may name the users of the
    /// issuer `iss` (its own, or one it is configured to speak for).
    pub fn speaks_for(&self, transmitter: IssuerId, iss: &str) -> bool {
        let t = &self.issuers[transmitter.0 as usize];
        t.iss == iss || t.speaks_for.iter().any(|s| s == iss)
    }

    /// The issuer when exactly one is configured besides `except` (the
    /// hub's own session issuer), which lets backends omit `iss`.
    pub fn single_issuer(&self, except: IssuerId) -> Option<IssuerId> {
        let mut others = (0..self.issuers.len() as u16)
            .map(IssuerId)
            .filter(|id| *id != except);
        match (others.next(), others.next()) {
            (Some(only), None) => Some(only),
            _ => None,
        }
    }

    /// Verifies an access token completely (signature and claims). Revocation
    /// is not checked here.
    pub async fn verify_token(&self, token: &str) -> Result<Principal, AuthError> {
        let now = util::now_secs();
        // A hit needs `exp` still ahead without leeway; a token inside its
        // issuer's leeway takes the full path, which applies the leeway.
        if let Some(p) = self.verified.get(token, now as i64) {
            return Ok(p);
        }
        let principal = self.verify_uncached(token, now).await?;
        self.verified.insert(token, &principal, now as i64);
        Ok(principal)
    }

    /// Forgets cached verifications no longer trusted.
    pub fn expire_cache(&self) -> usize {
        self.verified.expire(util::now_secs() as i64)
    }

    async fn verify_uncached(&self, token: &str, now: u64) -> Result<Principal, AuthError> {
        let (issuer, key, header) = self.resolve(token).await?;
        if let Some(typ) = &header.typ {
            let typ = typ.to_ascii_lowercase();
            if typ.contains("logout+jwt") || typ.contains("secevent+jwt") {
                return Err(AuthError::WrongTokenKind);
            }
        }
        issuer.verify_with(token, &key, self.max_lifetime, now)
    }

    /// Verifies an OpenID Back-Channel Logout token (§2.6): signature and
    /// algorithm with the issuer's keys, `iss`, `aud`, `iat`, `exp`, `jti`,
    /// the back-channel `events` member, `sub` and/or `sid`, no `nonce`, and
    /// `typ: logout+jwt` where the issuer is configured to require it. Never
    /// accepts an access token (no `events`), as access-token verification
    /// never accepts this.
    pub async fn verify_logout_token(&self, token: &str) -> Result<jwt::LogoutClaims, AuthError> {
        let (issuer, key, header) = self.resolve(token).await?;
        let typ = header.typ.as_deref().map(str::to_ascii_lowercase);
        let is_logout_typ = matches!(
            typ.as_deref(),
            Some("logout+jwt" | "application/logout+jwt")
        );
        if issuer.require_logout_typ && !is_logout_typ {
            return Err(AuthError::WrongTokenKind);
        }
        issuer.verify_logout(token, &key, util::now_secs())
    }

    /// Verifies a CAEP `session-revoked` Security Event Token (RFC 8935
    /// push). Like logout tokens, never an access token and never accepted
    /// as one.
    pub async fn verify_session_revoked(
        &self,
        token: &str,
    ) -> Result<jwt::RevokedSession, AuthError> {
        let (issuer, key, header) = self.resolve(token).await?;
        let typ = header.typ.as_deref().map(str::to_ascii_lowercase);
        if matches!(typ.as_deref(), Some(t) if !t.contains("secevent+jwt")) {
            return Err(AuthError::WrongTokenKind);
        }
        issuer.verify_session_revoked(token, &key, self.max_lifetime, util::now_secs())
    }

    /// What every token kind shares: header checks, the issuer, its
    /// algorithm allow-list, and the key (refetching the JWKS, rate-limited,
    /// for an unknown `kid`).
    async fn resolve(
        &self,
        token: &str,
    ) -> Result<(Arc<jwt::Issuer>, Arc<jwt::VerifyKey>, jwt::RawHeader), AuthError> {
        let (header, alg, iss) = jwt::inspect(token)?;
        let iss = iss.ok_or(AuthError::MissingClaim("iss"))?;
        let id = self.issuer_id(&iss).ok_or(AuthError::UnknownIssuer)?;
        let issuer = self.issuers[id.0 as usize].clone();
        if !issuer.allows(alg) {
            return Err(AuthError::AlgorithmNotAllowed);
        }
        let kid = header.kid.as_deref();
        let key = match issuer.find_key(alg, kid) {
            Ok(k) => k,
            Err(AuthError::UnknownKey) => {
                let Some(src) = &self.jwks[id.0 as usize] else {
                    return Err(AuthError::UnknownKey);
                };
                let fetched = src.refetch_if_allowed(&self.http).await;
                if !fetched && !src.has_keys() {
                    return Err(AuthError::KeysUnavailable);
                }
                issuer.find_key(alg, kid)?
            }
            Err(e) => return Err(e),
        };
        Ok((issuer, key, header))
    }

    /// Verifies the value of an `Authorization` header.
    pub async fn authenticate_bearer(&self, header: Option<&str>) -> Result<Credential, AuthError> {
        let value = header.ok_or(AuthError::Missing)?;
        let (scheme, cred) = value.split_once(' ').ok_or(AuthError::Malformed)?;
        if !scheme.eq_ignore_ascii_case("bearer") {
            let shown: String = scheme.chars().take(16).collect();
            return Err(AuthError::WrongScheme(shown));
        }
        let cred = cred.trim();
        if cred.is_empty() {
            return Err(AuthError::Missing);
        }
        if cred.starts_with(api_keys::KEY_PREFIX) {
            self.api_keys.verify(cred).map(Credential::Backend)
        } else if cred.bytes().filter(|&b| b == b'.').count() == 2 {
            self.verify_token(cred).await.map(Credential::User)
        } else {
            // Neither an API key nor a JWT: say so, rather than "bad key".
            Err(AuthError::Malformed)
        }
    }
}
