//! Wire models of cycles: profiles and run profiles, reloads and triggers, cycle runs with
//! their checkpoints and dispatches, execution records and the value ledger (telemetry, signals,
//! proposals and governance are in `advice`).

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};
use utoipa::ToSchema;
use uuid::Uuid;

pub use super::advice::{
    Governance, GovernanceFlag, GovernanceOne, Proposal, ProposalOne, Proposals, Reason, Signal,
    SignalOne, Signals, Telemetry, TelemetryEvent,
};
use super::tasks::{Attempt, TaskStatus, Waiting};
use super::{Timestamp, json_text, time_opt};
use crate::clock::Millis;
use crate::config::redact_url;
use crate::cycles::model::{
    Checkpoint, CycleRun, CycleStatus, DispatchRecord, ExecutionRecord as StoredRecord,
    LedgerEntry as StoredLedgerEntry,
};
use crate::cycles::profiles::{self, ExecutionRules as StoredRules, State, Step as StoredStep};
use crate::cycles::{CycleSummary, ReloadReport, RunProfileOutcome, Triggered};
use crate::{exec, queue};

/// Whether a profile or run profile takes part in cycles.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "lowercase")]
pub enum ProfileState {
    /// It runs.
    Enabled,
    /// It is skipped.
    Disabled,
}

impl From<State> for ProfileState {
    fn from(s: State) -> Self {
        match s {
            State::Enabled => ProfileState::Enabled,
            State::Disabled => ProfileState::Disabled,
        }
    }
}

/// One step of a tier.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct ProfileStep {
    /// The step's name.
    pub name: String,
    /// The handler type it runs.
    pub handler: String,
    /// Attempts allowed (the handler's when absent).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_attempts: Option<u32>,
    /// Time limit (the handler's when absent).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub timeout_seconds: Option<u64>,
}

impl From<&StoredStep> for ProfileStep {
    fn from(s: &StoredStep) -> Self {
        ProfileStep {
            name: s.name.clone(),
            handler: s.handler.clone(),
            max_attempts: s.max_attempts,
            timeout_seconds: s.timeout_seconds,
        }
    }
}

/// The steps of a profile's three tiers.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct ExecutionRules {
    /// Tier 1.
    pub tier1: Vec<ProfileStep>,
    /// Tier 2.
    pub tier2: Vec<ProfileStep>,
    /// Tier 3.
    pub tier3: Vec<ProfileStep>,
}

impl From<&StoredRules> for ExecutionRules {
    fn from(r: &StoredRules) -> Self {
        let steps = |t: &[StoredStep]| t.iter().map(ProfileStep::from).collect();
        ExecutionRules {
            tier1: steps(&r.tier1),
            tier2: steps(&r.tier2),
            tier3: steps(&r.tier3),
        }
    }
}

/// A profile from `profiles.json`, with its stored version.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct Profile {
    /// Its id.
    pub profile_id: String,
    /// Label for people.
    pub label: String,
    /// Free-form style settings.
    pub style_vector: Value,
    /// Free-form asset bindings.
    pub asset_bindings: Value,
    /// The steps of its tiers.
    pub execution_rules: ExecutionRules,
    /// Dispatch targets by name.
    pub distribution_map: BTreeMap<String, String>,
    /// Tags recorded in the value ledger.
    pub value_tags: Map<String, Value>,
    /// Whether it runs.
    pub state: ProfileState,
    /// Its version (bumped when its content changes).
    pub version: Option<u64>,
}

impl Profile {
    /// `p` with its version `version`.
    pub fn of(p: &profiles::Profile, version: Option<u64>) -> Profile {
        Profile {
            profile_id: p.profile_id.clone(),
            label: p.label.clone(),
            style_vector: p.style_vector.clone(),
            asset_bindings: p.asset_bindings.clone(),
            execution_rules: (&p.execution_rules).into(),
            distribution_map: p.distribution_map.clone(),
            value_tags: p.value_tags.clone(),
            state: p.state.into(),
            version,
        }
    }
}

