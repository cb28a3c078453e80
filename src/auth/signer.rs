//! An Ed25519 key the hub signs JWTs with, kept in the data directory.
//!
//! Two issuers use one: the dev issuer (demo access tokens) and the hub's
//! own session issuer (tokens of transfer-created web sessions). Each key is
//! created on first start (PKCS#8, mode 0600, written atomically) and read
//! back on later starts, so tokens stay valid across restarts. Its public
//! half is a JWK (served at `/.well-known/jwks.json`) and, to the
//! authenticator, a static key of an ordinary issuer.
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

#[derive(Debug, thiserror::Error)]
pub enum SignerError {
    #[error("signing key {path}: {reason}")]
    Key { path: PathBuf, reason: String },
}

pub struct Signer {
    pub iss: String,
    kid: String,
    public: Vec<u8>,
    encoding: EncodingKey,
}

impl Signer {
    /// Loads `data_dir/file`, creating the key on first start. `kid_prefix`
    /// makes the two keys' ids tell which is which.
    pub fn load_or_create(
        data_dir: &Path,
        file: &str,
        kid_prefix: &str,
        iss: String,
    ) -> Result<Signer, SignerError> {
        let path = data_dir.join(file);
        let err = |reason: String| SignerError::Key {
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
                tracing::info!(path = %path.display(), "created signing key");
                doc.as_ref().to_vec()
            }
            Err(e) => return Err(err(e.to_string())),
        };
        let pair = Ed25519KeyPair::from_pkcs8_maybe_unchecked(&pkcs8).map_err(|_| {
            err("not an Ed25519 PKCS#8 key; move it away to create a new one".into())
        })?;
        let public = pair.public_key().as_ref().to_vec();
        let digest = ring::digest::digest(&ring::digest::SHA256, &public);
        let kid = format!(
            "{kid_prefix}-{}",
            &URL_SAFE_NO_PAD.encode(digest.as_ref())[..16]
        );
        Ok(Signer {
            iss,
            kid,
            public,
            encoding: EncodingKey::from_ed_der(&pkcs8),
        })
    }

    /// The public key as a JWK.
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

    /// How the authenticator trusts tokens of this key for `audiences`.
    pub fn issuer_settings(&self, audiences: Vec<String>) -> IssuerSettings {
        IssuerSettings {
            issuer: self.iss.clone(),
            audiences,
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

    /// Signs `claims` (EdDSA, with this key's `kid`, `typ: JWT`).
    pub fn sign(&self, claims: &Value) -> String {
        self.sign_typed(claims, "JWT")
    }

    /// Signs `claims` with an explicit `typ` (e.g. `logout+jwt`, RFC 8725 §3.11).
    pub fn sign_typed(&self, claims: &Value, typ: &str) -> String {
        let mut header = Header::new(Algorithm::EdDSA);
        header.kid = Some(self.kid.clone());
        header.typ = Some(typ.to_string());
        // Signing JSON with a key we parsed at start cannot fail.
        jsonwebtoken::encode(&header, claims, &self.encoding).expect("Ed25519 signing failed")
    }
}
