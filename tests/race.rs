//! A logout racing a connect, thousands of times: after the trigger has
//! answered and the socket has had its say, no socket authenticated with a
//! token issued before the logout is left registered and silent. The hub's
//! argument (revocation: watermark then publish; socket: register then
//! check) is what this test tries to break.

mod common;

use common::{API_KEY, TEST_ISS, TestHub, Ws, hs256_token};
use serde_json::json;
use slo_hub::registry::UserKey;

const ITERATIONS: usize = 2_000;
const IN_FLIGHT: usize = 8;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_logout_racing_a_connect_never_leaves_a_revoked_socket_live() {
    // Thousands of connects from one address: lift the per-IP connect rate.
    let hub = std::sync::Arc::new(
        TestHub::with(|c| {
            c.limits.connects_per_ip_per_sec = 1_000_000;
            c.limits.connect_burst = 1_000_000;
        })
        .await,
    );
    let iss = hub.app().auth.issuer_id(TEST_ISS).unwrap();
    let mut tasks = tokio::task::JoinSet::new();
    let mut seen_ready_first = 0usize;
    for i in 0..ITERATIONS {
        if tasks.len() >= IN_FLIGHT {
            seen_ready_first += tasks.join_next().await.unwrap().unwrap();
        }
        let hub = hub.clone();
        tasks.spawn(async move {
            let user = format!("racer-{i}");
            let token = hs256_token(json!({"sub": user}));
            let connect = async {
                let mut ws = Ws::connect(&hub.ws_url, None).await.unwrap();
                ws.send_json(json!({"type": "auth", "token": token})).await;
                ws
            };
            // Stagger the trigger by a varying number of yields, so the two
            // meet at every stage of the connect.
            let trigger = async {
                for _ in 0..(i % 16) * 8 {
                    tokio::task::yield_now().await;
                }
                hub.logout(API_KEY, json!({"sub": user, "iss": TEST_ISS}))
                    .await
            };
            let (mut ws, (status, body)) = tokio::join!(connect, trigger);
            assert_eq!(status, 200, "{body}");
            // Whichever came first, the socket must be told: either `ready`
            // then the pushed `logout`, or the replayed `logout` at once.
            let first = ws.recv_json().await;
            let ready_first = first["type"] == "ready";
            let logout = if ready_first {
                ws.recv_json().await
            } else {
                first
            };
            assert_eq!(logout["type"], "logout", "{user}: {logout}");
            let key = UserKey {
                iss,
                sub: user.as_str().into(),
            };
            assert_eq!(
                hub.app().registry.user_sockets(&key),
                0,
                "{user} still registered"
            );
            usize::from(ready_first)
        });
    }
    while let Some(r) = tasks.join_next().await {
        seen_ready_first += r.unwrap();
    }
    // Both orders happened, so both paths were exercised.
    eprintln!("{seen_ready_first} of {ITERATIONS} connects registered before the logout");
    assert!(
        seen_ready_first < ITERATIONS,
        "the watermark path never ran"
    );
    assert!(seen_ready_first > 0, "the publish path never ran");
}
