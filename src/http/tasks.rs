//! Task queue API: submit, inspect, list and cancel tasks, recent runs, live task streams
//! (Server-Sent Events), the dead-letter queue and circuit breakers.

use std::convert::Infallible;
use std::time::Duration;

use axum::Json;
use axum::extract::{Extension, Path, State};
use axum::http::StatusCode;
use axum::response::sse::{Event, KeepAlive, Sse};
use axum::response::{IntoResponse, Response};
use serde::Deserialize;
use serde_json::{Value, json};
use uuid::Uuid;

use super::AppState;
use super::api::{ApiJson, ApiQuery, parse_id};
use super::error::ApiError;
use crate::auth::Principal;
use crate::clock::rfc3339;
use crate::exec::HandlerSnapshot;
use crate::queue::{NewTask, Status, Task, TaskFilter};

/// A task as the API shows it: everything but the handler's secrets.
pub fn task_json(t: &Task) -> Value {
    let handler = match HandlerSnapshot::of(t) {
        Ok(HandlerSnapshot::Http { url, method, .. }) => {
            json!({"kind": "http", "url": url, "method": method})
        }
        Ok(HandlerSnapshot::Command { program, args, .. }) => {
            json!({"kind": "command", "program": program, "args": args})
        }
        Ok(HandlerSnapshot::Llm {
            provider, model, ..
        }) => json!({"kind": "llm", "provider": provider, "model": model}),
        Ok(HandlerSnapshot::Workflow { steps }) => json!({
            "kind": "workflow",
            "steps": steps.iter().map(|s| json!({"name": s.name, "handler": s.handler_type}))
                .collect::<Vec<_>>(),
        }),
        Err(e) => json!({"kind": "unreadable", "error": e.to_string()}),
    };
    let attempts: Vec<Value> = t
        .attempts
        .iter()
        .map(|a| {
            json!({
                "number": a.number,
                "started_at": rfc3339(a.started_at),
                "finished_at": a.finished_at.map(rfc3339),
                "outcome": if a.outcome.is_empty() { "running" } else { a.outcome.as_str() },
                "error_class": a.error_class,
                "error_message": a.error_message,
                "counted": a.counted,
                "receipt": a.receipt.as_ref().map(|r| json!({
                    "status": r.status, "latency_ms": r.latency_ms, "body_head": r.body_head,
                })),
            })
        })
        .collect();
    json!({
        "id": t.id,
        "type": t.task_type,
        "status": t.status.as_str(),
        "priority": t.priority,
        "payload": serde_json::from_str::<Value>(&t.payload).unwrap_or(Value::Null),
        "idempotency_key": t.idempotency_key,
        "webhook_id": t.webhook_id(),
        "created_by": t.created_by,
        "created_at": rfc3339(t.created_at),
        "updated_at": rfc3339(t.updated_at),
        "due_at": rfc3339(t.due_at),
        "finished_at": t.finished_at.map(rfc3339),
        "max_attempts": t.max_attempts,
        "attempts_used": t.counted_attempts(),
        "timeout_s": t.timeout_ms / 1000,
        "target": t.target,
        "handler": handler,
        "attempts": attempts,
        "result": t.result,
        "cancel_requested": t.cancel_requested,
    })
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct SubmitTask {
    #[serde(rename = "type")]
    task_type: String,
    #[serde(default)]
    payload: Value,
    priority: Option<u32>,
    idempotency_key: Option<String>,
    /// RFC 3339.
    run_at: Option<String>,
    max_attempts: Option<u32>,
    timeout_s: Option<u64>,
}

pub(super) async fn submit(
    State(app): State<AppState>,
    Extension(principal): Extension<Principal>,
    ApiJson(body): ApiJson<SubmitTask>,
) -> Result<Response, ApiError> {
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
        Json(json!({
            "id": enqueued.task.id,
            "status": enqueued.task.status.as_str(),
            "created": enqueued.created,
        })),
    )
        .into_response())
}

pub(super) async fn get(
    State(app): State<AppState>,
    Path(id): Path<String>,
) -> Result<Json<Value>, ApiError> {
    let task = app.queue.get(parse_id(&id)?).await?;
    Ok(Json(json!({"task": task_json(&task)})))
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
) -> Result<Json<Value>, ApiError> {
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
    Ok(Json(json!({
        "tasks": page.tasks.iter().map(task_json).collect::<Vec<_>>(),
        "next_cursor": page.next_cursor,
    })))
}

