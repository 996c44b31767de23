//! API keys and roles: creation, keyed-hash storage, constant-time checks, expiry, revocation,
//! rotation with an overlap window, and `last_used_at` kept in memory and flushed in batches.
//!
//! A key looks like `keel_<id>_<secret>`: the id (a UUIDv7, hex) finds the record, the secret
//! (256 random bits) is checked by comparing its keyed blake3 hash in constant time. Only the
//! hash is stored; the full key is shown once, when it is created.

use std::collections::HashMap;
use std::path::Path;
use std::sync::{Arc, Mutex, RwLock};

use base64::Engine;
use redb::WriteTransaction;
use serde::{Deserialize, Serialize};
use subtle::ConstantTimeEq;
use uuid::Uuid;

use crate::audit::{self, Audit, Event};

pub mod model;
pub mod sessions;
pub mod tables;

use crate::clock::{Millis, SharedClock};
use crate::config::MAX_ROTATION_OVERLAP_SECONDS;
use crate::events::{Event as BusEvent, EventBus};
use crate::fsutil;
use crate::store::codec::Record;
use crate::store::{Store, StoreError};
use tables::{AuthRead, AuthWrite};

/// Prefix that makes keel keys recognisable (e.g. to secret scanners).
pub const KEY_PREFIX: &str = "keel_";
/// File in the data dir holding the generated key-hash secret when none is configured.
pub const KEY_HASH_SECRET_FILE: &str = "key-hash.secret";
/// The longest lifetime a key may be given: 5 years (1826 days).
pub const MAX_KEY_LIFETIME_MS: Millis = 1826 * 86_400_000;

/// File in the data dir the first admin key is written to.
pub const INITIAL_ADMIN_KEY_FILE: &str = "initial-admin-key";

/// What a key may do; each role includes the ones below it.
#[derive(
    Debug,
    Clone,
    Copy,
    PartialEq,
    Eq,
    PartialOrd,
    Ord,
    Hash,
    Serialize,
    Deserialize,
    clap::ValueEnum,
)]
#[serde(rename_all = "lowercase")]
pub enum Role {
    /// Read-only access.
    Viewer,
    /// Machine clients: submit work.
    Service,
    /// People running keel: act on work and state.
    Operator,
    /// Everything, including key management.
    Admin,
}

impl Role {
    /// Every role, lowest first.
    pub const ALL: [Role; 4] = [Role::Viewer, Role::Service, Role::Operator, Role::Admin];

    /// The role's name as used in the API and CLI.
    pub fn as_str(self) -> &'static str {
        match self {
            Role::Viewer => "viewer",
            Role::Service => "service",
            Role::Operator => "operator",
            Role::Admin => "admin",
        }
    }
}

impl std::fmt::Display for Role {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

impl std::str::FromStr for Role {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Role::ALL
            .into_iter()
            .find(|r| r.as_str() == s)
            .ok_or_else(|| {
                format!("unknown role `{s}` (expected viewer, service, operator or admin)")
            })
    }
}

/// Errors of the auth room.
#[derive(Debug, thiserror::Error)]
pub enum AuthError {
    /// No key was presented.
    #[error("an API key is required (Authorization: Bearer keel_...)")]
    MissingKey,
    /// The key is malformed, unknown, or its secret does not match.
    #[error("the API key is not valid")]
    InvalidKey,
    /// The key has expired.
    #[error("the API key expired")]
    Expired,
    /// The key was revoked.
    #[error("the API key was revoked")]
    Revoked,
    /// The key's role is too low.
    #[error("this needs the {needed} role; the key has {has}")]
    Forbidden {
        /// Role the route needs.
        needed: Role,
        /// Role the key has.
        has: Role,
    },
    /// No key with this id.
    #[error("no API key with id {0}")]
    NotFound(String),
    /// The request is not acceptable (e.g. an expiry in the past).
    #[error("{0}")]
    Invalid(String),
    /// Reading or creating a secret file failed.
    #[error("{0}")]
    SecretFile(String),
    /// Revoking this key would leave no active admin key (give `force` to do it anyway).
    #[error(
        "key {0} is the last active admin key: revoking it leaves nobody able to manage keys (force it with ?force=true or --force)"
    )]
    LastAdmin(String),
    /// The store failed.
    #[error(transparent)]
    Store(#[from] StoreError),
}

