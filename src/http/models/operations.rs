//! Wire models of the operator actions on the queue: retrying dead tasks by error class or
//! type, searching tasks, the scheduled tasks, task types with their pause, and the daily
//! processed and failed counts.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};
use utoipa::ToSchema;
use uuid::Uuid;

use super::Timestamp;
use super::tasks::{DrainedTask, Task};
use crate::queue;

/// `POST /api/v1/dlq/retry`: which dead tasks to run again (at least one filter).
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
#[schema(example = json!({"error_class": "http_5xx", "type": "notify", "max": 100}))]
pub struct DlqRetryRequest {
    /// Only tasks whose last error has this class (`http_5xx`, `timeout`, …).
    #[serde(default)]
    pub error_class: Option<String>,
    /// Only tasks of this type.
    #[serde(default, rename = "type")]
    pub task_type: Option<String>,
    /// At most this many in this batch (1 to 1000, default 100).
    #[serde(default)]
    #[schema(minimum = 1, maximum = 1000)]
    pub max: Option<usize>,
}

/// What one retry batch moved back to the queue.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct DlqRetried {
    /// How many tasks.
    pub count: usize,
    /// Whether matching dead tasks are left: call again for the next batch.
    pub more: bool,
    /// The tasks.
    pub tasks: Vec<DrainedTask>,
}

impl From<&queue::RetryBatch> for DlqRetried {
    fn from(b: &queue::RetryBatch) -> Self {
        DlqRetried {
            count: b.tasks.len(),
            more: b.more,
            tasks: b.tasks.iter().map(DrainedTask::from).collect(),
        }
    }
}

/// `GET /api/v1/tasks/search`: what matched and how far the scan went.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct SearchResult {
    /// The task with this id or idempotency key first (on the first page), then tasks whose
    /// payload contains the text, newest first.
    pub tasks: Vec<Task>,
    /// Task records the payload scan read.
    pub scanned: usize,
    /// `cursor` to scan older tasks (null when the scan reached the oldest task).
    pub next_cursor: Option<Uuid>,
}

impl From<&queue::SearchPage> for SearchResult {
    fn from(p: &queue::SearchPage) -> Self {
        SearchResult {
            tasks: p.tasks.iter().map(Task::from).collect(),
            scanned: p.scanned,
            next_cursor: p.next_cursor,
        }
    }
}

/// `GET /api/v1/tasks/scheduled`: waiting tasks with a later due time, soonest first.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct ScheduledList {
    /// The tasks (`due_at` says when each runs).
    pub tasks: Vec<Task>,
    /// `after` for the next page (null on the last page).
    pub next_after: Option<String>,
}

/// The `after` cursor of the scheduled list: `<due ms>_<task id>`.
pub fn scheduled_cursor((due, id): (i64, Uuid)) -> String {
    format!("{due}_{id}")
}

/// Reads a [`scheduled_cursor`]; the error says what is wrong.
pub fn parse_scheduled_cursor(raw: &str) -> Result<(i64, Uuid), String> {
    let bad = || format!("after: `{raw}` is not a cursor from `next_after`");
    let (due, id) = raw.split_once('_').ok_or_else(bad)?;
    Ok((
        due.parse().map_err(|_| bad())?,
        Uuid::parse_str(id).map_err(|_| bad())?,
    ))
}

impl From<&queue::ScheduledPage> for ScheduledList {
    fn from(p: &queue::ScheduledPage) -> Self {
        ScheduledList {
            tasks: p.tasks.iter().map(Task::from).collect(),
            next_after: p.next_after.map(scheduled_cursor),
        }
    }
}

/// A task type: whether it is paused and its tasks by status.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct TaskTypeInfo {
    /// The type.
    #[serde(rename = "type")]
    pub task_type: String,
    /// Whether a handler is configured for it.
    pub configured: bool,
    /// Whether it is paused: none of its tasks is leased.
    pub paused: bool,
    /// When it was paused.
    pub paused_at: Option<Timestamp>,
    /// Who paused it (a key id).
    pub paused_by: Option<String>,
    /// Its tasks by status (statuses without tasks left out).
    #[schema(example = json!({"queued": 12, "dead": 1}))]
    pub counts: BTreeMap<String, u64>,
}

impl From<&queue::TaskType> for TaskTypeInfo {
    fn from(t: &queue::TaskType) -> Self {
        TaskTypeInfo {
            task_type: t.name.clone(),
            configured: t.configured,
            paused: t.pause.is_some(),
            paused_at: t.pause.as_ref().map(|p| p.paused_at.into()),
            paused_by: t.pause.as_ref().map(|p| p.paused_by.clone()),
            counts: t
                .counts
                .iter()
                .map(|(s, n)| (s.as_str().to_string(), *n))
                .collect(),
        }
    }
}

/// `GET /api/v1/task-types`.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct TaskTypeList {
    /// Every type with a handler, tasks or a pause, by name.
    pub types: Vec<TaskTypeInfo>,
}

/// One task type.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct TaskTypeOne {
    /// The type.
    pub task_type: TaskTypeInfo,
}

/// Finished attempts of one UTC day.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct DayStats {
    /// The day, `YYYY-MM-DD` (UTC).
    #[schema(example = "2026-01-01")]
    pub date: String,
    /// Attempts that ended with a result (succeeded or failed).
    pub processed: u64,
    /// Of those, the ones that failed.
    pub failed: u64,
}

impl From<&queue::DayCount> for DayStats {
    fn from(d: &queue::DayCount) -> Self {
        DayStats {
            date: crate::clock::to_datetime(d.day_start)
                .format("%Y-%m-%d")
                .to_string(),
            processed: d.processed,
            failed: d.failed,
        }
    }
}

/// `GET /api/v1/stats/daily`: the last 30 days, oldest first.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct DailyStats {
    /// One entry per day, today last; days without attempts are 0.
    pub days: Vec<DayStats>,
}
