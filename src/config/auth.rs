//! `[auth]`: API keys and sessions.

use std::time::Duration;

use serde::{Deserialize, Serialize};

use super::Secret;
use super::error::{ConfigError, at_least, between, invalid};

/// The longest a rotated-out key may keep working: 30 days, in seconds.
pub const MAX_ROTATION_OVERLAP_SECONDS: u64 = 30 * 86_400;

/// `[auth]`: API keys and sessions.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct AuthConfig {
    /// Secret for API key hashes; when unset keel generates `<data_dir>/key-hash.secret`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub key_hash_secret: Option<Secret>,
    /// How long a rotated-out key keeps working, in seconds (at most 30 days).
    pub rotation_overlap_seconds: u64,
    /// How often key "last used" times are flushed, in seconds (≥ 1).
    pub last_used_flush_seconds: u64,
}

impl Default for AuthConfig {
    fn default() -> Self {
        Self {
            key_hash_secret: None,
            rotation_overlap_seconds: 86_400,
            last_used_flush_seconds: 60,
        }
    }
}

impl AuthConfig {
    /// `rotation_overlap_seconds` as a duration.
    pub fn rotation_overlap(&self) -> Duration {
        Duration::from_secs(self.rotation_overlap_seconds)
    }

    /// `last_used_flush_seconds` as a duration.
    pub fn last_used_flush(&self) -> Duration {
        Duration::from_secs(self.last_used_flush_seconds)
    }
}

impl AuthConfig {
    pub(super) fn validate(&self) -> Result<(), ConfigError> {
        if let Some(secret) = &self.key_hash_secret {
            if secret.expose().is_empty() {
                return Err(invalid(
                    "auth.key_hash_secret",
                    "must not be empty (leave it unset to have one generated)",
                ));
            }
            if secret.is_redaction() {
                return Err(invalid(
                    "auth.key_hash_secret",
                    "is the redaction placeholder \"***\" (copied from `keel config check` output?); set the real secret",
                ));
            }
        }
        between(
            "auth.rotation_overlap_seconds",
            self.rotation_overlap_seconds,
            0,
            MAX_ROTATION_OVERLAP_SECONDS,
        )?;
        at_least(
            "auth.last_used_flush_seconds",
            self.last_used_flush_seconds,
            1,
        )
    }
}
