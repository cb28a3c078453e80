//! Native-to-Web SSO as a test drives it: registered clients, a browser
//! with its own cookie jar and address, and the whole transfer flow
//! (native login, mint, `/authorize`, code exchange).

use std::net::IpAddr;

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use serde_json::{Value, json};
use slo_hub::config::{AuthMethod, ClientKind, ClientSettings, Config};

use super::{API_KEY, TestHub};

pub const AUD: &str = "urn:slo-hub:session_transfer";
pub const CB: &str = "https://web.test/cb";
/// The secret of the confidential native client `native-secret`.
pub const CLIENT_SECRET: &str = "a-confidential-native-client-secret";
pub const TOKEN_EXCHANGE: &str = "urn:ietf:params:oauth:grant-type:token-exchange";
pub const ACCESS_TOKEN_TYPE: &str = "urn:ietf:params:oauth:token-type:access_token";

pub fn native(id: &str, adjust: impl FnOnce(&mut ClientSettings)) -> ClientSettings {
    let mut c = ClientSettings::new(id, ClientKind::Native);
    c.can_create_session_transfer_token = true;
    adjust(&mut c);
    c
}

pub fn web(id: &str, adjust: impl FnOnce(&mut ClientSettings)) -> ClientSettings {
    let mut c = ClientSettings::new(id, ClientKind::Web);
    c.redirect_uris = vec![CB.into()];
    c.allow_refresh_token = true;
    adjust(&mut c);
    c
}

pub fn clients(c: &mut Config) {
    c.clients = vec![
        native("native", |_| {}),
        native("native-nocascade", |c| c.enforce_cascade_revocation = false),
        native("native-rotating", |c| c.rotate_refresh_token = true),
        native("native-weak", |c| {
            c.can_create_session_transfer_token = false
        }),
        native("native-to-other", |c| {
            c.transfer_to = vec!["web-other".into()]
        }),
        web("web", |_| {}),
        web("web-other", |_| {}),
        web("web-offline", |c| c.enforce_online_refresh_tokens = false),
        web("web-cookie-only", |c| {
            c.allowed_authentication_methods = vec![AuthMethod::Cookie]
        }),
        web("web-short", |c| {
            c.session_lifetime_secs = 2;
            c.session_idle_secs = 2;
        }),
        native("native-secret", |c| {
            c.client_secret_sha256 = Some(super::sha256_hex(CLIENT_SECRET))
        }),
        native("native-trusting", |c| {
            c.token_exchange_subject_clients = vec!["partner-app".into()];
            c.token_exchange_outlives_subject = true;
        }),
    ];
}

/// A browser: a cookie jar of its own (the hub's session cookie) and an address.
#[derive(Default, Clone)]
pub struct Browser {
    pub session_cookie: Option<String>,
    pub from: Option<IpAddr>,
}

/// Where `/authorize` sent the browser.
#[derive(Debug)]
pub struct Redirect {
    pub status: u16,
    pub location: Option<String>,
    pub params: Vec<(String, String)>,
    pub set_cookies: Vec<String>,
    pub body: String,
}

impl Redirect {
    pub fn param(&self, k: &str) -> Option<&str> {
        self.params
            .iter()
            .find(|(n, _)| n == k)
            .map(|(_, v)| v.as_str())
    }
}

/// A web session as the SPA holds it.
pub struct WebLogin {
    pub token: String,
    pub sid: String,
    pub refresh_token: Option<String>,
}

pub struct Sso {
    pub hub: TestHub,
}

pub fn pkce() -> (String, String) {
    let verifier = URL_SAFE_NO_PAD.encode(slo_hub::util::random_bytes::<32>());
    let challenge = URL_SAFE_NO_PAD
        .encode(ring::digest::digest(&ring::digest::SHA256, verifier.as_bytes()).as_ref());
    (verifier, challenge)
}

pub fn client_from(from: Option<IpAddr>) -> reqwest::Client {
    let mut b = reqwest::Client::builder().redirect(reqwest::redirect::Policy::none());
    if let Some(ip) = from {
        b = b.local_address(ip);
    }
    b.build().unwrap()
}

