//! Arbitrary `/authorize` query strings through the endpoint's checks
//! (`check_authorize`), against one native and one web client: no panic;
//! any redirect goes to a registered URI exactly, with a Location that is a
//! valid header value starting with that URI; PKCE is S256 with a
//! 43-character challenge whenever the request may proceed.
#![no_main]

use std::sync::{Arc, OnceLock};

use libfuzzer_sys::fuzz_target;
use slo_hub::config::{ClientKind, ClientSettings};
use slo_hub::http::oauth::{AuthorizeCheck, check_authorize, redirect_location};

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

fuzz_target!(|query: &[u8]| {
    let Ok(query) = std::str::from_utf8(query) else {
        return;
    };
    let lookup = |id: &str| clients().iter().find(|c| c.client_id == id).cloned();
    let (uri, state, extra) = match check_authorize(query, lookup) {
        AuthorizeCheck::Page(_) => return,
        AuthorizeCheck::Fail { redirect_uri, state, error, description } => {
            (redirect_uri, state, vec![("error", error), ("error_description", description)])
        }
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
    assert!(location.starts_with(&uri));
    assert!(
        axum::http::HeaderValue::from_str(&location).is_ok(),
        "{location:?}"
    );
});
