//! A `jsonwebtoken` crypto provider backed by `ring`.
//!
//! jsonwebtoken 11 delegates signatures to a pluggable provider. Its two
//! built-in ones would add either the aws-lc C library or a second, pure-Rust
//! RSA/ECDSA stack to a tree that already carries `ring` (rustls, HMAC for the
//! Pusher protocol, SHA-1 for the WebSocket handshake), and the pure-Rust one
//! verifies RS256 7× and ES256 4× slower than this glue
//! (bench/results/jwt-providers-*.md). This module is glue only: every
//! primitive is ring's, and every key-shape question answers with an error
//! rather than a panic.
//!
//! It must not: cache verification *results*, or accept a key of one family
//! for an algorithm of another (jsonwebtoken checks the family before calling
//! us; we check again because a confused key is the classic JWT attack).

use std::sync::Once;

use jsonwebtoken::crypto::{CryptoProvider, JwtSigner, JwtVerifier, KeyUtils};
use jsonwebtoken::errors::{Error, ErrorKind};
use jsonwebtoken::jwk::{EllipticCurve, ThumbprintHash};
use jsonwebtoken::signature::{self, Signer, Verifier};
use jsonwebtoken::{Algorithm, AlgorithmFamily, DecodingKey, DecodingKeyKind, EncodingKey};
use ring::signature::{self as rsig, KeyPair};
use ring::{digest, hmac, rand};

/// Installs ring as the process-wide provider of jsonwebtoken and of rustls
/// (which reqwest uses for JWKS over HTTPS). Safe to call many times (tests
/// start many hubs in one process).
pub fn install() {
    static ONCE: Once = Once::new();
    ONCE.call_once(|| {
        // Each fails only if a provider was installed first; then that one is
        // used, which is equally sound, so there is nothing to handle.
        let _ = CryptoProvider::install_default(&RING_PROVIDER);
        let _ = rustls::crypto::ring::default_provider().install_default();
    });
}

static RING_PROVIDER: CryptoProvider = CryptoProvider {
    signer_factory: new_signer,
    verifier_factory: new_verifier,
    key_utils: KeyUtils {
        rsa_pub_components_from_private_key: rsa_components_from_private_key,
        rsa_pub_components_from_public_key: |_| {
            Err(
                ErrorKind::InvalidRsaKey("PKCS#1 public key parsing is not supported".into())
                    .into(),
            )
        },
        ec_pub_components_from_private_key: ec_components_from_private_key,
        ed_pub_components_from_private_key: ed_components_from_private_key,
        compute_digest,
    },
};

fn family_error() -> Error {
    ErrorKind::InvalidKeyFormat.into()
}

struct RingVerifier {
    alg: Algorithm,
    key: DecodingKey,
}

impl Verifier<Vec<u8>> for RingVerifier {
    fn verify(&self, msg: &[u8], sig: &Vec<u8>) -> Result<(), signature::Error> {
        let ok = match (self.alg.family(), self.key.kind()) {
            (AlgorithmFamily::Hmac, DecodingKeyKind::SecretOrDer(secret)) => {
                let key = hmac::Key::new(hmac_alg(self.alg), secret);
                // hmac::verify compares in constant time.
                hmac::verify(&key, msg, sig).is_ok()
            }
            (AlgorithmFamily::Rsa, DecodingKeyKind::RsaModulusExponent { n, e }) => {
                rsig::RsaPublicKeyComponents { n, e }
                    .verify(rsa_verify_alg(self.alg), msg, sig)
                    .is_ok()
            }
            (AlgorithmFamily::Rsa, DecodingKeyKind::SecretOrDer(der)) => {
                rsig::UnparsedPublicKey::new(rsa_verify_alg(self.alg), der)
                    .verify(msg, sig)
                    .is_ok()
            }
            (AlgorithmFamily::Ec, DecodingKeyKind::SecretOrDer(point)) => {
                let alg: &'static dyn rsig::VerificationAlgorithm = match self.alg {
                    Algorithm::ES384 => &rsig::ECDSA_P384_SHA384_FIXED,
                    _ => &rsig::ECDSA_P256_SHA256_FIXED,
                };
                rsig::UnparsedPublicKey::new(alg, point)
                    .verify(msg, sig)
                    .is_ok()
            }
            (AlgorithmFamily::Ed, DecodingKeyKind::SecretOrDer(x)) => {
                rsig::UnparsedPublicKey::new(&rsig::ED25519, x)
                    .verify(msg, sig)
                    .is_ok()
            }
            _ => false,
        };
        if ok {
            Ok(())
        } else {
            Err(signature::Error::new())
        }
    }
}

impl JwtVerifier for RingVerifier {
    fn algorithm(&self) -> Algorithm {
        self.alg
    }
}

fn new_verifier(alg: &Algorithm, key: &DecodingKey) -> Result<Box<dyn JwtVerifier>, Error> {
    if key.family() != alg.family() {
        return Err(family_error());
    }
    Ok(Box::new(RingVerifier {
        alg: *alg,
        key: key.clone(),
    }))
}