/// `GET /api/v1/profiles`.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct ProfileList {
    /// Every profile.
    pub profiles: Vec<Profile>,
    /// The directory the files are read from.
    pub dir: String,
}

/// A run profile from `runProfiles.json`.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct RunProfile {
    /// Its id.
    pub run_profile_id: String,
    /// The profile it runs.
    pub profile_id: String,
    /// Free-form execution policy.
    pub execution_policy: Value,
    /// Free-form asset bundle.
    pub asset_bundle: Value,
    /// Dispatch targets.
    pub distribution_targets: Vec<String>,
    /// Tags recorded in the value ledger.
    pub value_tags: Map<String, Value>,
    /// Whether it runs.
    pub state: ProfileState,
    /// Its namespace.
    pub namespace: String,
}

impl From<&profiles::RunProfile> for RunProfile {
    fn from(r: &profiles::RunProfile) -> Self {
        RunProfile {
            run_profile_id: r.run_profile_id.clone(),
            profile_id: r.profile_id.clone(),
            execution_policy: r.execution_policy.clone(),
            asset_bundle: r.asset_bundle.clone(),
            distribution_targets: r.distribution_targets.clone(),
            value_tags: r.value_tags.clone(),
            state: r.state.into(),
            namespace: r.namespace.clone(),
        }
    }
}

/// `GET /api/v1/run-profiles`.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct RunProfileList {
    /// Every run profile.
    pub run_profiles: Vec<RunProfile>,
    /// The directory the files are read from.
    pub dir: String,
}

/// `POST /api/v1/config/reload`: what the reload found.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
#[schema(example = json!({"profiles": 2, "run_profiles": 3, "versions": {"daily": 4}, "changed": ["daily"]}))]
pub struct Reloaded {
    /// Profiles loaded.
    pub profiles: usize,
    /// Run profiles loaded.
    pub run_profiles: usize,
    /// Every profile's version.
    pub versions: BTreeMap<String, u64>,
    /// Profiles whose content changed.
    pub changed: Vec<String>,
}

impl From<ReloadReport> for Reloaded {
    fn from(r: ReloadReport) -> Self {
        Reloaded {
            profiles: r.profiles,
            run_profiles: r.run_profiles,
            versions: r.versions,
            changed: r.changed,
        }
    }
}

/// `POST /api/v1/cycles/trigger`: optional body; without one, the default namespace's cycle of
/// the current slot.
#[derive(Debug, Clone, Default, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
#[schema(example = json!({"namespace": "default", "run_profile_id": "nightly", "slot": "2026-01-01T00"}))]
pub struct TriggerCycle {
    /// The namespace (default: `cycles.default_namespace`): 1 to 64 letters, digits, `-`, `_`
    /// or `.`, starting with a letter or digit. A raw cycle's must be known:
    /// `cycles.default_namespace`, one of `cycles.namespaces` or a run profile's.
    #[serde(default)]
    #[schema(pattern = "^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$")]
    pub namespace: Option<String>,
    /// The run profile.
    #[serde(default)]
    pub run_profile_id: Option<String>,
    /// The slot (a cycle per slot at most).
    #[serde(default)]
    pub slot: Option<String>,
}

/// A triggered cycle: 201 when new, 200 when it existed already.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct CycleTriggered {
    /// The cycle.
    pub cycle_run_id: Uuid,
    /// Whether this call started it.
    pub created: bool,
    /// Its run profile.
    pub run_profile_id: Option<String>,
    /// Its namespace.
    pub namespace: String,
    /// The hash identifying its initiation.
    pub initiation_hash: String,
}

impl From<&Triggered> for CycleTriggered {
    fn from(t: &Triggered) -> Self {
        CycleTriggered {
            cycle_run_id: t.cycle_id,
            created: t.created,
            run_profile_id: t.run_profile_id.clone(),
            namespace: t.namespace.clone(),
            initiation_hash: t.initiation_hash.clone(),
        }
    }
}

