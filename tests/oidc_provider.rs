//! Proof with a real OpenID provider: node `oidc-provider` (npm, a certified
//! OpenID provider implementing Back-Channel Logout 1.0), started on an
//! ephemeral loopback port by `tests/node/oidc-provider.mjs`, with the hub
//! registered as its client's `backchannel_logout_uri`.
//!
//! A user logs in at the provider (its own login and consent pages, code
//! flow with PKCE); a socket connects to the hub with the provider's ID
//! token (keys from the provider's real `jwks_uri`); the user's session is
//! ended at the provider (RP-initiated logout, confirm form included); the
//! provider POSTs its logout token to the hub and the socket is told. Then
//! the provider's signing key is rotated and it all happens again.

mod common;

use std::path::PathBuf;
use std::process::Stdio;

use common::{EVENT_TIMEOUT, TestHub, Ws, require_program};
use serde_json::{Value, json};
use slo_hub::config::IssuerSettings;
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader, Lines};
use tokio::process::{Child, ChildStdin, ChildStdout, Command};

/// The provider process and its line protocol.
struct OidcProvider {
    _child: Child,
    stdin: ChildStdin,
    stdout: Lines<BufReader<ChildStdout>>,
    issuer: String,
}

impl OidcProvider {
    async fn start() -> Option<OidcProvider> {
        let node = require_program("node", &["/usr/bin/node"])?;
        let dir = common::require_node_packages()?;
        let mut child = Command::new(node)
            .arg(PathBuf::from(&dir).join("oidc-provider.mjs"))
            .current_dir(&dir)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .kill_on_drop(true)
            .spawn()
            .expect("node starts");
        let stdin = child.stdin.take().unwrap();
        let stdout = BufReader::new(child.stdout.take().unwrap()).lines();
        let mut p = OidcProvider {
            _child: child,
            stdin,
            stdout,
            issuer: String::new(),
        };
        let hello = p.read().await;
        p.issuer = hello["issuer"].as_str().expect("issuer").to_string();
        Some(p)
    }

    /// The next answer (the library's own notices, also on stdout, are
    /// passed on to stderr).
    async fn read(&mut self) -> Value {
        loop {
            let line = tokio::time::timeout(EVENT_TIMEOUT * 3, self.stdout.next_line())
                .await
                .expect("the provider answered in time")
                .unwrap()
                .expect("the provider is running");
            match serde_json::from_str(&line) {
                Ok(v) => return v,
                Err(_) => eprintln!("oidc-provider: {line}"),
            }
        }
    }

    async fn call(&mut self, cmd: Value) -> Value {
        self.stdin
            .write_all(format!("{cmd}\n").as_bytes())
            .await
            .unwrap();
        let answer = self.read().await;
        assert_eq!(answer["ok"], true, "{cmd} failed: {answer}");
        answer
    }
}

fn header_kid(jwt: &str) -> String {
    jsonwebtoken::decode_header(jwt).unwrap().kid.unwrap()
}

/// Logs `user` in at the provider, opens a socket with the ID token: the
/// socket and the provider's session id.
async fn login_and_connect(hub: &TestHub, op: &mut OidcProvider, user: &str) -> (Ws, String) {
    let login = op.call(json!({"cmd": "login", "user": user})).await;
    let id_token = login["id_token"].as_str().unwrap();
    assert_eq!(
        header_kid(id_token),
        login["kid"],
        "signed with the current key"
    );
    let (ws, ready) = hub.socket(id_token).await;
    assert_eq!(ready["sub"], user, "{ready}");
    (ws, login["sid"].as_str().unwrap().to_string())
}

/// Ends `sid` at the provider and checks the provider's own report: its
/// back-channel POST to the hub was answered 200.
async fn logout_at_provider(op: &mut OidcProvider, sid: &str) {
    let out = op.call(json!({"cmd": "logout", "sid": sid})).await;
    assert_eq!(
        out["backchannel"],
        json!([{ "ok": true, "client": "spa", "sid": sid }]),
        "the provider delivered its logout token to the hub"
    );
}

#[tokio::test]
async fn a_logout_at_oidc_provider_reaches_the_socket_before_and_after_key_rotation() {
    let Some(mut op) = OidcProvider::start().await else {
        return;
    };
    let issuer = op.issuer.clone();
    let hub = TestHub::with(|c| {
        c.issuers.push(IssuerSettings {
            issuer: issuer.clone(),
            audiences: vec!["spa".into()],
            algorithms: vec![jsonwebtoken::Algorithm::RS256],
            jwks_url: Some(format!("{issuer}/jwks")),
            keys: vec![],
            hs256_secret: None,
            leeway_secs: 5,
            // A rotated key is fetched at its first sight.
            jwks_min_refetch_secs: 0,
            require_logout_typ: true,
            speaks_for: vec![],
        });
    })
    .await;
    let first_kid = op.call(json!({"cmd": "configure", "hub": hub.url})).await["kid"].clone();

    for round in ["first key", "rotated key"] {
        // Alice in two browsers: two provider sessions, one socket each.
        let (mut ws, sid) = login_and_connect(&hub, &mut op, "alice").await;
        let (mut other, other_sid) = login_and_connect(&hub, &mut op, "alice").await;
        assert_ne!(sid, other_sid);

        logout_at_provider(&mut op, &sid).await;
        let msg = ws.recv_json().await;
        assert_eq!(msg["type"], "logout", "{round}: {msg}");
        assert_eq!(msg["scope"], "session", "{round}: {msg}");
        // The other session of the same user stays logged in.
        other.assert_quiet().await;

        logout_at_provider(&mut op, &other_sid).await;
        assert_eq!(other.recv_json().await["type"], "logout", "{round}");

        if round == "first key" {
            let rotated = op.call(json!({"cmd": "rotate"})).await["kid"].clone();
            assert_ne!(rotated, first_kid, "a new key id");
        }
    }
    assert_eq!(
        hub.metric("slo_hub_logout_events_total{source=\"backchannel\"}")
            .await,
        4.0
    );
}
