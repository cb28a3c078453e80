//! `[[issuers]]` and `[[api_keys]]`: whose tokens the hub trusts, and the
//! backends' keys.

use std::collections::BTreeSet;

use jsonwebtoken::Algorithm;

use serde::{Deserialize, Serialize};

use super::{Config, ConfigError, invalid, range};

/// One trusted JWT issuer.
#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct IssuerSettings {
    /// Exact `iss` value.
    pub issuer: String,
    /// Accepted `aud` values; a token must carry at least one of them.
    pub audiences: Vec<String>,
    /// Allowed algorithms. Default: RS256, ES256, EdDSA, plus HS256 if `hs256_secret` is set.
    #[serde(default)]
    pub algorithms: Vec<Algorithm>,
    /// JWKS document URL (keys cached, refetched on an unknown `kid`).
    #[serde(default)]
    pub jwks_url: Option<String>,
    /// Static public keys.
    #[serde(default)]
    pub keys: Vec<StaticKey>,
    /// Shared secret for HS256 (at least 32 bytes). HS256 is refused without it.
    #[serde(default)]
    pub hs256_secret: Option<String>,
    /// Clock leeway for `exp`, `nbf` and `iat`, in seconds.
    #[serde(default = "default_leeway")]
    pub leeway_secs: u64,
    /// Minimum seconds between two JWKS refetches caused by unknown `kid`s.
    #[serde(default = "default_jwks_refetch")]
    pub jwks_min_refetch_secs: u64,
    /// Refuse back-channel logout tokens without `typ: logout+jwt`
    /// (OpenID Back-Channel Logout 1.0 §2.4 recommends the explicit type).
    #[serde(default)]
    pub require_logout_typ: bool,
    /// Other configured issuers whose users this issuer's security events
    /// (CAEP `iss_sub` subjects) may name; by default only its own.
    #[serde(default)]
    pub speaks_for: Vec<String>,
}

fn default_leeway() -> u64 {
    5
}

fn default_jwks_refetch() -> u64 {
    30
}

/// A static verification key: a PEM public key or a JWK (JSON text).
#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct StaticKey {
    #[serde(default)]
    pub kid: Option<String>,
    #[serde(default)]
    pub pem: Option<String>,
    #[serde(default)]
    pub jwk: Option<String>,
}

#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ApiKeySettings {
    /// Shown in logs and metrics instead of the key.
    pub name: String,
    /// Hex SHA-256 of the key (`slo-hub gen-api-key` prints both).
    pub sha256: String,
    /// `logout:any`, `revoke`, `audit:read`, `admin` (the console and the
    /// admin API; it includes the three others).
    pub scopes: Vec<String>,
}

/// Scopes an API key may carry.
pub const API_SCOPES: &[&str] = &["logout:any", "revoke", "audit:read", "admin"];

impl Config {
    /// Issuers and API keys.
    pub(super) fn validate_identity(&self) -> Result<(), ConfigError> {
        let mut seen = BTreeSet::new();
        for (i, iss) in self.issuers.iter().enumerate() {
            let key = |k: &str| format!("issuers[{i}].{k}");
            if iss.issuer.is_empty() {
                return Err(invalid(key("issuer"), "must not be empty"));
            }
            if !seen.insert(iss.issuer.as_str()) {
                return Err(invalid(
                    key("issuer"),
                    format!("{:?} is configured twice", iss.issuer),
                ));
            }
            if iss.audiences.is_empty() {
                return Err(invalid(
                    key("audiences"),
                    "at least one audience is required",
                ));
            }
            if iss.jwks_url.is_none() && iss.keys.is_empty() && iss.hs256_secret.is_none() {
                return Err(invalid(
                    key("jwks_url"),
                    "an issuer needs jwks_url, keys or hs256_secret",
                ));
            }
            if let Some(url) = &iss.jwks_url
                && !(url.starts_with("https://") || url.starts_with("http://"))
            {
                return Err(invalid(key("jwks_url"), "must be an http(s) URL"));
            }
            if iss.hs256_secret.as_ref().is_some_and(|s| s.len() < 32) {
                return Err(invalid(
                    key("hs256_secret"),
                    "must be at least 32 bytes (RFC 7518 §3.2)",
                ));
            }
            for alg in &iss.algorithms {
                let hmac = matches!(alg, Algorithm::HS256 | Algorithm::HS384 | Algorithm::HS512);
                if hmac && iss.hs256_secret.is_none() {
                    return Err(invalid(
                        key("algorithms"),
                        format!("{alg:?} needs hs256_secret"),
                    ));
                }
            }
            for (k, sk) in iss.keys.iter().enumerate() {
                if sk.pem.is_some() == sk.jwk.is_some() {
                    return Err(invalid(
                        format!("issuers[{i}].keys[{k}]"),
                        "set exactly one of pem and jwk",
                    ));
                }
            }
            range(key("leeway_secs").as_str(), iss.leeway_secs, 0, 300)?;
        }
        let mut names = BTreeSet::new();
        for (i, k) in self.api_keys.iter().enumerate() {
            if !names.insert(k.name.as_str()) {
                return Err(invalid(
                    format!("api_keys[{i}].name"),
                    format!("{:?} is used twice", k.name),
                ));
            }
            let hex_ok = k.sha256.len() == 64 && k.sha256.bytes().all(|b| b.is_ascii_hexdigit());
            if !hex_ok {
                return Err(invalid(
                    format!("api_keys[{i}].sha256"),
                    "must be 64 hex digits (the SHA-256 of the key)",
                ));
            }
            for s in &k.scopes {
                if !API_SCOPES.contains(&s.as_str()) {
                    return Err(invalid(
                        format!("api_keys[{i}].scopes"),
                        format!("unknown scope {s:?}; known: {}", API_SCOPES.join(", ")),
                    ));
                }
            }
        }
        Ok(())
    }
}
