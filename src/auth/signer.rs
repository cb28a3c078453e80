//! An Ed25519 key the hub signs JWTs with, kept in the data directory.
//!
//! Two issuers use one: the dev issuer (demo access tokens) and the hub's
//! own session issuer (tokens of transfer-created web sessions). Each key is
//! created on first start (PKCS#8, mode 0600, written atomically) and read
//! back on later starts, so tokens stay valid across restarts. Its public
//! half is a JWK (served at `/.well-known/jwks.json`) and, to the
//! authenticator, a static key of an ordinary issuer.
//!
//! Signing builds the JWS itself (header and claims serialized by serde,
//! signed by ring) with the key pair parsed once at start, because
//! `jsonwebtoken::encode` re-parses the PKCS#8 key on every call (about half
//! a signature's cost; bench/README.md). Verification stays with
//! `jsonwebtoken`.
//!
//! Must not: overwrite or silently replace an existing key file it cannot read.

use std::fs;
use std::path::{Path, PathBuf};

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use jsonwebtoken::{Algorithm, Header};
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
    pair: Ed25519KeyPair,
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
        Signer::from_pkcs8(&pkcs8, kid_prefix, iss).ok_or_else(|| {
            err("not an Ed25519 PKCS#8 key; move it away to create a new one".into())
        })
    }

    /// A new Ed25519 key (PKCS#8), for a signer several nodes share.
    pub fn generate_pkcs8() -> Vec<u8> {
        let rng = ring::rand::SystemRandom::new();
        // Only fails if the OS random source does, as `util::random_bytes`.
        Ed25519KeyPair::generate_pkcs8(&rng)
            .expect("the operating system's random number generator failed")
            .as_ref()
            .to_vec()
    }

    /// A signer from an Ed25519 PKCS#8 key; `None` if it is not one.
    pub fn from_pkcs8(pkcs8: &[u8], kid_prefix: &str, iss: String) -> Option<Signer> {
        let pair = Ed25519KeyPair::from_pkcs8_maybe_unchecked(pkcs8).ok()?;
        let public = pair.public_key().as_ref().to_vec();
        let digest = ring::digest::digest(&ring::digest::SHA256, &public);
        let kid = format!(
            "{kid_prefix}-{}",
            &URL_SAFE_NO_PAD.encode(digest.as_ref())[..16]
        );
        Some(Signer {
            iss,
            kid,
            public,
            pair,
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
            speaks_for: vec![],
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
        // RFC 7515 §7.1: BASE64URL(header) "." BASE64URL(payload) "." BASE64URL(signature).
        let mut jws = String::with_capacity(512);
        for part in [json_bytes(&header), json_bytes(claims)] {
            if !jws.is_empty() {
                jws.push('.');
            }
            URL_SAFE_NO_PAD.encode_string(part, &mut jws);
        }
        let signature = self.pair.sign(jws.as_bytes());
        jws.push('.');
        URL_SAFE_NO_PAD.encode_string(signature.as_ref(), &mut jws);
        jws
    }
}

fn json_bytes<T: serde::Serialize + ?Sized>(value: &T) -> Vec<u8> {
    // A `Header` and a `serde_json::Value` always serialize.
    serde_json::to_vec(value).expect("JSON serialization of a header or claims")
}

#[cfg(test)]
mod tests {
    use super::*;
    use jsonwebtoken::{DecodingKey, Validation};

    #[test]
    fn tokens_verify_with_jsonwebtoken_and_carry_kid_and_typ() {
        crate::auth::crypto::install();
        let dir = tempfile::tempdir().unwrap();
        let signer =
            Signer::load_or_create(dir.path(), "k.der", "test", "https://hub".into()).unwrap();
        let token = signer.sign_typed(&json!({"sub": "alice", "iss": "https://hub"}), "logout+jwt");
        let header = jsonwebtoken::decode_header(&token).unwrap();
        assert_eq!(header.alg, Algorithm::EdDSA);
        assert_eq!(header.kid.as_deref(), Some(signer.kid.as_str()));
        assert_eq!(header.typ.as_deref(), Some("logout+jwt"));
        let key = DecodingKey::from_ed_der(&signer.public);
        let mut v = Validation::new(Algorithm::EdDSA);
        v.required_spec_claims.clear();
        v.validate_exp = false;
        v.validate_aud = false;
        let data = jsonwebtoken::decode::<Value>(&token, &key, &v).unwrap();
        assert_eq!(data.claims["sub"], "alice");

        // A token signed by another key does not verify with this one.
        let other = Signer::load_or_create(dir.path(), "o.der", "test", "x".into()).unwrap();
        let forged = other.sign(&json!({"sub": "alice"}));
        assert!(jsonwebtoken::decode::<Value>(&forged, &key, &v).is_err());
    }
}
