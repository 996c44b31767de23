//! The queue's model: the stored shapes (tasks, attempts, receipts, leases and the opaque handler
//! snapshot a task carries) and the shapes of its API (new tasks, outcomes, filters, pages).
//! Version-1 task records held the snapshot inline; they are read through [`TaskV1`] and
//! upgraded. Version-2 records lack the result's form (read as a whole text result).

use std::collections::HashMap;

use serde::{Deserialize, Serialize};
use serde_json::Value;
use uuid::Uuid;

use crate::clock::Millis;
use crate::store::codec::{self, Record};

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

/// How a task runs, recorded by the room that runs it when the task is enqueued: an opaque
/// versioned record (`[version][postcard]`) that the queue stores and hands back unread.
///
/// Stored as a byte string (postcard: length, then the bytes), which is the same encoding as a
/// sequence of `u8`, written and read in one piece.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Snapshot(Vec<u8>);

impl Serialize for Snapshot {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.serialize_bytes(&self.0)
    }
}

impl<'de> Deserialize<'de> for Snapshot {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct Bytes;
        impl<'de> serde::de::Visitor<'de> for Bytes {
            type Value = Snapshot;
            fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
                f.write_str("the bytes of a handler snapshot")
            }
            fn visit_bytes<E: serde::de::Error>(self, v: &[u8]) -> Result<Snapshot, E> {
                Ok(Snapshot(v.to_vec()))
            }
            fn visit_byte_buf<E: serde::de::Error>(self, v: Vec<u8>) -> Result<Snapshot, E> {
                Ok(Snapshot(v))
            }
            fn visit_seq<A: serde::de::SeqAccess<'de>>(
                self,
                mut seq: A,
            ) -> Result<Snapshot, A::Error> {
                let mut bytes = Vec::with_capacity(seq.size_hint().unwrap_or(0));
                while let Some(b) = seq.next_element::<u8>()? {
                    bytes.push(b);
                }
                Ok(Snapshot(bytes))
            }
        }
        deserializer.deserialize_byte_buf(Bytes)
    }
}

impl Snapshot {
    /// The snapshot of `record`.
    pub fn encode<T: Record>(record: &T) -> Snapshot {
        Snapshot(codec::encode(record))
    }

    /// A snapshot from its stored bytes.
    pub fn from_bytes(bytes: Vec<u8>) -> Snapshot {
        Snapshot(bytes)
    }

    /// The stored bytes.
    pub fn as_bytes(&self) -> &[u8] {
        &self.0
    }

    /// Decodes the record; the error says why it is unreadable.
    pub fn decode<T: Record>(&self) -> Result<T, String> {
        let (&version, body) = self
            .0
            .split_first()
            .ok_or_else(|| "empty handler snapshot".to_string())?;
        T::decode_versioned(version, body)
    }
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
    /// How it runs, as the room that runs it recorded it at enqueue.
    pub handler: Snapshot,
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
    /// How `result` holds the answer: whole or cut, text or base64.
    pub result_form: ResultForm,
}

/// How a stored result holds what the executor got.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ResultForm {
    /// The answer was longer than `queue.result_max_bytes`: only part of it is kept.
    pub truncated: bool,
    /// The answer was not UTF-8: the result is its bytes in base64.
    pub base64: bool,
}

/// The version before [`ResultForm`].
const TASK_V2: u8 = 2;

impl Record for Task {
    const VERSION: u8 = 3;

