//! Back-channel logout *sending*: when the hub ends one of its web sessions,
//! the web client's backend (a real HTTP server here) receives an OpenID
//! Back-Channel Logout token signed by the hub — verified with the hub's
//! published JWKS — with retries on failure, no retry on a refusal, and a
//! bounded queue.

mod common;

use std::collections::{HashSet, VecDeque};
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::extract::State;
use axum::http::{HeaderMap, StatusCode};
use axum::routing::post;
use common::EVENT_TIMEOUT;
use common::sso::*;
use jsonwebtoken::{DecodingKey, Validation, jwk::JwkSet};
use serde_json::{Value, json};
use slo_hub::config::Config;
use tokio::sync::{Semaphore, mpsc};

const EVENT: &str = "http://schemas.openid.net/event/backchannel-logout";

/// An app backend's back-channel logout endpoint: answers the scripted
/// statuses in order (then 200), each only once the gate lets it.
struct Backend {
    url: String,
    received: mpsc::UnboundedReceiver<(String, String)>,
    gate: Arc<Semaphore>,
}

#[derive(Clone)]
struct BackendState {
    answers: Arc<Mutex<VecDeque<u16>>>,
    seen: mpsc::UnboundedSender<(String, String)>,
    gate: Arc<Semaphore>,
}

impl Backend {
    async fn start(answers: &[u16], open: bool) -> Backend {
        let (seen, received) = mpsc::unbounded_channel();
        let gate = Arc::new(Semaphore::new(if open {
            Semaphore::MAX_PERMITS
        } else {
            0
        }));
        let state = BackendState {
            answers: Arc::new(Mutex::new(answers.iter().copied().collect())),
            seen,
            gate: gate.clone(),
        };
        let router = axum::Router::new()
            .route("/backchannel-logout", post(receive))
            .with_state(state);
        let listener = tokio::net::TcpListener::bind(SocketAddr::from(([127, 0, 0, 1], 0)))
            .await
            .unwrap();
        let url = format!(
            "http://{}/backchannel-logout",
            listener.local_addr().unwrap()
        );
        tokio::spawn(async move { axum::serve(listener, router).await });
        Backend {
            url,
            received,
            gate,
        }
    }

    /// The next POST: (content type, body).
    async fn next(&mut self) -> (String, String) {
        tokio::time::timeout(EVENT_TIMEOUT, self.received.recv())
            .await
            .expect("no back-channel logout arrived")
            .unwrap()
    }

    /// The logout token of the next POST, checked for the request's form.
    async fn next_token(&mut self) -> String {
        let (content_type, body) = self.next().await;
        assert_eq!(content_type, "application/x-www-form-urlencoded");
        let form: Vec<(String, String)> = form_urlencoded::parse(body.as_bytes())
            .into_owned()
            .collect();
        assert_eq!(form.len(), 1, "{body}");
        assert_eq!(form[0].0, "logout_token");
        form[0].1.clone()
    }
}

async fn receive(State(s): State<BackendState>, headers: HeaderMap, body: String) -> StatusCode {
    let content_type = headers
        .get("content-type")
        .map(|v| v.to_str().unwrap().to_string())
        .unwrap_or_default();
    s.seen.send((content_type, body)).unwrap();
    s.gate.acquire().await.unwrap().forget();
    let status = s.answers.lock().unwrap().pop_front().unwrap_or(200);
    StatusCode::from_u16(status).unwrap()
}

/// The SSO clients, with `web`'s backend at `backend` and quick retries.
async fn hub_for(backend: &Backend, adjust: impl FnOnce(&mut Config)) -> Sso {
    let url = backend.url.clone();
    Sso::with(move |c| {
        for client in &mut c.clients {
            if client.client_id == "web" {
                client.backchannel_logout_uri = Some(url.clone());
            }
        }
        c.notify.first_retry_ms = 20;
        c.notify.max_retry_ms = 40;
        c.notify.max_attempts = 3;
        adjust(c);
    })
    .await
}

/// Verifies `token` with the hub's `/.well-known/jwks.json`, as the
/// backend would, and returns its header `typ` and claims.
async fn verify(sso: &Sso, token: &str) -> (Option<String>, Value) {
    let jwks: JwkSet = sso
        .hub
        .http
        .get(format!("{}/.well-known/jwks.json", sso.hub.url))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let header = jsonwebtoken::decode_header(token).unwrap();
    let kid = header.kid.as_deref().expect("a kid");
    let jwk = jwks.find(kid).expect("the kid is published");
    let mut v = Validation::new(jsonwebtoken::Algorithm::EdDSA);
    v.set_audience(&["web"]);
    v.set_issuer(&[&sso.hub.url]);
    v.set_required_spec_claims(&["iss", "aud", "exp", "iat"]);
    let data =
        jsonwebtoken::decode::<Value>(token, &DecodingKey::from_jwk(jwk).unwrap(), &v).unwrap();
    (header.typ, data.claims)
}

