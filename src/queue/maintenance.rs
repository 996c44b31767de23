//! The queue's housekeeping: the reaper (expired leases), the purge (finished tasks past
//! retention, expired idempotency keys) and the depth gauges, run by the [`Maintenance`] worker.

use std::sync::Arc;
use std::time::{Duration, Instant};

use redb::ReadableTable;
use uuid::Uuid;

use super::lease::{RetryPolicy, finish_attempt};
use super::model::{Outcome, Status};
use super::tables::ReadableTables;
use super::{PROMOTE_LIMIT, Queue, QueueError, indexes};
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

    /// Deletes finished tasks (succeeded, cancelled) older than the retention period and
    /// expired idempotency keys. Returns how many tasks were deleted.
    pub async fn purge_expired(&self) -> Result<usize, QueueError> {
        let now = self.clock.now_ms();
        let cutoff = now - self.config.queue.retention_days as i64 * 86_400_000;
        let removal = Arc::clone(&self.removal);
        self.write(move |tx, t| {
            let expired_keys: Vec<(i64, String)> = t
                .idempotency_expiry_mut()?
                .range(..(now, ""))?
                .take(PROMOTE_LIMIT)
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
            let mut deleted = Vec::new();
            for status in [Status::Succeeded, Status::Cancelled] {
                for raw in t.ids_with_status(status)?.into_iter().take(PROMOTE_LIMIT) {
                    let Some(task) = t.task(Uuid::from_u128(raw))? else {
                        continue;
                    };
                    if task.finished_at.unwrap_or(task.updated_at) < cutoff {
                        indexes::delete_task(t, &task)?;
                        deleted.push(task.id);
                    }
                }
            }
            if !deleted.is_empty() {
                removal.tasks_removed(tx, &deleted)?;
            }
            Ok(deleted.len())
        })
        .await
    }
}

/// The queue's housekeeping: returns expired leases, publishes depth gauges, and hourly
/// deletes finished tasks past retention and expired idempotency keys.
pub struct Maintenance {
    /// The queue.
    pub queue: Arc<Queue>,
    /// Where gauges go.
    pub metrics: Arc<Metrics>,
    /// When the last purge ran.
    pub last_purge: Option<Instant>,
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
                if self
                    .last_purge
                    .is_none_or(|t| t.elapsed() >= Duration::from_secs(3600))
                {
                    self.queue.purge_expired().await?;
                    self.last_purge = Some(Instant::now());
                }
                self.publish_gauges().await
            };
            run.await.map_err(|e: QueueError| e.to_string())
        })
    }
}
