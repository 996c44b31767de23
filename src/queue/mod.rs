//! The durable task queue: enqueue with idempotency, leases, completion, retries with backoff,
//! the dead-letter queue, the reaper and crash recovery.
//!
//! Every transition updates the task record, its indexes (ready, delayed, leased, by status)
//! and the per-(status, type) counts in the same write transaction, so the indexes can never
//! disagree with the records. Leasing takes the most urgent ready task (priority, then due
//! time, then age) from the `tasks_ready` index in O(log n).

pub mod model;

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;

use redb::{ReadTransaction, ReadableTable, ReadableTableMetadata, TableHandle, WriteTransaction};
use serde_json::Value;
use tokio::sync::Notify;
use uuid::Uuid;

use crate::audit::{Audit, Event};
use crate::clock::{Millis, SharedClock};
use crate::config::{Config, HandlerConfig};
use crate::store::codec;
use crate::store::tables::exec::WORKFLOW_STEPS;
use crate::store::tables::queue::{
    IDEMPOTENCY_EXPIRY, IDEMPOTENCY_KEYS, TASK_COUNTS, TASK_LOGS, TASKS, TASKS_BY_STATUS,
    TASKS_DELAYED, TASKS_LEASED, TASKS_READY,
};
use crate::store::{Store, StoreError};
pub use model::{Attempt, HandlerSnapshot, Lease, Receipt, Status, Task, WorkflowStep};

/// Errors of the queue room.
#[derive(Debug, thiserror::Error)]
pub enum QueueError {
    /// The request is not acceptable; the message names the field.
    #[error("{0}")]
    Invalid(String),
    /// No such task.
    #[error("no task with id {0}")]
    NotFound(Uuid),
    /// The task is in a state that does not allow this.
    #[error("{0}")]
    Conflict(String),
    /// The queue is full.
    #[error("the queue holds {depth} waiting tasks (queue.max_depth is {max}); retry later")]
    Full {
        /// Waiting tasks.
        depth: u64,
        /// The limit.
        max: u64,
    },
    /// The store failed.
    #[error(transparent)]
    Store(#[from] StoreError),
}

impl From<redb::StorageError> for QueueError {
    fn from(e: redb::StorageError) -> Self {
        QueueError::Store(e.into())
    }
}

impl From<redb::TableError> for QueueError {
    fn from(e: redb::TableError) -> Self {
        QueueError::Store(e.into())
    }
}

/// A task to enqueue.
#[derive(Debug, Clone, Default)]
pub struct NewTask {
    /// Task type; must have a configured handler.
    pub task_type: String,
    /// Opaque JSON payload.
    pub payload: Value,
    /// Lower runs first (default 100).
    pub priority: Option<u32>,
    /// Returns the existing task when seen before within the retention window.
    pub idempotency_key: Option<String>,
    /// Earliest start (epoch ms).
    pub run_at: Option<Millis>,
    /// Attempts before the task is dead.
    pub max_attempts: Option<u32>,
    /// Time allowed per attempt, in seconds.
    pub timeout_s: Option<u64>,
}

/// An HTTP target given by the caller instead of a configured handler (cycle dispatch
/// endpoints); it is snapshotted into the task like any handler.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HttpTarget {
    /// Target URL.
    pub url: String,
    /// Method.
    pub method: String,
    /// Bearer token.
    pub token: Option<String>,
    /// Standard Webhooks signing secret.
    pub signing_secret: Option<String>,
    /// Time allowed per attempt, in seconds.
    pub timeout_seconds: u64,
    /// Requests in flight to the host at once.
    pub target_concurrency: u32,
}

/// What `enqueue` did.
#[derive(Debug, Clone)]
pub struct Enqueued {
    /// The task (new, or the one the idempotency key already named).
    pub task: Task,
    /// Whether it was created by this call.
    pub created: bool,
}

/// How an attempt ended, as reported by an executor.
#[derive(Debug, Clone, PartialEq)]
pub enum Outcome {
    /// Done; the result is stored (size-capped).
    Succeeded {
        /// Result text.
        result: Option<String>,
        /// What the target answered.
        receipt: Option<Receipt>,
    },
    /// Failed in a way worth retrying.
    Retry {
        /// Error class.
        class: String,
        /// Message.
        message: String,
        /// The target asked to wait this long (ms).
        retry_after_ms: Option<u64>,
        /// What the target answered.
        receipt: Option<Receipt>,
    },
    /// Failed for good: straight to the dead-letter queue.
    Fail {
        /// Error class.
        class: String,
        /// Message.
        message: String,
        /// What the target answered.
        receipt: Option<Receipt>,
    },
    /// Not run now (an open circuit, a spent budget): wait until then without using an attempt.
    Defer {
        /// Error class shown on the attempt (`deferred`, `budget_exceeded`).
        class: String,
        /// Why.
        reason: String,
        /// When to try again (epoch ms).
        until: Millis,
    },
    /// Stopped because cancellation was asked for.
    Cancelled,
    /// Stopped by shutdown: runs again after restart without using an attempt.
    Interrupted,
}

/// Whether a completion was applied.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Completion {
    /// The task moved on.
    Applied(Status),
    /// The lease was no longer held (expired and taken back): the report was ignored.
    LeaseLost,
}

/// Filter for listing tasks.
#[derive(Debug, Clone, Default)]
pub struct TaskFilter {
    /// Only this status.
    pub status: Option<Status>,
    /// Only this type.
    pub task_type: Option<String>,
    /// At most this many (1..=1000).
    pub limit: usize,
    /// Continue after this id (from `next_cursor`).
    pub cursor: Option<Uuid>,
}

/// A page of tasks.
#[derive(Debug, Clone)]
pub struct TaskPage {
    /// Tasks, newest first.
    pub tasks: Vec<Task>,
    /// Pass as `cursor` for the next page.
    pub next_cursor: Option<Uuid>,
}

/// Dead-letter queue statistics.
#[derive(Debug, Clone, Default, serde::Serialize)]
pub struct DlqStats {
    /// Dead tasks.
    pub total: u64,
    /// By task type.
    pub by_type: BTreeMap<String, u64>,
    /// By error class of the last attempt.
    pub by_error_class: BTreeMap<String, u64>,
    /// Age of the oldest dead task, in seconds.
    pub oldest_age_seconds: Option<u64>,
}

/// What a drain moved (or would move).
#[derive(Debug, Clone)]
pub struct DrainReport {
    /// Whether nothing was changed.
    pub dry_run: bool,
    /// The tasks.
    pub tasks: Vec<Task>,
}

/// Options for leasing.
#[derive(Debug, Clone, Default)]
pub struct LeaseRequest {
    /// Most tasks to lease.
    pub max: usize,
    /// Task types at their concurrency limit, with the room left for others (0 = none).
    pub type_room: HashMap<String, usize>,
    /// Targets whose circuit is open, with the time their tasks may be tried again.
    pub blocked_targets: HashMap<String, Millis>,
}

/// The queue room.
pub struct Queue {
    store: Arc<Store>,
    audit: Arc<Audit>,
    clock: SharedClock,
    config: Arc<Config>,
    wake: Arc<Notify>,
}

