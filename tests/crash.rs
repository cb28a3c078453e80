//! Crash consistency of the session graph (Native-to-Web SSO).
//!
//! Random interleavings of graph operations race each other against a real
//! hub process — redemptions that reuse a web session, silent SSO, session
//! and refresh-token revocations, code exchanges, mints — and the process is
//! killed (SIGKILL) or stopped (SIGTERM) at a random moment while requests
//! are in flight. After each restart, everything the hub *confirmed* before
//! it went down must still hold: a web session it answered as revoked gives
//! no code to its cookie and its session token opens no socket; a transfer
//! token it answered for is used up; a refresh token it revoked mints
//! nothing. What was in flight when it died may go either way.
//!
//! `SLO_HUB_CRASH_SEED` replays one run; `SLO_HUB_CRASH_ROUNDS` changes how
//! many rounds run (CI: the default).

mod common;

use std::collections::HashSet;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use common::process::{Running, config_file};
use common::sso::{AUD, CB, pkce};
use common::{API_KEY, Seen, Ws, sha256_hex};
use serde_json::{Value, json};

/// Rounds of (race, crash, restart, check); each round runs about
/// `USERS * OPS_PER_USER` operations, so the default is ~500 interleavings.
const ROUNDS: usize = 20;
const USERS: usize = 5;
const OPS_PER_USER: usize = 5;

/// A small deterministic generator (xorshift64*), seeded per run.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }
    fn below(&mut self, n: u64) -> u64 {
        self.next() % n
    }
}

/// What the hub confirmed; checked after every restart.
#[derive(Default)]
struct Facts {
    /// Web sessions answered as revoked: (cookie, session token).
    revoked_webs: Vec<(String, String)>,
    /// Transfer tokens `/authorize` answered for (used up, whatever the outcome).
    used_stts: Vec<String>,
    /// Native refresh tokens answered as revoked.
    revoked_refresh: Vec<String>,
}

/// One user's SSO state as the test's clients hold it.
#[derive(Clone)]
struct User {
    refresh: String,
    cookie: String,
    sid: String,
    token: String,
}

struct Hub {
    base: String,
    http: reqwest::Client,
}

impl Hub {
    fn new(base: &str) -> Hub {
        Hub {
            base: base.to_string(),
            http: reqwest::Client::builder()
                .redirect(reqwest::redirect::Policy::none())
                .timeout(Duration::from_secs(10))
                .build()
                .unwrap(),
        }
    }

    async fn post_json(&self, path: &str, body: Value) -> reqwest::Result<(u16, Value)> {
        let mut req = self.http.post(format!("{}{path}", self.base)).json(&body);
        if path == "/v1/revocations" {
            req = req.bearer_auth(API_KEY);
        }
        let r = req.send().await?;
        let status = r.status().as_u16();
        Ok((status, r.json().await.unwrap_or(Value::Null)))
    }

    async fn native_login(&self, sub: &str) -> String {
        let (s, v) = self
            .post_json(
                "/dev/native-session",
                json!({"sub": sub, "client_id": "native"}),
            )
            .await
            .unwrap();
        assert_eq!(s, 200, "{v}");
        v["refresh_token"].as_str().unwrap().to_string()
    }

    async fn mint(&self, refresh: &str) -> reqwest::Result<(u16, Value)> {
        self.post_json(
            "/oauth/token",
            json!({"grant_type": "refresh_token", "client_id": "native",
                   "refresh_token": refresh, "audience": AUD}),
        )
        .await
    }

    /// `/authorize` with an optional cookie and STT: (code, new cookie, error).
    async fn authorize(
        &self,
        cookie: Option<&str>,
        stt: Option<&str>,
        challenge: &str,
    ) -> reqwest::Result<(Option<String>, Option<String>, Option<String>)> {
        let query = {
            let mut q = form_urlencoded::Serializer::new(String::new());
            q.append_pair("client_id", "web")
                .append_pair("redirect_uri", CB)
                .append_pair("response_type", "code")
                .append_pair("code_challenge", challenge)
                .append_pair("code_challenge_method", "S256");
            if let Some(t) = stt {
                q.append_pair("session_transfer_token", t);
            }
            q.finish()
        };
        let mut req = self.http.get(format!("{}/authorize?{query}", self.base));
        if let Some(c) = cookie {
            req = req.header("cookie", format!("slo_hub_session={c}"));
        }
        let r = req.send().await?;
        let location = r
            .headers()
            .get("location")
            .and_then(|v| v.to_str().ok())
            .unwrap_or("")
            .to_string();
        let new_cookie = r.headers().get_all("set-cookie").iter().find_map(|v| {
            let v = v.to_str().ok()?.strip_prefix("slo_hub_session=")?;
            let v = v.split(';').next()?;
            (!v.is_empty()).then(|| v.to_string())
        });
        let params: Vec<(String, String)> = location
            .split_once('?')
            .map(|(_, q)| form_urlencoded::parse(q.as_bytes()).into_owned().collect())
            .unwrap_or_default();
        let get = |k: &str| params.iter().find(|(n, _)| n == k).map(|(_, v)| v.clone());
        Ok((get("code"), new_cookie, get("error")))
    }

