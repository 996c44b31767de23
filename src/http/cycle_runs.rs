//! Controlling running cycles: what each waits for, cancelling one, and reloading the profile
//! files once no cycle is active (waiting a bounded time, or answering `cycle_active` with
//! what the active cycles wait on).

use std::time::Duration;

use axum::Json;
use axum::extract::State;
use serde::Deserialize;
use utoipa::IntoParams;
use uuid::Uuid;

use super::AppState;
use super::error::ApiError;
use super::extract::{ApiQuery, Caller, IdPath};
use super::models::ErrorBody;
use super::models::cycles::{Cycle, CycleCancelled, CycleWait, Reloaded};
use crate::cycles::CyclesError;
use crate::queue::QueueError;

/// Longest `wait_seconds` a reload accepts; it must also end 5 s before the server's request
/// timeout, so the answer is the reload's own.
const MAX_RELOAD_WAIT_SECONDS: u64 = 300;
/// What a waiting reload leaves of the request timeout for its answer.
const RELOAD_ANSWER_MARGIN_SECONDS: u64 = 5;

/// How often a waiting reload looks again whether the cycles have ended.
const RELOAD_POLL: Duration = Duration::from_millis(200);

/// The tasks cycle `id` waits for now, with what each waits on.
pub(super) async fn waiting_on(app: &AppState, id: Uuid) -> Result<Vec<CycleWait>, ApiError> {
    let mut waits = Vec::new();
    for task_id in app.cycles.waiting_for(id) {
        match app.queue.get(task_id).await {
            Ok(task) => waits.push(CycleWait::of(&task, &app.dispatcher, app.clock.now_ms())),
            Err(QueueError::NotFound(_)) => {}
            Err(e) => return Err(e.into()),
        }
    }
    Ok(waits)
}

/// Cancels a running cycle.
///
/// Its `cycle_failed` checkpoint (reason `cancelled by <key>`) and the audit entry commit
/// together; the tasks it was waiting for are cancelled. Audited.
#[utoipa::path(post, path = "/api/v1/cycles/{id}/cancel", tag = "cycles", operation_id = "cycles_cancel",
    params(("id" = Uuid, Path, description = "The cycle's id")),
    responses(
        (status = 200, description = "The cancelled cycle", body = CycleCancelled),
        (status = 404, description = "No cycle with this id", body = ErrorBody),
        (status = 409, description = "The cycle is not running", body = ErrorBody),
    ))]
pub(super) async fn cycles_cancel(
    State(app): State<AppState>,
    Caller(principal): Caller,
    IdPath(id): IdPath,
) -> Result<Json<CycleCancelled>, ApiError> {
    let run = app.cycles.cancel(&principal.actor(), id).await?;
    Ok(Json(CycleCancelled {
        cycle: Cycle::from(&run),
    }))
}

#[derive(Deserialize, IntoParams)]
#[serde(deny_unknown_fields)]
#[into_params(parameter_in = Query)]
pub(super) struct ReloadQuery {
    /// Wait up to this many seconds (default 0; at most 300 and at most
    /// `server.request_timeout_seconds` − 5, 25 by default) for active cycles to end before
    /// answering 409 `cycle_active`.
    #[param(minimum = 0, maximum = 300)]
    wait_seconds: Option<u64>,
}

/// Reloads the profile files.
///
/// Refused as a whole (with every problem) when they are invalid. While a cycle is active it
/// waits up to `wait_seconds` for the cycles to end, then answers 409 `cycle_active` naming each
/// active cycle and what it waits on. Audited.
#[utoipa::path(post, path = "/api/v1/config/reload", tag = "profiles", operation_id = "config_reload",
    params(ReloadQuery),
    responses(
        (status = 200, description = "What the reload found", body = Reloaded),
        (status = 400, description = "`wait_seconds` out of range", body = ErrorBody),
        (status = 409, description = "A cycle is still active: the message names each and what it waits on", body = ErrorBody),
        (status = 422, description = "The files are invalid: `error.errors` lists every problem",
            body = ErrorBody,
            example = json!({"error": {"code": "invalid_config", "message": "the profile configuration has 1 error:\n  profiles.json at /0/state: \"on\" is not one of \"enabled\" or \"disabled\"", "errors": [{"file": "profiles.json", "pointer": "/0/state", "message": "\"on\" is not one of \"enabled\" or \"disabled\""}]}})),
    ))]
pub(super) async fn config_reload(
    State(app): State<AppState>,
    Caller(principal): Caller,
    ApiQuery(q): ApiQuery<ReloadQuery>,
) -> Result<Json<Reloaded>, ApiError> {
    let wait = q.wait_seconds.unwrap_or(0);
    let most = MAX_RELOAD_WAIT_SECONDS.min(
        app.config
            .server
            .request_timeout_seconds
            .saturating_sub(RELOAD_ANSWER_MARGIN_SECONDS),
    );
    if wait > most {
        return Err(ApiError::bad_request(format!(
            "wait_seconds: must be between 0 and {most} (at most 300, and {RELOAD_ANSWER_MARGIN_SECONDS} s less than server.request_timeout_seconds), got {wait}"
        )));
    }
    let deadline = tokio::time::Instant::now() + Duration::from_secs(wait);
    loop {
        match app.cycles.reload(&principal.actor()).await {
            Err(CyclesError::Conflict {
                code: "cycle_active",
                ..
            }) => {
                let now = tokio::time::Instant::now();
                if now >= deadline {
                    return Err(cycles_active(&app).await);
                }
                tokio::time::sleep(RELOAD_POLL.min(deadline - now)).await;
            }
            other => return Ok(Json(other?.into())),
        }
    }
}

/// The 409 `cycle_active` answer: each active cycle (at most five) and what it waits on.
async fn cycles_active(app: &AppState) -> ApiError {
    let active = match app.cycles.active_ids().await {
        Ok(ids) => ids,
        Err(e) => return e.into(),
    };
    let mut lines = Vec::new();
    for id in active.iter().take(5) {
        let waits = match waiting_on(app, *id).await {
            Ok(w) => w,
            Err(e) => return e,
        };
        let what = if waits.is_empty() {
            "is between stages".to_string()
        } else {
            waits
                .iter()
                .map(|w| match &w.waiting {
                    Some(why) => format!(
                        "waits on task {} ({}: {}{})",
                        w.task_id,
                        why.reason,
                        why.detail,
                        why.until
                            .as_ref()
                            .map_or(String::new(), |t| format!(", tried again at {}", t.0))
                    ),
                    None => format!("waits on task {} ({:?})", w.task_id, w.status),
                })
                .collect::<Vec<_>>()
                .join("; ")
        };
        lines.push(format!("cycle {id} {what}"));
    }
    ApiError::new(
        axum::http::StatusCode::CONFLICT,
        "cycle_active",
        format!(
            "{} cycle(s) are active: {}; reload when they have ended, pass wait_seconds to wait, or cancel them (POST /api/v1/cycles/{{id}}/cancel)",
            active.len(),
            lines.join("; ")
        ),
    )
}
