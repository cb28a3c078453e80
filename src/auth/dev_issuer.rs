//! The built-in dev issuer: signs access tokens for demo users so the demo and
//! the tests need no identity provider.
//!
//! Its key (a [`Signer`]) lives in `data_dir/dev-issuer.ed25519.pk8`, so
//! tokens stay valid across restarts. It is just another issuer to the rest
//! of the hub (a static key), and it exists only when `dev.issuer` is on; the
//! HTTP layer answers `/dev/token` to loopback peers only.

use std::path::Path;

use serde_json::{Value, json};

use super::signer::{Signer, SignerError};
use crate::config::IssuerSettings;
use crate::util;

pub const KEY_FILE: &str = "dev-issuer.ed25519.pk8";
/// Audience of dev tokens.
pub const DEV_AUDIENCE: &str = "slo-hub-dev";
/// Lifetime of dev tokens.
pub const DEV_TOKEN_TTL_SECS: u64 = 3600;

pub struct DevIssuer {
    signer: Signer,
}

impl DevIssuer {
    /// Loads the key from `data_dir`, creating it on first start.
    pub fn load_or_create(data_dir: &Path, iss: String) -> Result<DevIssuer, SignerError> {
        Ok(DevIssuer {
            signer: Signer::load_or_create(data_dir, KEY_FILE, "dev", iss)?,
        })
    }

    /// With a key of its own (shared by the nodes of a cluster).
    pub fn with_signer(signer: Signer) -> DevIssuer {
        DevIssuer { signer }
    }

    pub fn iss(&self) -> &str {
        &self.signer.iss
    }

    /// The public key as a JWK (published at `/.well-known/jwks.json`).
    pub fn jwk(&self) -> Value {
        self.signer.jwk()
    }

    /// How the authenticator should trust this issuer.
    pub fn issuer_settings(&self) -> IssuerSettings {
        self.signer.issuer_settings(vec![DEV_AUDIENCE.to_string()])
    }

    /// Signs an access token. `sid` defaults to a fresh random session id, so
    /// every demo login is its own session. `iat` is the caller's.
    pub fn mint(&self, sub: &str, sid: Option<&str>, client_id: Option<&str>, iat: u64) -> String {
        let sid = sid
            .map(str::to_string)
            .unwrap_or_else(|| format!("dev-{}", &util::random_id()[..16]));
        let mut claims = json!({
            "iss": self.signer.iss,
            "sub": sub,
            "aud": DEV_AUDIENCE,
            "iat": iat,
            "exp": iat + DEV_TOKEN_TTL_SECS,
            "sid": sid,
        });
        if let Some(c) = client_id {
            claims["client_id"] = json!(c);
        }
        self.signer.sign(&claims)
    }
}
