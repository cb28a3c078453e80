//! Access-token verification for one configured issuer.
//!
//! Order of checks, cheapest and most hostile-input-proof first: size, shape,
//! header (algorithm allow-list, no `crit`, `kid` charset), token kind (a
//! logout or security-event token is never an access token, RFC 8725 §3.12),
//! key lookup by (issuer, kid), signature, then claims (`iss`, `aud`, `exp`,
//! `nbf`, `iat`, lifetime) through jsonwebtoken's `Validation`.
//!
//! Must not: fetch anything a token names (`jku`, `x5u` are ignored; only the
//! configured JWKS URL is ever fetched), or trust a claim before the signature
//! has been checked. The only pre-signature use of the payload is picking which
//! configured issuer's keys to try.

use std::collections::HashMap;
use std::sync::{Arc, RwLock};

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use jsonwebtoken::errors::ErrorKind;
use jsonwebtoken::jwk::Jwk;
use jsonwebtoken::{Algorithm, AlgorithmFamily, DecodingKey, Validation};
use serde::Deserialize;

use crate::config::IssuerSettings;
use crate::error::AuthError;

/// Tokens larger than this are refused before any parsing.
pub const MAX_TOKEN_BYTES: usize = 8 * 1024;

/// Index of a configured issuer; registry keys use it instead of the `iss` string.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct IssuerId(pub u16);

/// A verified access token, reduced to what the hub uses.
#[derive(Clone, Debug)]
pub struct Principal {
    pub issuer: IssuerId,
    /// Shared (not copied) by the verification cache and every socket
    /// authenticated with the token.
    pub sub: Arc<str>,
    pub sid: Option<Arc<str>>,
    /// Issued-at, seconds since the epoch. Compared with logout watermarks.
    pub iat: i64,
    pub exp: i64,
    /// `client_id`, else `azp`: the client the token was issued to.
    pub client_id: Option<String>,
    /// The token's `aud` values.
    pub aud: Arc<[Box<str>]>,
}

impl Principal {
    /// Whether the token was issued to `client` (by `client_id`, `azp` or `aud`).
    pub fn issued_to(&self, client: &str) -> bool {
        self.client_id.as_deref() == Some(client) || self.aud.iter().any(|a| &**a == client)
    }
}

/// A key ready for verification, with its validation rules precomputed once
/// (the allowed algorithms are the issuer's allow-list within the key's family).
pub struct VerifyKey {
    pub key: DecodingKey,
    pub validation: Validation,
}

/// What the hub reads from an access token's payload.
#[derive(Deserialize)]
struct AccessClaims {
    sub: Option<String>,
    sid: Option<String>,
    iat: Option<u64>,
    /// Optional here so a missing `exp` is named as such (serde would only
    /// say "malformed"); required below.
    exp: Option<u64>,
    client_id: Option<String>,
    azp: Option<String>,
    aud: Option<serde_json::Value>,
    events: Option<serde_json::Value>,
}

/// Header fields the hub looks at, parsed by us so that an unknown `alg`
/// (`none`, `None`, `HS1`) gets a precise answer instead of a JSON error.
#[derive(Debug, Deserialize)]
pub struct RawHeader {
    pub alg: String,
    pub kid: Option<String>,
    pub typ: Option<String>,
    /// Present at all (even `null` or `[]`) is what counts: RFC 7515
    /// §4.1.11 allows only a non-empty array, and we understand no extension.
    #[serde(default, deserialize_with = "present")]
    pub crit: Option<serde_json::Value>,
}

/// `Some` for any value, `null` included (serde maps `null` to `None`).
fn present<'de, D: serde::Deserializer<'de>>(d: D) -> Result<Option<serde_json::Value>, D::Error> {
    serde_json::Value::deserialize(d).map(Some)
}

#[derive(Deserialize)]
struct PeekIss {
    iss: Option<String>,
}

/// One configured issuer: its identity, rules and keys.
pub struct Issuer {
    pub id: IssuerId,
    pub iss: String,
    audiences: Vec<String>,
    algorithms: Vec<Algorithm>,
    leeway: u64,
    /// Keys by `kid` (None for a key configured without one). Replaced as a
    /// whole on JWKS refresh; readers clone the Arc and drop the lock at once.
    keys: RwLock<Arc<HashMap<Option<String>, Arc<VerifyKey>>>>,
    /// The HS256 secret, if configured: tried for HMAC tokens whatever their kid.
    hmac: Option<Arc<VerifyKey>>,
    pub jwks_url: Option<String>,
    pub jwks_min_refetch_secs: u64,
    /// Back-channel logout tokens must carry `typ: logout+jwt`.
    pub require_logout_typ: bool,
    /// Other issuers whose users this issuer's security events may name.
    pub speaks_for: Vec<String>,
}

