//! Tamper evidence: the redb file of a stopped keel is edited directly (one byte of a field, a
//! raw byte, a truncated record, deleted entries, a consistently rewritten chain, a foreign
//! signing key), and `keel audit verify`, `Audit::verify` and the HTTP endpoint name the entry.

use std::path::Path;

use keel::audit::{Audit, Entry, SIGNING_KEY_FILE, VerifyReport};
use keel::store::codec;
use keel::store::tables::audit::{AUDIT_CHECKPOINTS, AUDIT_ENTRIES};
use redb::{ReadableDatabase, ReadableTable, TableHandle};
use serde_json::json;

use crate::support::{CmdOutput, TestApp, run_keel};

/// Entries in the produced log: the initial admin's `key.create` plus one per key created.
const ENTRIES: u64 = 13;
/// `audit.checkpoint_every` of the produced log.
const EVERY: u64 = 5;
/// The entry edited by the single-entry tests: in the middle, between checkpoints 5 and 10.
const MIDDLE: u64 = 7;

/// Runs keel with `checkpoint_every = 5`, creates 12 keys (one audit entry each) and stops it;
/// returns the data dir (keel.redb, audit-signing.key, key-hash.secret, initial-admin-key).
fn produce_log() -> tempfile::TempDir {
    let app = TestApp::start_with(|c| c.audit.checkpoint_every = EVERY);
    for i in 0..ENTRIES - 1 {
        let r = app.post_json(
            "/api/v1/keys",
            Some(&app.admin_key),
            &json!({"name": format!("tamper-{i}"), "role": "viewer"}),
        );
        assert_eq!(r.status, 201, "{}", r.body);
    }
    let dir = app.stop();
    let report = verify(dir.path());
    assert!(report.ok, "the produced log verifies: {report}");
    assert_eq!(report.entries, ENTRIES);
    // Every 5th entry, and the head at the clean stop.
    assert_eq!(checkpoint_seqs(dir.path()), vec![5, 10, ENTRIES]);
    dir
}

/// A fresh copy of every file of a data dir.
fn copy_dir(from: &Path) -> tempfile::TempDir {
    let to = tempfile::tempdir().expect("temp dir");
    for entry in std::fs::read_dir(from).expect("read data dir") {
        let entry = entry.expect("dir entry");
        if entry.file_type().expect("file type").is_file() {
            std::fs::copy(entry.path(), to.path().join(entry.file_name())).expect("copy file");
        }
    }
    to
}

fn open_db(dir: &Path) -> redb::Database {
    redb::Database::open(dir.join("keel.redb")).expect("open keel.redb")
}

/// The stored bytes of entry `seq`.
fn raw_entry(db: &redb::Database, seq: u64) -> Vec<u8> {
    let tx = db.begin_read().expect("read tx");
    let table = tx.open_table(AUDIT_ENTRIES).expect("entries table");
    let value = table.get(seq).expect("get").expect("entry exists");
    value.value().to_vec()
}

/// Stores `bytes` as entry `seq`.
fn put_raw_entry(db: &redb::Database, seq: u64, bytes: &[u8]) {
    let tx = db.begin_write().expect("write tx");
    tx.open_table(AUDIT_ENTRIES)
        .expect("entries table")
        .insert(seq, bytes)
        .expect("insert");
    tx.commit().expect("commit");
}

fn decode(seq: u64, bytes: &[u8]) -> Entry {
    codec::decode(AUDIT_ENTRIES.name(), seq, bytes).expect("a valid entry")
}

/// Decodes entry `seq` in the copy at `dir`, lets `edit` change it, and stores it re-encoded.
fn edit_entry(dir: &Path, seq: u64, edit: impl FnOnce(&mut Entry)) {
    let db = open_db(dir);
    let mut entry = decode(seq, &raw_entry(&db, seq));
    let before = entry.clone();
    edit(&mut entry);
    assert_ne!(entry, before, "the edit changed nothing");
    put_raw_entry(&db, seq, &codec::encode(&entry));
}

