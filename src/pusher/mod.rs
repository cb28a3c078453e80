//! Pusher protocol v7 and HTTP API, so unmodified pusher-js clients and
//! Pusher server SDKs (the seed article's sample among them) run against
//! slo-hub, and a logout by any slo-hub path reaches Pusher sockets too.
//!
//! * this file — the apps (from `[[pusher_apps]]`), the socket endpoint
//!   `GET /app/{key}` (protocol and app checks), the logout bridge.
//! * `socket` — one socket's life; `channels` — this node's sockets by
//!   channel and signed-in user; `subscriptions` — joins and leaves in
//!   order, counted cluster-wide (`store::presence`) and announced once;
//!   `http` — `/apps/{id}/...` with Pusher's request signing; `protocol` —
//!   frames, codes, names, signatures; `webhooks` — what changed, POSTed
//!   to the apps' webhook URLs.
//! * On several nodes every event goes to the others through the broker
//!   ([`Pusher::publish`]); each node delivers to its own sockets.
//!
//! Must not: touch the logout hub's own sockets or registry (the two meet
//! only in [`Pusher::user_logged_out`]).

pub mod channels;
pub mod http;
pub mod protocol;
mod socket;
pub mod subscriptions;
pub mod webhooks;

use std::collections::HashMap;
use std::sync::Arc;

use axum::Router;
use axum::extract::{Path, Request, State};
use axum::response::Response;
use axum::routing::get;
use serde_json::{Value, json};
use tokio::net::TcpStream;

use crate::App;
use crate::config::PusherAppSettings;
use crate::store::presence::{Presence, Vanished};
use crate::store::{Broker, NodeMessage};
use crate::ws::codec;
use channels::Channels;
use protocol::PusherCode;
use subscriptions::Subscriptions;

/// The configured apps and who is subscribed where.
pub struct Pusher {
    apps: Vec<PusherAppSettings>,
    by_key: HashMap<String, usize>,
    by_id: HashMap<String, usize>,
    channels: Channels,
    subscriptions: Subscriptions,
    webhooks: webhooks::Webhooks,
    presence: Arc<dyn Presence>,
    broker: Option<Arc<dyn Broker>>,
    /// Channel events for a connected console (its debug view).
    console: Arc<crate::console::Console>,
    metrics: Arc<crate::metrics::Metrics>,
}

