//! The session graph on Redis, shared by every node.
//!
//! * A user's graph is the key `slo:user_graphs:{tag}` holding the JSON
//!   [`Record`]; a save is a compare-and-set on its version (a script on
//!   that one key), so two nodes racing to redeem one transfer token, or to
//!   rotate one refresh token, cannot both win.
//! * Pointers `slo:ptr:{pointer}` lead from a secret's digest or an id to
//!   its user. They are written *before* the compare-and-set: a save that
//!   loses or never happens leaves only a pointer to a graph without that
//!   entity, which resolves to "unknown".
//! * Sorted sets index what is due: `slo:deadlines` (web sessions by their
//!   end) and `slo:notices` (users with pending notices). Entries are added
//!   before the save and retired after it; one left stale by a crash is
//!   dropped by whoever finds nothing due behind it (`forget`).
//!
//! Must not: interpret a graph (the session layer does).

use std::sync::Arc;
use std::sync::atomic::{AtomicI64, Ordering};

use redis::Script;
use tokio::sync::Notify;

use super::{Conn, Redis, failed};
use crate::store::graph::{GraphRecord, GraphStore, Versioned};
use crate::store::{BoxFuture, Kind, Record, StoreError};
use crate::util;

const DEADLINES: &str = "slo:deadlines";
const NOTICES: &str = "slo:notices";
/// Due entries handled per call.
const BATCH: usize = 256;

/// KEYS[1] the graph; ARGV[1] the expected version, ARGV[2] the new
/// record (JSON), ARGV[3] its ttl (ms). 1 if saved, 0 if someone was first.
const COMPARE_AND_SET: &str = r#"
local cur = redis.call('GET', KEYS[1])
local version = 0
if cur then
  local ok, old = pcall(cjson.decode, cur)
  if ok and type(old) == 'table' then version = tonumber(old.version) or 0 end
end
if version ~= tonumber(ARGV[1]) then return 0 end
redis.call('SET', KEYS[1], ARGV[2], 'PX', ARGV[3])
return 1
"#;

pub struct RedisGraphs {
    redis: Arc<Redis>,
    cas: Script,
    /// The earliest deadline seen at the last look (ms), `i64::MAX` if none.
    next: AtomicI64,
    deadline_changed: Notify,
}

fn graph_key(tag: &str) -> String {
    format!("slo:{}:{tag}", Kind::SessionGraph.name())
}

fn member(tag: &str, web: &str) -> String {
    format!("{tag}\u{1f}{web}")
}

impl RedisGraphs {
    pub fn new(redis: Arc<Redis>) -> RedisGraphs {
        RedisGraphs {
            redis,
            cas: Script::new(COMPARE_AND_SET),
            next: AtomicI64::new(i64::MAX),
            deadline_changed: Notify::new(),
        }
    }

    /// Runs commands of any keys: one pipeline on a single server, each on
    /// its own shard on a cluster (they need not share a slot).
    async fn each(&self, cmds: Vec<redis::Cmd>) -> Result<(), StoreError> {
        if cmds.is_empty() {
            return Ok(());
        }
        let mut con = self.redis.conn();
        match &con {
            Conn::Single(_) => {
                let mut pipe = redis::pipe();
                for c in cmds {
                    pipe.add_command(c).ignore();
                }
                pipe.query_async::<()>(&mut con).await.map_err(failed)
            }
            Conn::Cluster(_) => {
                let mut set = tokio::task::JoinSet::new();
                for c in cmds {
                    let mut con = self.redis.conn();
                    set.spawn(async move { c.query_async::<redis::Value>(&mut con).await });
                }
                while let Some(done) = set.join_next().await {
                    done.map_err(|e| StoreError::backend("Redis", e))?
                        .map_err(failed)?;
                }
                Ok(())
            }
        }
    }
}

impl GraphStore for RedisGraphs {
    fn load<'a>(&'a self, tag: &'a str) -> BoxFuture<'a, Result<Option<Versioned>, StoreError>> {
        Box::pin(async move {
            let mut cmd = redis::cmd("GET");
            cmd.arg(graph_key(tag));
            let json: Option<String> = self.redis.retried(&cmd).await?;
            let Some(json) = json else { return Ok(None) };
            let r: Record = serde_json::from_str(&json)
                .map_err(|e| StoreError::Corrupt(format!("session graph {tag}: {e}")))?;
            Ok(Some(Versioned {
                version: r.version.max(0) as u64,
                data: r.data,
            }))
        })
    }

