//! Arbitrary back-channel logout request bodies through the endpoint's form
//! parser, then token inspection: no panic on any input, and a token taken
//! from the form is never empty.
#![no_main]

use libfuzzer_sys::fuzz_target;
use slo_hub::auth::jwt;
use slo_hub::http::backchannel::logout_token_from_form;

fuzz_target!(|body: &[u8]| {
    if let Ok(token) = logout_token_from_form(body) {
        assert!(!token.is_empty());
        let _ = jwt::inspect(&token);
    }
});
