//! Operator actions on single tasks and groups of tasks: retry a dead or retrying task now,
//! delete a task with everything kept about it, retry the dead tasks of one error class or type
//! in bounded batches, search by id, idempotency key or payload text with a bounded scan, the
//! scheduled (delayed) tasks in due order, and running a scheduled task now. Every change is
//! audited in its own transaction.

use std::sync::Arc;

use redb::ReadableTable;
use uuid::Uuid;

use super::enqueue::stored_keys;
use super::model::{Status, Task};
use super::tables::{ReadableTables, Tables};
use super::{Queue, QueueError, indexes};
use crate::audit::Event as AuditEvent;
use crate::clock::Millis;

/// Most dead tasks one [`Queue::dlq_retry`] call moves (one transaction).
pub const RETRY_BATCH_MAX: usize = 1000;
/// Most task records one [`Queue::search`] call reads.
pub const SEARCH_SCAN_MAX: usize = 5000;

/// Which dead tasks [`Queue::dlq_retry`] moves: every given field must match.
#[derive(Debug, Clone, Default)]
pub struct DeadFilter {
    /// The class of the last error (`http_5xx`, `timeout`, …).
    pub error_class: Option<String>,
    /// The task type.
    pub task_type: Option<String>,
}

impl DeadFilter {
    fn matches(&self, task: &Task) -> bool {
        self.task_type
            .as_ref()
            .is_none_or(|ty| *ty == task.task_type)
            && self
                .error_class
                .as_deref()
                .is_none_or(|class| Some(class) == task.last_error_class())
    }
}

/// What one batch of [`Queue::dlq_retry`] moved.
#[derive(Debug, Clone)]
pub struct RetryBatch {
    /// The tasks moved back to the queue.
    pub tasks: Vec<Task>,
    /// Whether matching dead tasks were left for another batch.
    pub more: bool,
}

/// A search of the tasks.
#[derive(Debug, Clone)]
pub struct SearchQuery {
    /// A task id, an idempotency key, or text the payload contains.
    pub text: String,
    /// Scan task records older than this id only (from [`SearchPage::next_cursor`]).
    pub cursor: Option<Uuid>,
    /// Most task records to read (1..=[`SEARCH_SCAN_MAX`]).
    pub scan: usize,
    /// Most matches to answer.
    pub limit: usize,
}

/// What a search found.
#[derive(Debug, Clone)]
pub struct SearchPage {
    /// Matches, newest first: the task with this id or idempotency key first, then payload
    /// matches in the scanned range.
    pub tasks: Vec<Task>,
    /// Task records read by the payload scan.
    pub scanned: usize,
    /// Pass as `cursor` to scan on; `None` when the scan reached the oldest task.
    pub next_cursor: Option<Uuid>,
}

/// A page of scheduled tasks, soonest first.
#[derive(Debug, Clone)]
pub struct ScheduledPage {
    /// Waiting tasks with a due time in the delayed index.
    pub tasks: Vec<Task>,
    /// Pass as `after` for the next page: the (due ms, id) of the last task.
    pub next_after: Option<(Millis, Uuid)>,
}

impl Queue {
    /// Runs a dead or retrying task again now: a dead one with a fresh set of attempts, a
    /// retrying one without waiting for its backoff. Any other status is a conflict.
    pub async fn retry_now(&self, actor: &str, id: Uuid) -> Result<Task, QueueError> {
        let now = self.clock.now_ms();
        let audit = Arc::clone(&self.audit);
        let actor = actor.to_string();
        let task = self
            .write(move |tx, t| {
                let mut task = t.task(id)?.ok_or(QueueError::NotFound(id))?;
                let from = task.status;
                match from {
                    Status::Dead => requeue_dead(t, &mut task, now)?,
                    Status::Retrying => reschedule_now(t, &mut task, now)?,
                    other => {
                        return Err(QueueError::Conflict(format!(
                            "task {id} is {}; only dead or retrying tasks can be retried",
                            other.as_str()
                        )));
                    }
                }
                audit.append(
                    tx,
                    now,
                    &AuditEvent::new(actor.clone(), "task.retry", id.to_string()).with_detail(
                        serde_json::json!({"type": task.task_type, "from": from.as_str()}),
                    ),
                )?;
                Ok(task)
            })
            .await?;
        self.publish_transitions([&task]);
        self.wake.notify_one();
        Ok(task)
    }

