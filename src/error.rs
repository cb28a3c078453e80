//! Errors and what clients see of them: HTTP statuses and WebSocket close codes.
//!
//! Policy: each layer has one typed error (`AuthError` here, `ApiError` for the
//! HTTP surface, `StoreError` in `store`); they are mapped to statuses and close
//! codes only in this file. Responses carry a stable machine code and a message
//! safe to show; details (keys, tokens, peer data) never go into either, and are
//! logged by the caller at most as a reason label.
//!
//! The complete table of close codes used on `/v1/ws` is [`CloseCode`].

use axum::Json;
use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use serde_json::json;

/// Why a credential was refused. `reason()` is the metrics label.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum AuthError {
    #[error("no credentials were presented")]
    Missing,
    #[error("credentials are not accepted in the URL")]
    CredentialsInUrl,
    #[error("the token is not a well-formed JWT")]
    Malformed,
    #[error("the Authorization scheme must be Bearer (an API key or a JWT), not {0}")]
    WrongScheme(String),
    #[error("the token is larger than allowed")]
    TooLarge,
    #[error("the token's issuer is not trusted")]
    UnknownIssuer,
    #[error("no key with the token's key id")]
    UnknownKey,
    #[error("the token's algorithm is not allowed")]
    AlgorithmNotAllowed,
    #[error("the token carries a critical header extension that is not understood")]
    UnsupportedCritical,
    #[error("the token's signature is invalid")]
    BadSignature,
    #[error("the token has expired")]
    Expired,
    #[error("the token is not valid yet")]
    NotYetValid,
    #[error("the token's audience is not accepted")]
    WrongAudience,
    #[error("the token's issuer does not match")]
    WrongIssuer,
    #[error("the token lacks the required claim `{0}`")]
    MissingClaim(&'static str),
    #[error("the token's claims are malformed")]
    BadClaims,
    #[error("the token's lifetime exceeds the hub's maximum")]
    LifetimeTooLong,
    #[error("this kind of token is not accepted here")]
    WrongTokenKind,
    #[error("the token was revoked by a logout")]
    Revoked,
    #[error("the API key is not valid")]
    BadApiKey,
    #[error("the credential lacks the scope `{0}`")]
    MissingScope(&'static str),
    #[error("the issuer's keys cannot be fetched right now")]
    KeysUnavailable,
}

impl AuthError {
    /// Stable snake_case label for metrics and the `error` field.
    pub fn reason(&self) -> &'static str {
        match self {
            AuthError::Missing => "missing",
            AuthError::CredentialsInUrl => "credentials_in_url",
            AuthError::Malformed => "malformed",
            AuthError::WrongScheme(_) => "wrong_scheme",
            AuthError::TooLarge => "too_large",
            AuthError::UnknownIssuer => "unknown_issuer",
            AuthError::UnknownKey => "unknown_kid",
            AuthError::AlgorithmNotAllowed => "alg_not_allowed",
            AuthError::UnsupportedCritical => "crit_not_supported",
            AuthError::BadSignature => "bad_signature",
            AuthError::Expired => "expired",
            AuthError::NotYetValid => "not_yet_valid",
            AuthError::WrongAudience => "wrong_audience",
            AuthError::WrongIssuer => "wrong_issuer",
            AuthError::MissingClaim(_) => "missing_claim",
            AuthError::BadClaims => "bad_claims",
            AuthError::LifetimeTooLong => "lifetime_too_long",
            AuthError::WrongTokenKind => "wrong_token_kind",
            AuthError::Revoked => "token_revoked",
            AuthError::BadApiKey => "bad_api_key",
            AuthError::MissingScope(_) => "missing_scope",
            AuthError::KeysUnavailable => "keys_unavailable",
        }
    }

    /// The close code a socket gets when its `auth` message fails this way.
    pub fn close_code(&self) -> CloseCode {
        match self {
            AuthError::Expired => CloseCode::TokenExpired,
            AuthError::Revoked => CloseCode::LoggedOut,
            AuthError::KeysUnavailable => CloseCode::TryAgainLater,
            _ => CloseCode::Unauthorized,
        }
    }
}