pub(super) async fn cancel(
    State(app): State<AppState>,
    Extension(principal): Extension<Principal>,
    Path(id): Path<String>,
) -> Result<Json<Value>, ApiError> {
    let id = parse_id(&id)?;
    let task = app.queue.cancel(&principal.actor(), id).await?;
    if task.status == Status::Running {
        app.dispatcher.cancel_running(id);
    }
    Ok(Json(json!({"task": task_json(&task)})))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct LogQuery {
    from: Option<u32>,
}

pub(super) async fn logs(
    State(app): State<AppState>,
    Path(id): Path<String>,
    ApiQuery(q): ApiQuery<LogQuery>,
) -> Result<Json<Value>, ApiError> {
    let id = parse_id(&id)?;
    app.queue.get(id).await?;
    let lines = app.queue.logs(id, q.from.unwrap_or(0)).await?;
    Ok(Json(json!({
        "lines": lines.iter().map(|(n, l)| json!({"n": n, "line": l})).collect::<Vec<_>>(),
    })))
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
) -> Result<Json<Value>, ApiError> {
    let limit = q.limit.unwrap_or(50).clamp(1, 500);
    let page = app
        .queue
        .list(TaskFilter {
            limit: 1000,
            ..TaskFilter::default()
        })
        .await?;
    let mut runs: Vec<(i64, Value)> = Vec::new();
    for task in &page.tasks {
        for a in &task.attempts {
            let outcome = if a.outcome.is_empty() {
                "running"
            } else {
                a.outcome.as_str()
            };
            if q.status.as_deref().is_some_and(|s| s != outcome) {
                continue;
            }
            runs.push((
                a.started_at,
                json!({
                    "task_id": task.id, "type": task.task_type, "attempt": a.number,
                    "outcome": outcome, "started_at": rfc3339(a.started_at),
                    "finished_at": a.finished_at.map(rfc3339), "error_class": a.error_class,
                    "error_message": a.error_message,
                    "http_status": a.receipt.as_ref().and_then(|r| r.status),
                    "latency_ms": a.receipt.as_ref().map(|r| r.latency_ms),
                }),
            ));
        }
    }
    runs.sort_by_key(|r| std::cmp::Reverse(r.0));
    runs.truncate(limit);
    Ok(Json(
        json!({"runs": runs.into_iter().map(|(_, v)| v).collect::<Vec<_>>()}),
    ))
}

/// Server-Sent Events: `status` events when the task's status changes and `log` events for
/// new log lines, until the task is finished.
pub(super) async fn stream(
    State(app): State<AppState>,
    Path(id): Path<String>,
) -> Result<Sse<impl tokio_stream::Stream<Item = Result<Event, Infallible>>>, ApiError> {
    let id: Uuid = parse_id(&id)?;
    let first = app.queue.get(id).await?;
    let stream = async_stream(app, first);
    Ok(Sse::new(stream).keep_alive(KeepAlive::default()))
}

fn async_stream(
    app: AppState,
    first: Task,
) -> impl tokio_stream::Stream<Item = Result<Event, Infallible>> {
    let (tx, rx) = tokio::sync::mpsc::channel::<Event>(64);
    tokio::spawn(async move {
        let id = first.id;
        let mut last_status = None;
        let mut next_line = 0u32;
        let mut task = first;
        loop {
            if last_status != Some(task.status) {
                last_status = Some(task.status);
                let event = Event::default()
                    .event("status")
                    .json_data(json!({"id": id, "status": task.status.as_str(),
                        "attempts_used": task.counted_attempts()}))
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
                    .json_data(
                        json!({"id": id, "status": task.status.as_str(), "result": task.result}),
                    )
                    .unwrap_or_default();
                let _ = tx.send(done).await;
                return;
            }
            tokio::select! {
                _ = tokio::time::sleep(Duration::from_millis(250)) => {}
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

pub(super) async fn dlq_stats(State(app): State<AppState>) -> Result<Json<Value>, ApiError> {
    Ok(Json(
        serde_json::to_value(app.queue.dlq_stats().await?).unwrap_or_default(),
    ))
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
) -> Result<Json<Value>, ApiError> {
    let page = app
        .queue
        .list(TaskFilter {
            status: Some(Status::Dead),
            task_type: q.task_type,
            limit: q.limit.unwrap_or(50).clamp(1, 1000),
            cursor: q.cursor.as_deref().map(parse_id).transpose()?,
        })
        .await?;
    Ok(Json(json!({
        "tasks": page.tasks.iter().map(task_json).collect::<Vec<_>>(),
        "next_cursor": page.next_cursor,
    })))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct DrainRequest {
    filter_type: Option<String>,
    max: usize,
    #[serde(default)]
    dry_run: bool,
}

pub(super) async fn dlq_drain(
    State(app): State<AppState>,
    Extension(principal): Extension<Principal>,
    ApiJson(body): ApiJson<DrainRequest>,
) -> Result<Json<Value>, ApiError> {
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
    Ok(Json(json!({
        "dry_run": report.dry_run,
        "count": report.tasks.len(),
        "tasks": report.tasks.iter().map(|t| json!({
            "id": t.id, "type": t.task_type, "error_class": t.last_error_class(),
        })).collect::<Vec<_>>(),
    })))
}

pub(super) async fn dlq_delete(
    State(app): State<AppState>,
    Extension(principal): Extension<Principal>,
    Path(id): Path<String>,
) -> Result<StatusCode, ApiError> {
    app.queue
        .dlq_delete(&principal.actor(), parse_id(&id)?)
        .await?;
    Ok(StatusCode::NO_CONTENT)
}

fn circuit_json(c: &crate::exec::circuit::CircuitView) -> Value {
    json!({
        "name": c.name, "state": c.state, "failure_ratio": c.failure_ratio,
        "window_volume": c.window_volume, "opened_at": c.opened_at.map(rfc3339),
        "open_until": c.open_until.map(rfc3339),
    })
}

pub(super) async fn circuits(State(app): State<AppState>) -> Json<Value> {
    Json(json!({"circuits": app.circuits.list().iter().map(circuit_json).collect::<Vec<_>>()}))
}

pub(super) async fn circuit_reset(
    State(app): State<AppState>,
    Extension(principal): Extension<Principal>,
    Path(name): Path<String>,
) -> Result<Json<Value>, ApiError> {
    let view = app.circuits.reset(&principal.actor(), &name).await?;
    Ok(Json(json!({"circuit": circuit_json(&view)})))
}