impl Pusher {
    pub fn new(
        apps: &[PusherAppSettings],
        presence: Arc<dyn Presence>,
        broker: Option<Arc<dyn Broker>>,
        console: Arc<crate::console::Console>,
        metrics: Arc<crate::metrics::Metrics>,
        journal: Option<Arc<dyn crate::store::Durable>>,
    ) -> Pusher {
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
            subscriptions: Subscriptions::default(),
            webhooks: webhooks::Webhooks::new(apps.iter().map(|a| !a.webhooks.is_empty()), journal),
            presence,
            broker,
            console,
            metrics,
        }
    }

    /// Shows an event in a connected console's debug view.
    fn show(&self, app: usize, channel: &str, text: &str) {
        if self.console.watching() {
            self.console.pusher_event(&self.apps[app].id, channel, text);
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

    pub fn subscriptions(&self) -> &Subscriptions {
        &self.subscriptions
    }

    pub fn presence(&self) -> &Arc<dyn Presence> {
        &self.presence
    }

    pub fn webhooks(&self) -> &webhooks::Webhooks {
        &self.webhooks
    }

    /// Queues a webhook event of `app` (`name`, on `channel`, with `extra`
    /// members); a full queue drops it (counted).
    pub fn webhook(&self, app: usize, name: &str, channel: &str, extra: Value) {
        // Internal channels (`#…`: connection counts) are no one's business.
        if !self.webhooks.wanted(app) || channel.starts_with('#') {
            return;
        }
        let mut event = json!({ "name": name, "channel": channel });
        if let (Value::Object(e), Value::Object(x)) = (&mut event, extra) {
            e.extend(x);
        }
        if !self.webhooks.emit(app, event) {
            self.metrics.webhook("dropped");
        }
    }

    /// Keeps an event of a cache channel for late subscribers; others
    /// are not kept.
    pub async fn remember(&self, app: usize, channel: &str, text: &str) {
        if !protocol::is_cache(channel) {
            return;
        }
        if let Err(e) = self
            .presence
            .cache_put(&self.apps[app].id, channel, text)
            .await
        {
            tracing::warn!(error = %e, "pusher: a cache channel's event was not kept");
        }
    }

    /// Sends an event (its JSON text) to a channel's sockets on every node
    /// but `except` (a socket id); returns the sockets reached here. The
    /// other nodes get it through the broker (best-effort, as Pusher's).
    pub async fn publish(
        &self,
        app: usize,
        channel: &str,
        text: String,
        except: Option<&str>,
    ) -> usize {
        self.show(app, channel, &text);
        let here = self
            .channels
            .publish(app, channel, &codec::text_frame(&text), except);
        if let Some(broker) = &self.broker {
            let message = NodeMessage::Event {
                app: self.apps[app].id.clone(),
                channel: channel.to_string(),
                frame: text,
                except: except.map(str::to_string),
            };
            if let Err(e) = broker.publish_node(&message).await {
                tracing::warn!(error = %e, "pusher: an event did not reach the other nodes");
            }
        }
        here
    }

    /// Like [`Pusher::publish`], without waiting for the broker (a socket's
    /// client event).
    pub fn publish_detached(&self, app: usize, channel: &str, text: String, except: &str) {
        self.show(app, channel, &text);
        self.channels
            .publish(app, channel, &codec::text_frame(&text), Some(except));
        if let Some(broker) = self.broker.clone() {
            let message = NodeMessage::Event {
                app: self.apps[app].id.clone(),
                channel: channel.to_string(),
                frame: text,
                except: Some(except.to_string()),
            };
            tokio::spawn(async move {
                if let Err(e) = broker.publish_node(&message).await {
                    tracing::warn!(error = %e, "pusher: a client event did not reach the other nodes");
                }
            });
        }
    }

    /// Closes the sockets signed in as `user` on every node (4009).
    pub async fn terminate(&self, app: usize, user: &str) {
        for conn in self.channels.user_sockets(app, user) {
            conn.close(PusherCode::Unauthorized);
        }
        if let Some(broker) = &self.broker {
            let message = NodeMessage::Terminate {
                app: self.apps[app].id.clone(),
                user: user.to_string(),
            };
            if let Err(e) = broker.publish_node(&message).await {
                tracing::warn!(error = %e, "pusher: a termination did not reach the other nodes");
            }
        }
    }

    /// Tells a presence channel that `user`'s last socket left.
    pub async fn member_removed(&self, app: usize, channel: &str, user: &str) {
        let data = json!({ "user_id": user }).to_string();
        let text = protocol::event_text("pusher_internal:member_removed", Some(channel), &data);
        self.publish(app, channel, text, None).await;
    }

    /// What another node sent for this node's sockets.
    pub fn heard(&self, message: NodeMessage) {
        match message {
            NodeMessage::Event {
                app,
                channel,
                frame,
                except,
            } => {
                if let Some(i) = self.app_by_id(&app) {
                    let frame = codec::text_frame(&frame);
                    self.channels
                        .publish(i, &channel, &frame, except.as_deref());
                }
            }
            NodeMessage::Terminate { app, user } => {
                if let Some(i) = self.app_by_id(&app) {
                    for conn in self.channels.user_sockets(i, &user) {
                        conn.close(PusherCode::Unauthorized);
                    }
                }
            }
            // Not for Pusher sockets (`App::hear` answers it).
            NodeMessage::Connections { .. } => {}
        }
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

/// What the presence store removed without a leave (a dead node's part,
/// or ours after a long cut-off), announced from a task of `app`'s.
pub fn vanished(app: &Arc<App>, v: Vanished) {
    match v {
        Vanished::Member {
            app: id,
            channel,
            user_id,
        } => {
            let Some(index) = app.pusher.app_by_id(&id) else {
                return;
            };
            app.pusher.webhook(
                index,
                "member_removed",
                &channel,
                json!({ "user_id": user_id }),
            );
            let a = app.clone();
            app.tasks.spawn(async move {
                a.pusher.member_removed(index, &channel, &user_id).await;
            });
        }
        Vanished::Channel { app: id, channel } => {
            if let Some(index) = app.pusher.app_by_id(&id) {
                app.pusher
                    .webhook(index, "channel_vacated", &channel, json!({}));
            }
        }
        // Our members are gone from the count: the sockets join again.
        Vanished::Us => app.pusher.channels.close_subscribed(PusherCode::Restart),
    }
}

pub fn router() -> Router<Arc<App>> {
    Router::new()
        .route("/app/{key}", get(upgrade))
        .merge(http::router())
}

/// `GET /app/{key}?protocol=7`: an unknown key or protocol, a disabled
/// app or an origin the app does not allow is told on the socket
/// (`pusher:error`, then the close code), as Pusher does, because clients
/// act on those codes, not on HTTP statuses.
async fn upgrade(State(app): State<Arc<App>>, Path(key): Path<String>, req: Request) -> Response {
    let protocol = req.uri().query().and_then(|q| {
        form_urlencoded::parse(q.as_bytes())
            .find(|(k, _)| k == "protocol")
            .map(|(_, v)| v.into_owned())
    });
    let origin = req
        .headers()
        .get(axum::http::header::ORIGIN)
        .map(|o| o.to_str().unwrap_or("?"));
    let found = app
        .pusher
        .app_by_key(&key)
        .map(|i| (i, &app.pusher.apps[i]));
    let checked = match (found, protocol.as_deref()) {
        (None, _) => Err((
            PusherCode::AppNotFound,
            format!("App key {} not in this cluster", protocol::truncate(&key)),
        )),
        (Some((_, a)), _) if !a.enabled => Err((PusherCode::AppDisabled, "App is disabled".into())),
        // Pages are held to the app's list; clients without `Origin` are
        // not browsers, and no header could hold them to it.
        (Some((_, a)), _) if origin.is_some_and(|o| !a.allows_origin(o)) => Err((
            PusherCode::Unauthorized,
            format!(
                "Origin {} is not allowed for this app",
                protocol::truncate(origin.unwrap_or_default())
            ),
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
        (Some((index, _)), _) => Ok(index),
    };
    match checked {
        Ok(index) => crate::ws::handshake(&app, req, move |app, stream, early, guard| async move {
            let _limit = guard.limit;
            socket::run(app, index, stream, early, guard.meta).await
        }),
        Err((code, message)) => {
            app.metrics.upgrade_rejected("pusher_refused");
            crate::ws::handshake(&app, req, move |_app, stream, _early, _guard| {
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
