//! JSON API handlers: health, readiness, metrics, system facts, audit log, API keys, workers.

use axum::Json;
use axum::body::Bytes;
use axum::extract::{FromRequest, FromRequestParts, Path, State};
use axum::http::{Method, StatusCode, Uri, header};
use axum::response::{IntoResponse, Response};
use serde::Deserialize;
use serde::de::DeserializeOwned;
use serde_json::{Value, json};
use uuid::Uuid;

use super::AppState;
use super::error::ApiError;
use crate::audit::{self, hex};
use crate::auth::{KeyView, NewKey, Principal, Role};
use crate::clock::rfc3339;
use crate::metrics::history;

/// `Json` whose rejections answer in keel's error shape.
#[derive(FromRequest)]
#[from_request(via(axum::Json), rejection(ApiError))]
pub struct ApiJson<T>(pub T);

/// `Query` whose rejections answer in keel's error shape.
#[derive(FromRequestParts)]
#[from_request(via(axum::extract::Query), rejection(ApiError))]
pub struct ApiQuery<T>(pub T);

/// A JSON body that may be empty (then `T::default()`).
pub(super) fn optional_body<T: DeserializeOwned + Default>(body: &Bytes) -> Result<T, ApiError> {
    if body.iter().all(u8::is_ascii_whitespace) {
        return Ok(T::default());
    }
    serde_json::from_slice(body).map_err(|e| {
        let code = if e.is_data() {
            "invalid_field"
        } else {
            "malformed_json"
        };
        let status = if e.is_data() {
            StatusCode::UNPROCESSABLE_ENTITY
        } else {
            StatusCode::BAD_REQUEST
        };
        ApiError::new(status, code, format!("request body: {e}"))
    })
}

pub(super) fn parse_id(raw: &str) -> Result<Uuid, ApiError> {
    Uuid::parse_str(raw)
        .map_err(|_| ApiError::bad_request(format!("`{raw}` is not a valid id (a UUID)")))
}

fn principal(parts: &axum::http::Extensions) -> Result<Principal, ApiError> {
    parts.get::<Principal>().cloned().ok_or_else(|| {
        ApiError::internal("route without authentication reached a handler that needs it")
    })
}

pub(super) async fn not_found(method: Method, uri: Uri) -> ApiError {
    ApiError::not_found(format!("no route for {method} {}", uri.path()))
}

pub(super) async fn method_not_allowed(method: Method, uri: Uri) -> ApiError {
    ApiError::new(
        StatusCode::METHOD_NOT_ALLOWED,
        "method_not_allowed",
        format!("{method} is not allowed on {}", uri.path()),
    )
}

pub(super) async fn health() -> Json<Value> {
    Json(json!({"status": "ok"}))
}

pub(super) async fn ready(State(app): State<AppState>) -> Response {
    let problems = app.readiness_problems();
    if problems.is_empty() {
        Json(json!({"status": "ready"})).into_response()
    } else {
        (
            StatusCode::SERVICE_UNAVAILABLE,
            Json(json!({"status": "not_ready", "reasons": problems})),
        )
            .into_response()
    }
}

pub(super) async fn metrics_text(State(app): State<AppState>) -> Response {
    (
        [(
            header::CONTENT_TYPE,
            "text/plain; version=0.0.4; charset=utf-8",
        )],
        app.metrics.render_prometheus(),
    )
        .into_response()
}