/// A stored API key (the secret itself is never stored).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct KeyRecord {
    /// Time-ordered id.
    pub id: Uuid,
    /// A name for people.
    pub name: String,
    /// What the key may do.
    pub role: Role,
    /// Keyed blake3 hash of the secret part.
    pub secret_hash: [u8; 32],
    /// When it was created (epoch ms).
    pub created_at: Millis,
    /// Who created it (key id or `system`).
    pub created_by: String,
    /// When it stops working, if ever.
    pub expires_at: Option<Millis>,
    /// When it was revoked, if it was.
    pub revoked_at: Option<Millis>,
    /// The key this one replaced by rotation.
    pub rotated_from: Option<Uuid>,
    /// Last time a request used it, as of the last flush.
    pub last_used_at: Option<Millis>,
}

impl Record for KeyRecord {
    const VERSION: u8 = 1;
}

/// A key as shown in lists: everything but the hash.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct KeyView {
    /// Id.
    pub id: Uuid,
    /// Name.
    pub name: String,
    /// Role.
    pub role: Role,
    /// The recognisable start of the key, e.g. `keel_0193ab12…`.
    pub prefix: String,
    /// `active`, `expired` or `revoked`.
    pub status: &'static str,
    /// Created (epoch ms).
    pub created_at: Millis,
    /// Creator.
    pub created_by: String,
    /// Expiry (epoch ms).
    pub expires_at: Option<Millis>,
    /// Revocation (epoch ms).
    pub revoked_at: Option<Millis>,
    /// Predecessor by rotation.
    pub rotated_from: Option<Uuid>,
    /// Last use (epoch ms), including uses not yet flushed to disk.
    pub last_used_at: Option<Millis>,
}

/// A key just created: the record and the full key, shown this once.
#[derive(Debug, Clone)]
pub struct CreatedKey {
    /// What is stored.
    pub view: KeyView,
    /// The full key; never stored, never logged.
    pub token: String,
}

/// The caller a key identifies.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Principal {
    /// Key id.
    pub key_id: Uuid,
    /// Key name.
    pub name: String,
    /// Key role.
    pub role: Role,
}

impl Principal {
    /// The actor string recorded in the audit log.
    pub fn actor(&self) -> String {
        self.key_id.to_string()
    }

    /// Fails with [`AuthError::Forbidden`] unless this principal has at least `needed`.
    pub fn require(&self, needed: Role) -> Result<(), AuthError> {
        if self.role >= needed {
            Ok(())
        } else {
            Err(AuthError::Forbidden {
                needed,
                has: self.role,
            })
        }
    }
}

/// What to create.
#[derive(Debug, Clone)]
pub struct NewKey {
    /// Name for people.
    pub name: String,
    /// Role.
    pub role: Role,
    /// Expiry (epoch ms), if any.
    pub expires_at: Option<Millis>,
}

/// How to rotate a key.
#[derive(Debug, Clone, Copy)]
pub struct Rotation {
    /// How long the old key keeps working (0 to 30 days).
    pub overlap_ms: i64,
    /// The successor's expiry; `None` keeps the old key's.
    pub expires_at: Option<Millis>,
}

/// Seconds as milliseconds, saturating instead of overflowing on absurd durations.
pub fn secs_to_ms(secs: u64) -> Millis {
    secs.saturating_mul(1000).min(i64::MAX as u64) as i64
}

/// Whether a key works at `now`: neither revoked nor expired.
fn is_active(record: &KeyRecord, now: Millis) -> bool {
    record.revoked_at.is_none() && record.expires_at.is_none_or(|t| t > now)
}

/// The auth room: keys cached in memory (the store is the source of truth).
pub struct Auth {
    store: Arc<Store>,
    audit: Arc<Audit>,
    clock: SharedClock,
    hash_key: [u8; 32],
    keys: RwLock<HashMap<Uuid, KeyRecord>>,
    last_used: Mutex<HashMap<Uuid, Millis>>,
    events: Arc<EventBus>,
    /// Keys already announced as expired (`KeyExpired` is published once per key).
    announced_expired: Mutex<std::collections::HashSet<Uuid>>,
}

