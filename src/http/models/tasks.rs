//! Wire models of the task queue: tasks (never the handler's secrets), submissions, logs, runs,
//! the dead-letter queue, circuit breakers and the task stream's events.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};
use serde_json::Value;
use utoipa::ToSchema;
use uuid::Uuid;

use super::{Timestamp, time_opt};
use crate::clock::Millis;
use crate::config::redact_url;
use crate::exec::circuit::CircuitView;
use crate::exec::{self, HandlerSnapshot};
use crate::queue;

/// Where a task is in its life.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "lowercase")]
pub enum TaskStatus {
    /// Waiting to run.
    Queued,
    /// An attempt is running.
    Running,
    /// Done.
    Succeeded,
    /// Waiting for another attempt after a failure.
    Retrying,
    /// Out of attempts: in the dead-letter queue.
    Dead,
    /// Cancelled.
    Cancelled,
}

impl From<queue::Status> for TaskStatus {
    fn from(s: queue::Status) -> Self {
        match s {
            queue::Status::Queued => TaskStatus::Queued,
            queue::Status::Running => TaskStatus::Running,
            queue::Status::Succeeded => TaskStatus::Succeeded,
            queue::Status::Retrying => TaskStatus::Retrying,
            queue::Status::Dead => TaskStatus::Dead,
            queue::Status::Cancelled => TaskStatus::Cancelled,
        }
    }
}

/// What runs a task, without its secrets (tokens, signing secrets, API keys).
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
#[serde(tag = "kind", rename_all = "lowercase")]
pub enum TaskHandler {
    /// An HTTP request (a webhook).
    Http {
        /// The URL.
        url: String,
        /// The method.
        method: String,
    },
    /// A local program.
    Command {
        /// The program.
        program: String,
        /// Its arguments.
        args: Vec<String>,
    },
    /// A call to an LLM provider.
    Llm {
        /// The provider.
        provider: String,
        /// The model.
        model: String,
    },
    /// Steps run in order.
    Workflow {
        /// The steps.
        steps: Vec<WorkflowStep>,
    },
    /// The stored handler snapshot could not be read.
    Unreadable {
        /// Why.
        error: String,
    },
}

/// One step of a workflow handler.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct WorkflowStep {
    /// The step's name.
    pub name: String,
    /// The handler type it runs.
    pub handler: String,
}

impl TaskHandler {
    /// The handler of `task`, from its stored snapshot.
    pub fn of(task: &queue::Task) -> TaskHandler {
        match HandlerSnapshot::of(task) {
            Ok(snapshot) => (&snapshot).into(),
            Err(e) => TaskHandler::Unreadable {
                error: e.to_string(),
            },
        }
    }
}

impl From<&HandlerSnapshot> for TaskHandler {
    fn from(h: &HandlerSnapshot) -> Self {
        match h {
            HandlerSnapshot::Http { url, method, .. } => TaskHandler::Http {
                url: redact_url(url),
                method: method.clone(),
            },
            HandlerSnapshot::Command { program, args, .. } => TaskHandler::Command {
                program: program.clone(),
                args: args.clone(),
            },
            HandlerSnapshot::Llm {
                provider, model, ..
            } => TaskHandler::Llm {
                provider: provider.clone(),
                model: model.clone(),
            },
            HandlerSnapshot::Workflow { steps } => TaskHandler::Workflow {
                steps: steps
                    .iter()
                    .map(|s| WorkflowStep {
                        name: s.name.clone(),
                        handler: s.handler_type.clone(),
                    })
                    .collect(),
            },
        }
    }
}

/// What the target answered to an attempt.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct Receipt {
    /// HTTP status (null for non-HTTP handlers).
    pub status: Option<u16>,
    /// How long the attempt took.
    pub latency_ms: u64,
    /// The start of the answer's body.
    pub body_head: String,
}

impl From<&queue::Receipt> for Receipt {
    fn from(r: &queue::Receipt) -> Self {
        Receipt {
            status: r.status,
            latency_ms: r.latency_ms,
            body_head: r.body_head.clone(),
        }
    }
}

/// One attempt of a task.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct Attempt {
    /// Its number, from 1.
    pub number: u32,
    /// When it started.
    pub started_at: Timestamp,
    /// When it ended.
    pub finished_at: Option<Timestamp>,
    /// `running`, `succeeded`, `failed`, `interrupted`, `deferred` or `cancelled`.
    #[schema(example = "succeeded")]
    pub outcome: String,
    /// Class of its error, e.g. `http_5xx`, `timeout`.
    pub error_class: Option<String>,
    /// Its error.
    pub error_message: Option<String>,
    /// Whether it counted against `max_attempts`.
    pub counted: bool,
    /// What the target answered.
    pub receipt: Option<Receipt>,
}

