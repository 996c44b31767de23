//! Enqueueing: validation, the handler snapshot taken through [`Handlers`](super::Handlers),
//! idempotency keys, the depth limit, and tasks prepared by callers that insert them in their own
//! transaction.

use std::sync::Arc;
use std::sync::atomic::Ordering;

use redb::WriteTransaction;
use uuid::Uuid;

use super::model::{Enqueued, NewTask, ResultForm, Status, Task};
use super::tables::{ReadableTables, Tables};
use super::{Handling, Queue, QueueError, indexes};
use crate::audit::{Audit, Event as AuditEvent};
use crate::clock::Millis;
use crate::config::Config;

const DEFAULT_PRIORITY: u32 = 100;

impl Queue {
    /// Enqueues a task durably; the same idempotency key within its retention window returns
    /// the existing task instead, even under concurrent submits.
    pub async fn enqueue(&self, actor: &str, new: NewTask) -> Result<Enqueued, QueueError> {
        self.enqueue_in(KeyScope::Api, actor, new).await
    }

    /// [`Queue::enqueue`] for an inbound delivery: its idempotency key lives in the inbox's own
    /// namespace, so no key an API caller chooses can name (and so swallow) a delivery.
    pub async fn enqueue_delivery(
        &self,
        actor: &str,
        new: NewTask,
    ) -> Result<Enqueued, QueueError> {
        self.enqueue_in(KeyScope::Inbox, actor, new).await
    }

    async fn enqueue_in(
        &self,
        scope: KeyScope,
        actor: &str,
        new: NewTask,
    ) -> Result<Enqueued, QueueError> {
        let task = self.build(actor, &new, Uuid::now_v7(), None)?;
        let now = task.created_at;
        let limits = Limits::of(&self.config);
        if self.seen_full.load(Ordering::Relaxed) {
            let key = task.idempotency_key.as_deref().map(|k| scope.stored(k));
            self.refuse_while_full(key, now, limits).await?;
        }
        let audit = Arc::clone(&self.audit);
        let actor = actor.to_string();
        let result = self
            .write(move |tx, t| insert_enqueued(tx, t, &task, scope, now, limits, &audit, &actor))
            .await;
        if matches!(result, Err(QueueError::Full { .. })) {
            self.seen_full.store(true, Ordering::Relaxed);
        }
        let result = result?;
        if result.created {
            self.wake.notify_one();
        }
        Ok(result)
    }

    /// Once an enqueue found the queue full, later ones first read the depth, so that while it
    /// stays full they are refused without a place in the writer's batch (a live idempotency
    /// key still goes on to return its task).
    async fn refuse_while_full(
        &self,
        key: Option<String>,
        now: Millis,
        limits: Limits,
    ) -> Result<(), QueueError> {
        let full = self
            .read(move |t| {
                if let Some(key) = &key
                    && t.idempotent_task(key, now)?.is_some()
                {
                    return Ok(None);
                }
                let depth = indexes::waiting_depth(t)?;
                Ok((depth >= limits.max_depth).then_some(depth))
            })
            .await?;
        match full {
            Some(depth) => Err(QueueError::Full {
                depth,
                max: limits.max_depth,
            }),
            None => {
                self.seen_full.store(false, Ordering::Relaxed);
                Ok(())
            }
        }
    }

    /// Validates `new` and builds its task with `id`, with the handler its type resolves to,
    /// or `handling` when given (then the type needs no configured handler).
    fn build(
        &self,
        actor: &str,
        new: &NewTask,
        id: Uuid,
        handling: Option<Handling>,
    ) -> Result<Task, QueueError> {
        if let Some(key) = &new.idempotency_key
            && (key.is_empty()
                || key.len() > 256
                || !key.bytes().all(|b| (0x20..0x7f).contains(&b)))
        {
            return Err(QueueError::Invalid(
                "idempotency_key: must be 1 to 256 printable ASCII characters (no control characters)"
                    .into(),
            ));
        }
        let now = self.clock.now_ms();
        let max_ahead_days = self.config.queue.max_run_at_days;
        if let Some(run_at) = new.run_at
            && run_at > now + max_ahead_days as i64 * 86_400_000
        {
            return Err(QueueError::Invalid(format!(
                "run_at: must be at most {max_ahead_days} days ahead (queue.max_run_at_days)"
            )));
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
        let handling = match handling {
            Some(h) => h,
            None => self
                .handlers
                .resolve(&new.task_type)
                .map_err(QueueError::Invalid)?,
        };
        let timeout_s = new.timeout_s.unwrap_or(handling.timeout_s);
        if timeout_s >= self.config.queue.lease_seconds {
            return Err(QueueError::Invalid(format!(
                "timeout_s: {timeout_s}s must be shorter than the lease (queue.lease_seconds = {}s), or the task would be handed out twice",
                self.config.queue.lease_seconds
            )));
        }
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
                .or(handling.max_attempts)
                .unwrap_or(self.config.queue.max_attempts),
            attempts_before_requeue: 0,
            timeout_ms: timeout_s * 1000,
            handler: handling.snapshot,
            target: handling.target,
            attempts: Vec::new(),
            lease: None,
            result: None,
            cancel_requested: false,
            result_form: ResultForm::default(),
        })
    }

    /// Builds a task for [`Queue::insert_prepared`] with an id the caller derived (so that the
    /// caller's retries name the same task, and its `webhook-id` is stable), and optionally a
    /// handling the caller resolved (such as an HTTP target of the exec room) instead of the
    /// type's configured handler. Validation and the handler snapshot happen here, outside any
    /// transaction.
    pub fn prepare(
        &self,
        actor: &str,
        id: Uuid,
        new: &NewTask,
        handling: Option<Handling>,
    ) -> Result<Task, QueueError> {
        self.build(actor, new, id, handling)
    }

    /// Enqueues a prepared task inside the caller's write transaction (so it commits with the
    /// caller's own records). A task with the same id, or the same idempotency key within its
    /// window, is returned instead of a new one. Call [`Queue::notify`] after the commit.
    pub fn insert_prepared(
        &self,
        tx: &WriteTransaction,
        task: &Task,
    ) -> Result<Enqueued, QueueError> {
        let mut t = Tables::open(tx, &*self.handlers);
        if let Some(existing) = t.task(task.id)? {
            return Ok(Enqueued {
                task: existing,
                created: false,
            });
        }
        insert_enqueued(
            tx,
            &mut t,
            task,
            KeyScope::Api,
            task.created_at,
            Limits::of(&self.config),
            &self.audit,
            &task.created_by,
        )
    }
}

