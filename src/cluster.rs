//! Several hub nodes on one Redis: shared watermarks and cross-node fan-out.
//!
//! * **Durable records** (watermarks, and every other [`Kind`]) are Redis
//!   keys `slo:{kind}:{key}` holding the JSON [`Record`], expiring with it
//!   (`PX`), set by a small Lua script that never lets a lower version
//!   replace a higher one. A node loads them all (`SCAN`) at start, so a
//!   client that reconnects to any node is checked against every logout,
//!   locally and without a round trip.
//! * **Fan-out** goes through a Redis **Stream** (`slo:logouts`, capped),
//!   not pub/sub: each node reads it with `XREAD BLOCK` from the last id it
//!   saw, so a node that lost Redis for a while resumes where it stopped and
//!   misses nothing that is still in the stream. If the gap was longer than
//!   the stream keeps (the first id is past ours), the node closes its
//!   sockets with 1012: clients reconnect and meet the watermarks.
//! * A trigger records the watermark and appends to the stream before it is
//!   answered; if Redis cannot take them the answer is 503, never a 2xx.
//!   The triggering node delivers to its own sockets at once and skips its
//!   own stream entries.
//!
//! Must not: decide revocation rules or touch sockets itself; it moves
//! [`StoredEvent`]s between `revocation` and Redis.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use redis::aio::{ConnectionManager, ConnectionManagerConfig, MultiplexedConnection};
use redis::{AsyncConnectionConfig, Client, Script, Value};

use crate::App;
use crate::store::embedded::StoredEvent;
use crate::store::{Kind, Record, StoreError};
use crate::util;

const STREAM: &str = "slo:logouts";
/// Entries the stream keeps (approximately): far more than any brief outage.
const STREAM_MAX_LEN: usize = 1_000_000;
const BLOCK_MS: usize = 2_000;

/// Sets a record unless one of a higher version is there. KEYS[1] key,
/// ARGV[1] JSON, ARGV[2] version, ARGV[3] ttl in ms.
const SET_IF_NEWER: &str = r#"
local cur = redis.call('GET', KEYS[1])
if cur then
  local v = tonumber(string.match(cur, '"version":(%-?%d+)'))
  if v and v > tonumber(ARGV[2]) then return 0 end
end
redis.call('SET', KEYS[1], ARGV[1], 'PX', ARGV[3])
return 1
"#;
const KEY_PREFIX: &str = "slo:";

pub struct Cluster {
    client: Client,
    writer: ConnectionManager,
    set_if_newer: Script,
    /// Distinguishes this node's stream entries from the others'.
    node_id: String,
    /// The stream reader is connected and caught up.
    ready: AtomicBool,
    /// Where the stream ended when the watermarks were loaded: the reader
    /// starts after it.
    start_id: String,
}

fn redis_key(r: &Record) -> String {
    format!("{KEY_PREFIX}{}:{}", r.kind.name(), r.key)
}

fn unavailable(e: redis::RedisError) -> StoreError {
    StoreError::Write(format!("Redis: {e}"))
}

impl Cluster {
    /// Connects, and returns every record stored in Redis.
    pub async fn connect(url: &str) -> Result<(Cluster, Vec<Record>), StoreError> {
        let open = |reason: String| StoreError::Open {
            path: url.into(),
            reason,
        };
        let client = Client::open(url).map_err(|e| open(e.to_string()))?;
        let config = ConnectionManagerConfig::new()
            .set_connection_timeout(Some(Duration::from_millis(500)))
            .set_response_timeout(Some(Duration::from_secs(2)))
            .set_number_of_retries(1)
            .set_max_delay(Duration::from_secs(2));
        let mut writer = client
            .get_connection_manager_with_config(config)
            .await
            .map_err(|e| open(e.to_string()))?;
        // Where the stream ends now: read after it, and load the watermarks
        // second, so nothing falls between the two (overlap is harmless).
        let last: Value = redis::cmd("XREVRANGE")
            .arg(STREAM)
            .arg("+")
            .arg("-")
            .arg("COUNT")
            .arg(1)
            .query_async(&mut writer)
            .await
            .map_err(|e| open(e.to_string()))?;
        let start_id = first_entry_id(&last).unwrap_or_else(|| "0-0".into());
        let mut stored = Vec::new();
        for kind in Kind::ALL {
            let prefix = format!("{KEY_PREFIX}{}:", kind.name());
            let mut cursor: u64 = 0;
            loop {
                let (next, keys): (u64, Vec<String>) = redis::cmd("SCAN")
                    .arg(cursor)
                    .arg("MATCH")
                    .arg(format!("{prefix}*"))
                    .arg("COUNT")
                    .arg(1000)
                    .query_async(&mut writer)
                    .await
                    .map_err(|e| open(e.to_string()))?;
                if !keys.is_empty() {
                    let values: Vec<Option<String>> = redis::cmd("MGET")
                        .arg(&keys)
                        .query_async(&mut writer)
                        .await
                        .map_err(|e| open(e.to_string()))?;
                    for (k, v) in keys.iter().zip(values) {
                        let Some(mut r) = v.and_then(|v| serde_json::from_str::<Record>(&v).ok())
                        else {
                            continue;
                        };
                        r.kind = kind;
                        r.key = k[prefix.len()..].to_string();
                        stored.push(r);
                    }
                }
                if next == 0 {
                    break;
                }
                cursor = next;
            }
        }
        let cluster = Cluster {
            client,
            writer,
            set_if_newer: Script::new(SET_IF_NEWER),
            node_id: util::random_id(),
            ready: AtomicBool::new(true),
            start_id,
        };
        Ok((cluster, stored))
    }

