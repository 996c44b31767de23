//! The budget room's table bundle: the LLM cost ledger and the budget overrides, opened together
//! inside one transaction ([`Tables`] for writes, [`ReadTables`] for reads) with the reads both
//! share through [`ReadableTables`]. This is the only code of the room that names
//! `tables::budget::…`.

use redb::{ReadTransaction, ReadableTable, TableError, TableHandle, WriteTransaction};

use super::BudgetOverride;
use super::model::{LedgerDay, Spend};
use crate::store::StoreError;
use crate::store::codec;
use crate::store::tables::budget::{LLM_BUDGETS, LLM_LEDGER};

/// The budget room's tables, readable in a read or a write transaction.
pub(super) trait ReadableTables {
    /// Ledger rows by (provider, UTC day).
    fn ledger(&self) -> &impl ReadableTable<(&'static str, i64), &'static [u8]>;
    /// Budget overrides by provider.
    fn overrides(&self) -> &impl ReadableTable<&'static str, &'static [u8]>;

    /// The ledger row of `provider` on `day`.
    fn ledger_day(&self, provider: &str, day: i64) -> Result<Option<LedgerDay>, StoreError> {
        self.ledger()
            .get((provider, day))?
            .map(|v| codec::decode(LLM_LEDGER.name(), provider, v.value()))
            .transpose()
    }

    /// The ledger rows of `provider` from day `first` to `last`, newest first (days without
    /// calls have none).
    fn ledger_days(
        &self,
        provider: &str,
        first: i64,
        last: i64,
    ) -> Result<Vec<(i64, LedgerDay)>, StoreError> {
        let mut rows = Vec::new();
        for row in self
            .ledger()
            .range((provider, first)..=(provider, last))?
            .rev()
        {
            let (k, v) = row?;
            let day = k.value().1;
            rows.push((day, codec::decode(LLM_LEDGER.name(), provider, v.value())?));
        }
        Ok(rows)
    }

    /// Every budget override, by provider.
    fn override_records(&self) -> Result<Vec<(String, BudgetOverride)>, StoreError> {
        let mut out = Vec::new();
        for row in self.overrides().iter()? {
            let (k, v) = row?;
            let name = k.value().to_string();
            let record = codec::decode(LLM_BUDGETS.name(), &name, v.value())?;
            out.push((name, record));
        }
        Ok(out)
    }
}

/// The budget room's tables opened for writing in one transaction.
pub(super) struct Tables<'tx> {
    ledger: redb::Table<'tx, (&'static str, i64), &'static [u8]>,
    overrides: redb::Table<'tx, &'static str, &'static [u8]>,
}

impl<'tx> Tables<'tx> {
    /// Opens every budget table in `tx`.
    pub(super) fn open(tx: &'tx WriteTransaction) -> Result<Self, TableError> {
        Ok(Tables {
            ledger: tx.open_table(LLM_LEDGER)?,
            overrides: tx.open_table(LLM_BUDGETS)?,
        })
    }

    /// Adds one call's spend to the ledger row of (`provider`, `day`).
    pub(super) fn add_spend(
        &mut self,
        provider: &str,
        day: i64,
        spend: Spend,
    ) -> Result<(), StoreError> {
        let mut row = self.ledger_day(provider, day)?.unwrap_or_default();
        row.tokens_in = row.tokens_in.saturating_add(spend.tokens_in);
        row.tokens_out = row.tokens_out.saturating_add(spend.tokens_out);
        row.requests = row.requests.saturating_add(1);
        row.usd_micros = row.usd_micros.saturating_add(spend.usd_micros);
        self.ledger
            .insert((provider, day), codec::encode(&row).as_slice())?;
        Ok(())
    }

    /// Stores the budget override of `provider`.
    pub(super) fn put_override(
        &mut self,
        provider: &str,
        record: &BudgetOverride,
    ) -> Result<(), StoreError> {
        self.overrides
            .insert(provider, codec::encode(record).as_slice())?;
        Ok(())
    }
}

impl ReadableTables for Tables<'_> {
    fn ledger(&self) -> &impl ReadableTable<(&'static str, i64), &'static [u8]> {
        &self.ledger
    }
    fn overrides(&self) -> &impl ReadableTable<&'static str, &'static [u8]> {
        &self.overrides
    }
}

/// The budget room's tables opened for reading in one transaction.
pub(super) struct ReadTables {
    ledger: redb::ReadOnlyTable<(&'static str, i64), &'static [u8]>,
    overrides: redb::ReadOnlyTable<&'static str, &'static [u8]>,
}

impl ReadTables {
    /// Opens every budget table in `tx`.
    pub(super) fn open(tx: &ReadTransaction) -> Result<Self, TableError> {
        Ok(ReadTables {
            ledger: tx.open_table(LLM_LEDGER)?,
            overrides: tx.open_table(LLM_BUDGETS)?,
        })
    }
}

impl ReadableTables for ReadTables {
    fn ledger(&self) -> &impl ReadableTable<(&'static str, i64), &'static [u8]> {
        &self.ledger
    }
    fn overrides(&self) -> &impl ReadableTable<&'static str, &'static [u8]> {
        &self.overrides
    }
}