/// The claims of a verified back-channel logout token that the hub acts on.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LogoutClaims {
    pub issuer: IssuerId,
    pub sub: Option<String>,
    pub sid: Option<String>,
    pub jti: String,
    pub exp: i64,
}

/// OpenID Back-Channel Logout 1.0 §2.4: the event member a logout token carries.
pub const BACKCHANNEL_EVENT: &str = "http://schemas.openid.net/event/backchannel-logout";

/// CAEP 1.0: the event type of a revoked session.
pub const CAEP_SESSION_REVOKED: &str =
    "https://schemas.openid.net/secevent/caep/event-type/session-revoked";

/// Who a verified `session-revoked` event is about.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RevokedSession {
    /// The transmitter (the SET's `iss`).
    pub issuer: IssuerId,
    /// The issuer an `iss_sub` subject names, if it names one: the user is
    /// that issuer's (the receiver resolves and authorizes it).
    pub subject_iss: Option<String>,
    pub sub: Option<String>,
    pub sid: Option<String>,
    pub jti: String,
    /// When the `jti` may be forgotten (epoch seconds): by then the event
    /// is too old to be accepted anyway.
    pub keep_until: i64,
}

#[derive(Deserialize)]
struct RawSetClaims {
    iat: Option<u64>,
    exp: Option<u64>,
    jti: Option<String>,
    events: Option<serde_json::Map<String, serde_json::Value>>,
    sub_id: Option<serde_json::Value>,
}

/// A subject as [`subject`] reads it: (the issuer an `iss_sub` names,
/// user, session).
type Subject = (Option<String>, Option<String>, Option<String>);

/// A subject identifier (RFC 9493) as CAEP uses it: `iss_sub` names a user
/// *of that issuer*, `opaque` a user of the transmitter; `complex` may name
/// a `user` and a `session` (`opaque`).
fn subject(sub_id: &serde_json::Value) -> Subject {
    let text =
        |v: &serde_json::Value, k: &str| v.get(k).and_then(|x| x.as_str()).map(str::to_string);
    match sub_id.get("format").and_then(|f| f.as_str()) {
        Some("iss_sub") => (text(sub_id, "iss"), text(sub_id, "sub"), None),
        Some("opaque") => (None, text(sub_id, "id"), None),
        Some("complex") => {
            let (iss, user, _) = sub_id.get("user").map(subject).unwrap_or_default();
            let session = sub_id.get("session").and_then(|s| text(s, "id"));
            (iss, user, session)
        }
        _ => (None, None, None),
    }
}

#[derive(Deserialize)]
struct RawLogoutClaims {
    sub: Option<String>,
    sid: Option<String>,
    iat: Option<u64>,
    exp: Option<u64>,
    jti: Option<String>,
    events: Option<serde_json::Map<String, serde_json::Value>>,
    nonce: Option<serde_json::Value>,
}

impl Issuer {
    pub fn new(id: IssuerId, s: &IssuerSettings) -> Result<Issuer, String> {
        let mut algorithms = s.algorithms.clone();
        if algorithms.is_empty() {
            algorithms = vec![Algorithm::RS256, Algorithm::ES256, Algorithm::EdDSA];
            if s.hs256_secret.is_some() {
                algorithms.push(Algorithm::HS256);
            }
        }
        let mut issuer = Issuer {
            id,
            iss: s.issuer.clone(),
            audiences: s.audiences.clone(),
            algorithms,
            leeway: s.leeway_secs,
            keys: RwLock::new(Arc::new(HashMap::new())),
            hmac: None,
            jwks_url: s.jwks_url.clone(),
            require_logout_typ: s.require_logout_typ,
            speaks_for: s.speaks_for.clone(),
            jwks_min_refetch_secs: s.jwks_min_refetch_secs,
        };
        if let Some(secret) = &s.hs256_secret {
            issuer.hmac = issuer.verify_key(DecodingKey::from_secret(secret.as_bytes()));
        }
        let mut map = HashMap::new();
        for (i, k) in s.keys.iter().enumerate() {
            let (kid, key) = if let Some(pem) = &k.pem {
                (k.kid.clone(), decoding_key_from_pem(pem.as_bytes())?)
            } else {
                let text = k.jwk.as_deref().unwrap_or_default();
                let jwk: Jwk = serde_json::from_str(text)
                    .map_err(|e| format!("issuers.keys[{i}].jwk: {e}"))?;
                let key = DecodingKey::from_jwk(&jwk)
                    .map_err(|e| format!("issuers.keys[{i}].jwk: {e}"))?;
                (k.kid.clone().or(jwk.common.key_id.clone()), key)
            };
            let vk = issuer.verify_key(key).ok_or_else(|| {
                format!(
                    "issuers.keys[{i}]: the key's type matches none of the allowed algorithms {:?}",
                    issuer.algorithms
                )
            })?;
            map.insert(kid, vk);
        }
        issuer.keys = RwLock::new(Arc::new(map));
        Ok(issuer)
    }