    pub fn is_ready(&self) -> bool {
        self.ready.load(Ordering::Acquire)
    }

    /// Stores a record and, for a watermark, announces the logout to the
    /// other nodes. Returns once Redis has both.
    pub async fn put(&self, record: &Record) -> Result<(), StoreError> {
        // The connection manager reconnects lazily, after a request failed:
        // the first request after an outage may meet the dead connection, so
        // a connection error is tried once more (both steps are idempotent
        // for watermarks; a duplicate stream entry is applied harmlessly).
        match self.try_put(record).await {
            Err(e) if e.is_io_error() || e.is_connection_dropped() || e.is_connection_refusal() => {
                self.try_put(record).await
            }
            other => other,
        }
        .map_err(|e| {
            self.ready.store(false, Ordering::Release);
            unavailable(e)
        })
    }

    /// Stores `record` only if its key is new; returns whether it was
    /// (`SET NX`: the one node that wins acts on it).
    pub async fn put_once(&self, record: &Record) -> Result<bool, StoreError> {
        let mut con = self.writer.clone();
        let json = serde_json::to_string(record).unwrap_or_default();
        let ttl = (record.expires_at_ms - util::now_ms()).max(1);
        let mut cmd = redis::cmd("SET");
        cmd.arg(redis_key(record))
            .arg(&json)
            .arg("NX")
            .arg("PX")
            .arg(ttl);
        let first: Option<String> = match cmd.query_async(&mut con).await {
            Ok(v) => v,
            // Once more after a dropped connection (see `put`).
            Err(_) => cmd.query_async(&mut con).await.map_err(|e| {
                self.ready.store(false, Ordering::Release);
                unavailable(e)
            })?,
        };
        Ok(first.is_some())
    }

    /// Makes the writer connection usable (reconnecting if needed).
    async fn writer_alive(&self) -> bool {
        let mut con = self.writer.clone();
        for _ in 0..2 {
            if redis::cmd("PING")
                .query_async::<String>(&mut con)
                .await
                .is_ok()
            {
                return true;
            }
        }
        false
    }

    async fn try_put(&self, record: &Record) -> Result<(), redis::RedisError> {
        let mut con = self.writer.clone();
        let json = serde_json::to_string(record).unwrap_or_default();
        let ttl = (record.expires_at_ms - util::now_ms()).max(1);
        let _: i64 = self
            .set_if_newer
            .key(redis_key(record))
            .arg(&json)
            .arg(record.version)
            .arg(ttl)
            .invoke_async(&mut con)
            .await?;
        if record.kind == Kind::Watermark {
            let _: String = redis::cmd("XADD")
                .arg(STREAM)
                .arg("MAXLEN")
                .arg("~")
                .arg(STREAM_MAX_LEN)
                .arg("*")
                .arg("n")
                .arg(&self.node_id)
                .arg("e")
                .arg(&record.data)
                .query_async(&mut con)
                .await?;
        }
        Ok(())
    }
}

fn first_entry_id(v: &Value) -> Option<String> {
    // XREVRANGE: [[id, [field, value, ...]], ...]
    let Value::Array(entries) = v else {
        return None;
    };
    let Value::Array(entry) = entries.first()? else {
        return None;
    };
    as_string(entry.first()?)
}

fn as_string(v: &Value) -> Option<String> {
    match v {
        Value::BulkString(b) => String::from_utf8(b.clone()).ok(),
        Value::SimpleString(s) => Some(s.clone()),
        _ => None,
    }
}

/// One stream entry: (id, node, event JSON).
fn entries(v: &Value) -> Vec<(String, Option<String>, Option<String>)> {
    // XREAD: [[stream, [[id, [k, v, ...]], ...]]] (RESP2) or a map (RESP3).
    let streams: Vec<&Value> = match v {
        Value::Array(s) => s.iter().collect(),
        Value::Map(m) => m.iter().map(|(_, v)| v).collect(),
        _ => return Vec::new(),
    };
    let mut out = Vec::new();
    for s in streams {
        let list = match s {
            Value::Array(pair) if pair.len() == 2 => &pair[1],
            other => other,
        };
        let Value::Array(items) = list else { continue };
        for item in items {
            let Value::Array(parts) = item else { continue };
            let Some(id) = parts.first().and_then(as_string) else {
                continue;
            };
            let mut node = None;
            let mut event = None;
            if let Some(Value::Array(fields)) = parts.get(1) {
                for kv in fields.chunks(2) {
                    match (kv.first().and_then(as_string).as_deref(), kv.get(1)) {
                        (Some("n"), Some(v)) => node = as_string(v),
                        (Some("e"), Some(v)) => event = as_string(v),
                        _ => {}
                    }
                }
            }
            out.push((id, node, event));
        }
    }
    out
}