impl Auth {
    /// Loads every key from the store into memory.
    pub fn load(
        store: Arc<Store>,
        audit: Arc<Audit>,
        clock: SharedClock,
        hash_key: [u8; 32],
        events: Arc<EventBus>,
    ) -> Result<Auth, AuthError> {
        let keys = store.read_blocking(|tx| -> Result<_, StoreError> {
            Ok(AuthRead::open(tx)?
                .all_keys()?
                .into_iter()
                .map(|record| (record.id, record))
                .collect::<HashMap<_, _>>())
        })?;
        let now = clock.now_ms();
        // Keys that had expired before this start are not news.
        let announced_expired = keys
            .values()
            .filter(|r| r.expires_at.is_some_and(|t| t <= now))
            .map(|r| r.id)
            .collect();
        Ok(Auth {
            store,
            audit,
            clock,
            hash_key,
            keys: RwLock::new(keys),
            last_used: Mutex::new(HashMap::new()),
            events,
            announced_expired: Mutex::new(announced_expired),
        })
    }

    /// The key-hash secret: derived from the configured value, or read from (created in)
    /// `<data_dir>/key-hash.secret`.
    pub fn hash_key(configured: Option<&str>, data_dir: &Path) -> Result<[u8; 32], AuthError> {
        if let Some(secret) = configured {
            return Ok(blake3::derive_key(
                "keel api key hash v1",
                secret.as_bytes(),
            ));
        }
        let path = data_dir.join(KEY_HASH_SECRET_FILE);
        let file_error =
            |e: std::io::Error| AuthError::SecretFile(format!("{}: {e}", path.display()));
        if !path.exists() {
            let secret = audit::hex(&fsutil::random_bytes::<32>());
            fsutil::create_secret_file(&path, secret.as_bytes()).map_err(file_error)?;
        }
        let secret = std::fs::read_to_string(&path).map_err(file_error)?;
        Ok(blake3::derive_key(
            "keel api key hash v1",
            secret.trim().as_bytes(),
        ))
    }

    fn hash_secret(&self, secret: &str) -> [u8; 32] {
        *blake3::keyed_hash(&self.hash_key, secret.as_bytes()).as_bytes()
    }

    /// Checks a presented key; on success remembers the use (in memory) and returns the caller.
    pub fn authenticate(&self, token: &str) -> Result<Principal, AuthError> {
        let (id, secret) = parse_token(token).ok_or(AuthError::InvalidKey)?;
        let presented = self.hash_secret(secret);
        let principal = {
            let keys = self.keys.read().unwrap_or_else(|e| e.into_inner());
            let record = keys.get(&id).ok_or(AuthError::InvalidKey)?;
            if !bool::from(record.secret_hash.ct_eq(&presented)) {
                return Err(AuthError::InvalidKey);
            }
            let now = self.clock.now_ms();
            if record.revoked_at.is_some() {
                return Err(AuthError::Revoked);
            }
            if record.expires_at.is_some_and(|t| t <= now) {
                return Err(AuthError::Expired);
            }
            Principal {
                key_id: record.id,
                name: record.name.clone(),
                role: record.role,
            }
        };
        self.last_used
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .insert(id, self.clock.now_ms());
        Ok(principal)
    }

    /// Every key, oldest first.
    pub fn list(&self) -> Vec<KeyView> {
        let keys = self.keys.read().unwrap_or_else(|e| e.into_inner());
        let pending = self
            .last_used
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone();
        let mut views: Vec<KeyView> = keys
            .values()
            .map(|r| self.view(r, pending.get(&r.id).copied()))
            .collect();
        views.sort_by_key(|v| v.id);
        views
    }

    /// One key.
    pub fn get(&self, id: Uuid) -> Result<KeyView, AuthError> {
        let keys = self.keys.read().unwrap_or_else(|e| e.into_inner());
        let pending = self
            .last_used
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .get(&id)
            .copied();
        keys.get(&id)
            .map(|r| self.view(r, pending))
            .ok_or_else(|| AuthError::NotFound(id.to_string()))
    }

    /// Whether any key exists at all (revoked and expired ones count).
    pub fn is_empty(&self) -> bool {
        self.keys
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .is_empty()
    }

    fn view(&self, r: &KeyRecord, pending_use: Option<Millis>) -> KeyView {
        let now = self.clock.now_ms();
        let status = if r.revoked_at.is_some() {
            "revoked"
        } else if r.expires_at.is_some_and(|t| t <= now) {
            "expired"
        } else {
            "active"
        };
        KeyView {
            id: r.id,
            name: r.name.clone(),
            role: r.role,
            prefix: format!("{KEY_PREFIX}{}…", &r.id.simple().to_string()[..12]),
            status,
            created_at: r.created_at,
            created_by: r.created_by.clone(),
            expires_at: r.expires_at,
            revoked_at: r.revoked_at,
            rotated_from: r.rotated_from,
            last_used_at: pending_use.max(r.last_used_at),
        }
    }

