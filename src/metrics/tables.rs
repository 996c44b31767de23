//! The metrics room's table, opened per transaction: persisted interval snapshots by (series
//! key, interval start). This is the only code of the room that names its definition.

use redb::{ReadOnlyTable, ReadTransaction, ReadableTable, Table, TableHandle, WriteTransaction};

use super::snapshot::StoredInterval;
use crate::clock::Millis;
use crate::store::StoreError;
use crate::store::codec;
use crate::store::tables::metrics::METRIC_SNAPSHOTS;

/// The metrics table of one transaction.
pub struct MetricTables<T> {
    /// (series key, interval start ms) → stored interval.
    pub snapshots: T,
}

/// The metrics table of a read transaction.
pub type MetricsRead = MetricTables<ReadOnlyTable<(&'static str, i64), &'static [u8]>>;

/// The metrics table of a write transaction.
pub type MetricsWrite<'tx> = MetricTables<Table<'tx, (&'static str, i64), &'static [u8]>>;

impl MetricsRead {
    /// Opens the table in a read transaction.
    pub fn open(tx: &ReadTransaction) -> Result<Self, StoreError> {
        Ok(MetricTables {
            snapshots: tx.open_table(METRIC_SNAPSHOTS)?,
        })
    }
}

impl<'tx> MetricsWrite<'tx> {
    /// Opens the table in a write transaction.
    pub fn open(tx: &'tx WriteTransaction) -> Result<Self, StoreError> {
        Ok(MetricTables {
            snapshots: tx.open_table(METRIC_SNAPSHOTS)?,
        })
    }

    /// Stores one interval of the series `key`.
    pub fn put(&mut self, key: &str, record: &StoredInterval) -> Result<(), StoreError> {
        self.snapshots
            .insert((key, record.start_ms), codec::encode(record).as_slice())?;
        Ok(())
    }

    /// Deletes the intervals of `series` that started before `cutoff_ms`; returns how many.
    pub fn remove_before(&mut self, series: &str, cutoff_ms: Millis) -> Result<usize, StoreError> {
        let old: Vec<i64> = self
            .snapshots
            .range((series, i64::MIN)..(series, cutoff_ms))?
            .map(|r| r.map(|(k, _)| k.value().1))
            .collect::<Result<_, _>>()?;
        for start in &old {
            self.snapshots.remove((series, *start))?;
        }
        Ok(old.len())
    }
}

impl<T: ReadableTable<(&'static str, i64), &'static [u8]>> MetricTables<T> {
    /// Distinct series keys, by skipping from one series to the next.
    pub fn series_keys(&self) -> Result<Vec<String>, StoreError> {
        let table = &self.snapshots;
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

    /// Up to `limit` intervals of `series` starting in `[since_ms, until_ms)`, oldest first.
    pub fn intervals(
        &self,
        series: &str,
        since_ms: Millis,
        until_ms: Millis,
        limit: usize,
    ) -> Result<Vec<StoredInterval>, StoreError> {
        let mut out = Vec::new();
        for row in self
            .snapshots
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
}
