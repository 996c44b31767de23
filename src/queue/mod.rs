//! The durable task queue: enqueue with idempotency, leases, completion, retries with backoff,
//! the dead-letter queue, the reaper and crash recovery.
//!
//! Every transition updates the task record, its indexes (ready, delayed, leased, by status)
//! and the per-(status, type) counts in the same write transaction, so the indexes can never
//! disagree with the records. Leasing takes the most urgent ready task (priority, then due
//! time, then age) from the `tasks_ready` index in O(log n).
//!
//! The queue knows no executor kinds: a task's handler is an opaque [`Snapshot`] that the room
//! running tasks resolves at enqueue ([`Handlers`]), and that room forgets what it keeps about a
//! task when the queue deletes it ([`TaskRemoval`]). Both are wired at assembly. Each durable
//! transition is published on the event bus once its commit returned.
//!
//! Code map: [`model`] (stored and API shapes), [`tables`] (the table bundle), [`indexes`],
//! [`enqueue`], [`lease`] (leases, completion, retries), [`dlq`], [`maintenance`] (reaper,
//! purge, gauges), [`operations`] (operator actions: retry now, delete, search, scheduled),
//! [`task_types`] (pausing and resuming a type), [`daily`] (processed and failed per day).

mod daily;
mod dlq;
mod enqueue;
mod indexes;
mod lease;
mod maintenance;
pub mod model;
mod operations;
mod snapshots;
mod tables;
mod task_types;

use std::collections::BTreeMap;
use std::sync::Arc;
use std::sync::atomic::AtomicBool;

use redb::{ReadableTable, WriteTransaction};
use tokio::sync::Notify;
use uuid::Uuid;

use crate::audit::{Audit, Event as AuditEvent};
use crate::clock::{Millis, SharedClock};
use crate::config::Config;
use crate::events::{Event, EventBus};
use crate::store::{Store, StoreError};
use tables::{ReadTables, ReadableTables, Tables};

pub use daily::DAILY_DAYS;
pub use dlq::{DlqStats, DrainReport};
pub use maintenance::{Maintenance, PURGE_BATCH, QUEUE_WAITING_SERIES, QueuePurge};
pub use model::{
    Attempt, Completion, DayCount, Enqueued, Lease, LeaseRequest, NewTask, Outcome, Receipt,
    ResultForm, Snapshot, Status, Task, TaskFilter, TaskPage, TaskType, TypePause,
};
pub use operations::{
    DeadFilter, RETRY_BATCH_MAX, RetryBatch, SEARCH_SCAN_MAX, ScheduledPage, SearchPage,
    SearchQuery,
};
pub use snapshots::SnapshotRewrite;

/// Errors of the queue room.
#[derive(Debug, thiserror::Error)]
pub enum QueueError {
    /// The request is not acceptable; the message names the field.
    #[error("{0}")]
    Invalid(String),
    /// No such task.
    #[error("no task with id {0}")]
    NotFound(Uuid),
    /// No such task type (no handler, no task, no pause).
    #[error("no task type `{0}`")]
    UnknownType(String),
    /// The task is in a state that does not allow this.
    #[error("{0}")]
    Conflict(String),
    /// An idempotency key that names a live task was sent with another type or payload.
    #[error(
        "idempotency_key {key:?} already names task {task} with another type or payload; use a new key for a new task"
    )]
    IdempotencyConflict {
        /// The key as sent.
        key: String,
        /// The task the key names.
        task: Uuid,
    },
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

/// How a task runs, as the room that runs tasks resolved it at enqueue.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Handling {
    /// The handler snapshot, stored in the task as it is.
    pub snapshot: Snapshot,
    /// Circuit breaker target (URL host or handler name).
    pub target: String,
    /// Time allowed per attempt by default, in seconds.
    pub timeout_s: u64,
    /// Attempts allowed by default, when the handler says.
    pub max_attempts: Option<u32>,
}

