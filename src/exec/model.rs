//! Records the exec room stores: circuit breaker state and workflow step checkpoints.

use serde::{Deserialize, Serialize};

use crate::clock::Millis;
use crate::store::codec::Record;

/// Persisted state of one circuit breaker.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct CircuitRecord {
    /// `closed`, `open` or `half_open`.
    pub state: String,
    /// When it last opened.
    pub opened_at: Option<Millis>,
    /// When an open circuit lets a trial through.
    pub open_until: Option<Millis>,
    /// Failure ratio that opened it.
    pub failure_ratio: f64,
}

impl Record for CircuitRecord {
    const VERSION: u8 = 1;
}

/// A finished step's result, as checkpointed.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct StepCheckpoint {
    /// Step name.
    pub name: String,
    /// Its result.
    pub result: Option<String>,
    /// When it finished.
    pub finished_at: Millis,
    /// The workflow task's attempt that ran it.
    pub attempt: u32,
}

impl Record for StepCheckpoint {
    const VERSION: u8 = 1;
}
