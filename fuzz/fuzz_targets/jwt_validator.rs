//! Arbitrary strings as access tokens for an HS256 issuer: header inspection,
//! key lookup and verification never panic and never accept a token that
//! was not signed with the issuer's secret.
#![no_main]

use libfuzzer_sys::fuzz_target;
use slo_hub::auth::IssuerId;
use slo_hub::auth::jwt::{self, Issuer};
use slo_hub::config::IssuerSettings;

fn issuer() -> Issuer {
    slo_hub::auth::crypto::install();
    Issuer::new(
        IssuerId(0),
        &IssuerSettings {
            issuer: "https://fuzz.test".into(),
            audiences: vec!["fuzz".into()],
            algorithms: vec![jsonwebtoken::Algorithm::HS256],
            jwks_url: None,
            keys: vec![],
            hs256_secret: Some("fuzz-secret-fuzz-secret-fuzz-secret-0123".into()),
            leeway_secs: 5,
            jwks_min_refetch_secs: 30,
            require_logout_typ: false,
        },
    )
    .unwrap()
}

fuzz_target!(|data: &[u8]| {
    let Ok(token) = std::str::from_utf8(data) else {
        return;
    };
    let issuer = issuer();
    let Ok((header, alg, _iss)) = jwt::inspect(token) else {
        return;
    };
    let Ok(key) = issuer.find_key(alg, header.kid.as_deref()) else {
        return;
    };
    // The fuzzer cannot forge an HMAC: any acceptance here is a bug.
    assert!(issuer.verify_with(token, &key, 86_400, 1_800_000_000).is_err());
    assert!(issuer.verify_logout(token, &key, 1_800_000_000).is_err());
});