    /// Wraps a key with its precomputed validation, or None if no allowed
    /// algorithm fits the key's family.
    pub fn verify_key(&self, key: DecodingKey) -> Option<Arc<VerifyKey>> {
        let family = key.family();
        let algs: Vec<Algorithm> = self
            .algorithms
            .iter()
            .copied()
            .filter(|a| a.family() == family)
            .collect();
        if algs.is_empty() {
            return None;
        }
        let mut v = Validation::new(algs[0]);
        v.algorithms = algs;
        v.leeway = self.leeway;
        v.validate_nbf = true;
        v.set_issuer(&[&self.iss]);
        v.set_audience(&self.audiences);
        v.set_required_spec_claims(&["exp", "iss", "aud", "sub"]);
        Some(Arc::new(VerifyKey { key, validation: v }))
    }

    /// Replaces the key map as a whole (the JWKS refresher decides which
    /// recently retired keys stay in it).
    pub fn replace_keys(&self, keys: HashMap<Option<String>, Arc<VerifyKey>>) {
        *self.keys.write().unwrap_or_else(|e| e.into_inner()) = Arc::new(keys);
    }

    pub fn keys_snapshot(&self) -> Arc<HashMap<Option<String>, Arc<VerifyKey>>> {
        self.keys.read().unwrap_or_else(|e| e.into_inner()).clone()
    }

    pub fn allows(&self, alg: Algorithm) -> bool {
        self.algorithms.contains(&alg)
    }

    /// Finds the key for a token. `Err(UnknownKey)` means a JWKS refetch may help.
    pub fn find_key(&self, alg: Algorithm, kid: Option<&str>) -> Result<Arc<VerifyKey>, AuthError> {
        if alg.family() == AlgorithmFamily::Hmac {
            return self.hmac.clone().ok_or(AuthError::AlgorithmNotAllowed);
        }
        let keys = self.keys_snapshot();
        let found = match kid {
            Some(kid) => keys.get(&Some(kid.to_string())),
            // No kid: acceptable only when there is exactly one candidate.
            None if keys.len() == 1 => keys.values().next(),
            None => None,
        };
        found.cloned().ok_or(AuthError::UnknownKey)
    }

    /// A logout token's signature and claims (§2.6). `now`: epoch seconds.
    pub fn verify_logout(
        &self,
        token: &str,
        key: &VerifyKey,
        now: u64,
    ) -> Result<LogoutClaims, AuthError> {
        let mut v = key.validation.clone();
        // `sub` is optional in a logout token (`sid` may stand alone).
        v.set_required_spec_claims(&["exp", "iss", "aud"]);
        let c = jsonwebtoken::decode::<RawLogoutClaims>(token, &key.key, &v)
            .map_err(map_jwt_error)?
            .claims;
        let events = c.events.ok_or(AuthError::MissingClaim("events"))?;
        if !events.get(BACKCHANNEL_EVENT).is_some_and(|e| e.is_object()) {
            return Err(AuthError::WrongTokenKind);
        }
        if c.nonce.is_some() {
            // §2.4: a nonce marks an ID token; it is prohibited here.
            return Err(AuthError::WrongTokenKind);
        }
        let (jti, sub, sid) = self.event_claims(c.iat, c.jti, c.sub, c.sid, now)?;
        Ok(LogoutClaims {
            issuer: self.id,
            sub,
            sid,
            jti,
            exp: c.exp.unwrap_or(now) as i64,
        })
    }

