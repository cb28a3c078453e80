//! Headless Chromium driven through chromedriver (WebDriver), one browser
//! profile per session, so two sessions are two independent users.

use std::path::PathBuf;
use std::process::Stdio;
use std::time::{Duration, Instant};

use fantoccini::{Client, ClientBuilder};
use serde_json::{Value, json};
use tokio::process::{Child, Command};

pub struct Chrome {
    driver: Child,
    port: u16,
    chromium: PathBuf,
    profiles: Vec<tempfile::TempDir>,
}

impl Chrome {
    /// Starts chromedriver on a free port; `None` if Chromium is not installed
    /// (and the test is skipped, see `require_program`).
    pub async fn start() -> Option<Chrome> {
        let chromium = super::require_program("chromium", &["/usr/bin/chromium"])?;
        let driver_bin = super::require_program("chromedriver", &["/usr/bin/chromedriver"])?;
        let port = super::free_port();
        let driver = Command::new(driver_bin)
            .arg(format!("--port={port}"))
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .kill_on_drop(true)
            .spawn()
            .expect("chromedriver starts");
        slo_hub::auth::crypto::install();
        let http = reqwest::Client::new();
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            let ready = http
                .get(format!("http://127.0.0.1:{port}/status"))
                .send()
                .await
                .ok()
                .map(|r| r.status().is_success())
                .unwrap_or(false);
            if ready {
                break;
            }
            assert!(Instant::now() < deadline, "chromedriver did not come up");
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        Some(Chrome {
            driver,
            port,
            chromium,
            profiles: Vec::new(),
        })
    }

    /// A new browser with its own empty profile.
    pub async fn session(&mut self) -> Client {
        let profile = tempfile::tempdir().unwrap();
        let args = vec![
            "--headless=new".to_string(),
            "--no-sandbox".into(),
            "--disable-gpu".into(),
            "--disable-background-networking".into(),
            "--disable-component-update".into(),
            "--disable-sync".into(),
            "--disable-dev-shm-usage".into(),
            "--no-first-run".into(),
            "--window-size=1000,700".into(),
            format!("--user-data-dir={}", profile.path().display()),
        ];
        self.profiles.push(profile);
        let caps = json!({
            "goog:chromeOptions": { "binary": self.chromium, "args": args }
        });
        let caps = match caps {
            Value::Object(m) => m,
            _ => unreachable!(),
        };
        ClientBuilder::new(hyper_util::client::legacy::connect::HttpConnector::new())
            .capabilities(caps)
            .connect(&format!("http://127.0.0.1:{}", self.port))
            .await
            .expect("a Chromium session starts")
    }
}

impl Drop for Chrome {
    fn drop(&mut self) {
        let _ = self.driver.start_kill();
    }
}

/// Evaluates `script` (which must `return` a value) until it equals
/// `expected`, or fails after `timeout` with the last value seen.
pub async fn wait_for_js(client: &Client, script: &str, expected: Value, timeout: Duration) {
    let deadline = Instant::now() + timeout;
    let mut last = Value::Null;
    while Instant::now() < deadline {
        last = client.execute(script, vec![]).await.unwrap_or(Value::Null);
        if last == expected {
            return;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    panic!("waited {timeout:?} for `{script}` to be {expected}, last saw {last}");
}

pub async fn click(client: &Client, css: &str) {
    client
        .find(fantoccini::Locator::Css(css))
        .await
        .unwrap_or_else(|e| panic!("no element {css}: {e}"))
        .click()
        .await
        .unwrap();
}

/// Saves a screenshot under target/browser-evidence/ and returns its path.
pub async fn screenshot(client: &Client, name: &str) -> PathBuf {
    let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("target/browser-evidence");
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join(format!("{name}.png"));
    std::fs::write(&path, client.screenshot().await.unwrap()).unwrap();
    path
}