enum SigningKey {
    Hmac(hmac::Key),
    Rsa(rsig::RsaKeyPair, &'static dyn rsig::RsaEncoding),
    Ecdsa(rsig::EcdsaKeyPair),
    Ed25519(rsig::Ed25519KeyPair),
}

struct RingSigner {
    alg: Algorithm,
    key: SigningKey,
}

impl Signer<Vec<u8>> for RingSigner {
    fn try_sign(&self, msg: &[u8]) -> Result<Vec<u8>, signature::Error> {
        let rng = rand::SystemRandom::new();
        match &self.key {
            SigningKey::Hmac(key) => Ok(hmac::sign(key, msg).as_ref().to_vec()),
            SigningKey::Rsa(pair, encoding) => {
                let mut sig = vec![0; pair.public().modulus_len()];
                pair.sign(*encoding, &rng, msg, &mut sig)
                    .map_err(|_| signature::Error::new())?;
                Ok(sig)
            }
            SigningKey::Ecdsa(pair) => pair
                .sign(&rng, msg)
                .map(|s| s.as_ref().to_vec())
                .map_err(|_| signature::Error::new()),
            SigningKey::Ed25519(pair) => Ok(pair.sign(msg).as_ref().to_vec()),
        }
    }
}

impl JwtSigner for RingSigner {
    fn algorithm(&self) -> Algorithm {
        self.alg
    }
}

fn new_signer(alg: &Algorithm, key: &EncodingKey) -> Result<Box<dyn JwtSigner>, Error> {
    if key.family() != alg.family() {
        return Err(family_error());
    }
    let bytes = key.as_bytes();
    let rng = rand::SystemRandom::new();
    let key = match alg.family() {
        AlgorithmFamily::Hmac => SigningKey::Hmac(hmac::Key::new(hmac_alg(*alg), bytes)),
        AlgorithmFamily::Rsa => {
            let pair = rsig::RsaKeyPair::from_der(bytes)
                .or_else(|_| rsig::RsaKeyPair::from_pkcs8(bytes))
                .map_err(|e| ErrorKind::InvalidRsaKey(e.to_string()))?;
            SigningKey::Rsa(pair, rsa_sign_alg(*alg))
        }
        AlgorithmFamily::Ec => {
            let pair = rsig::EcdsaKeyPair::from_pkcs8(ecdsa_sign_alg(*alg), bytes, &rng)
                .map_err(|_| ErrorKind::InvalidEcdsaKey)?;
            SigningKey::Ecdsa(pair)
        }
        AlgorithmFamily::Ed => SigningKey::Ed25519(
            rsig::Ed25519KeyPair::from_pkcs8_maybe_unchecked(bytes)
                .map_err(|_| ErrorKind::InvalidEddsaKey)?,
        ),
    };
    Ok(Box::new(RingSigner { alg: *alg, key }))
}

fn hmac_alg(alg: Algorithm) -> hmac::Algorithm {
    match alg {
        Algorithm::HS384 => hmac::HMAC_SHA384,
        Algorithm::HS512 => hmac::HMAC_SHA512,
        _ => hmac::HMAC_SHA256,
    }
}

fn rsa_verify_alg(alg: Algorithm) -> &'static rsig::RsaParameters {
    match alg {
        Algorithm::RS384 => &rsig::RSA_PKCS1_2048_8192_SHA384,
        Algorithm::RS512 => &rsig::RSA_PKCS1_2048_8192_SHA512,
        Algorithm::PS256 => &rsig::RSA_PSS_2048_8192_SHA256,
        Algorithm::PS384 => &rsig::RSA_PSS_2048_8192_SHA384,
        Algorithm::PS512 => &rsig::RSA_PSS_2048_8192_SHA512,
        _ => &rsig::RSA_PKCS1_2048_8192_SHA256,
    }
}

fn rsa_sign_alg(alg: Algorithm) -> &'static dyn rsig::RsaEncoding {
    match alg {
        Algorithm::RS384 => &rsig::RSA_PKCS1_SHA384,
        Algorithm::RS512 => &rsig::RSA_PKCS1_SHA512,
        Algorithm::PS256 => &rsig::RSA_PSS_SHA256,
        Algorithm::PS384 => &rsig::RSA_PSS_SHA384,
        Algorithm::PS512 => &rsig::RSA_PSS_SHA512,
        _ => &rsig::RSA_PKCS1_SHA256,
    }
}

fn ecdsa_sign_alg(alg: Algorithm) -> &'static rsig::EcdsaSigningAlgorithm {
    match alg {
        Algorithm::ES384 => &rsig::ECDSA_P384_SHA384_FIXED_SIGNING,
        _ => &rsig::ECDSA_P256_SHA256_FIXED_SIGNING,
    }
}

