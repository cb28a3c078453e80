//! Cross-node fan-out on Redis streams (`slo:logouts`, and `slo:messages`
//! for Pusher events and admin queries; both capped), not
//! pub/sub: each node reads it with `XREAD BLOCK` from the last id it saw,
//! so a node that lost Redis for a while resumes where it stopped and
//! misses nothing still in the stream.
//!
//! Whether something *was* missed is read from the stream itself: entries
//! were trimmed past us if its `max-deleted-entry-id` is beyond our last
//! id, and Redis lost data if its `last-generated-id` is behind it. Only
//! then are the node's sockets told to reconnect ([`Heard::Missed`]). A
//! node that had seen nothing yet missed nothing.
//!
//! Must not: apply what it hears (the sink does) or touch sockets.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use redis::Value;
use redis::streams::{StreamReadOptions, StreamReadReply};
use tokio_util::sync::CancellationToken;

use super::{Conn, Redis, failed};
use crate::store::{BoxFuture, Broker, Heard, NodeMessage, Reported, StoreError, StoredEvent};
use crate::util;

fn outcome_key(event_id: &str) -> String {
    format!("slo:outcome:{event_id}")
}

fn answers_key(query: &str) -> String {
    format!("slo:answers:{query}")
}

const STREAM: &str = "slo:logouts";
/// Pusher events for other nodes' sockets (best-effort, as Pusher's) and
/// questions to every node (the admin API).
const NODE_STREAM: &str = "slo:messages";
const NODE_STREAM_MAX_LEN: usize = 100_000;
/// Nodes alive, by their last heartbeat (ms).
pub(super) const NODES: &str = "slo:nodes";
/// A node is alive while its heartbeat is this recent.
pub(super) const NODE_TTL_MS: i64 = 6_000;
const HEARTBEAT: Duration = Duration::from_secs(2);
/// How long what a logout reached is kept for its node to read.
const OUTCOME_TTL_MS: i64 = 60_000;
/// Entries the stream keeps (approximately): far more than any brief outage.
const STREAM_MAX_LEN: usize = 1_000_000;
pub(super) const BLOCK_MS: usize = 2_000;

pub struct RedisBroker {
    redis: Arc<Redis>,
    /// Connected and caught up.
    ready: AtomicBool,
    /// Since when the stream has been out of reach, if it is.
    lost_since: Mutex<Option<Instant>>,
}

impl RedisBroker {
    /// This node's field of a short-lived hash every node writes into
    /// (reports, answers). One key: the pipeline goes to one shard.
    async fn set_ours(&self, key: String, value: String) -> Result<(), StoreError> {
        let mut pipe = redis::pipe();
        pipe.cmd("HSET")
            .arg(&key)
            .arg(&self.redis.node_id)
            .arg(value)
            .ignore()
            .cmd("PEXPIRE")
            .arg(&key)
            .arg(OUTCOME_TTL_MS)
            .ignore();
        pipe.query_async::<()>(&mut self.redis.conn())
            .await
            .map_err(super::failed)
    }

    pub fn new(redis: Arc<Redis>) -> RedisBroker {
        RedisBroker {
            redis,
            ready: AtomicBool::new(false),
            lost_since: Mutex::new(None),
        }
    }

    fn lost(&self) {
        self.ready.store(false, Ordering::Release);
        let mut since = self.lost_since.lock().unwrap_or_else(|e| e.into_inner());
        since.get_or_insert_with(Instant::now);
    }

    fn found(&self) {
        *self.lost_since.lock().unwrap_or_else(|e| e.into_inner()) = None;
        self.ready.store(true, Ordering::Release);
    }

    /// The id a stream ends at now (where a new node starts reading).
    async fn end_id(&self, con: &mut Conn, stream: &str) -> Result<String, redis::RedisError> {
        let last: redis::streams::StreamRangeReply = redis::cmd("XREVRANGE")
            .arg(stream)
            .arg("+")
            .arg("-")
            .arg("COUNT")
            .arg(1)
            .query_async(con)
            .await?;
        Ok(last
            .ids
            .first()
            .map_or_else(|| "0-0".to_string(), |e| e.id.clone()))
    }
}

/// What one stream entry says.
fn heard(entry: &redis::streams::StreamId, logouts: bool) -> Option<Heard> {
    if logouts {
        let e: String = entry.get("e")?;
        serde_json::from_str::<StoredEvent>(&e)
            .ok()
            .map(Heard::Logout)
    } else {
        let m: String = entry.get("m")?;
        serde_json::from_str::<NodeMessage>(&m)
            .ok()
            .map(Heard::Node)
    }
}

