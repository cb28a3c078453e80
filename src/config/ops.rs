//! `[audit]` and `[console]`: how long the audit trail is kept, and where
//! the operator's console and endpoints are served.

use std::net::SocketAddr;

use serde::{Deserialize, Serialize};

use super::{Config, ConfigError, range};

/// How long the audit trail is kept.
#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AuditSettings {
    /// Entries older than this are removed (every minute, in small batches).
    pub retention_days: u64,
    /// At most this many entries are kept (the oldest go first).
    pub max_entries: usize,
}

/// The console (`/console`) and where the operator's endpoints listen.
#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ConsoleSettings {
    /// Serve `/console` (an admin signs in with an API key of scope `admin`).
    pub enabled: bool,
    /// Serve `/console`, `/metrics` and the admin API on this address only
    /// (an internal port), not on `listen`. Unset: on `listen`.
    pub listen: Option<SocketAddr>,
}

impl Config {
    pub(super) fn validate_ops(&self) -> Result<(), ConfigError> {
        range("audit.retention_days", self.audit.retention_days, 1, 3_650)?;
        range(
            "audit.max_entries",
            self.audit.max_entries as u64,
            1_000,
            1_000_000_000,
        )?;
        Ok(())
    }
}
