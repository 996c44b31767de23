//! Task queue API: submit, inspect, list and cancel tasks, recent runs, live task streams
//! (Server-Sent Events), the dead-letter queue and circuit breakers.

use std::convert::Infallible;
use std::time::Duration;

use axum::Json;
use axum::extract::State;
use axum::http::StatusCode;
use axum::response::sse::{Event, KeepAlive, Sse};
use serde::Deserialize;

use super::AppState;
use super::error::ApiError;
use super::extract::{ApiJson, ApiPath, ApiQuery, Caller, IdPath, parse_id};
use super::models::tasks::{
    self as models, Circuit, CircuitList, CircuitOne, DlqStats, DrainRequest, Drained, DrainedTask,
    LogLine, Run, Runs, StreamEnd, StreamStatus, SubmitTask, Submitted, TaskList, TaskLogs,
    TaskOne,
};
use crate::events::Subscription;
use crate::queue::{NewTask, Status, Task, TaskFilter};

/// A task as the API and CLI show it: everything but the handler's secrets.
pub fn task_json(t: &Task) -> serde_json::Value {
    serde_json::to_value(models::Task::from(t)).unwrap_or_default()
}

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

pub(super) async fn get(
    State(app): State<AppState>,
    IdPath(id): IdPath,
) -> Result<Json<TaskOne>, ApiError> {
    let task = app.queue.get(id).await?;
    Ok(Json(TaskOne {
        task: (&task).into(),
    }))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct ListQuery {
    status: Option<String>,
    #[serde(rename = "type")]
    task_type: Option<String>,
    limit: Option<usize>,
    cursor: Option<String>,
}

fn parse_status(raw: Option<&str>) -> Result<Option<Status>, ApiError> {
    raw.map(|s| {
        s.parse::<Status>()
            .map_err(|e| ApiError::bad_request(format!("status: {e}")))
    })
    .transpose()
}

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
        tasks: page.tasks.iter().map(models::Task::from).collect(),
        next_cursor: page.next_cursor,
    }))
}

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

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct LogQuery {
    from: Option<u32>,
}

pub(super) async fn logs(
    State(app): State<AppState>,
    IdPath(id): IdPath,
    ApiQuery(q): ApiQuery<LogQuery>,
) -> Result<Json<TaskLogs>, ApiError> {
    app.queue.get(id).await?;
    let lines = app.queue.logs(id, q.from.unwrap_or(0)).await?;
    Ok(Json(TaskLogs {
        lines: lines
            .into_iter()
            .map(|(n, line)| LogLine { n, line })
            .collect(),
    }))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RunsQuery {
    status: Option<String>,
    limit: Option<usize>,
}

/// Recent attempts over all tasks, newest first; `status` is an attempt outcome
/// (`succeeded`, `failed`, `running`, `interrupted`, `deferred`, `cancelled`).
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
const STREAM_FALLBACK: Duration = Duration::from_secs(2);

/// Server-Sent Events: `status` events when the task's status changes and `log` events for
/// new log lines, until the task is finished.
pub(super) async fn stream(
    State(app): State<AppState>,
    IdPath(id): IdPath,
) -> Result<Sse<impl tokio_stream::Stream<Item = Result<Event, Infallible>>>, ApiError> {
    // Subscribed before the first read, so no change after that read goes unseen.
    let events = app.events.subscribe();
    let first = app.queue.get(id).await?;
    let stream = task_events(app, events, first);
    Ok(Sse::new(stream).keep_alive(KeepAlive::default()))
}

fn task_events(
    app: AppState,
    events: Subscription,
    first: Task,
) -> impl tokio_stream::Stream<Item = Result<Event, Infallible>> {
    let (tx, rx) = tokio::sync::mpsc::channel::<Event>(64);
    tokio::spawn(async move {
        let id = first.id;
        let mut events = Some(events);
        let mut last_status = None;
        let mut next_line = 0u32;
        let mut task = first;
        loop {
            if last_status != Some(task.status) {
                last_status = Some(task.status);
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
            if let Ok(lines) = app.queue.logs(id, next_line).await {
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
                _ = tokio::time::sleep(STREAM_FALLBACK) => {}
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

pub(super) async fn dlq_stats(State(app): State<AppState>) -> Result<Json<DlqStats>, ApiError> {
    Ok(Json(app.queue.dlq_stats().await?.into()))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct DlqQuery {
    #[serde(rename = "type")]
    task_type: Option<String>,
    limit: Option<usize>,
    cursor: Option<String>,
}

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

pub(super) async fn dlq_delete(
    State(app): State<AppState>,
    Caller(principal): Caller,
    IdPath(id): IdPath,
) -> Result<StatusCode, ApiError> {
    app.queue.dlq_delete(&principal.actor(), id).await?;
    Ok(StatusCode::NO_CONTENT)
}

pub(super) async fn circuits(State(app): State<AppState>) -> Json<CircuitList> {
    Json(CircuitList {
        circuits: app.circuits.list().iter().map(Circuit::from).collect(),
    })
}

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
