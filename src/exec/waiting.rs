//! Why a waiting task is not running yet, and when it will be tried again: its circuit is open
//! (or its half-open trial is running), its LLM budget is spent, an attempt was deferred, or its
//! type is at its concurrency limit. Worked out from the task and the breakers' and
//! dispatcher's state at the moment of asking; nothing is stored.

use super::Dispatcher;
use crate::clock::Millis;
use crate::queue::Task;

/// What a waiting task waits on.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Waiting {
    /// `circuit_open`, `budget_exceeded`, `deferred` or `concurrency_limit`.
    pub reason: &'static str,
    /// The same in words, naming the circuit, provider or type.
    pub detail: String,
    /// When it will be tried again; `None` when that depends on other tasks finishing.
    pub until: Option<Millis>,
}

impl Dispatcher {
    /// What `task` waits on at `now`, if it is waiting on anything but its own due time.
    pub fn waiting(&self, task: &Task, now: Millis) -> Option<Waiting> {
        if !task.status.is_waiting() {
            return None;
        }
        if let Some(until) = self.circuits.blocked_until(&task.target) {
            return Some(Waiting {
                reason: "circuit_open",
                detail: format!("the circuit {} is open", task.target),
                until: Some(until.max(task.due_at)),
            });
        }
        if let Some(last) = task.attempts.last()
            && last.outcome == "deferred"
            && task.due_at > now
        {
            let reason = match last.error_class.as_deref() {
                Some("budget_exceeded") => "budget_exceeded",
                _ => "deferred",
            };
            return Some(Waiting {
                reason,
                detail: last.error_message.clone().unwrap_or_default(),
                until: Some(task.due_at),
            });
        }
        let limit = self.config.handlers.get(&task.task_type)?.concurrency()?;
        let running = self.running_of_type(&task.task_type);
        (task.due_at <= now && running >= limit).then(|| Waiting {
            reason: "concurrency_limit",
            detail: format!(
                "{running} of at most {limit} tasks of type `{}` are running",
                task.task_type
            ),
            until: None,
        })
    }

    /// Tasks of `task_type` running now.
    fn running_of_type(&self, task_type: &str) -> usize {
        *self
            .running_by_type
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .get(task_type)
            .unwrap_or(&0)
    }
}