    /// A Security Event Token carrying CAEP `session-revoked` (RFC 8417,
    /// RFC 8935): signature, `iss`, `aud`, `iat`, `jti`, the event, and a
    /// subject that names a user or a session. SETs need not expire.
    pub fn verify_session_revoked(
        &self,
        token: &str,
        key: &VerifyKey,
        max_lifetime: u64,
        now: u64,
    ) -> Result<RevokedSession, AuthError> {
        let mut v = key.validation.clone();
        v.set_required_spec_claims(&["iss", "aud"]);
        v.validate_exp = false;
        let c = jsonwebtoken::decode::<RawSetClaims>(token, &key.key, &v)
            .map_err(map_jwt_error)?
            .claims;
        if c.exp.is_some_and(|exp| exp + self.leeway < now) {
            return Err(AuthError::Expired);
        }
        let events = c.events.ok_or(AuthError::MissingClaim("events"))?;
        let event = events
            .get(CAEP_SESSION_REVOKED)
            .filter(|e| e.is_object())
            .ok_or(AuthError::WrongTokenKind)?;
        // SSF puts the subject in `sub_id`; drafts put it in the event.
        let sub_id = c
            .sub_id
            .or_else(|| event.get("subject").cloned())
            .ok_or(AuthError::MissingClaim("sub"))?;
        let (subject_iss, sub, sid) = subject(&sub_id);
        if subject_iss
            .as_ref()
            .is_some_and(|i| i.is_empty() || i.len() > 255)
        {
            return Err(AuthError::BadClaims);
        }
        let iat = c.iat.unwrap_or(0);
        // An event without `exp` could be replayed once its `jti` is
        // forgotten; one older than the `jti` memory is refused instead.
        if iat + max_lifetime < now {
            return Err(AuthError::Expired);
        }
        let (jti, sub, sid) = self.event_claims(c.iat, c.jti, sub, sid, now)?;
        Ok(RevokedSession {
            issuer: self.id,
            subject_iss,
            sub,
            sid,
            jti,
            keep_until: (iat + max_lifetime + self.leeway) as i64,
        })
    }

    /// What every token announcing a logout must carry (logout tokens,
    /// security events): an `iat` not in the future, a `jti`, and a user
    /// and/or a session of sane length.
    #[allow(clippy::type_complexity)]
    fn event_claims(
        &self,
        iat: Option<u64>,
        jti: Option<String>,
        sub: Option<String>,
        sid: Option<String>,
        now: u64,
    ) -> Result<(String, Option<String>, Option<String>), AuthError> {
        let iat = iat.ok_or(AuthError::MissingClaim("iat"))?;
        if iat > now + self.leeway {
            return Err(AuthError::NotYetValid);
        }
        let jti = jti
            .filter(|j| !j.is_empty() && j.len() <= 255)
            .ok_or(AuthError::MissingClaim("jti"))?;
        let sub = sub.filter(|s| !s.is_empty());
        let sid = sid.filter(|s| !s.is_empty());
        if sub.is_none() && sid.is_none() {
            return Err(AuthError::MissingClaim("sub"));
        }
        if [&sub, &sid]
            .iter()
            .any(|v| v.as_ref().is_some_and(|s| s.len() > 255))
        {
            return Err(AuthError::BadClaims);
        }
        Ok((jti, sub, sid))
    }

    /// Signature and claims. `now` is seconds since the epoch.
    pub fn verify_with(
        &self,
        token: &str,
        key: &VerifyKey,
        max_lifetime: u64,
        now: u64,
    ) -> Result<Principal, AuthError> {
        let data = jsonwebtoken::decode::<AccessClaims>(token, &key.key, &key.validation)
            .map_err(map_jwt_error)?;
        let c = data.claims;
        let exp = c.exp.ok_or(AuthError::MissingClaim("exp"))?;
        if c.events.is_some() {
            // A logout token / SET carries `events`; it must never act as an access token.
            return Err(AuthError::WrongTokenKind);
        }
        let sub = c
            .sub
            .filter(|s| !s.is_empty())
            .ok_or(AuthError::MissingClaim("sub"))?;
        // The logout watermark compares against iat, so it is required here.
        let iat = c.iat.ok_or(AuthError::MissingClaim("iat"))?;
        if iat > now + self.leeway {
            return Err(AuthError::NotYetValid);
        }
        if exp.saturating_sub(iat) > max_lifetime {
            return Err(AuthError::LifetimeTooLong);
        }
        if sub.len() > 255 || c.sid.as_ref().is_some_and(|s| s.len() > 255) {
            return Err(AuthError::BadClaims);
        }
        let aud: Vec<Box<str>> = match c.aud {
            Some(serde_json::Value::String(a)) => vec![a.into()],
            Some(serde_json::Value::Array(list)) => list
                .into_iter()
                .filter_map(|v| v.as_str().map(Into::into))
                .collect(),
            _ => Vec::new(),
        };
        Ok(Principal {
            issuer: self.id,
            sub: sub.into(),
            sid: c.sid.filter(|s| !s.is_empty()).map(Into::into),
            iat: iat as i64,
            exp: exp as i64,
            client_id: c.client_id.or(c.azp),
            aud: aud.into(),
        })
    }
}