/// Every close code the hub sends on `/v1/ws`, with what the client should do.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u16)]
pub enum CloseCode {
    /// 1000: normal closure (the client asked to close).
    Normal = 1000,
    /// 1002: RFC 6455 protocol violation (unmasked frame, bad opcode, bad fragmentation).
    ProtocolError = 1002,
    /// 1003: a binary message; the protocol is JSON text only.
    UnsupportedData = 1003,
    /// 1007: a text message that is not valid UTF-8.
    InvalidPayload = 1007,
    /// 1008: a frame did not complete within `ws.frame_timeout_ms`.
    PolicyViolation = 1008,
    /// 1009: a message above `ws.max_message_bytes`.
    MessageTooBig = 1009,
    /// 1011: the hub failed internally; reconnect with backoff.
    InternalError = 1011,
    /// 1012: the hub is restarting; reconnect (with jitter).
    ServiceRestart = 1012,
    /// 1013: a dependency (issuer keys, store) is unavailable; reconnect with backoff.
    TryAgainLater = 1013,
    /// 4000: this socket's session was logged out (after the `logout` message, or at
    /// connect when the token predates a logout). Do not reconnect with this token.
    LoggedOut = 4000,
    /// 4400: the client broke the JSON protocol too often (or the first message was not `auth`).
    BadProtocol = 4400,
    /// 4401: missing or invalid token, or no `auth` within the deadline. Get a new token.
    Unauthorized = 4401,
    /// 4403: the token has expired. Refresh it and reconnect.
    TokenExpired = 4403,
    /// 4408: the client stopped answering pings (silent for two heartbeat
    /// intervals). Reconnect; a missed logout is replayed by the watermark.
    HeartbeatTimeout = 4408,
    /// 4409: the client did not read fast enough (outbound buffer full).
    /// Reconnect; a missed logout is replayed by the watermark.
    SlowConsumer = 4409,
    /// 4429: the client sent messages faster than allowed.
    RateLimited = 4429,
}

impl CloseCode {
    pub fn code(self) -> u16 {
        self as u16
    }

    /// The close frame's reason text (short, fixed, no client data).
    pub fn reason(self) -> &'static str {
        match self {
            CloseCode::Normal => "bye",
            CloseCode::ProtocolError => "protocol error (RFC 6455)",
            CloseCode::UnsupportedData => "binary messages are not supported; send JSON text",
            CloseCode::InvalidPayload => "invalid UTF-8 in a text message",
            CloseCode::PolicyViolation => "a frame did not complete in time",
            CloseCode::MessageTooBig => "message larger than ws.max_message_bytes",
            CloseCode::InternalError => "internal error; reconnect with backoff",
            CloseCode::ServiceRestart => "the hub is restarting; reconnect",
            CloseCode::TryAgainLater => "a dependency is unavailable; reconnect with backoff",
            CloseCode::LoggedOut => "logged out; do not reconnect with this token",
            CloseCode::BadProtocol => "bad protocol: the first message must be auth",
            CloseCode::Unauthorized => "missing or invalid token, or no auth in time",
            CloseCode::TokenExpired => "token expired; refresh it and reconnect",
            CloseCode::HeartbeatTimeout => "no pong for two heartbeats",
            CloseCode::SlowConsumer => "outbound buffer full: the client did not read",
            CloseCode::RateLimited => "too many messages",
        }
    }
}

