//! Records the exec room stores: circuit breaker state, workflow step checkpoints and the
//! process groups of running commands.

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

/// A command's process group while it runs, so that a keel started after a crash can kill what
/// the dead one left running.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RunningCommand {
    /// The process group (the id of the process keel started).
    pub pgid: i32,
    /// The kernel's boot id when it started: after a reboot the group is gone.
    pub boot_id: String,
    /// The group leader's start time in clock ticks since boot (`/proc/<pid>/stat` field 22), to
    /// tell it from a later process that got the same id.
    pub leader_start_ticks: u64,
    /// When the command started.
    pub started_at: Millis,
    /// When keel last saw it running.
    pub seen_at: Millis,
}

impl Record for RunningCommand {
    const VERSION: u8 = 1;
}
