//! Task queue API: submit, inspect, list and cancel tasks, recent runs, live task streams
//! (Server-Sent Events), the dead-letter queue and circuit breakers.

use std::convert::Infallible;
use std::time::Duration;

use axum::Json;
use axum::extract::State;
use axum::http::StatusCode;
use axum::response::sse::{Event, KeepAlive, Sse};
use serde::Deserialize;
use utoipa::IntoParams;

use super::AppState;
use super::error::ApiError;
use super::extract::{ApiJson, ApiPath, ApiQuery, Caller, IdPath, parse_id};
use super::models::ErrorBody;
use super::models::tasks::{
    self as models, Circuit, CircuitList, CircuitOne, DlqStats, DrainRequest, Drained, DrainedTask,
    LogLine, Run, Runs, StreamEnd, StreamStatus, SubmitTask, Submitted, TaskList, TaskLogs,
    TaskOne, TaskStatus,
};
use crate::auth::Principal;
use crate::events::Subscription;
use crate::queue::{NewTask, Queue, Status, Task, TaskFilter};
use crate::security::{StreamPermit, StreamRefusal};

/// A task as the API and CLI show it: everything but the handler's secrets.
pub fn task_json(t: &Task) -> serde_json::Value {
    serde_json::to_value(models::Task::from(t)).unwrap_or_default()
}

/// Submits a task.
///
/// With an `idempotency_key` seen before, answers the first task (200) and creates nothing.
#[utoipa::path(post, path = "/api/v1/tasks", tag = "tasks", operation_id = "tasks_submit",
    request_body(content = SubmitTask, description = "The task"),
    responses(
        (status = 201, description = "A new task", body = Submitted),
        (status = 200, description = "The task submitted before with this idempotency key",
            body = Submitted,
            example = json!({"id": "0194d3a2-7b1c-7d3e-9f00-5a1b2c3d4e5f", "status": "running", "created": false})),
        (status = 409, description = "The idempotency key names a task of another type or payload (`idempotency_conflict`)",
            body = ErrorBody),
        (status = 422, description = "A field is invalid (unknown type, bad run_at, …)",
            body = ErrorBody),
        (status = 429, description = "The queue is full; retry after the `Retry-After` seconds",
            body = ErrorBody,
            headers(("Retry-After" = u64, description = "Seconds to wait"))),
    ))]
pub(super) async fn submit(
    State(app): State<AppState>,
    Caller(principal): Caller,
    ApiJson(body): ApiJson<SubmitTask>,
) -> Result<(StatusCode, Json<Submitted>), ApiError> {
    let run_at = match body.run_at {
        Some(at) => Some(
            chrono::DateTime::parse_from_rfc3339(&at)
                .map_err(|e| {
                    ApiError::new(
                        StatusCode::UNPROCESSABLE_ENTITY,
                        "invalid_field",
                        format!("run_at: `{at}` is not an RFC 3339 time: {e}"),
                    )
                })?
                .timestamp_millis(),
        ),
        None => None,
    };
    let enqueued = app
        .queue
        .enqueue(
            &principal.actor(),
            NewTask {
                task_type: body.task_type,
                payload: body.payload,
                priority: body.priority,
                idempotency_key: body.idempotency_key,
                run_at,
                max_attempts: body.max_attempts,
                timeout_s: body.timeout_s,
            },
        )
        .await?;
    let status = if enqueued.created {
        StatusCode::CREATED
    } else {
        StatusCode::OK
    };
    Ok((
        status,
        Json(Submitted {
            id: enqueued.task.id,
            status: enqueued.task.status.into(),
            created: enqueued.created,
        }),
    ))
}

/// One task with its attempts and receipts.
#[utoipa::path(get, path = "/api/v1/tasks/{id}", tag = "tasks", operation_id = "tasks_get",
    params(("id" = Uuid, Path, description = "The task's id")),
    responses(
        (status = 200, description = "The task", body = TaskOne),
        (status = 404, description = "No task with this id", body = ErrorBody),
    ))]
pub(super) async fn get(
    State(app): State<AppState>,
    IdPath(id): IdPath,
) -> Result<Json<TaskOne>, ApiError> {
    let task = app.queue.get(id).await?;
    Ok(Json(TaskOne {
        task: models::Task::with_waiting(&task, &app.dispatcher, app.clock.now_ms()),
    }))
}

