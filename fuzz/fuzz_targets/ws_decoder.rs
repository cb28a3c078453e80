//! Arbitrary bytes from a client into the socket's decoder and the JSON
//! protocol parser, split into reads at an arbitrary point: no panic, and a
//! decoder error is always a close code the hub may send.
#![no_main]

use libfuzzer_sys::fuzz_target;
use slo_hub::ws::codec::{Decoder, Flow, Message, Role};
use slo_hub::ws::protocol;

fuzz_target!(|data: &[u8]| {
    if data.is_empty() {
        return;
    }
    let split = data[0] as usize % data.len();
    let mut decoder = Decoder::new(Role::Server, 16 * 1024);
    let mut pending: Vec<u8> = Vec::new();
    for part in [&data[1..split.max(1)], &data[split.max(1)..]] {
        pending.extend_from_slice(part);
        match decoder.decode(&mut pending, |m| {
            if let Message::Text(t) = m {
                let _ = protocol::parse(t);
            }
            Flow::Continue
        }) {
            Ok(consumed) => {
                assert!(consumed <= pending.len());
                pending.drain(..consumed);
            }
            Err(code) => {
                let c = code.code();
                assert!((1000..=4999).contains(&c), "close code {c}");
                return;
            }
        }
    }
});
