//! Arbitrary strings as access tokens for an HS256 issuer: header inspection,
//! key lookup and verification never panic and never accept a token that
//! was not signed with the issuer's secret.
#![no_main]

#[path = "../checks.rs"]
mod checks;

libfuzzer_sys::fuzz_target!(|data: &[u8]| checks::jwt_validator(data));
