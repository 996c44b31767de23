//! The security room's tables, opened together per transaction: automatic blocks and security
//! events. This is the only code of the room that names their definitions.

use redb::{ReadOnlyTable, ReadTransaction, ReadableTable, Table, TableHandle, WriteTransaction};

use super::model::{BlockRecord, EventRecord};
use crate::store::StoreError;
use crate::store::codec;
use crate::store::tables::security::{SECURITY_BLOCKS, SECURITY_EVENTS};

/// The security tables of one transaction.
pub struct SecurityTables<B, E> {
    /// Automatic blocks: client address → block record.
    pub blocks: B,
    /// Security events: (minute start, kind, subject) → event record.
    pub events: E,
}

/// The key of an event row: minute start, kind, subject.
type EventKey = (i64, &'static str, &'static str);

/// The security tables of a read transaction.
pub type SecurityRead = SecurityTables<
    ReadOnlyTable<&'static str, &'static [u8]>,
    ReadOnlyTable<EventKey, &'static [u8]>,
>;

/// The security tables of a write transaction.
pub type SecurityWrite<'tx> =
    SecurityTables<Table<'tx, &'static str, &'static [u8]>, Table<'tx, EventKey, &'static [u8]>>;

/// One stored event row.
pub struct EventRow {
    /// Start of its minute.
    pub minute: i64,
    /// What kind of event.
    pub kind: String,
    /// Whom it is about: a client address or a key id.
    pub subject: String,
    /// The counts.
    pub record: EventRecord,
}

impl SecurityRead {
    /// Opens the tables in a read transaction.
    pub fn open(tx: &ReadTransaction) -> Result<Self, StoreError> {
        Ok(SecurityTables {
            blocks: tx.open_table(SECURITY_BLOCKS)?,
            events: tx.open_table(SECURITY_EVENTS)?,
        })
    }
}

impl<'tx> SecurityWrite<'tx> {
    /// Opens the tables in a write transaction.
    pub fn open(tx: &'tx WriteTransaction) -> Result<Self, StoreError> {
        Ok(SecurityTables {
            blocks: tx.open_table(SECURITY_BLOCKS)?,
            events: tx.open_table(SECURITY_EVENTS)?,
        })
    }

    /// Stores the block of `ip`.
    pub fn put_block(&mut self, ip: &str, record: &BlockRecord) -> Result<(), StoreError> {
        self.blocks.insert(ip, codec::encode(record).as_slice())?;
        Ok(())
    }

    /// Adds `add` to the event row of (`minute`, `kind`, `subject`).
    pub fn add_event(
        &mut self,
        minute: i64,
        kind: &str,
        subject: &str,
        add: &EventRecord,
    ) -> Result<(), StoreError> {
        let key = (minute, kind, subject);
        let merged = match self.events.get(key)? {
            Some(v) => {
                let mut old: EventRecord = codec::decode(
                    SECURITY_EVENTS.name(),
                    format!("{minute}/{kind}/{subject}"),
                    v.value(),
                )?;
                old.count += add.count;
                old.first_at = old.first_at.min(add.first_at);
                old.last_at = old.last_at.max(add.last_at);
                old.detail.clone_from(&add.detail);
                old
            }
            None => add.clone(),
        };
        self.events.insert(key, codec::encode(&merged).as_slice())?;
        Ok(())
    }

    /// Deletes event rows of minutes before `cutoff`.
    pub fn prune_events(&mut self, cutoff: i64) -> Result<(), StoreError> {
        self.events.retain_in(..(cutoff, "", ""), |_, _| false)?;
        Ok(())
    }

    /// Removes the block of `ip`; whether there was one.
    pub fn remove_block(&mut self, ip: &str) -> Result<bool, StoreError> {
        Ok(self.blocks.remove(ip)?.is_some())
    }
}

impl<B, E> SecurityTables<B, E>
where
    B: ReadableTable<&'static str, &'static [u8]>,
    E: ReadableTable<EventKey, &'static [u8]>,
{
    /// Up to `limit` event rows, newest minute first, of `kind` when given.
    pub fn events(&self, kind: Option<&str>, limit: usize) -> Result<Vec<EventRow>, StoreError> {
        let mut out = Vec::new();
        for row in self.events.iter()?.rev() {
            if out.len() >= limit {
                break;
            }
            let (k, v) = row?;
            let (minute, row_kind, subject) = k.value();
            if kind.is_some_and(|wanted| wanted != row_kind) {
                continue;
            }
            let record = codec::decode(
                SECURITY_EVENTS.name(),
                format!("{minute}/{row_kind}/{subject}"),
                v.value(),
            )?;
            out.push(EventRow {
                minute,
                kind: row_kind.to_string(),
                subject: subject.to_string(),
                record,
            });
        }
        Ok(out)
    }

    /// The block of `ip`, if one is stored.
    pub fn block(&self, ip: &str) -> Result<Option<BlockRecord>, StoreError> {
        match self.blocks.get(ip)? {
            Some(v) => Ok(Some(codec::decode(SECURITY_BLOCKS.name(), ip, v.value())?)),
            None => Ok(None),
        }
    }

    /// Every stored block, by address.
    pub fn all_blocks(&self) -> Result<Vec<(String, BlockRecord)>, StoreError> {
        let mut out = Vec::new();
        for row in self.blocks.iter()? {
            let (k, v) = row?;
            let ip = k.value().to_string();
            let record = codec::decode(SECURITY_BLOCKS.name(), &ip, v.value())?;
            out.push((ip, record));
        }
        Ok(out)
    }
}
