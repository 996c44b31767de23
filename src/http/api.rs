//! JSON API handlers: health, readiness, metrics, system facts, audit log, API keys, workers.

use axum::Json;
use axum::extract::State;
use axum::http::{Method, StatusCode, Uri, header};
use axum::response::{IntoResponse, Response};
use serde::Deserialize;
use utoipa::IntoParams;

use super::AppState;
use super::error::ApiError;
use super::extract::{ApiJson, ApiQuery, Caller, IdPath, OptionalJson};
use super::models::ErrorBody;
use super::models::audit::{
    AuditCheckpoint, AuditCheckpoints, AuditEntry, AuditHead, AuditPage, AuditVerification,
};
use super::models::keys::{CreateKey, Key, KeyCreated, KeyList, KeyOne, RotateKey};
use super::models::system::{
    CronStatus, Health, HealthStatus, HistoryPoint, MetricsHistory, MetricsJson, Readiness,
    ReadyStatus, SeriesHistory, SeriesList, SystemInfo, Worker,
};
use crate::audit;
use crate::auth::{KeyView, NewKey, Rotation, secs_to_ms};
use crate::metrics::history;

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

/// Liveness: the process answers.
#[utoipa::path(get, path = "/health", tag = "system", operation_id = "health",
    responses((status = 200, description = "keel answers", body = Health)))]
pub(super) async fn health() -> Json<Health> {
    Json(Health {
        status: HealthStatus::Ok,
    })
}

/// Readiness: the store's writer runs, no worker died, no shutdown has begun.
#[utoipa::path(get, path = "/ready", tag = "system", operation_id = "ready",
    responses(
        (status = 200, description = "Ready to serve", body = Readiness,
            example = json!({"status": "ready"})),
        (status = 503, description = "Not ready, with the reasons", body = Readiness),
    ))]
pub(super) async fn ready(State(app): State<AppState>) -> Response {
    let problems = app.readiness_problems();
    if problems.is_empty() {
        Json(Readiness {
            status: ReadyStatus::Ready,
            reasons: None,
        })
        .into_response()
    } else {
        (
            StatusCode::SERVICE_UNAVAILABLE,
            Json(Readiness {
                status: ReadyStatus::NotReady,
                reasons: Some(problems),
            }),
        )
            .into_response()
    }
}

/// Every metric in the Prometheus text exposition format (histograms as summaries).
#[utoipa::path(get, path = "/metrics", tag = "metrics", operation_id = "metrics_text",
    responses((status = 200, description = "Prometheus text format 0.0.4", body = String,
        content_type = "text/plain",
        example = "# HELP keel_build_info Build information.\n# TYPE keel_build_info gauge\nkeel_build_info{version=\"0.1.0\"} 1\n")))]
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

/// Every metric series as JSON: counters, gauges and histogram summaries since start.
#[utoipa::path(get, path = "/metrics/json", tag = "metrics", operation_id = "metrics_json",
    responses((status = 200, description = "Every series", body = MetricsJson)))]
pub(super) async fn metrics_json(
    State(app): State<AppState>,
) -> Result<Json<MetricsJson>, ApiError> {
    serde_json::from_value(app.metrics.to_json())
        .map(Json)
        .map_err(|e| ApiError::internal(format!("metrics registry: {e}")))
}

#[derive(Deserialize, IntoParams)]
#[serde(deny_unknown_fields)]
#[into_params(parameter_in = Query)]
pub(super) struct HistoryQuery {
    /// A series key from the list this route gives without it.
    series: Option<String>,
    /// Intervals starting at or after this epoch ms (default: a day ago).
    since_ms: Option<i64>,
    /// Intervals starting before this epoch ms.
    until_ms: Option<i64>,
    /// At most this many points (1 to 10000, default 1440).
    limit: Option<usize>,
}

