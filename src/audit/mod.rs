//! The audit log: an append-only blake3 hash chain with Ed25519-signed checkpoints.
//!
//! Every state change appends its entry inside the same write transaction as the change
//! ([`Audit::append`]). Each entry's hash covers its sequence number, the previous entry's hash
//! and an unambiguous (length-prefixed) encoding of its fields, so editing any byte breaks the
//! chain from that entry on. Every `checkpoint_every` entries, and at most every
//! `checkpoint_interval` otherwise, a checkpoint {seq, head hash, time} is signed with a key kept
//! in `<data_dir>/audit-signing.key` (never in the database): deleting the newest entries, or
//! rewriting the whole chain consistently, no longer matches the signed checkpoints.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use ed25519_dalek::pkcs8::{DecodePrivateKey, EncodePrivateKey};
use ed25519_dalek::{Signature, Signer, SigningKey, Verifier, VerifyingKey};
use redb::{ReadTransaction, ReadableTable, WriteTransaction};
use serde::{Deserialize, Serialize};

use crate::clock::Millis;
use crate::events::EventBus;
use crate::fsutil;
use crate::store::codec::Record;
use crate::store::{StoreError, TransactionHook};

pub mod tables;

use tables::{AuditRead, AuditWrite, decode_checkpoint, decode_entry};

/// File name of the checkpoint signing key inside the data dir.
pub const SIGNING_KEY_FILE: &str = "audit-signing.key";

/// The actor recorded for changes keel makes by itself (or the CLI makes offline).
pub const SYSTEM_ACTOR: &str = "system";

const ENTRY_HASH_CONTEXT: &str = "keel audit entry v1";
const CHECKPOINT_CONTEXT: &[u8] = b"keel audit checkpoint v1";

/// Errors of the audit room.
#[derive(Debug, thiserror::Error)]
pub enum AuditError {
    /// The signing key file could not be read, parsed or created.
    #[error("audit signing key {path}: {reason}")]
    SigningKey {
        /// The key file.
        path: PathBuf,
        /// What went wrong.
        reason: String,
    },
    /// The store failed.
    #[error(transparent)]
    Store(#[from] StoreError),
}

/// A change to record: who did what to which thing, with details.
#[derive(Debug, Clone)]
pub struct Event {
    /// Key id of the caller, or [`SYSTEM_ACTOR`].
    pub actor: String,
    /// What was done, e.g. `key.create`.
    pub action: String,
    /// What it was done to, e.g. a key id.
    pub target: String,
    /// Further facts as JSON (never secrets).
    pub detail: serde_json::Value,
}

impl Event {
    /// An event with the given actor, action and target and no details.
    pub fn new(
        actor: impl Into<String>,
        action: impl Into<String>,
        target: impl Into<String>,
    ) -> Self {
        Event {
            actor: actor.into(),
            action: action.into(),
            target: target.into(),
            detail: serde_json::Value::Null,
        }
    }

    /// Adds details.
    pub fn with_detail(mut self, detail: serde_json::Value) -> Self {
        self.detail = detail;
        self
    }
}

/// One stored entry of the chain.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Entry {
    /// Position in the chain, from 1.
    pub seq: u64,
    /// When it was written (epoch ms).
    pub time_ms: Millis,
    /// Key id or `system`.
    pub actor: String,
    /// What was done.
    pub action: String,
    /// What it was done to.
    pub target: String,
    /// Details as JSON text.
    pub detail: String,
    /// Hash of the previous entry (zeros for the first).
    pub prev_hash: [u8; 32],
    /// This entry's hash.
    pub hash: [u8; 32],
}

impl Record for Entry {
    const VERSION: u8 = 1;
}

impl Entry {
    /// The hash this entry should carry, recomputed from its fields.
    pub fn compute_hash(&self) -> [u8; 32] {
        let mut h = blake3::Hasher::new_derive_key(ENTRY_HASH_CONTEXT);
        h.update(&self.seq.to_be_bytes());
        h.update(&self.prev_hash);
        h.update(&self.time_ms.to_be_bytes());
        for field in [&self.actor, &self.action, &self.target, &self.detail] {
            h.update(&(field.len() as u64).to_be_bytes());
            h.update(field.as_bytes());
        }
        *h.finalize().as_bytes()
    }
}

/// A signed statement of the chain's head at some point.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Checkpoint {
    /// The sequence number covered.
    pub seq: u64,
    /// The hash of entry `seq`.
    pub head_hash: [u8; 32],
    /// When it was signed (epoch ms).
    pub time_ms: Millis,
    /// Ed25519 signature over the three fields above.
    pub signature: Vec<u8>,
}

