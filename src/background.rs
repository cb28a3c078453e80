//! The hub's long-lived tasks, each started once by `startup` into the
//! app's task tracker and ended by its shutdown token:
//!
//! * `maintenance` — every minute: expired watermarks and rate buckets,
//!   the token cache, expired session graphs;
//! * `expire_web_sessions` — ends web sessions at their deadline and
//!   pushes their logout at that moment;
//! * `logout::outbox` — notices that fell due;
//! * Pusher: the subscription task (joins and leaves in order), the
//!   webhook sender and the presence sweep (a dead node's members removed);
//! * the broker's follower (other nodes' logouts), the JWKS refreshers,
//!   the heartbeat sweep and the re-login windows (`ws`).
//!
//! Must not: hold a lock across an await, or stop before shutdown.

use std::sync::Arc;
use std::time::Duration;

use crate::App;
use crate::util;

/// Starts every background task of `app`.
pub fn spawn_all(app: &Arc<App>, windows: Arc<crate::ws::window::Windows>) {
    app.auth.spawn_refresh(&app.tasks, app.shutdown.clone());
    app.tasks.spawn(crate::ws::heartbeat(app.clone()));
    let shutdown = app.shutdown.clone();
    app.tasks.spawn(async move { windows.run(shutdown).await });
    app.tasks.spawn(maintenance(app.clone()));
    app.tasks.spawn(expire_web_sessions(app.clone()));
    app.tasks.spawn(crate::logout::outbox(app.clone()));
    app.tasks
        .spawn(crate::pusher::subscriptions::run(app.clone()));
    app.tasks.spawn(crate::pusher::webhooks::run(app.clone()));
    app.tasks.spawn(crate::console::sampler(app.clone()));
    let vanished = app.clone();
    app.tasks.spawn(app.pusher.presence().clone().maintain(
        Arc::new(move |v| crate::pusher::vanished(&vanished, v)),
        app.shutdown.clone(),
    ));
    if let Some(broker) = app.broker.clone() {
        let heard = app.clone();
        let sink: Arc<dyn Fn(crate::store::Heard) + Send + Sync> = Arc::new(move |h| heard.hear(h));
        app.tasks.spawn(broker.follow(sink, app.shutdown.clone()));
    }
}

/// Periodic housekeeping: expire watermarks, forget idle rate buckets.
async fn maintenance(app: Arc<App>) {
    loop {
        tokio::select! {
            _ = app.shutdown.cancelled() => return,
            _ = tokio::time::sleep(Duration::from_secs(60)) => {}
        }
        let expired = app.revocation.expire().await;
        if expired > 0 {
            tracing::debug!(expired, "watermarks expired");
        }
        app.user_trigger_limits.forget_idle();
        app.auth.expire_cache();
        app.sessions.purge(util::now_ms());
        match app.audit.trim().await {
            Ok(0) => {}
            Ok(n) => tracing::debug!(removed = n, "audit entries past retention removed"),
            Err(e) => tracing::warn!(error = %e, "audit: trimming failed; retrying later"),
        }
    }
}

/// Ends web sessions at their idle or absolute deadline and pushes their
/// logout (reason `session_expired`) at that moment, not at the next request.
async fn expire_web_sessions(app: Arc<App>) {
    loop {
        let now = util::now_ms();
        // Without a live session, wake at least every minute anyway.
        let wait_ms = app
            .sessions
            .next_deadline()
            .map_or(60_000, |t| (t - now).clamp(0, 60_000));
        tokio::select! {
            _ = app.shutdown.cancelled() => return,
            _ = app.sessions.deadline_changed().notified() => continue,
            _ = tokio::time::sleep(Duration::from_millis(wait_ms as u64)) => {}
        }
        let ended = match app.sessions.expire_due().await {
            Ok(e) => e,
            Err(e) => {
                tracing::warn!(error = %e, "session graph: recording expiries failed; retrying");
                tokio::select! {
                    _ = app.shutdown.cancelled() => return,
                    _ = tokio::time::sleep(Duration::from_secs(1)) => {}
                }
                continue;
            }
        };
        if !ended.is_empty() {
            tracing::info!(sessions = ended.len(), "web sessions expired");
            if let Err(e) = app.deliver(&ended).await {
                tracing::warn!(error = %e, "expired sessions not all pushed yet; the outbox retries");
            }
            for e in &ended {
                let mut entry = crate::audit::Entry::new(
                    crate::audit::Action::Logout,
                    "session_expired",
                    crate::audit::Caller::Hub,
                    crate::audit::Subject {
                        iss: Some(app.hub_issuers.session.iss.clone()),
                        sub: Some(e.sub.clone()),
                        sid: Some(e.sid.clone()),
                    },
                );
                entry.reason = "session_expired".into();
                entry.outcome = serde_json::json!({ "clients": e.clients });
                app.audit.record(entry).await;
            }
        }
    }
}
