//! OAuth client authentication at the token endpoint (RFC 6749 §2.3).
//!
//! A client with a secret or keys configured is *confidential* and must
//! prove it on every token request: `client_secret_basic` (HTTP Basic),
//! `client_secret_post` (`client_secret`), or `private_key_jwt` (RFC 7523:
//! a `client_assertion` JWT signed by one of its keys, `iss` = `sub` = the
//! client, `aud` = the token endpoint or the hub, short-lived, its `jti`
//! used once). A client with neither is *public*: it names itself with
//! `client_id` and is trusted for nothing a public client cannot prove.
//!
//! Secrets are kept as SHA-256 digests and compared in constant time.
//!
//! Must not: decide what an authenticated client may do (the grant does).

use std::collections::HashMap;

use jsonwebtoken::jwk::Jwk;
use jsonwebtoken::{Algorithm, DecodingKey, Validation};
use serde::Deserialize;
use subtle::ConstantTimeEq;

use crate::config::ClientSettings;

pub const ASSERTION_TYPE: &str = "urn:ietf:params:oauth:client-assertion-type:jwt-bearer";
/// Longest lifetime (`exp` from now) a client assertion may claim.
const MAX_ASSERTION_SECS: u64 = 300;

/// Why a client was not authenticated: `invalid_client` (401) unless said.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ClientAuthError {
    #[error("unknown client_id")]
    Unknown,
    #[error("this client is confidential: authenticate with its secret or a client assertion")]
    Required,
    #[error("the client credentials are wrong")]
    Wrong,
    #[error("the client assertion was refused: {0}")]
    Assertion(String),
    /// More than one method, or a malformed one: `invalid_request` (400).
    #[error("{0}")]
    Malformed(&'static str),
}

struct Creds {
    secret: Option<[u8; 32]>,
    keys: Vec<(Option<String>, DecodingKey)>,
}

/// What a token request presented to identify its client.
#[derive(Default, Debug)]
pub struct Presented<'a> {
    pub client_id: Option<&'a str>,
    /// From `Authorization: Basic` (already URL-decoded): id and secret.
    pub basic: Option<(String, String)>,
    pub client_secret: Option<&'a str>,
    pub assertion_type: Option<&'a str>,
    pub assertion: Option<&'a str>,
}

#[derive(Deserialize)]
struct AssertionClaims {
    sub: String,
    jti: Option<String>,
    exp: u64,
}

/// A verified client assertion: the client, and its `jti` to be used once.
#[derive(Debug)]
pub struct AssertionUse {
    pub jti: String,
    pub expires_at_ms: i64,
}

pub struct ClientAuth {
    creds: HashMap<String, Creds>,
    /// Values an assertion's `aud` may carry: the token endpoint, the hub.
    audiences: Vec<String>,
}

fn sha256(s: &str) -> [u8; 32] {
    let d = ring::digest::digest(&ring::digest::SHA256, s.as_bytes());
    let mut out = [0u8; 32];
    out.copy_from_slice(d.as_ref());
    out
}

impl ClientAuth {
    /// From validated settings; `public_url`: the hub's issuer.
    pub fn new(clients: &[ClientSettings], public_url: &str) -> Result<ClientAuth, String> {
        let mut creds = HashMap::new();
        for c in clients.iter().filter(|c| c.is_confidential()) {
            let secret = c.client_secret_sha256.as_ref().map(|h| {
                let mut out = [0u8; 32];
                for (i, b) in out.iter_mut().enumerate() {
                    *b = u8::from_str_radix(&h[2 * i..2 * i + 2], 16).unwrap_or(0);
                }
                out
            });
            let mut keys = Vec::new();
            for (j, k) in c.client_keys.iter().enumerate() {
                let at = || format!("clients[{}].client_keys[{j}]", c.client_id);
                let key = match (&k.pem, &k.jwk) {
                    (Some(pem), _) => crate::auth::jwt::decoding_key_from_pem(pem.as_bytes())
                        .map_err(|e| format!("{}: {e}", at()))?,
                    (None, Some(jwk)) => {
                        let jwk: Jwk =
                            serde_json::from_str(jwk).map_err(|e| format!("{}: {e}", at()))?;
                        DecodingKey::from_jwk(&jwk).map_err(|e| format!("{}: {e}", at()))?
                    }
                    (None, None) => return Err(format!("{}: no key", at())),
                };
                keys.push((k.kid.clone(), key));
            }
            creds.insert(c.client_id.clone(), Creds { secret, keys });
        }
        Ok(ClientAuth {
            creds,
            audiences: vec![format!("{public_url}/oauth/token"), public_url.to_string()],
        })
    }

