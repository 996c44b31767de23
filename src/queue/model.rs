//! The queue's stored shapes: tasks, attempts, receipts and the handler snapshot taken at
//! enqueue.

use serde::{Deserialize, Serialize};
use uuid::Uuid;

use crate::clock::Millis;
use crate::store::codec::Record;

/// Where a task is in its life.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Status {
    /// Waiting to run (now or at its due time).
    Queued,
    /// Leased by an executor and running.
    Running,
    /// Finished successfully.
    Succeeded,
    /// Failed an attempt; waiting for its next one.
    Retrying,
    /// Out of attempts (or failed permanently): in the dead-letter queue.
    Dead,
    /// Cancelled before it finished.
    Cancelled,
}

impl Status {
    /// Every status, in code order.
    pub const ALL: [Status; 6] = [
        Status::Queued,
        Status::Running,
        Status::Succeeded,
        Status::Retrying,
        Status::Dead,
        Status::Cancelled,
    ];

    /// The code used in index keys.
    pub fn code(self) -> u8 {
        match self {
            Status::Queued => 0,
            Status::Running => 1,
            Status::Succeeded => 2,
            Status::Retrying => 3,
            Status::Dead => 4,
            Status::Cancelled => 5,
        }
    }

    /// The status with this code.
    pub fn from_code(code: u8) -> Option<Status> {
        Status::ALL.into_iter().find(|s| s.code() == code)
    }

    /// The status's name in the API.
    pub fn as_str(self) -> &'static str {
        match self {
            Status::Queued => "queued",
            Status::Running => "running",
            Status::Succeeded => "succeeded",
            Status::Retrying => "retrying",
            Status::Dead => "dead",
            Status::Cancelled => "cancelled",
        }
    }

    /// Whether the task will not run again by itself.
    pub fn is_final(self) -> bool {
        matches!(self, Status::Succeeded | Status::Dead | Status::Cancelled)
    }

    /// Whether the task counts toward the queue's depth.
    pub fn is_waiting(self) -> bool {
        matches!(self, Status::Queued | Status::Retrying)
    }
}

impl std::str::FromStr for Status {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Status::ALL
            .into_iter()
            .find(|st| st.as_str() == s)
            .ok_or_else(|| {
                format!(
                    "unknown status `{s}` (queued, running, succeeded, retrying, dead, cancelled)"
                )
            })
    }
}

/// How a task is executed, copied from the configuration when it was enqueued so that later
/// configuration changes never alter it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum HandlerSnapshot {
    /// Send the payload over HTTP.
    Http {
        /// Target URL.
        url: String,
        /// Method.
        method: String,
        /// Bearer token.
        token: Option<String>,
        /// Standard Webhooks signing secret.
        signing_secret: Option<String>,
        /// Requests in flight to the host at once.
        target_concurrency: u32,
    },
    /// Run a local program.
    Command {
        /// Program path.
        program: String,
        /// Arguments.
        args: Vec<String>,
        /// Working directory.
        working_dir: Option<String>,
        /// Environment variables passed through.
        env_allow: Vec<String>,
    },
    /// Ask an OpenAI-compatible chat-completions endpoint, within the provider's daily budget.
    Llm {
        /// Provider name (budget, ledger and circuit target `llm:<provider>`).
        provider: String,
        /// Base URL; the request goes to `<base_url>/chat/completions`.
        base_url: String,
        /// Bearer API key.
        api_key: Option<String>,
        /// Model name.
        model: String,
        /// `max_tokens` when the payload gives none.
        default_max_tokens: u32,
        /// The provider's cap on `max_tokens`.
        max_tokens_cap: u32,
        /// Price of one prompt token, in nano-USD.
        input_nanos_per_token: u64,
        /// Price of one completion token, in nano-USD.
        output_nanos_per_token: u64,
        /// The provider's daily budget at enqueue (micro-USD), used only when the provider is no
        /// longer configured.
        daily_budget_micros: u64,
    },
    /// Run other handlers as ordered steps, checkpointing each finished step.
    Workflow {
        /// The steps, in order.
        steps: Vec<WorkflowStep>,
    },
}