impl Record for Checkpoint {
    const VERSION: u8 = 1;
}

impl Checkpoint {
    fn message(seq: u64, head_hash: &[u8; 32], time_ms: Millis) -> Vec<u8> {
        let mut m = CHECKPOINT_CONTEXT.to_vec();
        m.extend_from_slice(&seq.to_be_bytes());
        m.extend_from_slice(head_hash);
        m.extend_from_slice(&time_ms.to_be_bytes());
        m
    }
}

/// The newest entry's position and hash.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Head {
    /// Its sequence number (0 when the log is empty).
    pub seq: u64,
    /// Its hash, hex (zeros when empty).
    pub hash: String,
    /// When it was written (epoch ms), if any.
    pub time_ms: Option<Millis>,
}

/// What a verification found.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct VerifyReport {
    /// Whether the whole chain and every checkpoint checked out.
    pub ok: bool,
    /// Entries checked.
    pub entries: u64,
    /// Checkpoints checked.
    pub checkpoints: u64,
    /// The first sequence number found wrong.
    pub first_bad_seq: Option<u64>,
    /// Why it is wrong.
    pub reason: Option<String>,
}

impl std::fmt::Display for VerifyReport {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match (self.ok, self.first_bad_seq, &self.reason) {
            (true, _, _) => write!(
                f,
                "OK: {} entries, {} signed checkpoints verified",
                self.entries, self.checkpoints
            ),
            (false, Some(seq), Some(reason)) => write!(f, "FAILED at seq {seq}: {reason}"),
            (false, _, reason) => write!(f, "FAILED: {}", reason.as_deref().unwrap_or("unknown")),
        }
    }
}

/// The audit room: the signing key and the checkpoint policy.
pub struct Audit {
    signing_key: SigningKey,
    checkpoint_every: u64,
    watch: Arc<AppendWatch>,
}

/// Announces the chain's new head (`Event::AuditAppended`) once the write transaction that
/// appended it committed: a store [`TransactionHook`] that keeps the newest sequence number
/// appended in the current transaction and forgets it when a transaction begins again.
#[derive(Debug, Default)]
pub struct AppendWatch {
    /// Newest sequence number appended in the open transaction; 0 for none.
    tentative: AtomicU64,
    events: Option<Arc<EventBus>>,
}

impl AppendWatch {
    /// A watch publishing on `events`.
    pub fn new(events: Arc<EventBus>) -> AppendWatch {
        AppendWatch {
            tentative: AtomicU64::new(0),
            events: Some(events),
        }
    }

    fn appended(&self, seq: u64) {
        self.tentative.fetch_max(seq, Ordering::SeqCst);
    }
}

impl TransactionHook for AppendWatch {
    fn begun(&self) {
        self.tentative.store(0, Ordering::SeqCst);
    }

    fn committed(&self) {
        let seq = self.tentative.swap(0, Ordering::SeqCst);
        if let (Some(events), true) = (&self.events, seq > 0) {
            events.publish(crate::events::Event::AuditAppended { seq });
        }
    }
}

impl Audit {
    /// Loads the signing key from `<data_dir>/audit-signing.key`, creating it (mode 0600) on
    /// first start.
    pub fn load_or_create(data_dir: &Path, checkpoint_every: u64) -> Result<Audit, AuditError> {
        let path = data_dir.join(SIGNING_KEY_FILE);
        let signing_key = if path.exists() {
            Self::read_key(&path)?
        } else {
            let key = SigningKey::from_bytes(&fsutil::random_bytes::<32>());
            let pem = key
                .to_pkcs8_pem(Default::default())
                .map_err(|e| key_error(&path, e))?;
            fsutil::create_secret_file(&path, pem.as_bytes()).map_err(|e| key_error(&path, e))?;
            tracing::info!(path = %path.display(), "created audit signing key");
            key
        };
        Ok(Audit {
            signing_key,
            checkpoint_every: checkpoint_every.max(1),
            watch: Arc::default(),
        })
    }

    /// Loads an existing signing key (for offline verification); never creates one.
    pub fn load(data_dir: &Path, checkpoint_every: u64) -> Result<Audit, AuditError> {
        let path = data_dir.join(SIGNING_KEY_FILE);
        Ok(Audit {
            signing_key: Self::read_key(&path)?,
            checkpoint_every: checkpoint_every.max(1),
            watch: Arc::default(),
        })
    }

    /// Reports appends through `watch` (registered as a hook of the store this audit writes
    /// to), so they are announced after their commit.
    pub fn with_watch(mut self, watch: Arc<AppendWatch>) -> Audit {
        self.watch = watch;
        self
    }