/// The namespace of an idempotency key: what API callers choose and what the inbox derives
/// from delivery ids are kept apart, so that neither can name the other's task.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum KeyScope {
    /// Keys of API callers (and of tasks other rooms prepare).
    Api,
    /// Keys of inbound deliveries (`hook:<source>:<delivery id>`).
    Inbox,
}

impl KeyScope {
    /// The key as stored in the idempotency tables: `api:<key>` or `inbox:<key>` (the store's
    /// migration to separate namespaces writes the same form).
    fn stored(self, key: &str) -> String {
        match self {
            KeyScope::Api => format!("api:{key}"),
            KeyScope::Inbox => format!("inbox:{key}"),
        }
    }
}

/// A task's idempotency key as it may be stored: in the API callers' namespace or the inbox's.
/// The task with the key is named by at most one of them for a given task.
pub(super) fn stored_keys(key: &str) -> [String; 2] {
    [KeyScope::Api.stored(key), KeyScope::Inbox.stored(key)]
}

/// The configured bounds of enqueueing.
#[derive(Debug, Clone, Copy)]
struct Limits {
    /// How long an idempotency key names its task.
    retention_ms: i64,
    /// Most waiting tasks.
    max_depth: u64,
}

impl Limits {
    fn of(config: &Config) -> Self {
        Limits {
            retention_ms: config.queue.idempotency_retention_seconds as i64 * 1000,
            max_depth: config.queue.max_depth,
        }
    }
}

/// Inserts a new task with its idempotency key (in `scope`), indexes and audit entry, unless
/// its key names a live task: then that one is returned, or, for an API key that came with
/// another type or payload, refused as a conflict.
#[allow(clippy::too_many_arguments)]
fn insert_enqueued(
    tx: &WriteTransaction,
    t: &mut Tables<'_>,
    task: &Task,
    scope: KeyScope,
    now: Millis,
    limits: Limits,
    audit: &Audit,
    actor: &str,
) -> Result<Enqueued, QueueError> {
    let key = task.idempotency_key.as_deref().map(|k| scope.stored(k));
    let key = key.as_deref();
    if let Some(stored) = key
        && let Some(existing) = t.idempotent_task(stored, now)?
    {
        if scope == KeyScope::Api
            && (existing.task_type != task.task_type
                || !same_json(&existing.payload, &task.payload))
        {
            return Err(QueueError::IdempotencyConflict {
                key: task.idempotency_key.clone().unwrap_or_default(),
                task: existing.id,
            });
        }
        return Ok(Enqueued {
            task: existing,
            created: false,
        });
    }
    let depth = indexes::waiting_depth(t)?;
    if depth >= limits.max_depth {
        return Err(QueueError::Full {
            depth,
            max: limits.max_depth,
        });
    }
    if let Some(key) = key {
        let expires = now + limits.retention_ms;
        t.idempotency_keys_mut()?
            .insert(key, (task.id.as_u128(), expires))?;
        t.idempotency_expiry_mut()?.insert((expires, key), ())?;
    }
    indexes::insert_new(t, task, now)?;
    audit.append(
        tx,
        now,
        &AuditEvent::new(actor, "task.enqueue", task.id.to_string()).with_detail(
            serde_json::json!({"type": task.task_type, "priority": task.priority,
                "idempotency_key": task.idempotency_key}),
        ),
    )?;
    Ok(Enqueued {
        task: task.clone(),
        created: true,
    })
}

/// Whether two stored payloads are the same JSON (compared as values, so that spacing and key
/// order of the original text do not matter).
fn same_json(a: &str, b: &str) -> bool {
    a == b
        || matches!(
            (serde_json::from_str::<serde_json::Value>(a), serde_json::from_str::<serde_json::Value>(b)),
            (Ok(x), Ok(y)) if x == y
        )
}