const DEFAULT_PRIORITY: u32 = 100;
/// Most ready entries one lease looks at (leased, or moved aside for an open circuit), which
/// bounds the size of its transaction.
const SCAN_LIMIT: usize = 512;
/// Most index entries one transaction promotes, reaps or purges.
const PROMOTE_LIMIT: usize = 1000;

impl Queue {
    /// The queue over `store`.
    pub fn new(
        store: Arc<Store>,
        audit: Arc<Audit>,
        clock: SharedClock,
        config: Arc<Config>,
    ) -> Self {
        Queue {
            store,
            audit,
            clock,
            config,
            wake: Arc::new(Notify::new()),
        }
    }

    /// Notified when work may be available (enqueue, completion).
    pub fn wake(&self) -> Arc<Notify> {
        Arc::clone(&self.wake)
    }

    /// The handler snapshot and circuit target for a task type.
    fn snapshot(
        &self,
        task_type: &str,
    ) -> Result<(HandlerSnapshot, String, u64, Option<u32>), QueueError> {
        let handler = self.config.handlers.get(task_type).ok_or_else(|| {
            let known: Vec<&str> = self.config.handlers.keys().map(String::as_str).collect();
            QueueError::Invalid(format!(
                "type: no handler is configured for task type `{task_type}` (configured: {})",
                if known.is_empty() {
                    "none".to_string()
                } else {
                    known.join(", ")
                }
            ))
        })?;
        Ok(match handler {
            HandlerConfig::Http(h) => (
                HandlerSnapshot::Http {
                    url: h.url.clone(),
                    method: h.method.clone(),
                    token: h.token.as_ref().map(|t| t.expose().to_string()),
                    signing_secret: h.signing_secret.as_ref().map(|t| t.expose().to_string()),
                    target_concurrency: h.target_concurrency as u32,
                },
                format!("http:{}", url_host(&h.url)),
                h.timeout_seconds,
                h.max_attempts,
            ),
            HandlerConfig::Command(c) => (
                HandlerSnapshot::Command {
                    program: c.program.display().to_string(),
                    args: c.args.clone(),
                    working_dir: c.working_dir.as_ref().map(|p| p.display().to_string()),
                    env_allow: c.env_allow.clone(),
                },
                format!("command:{task_type}"),
                c.timeout_seconds,
                c.max_attempts,
            ),
            HandlerConfig::Llm(l) => {
                let provider = self.config.llm.providers.get(&l.provider).ok_or_else(|| {
                    QueueError::Invalid(format!(
                        "type: the handler of `{task_type}` names LLM provider `{}`, which is not configured",
                        l.provider
                    ))
                })?;
                (
                    HandlerSnapshot::Llm {
                        provider: l.provider.clone(),
                        base_url: provider.base_url.trim().trim_end_matches('/').to_string(),
                        api_key: provider.api_key.as_ref().map(|k| k.expose().to_string()),
                        model: provider.model.clone(),
                        default_max_tokens: l
                            .max_tokens
                            .unwrap_or(provider.max_tokens)
                            .min(provider.max_tokens),
                        max_tokens_cap: provider.max_tokens,
                        input_nanos_per_token: provider.input_nanos_per_token(),
                        output_nanos_per_token: provider.output_nanos_per_token(),
                        daily_budget_micros: provider.daily_budget_micros(),
                    },
                    format!("llm:{}", l.provider),
                    l.timeout_seconds,
                    l.max_attempts,
                )
            }
            HandlerConfig::Workflow(w) => {
                let mut steps = Vec::with_capacity(w.steps.len());
                for step in &w.steps {
                    let (handler, target, timeout_s, _) = self.snapshot(&step.handler)?;
                    if matches!(handler, HandlerSnapshot::Workflow { .. }) {
                        return Err(QueueError::Invalid(format!(
                            "type: step `{}` of `{task_type}` runs another workflow",
                            step.name
                        )));
                    }
                    steps.push(WorkflowStep {
                        name: step.name.clone(),
                        handler_type: step.handler.clone(),
                        handler,
                        target,
                        timeout_ms: timeout_s * 1000,
                        payload_template: step.payload.as_ref().map(|v| v.to_string()),
                    });
                }
                (
                    HandlerSnapshot::Workflow { steps },
                    format!("workflow:{task_type}"),
                    w.timeout_seconds,
                    w.max_attempts,
                )
            }
        })
    }

    /// Enqueues a task durably; the same idempotency key within its retention window returns
    /// the existing task instead, even under concurrent submits.
    pub async fn enqueue(&self, actor: &str, new: NewTask) -> Result<Enqueued, QueueError> {
        let task = self.build(actor, &new, Uuid::now_v7(), None)?;
        let now = task.created_at;
        let retention_ms = self.config.queue.idempotency_retention_seconds as i64 * 1000;
        let max_depth = self.config.queue.max_depth;
        let audit = Arc::clone(&self.audit);
        let actor = actor.to_string();
        let result = self
            .store
            .write(move |tx| {
                insert_enqueued(tx, &task, now, retention_ms, max_depth, &audit, &actor)
            })
            .await?;
        if result.created {
            self.wake.notify_one();
        }
        Ok(result)
    }

    /// Validates `new` and builds its task with `id`, snapshotting the handler of its type, or
    /// `http` when given (then the type needs no configured handler).
    fn build(
        &self,
        actor: &str,
        new: &NewTask,
        id: Uuid,
        http: Option<&HttpTarget>,
    ) -> Result<Task, QueueError> {
        if let Some(key) = &new.idempotency_key
            && (key.is_empty() || key.len() > 256)
        {
            return Err(QueueError::Invalid(
                "idempotency_key: must be 1 to 256 characters".into(),
            ));
        }
        let max_attempts = new.max_attempts.unwrap_or(0);
        if new.max_attempts.is_some() && !(1..=1000).contains(&max_attempts) {
            return Err(QueueError::Invalid(format!(
                "max_attempts: must be between 1 and 1000, got {max_attempts}"
            )));
        }
        if let Some(t) = new.timeout_s
            && !(1..=86_400).contains(&t)
        {
            return Err(QueueError::Invalid(format!(
                "timeout_s: must be between 1 and 86400, got {t}"
            )));
        }
        let (handler, target, handler_timeout, handler_attempts) = match http {
            Some(h) => (
                HandlerSnapshot::Http {
                    url: h.url.clone(),
                    method: h.method.clone(),
                    token: h.token.clone(),
                    signing_secret: h.signing_secret.clone(),
                    target_concurrency: h.target_concurrency,
                },
                format!("http:{}", url_host(&h.url)),
                h.timeout_seconds,
                None,
            ),
            None => self.snapshot(&new.task_type)?,
        };
        let timeout_s = new.timeout_s.unwrap_or(handler_timeout);
        if timeout_s >= self.config.queue.lease_seconds {
            return Err(QueueError::Invalid(format!(
                "timeout_s: {timeout_s}s must be shorter than the lease (queue.lease_seconds = {}s), or the task would be handed out twice",
                self.config.queue.lease_seconds
            )));
        }
        let now = self.clock.now_ms();
        Ok(Task {
            id,
            task_type: new.task_type.clone(),
            payload: new.payload.to_string(),
            priority: new.priority.unwrap_or(DEFAULT_PRIORITY),
            idempotency_key: new.idempotency_key.clone(),
            status: Status::Queued,
            created_by: actor.to_string(),
            created_at: now,
            updated_at: now,
            due_at: new.run_at.unwrap_or(now).max(now),
            finished_at: None,
            max_attempts: new
                .max_attempts
                .or(handler_attempts)
                .unwrap_or(self.config.queue.max_attempts),
            attempts_before_requeue: 0,
            timeout_ms: timeout_s * 1000,
            handler,
            target,
            attempts: Vec::new(),
            lease: None,
            result: None,
            cancel_requested: false,
        })
    }