    fn new_record(
        &self,
        new: &NewKey,
        actor: &str,
        rotated_from: Option<Uuid>,
    ) -> Result<(KeyRecord, String), AuthError> {
        let name = new.name.trim();
        if name.is_empty() || name.len() > 100 {
            return Err(AuthError::Invalid(
                "name: must be 1 to 100 characters".into(),
            ));
        }
        let now = self.clock.now_ms();
        if new.expires_at.is_some_and(|t| t <= now) {
            return Err(AuthError::Invalid(
                "expires_at: must be in the future".into(),
            ));
        }
        if new
            .expires_at
            .is_some_and(|t| t > now.saturating_add(MAX_KEY_LIFETIME_MS))
        {
            return Err(AuthError::Invalid(
                "expires_at: must be at most 5 years (1826 days) from now".into(),
            ));
        }
        let id = Uuid::now_v7();
        let secret =
            base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(fsutil::random_bytes::<32>());
        let token = format!("{KEY_PREFIX}{}_{secret}", id.simple());
        let record = KeyRecord {
            id,
            name: name.to_string(),
            role: new.role,
            secret_hash: self.hash_secret(&secret),
            created_at: now,
            created_by: actor.to_string(),
            expires_at: new.expires_at,
            revoked_at: None,
            rotated_from,
            last_used_at: None,
        };
        Ok((record, token))
    }

    /// Puts committed records into the cache. Writers that commit in one order may get here in
    /// the other, so a record never undoes what the cache already knows: a revocation stays,
    /// an expiry only moves earlier, the last use only later.
    fn cache(&self, records: impl IntoIterator<Item = KeyRecord>) {
        let mut keys = self.keys.write().unwrap_or_else(|e| e.into_inner());
        for mut r in records {
            if let Some(known) = keys.get(&r.id) {
                r.revoked_at = r.revoked_at.or(known.revoked_at);
                r.expires_at = match (r.expires_at, known.expires_at) {
                    (Some(a), Some(b)) => Some(a.min(b)),
                    (a, b) => a.or(b),
                };
                r.last_used_at = r.last_used_at.max(known.last_used_at);
            }
            keys.insert(r.id, r);
        }
    }

    /// Creates a key; the full key is in the answer and nowhere else.
    pub async fn create(&self, actor: &str, new: NewKey) -> Result<CreatedKey, AuthError> {
        let (record, token) = self.new_record(&new, actor, None)?;
        let audit = Arc::clone(&self.audit);
        let now = self.clock.now_ms();
        let event =
            Event::new(actor, "key.create", record.id.to_string()).with_detail(serde_json::json!({
                "name": record.name, "role": record.role, "expires_at": record.expires_at,
            }));
        let stored = record.clone();
        self.store
            .write(move |tx| -> Result<(), AuthError> {
                put(tx, &stored)?;
                audit.append(tx, now, &event)?;
                Ok(())
            })
            .await?;
        let view = self.view(&record, None);
        self.events
            .publish(BusEvent::KeyCreated { key_id: record.id });
        self.cache([record]);
        Ok(CreatedKey { view, token })
    }

    /// Revokes a key at once. Revoking the last active admin key fails with
    /// [`AuthError::LastAdmin`] unless `force` is set, since nobody could manage keys after.
    ///
    /// The record is read and changed inside the write transaction, so a concurrent rotation
    /// can never write back an unrevoked copy.
    pub async fn revoke(&self, actor: &str, id: Uuid, force: bool) -> Result<KeyView, AuthError> {
        let now = self.clock.now_ms();
        let audit = Arc::clone(&self.audit);
        let actor = actor.to_string();
        let (record, changed) = self
            .store
            .write(move |tx| -> Result<(KeyRecord, bool), AuthError> {
                let mut tables = AuthWrite::open(tx)?;
                let mut record = tables
                    .key(id)?
                    .ok_or_else(|| AuthError::NotFound(id.to_string()))?;
                if record.revoked_at.is_some() {
                    return Ok((record, false));
                }
                if !force && record.role == Role::Admin && is_active(&record, now) {
                    let other_admins = tables
                        .all_keys()?
                        .iter()
                        .filter(|r| r.id != id && r.role == Role::Admin && is_active(r, now))
                        .count();
                    if other_admins == 0 {
                        return Err(AuthError::LastAdmin(id.to_string()));
                    }
                }
                record.revoked_at = Some(now);
                tables.put_key(&record)?;
                drop(tables);
                let event = Event::new(&actor, "key.revoke", id.to_string())
                    .with_detail(serde_json::json!({"name": record.name, "force": force}));
                audit.append(tx, now, &event)?;
                Ok((record, true))
            })
            .await?;
        self.cache([record.clone()]);
        if changed {
            self.events.publish(BusEvent::KeyRevoked { key_id: id });
        }
        Ok(self.view(&record, None))
    }

