//! Arbitrary `/authorize` query strings through the endpoint's checks
//! (`check_authorize`), against one native and one web client: no panic;
//! any redirect goes to a registered URI exactly, with a Location that is a
//! valid header value starting with that URI; PKCE is S256 with a
//! 43-character challenge whenever the request may proceed.
#![no_main]

#[path = "../checks.rs"]
mod checks;

libfuzzer_sys::fuzz_target!(|data: &[u8]| checks::authorize_query(data));