fn rsa_components_from_private_key(der: &[u8]) -> Result<(Vec<u8>, Vec<u8>), Error> {
    let pair = rsig::RsaKeyPair::from_der(der)
        .or_else(|_| rsig::RsaKeyPair::from_pkcs8(der))
        .map_err(|e| ErrorKind::InvalidRsaKey(e.to_string()))?;
    let public = ring::rsa::PublicKeyComponents::<Vec<u8>>::from(pair.public());
    Ok((public.n, public.e))
}

fn ec_components_from_private_key(
    der: &[u8],
    alg: Algorithm,
) -> Result<(EllipticCurve, Vec<u8>, Vec<u8>), Error> {
    let rng = rand::SystemRandom::new();
    let pair = rsig::EcdsaKeyPair::from_pkcs8(ecdsa_sign_alg(alg), der, &rng)
        .map_err(|_| ErrorKind::InvalidEcdsaKey)?;
    let point = pair.public_key().as_ref();
    let (curve, width) = match alg {
        Algorithm::ES384 => (EllipticCurve::P384, 48),
        _ => (EllipticCurve::P256, 32),
    };
    if point.len() != 1 + 2 * width || point[0] != 4 {
        return Err(ErrorKind::InvalidEcdsaKey.into());
    }
    let (x, y) = point[1..].split_at(width);
    Ok((curve, x.to_vec(), y.to_vec()))
}

fn ed_components_from_private_key(der: &[u8], curve: &EllipticCurve) -> Result<Vec<u8>, Error> {
    if *curve != EllipticCurve::Ed25519 {
        return Err(ErrorKind::InvalidAlgorithm.into());
    }
    let pair = rsig::Ed25519KeyPair::from_pkcs8_maybe_unchecked(der)
        .map_err(|_| ErrorKind::InvalidEddsaKey)?;
    Ok(pair.public_key().as_ref().to_vec())
}

fn compute_digest(data: &[u8], hash: ThumbprintHash) -> Result<Vec<u8>, Error> {
    let alg = match hash {
        ThumbprintHash::SHA256 => &digest::SHA256,
        ThumbprintHash::SHA384 => &digest::SHA384,
        ThumbprintHash::SHA512 => &digest::SHA512,
        _ => return Err(ErrorKind::InvalidAlgorithm.into()),
    };
    Ok(digest::digest(alg, data).as_ref().to_vec())
}

#[cfg(test)]
mod tests {
    use super::*;
    use jsonwebtoken::{Header, Validation, decode, encode};
    use serde_json::{Value, json};

    fn claims() -> Value {
        json!({"sub": "alice", "exp": jsonwebtoken::get_current_timestamp() + 60})
    }

    #[test]
    fn hs256_round_trip_and_wrong_secret() {
        install();
        let token = encode(
            &Header::new(Algorithm::HS256),
            &claims(),
            &EncodingKey::from_secret(b"s3cret"),
        )
        .unwrap();
        let mut v = Validation::new(Algorithm::HS256);
        v.validate_aud = false;
        assert!(decode::<Value>(&token, &DecodingKey::from_secret(b"s3cret"), &v).is_ok());
        assert!(decode::<Value>(&token, &DecodingKey::from_secret(b"other"), &v).is_err());
    }

    #[test]
    fn ed25519_round_trip_and_tampering() {
        install();
        let rng = rand::SystemRandom::new();
        let pkcs8 = rsig::Ed25519KeyPair::generate_pkcs8(&rng).unwrap();
        let pair = rsig::Ed25519KeyPair::from_pkcs8(pkcs8.as_ref()).unwrap();
        let token = encode(
            &Header::new(Algorithm::EdDSA),
            &claims(),
            &EncodingKey::from_ed_der(pkcs8.as_ref()),
        )
        .unwrap();
        let key = DecodingKey::from_ed_der(pair.public_key().as_ref());
        let mut v = Validation::new(Algorithm::EdDSA);
        v.validate_aud = false;
        assert!(decode::<Value>(&token, &key, &v).is_ok());
        let mut tampered = token.clone().into_bytes();
        let i = tampered.len() - 5;
        tampered[i] = if tampered[i] == b'A' { b'B' } else { b'A' };
        let tampered = String::from_utf8(tampered).unwrap();
        assert!(decode::<Value>(&tampered, &key, &v).is_err());
    }

    #[test]
    fn a_key_of_another_family_is_refused() {
        install();
        let rng = rand::SystemRandom::new();
        let pkcs8 = rsig::Ed25519KeyPair::generate_pkcs8(&rng).unwrap();
        let pair = rsig::Ed25519KeyPair::from_pkcs8(pkcs8.as_ref()).unwrap();
        // An HS256 token "signed" with the public key bytes as the secret: the
        // classic confusion attack. The Ed key must not verify it.
        let token = encode(
            &Header::new(Algorithm::HS256),
            &claims(),
            &EncodingKey::from_secret(pair.public_key().as_ref()),
        )
        .unwrap();
        let key = DecodingKey::from_ed_der(pair.public_key().as_ref());
        let mut v = Validation::new(Algorithm::HS256);
        v.validate_aud = false;
        assert!(decode::<Value>(&token, &key, &v).is_err());
    }
}