    /// Builds a task for [`Queue::insert_prepared`] with an id the caller derived (so that the
    /// caller's retries name the same task, and its `webhook-id` is stable), and optionally an
    /// HTTP target snapshotted now instead of a configured handler. Validation and the handler
    /// snapshot happen here, outside any transaction.
    pub fn prepare(
        &self,
        actor: &str,
        id: Uuid,
        new: &NewTask,
        http: Option<&HttpTarget>,
    ) -> Result<Task, QueueError> {
        self.build(actor, new, id, http)
    }

    /// Enqueues a prepared task inside the caller's write transaction (so it commits with the
    /// caller's own records). A task with the same id, or the same idempotency key within its
    /// window, is returned instead of a new one. Call [`Queue::notify`] after the commit.
    pub fn insert_prepared(
        &self,
        tx: &WriteTransaction,
        task: &Task,
    ) -> Result<Enqueued, QueueError> {
        if let Some(existing) = load(tx, task.id)? {
            return Ok(Enqueued {
                task: existing,
                created: false,
            });
        }
        let retention_ms = self.config.queue.idempotency_retention_seconds as i64 * 1000;
        insert_enqueued(
            tx,
            task,
            task.created_at,
            retention_ms,
            self.config.queue.max_depth,
            &self.audit,
            &task.created_by,
        )
    }

    /// Tells the dispatcher that work may be waiting (after committing
    /// [`Queue::insert_prepared`] tasks).
    pub fn notify(&self) {
        self.wake.notify_one();
    }

    /// One task.
    pub async fn get(&self, id: Uuid) -> Result<Task, QueueError> {
        self.store
            .read(move |tx| load_read(tx, id)?.ok_or(QueueError::NotFound(id)))
            .await
    }

    /// Tasks, newest first, filtered and paged.
    pub async fn list(&self, filter: TaskFilter) -> Result<TaskPage, QueueError> {
        self.store.read(move |tx| list_tasks(tx, &filter)).await
    }

    /// Log lines of a task from line `from` on.
    pub async fn logs(&self, id: Uuid, from: u32) -> Result<Vec<(u32, String)>, QueueError> {
        self.store
            .read(move |tx| -> Result<_, QueueError> {
                let table = tx.open_table(TASK_LOGS)?;
                let mut out = Vec::new();
                for row in table.range((id.as_u128(), from)..=(id.as_u128(), u32::MAX))? {
                    let (k, v) = row?;
                    out.push((k.value().1, v.value().to_string()));
                }
                Ok(out)
            })
            .await
    }

    /// Appends log lines to a running task.
    pub async fn append_logs(&self, id: Uuid, lines: Vec<String>) -> Result<(), QueueError> {
        if lines.is_empty() {
            return Ok(());
        }
        self.store
            .write(move |tx| -> Result<(), QueueError> {
                let mut table = tx.open_table(TASK_LOGS)?;
                let next = match table
                    .range((id.as_u128(), 0)..=(id.as_u128(), u32::MAX))?
                    .next_back()
                {
                    Some(row) => row?.0.value().1 + 1,
                    None => 0,
                };
                for (offset, line) in lines.iter().enumerate() {
                    table.insert((id.as_u128(), next + offset as u32), line.as_str())?;
                }
                Ok(())
            })
            .await
    }

    /// Cancels a waiting task at once; a running one is asked to stop (its executor reports
    /// [`Outcome::Cancelled`]). Finished tasks cannot be cancelled.
    pub async fn cancel(&self, actor: &str, id: Uuid) -> Result<Task, QueueError> {
        let now = self.clock.now_ms();
        let audit = Arc::clone(&self.audit);
        let actor = actor.to_string();
        self.store
            .write(move |tx| -> Result<Task, QueueError> {
                let mut task = load(tx, id)?.ok_or(QueueError::NotFound(id))?;
                if task.status.is_final() {
                    return Err(QueueError::Conflict(format!(
                        "task {id} is already {}",
                        task.status.as_str()
                    )));
                }
                if task.status == Status::Running {
                    task.cancel_requested = true;
                    task.updated_at = now;
                    save(tx, &task)?;
                } else {
                    unschedule(tx, &task)?;
                    set_status(tx, &mut task, Status::Cancelled, now)?;
                    task.finished_at = Some(now);
                    save(tx, &task)?;
                }
                audit.append(
                    tx,
                    now,
                    &Event::new(actor.clone(), "task.cancel", id.to_string()),
                )?;
                Ok(task)
            })
            .await
    }

    /// Leases up to `request.max` ready tasks: due delayed tasks are promoted first; tasks of
    /// saturated types are skipped; tasks of blocked targets wait until their circuit allows a
    /// trial (without using an attempt).
    pub async fn lease(&self, request: LeaseRequest) -> Result<Vec<Task>, QueueError> {
        let now = self.clock.now_ms();
        if request.max == 0 || !self.store.read(move |tx| has_due_work(tx, now)).await? {
            return Ok(Vec::new());
        }
        let lease_ms = self.config.queue.lease_seconds as i64 * 1000;
        self.store
            .write(move |tx| lease_in(tx, &request, now, lease_ms))
            .await
    }

    /// Records how an attempt ended. A report under a lease that is no longer held is ignored.
    pub async fn complete(
        &self,
        id: Uuid,
        lease_id: u128,
        outcome: Outcome,
    ) -> Result<Completion, QueueError> {
        let now = self.clock.now_ms();
        let policy = RetryPolicy::from_config(&self.config);
        let result_max = self.config.queue.result_max_bytes;
        let completion = self
            .store
            .write(move |tx| -> Result<Completion, QueueError> {
                let Some(mut task) = load(tx, id)? else {
                    return Ok(Completion::LeaseLost);
                };
                if task.status != Status::Running || task.lease.map(|l| l.id) != Some(lease_id) {
                    return Ok(Completion::LeaseLost);
                }
                finish_attempt(tx, &mut task, outcome.clone(), now, &policy, result_max)?;
                Ok(Completion::Applied(task.status))
            })
            .await?;
        self.wake.notify_one();
        Ok(completion)
    }