/// The room that runs tasks, as the queue sees it at enqueue and when reading old records.
pub trait Handlers: Send + Sync {
    /// How tasks of `task_type` run, or why they cannot be enqueued (the message names the
    /// field, e.g. `type: ...`).
    fn resolve(&self, task_type: &str) -> Result<Handling, String>;

    /// Splits the handler snapshot that a version-1 task record holds inline off the front of
    /// `bytes`, returning it and the bytes after it.
    fn split_inline<'a>(&self, bytes: &'a [u8]) -> Result<(Snapshot, &'a [u8]), String>;
}

/// Told about tasks the queue deletes, inside the transaction that deletes them, so that other
/// rooms delete what they keep per task with the same atomicity.
pub trait TaskRemoval: Send + Sync {
    /// Deletes what is kept about the tasks `ids`.
    fn tasks_removed(&self, tx: &WriteTransaction, ids: &[Uuid]) -> Result<(), StoreError>;
}

/// The queue room.
pub struct Queue {
    store: Arc<Store>,
    audit: Arc<Audit>,
    clock: SharedClock,
    config: Arc<Config>,
    events: Arc<EventBus>,
    handlers: Arc<dyn Handlers>,
    removal: Arc<dyn TaskRemoval>,
    wake: Arc<Notify>,
    /// Set when an enqueue was refused as the queue was full; cleared by a read that finds room.
    seen_full: AtomicBool,
}

/// Most index entries one transaction promotes, reaps or purges.
const PROMOTE_LIMIT: usize = 1000;

impl Queue {
    /// The queue over `store`, publishing transitions on `events`; `handlers` resolves task
    /// types at enqueue and `removal` is told about deleted tasks.
    pub fn new(
        store: Arc<Store>,
        audit: Arc<Audit>,
        clock: SharedClock,
        config: Arc<Config>,
        events: Arc<EventBus>,
        handlers: Arc<dyn Handlers>,
        removal: Arc<dyn TaskRemoval>,
    ) -> Self {
        Queue {
            store,
            audit,
            clock,
            config,
            events,
            handlers,
            removal,
            wake: Arc::new(Notify::new()),
            seen_full: AtomicBool::new(false),
        }
    }

    /// Notified when work may be available (enqueue, completion).
    pub fn wake(&self) -> Arc<Notify> {
        Arc::clone(&self.wake)
    }

    /// Tells the dispatcher that work may be waiting (after committing
    /// [`Queue::insert_prepared`] tasks).
    pub fn notify(&self) {
        self.wake.notify_one();
    }

