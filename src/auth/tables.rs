//! The auth room's tables, opened together per transaction: API keys and dashboard sessions.
//! This is the only code of the room that names their definitions.

use redb::{ReadOnlyTable, ReadTransaction, ReadableTable, Table, TableHandle, WriteTransaction};
use uuid::Uuid;

use super::KeyRecord;
use super::model::SessionRecord;
use crate::store::StoreError;
use crate::store::codec;
use crate::store::tables::auth::{ADMIN_SESSIONS, API_KEYS};

/// The auth tables of one transaction: `K` holds the keys, `S` the sessions.
pub struct AuthTables<K, S> {
    /// API keys: key id → key record.
    pub keys: K,
    /// Dashboard sessions: blake3 hash of the session token → session record.
    pub sessions: S,
}

/// The auth tables of a read transaction.
pub type AuthRead =
    AuthTables<ReadOnlyTable<u128, &'static [u8]>, ReadOnlyTable<&'static [u8], &'static [u8]>>;

/// The auth tables of a write transaction.
pub type AuthWrite<'tx> =
    AuthTables<Table<'tx, u128, &'static [u8]>, Table<'tx, &'static [u8], &'static [u8]>>;

impl AuthRead {
    /// Opens the tables in a read transaction.
    pub fn open(tx: &ReadTransaction) -> Result<Self, StoreError> {
        Ok(AuthTables {
            keys: tx.open_table(API_KEYS)?,
            sessions: tx.open_table(ADMIN_SESSIONS)?,
        })
    }
}

impl<'tx> AuthWrite<'tx> {
    /// Opens the tables in a write transaction.
    pub fn open(tx: &'tx WriteTransaction) -> Result<Self, StoreError> {
        Ok(AuthTables {
            keys: tx.open_table(API_KEYS)?,
            sessions: tx.open_table(ADMIN_SESSIONS)?,
        })
    }

    /// Stores a key record.
    pub fn put_key(&mut self, record: &KeyRecord) -> Result<(), StoreError> {
        self.keys
            .insert(record.id.as_u128(), codec::encode(record).as_slice())?;
        Ok(())
    }

    /// Stores a session under its token hash.
    pub fn put_session(
        &mut self,
        hash: &[u8; 32],
        record: &SessionRecord,
    ) -> Result<(), StoreError> {
        self.sessions
            .insert(hash.as_slice(), codec::encode(record).as_slice())?;
        Ok(())
    }

    /// Deletes a session.
    pub fn remove_session(&mut self, hash: &[u8]) -> Result<(), StoreError> {
        self.sessions.remove(hash)?;
        Ok(())
    }
}

impl<K, S> AuthTables<K, S>
where
    K: ReadableTable<u128, &'static [u8]>,
    S: ReadableTable<&'static [u8], &'static [u8]>,
{
    /// Every stored key record.
    pub fn all_keys(&self) -> Result<Vec<KeyRecord>, StoreError> {
        let mut records = Vec::new();
        for row in self.keys.iter()? {
            let (k, v) = row?;
            records.push(codec::decode(
                API_KEYS.name(),
                Uuid::from_u128(k.value()),
                v.value(),
            )?);
        }
        Ok(records)
    }

    /// The key record `id`, if stored.
    pub fn key(&self, id: Uuid) -> Result<Option<KeyRecord>, StoreError> {
        self.keys
            .get(id.as_u128())?
            .map(|v| codec::decode(API_KEYS.name(), id, v.value()))
            .transpose()
    }

    /// The session stored under `hash`, if any.
    pub fn session(&self, hash: &[u8]) -> Result<Option<SessionRecord>, StoreError> {
        self.sessions
            .get(hash)?
            .map(|v| codec::decode(ADMIN_SESSIONS.name(), crate::audit::hex(hash), v.value()))
            .transpose()
    }

    /// Hashes of the sessions that ended by `now` (or cannot be read).
    pub fn ended_sessions(&self, now: crate::clock::Millis) -> Result<Vec<Vec<u8>>, StoreError> {
        let mut ended = Vec::new();
        for row in self.sessions.iter()? {
            let (k, v) = row?;
            let record: Result<SessionRecord, _> = codec::decode(
                ADMIN_SESSIONS.name(),
                crate::audit::hex(k.value()),
                v.value(),
            );
            if record.is_err() || record.is_ok_and(|s| s.expired(now)) {
                ended.push(k.value().to_vec());
            }
        }
        Ok(ended)
    }
}