    /// Takes back tasks whose lease expired: the attempt counts as failed (`lease_expired`).
    pub async fn reap_expired(&self) -> Result<usize, QueueError> {
        let now = self.clock.now_ms();
        let policy = RetryPolicy::from_config(&self.config);
        let result_max = self.config.queue.result_max_bytes;
        let reaped = self
            .store
            .write(move |tx| -> Result<usize, QueueError> {
                let expired: Vec<(i64, u128)> = tx
                    .open_table(TASKS_LEASED)?
                    .range(..(now, u128::MAX))?
                    .take(PROMOTE_LIMIT)
                    .map(|r| r.map(|(k, _)| k.value()))
                    .collect::<Result<_, _>>()?;
                let mut reaped = 0;
                for (_, raw) in expired {
                    let Some(mut task) = load(tx, Uuid::from_u128(raw))? else {
                        continue;
                    };
                    if task.status != Status::Running {
                        continue;
                    }
                    let outcome = Outcome::Retry {
                        class: "lease_expired".into(),
                        message: "the lease expired before the attempt finished".into(),
                        retry_after_ms: None,
                        receipt: None,
                    };
                    finish_attempt(tx, &mut task, outcome, now, &policy, result_max)?;
                    reaped += 1;
                }
                Ok(reaped)
            })
            .await?;
        if reaped > 0 {
            self.wake.notify_one();
        }
        Ok(reaped)
    }

    /// After a restart every lease belongs to a process that is gone (the database admits one
    /// process): their tasks run again at once, without using an attempt.
    pub async fn recover_interrupted(&self) -> Result<usize, QueueError> {
        let now = self.clock.now_ms();
        let policy = RetryPolicy::from_config(&self.config);
        let result_max = self.config.queue.result_max_bytes;
        self.store
            .write(move |tx| -> Result<usize, QueueError> {
                let running: Vec<u128> = ids_with_status(tx, Status::Running)?;
                for raw in &running {
                    if let Some(mut task) = load(tx, Uuid::from_u128(*raw))? {
                        finish_attempt(
                            tx,
                            &mut task,
                            Outcome::Interrupted,
                            now,
                            &policy,
                            result_max,
                        )?;
                    }
                }
                Ok(running.len())
            })
            .await
    }

    /// Task counts by status and type.
    pub async fn counts(&self) -> Result<BTreeMap<(Status, String), u64>, QueueError> {
        self.store
            .read(|tx| -> Result<_, QueueError> {
                let table = tx.open_table(TASK_COUNTS)?;
                let mut out = BTreeMap::new();
                for row in table.iter()? {
                    let (k, v) = row?;
                    let (code, task_type) = k.value();
                    if let Some(status) = Status::from_code(code)
                        && v.value() > 0
                    {
                        out.insert((status, task_type.to_string()), v.value());
                    }
                }
                Ok(out)
            })
            .await
    }

    /// Dead-letter queue statistics.
    pub async fn dlq_stats(&self) -> Result<DlqStats, QueueError> {
        let now = self.clock.now_ms();
        self.store
            .read(move |tx| -> Result<DlqStats, QueueError> {
                let mut stats = DlqStats::default();
                let mut oldest: Option<Millis> = None;
                for raw in ids_with_status_read(tx, Status::Dead)? {
                    let Some(task) = load_read(tx, Uuid::from_u128(raw))? else {
                        continue;
                    };
                    stats.total += 1;
                    *stats.by_type.entry(task.task_type.clone()).or_default() += 1;
                    let class = task.last_error_class().unwrap_or("unknown").to_string();
                    *stats.by_error_class.entry(class).or_default() += 1;
                    let died = task.finished_at.unwrap_or(task.updated_at);
                    oldest = Some(oldest.map_or(died, |o| o.min(died)));
                }
                stats.oldest_age_seconds = oldest.map(|o| ((now - o).max(0) / 1000) as u64);
                Ok(stats)
            })
            .await
    }

    /// Moves dead tasks (optionally of one type, at most `max`) back to the queue with a fresh
    /// set of attempts; with `dry_run`, only lists what would move.
    pub async fn dlq_drain(
        &self,
        actor: &str,
        filter_type: Option<String>,
        max: usize,
        dry_run: bool,
    ) -> Result<DrainReport, QueueError> {
        let now = self.clock.now_ms();
        let audit = Arc::clone(&self.audit);
        let actor = actor.to_string();
        let tasks = self
            .store
            .write(move |tx| -> Result<Vec<Task>, QueueError> {
                let mut moved = Vec::new();
                for raw in ids_with_status(tx, Status::Dead)? {
                    if moved.len() >= max {
                        break;
                    }
                    let Some(mut task) = load(tx, Uuid::from_u128(raw))? else {
                        continue;
                    };
                    if filter_type.as_ref().is_some_and(|t| *t != task.task_type) {
                        continue;
                    }
                    if !dry_run {
                        task.attempts_before_requeue =
                            task.attempts.iter().filter(|a| a.counted).count() as u32;
                        task.finished_at = None;
                        task.due_at = now;
                        set_status(tx, &mut task, Status::Queued, now)?;
                        save(tx, &task)?;
                        schedule(tx, &task, now)?;
                    }
                    moved.push(task);
                }
                if !dry_run && !moved.is_empty() {
                    audit.append(
                        tx,
                        now,
                        &Event::new(actor.clone(), "dlq.drain", "dlq").with_detail(
                            serde_json::json!({
                                "filter_type": filter_type, "max": max,
                                "tasks": moved.iter().map(|t| t.id.to_string()).collect::<Vec<_>>(),
                            }),
                        ),
                    )?;
                }
                Ok(moved)
            })
            .await?;
        if !dry_run && !tasks.is_empty() {
            self.wake.notify_one();
        }
        Ok(DrainReport { dry_run, tasks })
    }

    /// Deletes one dead task for good.
    pub async fn dlq_delete(&self, actor: &str, id: Uuid) -> Result<(), QueueError> {
        let now = self.clock.now_ms();
        let audit = Arc::clone(&self.audit);
        let actor = actor.to_string();
        self.store
            .write(move |tx| -> Result<(), QueueError> {
                let task = load(tx, id)?.ok_or(QueueError::NotFound(id))?;
                if task.status != Status::Dead {
                    return Err(QueueError::Conflict(format!(
                        "task {id} is {}, not in the dead-letter queue",
                        task.status.as_str()
                    )));
                }
                delete_task(tx, &task)?;
                audit.append(
                    tx,
                    now,
                    &Event::new(actor.clone(), "dlq.delete", id.to_string())
                        .with_detail(serde_json::json!({"type": task.task_type})),
                )?;
                Ok(())
            })
            .await
    }