#[derive(Deserialize, IntoParams)]
#[serde(deny_unknown_fields)]
#[into_params(parameter_in = Query)]
pub(super) struct ListQuery {
    /// Only tasks with this status.
    #[param(value_type = Option<TaskStatus>)]
    status: Option<String>,
    /// Only tasks of this type.
    #[serde(rename = "type")]
    task_type: Option<String>,
    /// At most this many (1 to 1000, default 50).
    #[param(minimum = 1, maximum = 1000)]
    limit: Option<usize>,
    /// `next_cursor` of the previous page.
    #[param(value_type = Option<Uuid>)]
    cursor: Option<String>,
}

fn parse_status(raw: Option<&str>) -> Result<Option<Status>, ApiError> {
    raw.map(|s| {
        s.parse::<Status>()
            .map_err(|e| ApiError::bad_request(format!("status: {e}")))
    })
    .transpose()
}

/// Tasks, newest first, a page at a time.
#[utoipa::path(get, path = "/api/v1/tasks", tag = "tasks", operation_id = "tasks_list",
    params(ListQuery),
    responses(
        (status = 200, description = "A page of tasks", body = TaskList),
        (status = 400, description = "A bad query (unknown status, `limit` out of range, bad cursor)",
            body = ErrorBody),
    ))]
pub(super) async fn list(
    State(app): State<AppState>,
    ApiQuery(q): ApiQuery<ListQuery>,
) -> Result<Json<TaskList>, ApiError> {
    let limit = q.limit.unwrap_or(50);
    if !(1..=1000).contains(&limit) {
        return Err(ApiError::bad_request(format!(
            "limit: must be between 1 and 1000, got {limit}"
        )));
    }
    let page = app
        .queue
        .list(TaskFilter {
            status: parse_status(q.status.as_deref())?,
            task_type: q.task_type,
            limit,
            cursor: q.cursor.as_deref().map(parse_id).transpose()?,
        })
        .await?;
    Ok(Json(TaskList {
        tasks: page
            .tasks
            .iter()
            .map(|t| models::Task::with_waiting(t, &app.dispatcher, app.clock.now_ms()))
            .collect(),
        next_cursor: page.next_cursor,
    }))
}

/// Cancels a task: a waiting one at once, a running one by stopping its attempt. Audited.
#[utoipa::path(post, path = "/api/v1/tasks/{id}/cancel", tag = "tasks", operation_id = "tasks_cancel",
    params(("id" = Uuid, Path, description = "The task's id")),
    responses(
        (status = 200, description = "The task after the request", body = TaskOne),
        (status = 404, description = "No task with this id", body = ErrorBody),
        (status = 409, description = "The task has already finished", body = ErrorBody),
    ))]
pub(super) async fn cancel(
    State(app): State<AppState>,
    Caller(principal): Caller,
    IdPath(id): IdPath,
) -> Result<Json<TaskOne>, ApiError> {
    let task = app.queue.cancel(&principal.actor(), id).await?;
    if task.status == Status::Running {
        app.dispatcher.cancel_running(id);
    }
    Ok(Json(TaskOne {
        task: (&task).into(),
    }))
}

#[derive(Deserialize, IntoParams)]
#[serde(deny_unknown_fields)]
#[into_params(parameter_in = Query)]
pub(super) struct LogQuery {
    /// The first line number wanted (default 0): 0, or the `next_from` of the previous page.
    from: Option<u32>,
    /// At most this many lines (clamped to 1..5000, default 1000).
    limit: Option<usize>,
}

/// A task's log lines (stderr of command tasks, notes of other handlers).
#[utoipa::path(get, path = "/api/v1/tasks/{id}/logs", tag = "tasks", operation_id = "tasks_logs",
    params(("id" = Uuid, Path, description = "The task's id"), LogQuery),
    responses(
        (status = 200, description = "At most `limit` lines from `from` on", body = TaskLogs),
        (status = 404, description = "No task with this id", body = ErrorBody),
    ))]
pub(super) async fn logs(
    State(app): State<AppState>,
    IdPath(id): IdPath,
    ApiQuery(q): ApiQuery<LogQuery>,
) -> Result<Json<TaskLogs>, ApiError> {
    app.queue.get(id).await?;
    let limit = q.limit.unwrap_or(1000).clamp(1, 5000);
    let mut lines = app.queue.logs(id, q.from.unwrap_or(0), limit + 1).await?;
    let starts = app.queue.log_attempts(id).await?;
    let next_from = (lines.len() > limit).then(|| {
        lines.truncate(limit);
        lines.last().map_or(0, |(n, _)| n + 1)
    });
    Ok(Json(TaskLogs {
        lines: lines
            .into_iter()
            .map(|(n, line)| LogLine {
                n,
                attempt: Queue::attempt_of_line(&starts, n),
                line,
            })
            .collect(),
        next_from,
    }))
}