/// Stored history of histogram series.
///
/// Without `series`: the series that have history. With it: that series' per-interval
/// snapshots and their merged statistics.
#[utoipa::path(get, path = "/api/v1/metrics/history", tag = "metrics",
    operation_id = "metrics_history", params(HistoryQuery),
    responses((status = 200, description = "The series, or one series' intervals",
        body = MetricsHistory)))]
pub(super) async fn metrics_history(
    State(app): State<AppState>,
    ApiQuery(q): ApiQuery<HistoryQuery>,
) -> Result<Json<MetricsHistory>, ApiError> {
    let Some(series) = q.series else {
        let names = app.store.read(history::series).await?;
        return Ok(Json(MetricsHistory::Series(SeriesList { series: names })));
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
    let points = intervals.iter().map(HistoryPoint::from).collect();
    let snapshots: Vec<_> = intervals.into_iter().map(|i| i.snapshot).collect();
    let overall = crate::metrics::merge_snapshots(&snapshots).map(Into::into);
    Ok(Json(MetricsHistory::History(SeriesHistory {
        series,
        points,
        overall,
    })))
}

/// Version, start time, uptime, data directory and database facts.
#[utoipa::path(get, path = "/api/v1/system", tag = "system", operation_id = "system",
    responses((status = 200, description = "Facts about this keel", body = SystemInfo)))]
pub(super) async fn system(State(app): State<AppState>) -> Json<SystemInfo> {
    Json(SystemInfo {
        name: "keel".to_string(),
        version: crate::process::VERSION.to_string(),
        started_at: app.process.started_at_ms.into(),
        uptime_seconds: app.process.uptime().as_secs(),
        data_dir: app.config.data_dir.display().to_string(),
        database_file: app.store.path().display().to_string(),
        database_file_bytes: app.store.file_size(),
        schema_version: crate::store::SCHEMA_VERSION,
    })
}

/// Every background worker: schedule, state, runs, errors, last and next run.
#[utoipa::path(get, path = "/api/v1/cron/status", tag = "system", operation_id = "cron_status",
    responses((status = 200, description = "The workers", body = CronStatus)))]
pub(super) async fn cron_status(State(app): State<AppState>) -> Json<CronStatus> {
    Json(CronStatus {
        workers: app.supervisor.statuses().iter().map(Worker::from).collect(),
    })
}

#[derive(Deserialize, IntoParams)]
#[serde(deny_unknown_fields)]
#[into_params(parameter_in = Query)]
pub(super) struct AuditQuery {
    /// Entries after this sequence number (default 0: from the start).
    after: Option<u64>,
    /// At most this many (1 to 1000, default 100).
    #[param(minimum = 1, maximum = 1000)]
    limit: Option<usize>,
}

/// A page of the audit log in chain order.
#[utoipa::path(get, path = "/api/v1/audit", tag = "audit", operation_id = "audit_list",
    params(AuditQuery),
    responses(
        (status = 200, description = "The entries after `after`", body = AuditPage),
        (status = 400, description = "A bad query (e.g. `limit` out of range)", body = ErrorBody),
    ))]
pub(super) async fn audit_list(
    State(app): State<AppState>,
    ApiQuery(q): ApiQuery<AuditQuery>,
) -> Result<Json<AuditPage>, ApiError> {
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
    Ok(Json(AuditPage {
        entries: entries.iter().map(AuditEntry::from).collect(),
        next_after,
    }))
}

/// The newest entry of the chain and the checkpoint signing key.
#[utoipa::path(get, path = "/api/v1/audit/head", tag = "audit", operation_id = "audit_head",
    responses((status = 200, description = "The head", body = AuditHead)))]
pub(super) async fn audit_head(State(app): State<AppState>) -> Result<Json<AuditHead>, ApiError> {
    let head = app.store.read(audit::head).await?;
    Ok(Json(AuditHead {
        seq: head.seq,
        hash: head.hash,
        time: head.time_ms.map(Into::into),
        public_key: app.audit.public_key_hex(),
    }))
}