    /// The authenticated (or, for a public client, named) client, and an
    /// assertion's `jti` the caller must claim once. `known`: whether a
    /// client id is registered.
    pub fn authenticate(
        &self,
        p: &Presented<'_>,
        known: impl Fn(&str) -> bool,
        now: u64,
    ) -> Result<(String, Option<AssertionUse>), ClientAuthError> {
        let methods = [
            p.basic.is_some(),
            p.client_secret.is_some(),
            p.assertion.is_some() || p.assertion_type.is_some(),
        ];
        if methods.iter().filter(|m| **m).count() > 1 {
            return Err(ClientAuthError::Malformed(
                "use one client authentication method per request",
            ));
        }
        if let Some((id, secret)) = &p.basic {
            if p.client_id.is_some_and(|c| c != id) {
                return Err(ClientAuthError::Malformed(
                    "client_id differs from the Basic credentials",
                ));
            }
            return self.check_secret(id, secret).map(|()| (id.clone(), None));
        }
        if p.assertion.is_some() || p.assertion_type.is_some() {
            if p.assertion_type != Some(ASSERTION_TYPE) {
                return Err(ClientAuthError::Malformed(
                    "client_assertion_type must be urn:ietf:params:oauth:client-assertion-type:jwt-bearer",
                ));
            }
            let assertion = p
                .assertion
                .ok_or(ClientAuthError::Malformed("client_assertion is missing"))?;
            return self.check_assertion(assertion, p.client_id, now);
        }
        let id = p
            .client_id
            .ok_or(ClientAuthError::Malformed("missing parameter client_id"))?;
        if let Some(secret) = p.client_secret {
            return self
                .check_secret(id, secret)
                .map(|()| (id.to_string(), None));
        }
        if !known(id) {
            return Err(ClientAuthError::Unknown);
        }
        if self.creds.contains_key(id) {
            return Err(ClientAuthError::Required);
        }
        Ok((id.to_string(), None))
    }

    fn check_secret(&self, id: &str, secret: &str) -> Result<(), ClientAuthError> {
        let presented = sha256(secret);
        // Hash and compare even for an unknown client, so timing says nothing.
        let stored = self.creds.get(id).and_then(|c| c.secret);
        let eq: bool = stored.unwrap_or([0; 32]).ct_eq(&presented).into();
        if eq && stored.is_some() {
            Ok(())
        } else {
            Err(ClientAuthError::Wrong)
        }
    }

    fn check_assertion(
        &self,
        assertion: &str,
        client_id: Option<&str>,
        now: u64,
    ) -> Result<(String, Option<AssertionUse>), ClientAuthError> {
        let refuse = |why: &str| ClientAuthError::Assertion(why.to_string());
        let (header, alg, iss) =
            crate::auth::jwt::inspect(assertion).map_err(|e| refuse(&e.to_string()))?;
        let iss = iss.ok_or_else(|| refuse("no iss"))?;
        if client_id.is_some_and(|c| c != iss) {
            return Err(ClientAuthError::Malformed(
                "client_id differs from the assertion's issuer",
            ));
        }
        let creds = self.creds.get(&iss).ok_or(ClientAuthError::Wrong)?;
        if matches!(alg, Algorithm::HS256 | Algorithm::HS384 | Algorithm::HS512) {
            return Err(refuse("private_key_jwt needs an asymmetric algorithm"));
        }
        let candidates = creds
            .keys
            .iter()
            .filter(|(kid, _)| header.kid.is_none() || kid.is_none() || *kid == header.kid);
        let mut last = refuse("no key of this client matches");
        for (_, key) in candidates {
            let mut v = Validation::new(alg);
            v.set_issuer(&[&iss]);
            v.set_audience(&self.audiences);
            v.set_required_spec_claims(&["exp", "iss", "aud", "sub"]);
            v.leeway = 5;
            match jsonwebtoken::decode::<AssertionClaims>(assertion, key, &v) {
                Ok(data) => {
                    let c = data.claims;
                    if c.sub != iss {
                        return Err(refuse("sub must be the client_id"));
                    }
                    if c.exp > now + MAX_ASSERTION_SECS {
                        return Err(refuse("the assertion lives longer than 5 minutes"));
                    }
                    let jti = c
                        .jti
                        .filter(|j| !j.is_empty() && j.len() <= 255)
                        .ok_or_else(|| refuse("no jti"))?;
                    let used = AssertionUse {
                        jti,
                        expires_at_ms: (c.exp as i64 + 60) * 1000,
                    };
                    return Ok((iss, Some(used)));
                }
                Err(e) => last = refuse(&crate::auth::jwt::map_jwt_error(e).to_string()),
            }
        }
        Err(last)
    }
}