/// Reads the stream until shutdown and applies other nodes' logouts here.
/// Reconnects with backoff; catches up from the last id it saw.
pub async fn follow(app: Arc<App>, cluster: Arc<Cluster>) {
    let mut last_id = cluster.start_id.clone();
    let mut backoff = Duration::from_millis(100);
    let mut lost = false;
    'outer: while !app.shutdown.is_cancelled() {
        let config = AsyncConnectionConfig::new()
            .set_connection_timeout(Some(Duration::from_millis(500)))
            .set_response_timeout(Some(Duration::from_millis(BLOCK_MS as u64 + 3_000)));
        let conn = tokio::select! {
            _ = app.shutdown.cancelled() => return,
            c = cluster.client.get_multiplexed_async_connection_with_config(&config) => c,
        };
        let mut con: MultiplexedConnection = match conn {
            Ok(c) => c,
            Err(e) => {
                if !lost {
                    tracing::warn!(error = %e, "cluster: Redis unreachable; retrying");
                }
                lost = true;
                cluster.ready.store(false, Ordering::Release);
                tokio::select! {
                    _ = app.shutdown.cancelled() => return,
                    _ = tokio::time::sleep(backoff) => {}
                }
                backoff = (backoff * 2).min(Duration::from_secs(2));
                continue;
            }
        };
        if lost && !caught_up_possible(&mut con, &last_id).await {
            tracing::warn!(
                "cluster: the stream no longer holds what this node missed; closing sockets so clients reconnect"
            );
            crate::ws::close_all_for_restart(&app);
        }
        loop {
            let mut cmd = redis::cmd("XREAD");
            cmd.arg("COUNT")
                .arg(512)
                .arg("BLOCK")
                .arg(BLOCK_MS)
                .arg("STREAMS")
                .arg(STREAM)
                .arg(&last_id);
            let read = cmd.query_async::<Value>(&mut con);
            let v = tokio::select! {
                _ = app.shutdown.cancelled() => return,
                r = read => r,
            };
            match v {
                Ok(v) => {
                    if lost {
                        // Ready only when triggers can be recorded again too.
                        if !cluster.writer_alive().await {
                            tokio::time::sleep(backoff).await;
                            continue 'outer;
                        }
                        tracing::info!("cluster: Redis is back; caught up");
                        lost = false;
                    }
                    backoff = Duration::from_millis(100);
                    cluster.ready.store(true, Ordering::Release);
                    for (id, node, event) in entries(&v) {
                        last_id = id;
                        if node.as_deref() == Some(cluster.node_id.as_str()) {
                            continue;
                        }
                        match event.and_then(|e| serde_json::from_str::<StoredEvent>(&e).ok()) {
                            Some(e) => app.revocation.apply_remote(e),
                            None => tracing::warn!("cluster: unreadable stream entry skipped"),
                        }
                    }
                }
                Err(e) => {
                    tracing::warn!(error = %e, "cluster: lost the Redis stream; reconnecting");
                    lost = true;
                    cluster.ready.store(false, Ordering::Release);
                    continue 'outer;
                }
            }
        }
    }
}

/// After an outage: whether the stream still holds every entry after `last_id`.
async fn caught_up_possible(con: &mut MultiplexedConnection, last_id: &str) -> bool {
    let first: Result<Value, _> = redis::cmd("XRANGE")
        .arg(STREAM)
        .arg("-")
        .arg("+")
        .arg("COUNT")
        .arg(1)
        .query_async(con)
        .await;
    let Some(first) = first.ok().as_ref().and_then(first_entry_id) else {
        // An empty stream: nothing to miss, unless Redis lost its data, in
        // which case the watermark keys are gone too and sockets must retry.
        return last_id == "0-0";
    };
    id_le(&first, &next_id(last_id))
}

fn parse_id(id: &str) -> (u64, u64) {
    let (a, b) = id.split_once('-').unwrap_or((id, "0"));
    (a.parse().unwrap_or(0), b.parse().unwrap_or(0))
}

fn next_id(id: &str) -> String {
    let (a, b) = parse_id(id);
    format!("{a}-{}", b + 1)
}

fn id_le(a: &str, b: &str) -> bool {
    parse_id(a) <= parse_id(b)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stream_ids_compare_numerically() {
        assert!(id_le("1700000000000-0", "1700000000000-1"));
        assert!(id_le("999-5", "1000-0"));
        assert!(!id_le("1000-2", "1000-1"));
        assert_eq!(next_id("5-9"), "5-10");
    }
}
