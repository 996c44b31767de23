//! Replay protection: delivery ids seen within `inbox.replay_retention_seconds`, and the
//! worker that forgets them once their retention passed.

use std::sync::Arc;
use std::time::Duration;

use uuid::Uuid;

use super::Inbox;
use super::tables::{ReadTables, ReadableTables, Tables};
use crate::clock::Millis;
use crate::store::StoreError;
use crate::supervisor::{StepFuture, Worker};

/// Seen marks removed per write while pruning.
const PRUNE_BATCH: usize = 5000;

impl Inbox {
    /// The task of a delivery id seen within the retention, if any.
    pub(super) async fn seen(
        &self,
        source: &str,
        id: &str,
        now: Millis,
    ) -> Result<Option<Uuid>, StoreError> {
        let (source, id) = (source.to_string(), id.to_string());
        self.store
            .read(move |tx| ReadTables::open(tx)?.seen_task(&source, &id, now))
            .await
    }

    pub(super) async fn mark_seen(
        &self,
        source: &str,
        ids: Vec<String>,
        task_id: Uuid,
        expires: Millis,
    ) -> Result<(), StoreError> {
        let source = source.to_string();
        self.store
            .write(move |tx| {
                let mut tables = Tables::open(tx)?;
                for id in &ids {
                    tables.mark_seen(&source, id, task_id, expires)?;
                }
                Ok::<(), StoreError>(())
            })
            .await
    }

    /// Delivery ids remembered now (expired ones included until pruned).
    pub async fn seen_count(&self) -> Result<u64, StoreError> {
        self.store
            .read(|tx| ReadTables::open(tx)?.seen_count())
            .await
    }

    /// Forgets delivery ids whose retention has passed; returns how many.
    pub async fn prune(&self) -> Result<usize, StoreError> {
        let now = self.clock.now_ms();
        let mut total = 0;
        loop {
            let removed = self
                .store
                .write(move |tx| Tables::open(tx)?.prune_seen(now, PRUNE_BATCH))
                .await?;
            total += removed;
            if removed < PRUNE_BATCH {
                return Ok(total);
            }
        }
    }
}

/// Forgets expired delivery ids every minute.
pub struct InboxPrune {
    /// The inbox.
    pub inbox: Arc<Inbox>,
}

impl Worker for InboxPrune {
    fn name(&self) -> &'static str {
        "inbox-prune"
    }
    fn interval(&self) -> Duration {
        Duration::from_secs(60)
    }
    fn step(&mut self) -> StepFuture<'_> {
        Box::pin(async move {
            self.inbox
                .prune()
                .await
                .map(|_| ())
                .map_err(|e| e.to_string())
        })
    }
}