    fn read_key(path: &Path) -> Result<SigningKey, AuditError> {
        let pem = std::fs::read_to_string(path).map_err(|e| key_error(path, e))?;
        SigningKey::from_pkcs8_pem(&pem).map_err(|e| key_error(path, e))
    }

    /// The public half of the signing key, hex.
    pub fn public_key_hex(&self) -> String {
        hex(self.signing_key.verifying_key().as_bytes())
    }

    /// Appends `event` inside the caller's write transaction and returns its sequence number.
    /// Writes a signed checkpoint too when the new entry completes a block of
    /// `checkpoint_every` entries.
    pub fn append(
        &self,
        tx: &WriteTransaction,
        now_ms: Millis,
        event: &Event,
    ) -> Result<u64, StoreError> {
        let mut tables = AuditWrite::open(tx)?;
        let (seq, prev_hash) = match tables.last_entry()? {
            Some(prev) => (prev.seq + 1, prev.hash),
            None => (1, [0u8; 32]),
        };
        let mut entry = Entry {
            seq,
            time_ms: now_ms,
            actor: event.actor.clone(),
            action: event.action.clone(),
            target: event.target.clone(),
            detail: event.detail.to_string(),
            prev_hash,
            hash: [0u8; 32],
        };
        entry.hash = entry.compute_hash();
        tables.put_entry(&entry)?;
        if seq % self.checkpoint_every == 0 {
            self.write_checkpoint(&mut tables, seq, entry.hash, now_ms)?;
        }
        self.watch.appended(seq);
        Ok(seq)
    }

    /// Signs a checkpoint of the current head if entries were added since the last checkpoint
    /// and the last one is at least `min_interval_ms` old. Returns the checkpoint written.
    pub fn checkpoint_if_due(
        &self,
        tx: &WriteTransaction,
        now_ms: Millis,
        min_interval_ms: i64,
    ) -> Result<Option<Checkpoint>, StoreError> {
        let mut tables = AuditWrite::open(tx)?;
        let Some(head) = tables.last_entry()? else {
            return Ok(None);
        };
        let last = tables.last_checkpoint()?;
        let due = match &last {
            None => true,
            Some(cp) => cp.seq < head.seq && now_ms - cp.time_ms >= min_interval_ms,
        };
        if !due {
            return Ok(None);
        }
        self.write_checkpoint(&mut tables, head.seq, head.hash, now_ms)
            .map(Some)
    }

    fn write_checkpoint(
        &self,
        tables: &mut AuditWrite<'_>,
        seq: u64,
        head_hash: [u8; 32],
        now_ms: Millis,
    ) -> Result<Checkpoint, StoreError> {
        let signature = self
            .signing_key
            .sign(&Checkpoint::message(seq, &head_hash, now_ms));
        let checkpoint = Checkpoint {
            seq,
            head_hash,
            time_ms: now_ms,
            signature: signature.to_bytes().to_vec(),
        };
        tables.put_checkpoint(&checkpoint)?;
        Ok(checkpoint)
    }

    /// Checks the whole chain and every checkpoint; reports the first bad sequence number.
    pub fn verify(&self, tx: &ReadTransaction) -> Result<VerifyReport, StoreError> {
        verify_with(&self.signing_key.verifying_key(), tx)
    }
}

fn key_error(path: &Path, e: impl std::fmt::Display) -> AuditError {
    AuditError::SigningKey {
        path: path.to_path_buf(),
        reason: e.to_string(),
    }
}

/// Lowercase hex of `bytes`.
pub fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

fn failed(entries: u64, checkpoints: u64, seq: u64, reason: String) -> VerifyReport {
    VerifyReport {
        ok: false,
        entries,
        checkpoints,
        first_bad_seq: Some(seq),
        reason: Some(reason),
    }
}

