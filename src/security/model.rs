//! The records the security room stores: an automatic block of a client address.

use serde::{Deserialize, Serialize};

use crate::clock::Millis;
use crate::store::codec::Record;

/// An automatic block of one client address, kept after it ends so that a repeat lasts longer.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct BlockRecord {
    /// When the current (or last) block began.
    pub blocked_at: Millis,
    /// When it ends.
    pub until: Millis,
    /// How many times the address has been blocked in a row (the block lasts
    /// `block_seconds · 2^(strikes − 1)`).
    pub strikes: u32,
    /// Failed authentications that led to the current block.
    pub failures: u32,
}

impl Record for BlockRecord {
    const VERSION: u8 = 1;
}

impl BlockRecord {
    /// Whether the block is in force at `now`.
    pub fn active(&self, now: Millis) -> bool {
        now < self.until
    }
}

/// Security events of one kind about one subject within one minute, counted together.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct EventRecord {
    /// How many happened.
    pub count: u64,
    /// The first one.
    pub first_at: Millis,
    /// The last one.
    pub last_at: Millis,
    /// What the last one was about (a reason, route, source or key name; never a secret).
    pub detail: String,
}

impl Record for EventRecord {
    const VERSION: u8 = 1;
}
