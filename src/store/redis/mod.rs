//! Redis as the store and broker of several nodes: a single server
//! (`redis://host:port`) or a Redis Cluster (`redis-cluster://host:port,…`,
//! any of its nodes as seeds).
//!
//! * Records (`Durable`) are keys `slo:{kind}:{key}` holding the JSON
//!   [`Record`], expiring with it (`PX`); a small script (one key, so it
//!   runs on any cluster shard) never lets a lower version replace a higher.
//!   Nothing is loaded at start: a node reads what it is asked about.
//! * The broker is a stream (`broker`); the session graph is one record per
//!   user with compare-and-set (`graph`); Pusher presence is counted per
//!   node so a dead node's part can be taken back (`presence`).
//!
//! Every command runs on one key or on keys of one hash tag
//! (`{slo:pusher}`), so it runs on one cluster shard.
//!
//! Must not: decide revocation rules or touch sockets.

mod audit;
mod broker;
mod graph;
mod presence;

use std::sync::Arc;
use std::time::Duration;

use redis::aio::{ConnectionLike, ConnectionManager, ConnectionManagerConfig};
use redis::cluster::ClusterClientBuilder;
use redis::cluster_async::ClusterConnection;
use redis::{Client, Cmd, Pipeline, RedisFuture, Script, Value};

pub use audit::RedisAudit;
pub use broker::RedisBroker;
pub use graph::RedisGraphs;
pub use presence::RedisPresence;

use super::{BoxFuture, Durable, Kind, Record, StoreError};
use crate::util;

const KEY_PREFIX: &str = "slo:";

/// Sets a record unless one of a higher version is there. KEYS[1] key,
/// ARGV[1] JSON, ARGV[2] version, ARGV[3] ttl in ms.
const SET_IF_NEWER: &str = r#"
local cur = redis.call('GET', KEYS[1])
if cur then
  local ok, old = pcall(cjson.decode, cur)
  if ok and type(old) == 'table' and tonumber(old.version) and tonumber(old.version) > tonumber(ARGV[2]) then
    return 0
  end
end
redis.call('SET', KEYS[1], ARGV[1], 'PX', ARGV[3])
return 1
"#;

/// Where the servers are, to open dedicated connections (a blocking read
/// must not hold up the commands of the shared one).
#[derive(Clone)]
enum Servers {
    Single(Client),
    Cluster(Box<redis::cluster::ClusterClient>),
}

/// A connection to either kind of deployment.
#[derive(Clone)]
pub enum Conn {
    Single(ConnectionManager),
    Cluster(ClusterConnection),
}

impl ConnectionLike for Conn {
    fn req_packed_command<'a>(&'a mut self, cmd: &'a Cmd) -> RedisFuture<'a, Value> {
        match self {
            Conn::Single(c) => c.req_packed_command(cmd),
            Conn::Cluster(c) => c.req_packed_command(cmd),
        }
    }

    fn req_packed_commands<'a>(
        &'a mut self,
        pipeline: &'a Pipeline,
        offset: usize,
        count: usize,
    ) -> RedisFuture<'a, Vec<Value>> {
        match self {
            Conn::Single(c) => c.req_packed_commands(pipeline, offset, count),
            Conn::Cluster(c) => c.req_packed_commands(pipeline, offset, count),
        }
    }

    fn get_db(&self) -> i64 {
        match self {
            Conn::Single(c) => c.get_db(),
            Conn::Cluster(c) => c.get_db(),
        }
    }
}

/// The shared connection and what every Redis-backed part needs.
pub struct Redis {
    conn: Conn,
    servers: Servers,
    set_if_newer: Script,
    /// Names this node's stream entries, so it skips its own.
    pub node_id: String,
    /// What the URL said, for messages (without credentials).
    pub place: String,
}

fn failed(e: redis::RedisError) -> StoreError {
    StoreError::backend("Redis", e)
}

fn key_of(kind: Kind, key: &str) -> String {
    format!("{KEY_PREFIX}{}:{key}", kind.name())
}

/// `redis://…` or `redis-cluster://host:port,host:port` (the URL's user
/// and password, if any, apply to every seed).
fn parse(url: &str) -> Result<(Servers, String), String> {
    if let Some(rest) = url.strip_prefix("redis-cluster://") {
        let (auth, hosts) = match rest.rsplit_once('@') {
            Some((a, h)) => (format!("{a}@"), h),
            None => (String::new(), rest),
        };
        let seeds: Vec<String> = hosts
            .split(',')
            .map(|h| format!("redis://{auth}{}", h.trim_end_matches('/')))
            .collect();
        let client = ClusterClientBuilder::new(seeds)
            .connection_timeout(Duration::from_millis(500))
            .response_timeout(Duration::from_secs(2))
            .retries(1)
            .build()
            .map_err(|e| e.to_string())?;
        return Ok((
            Servers::Cluster(Box::new(client)),
            format!("redis-cluster://{hosts}"),
        ));
    }
    let client = Client::open(url).map_err(|e| e.to_string())?;
    let place = url
        .rsplit_once('@')
        .map_or(url.to_string(), |(_, h)| format!("redis://{h}"));
    Ok((Servers::Single(client), place))
}

