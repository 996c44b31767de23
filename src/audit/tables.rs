//! The audit room's tables, opened together per transaction: the hash-chained entries and the
//! signed checkpoints. This is the only code of the room that names their definitions.

use redb::{ReadOnlyTable, ReadTransaction, ReadableTable, Table, TableHandle, WriteTransaction};

use super::{Checkpoint, Entry};
use crate::store::StoreError;
use crate::store::codec;
use crate::store::tables::audit::{AUDIT_CHECKPOINTS, AUDIT_ENTRIES};

/// The audit tables of one transaction: `E` holds the entries, `C` the checkpoints.
pub struct AuditTables<E, C> {
    /// Sequence number → entry.
    pub entries: E,
    /// Sequence number covered → signed checkpoint.
    pub checkpoints: C,
}

/// The audit tables of a read transaction.
pub type AuditRead =
    AuditTables<ReadOnlyTable<u64, &'static [u8]>, ReadOnlyTable<u64, &'static [u8]>>;

/// The audit tables of a write transaction.
pub type AuditWrite<'tx> =
    AuditTables<Table<'tx, u64, &'static [u8]>, Table<'tx, u64, &'static [u8]>>;

impl AuditRead {
    /// Opens the tables in a read transaction.
    pub fn open(tx: &ReadTransaction) -> Result<Self, StoreError> {
        Ok(AuditTables {
            entries: tx.open_table(AUDIT_ENTRIES)?,
            checkpoints: tx.open_table(AUDIT_CHECKPOINTS)?,
        })
    }
}

impl<'tx> AuditWrite<'tx> {
    /// Opens the tables in a write transaction.
    pub fn open(tx: &'tx WriteTransaction) -> Result<Self, StoreError> {
        Ok(AuditTables {
            entries: tx.open_table(AUDIT_ENTRIES)?,
            checkpoints: tx.open_table(AUDIT_CHECKPOINTS)?,
        })
    }

    /// Stores an entry under its sequence number.
    pub fn put_entry(&mut self, entry: &Entry) -> Result<(), StoreError> {
        self.entries
            .insert(entry.seq, codec::encode(entry).as_slice())?;
        Ok(())
    }

    /// Stores a checkpoint under the sequence number it covers.
    pub fn put_checkpoint(&mut self, checkpoint: &Checkpoint) -> Result<(), StoreError> {
        self.checkpoints
            .insert(checkpoint.seq, codec::encode(checkpoint).as_slice())?;
        Ok(())
    }
}

/// Decodes an entry stored at `seq`.
pub fn decode_entry(seq: u64, bytes: &[u8]) -> Result<Entry, StoreError> {
    codec::decode(AUDIT_ENTRIES.name(), seq, bytes)
}

/// Decodes a checkpoint stored at `seq`.
pub fn decode_checkpoint(seq: u64, bytes: &[u8]) -> Result<Checkpoint, StoreError> {
    codec::decode(AUDIT_CHECKPOINTS.name(), seq, bytes)
}

impl<E, C> AuditTables<E, C>
where
    E: ReadableTable<u64, &'static [u8]>,
    C: ReadableTable<u64, &'static [u8]>,
{
    /// The newest entry, if any.
    pub fn last_entry(&self) -> Result<Option<Entry>, StoreError> {
        match self.entries.last()? {
            Some((k, v)) => Ok(Some(decode_entry(k.value(), v.value())?)),
            None => Ok(None),
        }
    }

    /// The newest checkpoint, if any.
    pub fn last_checkpoint(&self) -> Result<Option<Checkpoint>, StoreError> {
        match self.checkpoints.last()? {
            Some((k, v)) => Ok(Some(decode_checkpoint(k.value(), v.value())?)),
            None => Ok(None),
        }
    }

    /// Up to `limit` entries with seq greater than `after`, oldest first.
    pub fn entries_after(&self, after: u64, limit: usize) -> Result<Vec<Entry>, StoreError> {
        let mut out = Vec::new();
        for row in self.entries.range(after.saturating_add(1)..)?.take(limit) {
            let (k, v) = row?;
            out.push(decode_entry(k.value(), v.value())?);
        }
        Ok(out)
    }

    /// Up to `limit` newest checkpoints, newest first.
    pub fn newest_checkpoints(&self, limit: usize) -> Result<Vec<Checkpoint>, StoreError> {
        let mut out = Vec::new();
        for row in self.checkpoints.iter()?.rev().take(limit) {
            let (k, v) = row?;
            out.push(decode_checkpoint(k.value(), v.value())?);
        }
        Ok(out)
    }
}