pub(super) async fn metrics_json(State(app): State<AppState>) -> Json<Value> {
    Json(app.metrics.to_json())
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct HistoryQuery {
    series: Option<String>,
    since_ms: Option<i64>,
    until_ms: Option<i64>,
    limit: Option<usize>,
}

/// Without `series`: the series that have history. With it: their stored intervals.
pub(super) async fn metrics_history(
    State(app): State<AppState>,
    ApiQuery(q): ApiQuery<HistoryQuery>,
) -> Result<Json<Value>, ApiError> {
    let Some(series) = q.series else {
        let names = app.store.read(history::series).await?;
        return Ok(Json(json!({"series": names})));
    };
    let now = app.clock.now_ms();
    let since = q.since_ms.unwrap_or(now - 24 * 3_600_000);
    let until = q.until_ms.unwrap_or(i64::MAX);
    let limit = q.limit.unwrap_or(1440).clamp(1, 10_000);
    let key = series.clone();
    let intervals = app
        .store
        .read(move |tx| history::query(tx, &key, since, until, limit))
        .await?;
    let points: Vec<Value> = intervals
        .iter()
        .map(|i| {
            let s = &i.snapshot;
            json!({
                "start_ms": i.start_ms, "end_ms": i.end_ms, "unit": s.unit.as_str(),
                "count": s.count, "min": s.min, "max": s.max, "mean": s.mean,
                "p50": s.p50, "p90": s.p90, "p95": s.p95, "p99": s.p99, "p999": s.p999,
            })
        })
        .collect();
    let snapshots: Vec<_> = intervals.into_iter().map(|i| i.snapshot).collect();
    let overall = crate::metrics::merge_snapshots(&snapshots);
    Ok(Json(
        json!({"series": series, "points": points, "overall": overall}),
    ))
}

pub(super) async fn system(State(app): State<AppState>) -> Json<Value> {
    Json(json!({
        "name": "keel",
        "version": crate::process::VERSION,
        "started_at": rfc3339(app.process.started_at_ms),
        "uptime_seconds": app.process.uptime().as_secs(),
        "data_dir": app.config.data_dir.display().to_string(),
        "database_file": app.store.path().display().to_string(),
        "database_file_bytes": app.store.file_size(),
        "schema_version": crate::store::SCHEMA_VERSION,
    }))
}

pub(super) async fn cron_status(State(app): State<AppState>) -> Json<Value> {
    let workers: Vec<Value> = app
        .supervisor
        .statuses()
        .into_iter()
        .map(|s| {
            json!({
                "name": s.name, "schedule": s.schedule, "state": s.state,
                "runs": s.runs, "errors": s.errors, "consecutive_errors": s.consecutive_errors,
                "last_run_at": s.last_run_at.map(rfc3339),
                "last_duration_ms": s.last_duration_ms,
                "last_error": s.last_error,
                "last_error_at": s.last_error_at.map(rfc3339),
                "next_run_at": s.next_run_at.map(rfc3339),
            })
        })
        .collect();
    Json(json!({"workers": workers}))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct AuditQuery {
    after: Option<u64>,
    limit: Option<usize>,
}

fn entry_json(e: &audit::Entry) -> Value {
    json!({
        "seq": e.seq,
        "time": rfc3339(e.time_ms),
        "actor": e.actor,
        "action": e.action,
        "target": e.target,
        "detail": serde_json::from_str::<Value>(&e.detail).unwrap_or(Value::String(e.detail.clone())),
        "prev_hash": hex(&e.prev_hash),
        "hash": hex(&e.hash),
    })
}

pub(super) async fn audit_list(
    State(app): State<AppState>,
    ApiQuery(q): ApiQuery<AuditQuery>,
) -> Result<Json<Value>, ApiError> {
    let after = q.after.unwrap_or(0);
    let limit = q.limit.unwrap_or(100);
    if !(1..=1000).contains(&limit) {
        return Err(ApiError::bad_request(format!(
            "limit: must be between 1 and 1000, got {limit}"
        )));
    }
    let entries = app
        .store
        .read(move |tx| audit::list(tx, after, limit))
        .await?;
    let next_after = (entries.len() == limit)
        .then(|| entries.last().map(|e| e.seq))
        .flatten();
    Ok(Json(json!({
        "entries": entries.iter().map(entry_json).collect::<Vec<_>>(),
        "next_after": next_after,
    })))
}

pub(super) async fn audit_head(State(app): State<AppState>) -> Result<Json<Value>, ApiError> {
    let head = app.store.read(audit::head).await?;
    Ok(Json(json!({
        "seq": head.seq,
        "hash": head.hash,
        "time": head.time_ms.map(rfc3339),
        "public_key": app.audit.public_key_hex(),
    })))
}

pub(super) async fn audit_checkpoints(
    State(app): State<AppState>,
    ApiQuery(q): ApiQuery<AuditQuery>,
) -> Result<Json<Value>, ApiError> {
    let limit = q.limit.unwrap_or(100).clamp(1, 1000);
    let checkpoints = app
        .store
        .read(move |tx| audit::checkpoints(tx, limit))
        .await?;
    let list: Vec<Value> = checkpoints
        .iter()
        .map(|c| {
            json!({
                "seq": c.seq, "head_hash": hex(&c.head_hash), "time": rfc3339(c.time_ms),
                "signature": hex(&c.signature),
            })
        })
        .collect();
    Ok(Json(
        json!({"checkpoints": list, "public_key": app.audit.public_key_hex()}),
    ))
}

pub(super) async fn audit_verify(State(app): State<AppState>) -> Result<Json<Value>, ApiError> {
    let audit = std::sync::Arc::clone(&app.audit);
    let report = app.store.read(move |tx| audit.verify(tx)).await?;
    Ok(Json(json!({
        "ok": report.ok,
        "entries": report.entries,
        "checkpoints": report.checkpoints,
        "first_bad_seq": report.first_bad_seq,
        "reason": report.reason,
        "summary": report.to_string(),
    })))
}

/// A key as the API and CLI show it.
pub fn key_json(k: &KeyView) -> Value {
    json!({
        "id": k.id,
        "name": k.name,
        "role": k.role,
        "prefix": k.prefix,
        "status": k.status,
        "created_at": rfc3339(k.created_at),
        "created_by": k.created_by,
        "expires_at": k.expires_at.map(rfc3339),
        "revoked_at": k.revoked_at.map(rfc3339),
        "rotated_from": k.rotated_from,
        "last_used_at": k.last_used_at.map(rfc3339),
    })
}

pub(super) async fn keys_list(State(app): State<AppState>) -> Json<Value> {
    Json(json!({"keys": app.auth.list().iter().map(key_json).collect::<Vec<_>>()}))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct CreateKey {
    name: String,
    role: Role,
    /// RFC 3339 time.
    expires_at: Option<String>,
    expires_in_seconds: Option<u64>,
}

pub(super) async fn keys_create(
    State(app): State<AppState>,
    request: axum::extract::Request,
) -> Result<Response, ApiError> {
    let actor = principal(request.extensions())?.actor();
    let ApiJson(body) = ApiJson::<CreateKey>::from_request(request, &app).await?;
    let now = app.clock.now_ms();
    let expires_at = match (body.expires_at, body.expires_in_seconds) {
        (Some(_), Some(_)) => {
            return Err(ApiError::bad_request(
                "give expires_at or expires_in_seconds, not both",
            ));
        }
        (Some(at), None) => Some(
            chrono::DateTime::parse_from_rfc3339(&at)
                .map_err(|e| {
                    ApiError::new(
                        StatusCode::UNPROCESSABLE_ENTITY,
                        "invalid_field",
                        format!("expires_at: `{at}` is not an RFC 3339 time: {e}"),
                    )
                })?
                .timestamp_millis(),
        ),
        (None, Some(secs)) => {
            Some(now.saturating_add(secs.saturating_mul(1000).min(i64::MAX as u64) as i64))
        }
        (None, None) => None,
    };
    let created = app
        .auth
        .create(
            &actor,
            NewKey {
                name: body.name,
                role: body.role,
                expires_at,
            },
        )
        .await?;
    Ok((
        StatusCode::CREATED,
        Json(json!({"key": key_json(&created.view), "token": created.token})),
    )
        .into_response())
}

pub(super) async fn keys_get(
    State(app): State<AppState>,
    Path(id): Path<String>,
) -> Result<Json<Value>, ApiError> {
    Ok(Json(
        json!({"key": key_json(&app.auth.get(parse_id(&id)?)?)}),
    ))
}

pub(super) async fn keys_revoke(
    State(app): State<AppState>,
    Path(id): Path<String>,
    request: axum::extract::Request,
) -> Result<Json<Value>, ApiError> {
    let actor = principal(request.extensions())?.actor();
    let view = app.auth.revoke(&actor, parse_id(&id)?).await?;
    Ok(Json(json!({"key": key_json(&view)})))
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub(super) struct RotateKey {
    overlap_seconds: Option<u64>,
}

pub(super) async fn keys_rotate(
    State(app): State<AppState>,
    Path(id): Path<String>,
    request: axum::extract::Request,
) -> Result<Response, ApiError> {
    let actor = principal(request.extensions())?.actor();
    let id = parse_id(&id)?;
    let body = Bytes::from_request(request, &app).await?;
    let rotate: RotateKey = optional_body(&body)?;
    let overlap = rotate
        .overlap_seconds
        .unwrap_or(app.config.auth.rotation_overlap_seconds);
    let created = app
        .auth
        .rotate(
            &actor,
            id,
            overlap.saturating_mul(1000).min(i64::MAX as u64) as i64,
        )
        .await?;
    Ok((
        StatusCode::CREATED,
        Json(json!({"key": key_json(&created.view), "token": created.token})),
    )
        .into_response())
}