/// Client credentials from an `Authorization: Basic` header value: the
/// id and secret are form-urlencoded (RFC 6749 §2.3.1).
pub fn basic_credentials(value: &str) -> Option<(String, String)> {
    use base64::Engine;
    let (scheme, b64) = value.split_once(' ')?;
    if !scheme.eq_ignore_ascii_case("basic") {
        return None;
    }
    let raw = base64::engine::general_purpose::STANDARD
        .decode(b64.trim())
        .ok()?;
    let text = String::from_utf8(raw).ok()?;
    let (id, secret) = text.split_once(':')?;
    let decode = |s: &str| {
        form_urlencoded::parse(format!("x={s}").as_bytes())
            .next()
            .map(|(_, v)| v.into_owned())
    };
    Some((decode(id)?, decode(secret)?))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::ClientKind;

    fn auth() -> ClientAuth {
        let mut c = ClientSettings::new("conf", ClientKind::Native);
        c.client_secret_sha256 = Some(crate::auth::api_keys::hex(&sha256("s3cret")));
        let public = ClientSettings::new("pub", ClientKind::Native);
        ClientAuth::new(&[c, public], "https://hub").unwrap()
    }

    #[test]
    fn confidential_clients_must_prove_it_and_public_ones_only_name_themselves() {
        let a = auth();
        let known = |id: &str| id == "conf" || id == "pub";
        let named = |id| Presented {
            client_id: Some(id),
            ..Presented::default()
        };
        assert_eq!(a.authenticate(&named("pub"), known, 0).unwrap().0, "pub");
        assert_eq!(
            a.authenticate(&named("conf"), known, 0).unwrap_err(),
            ClientAuthError::Required
        );
        assert_eq!(
            a.authenticate(&named("nobody"), known, 0).unwrap_err(),
            ClientAuthError::Unknown
        );
        let basic = |s: &str| Presented {
            basic: Some(("conf".into(), s.into())),
            ..Presented::default()
        };
        assert_eq!(
            a.authenticate(&basic("s3cret"), known, 0).unwrap().0,
            "conf"
        );
        assert_eq!(
            a.authenticate(&basic("wrong"), known, 0).unwrap_err(),
            ClientAuthError::Wrong
        );
        let post = Presented {
            client_id: Some("conf"),
            client_secret: Some("s3cret"),
            ..Presented::default()
        };
        assert!(a.authenticate(&post, known, 0).is_ok());
        let both = Presented {
            client_secret: Some("s3cret"),
            ..basic("s3cret")
        };
        assert!(matches!(
            a.authenticate(&both, known, 0),
            Err(ClientAuthError::Malformed(_))
        ));
    }

    #[test]
    fn basic_credentials_are_url_decoded() {
        use base64::Engine;
        let v = base64::engine::general_purpose::STANDARD.encode("my%20app:p%3Ass");
        assert_eq!(
            basic_credentials(&format!("Basic {v}")),
            Some(("my app".into(), "p:ss".into()))
        );
        assert_eq!(basic_credentials("Bearer x"), None);
    }
}
