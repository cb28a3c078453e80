//! The cluster phase: trigger-to-last-tab latency, one trigger at a time,
//! on a single node (no Redis), a single node on Redis, and N nodes on one
//! Redis with each user's tabs spread over the nodes and every trigger sent
//! to node 0. Everything server-side (hubs and redis-server) is pinned to
//! the server CPU. Writes `cluster-<date>.md` next to the other results.

use std::time::Duration;

use crate::proto::{Board, Kind, TriggerCred};
use crate::servers::{self, Env, RedisServer, Server};
use crate::{Opts, await_arrivals, connect_all, http, percentile};

struct Setup {
    label: String,
    nodes: usize,
    redis: bool,
}

pub fn run(opts: &Opts, mut env: Env, rt: &tokio::runtime::Runtime, tokens: &[String], n: usize) {
    let setups = [
        Setup {
            label: "1 node, no Redis".into(),
            nodes: 1,
            redis: false,
        },
        Setup {
            label: "1 node on Redis".into(),
            nodes: 1,
            redis: true,
        },
        Setup {
            label: format!("{n} nodes on one Redis"),
            nodes: n,
            redis: true,
        },
    ];
    let users = opts.users.min(tokens.len());
    let mut rows = Vec::new();
    let mut port = opts.port;
    for setup in setups {
        eprintln!("== {}", setup.label);
        let redis = setup.redis.then(|| {
            port += 1;
            RedisServer::start(port, &opts.server_cpu)
                .expect("redis-server starts (is it installed?)")
        });
        env.hub_cluster = redis.as_ref().map(|r| r.url.clone());
        let nodes: Vec<Server> = (0..setup.nodes)
            .map(|_| {
                port += 1;
                Server::start(Kind::SloHub, port, &env).expect("hub starts")
            })
            .collect();
        let (p50, p99, missed) = rt.block_on(latency(opts, &nodes, &tokens[..users]));
        eprintln!("   p50 {p50:.0} us, p99 {p99:.0} us, missed {missed}");
        rows.push((setup.label, p50, p99, missed));
        for s in nodes {
            s.stop();
        }
        drop(redis);
    }
    let mut md = String::from(
        "# slo-hub on several nodes\n\nTrigger (HTTP to node 0) → last tab's frame, one trigger at a time; each user's tabs spread over the nodes. Hubs and redis-server pinned to one core.\n\n| setup | p50 (µs) | p99 (µs) | missed |\n|---|---|---|---|\n",
    );
    for (label, p50, p99, missed) in &rows {
        md.push_str(&format!("| {label} | {p50:.0} | {p99:.0} | {missed} |\n"));
    }
    std::fs::create_dir_all(&opts.out).unwrap();
    let path = opts
        .out
        .join(format!("cluster-{}.md", crate::report::chrono_like_stamp()));
    std::fs::write(&path, &md).unwrap();
    print!("{md}");
    println!("wrote {}", path.display());
}

async fn latency(opts: &Opts, nodes: &[Server], tokens: &[String]) -> (f64, f64, u64) {
    let users: Vec<String> = (0..tokens.len()).map(|i| format!("hs-{i}")).collect();
    let board = Board::new(users.len(), true);
    // Tab t of every user goes to node t % nodes.
    let mut readers = Vec::new();
    for t in 0..opts.tabs {
        let addr = nodes[t % nodes.len()].addr;
        let slots: Vec<(usize, &str, &str)> = (0..users.len())
            .map(|u| (u, users[u].as_str(), tokens[u].as_str()))
            .collect();
        let (r, failures) = connect_all(Kind::SloHub, addr, &board, &slots, opts.concurrency).await;
        assert_eq!(failures, 0, "connects failed");
        readers.extend(r);
    }
    let cred = TriggerCred {
        api_key: servers::BENCH_API_KEY.into(),
        iss: servers::HS256_ISS.into(),
    };
    let mut http = http::HttpConn::new(nodes[0].addr);
    let mut lat = Vec::new();
    let mut missed = 0;
    for (u, user) in users.iter().enumerate().take(opts.latency_triggers) {
        let req = Kind::SloHub.trigger(user, &cred);
        let t0 = board.now_ns();
        let (status, body) = http.request(&req).await.expect("trigger");
        assert!(
            status < 300,
            "trigger answered {status}: {}",
            String::from_utf8_lossy(&body)
        );
        if await_arrivals(&board, u, opts.tabs as u32, Duration::from_secs(5)).await {
            let last = board
                .slot(u)
                .last_ns
                .load(std::sync::atomic::Ordering::Acquire);
            lat.push((last - t0) as f64 / 1000.0);
        } else {
            missed += 1;
        }
    }
    for r in readers {
        r.abort();
    }
    (
        percentile(&mut lat, 0.5),
        percentile(&mut lat, 0.99),
        missed,
    )
}
