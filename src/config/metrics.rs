//! `[metrics]`: persisted metric snapshots.

use std::time::Duration;

use serde::{Deserialize, Serialize};

use super::error::{ConfigError, at_least, between};

/// `[metrics]`: persisted metrics.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct MetricsConfig {
    /// How often a snapshot is persisted, in seconds (≥ 1).
    pub snapshot_interval_seconds: u64,
    /// How long snapshots are kept, in days (1..=3650).
    pub retention_days: u64,
}

impl Default for MetricsConfig {
    fn default() -> Self {
        Self {
            snapshot_interval_seconds: 60,
            retention_days: 14,
        }
    }
}

impl MetricsConfig {
    /// `snapshot_interval_seconds` as a duration.
    pub fn snapshot_interval(&self) -> Duration {
        Duration::from_secs(self.snapshot_interval_seconds)
    }

    /// `retention_days` as a duration.
    pub fn retention(&self) -> Duration {
        Duration::from_secs(self.retention_days.saturating_mul(86_400))
    }
}

impl MetricsConfig {
    pub(super) fn validate(&self) -> Result<(), ConfigError> {
        at_least(
            "metrics.snapshot_interval_seconds",
            self.snapshot_interval_seconds,
            1,
        )?;
        between("metrics.retention_days", self.retention_days, 1, 3650)
    }
}
