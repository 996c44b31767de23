//! The dead-letter queue: tasks that used up their attempts or failed for good. Statistics,
//! draining back to the queue with a fresh set of attempts, and deleting for good.

use std::collections::BTreeMap;
use std::sync::Arc;

use redb::ReadableTable;
use uuid::Uuid;

use super::model::{Status, Task};
use super::tables::ReadableTables;
use super::{Queue, QueueError, indexes};
use crate::audit::Event as AuditEvent;
use crate::clock::Millis;

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

impl Queue {
    /// Dead-letter queue statistics.
    pub async fn dlq_stats(&self) -> Result<DlqStats, QueueError> {
        let now = self.clock.now_ms();
        self.read(move |t| {
            let mut stats = DlqStats::default();
            let mut oldest: Option<Millis> = None;
            for raw in t.ids_with_status(Status::Dead)? {
                let Some(task) = t.task(Uuid::from_u128(raw))? else {
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
        let configured = filter_type
            .as_ref()
            .is_none_or(|ty| self.config.handlers.contains_key(ty));
        let tasks = self
            .write(move |tx, t| {
                if let Some(ty) = &filter_type
                    && !configured
                    && t.counts()?.get((Status::Dead.code(), ty.as_str()))?.is_none()
                {
                    return Err(QueueError::Invalid(format!(
                        "filter_type: `{ty}` is neither a configured task type nor the type of a dead task"
                    )));
                }
                let mut moved = Vec::new();
                for raw in t.ids_with_status(Status::Dead)? {
                    if moved.len() >= max {
                        break;
                    }
                    let Some(mut task) = t.task(Uuid::from_u128(raw))? else {
                        continue;
                    };
                    if filter_type.as_ref().is_some_and(|ty| *ty != task.task_type) {
                        continue;
                    }
                    if !dry_run {
                        task.attempts_before_requeue =
                            task.attempts.iter().filter(|a| a.counted).count() as u32;
                        task.finished_at = None;
                        task.due_at = now;
                        indexes::set_status(t, &mut task, Status::Queued, now)?;
                        t.save(&task)?;
                        indexes::schedule(t, &task, now)?;
                    }
                    moved.push(task);
                }
                if !dry_run && !moved.is_empty() {
                    audit.append(
                        tx,
                        now,
                        &AuditEvent::new(actor.clone(), "dlq.drain", "dlq").with_detail(
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
        let removal = Arc::clone(&self.removal);
        let actor = actor.to_string();
        self.write(move |tx, t| {
            let task = t.task(id)?.ok_or(QueueError::NotFound(id))?;
            if task.status != Status::Dead {
                return Err(QueueError::Conflict(format!(
                    "task {id} is {}, not in the dead-letter queue",
                    task.status.as_str()
                )));
            }
            indexes::delete_task(t, &task)?;
            removal.tasks_removed(tx, &[id])?;
            audit.append(
                tx,
                now,
                &AuditEvent::new(actor.clone(), "dlq.delete", id.to_string())
                    .with_detail(serde_json::json!({"type": task.task_type})),
            )?;
            Ok(())
        })
        .await
    }
}
