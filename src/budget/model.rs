//! Records of the budget room: one provider's spend on one day, and what one call used.

use serde::{Deserialize, Serialize};

use crate::store::codec::Record;

/// Spend of one provider on one UTC day, as stored in the ledger.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct LedgerDay {
    /// Prompt tokens the provider reported.
    pub tokens_in: u64,
    /// Completion tokens the provider reported.
    pub tokens_out: u64,
    /// Calls made (successful or not).
    pub requests: u64,
    /// Cost in micro-USD.
    pub usd_micros: u64,
}

impl Record for LedgerDay {
    const VERSION: u8 = 1;
}

/// What one settled call used.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Spend {
    /// Prompt tokens reported.
    pub tokens_in: u64,
    /// Completion tokens reported.
    pub tokens_out: u64,
    /// Cost in micro-USD.
    pub usd_micros: u64,
}