    /// Deletes a task that is not running, with its indexes, log lines, idempotency key and
    /// what other rooms keep about it, in one transaction.
    pub async fn delete(&self, actor: &str, id: Uuid) -> Result<(), QueueError> {
        let now = self.clock.now_ms();
        let audit = Arc::clone(&self.audit);
        let removal = Arc::clone(&self.removal);
        let actor = actor.to_string();
        self.write(move |tx, t| {
            let task = t.task(id)?.ok_or(QueueError::NotFound(id))?;
            if task.status == Status::Running {
                return Err(QueueError::Conflict(format!(
                    "task {id} is running under a lease; cancel it first"
                )));
            }
            indexes::delete_task(t, &task)?;
            for key in task.idempotency_key.iter().flat_map(|k| stored_keys(k)) {
                let names_task = t
                    .idempotency_keys()?
                    .get(key.as_str())?
                    .is_some_and(|v| v.value().0 == id.as_u128());
                if names_task {
                    t.idempotency_keys_mut()?.remove(key.as_str())?;
                }
            }
            removal.tasks_removed(tx, &[id])?;
            audit.append(
                tx,
                now,
                &AuditEvent::new(actor.clone(), "task.delete", id.to_string()).with_detail(
                    serde_json::json!({"type": task.task_type, "status": task.status.as_str()}),
                ),
            )?;
            Ok(())
        })
        .await
    }

    /// Moves up to `max` (at most [`RETRY_BATCH_MAX`]) dead tasks matching `filter` back to the
    /// queue with a fresh set of attempts, oldest first, in one transaction.
    pub async fn dlq_retry(
        &self,
        actor: &str,
        filter: DeadFilter,
        max: usize,
    ) -> Result<RetryBatch, QueueError> {
        if filter.error_class.is_none() && filter.task_type.is_none() {
            return Err(QueueError::Invalid(
                "error_class, type: give at least one (POST /api/v1/dlq/drain moves every dead task)"
                    .into(),
            ));
        }
        if !(1..=RETRY_BATCH_MAX).contains(&max) {
            return Err(QueueError::Invalid(format!(
                "max: must be between 1 and {RETRY_BATCH_MAX}, got {max}"
            )));
        }
        let now = self.clock.now_ms();
        let audit = Arc::clone(&self.audit);
        let actor = actor.to_string();
        let batch = self
            .write(move |tx, t| {
                let mut moved = Vec::new();
                let mut more = false;
                for raw in t.ids_with_status(Status::Dead)? {
                    let Some(mut task) = t.task(Uuid::from_u128(raw))? else {
                        continue;
                    };
                    if !filter.matches(&task) {
                        continue;
                    }
                    if moved.len() == max {
                        more = true;
                        break;
                    }
                    requeue_dead(t, &mut task, now)?;
                    moved.push(task);
                }
                if !moved.is_empty() {
                    audit.append(
                        tx,
                        now,
                        &AuditEvent::new(actor.clone(), "dlq.retry", "dlq").with_detail(
                            serde_json::json!({
                                "error_class": filter.error_class,
                                "type": filter.task_type,
                                "tasks": moved.iter().map(|t| t.id.to_string()).collect::<Vec<_>>(),
                            }),
                        ),
                    )?;
                }
                Ok(RetryBatch { tasks: moved, more })
            })
            .await?;
        if !batch.tasks.is_empty() {
            self.publish_transitions(&batch.tasks);
            self.wake.notify_one();
        }
        Ok(batch)
    }

