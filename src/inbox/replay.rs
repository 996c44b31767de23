//! Replay protection: delivery ids seen within `inbox.replay_retention_seconds`, forgotten in
//! bounded batches once their retention passed.

use uuid::Uuid;

use super::Inbox;
use super::tables::{ReadTables, ReadableTables, Tables};
use crate::clock::Millis;
use crate::store::StoreError;

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
