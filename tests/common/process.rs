//! The hub as a separate process, started from the built binary, as
//! operators run it.

use std::io::{BufRead, BufReader};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

pub const BIN: &str = env!("CARGO_BIN_EXE_slo-hub");

/// Runs the binary to completion (it must exit on its own: bad settings).
pub fn run_failing(args: &[&str], env: &[(&str, &str)]) -> (i32, String) {
    let dir = tempfile::tempdir().unwrap();
    let mut cmd = Command::new(BIN);
    cmd.args(args)
        .env("SLO_HUB_DATA_DIR", dir.path())
        .env_remove("SLO_HUB_LISTEN");
    for (k, v) in env {
        cmd.env(k, v);
    }
    let out = cmd.output().unwrap();
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stderr).to_string(),
    )
}

pub fn config_file(text: &str) -> (tempfile::TempDir, String) {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("slo-hub.toml");
    std::fs::write(&path, text).unwrap();
    let p = path.to_str().unwrap().to_string();
    (dir, p)
}

/// A production config file: `top_level` settings, then the HS256 test
/// issuer and the test API key (`logout:any`), as the in-process hubs have.
pub fn test_config_file(top_level: &str) -> (tempfile::TempDir, String) {
    use super::{API_KEY, TEST_AUD, TEST_ISS, TEST_SECRET, sha256_hex};
    config_file(&format!(
        r#"{top_level}

[[issuers]]
issuer = "{TEST_ISS}"
audiences = ["{TEST_AUD}"]
algorithms = ["HS256"]
hs256_secret = "{TEST_SECRET}"

[[api_keys]]
name = "test"
sha256 = "{}"
scopes = ["logout:any"]
"#,
        sha256_hex(API_KEY)
    ))
}

/// A started hub process and the lines of its start banner.
pub struct Running {
    child: Child,
    pub banner: Vec<String>,
    stderr: std::thread::JoinHandle<String>,
}

impl Running {
    pub fn start(args: &[&str], env: &[(&str, &str)], data_dir: &std::path::Path) -> Running {
        Self::start_in(Command::new(BIN), args, env, data_dir)
    }

    /// Like `start`, with the process's file descriptor limit set to `n`
    /// (soft and hard), as `ulimit -n` does.
    pub fn start_with_fd_limit(
        n: u32,
        args: &[&str],
        env: &[(&str, &str)],
        data_dir: &std::path::Path,
    ) -> Running {
        let mut cmd = Command::new("sh");
        cmd.arg("-c")
            .arg(format!("ulimit -n {n} && exec \"$0\" \"$@\""))
            .arg(BIN);
        Self::start_in(cmd, args, env, data_dir)
    }

    fn start_in(
        mut cmd: Command,
        args: &[&str],
        env: &[(&str, &str)],
        data_dir: &std::path::Path,
    ) -> Running {
        cmd.args(args)
            .env("SLO_HUB_DATA_DIR", data_dir)
            .env_remove("SLO_HUB_LISTEN")
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        for (k, v) in env {
            cmd.env(k, v);
        }
        let mut child = cmd.spawn().unwrap();
        let stderr = child.stderr.take().unwrap();
        let stderr = std::thread::spawn(move || {
            let mut s = String::new();
            for line in BufReader::new(stderr).lines() {
                s.push_str(&line.unwrap_or_default());
                s.push('\n');
            }
            s
        });
        let mut banner = Vec::new();
        let mut lines = BufReader::new(child.stdout.take().unwrap()).lines();
        for line in lines.by_ref() {
            let line = line.unwrap();
            let done = line.trim_start().starts_with("ready");
            banner.push(line);
            if done {
                break;
            }
        }
        if banner.is_empty() {
            let _ = child.kill();
            let _ = child.wait();
            panic!(
                "the hub printed nothing; it logged:\n{}",
                stderr.join().unwrap_or_default()
            );
        }
        // Keep the pipe open and drained, as a supervisor would.
        std::thread::spawn(move || lines.for_each(drop));
        Running {
            child,
            banner,
            stderr,
        }
    }

    pub fn line(&self, prefix: &str) -> Option<String> {
        self.banner
            .iter()
            .find(|l| l.trim_start().starts_with(prefix))
            .map(|l| l.split_whitespace().last().unwrap().to_string())
    }

    /// SIGKILL: no shutdown of any kind, as in a crash.
    pub fn kill9(mut self) {
        self.child.kill().unwrap();
        self.child.wait().unwrap();
    }

    /// SIGTERM, then the exit code and everything logged.
    pub fn terminate(mut self) -> (i32, String) {
        Command::new("kill")
            .args(["-TERM", &self.child.id().to_string()])
            .status()
            .unwrap();
        let deadline = Instant::now() + Duration::from_secs(15);
        let status = loop {
            if let Some(s) = self.child.try_wait().unwrap() {
                break s;
            }
            assert!(Instant::now() < deadline, "no exit after SIGTERM");
            std::thread::sleep(Duration::from_millis(20));
        };
        (status.code().unwrap_or(-1), self.stderr.join().unwrap())
    }
}
