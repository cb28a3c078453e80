//! Arbitrary back-channel logout request bodies through the endpoint's form
//! parser, then token inspection: no panic on any input, and a token taken
//! from the form is never empty.
#![no_main]

#[path = "../checks.rs"]
mod checks;

libfuzzer_sys::fuzz_target!(|data: &[u8]| checks::logout_form(data));
