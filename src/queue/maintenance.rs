//! The queue's housekeeping: the reaper (expired leases) and the depth gauges, run by the
//! [`Maintenance`] worker, and the purge of finished tasks and idempotency keys past their
//! retention in bounded batches, run by the assembly's retention worker.

use std::ops::Bound;
use std::sync::Arc;
use std::time::Duration;

use redb::{ReadableTable, WriteTransaction};
use uuid::Uuid;

use super::lease::{RetryPolicy, finish_attempt};
use super::model::{Outcome, Status};
use super::tables::{ReadableTables, Tables};
use super::{PROMOTE_LIMIT, Queue, QueueError, TaskRemoval, indexes};
use crate::audit::{Audit, Event as AuditEvent, SYSTEM_ACTOR};
use crate::clock::Millis;
use crate::metrics::{Metrics, Unit};
use crate::supervisor::{StepFuture, Worker};

/// Series sampled every maintenance step with the number of waiting tasks (queued + retrying),
/// so the queue's depth has a history.
pub const QUEUE_WAITING_SERIES: &str = "keel_queue_waiting";

impl Queue {
    /// Takes back tasks whose lease expired: the attempt counts as failed (`lease_expired`).
    pub async fn reap_expired(&self) -> Result<usize, QueueError> {
        let now = self.clock.now_ms();
        let policy = RetryPolicy::from_config(&self.config);
        let result_max = self.config.queue.result_max_bytes;
        let reaped = self
            .write(move |_, t| {
                let expired = indexes::due_entries(t.leased()?, (now, u128::MAX), PROMOTE_LIMIT)?;
                let mut reaped = Vec::new();
                for (_, raw) in expired {
                    let Some(mut task) = t.task(Uuid::from_u128(raw))? else {
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
                    finish_attempt(t, &mut task, outcome, now, &policy, result_max)?;
                    reaped.push(task);
                }
                Ok(reaped)
            })
            .await?;
        if !reaped.is_empty() {
            self.publish_transitions(&reaped);
            self.wake.notify_one();
        }
        Ok(reaped.len())
    }

    /// Deletes what is past its retention, in writes of at most [`PURGE_BATCH`] rows each (so
    /// other writers get their turn between them) until nothing is left: expired idempotency
    /// keys, succeeded and cancelled tasks finished more than `queue.retention_days` ago, and
    /// dead tasks more than `queue.dead_retention_days` ago, each with its log lines (receipts
    /// live in the task record). Each batch that deletes tasks is audited as `queue.purge`.
    pub async fn purge_expired(&self) -> Result<QueuePurge, QueueError> {
        let now = self.clock.now_ms();
        let day_ms = 86_400_000_i64;
        let finished_cutoff = now - self.config.queue.retention_days as i64 * day_ms;
        let dead_cutoff = now - self.config.queue.dead_retention_days as i64 * day_ms;
        let mut report = QueuePurge::default();
        loop {
            let removed = self
                .write(move |_, t| purge_idempotency_keys(t, now, PURGE_BATCH))
                .await?;
            report.idempotency_keys += removed as u64;
            if removed < PURGE_BATCH {
                break;
            }
        }
        for (status, cutoff) in [
            (Status::Succeeded, finished_cutoff),
            (Status::Cancelled, finished_cutoff),
            (Status::Dead, dead_cutoff),
        ] {
            let mut after = None;
            loop {
                let removal = Arc::clone(&self.removal);
                let audit = Arc::clone(&self.audit);
                let scan = PurgeScan {
                    status,
                    cutoff,
                    after,
                    now,
                };
                let batch = self
                    .write(move |tx, t| purge_finished(tx, t, &*removal, &audit, scan))
                    .await?;
                report.tasks += batch.tasks;
                report.log_lines += batch.log_lines;
                match batch.last_scanned {
                    Some(last) if batch.scanned == PURGE_BATCH => after = Some(last),
                    _ => break,
                }
            }
        }
        Ok(report)
    }
}

/// Rows one retention write scans or removes at most.
pub const PURGE_BATCH: usize = 1000;

/// What one retention pass of the queue deleted.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct QueuePurge {
    /// Tasks (succeeded, cancelled and dead) past their retention.
    pub tasks: u64,
    /// Log lines of those tasks.
    pub log_lines: u64,
    /// Expired idempotency keys.
    pub idempotency_keys: u64,
}

