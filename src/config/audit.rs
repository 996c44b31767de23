//! `[audit]`: the audit log's signed checkpoints.

use std::time::Duration;

use serde::{Deserialize, Serialize};

use super::error::{ConfigError, at_least};

/// `[audit]`: the audit log.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct AuditConfig {
    /// Entries between signed checkpoints (≥ 1).
    pub checkpoint_every: u64,
    /// Longest time between signed checkpoints, in seconds (≥ 60).
    pub checkpoint_interval_seconds: u64,
}

impl Default for AuditConfig {
    fn default() -> Self {
        Self {
            checkpoint_every: 1000,
            checkpoint_interval_seconds: 3600,
        }
    }
}

impl AuditConfig {
    /// `checkpoint_interval_seconds` as a duration.
    pub fn checkpoint_interval(&self) -> Duration {
        Duration::from_secs(self.checkpoint_interval_seconds)
    }
}

impl AuditConfig {
    pub(super) fn validate(&self) -> Result<(), ConfigError> {
        at_least("audit.checkpoint_every", self.checkpoint_every, 1)?;
        at_least(
            "audit.checkpoint_interval_seconds",
            self.checkpoint_interval_seconds,
            60,
        )
    }
}
