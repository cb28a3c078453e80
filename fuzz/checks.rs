//! The checks of the fuzz targets, shared by `fuzz_targets/*.rs` (run by
//! cargo-fuzz) and `tests/fuzz_corpus.rs` (which replays the committed
//! corpora in `cargo test`, so every input a fuzzer kept stays checked).
//! Each function panics on a finding.
#![allow(dead_code)]

use std::sync::{Arc, OnceLock};

use slo_hub::auth::IssuerId;
use slo_hub::auth::jwt::{self, Issuer};
use slo_hub::config::{ClientKind, ClientSettings, IssuerSettings};
use slo_hub::http::backchannel::logout_token_from_form;
use slo_hub::http::oauth::{AuthorizeCheck, check_authorize, redirect_location};
use slo_hub::ws::codec::{Decoder, Flow, Message, Role};
use slo_hub::ws::protocol;

/// Arbitrary bytes from a client into the socket's decoder and the JSON
/// protocol parser, split into reads at an arbitrary point: no panic, and a
/// decoder error is always a close code the hub may send.
pub fn ws_decoder(data: &[u8]) {
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
}

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
            speaks_for: vec![],
        },
    )
    .unwrap()
}

/// Arbitrary strings as access tokens for an HS256 issuer: header inspection,
/// key lookup and verification never panic and never accept a token that
/// was not signed with the issuer's secret.
pub fn jwt_validator(data: &[u8]) {
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
    assert!(
        issuer
            .verify_with(token, &key, 86_400, 1_800_000_000)
            .is_err()
    );
    assert!(issuer.verify_logout(token, &key, 1_800_000_000).is_err());
}

/// Arbitrary back-channel logout request bodies through the endpoint's form
/// parser, then token inspection: no panic on any input, and a token taken
/// from the form is never empty.
pub fn logout_form(body: &[u8]) {
    if let Ok(token) = logout_token_from_form(body) {
        assert!(!token.is_empty());
        let _ = jwt::inspect(&token);
    }
}

const REGISTERED: [&str; 2] = ["https://app.test/cb", "https://app.test/cb?x=1"];

fn clients() -> &'static [Arc<ClientSettings>] {
    static C: OnceLock<Vec<Arc<ClientSettings>>> = OnceLock::new();
    C.get_or_init(|| {
        let mut web = ClientSettings::new("web", ClientKind::Web);
        web.redirect_uris = REGISTERED.iter().map(|s| s.to_string()).collect();
        let native = ClientSettings::new("native", ClientKind::Native);
        vec![Arc::new(web), Arc::new(native)]
    })
}

/// Arbitrary `/authorize` query strings through the endpoint's checks
/// (`check_authorize`), against one native and one web client: no panic;
/// any redirect goes to a registered URI exactly, with a Location that is a
/// valid header value starting with that URI; PKCE is S256 with a
/// 43-character challenge whenever the request may proceed.
pub fn authorize_query(query: &[u8]) {
    let Ok(query) = std::str::from_utf8(query) else {
        return;
    };
    let lookup = |id: &str| clients().iter().find(|c| c.client_id == id).cloned();
    let (uri, state, extra) = match check_authorize(query, lookup) {
        AuthorizeCheck::Page(_) => return,
        AuthorizeCheck::Fail {
            redirect_uri,
            state,
            error,
            description,
            ..
        } => (
            redirect_uri,
            state,
            vec![("error", error), ("error_description", description)],
        ),
        AuthorizeCheck::Proceed(p) => {
            assert_eq!(p.code_challenge.len(), 43);
            assert_eq!(p.client.kind, ClientKind::Web);
            (p.redirect_uri, p.state, vec![("code", "c0de")])
        }
    };
    assert!(REGISTERED.contains(&uri.as_str()), "{uri}");
    let mut params = extra;
    if !state.is_empty() {
        params.push(("state", state.as_str()));
    }
    let location = redirect_location(&uri, &params);
    // The registered URI as a URL serializes it, then only the parameters.
    let base = url::Url::parse(&uri).expect("registered URIs are URLs");
    assert!(location.starts_with(base.as_str()), "{location} {base}");
    assert!(
        axum::http::HeaderValue::from_str(&location).is_ok(),
        "{location:?}"
    );
}