fn outcome(a: &queue::Attempt) -> String {
    if a.outcome.is_empty() {
        "running".to_string()
    } else {
        a.outcome.clone()
    }
}

impl From<&queue::Attempt> for Attempt {
    fn from(a: &queue::Attempt) -> Self {
        Attempt {
            number: a.number,
            started_at: a.started_at.into(),
            finished_at: time_opt(a.finished_at),
            outcome: outcome(a),
            error_class: a.error_class.clone(),
            error_message: a.error_message.clone(),
            counted: a.counted,
            receipt: a.receipt.as_ref().map(Receipt::from),
        }
    }
}

/// A task as the API shows it.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct Task {
    /// Id (time-ordered).
    pub id: Uuid,
    /// Its type (a configured handler).
    #[serde(rename = "type")]
    #[schema(example = "notify")]
    pub task_type: String,
    /// Where it is in its life.
    pub status: TaskStatus,
    /// Lower runs first.
    pub priority: u32,
    /// The payload as submitted.
    pub payload: Value,
    /// The idempotency key it was submitted with.
    pub idempotency_key: Option<String>,
    /// The Standard Webhooks id of its deliveries.
    #[schema(example = "msg_0194d3a27b1c7d3e9f005a1b2c3d4e5f")]
    pub webhook_id: String,
    /// Who submitted it.
    pub created_by: String,
    /// When it was submitted.
    pub created_at: Timestamp,
    /// When it last changed.
    pub updated_at: Timestamp,
    /// When it is (or was) due.
    pub due_at: Timestamp,
    /// When it ended.
    pub finished_at: Option<Timestamp>,
    /// Attempts allowed.
    pub max_attempts: u32,
    /// Attempts counted so far.
    pub attempts_used: u32,
    /// Time limit of one attempt.
    pub timeout_s: u64,
    /// Its circuit-breaker target, e.g. `http:example.com`.
    pub target: String,
    /// What runs it.
    pub handler: TaskHandler,
    /// Every attempt, oldest first.
    pub attempts: Vec<Attempt>,
    /// The result text of a successful attempt.
    pub result: Option<String>,
    /// The answer was longer than `queue.result_max_bytes`: `result` holds its first bytes (the
    /// tail of a command's stdout).
    pub result_truncated: bool,
    /// The answer was not UTF-8: `result` is its bytes in base64.
    pub result_base64: bool,
    /// Whether a cancellation was asked for.
    pub cancel_requested: bool,
    /// What a queued or retrying task waits on besides its due time (an open circuit, a spent
    /// budget, a concurrency limit), and when it will be tried again; null otherwise.
    pub waiting: Option<Waiting>,
}

/// What a waiting task waits on.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
#[schema(example = json!({"reason": "circuit_open", "detail": "the circuit handler:notify is open", "until": "2026-01-01T00:10:00.000Z"}))]
pub struct Waiting {
    /// `circuit_open`, `budget_exceeded`, `deferred` or `concurrency_limit`.
    pub reason: String,
    /// The same in words, naming the circuit, provider or type.
    pub detail: String,
    /// When it will be tried again; null when that waits for other tasks to finish.
    pub until: Option<Timestamp>,
}

impl From<&exec::Waiting> for Waiting {
    fn from(w: &exec::Waiting) -> Self {
        Waiting {
            reason: w.reason.to_string(),
            detail: w.detail.clone(),
            until: time_opt(w.until),
        }
    }
}

impl Task {
    /// The task as the API shows it, with what it waits on (asked of the dispatcher now).
    pub fn with_waiting(t: &queue::Task, dispatcher: &exec::Dispatcher, now: Millis) -> Task {
        Task {
            waiting: dispatcher.waiting(t, now).as_ref().map(Waiting::from),
            ..Task::from(t)
        }
    }
}

impl From<&queue::Task> for Task {
    fn from(t: &queue::Task) -> Self {
        Task {
            id: t.id,
            task_type: t.task_type.clone(),
            status: t.status.into(),
            priority: t.priority,
            payload: serde_json::from_str::<Value>(&t.payload).unwrap_or(Value::Null),
            idempotency_key: t.idempotency_key.clone(),
            webhook_id: t.webhook_id(),
            created_by: t.created_by.clone(),
            created_at: t.created_at.into(),
            updated_at: t.updated_at.into(),
            due_at: t.due_at.into(),
            finished_at: time_opt(t.finished_at),
            max_attempts: t.max_attempts,
            attempts_used: t.counted_attempts(),
            timeout_s: t.timeout_ms / 1000,
            target: t.target.clone(),
            handler: TaskHandler::of(t),
            attempts: t.attempts.iter().map(Attempt::from).collect(),
            result: t.result.clone(),
            result_truncated: t.result_form.truncated,
            result_base64: t.result_form.base64,
            cancel_requested: t.cancel_requested,
            waiting: None,
        }
    }
}

