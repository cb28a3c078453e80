//! One Pusher socket after the upgrade: `pusher:connection_established`,
//! then subscribe / unsubscribe / sign-in / ping / client events until the
//! socket ends; on the way out it leaves every channel (presence members
//! are told) and its user.
//!
//! Must not: block on another socket (publishers use the outbox), or keep a
//! channel or user entry after it ends.

use std::collections::HashMap;
use std::io;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use serde_json::{Value, json};
use tokio::net::TcpStream;

use super::channels::PConn;
use super::protocol::{self, ChannelKind, PusherCode};
use crate::App;
use crate::config::PusherAppSettings;
use crate::error::CloseCode;
use crate::store::presence::Member;
use crate::util::Budget;
use crate::ws::codec::{self, Decoder, Flow, Message, Role};
use crate::ws::conn::read_available;
use crate::ws::partial::Held;

const READ_CHUNK: usize = 4096;
/// Frames beyond its subscriptions a socket may send at once: pusher-js
/// sends every subscription together on each connect.
const BURST_OVER_SUBSCRIPTIONS: u32 = 20;

/// How the socket ends.
enum End {
    Close(u16, &'static str),
    /// It stopped reading and its backlog passed the limit (4100): the
    /// backlog is dropped, and the close frame gets the close deadline.
    SlowConsumer,
    PeerClosed(Option<u16>),
    Gone,
}

/// A socket's own state.
struct Session<'a> {
    app: &'a Arc<App>,
    settings: &'a PusherAppSettings,
    conn: Arc<PConn>,
    /// Channel → the presence user id it joined as (None: not presence).
    subscribed: HashMap<Box<str>, Option<Box<str>>>,
    user: Option<Box<str>>,
    /// Client events: the app's `max_client_events_per_sec`.
    client_events: Budget,
    /// Every frame: `ws.max_messages_per_sec`, burst `burst`.
    messages: Budget,
    /// `ws.message_burst`, or room for every subscription at once.
    burst: u32,
}