#[derive(Deserialize, IntoParams)]
#[serde(deny_unknown_fields)]
#[into_params(parameter_in = Query)]
pub(super) struct RunsQuery {
    /// Only attempts with this outcome (`succeeded`, `failed`, `running`, `interrupted`,
    /// `deferred`, `cancelled`).
    status: Option<String>,
    /// At most this many (clamped to 1..500, default 50).
    limit: Option<usize>,
}

/// Recent attempts over all tasks.
///
/// Newest first; `status` is an attempt outcome (`succeeded`, `failed`, `running`,
/// `interrupted`, `deferred`, `cancelled`).
#[utoipa::path(get, path = "/api/v1/runs", tag = "tasks", operation_id = "runs_list",
    params(RunsQuery),
    responses((status = 200, description = "Recent attempts, newest first", body = Runs)))]
pub(super) async fn runs(
    State(app): State<AppState>,
    ApiQuery(q): ApiQuery<RunsQuery>,
) -> Result<Json<Runs>, ApiError> {
    let limit = q.limit.unwrap_or(50).clamp(1, 500);
    let page = app
        .queue
        .list(TaskFilter {
            limit: 1000,
            ..TaskFilter::default()
        })
        .await?;
    let mut runs: Vec<(i64, Run)> = Vec::new();
    for task in &page.tasks {
        for a in &task.attempts {
            let run = Run::of(task, a);
            if q.status.as_deref().is_some_and(|s| s != run.outcome) {
                continue;
            }
            runs.push((a.started_at, run));
        }
    }
    runs.sort_by_key(|r| std::cmp::Reverse(r.0));
    runs.truncate(limit);
    Ok(Json(Runs {
        runs: runs.into_iter().map(|(_, r)| r).collect(),
    }))
}

/// How long a task stream waits for an event about its task before it re-reads the task
/// anyway: the bus is a hint, so a missed event delays the stream by at most this much.
/// Log lines read from the store at once by a live stream.
const STREAM_LOG_BATCH: usize = 500;

const STREAM_FALLBACK: Duration = Duration::from_secs(2);

/// A task's live events.
///
/// Server-Sent Events: `status` events when the task's status changes and `log` events for new
/// log lines, until the task is finished. A stream whose task keeps waiting (queued or
/// retrying) for `security.stream_waiting_timeout_seconds` sends `idle` (data: StreamStatus)
/// and closes. At most `security.max_streams_per_key` streams per key (429 `too_many_streams`)
/// and `security.max_streams` in all (503 `streams_exhausted`) are open at once.
#[utoipa::path(get, path = "/api/v1/stream/{id}", tag = "tasks", operation_id = "tasks_stream",
    params(("id" = Uuid, Path, description = "The task's id")),
    responses(
        (status = 200, description = "Server-Sent Events: `status` (data: StreamStatus), `log` \
            (data: the line) and a last `end` (data: StreamEnd), then the stream closes; or \
            `idle` (data: StreamStatus) when the task kept waiting too long",
            body = String, content_type = "text/event-stream",
            example = "event: status\ndata: {\"id\":\"0194d3a2-7b1c-7d3e-9f00-5a1b2c3d4e5f\",\"status\":\"running\",\"attempts_used\":0}\n\n"),
        (status = 404, description = "No task with this id", body = ErrorBody),
        (status = 429, description = "The key has `security.max_streams_per_key` streams open \
            (`too_many_streams`)", body = ErrorBody),
        (status = 503, description = "The server has `security.max_streams` streams open \
            (`streams_exhausted`)", body = ErrorBody),
    ))]
