//! A real nginx (Debian's) for the tests that put the hub behind a proxy:
//! its own prefix directory, config and ephemeral port; stopped on drop.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

pub struct Nginx {
    child: Child,
    pub dir: tempfile::TempDir,
}

/// The nginx program, or a loud skip (a failure under SLO_HUB_REQUIRE_ALL=1).
pub fn nginx_bin() -> Option<PathBuf> {
    super::require_program("nginx", &["/usr/sbin/nginx"])
}

impl Nginx {
    /// Runs nginx with `site` (http-level directives: upstreams and
    /// servers) and waits until it listens on `port`.
    pub fn start(bin: &Path, site: &str, port: u16) -> Nginx {
        let dir = tempfile::tempdir().unwrap();
        let d = dir.path().display();
        std::fs::write(dir.path().join("site.conf"), site).unwrap();
        // As root, workers run as root too, so they can use the temp dirs.
        let user = if is_root() { "user root;" } else { "" };
        let main = format!(
            r#"{user}
worker_processes 1;
daemon off;
pid {d}/nginx.pid;
error_log {d}/error.log warn;
events {{ worker_connections 1024; }}
http {{
    access_log off;
    client_body_temp_path {d}/body;
    proxy_temp_path {d}/proxy;
    fastcgi_temp_path {d}/fastcgi;
    uwsgi_temp_path {d}/uwsgi;
    scgi_temp_path {d}/scgi;
    include {d}/site.conf;
}}
"#
        );
        std::fs::write(dir.path().join("nginx.conf"), main).unwrap();
        let conf = dir.path().join("nginx.conf");
        let child = Command::new(bin)
            .arg("-p")
            .arg(dir.path())
            .arg("-e")
            .arg(dir.path().join("error.log"))
            .arg("-c")
            .arg(&conf)
            .stdout(Stdio::null())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("nginx starts");
        let mut nginx = Nginx { child, dir };
        let deadline = Instant::now() + Duration::from_secs(10);
        while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
            if let Ok(Some(status)) = nginx.child.try_wait() {
                let log = std::fs::read_to_string(nginx.dir.path().join("error.log"));
                panic!("nginx exited ({status}): {log:?}");
            }
            assert!(Instant::now() < deadline, "nginx did not listen");
            std::thread::sleep(Duration::from_millis(20));
        }
        nginx
    }
}

fn is_root() -> bool {
    Command::new("id")
        .arg("-u")
        .output()
        .map(|o| String::from_utf8_lossy(&o.stdout).trim() == "0")
        .unwrap_or(false)
}

impl Drop for Nginx {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A plain reverse proxy on `port` to `upstream` (`host:port`) that
/// upgrades WebSockets and appends the client's address to
/// `X-Forwarded-For`, as a trusted proxy in front of the hub would.
pub fn proxy_site(port: u16, upstream: &str) -> String {
    format!(
        r#"map $http_upgrade $connection_upgrade {{ default upgrade; "" ""; }}
server {{
    listen 127.0.0.1:{port};
    location / {{
        proxy_pass http://{upstream};
        proxy_http_version 1.1;
        proxy_set_header Upgrade $http_upgrade;
        proxy_set_header Connection $connection_upgrade;
        proxy_set_header X-Forwarded-For $proxy_add_x_forwarded_for;
    }}
}}
"#
    )
}

/// A TCP connection to loopback `port` from `source` (a 127.x.y.z address),
/// so one test can be many clients behind one proxy.
pub async fn connect_from(source: [u8; 4], port: u16) -> tokio::net::TcpStream {
    let socket = tokio::net::TcpSocket::new_v4().unwrap();
    socket
        .bind(std::net::SocketAddr::from((source, 0)))
        .unwrap();
    socket
        .connect(std::net::SocketAddr::from(([127, 0, 0, 1], port)))
        .await
        .unwrap()
}