pub async fn run(
    app: Arc<App>,
    index: usize,
    stream: TcpStream,
    early: Bytes,
    meta: crate::ws::conn::ConnMeta,
) {
    app.metrics.sockets_opened.inc();
    let settings = &app.pusher.apps()[index];
    let socket_id = format!(
        "{}.{}",
        u32::from_le_bytes(crate::util::random_bytes::<4>()) % 1_000_000_000,
        u32::from_le_bytes(crate::util::random_bytes::<4>()) % 1_000_000_000
    );
    let conn = Arc::new(PConn::new(
        socket_id,
        index,
        stream,
        app.config.ws.outbound_buffer_bytes,
        meta,
    ));
    let subscriptions = u32::try_from(settings.max_subscriptions_per_socket).unwrap_or(u32::MAX);
    let burst = app
        .config
        .ws
        .message_burst
        .max(subscriptions.saturating_add(BURST_OVER_SUBSCRIPTIONS));
    let mut s = Session {
        app: &app,
        settings,
        conn: conn.clone(),
        subscribed: HashMap::new(),
        user: None,
        client_events: Budget::new(settings.max_client_events_per_sec),
        messages: Budget::new(burst),
        burst,
    };
    let established = json!({
        "socket_id": conn.socket_id,
        "activity_timeout": settings.activity_timeout_secs,
    })
    .to_string();
    let established = protocol::event_frame("pusher:connection_established", None, &established);
    match settings.max_connections {
        // Counted cluster-wide first; told then (or refused 4004).
        Some(max) => app.pusher.subscriptions().connect(&conn, established, max),
        None => {
            conn.send(&established);
        }
    }
    let silence = Duration::from_secs(settings.activity_timeout_secs * 2);
    let mut last_seen = tokio::time::Instant::now();
    let mut decoder = Decoder::new(Role::Server, app.config.ws.max_message_bytes);
    // `early` may be a slice of hyper's whole read buffer: copy the few
    // bytes out and let that buffer go now, not when the socket ends.
    let mut buf = early.to_vec();
    drop(early);
    let mut held = Held::default();
    let frame_timeout = Duration::from_millis(app.config.ws.frame_timeout_ms);
    let end = loop {
        // Handle what is buffered; replies go out through the connection,
        // in order with what publishers write.
        let mut stop = None;
        let mut messages = 0;
        let decoded = decoder.decode(&mut buf, |m| {
            messages += 1;
            stop = s.on_message(m);
            if stop.is_some() {
                Flow::Stop
            } else {
                Flow::Continue
            }
        });
        let consumed = match decoded {
            Ok(n) => n,
            Err(code) => break End::Close(code.code(), code.reason()),
        };

        buf.drain(..consumed);
        if buf.is_empty() {
            buf = Vec::new();
        }
        if let Some(e) = stop {
            break e;
        }
        // Alive is what sends whole frames; trickled bytes do not count.
        if messages > 0 {
            last_seen = tokio::time::Instant::now();
        }
        if held
            .set(
                buf.capacity() + decoder.held(),
                &app.partial_memory,
                frame_timeout,
            )
            .is_err()
        {
            break End::Close(
                CloseCode::TryAgainLater.code(),
                CloseCode::TryAgainLater.reason(),
            );
        }
        let (want_write, close) = conn.state();
        match close {
            Some(PusherCode::OverCapacity) => break End::SlowConsumer,
            Some(code) => break End::Close(code.code(), close_reason(code)),
            None => {}
        }
        tokio::select! {
            _ = app.shutdown.cancelled() => {
                break End::Close(PusherCode::Restart.code(), "server restarting");
            }
            _ = std::future::poll_fn(|cx| conn.poll_woken(cx)) => {}
            r = conn.stream.writable(), if want_write => {
                if r.is_err() || conn.flush().is_err() {
                    break End::Gone;
                }
            }
            _ = held.overdue() => {
                break End::Close(CloseCode::PolicyViolation.code(), CloseCode::PolicyViolation.reason());
            }
            _ = tokio::time::sleep_until(last_seen + silence) => {
                break End::Close(PusherCode::PongNotReceived.code(), "pong reply not received");
            }
            r = conn.stream.readable() => {
                if r.is_err() {
                    break End::Gone;
                }
                // Read on the stack; the heap holds only what is unparsed.
                let mut chunk = [0u8; READ_CHUNK];
                match read_available(&conn.stream, &mut chunk) {
                    Ok(0) => break End::Gone,
                    Ok(n) => buf.extend_from_slice(&chunk[..n]),
                    Err(e) if e.kind() == io::ErrorKind::WouldBlock => {}
                    Err(_) => break End::Gone,
                }
            }
        }
    };
    s.leave_all();
    let frame = match end {
        End::Close(code, reason) => {
            app.metrics.ws_close(code);
            codec::close_frame(code, reason)
        }
        End::PeerClosed(Some(code)) => codec::close_frame(code, ""),
        End::PeerClosed(None) => {
            let mut f = Vec::new();
            codec::encode_frame(&mut f, codec::OP_CLOSE, &[], None);
            f
        }
        End::Gone => return,
        End::SlowConsumer => {
            app.metrics.ws_close(PusherCode::OverCapacity.code());
            app.metrics.slow_consumers.inc();
            codec::close_frame(PusherCode::OverCapacity.code(), "over capacity")
        }
    };
    // What was queued before the close (a termination's or logout's
    // `slo-event`) goes first; a 4100's backlog was dropped.
    conn.close(PusherCode::Restart);
    let mut bytes = conn.take_pending();
    bytes.extend_from_slice(&frame);
    let _ = crate::ws::close_stream(&conn.stream, bytes).await;
}

fn close_reason(code: PusherCode) -> &'static str {
    match code {
        PusherCode::Unauthorized => "terminated",
        PusherCode::OverCapacity => "over capacity",
        _ => "closing",
    }
}