    fn decode_versioned(version: u8, body: &[u8]) -> Result<Self, String> {
        match version {
            Self::VERSION => postcard::from_bytes(body).map_err(|e| e.to_string()),
            // A version-2 body is a version-3 body without the trailing `result_form`: its two
            // `false` flags are one zero byte each in postcard.
            TASK_V2 => {
                let mut upgraded = Vec::with_capacity(body.len() + 2);
                upgraded.extend_from_slice(body);
                upgraded.extend_from_slice(&[0, 0]);
                postcard::from_bytes(&upgraded).map_err(|e| e.to_string())
            }
            other => Err(format!(
                "unknown task record version {other} (this keel writes version {})",
                Self::VERSION
            )),
        }
    }
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

/// A task to enqueue.
#[derive(Debug, Clone, Default)]
pub struct NewTask {
    /// Task type; must have a configured handler.
    pub task_type: String,
    /// Opaque JSON payload.
    pub payload: Value,
    /// Lower runs first (default 100).
    pub priority: Option<u32>,
    /// Returns the existing task when seen before within the retention window.
    pub idempotency_key: Option<String>,
    /// Earliest start (epoch ms).
    pub run_at: Option<Millis>,
    /// Attempts before the task is dead.
    pub max_attempts: Option<u32>,
    /// Time allowed per attempt, in seconds.
    pub timeout_s: Option<u64>,
}

/// What `enqueue` did.
#[derive(Debug, Clone)]
pub struct Enqueued {
    /// The task (new, or the one the idempotency key already named).
    pub task: Task,
    /// Whether it was created by this call.
    pub created: bool,
}

/// How an attempt ended, as reported by an executor.
#[derive(Debug, Clone, PartialEq)]
pub enum Outcome {
    /// Done; the result is stored (size-capped).
    Succeeded {
        /// Result text.
        result: Option<String>,
        /// Whether the executor cut the answer or kept it as base64.
        form: ResultForm,
        /// What the target answered.
        receipt: Option<Receipt>,
    },
    /// Failed in a way worth retrying.
    Retry {
        /// Error class.
        class: String,
        /// Message.
        message: String,
        /// The target asked to wait this long (ms).
        retry_after_ms: Option<u64>,
        /// What the target answered.
        receipt: Option<Receipt>,
    },
    /// Failed for good: straight to the dead-letter queue.
    Fail {
        /// Error class.
        class: String,
        /// Message.
        message: String,
        /// What the target answered.
        receipt: Option<Receipt>,
    },
    /// Not run now (an open circuit, a spent budget): wait until then without using an attempt.
    Defer {
        /// Error class shown on the attempt (`deferred`, `budget_exceeded`).
        class: String,
        /// Why.
        reason: String,
        /// When to try again (epoch ms).
        until: Millis,
    },
    /// Stopped because cancellation was asked for.
    Cancelled,
    /// Stopped by shutdown: runs again after restart without using an attempt.
    Interrupted,
}

/// Whether a completion was applied.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Completion {
    /// The task moved on.
    Applied(Status),
    /// The lease was no longer held (expired and taken back): the report was ignored.
    LeaseLost,
}

/// Filter for listing tasks.
#[derive(Debug, Clone, Default)]
pub struct TaskFilter {
    /// Only this status.
    pub status: Option<Status>,
    /// Only this type.
    pub task_type: Option<String>,
    /// At most this many (1..=1000).
    pub limit: usize,
    /// Continue after this id (from `next_cursor`).
    pub cursor: Option<Uuid>,
}

/// A page of tasks.
#[derive(Debug, Clone)]
pub struct TaskPage {
    /// Tasks, newest first.
    pub tasks: Vec<Task>,
    /// Pass as `cursor` for the next page.
    pub next_cursor: Option<Uuid>,
}

/// Options for leasing.
#[derive(Debug, Clone, Default)]
pub struct LeaseRequest {
    /// Most tasks to lease.
    pub max: usize,
    /// Task types at their concurrency limit, with the room left for others (0 = none).
    pub type_room: HashMap<String, usize>,
    /// Targets whose circuit is open, with the time their tasks may be tried again.
    pub blocked_targets: HashMap<String, Millis>,
}

/// Why a task type is paused: stored per paused type; the dispatcher leases none of its tasks.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TypePause {
    /// When it was paused.
    pub paused_at: Millis,
    /// Who paused it (the audit actor).
    pub paused_by: String,
}

impl Record for TypePause {
    const VERSION: u8 = 1;
}

/// A task type as operators see it: whether it is paused and its tasks by status.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TaskType {
    /// The type.
    pub name: String,
    /// Whether a handler is configured for it.
    pub configured: bool,
    /// The pause, when paused.
    pub pause: Option<TypePause>,
    /// Its tasks by status (statuses without tasks left out).
    pub counts: Vec<(Status, u64)>,
}

