//! Verifies RS256, ES256 and HS256 tokens with jsonwebtoken through
//! slo-hub's ring provider (`ring`) or the crate's own (`rust_crypto`),
//! one process per provider; prints ns per verification.
#[path = "../../../src/auth/crypto.rs"]
#[allow(dead_code)]
mod crypto;

use jsonwebtoken::{Algorithm, DecodingKey, EncodingKey, Header, Validation, decode, encode};
use std::time::Instant;

fn main() {
    let which = std::env::args().nth(1).unwrap();
    match which.as_str() {
        "ring" => crypto::install(),
        "rust_crypto" => {
            let _ = jsonwebtoken::crypto::CryptoProvider::install_default(
                &jsonwebtoken::crypto::rust_crypto::DEFAULT_PROVIDER,
            );
        }
        _ => panic!("ring | rust_crypto"),
    }
    let claims =
        serde_json::json!({"sub": "alice", "exp": 4_000_000_000u64, "iat": 1_700_000_000u64});
    let read = |f: &str| std::fs::read(f).unwrap();
    let cases = [
        (
            "RS256",
            Algorithm::RS256,
            EncodingKey::from_rsa_pem(&read("rsa.pem")).unwrap(),
            DecodingKey::from_rsa_pem(&read("rsa.pub")).unwrap(),
        ),
        (
            "ES256",
            Algorithm::ES256,
            EncodingKey::from_ec_pem(&read("ec.pem")).unwrap(),
            DecodingKey::from_ec_pem(&read("ec.pub")).unwrap(),
        ),
        (
            "HS256",
            Algorithm::HS256,
            EncodingKey::from_secret(b"0123456789abcdef0123456789abcdef"),
            DecodingKey::from_secret(b"0123456789abcdef0123456789abcdef"),
        ),
    ];
    for (name, alg, ek, dk) in cases {
        let token = encode(&Header::new(alg), &claims, &ek).unwrap();
        let mut v = Validation::new(alg);
        v.validate_aud = false;
        let n = if alg == Algorithm::HS256 {
            200_000
        } else {
            5_000
        };
        for _ in 0..n / 10 {
            decode::<serde_json::Value>(&token, &dk, &v).unwrap();
        }
        let t = Instant::now();
        for _ in 0..n {
            decode::<serde_json::Value>(&token, &dk, &v).unwrap();
        }
        let ns = t.elapsed().as_nanos() / n as u128;
        let t = Instant::now();
        let m = n / 10;
        for _ in 0..m {
            encode(&Header::new(alg), &claims, &ek).unwrap();
        }
        let sign_ns = t.elapsed().as_nanos() / m as u128;
        println!("{which} {name} verify_ns={ns} sign_ns={sign_ns}");
    }
}