    /// Finds tasks by id or idempotency key (exact), and tasks whose payload contains the text
    /// among at most `query.scan` task records, newest first from `query.cursor`.
    pub async fn search(&self, query: SearchQuery) -> Result<SearchPage, QueueError> {
        if query.text.is_empty() {
            return Err(QueueError::Invalid("q: must not be empty".into()));
        }
        let scan = query.scan.clamp(1, SEARCH_SCAN_MAX);
        let limit = query.limit.max(1);
        self.read(move |t| {
            let mut tasks = Vec::new();
            if query.cursor.is_none() {
                if let Ok(id) = Uuid::parse_str(query.text.trim())
                    && let Some(task) = t.task(id)?
                {
                    tasks.push(task);
                }
                for key in stored_keys(&query.text) {
                    let keyed = t
                        .idempotency_keys()?
                        .get(key.as_str())?
                        .map(|v| v.value().0);
                    if let Some(raw) = keyed
                        && let Some(task) = t.task(Uuid::from_u128(raw))?
                        && !tasks.iter().any(|found: &Task| found.id == task.id)
                    {
                        tasks.push(task);
                    }
                }
            }
            let exact: Vec<Uuid> = tasks.iter().map(|task| task.id).collect();
            let before = query.cursor.map_or(u128::MAX, |c| c.as_u128());
            let mut scanned = 0;
            let last = t.tasks_newest_first(before, |task| {
                scanned += 1;
                if task.payload.contains(&query.text) && !exact.contains(&task.id) {
                    tasks.push(task);
                }
                scanned < scan && tasks.len() < limit
            })?;
            let reached_oldest = match last {
                Some(raw) => t.tasks()?.range(..raw)?.next().is_none(),
                None => true,
            };
            Ok(SearchPage {
                tasks,
                scanned,
                next_cursor: (!reached_oldest)
                    .then(|| last.map(Uuid::from_u128))
                    .flatten(),
            })
        })
        .await
    }

    /// Waiting tasks with a due time, soonest first, after the (due ms, id) `after`.
    pub async fn scheduled(
        &self,
        after: Option<(Millis, Uuid)>,
        limit: usize,
    ) -> Result<ScheduledPage, QueueError> {
        let limit = limit.clamp(1, 1000);
        self.read(move |t| {
            let start = after.map_or((i64::MIN, 0), |(due, id)| (due, id.as_u128()));
            let mut tasks = Vec::new();
            let mut more = false;
            for row in t.delayed()?.range(start..)? {
                let (due, raw) = row?.0.value();
                if after.is_some_and(|(d, id)| (d, id.as_u128()) == (due, raw)) {
                    continue;
                }
                if tasks.len() == limit {
                    more = true;
                    break;
                }
                if let Some(task) = t.task(Uuid::from_u128(raw))? {
                    tasks.push(task);
                }
            }
            let next_after = more
                .then(|| tasks.last().map(|task: &Task| (task.due_at, task.id)))
                .flatten();
            Ok(ScheduledPage { tasks, next_after })
        })
        .await
    }

    /// Makes a scheduled (delayed) waiting task due now. A task that is not waiting for a time
    /// is a conflict.
    pub async fn run_now(&self, actor: &str, id: Uuid) -> Result<Task, QueueError> {
        let now = self.clock.now_ms();
        let audit = Arc::clone(&self.audit);
        let actor = actor.to_string();
        let task = self
            .write(move |tx, t| {
                let mut task = t.task(id)?.ok_or(QueueError::NotFound(id))?;
                let delayed = t.delayed()?.get((task.due_at, id.as_u128()))?.is_some();
                if !task.status.is_waiting() || !delayed {
                    return Err(QueueError::Conflict(format!(
                        "task {id} is {} and not scheduled for later",
                        task.status.as_str()
                    )));
                }
                let was_due = task.due_at;
                reschedule_now(t, &mut task, now)?;
                audit.append(
                    tx,
                    now,
                    &AuditEvent::new(actor.clone(), "task.run_now", id.to_string()).with_detail(
                        serde_json::json!({"type": task.task_type, "was_due_ms": was_due}),
                    ),
                )?;
                Ok(task)
            })
            .await?;
        self.publish_transitions([&task]);
        self.wake.notify_one();
        Ok(task)
    }
}

/// Moves a dead task back to the queue with a fresh set of attempts, due now.
fn requeue_dead(t: &mut Tables<'_>, task: &mut Task, now: Millis) -> Result<(), QueueError> {
    task.attempts_before_requeue = task.attempts.iter().filter(|a| a.counted).count() as u32;
    task.finished_at = None;
    task.due_at = now;
    indexes::set_status(t, task, Status::Queued, now)?;
    t.save(task)?;
    indexes::schedule(t, task, now)
}

/// Makes a waiting task due now, keeping its status.
fn reschedule_now(t: &mut Tables<'_>, task: &mut Task, now: Millis) -> Result<(), QueueError> {
    indexes::unschedule(t, task)?;
    task.due_at = now;
    task.updated_at = now;
    t.save(task)?;
    indexes::schedule(t, task, now)
}
