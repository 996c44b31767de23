//! The cycles room's tables as one bundle, opened once per transaction: [`CycleTables`] inside a
//! write transaction, [`CycleReadTables`] inside a read transaction. This is the only place the
//! room names its table definitions; everything else reaches a table through a bundle, and code
//! that only reads takes `&impl ReadableTables` so read and write paths share it.

use redb::{
    ReadOnlyTable, ReadTransaction, ReadableTable, Table, TableError, TableHandle, WriteTransaction,
};

use crate::store::tables::cycles::{
    CYCLE_CHECKPOINTS, CYCLE_DISPATCHES, CYCLE_INITIATIONS, CYCLE_ITEMS, CYCLE_RUNS,
    CYCLE_SCHEDULES, CYCLE_SLOTS, CYCLES_ACTIVE, EXECUTION_RECORDS, EXECUTION_RECORDS_BY_CYCLE,
    GOVERNANCE, PROFILE_VERSIONS, PROPOSALS, SIGNALS, TELEMETRY, VALUE_LEDGER,
};

/// Declares [`ReadableTables`], the write bundle, the read bundle and their impls from one list
/// of (doc, field, definition, key, value).
macro_rules! bundle {
    ($($(#[$doc:meta])* $field:ident: $def:ident, $key:ty, $value:ty;)*) => {
        /// Read access to every table of the room, whichever transaction opened it. Each table
        /// also tells its name, for decoding errors. (The bundle is the whole room: a table no
        /// shared path reads yet is still part of it.)
        #[allow(dead_code)]
        pub(super) trait ReadableTables {
            $($(#[$doc])* fn $field(&self) -> &(impl ReadableTable<$key, $value> + TableHandle);)*
        }

        /// Every table of the room, open for writing in one write transaction.
        pub(super) struct CycleTables<'tx> {
            $(pub(super) $field: Table<'tx, $key, $value>,)*
        }

        impl<'tx> CycleTables<'tx> {
            /// Opens the room's tables in `tx`.
            pub(super) fn open(tx: &'tx WriteTransaction) -> Result<Self, TableError> {
                Ok(Self {
                    $($field: tx.open_table($def)?,)*
                })
            }
        }

        /// Every table of the room, open for reading in one read transaction.
        #[allow(dead_code)]
        pub(super) struct CycleReadTables {
            $(pub(super) $field: ReadOnlyTable<$key, $value>,)*
        }

        impl CycleReadTables {
            /// Opens the room's tables in `tx`.
            pub(super) fn open(tx: &ReadTransaction) -> Result<Self, TableError> {
                Ok(Self {
                    $($field: tx.open_table($def)?,)*
                })
            }
        }

        impl ReadableTables for CycleTables<'_> {
            $(fn $field(&self) -> &(impl ReadableTable<$key, $value> + TableHandle) {
                &self.$field
            })*
        }

        impl ReadableTables for CycleReadTables {
            $(fn $field(&self) -> &(impl ReadableTable<$key, $value> + TableHandle) {
                &self.$field
            })*
        }
    };
}

bundle! {
    /// Cycle runs: cycle id → run record.
    runs: CYCLE_RUNS, u128, &'static [u8];
    /// Unfinished cycles: cycle id → ().
    active: CYCLES_ACTIVE, u128, ();
    /// Checkpoints: (cycle id, sequence) → checkpoint record.
    checkpoints: CYCLE_CHECKPOINTS, (u128, u32), &'static [u8];
    /// Initiations: (run profile key, initiation hash) → cycle id.
    initiations: CYCLE_INITIATIONS, (&'static str, &'static str), u128;
    /// Slots run: (run profile key, slot) → cycle id.
    slots: CYCLE_SLOTS, (&'static str, &'static str), u128;
    /// Normalized items: (cycle id, index) → item JSON.
    items: CYCLE_ITEMS, (u128, u32), &'static str;
    /// Dispatches: (cycle id, endpoint key) → dispatch record.
    dispatches: CYCLE_DISPATCHES, (u128, &'static str), &'static [u8];
    /// The last slot of each schedule: name → epoch ms.
    schedules: CYCLE_SCHEDULES, &'static str, i64;
    /// Execution records: (time ms, record id) → record.
    records: EXECUTION_RECORDS, (i64, u128), &'static [u8];
    /// Execution records by cycle: (cycle id, time ms, record id) → ().
    records_by_cycle: EXECUTION_RECORDS_BY_CYCLE, (u128, i64, u128), ();
    /// The value ledger: (time ms, entry id) → entry.
    ledger: VALUE_LEDGER, (i64, u128), &'static [u8];
    /// The telemetry bus: (time ms, event id) → event.
    telemetry: TELEMETRY, (i64, u128), &'static [u8];
    /// Advisory signals: signal id → signal.
    signals: SIGNALS, u128, &'static [u8];
    /// Strategy proposals: proposal id → proposal.
    proposals: PROPOSALS, u128, &'static [u8];
    /// Governance flags: `global` or `ns:<namespace>` → flag.
    governance: GOVERNANCE, &'static str, &'static [u8];
    /// Profile versions: profile id → version record.
    profile_versions: PROFILE_VERSIONS, &'static str, &'static [u8];
}
