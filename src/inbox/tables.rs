//! The inbox's table bundle: seen delivery ids (with their expiry index) and recorded
//! rejections, opened together inside one transaction ([`Tables`] for writes, [`ReadTables`] for
//! reads) with the reads both share through [`ReadableTables`]. This is the only code of the
//! room that names `tables::inbox::…`.

use redb::{
    ReadTransaction, ReadableTable, ReadableTableMetadata, TableError, TableHandle,
    WriteTransaction,
};
use uuid::Uuid;

use super::model::RejectionRecord;
use crate::clock::Millis;
use crate::store::StoreError;
use crate::store::codec;
use crate::store::tables::inbox::{INBOX_REJECTIONS, INBOX_SEEN, INBOX_SEEN_EXPIRY};

/// The inbox's tables, readable in a read or a write transaction.
pub(super) trait ReadableTables {
    /// Seen delivery ids: (source, delivery id) → (task id, expires ms).
    fn seen(&self) -> &impl ReadableTable<(&'static str, &'static str), (u128, i64)>;
    /// Recorded rejections by id.
    fn rejections(&self) -> &impl ReadableTable<u128, &'static [u8]>;

    /// The task of a delivery id whose mark lasts beyond `now`.
    fn seen_task(&self, source: &str, id: &str, now: Millis) -> Result<Option<Uuid>, StoreError> {
        let entry = self.seen().get((source, id))?.map(|v| v.value());
        Ok(entry
            .filter(|(_, expires)| *expires > now)
            .map(|(task, _)| Uuid::from_u128(task)))
    }

    /// Delivery ids remembered (expired ones included until pruned).
    fn seen_count(&self) -> Result<u64, StoreError> {
        Ok(self.seen().len()?)
    }

    /// Recorded rejections, newest first, optionally of one source, at most `limit`.
    fn rejection_records(
        &self,
        source: Option<&str>,
        limit: usize,
    ) -> Result<Vec<(Uuid, RejectionRecord)>, StoreError> {
        let mut out = Vec::new();
        for row in self.rejections().iter()?.rev() {
            if out.len() >= limit {
                break;
            }
            let (key, value) = row?;
            let id = Uuid::from_u128(key.value());
            let record: RejectionRecord =
                codec::decode(INBOX_REJECTIONS.name(), id, value.value())?;
            if source.is_none_or(|s| s == record.source) {
                out.push((id, record));
            }
        }
        Ok(out)
    }
}

/// The inbox's tables opened for writing in one transaction.
pub(super) struct Tables<'tx> {
    seen: redb::Table<'tx, (&'static str, &'static str), (u128, i64)>,
    seen_expiry: redb::Table<'tx, (i64, &'static str, &'static str), ()>,
    rejections: redb::Table<'tx, u128, &'static [u8]>,
}

impl<'tx> Tables<'tx> {
    /// Opens every inbox table in `tx`.
    pub(super) fn open(tx: &'tx WriteTransaction) -> Result<Self, TableError> {
        Ok(Tables {
            seen: tx.open_table(INBOX_SEEN)?,
            seen_expiry: tx.open_table(INBOX_SEEN_EXPIRY)?,
            rejections: tx.open_table(INBOX_REJECTIONS)?,
        })
    }

    /// Marks a delivery id of `source` as seen, naming `task`, until `expires`.
    pub(super) fn mark_seen(
        &mut self,
        source: &str,
        id: &str,
        task: Uuid,
        expires: Millis,
    ) -> Result<(), StoreError> {
        let previous = self
            .seen
            .insert((source, id), (task.as_u128(), expires))?
            .map(|v| v.value());
        if let Some((_, old)) = previous {
            self.seen_expiry.remove((old, source, id))?;
        }
        self.seen_expiry.insert((expires, source, id), ())?;
        Ok(())
    }

    /// Forgets up to `batch` delivery ids whose mark expired by `now`; returns how many expiry
    /// entries were handled.
    pub(super) fn prune_seen(&mut self, now: Millis, batch: usize) -> Result<usize, StoreError> {
        let due: Vec<(i64, String, String)> = self
            .seen_expiry
            .range(..=(now, "\u{10ffff}", "\u{10ffff}"))?
            .take(batch)
            .map(|r| {
                r.map(|(k, _)| {
                    let (at, source, id) = k.value();
                    (at, source.to_string(), id.to_string())
                })
            })
            .collect::<Result<_, _>>()?;
        for (at, source, id) in &due {
            self.seen_expiry
                .remove((*at, source.as_str(), id.as_str()))?;
            let current = self
                .seen
                .get((source.as_str(), id.as_str()))?
                .map(|v| v.value());
            if current.is_some_and(|(_, expires)| expires == *at) {
                self.seen.remove((source.as_str(), id.as_str()))?;
            }
        }
        Ok(due.len())
    }

    /// Records a rejection, dropping the oldest beyond `max` rows.
    pub(super) fn add_rejection(
        &mut self,
        id: Uuid,
        record: &RejectionRecord,
        max: u64,
    ) -> Result<(), StoreError> {
        self.rejections
            .insert(id.as_u128(), codec::encode(record).as_slice())?;
        let len = self.rejections.len()?;
        if len > max {
            let oldest: Vec<u128> = self
                .rejections
                .iter()?
                .take((len - max) as usize)
                .map(|r| r.map(|(k, _)| k.value()))
                .collect::<Result<_, _>>()?;
            for key in oldest {
                self.rejections.remove(key)?;
            }
        }
        Ok(())
    }

    /// Deletes up to `batch` of the oldest rejections recorded before `cutoff`; returns how
    /// many. Rows are in the order they were recorded, so the first one recorded at or after
    /// `cutoff` ends the batch.
    pub(super) fn prune_rejections(
        &mut self,
        cutoff: Millis,
        batch: usize,
    ) -> Result<usize, StoreError> {
        let mut due = Vec::new();
        for row in self.rejections.iter()?.take(batch) {
            let (key, value) = row?;
            let id = Uuid::from_u128(key.value());
            let record: RejectionRecord =
                codec::decode(INBOX_REJECTIONS.name(), id, value.value())?;
            if record.at >= cutoff {
                break;
            }
            due.push(key.value());
        }
        for key in &due {
            self.rejections.remove(*key)?;
        }
        Ok(due.len())
    }
}

impl ReadableTables for Tables<'_> {
    fn seen(&self) -> &impl ReadableTable<(&'static str, &'static str), (u128, i64)> {
        &self.seen
    }
    fn rejections(&self) -> &impl ReadableTable<u128, &'static [u8]> {
        &self.rejections
    }
}

/// The inbox's tables opened for reading in one transaction (the expiry index is only read by
/// the pruning, which writes).
pub(super) struct ReadTables {
    seen: redb::ReadOnlyTable<(&'static str, &'static str), (u128, i64)>,
    rejections: redb::ReadOnlyTable<u128, &'static [u8]>,
}

impl ReadTables {
    /// Opens the inbox tables in `tx`.
    pub(super) fn open(tx: &ReadTransaction) -> Result<Self, TableError> {
        Ok(ReadTables {
            seen: tx.open_table(INBOX_SEEN)?,
            rejections: tx.open_table(INBOX_REJECTIONS)?,
        })
    }
}

impl ReadableTables for ReadTables {
    fn seen(&self) -> &impl ReadableTable<(&'static str, &'static str), (u128, i64)> {
        &self.seen
    }
    fn rejections(&self) -> &impl ReadableTable<u128, &'static [u8]> {
        &self.rejections
    }
}
