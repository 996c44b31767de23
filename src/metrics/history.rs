//! Metric history: interval histograms persisted every snapshot interval, so p95/p99 over time
//! survive restarts; pruned after the retention period.

use std::sync::Arc;
use std::time::Duration;

use redb::{ReadTransaction, WriteTransaction};

pub use super::snapshot::StoredInterval;
use super::tables::{MetricsRead, MetricsWrite};
use super::{IntervalSnapshot, Metrics};
use crate::clock::{Millis, SharedClock};
use crate::store::{Store, StoreError};
use crate::supervisor::{StepFuture, Worker};

/// Stores `snapshots` for the interval `[start_ms, end_ms)`.
pub fn persist(
    tx: &WriteTransaction,
    snapshots: Vec<IntervalSnapshot>,
    start_ms: Millis,
    end_ms: Millis,
) -> Result<usize, StoreError> {
    let mut tables = MetricsWrite::open(tx)?;
    let count = snapshots.len();
    for snapshot in snapshots {
        let key = snapshot.series_key();
        let record = StoredInterval {
            start_ms,
            end_ms,
            snapshot,
        };
        tables.put(&key, &record)?;
    }
    Ok(count)
}

/// Deletes intervals that started before `cutoff_ms`; returns how many.
pub fn prune(tx: &WriteTransaction, cutoff_ms: Millis) -> Result<usize, StoreError> {
    let mut tables = MetricsWrite::open(tx)?;
    let mut removed = 0;
    for series in tables.series_keys()? {
        removed += tables.remove_before(&series, cutoff_ms)?;
    }
    Ok(removed)
}

/// Every series with stored history.
pub fn series(tx: &ReadTransaction) -> Result<Vec<String>, StoreError> {
    MetricsRead::open(tx)?.series_keys()
}

/// Up to `limit` intervals of `series` starting in `[since_ms, until_ms)`, oldest first.
pub fn query(
    tx: &ReadTransaction,
    series: &str,
    since_ms: Millis,
    until_ms: Millis,
    limit: usize,
) -> Result<Vec<StoredInterval>, StoreError> {
    MetricsRead::open(tx)?.intervals(series, since_ms, until_ms, limit)
}

/// Persists interval snapshots on a schedule and prunes expired ones.
pub struct SnapshotWorker {
    /// Where snapshots are stored.
    pub store: Arc<Store>,
    /// What is snapshotted.
    pub metrics: Arc<Metrics>,
    /// Time source.
    pub clock: SharedClock,
    /// How often.
    pub interval: Duration,
    /// How long history is kept.
    pub retention: Duration,
    /// Start of the interval being collected.
    pub interval_start_ms: Millis,
}

impl SnapshotWorker {
    /// Takes the snapshots since the last step and stores them; prunes expired history.
    pub async fn persist_now(&mut self) -> Result<usize, StoreError> {
        let end_ms = self.clock.now_ms();
        let start_ms = self.interval_start_ms;
        let snapshots = self.metrics.take_interval_snapshots();
        let cutoff = end_ms - self.retention.as_millis() as i64;
        let mut pending = Some(snapshots);
        let mut taken: Option<Vec<IntervalSnapshot>> = None;
        let stored = self
            .store
            .write(move |tx| {
                // The batch may run this more than once: keep the snapshots for a re-run.
                let snaps = match pending.take() {
                    Some(s) => {
                        taken = Some(s.clone());
                        s
                    }
                    None => taken.clone().unwrap_or_default(),
                };
                let n = persist(tx, snaps, start_ms, end_ms)?;
                let pruned = prune(tx, cutoff)?;
                Ok::<_, StoreError>((n, pruned))
            })
            .await?;
        let (stored, pruned) = stored;
        self.metrics
            .counter(
                "keel_retention_purged_total",
                "Rows deleted past their retention, by table.",
                &[("table", "metric_snapshots")],
            )
            .add(pruned as u64);
        self.interval_start_ms = end_ms;
        Ok(stored)
    }
}

impl Worker for SnapshotWorker {
    fn name(&self) -> &'static str {
        "metrics-snapshot"
    }
    fn interval(&self) -> Duration {
        self.interval
    }
    fn step(&mut self) -> StepFuture<'_> {
        Box::pin(async move {
            self.persist_now()
                .await
                .map(|_| ())
                .map_err(|e| e.to_string())
        })
    }
    fn runs_on_shutdown(&self) -> bool {
        true
    }
}