/// One step of a workflow, snapshotted at enqueue like any handler.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct WorkflowStep {
    /// Step name (`{{steps.<name>.result}}`).
    pub name: String,
    /// The task type whose handler runs it.
    pub handler_type: String,
    /// How it runs (never a workflow).
    pub handler: HandlerSnapshot,
    /// Its circuit breaker target.
    pub target: String,
    /// Time allowed for the step, from its handler.
    pub timeout_ms: u64,
    /// The payload template as JSON text; `None` sends the workflow's payload.
    pub payload_template: Option<String>,
}

/// What an HTTP (or other) target answered to one attempt.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Receipt {
    /// HTTP status, when there was an answer.
    pub status: Option<u16>,
    /// Time from send to answer.
    pub latency_ms: u64,
    /// The first KiB of the answer.
    pub body_head: String,
}

/// One try at running a task.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Attempt {
    /// 1 for the first attempt.
    pub number: u32,
    /// When it was leased.
    pub started_at: Millis,
    /// When it ended.
    pub finished_at: Option<Millis>,
    /// `succeeded`, `failed`, `interrupted`, `deferred`, `cancelled`; empty while running.
    pub outcome: String,
    /// Error class (`http_5xx`, `timeout`, …).
    pub error_class: Option<String>,
    /// Error message.
    pub error_message: Option<String>,
    /// What the target answered.
    pub receipt: Option<Receipt>,
    /// Whether it counts toward `max_attempts` (interrupted and deferred attempts do not).
    pub counted: bool,
}

/// A lease on a running task.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct Lease {
    /// Random id: a completion must quote it.
    pub id: u128,
    /// When the reaper may take the task back.
    pub expires_at: Millis,
}

/// A task.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Task {
    /// Time-ordered id.
    pub id: Uuid,
    /// Task type (a configured handler).
    pub task_type: String,
    /// Opaque JSON payload, as text.
    pub payload: String,
    /// Lower runs first.
    pub priority: u32,
    /// Caller's idempotency key.
    pub idempotency_key: Option<String>,
    /// Current status.
    pub status: Status,
    /// Who enqueued it.
    pub created_by: String,
    /// When.
    pub created_at: Millis,
    /// Last change.
    pub updated_at: Millis,
    /// When it may run next.
    pub due_at: Millis,
    /// When it reached a final status.
    pub finished_at: Option<Millis>,
    /// Counted attempts allowed (since the last requeue).
    pub max_attempts: u32,
    /// Counted attempts made before the last requeue from the dead-letter queue.
    pub attempts_before_requeue: u32,
    /// Time allowed for one attempt.
    pub timeout_ms: u64,
    /// How it runs.
    pub handler: HandlerSnapshot,
    /// Circuit breaker target (URL host or handler name).
    pub target: String,
    /// Every attempt so far.
    pub attempts: Vec<Attempt>,
    /// The current lease, while running.
    pub lease: Option<Lease>,
    /// Result of the successful attempt (size-capped).
    pub result: Option<String>,
    /// Cancellation was asked for while it ran.
    pub cancel_requested: bool,
}

impl Record for Task {
    const VERSION: u8 = 1;
}

impl Task {
    /// Counted attempts since the last requeue.
    pub fn counted_attempts(&self) -> u32 {
        let counted = self.attempts.iter().filter(|a| a.counted).count() as u32;
        counted.saturating_sub(self.attempts_before_requeue)
    }

    /// The error class of the last failed attempt.
    pub fn last_error_class(&self) -> Option<&str> {
        self.attempts
            .iter()
            .rev()
            .find_map(|a| a.error_class.as_deref())
    }

    /// The stable id receivers de-duplicate on (`webhook-id`).
    pub fn webhook_id(&self) -> String {
        format!("msg_{}", self.id.simple())
    }
}

/// Persisted state of one circuit breaker.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct CircuitRecord {
    /// `closed`, `open` or `half_open`.
    pub state: String,
    /// When it last opened.
    pub opened_at: Option<Millis>,
    /// When an open circuit lets a trial through.
    pub open_until: Option<Millis>,
    /// Failure ratio that opened it.
    pub failure_ratio: f64,
}

impl Record for CircuitRecord {
    const VERSION: u8 = 1;
}
