//! The benchmark harness's table in its own scratch database: the only code of the harness
//! that names its definition.

use redb::{Table, TableError, WriteTransaction};

use crate::store::tables::bench::BENCH_RECORDS;

/// Opens the scratch records table (sequence number → payload) in a write transaction.
pub fn records(tx: &WriteTransaction) -> Result<Table<'_, u64, &'static [u8]>, TableError> {
    tx.open_table(BENCH_RECORDS)
}
