//! Wire models of the operator actions on the queue: retrying dead tasks by error class or
//! type, searching tasks, and the scheduled tasks.

use serde::{Deserialize, Serialize};
use utoipa::ToSchema;
use uuid::Uuid;

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