/// Parses a PEM public key of any supported family.
pub fn decoding_key_from_pem(pem: &[u8]) -> Result<DecodingKey, String> {
    DecodingKey::from_rsa_pem(pem)
        .or_else(|_| DecodingKey::from_ec_pem(pem))
        .or_else(|_| DecodingKey::from_ed_pem(pem))
        .map_err(|e| format!("not a supported PEM public key: {e}"))
}

/// Splits a compact JWS and checks everything that needs no key.
/// Returns the header, the algorithm and the unverified `iss` (for issuer selection only).
pub fn inspect(token: &str) -> Result<(RawHeader, Algorithm, Option<String>), AuthError> {
    if token.len() > MAX_TOKEN_BYTES {
        return Err(AuthError::TooLarge);
    }
    let mut parts = token.split('.');
    let (Some(h), Some(p), Some(s), None) =
        (parts.next(), parts.next(), parts.next(), parts.next())
    else {
        return Err(AuthError::Malformed);
    };
    if h.is_empty() || p.is_empty() || s.is_empty() {
        return Err(AuthError::Malformed);
    }
    let header_bytes = URL_SAFE_NO_PAD
        .decode(h)
        .map_err(|_| AuthError::Malformed)?;
    let header: RawHeader =
        serde_json::from_slice(&header_bytes).map_err(|_| AuthError::Malformed)?;
    if header.crit.is_some() {
        // RFC 7515 §4.1.11: we understand no extensions, so any `crit` is fatal.
        return Err(AuthError::UnsupportedCritical);
    }
    let alg = parse_alg(&header.alg).ok_or(AuthError::AlgorithmNotAllowed)?;
    if let Some(kid) = &header.kid {
        let ok = !kid.is_empty()
            && kid.len() <= 256
            && kid
                .bytes()
                .all(|b| b.is_ascii_graphic() && b != b'/' && b != b'\\');
        if !ok {
            // Path or injection characters: not a key id of any issuer.
            return Err(AuthError::Malformed);
        }
    }
    let payload = URL_SAFE_NO_PAD
        .decode(p)
        .map_err(|_| AuthError::Malformed)?;
    let peek: PeekIss = serde_json::from_slice(&payload).map_err(|_| AuthError::Malformed)?;
    Ok((header, alg, peek.iss))
}

/// Exact, case-sensitive algorithm names (RFC 7518); `none` in any case is not one.
pub fn parse_alg(name: &str) -> Option<Algorithm> {
    Some(match name {
        "HS256" => Algorithm::HS256,
        "HS384" => Algorithm::HS384,
        "HS512" => Algorithm::HS512,
        "RS256" => Algorithm::RS256,
        "RS384" => Algorithm::RS384,
        "RS512" => Algorithm::RS512,
        "PS256" => Algorithm::PS256,
        "PS384" => Algorithm::PS384,
        "PS512" => Algorithm::PS512,
        "ES256" => Algorithm::ES256,
        "ES384" => Algorithm::ES384,
        "EdDSA" => Algorithm::EdDSA,
        _ => return None,
    })
}

pub(crate) fn map_jwt_error(e: jsonwebtoken::errors::Error) -> AuthError {
    match e.kind() {
        ErrorKind::InvalidSignature => AuthError::BadSignature,
        ErrorKind::ExpiredSignature => AuthError::Expired,
        ErrorKind::ImmatureSignature => AuthError::NotYetValid,
        ErrorKind::InvalidAudience => AuthError::WrongAudience,
        ErrorKind::InvalidIssuer => AuthError::WrongIssuer,
        ErrorKind::InvalidAlgorithm
        | ErrorKind::InvalidAlgorithmName
        | ErrorKind::MissingAlgorithm
        | ErrorKind::UnsupportedAlgorithm => AuthError::AlgorithmNotAllowed,
        ErrorKind::MissingRequiredClaim(c) => AuthError::MissingClaim(match c.as_str() {
            "exp" => "exp",
            "iss" => "iss",
            "aud" => "aud",
            "sub" => "sub",
            "iat" => "iat",
            _ => "unknown",
        }),
        ErrorKind::InvalidClaimFormat(_) | ErrorKind::Json(_) => AuthError::BadClaims,
        ErrorKind::InvalidKeyFormat
        | ErrorKind::InvalidRsaKey(_)
        | ErrorKind::InvalidEcdsaKey
        | ErrorKind::InvalidEddsaKey => AuthError::BadSignature,
        _ => AuthError::Malformed,
    }
}

#[cfg(test)]
mod tests;
