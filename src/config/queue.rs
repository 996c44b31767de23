//! `[queue]`: the durable task queue.

use std::time::Duration;

use serde::{Deserialize, Serialize};

use super::error::{ConfigError, at_least, between};

/// `[queue]`: the durable task queue.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct QueueConfig {
    /// Tasks executed at once, over all types.
    pub concurrency: usize,
    /// Most tasks waiting (queued or retrying); more are refused with 429.
    pub max_depth: u64,
    /// How long a lease lasts before the reaper returns the task to the queue, in seconds.
    pub lease_seconds: u64,
    /// Attempts before a task is dead (per-handler `max_attempts` and per-task values override).
    pub max_attempts: u32,
    /// First retry delay, in milliseconds; doubles each attempt (with jitter).
    pub backoff_base_ms: u64,
    /// Longest retry delay, in seconds.
    pub backoff_max_seconds: u64,
    /// Longest `Retry-After` honoured, in seconds.
    pub retry_after_max_seconds: u64,
    /// How long an idempotency key maps to its task, in seconds.
    pub idempotency_retention_seconds: u64,
    /// Default task timeout, in seconds.
    pub default_timeout_seconds: u64,
    /// Largest stored task result, in bytes (longer results are cut).
    pub result_max_bytes: usize,
    /// How long finished tasks (succeeded, cancelled) are kept, in days.
    pub retention_days: u64,
    /// How long dead tasks (the dead-letter queue) are kept after they died, in days.
    pub dead_retention_days: u64,
    /// Furthest a task's `run_at` may lie ahead, in days.
    pub max_run_at_days: u64,
}

impl Default for QueueConfig {
    fn default() -> Self {
        Self {
            concurrency: 10,
            max_depth: 100_000,
            lease_seconds: 900,
            max_attempts: 3,
            backoff_base_ms: 1000,
            backoff_max_seconds: 60,
            retry_after_max_seconds: 300,
            idempotency_retention_seconds: 86_400,
            default_timeout_seconds: 30,
            result_max_bytes: 65_536,
            retention_days: 7,
            dead_retention_days: 30,
            max_run_at_days: 365,
        }
    }
}

impl QueueConfig {
    /// `lease_seconds` as a duration.
    pub fn lease(&self) -> Duration {
        Duration::from_secs(self.lease_seconds)
    }
}

impl QueueConfig {
    pub(super) fn validate(&self) -> Result<(), ConfigError> {
        let q = self;
        between("queue.concurrency", q.concurrency as u64, 1, 10_000)?;
        at_least("queue.max_depth", q.max_depth, 1)?;
        at_least("queue.lease_seconds", q.lease_seconds, 1)?;
        between("queue.max_attempts", u64::from(q.max_attempts), 1, 1000)?;
        at_least("queue.backoff_base_ms", q.backoff_base_ms, 1)?;
        at_least("queue.backoff_max_seconds", q.backoff_max_seconds, 1)?;
        at_least(
            "queue.default_timeout_seconds",
            q.default_timeout_seconds,
            1,
        )?;
        between(
            "queue.result_max_bytes",
            q.result_max_bytes as u64,
            1,
            16 << 20,
        )?;
        at_least("queue.retention_days", q.retention_days, 1)?;
        between(
            "queue.dead_retention_days",
            q.dead_retention_days,
            1,
            36_500,
        )?;
        Ok(())
    }
}
