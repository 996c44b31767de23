//! Refused deliveries: recorded (source, time, reason, peer address, delivery id; never the body
//! or a secret) and counted, in a table bounded to `inbox.max_rejections` rows.

use uuid::Uuid;

use super::Inbox;
use super::model::RejectionRecord;
use super::tables::{ReadTables, ReadableTables, Tables};
use super::verification::Rejection;
use crate::store::StoreError;

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