/// The newest signed checkpoints (`limit` is clamped to 1..1000; `after` is ignored).
#[utoipa::path(get, path = "/api/v1/audit/checkpoints", tag = "audit",
    operation_id = "audit_checkpoints", params(AuditQuery),
    responses((status = 200, description = "The checkpoints", body = AuditCheckpoints)))]
pub(super) async fn audit_checkpoints(
    State(app): State<AppState>,
    ApiQuery(q): ApiQuery<AuditQuery>,
) -> Result<Json<AuditCheckpoints>, ApiError> {
    let limit = q.limit.unwrap_or(100).clamp(1, 1000);
    let checkpoints = app
        .store
        .read(move |tx| audit::checkpoints(tx, limit))
        .await?;
    Ok(Json(AuditCheckpoints {
        checkpoints: checkpoints.iter().map(AuditCheckpoint::from).collect(),
        public_key: app.audit.public_key_hex(),
    }))
}

/// Verifies the whole hash chain and every signed checkpoint.
#[utoipa::path(post, path = "/api/v1/audit/verify", tag = "audit", operation_id = "audit_verify",
    responses((status = 200, description = "What the verification found (also when it failed)",
        body = AuditVerification)))]
pub(super) async fn audit_verify(
    State(app): State<AppState>,
) -> Result<Json<AuditVerification>, ApiError> {
    let audit = std::sync::Arc::clone(&app.audit);
    let report = app.store.read(move |tx| audit.verify(tx)).await?;
    Ok(Json(AuditVerification::from(&report)))
}

/// A key as the API and CLI show it.
pub fn key_json(k: &KeyView) -> serde_json::Value {
    serde_json::to_value(Key::from(k)).unwrap_or_default()
}

/// Every API key (never a secret).
#[utoipa::path(get, path = "/api/v1/keys", tag = "keys", operation_id = "keys_list",
    responses((status = 200, description = "The keys", body = KeyList)))]
pub(super) async fn keys_list(State(app): State<AppState>) -> Json<KeyList> {
    Json(KeyList {
        keys: app.auth.list().iter().map(Key::from).collect(),
    })
}

/// Creates a key; its full secret is in this answer only. Audited.
#[utoipa::path(post, path = "/api/v1/keys", tag = "keys", operation_id = "keys_create",
    request_body(content = CreateKey, description = "The new key"),
    responses(
        (status = 201, description = "Created; `token` is the full key", body = KeyCreated),
        (status = 400, description = "Both `expires_at` and `expires_in_seconds` given, or bad JSON",
            body = ErrorBody),
        (status = 422, description = "A field is invalid (e.g. an empty name, a time that is not RFC 3339)",
            body = ErrorBody),
    ))]
pub(super) async fn keys_create(
    State(app): State<AppState>,
    Caller(principal): Caller,
    ApiJson(body): ApiJson<CreateKey>,
) -> Result<(StatusCode, Json<KeyCreated>), ApiError> {
    let expires_at = expiry(app.clock.now_ms(), body.expires_at, body.expires_in_seconds)?;
    let created = app
        .auth
        .create(
            &principal.actor(),
            NewKey {
                name: body.name,
                role: body.role.into(),
                expires_at,
            },
        )
        .await?;
    Ok((StatusCode::CREATED, Json(KeyCreated::from(&created))))
}

/// The expiry given as an RFC 3339 time or as seconds from `now` (at most one of them).
fn expiry(now: i64, at: Option<String>, in_seconds: Option<u64>) -> Result<Option<i64>, ApiError> {
    match (at, in_seconds) {
        (Some(_), Some(_)) => Err(ApiError::bad_request(
            "give expires_at or expires_in_seconds, not both",
        )),
        (Some(at), None) => Ok(Some(
            chrono::DateTime::parse_from_rfc3339(&at)
                .map_err(|e| {
                    ApiError::new(
                        StatusCode::UNPROCESSABLE_ENTITY,
                        "invalid_field",
                        format!("expires_at: `{at}` is not an RFC 3339 time: {e}"),
                    )
                })?
                .timestamp_millis(),
        )),
        (None, Some(secs)) => Ok(Some(now.saturating_add(secs_to_ms(secs)))),
        (None, None) => Ok(None),
    }
}

