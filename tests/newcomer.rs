//! What a new user meets first, as a new user would meet it: the banner and
//! the logs, a second start on a running hub's directory, an empty config,
//! a typo in an environment variable, and the answers to the usual
//! mistakes (a wrong method, a Basic header, an unknown revocation id).

mod common;

use common::process::{Running, config_file, run_failing, test_config_file};
use common::{API_KEY, TestHub};
use serde_json::{Value, json};

fn get(url: &str) -> (u16, String) {
    reqwest::blocking_get_full(url)
}

mod reqwest {
    //! Blocking helpers on a small runtime of their own (these tests drive
    //! processes, not an in-process hub).
    pub fn blocking_get_full(url: &str) -> (u16, String) {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        rt.block_on(async {
            let client = ::reqwest::Client::builder()
                .redirect(::reqwest::redirect::Policy::none())
                .build()
                .unwrap();
            let r = client.get(url).send().await.unwrap();
            (r.status().as_u16(), r.text().await.unwrap())
        })
    }
}

#[test]
fn a_failed_second_start_leaves_the_running_hubs_dev_api_key_alone() {
    slo_hub::auth::crypto::install();
    let dir = tempfile::tempdir().unwrap();
    let hub = Running::start(&["--no-demo", "--listen", "127.0.0.1:0"], &[], dir.path());
    let key_file = dir.path().join("dev-api-key");
    let key = std::fs::read_to_string(&key_file).unwrap();
    let data = dir.path().to_str().unwrap();
    let (code, stderr) = run_failing(
        &["--no-demo", "--listen", "127.0.0.1:0"],
        &[("SLO_HUB_DATA_DIR", data)],
    );
    assert_eq!(code, 2, "{stderr}");
    assert_eq!(std::fs::read_to_string(&key_file).unwrap(), key);
    // ...and the key in the file still works against the running hub.
    let base = format!("http://{}", hub.line("listening").unwrap());
    let rt = tokio::runtime::Runtime::new().unwrap();
    let status = rt.block_on(async {
        ::reqwest::Client::new()
            .post(format!("{base}/v1/logout"))
            .bearer_auth(key.trim())
            .json(&json!({"sub": "alice"}))
            .send()
            .await
            .unwrap()
            .status()
            .as_u16()
    });
    assert_eq!(status, 200);
    assert_eq!(hub.terminate().0, 0);
}

#[test]
fn the_banner_and_the_logs_say_where_it_listens_and_when_it_stopped() {
    let (_cfg, path) =
        test_config_file("listen = \"127.0.0.1:0\"\npublic_url = \"https://hub.example.com\"");
    let dir = tempfile::tempdir().unwrap();
    let hub = Running::start(&["serve", "--config", &path], &[], dir.path());
    let addr = hub.line("listening").unwrap();
    assert!(addr.starts_with("127.0.0.1:"), "{:?}", hub.banner);
    assert_ne!(addr, "127.0.0.1:0");
    let (status, _) = get(&format!("http://{addr}/readyz"));
    assert_eq!(status, 200);
    let (code, log) = hub.terminate();
    assert_eq!(code, 0);
    assert!(log.contains("listening"), "{log}");
    assert!(log.contains("stopped"), "{log}");
    // Not a terminal: no colour codes in the log.
    assert!(!log.contains('\u{1b}'), "{log}");
}

#[test]
fn an_empty_config_says_loudly_that_the_hub_can_do_nothing() {
    let (_cfg, path) = config_file("listen = \"127.0.0.1:0\"\n");
    let dir = tempfile::tempdir().unwrap();
    let hub = Running::start(&["serve", "--config", &path], &[], dir.path());
    let ready = hub
        .banner
        .iter()
        .find(|l| l.trim_start().starts_with("ready"))
        .unwrap();
    assert!(
        ready.contains("not yet") && ready.contains("nothing configured"),
        "{ready}"
    );
    let addr = hub.line("listening").unwrap();
    let (status, body) = get(&format!("http://{addr}/readyz"));
    assert_eq!(status, 503, "{body}");
    assert!(body.contains("nothing configured"), "{body}");
    let (_, log) = hub.terminate();
    assert!(
        log.contains("no socket and no trigger can authenticate"),
        "{log}"
    );
    // `check` says the same without starting anything.
    let out = std::process::Command::new(common::process::BIN)
        .args(["check", "--config", &path])
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success());
    assert!(
        text.contains("0 issuer(s)") && text.contains("warning"),
        "{text}"
    );
}

#[test]
fn a_bad_environment_value_names_its_variable() {
    let (code, stderr) = run_failing(&["--no-demo"], &[("SLO_HUB_WS__HEARTBEAT_SECS", "soon")]);
    assert_eq!(code, 2);
    assert!(stderr.contains("SLO_HUB_WS__HEARTBEAT_SECS"), "{stderr}");
}

#[tokio::test]
async fn the_usual_mistakes_get_precise_answers() {
    let hub = TestHub::start().await;
    // A wrong method: 405 in our JSON format, with Allow.
    let r = hub
        .http
        .get(format!("{}/v1/logout", hub.url))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 405);
    assert!(r.headers().contains_key("allow"));
    let v: Value = r.json().await.unwrap();
    assert_eq!(v["error"], "method_not_allowed", "{v}");
    // Basic credentials where a Bearer is expected: says so.
    let r = hub
        .http
        .post(format!("{}/v1/logout", hub.url))
        .basic_auth("user", Some("pass"))
        .json(&json!({"sub": "alice"}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 401);
    let v: Value = r.json().await.unwrap();
    assert_eq!(v["error"], "wrong_scheme", "{v}");
    assert!(v["message"].as_str().unwrap().contains("Bearer"), "{v}");
    // An unknown revocation id is not a success with zeros.
    let r = hub
        .http
        .post(format!("{}/v1/revocations", hub.url))
        .bearer_auth(API_KEY)
        .json(&json!({"type": "session", "id": "ws_doesnotexist"}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 404);
    let v: Value = r.json().await.unwrap();
    assert_eq!(v["error"], "unknown_id", "{v}");
}

#[test]
fn the_native_app_demo_answers_without_its_slash() {
    let dir = tempfile::tempdir().unwrap();
    let hub = Running::start(&["--listen", "127.0.0.1:0"], &[], dir.path());
    let native = hub.line("native").unwrap();
    assert!(native.ends_with("/demo/native-sim/"), "{native}");
    let (status, _) = get(native.trim_end_matches('/'));
    assert_eq!(status, 308);
    let (status, body) = get(&native);
    assert_eq!(status, 200);
    assert!(body.contains("<"), "{body}");
    assert_eq!(hub.terminate().0, 0);
}

#[tokio::test]
async fn the_discovery_document_names_endpoints_that_answer() {
    let hub = TestHub::start().await;
    let v: Value = hub
        .http
        .get(format!("{}/.well-known/openid-configuration", hub.url))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(v["code_challenge_methods_supported"], json!(["S256"]));
    let keys: Value = hub
        .http
        .get(v["jwks_uri"].as_str().unwrap())
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert!(!keys["keys"].as_array().unwrap().is_empty(), "{keys}");
    for endpoint in ["token_endpoint", "revocation_endpoint"] {
        let r = hub
            .http
            .post(v[endpoint].as_str().unwrap())
            .form(&[("grant_type", "nonsense")])
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 400, "{endpoint}");
    }
    let r = hub
        .http
        .get(v["authorization_endpoint"].as_str().unwrap())
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 400, "an error page, not a 404");
}
