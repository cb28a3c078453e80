//! The binary as operators run it: dev mode flags, production config files,
//! env overrides, exit code 2 for bad settings, SIGTERM.

mod common;

use common::process::{Running, config_file, run_failing, test_config_file};

#[test]
fn a_bad_config_value_exits_2_and_names_the_key() {
    let cases = [
        ("[ws]\nmax_message_bytes = 10\n", "ws.max_message_bytes"),
        ("listen = 42\n", "listen"),
        ("surprise = true\n", "surprise"),
        (
            "[[issuers]]\nissuer = \"https://x\"\naudiences = []\njwks_url = \"https://x/jwks\"\n",
            "issuers[0].audiences",
        ),
        (
            "[[api_keys]]\nname = \"b\"\nsha256 = \"abc\"\nscopes = []\n",
            "api_keys[0].sha256",
        ),
    ];
    for (text, key) in cases {
        let (_dir, path) = config_file(text);
        let (code, stderr) = run_failing(&["serve", "--config", &path], &[]);
        assert_eq!(code, 2, "{text}: {stderr}");
        assert!(
            stderr.contains(key),
            "{text}: expected {key:?} in {stderr:?}"
        );
    }
}

#[test]
fn env_overrides_are_validated_too() {
    let (_dir, path) = config_file("");
    let (code, stderr) = run_failing(
        &["serve", "--config", &path],
        &[("SLO_HUB_WS__MAX_MESSAGE_BYTES", "3")],
    );
    assert_eq!(code, 2, "{stderr}");
    assert!(stderr.contains("ws.max_message_bytes"), "{stderr}");
    let (code, stderr) = run_failing(&[], &[("SLO_HUB_LISTEN", "not-an-address")]);
    assert_eq!(code, 2, "{stderr}");
    assert!(stderr.contains("--listen"), "{stderr}");
    let (code, stderr) = run_failing(&["serve", "--config", "/nonexistent/slo.toml"], &[]);
    assert_eq!(code, 2, "{stderr}");
    assert!(stderr.contains("--config"), "{stderr}");
}

/// Three consecutive free ports, so the demo apps can follow the hub's.
fn free_port_run() -> u16 {
    // Many tries: other processes' sockets (a benchmark, parallel tests) can
    // hold much of the ephemeral range.
    for _ in 0..1000 {
        let p = common::free_port();
        if p > 65000 {
            continue;
        }
        let all_free = (0..3).all(|i| std::net::TcpListener::bind(("127.0.0.1", p + i)).is_ok());
        if all_free {
            return p;
        }
    }
    panic!("no three consecutive free ports");
}

#[test]
fn dev_mode_listens_where_told_and_the_demo_ports_follow() {
    let dir = tempfile::tempdir().unwrap();
    let port = free_port_run();
    let hub = Running::start(&["--listen", &format!("127.0.0.1:{port}")], &[], dir.path());
    assert_eq!(hub.line("hub").unwrap(), format!("http://127.0.0.1:{port}"));
    assert_eq!(
        hub.line("demo app-a").unwrap(),
        format!("http://127.0.0.1:{}", port + 1)
    );
    assert_eq!(
        hub.line("demo app-b").unwrap(),
        format!("http://127.0.0.1:{}", port + 2)
    );
    let body = reqwest::blocking_get(&format!("http://127.0.0.1:{}/", port + 1));
    assert!(body.contains("App A"), "{body}");
    // The dev issuer key was created in the data dir and survives restarts.
    assert!(dir.path().join("dev-issuer.ed25519.pk8").is_file());
    let (code, log) = hub.terminate();
    assert_eq!(code, 0, "{log}");
    assert!(log.contains("shutting down"), "{log}");
}

#[test]
fn the_env_moves_the_hub_and_no_demo_turns_the_demo_off() {
    let dir = tempfile::tempdir().unwrap();
    let port = common::free_port();
    let hub = Running::start(
        &["--no-demo"],
        &[("SLO_HUB_LISTEN", &format!("127.0.0.1:{port}"))],
        dir.path(),
    );
    assert_eq!(hub.line("hub").unwrap(), format!("http://127.0.0.1:{port}"));
    assert!(hub.line("demo").is_none(), "{:?}", hub.banner);
    assert_eq!(hub.terminate().0, 0);
}