/// After an outage: whether the stream lost entries after `last_id`.
async fn missed_since(con: &mut Conn, last_id: &str) -> Result<bool, redis::RedisError> {
    let info: Result<HashMap<String, Value>, _> = redis::cmd("XINFO")
        .arg("STREAM")
        .arg(STREAM)
        .query_async(con)
        .await;
    let info = match info {
        Ok(i) => i,
        // No stream at all: empty since Redis started. Missed something only
        // if there was something to see.
        Err(e) if e.kind() == redis::ErrorKind::Server(redis::ServerErrorKind::ResponseError) => {
            return Ok(last_id != "0-0");
        }
        Err(e) => return Err(e),
    };
    let id = |k: &str| -> Option<String> {
        match info.get(k)? {
            Value::BulkString(b) => String::from_utf8(b.clone()).ok(),
            Value::SimpleString(s) => Some(s.clone()),
            _ => None,
        }
    };
    let trimmed_past_us = id("max-deleted-entry-id").is_some_and(|d| id_gt(&d, last_id));
    let data_lost = id("last-generated-id").is_some_and(|g| id_gt(last_id, &g));
    Ok(trimmed_past_us || data_lost)
}

fn parse_id(id: &str) -> (u64, u64) {
    let (a, b) = id.split_once('-').unwrap_or((id, "0"));
    (a.parse().unwrap_or(0), b.parse().unwrap_or(0))
}

fn id_gt(a: &str, b: &str) -> bool {
    parse_id(a) > parse_id(b)
}

impl RedisBroker {
    /// Keeps this node in `slo:nodes` until `stop` (then leaves it).
    async fn heartbeat(self: Arc<Self>, stop: CancellationToken) {
        loop {
            let mut cmd = redis::cmd("ZADD");
            cmd.arg(NODES).arg(util::now_ms()).arg(&self.redis.node_id);
            let _ = self.redis.retried::<i64>(&cmd).await;
            tokio::select! {
                _ = stop.cancelled() => break,
                _ = tokio::time::sleep(HEARTBEAT) => {}
            }
        }
        let mut cmd = redis::cmd("ZREM");
        cmd.arg(NODES).arg(&self.redis.node_id);
        let _ = self.redis.retried::<i64>(&cmd).await;
    }

    /// Follows one stream until `stop`. The logout stream decides whether
    /// the node is ready and whether it missed something; the Pusher one
    /// (events are best-effort, as Pusher's) just resumes where it can.
    async fn read(
        &self,
        stream: &'static str,
        sink: &(dyn Fn(Heard) + Send + Sync),
        stop: &CancellationToken,
    ) {
        let logouts = stream == STREAM;
        let mut last_id: Option<String> = None;
        let mut backoff = Duration::from_millis(100);
        let mut lost = false;
        while !stop.is_cancelled() {
            let connected = tokio::select! {
                _ = stop.cancelled() => return,
                c = self.redis.dedicated() => c,
            };
            let mut con = match connected {
                Ok(c) => c,
                Err(e) => {
                    if !lost && logouts {
                        tracing::warn!(error = %e, "cluster: Redis unreachable; retrying");
                    }
                    lost = true;
                    if logouts {
                        self.lost();
                    }
                    tokio::select! {
                        _ = stop.cancelled() => return,
                        _ = tokio::time::sleep(backoff) => {}
                    }
                    backoff = (backoff * 2).min(Duration::from_secs(2));
                    continue;
                }
            };
            // Where to read from: the end at first start; after an
            // outage, where we stopped, unless the stream lost entries.
            let from = match &last_id {
                None => self.end_id(&mut con, stream).await,
                // Pusher events are best-effort: resume from what is left.
                Some(id) if !logouts => Ok(id.clone()),
                Some(id) => match missed_since(&mut con, id).await {
                    Ok(true) => {
                        tracing::warn!(
                            "cluster: the stream no longer holds what this node missed; closing sockets so clients reconnect"
                        );
                        sink(Heard::Missed);
                        self.end_id(&mut con, stream).await
                    }
                    Ok(false) => Ok(id.clone()),
                    Err(e) => Err(e),
                },
            };
            let Ok(from) = from else {
                lost = true;
                if logouts {
                    self.lost();
                }
                continue;
            };
            last_id = Some(from);
            if std::mem::take(&mut lost) && logouts {
                tracing::info!("cluster: Redis is back; caught up");
            }
            backoff = Duration::from_millis(100);
            if logouts {
                self.found();
            }
            let opts = StreamReadOptions::default().count(512).block(BLOCK_MS);
            loop {
                let id = last_id.clone().unwrap_or_else(|| "0-0".into());
                let mut cmd = redis::cmd("XREAD");
                cmd.arg(&opts).arg("STREAMS").arg(stream).arg(&id);
                let read = cmd.query_async::<Option<StreamReadReply>>(&mut con);
                let reply = tokio::select! {
                    _ = stop.cancelled() => return,
                    r = read => r,
                };
                match reply {
                    Ok(reply) => {
                        if logouts {
                            self.found();
                        }
                        for entry in reply.into_iter().flat_map(|r| r.keys).flat_map(|k| k.ids) {
                            last_id = Some(entry.id.clone());
                            let node: Option<String> = entry.get("n");
                            if node.as_deref() == Some(self.redis.node_id.as_str()) {
                                continue;
                            }
                            match heard(&entry, logouts) {
                                Some(h) => sink(h),
                                None => {
                                    tracing::warn!(
                                        stream,
                                        "cluster: unreadable stream entry skipped"
                                    )
                                }
                            }
                        }
                    }
                    Err(e) => {
                        if logouts {
                            tracing::warn!(error = %failed(e), "cluster: lost the Redis stream; reconnecting");
                            self.lost();
                        }
                        lost = true;
                        break;
                    }
                }
            }
        }
    }
}