    /// Deletes finished tasks (succeeded, cancelled) older than the retention period and
    /// expired idempotency keys. Returns how many tasks were deleted.
    pub async fn purge_expired(&self) -> Result<usize, QueueError> {
        let now = self.clock.now_ms();
        let cutoff = now - self.config.queue.retention_days as i64 * 86_400_000;
        self.store
            .write(move |tx| -> Result<usize, QueueError> {
                let expired_keys: Vec<(i64, String)> = tx
                    .open_table(IDEMPOTENCY_EXPIRY)?
                    .range(..(now, ""))?
                    .take(PROMOTE_LIMIT)
                    .map(|r| r.map(|(k, _)| (k.value().0, k.value().1.to_string())))
                    .collect::<Result<_, _>>()?;
                {
                    let mut keys = tx.open_table(IDEMPOTENCY_KEYS)?;
                    let mut expiry = tx.open_table(IDEMPOTENCY_EXPIRY)?;
                    for (at, key) in &expired_keys {
                        expiry.remove((*at, key.as_str()))?;
                        let current = keys.get(key.as_str())?.map(|v| v.value());
                        if current.is_some_and(|(_, exp)| exp == *at) {
                            keys.remove(key.as_str())?;
                        }
                    }
                }
                let mut deleted = 0;
                for status in [Status::Succeeded, Status::Cancelled] {
                    for raw in ids_with_status(tx, status)?.into_iter().take(PROMOTE_LIMIT) {
                        let Some(task) = load(tx, Uuid::from_u128(raw))? else {
                            continue;
                        };
                        if task.finished_at.unwrap_or(task.updated_at) < cutoff {
                            delete_task(tx, &task)?;
                            deleted += 1;
                        }
                    }
                }
                Ok(deleted)
            })
            .await
    }
}

/// Inserts a new task with its idempotency key, indexes and audit entry, unless its key names a
/// live task (then that one is returned).
fn insert_enqueued(
    tx: &WriteTransaction,
    task: &Task,
    now: Millis,
    retention_ms: i64,
    max_depth: u64,
    audit: &Audit,
    actor: &str,
) -> Result<Enqueued, QueueError> {
    if let Some(key) = &task.idempotency_key
        && let Some(existing) = idempotent_task(tx, key, now)?
    {
        return Ok(Enqueued {
            task: existing,
            created: false,
        });
    }
    let depth = waiting_depth(tx)?;
    if depth >= max_depth {
        return Err(QueueError::Full {
            depth,
            max: max_depth,
        });
    }
    if let Some(key) = &task.idempotency_key {
        let expires = now + retention_ms;
        tx.open_table(IDEMPOTENCY_KEYS)?
            .insert(key.as_str(), (task.id.as_u128(), expires))?;
        tx.open_table(IDEMPOTENCY_EXPIRY)?
            .insert((expires, key.as_str()), ())?;
    }
    insert_new(tx, task, now)?;
    audit.append(
        tx,
        now,
        &Event::new(actor, "task.enqueue", task.id.to_string()).with_detail(
            serde_json::json!({"type": task.task_type, "priority": task.priority,
                "idempotency_key": task.idempotency_key}),
        ),
    )?;
    Ok(Enqueued {
        task: task.clone(),
        created: true,
    })
}

/// The host of an http(s) URL, for circuit and concurrency targets.
pub fn url_host(url: &str) -> String {
    let rest = url.split_once("://").map_or(url, |(_, r)| r);
    let authority = rest.split(['/', '?', '#']).next().unwrap_or(rest);
    authority
        .rsplit('@')
        .next()
        .unwrap_or(authority)
        .to_ascii_lowercase()
}

/// Retry timing from the configuration.
#[derive(Debug, Clone, Copy)]
struct RetryPolicy {
    base_ms: u64,
    max_ms: u64,
    retry_after_max_ms: u64,
}

impl RetryPolicy {
    fn from_config(config: &Config) -> Self {
        RetryPolicy {
            base_ms: config.queue.backoff_base_ms,
            max_ms: config.queue.backoff_max_seconds * 1000,
            retry_after_max_ms: config.queue.retry_after_max_seconds * 1000,
        }
    }

    /// Delay before attempt `failed + 1`: exponential, capped, with "equal jitter" (half fixed,
    /// half random), or the target's Retry-After when longer (clamped).
    fn delay_ms(&self, failed: u32, retry_after_ms: Option<u64>, random: f64) -> u64 {
        let exp = self
            .base_ms
            .saturating_mul(1u64 << failed.saturating_sub(1).min(32))
            .min(self.max_ms);
        let jittered = exp / 2 + ((exp / 2) as f64 * random) as u64;
        match retry_after_ms {
            Some(ra) => jittered.max(ra.min(self.retry_after_max_ms)),
            None => jittered,
        }
    }
}

fn random_unit() -> f64 {
    let bytes = crate::fsutil::random_bytes::<8>();
    (u64::from_le_bytes(bytes) >> 11) as f64 / (1u64 << 53) as f64
}

fn load(tx: &WriteTransaction, id: Uuid) -> Result<Option<Task>, QueueError> {
    let table = tx.open_table(TASKS)?;
    let value = table.get(id.as_u128())?;
    Ok(value
        .map(|v| codec::decode::<Task>(TASKS.name(), id, v.value()))
        .transpose()?)
}

fn load_read(tx: &ReadTransaction, id: Uuid) -> Result<Option<Task>, QueueError> {
    let table = tx.open_table(TASKS)?;
    let value = table.get(id.as_u128())?;
    Ok(value
        .map(|v| codec::decode::<Task>(TASKS.name(), id, v.value()))
        .transpose()?)
}

fn save(tx: &WriteTransaction, task: &Task) -> Result<(), QueueError> {
    tx.open_table(TASKS)?
        .insert(task.id.as_u128(), codec::encode(task).as_slice())?;
    Ok(())
}

fn idempotent_task(
    tx: &WriteTransaction,
    key: &str,
    now: Millis,
) -> Result<Option<Task>, QueueError> {
    let entry = tx
        .open_table(IDEMPOTENCY_KEYS)?
        .get(key)?
        .map(|v| v.value());
    match entry {
        Some((raw, expires)) if expires > now => load(tx, Uuid::from_u128(raw)),
        _ => Ok(None),
    }
}

fn bump_count(
    tx: &WriteTransaction,
    status: Status,
    task_type: &str,
    delta: i64,
) -> Result<(), QueueError> {
    let mut counts = tx.open_table(TASK_COUNTS)?;
    let key = (status.code(), task_type);
    let current = counts.get(key)?.map(|v| v.value()).unwrap_or(0);
    let next = current.saturating_add_signed(delta);
    if next == 0 {
        counts.remove(key)?;
    } else {
        counts.insert(key, next)?;
    }
    Ok(())
}

fn waiting_depth(tx: &WriteTransaction) -> Result<u64, QueueError> {
    let counts = tx.open_table(TASK_COUNTS)?;
    let mut depth = 0;
    for status in [Status::Queued, Status::Retrying] {
        for row in counts.range((status.code(), "")..(status.code() + 1, ""))? {
            depth += row?.1.value();
        }
    }
    Ok(depth)
}

fn insert_new(tx: &WriteTransaction, task: &Task, now: Millis) -> Result<(), QueueError> {
    save(tx, task)?;
    tx.open_table(TASKS_BY_STATUS)?
        .insert((task.status.code(), task.id.as_u128()), ())?;
    bump_count(tx, task.status, &task.task_type, 1)?;
    schedule(tx, task, now)
}

