//! The queue's secondary indexes, kept in step with the task records in the same transaction:
//! ready (per type, by priority, due time and age), delayed (by due time), leased (by lease
//! expiry), by status, and the per-(status, type) counts.

use redb::{ReadableTable, ReadableTableMetadata};
use uuid::Uuid;

use super::QueueError;
use super::model::{Status, Task};
use super::tables::{ReadableTables, Tables};
use crate::clock::Millis;

/// A task's key in the ready index.
pub(super) fn ready_key(task: &Task) -> (&str, u32, i64, u128) {
    (
        task.task_type.as_str(),
        task.priority,
        task.due_at,
        task.id.as_u128(),
    )
}

/// Adds `delta` to the count of (`status`, `task_type`), dropping counts that reach 0.
fn bump_count(
    t: &mut Tables<'_>,
    status: Status,
    task_type: &str,
    delta: i64,
) -> Result<(), QueueError> {
    let key = (status.code(), task_type);
    let current = t.counts_mut()?.get(key)?.map(|v| v.value()).unwrap_or(0);
    let next = current.saturating_add_signed(delta);
    if next == 0 {
        t.counts_mut()?.remove(key)?;
    } else {
        t.counts_mut()?.insert(key, next)?;
    }
    Ok(())
}

/// Waiting tasks (queued and retrying), from the counts.
pub(super) fn waiting_depth(t: &impl ReadableTables) -> Result<u64, QueueError> {
    let mut depth = 0;
    for status in [Status::Queued, Status::Retrying] {
        for row in t
            .counts()?
            .range((status.code(), "")..(status.code() + 1, ""))?
        {
            depth += row?.1.value();
        }
    }
    Ok(depth)
}

/// Stores a new task with its status index, count and (when it waits) schedule.
pub(super) fn insert_new(t: &mut Tables<'_>, task: &Task, now: Millis) -> Result<(), QueueError> {
    t.save(task)?;
    t.by_status_mut()?
        .insert((task.status.code(), task.id.as_u128()), ())?;
    bump_count(t, task.status, &task.task_type, 1)?;
    if task.status.is_waiting() {
        schedule(t, task, now)?;
    }
    Ok(())
}

/// Moves a task to `status`, keeping the status index and counts in step (the record is saved
/// by the caller).
pub(super) fn set_status(
    t: &mut Tables<'_>,
    task: &mut Task,
    status: Status,
    now: Millis,
) -> Result<(), QueueError> {
    if task.status != status {
        t.by_status_mut()?
            .remove((task.status.code(), task.id.as_u128()))?;
        t.by_status_mut()?
            .insert((status.code(), task.id.as_u128()), ())?;
        bump_count(t, task.status, &task.task_type, -1)?;
        bump_count(t, status, &task.task_type, 1)?;
        task.status = status;
    }
    task.updated_at = now;
    Ok(())
}

/// Puts a waiting task in the ready or delayed index by its due time.
pub(super) fn schedule(t: &mut Tables<'_>, task: &Task, now: Millis) -> Result<(), QueueError> {
    if task.due_at <= now {
        t.ready_mut()?.insert(ready_key(task), ())?;
    } else {
        t.delayed_mut()?
            .insert((task.due_at, task.id.as_u128()), ())?;
    }
    Ok(())
}

/// Removes a waiting task from the ready and delayed indexes.
pub(super) fn unschedule(t: &mut Tables<'_>, task: &Task) -> Result<(), QueueError> {
    t.ready_mut()?.remove(ready_key(task))?;
    t.delayed_mut()?.remove((task.due_at, task.id.as_u128()))?;
    Ok(())
}

/// Records a task's lease in the leased index.
pub(super) fn add_lease(t: &mut Tables<'_>, task: &Task) -> Result<(), QueueError> {
    if let Some(lease) = task.lease {
        t.leased_mut()?
            .insert((lease.expires_at, task.id.as_u128()), ())?;
    }
    Ok(())
}

