//! Pusher occupancy and presence on Redis, shared by every node.
//!
//! All keys carry the hash tag `{slo:pusher}` (one slot, so each change is
//! one atomic script, also on a Redis Cluster):
//!
//! * `c:{app}` — channel → sockets, cluster-wide;
//! * `m:{app}\x1f{channel}` — presence user → sockets; `i:…` — their info;
//! * `n:{node}` — what each node contributed (`c\x1f{app}\x1f{channel}`,
//!   `m\x1f{app}\x1f{channel}\x1f{user}` → sockets), so a dead node's part
//!   can be taken back; `nodes` — nodes by their last join;
//! * `cache:{app}\x1f{channel}` — a cache channel's last event (expires).
//!
//! A node whose heartbeat (`slo:nodes`) is older than the broker's node
//! lifetime is dead: one live node takes its part back atomically and
//! announces what vanished. A node that finds its own part gone (it was cut
//! off that long) has its sockets join again.
//!
//! Must not: send frames (the Pusher layer announces what changed).

use std::sync::Arc;
use std::sync::atomic::{AtomicI64, Ordering};
use std::time::Duration;

use redis::{Script, Value};
use tokio_util::sync::CancellationToken;

use super::broker::{NODE_TTL_MS, NODES};
use super::{Redis, failed};
use crate::store::presence::{CACHE_TTL_MS, Joined, Left, Member, Occupied, Presence, Vanished};
use crate::store::{BoxFuture, StoreError};
use crate::util;

const BASE: &str = "{slo:pusher}:";
const SEP: char = '\u{1f}';
const SWEEP: Duration = Duration::from_secs(2);

/// KEYS: c, m, i, n, nodes. ARGV: channel, user ('' if none), info, max
/// members, node, now, the node's channel field, its member field.
/// {-1} if full, else {sockets, member first (0/1), members (flat)}.
const JOIN: &str = r#"
local user = ARGV[2]
if user ~= '' and redis.call('HEXISTS', KEYS[2], user) == 0
   and redis.call('HLEN', KEYS[2]) >= tonumber(ARGV[4]) then
  return {-1}
end
redis.call('ZADD', KEYS[5], ARGV[6], ARGV[5])
local sockets = redis.call('HINCRBY', KEYS[1], ARGV[1], 1)
redis.call('HINCRBY', KEYS[4], ARGV[7], 1)
if user == '' then return {sockets, 0, {}} end
local first = 0
if redis.call('HINCRBY', KEYS[2], user, 1) == 1 then
  first = 1
  redis.call('HSET', KEYS[3], user, ARGV[3])
end
redis.call('HINCRBY', KEYS[4], ARGV[8], 1)
return {sockets, first, redis.call('HGETALL', KEYS[3])}
"#;

/// KEYS: c, m, i, n. ARGV: channel, user ('' if none), channel field,
/// member field. {sockets left (-1 if not ours), member last (0/1)}. Only
/// what this node still holds is taken away (a reaped part is not).
const LEAVE: &str = r#"
local function dec(key, field)
  local n = redis.call('HINCRBY', key, field, -1)
  if n <= 0 then redis.call('HDEL', key, field) end
  return n
end
if redis.call('HEXISTS', KEYS[4], ARGV[3]) == 0 then return {-1, 0} end
dec(KEYS[4], ARGV[3])
local sockets = dec(KEYS[1], ARGV[1])
local last = 0
if ARGV[2] ~= '' and redis.call('HEXISTS', KEYS[4], ARGV[4]) == 1 then
  dec(KEYS[4], ARGV[4])
  if dec(KEYS[2], ARGV[2]) <= 0 then
    last = 1
    redis.call('HDEL', KEYS[3], ARGV[2])
  end
end
return {math.max(sockets, 0), last}
"#;

/// KEYS: n (the dead node's), nodes. ARGV: node, base. Takes its part back;
/// returns the fields of what reached zero.
const REAP: &str = r#"
local base = ARGV[2]
local parts = redis.call('HGETALL', KEYS[1])
local gone = {}
for i = 1, #parts, 2 do
  local f, n = parts[i], tonumber(parts[i + 1])
  local p = {}
  for x in string.gmatch(f, '[^\31]+') do table.insert(p, x) end
  if p[1] == 'c' and #p == 3 then
    local key = base .. 'c:' .. p[2]
    if redis.call('HINCRBY', key, p[3], -n) <= 0 then
      redis.call('HDEL', key, p[3])
      table.insert(gone, f)
    end
  elseif p[1] == 'm' and #p == 4 then
    local m = base .. 'm:' .. p[2] .. '\31' .. p[3]
    if redis.call('HINCRBY', m, p[4], -n) <= 0 then
      redis.call('HDEL', m, p[4])
      redis.call('HDEL', base .. 'i:' .. p[2] .. '\31' .. p[3], p[4])
      table.insert(gone, f)
    end
  end
end
redis.call('DEL', KEYS[1])
redis.call('ZREM', KEYS[2], ARGV[1])
return gone
"#;