pub(super) async fn stream(
    State(app): State<AppState>,
    principal: Option<axum::Extension<Principal>>,
    IdPath(id): IdPath,
) -> Result<Sse<impl tokio_stream::Stream<Item = Result<Event, Infallible>>>, ApiError> {
    let key = principal
        .map(|p| p.0.key_id)
        .ok_or_else(|| ApiError::internal("a task stream without a caller"))?;
    let permit = app.security.streams.acquire(key).map_err(|refusal| {
        let message = refusal.to_string();
        match refusal {
            StreamRefusal::PerKey(_) => {
                ApiError::new(StatusCode::TOO_MANY_REQUESTS, "too_many_streams", message)
            }
            StreamRefusal::Total(_) => ApiError::new(
                StatusCode::SERVICE_UNAVAILABLE,
                "streams_exhausted",
                message,
            ),
        }
    })?;
    // Subscribed before the first read, so no change after that read goes unseen.
    let events = app.events.subscribe();
    let first = app.queue.get(id).await?;
    let stream = task_events(app, events, first, permit);
    Ok(Sse::new(stream).keep_alive(KeepAlive::default()))
}

fn task_events(
    app: AppState,
    events: Subscription,
    first: Task,
    permit: StreamPermit,
) -> impl tokio_stream::Stream<Item = Result<Event, Infallible>> {
    let (tx, rx) = tokio::sync::mpsc::channel::<Event>(64);
    let waiting_timeout = app.config.security.stream_waiting_timeout();
    tokio::spawn(async move {
        // Held until the stream ends, however it ends.
        let _permit = permit;
        let mut waiting_since = tokio::time::Instant::now();
        let id = first.id;
        let mut events = Some(events);
        let mut last_status = None;
        let mut next_line = 0u32;
        let mut task = first;
        loop {
            if last_status != Some(task.status) {
                last_status = Some(task.status);
                waiting_since = tokio::time::Instant::now();
                let event = Event::default()
                    .event("status")
                    .json_data(StreamStatus {
                        id,
                        status: task.status.into(),
                        attempts_used: task.counted_attempts(),
                    })
                    .unwrap_or_default();
                if tx.send(event).await.is_err() {
                    return;
                }
            }
            // The lines so far, a bounded batch at a time.
            while let Ok(lines) = app.queue.logs(id, next_line, STREAM_LOG_BATCH).await {
                let full = lines.len() == STREAM_LOG_BATCH;
                for (n, line) in lines {
                    next_line = n + 1;
                    if tx
                        .send(Event::default().event("log").data(line))
                        .await
                        .is_err()
                    {
                        return;
                    }
                }
                if !full {
                    break;
                }
            }
            if task.status.is_final() {
                let done = Event::default()
                    .event("end")
                    .json_data(StreamEnd {
                        id,
                        status: task.status.into(),
                        result: task.result.clone(),
                    })
                    .unwrap_or_default();
                let _ = tx.send(done).await;
                return;
            }
            if task.status.is_waiting() && waiting_since.elapsed() >= waiting_timeout {
                let idle = Event::default()
                    .event("idle")
                    .json_data(StreamStatus {
                        id,
                        status: task.status.into(),
                        attempts_used: task.counted_attempts(),
                    })
                    .unwrap_or_default();
                let _ = tx.send(idle).await;
                return;
            }
            let wait_left = if task.status.is_waiting() {
                waiting_timeout.saturating_sub(waiting_since.elapsed())
            } else {
                STREAM_FALLBACK
            };
            let about_task = async {
                match events.as_mut() {
                    // A lag also wakes it: the task is re-read either way.
                    Some(sub) => sub.changed(|e| e.task_id() == Some(id)).await,
                    None => std::future::pending().await,
                }
            };
            tokio::select! {
                open = about_task => {
                    if !open {
                        events = None;
                    }
                }
                _ = tokio::time::sleep(STREAM_FALLBACK.min(wait_left)) => {}
                _ = tx.closed() => return,
            }
            match app.queue.get(id).await {
                Ok(t) => task = t,
                Err(_) => return,
            }
        }
    });
    tokio_stream::StreamExt::map(tokio_stream::wrappers::ReceiverStream::new(rx), Ok)
}

/// Dead tasks by type and error class.
#[utoipa::path(get, path = "/api/v1/dlq/stats", tag = "dlq", operation_id = "dlq_stats",
    responses((status = 200, description = "Counts", body = DlqStats)))]
pub(super) async fn dlq_stats(State(app): State<AppState>) -> Result<Json<DlqStats>, ApiError> {
    Ok(Json(app.queue.dlq_stats().await?.into()))
}

#[derive(Deserialize, IntoParams)]
#[serde(deny_unknown_fields)]
#[into_params(parameter_in = Query)]
pub(super) struct DlqQuery {
    /// Only tasks of this type.
    #[serde(rename = "type")]
    task_type: Option<String>,
    /// At most this many (clamped to 1..1000, default 50).
    limit: Option<usize>,
    /// `next_cursor` of the previous page.
    #[param(value_type = Option<Uuid>)]
    cursor: Option<String>,
}