fn delete_entries(dir: &Path, seqs: impl IntoIterator<Item = u64>) {
    let db = open_db(dir);
    let tx = db.begin_write().expect("write tx");
    {
        let mut table = tx.open_table(AUDIT_ENTRIES).expect("entries table");
        for seq in seqs {
            assert!(table.remove(seq).expect("remove").is_some(), "entry {seq}");
        }
    }
    tx.commit().expect("commit");
}

fn delete_checkpoint(dir: &Path, seq: u64) {
    let db = open_db(dir);
    let tx = db.begin_write().expect("write tx");
    let removed = tx
        .open_table(AUDIT_CHECKPOINTS)
        .expect("checkpoints table")
        .remove(seq)
        .expect("remove")
        .is_some();
    assert!(removed, "checkpoint {seq}");
    tx.commit().expect("commit");
}

fn checkpoint_seqs(dir: &Path) -> Vec<u64> {
    let db = redb::ReadOnlyDatabase::open(dir.join("keel.redb")).expect("open keel.redb");
    let tx = db.begin_read().expect("read tx");
    let table = tx.open_table(AUDIT_CHECKPOINTS).expect("checkpoints table");
    table
        .iter()
        .expect("iter")
        .map(|row| row.expect("row").0.value())
        .collect()
}

/// `Audit::load(dir, 5)?.verify(&read_tx)` on a stopped data dir.
fn verify(dir: &Path) -> VerifyReport {
    let db = redb::ReadOnlyDatabase::open(dir.join("keel.redb")).expect("open keel.redb");
    let tx = db.begin_read().expect("read tx");
    Audit::load(dir, EVERY)
        .expect("signing key")
        .verify(&tx)
        .expect("verify runs")
}

/// `keel audit verify` on a stopped data dir.
fn verify_cli(dir: &Path) -> CmdOutput {
    let dir = dir.to_str().expect("utf-8 path");
    run_keel(&["audit", "verify"], &[("KEEL_DATA_DIR", dir)])
}

/// Both verifiers fail, naming `seq`, with a reason containing `reason`.
fn assert_fails_at(dir: &Path, seq: u64, reason: &str, what: &str) {
    let report = verify(dir);
    assert!(!report.ok, "{what}: verify passed: {report}");
    assert_eq!(report.first_bad_seq, Some(seq), "{what}: {report}");
    let why = report.reason.clone().unwrap_or_default();
    assert!(
        why.contains(reason),
        "{what}: reason `{why}` lacks `{reason}`"
    );

    let out = verify_cli(dir);
    assert_eq!(out.code, 1, "{what}: keel audit verify: {out:?}");
    assert!(
        out.stdout.starts_with(&format!("FAILED at seq {seq}: ")),
        "{what}: keel audit verify: {out:?}"
    );
    assert!(out.stdout.contains(reason), "{what}: {out:?}");
}

/// The HTTP endpoint of a keel started on a copy of `dir` reports the same failure.
fn assert_http_fails_at(dir: &Path, seq: u64, reason: &str) {
    let app = TestApp::start_in(copy_dir(dir), |c| c.audit.checkpoint_every = EVERY);
    assert!(
        !app.admin_key.is_empty(),
        "the copy has the initial admin key"
    );
    let r = app.post_json("/api/v1/audit/verify", Some(&app.admin_key), &json!({}));
    assert_eq!(r.status, 200, "{}", r.body);
    let v = r.json();
    assert_eq!(v["ok"], false, "{v}");
    assert_eq!(v["first_bad_seq"], seq, "{v}");
    let why = v["reason"].as_str().unwrap_or_default();
    assert!(why.contains(reason), "{v}");
    // Starting and stopping keel on the tampered dir appended and signed nothing.
    let before = checkpoint_seqs(dir);
    let after = app.stop();
    assert_eq!(checkpoint_seqs(after.path()), before);
    assert_eq!(verify(after.path()).first_bad_seq, Some(seq));
}