#[test]
fn production_mode_has_no_dev_issuer_unless_enabled_and_then_warns() {
    let dir = tempfile::tempdir().unwrap();
    let port = common::free_port();
    let (_cfg_dir, path) = config_file(&format!("listen = \"127.0.0.1:{port}\"\n"));
    let hub = Running::start(&["serve", "--config", &path], &[], dir.path());
    let status = reqwest::blocking_post_status(&format!("http://127.0.0.1:{port}/dev/token"));
    assert_eq!(status, 404);
    assert!(hub.line("demo").is_none());
    let (code, log) = hub.terminate();
    assert_eq!(code, 0);
    assert!(!log.contains("dev issuer is enabled"), "{log}");

    let port = common::free_port();
    let (_cfg_dir, path) = config_file(&format!(
        "listen = \"127.0.0.1:{port}\"\n[dev]\nissuer = true\n"
    ));
    let hub = Running::start(&["serve", "--config", &path], &[], dir.path());
    let status = reqwest::blocking_post_status(&format!("http://127.0.0.1:{port}/dev/token"));
    assert_eq!(status, 200);
    let (code, log) = hub.terminate();
    assert_eq!(code, 0);
    assert!(
        log.contains("dev issuer is enabled in production mode"),
        "{log}"
    );
}

/// Logs `user` out through the backend API with the dev API key of the
/// running hub; returns the status.
async fn backend_logout(base: &str, data_dir: &std::path::Path, user: &str) -> u16 {
    let key = std::fs::read_to_string(data_dir.join("dev-api-key")).unwrap();
    ::reqwest::Client::new()
        .post(format!("{base}/v1/logout"))
        .bearer_auth(key.trim())
        .json(&serde_json::json!({ "sub": user }))
        .send()
        .await
        .unwrap()
        .status()
        .as_u16()
}

async fn dev_token(base: &str, user: &str) -> String {
    let v: serde_json::Value = ::reqwest::Client::new()
        .post(format!("{base}/dev/token"))
        .json(&serde_json::json!({ "sub": user }))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    v["access_token"].as_str().unwrap().to_string()
}

#[test]
fn a_logout_survives_a_graceful_restart_and_a_kill_9() {
    slo_hub::auth::crypto::install();
    let dir = tempfile::tempdir().unwrap();
    let rt = reqwest::rt();
    for (user, crash) in [("alice", false), ("bob", true)] {
        let listen = format!("127.0.0.1:{}", common::free_port());
        let base = format!("http://{listen}");
        let args = ["--no-demo", "--listen", listen.as_str()];
        let hub = Running::start(&args, &[], dir.path());
        let token = rt.block_on(dev_token(&base, user));
        assert_eq!(rt.block_on(backend_logout(&base, dir.path(), user)), 200);
        // The 200 promised durability: a crash right after it loses nothing.
        if crash {
            hub.kill9();
        } else {
            assert_eq!(hub.terminate().0, 0);
        }

        let hub = Running::start(&args, &[], dir.path());
        rt.block_on(async {
            let mut ws = common::Ws::connect(&format!("ws://{listen}/v1/ws"), None)
                .await
                .unwrap();
            ws.send_json(serde_json::json!({"type": "auth", "token": token}))
                .await;
            let m = ws.recv_json().await;
            assert_eq!(m["type"], "logout", "{user}: {m}");
            assert_eq!(ws.close_code().await, Some(4000));
        });
        assert_eq!(hub.terminate().0, 0);
    }
}

#[test]
fn a_store_that_cannot_be_opened_stops_start_up_with_code_2() {
    // Locked by another hub on the same data directory.
    let dir = tempfile::tempdir().unwrap();
    let listen = format!("127.0.0.1:{}", common::free_port());
    let hub = Running::start(&["--no-demo", "--listen", &listen], &[], dir.path());
    let other = format!("127.0.0.1:{}", common::free_port());
    let data = dir.path().to_str().unwrap();
    let (code, stderr) = run_failing(
        &["--no-demo", "--listen", &other],
        &[("SLO_HUB_DATA_DIR", data)],
    );
    assert_eq!(code, 2, "{stderr}");
    assert!(stderr.contains("locked"), "{stderr}");
    assert!(
        stderr.contains("refusing to start with an empty store"),
        "{stderr}"
    );
    assert_eq!(hub.terminate().0, 0);

    // Not a store at all: never silently replaced.
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("slo-hub.redb"), b"garbage, not redb").unwrap();
    let data = dir.path().to_str().unwrap();
    let (code, stderr) = run_failing(&["--no-demo"], &[("SLO_HUB_DATA_DIR", data)]);
    assert_eq!(code, 2, "{stderr}");
    assert!(stderr.contains("slo-hub.redb"), "{stderr}");
    assert_eq!(
        std::fs::read(dir.path().join("slo-hub.redb")).unwrap(),
        b"garbage, not redb"
    );
}