/// `POST /api/v1/run-profiles/trigger`: optional body.
#[derive(Debug, Clone, Default, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
#[schema(example = json!({"slot": "2026-01-01T00"}))]
pub struct TriggerRunProfiles {
    /// The slot.
    #[serde(default)]
    pub slot: Option<String>,
}

/// What triggering every enabled run profile did.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct RunProfilesTriggered {
    /// One per run profile.
    pub runs: Vec<RunProfileRun>,
}

/// What triggering one run profile did.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct RunProfileRun {
    /// The run profile.
    pub run_profile_id: String,
    /// Its namespace.
    pub namespace: String,
    /// The cycle, unless skipped.
    pub cycle_run_id: Option<Uuid>,
    /// Whether the cycle is new, unless skipped.
    pub created: Option<bool>,
    /// Why it was skipped.
    pub skipped: Option<String>,
}

impl From<&RunProfileOutcome> for RunProfileRun {
    fn from(o: &RunProfileOutcome) -> Self {
        RunProfileRun {
            run_profile_id: o.run_profile_id.clone(),
            namespace: o.namespace.clone(),
            cycle_run_id: o.cycle.as_ref().map(|c| c.cycle_id),
            created: o.cycle.as_ref().map(|c| c.created),
            skipped: o.skipped.clone(),
        }
    }
}

/// Where a cycle is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "lowercase")]
pub enum CycleState {
    /// Still running.
    Running,
    /// Finished.
    Finished,
    /// Failed.
    Failed,
}

impl From<CycleStatus> for CycleState {
    fn from(s: CycleStatus) -> Self {
        match s {
            CycleStatus::Running => CycleState::Running,
            CycleStatus::Finished => CycleState::Finished,
            CycleStatus::Failed => CycleState::Failed,
        }
    }
}

/// A cycle run.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct Cycle {
    /// Id.
    pub id: Uuid,
    /// Where it is.
    pub status: CycleState,
    /// Its run profile.
    pub run_profile_id: Option<String>,
    /// Its profile.
    pub profile_id: Option<String>,
    /// Its namespace.
    pub namespace: String,
    /// Its slot.
    pub slot: String,
    /// The hash identifying its initiation.
    pub initiation_hash: String,
    /// The profile version it ran.
    pub profile_version: u64,
    /// What started it (`schedule`, `api`, ...).
    pub trigger: String,
    /// Who started it.
    pub created_by: String,
    /// When it started.
    pub created_at: Timestamp,
    /// When it ended.
    pub finished_at: Option<Timestamp>,
    /// How long it took.
    pub duration_ms: Option<i64>,
    /// Why it failed.
    pub error: Option<String>,
}

impl From<&CycleRun> for Cycle {
    fn from(run: &CycleRun) -> Self {
        Cycle {
            id: run.id,
            status: run.status.into(),
            run_profile_id: run.run_profile_id.clone(),
            profile_id: run.profile_id.clone(),
            namespace: run.namespace.clone(),
            slot: run.slot.clone(),
            initiation_hash: run.initiation_hash.clone(),
            profile_version: run.profile_version,
            trigger: run.trigger.clone(),
            created_by: run.actor.clone(),
            created_at: run.created_at.into(),
            finished_at: time_opt(run.finished_at),
            duration_ms: run.finished_at.map(|f| f - run.created_at),
            error: run.error.clone(),
        }
    }
}

/// A recent cycle with its current stage.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct RecentCycle {
    /// The cycle.
    #[serde(flatten)]
    pub cycle: Cycle,
    /// Its last checkpoint's stage.
    pub stage: String,
    /// When that checkpoint was written.
    pub stage_at: Timestamp,
}

impl From<&CycleSummary> for RecentCycle {
    fn from(c: &CycleSummary) -> Self {
        RecentCycle {
            cycle: (&c.run).into(),
            stage: c.stage.as_str().to_string(),
            stage_at: c.stage_at.into(),
        }
    }
}

/// `GET /api/v1/cycles/recent`: newest first.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct RecentCycles {
    /// The cycles.
    pub cycles: Vec<RecentCycle>,
}

