//! Operator actions on the queue over the API: retry a task now, delete a task, retry the dead
//! tasks of one error class or type, search tasks, the scheduled tasks and running one now,
//! pausing and resuming a task type, and the daily processed and failed counts.

use axum::Json;
use axum::extract::State;
use axum::http::StatusCode;
use serde::Deserialize;
use utoipa::IntoParams;

use super::AppState;
use super::error::ApiError;
use super::extract::{ApiJson, ApiPath, ApiQuery, Caller, IdPath, parse_id};
use super::models::ErrorBody;
use super::models::operations::{
    DailyStats, DayStats, DlqRetried, DlqRetryRequest, ScheduledList, SearchResult, TaskTypeInfo,
    TaskTypeList, TaskTypeOne, parse_scheduled_cursor,
};
use super::models::tasks::TaskOne;
use crate::queue::{DeadFilter, SEARCH_SCAN_MAX, SearchQuery};

/// Runs a dead or retrying task again now. Audited.
///
/// A dead task gets a fresh set of attempts; a retrying one skips the rest of its backoff.
#[utoipa::path(post, path = "/api/v1/tasks/{id}/retry", tag = "tasks", operation_id = "tasks_retry",
    params(("id" = Uuid, Path, description = "The task's id")),
    responses(
        (status = 200, description = "The task, due now", body = TaskOne),
        (status = 404, description = "No task with this id", body = ErrorBody),
        (status = 409, description = "The task is neither dead nor retrying", body = ErrorBody),
    ))]
pub(super) async fn retry(
    State(app): State<AppState>,
    Caller(principal): Caller,
    IdPath(id): IdPath,
) -> Result<Json<TaskOne>, ApiError> {
    let task = app.queue.retry_now(&principal.actor(), id).await?;
    Ok(Json(TaskOne {
        task: (&task).into(),
    }))
}

/// Deletes a task with its log lines, idempotency key and workflow steps. Audited.
#[utoipa::path(delete, path = "/api/v1/tasks/{id}", tag = "tasks", operation_id = "tasks_delete",
    params(("id" = Uuid, Path, description = "The task's id")),
    responses(
        (status = 204, description = "Deleted"),
        (status = 404, description = "No task with this id", body = ErrorBody),
        (status = 409, description = "The task is running under a lease (cancel it first)",
            body = ErrorBody),
    ))]
pub(super) async fn delete(
    State(app): State<AppState>,
    Caller(principal): Caller,
    IdPath(id): IdPath,
) -> Result<StatusCode, ApiError> {
    app.queue.delete(&principal.actor(), id).await?;
    Ok(StatusCode::NO_CONTENT)
}

/// Runs again the dead tasks of one error class or type, one bounded batch per call. Audited.
///
/// Oldest first; `more` says whether matching dead tasks are left for another call.
#[utoipa::path(post, path = "/api/v1/dlq/retry", tag = "dlq", operation_id = "dlq_retry",
    request_body(content = DlqRetryRequest, description = "Which dead tasks"),
    responses(
        (status = 200, description = "What moved back to the queue", body = DlqRetried),
        (status = 422, description = "No filter, or `max` out of range", body = ErrorBody),
    ))]
pub(super) async fn dlq_retry(
    State(app): State<AppState>,
    Caller(principal): Caller,
    ApiJson(body): ApiJson<DlqRetryRequest>,
) -> Result<Json<DlqRetried>, ApiError> {
    let filter = DeadFilter {
        error_class: body.error_class.filter(|c| !c.is_empty()),
        task_type: body.task_type.filter(|t| !t.is_empty()),
    };
    let batch = app
        .queue
        .dlq_retry(&principal.actor(), filter, body.max.unwrap_or(100))
        .await?;
    Ok(Json((&batch).into()))
}

#[derive(Deserialize, IntoParams)]
#[serde(deny_unknown_fields)]
#[into_params(parameter_in = Query)]
pub(super) struct SearchParams {
    /// A task id, an idempotency key, or text the payload contains.
    q: String,
    /// `next_cursor` of the previous answer: scan older tasks.
    #[param(value_type = Option<Uuid>)]
    cursor: Option<String>,
    /// Most task records to read (1 to 5000, default 1000).
    #[param(minimum = 1, maximum = 5000)]
    scan: Option<usize>,
    /// Most matches (1 to 200, default 50).
    #[param(minimum = 1, maximum = 200)]
    limit: Option<usize>,
}

/// Finds tasks by id, idempotency key or payload text.
///
/// The id and key match exactly; the payload scan reads at most `scan` task records, newest
/// first, and says how many it read and where to go on.
#[utoipa::path(get, path = "/api/v1/tasks/search", tag = "tasks", operation_id = "tasks_search",
    params(SearchParams),
    responses(
        (status = 200, description = "Matches and the extent of the scan", body = SearchResult),
        (status = 400, description = "`scan` or `limit` out of range, or a bad cursor",
            body = ErrorBody),
        (status = 422, description = "An empty `q`", body = ErrorBody),
    ))]
pub(super) async fn search(
    State(app): State<AppState>,
    ApiQuery(p): ApiQuery<SearchParams>,
) -> Result<Json<SearchResult>, ApiError> {
    let scan = p.scan.unwrap_or(1000);
    if !(1..=SEARCH_SCAN_MAX).contains(&scan) {
        return Err(ApiError::bad_request(format!(
            "scan: must be between 1 and {SEARCH_SCAN_MAX}, got {scan}"
        )));
    }
    let limit = p.limit.unwrap_or(50);
    if !(1..=200).contains(&limit) {
        return Err(ApiError::bad_request(format!(
            "limit: must be between 1 and 200, got {limit}"
        )));
    }
    let page = app
        .queue
        .search(SearchQuery {
            text: p.q,
            cursor: p.cursor.as_deref().map(parse_id).transpose()?,
            scan,
            limit,
        })
        .await?;
    Ok(Json((&page).into()))
}