fn verify_with(key: &VerifyingKey, tx: &ReadTransaction) -> Result<VerifyReport, StoreError> {
    let tables = AuditRead::open(tx)?;
    let (entries, checkpoint_table) = (&tables.entries, &tables.checkpoints);
    let mut hashes_at_checkpoints = std::collections::HashMap::new();
    let checkpoint_seqs: std::collections::HashSet<u64> = checkpoint_table
        .iter()?
        .map(|r| r.map(|(k, _)| k.value()))
        .collect::<Result<_, _>>()?;

    let mut expected = 1u64;
    let mut prev_hash = [0u8; 32];
    for row in entries.iter()? {
        let (k, v) = row?;
        let key_seq = k.value();
        let checked = expected - 1;
        if key_seq != expected {
            return Ok(failed(
                checked,
                0,
                expected,
                format!("entry {expected} is missing (the next stored entry is {key_seq})"),
            ));
        }
        let entry: Entry = match decode_entry(key_seq, v.value()) {
            Ok(e) => e,
            Err(e) => {
                return Ok(failed(
                    checked,
                    0,
                    key_seq,
                    format!("entry cannot be decoded: {e}"),
                ));
            }
        };
        if entry.seq != key_seq {
            return Ok(failed(
                checked,
                0,
                key_seq,
                format!("entry stored at {key_seq} says seq {}", entry.seq),
            ));
        }
        if entry.prev_hash != prev_hash {
            return Ok(failed(
                checked,
                0,
                key_seq,
                "prev_hash does not match the previous entry's hash".into(),
            ));
        }
        if entry.compute_hash() != entry.hash {
            return Ok(failed(
                checked,
                0,
                key_seq,
                "hash does not match the entry's contents (the entry was changed)".into(),
            ));
        }
        if checkpoint_seqs.contains(&key_seq) {
            hashes_at_checkpoints.insert(key_seq, entry.hash);
        }
        prev_hash = entry.hash;
        expected += 1;
    }
    let count = expected - 1;

    let mut checked_checkpoints = 0u64;
    for row in checkpoint_table.iter()? {
        let (k, v) = row?;
        let cp_seq = k.value();
        let checkpoint: Checkpoint = match decode_checkpoint(cp_seq, v.value()) {
            Ok(c) => c,
            Err(e) => {
                return Ok(failed(
                    count,
                    checked_checkpoints,
                    cp_seq,
                    format!("checkpoint cannot be decoded: {e}"),
                ));
            }
        };
        let signature = Signature::from_slice(&checkpoint.signature).ok();
        let message =
            Checkpoint::message(checkpoint.seq, &checkpoint.head_hash, checkpoint.time_ms);
        let signed = signature.is_some_and(|s| key.verify(&message, &s).is_ok());
        if !signed || checkpoint.seq != cp_seq {
            return Ok(failed(
                count,
                checked_checkpoints,
                cp_seq,
                "checkpoint signature is not valid for this data dir's signing key".into(),
            ));
        }
        match hashes_at_checkpoints.get(&cp_seq) {
            None => {
                return Ok(failed(
                    count,
                    checked_checkpoints,
                    count + 1,
                    format!(
                        "the log ends at seq {count} but a signed checkpoint covers seq {cp_seq}: entries were deleted"
                    ),
                ));
            }
            Some(hash) if *hash != checkpoint.head_hash => {
                return Ok(failed(
                    count,
                    checked_checkpoints,
                    cp_seq,
                    format!(
                        "entry {cp_seq} differs from the signed checkpoint: the chain up to it was rewritten"
                    ),
                ));
            }
            Some(_) => checked_checkpoints += 1,
        }
    }
    Ok(VerifyReport {
        ok: true,
        entries: count,
        checkpoints: checked_checkpoints,
        first_bad_seq: None,
        reason: None,
    })
}

/// The newest entry, as a [`Head`].
pub fn head(tx: &ReadTransaction) -> Result<Head, StoreError> {
    Ok(match AuditRead::open(tx)?.last_entry()? {
        Some(e) => Head {
            seq: e.seq,
            hash: hex(&e.hash),
            time_ms: Some(e.time_ms),
        },
        None => Head {
            seq: 0,
            hash: hex(&[0u8; 32]),
            time_ms: None,
        },
    })
}

/// Up to `limit` entries with seq greater than `after`, oldest first.
pub fn list(tx: &ReadTransaction, after: u64, limit: usize) -> Result<Vec<Entry>, StoreError> {
    AuditRead::open(tx)?.entries_after(after, limit)
}

