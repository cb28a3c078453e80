//! The built-in dev issuer: signs access tokens for demo users so the demo and
//! the tests need no identity provider.
//!
//! Its Ed25519 key lives in `data_dir/dev-issuer.ed25519.pk8` (created on
//! first start, mode 0600), so tokens stay valid across restarts. It is just
//! another issuer to the rest of the hub (a static key), and it exists only
//! when `dev.issuer` is on; the HTTP layer answers `/dev/token` to loopback
//! peers only.
//!
//! Must not: overwrite or silently replace an existing key file it cannot read.

use std::fs;
use std::path::{Path, PathBuf};

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use jsonwebtoken::{Algorithm, EncodingKey, Header};
use ring::signature::{Ed25519KeyPair, KeyPair};
use serde_json::{Value, json};

use crate::config::{IssuerSettings, StaticKey};
use crate::util;

const KEY_FILE: &str = "dev-issuer.ed25519.pk8";
/// Audience of dev tokens.
pub const DEV_AUDIENCE: &str = "slo-hub-dev";
/// Lifetime of dev tokens.
pub const DEV_TOKEN_TTL_SECS: u64 = 3600;

#[derive(Debug, thiserror::Error)]
pub enum DevIssuerError {
    #[error("dev issuer key {path}: {reason}")]
    Key { path: PathBuf, reason: String },
}

pub struct DevIssuer {
    pub iss: String,
    kid: String,
    public: Vec<u8>,
    encoding: EncodingKey,
}

impl DevIssuer {
    /// Loads the key from `data_dir`, creating it on first start.
    pub fn load_or_create(data_dir: &Path, iss: String) -> Result<DevIssuer, DevIssuerError> {
        let path = data_dir.join(KEY_FILE);
        let err = |reason: String| DevIssuerError::Key {
            path: path.clone(),
            reason,
        };
        let pkcs8 = match fs::read(&path) {
            Ok(bytes) => bytes,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                let rng = ring::rand::SystemRandom::new();
                let doc = Ed25519KeyPair::generate_pkcs8(&rng)
                    .map_err(|_| err("key generation failed".into()))?;
                util::write_private_file(&path, doc.as_ref()).map_err(|e| err(e.to_string()))?;
                tracing::info!(path = %path.display(), "created dev issuer key");
                doc.as_ref().to_vec()
            }
            Err(e) => return Err(err(e.to_string())),
        };
        let pair = Ed25519KeyPair::from_pkcs8_maybe_unchecked(&pkcs8).map_err(|_| {
            err("not an Ed25519 PKCS#8 key; move it away to create a new one".into())
        })?;
        let public = pair.public_key().as_ref().to_vec();
        let digest = ring::digest::digest(&ring::digest::SHA256, &public);
        let kid = format!("dev-{}", &URL_SAFE_NO_PAD.encode(digest.as_ref())[..16]);
        Ok(DevIssuer {
            iss,
            kid,
            public,
            encoding: EncodingKey::from_ed_der(&pkcs8),
        })
    }

    /// The public key as a JWK (published at `/.well-known/jwks.json`).
    pub fn jwk(&self) -> Value {
        json!({
            "kty": "OKP",
            "crv": "Ed25519",
            "x": URL_SAFE_NO_PAD.encode(&self.public),
            "kid": self.kid,
            "alg": "EdDSA",
            "use": "sig",
        })
    }

    /// How the authenticator should trust this issuer.
    pub fn issuer_settings(&self) -> IssuerSettings {
        IssuerSettings {
            issuer: self.iss.clone(),
            audiences: vec![DEV_AUDIENCE.to_string()],
            algorithms: vec![Algorithm::EdDSA],
            jwks_url: None,
            keys: vec![StaticKey {
                kid: Some(self.kid.clone()),
                pem: None,
                jwk: Some(self.jwk().to_string()),
            }],
            hs256_secret: None,
            leeway_secs: 5,
            jwks_min_refetch_secs: 30,
            require_logout_typ: false,
        }
    }

    /// Signs an access token. `sid` defaults to a fresh random session id, so
    /// every demo login is its own session. `iat` is the caller's.
    pub fn mint(&self, sub: &str, sid: Option<&str>, client_id: Option<&str>, iat: u64) -> String {
        let mut header = Header::new(Algorithm::EdDSA);
        header.kid = Some(self.kid.clone());
        let sid = sid
            .map(str::to_string)
            .unwrap_or_else(|| format!("dev-{}", &util::random_id()[..16]));
        let mut claims = json!({
            "iss": self.iss,
            "sub": sub,
            "aud": DEV_AUDIENCE,
            "iat": iat,
            "exp": iat + DEV_TOKEN_TTL_SECS,
            "sid": sid,
        });
        if let Some(c) = client_id {
            claims["client_id"] = json!(c);
        }
        // Signing with a key we just parsed cannot fail.
        jsonwebtoken::encode(&header, &claims, &self.encoding).expect("dev issuer signing failed")
    }
}