async fn wait_for_metric(sso: &Sso, line: &str, want: f64) {
    let deadline = tokio::time::Instant::now() + EVENT_TIMEOUT;
    loop {
        let got = sso.hub.metric(line).await;
        if got == want {
            return;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "{line} is {got}, expected {want}"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

const DELIVERED: &str = "slo_hub_backchannel_notifications_total{outcome=\"delivered\"}";
const REFUSED: &str = "slo_hub_backchannel_notifications_total{outcome=\"refused\"}";
const FAILED: &str = "slo_hub_backchannel_notifications_total{outcome=\"failed\"}";
const DROPPED: &str = "slo_hub_backchannel_notifications_total{outcome=\"dropped\"}";
const RETRIES: &str = "slo_hub_backchannel_retries_total";

/// A cascade (the native app's refresh token revoked) ends the web session;
/// its backend answers 503 twice, then takes the third attempt. Each attempt
/// is a fresh, valid logout token for exactly that session.
#[tokio::test]
async fn a_cascade_sends_a_signed_logout_token_to_the_backend_and_retries() {
    let mut backend = Backend::start(&[503, 503], true).await;
    let sso = hub_for(&backend, |_| {}).await;
    let (refresh, _browser, login) = sso.alice_on("web").await;
    let session_claims = claims(&login.token);

    sso.revoke(json!({"type": "refresh_token", "token": refresh}))
        .await;

    let mut jtis = HashSet::new();
    for _ in 0..3 {
        let token = backend.next_token().await;
        let (typ, c) = verify(&sso, &token).await;
        assert_eq!(typ.as_deref(), Some("logout+jwt"));
        assert_eq!(c["sid"], login.sid);
        assert_eq!(c["sub"], session_claims["sub"]);
        assert_eq!(c["events"], json!({ EVENT: {} }));
        assert!(c.get("nonce").is_none(), "{c}");
        let lifetime = c["exp"].as_i64().unwrap() - c["iat"].as_i64().unwrap();
        assert_eq!(lifetime, 120, "{c}");
        assert!(jtis.insert(c["jti"].as_str().unwrap().to_string()));
    }
    wait_for_metric(&sso, DELIVERED, 1.0).await;
    assert_eq!(sso.hub.metric(RETRIES).await, 2.0);
}

/// The app logs itself out with its session token (`/v1/logout`): the hub
/// ends the web session and its backend is told too.
#[tokio::test]
async fn a_session_tokens_own_logout_tells_the_backend() {
    let mut backend = Backend::start(&[], true).await;
    let sso = hub_for(&backend, |_| {}).await;
    let (_, _, login) = sso.alice_on("web").await;

    let (status, v) = sso
        .hub
        .logout(&login.token, json!({"scope": "session"}))
        .await;
    assert_eq!(status, 200, "{v}");

    let (_, c) = verify(&sso, &backend.next_token().await).await;
    assert_eq!(c["sid"], login.sid);
    wait_for_metric(&sso, DELIVERED, 1.0).await;
}

/// Every client that joined the session (here by silent SSO) is told, each
/// with a token for itself; a client without a back-channel URI is skipped.
#[tokio::test]
async fn every_client_that_joined_the_session_is_told() {
    let mut backend = Backend::start(&[], true).await;
    let mut other = Backend::start(&[], true).await;
    let other_url = other.url.clone();
    let sso = hub_for(&backend, move |c| {
        for client in &mut c.clients {
            if client.client_id == "web-other" {
                client.backchannel_logout_uri = Some(other_url.clone());
            }
        }
    })
    .await;
    let (_, browser, login) = sso.alice_on("web").await;
    let (_, challenge) = pkce();
    for client in ["web-other", "web-offline"] {
        let r = sso
            .authorize(&browser, client, None, None, &challenge)
            .await;
        assert!(r.param("code").is_some(), "{client} joins: {r:?}");
    }
    sso.revoke(json!({"type": "session", "id": login.sid}))
        .await;
    let token = backend.next_token().await;
    let other_token = other.next_token().await;
    let c = verify(&sso, &token).await.1;
    assert_eq!(
        (c["sid"].as_str(), c["aud"].as_str()),
        (Some(login.sid.as_str()), Some("web"))
    );
    let payload = claims(&other_token);
    assert_eq!(payload["aud"], "web-other");
    assert_eq!(payload["sid"], login.sid);
    wait_for_metric(&sso, DELIVERED, 2.0).await;
}

/// A 400 is the backend's verdict on the token: not retried. Failures
/// (503) are retried up to `max_attempts`, then given up and counted.
#[tokio::test]
async fn a_refusal_is_final_and_failures_stop_after_max_attempts() {
    let mut backend = Backend::start(&[400, 503, 503, 503], true).await;
    let sso = hub_for(&backend, |_| {}).await;
    let (_, _, first) = sso.alice_on("web").await;
    let (_, _, second) = sso.alice_on("web").await;

    sso.revoke(json!({"type": "session", "id": first.sid}))
        .await;
    let (_, c) = verify(&sso, &backend.next_token().await).await;
    assert_eq!(c["sid"], first.sid);
    wait_for_metric(&sso, REFUSED, 1.0).await;

    sso.revoke(json!({"type": "session", "id": second.sid}))
        .await;
    for _ in 0..3 {
        let (_, c) = verify(&sso, &backend.next_token().await).await;
        assert_eq!(c["sid"], second.sid, "the refused one was not retried");
    }
    wait_for_metric(&sso, FAILED, 1.0).await;
    assert_eq!(sso.hub.metric(RETRIES).await, 2.0);
    assert_eq!(sso.hub.metric(DELIVERED).await, 0.0);
}

/// Notifications wait in the session graph's outbox, not in a bounded
/// queue in memory: a backend that holds its answer delays no trigger's
/// answer, and nothing is dropped however many wait behind it.
#[tokio::test]
async fn a_slow_backend_delays_no_answer_and_nothing_is_dropped() {
    let mut backend = Backend::start(&[], false).await;
    let sso = hub_for(&backend, |c| c.notify.concurrency = 1).await;
    let mut sids = Vec::new();
    for _ in 0..3 {
        let (_, _, login) = sso.alice_on("web").await;
        let started = std::time::Instant::now();
        sso.revoke(json!({"type": "session", "id": login.sid}))
            .await;
        assert!(
            started.elapsed() < Duration::from_secs(2),
            "the answer did not wait"
        );
        sids.push(login.sid);
    }
    backend.gate.add_permits(3);
    let mut told = HashSet::new();
    for _ in 0..3 {
        let c = claims(&backend.next_token().await);
        told.insert(c["sid"].as_str().unwrap().to_string());
    }
    assert_eq!(told, sids.into_iter().collect::<HashSet<_>>());
    wait_for_metric(&sso, DELIVERED, 3.0).await;
    assert_eq!(sso.hub.metric(DROPPED).await, 0.0);
}

/// A notification survives the hub's death: the backend holds the first
/// attempt, the hub is killed (-9) meanwhile, and after the restart the
/// notice — kept in the session graph's outbox — is delivered.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_pending_notification_survives_a_kill_9() {
    use common::process::{Running, config_file};
    slo_hub::auth::crypto::install();
    let mut backend = Backend::start(&[], false).await;
    let port = common::free_port();
    let base = format!("http://127.0.0.1:{port}");
    let (_cfg, path) = config_file(&format!(
        r#"listen = "127.0.0.1:{port}"
public_url = "{base}"
[dev]
issuer = true
[notify]
request_timeout_ms = 500
first_retry_ms = 50
[[api_keys]]
name = "test"
sha256 = "{}"
scopes = ["logout:any", "revoke"]
[[clients]]
client_id = "native"
kind = "native"
can_create_session_transfer_token = true
[[clients]]
client_id = "web"
kind = "web"
redirect_uris = ["{CB}"]
backchannel_logout_uri = "{}"
"#,
        common::sha256_hex(common::API_KEY),
        backend.url
    ));
    let dir = tempfile::tempdir().unwrap();
    let args = ["serve", "--config", path.as_str()];
    let hub = Running::start(&args, &[], dir.path());
    let http = client_from(None);
    let post = |path: &str, body: Value| {
        let req = http.post(format!("{base}{path}")).json(&body);
        let req = if path == "/v1/revocations" {
            req.bearer_auth(common::API_KEY)
        } else {
            req
        };
        async move { req.send().await.unwrap().json::<Value>().await.unwrap() }
    };
    let refresh = post(
        "/dev/native-session",
        json!({"sub": "alice", "client_id": "native"}),
    )
    .await;
    let stt = post(
        "/oauth/token",
        json!({"grant_type": "refresh_token", "client_id": "native",
               "refresh_token": refresh["refresh_token"], "audience": AUD}),
    )
    .await;
    let (verifier, challenge) = pkce();
    let q: String = form_urlencoded::Serializer::new(String::new())
        .extend_pairs([
            ("client_id", "web"),
            ("redirect_uri", CB),
            ("response_type", "code"),
            ("code_challenge", challenge.as_str()),
            ("code_challenge_method", "S256"),
            (
                "session_transfer_token",
                stt["access_token"].as_str().unwrap(),
            ),
        ])
        .finish();
    let r = http
        .get(format!("{base}/authorize?{q}"))
        .send()
        .await
        .unwrap();
    let location = r.headers()["location"].to_str().unwrap().to_string();
    let code = location
        .split("code=")
        .nth(1)
        .unwrap()
        .split('&')
        .next()
        .unwrap()
        .to_string();
    let login = post(
        "/oauth/token",
        json!({"grant_type": "authorization_code", "client_id": "web", "code": code,
               "redirect_uri": CB, "code_verifier": verifier}),
    )
    .await;
    let sid = login["session_id"].as_str().unwrap().to_string();
    let v = post("/v1/revocations", json!({"type": "session", "id": sid})).await;
    assert_eq!(v["revoked"]["web_sessions"], 1, "{v}");
    // The backend holds the first attempt; the hub dies meanwhile.
    let held = claims(&backend.next_token().await);
    assert_eq!(held["sid"], sid);
    hub.kill9();
    backend.gate.add_permits(10);
    let hub = Running::start(&args, &[], dir.path());
    let delivered = claims(&backend.next_token().await);
    assert_eq!(delivered["sid"], sid, "delivered after the restart");
    assert_eq!(hub.terminate().0, 0);
}