/// A checkpoint of a cycle: one stage reached.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct CycleCheckpoint {
    /// Its position, from 0.
    pub seq: u32,
    /// The stage, e.g. `tier1`, `dispatch_enqueued`.
    pub stage: String,
    /// When it was written.
    pub at: Timestamp,
    /// The stage's output (JSON), if any.
    pub output: Option<Value>,
    /// Webhook ids of dispatches it enqueued.
    pub webhook_ids: Vec<String>,
    /// Details (JSON).
    pub detail: Value,
}

impl From<&Checkpoint> for CycleCheckpoint {
    fn from(c: &Checkpoint) -> Self {
        CycleCheckpoint {
            seq: c.seq,
            stage: c.stage.as_str().to_string(),
            at: c.at.into(),
            output: c.output.as_deref().map(json_text),
            webhook_ids: c.webhook_ids.clone(),
            detail: json_text(&c.detail),
        }
    }
}

/// How long a stage took after the previous one.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct StageTiming {
    /// The stage.
    pub stage: String,
    /// Milliseconds since the previous checkpoint (or the start).
    pub ms: i64,
}

/// A dispatch of a cycle and the task that delivers it.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct Dispatch {
    /// The target.
    pub target: String,
    /// The endpoint's name.
    pub endpoint: String,
    /// Its URL.
    pub url: String,
    /// Its method.
    pub method: String,
    /// The delivering task.
    pub task_id: Uuid,
    /// The Standard Webhooks id.
    pub webhook_id: String,
    /// When it was enqueued.
    pub enqueued_at: Timestamp,
    /// How it ended.
    pub outcome: Option<String>,
    /// When it ended.
    pub finished_at: Option<Timestamp>,
    /// The receiver's HTTP status.
    pub http_status: Option<u16>,
    /// How long delivery took.
    pub latency_ms: Option<u64>,
    /// Attempts made.
    pub attempts: u32,
    /// The delivering task's status (null when the task is gone).
    pub task_status: Option<TaskStatus>,
    /// The delivering task's attempts (null when the task is gone).
    pub receipts: Option<Vec<Attempt>>,
}

impl Dispatch {
    /// `d` with its task, if it still exists.
    pub fn of(d: &DispatchRecord, task: Option<&crate::queue::Task>) -> Dispatch {
        Dispatch {
            target: d.target.clone(),
            endpoint: d.endpoint.clone(),
            url: redact_url(&d.url),
            method: d.method.clone(),
            task_id: d.task_id,
            webhook_id: d.webhook_id.clone(),
            enqueued_at: d.enqueued_at.into(),
            outcome: d.outcome.clone(),
            finished_at: time_opt(d.finished_at),
            http_status: d.status,
            latency_ms: d.latency_ms,
            attempts: d.attempts,
            task_status: task.map(|t| t.status.into()),
            receipts: task.map(|t| t.attempts.iter().map(Attempt::from).collect()),
        }
    }
}

/// An execution record: something a cycle did.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct ExecutionRecord {
    /// Id.
    pub id: Uuid,
    /// When.
    pub at: Timestamp,
    /// The cycle.
    pub cycle_id: Option<Uuid>,
    /// Its run profile.
    pub run_profile_id: Option<String>,
    /// Its profile.
    pub profile_id: Option<String>,
    /// Its namespace.
    pub namespace: String,
    /// What kind of record.
    pub kind: String,
    /// The stage.
    pub stage: String,
    /// How it went.
    pub outcome: String,
    /// Details (JSON).
    pub detail: Value,
}

impl From<&StoredRecord> for ExecutionRecord {
    fn from(r: &StoredRecord) -> Self {
        ExecutionRecord {
            id: r.id,
            at: r.at.into(),
            cycle_id: r.cycle_id,
            run_profile_id: r.run_profile_id.clone(),
            profile_id: r.profile_id.clone(),
            namespace: r.namespace.clone(),
            kind: r.kind.clone(),
            stage: r.stage.clone(),
            outcome: r.outcome.clone(),
            detail: json_text(&r.detail),
        }
    }
}

