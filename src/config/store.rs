//! `[store]`: the embedded database.

use serde::{Deserialize, Serialize};

use super::error::{ConfigError, between};

/// `[store]`: the embedded database.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct StoreConfig {
    /// Most write requests per group commit (1..=65536).
    pub max_batch: usize,
}

impl Default for StoreConfig {
    fn default() -> Self {
        Self { max_batch: 1024 }
    }
}

impl StoreConfig {
    pub(super) fn validate(&self) -> Result<(), ConfigError> {
        between("store.max_batch", self.max_batch as u64, 1, 65_536)
    }
}