    /// Runs `work` over the queue's tables in a group-committed write transaction.
    async fn write<T, F>(&self, mut work: F) -> Result<T, QueueError>
    where
        T: Send + 'static,
        F: FnMut(&WriteTransaction, &mut Tables<'_>) -> Result<T, QueueError> + Send + 'static,
    {
        let handlers = Arc::clone(&self.handlers);
        self.store
            .write(move |tx| {
                let mut tables = Tables::open(tx, &*handlers);
                work(tx, &mut tables)
            })
            .await
    }

    /// Runs `work` over the queue's tables in a read transaction on the blocking pool.
    async fn read<T, F>(&self, work: F) -> Result<T, QueueError>
    where
        T: Send + 'static,
        F: FnOnce(&ReadTables<'_>) -> Result<T, QueueError> + Send + 'static,
    {
        let handlers = Arc::clone(&self.handlers);
        self.store
            .read(move |tx| work(&ReadTables::open(tx, &*handlers)))
            .await
    }

    /// One task.
    pub async fn get(&self, id: Uuid) -> Result<Task, QueueError> {
        self.read(move |t| t.task(id)?.ok_or(QueueError::NotFound(id)))
            .await
    }

    /// Tasks, newest first, filtered and paged.
    pub async fn list(&self, filter: TaskFilter) -> Result<TaskPage, QueueError> {
        self.read(move |t| list_tasks(t, &filter)).await
    }

    /// At most `limit` log lines of a task, from line `from` on.
    pub async fn logs(
        &self,
        id: Uuid,
        from: u32,
        limit: usize,
    ) -> Result<Vec<(u32, String)>, QueueError> {
        self.read(move |t| t.log_lines(id, from, limit)).await
    }

    /// Where each attempt's log lines begin: (first line number, attempt number), in order.
    /// Lines before the first entry were written outside any attempt.
    pub async fn log_attempts(&self, id: Uuid) -> Result<Vec<(u32, u32)>, QueueError> {
        self.read(move |t| t.log_attempt_starts(id)).await
    }

    /// The attempt that wrote log line `n`, from [`Queue::log_attempts`]' starts: the last
    /// attempt that began at or before it (none for lines written before any was marked).
    pub fn attempt_of_line(starts: &[(u32, u32)], n: u32) -> Option<u32> {
        starts
            .iter()
            .take_while(|(first, _)| *first <= n)
            .last()
            .map(|(_, attempt)| *attempt)
    }

    /// How many log lines a task has.
    pub async fn log_count(&self, id: Uuid) -> Result<u32, QueueError> {
        self.read(move |t| t.next_log_line(id)).await
    }

    /// Appends log lines to a running task.
    pub async fn append_logs(&self, id: Uuid, lines: Vec<String>) -> Result<(), QueueError> {
        if lines.is_empty() {
            return Ok(());
        }
        self.write(move |_, t| {
            let next = t.next_log_line(id)?;
            // The first line of a new attempt marks where that attempt's lines begin.
            let attempt = t
                .task(id)?
                .and_then(|task| task.attempts.last().map(|a| a.number));
            let last_marked = t
                .log_attempts()?
                .range((id.as_u128(), 0)..=(id.as_u128(), u32::MAX))?
                .next_back()
                .transpose()?
                .map(|(_, v)| v.value());
            if let Some(attempt) = attempt.filter(|a| Some(*a) != last_marked) {
                t.log_attempts_mut()?
                    .insert((id.as_u128(), next), attempt)?;
            }
            for (offset, line) in lines.iter().enumerate() {
                t.logs_mut()?
                    .insert((id.as_u128(), next + offset as u32), line.as_str())?;
            }
            Ok(())
        })
        .await?;
        self.events.publish(Event::TaskLogged { task_id: id });
        Ok(())
    }

    /// Cancels a waiting task at once; a running one is asked to stop (its executor reports
    /// [`Outcome::Cancelled`]). Finished tasks cannot be cancelled.
    pub async fn cancel(&self, actor: &str, id: Uuid) -> Result<Task, QueueError> {
        let now = self.clock.now_ms();
        let audit = Arc::clone(&self.audit);
        let actor = actor.to_string();
        let task = self
            .write(move |tx, t| {
                let mut task = t.task(id)?.ok_or(QueueError::NotFound(id))?;
                if task.status.is_final() {
                    return Err(QueueError::Conflict(format!(
                        "task {id} is already {}",
                        task.status.as_str()
                    )));
                }
                if task.status == Status::Running {
                    task.cancel_requested = true;
                    task.updated_at = now;
                    t.save(&task)?;
                } else {
                    indexes::unschedule(t, &task)?;
                    indexes::set_status(t, &mut task, Status::Cancelled, now)?;
                    task.finished_at = Some(now);
                    t.save(&task)?;
                }
                audit.append(
                    tx,
                    now,
                    &AuditEvent::new(actor.clone(), "task.cancel", id.to_string()),
                )?;
                Ok(task)
            })
            .await?;
        if task.status == Status::Cancelled {
            self.publish_transitions([&task]);
        }
        Ok(task)
    }

    /// Makes the waiting tasks behind circuit `target` that are due no later than `until` due
    /// now, inside the caller's write transaction (a circuit reset commits this with its own
    /// record). Returns how many moved; call [`Queue::notify`] after the commit.
    pub fn make_target_due(
        &self,
        tx: &WriteTransaction,
        target: &str,
        until: Millis,
        now: Millis,
    ) -> Result<usize, QueueError> {
        let mut t = Tables::open(tx, &*self.handlers);
        let delayed: Vec<(i64, u128)> = t
            .delayed()?
            .range(..=(until, u128::MAX))?
            .map(|r| r.map(|(k, _)| k.value()))
            .collect::<Result<_, _>>()?;
        let mut moved = 0;
        for (_, raw) in delayed {
            let Some(mut task) = t.task(Uuid::from_u128(raw))? else {
                continue;
            };
            if task.target != target || !task.status.is_waiting() {
                continue;
            }
            indexes::unschedule(&mut t, &task)?;
            task.due_at = now;
            task.updated_at = now;
            indexes::schedule(&mut t, &task, now)?;
            t.save(&task)?;
            moved += 1;
        }
        Ok(moved)
    }

    /// Task counts by status and type.
    pub async fn counts(&self) -> Result<BTreeMap<(Status, String), u64>, QueueError> {
        self.read(|t| {
            let mut out = BTreeMap::new();
            for row in t.counts()?.iter()? {
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

    /// Publishes the event of each task's move to its current status (after the commit).
    fn publish_transitions<'a>(&self, tasks: impl IntoIterator<Item = &'a Task>) {
        self.events
            .publish_all(tasks.into_iter().map(transition_event));
    }
}

/// The event that says a task reached its current status.
fn transition_event(task: &Task) -> Event {
    let (task_id, task_type) = (task.id, task.task_type.clone());
    match task.status {
        Status::Running => Event::TaskStarted { task_id, task_type },
        Status::Succeeded => Event::TaskSucceeded { task_id, task_type },
        Status::Queued | Status::Retrying => Event::TaskRetried {
            task_id,
            task_type,
            due_ms: task.due_at,
        },
        Status::Dead => Event::TaskDead { task_id, task_type },
        Status::Cancelled => Event::TaskCancelled { task_id, task_type },
    }
}

/// Most task records one list page decodes: a filter that matches rarely answers a page with
/// fewer tasks (or none) and a cursor to go on from, instead of reading the whole table.
pub const LIST_SCAN_LIMIT: usize = 10_000;

/// Payload and result bytes after which a list page ends (with a cursor), so that a page of
/// large tasks stays bounded in memory.
pub const LIST_MAX_BYTES: usize = 8 << 20;

fn list_tasks(t: &impl ReadableTables, filter: &TaskFilter) -> Result<TaskPage, QueueError> {
    let limit = filter.limit.clamp(1, 1000);
    let before = filter.cursor.map_or(u128::MAX, |c| c.as_u128());
    let mut tasks = Vec::new();
    let mut scanned = 0;
    let mut bytes = 0;
    let mut cut = false;
    let mut visit = |task: Option<Task>| {
        scanned += 1;
        if let Some(task) = task.filter(|task| {
            filter
                .task_type
                .as_ref()
                .is_none_or(|ty| *ty == task.task_type)
        }) {
            bytes += task.payload.len() + task.result.as_ref().map_or(0, String::len);
            tasks.push(task);
        }
        cut = tasks.len() >= limit || scanned >= LIST_SCAN_LIMIT || bytes >= LIST_MAX_BYTES;
        !cut
    };
    let last = match filter.status {
        Some(status) => t.ids_with_status_newest_first(status, before, |raw| {
            Ok(visit(t.task(Uuid::from_u128(raw))?))
        })?,
        None => t.tasks_newest_first(before, |task| visit(Some(task)))?,
    };
    let next_cursor = cut.then(|| last.map(Uuid::from_u128)).flatten();
    Ok(TaskPage { tasks, next_cursor })
}

#[cfg(test)]
mod tests;
