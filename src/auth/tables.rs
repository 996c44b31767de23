//! The auth room's tables, opened together per transaction: API keys and dashboard sessions.
//! This is the only code of the room that names their definitions.

use redb::{ReadOnlyTable, ReadTransaction, ReadableTable, Table, TableHandle, WriteTransaction};
use uuid::Uuid;

use super::KeyRecord;
use super::model::SessionRecord;
use crate::store::StoreError;
use crate::store::codec;
use crate::store::tables::auth::{ADMIN_SESSIONS, ADMIN_SESSIONS_BY_KEY, API_KEYS};

/// The auth tables of one transaction: `K` holds the keys, `S` the sessions, `I` the index of
/// sessions by key.
pub struct AuthTables<K, S, I> {
    /// API keys: key id → key record.
    pub keys: K,
    /// Dashboard sessions: blake3 hash of the session token → session record.
    pub sessions: S,
    /// Sessions by key: (key id, token hash) → created at.
    pub sessions_by_key: I,
}

/// A session found through the index by key: its token hash, and its record (none when it is
/// no longer stored or cannot be read).
pub type KeySession = (Vec<u8>, Option<SessionRecord>);

/// The auth tables of a read transaction.
pub type AuthRead = AuthTables<
    ReadOnlyTable<u128, &'static [u8]>,
    ReadOnlyTable<&'static [u8], &'static [u8]>,
    ReadOnlyTable<(u128, &'static [u8]), i64>,
>;

/// The auth tables of a write transaction.
pub type AuthWrite<'tx> = AuthTables<
    Table<'tx, u128, &'static [u8]>,
    Table<'tx, &'static [u8], &'static [u8]>,
    Table<'tx, (u128, &'static [u8]), i64>,
>;

impl AuthRead {
    /// Opens the tables in a read transaction.
    pub fn open(tx: &ReadTransaction) -> Result<Self, StoreError> {
        Ok(AuthTables {
            keys: tx.open_table(API_KEYS)?,
            sessions: tx.open_table(ADMIN_SESSIONS)?,
            sessions_by_key: tx.open_table(ADMIN_SESSIONS_BY_KEY)?,
        })
    }
}

impl<'tx> AuthWrite<'tx> {
    /// Opens the tables in a write transaction.
    pub fn open(tx: &'tx WriteTransaction) -> Result<Self, StoreError> {
        Ok(AuthTables {
            keys: tx.open_table(API_KEYS)?,
            sessions: tx.open_table(ADMIN_SESSIONS)?,
            sessions_by_key: tx.open_table(ADMIN_SESSIONS_BY_KEY)?,
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
        self.sessions_by_key.insert(
            (record.key_id.as_u128(), hash.as_slice()),
            record.created_at,
        )?;
        Ok(())
    }

    /// Deletes a session and its index entry.
    pub fn remove_session(&mut self, hash: &[u8]) -> Result<(), StoreError> {
        let removed = self.sessions.remove(hash)?;
        let key_id = removed.and_then(|v| {
            codec::decode::<SessionRecord>(
                ADMIN_SESSIONS.name(),
                crate::audit::hex(hash),
                v.value(),
            )
            .ok()
            .map(|r| r.key_id)
        });
        if let Some(key_id) = key_id {
            self.sessions_by_key.remove((key_id.as_u128(), hash))?;
        }
        Ok(())
    }

    /// Deletes the index entry of a session of `key_id` that is no longer stored.
    pub fn remove_session_index(&mut self, key_id: Uuid, hash: &[u8]) -> Result<(), StoreError> {
        self.sessions_by_key.remove((key_id.as_u128(), hash))?;
        Ok(())
    }
}

impl<K, S, I> AuthTables<K, S, I>
where
    K: ReadableTable<u128, &'static [u8]>,
    S: ReadableTable<&'static [u8], &'static [u8]>,
    I: ReadableTable<(u128, &'static [u8]), i64>,
{
    /// The sessions of `key_id` from the index, oldest first: token hash and the session record
    /// (none when it is no longer stored or cannot be read).
    pub fn key_sessions(&self, key_id: Uuid) -> Result<Vec<KeySession>, StoreError> {
        let id = key_id.as_u128();
        let upper = [0xffu8; 33];
        let mut found = Vec::new();
        for row in self
            .sessions_by_key
            .range((id, &[][..])..=(id, &upper[..]))?
        {
            let (k, created_at) = row?;
            found.push((k.value().1.to_vec(), created_at.value()));
        }
        found.sort_by_key(|(_, created_at)| *created_at);
        found
            .into_iter()
            .map(|(hash, _)| {
                let record = self.session(&hash).ok().flatten();
                Ok((hash, record))
            })
            .collect()
    }

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

    /// The token hashes of every session that ended (idle timeout or maximum age) by `now`, or
    /// cannot be read: the retention pass's whole-table sweep, which also finds sessions signed in
    /// before the by-key index existed.
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

    /// The session stored under `hash`, if any.
    pub fn session(&self, hash: &[u8]) -> Result<Option<SessionRecord>, StoreError> {
        self.sessions
            .get(hash)?
            .map(|v| codec::decode(ADMIN_SESSIONS.name(), crate::audit::hex(hash), v.value()))
            .transpose()
    }
}