impl Broker for RedisBroker {
    fn publish<'a>(&'a self, event: &'a StoredEvent) -> BoxFuture<'a, Result<(), StoreError>> {
        Box::pin(async move {
            let data = serde_json::to_string(event).unwrap_or_default();
            let mut cmd = redis::cmd("XADD");
            cmd.arg(STREAM)
                .arg("MAXLEN")
                .arg("~")
                .arg(STREAM_MAX_LEN)
                .arg("*")
                .arg("n")
                .arg(&self.redis.node_id)
                .arg("e")
                .arg(&data);
            // A duplicate entry after a retry is applied harmlessly.
            let added: Result<String, StoreError> = self.redis.retried(&cmd).await;
            if added.is_err() {
                self.lost();
            }
            added.map(|_| ())
        })
    }

    fn follow(
        self: Arc<Self>,
        sink: Arc<dyn Fn(Heard) + Send + Sync>,
        stop: CancellationToken,
    ) -> BoxFuture<'static, ()> {
        Box::pin(async move {
            tokio::join!(
                self.clone().heartbeat(stop.clone()),
                self.read(STREAM, &*sink, &stop),
                self.read(NODE_STREAM, &*sink, &stop),
            );
        })
    }

    fn publish_node<'a>(
        &'a self,
        message: &'a NodeMessage,
    ) -> BoxFuture<'a, Result<(), StoreError>> {
        Box::pin(async move {
            let data = serde_json::to_string(message).unwrap_or_default();
            let mut cmd = redis::cmd("XADD");
            cmd.arg(NODE_STREAM)
                .arg("MAXLEN")
                .arg("~")
                .arg(NODE_STREAM_MAX_LEN)
                .arg("*")
                .arg("n")
                .arg(&self.redis.node_id)
                .arg("m")
                .arg(&data);
            self.redis.retried::<String>(&cmd).await.map(|_| ())
        })
    }

    fn node_id(&self) -> &str {
        &self.redis.node_id
    }

    fn is_ready(&self) -> bool {
        self.ready.load(Ordering::Acquire)
    }

    fn cut_off_for(&self) -> Option<Duration> {
        self.lost_since
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .map(|t| t.elapsed())
    }

    fn other_nodes<'a>(&'a self) -> BoxFuture<'a, Result<usize, StoreError>> {
        Box::pin(async move {
            let mut cmd = redis::cmd("ZRANGEBYSCORE");
            cmd.arg(NODES).arg(util::now_ms() - NODE_TTL_MS).arg("+inf");
            let alive: Vec<String> = self.redis.retried(&cmd).await?;
            Ok(alive.iter().filter(|n| **n != self.redis.node_id).count())
        })
    }

    fn report_delivery<'a>(
        &'a self,
        event_id: &'a str,
        matched: usize,
        delivered: usize,
    ) -> BoxFuture<'a, Result<(), StoreError>> {
        Box::pin(self.set_ours(outcome_key(event_id), format!("{matched},{delivered}")))
    }

    fn answer<'a>(&'a self, query: &'a str, json: String) -> BoxFuture<'a, Result<(), StoreError>> {
        Box::pin(self.set_ours(answers_key(query), json))
    }

    fn answers<'a>(&'a self, query: &'a str) -> BoxFuture<'a, Result<Vec<String>, StoreError>> {
        Box::pin(async move {
            let mut cmd = redis::cmd("HVALS");
            cmd.arg(answers_key(query));
            self.redis.retried(&cmd).await
        })
    }

    fn report_ack<'a>(&'a self, event_id: &'a str) -> BoxFuture<'a, Result<(), StoreError>> {
        Box::pin(async move {
            let mut cmd = redis::cmd("HINCRBY");
            cmd.arg(outcome_key(event_id)).arg("acked").arg(1);
            self.redis.retried::<i64>(&cmd).await.map(|_| ())
        })
    }

    fn reported<'a>(&'a self, event_id: &'a str) -> BoxFuture<'a, Result<Reported, StoreError>> {
        Box::pin(async move {
            let mut cmd = redis::cmd("HGETALL");
            cmd.arg(outcome_key(event_id));
            let fields: HashMap<String, String> = self.redis.retried(&cmd).await?;
            let mut r = Reported::default();
            for (k, v) in fields {
                if k == "acked" {
                    r.acked = v.parse().unwrap_or(0);
                    continue;
                }
                let (m, d) = v.split_once(',').unwrap_or(("0", "0"));
                r.nodes += 1;
                r.matched += m.parse::<usize>().unwrap_or(0);
                r.delivered += d.parse::<usize>().unwrap_or(0);
            }
            Ok(r)
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stream_ids_compare_numerically() {
        assert!(id_gt("1700000000000-1", "1700000000000-0"));
        assert!(id_gt("1000-0", "999-5"));
        assert!(!id_gt("1000-1", "1000-1"));
        assert!(!id_gt("0-0", "0-0"));
    }
}
