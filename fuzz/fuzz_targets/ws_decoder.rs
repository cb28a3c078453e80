//! Arbitrary bytes from a client into the socket's decoder and the JSON
//! protocol parser, split into reads at an arbitrary point: no panic, and a
//! decoder error is always a close code the hub may send.
#![no_main]

#[path = "../checks.rs"]
mod checks;

libfuzzer_sys::fuzz_target!(|data: &[u8]| checks::ws_decoder(data));
