//! The security room's tables, opened together per transaction: automatic blocks. This is the
//! only code of the room that names their definitions.

use redb::{ReadOnlyTable, ReadTransaction, ReadableTable, Table, TableHandle, WriteTransaction};

use super::model::BlockRecord;
use crate::store::StoreError;
use crate::store::codec;
use crate::store::tables::security::SECURITY_BLOCKS;

/// The security tables of one transaction.
pub struct SecurityTables<B> {
    /// Automatic blocks: client address → block record.
    pub blocks: B,
}

/// The security tables of a read transaction.
pub type SecurityRead = SecurityTables<ReadOnlyTable<&'static str, &'static [u8]>>;

/// The security tables of a write transaction.
pub type SecurityWrite<'tx> = SecurityTables<Table<'tx, &'static str, &'static [u8]>>;

impl SecurityRead {
    /// Opens the tables in a read transaction.
    pub fn open(tx: &ReadTransaction) -> Result<Self, StoreError> {
        Ok(SecurityTables {
            blocks: tx.open_table(SECURITY_BLOCKS)?,
        })
    }
}

impl<'tx> SecurityWrite<'tx> {
    /// Opens the tables in a write transaction.
    pub fn open(tx: &'tx WriteTransaction) -> Result<Self, StoreError> {
        Ok(SecurityTables {
            blocks: tx.open_table(SECURITY_BLOCKS)?,
        })
    }

    /// Stores the block of `ip`.
    pub fn put_block(&mut self, ip: &str, record: &BlockRecord) -> Result<(), StoreError> {
        self.blocks.insert(ip, codec::encode(record).as_slice())?;
        Ok(())
    }

    /// Removes the block of `ip`; whether there was one.
    pub fn remove_block(&mut self, ip: &str) -> Result<bool, StoreError> {
        Ok(self.blocks.remove(ip)?.is_some())
    }
}

impl<B: ReadableTable<&'static str, &'static [u8]>> SecurityTables<B> {
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
