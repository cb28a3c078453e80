//! Pusher protocol v7 vocabulary: event frames, error and close codes,
//! channel kinds and names, and the HMAC-SHA256 signatures (channel
//! authorisation, user sign-in, API requests).
//!
//! Must not: do I/O or look at hub state.

use ring::hmac;
use serde_json::{Value, json};
use subtle::ConstantTimeEq;

use crate::ws::codec;

/// The only protocol version spoken.
pub const PROTOCOL: u32 = 7;
/// Longest channel name (Pusher's limit).
pub const MAX_CHANNEL_NAME: usize = 200;
/// Longest event name.
pub const MAX_EVENT_NAME: usize = 200;
/// Prefix of the channel a signed-in user's sockets receive server events on.
pub const USER_CHANNEL_PREFIX: &str = "#server-to-user-";
/// The event the hub's logout bridge sends (the seed article's name).
pub const LOGOUT_EVENT: &str = "slo-event";

/// Pusher's documented close/error codes: 4000–4099 the client must not
/// reconnect, 4100–4199 reconnect with backoff, 4200–4299 reconnect now.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum PusherCode {
    /// 4001: no app with this key.
    AppNotFound,
    /// 4003: the app is disabled.
    AppDisabled,
    /// 4004: the app is over its connection quota.
    OverQuota,
    /// 4007: a protocol other than 7; 4008: none given.
    UnsupportedProtocol,
    NoProtocol,
    /// 4009: unauthorized (bad sign-in, or terminated by the app).
    Unauthorized,
    /// 4100: over capacity (here: the socket could not keep up).
    OverCapacity,
    /// 4200: closed by the server, reconnect (shutdown).
    Restart,
    /// 4201: no pong / no activity within twice the activity timeout.
    PongNotReceived,
    /// 4301: client events over the rate limit.
    ClientEventRateLimit,
}

impl PusherCode {
    pub fn code(self) -> u16 {
        match self {
            PusherCode::AppNotFound => 4001,
            PusherCode::AppDisabled => 4003,
            PusherCode::OverQuota => 4004,
            PusherCode::UnsupportedProtocol => 4007,
            PusherCode::NoProtocol => 4008,
            PusherCode::Unauthorized => 4009,
            PusherCode::OverCapacity => 4100,
            PusherCode::Restart => 4200,
            PusherCode::PongNotReceived => 4201,
            PusherCode::ClientEventRateLimit => 4301,
        }
    }
}

/// `{"event","channel"?,"data"}` as a text frame; `data` is a JSON string
/// holding JSON, as Pusher sends it.
pub fn event_frame(event: &str, channel: Option<&str>, data: &str) -> Vec<u8> {
    codec::text_frame(&event_text(event, channel, data))
}

/// The JSON text of an event (what goes between nodes).
pub fn event_text(event: &str, channel: Option<&str>, data: &str) -> String {
    let mut v = json!({ "event": event, "data": data });
    if let Some(c) = channel {
        v["channel"] = Value::from(c);
    }
    v.to_string()
}

/// `pusher:error` (code may be null for errors that do not close).
pub fn error_frame(code: Option<u16>, message: &str) -> Vec<u8> {
    let v = json!({ "event": "pusher:error", "data": { "code": code, "message": message } });
    codec::text_frame(&v.to_string())
}

