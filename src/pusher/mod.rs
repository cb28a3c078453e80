//! Pusher protocol v7 and HTTP API, so unmodified pusher-js clients and
//! Pusher server SDKs (the seed article's sample among them) run against
//! slo-hub, and a logout by any slo-hub path reaches Pusher sockets too.
//!
//! * this file — the apps (from `[[pusher_apps]]`), the socket endpoint
//!   `GET /app/{key}` (protocol and app checks), the logout bridge.
//! * `socket` — one socket's life; `channels` — subscriptions, presence
//!   members and signed-in users; `http` — `/apps/{id}/...` with Pusher's
//!   request signing; `protocol` — frames, codes, names, signatures.
//!
//! Must not: touch the logout hub's own sockets or registry (the two meet
//! only in [`Pusher::user_logged_out`]).

pub mod channels;
pub mod http;
pub mod protocol;
mod socket;

use std::collections::HashMap;
use std::sync::Arc;

use axum::Router;
use axum::extract::{Path, Request, State};
use axum::response::Response;
use axum::routing::get;
use serde_json::json;
use tokio::net::TcpStream;

use crate::App;
use crate::config::PusherAppSettings;
use channels::Channels;
use protocol::PusherCode;

/// The configured apps and who is subscribed where.
pub struct Pusher {
    apps: Vec<PusherAppSettings>,
    by_key: HashMap<String, usize>,
    by_id: HashMap<String, usize>,
    channels: Channels,
}

impl Pusher {
    pub fn new(apps: &[PusherAppSettings]) -> Pusher {
        Pusher {
            by_key: apps
                .iter()
                .enumerate()
                .map(|(i, a)| (a.key.clone(), i))
                .collect(),
            by_id: apps
                .iter()
                .enumerate()
                .map(|(i, a)| (a.id.clone(), i))
                .collect(),
            apps: apps.to_vec(),
            channels: Channels::default(),
        }
    }

    pub fn apps(&self) -> &[PusherAppSettings] {
        &self.apps
    }

    pub fn app_by_id(&self, id: &str) -> Option<usize> {
        self.by_id.get(id).copied()
    }

    pub fn app_by_key(&self, key: &str) -> Option<usize> {
        self.by_key.get(key).copied()
    }

    pub fn channels(&self) -> &Channels {
        &self.channels
    }

    /// The bridge: a logout of `sub` by issuer `iss` reaches that user's
    /// signed-in sockets in every app whose `logout_issuer` is `iss`: a
    /// `slo-event` on their `#server-to-user-{id}` channel, then close 4009
    /// (pusher-js does not reconnect). Returns the sockets told.
    pub fn user_logged_out(&self, iss: &str, sub: &str, reason: &str) -> usize {
        let mut told = 0;
        for (i, app) in self.apps.iter().enumerate() {
            if app.logout_issuer.as_deref() != Some(iss) {
                continue;
            }
            let channel = format!("{}{sub}", protocol::USER_CHANNEL_PREFIX);
            let data = json!({ "slo": true, "reason": reason }).to_string();
            let frame = protocol::event_frame(protocol::LOGOUT_EVENT, Some(&channel), &data);
            told += self.channels.publish(i, &channel, &frame, None);
            for conn in self.channels.user_sockets(i, sub) {
                conn.close(PusherCode::Unauthorized);
            }
        }
        told
    }
}

pub fn router() -> Router<Arc<App>> {
    Router::new()
        .route("/app/{key}", get(upgrade))
        .merge(http::router())
}

/// `GET /app/{key}?protocol=7`: an unknown key or protocol is told on the
/// socket (`pusher:error`, then the close code), as Pusher does, because
/// clients act on those codes, not on HTTP statuses.
async fn upgrade(State(app): State<Arc<App>>, Path(key): Path<String>, req: Request) -> Response {
    let protocol = req.uri().query().and_then(|q| {
        form_urlencoded::parse(q.as_bytes())
            .find(|(k, _)| k == "protocol")
            .map(|(_, v)| v.into_owned())
    });
    let checked = match (app.pusher.app_by_key(&key), protocol.as_deref()) {
        (None, _) => Err((
            PusherCode::AppNotFound,
            format!("App key {} not in this cluster", protocol::truncate(&key)),
        )),
        (_, None) => Err((
            PusherCode::NoProtocol,
            "No protocol version supplied".into(),
        )),
        (_, Some(p)) if p.parse::<u32>().ok() != Some(protocol::PROTOCOL) => Err((
            PusherCode::UnsupportedProtocol,
            format!(
                "Unsupported protocol version {}; this server speaks 7",
                protocol::truncate(p)
            ),
        )),
        (Some(index), _) => Ok(index),
    };
    match checked {
        Ok(index) => crate::ws::accept(&app, req, move |app, stream, early, guard| async move {
            let _guard = guard;
            socket::run(app, index, stream, early).await
        }),
        Err((code, message)) => {
            app.metrics.upgrade_rejected("pusher_refused");
            crate::ws::accept(&app, req, move |_app, stream, _early, _guard| {
                refuse(stream, code, message)
            })
        }
    }
}

async fn refuse(mut stream: TcpStream, code: PusherCode, message: String) {
    use tokio::io::AsyncWriteExt;
    let mut bytes = protocol::error_frame(Some(code.code()), &message);
    bytes.extend(crate::ws::codec::close_frame(code.code(), &message));
    let _ = stream.write_all(&bytes).await;
    let _ = stream.shutdown().await;
}
