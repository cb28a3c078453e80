//! The session graph's entities, grouped by user.
//!
//! Everything Native-to-Web SSO knows about one user — native sessions,
//! web sessions, refresh tokens, transfer tokens, authorization codes — is
//! one [`UserGraph`], stored and replaced as a whole under a version
//! (`store::graph`). A change is "load, apply the rules, compare-and-set",
//! so two changes to one user can never interleave half-way, and an older
//! copy can never be written over a newer one: the version is assigned by
//! the store under its lock, not by the clock of whoever writes last.
//!
//! Lookups by secret or id (a refresh token, a cookie, a session id) go
//! through *pointers* to the user's graph ([`UserGraph::pointers`]), which
//! are a pure function of the graph: the store keeps them in step on every
//! save.
//!
//! Must not: decide anything (that is `rules`) or do I/O.

use std::net::IpAddr;

use serde::{Deserialize, Serialize};

/// Which user a graph belongs to: a digest of the root issuer and subject,
/// so it is short, fixed and safe as a store key.
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub struct UserTag(pub String);

impl UserTag {
    pub fn of(iss: &str, sub: &str) -> UserTag {
        let d = ring::digest::digest(
            &ring::digest::SHA256,
            format!("{iss}\u{1f}{sub}").as_bytes(),
        );
        UserTag(crate::auth::api_keys::hex(&d.as_ref()[..16]))
    }
}

#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, Eq)]
pub struct Native {
    pub id: String,
    pub client_id: String,
    /// The upstream session this native session stands for, if any.
    pub ext_sid: Option<String>,
    pub expires_ms: i64,
    pub revoked: bool,
}

#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, Eq)]
pub struct Web {
    pub id: String,
    /// The web client that created it.
    pub client_id: String,
    /// Every web client that joined it (the creator first): each is told
    /// when it ends, and each one's online refresh tokens end with it.
    pub clients: Vec<String>,
    /// The native sessions that opened or joined it: it ends when any of
    /// them is revoked with cascade.
    pub parents: Vec<String>,
    /// Digest of the hub's session cookie.
    pub cookie: String,
    pub idle_ms: i64,
    pub abs_ms: i64,
    /// When it was revoked or logged out (ms); expiry is `deadline`.
    pub ended_at: Option<i64>,
}

impl Web {
    pub fn alive(&self, now: i64) -> bool {
        self.ended_at.is_none() && now < self.idle_ms && now < self.abs_ms
    }
    pub fn ended(&self) -> bool {
        self.ended_at.is_some()
    }
    pub fn deadline(&self) -> i64 {
        self.idle_ms.min(self.abs_ms)
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum RtState {
    Active,
    /// Replaced by rotation; presenting it again is reuse.
    Rotated,
    Revoked,
}

#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, Eq)]
pub struct Refresh {
    pub id: String,
    pub digest: String,
    /// The session it belongs to (native `ns_` or web `ws_`).
    pub owner: String,
    pub client_id: String,
    pub state: RtState,
    pub expires_ms: i64,
}

#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, Eq)]
pub struct Transfer {
    pub digest: String,
    pub native: String,
    /// The refresh token it was minted with, if any.
    pub refresh: Option<String>,
    pub client_id: String,
    pub ip: IpAddr,
    pub asn: Option<u32>,
    pub expires_ms: i64,
    /// Presented once (whatever the outcome), or voided by a revocation.
    pub used: bool,
}

#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, Eq)]
pub struct Code {
    pub digest: String,
    pub web: String,
    pub client_id: String,
    pub redirect_uri: String,
    pub challenge: String,
    pub expires_ms: i64,
}

/// What must follow a web session's end, recorded in the same save that
/// ended it: the graph is its own outbox, so nothing is lost between the
/// change and its delivery, on any node, across any restart.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, Eq)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum NoticeKind {
    /// Push the session's logout to its sockets (every node).
    Push { reason: String },
    /// Tell this client's backend (OpenID Back-Channel Logout).
    Backchannel { client: String },
}

#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, Eq)]
pub struct Notice {
    #[serde(flatten)]
    pub kind: NoticeKind,
    /// The web session that ended, and the hub subject.
    pub sid: String,
    pub sub: String,
    /// When it may be taken (ms): the node that made the change delivers
    /// it before, any node after.
    pub due_ms: i64,
    /// Deliveries tried so far.
    pub attempts: u32,
}

/// One user's part of the session graph.
#[derive(Clone, Debug, Default, Serialize, Deserialize, PartialEq, Eq)]
pub struct UserGraph {
    /// The root issuer (upstream, or the dev issuer) and subject.
    pub iss: String,
    pub sub: String,
    #[serde(default)]
    pub natives: Vec<Native>,
    #[serde(default)]
    pub webs: Vec<Web>,
    #[serde(default)]
    pub refresh: Vec<Refresh>,
    #[serde(default)]
    pub transfers: Vec<Transfer>,
    #[serde(default)]
    pub codes: Vec<Code>,
    #[serde(default)]
    pub outbox: Vec<Notice>,
}

/// Pointer keys: what leads from a secret or id to its user's graph.
pub mod pointer {
    pub fn session(id: &str) -> String {
        format!("sess:{id}")
    }
    pub fn refresh(digest: &str) -> String {
        format!("rt:{digest}")
    }
    pub fn refresh_id(id: &str) -> String {
        format!("rtid:{id}")
    }
    pub fn transfer(digest: &str) -> String {
        format!("stt:{digest}")
    }
    pub fn cookie(digest: &str) -> String {
        format!("ck:{digest}")
    }
    pub fn code(digest: &str) -> String {
        format!("code:{digest}")
    }
    pub fn external(iss: &str, sid: &str) -> String {
        format!("ext:{iss}\u{1f}{sid}")
    }
}

impl UserGraph {
    pub fn new(iss: &str, sub: &str) -> UserGraph {
        UserGraph {
            iss: iss.to_string(),
            sub: sub.to_string(),
            ..UserGraph::default()
        }
    }

