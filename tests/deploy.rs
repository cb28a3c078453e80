//! The shipped deployment, run as real processes: `deploy/compose.yaml`'s
//! topology — three hub nodes with `deploy/slo-hub.toml` on one Redis,
//! behind nginx with `deploy/nginx.conf` terminating TLS with a certificate
//! from `deploy/make-cert.sh` — and, behind a trusted proxy, limits that
//! count clients, not the proxy.

mod common;

use std::collections::HashMap;
use std::sync::Arc;

use common::Ws;
use common::cluster::{Node, redis_bin, single_redis};
use common::nginx::{Nginx, nginx_bin};
use serde_json::{Value, json};

fn repo(path: &str) -> std::path::PathBuf {
    std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join(path)
}

/// `deploy/compose.yaml` as JSON (through Python's YAML parser).
fn compose() -> Option<Value> {
    let python = common::require_program("python3", &[])?;
    let out = std::process::Command::new(python)
        .args([
            "-c",
            "import json, sys, yaml; print(json.dumps(yaml.safe_load(open(sys.argv[1]))))",
        ])
        .arg(repo("deploy/compose.yaml"))
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    Some(serde_json::from_slice(&out.stdout).unwrap())
}

#[test]
fn the_compose_file_runs_what_the_repository_ships() {
    let Some(c) = compose() else { return };
    let services = c["services"].as_object().unwrap();
    for hub in ["hub1", "hub2", "hub3"] {
        let s = &services[hub];
        assert_eq!(s["build"], "..", "{hub} builds the Dockerfile");
        assert_eq!(
            s["command"],
            json!(["serve", "--config", "/etc/slo-hub/slo-hub.toml"])
        );
        assert_eq!(
            s["volumes"][0],
            "./slo-hub.toml:/etc/slo-hub/slo-hub.toml:ro"
        );
        assert_eq!(
            s["depends_on"]["redis"]["condition"], "service_healthy",
            "{hub} waits for Redis"
        );
    }
    let redis = services["redis"]["command"].to_string();
    assert!(redis.contains("appendonly"), "{redis}");
    let proxy = &services["proxy"];
    assert!(
        proxy["volumes"]
            .as_array()
            .unwrap()
            .contains(&json!("./nginx.conf:/etc/nginx/conf.d/default.conf:ro"))
    );
    for file in ["Dockerfile", "deploy/slo-hub.toml", "deploy/nginx.conf"] {
        assert!(repo(file).is_file(), "{file}");
    }
    // The node config is valid as shipped (`slo-hub check`).
    let out = std::process::Command::new(common::process::BIN)
        .args(["check", "--config"])
        .arg(repo("deploy/slo-hub.toml"))
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// A TLS client config trusting only `ca.crt`.
fn tls(ca: &std::path::Path) -> Arc<rustls::ClientConfig> {
    use rustls_pki_types::CertificateDer;
    use rustls_pki_types::pem::PemObject;
    let mut roots = rustls::RootCertStore::empty();
    for cert in CertificateDer::pem_file_iter(ca).unwrap() {
        roots.add(cert.unwrap()).unwrap();
    }
    Arc::new(
        rustls::ClientConfig::builder()
            .with_root_certificates(roots)
            .with_no_client_auth(),
    )
}

/// A `wss://` socket through the proxy, authenticated with `token`.
async fn wss(port: u16, tls: Arc<rustls::ClientConfig>, token: &str) -> Ws {
    let tcp = tokio::net::TcpStream::connect(("127.0.0.1", port))
        .await
        .unwrap();
    let name = rustls_pki_types::ServerName::try_from("localhost").unwrap();
    let stream = tokio_rustls::TlsConnector::from(tls)
        .connect(name, tcp)
        .await
        .unwrap();
    let url = format!("wss://localhost:{port}/v1/ws");
    let mut ws = Ws::over(Box::new(stream), &url, None).await.unwrap();
    ws.send_json(json!({"type": "auth", "token": token})).await;
    assert_eq!(ws.recv_json().await["type"], "ready");
    ws
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn three_nodes_behind_the_shipped_nginx_serve_logouts_over_tls() {
    let (Some(redis_bin), Some(nginx)) = (redis_bin(), nginx_bin()) else {
        return;
    };
    slo_hub::auth::crypto::install();
    let dir = tempfile::tempdir().unwrap();
    let certs = dir.path().join("certs");
    let made = std::process::Command::new("sh")
        .arg(repo("deploy/make-cert.sh"))
        .arg(&certs)
        .output()
        .unwrap();
    assert!(made.status.success(), "{made:?}");
    let redis = single_redis(&redis_bin, dir.path());
    let proxy_port = common::free_port();

    // The shipped node config; the environment says what compose's
    // network would (addresses), as an operator's overrides would.
    let shipped = std::fs::read_to_string(repo("deploy/slo-hub.toml")).unwrap();
    let public = format!("https://localhost:{proxy_port}");
    let config = shipped
        .replace("0.0.0.0:8080", "127.0.0.1:0")
        .replace("https://localhost:8443", &public)
        .replace("redis://redis:6379/", &redis.url())
        .replace("demo_a_port = 8081", "demo_a_port = 0")
        .replace("demo_b_port = 8082", "demo_b_port = 0")
        + &format!(
            "\n[[api_keys]]\nname = \"test\"\nsha256 = \"{}\"\nscopes = [\"logout:any\"]\n",
            common::sha256_hex(common::API_KEY)
        );
    let nodes = [
        Node::start(&config),
        Node::start(&config),
        Node::start(&config),
    ];

    // The shipped proxy config, pointed at these nodes and this port.
    let mut site = std::fs::read_to_string(repo("deploy/nginx.conf")).unwrap();
    for (i, node) in nodes.iter().enumerate() {
        let port = node.base.rsplit(':').next().unwrap();
        site = site.replace(&format!("hub{}:8080", i + 1), &format!("127.0.0.1:{port}"));
    }
    let certs_dir = certs.display().to_string();
    let site = site
        .replace(
            "listen 8443 ssl",
            &format!("listen 127.0.0.1:{proxy_port} ssl"),
        )
        .replace("/etc/nginx/certs", &certs_dir);
    // The demo servers are not part of this test.
    let site = site[..site.find("server {\n    listen 8081").unwrap()].to_string();
    let site = site[..site.find("upstream demo_a").unwrap()].to_string()
        + &site[site.find("# WebSocket upgrades").unwrap()..];
    let _nginx = Nginx::start(&nginx, &site, proxy_port);

    let tls = tls(&certs.join("ca.crt"));
    let https = ::reqwest::Client::builder()
        .add_root_certificate(
            ::reqwest::Certificate::from_pem(&std::fs::read(certs.join("ca.crt")).unwrap())
                .unwrap(),
        )
        .resolve(
            "localhost",
            std::net::SocketAddr::from(([127, 0, 0, 1], proxy_port)),
        )
        .build()
        .unwrap();
    // Every node is ready behind the proxy (round-robin answers).
    for _ in 0..3 {
        let r = https.get(format!("{public}/readyz")).send().await.unwrap();
        assert_eq!(r.status(), 200);
    }
    // Sockets through the proxy land on every node; a logout through the
    // proxy reaches them all.
    let token = {
        let r = https
            .post(format!("{public}/dev/token"))
            .json(&json!({"sub": "alice"}))
            .send()
            .await
            .unwrap();
        let v: Value = r.json().await.unwrap();
        v["access_token"].as_str().unwrap().to_string()
    };
    let mut sockets = Vec::new();
    for _ in 0..3 {
        sockets.push(wss(proxy_port, tls.clone(), &token).await);
    }
    let r = https
        .post(format!("{public}/v1/logout"))
        .bearer_auth(common::API_KEY)
        .json(&json!({"sub": "alice", "wait_for_acks_ms": 3000}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    let mut acks = HashMap::new();
    for ws in &mut sockets {
        let m = ws.recv_json().await;
        assert_eq!(m["type"], "logout", "{m}");
        ws.send_json(json!({"type": "ack", "id": m["id"]})).await;
        *acks.entry(m["id"].to_string()).or_insert(0) += 1;
    }
    assert_eq!(acks.len(), 1, "one logout event");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn behind_a_trusted_proxy_limits_count_clients_not_the_proxy() {
    let Some(nginx) = nginx_bin() else { return };
    let proxy_port = common::free_port();
    let (_cfg, path) = common::process::test_config_file(
        "listen = \"127.0.0.1:0\"\n[http]\ntrusted_proxies = [\"127.0.0.1\"]\n[limits]\nmax_connections_per_ip = 2\n[dev]\nissuer = true",
    );
    let dir = tempfile::tempdir().unwrap();
    let hub = common::process::Running::start(&["serve", "--config", &path], &[], dir.path());
    let hub_addr = hub.line("listening").unwrap();
    let site = common::nginx::proxy_site(proxy_port, &hub_addr);
    let _nginx = Nginx::start(&nginx, &site, proxy_port);
    let token = common::hs256_token(json!({"sub": "u"}));
    // Clients on two addresses, both through the one proxy.
    let socket_from = |source: [u8; 4]| {
        let token = token.clone();
        async move {
            let tcp = common::nginx::connect_from(source, proxy_port).await;
            let url = format!("ws://127.0.0.1:{proxy_port}/v1/ws");
            let mut ws = Ws::over(Box::new(tcp), &url, None).await?;
            ws.send_json(json!({"type": "auth", "token": token})).await;
            assert_eq!(ws.recv_json().await["type"], "ready");
            Ok::<Ws, u16>(ws)
        }
    };
    let a1 = socket_from([127, 0, 0, 2]).await.unwrap();
    let a2 = socket_from([127, 0, 0, 2]).await.unwrap();
    // The third from that address is over its limit...
    assert_eq!(socket_from([127, 0, 0, 2]).await.err(), Some(429));
    // ...while another client behind the same proxy is served.
    let b = socket_from([127, 0, 0, 3]).await.unwrap();
    drop((a1, a2, b));
    assert_eq!(hub.terminate().0, 0);
}

#[tokio::test]
async fn the_dashboard_and_alert_rules_name_metrics_the_hub_exports() {
    // Rules parse as YAML (python3's parser); the dashboard as JSON.
    let Some(python) = common::require_program("python3", &[]) else {
        return;
    };
    let rules = repo("deploy/prometheus/slo-hub-alerts.yml");
    let out = std::process::Command::new(python)
        .args([
            "-c",
            "import json, sys, yaml; print(json.dumps(yaml.safe_load(open(sys.argv[1]))))",
        ])
        .arg(&rules)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let rules: Value = serde_json::from_slice(&out.stdout).unwrap();
    let dashboard: Value = serde_json::from_str(
        &std::fs::read_to_string(repo("deploy/grafana/slo-hub-dashboard.json")).unwrap(),
    )
    .unwrap();
    let mut exprs: Vec<String> = rules["groups"][0]["rules"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| r["expr"].as_str().unwrap().to_string())
        .collect();
    for p in dashboard["panels"].as_array().unwrap() {
        for t in p["targets"].as_array().unwrap() {
            exprs.push(t["expr"].as_str().unwrap().to_string());
        }
    }
    let hub = common::TestHub::start().await;
    let metrics = hub
        .http
        .get(format!("{}/metrics", hub.url))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    let mut checked = 0;
    for e in &exprs {
        for word in e.split(|c: char| !(c.is_ascii_alphanumeric() || c == '_')) {
            if !(word.starts_with("slo_hub_") || word.starts_with("process_")) {
                continue;
            }
            let family = ["_total", "_bucket", "_sum", "_count"]
                .iter()
                .find_map(|s| word.strip_suffix(s))
                .unwrap_or(word);
            assert!(
                metrics.contains(&format!("# TYPE {family} ")),
                "{word} (in `{e}`) is not exported"
            );
            checked += 1;
        }
    }
    assert!(checked > 15, "{checked}");
}