impl Sso {
    pub async fn start() -> Sso {
        Sso::with(|_| {}).await
    }

    pub async fn with(adjust: impl FnOnce(&mut Config)) -> Sso {
        Sso {
            hub: TestHub::with(|c| {
                clients(c);
                adjust(c);
            })
            .await,
        }
    }

    /// A native app's login (dev issuer user `sub`): its refresh token.
    pub async fn native_login(&self, client_id: &str, sub: &str) -> String {
        let r = self
            .hub
            .http
            .post(format!("{}/dev/native-session", self.hub.url))
            .json(&json!({"sub": sub, "client_id": client_id}))
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 200);
        let v: Value = r.json().await.unwrap();
        v["refresh_token"].as_str().unwrap().to_string()
    }

    /// POST /oauth/token with a JSON body, from an address: status and answer.
    pub async fn token_from(
        &self,
        from: Option<IpAddr>,
        body: Value,
        xff: Option<&str>,
    ) -> (u16, Value) {
        let mut req = client_from(from)
            .post(format!("{}/oauth/token", self.hub.url))
            .json(&body);
        if let Some(x) = xff {
            req = req.header("x-forwarded-for", x);
        }
        let r = req.send().await.unwrap();
        let status = r.status().as_u16();
        assert_eq!(r.headers()["cache-control"], "no-store");
        (status, r.json().await.unwrap())
    }

    pub async fn token(&self, body: Value) -> (u16, Value) {
        self.token_from(None, body, None).await
    }

    pub async fn mint(&self, client_id: &str, refresh: &str) -> (u16, Value) {
        self.token(json!({
            "grant_type": "refresh_token", "client_id": client_id,
            "refresh_token": refresh, "audience": AUD,
        }))
        .await
    }

    pub async fn stt(&self, client_id: &str, refresh: &str) -> String {
        let (status, v) = self.mint(client_id, refresh).await;
        assert_eq!(status, 200, "{v}");
        assert_eq!(
            v["issued_token_type"],
            "urn:auth0:params:oauth:token-type:session_transfer_token"
        );
        assert_eq!(v["token_type"], "N_A");
        assert_eq!(v["expires_in"], 60);
        v["access_token"].as_str().unwrap().to_string()
    }

    /// GET /authorize as `browser`, the STT by query or cookie.
    pub async fn authorize(
        &self,
        browser: &Browser,
        client_id: &str,
        stt_query: Option<&str>,
        stt_cookie: Option<&str>,
        challenge: &str,
    ) -> Redirect {
        self.authorize_to(
            browser, client_id, CB, stt_query, stt_cookie, challenge, None,
        )
        .await
    }

    #[allow(clippy::too_many_arguments)]
    pub async fn authorize_to(
        &self,
        browser: &Browser,
        client_id: &str,
        redirect_uri: &str,
        stt_query: Option<&str>,
        stt_cookie: Option<&str>,
        challenge: &str,
        xff: Option<&str>,
    ) -> Redirect {
        let mut q = vec![
            ("client_id", client_id),
            ("redirect_uri", redirect_uri),
            ("response_type", "code"),
            ("state", "st4te"),
            ("code_challenge", challenge),
            ("code_challenge_method", "S256"),
        ];
        if let Some(t) = stt_query {
            q.push(("session_transfer_token", t));
        }
        let mut cookies = Vec::new();
        if let Some(c) = &browser.session_cookie {
            cookies.push(format!("slo_hub_session={c}"));
        }
        if let Some(t) = stt_cookie {
            cookies.push(format!("session_transfer_token={t}"));
        }
        let query: String = form_urlencoded::Serializer::new(String::new())
            .extend_pairs(&q)
            .finish();
        let mut req = client_from(browser.from).get(format!("{}/authorize?{query}", self.hub.url));
        if !cookies.is_empty() {
            req = req.header("cookie", cookies.join("; "));
        }
        if let Some(x) = xff {
            req = req.header("x-forwarded-for", x);
        }
        let r = req.send().await.unwrap();
        let status = r.status().as_u16();
        let location = r
            .headers()
            .get("location")
            .map(|v| v.to_str().unwrap().to_string());
        let set_cookies = r
            .headers()
            .get_all("set-cookie")
            .iter()
            .map(|v| v.to_str().unwrap().to_string())
            .collect();
        let params = location
            .as_deref()
            .and_then(|l| l.split_once('?'))
            .map(|(_, q)| {
                form_urlencoded::parse(q.as_bytes())
                    .into_owned()
                    .collect::<Vec<_>>()
            })
            .unwrap_or_default();
        Redirect {
            status,
            location,
            params,
            set_cookies,
            body: r.text().await.unwrap(),
        }
    }

    /// The authorization-code exchange.
    pub async fn exchange(&self, client_id: &str, code: &str, verifier: &str) -> (u16, Value) {
        self.token(json!({
            "grant_type": "authorization_code", "client_id": client_id,
            "code": code, "redirect_uri": CB, "code_verifier": verifier,
        }))
        .await
    }

    /// The whole redemption (query mode): browser gets its session cookie,
    /// the SPA its session token.
    pub async fn open_web(&self, browser: &mut Browser, client_id: &str, stt: &str) -> WebLogin {
        let (verifier, challenge) = pkce();
        let r = self
            .authorize(browser, client_id, Some(stt), None, &challenge)
            .await;
        assert_eq!(r.status, 303, "{r:?}");
        assert_eq!(r.param("state"), Some("st4te"));
        let code = r.param("code").unwrap_or_else(|| panic!("no code: {r:?}"));
        if let Some(c) = session_cookie(&r) {
            browser.session_cookie = Some(c);
        }
        let (status, v) = self.exchange(client_id, code, &verifier).await;
        assert_eq!(status, 200, "{v}");
        WebLogin {
            token: v["access_token"].as_str().unwrap().to_string(),
            sid: v["session_id"].as_str().unwrap().to_string(),
            refresh_token: v["refresh_token"].as_str().map(str::to_string),
        }
    }

    /// Alice's native app, and a browser signed in to `client` by transfer.
    pub async fn alice_on(&self, client: &str) -> (String, Browser, WebLogin) {
        let refresh = self.native_login("native", "alice").await;
        let mut browser = Browser::default();
        let stt = self.stt("native", &refresh).await;
        let login = self.open_web(&mut browser, client, &stt).await;
        (refresh, browser, login)
    }

    pub async fn revoke(&self, body: Value) -> Value {
        let (status, _, v) = self.post_revocation(body).await;
        assert_eq!(status, 200, "{v}");
        v
    }

    pub async fn post_revocation(&self, body: Value) -> (u16, reqwest::header::HeaderMap, Value) {
        let r = self
            .hub
            .http
            .post(format!("{}/v1/revocations", self.hub.url))
            .bearer_auth(API_KEY)
            .json(&body)
            .send()
            .await
            .unwrap();
        let (s, h) = (r.status().as_u16(), r.headers().clone());
        (s, h, r.json().await.unwrap())
    }
}

pub fn session_cookie(r: &Redirect) -> Option<String> {
    r.set_cookies.iter().find_map(|c| {
        let v = c.strip_prefix("slo_hub_session=")?.split(';').next()?;
        (!v.is_empty()).then(|| v.to_string())
    })
}

/// (web sessions, native sessions, refresh tokens, transfer tokens) of a
/// `/v1/revocations` answer.
pub fn revoked_counts(v: &Value) -> (u64, u64, u64, u64) {
    let n = |k: &str| {
        v["revoked"][k]
            .as_u64()
            .unwrap_or_else(|| panic!("no {k}: {v}"))
    };
    (
        n("web_sessions"),
        n("native_sessions"),
        n("refresh_tokens"),
        n("transfer_tokens"),
    )
}

pub fn claims(token: &str) -> Value {
    let payload = token.split('.').nth(1).unwrap();
    serde_json::from_slice(&URL_SAFE_NO_PAD.decode(payload).unwrap()).unwrap()
}
