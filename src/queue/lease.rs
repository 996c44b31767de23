//! Leases and completion: handing out ready tasks (promoting due delayed ones, skipping types at
//! their concurrency limit, holding back tasks of open circuits), recording how an attempt
//! ended with retries and backoff, and taking back the leases of a process that is gone.

use std::cmp::Reverse;
use std::collections::{BinaryHeap, HashMap};

use uuid::Uuid;

use super::model::{
    Attempt, Completion, Lease, LeaseRequest, Outcome, Receipt, ResultForm, Status, Task,
};
use super::tables::{ReadableTables, Tables};
use super::task_types::has_leasable_work;
use super::{PROMOTE_LIMIT, Queue, QueueError, daily, indexes};
use crate::clock::Millis;
use crate::config::Config;

/// Most ready entries one lease looks at (leased, or moved aside for an open circuit), which
/// bounds the size of its transaction.
pub(super) const SCAN_LIMIT: usize = 512;

impl Queue {
    /// Leases up to `request.max` ready tasks: due delayed tasks are promoted first; tasks of
    /// saturated types are skipped; tasks of blocked targets wait until their circuit allows a
    /// trial (without using an attempt).
    pub async fn lease(&self, request: LeaseRequest) -> Result<Vec<Task>, QueueError> {
        let now = self.clock.now_ms();
        if request.max == 0 || !self.read(move |t| has_leasable_work(t, now)).await? {
            return Ok(Vec::new());
        }
        let lease_ms = self.config.queue.lease_seconds as i64 * 1000;
        let leased = self
            .write(move |_, t| lease_in(t, &request, now, lease_ms))
            .await?;
        self.publish_transitions(&leased);
        Ok(leased)
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
        let finished = self
            .write(move |_, t| {
                let Some(mut task) = t.task(id)? else {
                    return Ok(None);
                };
                if task.status != Status::Running || task.lease.map(|l| l.id) != Some(lease_id) {
                    return Ok(None);
                }
                finish_attempt(t, &mut task, outcome.clone(), now, &policy, result_max)?;
                Ok(Some(task))
            })
            .await?;
        self.wake.notify_one();
        Ok(match finished {
            Some(task) => {
                self.publish_transitions([&task]);
                Completion::Applied(task.status)
            }
            None => Completion::LeaseLost,
        })
    }

    /// The tasks that are running (at start: those the last keel left running).
    pub async fn running_ids(&self) -> Result<Vec<Uuid>, QueueError> {
        self.read(|t| {
            Ok(t.ids_with_status(Status::Running)?
                .into_iter()
                .map(Uuid::from_u128)
                .collect())
        })
        .await
    }

    /// After a restart every lease belongs to a process that is gone (the database admits one
    /// process): their tasks run again at once, without using an attempt. `stopped_at` says,
    /// for the tasks whose executor knows it, when the interrupted attempt really stopped
    /// (otherwise: now).
    pub async fn recover_interrupted(
        &self,
        stopped_at: HashMap<Uuid, Millis>,
    ) -> Result<usize, QueueError> {
        let now = self.clock.now_ms();
        let policy = RetryPolicy::from_config(&self.config);
        let result_max = self.config.queue.result_max_bytes;
        let (count, recovered) = self
            .write(move |_, t| {
                let running = t.ids_with_status(Status::Running)?;
                let mut recovered = Vec::new();
                for raw in &running {
                    if let Some(mut task) = t.task(Uuid::from_u128(*raw))? {
                        finish_attempt(
                            t,
                            &mut task,
                            Outcome::Interrupted,
                            now,
                            &policy,
                            result_max,
                        )?;
                        if let Some(&stopped) = stopped_at.get(&task.id)
                            && let Some(attempt) = task.attempts.last_mut()
                        {
                            attempt.finished_at = Some(stopped.clamp(attempt.started_at, now));
                            t.save(&task)?;
                        }
                        recovered.push(task);
                    }
                }
                Ok((running.len(), recovered))
            })
            .await?;
        self.publish_transitions(&recovered);
        Ok(count)
    }
}