impl Redis {
    /// Connects (and checks that the server answers).
    pub async fn connect(url: &str) -> Result<Arc<Redis>, StoreError> {
        let open = |reason: String| StoreError::Open {
            place: url
                .rsplit_once('@')
                .map_or(url.to_string(), |(_, h)| h.to_string()),
            reason,
            cause: None,
        };
        let (servers, place) = parse(url).map_err(open)?;
        let mut conn = match &servers {
            Servers::Single(client) => {
                let config = ConnectionManagerConfig::new()
                    .set_connection_timeout(Some(Duration::from_millis(500)))
                    .set_response_timeout(Some(Duration::from_secs(2)))
                    .set_number_of_retries(1)
                    .set_max_delay(Duration::from_secs(2));
                Conn::Single(
                    client
                        .get_connection_manager_with_config(config)
                        .await
                        .map_err(|e| open(e.to_string()))?,
                )
            }
            Servers::Cluster(client) => Conn::Cluster(
                client
                    .get_async_connection()
                    .await
                    .map_err(|e| open(e.to_string()))?,
            ),
        };
        let _: String = redis::cmd("PING")
            .query_async(&mut conn)
            .await
            .map_err(|e| open(e.to_string()))?;
        Ok(Arc::new(Redis {
            conn,
            servers,
            set_if_newer: Script::new(SET_IF_NEWER),
            node_id: util::random_id(),
            place,
        }))
    }

    /// A clone of the shared connection.
    pub fn conn(&self) -> Conn {
        self.conn.clone()
    }

    /// A connection of its own (for blocking reads).
    async fn dedicated(&self) -> Result<Conn, redis::RedisError> {
        match &self.servers {
            Servers::Single(client) => client
                .get_connection_manager_with_config(
                    ConnectionManagerConfig::new()
                        .set_connection_timeout(Some(Duration::from_millis(500)))
                        .set_response_timeout(Some(Duration::from_millis(
                            broker::BLOCK_MS as u64 + 3_000,
                        )))
                        .set_number_of_retries(0),
                )
                .await
                .map(Conn::Single),
            Servers::Cluster(client) => client.get_async_connection().await.map(Conn::Cluster),
        }
    }

    /// Runs a command once more after a dropped connection: the connection
    /// manager reconnects lazily, after a request failed.
    async fn retried<T: redis::FromRedisValue>(&self, cmd: &Cmd) -> Result<T, StoreError> {
        let mut con = self.conn();
        match cmd.query_async(&mut con).await {
            Err(e) if e.is_io_error() || e.is_connection_dropped() || e.is_connection_refusal() => {
                cmd.query_async(&mut con).await.map_err(failed)
            }
            other => other.map_err(failed),
        }
    }
}

impl Durable for Redis {
    fn write<'a>(&'a self, record: Record) -> BoxFuture<'a, Result<(), StoreError>> {
        Box::pin(async move {
            let json = serde_json::to_string(&record).unwrap_or_default();
            let ttl = (record.expires_at_ms - util::now_ms()).max(1);
            let key = key_of(record.kind, &record.key);
            let mut invocation = self.set_if_newer.key(&key);
            invocation.arg(&json).arg(record.version).arg(ttl);
            let mut con = self.conn();
            let first: Result<i64, _> = invocation.invoke_async(&mut con).await;
            match first {
                Err(e) if e.is_io_error() || e.is_connection_dropped() => {
                    let _: i64 = invocation.invoke_async(&mut con).await.map_err(failed)?;
                }
                other => {
                    other.map_err(failed)?;
                }
            }
            Ok(())
        })
    }

    fn write_once<'a>(&'a self, record: Record) -> BoxFuture<'a, Result<bool, StoreError>> {
        Box::pin(async move {
            let json = serde_json::to_string(&record).unwrap_or_default();
            let ttl = (record.expires_at_ms - util::now_ms()).max(1);
            let mut cmd = redis::cmd("SET");
            cmd.arg(key_of(record.kind, &record.key))
                .arg(&json)
                .arg("NX")
                .arg("PX")
                .arg(ttl);
            let first: Option<String> = self.retried(&cmd).await?;
            Ok(first.is_some())
        })
    }

    fn read<'a>(
        &'a self,
        kind: Kind,
        keys: &'a [String],
    ) -> BoxFuture<'a, Result<Vec<Option<Record>>, StoreError>> {
        Box::pin(async move {
            let names: Vec<String> = keys.iter().map(|k| key_of(kind, k)).collect();
            let values: Vec<Option<String>> = match &self.conn {
                // One round trip.
                Conn::Single(_) if !names.is_empty() => {
                    self.retried(redis::cmd("MGET").arg(&names)).await?
                }
                Conn::Single(_) => Vec::new(),
                // Keys of one call need not share a slot: one GET each, at once.
                Conn::Cluster(_) => {
                    let mut set = tokio::task::JoinSet::new();
                    for (i, name) in names.iter().enumerate() {
                        let mut con = self.conn();
                        let mut cmd = redis::cmd("GET");
                        cmd.arg(name);
                        set.spawn(
                            async move { (i, cmd.query_async::<Option<String>>(&mut con).await) },
                        );
                    }
                    let mut got = vec![None; names.len()];
                    while let Some(done) = set.join_next().await {
                        let (i, v) = done.map_err(|e| StoreError::backend("Redis", e))?;
                        got[i] = v.map_err(failed)?;
                    }
                    got
                }
            };
            Ok(keys
                .iter()
                .zip(values)
                .map(|(k, v)| {
                    let mut r: Record = serde_json::from_str(&v?).ok()?;
                    r.kind = kind;
                    r.key = k.clone();
                    Some(r)
                })
                .collect())
        })
    }

    fn loaded_at_start(&self) -> bool {
        false
    }

    fn expire<'a>(&'a self, _now_ms: i64) -> BoxFuture<'a, Result<usize, StoreError>> {
        // Redis expires its keys itself (PX).
        Box::pin(async { Ok(0) })
    }
}
