//! The audit trail of several nodes: the Redis stream `slo:audit`, whose
//! ids (milliseconds-sequence) are the entries' ids. Trimmed by age
//! (`XTRIM MINID`) and count (`XTRIM MAXLEN`), approximately, so a trim is
//! cheap for Redis.
//!
//! Must not: interpret entries.

use std::sync::Arc;

use redis::streams::StreamRangeReply;

use super::Redis;
use crate::store::audit::{AuditLog, Stored};
use crate::store::{BoxFuture, StoreError};

const STREAM: &str = "slo:audit";

pub struct RedisAudit {
    redis: Arc<Redis>,
}

impl RedisAudit {
    pub fn new(redis: Arc<Redis>) -> RedisAudit {
        RedisAudit { redis }
    }

    async fn range(&self, cmd: redis::Cmd) -> Result<Vec<Stored>, StoreError> {
        let reply: StreamRangeReply = self.redis.retried(&cmd).await?;
        Ok(reply
            .ids
            .into_iter()
            .map(|e| {
                let json: String = e.get("e").unwrap_or_default();
                (e.id, json)
            })
            .collect())
    }
}

impl AuditLog for RedisAudit {
    fn append<'a>(
        &'a self,
        _at_ms: i64,
        json: String,
    ) -> BoxFuture<'a, Result<String, StoreError>> {
        Box::pin(async move {
            let mut cmd = redis::cmd("XADD");
            cmd.arg(STREAM).arg("*").arg("e").arg(json);
            self.redis.retried(&cmd).await
        })
    }

    fn before<'a>(
        &'a self,
        before: Option<&'a str>,
        since_ms: i64,
        limit: usize,
    ) -> BoxFuture<'a, Result<Vec<Stored>, StoreError>> {
        Box::pin(async move {
            let mut cmd = redis::cmd("XREVRANGE");
            cmd.arg(STREAM)
                .arg(before.map_or_else(|| "+".to_string(), |b| format!("({b}")))
                .arg(since_ms.max(0))
                .arg("COUNT")
                .arg(limit);
            self.range(cmd).await
        })
    }

    fn after<'a>(
        &'a self,
        after: Option<&'a str>,
        limit: usize,
    ) -> BoxFuture<'a, Result<Vec<Stored>, StoreError>> {
        Box::pin(async move {
            let mut cmd = redis::cmd("XRANGE");
            cmd.arg(STREAM)
                .arg(after.map_or_else(|| "-".to_string(), |a| format!("({a}")))
                .arg("+")
                .arg("COUNT")
                .arg(limit);
            self.range(cmd).await
        })
    }

    fn trim<'a>(&'a self, cutoff_ms: i64, keep: usize) -> BoxFuture<'a, Result<usize, StoreError>> {
        Box::pin(async move {
            let mut by_age = redis::cmd("XTRIM");
            by_age
                .arg(STREAM)
                .arg("MINID")
                .arg("~")
                .arg(cutoff_ms.max(0));
            let a: usize = self.redis.retried(&by_age).await?;
            let mut by_count = redis::cmd("XTRIM");
            by_count.arg(STREAM).arg("MAXLEN").arg("~").arg(keep);
            let b: usize = self.redis.retried(&by_count).await?;
            Ok(a + b)
        })
    }
}