/// Leases what `request` allows in one transaction.
fn lease_in(
    t: &mut Tables<'_>,
    request: &LeaseRequest,
    now: Millis,
    lease_ms: i64,
) -> Result<Vec<Task>, QueueError> {
    indexes::promote_due(t, now, PROMOTE_LIMIT)?;

    // The head of each type with room; the most urgent head is leased next, then that type's
    // head is refreshed. A type at its concurrency limit is never looked at.
    let mut room = request.type_room.clone();
    let mut heads = BinaryHeap::new();
    let paused = t.pauses()?;
    for task_type in indexes::ready_types(t)? {
        if paused.contains_key(&task_type) || room.get(&task_type).is_some_and(|left| *left == 0) {
            continue;
        }
        if let Some(head) = indexes::ready_head(t, &task_type)? {
            heads.push(Reverse((head, task_type)));
        }
    }
    let mut leased = Vec::new();
    let mut looked_at = 0;
    while leased.len() < request.max && looked_at < SCAN_LIMIT {
        let Some(Reverse(((priority, due, raw), task_type))) = heads.pop() else {
            break;
        };
        looked_at += 1;
        t.ready_mut()?
            .remove((task_type.as_str(), priority, due, raw))?;
        let refill = |t: &Tables<'_>, heads: &mut BinaryHeap<_>| {
            if let Some(head) = indexes::ready_head(t, &task_type)? {
                heads.push(Reverse((head, task_type.clone())));
            }
            Ok::<_, QueueError>(())
        };
        let Some(mut task) = t.task(Uuid::from_u128(raw))? else {
            refill(t, &mut heads)?;
            continue;
        };
        if let Some(until) = request.blocked_targets.get(&task.target) {
            // The circuit is open: wait for the trial time without using an attempt.
            task.due_at = (*until).max(now + 1);
            task.updated_at = now;
            t.save(&task)?;
            indexes::schedule(t, &task, now)?;
            refill(t, &mut heads)?;
            continue;
        }
        task.lease = Some(Lease {
            id: u128::from_le_bytes(crate::fsutil::random_bytes::<16>()),
            expires_at: now + lease_ms,
        });
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
        indexes::set_status(t, &mut task, Status::Running, now)?;
        t.save(&task)?;
        indexes::add_lease(t, &task)?;
        let has_room = match room.get_mut(&task.task_type) {
            Some(left) => {
                *left -= 1;
                *left > 0
            }
            None => true,
        };
        if has_room {
            refill(t, &mut heads)?;
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
pub(super) fn finish_attempt(
    t: &mut Tables<'_>,
    task: &mut Task,
    outcome: Outcome,
    now: Millis,
    policy: &RetryPolicy,
    result_max: usize,
) -> Result<(), QueueError> {
    indexes::end_lease(t, task)?;
    daily::record(t, &outcome, now)?;
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
        Outcome::Succeeded {
            result,
            form,
            receipt,
        } => {
            record("succeeded", None, None, receipt, true);
            let cut_here = result.as_ref().is_some_and(|r| r.len() > result_max);
            task.result = result.map(|r| cap(r, result_max));
            task.result_form = ResultForm {
                truncated: form.truncated || cut_here,
                ..form
            };
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
    indexes::set_status(t, task, next, now)?;
    if next.is_final() {
        task.finished_at = Some(now);
    } else {
        indexes::schedule(t, task, now)?;
    }
    t.save(task)
}

/// Retry timing from the configuration.
#[derive(Debug, Clone, Copy)]
pub(super) struct RetryPolicy {
    pub(super) base_ms: u64,
    pub(super) max_ms: u64,
    pub(super) retry_after_max_ms: u64,
}

impl RetryPolicy {
    pub(super) fn from_config(config: &Config) -> Self {
        RetryPolicy {
            base_ms: config.queue.backoff_base_ms,
            max_ms: config.queue.backoff_max_seconds * 1000,
            retry_after_max_ms: config.queue.retry_after_max_seconds * 1000,
        }
    }

    /// Delay before attempt `failed + 1`: exponential, capped, with "equal jitter" (half fixed,
    /// half random), or the target's Retry-After when longer (clamped).
    pub(super) fn delay_ms(&self, failed: u32, retry_after_ms: Option<u64>, random: f64) -> u64 {
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