/// One batch of the finished-task purge: tasks in `status` after id `after` (from the first when
/// `None`), deleted when they finished before `cutoff`.
#[derive(Debug, Clone, Copy)]
struct PurgeScan {
    status: Status,
    cutoff: Millis,
    after: Option<u128>,
    now: Millis,
}

/// What one batch of the finished-task purge did.
struct PurgedBatch {
    scanned: usize,
    last_scanned: Option<u128>,
    tasks: u64,
    log_lines: u64,
}

/// Removes up to `limit` idempotency keys that expired by `now`; returns how many expiry
/// entries were handled.
fn purge_idempotency_keys(
    t: &mut Tables<'_>,
    now: Millis,
    limit: usize,
) -> Result<usize, QueueError> {
    let expired_keys: Vec<(i64, String)> = t
        .idempotency_expiry_mut()?
        .range(..(now, ""))?
        .take(limit)
        .map(|r| r.map(|(k, _)| (k.value().0, k.value().1.to_string())))
        .collect::<Result<_, _>>()?;
    for (at, key) in &expired_keys {
        t.idempotency_expiry_mut()?.remove((*at, key.as_str()))?;
        let current = t
            .idempotency_keys_mut()?
            .get(key.as_str())?
            .map(|v| v.value());
        if current.is_some_and(|(_, exp)| exp == *at) {
            t.idempotency_keys_mut()?.remove(key.as_str())?;
        }
    }
    Ok(expired_keys.len())
}

/// Scans up to [`PURGE_BATCH`] tasks of `scan.status` and deletes those past the cutoff, telling
/// `removal` and auditing the batch in the same transaction.
fn purge_finished(
    tx: &WriteTransaction,
    t: &mut Tables<'_>,
    removal: &dyn TaskRemoval,
    audit: &Audit,
    scan: PurgeScan,
) -> Result<PurgedBatch, QueueError> {
    let code = scan.status.code();
    let from = match scan.after {
        Some(after) => Bound::Excluded((code, after)),
        None => Bound::Included((code, 0)),
    };
    let ids: Vec<u128> = t
        .by_status()?
        .range((from, Bound::Included((code, u128::MAX))))?
        .take(PURGE_BATCH)
        .map(|r| r.map(|(k, _)| k.value().1))
        .collect::<Result<_, _>>()?;
    let mut deleted = Vec::new();
    let mut log_lines = 0;
    for raw in &ids {
        let Some(task) = t.task(Uuid::from_u128(*raw))? else {
            continue;
        };
        if task.finished_at.unwrap_or(task.updated_at) < scan.cutoff {
            log_lines += indexes::delete_task(t, &task)?;
            deleted.push(task.id);
        }
    }
    if !deleted.is_empty() {
        removal.tasks_removed(tx, &deleted)?;
        audit.append(
            tx,
            scan.now,
            &AuditEvent::new(SYSTEM_ACTOR, "queue.purge", scan.status.as_str()).with_detail(
                serde_json::json!({"status": scan.status.as_str(), "tasks": deleted.len(),
                    "finished_before_ms": scan.cutoff}),
            ),
        )?;
    }
    Ok(PurgedBatch {
        scanned: ids.len(),
        last_scanned: ids.last().copied(),
        tasks: deleted.len() as u64,
        log_lines,
    })
}

/// The queue's housekeeping: returns expired leases and publishes depth gauges.
pub struct Maintenance {
    /// The queue.
    pub queue: Arc<Queue>,
    /// Where gauges go.
    pub metrics: Arc<Metrics>,
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
                Unit::Count,
                &[],
            )
            .record(waiting);
        Ok(())
    }
}

impl Worker for Maintenance {
    fn name(&self) -> &'static str {
        "queue-maintenance"
    }
    fn interval(&self) -> Duration {
        Duration::from_secs(5)
    }
    fn step(&mut self) -> StepFuture<'_> {
        Box::pin(async move {
            let run = async {
                self.queue.reap_expired().await?;
                self.publish_gauges().await
            };
            run.await.map_err(|e: QueueError| e.to_string())
        })
    }
}
