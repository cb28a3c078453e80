//! slo-hub: a single-logout push hub.
//!
//! When a user logs out of one application, every other application the user
//! has open — SPAs on other domains, web sessions a native app handed off —
//! is told over a WebSocket within milliseconds and clears its session.
//!
//! ```text
//!  trigger: /v1/logout, back-channel, CAEP,       SPA socket (GET /v1/ws)
//!  revocations, Pusher terminate, expiry                 │
//!        │                                              ▼
//!   http::* ──► auth (Bearer, logout tokens) ◄── ws::socket (auth message)
//!        │                                              │ register, then check
//!        ▼                                              ▼
//!   logout (the one service, in a task of its own)   revocation (watermark:
//!        │  1. watermark  2. push ─────────────► registry  memory, then store)
//!        │  3. store::Durable + store::Broker ──► other nodes ─► logout::hear
//!        │  4. sessions (graph) ─► outbox: pushes, back-channel (notify)
//!        ▼                                              ▼
//!   answer 2xx only once 1–3 are done         ws::conn (direct, bounded write)
//! ```
//!
//! * [`config`] — settings, layered and validated once.
//! * [`startup`] — builds the [`App`] in named steps; [`background`] — its
//!   long-lived tasks; [`app`] — the state they share.
//! * [`server`] — accept, connection limits, HTTP/1.1 with deadlines;
//!   [`net`] — who the client is behind trusted proxies.
//! * [`http`] — the HTTP endpoints; [`ws`] — the socket endpoint;
//!   [`pusher`] — Pusher protocol v7 and HTTP API.
//! * [`auth`] — JWTs (per issuer, JWKS), API keys, OAuth clients, the dev issuer.
//! * [`logout`] — the one logout service; [`revocation`] — its core
//!   (watermark, push, record).
//! * [`registry`] — who is connected, by user and by session; [`live`] —
//!   a user's sockets on every node, for the admin API.
//! * [`sessions`] — the Native-to-Web session graph and its rules.
//! * [`notify`] — back-channel logout tokens to app backends.
//! * [`store`] — what outlives a process and what nodes share: the
//!   embedded journal, or Redis.
//! * [`audit`] — the audit trail of logouts, revocations and transfers.
//! * [`console`] — the operator console's samples and live feed.
//! * [`error`] — every status and close code, mapped in one place.
//! * [`metrics`] — Prometheus counters.
//!
//! `main.rs` only parses the command line and calls [`Hub::start`].

pub mod app;
pub mod audit;
pub mod auth;
pub mod background;
pub mod config;
pub mod console;
pub mod demo;
pub mod error;
pub mod http;
pub mod live;
pub mod logout;
pub mod metrics;
pub mod net;
pub mod notify;
pub mod pusher;
pub mod registry;
pub mod revocation;
pub mod server;
pub mod sessions;
pub mod startup;
pub mod store;
pub mod util;
pub mod ws;

pub use app::App;
pub use startup::{Hub, StartError};