    pub fn tag(&self) -> UserTag {
        UserTag::of(&self.iss, &self.sub)
    }

    /// Every pointer into this graph (the store adds new ones and drops
    /// those gone on each save).
    pub fn pointers(&self) -> Vec<String> {
        let mut out = Vec::new();
        for n in &self.natives {
            out.push(pointer::session(&n.id));
            if let Some(sid) = &n.ext_sid {
                out.push(pointer::external(&self.iss, sid));
            }
        }
        for w in &self.webs {
            out.push(pointer::session(&w.id));
            out.push(pointer::cookie(&w.cookie));
        }
        for r in &self.refresh {
            out.push(pointer::refresh(&r.digest));
            out.push(pointer::refresh_id(&r.id));
        }
        for t in &self.transfers {
            out.push(pointer::transfer(&t.digest));
        }
        for c in &self.codes {
            out.push(pointer::code(&c.digest));
        }
        out
    }

    /// When the last entity of the graph may be forgotten (ms).
    pub fn expires_ms(&self, keep_ended_ms: i64) -> i64 {
        let latest = self
            .natives
            .iter()
            .map(|n| n.expires_ms)
            .chain(self.webs.iter().map(|w| w.abs_ms))
            .chain(self.refresh.iter().map(|r| r.expires_ms))
            .chain(self.transfers.iter().map(|t| t.expires_ms))
            .chain(self.codes.iter().map(|c| c.expires_ms))
            .chain(self.outbox.iter().map(|n| n.due_ms))
            .max()
            .unwrap_or(0);
        latest + keep_ended_ms
    }

    /// Live web sessions and the moment each ends (for the expiry timer;
    /// one already past its deadline is due at once).
    pub fn deadlines(&self) -> Vec<(i64, String)> {
        self.webs
            .iter()
            .filter(|w| !w.ended())
            .map(|w| (w.deadline(), w.id.clone()))
            .collect()
    }

    /// When the earliest notice is due, if any.
    pub fn notice_due(&self) -> Option<i64> {
        self.outbox.iter().map(|n| n.due_ms).min()
    }

    pub fn is_empty(&self) -> bool {
        self.natives.is_empty()
            && self.webs.is_empty()
            && self.refresh.is_empty()
            && self.transfers.is_empty()
            && self.codes.is_empty()
            && self.outbox.is_empty()
    }

    pub fn native(&self, id: &str) -> Option<&Native> {
        self.natives.iter().find(|n| n.id == id)
    }
    pub fn native_mut(&mut self, id: &str) -> Option<&mut Native> {
        self.natives.iter_mut().find(|n| n.id == id)
    }
    pub fn web(&self, id: &str) -> Option<&Web> {
        self.webs.iter().find(|w| w.id == id)
    }
    pub fn web_mut(&mut self, id: &str) -> Option<&mut Web> {
        self.webs.iter_mut().find(|w| w.id == id)
    }
    pub fn web_by_cookie(&self, digest: &str) -> Option<&Web> {
        self.webs.iter().find(|w| w.cookie == digest)
    }
    pub fn refresh_by_digest(&self, digest: &str) -> Option<&Refresh> {
        self.refresh.iter().find(|r| r.digest == digest)
    }
    pub fn refresh_by_id(&self, id: &str) -> Option<&Refresh> {
        self.refresh.iter().find(|r| r.id == id)
    }
    pub fn refresh_mut(&mut self, digest: &str) -> Option<&mut Refresh> {
        self.refresh.iter_mut().find(|r| r.digest == digest)
    }
    pub fn transfer_mut(&mut self, digest: &str) -> Option<&mut Transfer> {
        self.transfers.iter_mut().find(|t| t.digest == digest)
    }
}