/// Control: an untouched copy verifies with all three verifiers, so the failures below are
/// caused by the edits.
#[test]
fn an_untouched_copy_verifies() {
    let original = produce_log();
    let copy = copy_dir(original.path());
    let report = verify(copy.path());
    assert!(report.ok, "{report}");
    assert_eq!((report.entries, report.checkpoints), (ENTRIES, 3));
    let out = verify_cli(copy.path());
    assert_eq!(out.code, 0, "{out:?}");
    assert_eq!(
        out.stdout.trim(),
        "OK: 13 entries, 3 signed checkpoints verified"
    );

    let app = TestApp::start_in(copy, |c| c.audit.checkpoint_every = EVERY);
    let r = app.post_json("/api/v1/audit/verify", Some(&app.admin_key), &json!({}));
    assert_eq!(r.status, 200, "{}", r.body);
    assert_eq!(r.json()["ok"], true, "{}", r.body);
    assert_eq!(r.json()["entries"], ENTRIES, "{}", r.body);
    let copy = app.stop();
    assert!(verify(copy.path()).ok, "a restart appended nothing");
    assert_eq!(verify(copy.path()).entries, ENTRIES);
}

/// Changes one ASCII byte in the middle of `s` (still valid UTF-8).
fn change_one_byte(s: &mut String) {
    let mut bytes = std::mem::take(s).into_bytes();
    assert!(!bytes.is_empty());
    let i = bytes.len() / 2;
    assert!(bytes[i].is_ascii());
    bytes[i] ^= 0x01;
    *s = String::from_utf8(bytes).expect("still UTF-8");
}

/// One byte of any one field of a stored entry, re-encoded as a valid record: both verifiers
/// name that entry (for `seq`, the key it is stored under).
#[test]
fn changing_one_byte_of_any_field_is_found_at_that_entry() {
    let original = produce_log();
    type Edit = fn(&mut Entry);
    let edits: [(&str, Edit, &str); 8] = [
        ("seq", |e| e.seq ^= 0x01, "says seq 6"),
        ("time_ms", |e| e.time_ms ^= 0x100, "was changed"),
        ("actor", |e| change_one_byte(&mut e.actor), "was changed"),
        ("action", |e| change_one_byte(&mut e.action), "was changed"),
        ("target", |e| change_one_byte(&mut e.target), "was changed"),
        ("detail", |e| change_one_byte(&mut e.detail), "was changed"),
        ("prev_hash", |e| e.prev_hash[5] ^= 0x80, "prev_hash"),
        ("hash", |e| e.hash[31] ^= 0x01, "was changed"),
    ];
    for (field, edit, reason) in edits {
        let copy = copy_dir(original.path());
        edit_entry(copy.path(), MIDDLE, edit);
        assert_fails_at(copy.path(), MIDDLE, reason, field);
    }
    // The same edit is reported over HTTP by a keel started on the tampered dir.
    let copy = copy_dir(original.path());
    edit_entry(copy.path(), MIDDLE, |e| change_one_byte(&mut e.detail));
    assert_http_fails_at(copy.path(), MIDDLE, "was changed");
}

