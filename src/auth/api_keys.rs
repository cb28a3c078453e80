//! Backend API keys: random strings whose SHA-256 is all the hub stores.
//!
//! A presented key is hashed and compared with every configured hash in
//! constant time (`subtle`), and the loop never stops early, so response time
//! says nothing about which key or how many bytes matched.

use std::sync::Arc;

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use ring::digest;
use subtle::ConstantTimeEq;

use crate::config::ApiKeySettings;
use crate::error::AuthError;

/// Every key starts with this, which also tells it apart from a JWT (no dots).
pub const KEY_PREFIX: &str = "slo_";

/// A configured key, as a verified request sees it.
#[derive(Debug)]
pub struct ApiKey {
    pub name: String,
    hash: [u8; 32],
    scopes: Vec<String>,
}

impl ApiKey {
    /// `admin` carries every other scope (an operator at the console).
    pub fn has_scope(&self, scope: &str) -> bool {
        self.scopes.iter().any(|s| s == scope || s == "admin")
    }

    /// `Ok` if the key carries `scope`, else `MissingScope` (403).
    pub fn require(&self, scope: &'static str) -> Result<(), AuthError> {
        if self.has_scope(scope) {
            Ok(())
        } else {
            Err(AuthError::MissingScope(scope))
        }
    }
}

#[derive(Default)]
pub struct ApiKeys {
    keys: Vec<Arc<ApiKey>>,
}

impl ApiKeys {
    pub fn new(settings: &[ApiKeySettings]) -> ApiKeys {
        let keys = settings
            .iter()
            .map(|s| {
                let mut hash = [0u8; 32];
                // Validated as 64 hex digits by config::validate.
                for (i, b) in hash.iter_mut().enumerate() {
                    *b = u8::from_str_radix(&s.sha256[2 * i..2 * i + 2], 16).unwrap_or(0);
                }
                Arc::new(ApiKey {
                    name: s.name.clone(),
                    hash,
                    scopes: s.scopes.clone(),
                })
            })
            .collect();
        ApiKeys { keys }
    }

    /// Adds a key at run time (the dev-mode key printed at start).
    pub fn add(&mut self, name: &str, key: &str, scopes: &[&str]) {
        self.keys.push(Arc::new(ApiKey {
            name: name.to_string(),
            hash: sha256(key),
            scopes: scopes.iter().map(|s| s.to_string()).collect(),
        }));
    }

    pub fn verify(&self, presented: &str) -> Result<Arc<ApiKey>, AuthError> {
        let hash = sha256(presented);
        let mut found: Option<&Arc<ApiKey>> = None;
        for k in &self.keys {
            let eq: bool = k.hash.ct_eq(&hash).into();
            if eq {
                found = Some(k);
            }
        }
        found.cloned().ok_or(AuthError::BadApiKey)
    }
}

fn sha256(s: &str) -> [u8; 32] {
    let d = digest::digest(&digest::SHA256, s.as_bytes());
    let mut out = [0u8; 32];
    out.copy_from_slice(d.as_ref());
    out
}

/// A new random key and its hex SHA-256 (for `slo-hub gen-api-key`).
pub fn generate() -> (String, String) {
    let bytes: [u8; 32] = crate::util::random_bytes();
    let key = format!("{KEY_PREFIX}{}", URL_SAFE_NO_PAD.encode(bytes));
    let hex = hex(&sha256(&key));
    (key, hex)
}

/// Lowercase hex (by table: it runs once per logout, for the event id).
pub fn hex(bytes: &[u8]) -> String {
    const DIGITS: &[u8; 16] = b"0123456789abcdef";
    let mut s = String::with_capacity(bytes.len() * 2);
    for b in bytes {
        s.push(DIGITS[(b >> 4) as usize] as char);
        s.push(DIGITS[(b & 15) as usize] as char);
    }
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hex_is_lowercase_two_digits_per_byte() {
        assert_eq!(hex(&[0x00, 0x0f, 0xab, 0xff]), "000fabff");
    }

    #[test]
    fn only_the_configured_key_verifies() {
        let (key, hash) = generate();
        let keys = ApiKeys::new(&[ApiKeySettings {
            name: "backend".into(),
            sha256: hash,
            scopes: vec!["logout:any".into()],
        }]);
        let k = keys.verify(&key).unwrap();
        assert_eq!(k.name, "backend");
        assert!(k.require("logout:any").is_ok());
        assert_eq!(k.require("revoke"), Err(AuthError::MissingScope("revoke")));
        assert_eq!(keys.verify("slo_wrong").unwrap_err(), AuthError::BadApiKey);
        let mut almost = key.clone();
        almost.pop();
        assert_eq!(keys.verify(&almost).unwrap_err(), AuthError::BadApiKey);
    }
}
