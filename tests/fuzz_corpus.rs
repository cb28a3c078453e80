//! The fuzz smoke run of `cargo test`: every input the fuzzers kept
//! (`fuzz/corpus/<target>/`, cmin-minimised after 10-minute runs) goes
//! through the same checks the fuzz targets run (`fuzz/checks.rs`).
//! A regression that makes any of them panic fails here, without cargo-fuzz.

#[path = "../fuzz/checks.rs"]
mod checks;

fn replay(target: &str, check: fn(&[u8])) {
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("fuzz/corpus")
        .join(target);
    let mut n = 0;
    for entry in std::fs::read_dir(&dir).unwrap() {
        let path = entry.unwrap().path();
        let input = std::fs::read(&path).unwrap();
        let outcome = std::panic::catch_unwind(|| check(&input));
        assert!(
            outcome.is_ok(),
            "{target}: {} fails its check",
            path.display()
        );
        n += 1;
    }
    assert!(n > 100, "{target}: only {n} inputs in {}", dir.display());
}

#[test]
fn ws_decoder_corpus() {
    replay("ws_decoder", checks::ws_decoder);
}

#[test]
fn jwt_validator_corpus() {
    replay("jwt_validator", checks::jwt_validator);
}

#[test]
fn logout_form_corpus() {
    replay("logout_form", checks::logout_form);
}

#[test]
fn authorize_query_corpus() {
    replay("authorize_query", checks::authorize_query);
}