/// Flipping any single byte of the stored record bytes (no decoding) is found at that entry,
/// whether the record still decodes or not.
#[test]
fn flipping_any_raw_byte_of_an_entry_is_found_at_that_entry() {
    let original = produce_log();
    let copy = copy_dir(original.path());
    let audit = Audit::load(copy.path(), EVERY).expect("signing key");
    {
        let db = open_db(copy.path());
        let clean = raw_entry(&db, MIDDLE);
        assert!(clean.len() > 100, "{} bytes", clean.len());
        let (mut decodable, mut undecodable) = (0, 0);
        for i in 0..clean.len() {
            let mut bytes = clean.clone();
            bytes[i] ^= 0x01;
            put_raw_entry(&db, MIDDLE, &bytes);
            let report = audit
                .verify(&db.begin_read().expect("read tx"))
                .expect("verify runs");
            assert_eq!(report.first_bad_seq, Some(MIDDLE), "byte {i}: {report}");
            match codec::decode::<Entry>(AUDIT_ENTRIES.name(), MIDDLE, &bytes) {
                Ok(_) => decodable += 1,
                Err(_) => undecodable += 1,
            }
        }
        // Both paths were exercised: edits that still decode and ones that do not.
        assert!(
            decodable > 0 && undecodable > 0,
            "{decodable}/{undecodable}"
        );
        put_raw_entry(&db, MIDDLE, &clean);
        assert!(
            audit.verify(&db.begin_read().expect("read tx")).unwrap().ok,
            "restoring the bytes restores the chain"
        );
        // Leave one flip (inside the hash, the record's last 32 bytes) for the CLI.
        let mut bytes = clean.clone();
        let last = bytes.len() - 1;
        bytes[last - 3] ^= 0x40;
        put_raw_entry(&db, MIDDLE, &bytes);
    }
    assert_fails_at(copy.path(), MIDDLE, "was changed", "raw byte in the hash");

    // The version byte: the record no longer decodes, and the report says so.
    let copy = copy_dir(original.path());
    {
        let db = open_db(copy.path());
        let mut bytes = raw_entry(&db, MIDDLE);
        bytes[0] ^= 0x01;
        put_raw_entry(&db, MIDDLE, &bytes);
    }
    assert_fails_at(copy.path(), MIDDLE, "cannot be decoded", "version byte");
}

/// A truncated record is found at that entry, at any length.
#[test]
fn truncating_an_entry_is_found_at_that_entry() {
    let original = produce_log();
    let copy = copy_dir(original.path());
    let audit = Audit::load(copy.path(), EVERY).expect("signing key");
    {
        let db = open_db(copy.path());
        let clean = raw_entry(&db, MIDDLE);
        for len in 0..clean.len() {
            put_raw_entry(&db, MIDDLE, &clean[..len]);
            let report = audit
                .verify(&db.begin_read().expect("read tx"))
                .expect("verify runs");
            assert_eq!(report.first_bad_seq, Some(MIDDLE), "length {len}: {report}");
        }
        put_raw_entry(&db, MIDDLE, &clean[..clean.len() - 1]);
    }
    assert_fails_at(copy.path(), MIDDLE, "cannot be decoded", "last byte cut");
}

/// Deleting the newest entries back past a signed checkpoint is found (the log ends before the
/// checkpoint); deleting an entry in the middle is found at the gap.
#[test]
fn deleting_entries_past_a_checkpoint_is_found() {
    let original = produce_log();

    let copy = copy_dir(original.path());
    delete_entries(copy.path(), 10..=ENTRIES);
    assert_fails_at(copy.path(), 10, "entries were deleted", "newest 4 deleted");
    assert_http_fails_at(copy.path(), 10, "entries were deleted");

    let copy = copy_dir(original.path());
    delete_entries(copy.path(), 6..=ENTRIES);
    assert_fails_at(copy.path(), 6, "entries were deleted", "back to seq 5");
    let report = verify(copy.path());
    assert_eq!(report.entries, 5, "{report}");

    let copy = copy_dir(original.path());
    delete_entries(copy.path(), [MIDDLE]);
    assert_fails_at(
        copy.path(),
        MIDDLE,
        "entry 7 is missing",
        "middle entry deleted",
    );
}