/// Attached to every error response so one middleware can count rejections
/// by endpoint and code (`http::count_rejections`).
#[derive(Clone, Copy, Debug)]
pub struct ErrorCode(pub &'static str);

/// What an HTTP endpoint answers when it cannot do what was asked.
#[derive(Debug, thiserror::Error)]
pub enum ApiError {
    #[error("{message}")]
    BadRequest { code: &'static str, message: String },
    #[error(transparent)]
    Unauthorized(#[from] AuthError),
    #[error("{0}")]
    Forbidden(String),
    #[error("not found")]
    NotFound,
    #[error("this method is not allowed here (see the Allow header)")]
    MethodNotAllowed,
    /// A request named something (an id, a token) the hub does not know.
    #[error("{0}")]
    Unknown(String),
    #[error("the request body is larger than {0} bytes")]
    PayloadTooLarge(usize),
    #[error("the request body did not arrive in time")]
    RequestTimeout,
    #[error("the content type must be {0}")]
    UnsupportedMediaType(&'static str),
    #[error("too many requests")]
    RateLimited,
    #[error("{0}")]
    Unavailable(String),
    #[error("internal error")]
    Internal(String),
}

impl ApiError {
    pub fn bad_request(code: &'static str, message: impl Into<String>) -> ApiError {
        ApiError::BadRequest {
            code,
            message: message.into(),
        }
    }

    pub fn status(&self) -> StatusCode {
        match self {
            ApiError::BadRequest { .. } => StatusCode::BAD_REQUEST,
            ApiError::Unauthorized(AuthError::MissingScope(_)) => StatusCode::FORBIDDEN,
            ApiError::Unauthorized(AuthError::KeysUnavailable) => StatusCode::SERVICE_UNAVAILABLE,
            ApiError::Unauthorized(_) => StatusCode::UNAUTHORIZED,
            ApiError::Forbidden(_) => StatusCode::FORBIDDEN,
            ApiError::NotFound | ApiError::Unknown(_) => StatusCode::NOT_FOUND,
            ApiError::MethodNotAllowed => StatusCode::METHOD_NOT_ALLOWED,
            ApiError::PayloadTooLarge(_) => StatusCode::PAYLOAD_TOO_LARGE,
            ApiError::RequestTimeout => StatusCode::REQUEST_TIMEOUT,
            ApiError::UnsupportedMediaType(_) => StatusCode::UNSUPPORTED_MEDIA_TYPE,
            ApiError::RateLimited => StatusCode::TOO_MANY_REQUESTS,
            ApiError::Unavailable(_) => StatusCode::SERVICE_UNAVAILABLE,
            ApiError::Internal(_) => StatusCode::INTERNAL_SERVER_ERROR,
        }
    }

    /// The `error` field: a stable code clients can branch on.
    pub fn code(&self) -> &'static str {
        match self {
            ApiError::BadRequest { code, .. } => code,
            ApiError::Unauthorized(e) => e.reason(),
            ApiError::Forbidden(_) => "forbidden",
            ApiError::NotFound => "not_found",
            ApiError::MethodNotAllowed => "method_not_allowed",
            ApiError::Unknown(_) => "unknown_id",
            ApiError::PayloadTooLarge(_) => "payload_too_large",
            ApiError::RequestTimeout => "request_timeout",
            ApiError::UnsupportedMediaType(_) => "unsupported_media_type",
            ApiError::RateLimited => "rate_limited",
            ApiError::Unavailable(_) => "unavailable",
            ApiError::Internal(_) => "internal",
        }
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let status = self.status();
        if let ApiError::Internal(detail) = &self {
            // The detail is for operators only.
            tracing::error!(detail = %detail, "internal error");
        }
        let body = Json(json!({"error": self.code(), "message": self.to_string()}));
        let mut resp = (status, body).into_response();
        resp.extensions_mut().insert(ErrorCode(self.code()));
        let headers = resp.headers_mut();
        headers.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
        if status == StatusCode::UNAUTHORIZED {
            // RFC 6750 §3: say which scheme, and why, without echoing the credential.
            let value = format!(
                "Bearer realm=\"slo-hub\", error=\"invalid_token\", error_description=\"{}\"",
                self
            );
            if let Ok(v) = HeaderValue::from_str(&value) {
                headers.insert(header::WWW_AUTHENTICATE, v);
            }
        }
        if matches!(
            self,
            ApiError::RequestTimeout | ApiError::PayloadTooLarge(_)
        ) {
            // The rest of the body may still be on its way: the connection
            // cannot be reused, and the client must know before it tries.
            headers.insert(header::CONNECTION, HeaderValue::from_static("close"));
        }
        if status == StatusCode::TOO_MANY_REQUESTS || status == StatusCode::SERVICE_UNAVAILABLE {
            headers.insert(header::RETRY_AFTER, HeaderValue::from_static("1"));
        }
        resp
    }
}

/// RFC 6749 §5.2 errors of `/oauth/token` (the same codes go into the
/// `error` parameter of an `/authorize` redirect).
#[derive(Debug, thiserror::Error)]
pub enum OAuthError {
    #[error("{0}")]
    InvalidRequest(String),
    #[error("{0}")]
    InvalidClient(String),
    /// `invalid_client` answered to HTTP Basic credentials (with
    /// `WWW-Authenticate: Basic`, RFC 6749 §5.2).
    #[error("{0}")]
    InvalidClientBasic(String),
    #[error("{0}")]
    InvalidTarget(String),
    #[error("{0}")]
    UnsupportedTokenType(String),
    #[error("{0}")]
    InvalidGrant(String),
    #[error("{0}")]
    UnauthorizedClient(String),
    #[error("{0}")]
    UnsupportedGrantType(String),
    #[error("the request body is larger than {0} bytes")]
    TooLarge(usize),
    #[error("the request body did not arrive in time")]
    Timeout,
    #[error("{0}")]
    TemporarilyUnavailable(String),
}

impl OAuthError {
    pub fn code(&self) -> &'static str {
        match self {
            OAuthError::InvalidRequest(_) | OAuthError::TooLarge(_) | OAuthError::Timeout => {
                "invalid_request"
            }
            OAuthError::InvalidClient(_) | OAuthError::InvalidClientBasic(_) => "invalid_client",
            OAuthError::InvalidTarget(_) => "invalid_target",
            OAuthError::UnsupportedTokenType(_) => "unsupported_token_type",
            OAuthError::InvalidGrant(_) => "invalid_grant",
            OAuthError::UnauthorizedClient(_) => "unauthorized_client",
            OAuthError::UnsupportedGrantType(_) => "unsupported_grant_type",
            OAuthError::TemporarilyUnavailable(_) => "temporarily_unavailable",
        }
    }

    pub fn status(&self) -> StatusCode {
        match self {
            OAuthError::InvalidClient(_) | OAuthError::InvalidClientBasic(_) => {
                StatusCode::UNAUTHORIZED
            }
            OAuthError::TooLarge(_) => StatusCode::PAYLOAD_TOO_LARGE,
            OAuthError::Timeout => StatusCode::REQUEST_TIMEOUT,
            OAuthError::TemporarilyUnavailable(_) => StatusCode::SERVICE_UNAVAILABLE,
            _ => StatusCode::BAD_REQUEST,
        }
    }
}

impl From<crate::sessions::SessionError> for OAuthError {
    fn from(e: crate::sessions::SessionError) -> OAuthError {
        use crate::sessions::SessionError as S;
        let text = e.to_string();
        match e {
            S::UnknownClient => OAuthError::InvalidClient(text),
            S::UnauthorizedClient(_) => OAuthError::UnauthorizedClient(text),
            S::InvalidGrant(_) | S::Reuse(_) | S::NotFound(_) => OAuthError::InvalidGrant(text),
            S::InvalidRequest(_) => OAuthError::InvalidRequest(text),
            S::Store(_) => OAuthError::TemporarilyUnavailable(format!("{text}; retry")),
        }
    }
}

impl From<ApiError> for OAuthError {
    /// Body-level refusals (size, media type) in the OAuth error format.
    fn from(e: ApiError) -> OAuthError {
        match e {
            ApiError::PayloadTooLarge(n) => OAuthError::TooLarge(n),
            ApiError::RequestTimeout => OAuthError::Timeout,
            ApiError::Unavailable(m) => OAuthError::TemporarilyUnavailable(m),
            other => OAuthError::InvalidRequest(other.to_string()),
        }
    }
}

impl IntoResponse for OAuthError {
    fn into_response(self) -> Response {
        let body = Json(json!({"error": self.code(), "error_description": self.to_string()}));
        let mut resp = (self.status(), body).into_response();
        resp.extensions_mut().insert(ErrorCode(self.code()));
        let headers = resp.headers_mut();
        // RFC 6749 §5.1: token responses are never cached.
        headers.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
        headers.insert(header::PRAGMA, HeaderValue::from_static("no-cache"));
        if matches!(self, OAuthError::TooLarge(_) | OAuthError::Timeout) {
            headers.insert(header::CONNECTION, HeaderValue::from_static("close"));
        }
        if matches!(self, OAuthError::InvalidClientBasic(_)) {
            headers.insert(
                header::WWW_AUTHENTICATE,
                HeaderValue::from_static("Basic realm=\"slo-hub\""),
            );
        }
        resp
    }
}