impl Session<'_> {
    /// Handles one client message (replies are sent at once). `Some` ends the socket.
    fn on_message(&mut self, m: Message<'_>) -> Option<End> {
        let mut out = Vec::new();
        let end = self.handle(m, &mut out);
        if !out.is_empty() {
            self.conn.send(&out);
        }
        end
    }

    fn handle(&mut self, m: Message<'_>, out: &mut Vec<u8>) -> Option<End> {
        let ws = &self.app.config.ws;
        // Every frame costs one, whatever it carries.
        if !self.messages.take(1, ws.max_messages_per_sec, self.burst) {
            // Reconnect with backoff (4100-4199), not at once.
            return Some(End::Close(
                PusherCode::OverCapacity.code(),
                "over the message rate",
            ));
        }
        match m {
            Message::Text(t) => self.on_text(t, out),
            Message::Binary(_) => Some(End::Close(1003, "binary frames are not supported")),
            Message::Ping(p) => {
                codec::encode_frame(out, codec::OP_PONG, p, None);
                None
            }
            Message::Pong(_) | Message::Fragment => None,
            Message::Close(c) => Some(End::PeerClosed(c.map(|(code, _)| code))),
        }
    }

    fn on_text(&mut self, text: &str, out: &mut Vec<u8>) -> Option<End> {
        let Ok(msg) = serde_json::from_str::<Value>(text) else {
            out.extend(protocol::error_frame(None, "the message is not JSON"));
            return None;
        };
        let event = msg["event"].as_str().unwrap_or("");
        // pusher-js sends `data` as an object; other clients as a JSON string.
        let data = match &msg["data"] {
            Value::String(s) => serde_json::from_str(s).unwrap_or(Value::String(s.clone())),
            other => other.clone(),
        };
        match event {
            "pusher:ping" => out.extend(protocol::event_frame("pusher:pong", None, "{}")),
            "pusher:pong" => {}
            "pusher:subscribe" => self.subscribe(&data, out),
            "pusher:unsubscribe" => {
                if let Some(ch) = data["channel"].as_str() {
                    self.unsubscribe(ch);
                }
            }
            "pusher:signin" => return self.sign_in(&data, out),
            e if e.starts_with("client-") => self.client_event(e, &msg, out),
            _ => out.extend(protocol::error_frame(
                None,
                &format!("unsupported event {:?}", protocol::truncate(event)),
            )),
        }
        None
    }

    fn subscribe(&mut self, data: &Value, out: &mut Vec<u8>) {
        let Some(name) = data["channel"].as_str() else {
            out.extend(protocol::error_frame(
                None,
                "pusher:subscribe needs data.channel",
            ));
            return;
        };
        let refuse = |out: &mut Vec<u8>, status: u16, why: &str| {
            out.extend(protocol::subscription_error_frame(name, status, why));
        };
        let kind = match protocol::channel_kind(name) {
            Ok(ChannelKind::User) => {
                // pusher-js joins its own user channel right after signing in.
                let own = self
                    .user
                    .as_deref()
                    .is_some_and(|id| name.strip_prefix(protocol::USER_CHANNEL_PREFIX) == Some(id));
                if !own {
                    return refuse(
                        out,
                        403,
                        "a user channel is joined only by that user, after pusher:signin",
                    );
                }
                ChannelKind::User
            }
            Ok(k) => k,
            Err(why) => return refuse(out, 400, why),
        };
        let auth = data["auth"].as_str().unwrap_or("");
        let (key, secret) = (&self.settings.key, &self.settings.secret);
        let mut member = None;
        match kind {
            ChannelKind::Public | ChannelKind::User => {}
            ChannelKind::Private => {
                let message = format!("{}:{name}", self.conn.socket_id);
                if !protocol::check_auth(key, secret, auth, &message) {
                    self.app
                        .metrics
                        .auth_failure("pusher", "bad_channel_signature");
                    return refuse(out, 401, "invalid signature for this socket and channel");
                }
            }
            ChannelKind::Presence => {
                let channel_data = data["channel_data"].as_str().unwrap_or("");
                let message = format!("{}:{name}:{channel_data}", self.conn.socket_id);
                if !protocol::check_auth(key, secret, auth, &message) {
                    self.app
                        .metrics
                        .auth_failure("pusher", "bad_channel_signature");
                    return refuse(
                        out,
                        401,
                        "invalid signature for this socket, channel and channel_data",
                    );
                }
                let Ok(cd) = serde_json::from_str::<Value>(channel_data) else {
                    return refuse(out, 400, "channel_data is not JSON");
                };
                let id = match &cd["user_id"] {
                    Value::String(s) => s.clone(),
                    Value::Number(n) => n.to_string(),
                    _ => return refuse(out, 400, "channel_data needs a user_id"),
                };
                if !protocol::is_user_id(&id) {
                    return refuse(out, 400, "invalid user_id");
                }
                let info = cd.get("user_info").cloned().unwrap_or(json!({}));
                let limit = self.settings.max_presence_member_bytes;
                if info.to_string().len() > limit {
                    return refuse(out, 413, &format!("user_info is larger than {limit} bytes"));
                }
                member = Some((id, info));
            }
        }
        let max = self.settings.max_subscriptions_per_socket;
        if !self.subscribed.contains_key(name) && self.subscribed.len() >= max {
            return refuse(
                out,
                429,
                &format!("a socket of this app may hold at most {max} subscriptions"),
            );
        }
        if kind == ChannelKind::User {
            // Delivered by sign-in (`Channels::publish`), not by subscription.
            out.extend(protocol::event_frame(
                "pusher_internal:subscription_succeeded",
                Some(name),
                "{}",
            ));
            return;
        }
        // Answered by the subscription task, once counted cluster-wide.
        let member = member.map(|(user_id, info)| Member {
            user_id,
            info: info.to_string(),
        });
        let identity = member
            .as_ref()
            .map(|m| Box::<str>::from(m.user_id.as_str()));
        if !self
            .app
            .pusher
            .subscriptions()
            .join(&self.conn, name, member)
        {
            return refuse(out, 503, "the hub is busy; retry the subscription");
        }
        // A repeated subscribe is answered again; it keeps its first identity.
        self.subscribed.entry(name.into()).or_insert(identity);
    }

    fn unsubscribe(&mut self, name: &str) {
        if let Some(member) = self.subscribed.remove(name) {
            self.app
                .pusher
                .subscriptions()
                .leave(&self.conn, name, member.as_deref());
        }
    }

    fn sign_in(&mut self, data: &Value, out: &mut Vec<u8>) -> Option<End> {
        let user_data = data["user_data"].as_str().unwrap_or("");
        let auth = data["auth"].as_str().unwrap_or("");
        let message = format!("{}::user::{user_data}", self.conn.socket_id);
        let id = serde_json::from_str::<Value>(user_data)
            .ok()
            .and_then(|u| match &u["id"] {
                Value::String(s) => Some(s.clone()),
                Value::Number(n) => Some(n.to_string()),
                _ => None,
            })
            .filter(|id| protocol::is_user_id(id));
        let valid = protocol::check_auth(&self.settings.key, &self.settings.secret, auth, &message);
        let (true, Some(id)) = (valid, id) else {
            self.app.metrics.auth_failure("pusher", "bad_signin");
            out.extend(protocol::error_frame(
                Some(PusherCode::Unauthorized.code()),
                "invalid sign-in: bad signature or user_data without an id",
            ));
            return Some(End::Close(
                PusherCode::Unauthorized.code(),
                "invalid sign-in",
            ));
        };
        if let Some(old) = self.user.take() {
            self.app.pusher.channels().sign_out(&self.conn, &old);
        }
        self.app.pusher.channels().sign_in(&self.conn, &id);
        self.user = Some(id.into());
        let data = json!({ "user_data": user_data }).to_string();
        out.extend(protocol::event_frame("pusher:signin_success", None, &data));
        None
    }

    fn client_event(&mut self, event: &str, msg: &Value, out: &mut Vec<u8>) {
        let channel = msg["channel"].as_str().unwrap_or("");
        if !self.settings.enable_client_messages {
            out.extend(protocol::error_frame(
                None,
                "client events are not enabled for this app",
            ));
            return;
        }
        let Some(member) = self.subscribed.get(channel) else {
            out.extend(protocol::error_frame(
                None,
                "client events need a subscribed channel",
            ));
            return;
        };
        if !matches!(
            protocol::channel_kind(channel),
            Ok(ChannelKind::Private | ChannelKind::Presence)
        ) {
            out.extend(protocol::error_frame(
                None,
                "client events are allowed on private and presence channels only",
            ));
            return;
        }
        if event.len() > protocol::MAX_EVENT_NAME {
            out.extend(protocol::error_frame(
                None,
                "event names are at most 200 characters",
            ));
            return;
        }
        let rate = self.settings.max_client_events_per_sec;
        if !self.client_events.take(1, rate, rate) {
            out.extend(protocol::error_frame(
                Some(PusherCode::ClientEventRateLimit.code()),
                "client event rejected due to rate limit",
            ));
            return;
        }
        let mut v = json!({ "event": event, "channel": channel, "data": msg["data"] });
        if let Some(id) = member {
            v["user_id"] = Value::from(&**id);
        }
        let pusher = &self.app.pusher;
        let text = v.to_string();
        if pusher.webhooks().wanted(self.conn.app) {
            // Pusher's webhook carries `data` as the string the client sent.
            let data = match &msg["data"] {
                Value::String(s) => s.clone(),
                other => other.to_string(),
            };
            let mut extra =
                json!({ "event": event, "data": data, "socket_id": &*self.conn.socket_id });
            if let Some(id) = member {
                extra["user_id"] = Value::from(&**id);
            }
            pusher.webhook(self.conn.app, "client_event", channel, extra);
        }
        if protocol::is_cache(channel) {
            let (app, index, channel, text) = (
                Arc::clone(self.app),
                self.conn.app,
                channel.to_string(),
                text.clone(),
            );
            self.app.tasks.spawn(async move {
                app.pusher.remember(index, &channel, &text).await;
            });
        }
        pusher.publish_detached(self.conn.app, channel, text, &self.conn.socket_id);
    }

    fn leave_all(&mut self) {
        let names: Vec<Box<str>> = self.subscribed.keys().cloned().collect();
        for name in names {
            self.unsubscribe(&name);
        }
        if let Some(id) = self.user.take() {
            self.app.pusher.channels().sign_out(&self.conn, &id);
        }
        if self.settings.max_connections.is_some() {
            self.app.pusher.subscriptions().leave(
                &self.conn,
                super::subscriptions::CONNECTIONS,
                None,
            );
        }
    }
}
