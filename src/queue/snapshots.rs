//! Rewriting the handler snapshots of stored tasks in bounded batches, for the room that owns
//! their contents (e.g. to seal secrets that older records hold in clear).

use std::sync::Arc;

use redb::ReadableTable;
use uuid::Uuid;

use super::model::Snapshot;
use super::tables::ReadableTables;
use super::{Queue, QueueError};
use crate::audit::{Event as AuditEvent, SYSTEM_ACTOR};

/// Task records one snapshot rewrite reads at most.
pub const SNAPSHOT_REWRITE_BATCH: usize = 500;

/// A snapshot's replacement, or `None` to keep the record as it is.
pub type SnapshotRewrite = dyn Fn(&Snapshot) -> Option<Snapshot> + Send + Sync;

impl Queue {
    /// Replaces the handler snapshot of every stored task for which `rewrite` returns a new
    /// one, in writes of at most [`SNAPSHOT_REWRITE_BATCH`] records each (so other writers get
    /// their turn between them); nothing else in the task changes. Each batch that rewrites
    /// records is audited as `queue.snapshots_rewritten` with `reason`. Returns how many
    /// records were rewritten.
    pub async fn rewrite_snapshots(
        &self,
        reason: &'static str,
        rewrite: Arc<SnapshotRewrite>,
    ) -> Result<u64, QueueError> {
        let mut from = 0u128;
        let mut rewritten = 0u64;
        loop {
            let rewrite = Arc::clone(&rewrite);
            let audit = Arc::clone(&self.audit);
            let now = self.clock.now_ms();
            let (scanned, last, changed) = self
                .write(move |tx, t| {
                    let ids: Vec<u128> = t
                        .tasks()?
                        .range(from..)?
                        .take(SNAPSHOT_REWRITE_BATCH)
                        .map(|row| row.map(|(k, _)| k.value()))
                        .collect::<Result<_, _>>()?;
                    let mut changed = 0u64;
                    for raw in &ids {
                        let Some(mut task) = t.task(Uuid::from_u128(*raw))? else {
                            continue;
                        };
                        if let Some(snapshot) = rewrite(&task.handler) {
                            task.handler = snapshot;
                            t.save(&task)?;
                            changed += 1;
                        }
                    }
                    if changed > 0 {
                        audit.append(
                            tx,
                            now,
                            &AuditEvent::new(SYSTEM_ACTOR, "queue.snapshots_rewritten", reason)
                                .with_detail(serde_json::json!({"tasks": changed})),
                        )?;
                    }
                    Ok((ids.len(), ids.last().copied(), changed))
                })
                .await?;
            rewritten += changed;
            match last {
                Some(last) if scanned == SNAPSHOT_REWRITE_BATCH && last < u128::MAX => {
                    from = last + 1
                }
                _ => return Ok(rewritten),
            }
        }
    }
}