    fn resolve<'a>(
        &'a self,
        pointer: &'a str,
    ) -> BoxFuture<'a, Result<Option<String>, StoreError>> {
        Box::pin(async move {
            let mut cmd = redis::cmd("GET");
            cmd.arg(format!("slo:ptr:{pointer}"));
            self.redis.retried(&cmd).await
        })
    }

    fn save<'a>(
        &'a self,
        expected: u64,
        previous: Option<&'a GraphRecord>,
        record: &'a GraphRecord,
    ) -> BoxFuture<'a, Result<bool, StoreError>> {
        Box::pin(async move {
            let ttl = (record.expires_ms - util::now_ms()).max(1);
            // Index entries first (harmless if the save does not follow).
            let mut before = Vec::new();
            for p in &record.pointers {
                let mut c = redis::cmd("SET");
                c.arg(format!("slo:ptr:{p}"))
                    .arg(&record.tag)
                    .arg("PX")
                    .arg(ttl);
                before.push(c);
            }
            for (at, web) in &record.deadlines {
                let mut c = redis::cmd("ZADD");
                c.arg(DEADLINES).arg(*at).arg(member(&record.tag, web));
                before.push(c);
            }
            if let Some(due) = record.notice_due {
                let mut c = redis::cmd("ZADD");
                c.arg(NOTICES).arg(due).arg(&record.tag);
                before.push(c);
            }
            self.each(before).await?;
            let json = serde_json::to_string(&Record {
                kind: Kind::SessionGraph,
                key: record.tag.clone(),
                version: expected as i64 + 1,
                expires_at_ms: record.expires_ms,
                data: record.data.clone(),
            })
            .unwrap_or_default();
            let mut invocation = self.cas.key(graph_key(&record.tag));
            invocation.arg(expected).arg(&json).arg(ttl);
            let mut con = self.redis.conn();
            let saved: i64 = invocation.invoke_async(&mut con).await.map_err(failed)?;
            if saved == 0 {
                return Ok(false);
            }
            // Retire what the previous record indexed and this one does not.
            let mut after = Vec::new();
            if let Some(prev) = previous {
                for (_, web) in &prev.deadlines {
                    if !record.deadlines.iter().any(|(_, w)| w == web) {
                        let mut c = redis::cmd("ZREM");
                        c.arg(DEADLINES).arg(member(&record.tag, web));
                        after.push(c);
                    }
                }
                if prev.notice_due.is_some() && record.notice_due.is_none() {
                    let mut c = redis::cmd("ZREM");
                    c.arg(NOTICES).arg(&record.tag);
                    after.push(c);
                }
            }
            // The save is done; a failed retirement only leaves a stale entry.
            if let Err(e) = self.each(after).await {
                tracing::debug!(error = %e, "session graph: stale index entries left");
            }
            if let Some(first) = record.deadlines.iter().map(|(t, _)| *t).min()
                && first < self.next.fetch_min(first, Ordering::AcqRel)
            {
                self.deadline_changed.notify_one();
            }
            Ok(true)
        })
    }

    fn due<'a>(&'a self, now: i64) -> BoxFuture<'a, Result<Vec<(String, String)>, StoreError>> {
        Box::pin(async move {
            let mut cmd = redis::cmd("ZRANGEBYSCORE");
            cmd.arg(DEADLINES)
                .arg("-inf")
                .arg(now)
                .arg("LIMIT")
                .arg(0)
                .arg(BATCH);
            let members: Vec<String> = self.redis.retried(&cmd).await?;
            let mut first = redis::cmd("ZRANGE");
            first.arg(DEADLINES).arg(0).arg(0).arg("WITHSCORES");
            let head: Vec<(String, i64)> = self.redis.retried(&first).await?;
            self.next.store(
                head.first().map_or(i64::MAX, |(_, t)| *t),
                Ordering::Release,
            );
            Ok(members
                .iter()
                .filter_map(|m| m.split_once('\u{1f}'))
                .map(|(t, w)| (t.to_string(), w.to_string()))
                .collect())
        })
    }

    fn notices_due<'a>(&'a self, now: i64) -> BoxFuture<'a, Result<Vec<String>, StoreError>> {
        Box::pin(async move {
            let mut cmd = redis::cmd("ZRANGEBYSCORE");
            cmd.arg(NOTICES)
                .arg("-inf")
                .arg(now)
                .arg("LIMIT")
                .arg(0)
                .arg(BATCH);
            self.redis.retried(&cmd).await
        })
    }

    fn forget<'a>(
        &'a self,
        tag: &'a str,
        web: Option<&'a str>,
    ) -> BoxFuture<'a, Result<(), StoreError>> {
        Box::pin(async move {
            let mut cmd = redis::cmd("ZREM");
            match web {
                Some(w) => cmd.arg(DEADLINES).arg(member(tag, w)),
                None => cmd.arg(NOTICES).arg(tag),
            };
            self.redis.retried::<i64>(&cmd).await.map(|_| ())
        })
    }

    fn next_deadline(&self) -> Option<i64> {
        // Other nodes add deadlines too: look at least every second.
        let soon = util::now_ms() + 1_000;
        Some(self.next.load(Ordering::Acquire).min(soon))
    }

    fn deadline_changed(&self) -> &Notify {
        &self.deadline_changed
    }

    fn purge(&self, _now: i64) {
        // Redis expires graphs and pointers itself (PX).
    }
}
