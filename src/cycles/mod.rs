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
//! carries its namespace; a cycle never writes another namespace's records. The room's tables
//! are reached only through the bundle in `tables`. Once a checkpoint is durable, the stage
//! it records is published on the event bus.

pub mod advice;
mod cancel;
#[cfg(feature = "test-hooks")]
mod crash;
mod governance;
mod ids;
pub mod model;
pub mod profiles;
mod records;
mod runner;
mod tables;
pub mod telemetry;
mod trigger;
mod waiting;
mod workers;

use std::collections::{BTreeMap, HashSet};
use std::sync::atomic::AtomicBool;
use std::sync::{Arc, Mutex, RwLock};

use redb::{ReadableTable, TableHandle, WriteTransaction};
use serde_json::{Value, json};
use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use uuid::Uuid;

use crate::audit::{Audit, Event, SYSTEM_ACTOR};
use crate::clock::SharedClock;
use crate::config::Config;
use crate::events::{self, EventBus};
use crate::exec::seal::Sealer;
use crate::queue::{Queue, QueueError};
use crate::schedule::CronSchedule;
use crate::store::codec;
use crate::store::{Store, StoreError};
use model::ProfileVersion;
use profiles::{ConfigIssues, ProfileSet};
use tables::{CycleReadTables, CycleTables};

pub use crate::config::names::valid_name;
#[cfg(feature = "test-hooks")]
pub use crash::{CRASH_ENV, crash_point_from_env};
pub use governance::GovernanceView;
pub use ids::{
    derived_task_id, dispatch_task_id, dispatch_webhook_id, initiation_hash, run_profile_key,
    step_task_id,
};
pub use records::{CycleDetail, CycleSummary, RecordFilter};
pub use trigger::{CycleContext, RunProfileOutcome, TriggerRequest, Triggered};
pub use workers::CycleWorker;

/// The task type of dispatch tasks (delivered by the http executor with the endpoint snapshot
/// taken at enqueue; no `[handlers]` entry is needed).
pub const DISPATCH_TASK_TYPE: &str = "cycle-dispatch";

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

/// The cycles room.
pub struct Cycles {
    store: Arc<Store>,
    audit: Arc<Audit>,
    clock: SharedClock,
    config: Arc<Config>,
    queue: Arc<Queue>,
    events: Arc<EventBus>,
    /// Seals the secrets of dispatch tasks' snapshots.
    sealer: Arc<Sealer>,
    profiles: RwLock<Arc<ProfileSet>>,
    /// Held for writing by reloads and profile mutations, for reading while cycles are
    /// created, so neither sees the other half done.
    gate: tokio::sync::RwLock<()>,
    /// Held while a strategy proposal is approved or rejected, so decisions never interleave
    /// with an approval's change of the profile files.
    decisions: tokio::sync::Mutex<()>,
    wake: Arc<Notify>,
    running: Mutex<HashSet<Uuid>>,
    /// The queue tasks each running cycle is waiting for now.
    waits: Mutex<BTreeMap<Uuid, (Vec<Uuid>, CancellationToken)>>,
    /// Cycles cancelled by hand since start: their runners stop at their next wait.
    cancelled: Mutex<HashSet<Uuid>>,
    tracker: TaskTracker,
    /// Cancelled at the drain deadline: runners stop at their next wait.
    stop: CancellationToken,
    draining: AtomicBool,
    /// How long stages waiting for tasks wait before they look again without news.
    fallback: waiting::Fallback,
    #[cfg(feature = "test-hooks")]
    crash_at: std::sync::OnceLock<String>,
    raw_schedule: Option<CronSchedule>,
    run_profile_schedule: Option<CronSchedule>,
}

impl Cycles {
    /// Takes the profiles loaded by [`profiles::load`] (before anything else was opened, so
    /// invalid files change nothing), records their versions, and returns the room. Stages
    /// reached, cycles finished and reloads are published on `events`; the secrets of dispatch
    /// tasks are sealed by `sealer`.
    #[allow(clippy::too_many_arguments)]
    pub async fn open(
        store: Arc<Store>,
        audit: Arc<Audit>,
        clock: SharedClock,
        config: Arc<Config>,
        queue: Arc<Queue>,
        events: Arc<EventBus>,
        sealer: Arc<Sealer>,
        set: ProfileSet,
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
            events,
            sealer,
            profiles: RwLock::new(Arc::new(ProfileSet::default())),
            gate: tokio::sync::RwLock::new(()),
            decisions: tokio::sync::Mutex::new(()),
            wake: Arc::new(Notify::new()),
            running: Mutex::new(HashSet::new()),
            waits: Mutex::new(BTreeMap::new()),
            cancelled: Mutex::new(HashSet::new()),
            tracker: TaskTracker::new(),
            stop: CancellationToken::new(),
            draining: AtomicBool::new(false),
            fallback: waiting::Fallback::default(),
            #[cfg(feature = "test-hooks")]
            crash_at: std::sync::OnceLock::new(),
            raw_schedule,
            run_profile_schedule,
        });
        let set = cycles.sync_versions(set, SYSTEM_ACTOR, None).await?.0;
        *cycles.profiles.write().unwrap_or_else(|e| e.into_inner()) = Arc::new(set);
        Ok(cycles)
    }

    /// Runs `work` over the room's tables in a read transaction on the blocking pool.
    async fn read<T, F>(&self, work: F) -> Result<T, CyclesError>
    where
        T: Send + 'static,
        F: FnOnce(&CycleReadTables) -> Result<T, CyclesError> + Send + 'static,
    {
        self.store
            .read(move |tx| work(&CycleReadTables::open(tx)?))
            .await
    }

    /// Runs `work` over the room's tables (and the transaction, for other rooms' functions
    /// such as the audit log's) in the writer's next transaction; resolves once it is durable.
    /// Like [`Store::write`], `work` may run more than once.
    async fn write<T, F>(&self, mut work: F) -> Result<T, CyclesError>
    where
        T: Send + 'static,
        F: FnMut(&mut CycleTables<'_>, &WriteTransaction) -> Result<T, CyclesError>
            + Send
            + 'static,
    {
        self.store
            .write(move |tx| work(&mut CycleTables::open(tx)?, tx))
            .await
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
            .write(
                move |t, tx| -> Result<(BTreeMap<String, u64>, Vec<String>), CyclesError> {
                    let mut versions = BTreeMap::new();
                    let mut changed = Vec::new();
                    for (id, hash) in &hashes {
                        let current = t
                            .profile_versions
                            .get(id.as_str())?
                            .map(|v| {
                                codec::decode::<ProfileVersion>(
                                    t.profile_versions.name(),
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
                                t.profile_versions
                                    .insert(id.as_str(), codec::encode(&record).as_slice())?;
                                changed.push(id.clone());
                                version
                            }
                        };
                        versions.insert(id.clone(), version);
                    }
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
        self.events.publish(events::Event::ConfigReloaded {
            changed: report.changed.clone(),
        });
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
        self.read(|t| -> Result<Vec<Uuid>, CyclesError> {
            let mut ids = Vec::new();
            for row in t.active.iter()? {
                ids.push(Uuid::from_u128(row?.0.value()));
            }
            Ok(ids)
        })
        .await
    }
}