#[test]
fn the_memory_store_says_loudly_that_nothing_survives() {
    let dir = tempfile::tempdir().unwrap();
    let listen = format!("127.0.0.1:{}", common::free_port());
    let hub = Running::start(
        &["--no-demo", "--store", "memory", "--listen", &listen],
        &[],
        dir.path(),
    );
    let (code, log) = hub.terminate();
    assert_eq!(code, 0);
    assert!(log.contains("nothing survives a restart"), "{log}");
    assert!(!dir.path().join("slo-hub.redb").exists());
}

/// Tiny blocking HTTP helpers on a throwaway runtime (these tests are sync).
mod reqwest {
    pub fn blocking_get(url: &str) -> String {
        rt().block_on(async {
            client()
                .get(url)
                .send()
                .await
                .unwrap()
                .text()
                .await
                .unwrap()
        })
    }

    pub fn blocking_post_status(url: &str) -> u16 {
        rt().block_on(async {
            client()
                .post(url)
                .header("content-type", "application/json")
                .body(r#"{"sub":"alice"}"#)
                .send()
                .await
                .unwrap()
                .status()
                .as_u16()
        })
    }

    fn client() -> ::reqwest::Client {
        slo_hub::auth::crypto::install();
        ::reqwest::Client::new()
    }

    pub fn rt() -> tokio::runtime::Runtime {
        tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap()
    }
}

#[test]
fn a_back_channel_jti_stays_used_across_a_kill_9() {
    use common::{TEST_AUD, TEST_ISS, TEST_SECRET};
    slo_hub::auth::crypto::install();
    let dir = tempfile::tempdir().unwrap();
    let listen = format!("127.0.0.1:{}", common::free_port());
    let (_cfg, path) = test_config_file(&format!(
        "listen = \"{listen}\"\ndata_dir = \"{}\"",
        dir.path().display()
    ));
    let now = slo_hub::util::now_secs();
    let token = common::forge(
        &serde_json::json!({"alg": "HS256", "typ": "logout+jwt"}),
        &serde_json::json!({
            "iss": TEST_ISS, "aud": TEST_AUD, "iat": now, "exp": now + 120,
            "jti": "once-only", "sub": "alice",
            "events": {"http://schemas.openid.net/event/backchannel-logout": {}},
        }),
        TEST_SECRET.as_bytes(),
    );
    let rt = reqwest::rt();
    let send = |rt: &tokio::runtime::Runtime| {
        rt.block_on(async {
            ::reqwest::Client::new()
                .post(format!("http://{listen}/v1/backchannel-logout"))
                .header("content-type", "application/x-www-form-urlencoded")
                .body(format!("logout_token={token}"))
                .send()
                .await
                .unwrap()
                .status()
                .as_u16()
        })
    };
    let metric = |rt: &tokio::runtime::Runtime, name: &str| -> f64 {
        let text = rt.block_on(async {
            ::reqwest::get(format!("http://{listen}/metrics"))
                .await
                .unwrap()
                .text()
                .await
                .unwrap()
        });
        text.lines()
            .find_map(|l| l.strip_prefix(name)?.trim().parse().ok())
            .unwrap_or(0.0)
    };
    let hub = Running::start(&["serve", "--config", &path], &[], dir.path());
    assert_eq!(send(&rt), 200);
    hub.kill9();

    let hub = Running::start(&["serve", "--config", &path], &[], dir.path());
    assert_eq!(send(&rt), 200);
    assert_eq!(
        metric(&rt, "slo_hub_logout_events_total{source=\"replay\"}"),
        1.0,
        "the jti was forgotten by the restart"
    );
    assert_eq!(
        metric(&rt, "slo_hub_logout_events_total{source=\"backchannel\"}"),
        0.0
    );
    assert_eq!(hub.terminate().0, 0);
}

/// README's first command is `cargo run --release`: with the benchmark in
/// `src/bin`, cargo needs `default-run` to know that it means the hub.
#[test]
fn cargo_run_means_the_hub() {
    let manifest =
        std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/Cargo.toml")).unwrap();
    let package = manifest.split("\n[").next().unwrap();
    assert!(
        package
            .lines()
            .any(|l| l.trim() == r#"default-run = "slo-hub""#),
        "[package] needs default-run = \"slo-hub\""
    );
}
