//! Every redb table keel uses, declared in one place with a version in its name.
//!
//! Values are records encoded by [`super::codec`] (`[version][postcard]`); keys are plain redb
//! types chosen so that range scans come out in a useful order (sequence numbers, time-ordered
//! UUIDv7 ids as `u128`).

use redb::TableDefinition;

/// Store-wide facts such as the schema version.
pub const META: TableDefinition<&str, u64> = TableDefinition::new("meta_v1");

/// Key of the schema version in [`META`].
pub const META_SCHEMA_VERSION: &str = "schema_version";

/// The hash-chained audit log: sequence number → audit entry record.
pub const AUDIT_ENTRIES: TableDefinition<u64, &[u8]> = TableDefinition::new("audit_entries_v1");

/// Signed audit checkpoints: sequence number covered → checkpoint record.
pub const AUDIT_CHECKPOINTS: TableDefinition<u64, &[u8]> =
    TableDefinition::new("audit_checkpoints_v1");

/// API keys: key id (UUIDv7 as `u128`) → key record.
pub const API_KEYS: TableDefinition<u128, &[u8]> = TableDefinition::new("api_keys_v1");

/// Persisted metric histograms: (series key, interval start in epoch ms) → snapshot record.
pub const METRIC_SNAPSHOTS: TableDefinition<(&str, i64), &[u8]> =
    TableDefinition::new("metric_snapshots_v1");

/// Scratch records written by `keel bench store` into its own temporary database.
pub const BENCH_RECORDS: TableDefinition<u64, &[u8]> = TableDefinition::new("bench_records_v1");

/// A table only the store's own unit tests write.
#[cfg(test)]
pub const BENCH_RECORDS_TEST: TableDefinition<u64, u64> = TableDefinition::new("store_test_v1");