/// Moves a task to `status`, keeping the status index and counts in step (the record is saved
/// by the caller).
fn set_status(
    tx: &WriteTransaction,
    task: &mut Task,
    status: Status,
    now: Millis,
) -> Result<(), QueueError> {
    if task.status != status {
        let mut index = tx.open_table(TASKS_BY_STATUS)?;
        index.remove((task.status.code(), task.id.as_u128()))?;
        index.insert((status.code(), task.id.as_u128()), ())?;
        drop(index);
        bump_count(tx, task.status, &task.task_type, -1)?;
        bump_count(tx, status, &task.task_type, 1)?;
        task.status = status;
    }
    task.updated_at = now;
    Ok(())
}

/// Puts a waiting task in the ready or delayed index by its due time.
fn schedule(tx: &WriteTransaction, task: &Task, now: Millis) -> Result<(), QueueError> {
    if task.due_at <= now {
        tx.open_table(TASKS_READY)?.insert(ready_key(task), ())?;
    } else {
        tx.open_table(TASKS_DELAYED)?
            .insert((task.due_at, task.id.as_u128()), ())?;
    }
    Ok(())
}

/// Removes a waiting task from the ready and delayed indexes.
fn unschedule(tx: &WriteTransaction, task: &Task) -> Result<(), QueueError> {
    tx.open_table(TASKS_READY)?.remove(ready_key(task))?;
    tx.open_table(TASKS_DELAYED)?
        .remove((task.due_at, task.id.as_u128()))?;
    Ok(())
}

fn delete_task(tx: &WriteTransaction, task: &Task) -> Result<(), QueueError> {
    unschedule(tx, task)?;
    if let Some(lease) = task.lease {
        tx.open_table(TASKS_LEASED)?
            .remove((lease.expires_at, task.id.as_u128()))?;
    }
    tx.open_table(TASKS_BY_STATUS)?
        .remove((task.status.code(), task.id.as_u128()))?;
    bump_count(tx, task.status, &task.task_type, -1)?;
    tx.open_table(TASKS)?.remove(task.id.as_u128())?;
    let mut logs = tx.open_table(TASK_LOGS)?;
    let lines: Vec<(u128, u32)> = logs
        .range((task.id.as_u128(), 0)..=(task.id.as_u128(), u32::MAX))?
        .map(|r| r.map(|(k, _)| k.value()))
        .collect::<Result<_, _>>()?;
    for key in lines {
        logs.remove(key)?;
    }
    drop(logs);
    let mut steps = tx.open_table(WORKFLOW_STEPS)?;
    let checkpoints: Vec<(u128, u32)> = steps
        .range((task.id.as_u128(), 0)..=(task.id.as_u128(), u32::MAX))?
        .map(|r| r.map(|(k, _)| k.value()))
        .collect::<Result<_, _>>()?;
    for key in checkpoints {
        steps.remove(key)?;
    }
    Ok(())
}

fn ids_with_status(tx: &WriteTransaction, status: Status) -> Result<Vec<u128>, QueueError> {
    let index = tx.open_table(TASKS_BY_STATUS)?;
    let ids = index
        .range((status.code(), 0)..=(status.code(), u128::MAX))?
        .map(|r| r.map(|(k, _)| k.value().1))
        .collect::<Result<_, _>>()?;
    Ok(ids)
}

fn ids_with_status_read(tx: &ReadTransaction, status: Status) -> Result<Vec<u128>, QueueError> {
    let index = tx.open_table(TASKS_BY_STATUS)?;
    let ids = index
        .range((status.code(), 0)..=(status.code(), u128::MAX))?
        .map(|r| r.map(|(k, _)| k.value().1))
        .collect::<Result<_, _>>()?;
    Ok(ids)
}

fn has_due_work(tx: &ReadTransaction, now: Millis) -> Result<bool, QueueError> {
    if !tx.open_table(TASKS_READY)?.is_empty()? {
        return Ok(true);
    }
    Ok(tx
        .open_table(TASKS_DELAYED)?
        .first()?
        .is_some_and(|(k, _)| k.value().0 <= now))
}

/// A task's key in the ready index.
fn ready_key(task: &Task) -> (&str, u32, i64, u128) {
    (
        task.task_type.as_str(),
        task.priority,
        task.due_at,
        task.id.as_u128(),
    )
}

/// The most urgent ready entry of `task_type`: (priority, due, id).
fn ready_head(
    tx: &WriteTransaction,
    task_type: &str,
) -> Result<Option<(u32, i64, u128)>, QueueError> {
    let table = tx.open_table(TASKS_READY)?;
    let mut range =
        table.range((task_type, 0, i64::MIN, 0)..=(task_type, u32::MAX, i64::MAX, u128::MAX))?;
    Ok(match range.next() {
        Some(row) => {
            let (_, p, due, id) = row?.0.value();
            Some((p, due, id))
        }
        None => None,
    })
}

/// Task types that have ready tasks, by skipping from one type to the next in the index.
fn ready_types(tx: &WriteTransaction) -> Result<Vec<String>, QueueError> {
    let table = tx.open_table(TASKS_READY)?;
    let mut types = Vec::new();
    let mut next = table.first()?.map(|(k, _)| k.value().0.to_string());
    while let Some(task_type) = next {
        next = table
            .range((task_type.as_str(), u32::MAX, i64::MAX, u128::MAX)..)?
            .find_map(|r| match r {
                Ok((k, _)) if k.value().0 != task_type => Some(Ok(k.value().0.to_string())),
                Ok(_) => None,
                Err(e) => Some(Err(e)),
            })
            .transpose()?;
        types.push(task_type);
    }
    Ok(types)
}