/// Dead tasks, newest first.
#[utoipa::path(get, path = "/api/v1/dlq", tag = "dlq", operation_id = "dlq_list",
    params(DlqQuery),
    responses(
        (status = 200, description = "A page of dead tasks", body = TaskList),
        (status = 400, description = "A bad cursor", body = ErrorBody),
    ))]
pub(super) async fn dlq_list(
    State(app): State<AppState>,
    ApiQuery(q): ApiQuery<DlqQuery>,
) -> Result<Json<TaskList>, ApiError> {
    let page = app
        .queue
        .list(TaskFilter {
            status: Some(Status::Dead),
            task_type: q.task_type,
            limit: q.limit.unwrap_or(50).clamp(1, 1000),
            cursor: q.cursor.as_deref().map(parse_id).transpose()?,
        })
        .await?;
    Ok(Json(TaskList {
        tasks: page.tasks.iter().map(models::Task::from).collect(),
        next_cursor: page.next_cursor,
    }))
}

/// Moves dead tasks back to the queue (or, with `dry_run`, says which would move). Audited.
#[utoipa::path(post, path = "/api/v1/dlq/drain", tag = "dlq", operation_id = "dlq_drain",
    request_body(content = DrainRequest, description = "Which dead tasks"),
    responses(
        (status = 200, description = "What moved", body = Drained),
        (status = 422, description = "`max` out of range or another invalid field", body = ErrorBody),
    ))]
pub(super) async fn dlq_drain(
    State(app): State<AppState>,
    Caller(principal): Caller,
    ApiJson(body): ApiJson<DrainRequest>,
) -> Result<Json<Drained>, ApiError> {
    if !(1..=10_000).contains(&body.max) {
        return Err(ApiError::new(
            StatusCode::UNPROCESSABLE_ENTITY,
            "invalid_field",
            format!("max: must be between 1 and 10000, got {}", body.max),
        ));
    }
    let report = app
        .queue
        .dlq_drain(&principal.actor(), body.filter_type, body.max, body.dry_run)
        .await?;
    Ok(Json(Drained {
        dry_run: report.dry_run,
        count: report.tasks.len(),
        tasks: report.tasks.iter().map(DrainedTask::from).collect(),
    }))
}

/// Purges one dead task. Audited.
#[utoipa::path(delete, path = "/api/v1/dlq/{id}", tag = "dlq", operation_id = "dlq_delete",
    params(("id" = Uuid, Path, description = "The dead task's id")),
    responses(
        (status = 204, description = "Purged"),
        (status = 404, description = "No task with this id", body = ErrorBody),
        (status = 409, description = "The task is not dead", body = ErrorBody),
    ))]
pub(super) async fn dlq_delete(
    State(app): State<AppState>,
    Caller(principal): Caller,
    IdPath(id): IdPath,
) -> Result<StatusCode, ApiError> {
    app.queue.dlq_delete(&principal.actor(), id).await?;
    Ok(StatusCode::NO_CONTENT)
}

/// Every circuit breaker of task targets.
#[utoipa::path(get, path = "/api/v1/circuits", tag = "circuits", operation_id = "circuits_list",
    responses((status = 200, description = "The circuits", body = CircuitList)))]
pub(super) async fn circuits(State(app): State<AppState>) -> Json<CircuitList> {
    Json(CircuitList {
        circuits: app.circuits.list().iter().map(Circuit::from).collect(),
    })
}

/// Closes a circuit at once. Audited.
#[utoipa::path(post, path = "/api/v1/circuits/{name}/reset", tag = "circuits",
    operation_id = "circuits_reset",
    params(("name" = String, Path, description = "The circuit's target, e.g. `http:example.com`")),
    responses(
        (status = 200, description = "The circuit, closed", body = CircuitOne),
        (status = 404, description = "No circuit with this name", body = ErrorBody),
    ))]
pub(super) async fn circuit_reset(
    State(app): State<AppState>,
    Caller(principal): Caller,
    ApiPath(name): ApiPath<String>,
) -> Result<Json<CircuitOne>, ApiError> {
    let view = app.circuits.reset(&principal.actor(), &name).await?;
    Ok(Json(CircuitOne {
        circuit: (&view).into(),
    }))
}