/// `pusher:subscription_error` on a channel (what Soketi sends; pusher-js
/// hands it to `channel.bind("pusher:subscription_error")`).
pub fn subscription_error_frame(channel: &str, status: u16, error: &str) -> Vec<u8> {
    let v = json!({
        "event": "pusher:subscription_error",
        "channel": channel,
        "data": { "type": "AuthError", "error": error, "status": status },
    });
    codec::text_frame(&v.to_string())
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ChannelKind {
    Public,
    Private,
    Presence,
    /// `#server-to-user-{id}`: only through `pusher:signin`.
    User,
}

/// Cache channels keep their last event for late subscribers
/// (`cache-`, `private-cache-`, `private-encrypted-cache-`, `presence-cache-`).
pub fn is_cache(name: &str) -> bool {
    [
        "cache-",
        "private-cache-",
        "private-encrypted-cache-",
        "presence-cache-",
    ]
    .iter()
    .any(|p| name.starts_with(p))
}

/// The kind of a channel, or why its name is refused.
pub fn channel_kind(name: &str) -> Result<ChannelKind, &'static str> {
    if name.is_empty() || name.len() > MAX_CHANNEL_NAME {
        return Err("channel names are 1 to 200 characters");
    }
    if let Some(id) = name.strip_prefix(USER_CHANNEL_PREFIX) {
        return if is_user_id(id) {
            Ok(ChannelKind::User)
        } else {
            Err("invalid user id in the channel name")
        };
    }
    let allowed = |b: u8| b.is_ascii_alphanumeric() || b"-_=@,.;".contains(&b);
    if !name.bytes().all(allowed) {
        return Err("channel names may contain only A-Z a-z 0-9 - _ = @ , . ;");
    }
    Ok(if name.starts_with("presence-") {
        ChannelKind::Presence
    } else if name.starts_with("private-") {
        ChannelKind::Private
    } else {
        ChannelKind::Public
    })
}

/// At most 64 bytes of `s` (on a char boundary), for echoing input in errors.
pub fn truncate(s: &str) -> &str {
    let mut end = s.len().min(64);
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    &s[..end]
}

/// A user id as Pusher allows it (printable, bounded).
pub fn is_user_id(id: &str) -> bool {
    !id.is_empty() && id.len() <= 200 && id.bytes().all(|b| (0x21..0x7f).contains(&b))
}

/// Lowercase hex HMAC-SHA256 of `message` under `secret`.
pub fn sign(secret: &str, message: &str) -> String {
    let key = hmac::Key::new(hmac::HMAC_SHA256, secret.as_bytes());
    crate::auth::api_keys::hex(hmac::sign(&key, message.as_bytes()).as_ref())
}

/// Checks `given` (`"{key}:{hex signature}"`, as a channel authorisation
/// or sign-in carries it) against `message`, in constant time.
pub fn check_auth(key: &str, secret: &str, given: &str, message: &str) -> bool {
    let Some((k, sig)) = given.split_once(':') else {
        return false;
    };
    let expected = sign(secret, message);
    let key_ok: bool = k.as_bytes().ct_eq(key.as_bytes()).into();
    let sig_ok: bool = sig.as_bytes().ct_eq(expected.as_bytes()).into();
    key_ok & sig_ok
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_signature_matches_pushers_documented_example() {
        // https://pusher.com/docs/channels/library_auth_reference/auth-signatures
        let sig = sign("7ad3773142a6692b25b8", "1234.1234:private-foobar");
        assert_eq!(
            sig,
            "58df8b0c36d6982b82c3ecf6b4662e34fe8c25bba48f5369f135bf843651c3a4"
        );
        assert!(check_auth(
            "278d425bdf160c739803",
            "7ad3773142a6692b25b8",
            &format!("278d425bdf160c739803:{sig}"),
            "1234.1234:private-foobar"
        ));
        assert!(!check_auth(
            "278d425bdf160c739803",
            "7ad3773142a6692b25b8",
            &format!("other:{sig}"),
            "1234.1234:private-foobar"
        ));
    }

    #[test]
    fn channel_names_are_classified_and_checked() {
        assert_eq!(channel_kind("slo-123"), Ok(ChannelKind::Public));
        assert_eq!(channel_kind("private-a"), Ok(ChannelKind::Private));
        assert_eq!(
            channel_kind("private-encrypted-a"),
            Ok(ChannelKind::Private)
        );
        assert_eq!(channel_kind("presence-a"), Ok(ChannelKind::Presence));
        assert_eq!(channel_kind("#server-to-user-42"), Ok(ChannelKind::User));
        assert!(channel_kind("a b").is_err());
        assert!(channel_kind("").is_err());
        assert!(channel_kind(&"x".repeat(201)).is_err());
    }
}
