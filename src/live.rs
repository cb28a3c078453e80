//! What is connected right now, on every node: a user's sockets (`/v1/ws`
//! and Pusher) with who is at the other end, for the admin API and the
//! console. On several nodes the question goes to every node through the
//! broker and the answers are awaited briefly; a node that does not answer
//! in time is left out (and said so).
//!
//! Must not: change anything (it only looks).

use std::time::Duration;

use serde_json::{Value, json};

use crate::App;
use crate::registry::UserKey;
use crate::store::NodeMessage;
use crate::util;

/// How long a question waits for the other nodes.
const ANSWER_WAIT: Duration = Duration::from_millis(300);

/// One socket, as the admin API shows it.
fn socket_json(
    protocol: &str,
    id: String,
    sid: Option<&str>,
    meta: &crate::ws::conn::ConnMeta,
) -> Value {
    json!({
        "protocol": protocol,
        "connection_id": id,
        "sid": sid,
        "client_ip": meta.ip.to_string(),
        "origin": meta.origin(),
        "user_agent": meta.user_agent(),
        "connected_since_ms": meta.since_ms(),
    })
}

impl App {
    /// This node's sockets of these users (issuer name, subject): their own
    /// tokens' sockets, those of their hub web sessions, and Pusher sockets
    /// signed in as them on apps bridged to that issuer.
    pub fn local_connections(&self, users: &[(String, String)]) -> Vec<Value> {
        let mut out = Vec::new();
        for (iss, sub) in users {
            let mut keys = Vec::new();
            if let Some(id) = self.auth.issuer_id(iss) {
                keys.push(UserKey {
                    iss: id,
                    sub: sub.as_str().into(),
                });
            }
            let hub_sub = crate::sessions::rules::hub_subject(iss, sub);
            keys.push(UserKey {
                iss: self.hub_issuers.session_id,
                sub: hub_sub.as_str().into(),
            });
            for key in keys {
                for c in self.registry.conns_of(&key) {
                    let sid = c.session.as_ref().map(|s| &*s.sid);
                    let mut v = socket_json("ws", c.id.to_string(), sid, &c.meta);
                    v["iss"] = json!(self.auth.issuer_name(c.user.iss));
                    v["sub"] = json!(&*c.user.sub);
                    out.push(v);
                }
            }
            for (i, app) in self.pusher.apps().iter().enumerate() {
                if app.logout_issuer.as_deref() != Some(iss.as_str()) {
                    continue;
                }
                for c in self.pusher.channels().user_sockets(i, sub) {
                    let mut v = socket_json("pusher", c.socket_id.to_string(), None, &c.meta);
                    v["pusher_app"] = json!(app.id);
                    v["sub"] = json!(sub);
                    out.push(v);
                }
            }
        }
        out
    }

    /// Every node's sockets of these users: (sockets, nodes that answered,
    /// nodes asked).
    pub async fn connections_everywhere(
        &self,
        users: Vec<(String, String)>,
    ) -> (Vec<Value>, usize, usize) {
        let mut all = self.local_connections(&users);
        let Some(broker) = &self.broker else {
            return (all, 1, 1);
        };
        for s in &mut all {
            s["node"] = json!(broker.node_id());
        }
        let others = broker.other_nodes().await.unwrap_or(0);
        if others == 0 {
            return (all, 1, 1);
        }
        let query = util::random_id();
        let asked = NodeMessage::Connections {
            query: query.clone(),
            users,
        };
        if broker.publish_node(&asked).await.is_err() {
            return (all, 1, others + 1);
        }
        let deadline = tokio::time::Instant::now() + ANSWER_WAIT;
        let mut answers = Vec::new();
        while tokio::time::Instant::now() < deadline {
            answers = broker.answers(&query).await.unwrap_or_default();
            if answers.len() >= others {
                break;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        for a in &answers {
            if let Ok(Value::Array(v)) = serde_json::from_str::<Value>(a) {
                all.extend(v);
            }
        }
        (all, answers.len() + 1, others + 1)
    }

    /// Answers another node's question about connections.
    pub fn answer_connections(&self, query: String, users: Vec<(String, String)>) {
        let Some(broker) = self.broker.clone() else {
            return;
        };
        let mut sockets = self.local_connections(&users);
        for s in &mut sockets {
            s["node"] = json!(broker.node_id());
        }
        let json = Value::Array(sockets).to_string();
        self.tasks.spawn(async move {
            if let Err(e) = broker.answer(&query, json).await {
                tracing::debug!(error = %e, "a connections question was not answered");
            }
        });
    }
}
