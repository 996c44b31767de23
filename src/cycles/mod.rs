//! Cycles: profiles and run profiles from validated JSON files, scheduled and triggered cycle
//! runs with append-only checkpoints (resumed after a crash at the last one), dispatch through
//! the task queue, execution records, the value ledger, the telemetry bus, advisory signals,
//! strategy proposals under controlled autonomy, and governance (global pause, namespace halt).
//!
//! Invariants: every stage writes its checkpoint in the same transaction as its outputs, so a
//! stage is either wholly done or not at all; work a stage hands to the queue (transformation
//! steps, normalization batches, dispatches) uses task ids derived from (cycle, stage, key), so
//! running a stage again after a crash finds the same tasks instead of making new ones, and a
//! dispatch delivered twice always carries the same `webhook-id`. Every record a cycle writes
//! carries its namespace; a cycle never writes another namespace's records.

pub mod advice;
pub mod model;
pub mod profiles;
mod runner;
pub mod telemetry;

use std::collections::{BTreeMap, HashSet};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, RwLock};
use std::time::Duration;

use redb::{ReadTransaction, ReadableTable, TableHandle, WriteTransaction};
use serde_json::{Value, json};
use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use uuid::Uuid;

use crate::audit::{Audit, Event, SYSTEM_ACTOR};
use crate::clock::{Millis, SharedClock};
use crate::config::Config;
use crate::queue::{Queue, QueueError, Task};
use crate::schedule::CronSchedule;
use crate::store::codec;
use crate::store::tables::cycles::{
    CYCLE_CHECKPOINTS, CYCLE_DISPATCHES, CYCLE_INITIATIONS, CYCLE_RUNS, CYCLE_SCHEDULES,
    CYCLE_SLOTS, CYCLES_ACTIVE, EXECUTION_RECORDS, EXECUTION_RECORDS_BY_CYCLE, GOVERNANCE,
    PROFILE_VERSIONS, VALUE_LEDGER,
};
use crate::store::{Store, StoreError};
use crate::supervisor::{StepFuture, Worker};
use model::{
    Checkpoint, CycleRun, CycleStatus, DispatchRecord, ExecutionRecord, GovernanceFlag,
    LedgerEntry, ProfileVersion, Stage, TelemetryEvent,
};
use profiles::{ConfigIssues, Profile, ProfileSet, RunProfile, State};

/// The environment variable naming a crash point, for crash tests only: `<stage>` kills the
/// process right after that stage's checkpoint is durable, `before:<stage>` right before its
/// transaction commits. Unset (the normal case), it does nothing.
pub const CRASH_ENV: &str = "KEEL_CRASH_AT";

/// The task type of dispatch tasks (delivered by the http executor with the endpoint snapshot
/// taken at enqueue; no `[handlers]` entry is needed).
pub const DISPATCH_TASK_TYPE: &str = "cycle-dispatch";

/// Names of the two cron schedules.
const RAW_SCHEDULE: &str = "cycles";
const RUN_PROFILE_SCHEDULE: &str = "run_profiles";

pub use crate::config::names::valid_name;

