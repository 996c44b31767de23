//! Task types as operators see them: the list with each type's counts and pause, and pausing
//! and resuming a type. A paused type's tasks keep waiting (their status and schedule do not
//! change); leasing skips the type until it is resumed. The pause is stored, so it holds across
//! restarts.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;

use redb::ReadableTable;

use super::model::{Status, TaskType, TypePause};
use super::tables::ReadableTables;
use super::{Queue, QueueError, indexes};
use crate::audit::Event as AuditEvent;
use crate::clock::Millis;

impl Queue {
    /// Every task type that has a handler, tasks or a pause, by name.
    pub async fn task_types(&self) -> Result<Vec<TaskType>, QueueError> {
        let configured: BTreeSet<String> = self.config.handlers.keys().cloned().collect();
        self.read(move |t| {
            let pauses = t.pauses()?;
            let mut counts: BTreeMap<String, Vec<(Status, u64)>> = BTreeMap::new();
            for row in t.counts()?.iter()? {
                let (k, v) = row?;
                let (code, task_type) = k.value();
                if let Some(status) = Status::from_code(code)
                    && v.value() > 0
                {
                    counts
                        .entry(task_type.to_string())
                        .or_default()
                        .push((status, v.value()));
                }
            }
            let names: BTreeSet<String> = configured
                .iter()
                .chain(counts.keys())
                .chain(pauses.keys())
                .cloned()
                .collect();
            Ok(names
                .into_iter()
                .map(|name| TaskType {
                    configured: configured.contains(&name),
                    pause: pauses.get(&name).cloned(),
                    counts: counts.get(&name).cloned().unwrap_or_default(),
                    name,
                })
                .collect())
        })
        .await
    }

    /// One task type; an unknown type (no handler, no task, no pause) is not found.
    pub async fn task_type(&self, name: &str) -> Result<TaskType, QueueError> {
        let wanted = name.to_string();
        self.task_types()
            .await?
            .into_iter()
            .find(|t| t.name == wanted)
            .ok_or(QueueError::UnknownType(wanted))
    }

    /// Pauses a task type: none of its tasks is leased until it is resumed. Pausing a paused
    /// type is a conflict.
    pub async fn pause_type(&self, actor: &str, name: &str) -> Result<TaskType, QueueError> {
        self.task_type(name).await?;
        let now = self.clock.now_ms();
        let audit = Arc::clone(&self.audit);
        let actor = actor.to_string();
        let task_type = name.to_string();
        self.write(move |tx, t| {
            if t.paused()?.get(task_type.as_str())?.is_some() {
                return Err(QueueError::Conflict(format!(
                    "task type `{task_type}` is already paused"
                )));
            }
            let pause = TypePause {
                paused_at: now,
                paused_by: actor.clone(),
            };
            t.save_pause(&task_type, &pause)?;
            audit.append(
                tx,
                now,
                &AuditEvent::new(actor.clone(), "task_type.pause", task_type.clone()),
            )?;
            Ok(())
        })
        .await?;
        self.task_type(name).await
    }

    /// Resumes a paused task type; its waiting tasks are leased again. Resuming a type that is
    /// not paused is a conflict.
    pub async fn resume_type(&self, actor: &str, name: &str) -> Result<TaskType, QueueError> {
        self.task_type(name).await?;
        let now = self.clock.now_ms();
        let audit = Arc::clone(&self.audit);
        let actor = actor.to_string();
        let task_type = name.to_string();
        self.write(move |tx, t| {
            if t.paused_mut()?.remove(task_type.as_str())?.is_none() {
                return Err(QueueError::Conflict(format!(
                    "task type `{task_type}` is not paused"
                )));
            }
            audit.append(
                tx,
                now,
                &AuditEvent::new(actor.clone(), "task_type.resume", task_type.clone()),
            )?;
            Ok(())
        })
        .await?;
        self.wake.notify_one();
        self.task_type(name).await
    }
}

/// Whether a task of a type that is not paused is ready, or a delayed task is due.
pub(super) fn has_leasable_work(t: &impl ReadableTables, now: Millis) -> Result<bool, QueueError> {
    let pauses = t.pauses()?;
    if pauses.is_empty() {
        return indexes::has_due_work(t, now);
    }
    if indexes::ready_types(t)?
        .iter()
        .any(|ty| !pauses.contains_key(ty))
    {
        return Ok(true);
    }
    Ok(t.delayed()?
        .first()?
        .is_some_and(|(k, _)| k.value().0 <= now))
}