/// `POST /api/v1/tasks`: a task to run.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
#[schema(example = json!({
    "type": "notify", "payload": {"to": "ops@example.com"}, "priority": 10,
    "idempotency_key": "order-1234", "run_at": "2026-01-01T12:00:00Z", "max_attempts": 5,
    "timeout_s": 30
}))]
pub struct SubmitTask {
    /// The task type: a configured handler.
    #[serde(rename = "type")]
    pub task_type: String,
    /// Any JSON; handed to the handler.
    #[serde(default)]
    pub payload: Value,
    /// Lower runs first (default 100).
    #[serde(default)]
    pub priority: Option<u32>,
    /// Submitting the same key again returns the first task (200) instead of a new one.
    #[serde(default)]
    pub idempotency_key: Option<String>,
    /// When to run it (RFC 3339); now when absent.
    #[serde(default)]
    pub run_at: Option<String>,
    /// Attempts allowed (default: the handler's or the queue's).
    #[serde(default)]
    pub max_attempts: Option<u32>,
    /// Time limit of one attempt in seconds (default: the handler's).
    #[serde(default)]
    pub timeout_s: Option<u64>,
}

/// The answer to a submission: 201 for a new task, 200 for an idempotent repeat.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
#[schema(example = json!({"id": "0194d3a2-7b1c-7d3e-9f00-5a1b2c3d4e5f", "status": "queued", "created": true}))]
pub struct Submitted {
    /// The task's id.
    pub id: Uuid,
    /// Its status.
    pub status: TaskStatus,
    /// Whether this call created it.
    pub created: bool,
}

/// One task.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct TaskOne {
    /// The task.
    pub task: Task,
}

/// A page of tasks, newest first.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct TaskList {
    /// The tasks.
    pub tasks: Vec<Task>,
    /// `cursor` for the next page (null on the last page).
    pub next_cursor: Option<Uuid>,
}

/// `GET /api/v1/tasks/{id}/logs`.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct TaskLogs {
    /// At most `limit` lines from `from` on.
    pub lines: Vec<LogLine>,
    /// `from` for the next page (null when these are the last lines so far).
    pub next_from: Option<u32>,
}

/// One log line of a task.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct LogLine {
    /// Its number, from 0.
    pub n: u32,
    /// The attempt that wrote it (null for lines kept from before attempts were recorded).
    pub attempt: Option<u32>,
    /// The text.
    pub line: String,
}

/// One attempt over all tasks.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct Run {
    /// The task.
    pub task_id: Uuid,
    /// Its type.
    #[serde(rename = "type")]
    pub task_type: String,
    /// The attempt's number.
    pub attempt: u32,
    /// `running`, `succeeded`, `failed`, `interrupted`, `deferred` or `cancelled`.
    pub outcome: String,
    /// When it started.
    pub started_at: Timestamp,
    /// When it ended.
    pub finished_at: Option<Timestamp>,
    /// Class of its error.
    pub error_class: Option<String>,
    /// Its error.
    pub error_message: Option<String>,
    /// HTTP status the target answered.
    pub http_status: Option<u16>,
    /// How long it took.
    pub latency_ms: Option<u64>,
}

impl Run {
    /// The run of attempt `a` of `task`.
    pub fn of(task: &queue::Task, a: &queue::Attempt) -> Run {
        Run {
            task_id: task.id,
            task_type: task.task_type.clone(),
            attempt: a.number,
            outcome: outcome(a),
            started_at: a.started_at.into(),
            finished_at: time_opt(a.finished_at),
            error_class: a.error_class.clone(),
            error_message: a.error_message.clone(),
            http_status: a.receipt.as_ref().and_then(|r| r.status),
            latency_ms: a.receipt.as_ref().map(|r| r.latency_ms),
        }
    }
}

/// `GET /api/v1/runs`: recent attempts, newest first.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct Runs {
    /// The attempts.
    pub runs: Vec<Run>,
}

/// `GET /api/v1/dlq/stats`.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
#[schema(example = json!({"total": 3, "by_type": {"notify": 3}, "by_error_class": {"http_5xx": 2, "timeout": 1}, "oldest_age_seconds": 5400}))]
pub struct DlqStats {
    /// Dead tasks.
    pub total: u64,
    /// By task type.
    pub by_type: BTreeMap<String, u64>,
    /// By the class of their last error.
    pub by_error_class: BTreeMap<String, u64>,
    /// Age of the oldest.
    pub oldest_age_seconds: Option<u64>,
}

impl From<queue::DlqStats> for DlqStats {
    fn from(s: queue::DlqStats) -> Self {
        DlqStats {
            total: s.total,
            by_type: s.by_type,
            by_error_class: s.by_error_class,
            oldest_age_seconds: s.oldest_age_seconds,
        }
    }
}

