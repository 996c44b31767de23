//! Refused deliveries: recorded (source, time, reason, peer address, delivery id; never the body
//! or a secret) and counted, in a table bounded to `inbox.max_rejections` rows and kept
//! `inbox.rejection_retention_days`.

use uuid::Uuid;

use super::Inbox;
use super::model::RejectionRecord;
use super::tables::{ReadTables, ReadableTables, Tables};
use super::verification::Rejection;
use crate::clock::Millis;
use crate::store::StoreError;

/// Rejections deleted per write while pruning.
const PRUNE_BATCH: usize = 1000;

/// Milliseconds in a day.
const DAY_MS: Millis = 86_400_000;

impl Inbox {
    /// Records and counts a refused delivery to a configured source. A failure to record is
    /// logged: the sender is answered either way.
    pub async fn reject(&self, source: &str, rejection: &Rejection, remote_addr: Option<String>) {
        self.metrics
            .counter(
                "keel_inbox_rejected_total",
                "Inbound webhook deliveries refused, by reason.",
                &[("source", source), ("reason", rejection.reason.code())],
            )
            .inc();
        let record = RejectionRecord {
            at: self.clock.now_ms(),
            source: source.to_string(),
            reason: rejection.reason.code().to_string(),
            message: rejection.message.clone(),
            remote_addr,
            delivery_id: rejection.delivery_id.clone(),
        };
        tracing::info!(
            source,
            reason = rejection.reason.code(),
            remote_addr = record.remote_addr.as_deref(),
            "inbound webhook refused"
        );
        let id = Uuid::now_v7();
        let max = self.config.inbox.max_rejections;
        let written = self
            .store
            .write(move |tx| Tables::open(tx)?.add_rejection(id, &record, max))
            .await;
        if let Err(e) = written {
            tracing::warn!(source, error = %e, "could not record a refused webhook delivery");
        }
    }

    /// Deletes the rejections older than `inbox.rejection_retention_days`, one bounded batch
    /// per write so other writes go between them; returns how many.
    pub async fn prune_rejections(&self) -> Result<usize, StoreError> {
        let days =
            Millis::try_from(self.config.inbox.rejection_retention_days).unwrap_or(Millis::MAX);
        let cutoff = self
            .clock
            .now_ms()
            .saturating_sub(days.saturating_mul(DAY_MS));
        let mut total = 0;
        loop {
            let removed = self
                .store
                .write(move |tx| Tables::open(tx)?.prune_rejections(cutoff, PRUNE_BATCH))
                .await?;
            total += removed;
            if removed < PRUNE_BATCH {
                return Ok(total);
            }
        }
    }

    /// Recorded rejections, newest first, optionally of one source.
    pub async fn rejections(
        &self,
        source: Option<String>,
        limit: usize,
    ) -> Result<Vec<(Uuid, RejectionRecord)>, StoreError> {
        self.store
            .read(move |tx| ReadTables::open(tx)?.rejection_records(source.as_deref(), limit))
            .await
    }
}