/// KEYS: c. ARGV: prefix, app, base. Flat: name, sockets, users.
const CHANNELS: &str = r#"
local all = redis.call('HGETALL', KEYS[1])
local out = {}
for i = 1, #all, 2 do
  local name = all[i]
  if string.sub(name, 1, #ARGV[1]) == ARGV[1] then
    table.insert(out, name)
    table.insert(out, all[i + 1])
    table.insert(out, redis.call('HLEN', ARGV[3] .. 'm:' .. ARGV[2] .. '\31' .. name))
  end
end
return out
"#;

pub struct RedisPresence {
    redis: Arc<Redis>,
    join: Script,
    leave: Script,
    reap: Script,
    list: Script,
    /// Joins minus leaves of this node's sockets.
    held: AtomicI64,
}

fn key(kind: &str, rest: &str) -> String {
    format!("{BASE}{kind}:{rest}")
}

fn channel_keys(app: &str, channel: &str) -> [String; 3] {
    let both = format!("{app}{SEP}{channel}");
    [key("c", app), key("m", &both), key("i", &both)]
}

fn fields(app: &str, channel: &str, user: &str) -> (String, String) {
    (
        format!("c{SEP}{app}{SEP}{channel}"),
        format!("m{SEP}{app}{SEP}{channel}{SEP}{user}"),
    )
}

fn int(v: &Value) -> i64 {
    match v {
        Value::Int(i) => *i,
        Value::BulkString(b) => std::str::from_utf8(b)
            .ok()
            .and_then(|s| s.parse().ok())
            .unwrap_or(0),
        _ => 0,
    }
}

fn text(v: &Value) -> String {
    match v {
        Value::BulkString(b) => String::from_utf8_lossy(b).into_owned(),
        Value::SimpleString(s) => s.clone(),
        Value::Int(i) => i.to_string(),
        _ => String::new(),
    }
}

fn pairs(v: Option<&Value>) -> Vec<(String, String)> {
    let Some(Value::Array(items)) = v else {
        return Vec::new();
    };
    let mut out: Vec<_> = items
        .chunks_exact(2)
        .map(|p| (text(&p[0]), text(&p[1])))
        .collect();
    out.sort();
    out
}

impl RedisPresence {
    pub fn new(redis: Arc<Redis>) -> RedisPresence {
        RedisPresence {
            redis,
            join: Script::new(JOIN),
            leave: Script::new(LEAVE),
            reap: Script::new(REAP),
            list: Script::new(CHANNELS),
            held: AtomicI64::new(0),
        }
    }

    fn own_key(&self) -> String {
        key("n", &self.redis.node_id)
    }

    /// Dead nodes' parts taken back, and whether ours is gone.
    async fn sweep(&self, sink: &(dyn Fn(Vanished) + Send + Sync)) -> Result<(), StoreError> {
        let now = util::now_ms();
        let mut cmd = redis::cmd("ZRANGEBYSCORE");
        cmd.arg(NODES).arg(now - NODE_TTL_MS).arg("+inf");
        let alive: Vec<String> = self.redis.retried(&cmd).await?;
        let mut cmd = redis::cmd("ZRANGEBYSCORE");
        cmd.arg(key("nodes", "")).arg("-inf").arg(now - NODE_TTL_MS);
        let quiet: Vec<String> = self.redis.retried(&cmd).await?;
        for node in quiet.iter().filter(|n| !alive.contains(n)) {
            if *node == self.redis.node_id {
                continue;
            }
            let mut inv = self.reap.key(key("n", node));
            inv.key(key("nodes", "")).arg(node).arg(BASE);
            let gone: Vec<String> = inv
                .invoke_async(&mut self.redis.conn())
                .await
                .map_err(failed)?;
            if !gone.is_empty() {
                tracing::info!(node = %node, parts = gone.len(), "pusher: a dead node's members removed");
            }
            for f in gone {
                let p: Vec<&str> = f.split(SEP).collect();
                match p.as_slice() {
                    ["c", app, channel] => sink(Vanished::Channel {
                        app: app.to_string(),
                        channel: channel.to_string(),
                    }),
                    ["m", app, channel, user] => sink(Vanished::Member {
                        app: app.to_string(),
                        channel: channel.to_string(),
                        user_id: user.to_string(),
                    }),
                    _ => {}
                }
            }
        }
        if self.held.load(Ordering::Acquire) > 0 {
            let mut cmd = redis::cmd("EXISTS");
            cmd.arg(self.own_key());
            let exists: i64 = self.redis.retried(&cmd).await?;
            if exists == 0 {
                tracing::warn!(
                    "pusher: this node's members were removed while it was cut off; its sockets reconnect"
                );
                self.held.store(0, Ordering::Release);
                sink(Vanished::Us);
            }
        }
        Ok(())
    }
}

impl Presence for RedisPresence {
    fn join<'a>(
        &'a self,
        app: &'a str,
        channel: &'a str,
        member: Option<&'a Member>,
        max_members: usize,
    ) -> BoxFuture<'a, Result<Joined, StoreError>> {
        Box::pin(async move {
            let [c, m, i] = channel_keys(app, channel);
            let user = member.map_or("", |m| m.user_id.as_str());
            let (cf, mf) = fields(app, channel, user);
            let mut inv = self.join.key(c);
            inv.key(m)
                .key(i)
                .key(self.own_key())
                .key(key("nodes", ""))
                .arg(channel)
                .arg(user)
                .arg(member.map_or("", |m| m.info.as_str()))
                .arg(max_members)
                .arg(&self.redis.node_id)
                .arg(util::now_ms())
                .arg(cf)
                .arg(mf);
            let reply: Vec<Value> = inv
                .invoke_async(&mut self.redis.conn())
                .await
                .map_err(failed)?;
            let sockets = reply.first().map_or(0, int);
            if sockets < 0 {
                return Ok(Joined::Full);
            }
            self.held.fetch_add(1, Ordering::AcqRel);
            Ok(Joined::Ok {
                channel_first: sockets == 1,
                sockets: sockets as u64,
                member_first: reply.get(1).map_or(0, int) == 1,
                members: pairs(reply.get(2)),
            })
        })
    }

    fn leave<'a>(
        &'a self,
        app: &'a str,
        channel: &'a str,
        user_id: Option<&'a str>,
    ) -> BoxFuture<'a, Result<Left, StoreError>> {
        Box::pin(async move {
            let [c, m, i] = channel_keys(app, channel);
            let user = user_id.unwrap_or("");
            let (cf, mf) = fields(app, channel, user);
            let mut inv = self.leave.key(c);
            inv.key(m).key(i).key(self.own_key());
            inv.arg(channel).arg(user).arg(cf).arg(mf);
            let reply: Vec<i64> = inv
                .invoke_async(&mut self.redis.conn())
                .await
                .map_err(failed)?;
            let sockets = reply.first().copied().unwrap_or(-1);
            if sockets < 0 {
                // Taken back already (this node was reaped).
                return Ok(Left::default());
            }
            let _ = self
                .held
                .fetch_update(Ordering::AcqRel, Ordering::Acquire, |h| {
                    Some((h - 1).max(0))
                });
            Ok(Left {
                channel_empty: sockets == 0,
                sockets: sockets as u64,
                member_last: reply.get(1).copied() == Some(1),
            })
        })
    }

    fn channels<'a>(
        &'a self,
        app: &'a str,
        prefix: &'a str,
    ) -> BoxFuture<'a, Result<Vec<Occupied>, StoreError>> {
        Box::pin(async move {
            let mut inv = self.list.key(key("c", app));
            inv.arg(prefix).arg(app).arg(BASE);
            let flat: Vec<Value> = inv
                .invoke_async(&mut self.redis.conn())
                .await
                .map_err(failed)?;
            let mut out: Vec<Occupied> = flat
                .chunks_exact(3)
                .map(|c| (text(&c[0]), int(&c[1]).max(0) as u64, int(&c[2]) as u64))
                .filter(|(_, sockets, _)| *sockets > 0)
                .collect();
            out.sort();
            Ok(out)
        })
    }

    fn members<'a>(
        &'a self,
        app: &'a str,
        channel: &'a str,
    ) -> BoxFuture<'a, Result<Vec<(String, String)>, StoreError>> {
        Box::pin(async move {
            let [_, _, i] = channel_keys(app, channel);
            let mut cmd = redis::cmd("HGETALL");
            cmd.arg(i);
            let v: Value = self.redis.retried(&cmd).await?;
            Ok(match v {
                Value::Map(kv) => {
                    let mut out: Vec<_> = kv.iter().map(|(k, v)| (text(k), text(v))).collect();
                    out.sort();
                    out
                }
                other => pairs(Some(&other)),
            })
        })
    }

    fn cache_put<'a>(
        &'a self,
        app: &'a str,
        channel: &'a str,
        event: &'a str,
    ) -> BoxFuture<'a, Result<(), StoreError>> {
        Box::pin(async move {
            let mut cmd = redis::cmd("SET");
            cmd.arg(key("cache", &format!("{app}{SEP}{channel}")))
                .arg(event)
                .arg("PX")
                .arg(CACHE_TTL_MS);
            let _: Value = self.redis.retried(&cmd).await?;
            Ok(())
        })
    }

    fn cache_get<'a>(
        &'a self,
        app: &'a str,
        channel: &'a str,
    ) -> BoxFuture<'a, Result<Option<String>, StoreError>> {
        Box::pin(async move {
            let mut cmd = redis::cmd("GET");
            cmd.arg(key("cache", &format!("{app}{SEP}{channel}")));
            self.redis.retried(&cmd).await
        })
    }

    fn maintain(
        self: Arc<Self>,
        sink: Arc<dyn Fn(Vanished) + Send + Sync>,
        stop: CancellationToken,
    ) -> BoxFuture<'static, ()> {
        Box::pin(async move {
            loop {
                tokio::select! {
                    _ = stop.cancelled() => return,
                    _ = tokio::time::sleep(SWEEP) => {}
                }
                if let Err(e) = self.sweep(&*sink).await {
                    tracing::debug!(error = %e, "pusher: presence sweep failed; next time");
                }
            }
        })
    }
}