/// Ends a task's lease and removes it from the leased index.
pub(super) fn end_lease(t: &mut Tables<'_>, task: &mut Task) -> Result<(), QueueError> {
    if let Some(lease) = task.lease.take() {
        t.leased_mut()?
            .remove((lease.expires_at, task.id.as_u128()))?;
    }
    Ok(())
}

/// Deletes a task with its index entries, count and log lines; returns how many log lines.
pub(super) fn delete_task(t: &mut Tables<'_>, task: &Task) -> Result<u64, QueueError> {
    unschedule(t, task)?;
    if let Some(lease) = task.lease {
        t.leased_mut()?
            .remove((lease.expires_at, task.id.as_u128()))?;
    }
    t.by_status_mut()?
        .remove((task.status.code(), task.id.as_u128()))?;
    bump_count(t, task.status, &task.task_type, -1)?;
    t.tasks_mut()?.remove(task.id.as_u128())?;
    let lines: Vec<(u128, u32)> = t
        .logs()?
        .range((task.id.as_u128(), 0)..=(task.id.as_u128(), u32::MAX))?
        .map(|r| r.map(|(k, _)| k.value()))
        .collect::<Result<_, _>>()?;
    for key in &lines {
        t.logs_mut()?.remove(*key)?;
    }
    let starts: Vec<(u128, u32)> = t
        .log_attempts()?
        .range((task.id.as_u128(), 0)..=(task.id.as_u128(), u32::MAX))?
        .map(|r| r.map(|(k, _)| k.value()))
        .collect::<Result<_, _>>()?;
    for key in &starts {
        t.log_attempts_mut()?.remove(*key)?;
    }
    Ok(lines.len() as u64)
}

/// Whether a task is ready, or a delayed one is due.
pub(super) fn has_due_work(t: &impl ReadableTables, now: Millis) -> Result<bool, QueueError> {
    if !t.ready()?.is_empty()? {
        return Ok(true);
    }
    Ok(t.delayed()?
        .first()?
        .is_some_and(|(k, _)| k.value().0 <= now))
}

/// Moves delayed tasks that are due into the ready index (at most `limit`).
pub(super) fn promote_due(t: &mut Tables<'_>, now: Millis, limit: usize) -> Result<(), QueueError> {
    let due: Vec<(i64, u128)> = t
        .delayed()?
        .range(..=(now, u128::MAX))?
        .take(limit)
        .map(|r| r.map(|(k, _)| k.value()))
        .collect::<Result<_, _>>()?;
    for (at, raw) in due {
        t.delayed_mut()?.remove((at, raw))?;
        if let Some(task) = t.task(Uuid::from_u128(raw))? {
            t.ready_mut()?.insert(ready_key(&task), ())?;
        }
    }
    Ok(())
}

/// Entries of an index keyed by (time, id) up to `until`, oldest first (at most `limit`).
pub(super) fn due_entries(
    index: &impl ReadableTable<(i64, u128), ()>,
    until: (i64, u128),
    limit: usize,
) -> Result<Vec<(i64, u128)>, QueueError> {
    Ok(index
        .range(..until)?
        .take(limit)
        .map(|r| r.map(|(k, _)| k.value()))
        .collect::<Result<_, _>>()?)
}

/// The most urgent ready entry of `task_type`: (priority, due, id).
pub(super) fn ready_head(
    t: &impl ReadableTables,
    task_type: &str,
) -> Result<Option<(u32, i64, u128)>, QueueError> {
    let mut range = t
        .ready()?
        .range((task_type, 0, i64::MIN, 0)..=(task_type, u32::MAX, i64::MAX, u128::MAX))?;
    Ok(match range.next() {
        Some(row) => {
            let (_, p, due, id) = row?.0.value();
            Some((p, due, id))
        }
        None => None,
    })
}

/// Task types that have ready tasks, by skipping from one type to the next in the index.
pub(super) fn ready_types(t: &impl ReadableTables) -> Result<Vec<String>, QueueError> {
    let table = t.ready()?;
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