fn lease_in(
    tx: &WriteTransaction,
    request: &LeaseRequest,
    now: Millis,
    lease_ms: i64,
) -> Result<Vec<Task>, QueueError> {
    // Promote delayed tasks that are due.
    let due: Vec<(i64, u128)> = tx
        .open_table(TASKS_DELAYED)?
        .range(..=(now, u128::MAX))?
        .take(PROMOTE_LIMIT)
        .map(|r| r.map(|(k, _)| k.value()))
        .collect::<Result<_, _>>()?;
    for (at, raw) in due {
        tx.open_table(TASKS_DELAYED)?.remove((at, raw))?;
        if let Some(task) = load(tx, Uuid::from_u128(raw))? {
            tx.open_table(TASKS_READY)?.insert(ready_key(&task), ())?;
        }
    }

    // The head of each type with room; the most urgent head is leased next, then that type's
    // head is refreshed. A type at its concurrency limit is never looked at.
    let mut room = request.type_room.clone();
    let mut heads = std::collections::BinaryHeap::new();
    for task_type in ready_types(tx)? {
        if room.get(&task_type).is_some_and(|left| *left == 0) {
            continue;
        }
        if let Some(head) = ready_head(tx, &task_type)? {
            heads.push(std::cmp::Reverse((head, task_type)));
        }
    }
    let mut leased = Vec::new();
    let mut looked_at = 0;
    while leased.len() < request.max && looked_at < SCAN_LIMIT {
        let Some(std::cmp::Reverse(((priority, due, raw), task_type))) = heads.pop() else {
            break;
        };
        looked_at += 1;
        tx.open_table(TASKS_READY)?
            .remove((task_type.as_str(), priority, due, raw))?;
        let refill = |tx: &WriteTransaction, heads: &mut std::collections::BinaryHeap<_>| {
            if let Some(head) = ready_head(tx, &task_type)? {
                heads.push(std::cmp::Reverse((head, task_type.clone())));
            }
            Ok::<_, QueueError>(())
        };
        let Some(mut task) = load(tx, Uuid::from_u128(raw))? else {
            refill(tx, &mut heads)?;
            continue;
        };
        if let Some(until) = request.blocked_targets.get(&task.target) {
            // The circuit is open: wait for the trial time without using an attempt.
            task.due_at = (*until).max(now + 1);
            task.updated_at = now;
            save(tx, &task)?;
            schedule(tx, &task, now)?;
            refill(tx, &mut heads)?;
            continue;
        }
        let lease = Lease {
            id: u128::from_le_bytes(crate::fsutil::random_bytes::<16>()),
            expires_at: now + lease_ms,
        };
        task.lease = Some(lease);
        task.attempts.push(Attempt {
            number: task.attempts.len() as u32 + 1,
            started_at: now,
            finished_at: None,
            outcome: String::new(),
            error_class: None,
            error_message: None,
            receipt: None,
            counted: true,
        });
        set_status(tx, &mut task, Status::Running, now)?;
        save(tx, &task)?;
        tx.open_table(TASKS_LEASED)?
            .insert((lease.expires_at, task.id.as_u128()), ())?;
        let has_room = match room.get_mut(&task.task_type) {
            Some(left) => {
                *left -= 1;
                *left > 0
            }
            None => true,
        };
        if has_room {
            refill(tx, &mut heads)?;
        }
        leased.push(task);
    }
    Ok(leased)
}

fn cap(text: String, max: usize) -> String {
    if text.len() <= max {
        return text;
    }
    let mut end = max;
    while !text.is_char_boundary(end) {
        end -= 1;
    }
    text[..end].to_string()
}

/// Ends the running attempt of `task` with `outcome` and moves the task on.
fn finish_attempt(
    tx: &WriteTransaction,
    task: &mut Task,
    outcome: Outcome,
    now: Millis,
    policy: &RetryPolicy,
    result_max: usize,
) -> Result<(), QueueError> {
    if let Some(lease) = task.lease.take() {
        tx.open_table(TASKS_LEASED)?
            .remove((lease.expires_at, task.id.as_u128()))?;
    }
    let cancel_requested = task.cancel_requested;
    let attempt = task.attempts.last_mut();
    let record = |outcome_name: &str,
                  class: Option<String>,
                  message: Option<String>,
                  receipt: Option<Receipt>,
                  counted: bool| {
        if let Some(a) = attempt {
            a.finished_at = Some(now);
            a.outcome = outcome_name.to_string();
            a.error_class = class;
            a.error_message = message;
            a.receipt = receipt;
            a.counted = counted;
        }
    };
    let next = match outcome {
        Outcome::Succeeded { result, receipt } => {
            record("succeeded", None, None, receipt, true);
            task.result = result.map(|r| cap(r, result_max));
            Status::Succeeded
        }
        Outcome::Cancelled => {
            record("cancelled", Some("cancelled".into()), None, None, true);
            Status::Cancelled
        }
        Outcome::Fail {
            class,
            message,
            receipt,
        } => {
            record("failed", Some(class), Some(message), receipt, true);
            Status::Dead
        }
        Outcome::Retry {
            class,
            message,
            retry_after_ms,
            receipt,
        } => {
            record("failed", Some(class), Some(message), receipt, true);
            if cancel_requested {
                Status::Cancelled
            } else if task.counted_attempts() >= task.max_attempts {
                Status::Dead
            } else {
                let delay = policy.delay_ms(task.counted_attempts(), retry_after_ms, random_unit());
                task.due_at = now + delay as i64;
                Status::Retrying
            }
        }
        Outcome::Defer {
            class,
            reason,
            until,
        } => {
            record("deferred", Some(class), Some(reason), None, false);
            task.due_at = until.max(now);
            if task.attempts.iter().any(|a| a.counted) {
                Status::Retrying
            } else {
                Status::Queued
            }
        }
        Outcome::Interrupted => {
            record(
                "interrupted",
                Some("interrupted".into()),
                Some("keel stopped during the attempt".into()),
                None,
                false,
            );
            task.due_at = now;
            if cancel_requested {
                Status::Cancelled
            } else if task.attempts.iter().any(|a| a.counted) {
                Status::Retrying
            } else {
                Status::Queued
            }
        }
    };
    set_status(tx, task, next, now)?;
    if next.is_final() {
        task.finished_at = Some(now);
    } else {
        schedule(tx, task, now)?;
    }
    save(tx, task)
}

fn list_tasks(tx: &ReadTransaction, filter: &TaskFilter) -> Result<TaskPage, QueueError> {
    let limit = filter.limit.clamp(1, 1000);
    let before = filter.cursor.map_or(u128::MAX, |c| c.as_u128());
    let mut tasks = Vec::new();
    let mut last = None;
    let matches = |t: &Task| {
        filter
            .task_type
            .as_ref()
            .is_none_or(|ty| *ty == t.task_type)
    };
    match filter.status {
        Some(status) => {
            let index = tx.open_table(TASKS_BY_STATUS)?;
            for row in index
                .range((status.code(), 0)..(status.code(), before))?
                .rev()
            {
                let raw = row?.0.value().1;
                last = Some(raw);
                if let Some(t) = load_read(tx, Uuid::from_u128(raw))?
                    && matches(&t)
                {
                    tasks.push(t);
                    if tasks.len() == limit {
                        break;
                    }
                }
            }
        }
        None => {
            let table = tx.open_table(TASKS)?;
            for row in table.range(..before)?.rev() {
                let (k, v) = row?;
                last = Some(k.value());
                let t: Task = codec::decode(TASKS.name(), Uuid::from_u128(k.value()), v.value())?;
                if matches(&t) {
                    tasks.push(t);
                    if tasks.len() == limit {
                        break;
                    }
                }
            }
        }
    }
    let next_cursor = (tasks.len() == limit)
        .then(|| last.map(Uuid::from_u128))
        .flatten();
    Ok(TaskPage { tasks, next_cursor })
}

/// Series sampled every maintenance step with the number of waiting tasks (queued + retrying),
/// so the queue's depth has a history.
pub const QUEUE_WAITING_SERIES: &str = "keel_queue_waiting";

/// The queue's housekeeping: returns expired leases, publishes depth gauges, and hourly
/// deletes finished tasks past retention and expired idempotency keys.
pub struct Maintenance {
    /// The queue.
    pub queue: Arc<Queue>,
    /// Where gauges go.
    pub metrics: Arc<crate::metrics::Metrics>,
    /// When the last purge ran.
    pub last_purge: Option<std::time::Instant>,
}