    /// Replaces a key with a new one of the same name and role. The successor expires when
    /// `rotation.expires_at` says, or else when the old key would have; the old one keeps
    /// working for `rotation.overlap_ms` more (or until its own expiry, if sooner), then expires.
    pub async fn rotate(
        &self,
        actor: &str,
        id: Uuid,
        rotation: Rotation,
    ) -> Result<CreatedKey, AuthError> {
        let max_overlap_ms = secs_to_ms(MAX_ROTATION_OVERLAP_SECONDS);
        if !(0..=max_overlap_ms).contains(&rotation.overlap_ms) {
            return Err(AuthError::Invalid(format!(
                "overlap_seconds: must be between 0 and {MAX_ROTATION_OVERLAP_SECONDS} (30 days), got {}",
                rotation.overlap_ms / 1000
            )));
        }
        let now = self.clock.now_ms();
        let (template, token) = self.new_record(
            &NewKey {
                name: "rotated".into(),
                role: Role::Viewer,
                expires_at: rotation.expires_at,
            },
            actor,
            Some(id),
        )?;
        let overlap_end = now.saturating_add(rotation.overlap_ms);
        let audit = Arc::clone(&self.audit);
        let actor = actor.to_string();
        let (old, new_record) = self
            .store
            .write(move |tx| -> Result<(KeyRecord, KeyRecord), AuthError> {
                let mut tables = AuthWrite::open(tx)?;
                let mut old = tables
                    .key(id)?
                    .ok_or_else(|| AuthError::NotFound(id.to_string()))?;
                if !is_active(&old, now) {
                    return Err(AuthError::Invalid(format!(
                        "key {id} is revoked or expired; create a new key instead"
                    )));
                }
                let successor = KeyRecord {
                    name: old.name.clone(),
                    role: old.role,
                    expires_at: rotation.expires_at.or(old.expires_at),
                    ..template.clone()
                };
                old.expires_at = Some(old.expires_at.map_or(overlap_end, |t| t.min(overlap_end)));
                tables.put_key(&old)?;
                tables.put_key(&successor)?;
                drop(tables);
                let event = Event::new(&actor, "key.rotate", id.to_string()).with_detail(
                    serde_json::json!({
                        "new_key_id": successor.id,
                        "new_key_expires_at": successor.expires_at,
                        "old_key_expires_at": old.expires_at,
                    }),
                );
                audit.append(tx, now, &event)?;
                Ok((old, successor))
            })
            .await?;
        let view = self.view(&new_record, None);
        self.events.publish(BusEvent::KeyCreated {
            key_id: new_record.id,
        });
        self.cache([old, new_record]);
        Ok(CreatedKey { view, token })
    }

    /// Publishes `KeyExpired` for each key whose expiry time has passed since the last look
    /// (the expiry itself is durable: it is the stored `expires_at`). Returns how many.
    pub fn announce_expired(&self) -> usize {
        let now = self.clock.now_ms();
        let expired: Vec<Uuid> = self
            .keys
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .values()
            .filter(|r| r.revoked_at.is_none() && r.expires_at.is_some_and(|t| t <= now))
            .map(|r| r.id)
            .collect();
        let mut announced = self
            .announced_expired
            .lock()
            .unwrap_or_else(|e| e.into_inner());
        let mut count = 0;
        for id in expired {
            if announced.insert(id) {
                self.events.publish(BusEvent::KeyExpired { key_id: id });
                count += 1;
            }
        }
        count
    }