    async fn exchange(&self, code: &str, verifier: &str) -> reqwest::Result<(u16, Value)> {
        self.post_json(
            "/oauth/token",
            json!({"grant_type": "authorization_code", "client_id": "web", "code": code,
                   "redirect_uri": CB, "code_verifier": verifier}),
        )
        .await
    }

    /// A user signed in to the web app by transfer: cookie, sid, session token.
    async fn sign_in(&self, sub: &str) -> User {
        let refresh = self.native_login(sub).await;
        let (s, v) = self.mint(&refresh).await.unwrap();
        assert_eq!(s, 200, "{v}");
        let stt = v["access_token"].as_str().unwrap();
        let (verifier, challenge) = pkce();
        let (code, cookie, err) = self.authorize(None, Some(stt), &challenge).await.unwrap();
        let (code, cookie) = (
            code.unwrap_or_else(|| panic!("no code: {err:?}")),
            cookie.unwrap(),
        );
        let (s, v) = self.exchange(&code, &verifier).await.unwrap();
        assert_eq!(s, 200, "{v}");
        User {
            refresh,
            cookie,
            sid: v["session_id"].as_str().unwrap().to_string(),
            token: v["access_token"].as_str().unwrap().to_string(),
        }
    }
}

/// One random operation on `u`; records what the hub confirmed.
async fn operate(hub: &Hub, u: &User, op: u64, facts: &Mutex<Facts>) -> reqwest::Result<()> {
    match op {
        // Outcome 2: a new transfer token into the same user's live session
        // (touches it), racing its revocation below.
        0..=2 => {
            let (s, v) = hub.mint(&u.refresh).await?;
            if s != 200 {
                return Ok(());
            }
            let stt = v["access_token"].as_str().unwrap().to_string();
            let (verifier, challenge) = pkce();
            let (code, _, _) = hub
                .authorize(Some(&u.cookie), Some(&stt), &challenge)
                .await?;
            facts.lock().unwrap().used_stts.push(stt);
            if let Some(code) = code {
                hub.exchange(&code, &verifier).await?;
            }
        }
        // Silent SSO with the cookie (touches the session).
        3 => {
            let (_, challenge) = pkce();
            hub.authorize(Some(&u.cookie), None, &challenge).await?;
        }
        // Revoke the web session.
        4..=5 => {
            let (s, v) = hub
                .post_json("/v1/revocations", json!({"type": "session", "id": u.sid}))
                .await?;
            assert!(s == 200 || s == 503, "revocation answered {s}: {v}");
            if s == 200 {
                facts
                    .lock()
                    .unwrap()
                    .revoked_webs
                    .push((u.cookie.clone(), u.token.clone()));
            }
        }
        // Revoke the native refresh token (cascades to the web session).
        6 => {
            let (s, _) = hub
                .post_json(
                    "/v1/revocations",
                    json!({"type": "refresh_token", "token": u.refresh}),
                )
                .await?;
            if s == 200 {
                let mut f = facts.lock().unwrap();
                f.revoked_refresh.push(u.refresh.clone());
                f.revoked_webs.push((u.cookie.clone(), u.token.clone()));
            }
        }
        // A mint that stays unused.
        _ => {
            hub.mint(&u.refresh).await?;
        }
    }
    Ok(())
}

