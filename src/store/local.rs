//! The store of a single node: memory (`store = "memory"`: nothing survives
//! a restart) or the embedded journal (the default).
//!
//! Everything is loaded into memory at start (`revocation`, `sessions`);
//! afterwards the journal is only written, so a read here finds nothing
//! that memory does not already hold.
//!
//! Must not: be shared by two processes (the journal's file lock refuses a
//! second one).

use std::sync::Arc;

use super::embedded::Journal;
use super::{BoxFuture, Durable, Kind, Record, StoreError};

pub struct Local {
    journal: Option<Arc<Journal>>,
}

impl Local {
    /// Nothing survives a restart.
    pub fn memory() -> Local {
        Local { journal: None }
    }

    /// Written through the embedded journal.
    pub fn embedded(journal: Arc<Journal>) -> Local {
        Local {
            journal: Some(journal),
        }
    }
}

impl Durable for Local {
    fn write<'a>(&'a self, record: Record) -> BoxFuture<'a, Result<(), StoreError>> {
        Box::pin(async move {
            match &self.journal {
                Some(j) => j.put(record).await,
                None => Ok(()),
            }
        })
    }

    fn write_once<'a>(&'a self, record: Record) -> BoxFuture<'a, Result<bool, StoreError>> {
        // One node decides "first" in memory beforehand; this makes it last.
        Box::pin(async move { self.write(record).await.map(|()| true) })
    }

    fn read<'a>(
        &'a self,
        _kind: Kind,
        keys: &'a [String],
    ) -> BoxFuture<'a, Result<Vec<Option<Record>>, StoreError>> {
        Box::pin(async move { Ok(vec![None; keys.len()]) })
    }

    fn loaded_at_start(&self) -> bool {
        true
    }

    fn expire<'a>(&'a self, now_ms: i64) -> BoxFuture<'a, Result<usize, StoreError>> {
        Box::pin(async move {
            match &self.journal {
                Some(j) => j.expire(now_ms).await,
                None => Ok(0),
            }
        })
    }

    fn close(&self) {
        if let Some(j) = &self.journal {
            j.close();
        }
    }
}