impl Maintenance {
    /// Publishes `keel_tasks{status,type}` and `keel_dlq_size`.
    pub async fn publish_gauges(&self) -> Result<(), QueueError> {
        let counts = self.queue.counts().await?;
        let mut dead = 0;
        for task_type in self.queue.config.handlers.keys() {
            for status in Status::ALL {
                let n = counts
                    .get(&(status, task_type.clone()))
                    .copied()
                    .unwrap_or(0);
                self.metrics
                    .gauge(
                        "keel_tasks",
                        "Tasks by status and type.",
                        &[("status", status.as_str()), ("type", task_type)],
                    )
                    .set(n as f64);
            }
        }
        for ((status, _), n) in &counts {
            if *status == Status::Dead {
                dead += n;
            }
        }
        self.metrics
            .gauge("keel_dlq_size", "Tasks in the dead-letter queue.", &[])
            .set(dead as f64);
        let waiting: u64 = counts
            .iter()
            .filter(|((status, _), _)| status.is_waiting())
            .map(|(_, n)| *n)
            .sum();
        self.metrics
            .histogram(
                QUEUE_WAITING_SERIES,
                "Waiting tasks (queued and retrying), sampled every 5 seconds.",
                crate::metrics::Unit::Count,
                &[],
            )
            .record(waiting);
        Ok(())
    }
}

impl crate::supervisor::Worker for Maintenance {
    fn name(&self) -> &'static str {
        "queue-maintenance"
    }
    fn interval(&self) -> std::time::Duration {
        std::time::Duration::from_secs(5)
    }
    fn step(&mut self) -> crate::supervisor::StepFuture<'_> {
        Box::pin(async move {
            let run = async {
                self.queue.reap_expired().await?;
                if self
                    .last_purge
                    .is_none_or(|t| t.elapsed() >= std::time::Duration::from_secs(3600))
                {
                    self.queue.purge_expired().await?;
                    self.last_purge = Some(std::time::Instant::now());
                }
                self.publish_gauges().await
            };
            run.await.map_err(|e: QueueError| e.to_string())
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_doubles_caps_and_honours_retry_after() {
        let p = RetryPolicy {
            base_ms: 1000,
            max_ms: 60_000,
            retry_after_max_ms: 300_000,
        };
        // With the random part at 0 and at 1: the delay lies in [exp/2, exp].
        assert_eq!(p.delay_ms(1, None, 0.0), 500);
        assert_eq!(p.delay_ms(1, None, 1.0), 1000);
        assert_eq!(p.delay_ms(2, None, 1.0), 2000);
        assert_eq!(p.delay_ms(3, None, 0.5), 3000);
        assert_eq!(p.delay_ms(10, None, 1.0), 60_000, "capped");
        assert_eq!(p.delay_ms(40, None, 1.0), 60_000, "no overflow");
        assert_eq!(
            p.delay_ms(1, Some(120_000), 0.0),
            120_000,
            "Retry-After wins when longer"
        );
        assert_eq!(
            p.delay_ms(1, Some(900_000), 0.0),
            300_000,
            "Retry-After is clamped"
        );
    }

    #[test]
    fn hosts_are_extracted() {
        assert_eq!(
            url_host("https://User:pw@Example.com:8443/x?y"),
            "example.com:8443"
        );
        assert_eq!(url_host("http://127.0.0.1:9/hook"), "127.0.0.1:9");
    }

    fn queue_with_types(types: &[&str]) -> (tempfile::TempDir, Queue) {
        let dir = tempfile::tempdir().unwrap();
        let store = Arc::new(
            Store::open(
                &dir.path().join("keel.redb"),
                crate::store::StoreOptions::default(),
            )
            .unwrap(),
        );
        let audit = Arc::new(Audit::load_or_create(dir.path(), 1000).unwrap());
        let mut config = Config::default();
        for t in types {
            config.handlers.insert(
                t.to_string(),
                HandlerConfig::Http(crate::config::HttpHandlerConfig {
                    url: "http://127.0.0.1:9/".into(),
                    method: "POST".into(),
                    token: None,
                    signing_secret: None,
                    timeout_seconds: 30,
                    target_concurrency: 8,
                    concurrency: None,
                    max_attempts: None,
                }),
            );
        }
        let clock = Arc::new(crate::clock::ManualClock::new(1_000_000));
        let queue = Queue::new(store, audit, clock, Arc::new(config));
        (dir, queue)
    }

    #[tokio::test]
    async fn a_type_at_its_limit_does_not_starve_the_others() {
        let (_dir, queue) = queue_with_types(&["busy", "other"]);
        for _ in 0..(SCAN_LIMIT + 100) {
            queue
                .enqueue(
                    "test",
                    NewTask {
                        task_type: "busy".into(),
                        ..NewTask::default()
                    },
                )
                .await
                .unwrap();
        }
        let other = queue
            .enqueue(
                "test",
                NewTask {
                    task_type: "other".into(),
                    priority: Some(500),
                    ..NewTask::default()
                },
            )
            .await
            .unwrap();
        let leased = queue
            .lease(LeaseRequest {
                max: 10,
                type_room: HashMap::from([("busy".to_string(), 0)]),
                blocked_targets: HashMap::new(),
            })
            .await
            .unwrap();
        assert_eq!(
            leased.iter().map(|t| t.id).collect::<Vec<_>>(),
            vec![other.task.id]
        );
        // With room for 3 busy tasks, exactly 3 of them go, most urgent (oldest) first.
        let leased = queue
            .lease(LeaseRequest {
                max: 10,
                type_room: HashMap::from([("busy".to_string(), 3)]),
                blocked_targets: HashMap::new(),
            })
            .await
            .unwrap();
        assert_eq!(leased.len(), 3);
        assert!(leased.windows(2).all(|w| w[0].id < w[1].id));
    }

    #[tokio::test]
    async fn leasing_interleaves_types_by_priority() {
        let (_dir, queue) = queue_with_types(&["a", "b"]);
        let mut expected = Vec::new();
        for (task_type, priority) in [("a", 5), ("b", 1), ("a", 3), ("b", 9)] {
            let t = queue
                .enqueue(
                    "test",
                    NewTask {
                        task_type: task_type.into(),
                        priority: Some(priority),
                        ..NewTask::default()
                    },
                )
                .await
                .unwrap();
            expected.push((priority, t.task.id));
        }
        expected.sort();
        let leased = queue
            .lease(LeaseRequest {
                max: 10,
                ..LeaseRequest::default()
            })
            .await
            .unwrap();
        assert_eq!(
            leased.iter().map(|t| t.id).collect::<Vec<_>>(),
            expected.iter().map(|(_, id)| *id).collect::<Vec<_>>()
        );
    }

    #[test]
    fn status_codes_round_trip() {
        for s in Status::ALL {
            assert_eq!(Status::from_code(s.code()), Some(s));
            assert_eq!(s.as_str().parse::<Status>().unwrap(), s);
        }
    }
}