/// An entry of the value ledger.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct LedgerEntry {
    /// Id.
    pub id: Uuid,
    /// When.
    pub at: Timestamp,
    /// The cycle.
    pub cycle_id: Uuid,
    /// Its run profile.
    pub run_profile_id: Option<String>,
    /// Its profile.
    pub profile_id: Option<String>,
    /// Its namespace.
    pub namespace: String,
    /// The value tags (JSON).
    pub tags: Value,
}

impl From<&StoredLedgerEntry> for LedgerEntry {
    fn from(e: &StoredLedgerEntry) -> Self {
        LedgerEntry {
            id: e.id,
            at: e.at.into(),
            cycle_id: e.cycle_id,
            run_profile_id: e.run_profile_id.clone(),
            profile_id: e.profile_id.clone(),
            namespace: e.namespace.clone(),
            tags: json_text(&e.tags),
        }
    }
}

/// `GET /api/v1/cycles/{id}`: everything about one cycle.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct CycleDetail {
    /// The cycle.
    pub cycle: Cycle,
    /// Its last checkpoint's stage.
    pub stage: Option<String>,
    /// Its checkpoints in order.
    pub checkpoints: Vec<CycleCheckpoint>,
    /// How long each stage took.
    pub timings: Vec<StageTiming>,
    /// Its dispatches.
    pub dispatches: Vec<Dispatch>,
    /// Its execution records.
    pub records: Vec<ExecutionRecord>,
    /// Its value ledger entries.
    pub ledger: Vec<LedgerEntry>,
    /// The queue tasks a running cycle waits for now, each with what it waits on.
    pub waiting_on: Vec<CycleWait>,
}

/// `POST /api/v1/cycles/{id}/cancel`: the cancelled cycle.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct CycleCancelled {
    /// The cycle, now failed with error `cancelled by <key>`.
    pub cycle: Cycle,
}

/// A queue task a running cycle waits for.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct CycleWait {
    /// The task.
    pub task_id: Uuid,
    /// Its type.
    #[schema(example = "cycle.dispatch")]
    pub task_type: String,
    /// Where it is.
    pub status: TaskStatus,
    /// What it waits on besides its due time (an open circuit, a spent budget, a concurrency
    /// limit), and when it will be tried again; null when nothing holds it back.
    pub waiting: Option<Waiting>,
}

impl CycleWait {
    /// `task` as a cycle waits for it, with what it waits on (asked of the dispatcher now).
    pub fn of(task: &queue::Task, dispatcher: &exec::Dispatcher, now: Millis) -> CycleWait {
        CycleWait {
            task_id: task.id,
            task_type: task.task_type.clone(),
            status: task.status.into(),
            waiting: dispatcher.waiting(task, now).as_ref().map(Waiting::from),
        }
    }
}

impl From<&crate::cycles::CycleDetail> for CycleDetail {
    fn from(d: &crate::cycles::CycleDetail) -> Self {
        let mut timings = Vec::new();
        let mut previous = d.run.created_at;
        for c in &d.checkpoints {
            timings.push(StageTiming {
                stage: c.stage.as_str().to_string(),
                ms: c.at - previous,
            });
            previous = c.at;
        }
        CycleDetail {
            cycle: (&d.run).into(),
            stage: d.checkpoints.last().map(|c| c.stage.as_str().to_string()),
            checkpoints: d.checkpoints.iter().map(CycleCheckpoint::from).collect(),
            timings,
            dispatches: d
                .dispatches
                .iter()
                .map(|(r, t)| Dispatch::of(r, t.as_ref()))
                .collect(),
            records: d.records.iter().map(ExecutionRecord::from).collect(),
            ledger: d.ledger.iter().map(LedgerEntry::from).collect(),
            waiting_on: Vec::new(),
        }
    }
}

/// `GET /api/v1/execution-records`.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct ExecutionRecords {
    /// The records.
    pub records: Vec<ExecutionRecord>,
}

/// `GET /api/v1/value-ledger`.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct ValueLedger {
    /// The entries.
    pub entries: Vec<LedgerEntry>,
}