/// An early entry is changed and every later entry's prev_hash and hash recomputed, so the chain
/// is internally valid: the signed checkpoint at 5 no longer matches.
#[test]
fn rewriting_the_whole_chain_consistently_is_found_at_the_checkpoint() {
    let original = produce_log();
    let copy = copy_dir(original.path());
    {
        let db = open_db(copy.path());
        let tx = db.begin_write().expect("write tx");
        {
            let mut table = tx.open_table(AUDIT_ENTRIES).expect("entries table");
            let mut prev_hash = [0u8; 32];
            for seq in 1..=ENTRIES {
                let mut entry = decode(seq, table.get(seq).unwrap().unwrap().value());
                if seq == 3 {
                    entry.actor = "system".into();
                    entry.detail = r#"{"name":"innocent","role":"viewer"}"#.into();
                }
                if seq >= 3 {
                    entry.prev_hash = prev_hash;
                    entry.hash = entry.compute_hash();
                }
                prev_hash = entry.hash;
                table
                    .insert(seq, codec::encode(&entry).as_slice())
                    .expect("insert");
            }
        }
        tx.commit().expect("commit");
    }
    assert_fails_at(copy.path(), 5, "rewritten", "chain rewritten from seq 3");
    let report = verify(copy.path());
    assert_eq!(
        report.entries, ENTRIES,
        "the rewritten chain itself is consistent: {report}"
    );
    assert_http_fails_at(copy.path(), 5, "rewritten");

    // A rewrite reaching back to the entry at checkpoint 10 is caught there; rehashing that
    // entry alone breaks the link to the next one.
    let copy = copy_dir(original.path());
    edit_entry(copy.path(), 10, |e| {
        e.detail = r#"{"name":"innocent"}"#.into();
        e.hash = e.compute_hash();
    });
    assert_fails_at(
        copy.path(),
        11,
        "prev_hash",
        "entry 10 rehashed, 11 not relinked",
    );
    let db = open_db(copy.path());
    let mut prev = decode(10, &raw_entry(&db, 10)).hash;
    for seq in 11..=ENTRIES {
        let mut entry = decode(seq, &raw_entry(&db, seq));
        entry.prev_hash = prev;
        entry.hash = entry.compute_hash();
        prev = entry.hash;
        put_raw_entry(&db, seq, &codec::encode(&entry));
    }
    drop(db);
    assert_fails_at(copy.path(), 10, "rewritten", "chain rewritten from seq 10");
}

/// With another signing key in the data dir, every checkpoint fails its signature: the first
/// one is reported, and with it removed the next one is, until none is left.
#[test]
fn a_different_signing_key_fails_every_checkpoint() {
    let original = produce_log();
    let copy = copy_dir(original.path());
    let other = tempfile::tempdir().expect("temp dir");
    Audit::load_or_create(other.path(), EVERY).expect("another key");
    std::fs::copy(
        other.path().join(SIGNING_KEY_FILE),
        copy.path().join(SIGNING_KEY_FILE),
    )
    .expect("replace the key");
    assert_ne!(
        Audit::load(copy.path(), EVERY).unwrap().public_key_hex(),
        Audit::load(original.path(), EVERY)
            .unwrap()
            .public_key_hex()
    );

    assert_fails_at(copy.path(), 5, "signature is not valid", "foreign key");
    assert_http_fails_at(copy.path(), 5, "signature is not valid");
    delete_checkpoint(copy.path(), 5);
    assert_fails_at(
        copy.path(),
        10,
        "signature is not valid",
        "foreign key, cp 10",
    );
    delete_checkpoint(copy.path(), 10);
    assert_fails_at(
        copy.path(),
        ENTRIES,
        "signature is not valid",
        "foreign key, cp 13",
    );
    delete_checkpoint(copy.path(), ENTRIES);
    let report = verify(copy.path());
    assert!(report.ok, "no checkpoint left to fail: {report}");
    assert_eq!((report.entries, report.checkpoints), (ENTRIES, 0));
}

/// A clean stop signs the head (the checkpoint worker's last step), so after it even the newest
/// entry is covered: deleting it is found.
#[test]
fn after_a_clean_stop_deleting_the_newest_entry_is_found() {
    let original = produce_log();
    let copy = copy_dir(original.path());
    delete_entries(copy.path(), [ENTRIES]);
    assert_fails_at(
        copy.path(),
        ENTRIES,
        "entries were deleted",
        "newest entry deleted",
    );
}
