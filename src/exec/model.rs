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
    /// The latest outcomes of the window that opened it (at most [`TRIP_OUTCOMES_KEPT`]),
    /// oldest first; empty for a circuit that never opened or opened before they were kept.
    pub tripped_by: Vec<CircuitOutcome>,
    /// How many outcomes the window held when it opened.
    pub tripped_volume: u64,
    /// How many of them were failures.
    pub tripped_failures: u64,
}

/// Most outcomes a circuit record keeps of the window that opened it.
pub const TRIP_OUTCOMES_KEPT: usize = 20;

/// One attempt's outcome as a circuit breaker counted it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct CircuitOutcome {
    /// When the attempt ended.
    pub at: Millis,
    /// Whether it counted as healthy.
    pub healthy: bool,
    /// The error class of a failing outcome (`http_5xx`, `timeout`, …).
    pub class: Option<String>,
}

/// Version 1 of [`CircuitRecord`]: no outcomes of the opening window.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
struct CircuitRecordV1 {
    state: String,
    opened_at: Option<Millis>,
    open_until: Option<Millis>,
    failure_ratio: f64,
}

impl Record for CircuitRecord {
    const VERSION: u8 = 2;

    fn decode_versioned(version: u8, body: &[u8]) -> Result<Self, String> {
        match version {
            1 => {
                let v1: CircuitRecordV1 = postcard::from_bytes(body).map_err(|e| e.to_string())?;
                Ok(CircuitRecord {
                    state: v1.state,
                    opened_at: v1.opened_at,
                    open_until: v1.open_until,
                    failure_ratio: v1.failure_ratio,
                    tripped_by: Vec::new(),
                    tripped_volume: 0,
                    tripped_failures: 0,
                })
            }
            2 => postcard::from_bytes(body).map_err(|e| e.to_string()),
            other => Err(format!(
                "unknown record version {other} (this keel writes version {})",
                Self::VERSION
            )),
        }
    }
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::codec;

    fn v1_bytes() -> Vec<u8> {
        let v1 = CircuitRecordV1 {
            state: "open".into(),
            opened_at: Some(5),
            open_until: Some(600_005),
            failure_ratio: 0.5,
        };
        let mut bytes = vec![1];
        bytes.extend(postcard::to_allocvec(&v1).unwrap());
        bytes
    }

    #[test]
    fn a_version_1_circuit_record_upgrades_with_no_tripping_outcomes() {
        let record: CircuitRecord = codec::decode("circuits_v1", "x", &v1_bytes()).unwrap();
        assert_eq!(record.state, "open");
        assert_eq!(record.open_until, Some(600_005));
        assert!(record.tripped_by.is_empty());
        assert_eq!((record.tripped_volume, record.tripped_failures), (0, 0));
    }

    #[test]
    fn the_store_migration_of_circuit_records_writes_the_upgraded_version_2() {
        let migrated = crate::store::upgrade_circuit_record_v1(&v1_bytes()).unwrap();
        assert_eq!(migrated[0], CircuitRecord::VERSION);
        let upgraded: CircuitRecord = codec::decode("circuits_v1", "x", &v1_bytes()).unwrap();
        assert_eq!(codec::encode(&upgraded), migrated);
    }
}
