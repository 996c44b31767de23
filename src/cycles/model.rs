//! The stored shapes of the cycles room: cycle runs and their append-only checkpoints,
//! dispatch records, execution records, the value ledger, telemetry events, advisory signals,
//! strategy proposals, governance flags and profile versions.

use serde::{Deserialize, Serialize};
use uuid::Uuid;

use crate::clock::Millis;
use crate::store::codec::Record;

/// The stages of a cycle, in order. `CycleFailed` ends a cycle that cannot go on.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub enum Stage {
    /// The cycle exists (written with its trigger).
    CycleStarted,
    /// The initiation object is built.
    Initiation,
    /// Tier 1 transformations are done.
    Tier1,
    /// Tier 2 transformations are done.
    Tier2,
    /// Tier 3 transformations are done.
    Tier3,
    /// Output items are normalized and stored.
    Normalization,
    /// One dispatch task per target is enqueued.
    DispatchEnqueued,
    /// Every dispatch has an outcome (delivered or dead).
    DispatchComplete,
    /// The cycle is done.
    CycleFinished,
    /// The cycle stopped for good (a step failed).
    CycleFailed,
}

impl Stage {
    /// The stages of a cycle that runs to its end, in order.
    pub const ORDER: [Stage; 9] = [
        Stage::CycleStarted,
        Stage::Initiation,
        Stage::Tier1,
        Stage::Tier2,
        Stage::Tier3,
        Stage::Normalization,
        Stage::DispatchEnqueued,
        Stage::DispatchComplete,
        Stage::CycleFinished,
    ];

    /// The name used in the API, telemetry and `KEEL_CRASH_AT`.
    pub fn as_str(self) -> &'static str {
        match self {
            Stage::CycleStarted => "cycle_started",
            Stage::Initiation => "initiation",
            Stage::Tier1 => "tier1",
            Stage::Tier2 => "tier2",
            Stage::Tier3 => "tier3",
            Stage::Normalization => "normalization",
            Stage::DispatchEnqueued => "dispatch_enqueued",
            Stage::DispatchComplete => "dispatch_complete",
            Stage::CycleFinished => "cycle_finished",
            Stage::CycleFailed => "cycle_failed",
        }
    }

    /// The stage named `name`.
    pub fn parse(name: &str) -> Option<Stage> {
        Stage::ORDER
            .into_iter()
            .chain([Stage::CycleFailed])
            .find(|s| s.as_str() == name)
    }

    /// The stage after this one (none after the last).
    pub fn next(self) -> Option<Stage> {
        let i = Stage::ORDER.iter().position(|s| *s == self)?;
        Stage::ORDER.get(i + 1).copied()
    }

    /// Whether the cycle ends here.
    pub fn is_terminal(self) -> bool {
        matches!(self, Stage::CycleFinished | Stage::CycleFailed)
    }
}

/// Where a cycle is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum CycleStatus {
    /// Stages are still to run.
    Running,
    /// Ran to its end.
    Finished,
    /// Stopped for good.
    Failed,
}

impl CycleStatus {
    /// The name in the API.
    pub fn as_str(self) -> &'static str {
        match self {
            CycleStatus::Running => "running",
            CycleStatus::Finished => "finished",
            CycleStatus::Failed => "failed",
        }
    }
}

/// One cycle run.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct CycleRun {
    /// Time-ordered id.
    pub id: Uuid,
    /// The run profile, or none for a raw cycle.
    pub run_profile_id: Option<String>,
    /// The run profile's profile.
    pub profile_id: Option<String>,
    /// Namespace; every record of the cycle carries it.
    pub namespace: String,
    /// The schedule slot (RFC 3339 time of a cron slot, or `manual:<…>`).
    pub slot: String,
    /// blake3 of (run profile, slot, profile version), hex.
    pub initiation_hash: String,
    /// Version of the profile when the cycle started.
    pub profile_version: u64,
    /// `manual`, `schedule`, `catch_up`.
    pub trigger: String,
    /// Who started it.
    pub actor: String,
    /// When.
    pub created_at: Millis,
    /// When it finished or failed.
    pub finished_at: Option<Millis>,
    /// Where it is.
    pub status: CycleStatus,
    /// The profile and run profile as they were at the start (JSON), so later stages and a
    /// resume after restart never see another configuration.
    pub context: String,
    /// Why it failed.
    pub error: Option<String>,
}

impl Record for CycleRun {
    const VERSION: u8 = 1;
}

/// An append-only checkpoint: one per stage, written in the same transaction as the stage's
/// outputs.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Checkpoint {
    /// The cycle.
    pub cycle_id: Uuid,
    /// 0 for the first.
    pub seq: u32,
    /// The stage it completes.
    pub stage: Stage,
    /// When.
    pub at: Millis,
    /// The stage's output payload (JSON), for stages that produce one.
    pub output: Option<String>,
    /// `webhook-id`s of the dispatches enqueued by this stage.
    pub webhook_ids: Vec<String>,
    /// Facts about the stage (JSON).
    pub detail: String,
}

impl Record for Checkpoint {
    const VERSION: u8 = 1;
}