/// After a restart: nothing confirmed revoked or used works again.
async fn check(hub: &Hub, ws_url: &str, facts: &Facts, round: usize) -> Vec<String> {
    let mut broken = Vec::new();
    let (_, challenge) = pkce();
    let mut seen = HashSet::new();
    for (cookie, token) in &facts.revoked_webs {
        if !seen.insert(cookie.clone()) {
            continue;
        }
        let (code, _, err) = hub.authorize(Some(cookie), None, &challenge).await.unwrap();
        if code.is_some() || err.as_deref() != Some("login_required") {
            broken.push(format!(
                "round {round}: a revoked web session's cookie still gets a code"
            ));
        }
        let mut ws = Ws::connect(ws_url, None).await.unwrap();
        ws.send_json(json!({"type": "auth", "token": token})).await;
        if let Seen::Json(m) = ws.next().await
            && m["type"] == "ready"
        {
            broken.push(format!(
                "round {round}: a revoked web session's token opened a socket"
            ));
        }
    }
    for stt in &facts.used_stts {
        let (code, _, _) = hub.authorize(None, Some(stt), &challenge).await.unwrap();
        if code.is_some() {
            broken.push(format!("round {round}: a used transfer token gave a code"));
        }
    }
    for refresh in &facts.revoked_refresh {
        let (s, _) = hub.mint(refresh).await.unwrap();
        if s == 200 {
            broken.push(format!("round {round}: a revoked refresh token minted"));
        }
    }
    broken
}

fn config(port: u16) -> String {
    format!(
        r#"listen = "127.0.0.1:{port}"
public_url = "http://127.0.0.1:{port}"

[dev]
issuer = true

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
allowed_origins = ["https://web.test"]
"#,
        sha256_hex(API_KEY)
    )
}

#[test]
fn confirmed_revocations_survive_crashes_at_random_points() {
    slo_hub::auth::crypto::install();
    let seed = std::env::var("SLO_HUB_CRASH_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| slo_hub::util::now_ms() as u64 | 1);
    let rounds = std::env::var("SLO_HUB_CRASH_ROUNDS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(ROUNDS);
    eprintln!("crash test seed {seed} (SLO_HUB_CRASH_SEED={seed} replays it)");
    let mut rng = Rng(seed);
    let dir = tempfile::tempdir().unwrap();
    let port = common::free_port();
    let (_cfg_dir, path) = config_file(&config(port));
    let args = ["serve", "--config", path.as_str()];
    let base = format!("http://127.0.0.1:{port}");
    let ws_url = format!("ws://127.0.0.1:{port}/v1/ws");
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    let mut facts = Facts::default();
    let mut broken = Vec::new();
    let mut running = Some(Running::start(&args, &[], dir.path()));
    for round in 0..rounds {
        let hub = Arc::new(Hub::new(&base));
        let users: Vec<User> = rt.block_on(async {
            let mut v = Vec::new();
            for i in 0..USERS {
                v.push(hub.sign_in(&format!("u{round}-{i}")).await);
            }
            v
        });
        let round_facts = Arc::new(Mutex::new(Facts::default()));
        let ops: Vec<(usize, u64, u64)> = (0..USERS * OPS_PER_USER)
            .map(|i| (i % USERS, rng.below(8), rng.below(40)))
            .collect();
        let kill_after = Duration::from_millis(rng.below(120));
        let graceful = rng.below(4) == 0;
        rt.block_on(async {
            let mut tasks = tokio::task::JoinSet::new();
            for (u, op, delay) in ops {
                let (hub, user, f) = (hub.clone(), users[u].clone(), round_facts.clone());
                tasks.spawn(async move {
                    tokio::time::sleep(Duration::from_millis(delay)).await;
                    // A failed request (the hub died under it) confirms nothing.
                    let _ = operate(&hub, &user, op, &f).await;
                });
            }
            tokio::time::sleep(kill_after).await;
            // The crash: whatever is in flight now may go either way.
            let hub_process = running.take().unwrap();
            let stopped = if graceful {
                hub_process.terminate().0
            } else {
                hub_process.kill9();
                0
            };
            assert_eq!(stopped, 0, "SIGTERM exit code");
            while tasks.join_next().await.is_some() {}
        });
        let mut f = round_facts.lock().unwrap();
        facts.revoked_webs.append(&mut f.revoked_webs);
        facts.used_stts.append(&mut f.used_stts);
        facts.revoked_refresh.append(&mut f.revoked_refresh);
        drop(f);
        running = Some(Running::start(&args, &[], dir.path()));
        broken.extend(rt.block_on(check(&hub, &ws_url, &facts, round)));
    }
    assert_eq!(running.take().unwrap().terminate().0, 0);
    eprintln!(
        "{} revoked web sessions, {} used transfer tokens, {} revoked refresh tokens checked",
        facts.revoked_webs.len(),
        facts.used_stts.len(),
        facts.revoked_refresh.len()
    );
    assert!(
        broken.is_empty(),
        "seed {seed}: {} broken promises:\n{}",
        broken.len(),
        broken.join("\n")
    );
}