#[derive(Deserialize, IntoParams)]
#[serde(deny_unknown_fields)]
#[into_params(parameter_in = Query)]
pub(super) struct ScheduledParams {
    /// `next_after` of the previous page.
    after: Option<String>,
    /// At most this many (1 to 1000, default 50).
    #[param(minimum = 1, maximum = 1000)]
    limit: Option<usize>,
}

/// Waiting tasks due later (a `run_at`, a retry backoff, an open circuit), soonest first.
#[utoipa::path(get, path = "/api/v1/tasks/scheduled", tag = "tasks", operation_id = "tasks_scheduled",
    params(ScheduledParams),
    responses(
        (status = 200, description = "A page of scheduled tasks", body = ScheduledList),
        (status = 400, description = "`limit` out of range or a bad cursor", body = ErrorBody),
    ))]
pub(super) async fn scheduled(
    State(app): State<AppState>,
    ApiQuery(p): ApiQuery<ScheduledParams>,
) -> Result<Json<ScheduledList>, ApiError> {
    let limit = p.limit.unwrap_or(50);
    if !(1..=1000).contains(&limit) {
        return Err(ApiError::bad_request(format!(
            "limit: must be between 1 and 1000, got {limit}"
        )));
    }
    let after = p
        .after
        .as_deref()
        .map(parse_scheduled_cursor)
        .transpose()
        .map_err(ApiError::bad_request)?;
    let page = app.queue.scheduled(after, limit).await?;
    Ok(Json((&page).into()))
}

/// Makes a scheduled task due now. Audited.
#[utoipa::path(post, path = "/api/v1/tasks/{id}/run-now", tag = "tasks", operation_id = "tasks_run_now",
    params(("id" = Uuid, Path, description = "The task's id")),
    responses(
        (status = 200, description = "The task, due now", body = TaskOne),
        (status = 404, description = "No task with this id", body = ErrorBody),
        (status = 409, description = "The task is not scheduled for later", body = ErrorBody),
    ))]
pub(super) async fn run_now(
    State(app): State<AppState>,
    Caller(principal): Caller,
    IdPath(id): IdPath,
) -> Result<Json<TaskOne>, ApiError> {
    let task = app.queue.run_now(&principal.actor(), id).await?;
    Ok(Json(TaskOne {
        task: (&task).into(),
    }))
}

/// Every task type with its pause and its tasks by status.
#[utoipa::path(get, path = "/api/v1/task-types", tag = "tasks", operation_id = "task_types_list",
    responses((status = 200, description = "The task types", body = TaskTypeList)))]
pub(super) async fn task_types(
    State(app): State<AppState>,
) -> Result<Json<TaskTypeList>, ApiError> {
    let types = app.queue.task_types().await?;
    Ok(Json(TaskTypeList {
        types: types.iter().map(TaskTypeInfo::from).collect(),
    }))
}

/// Pauses a task type: its tasks keep waiting and none is leased until it is resumed. Audited.
#[utoipa::path(post, path = "/api/v1/task-types/{type}/pause", tag = "tasks",
    operation_id = "task_types_pause",
    params(("type" = String, Path, description = "The task type")),
    responses(
        (status = 200, description = "The type, paused", body = TaskTypeOne),
        (status = 404, description = "No such task type", body = ErrorBody),
        (status = 409, description = "The type is already paused", body = ErrorBody),
    ))]
pub(super) async fn pause_type(
    State(app): State<AppState>,
    Caller(principal): Caller,
    ApiPath(name): ApiPath<String>,
) -> Result<Json<TaskTypeOne>, ApiError> {
    let task_type = app.queue.pause_type(&principal.actor(), &name).await?;
    Ok(Json(TaskTypeOne {
        task_type: (&task_type).into(),
    }))
}

/// Resumes a paused task type: its waiting tasks are leased again. Audited.
#[utoipa::path(post, path = "/api/v1/task-types/{type}/resume", tag = "tasks",
    operation_id = "task_types_resume",
    params(("type" = String, Path, description = "The task type")),
    responses(
        (status = 200, description = "The type, running again", body = TaskTypeOne),
        (status = 404, description = "No such task type", body = ErrorBody),
        (status = 409, description = "The type is not paused", body = ErrorBody),
    ))]
pub(super) async fn resume_type(
    State(app): State<AppState>,
    Caller(principal): Caller,
    ApiPath(name): ApiPath<String>,
) -> Result<Json<TaskTypeOne>, ApiError> {
    let task_type = app.queue.resume_type(&principal.actor(), &name).await?;
    Ok(Json(TaskTypeOne {
        task_type: (&task_type).into(),
    }))
}

/// Processed and failed attempts per UTC day for the last 30 days.
///
/// Processed counts attempts that succeeded or failed (deferred, interrupted and cancelled
/// attempts are not counted); failed counts the failed ones among them.
#[utoipa::path(get, path = "/api/v1/stats/daily", tag = "tasks", operation_id = "stats_daily",
    responses((status = 200, description = "30 days, oldest first", body = DailyStats)))]
pub(super) async fn daily(State(app): State<AppState>) -> Result<Json<DailyStats>, ApiError> {
    let days = app.queue.daily_counts().await?;
    Ok(Json(DailyStats {
        days: days.iter().map(DayStats::from).collect(),
    }))
}