/// One dispatch of a cycle to one endpoint.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct DispatchRecord {
    /// The cycle.
    pub cycle_id: Uuid,
    /// Distribution target as named by the run profile.
    pub target: String,
    /// Endpoint key in `[dispatch.endpoints]`.
    pub endpoint: String,
    /// The queue task delivering it.
    pub task_id: Uuid,
    /// Its `webhook-id`.
    pub webhook_id: String,
    /// URL at enqueue.
    pub url: String,
    /// Method at enqueue.
    pub method: String,
    /// When it was enqueued.
    pub enqueued_at: Millis,
    /// `delivered`, `dead`, `cancelled` or `missing` once known.
    pub outcome: Option<String>,
    /// When the outcome was seen.
    pub finished_at: Option<Millis>,
    /// HTTP status of the last answer.
    pub status: Option<u16>,
    /// Latency of the last answer.
    pub latency_ms: Option<u64>,
    /// Counted attempts.
    pub attempts: u32,
}

impl Record for DispatchRecord {
    const VERSION: u8 = 1;
}

/// An append-only execution record (a stage, a dispatch, a governance or autonomy action).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ExecutionRecord {
    /// Id.
    pub id: Uuid,
    /// When.
    pub at: Millis,
    /// The cycle, if any.
    pub cycle_id: Option<Uuid>,
    /// Run profile.
    pub run_profile_id: Option<String>,
    /// Profile.
    pub profile_id: Option<String>,
    /// Namespace.
    pub namespace: String,
    /// `cycle`, `initiation`, `transformation`, `normalization`, `dispatch`, `governance`,
    /// `autonomy`.
    pub kind: String,
    /// Stage name or action.
    pub stage: String,
    /// `completed`, `delivered`, `failed`, `skipped`, …
    pub outcome: String,
    /// Facts (JSON).
    pub detail: String,
}

impl Record for ExecutionRecord {
    const VERSION: u8 = 1;
}

/// An append-only value ledger entry: a run profile's value tags for one run.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct LedgerEntry {
    /// Id.
    pub id: Uuid,
    /// When.
    pub at: Millis,
    /// The run.
    pub cycle_id: Uuid,
    /// Run profile.
    pub run_profile_id: Option<String>,
    /// Profile.
    pub profile_id: Option<String>,
    /// Namespace.
    pub namespace: String,
    /// The value tags (JSON object).
    pub tags: String,
}

impl Record for LedgerEntry {
    const VERSION: u8 = 1;
}

/// A telemetry event.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TelemetryEvent {
    /// Id.
    pub id: Uuid,
    /// When (from the clock).
    pub at: Millis,
    /// `execution_started`, `stage_completed`, `delivery_confirmed`, …
    pub event_type: String,
    /// Profile.
    pub profile_id: Option<String>,
    /// The run (cycle).
    pub run_id: Option<Uuid>,
    /// Namespace.
    pub namespace: String,
    /// Facts (JSON object).
    pub metadata: String,
}

impl Record for TelemetryEvent {
    const VERSION: u8 = 1;
}

/// An advisory signal computed from a profile's telemetry (read-only advice).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Signal {
    /// Id.
    pub id: Uuid,
    /// Profile.
    pub profile_id: String,
    /// When.
    pub at: Millis,
    /// `elevated_performance`, `low_performance` or `stable`.
    pub signal: String,
    /// 0 to 1.
    pub confidence: f64,
    /// Finished cycles over finished and failed ones.
    pub success_rate: Option<f64>,
    /// Confirmed deliveries over all delivery outcomes.
    pub delivery_rate: Option<f64>,
    /// 95th percentile of dispatch latency, in ms.
    pub dispatch_latency_p95_ms: Option<u64>,
    /// Cycles that ended in the window.
    pub samples: u64,
    /// Start of the window.
    pub window_from: Millis,
    /// Read-only recommendation.
    pub recommendation: String,
}

impl Record for Signal {
    const VERSION: u8 = 1;
}

/// A strategy proposal: a suggested change to a profile, pending until an operator acts.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Proposal {
    /// Id.
    pub id: Uuid,
    /// Profile.
    pub profile_id: String,
    /// The signal it came from.
    pub signal_id: Uuid,
    /// When.
    pub created_at: Millis,
    /// Who asked for it.
    pub created_by: String,
    /// `tag_elevated_performance`, `disable_profile`.
    pub kind: String,
    /// Why.
    pub rationale: String,
    /// JSON merge patch to the profile.
    pub patch: String,
    /// `pending`, `rejected`, `approved` (nothing changed), `applied`.
    pub status: String,
    /// Who decided.
    pub decided_by: Option<String>,
    /// When.
    pub decided_at: Option<Millis>,
    /// What the decision did.
    pub outcome: Option<String>,
}

impl Record for Proposal {
    const VERSION: u8 = 1;
}

/// A governance flag: the global pause or one namespace's halt.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct GovernanceFlag {
    /// Paused or halted.
    pub on: bool,
    /// Who set it.
    pub by: String,
    /// When.
    pub at: Millis,
    /// Why.
    pub reason: Option<String>,
}

impl Record for GovernanceFlag {
    const VERSION: u8 = 1;
}

/// The current version of one profile.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ProfileVersion {
    /// 1 for the first content seen; +1 for every change.
    pub version: u64,
    /// blake3 of the canonical JSON of the profile, hex.
    pub hash: String,
    /// When this version was first seen.
    pub since: Millis,
}

impl Record for ProfileVersion {
    const VERSION: u8 = 1;
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stages_follow_each_other() {
        assert_eq!(Stage::CycleStarted.next(), Some(Stage::Initiation));
        assert_eq!(Stage::DispatchComplete.next(), Some(Stage::CycleFinished));
        assert_eq!(Stage::CycleFinished.next(), None);
        for s in Stage::ORDER {
            assert_eq!(Stage::parse(s.as_str()), Some(s));
        }
    }
}