/// One key.
#[utoipa::path(get, path = "/api/v1/keys/{id}", tag = "keys", operation_id = "keys_get",
    params(("id" = Uuid, Path, description = "The key's id")),
    responses(
        (status = 200, description = "The key", body = KeyOne),
        (status = 404, description = "No key with this id", body = ErrorBody),
    ))]
pub(super) async fn keys_get(
    State(app): State<AppState>,
    IdPath(id): IdPath,
) -> Result<Json<KeyOne>, ApiError> {
    Ok(Json(KeyOne {
        key: Key::from(&app.auth.get(id)?),
    }))
}

#[derive(Deserialize, IntoParams)]
#[serde(deny_unknown_fields)]
#[into_params(parameter_in = Query)]
pub(super) struct RevokeQuery {
    /// Revoke even the last active admin key (default false).
    #[serde(default)]
    force: bool,
}

/// Revokes a key at once. Audited.
///
/// Revoking the last active admin key answers 409 `last_admin` unless `force=true`.
#[utoipa::path(post, path = "/api/v1/keys/{id}/revoke", tag = "keys", operation_id = "keys_revoke",
    params(("id" = Uuid, Path, description = "The key's id"), RevokeQuery),
    responses(
        (status = 200, description = "The revoked key", body = KeyOne),
        (status = 404, description = "No key with this id", body = ErrorBody),
        (status = 409, description = "The last active admin key (`last_admin`); give `force=true`",
            body = ErrorBody),
    ))]
pub(super) async fn keys_revoke(
    State(app): State<AppState>,
    Caller(principal): Caller,
    IdPath(id): IdPath,
    ApiQuery(q): ApiQuery<RevokeQuery>,
) -> Result<Json<KeyOne>, ApiError> {
    let view = app.auth.revoke(&principal.actor(), id, q.force).await?;
    Ok(Json(KeyOne {
        key: Key::from(&view),
    }))
}

/// Rotates a key.
///
/// Creates a successor with the same name and role, expiring when the body says or else when
/// the old key would have; the old key keeps working for the overlap (at most 30 days), then
/// expires. Audited.
#[utoipa::path(post, path = "/api/v1/keys/{id}/rotate", tag = "keys", operation_id = "keys_rotate",
    params(("id" = Uuid, Path, description = "The key's id")),
    request_body(content = Option<RotateKey>, description = "Optional; may be empty"),
    responses(
        (status = 201, description = "The successor; `token` is its full key", body = KeyCreated),
        (status = 400, description = "Both `expires_at` and `expires_in_seconds` given",
            body = ErrorBody),
        (status = 404, description = "No key with this id", body = ErrorBody),
        (status = 422, description = "The key cannot be rotated (revoked or expired), the overlap \
            is over 30 days, or the expiry is past or over 5 years ahead", body = ErrorBody),
    ))]
pub(super) async fn keys_rotate(
    State(app): State<AppState>,
    Caller(principal): Caller,
    IdPath(id): IdPath,
    OptionalJson(rotate): OptionalJson<RotateKey>,
) -> Result<(StatusCode, Json<KeyCreated>), ApiError> {
    let overlap = rotate
        .overlap_seconds
        .unwrap_or(app.config.auth.rotation_overlap_seconds);
    let expires_at = expiry(
        app.clock.now_ms(),
        rotate.expires_at,
        rotate.expires_in_seconds,
    )?;
    let created = app
        .auth
        .rotate(
            &principal.actor(),
            id,
            Rotation {
                overlap_ms: secs_to_ms(overlap),
                expires_at,
            },
        )
        .await?;
    Ok((StatusCode::CREATED, Json(KeyCreated::from(&created))))
}