/// `POST /api/v1/dlq/drain`: moves dead tasks back to the queue.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
#[schema(example = json!({"filter_type": "notify", "max": 100, "dry_run": true}))]
pub struct DrainRequest {
    /// Only tasks of this type.
    #[serde(default)]
    pub filter_type: Option<String>,
    /// At most this many (1 to 10000).
    #[schema(minimum = 1, maximum = 10000)]
    pub max: usize,
    /// Only say which tasks would move.
    #[serde(default)]
    pub dry_run: bool,
}

/// What a drain moved (or would move).
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct Drained {
    /// Whether nothing was moved.
    pub dry_run: bool,
    /// How many tasks.
    pub count: usize,
    /// The tasks.
    pub tasks: Vec<DrainedTask>,
}

/// A task a drain moved.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct DrainedTask {
    /// Id.
    pub id: Uuid,
    /// Type.
    #[serde(rename = "type")]
    pub task_type: String,
    /// Class of its last error.
    pub error_class: Option<String>,
}

impl From<&queue::Task> for DrainedTask {
    fn from(t: &queue::Task) -> Self {
        DrainedTask {
            id: t.id,
            task_type: t.task_type.clone(),
            error_class: t.last_error_class().map(str::to_string),
        }
    }
}

/// A circuit breaker's state.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum CircuitState {
    /// Attempts pass.
    Closed,
    /// No attempts until `open_until`.
    Open,
    /// One trial attempt may pass.
    HalfOpen,
}

impl CircuitState {
    fn of(state: &str) -> CircuitState {
        match state {
            "open" => CircuitState::Open,
            "half_open" => CircuitState::HalfOpen,
            _ => CircuitState::Closed,
        }
    }
}

/// A circuit breaker of one target.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
#[schema(example = json!({"name": "handler:notify", "state": "open", "failure_ratio": 0.8, "window_volume": 20, "opened_at": "2026-01-01T00:00:00.000Z", "open_until": "2026-01-01T00:00:30.000Z", "tripped_failure_ratio": 0.8, "tripped_volume": 20, "tripped_by": [{"at": "2026-01-01T00:00:00.000Z", "healthy": false, "class": "http_5xx"}]}))]
pub struct Circuit {
    /// Target name (`handler:<type>`, `dispatch:<endpoint>`, `http:<host>` for `per_host`,
    /// `command:<type>`, `llm:<provider>`).
    pub name: String,
    /// Its state.
    pub state: CircuitState,
    /// Failure ratio over the current window.
    pub failure_ratio: f64,
    /// Outcomes in the current window.
    pub window_volume: usize,
    /// When it last opened.
    pub opened_at: Option<Timestamp>,
    /// When an open circuit lets a trial through.
    pub open_until: Option<Timestamp>,
    /// Failure ratio of the window that last opened it (0 if it never opened).
    pub tripped_failure_ratio: f64,
    /// Outcomes in that window.
    pub tripped_volume: u64,
    /// The latest outcomes of that window, oldest first: why it opened.
    pub tripped_by: Vec<CircuitOutcome>,
}

/// One outcome a circuit breaker counted.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct CircuitOutcome {
    /// When the attempt ended.
    pub at: Timestamp,
    /// Whether it counted as healthy.
    pub healthy: bool,
    /// Error class of a failure (`http_5xx`, `timeout`, …).
    pub class: Option<String>,
}

impl From<&CircuitView> for Circuit {
    fn from(c: &CircuitView) -> Self {
        Circuit {
            name: c.name.clone(),
            state: CircuitState::of(c.state),
            failure_ratio: c.failure_ratio,
            window_volume: c.window_volume,
            opened_at: time_opt(c.opened_at),
            open_until: time_opt(c.open_until),
            tripped_failure_ratio: c.tripped_failure_ratio,
            tripped_volume: c.tripped_volume,
            tripped_by: c
                .tripped_by
                .iter()
                .map(|o| CircuitOutcome {
                    at: Timestamp::from(o.at),
                    healthy: o.healthy,
                    class: o.class.clone(),
                })
                .collect(),
        }
    }
}

/// `GET /api/v1/circuits`.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct CircuitList {
    /// Every circuit.
    pub circuits: Vec<Circuit>,
}

/// One circuit.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct CircuitOne {
    /// The circuit.
    pub circuit: Circuit,
}

/// Data of a `status` event of the task stream.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct StreamStatus {
    /// The task.
    pub id: Uuid,
    /// Its new status.
    pub status: TaskStatus,
    /// Attempts counted so far.
    pub attempts_used: u32,
}

/// Data of the `end` event of the task stream.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct StreamEnd {
    /// The task.
    pub id: Uuid,
    /// Its final status.
    pub status: TaskStatus,
    /// Its result text.
    pub result: Option<String>,
}