/// Finished attempts of one UTC day.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct DayCount {
    /// The day's start (epoch ms, UTC midnight).
    pub day_start: Millis,
    /// Attempts that ended with a result (succeeded or failed).
    pub processed: u64,
    /// Of those, the ones that failed.
    pub failed: u64,
}

/// A version-1 task record: the fields of [`Task`] with the handler snapshot inline (its postcard
/// body, in the place of [`Task::handler`]). Only the room that runs tasks knows where the inline
/// snapshot ends, so the record is read in three parts.
pub(super) struct TaskV1;

/// The fields of a version-1 task record before its inline handler snapshot.
#[derive(Deserialize)]
struct TaskV1Head {
    id: Uuid,
    task_type: String,
    payload: String,
    priority: u32,
    idempotency_key: Option<String>,
    status: Status,
    created_by: String,
    created_at: Millis,
    updated_at: Millis,
    due_at: Millis,
    finished_at: Option<Millis>,
    max_attempts: u32,
    attempts_before_requeue: u32,
    timeout_ms: u64,
}

/// The fields of a version-1 task record after its inline handler snapshot.
#[derive(Deserialize)]
struct TaskV1Tail {
    target: String,
    attempts: Vec<Attempt>,
    lease: Option<Lease>,
    result: Option<String>,
    cancel_requested: bool,
}

impl TaskV1 {
    /// The version.
    pub(super) const VERSION: u8 = 1;

    /// Reads a version-1 body (after its version byte) as a current task; `split_inline`
    /// separates the inline handler snapshot from the fields after it.
    pub(super) fn upgrade(
        body: &[u8],
        split_inline: impl FnOnce(&[u8]) -> Result<(Snapshot, &[u8]), String>,
    ) -> Result<Task, String> {
        let (head, rest) =
            postcard::take_from_bytes::<TaskV1Head>(body).map_err(|e| e.to_string())?;
        let (handler, rest) = split_inline(rest)?;
        let tail: TaskV1Tail = postcard::from_bytes(rest).map_err(|e| e.to_string())?;
        Ok(Task {
            id: head.id,
            task_type: head.task_type,
            payload: head.payload,
            priority: head.priority,
            idempotency_key: head.idempotency_key,
            status: head.status,
            created_by: head.created_by,
            created_at: head.created_at,
            updated_at: head.updated_at,
            due_at: head.due_at,
            finished_at: head.finished_at,
            max_attempts: head.max_attempts,
            attempts_before_requeue: head.attempts_before_requeue,
            timeout_ms: head.timeout_ms,
            handler,
            target: tail.target,
            attempts: tail.attempts,
            lease: tail.lease,
            result: tail.result,
            cancel_requested: tail.cancel_requested,
            result_form: ResultForm::default(),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A version-2 record (the current body without `result_form`) reads as a whole text result.
    #[test]
    fn version_2_tasks_read_with_a_whole_text_result() {
        let task = Task {
            id: Uuid::now_v7(),
            task_type: "t".into(),
            payload: "{}".into(),
            priority: 100,
            idempotency_key: Some("k".into()),
            status: Status::Succeeded,
            created_by: "admin".into(),
            created_at: 1,
            updated_at: 2,
            due_at: 1,
            finished_at: Some(2),
            max_attempts: 3,
            attempts_before_requeue: 0,
            timeout_ms: 1000,
            handler: Snapshot::from_bytes(vec![1, 2, 3]),
            target: "x".into(),
            attempts: Vec::new(),
            lease: None,
            result: Some("done".into()),
            cancel_requested: false,
            result_form: ResultForm::default(),
        };
        let current = codec::encode(&task);
        assert_eq!(current[0], 3);
        let v2_body = &current[1..current.len() - 2];
        assert_eq!(Task::decode_versioned(TASK_V2, v2_body), Ok(task.clone()));
        let marked = Task {
            result_form: ResultForm {
                truncated: true,
                base64: true,
            },
            ..task
        };
        let bytes = codec::encode(&marked);
        assert_eq!(Task::decode_versioned(3, &bytes[1..]), Ok(marked));
    }
}
