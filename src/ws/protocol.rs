//! The `/v1/ws` JSON protocol: what clients send and what the hub answers.
//!
//! Client → hub: `{"type":"auth","token"}` (first, within the deadline),
//! `{"type":"ack","id"}`, `{"type":"ping"}`.
//! Hub → client: `{"type":"ready","sub","sid","connection_id","heartbeat_secs"}`,
//! `{"type":"logout","id","scope","sub","sid","reason","at"}`, `{"type":"pong"}`,
//! `{"type":"error","code","message"}`. Close codes: `error::CloseCode`.
//!
//! Must not: do I/O or look at hub state; this is only the vocabulary.

use std::borrow::Cow;

use serde::{Deserialize, Serialize};

use super::codec;

/// A message from the client, borrowing from the frame.
#[derive(Debug, Deserialize)]
#[serde(tag = "type", rename_all = "lowercase")]
pub enum ClientMessage<'a> {
    Auth {
        #[serde(borrow)]
        token: Cow<'a, str>,
    },
    Ack {
        #[serde(borrow)]
        id: Cow<'a, str>,
    },
    Ping,
}

/// Why a text message could not be understood (sent back in an error frame).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ParseError {
    BadJson,
    UnknownType,
    /// A known type with missing or mistyped fields.
    Invalid,
}

impl ParseError {
    pub fn code(self) -> &'static str {
        match self {
            ParseError::BadJson => "bad_json",
            ParseError::UnknownType => "unknown_type",
            ParseError::Invalid => "invalid_message",
        }
    }
}

pub fn parse(text: &str) -> Result<ClientMessage<'_>, ParseError> {
    serde_json::from_str(text).map_err(|_| {
        // The error path may be slow: tell "not JSON", "unknown type" and
        // "known type, wrong fields" apart so the client learns which.
        match serde_json::from_str::<serde_json::Value>(text) {
            Ok(serde_json::Value::Object(m)) => match m.get("type").and_then(|t| t.as_str()) {
                Some("auth" | "ack" | "ping") => ParseError::Invalid,
                _ => ParseError::UnknownType,
            },
            _ => ParseError::BadJson,
        }
    })
}

/// The `logout` push, serialized once per event and shared by every socket.
#[derive(Debug, Serialize)]
pub struct LogoutMessage<'a> {
    #[serde(rename = "type")]
    pub kind: &'static str,
    pub id: &'a str,
    pub scope: &'static str,
    pub sub: Option<&'a str>,
    pub sid: Option<&'a str>,
    pub reason: &'a str,
    /// Milliseconds since the epoch.
    pub at: i64,
}

/// Frames are structs, not `json!` maps: serde_json's maps sort their keys,
/// and clients may rely on `type` coming first (the docs show it so).
#[derive(Serialize)]
struct ReadyMessage<'a> {
    #[serde(rename = "type")]
    kind: &'static str,
    sub: &'a str,
    sid: Option<&'a str>,
    connection_id: String,
    heartbeat_secs: u64,
}

#[derive(Serialize)]
struct ErrorMessage<'a> {
    #[serde(rename = "type")]
    kind: &'static str,
    code: &'a str,
    message: &'a str,
}

fn frame(msg: &impl Serialize) -> Vec<u8> {
    // Serializing these plain structs cannot fail.
    codec::text_frame(&serde_json::to_string(msg).unwrap_or_default())
}

pub fn ready_frame(
    sub: &str,
    sid: Option<&str>,
    connection_id: u64,
    heartbeat_secs: u64,
) -> Vec<u8> {
    frame(&ReadyMessage {
        kind: "ready",
        sub,
        sid,
        connection_id: connection_id.to_string(),
        heartbeat_secs,
    })
}

pub fn error_frame(code: &str, message: &str) -> Vec<u8> {
    frame(&ErrorMessage {
        kind: "error",
        code,
        message,
    })
}

pub const PONG_JSON: &str = r#"{"type":"pong"}"#;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_known_messages() {
        assert!(
            matches!(parse(r#"{"type":"auth","token":"a.b.c"}"#), Ok(ClientMessage::Auth { token }) if token == "a.b.c")
        );
        assert!(
            matches!(parse(r#"{"type":"ack","id":"e1"}"#), Ok(ClientMessage::Ack { id }) if id == "e1")
        );
        assert!(matches!(
            parse(r#"{"type":"ping"}"#),
            Ok(ClientMessage::Ping)
        ));
        // Escapes force an owned string; still fine.
        assert!(
            matches!(parse(r#"{"type":"ack","id":"e\u0031"}"#), Ok(ClientMessage::Ack { id }) if id == "e1")
        );
    }

    #[test]
    fn frames_start_with_their_type() {
        let ready = ready_frame("alice", Some("s1"), 7, 30);
        let text = std::str::from_utf8(&ready[2..]).unwrap();
        assert!(
            text.starts_with(r#"{"type":"ready","sub":"alice""#),
            "{text}"
        );
        let err = error_frame("bad_json", "no");
        assert!(
            std::str::from_utf8(&err[2..])
                .unwrap()
                .starts_with(r#"{"type":"error""#)
        );
    }

    #[test]
    fn classifies_errors() {
        assert_eq!(parse("nope").unwrap_err(), ParseError::BadJson);
        assert_eq!(parse("[1]").unwrap_err(), ParseError::BadJson);
        assert_eq!(
            parse(r#"{"type":"subscribe"}"#).unwrap_err(),
            ParseError::UnknownType
        );
        assert_eq!(parse(r#"{"type":"ack"}"#).unwrap_err(), ParseError::Invalid);
        assert_eq!(
            parse(r#"{"kind":"ack"}"#).unwrap_err(),
            ParseError::UnknownType
        );
    }
}