/// Errors of the cycles room.
#[derive(Debug, thiserror::Error)]
pub enum CyclesError {
    /// The request is not acceptable; the message names the field.
    #[error("{0}")]
    Invalid(String),
    /// No such thing.
    #[error("{0}")]
    NotFound(String),
    /// Not now (a cycle is active, cycles are paused, a namespace is halted, …).
    #[error("{message}")]
    Conflict {
        /// Stable code.
        code: &'static str,
        /// What and why.
        message: String,
    },
    /// The profile files are invalid; every problem is listed.
    #[error(transparent)]
    Config(#[from] ConfigIssues),
    /// The queue refused a task.
    #[error(transparent)]
    Queue(#[from] QueueError),
    /// A file could not be written (archive, profiles).
    #[error("{0}")]
    Io(String),
    /// The store failed.
    #[error(transparent)]
    Store(#[from] StoreError),
}

impl From<redb::StorageError> for CyclesError {
    fn from(e: redb::StorageError) -> Self {
        CyclesError::Store(e.into())
    }
}

impl From<redb::TableError> for CyclesError {
    fn from(e: redb::TableError) -> Self {
        CyclesError::Store(e.into())
    }
}

fn conflict(code: &'static str, message: impl Into<String>) -> CyclesError {
    CyclesError::Conflict {
        code,
        message: message.into(),
    }
}

/// What to start.
#[derive(Debug, Clone, Default)]
pub struct TriggerRequest {
    /// Namespace of a raw cycle (default `cycles.default_namespace`); with a run profile, it
    /// must be the run profile's.
    pub namespace: Option<String>,
    /// Run this run profile instead of a raw cycle.
    pub run_profile_id: Option<String>,
    /// Schedule slot; the same slot never runs twice. Default: a new manual slot.
    pub slot: Option<String>,
}

/// A started (or already existing) cycle.
#[derive(Debug, Clone, PartialEq)]
pub struct Triggered {
    /// The cycle.
    pub cycle_id: Uuid,
    /// Whether this call created it (false: its slot had run before).
    pub created: bool,
    /// Run profile.
    pub run_profile_id: Option<String>,
    /// Namespace.
    pub namespace: String,
    /// Initiation hash.
    pub initiation_hash: String,
}

/// What a run-profile trigger did with one run profile.
#[derive(Debug, Clone, PartialEq)]
pub struct RunProfileOutcome {
    /// Run profile.
    pub run_profile_id: String,
    /// Namespace.
    pub namespace: String,
    /// The cycle, unless skipped.
    pub cycle: Option<Triggered>,
    /// Why nothing ran.
    pub skipped: Option<String>,
}

/// What a reload did.
#[derive(Debug, Clone, PartialEq)]
pub struct ReloadReport {
    /// Profiles loaded.
    pub profiles: usize,
    /// Run profiles loaded.
    pub run_profiles: usize,
    /// Profile versions now.
    pub versions: BTreeMap<String, u64>,
    /// Profiles whose version changed.
    pub changed: Vec<String>,
}

/// Governance state.
#[derive(Debug, Clone, PartialEq)]
pub struct GovernanceView {
    /// Paused by `governance.global_pause`.
    pub paused_by_config: bool,
    /// Paused through the API.
    pub paused: Option<GovernanceFlag>,
    /// Namespaces and their halt flags.
    pub namespaces: BTreeMap<String, GovernanceFlag>,
}

impl GovernanceView {
    /// Whether cycles are paused.
    pub fn is_paused(&self) -> bool {
        self.paused_by_config || self.paused.as_ref().is_some_and(|f| f.on)
    }

    /// Whether `namespace` is halted.
    pub fn is_halted(&self, namespace: &str) -> bool {
        self.namespaces.get(namespace).is_some_and(|f| f.on)
    }
}

/// A cycle with its last stage.
#[derive(Debug, Clone)]
pub struct CycleSummary {
    /// The run.
    pub run: CycleRun,
    /// The last checkpoint's stage.
    pub stage: Stage,
    /// When it was written.
    pub stage_at: Millis,
}

/// Everything about one cycle.
#[derive(Debug, Clone)]
pub struct CycleDetail {
    /// The run.
    pub run: CycleRun,
    /// Its checkpoints, in order.
    pub checkpoints: Vec<Checkpoint>,
    /// Its dispatches and their tasks (with the receipts of their attempts).
    pub dispatches: Vec<(DispatchRecord, Option<Task>)>,
    /// Its execution records.
    pub records: Vec<ExecutionRecord>,
    /// Its value ledger entries.
    pub ledger: Vec<LedgerEntry>,
}

/// Filter of execution records and ledger entries.
#[derive(Debug, Clone, Default)]
pub struct RecordFilter {
    /// One run.
    pub cycle_id: Option<Uuid>,
    /// One profile.
    pub profile_id: Option<String>,
    /// One run profile.
    pub run_profile_id: Option<String>,
    /// One namespace.
    pub namespace: Option<String>,
    /// From (inclusive).
    pub since: Option<Millis>,
    /// Until (exclusive).
    pub until: Option<Millis>,
    /// At most (1..=1000).
    pub limit: usize,
}

/// The resolved context of a cycle, frozen when it starts.
#[derive(Debug, Clone, serde::Serialize, serde::Deserialize)]
pub struct CycleContext {
    /// The profile (none for a raw cycle).
    pub profile: Option<Profile>,
    /// The run profile (none for a raw cycle).
    pub run_profile: Option<RunProfile>,
    /// (target, endpoint key) pairs to dispatch to.
    pub targets: Vec<(String, String)>,
}

/// The cycles room.
pub struct Cycles {
    store: Arc<Store>,
    audit: Arc<Audit>,
    clock: SharedClock,
    config: Arc<Config>,
    queue: Arc<Queue>,
    profiles: RwLock<Arc<ProfileSet>>,
    /// Held for writing by reloads and profile mutations, for reading while cycles are
    /// created, so neither sees the other half done.
    gate: tokio::sync::RwLock<()>,
    wake: Arc<Notify>,
    running: Mutex<HashSet<Uuid>>,
    tracker: TaskTracker,
    /// Cancelled at the drain deadline: runners stop at their next wait.
    stop: CancellationToken,
    draining: AtomicBool,
    crash_at: Option<String>,
    raw_schedule: Option<CronSchedule>,
    run_profile_schedule: Option<CronSchedule>,
}

/// Reads `KEEL_CRASH_AT` (test-only): a known stage name, optionally prefixed `before:`.
/// Anything else is ignored with a warning.
pub fn crash_point_from_env() -> Option<String> {
    let value = std::env::var(CRASH_ENV).ok()?;
    let value = value.trim().to_string();
    if value.is_empty() {
        return None;
    }
    let stage = value.strip_prefix("before:").unwrap_or(&value);
    if Stage::parse(stage).is_some() {
        tracing::warn!(
            crash_at = %value,
            "{CRASH_ENV} is set: this process will kill itself at that point (crash tests only)"
        );
        Some(value)
    } else {
        tracing::warn!(value = %value, "{CRASH_ENV} names no stage; ignored");
        None
    }
}

impl Cycles {
    /// Takes the profiles loaded by [`profiles::load`] (before anything else was opened, so
    /// invalid files change nothing), records their versions, and returns the room.
    /// `crash_at` comes from [`crash_point_from_env`] in the binary and is `None` everywhere
    /// else.
    pub async fn open(
        store: Arc<Store>,
        audit: Arc<Audit>,
        clock: SharedClock,
        config: Arc<Config>,
        queue: Arc<Queue>,
        set: ProfileSet,
        crash_at: Option<String>,
    ) -> Result<Arc<Cycles>, CyclesError> {
        let raw_schedule = config.cycles.raw_schedule().map_err(CyclesError::Invalid)?;
        let run_profile_schedule = config
            .cycles
            .run_profiles_schedule()
            .map_err(CyclesError::Invalid)?;
        let cycles = Arc::new(Cycles {
            store,
            audit,
            clock,
            config,
            queue,
            profiles: RwLock::new(Arc::new(ProfileSet::default())),
            gate: tokio::sync::RwLock::new(()),
            wake: Arc::new(Notify::new()),
            running: Mutex::new(HashSet::new()),
            tracker: TaskTracker::new(),
            stop: CancellationToken::new(),
            draining: AtomicBool::new(false),
            crash_at,
            raw_schedule,
            run_profile_schedule,
        });
        let set = cycles.sync_versions(set, SYSTEM_ACTOR, None).await?.0;
        *cycles.profiles.write().unwrap_or_else(|e| e.into_inner()) = Arc::new(set);
        Ok(cycles)
    }

    /// The profiles and run profiles in force.
    pub fn profile_set(&self) -> Arc<ProfileSet> {
        Arc::clone(&self.profiles.read().unwrap_or_else(|e| e.into_inner()))
    }

    /// Records the version of every profile of `set` (a new version when its content changed)
    /// and returns the set with its versions and the ids that changed. With `reload_actor`, the
    /// reload itself is audited in the same transaction.
    async fn sync_versions(
        &self,
        mut set: ProfileSet,
        actor: &str,
        reload_actor: Option<&str>,
    ) -> Result<(ProfileSet, Vec<String>), CyclesError> {
        let now = self.clock.now_ms();
        let hashes: Vec<(String, String)> = set
            .profiles
            .iter()
            .map(|p| {
                let value = serde_json::to_value(p).unwrap_or(Value::Null);
                let canonical = profiles::canonical_json(&value);
                (
                    p.profile_id.clone(),
                    blake3::hash(canonical.as_bytes()).to_hex().to_string(),
                )
            })
            .collect();
        let audit = Arc::clone(&self.audit);
        let actor = actor.to_string();
        let reload_actor = reload_actor.map(str::to_string);
        let counts = (set.profiles.len(), set.run_profiles.len());
        let (versions, changed) = self
            .store
            .write(
                move |tx| -> Result<(BTreeMap<String, u64>, Vec<String>), CyclesError> {
                    let mut table = tx.open_table(PROFILE_VERSIONS)?;
                    let mut versions = BTreeMap::new();
                    let mut changed = Vec::new();
                    for (id, hash) in &hashes {
                        let current = table
                            .get(id.as_str())?
                            .map(|v| {
                                codec::decode::<ProfileVersion>(
                                    PROFILE_VERSIONS.name(),
                                    id,
                                    v.value(),
                                )
                            })
                            .transpose()?;
                        let version = match current {
                            Some(v) if v.hash == *hash => v.version,
                            other => {
                                let version = other.map_or(1, |v| v.version + 1);
                                let record = ProfileVersion {
                                    version,
                                    hash: hash.clone(),
                                    since: now,
                                };
                                table.insert(id.as_str(), codec::encode(&record).as_slice())?;
                                changed.push(id.clone());
                                version
                            }
                        };
                        versions.insert(id.clone(), version);
                    }
                    drop(table);
                    if !changed.is_empty() {
                        let detail = changed
                            .iter()
                            .map(|id| (id.clone(), json!(versions[id])))
                            .collect::<serde_json::Map<_, _>>();
                        audit.append(
                            tx,
                            now,
                            &Event::new(actor.clone(), "profiles.version", "profiles")
                                .with_detail(Value::Object(detail)),
                        )?;
                    }
                    if let Some(by) = &reload_actor {
                        audit.append(
                            tx,
                            now,
                            &Event::new(by.clone(), "config.reload", "profiles").with_detail(
                                json!({"profiles": counts.0, "run_profiles": counts.1,
                                       "changed": changed}),
                            ),
                        )?;
                    }
                    Ok((versions, changed))
                },
            )
            .await?;
        set.versions = versions;
        Ok((set, changed))
    }

    /// Re-reads the profile files. Refused while any cycle is active; invalid files leave the
    /// running configuration in place and return every problem.
    pub async fn reload(&self, actor: &str) -> Result<ReloadReport, CyclesError> {
        let _gate = self.gate.write().await;
        let active = self.active_ids().await?;
        if !active.is_empty() {
            return Err(conflict(
                "cycle_active",
                format!(
                    "{} cycle(s) are active ({}); reload when they have finished",
                    active.len(),
                    active
                        .iter()
                        .take(5)
                        .map(Uuid::to_string)
                        .collect::<Vec<_>>()
                        .join(", ")
                ),
            ));
        }
        let config = Arc::clone(&self.config);
        let set = tokio::task::spawn_blocking(move || profiles::load(&config))
            .await
            .map_err(|e| CyclesError::Io(format!("profile loading panicked: {e}")))??;
        let (set, changed) = self.sync_versions(set, actor, Some(actor)).await?;
        let report = ReloadReport {
            profiles: set.profiles.len(),
            run_profiles: set.run_profiles.len(),
            versions: set.versions.clone(),
            changed,
        };
        *self.profiles.write().unwrap_or_else(|e| e.into_inner()) = Arc::new(set);
        tracing::info!(
            profiles = report.profiles,
            run_profiles = report.run_profiles,
            changed = ?report.changed,
            "profiles reloaded"
        );
        Ok(report)
    }

    /// Ids of unfinished cycles.
    pub async fn active_ids(&self) -> Result<Vec<Uuid>, CyclesError> {
        self.store
            .read(|tx| -> Result<Vec<Uuid>, CyclesError> {
                let table = tx.open_table(CYCLES_ACTIVE)?;
                let mut ids = Vec::new();
                for row in table.iter()? {
                    ids.push(Uuid::from_u128(row?.0.value()));
                }
                Ok(ids)
            })
            .await
    }

    /// Governance state.
    pub async fn governance(&self) -> Result<GovernanceView, CyclesError> {
        let paused_by_config = self.config.governance.global_pause;
        self.store
            .read(move |tx| governance_in(tx, paused_by_config))
            .await
    }

    /// Starts one cycle (a raw one, or of one run profile). The same slot of the same run
    /// profile returns the existing cycle. Refused while paused or the namespace is halted.
    pub async fn trigger(
        self: &Arc<Self>,
        actor: &str,
        request: TriggerRequest,
    ) -> Result<Triggered, CyclesError> {
        if let Some(slot) = &request.slot
            && (slot.is_empty() || slot.len() > 200)
        {
            return Err(CyclesError::Invalid(
                "slot: must be 1 to 200 characters".into(),
            ));
        }
        let _gate = self.gate.read().await;
        let set = self.profile_set();
        let plan = match &request.run_profile_id {
            Some(id) => {
                let rp = set.run_profile(id).ok_or_else(|| {
                    CyclesError::NotFound(format!("no run profile `{id}` is configured"))
                })?;
                if let Some(ns) = &request.namespace
                    && *ns != rp.namespace
                {
                    return Err(CyclesError::Invalid(format!(
                        "namespace: run profile `{id}` is in namespace `{}`, not `{ns}`",
                        rp.namespace
                    )));
                }
                let profile = set.profile(&rp.profile_id).ok_or_else(|| {
                    CyclesError::NotFound(format!("no profile `{}`", rp.profile_id))
                })?;
                if rp.state != State::Enabled || profile.state != State::Enabled {
                    return Err(conflict(
                        "disabled",
                        format!(
                            "run profile `{id}` or its profile `{}` is disabled",
                            profile.profile_id
                        ),
                    ));
                }
                self.plan(&set, Some(rp), None, request.slot.clone(), "manual", actor)
            }
            None => {
                let ns = request
                    .namespace
                    .clone()
                    .unwrap_or_else(|| self.config.cycles.default_namespace.clone());
                if !valid_name(&ns) {
                    return Err(CyclesError::Invalid(
                        "namespace: 1 to 64 letters, digits, '-', '_' or '.'".into(),
                    ));
                }
                self.plan(&set, None, Some(ns), request.slot.clone(), "manual", actor)
            }
        };
        let results = self.create(vec![plan], None, true).await?;
        let triggered = results
            .into_iter()
            .next()
            .and_then(|r| r.ok())
            .ok_or_else(|| CyclesError::Io("the cycle was not created".into()))?;
        self.wake.notify_one();
        Ok(triggered)
    }

    /// Starts one cycle for every enabled run profile (skipping halted namespaces and disabled
    /// profiles, or all while paused).
    pub async fn trigger_run_profiles(
        self: &Arc<Self>,
        actor: &str,
        slot: Option<String>,
    ) -> Result<Vec<RunProfileOutcome>, CyclesError> {
        if let Some(slot) = &slot
            && (slot.is_empty() || slot.len() > 200)
        {
            return Err(CyclesError::Invalid(
                "slot: must be 1 to 200 characters".into(),
            ));
        }
        let _gate = self.gate.read().await;
        let outcomes = self.run_profiles_now(actor, slot, "manual", None).await?;
        self.wake.notify_one();
        Ok(outcomes)
    }

    async fn run_profiles_now(
        &self,
        actor: &str,
        slot: Option<String>,
        trigger: &str,
        schedule_update: Option<(&'static str, Millis)>,
    ) -> Result<Vec<RunProfileOutcome>, CyclesError> {
        let set = self.profile_set();
        let mut outcomes = Vec::new();
        let mut plans = Vec::new();
        for rp in &set.run_profiles {
            let profile_enabled = set
                .profile(&rp.profile_id)
                .is_some_and(|p| p.state == State::Enabled);
            if rp.state != State::Enabled {
                continue;
            }
            if !profile_enabled {
                outcomes.push(RunProfileOutcome {
                    run_profile_id: rp.run_profile_id.clone(),
                    namespace: rp.namespace.clone(),
                    cycle: None,
                    skipped: Some(format!("profile `{}` is disabled", rp.profile_id)),
                });
                continue;
            }
            plans.push(self.plan(&set, Some(rp), None, slot.clone(), trigger, actor));
        }
        let results = self.create(plans.clone(), schedule_update, false).await?;
        for (plan, result) in plans.iter().zip(results) {
            let (cycle, skipped) = match result {
                Ok(t) => (Some(t), None),
                Err(why) => (None, Some(why)),
            };
            outcomes.push(RunProfileOutcome {
                run_profile_id: plan.run.run_profile_id.clone().unwrap_or_default(),
                namespace: plan.run.namespace.clone(),
                cycle,
                skipped,
            });
        }
        Ok(outcomes)
    }

    /// Builds the record of a cycle to create.
    fn plan(
        &self,
        set: &ProfileSet,
        rp: Option<&RunProfile>,
        namespace: Option<String>,
        slot: Option<String>,
        trigger: &str,
        actor: &str,
    ) -> Plan {
        let id = Uuid::now_v7();
        let slot = slot.unwrap_or_else(|| format!("manual:{id}"));
        let (context, namespace, version) = match rp {
            Some(rp) => {
                let profile = set.profile(&rp.profile_id).cloned();
                let targets = rp
                    .distribution_targets
                    .iter()
                    .map(|t| {
                        let endpoint = profile
                            .as_ref()
                            .and_then(|p| p.distribution_map.get(t))
                            .unwrap_or(t);
                        (t.clone(), endpoint.clone())
                    })
                    .collect();
                let version = set.versions.get(&rp.profile_id).copied().unwrap_or(0);
                (
                    CycleContext {
                        profile,
                        run_profile: Some(rp.clone()),
                        targets,
                    },
                    rp.namespace.clone(),
                    version,
                )
            }
            None => (
                CycleContext {
                    profile: None,
                    run_profile: None,
                    targets: self
                        .config
                        .cycles
                        .default_targets
                        .iter()
                        .map(|t| (t.clone(), t.clone()))
                        .collect(),
                },
                namespace.unwrap_or_else(|| self.config.cycles.default_namespace.clone()),
                0,
            ),
        };
        let key = run_profile_key(rp.map(|r| r.run_profile_id.as_str()), &namespace);
        let hash = initiation_hash(&key, &slot, version);
        Plan {
            key,
            run: CycleRun {
                id,
                run_profile_id: rp.map(|r| r.run_profile_id.clone()),
                profile_id: rp.map(|r| r.profile_id.clone()),
                namespace,
                slot,
                initiation_hash: hash,
                profile_version: version,
                trigger: trigger.to_string(),
                actor: actor.to_string(),
                created_at: self.clock.now_ms(),
                finished_at: None,
                status: CycleStatus::Running,
                context: serde_json::to_string(&context).unwrap_or_default(),
                error: None,
            },
        }
    }

    /// Creates planned cycles in one transaction (with the schedule's new slot, if any). A
    /// plan whose slot or initiation hash ran before returns that cycle. With `refuse`, a
    /// paused or halted state is an error; otherwise the plan is skipped (recorded) and its
    /// result is the reason.
    async fn create(
        &self,
        plans: Vec<Plan>,
        schedule_update: Option<(&'static str, Millis)>,
        refuse: bool,
    ) -> Result<Vec<Result<Triggered, String>>, CyclesError> {
        let now = self.clock.now_ms();
        let paused_by_config = self.config.governance.global_pause;
        let crash_before = self.crash_at.as_deref() == Some("before:cycle_started");
        let results = self
            .store
            .write(
                move |tx| -> Result<Vec<Result<Triggered, String>>, CyclesError> {
                    let governance = governance_in_write(tx, paused_by_config)?;
                    if let Some((name, slot)) = schedule_update {
                        tx.open_table(CYCLE_SCHEDULES)?.insert(name, slot)?;
                    }
                    let mut out = Vec::new();
                    for plan in &plans {
                        let run = &plan.run;
                        let blocked = if governance.is_paused() {
                            Some(("paused", "cycles are paused (global pause)".to_string()))
                        } else if governance.is_halted(&run.namespace) {
                            Some((
                                "namespace_halted",
                                format!("namespace `{}` is halted", run.namespace),
                            ))
                        } else {
                            None
                        };
                        if let Some((code, why)) = blocked {
                            if refuse {
                                return Err(conflict(code, why));
                            }
                            append_record(
                                tx,
                                now,
                                None,
                                run.run_profile_id.as_deref(),
                                run.profile_id.as_deref(),
                                &run.namespace,
                                "governance",
                                "cycle_started",
                                "skipped",
                                json!({"reason": why, "slot": run.slot, "trigger": run.trigger}),
                            )?;
                            emit(
                                tx,
                                now,
                                "cycle_skipped",
                                run.profile_id.as_deref(),
                                None,
                                &run.namespace,
                                json!({"reason": why, "slot": run.slot,
                                       "run_profile_id": run.run_profile_id}),
                            )?;
                            out.push(Err(why));
                            continue;
                        }
                        let existing = tx
                            .open_table(CYCLE_SLOTS)?
                            .get((plan.key.as_str(), run.slot.as_str()))?
                            .map(|v| v.value());
                        let existing = match existing {
                            Some(id) => Some(id),
                            None => tx
                                .open_table(CYCLE_INITIATIONS)?
                                .get((plan.key.as_str(), run.initiation_hash.as_str()))?
                                .map(|v| v.value()),
                        };
                        if let Some(raw) = existing {
                            let existing = load_run_write(tx, Uuid::from_u128(raw))?;
                            out.push(Ok(Triggered {
                                cycle_id: existing.id,
                                created: false,
                                run_profile_id: existing.run_profile_id,
                                namespace: existing.namespace,
                                initiation_hash: existing.initiation_hash,
                            }));
                            continue;
                        }
                        let id = run.id.as_u128();
                        tx.open_table(CYCLE_RUNS)?
                            .insert(id, codec::encode(run).as_slice())?;
                        tx.open_table(CYCLES_ACTIVE)?.insert(id, ())?;
                        tx.open_table(CYCLE_SLOTS)?
                            .insert((plan.key.as_str(), run.slot.as_str()), id)?;
                        tx.open_table(CYCLE_INITIATIONS)?
                            .insert((plan.key.as_str(), run.initiation_hash.as_str()), id)?;
                        emit(
                            tx,
                            now,
                            "execution_started",
                            run.profile_id.as_deref(),
                            Some(run.id),
                            &run.namespace,
                            json!({"run_profile_id": run.run_profile_id, "slot": run.slot,
                                   "trigger": run.trigger}),
                        )?;
                        write_checkpoint(
                            tx,
                            run,
                            Stage::CycleStarted,
                            now,
                            None,
                            Vec::new(),
                            json!({"slot": run.slot, "trigger": run.trigger,
                                   "initiation_hash": run.initiation_hash}),
                        )?;
                        out.push(Ok(Triggered {
                            cycle_id: run.id,
                            created: true,
                            run_profile_id: run.run_profile_id.clone(),
                            namespace: run.namespace.clone(),
                            initiation_hash: run.initiation_hash.clone(),
                        }));
                    }
                    if crash_before && out.iter().any(|r| r.as_ref().is_ok_and(|t| t.created)) {
                        crash_now("before:cycle_started");
                    }
                    Ok(out)
                },
            )
            .await?;
        if results.iter().any(|r| r.as_ref().is_ok_and(|t| t.created)) {
            self.crash_point(Stage::CycleStarted);
        }
        Ok(results)
    }

    /// Runs the cron schedules once: a schedule whose latest slot at or before now has not run
    /// starts it (once, however many slots were missed while keel was down). The first look at
    /// a schedule only records where it starts.
    pub async fn schedule_tick(self: &Arc<Self>) -> Result<usize, CyclesError> {
        if self.draining.load(Ordering::SeqCst) {
            return Ok(0);
        }
        let now = self.clock.now_ms();
        let mut started = 0;
        for (name, schedule) in [
            (RAW_SCHEDULE, &self.raw_schedule),
            (RUN_PROFILE_SCHEDULE, &self.run_profile_schedule),
        ] {
            let Some(schedule) = schedule else { continue };
            let last = self
                .store
                .read(move |tx| -> Result<Option<i64>, CyclesError> {
                    Ok(tx
                        .open_table(CYCLE_SCHEDULES)?
                        .get(name)?
                        .map(|v| v.value()))
                })
                .await?;
            let Some(last) = last else {
                self.store
                    .write(move |tx| -> Result<(), CyclesError> {
                        let mut table = tx.open_table(CYCLE_SCHEDULES)?;
                        if table.get(name)?.is_none() {
                            table.insert(name, now)?;
                        }
                        Ok(())
                    })
                    .await?;
                continue;
            };
            let Some(slot) = schedule.latest_at_or_before(now).filter(|s| *s > last) else {
                continue;
            };
            let missed = schedule.next_after(last).is_some_and(|first| first < slot);
            let trigger = if missed { "catch_up" } else { "schedule" };
            let slot_name = crate::clock::rfc3339(slot);
            let _gate = self.gate.read().await;
            if name == RAW_SCHEDULE {
                let set = self.profile_set();
                let plan = self.plan(&set, None, None, Some(slot_name), trigger, SYSTEM_ACTOR);
                let results = self.create(vec![plan], Some((name, slot)), false).await?;
                started += results
                    .iter()
                    .filter(|r| r.as_ref().is_ok_and(|t| t.created))
                    .count();
            } else {
                let outcomes = self
                    .run_profiles_now(SYSTEM_ACTOR, Some(slot_name), trigger, Some((name, slot)))
                    .await?;
                started += outcomes
                    .iter()
                    .filter(|o| o.cycle.as_ref().is_some_and(|c| c.created))
                    .count();
            }
            if missed {
                tracing::info!(
                    schedule = name,
                    slot = %crate::clock::rfc3339(slot),
                    "caught up a schedule slot missed while keel was down (once, however many were missed)"
                );
            }
        }
        if started > 0 {
            self.wake.notify_one();
        }
        Ok(started)
    }

    /// The next slot of each schedule (for status pages).
    pub fn next_slots(&self) -> Vec<(&'static str, String, Option<Millis>)> {
        let now = self.clock.now_ms();
        [
            (RAW_SCHEDULE, &self.raw_schedule),
            (RUN_PROFILE_SCHEDULE, &self.run_profile_schedule),
        ]
        .into_iter()
        .filter_map(|(name, s)| {
            s.as_ref()
                .map(|s| (name, s.source().to_string(), s.next_after(now)))
        })
        .collect()
    }

    /// The last `limit` cycles, newest first.
    pub async fn recent(&self, limit: usize) -> Result<Vec<CycleSummary>, CyclesError> {
        let limit = limit.clamp(1, 1000);
        self.store
            .read(move |tx| -> Result<Vec<CycleSummary>, CyclesError> {
                let table = tx.open_table(CYCLE_RUNS)?;
                let mut out = Vec::new();
                for row in table.iter()?.rev().take(limit) {
                    let (k, v) = row?;
                    let run: CycleRun =
                        codec::decode(CYCLE_RUNS.name(), Uuid::from_u128(k.value()), v.value())?;
                    let last = last_checkpoint_read(tx, run.id)?;
                    out.push(CycleSummary {
                        stage: last.as_ref().map_or(Stage::CycleStarted, |c| c.stage),
                        stage_at: last.as_ref().map_or(run.created_at, |c| c.at),
                        run,
                    });
                }
                Ok(out)
            })
            .await
    }

    /// One cycle with its checkpoints, dispatches (and their tasks), records and ledger.
    pub async fn detail(&self, id: Uuid) -> Result<CycleDetail, CyclesError> {
        let (run, checkpoints, dispatches, records, ledger) = self
            .store
            .read(move |tx| -> Result<_, CyclesError> {
                let run = tx
                    .open_table(CYCLE_RUNS)?
                    .get(id.as_u128())?
                    .map(|v| codec::decode::<CycleRun>(CYCLE_RUNS.name(), id, v.value()))
                    .transpose()?
                    .ok_or_else(|| CyclesError::NotFound(format!("no cycle with id {id}")))?;
                let checkpoints = checkpoints_read(tx, id)?;
                let dispatches = dispatches_read(tx, id)?;
                let records = records_of_cycle(tx, id)?;
                let ledger = ledger_read(
                    tx,
                    &RecordFilter {
                        cycle_id: Some(id),
                        limit: 1000,
                        since: Some(run.created_at),
                        ..RecordFilter::default()
                    },
                )?;
                Ok((run, checkpoints, dispatches, records, ledger))
            })
            .await?;
        let mut with_tasks = Vec::new();
        for d in dispatches {
            let task = match self.queue.get(d.task_id).await {
                Ok(t) => Some(t),
                Err(QueueError::NotFound(_)) => None,
                Err(e) => return Err(e.into()),
            };
            with_tasks.push((d, task));
        }
        Ok(CycleDetail {
            run,
            checkpoints,
            dispatches: with_tasks,
            records,
            ledger,
        })
    }

    /// Execution records, newest first.
    pub async fn execution_records(
        &self,
        filter: RecordFilter,
    ) -> Result<Vec<ExecutionRecord>, CyclesError> {
        self.store
            .read(move |tx| -> Result<Vec<ExecutionRecord>, CyclesError> {
                let limit = filter.limit.clamp(1, 1000);
                let matches = |r: &ExecutionRecord| {
                    filter
                        .profile_id
                        .as_ref()
                        .is_none_or(|p| r.profile_id.as_ref() == Some(p))
                        && filter
                            .run_profile_id
                            .as_ref()
                            .is_none_or(|p| r.run_profile_id.as_ref() == Some(p))
                        && filter.namespace.as_ref().is_none_or(|n| r.namespace == *n)
                        && filter.since.is_none_or(|s| r.at >= s)
                        && filter.until.is_none_or(|u| r.at < u)
                };
                let mut out = Vec::new();
                if let Some(cycle) = filter.cycle_id {
                    let mut all = records_of_cycle(tx, cycle)?;
                    all.reverse();
                    out.extend(all.into_iter().filter(|r| matches(r)).take(limit));
                    return Ok(out);
                }
                let table = tx.open_table(EXECUTION_RECORDS)?;
                let from = filter.since.unwrap_or(i64::MIN);
                let to = filter.until.unwrap_or(i64::MAX);
                for row in table.range((from, 0)..(to, 0))?.rev() {
                    let (k, v) = row?;
                    let r: ExecutionRecord = codec::decode(
                        EXECUTION_RECORDS.name(),
                        format!("{:?}", k.value()),
                        v.value(),
                    )?;
                    if matches(&r) {
                        out.push(r);
                        if out.len() == limit {
                            break;
                        }
                    }
                }
                Ok(out)
            })
            .await
    }

    /// Value ledger entries, newest first.
    pub async fn ledger(&self, filter: RecordFilter) -> Result<Vec<LedgerEntry>, CyclesError> {
        self.store.read(move |tx| ledger_read(tx, &filter)).await
    }

    /// Pauses every cycle (audited).
    pub async fn pause(
        &self,
        actor: &str,
        reason: Option<String>,
    ) -> Result<GovernanceView, CyclesError> {
        self.set_flag(actor, "global".into(), true, reason).await
    }

    /// Resumes cycles paused through the API (audited); refused while the configuration
    /// pauses them.
    pub async fn resume(&self, actor: &str) -> Result<GovernanceView, CyclesError> {
        if self.config.governance.global_pause {
            return Err(conflict(
                "paused_by_config",
                "governance.global_pause is true in the configuration; set it to false and restart",
            ));
        }
        let view = self.set_flag(actor, "global".into(), false, None).await?;
        self.wake.notify_one();
        Ok(view)
    }

    /// Halts or resumes one namespace (audited).
    pub async fn set_halt(
        &self,
        actor: &str,
        namespace: &str,
        halted: bool,
        reason: Option<String>,
    ) -> Result<GovernanceView, CyclesError> {
        if !valid_name(namespace) {
            return Err(CyclesError::Invalid(format!(
                "namespace `{namespace}`: 1 to 64 letters, digits, '-', '_' or '.'"
            )));
        }
        let view = self
            .set_flag(actor, format!("ns:{namespace}"), halted, reason)
            .await?;
        if !halted {
            self.wake.notify_one();
        }
        Ok(view)
    }

    async fn set_flag(
        &self,
        actor: &str,
        key: String,
        on: bool,
        reason: Option<String>,
    ) -> Result<GovernanceView, CyclesError> {
        let now = self.clock.now_ms();
        let audit = Arc::clone(&self.audit);
        let actor = actor.to_string();
        let paused_by_config = self.config.governance.global_pause;
        self.store
            .write(move |tx| -> Result<GovernanceView, CyclesError> {
                let flag = GovernanceFlag {
                    on,
                    by: actor.clone(),
                    at: now,
                    reason: reason.clone(),
                };
                tx.open_table(GOVERNANCE)?
                    .insert(key.as_str(), codec::encode(&flag).as_slice())?;
                let (namespace, action) = match key.strip_prefix("ns:") {
                    Some(ns) => (ns.to_string(), if on { "halt" } else { "resume" }),
                    None => ("*".to_string(), if on { "pause" } else { "resume" }),
                };
                audit.append(
                    tx,
                    now,
                    &Event::new(
                        actor.clone(),
                        format!("governance.{action}"),
                        namespace.clone(),
                    )
                    .with_detail(json!({"reason": reason})),
                )?;
                append_record(
                    tx,
                    now,
                    None,
                    None,
                    None,
                    &namespace,
                    "governance",
                    action,
                    "completed",
                    json!({"by": actor, "reason": reason}),
                )?;
                emit(
                    tx,
                    now,
                    "governance_changed",
                    None,
                    None,
                    &namespace,
                    json!({"action": action, "by": actor, "reason": reason}),
                )?;
                governance_in_write(tx, paused_by_config)
            })
            .await
    }

    /// Starts runners for unfinished cycles that have none (after a start, a trigger, or a
    /// governance resume). Returns how many started.
    pub async fn resume_active(self: &Arc<Self>) -> Result<usize, CyclesError> {
        if self.draining.load(Ordering::SeqCst) || self.tracker.is_closed() {
            return Ok(0);
        }
        let active = self.active_ids().await?;
        let mut started = 0;
        for id in active {
            {
                let mut running = self.running.lock().unwrap_or_else(|e| e.into_inner());
                if !running.insert(id) {
                    continue;
                }
            }
            let this = Arc::clone(self);
            self.tracker.spawn(async move {
                this.run_cycle(id).await;
                this.running
                    .lock()
                    .unwrap_or_else(|e| e.into_inner())
                    .remove(&id);
            });
            started += 1;
        }
        Ok(started)
    }

    /// Cycles with a runner now.
    pub fn running(&self) -> usize {
        self.running.lock().unwrap_or_else(|e| e.into_inner()).len()
    }

    /// Stops starting cycles and stages that would wait for the queue, lets runners finish
    /// what they can until `deadline`, then stops the rest (they resume on the next start).
    pub async fn drain(&self, deadline: Duration) {
        self.draining.store(true, Ordering::SeqCst);
        self.tracker.close();
        if tokio::time::timeout(deadline, self.tracker.wait())
            .await
            .is_err()
        {
            tracing::warn!(
                cycles = self.running(),
                "cycles still running at the drain deadline stop here and resume on the next start"
            );
            self.stop.cancel();
            self.tracker.wait().await;
        }
    }

    /// Kills the process if `KEEL_CRASH_AT` names this stage (after its commit).
    fn crash_point(&self, stage: Stage) {
        if self.crash_at.as_deref() == Some(stage.as_str()) {
            crash_now(stage.as_str());
        }
    }

    /// Kills the process if `KEEL_CRASH_AT` is `before:<stage>`.
    fn crash_before(&self, stage: Stage) -> bool {
        self.crash_at
            .as_deref()
            .and_then(|c| c.strip_prefix("before:"))
            == Some(stage.as_str())
    }
}

/// SIGKILLs this process (crash tests).
fn crash_now(point: &str) {
    eprintln!("keel: {CRASH_ENV}={point}: killing this process now");
    // SAFETY: kill(2) on our own pid only sends a signal.
    unsafe {
        libc::kill(libc::getpid(), libc::SIGKILL);
    }
    // SIGKILL cannot be caught; should it be delayed, never run on.
    std::process::abort();
}

/// A cycle to create.
#[derive(Debug, Clone)]
struct Plan {
    key: String,
    run: CycleRun,
}

/// The key initiations and slots are unique under: the run profile id, or `raw:<namespace>`.
pub fn run_profile_key(run_profile_id: Option<&str>, namespace: &str) -> String {
    match run_profile_id {
        Some(id) => id.to_string(),
        None => format!("raw:{namespace}"),
    }
}

/// The deterministic initiation hash: blake3 of (run profile key, slot, profile version),
/// length-prefixed, as hex.
pub fn initiation_hash(run_profile_key: &str, slot: &str, profile_version: u64) -> String {
    let mut h = blake3::Hasher::new_derive_key("keel cycle initiation v1");
    for part in [run_profile_key.as_bytes(), slot.as_bytes()] {
        h.update(&(part.len() as u64).to_le_bytes());
        h.update(part);
    }
    h.update(&profile_version.to_le_bytes());
    h.finalize().to_hex().to_string()
}

/// A task id derived from (cycle, stage, key): a UUIDv7 with the cycle's time, so it sorts
/// with the cycle, and the rest from blake3. Running a stage again names the same tasks.
pub fn derived_task_id(cycle_id: Uuid, stage: Stage, key: &str) -> Uuid {
    let mut h = blake3::Hasher::new_derive_key("keel cycle task v1");
    h.update(cycle_id.as_bytes());
    h.update(stage.as_str().as_bytes());
    h.update(&[0]);
    h.update(key.as_bytes());
    let digest = h.finalize();
    let mut rand = [0u8; 10];
    rand.copy_from_slice(&digest.as_bytes()[..10]);
    let millis = (cycle_id.as_u128() >> 80) as u64;
    uuid::Builder::from_unix_timestamp_millis(millis, &rand).into_uuid()
}

/// The task id of a transformation step (`stage` is a tier) or normalization batch.
pub fn step_task_id(cycle_id: Uuid, stage: Stage, index: usize) -> Uuid {
    derived_task_id(cycle_id, stage, &index.to_string())
}

/// The task id of the dispatch of a cycle to `endpoint`.
pub fn dispatch_task_id(cycle_id: Uuid, endpoint: &str) -> Uuid {
    derived_task_id(cycle_id, Stage::DispatchEnqueued, endpoint)
}

/// The `webhook-id` the dispatch of a cycle to `endpoint` is delivered with (derived from
/// (cycle, stage, endpoint); the same on every attempt and after any crash).
pub fn dispatch_webhook_id(cycle_id: Uuid, endpoint: &str) -> String {
    format!("msg_{}", dispatch_task_id(cycle_id, endpoint).simple())
}

fn governance_in(
    tx: &ReadTransaction,
    paused_by_config: bool,
) -> Result<GovernanceView, CyclesError> {
    let table = tx.open_table(GOVERNANCE)?;
    let mut view = GovernanceView {
        paused_by_config,
        paused: None,
        namespaces: BTreeMap::new(),
    };
    for row in table.iter()? {
        let (k, v) = row?;
        let flag: GovernanceFlag = codec::decode(GOVERNANCE.name(), k.value(), v.value())?;
        match k.value().strip_prefix("ns:") {
            Some(ns) => {
                view.namespaces.insert(ns.to_string(), flag);
            }
            None => view.paused = Some(flag),
        }
    }
    Ok(view)
}

fn governance_in_write(
    tx: &WriteTransaction,
    paused_by_config: bool,
) -> Result<GovernanceView, CyclesError> {
    let table = tx.open_table(GOVERNANCE)?;
    let mut view = GovernanceView {
        paused_by_config,
        paused: None,
        namespaces: BTreeMap::new(),
    };
    for row in table.iter()? {
        let (k, v) = row?;
        let flag: GovernanceFlag = codec::decode(GOVERNANCE.name(), k.value(), v.value())?;
        match k.value().strip_prefix("ns:") {
            Some(ns) => {
                view.namespaces.insert(ns.to_string(), flag);
            }
            None => view.paused = Some(flag),
        }
    }
    Ok(view)
}

fn load_run_write(tx: &WriteTransaction, id: Uuid) -> Result<CycleRun, CyclesError> {
    tx.open_table(CYCLE_RUNS)?
        .get(id.as_u128())?
        .map(|v| codec::decode::<CycleRun>(CYCLE_RUNS.name(), id, v.value()))
        .transpose()?
        .ok_or_else(|| CyclesError::NotFound(format!("no cycle with id {id}")))
}

fn save_run(tx: &WriteTransaction, run: &CycleRun) -> Result<(), CyclesError> {
    tx.open_table(CYCLE_RUNS)?
        .insert(run.id.as_u128(), codec::encode(run).as_slice())?;
    Ok(())
}

fn last_checkpoint_write(
    tx: &WriteTransaction,
    id: Uuid,
) -> Result<Option<Checkpoint>, CyclesError> {
    let table = tx.open_table(CYCLE_CHECKPOINTS)?;
    let last = table
        .range((id.as_u128(), 0)..=(id.as_u128(), u32::MAX))?
        .next_back();
    match last {
        Some(row) => {
            let (k, v) = row?;
            Ok(Some(codec::decode(
                CYCLE_CHECKPOINTS.name(),
                format!("{id}/{}", k.value().1),
                v.value(),
            )?))
        }
        None => Ok(None),
    }
}

fn last_checkpoint_read(tx: &ReadTransaction, id: Uuid) -> Result<Option<Checkpoint>, CyclesError> {
    let table = tx.open_table(CYCLE_CHECKPOINTS)?;
    let last = table
        .range((id.as_u128(), 0)..=(id.as_u128(), u32::MAX))?
        .next_back();
    match last {
        Some(row) => {
            let (k, v) = row?;
            Ok(Some(codec::decode(
                CYCLE_CHECKPOINTS.name(),
                format!("{id}/{}", k.value().1),
                v.value(),
            )?))
        }
        None => Ok(None),
    }
}

fn checkpoints_read(tx: &ReadTransaction, id: Uuid) -> Result<Vec<Checkpoint>, CyclesError> {
    let table = tx.open_table(CYCLE_CHECKPOINTS)?;
    let mut out = Vec::new();
    for row in table.range((id.as_u128(), 0)..=(id.as_u128(), u32::MAX))? {
        let (k, v) = row?;
        out.push(codec::decode(
            CYCLE_CHECKPOINTS.name(),
            format!("{id}/{}", k.value().1),
            v.value(),
        )?);
    }
    Ok(out)
}

fn dispatches_read(tx: &ReadTransaction, id: Uuid) -> Result<Vec<DispatchRecord>, CyclesError> {
    let table = tx.open_table(CYCLE_DISPATCHES)?;
    let mut out = Vec::new();
    for row in table.range((id.as_u128(), "")..(id.as_u128() + 1, ""))? {
        let (k, v) = row?;
        out.push(codec::decode(
            CYCLE_DISPATCHES.name(),
            format!("{id}/{}", k.value().1),
            v.value(),
        )?);
    }
    Ok(out)
}

fn records_of_cycle(tx: &ReadTransaction, id: Uuid) -> Result<Vec<ExecutionRecord>, CyclesError> {
    let index = tx.open_table(EXECUTION_RECORDS_BY_CYCLE)?;
    let table = tx.open_table(EXECUTION_RECORDS)?;
    let mut out = Vec::new();
    for row in index.range((id.as_u128(), i64::MIN, 0)..=(id.as_u128(), i64::MAX, u128::MAX))? {
        let (_, at, rid) = row?.0.value();
        if let Some(v) = table.get((at, rid))? {
            out.push(codec::decode(
                EXECUTION_RECORDS.name(),
                Uuid::from_u128(rid),
                v.value(),
            )?);
        }
    }
    Ok(out)
}

fn ledger_read(
    tx: &ReadTransaction,
    filter: &RecordFilter,
) -> Result<Vec<LedgerEntry>, CyclesError> {
    let limit = filter.limit.clamp(1, 1000);
    let table = tx.open_table(VALUE_LEDGER)?;
    let from = filter.since.unwrap_or(i64::MIN);
    let to = filter.until.unwrap_or(i64::MAX);
    let mut out = Vec::new();
    for row in table.range((from, 0)..(to, 0))?.rev() {
        let (k, v) = row?;
        let e: LedgerEntry =
            codec::decode(VALUE_LEDGER.name(), format!("{:?}", k.value()), v.value())?;
        let matches = filter.cycle_id.is_none_or(|c| e.cycle_id == c)
            && filter
                .profile_id
                .as_ref()
                .is_none_or(|p| e.profile_id.as_ref() == Some(p))
            && filter
                .run_profile_id
                .as_ref()
                .is_none_or(|p| e.run_profile_id.as_ref() == Some(p))
            && filter.namespace.as_ref().is_none_or(|n| e.namespace == *n);
        if matches {
            out.push(e);
            if out.len() == limit {
                break;
            }
        }
    }
    Ok(out)
}

/// Appends the checkpoint of `stage` to `run`; the last checkpoint must be the stage before
/// it (for `CycleFailed`: any stage that does not end the cycle), so a stage is never recorded
/// twice. Also writes the stage's execution record and `stage_completed` event.
#[allow(clippy::too_many_arguments)]
fn write_checkpoint(
    tx: &WriteTransaction,
    run: &CycleRun,
    stage: Stage,
    now: Millis,
    output: Option<String>,
    webhook_ids: Vec<String>,
    detail: Value,
) -> Result<Checkpoint, CyclesError> {
    let last = last_checkpoint_write(tx, run.id)?;
    let expected_ok = match (&last, stage) {
        (None, Stage::CycleStarted) => true,
        (Some(l), Stage::CycleFailed) => !l.stage.is_terminal(),
        (Some(l), s) => l.stage.next() == Some(s),
        (None, _) => false,
    };
    if !expected_ok {
        return Err(conflict(
            "stage_done",
            format!(
                "cycle {}: cannot record {} after {}",
                run.id,
                stage.as_str(),
                last.map_or("nothing", |l| l.stage.as_str())
            ),
        ));
    }
    let checkpoint = Checkpoint {
        cycle_id: run.id,
        seq: last.map_or(0, |l| l.seq + 1),
        stage,
        at: now,
        output,
        webhook_ids,
        detail: detail.to_string(),
    };
    tx.open_table(CYCLE_CHECKPOINTS)?.insert(
        (run.id.as_u128(), checkpoint.seq),
        codec::encode(&checkpoint).as_slice(),
    )?;
    let kind = match stage {
        Stage::CycleStarted | Stage::CycleFinished | Stage::CycleFailed => "cycle",
        Stage::Initiation => "initiation",
        Stage::Tier1 | Stage::Tier2 | Stage::Tier3 => "transformation",
        Stage::Normalization => "normalization",
        Stage::DispatchEnqueued | Stage::DispatchComplete => "dispatch",
    };
    let outcome = if stage == Stage::CycleFailed {
        "failed"
    } else {
        "completed"
    };
    append_record(
        tx,
        now,
        Some(run.id),
        run.run_profile_id.as_deref(),
        run.profile_id.as_deref(),
        &run.namespace,
        kind,
        stage.as_str(),
        outcome,
        detail.clone(),
    )?;
    emit(
        tx,
        now,
        "stage_completed",
        run.profile_id.as_deref(),
        Some(run.id),
        &run.namespace,
        json!({"stage": stage.as_str(), "seq": checkpoint.seq,
               "run_profile_id": run.run_profile_id}),
    )?;
    Ok(checkpoint)
}

/// Appends an execution record (and its by-cycle index entry).
#[allow(clippy::too_many_arguments)]
fn append_record(
    tx: &WriteTransaction,
    now: Millis,
    cycle_id: Option<Uuid>,
    run_profile_id: Option<&str>,
    profile_id: Option<&str>,
    namespace: &str,
    kind: &str,
    stage: &str,
    outcome: &str,
    detail: Value,
) -> Result<(), CyclesError> {
    let record = ExecutionRecord {
        id: Uuid::now_v7(),
        at: now,
        cycle_id,
        run_profile_id: run_profile_id.map(str::to_string),
        profile_id: profile_id.map(str::to_string),
        namespace: namespace.to_string(),
        kind: kind.to_string(),
        stage: stage.to_string(),
        outcome: outcome.to_string(),
        detail: detail.to_string(),
    };
    let key = (now, record.id.as_u128());
    tx.open_table(EXECUTION_RECORDS)?
        .insert(key, codec::encode(&record).as_slice())?;
    if let Some(cycle) = cycle_id {
        tx.open_table(EXECUTION_RECORDS_BY_CYCLE)?
            .insert((cycle.as_u128(), key.0, key.1), ())?;
    }
    Ok(())
}

/// Appends a value ledger entry.
fn append_ledger(tx: &WriteTransaction, entry: &LedgerEntry) -> Result<(), CyclesError> {
    tx.open_table(VALUE_LEDGER)?.insert(
        (entry.at, entry.id.as_u128()),
        codec::encode(entry).as_slice(),
    )?;
    Ok(())
}

/// Puts an event on the telemetry bus (inside the caller's transaction).
fn emit(
    tx: &WriteTransaction,
    now: Millis,
    event_type: &str,
    profile_id: Option<&str>,
    run_id: Option<Uuid>,
    namespace: &str,
    metadata: Value,
) -> Result<(), CyclesError> {
    telemetry::append(
        tx,
        &TelemetryEvent {
            id: Uuid::now_v7(),
            at: now,
            event_type: event_type.to_string(),
            profile_id: profile_id.map(str::to_string),
            run_id,
            namespace: namespace.to_string(),
            metadata: metadata.to_string(),
        },
    )
}

/// The cycle runner and schedules as a supervised worker: starts runners for unfinished
/// cycles (woken by triggers) and fires due schedule slots.
pub struct CycleWorker {
    /// The room.
    pub cycles: Arc<Cycles>,
}

impl Worker for CycleWorker {
    fn name(&self) -> &'static str {
        "cycles"
    }
    fn interval(&self) -> Duration {
        Duration::from_secs(1)
    }
    fn wake(&self) -> Option<Arc<Notify>> {
        Some(Arc::clone(&self.cycles.wake))
    }
    fn step(&mut self) -> StepFuture<'_> {
        Box::pin(async move {
            let run = async {
                self.cycles.schedule_tick().await?;
                self.cycles.resume_active().await?;
                Ok::<(), CyclesError>(())
            };
            run.await.map_err(|e| e.to_string())
        })
    }
}

/// Telemetry retention: prunes (and with cold archive on, first archives) events older than
/// `telemetry.retention_days`.
pub struct TelemetryRetention {
    /// The room.
    pub cycles: Arc<Cycles>,
}

impl Worker for TelemetryRetention {
    fn name(&self) -> &'static str {
        "telemetry-retention"
    }
    fn interval(&self) -> Duration {
        Duration::from_secs(3600)
    }
    fn step(&mut self) -> StepFuture<'_> {
        Box::pin(async move {
            self.cycles
                .prune_telemetry()
                .await
                .map(|_| ())
                .map_err(|e| e.to_string())
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn initiation_hash_is_deterministic_and_separates_fields() {
        let a = initiation_hash("rp1", "2026-01-01T00:00:00.000Z", 1);
        assert_eq!(a, initiation_hash("rp1", "2026-01-01T00:00:00.000Z", 1));
        assert_ne!(a, initiation_hash("rp1", "2026-01-01T00:00:00.000Z", 2));
        assert_ne!(a, initiation_hash("rp2", "2026-01-01T00:00:00.000Z", 1));
        assert_ne!(initiation_hash("ab", "c", 0), initiation_hash("a", "bc", 0));
    }

    #[test]
    fn derived_ids_are_stable_v7_ids_in_the_cycles_time() {
        let cycle = Uuid::now_v7();
        let a = dispatch_task_id(cycle, "aurora");
        assert_eq!(a, dispatch_task_id(cycle, "aurora"));
        assert_ne!(a, dispatch_task_id(cycle, "other"));
        assert_ne!(a, step_task_id(cycle, Stage::Tier1, 0));
        assert_eq!(a.get_version_num(), 7);
        assert_eq!(a.as_u128() >> 80, cycle.as_u128() >> 80);
        assert_eq!(
            dispatch_webhook_id(cycle, "aurora"),
            format!("msg_{}", a.simple())
        );
    }

    #[test]
    fn stages_follow_each_other() {
        assert_eq!(Stage::CycleStarted.next(), Some(Stage::Initiation));
        assert_eq!(Stage::DispatchComplete.next(), Some(Stage::CycleFinished));
        assert_eq!(Stage::CycleFinished.next(), None);
        for s in Stage::ORDER {
            assert_eq!(Stage::parse(s.as_str()), Some(s));
        }
        assert!(valid_name("ns-1.a_b") && !valid_name("-x") && !valid_name("a b"));
    }
}
