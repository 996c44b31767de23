//! Metric history: interval histograms persisted every snapshot interval, so p95/p99 over time
//! survive restarts; pruned after the retention period.

use std::sync::Arc;
use std::time::Duration;

use redb::{ReadTransaction, ReadableTable, TableHandle, WriteTransaction};
use serde::{Deserialize, Serialize};

use super::{IntervalSnapshot, Metrics};
use crate::clock::{Millis, SharedClock};
use crate::store::codec::{self, Record};
use crate::store::tables::metrics::METRIC_SNAPSHOTS;
use crate::store::{Store, StoreError};
use crate::supervisor::{StepFuture, Worker};

/// One stored interval of one series.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct StoredInterval {
    /// Interval start (epoch ms).
    pub start_ms: Millis,
    /// Interval end (epoch ms).
    pub end_ms: Millis,
    /// The series' values over the interval.
    pub snapshot: IntervalSnapshot,
}

impl Record for StoredInterval {
    const VERSION: u8 = 1;
}

/// Stores `snapshots` for the interval `[start_ms, end_ms)`.
pub fn persist(
    tx: &WriteTransaction,
    snapshots: Vec<IntervalSnapshot>,
    start_ms: Millis,
    end_ms: Millis,
) -> Result<usize, StoreError> {
    let mut table = tx.open_table(METRIC_SNAPSHOTS)?;
    let count = snapshots.len();
    for snapshot in snapshots {
        let key = snapshot.series_key();
        let record = StoredInterval {
            start_ms,
            end_ms,
            snapshot,
        };
        table.insert((key.as_str(), start_ms), codec::encode(&record).as_slice())?;
    }
    Ok(count)
}

/// Deletes intervals that started before `cutoff_ms`; returns how many.
pub fn prune(tx: &WriteTransaction, cutoff_ms: Millis) -> Result<usize, StoreError> {
    let mut table = tx.open_table(METRIC_SNAPSHOTS)?;
    let mut removed = 0;
    for series in series_keys_in(&table)? {
        let old: Vec<i64> = table
            .range((series.as_str(), i64::MIN)..(series.as_str(), cutoff_ms))?
            .map(|r| r.map(|(k, _)| k.value().1))
            .collect::<Result<_, _>>()?;
        for start in old {
            table.remove((series.as_str(), start))?;
            removed += 1;
        }
    }
    Ok(removed)
}

/// Distinct series keys, by skipping from one series to the next.
fn series_keys_in<T: ReadableTable<(&'static str, i64), &'static [u8]>>(
    table: &T,
) -> Result<Vec<String>, StoreError> {
    let mut keys = Vec::new();
    let mut next = table.first()?.map(|(k, _)| k.value().0.to_string());
    while let Some(series) = next {
        next = table
            .range((series.as_str(), i64::MAX)..)?
            .find_map(|r| match r {
                Ok((k, _)) if k.value().0 != series => Some(Ok(k.value().0.to_string())),
                Ok(_) => None,
                Err(e) => Some(Err(e)),
            })
            .transpose()?;
        keys.push(series);
    }
    Ok(keys)
}

/// Every series with stored history.
pub fn series(tx: &ReadTransaction) -> Result<Vec<String>, StoreError> {
    series_keys_in(&tx.open_table(METRIC_SNAPSHOTS)?)
}

/// Up to `limit` intervals of `series` starting in `[since_ms, until_ms)`, oldest first.
pub fn query(
    tx: &ReadTransaction,
    series: &str,
    since_ms: Millis,
    until_ms: Millis,
    limit: usize,
) -> Result<Vec<StoredInterval>, StoreError> {
    let table = tx.open_table(METRIC_SNAPSHOTS)?;
    let mut out = Vec::new();
    for row in table
        .range((series, since_ms)..(series, until_ms))?
        .take(limit)
    {
        let (k, v) = row?;
        let (s, start) = k.value();
        out.push(codec::decode(
            METRIC_SNAPSHOTS.name(),
            format!("{s}@{start}"),
            v.value(),
        )?);
    }
    Ok(out)
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
                prune(tx, cutoff)?;
                Ok::<_, StoreError>(n)
            })
            .await?;
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