    /// Writes remembered `last_used_at` times to the store in one transaction.
    /// Returns how many keys were updated.
    pub async fn flush_last_used(&self) -> Result<usize, AuthError> {
        let pending: HashMap<Uuid, Millis> =
            std::mem::take(&mut *self.last_used.lock().unwrap_or_else(|e| e.into_inner()));
        if pending.is_empty() {
            return Ok(0);
        }
        let updated: Vec<KeyRecord> = {
            let keys = self.keys.read().unwrap_or_else(|e| e.into_inner());
            pending
                .iter()
                .filter_map(|(id, at)| {
                    keys.get(id).map(|r| KeyRecord {
                        last_used_at: Some(r.last_used_at.map_or(*at, |t| t.max(*at))),
                        ..r.clone()
                    })
                })
                .collect()
        };
        let stored = updated.clone();
        let result = self
            .store
            .write(move |tx| write_last_used(tx, &stored))
            .await;
        if let Err(e) = result {
            // Put the times back so the next flush tries again.
            let mut last_used = self.last_used.lock().unwrap_or_else(|e| e.into_inner());
            for (id, at) in pending {
                let slot = last_used.entry(id).or_insert(at);
                *slot = (*slot).max(at);
            }
            return Err(e.into());
        }
        let mut keys = self.keys.write().unwrap_or_else(|e| e.into_inner());
        for r in &updated {
            if let Some(cached) = keys.get_mut(&r.id) {
                cached.last_used_at = r.last_used_at;
            }
        }
        Ok(updated.len())
    }

    /// On first start (no keys at all): creates an admin key and writes it to
    /// `<data_dir>/initial-admin-key` (mode 0600). Returns the file's path when it did.
    pub async fn ensure_initial_admin(
        &self,
        data_dir: &Path,
    ) -> Result<Option<std::path::PathBuf>, AuthError> {
        if !self.is_empty() {
            return Ok(None);
        }
        let path = data_dir.join(INITIAL_ADMIN_KEY_FILE);
        let (record, token) = self.new_record(
            &NewKey {
                name: "initial-admin".into(),
                role: Role::Admin,
                expires_at: None,
            },
            audit::SYSTEM_ACTOR,
            None,
        )?;
        // The file is written before the key is committed: a crash in between leaves no key,
        // so the next start makes a new one and replaces the file.
        let file_error =
            |e: std::io::Error| AuthError::SecretFile(format!("{}: {e}", path.display()));
        match std::fs::remove_file(&path) {
            Ok(()) => {}
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => return Err(file_error(e)),
        }
        fsutil::create_secret_file(&path, format!("{token}\n").as_bytes()).map_err(file_error)?;
        let audit = Arc::clone(&self.audit);
        let now = self.clock.now_ms();
        let event = Event::new(audit::SYSTEM_ACTOR, "key.create", record.id.to_string())
            .with_detail(
                serde_json::json!({"name": record.name, "role": record.role, "initial": true}),
            );
        let stored = record.clone();
        self.store
            .write(move |tx| -> Result<(), AuthError> {
                put(tx, &stored)?;
                audit.append(tx, now, &event)?;
                Ok(())
            })
            .await?;
        self.events
            .publish(BusEvent::KeyCreated { key_id: record.id });
        self.cache([record]);
        Ok(Some(path))
    }
}

/// Writes only the last-use time of each record, keeping whatever else changed meanwhile
/// (revocation, expiry).
fn write_last_used(tx: &WriteTransaction, records: &[KeyRecord]) -> Result<(), StoreError> {
    let mut tables = AuthWrite::open(tx)?;
    for r in records {
        if let Some(mut current) = tables.key(r.id)? {
            current.last_used_at = r.last_used_at;
            tables.put_key(&current)?;
        }
    }
    Ok(())
}

fn put(tx: &WriteTransaction, record: &KeyRecord) -> Result<(), StoreError> {
    AuthWrite::open(tx)?.put_key(record)
}

/// Splits `keel_<32 hex id>_<secret>` into id and secret.
fn parse_token(token: &str) -> Option<(Uuid, &str)> {
    let rest = token.trim().strip_prefix(KEY_PREFIX)?;
    let (id, secret) = rest.split_once('_')?;
    if id.len() != 32 || secret.len() < 32 {
        return None;
    }
    Some((Uuid::parse_str(id).ok()?, secret))
}

#[cfg(test)]
mod tests;