/// Up to `limit` newest checkpoints, newest first.
pub fn checkpoints(tx: &ReadTransaction, limit: usize) -> Result<Vec<Checkpoint>, StoreError> {
    AuditRead::open(tx)?.newest_checkpoints(limit)
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use redb::ReadableDatabase;

    use super::*;
    use crate::store::{Store, StoreOptions};

    fn setup(every: u64) -> (tempfile::TempDir, Arc<Store>, Arc<Audit>) {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(
            &dir.path().join("keel.redb"),
            StoreOptions {
                max_batch: 16,
                commit_observer: None,
                ..Default::default()
            },
        )
        .unwrap();
        let audit = Audit::load_or_create(dir.path(), every).unwrap();
        (dir, Arc::new(store), Arc::new(audit))
    }

    fn append_n(store: &Store, audit: &Arc<Audit>, n: u64) {
        for i in 0..n {
            let audit = Arc::clone(audit);
            store
                .write_blocking(move |tx| {
                    audit.append(
                        tx,
                        1_000 + i as i64,
                        &Event::new("system", "test.event", format!("t{i}")),
                    )
                })
                .unwrap();
        }
    }

    fn verify(store: &Store, audit: &Audit) -> VerifyReport {
        store.read_blocking(|tx| audit.verify(tx)).unwrap()
    }

    #[test]
    fn chain_verifies_and_checkpoints_every_n() {
        let (_d, store, audit) = setup(10);
        append_n(&store, &audit, 25);
        let report = verify(&store, &audit);
        assert!(report.ok, "{report}");
        assert_eq!((report.entries, report.checkpoints), (25, 2));
        let cps = store.read_blocking(|tx| checkpoints(tx, 10)).unwrap();
        assert_eq!(cps.iter().map(|c| c.seq).collect::<Vec<_>>(), vec![20, 10]);
        let h = store.read_blocking(head).unwrap();
        assert_eq!(h.seq, 25);
    }

    #[test]
    fn key_file_is_private_and_reused() {
        let (dir, _store, audit) = setup(10);
        let path = dir.path().join(SIGNING_KEY_FILE);
        assert_eq!(fsutil::mode_of(&path).unwrap(), 0o600);
        let again = Audit::load(dir.path(), 10).unwrap();
        assert_eq!(again.public_key_hex(), audit.public_key_hex());
    }

    #[test]
    fn a_foreign_signing_key_fails_checkpoints() {
        let (_d, store, audit) = setup(5);
        append_n(&store, &audit, 5);
        let other_dir = tempfile::tempdir().unwrap();
        let other = Audit::load_or_create(other_dir.path(), 5).unwrap();
        let report = verify(&store, &other);
        assert!(!report.ok);
        assert_eq!(report.first_bad_seq, Some(5));
    }

    #[test]
    fn checkpoint_if_due_respects_interval_and_movement() {
        let (_d, store, audit) = setup(1000);
        append_n(&store, &audit, 3);
        let a = Arc::clone(&audit);
        let first = store
            .write_blocking(move |tx| a.checkpoint_if_due(tx, 10_000, 3_600_000))
            .unwrap();
        assert_eq!(first.map(|c| c.seq), Some(3));
        let a = Arc::clone(&audit);
        let none = store
            .write_blocking(move |tx| a.checkpoint_if_due(tx, 20_000_000, 3_600_000))
            .unwrap();
        assert!(none.is_none(), "head did not move");
        append_n(&store, &audit, 1);
        let a = Arc::clone(&audit);
        let early = store
            .write_blocking(move |tx| a.checkpoint_if_due(tx, 20_000, 3_600_000))
            .unwrap();
        assert!(early.is_none(), "interval not elapsed");
        let a = Arc::clone(&audit);
        let later = store
            .write_blocking(move |tx| a.checkpoint_if_due(tx, 3_700_000, 3_600_000))
            .unwrap();
        assert_eq!(later.map(|c| c.seq), Some(4));
        assert!(verify(&store, &audit).ok);
    }

    #[test]
    fn hash_covers_every_field() {
        let base = Entry {
            seq: 3,
            time_ms: 5,
            actor: "a".into(),
            action: "b".into(),
            target: "c".into(),
            detail: "{}".into(),
            prev_hash: [1; 32],
            hash: [0; 32],
        };
        let h = base.compute_hash();
        let variants = [
            Entry {
                seq: 4,
                ..base.clone()
            },
            Entry {
                time_ms: 6,
                ..base.clone()
            },
            Entry {
                actor: "ab".into(),
                action: "".into(),
                ..base.clone()
            },
            Entry {
                target: "d".into(),
                ..base.clone()
            },
            Entry {
                detail: "{ }".into(),
                ..base.clone()
            },
            Entry {
                prev_hash: [2; 32],
                ..base.clone()
            },
        ];
        for v in variants {
            assert_ne!(v.compute_hash(), h, "{v:?}");
        }
    }

    #[test]
    fn verify_on_read_only_db_works() {
        let (dir, store, audit) = setup(2);
        append_n(&store, &audit, 4);
        drop(store);
        let db = redb::ReadOnlyDatabase::open(dir.path().join("keel.redb")).unwrap();
        let tx = db.begin_read().unwrap();
        assert!(audit.verify(&tx).unwrap().ok);
    }
}
