use super::*;
use crate::config::ClientKind;

const NOW: i64 = 1_000_000;
const LATER: i64 = NOW + 3_600_000;

fn clients(adjust: impl Fn(&mut ClientSettings)) -> Clients {
    let mut map = HashMap::new();
    for (id, kind) in [
        ("native", ClientKind::Native),
        ("web", ClientKind::Web),
        ("web2", ClientKind::Web),
    ] {
        let mut c = ClientSettings::new(id, kind);
        adjust(&mut c);
        map.insert(id.to_string(), Arc::new(c));
    }
    Clients(map, NOTICE_LEASE_MS)
}

/// Alice with one native session, one web session opened from it by
/// `web`, and a refresh token of each.
fn alice(c: &Clients) -> (UserGraph, String, String, String, String) {
    let mut g = UserGraph::new("https://idp", "alice");
    let ns = g.find_or_open_native("native", None, LATER, NOW);
    let native_rt = g.issue_refresh(&ns, "native", LATER);
    let (ws, _) = g.open_web(&ns, c.get("web").unwrap(), NOW);
    let web_rt = g.issue_refresh(&ws, "web", LATER);
    (g, ns, native_rt, ws, web_rt)
}

#[test]
fn revoking_a_native_refresh_token_cascades_to_its_web_sessions() {
    let c = clients(|_| {});
    let (mut g, ns, native_rt, ws, web_rt) = alice(&c);
    let stt = g.issue_transfer(&ns, None, [127, 0, 0, 1].into(), None, 60_000, NOW);
    assert!(stt.is_some());
    let mut r = Revoked::default();
    g.revoke_refresh(&digest(&native_rt), &c, &mut r, NOW);
    assert_eq!(r.native_sessions, vec![ns.clone()]);
    assert_eq!(r.web_sessions.len(), 1);
    assert_eq!(r.web_sessions[0].sid, ws);
    assert_eq!(r.web_sessions[0].sub, hub_subject("https://idp", "alice"));
    assert_eq!(r.refresh_tokens.len(), 2, "the native's and the web's");
    assert_eq!(r.transfer_tokens, 1);
    assert_eq!(
        g.refresh_by_digest(&digest(&web_rt)).unwrap().state,
        RtState::Revoked
    );
}

#[test]
fn without_cascade_web_sessions_stay_but_transfer_tokens_are_void() {
    let c = clients(|c| c.enforce_cascade_revocation = false);
    let (mut g, ns, native_rt, ws, _) = alice(&c);
    g.issue_transfer(&ns, None, [127, 0, 0, 1].into(), None, 60_000, NOW);
    let mut r = Revoked::default();
    g.revoke_refresh(&digest(&native_rt), &c, &mut r, NOW);
    assert!(
        r.native_sessions.is_empty(),
        "no cascade to the native session"
    );
    assert!(r.web_sessions.is_empty());
    assert_eq!(r.transfer_tokens, 0, "only those minted with that token");
    let mut r = Revoked::default();
    g.revoke_native(&ns, &c, &mut r, NOW);
    assert_eq!(r.transfer_tokens, 1);
    assert!(g.web(&ws).unwrap().alive(NOW));
}

#[test]
fn a_web_session_ends_with_any_native_session_that_joined_it() {
    let c = clients(|_| {});
    let (mut g, first, _, ws, _) = alice(&c);
    let second = g.find_or_open_native("native", None, LATER, NOW);
    g.join_web(&ws, c.get("web").unwrap(), Some(&second), NOW);
    let mut r = Revoked::default();
    g.revoke_native(&second, &c, &mut r, NOW);
    assert_eq!(r.web_sessions.len(), 1, "the second parent takes it");
    assert!(!g.native(&first).unwrap().revoked);
}

#[test]
fn ending_a_web_session_revokes_each_clients_online_refresh_tokens_and_names_every_client() {
    // `web` keeps its refresh tokens offline; `web2` (default) online.
    let c = clients(|c| c.enforce_online_refresh_tokens = c.client_id != "web");
    let (mut g, _, _, ws, web_rt) = alice(&c);
    g.join_web(&ws, c.get("web2").unwrap(), None, NOW);
    let web2_rt = g.issue_refresh(&ws, "web2", LATER);
    let mut r = Revoked::default();
    g.end_web(&ws, &c, &mut r, NOW);
    assert_eq!(r.web_sessions[0].clients, vec!["web", "web2"]);
    assert_eq!(
        g.refresh_by_digest(&digest(&web_rt)).unwrap().state,
        RtState::Active
    );
    assert_eq!(
        g.refresh_by_digest(&digest(&web2_rt)).unwrap().state,
        RtState::Revoked
    );
}

#[test]
fn a_transfer_token_is_burnt_by_its_first_presentation_whatever_the_outcome() {
    let c = clients(|_| {});
    let (mut g, ns, _, _, _) = alice(&c);
    let stt = g
        .issue_transfer(&ns, None, [127, 0, 0, 1].into(), None, 60_000, NOW)
        .unwrap();
    let d = digest(&stt);
    assert_eq!(
        g.redeem_transfer(&d, NOW, |_| Err("bound elsewhere")),
        Err("bound elsewhere")
    );
    assert!(g.redeem_transfer(&d, NOW, |_| Ok(())).is_err(), "used up");
    let stt = g
        .issue_transfer(&ns, None, [127, 0, 0, 1].into(), None, 60_000, NOW)
        .unwrap();
    assert_eq!(
        g.redeem_transfer(&digest(&stt), NOW + 60_000, |_| Ok(())),
        Err("the session_transfer_token has expired")
    );
}

#[test]
fn a_code_is_single_use_and_bound_to_client_redirect_and_verifier() {
    let c = clients(|_| {});
    let (mut g, _, _, ws, _) = alice(&c);
    let verifier = "v".repeat(43);
    let challenge = base64::Engine::encode(
        &base64::engine::general_purpose::URL_SAFE_NO_PAD,
        ring::digest::digest(&ring::digest::SHA256, verifier.as_bytes()).as_ref(),
    );
    let code = g.issue_code(&ws, "web", "https://cb", &challenge, NOW);
    assert!(
        g.take_code("web2", &digest(&code), "https://cb", &verifier, NOW)
            .is_err()
    );
    assert!(
        g.take_code("web", &digest(&code), "https://cb", &verifier, NOW)
            .is_err(),
        "gone after one try"
    );
    let code = g.issue_code(&ws, "web", "https://cb", &challenge, NOW);
    assert_eq!(
        g.take_code("web", &digest(&code), "https://cb", &verifier, NOW)
            .unwrap()
            .id,
        ws
    );
    let code = g.issue_code(&ws, "web", "https://cb", &challenge, NOW);
    let mut r = Revoked::default();
    g.end_web(&ws, &c, &mut r, NOW);
    assert!(
        g.take_code("web", &digest(&code), "https://cb", &verifier, NOW)
            .is_err()
    );
}

#[test]
fn issuers_with_the_same_sub_are_two_subjects() {
    assert_ne!(
        hub_subject("https://a", "alice"),
        hub_subject("https://b", "alice")
    );
    assert!(hub_subject("https://a", "alice").ends_with("|alice"));
}
