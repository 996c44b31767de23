//! The security engine over HTTP: `GET /api/v1/security/blocks` lists the blocked client
//! addresses, `DELETE /api/v1/security/blocks/{ip}` lifts an automatic block (audited), and
//! `GET /api/v1/security/events` lists the security events.

use axum::Json;
use axum::extract::State;
use axum::http::StatusCode;
use serde::Deserialize;
use utoipa::IntoParams;

use super::AppState;
use super::error::ApiError;
use super::extract::{ApiPath, ApiQuery, Caller};
use super::models::ErrorBody;
use super::models::security::{Block, BlockList, SecurityEvent, SecurityEvents};
use crate::security::{EventKind, LiftError};

impl From<LiftError> for ApiError {
    fn from(e: LiftError) -> Self {
        let message = e.to_string();
        match e {
            LiftError::BadAddress(_) => Self::new(StatusCode::BAD_REQUEST, "invalid_path", message),
            LiftError::Configured(_) => Self::new(StatusCode::CONFLICT, "conflict", message),
            LiftError::NotBlocked(_) => Self::not_found(message),
            LiftError::Store(s) => s.into(),
        }
    }
}

/// Lists the blocked client addresses.
///
/// Configured blocks (`security.blocked_ips`) and automatic ones, which an address earns by
/// failing to authenticate `security.failed_auth_limit` times within the window.
#[utoipa::path(get, path = "/api/v1/security/blocks", tag = "security",
    operation_id = "security_blocks_list",
    responses((status = 200, description = "The blocks in force", body = BlockList)))]
pub(super) async fn blocks_list(State(app): State<AppState>) -> Json<BlockList> {
    Json(BlockList {
        blocks: app
            .security
            .active_blocks()
            .iter()
            .map(Block::from)
            .collect(),
    })
}

/// Lifts the automatic block of an address. Audited.
///
/// The address may authenticate again at once, and its next block starts from the shortest
/// duration.
#[utoipa::path(delete, path = "/api/v1/security/blocks/{ip}", tag = "security",
    operation_id = "security_blocks_lift",
    params(("ip" = String, Path, description = "The blocked address, e.g. `203.0.113.7`")),
    responses(
        (status = 204, description = "The block was lifted"),
        (status = 400, description = "Not an IP address", body = ErrorBody),
        (status = 404, description = "The address is not blocked", body = ErrorBody),
        (status = 409, description = "The address is blocked by `security.blocked_ips`",
            body = ErrorBody),
    ))]
pub(super) async fn blocks_lift(
    State(app): State<AppState>,
    Caller(principal): Caller,
    ApiPath(ip): ApiPath<String>,
) -> Result<StatusCode, ApiError> {
    app.security.lift(&principal.actor(), &ip).await?;
    Ok(StatusCode::NO_CONTENT)
}

#[derive(Deserialize, IntoParams)]
#[serde(deny_unknown_fields)]
#[into_params(parameter_in = Query)]
pub(super) struct EventsQuery {
    /// Only events of this kind: `auth_failure`, `block`, `rate_limited`,
    /// `signature_rejected` or `key_expiring`.
    kind: Option<String>,
    /// At most this many (1 to 1000, default 100).
    #[param(minimum = 1, maximum = 1000)]
    limit: Option<usize>,
}

/// Lists security events, newest minute first.
///
/// Events are counted per minute, kind and subject (a client address, or a key id for
/// `key_expiring`), so a flood of refused requests is one row a minute per address.
#[utoipa::path(get, path = "/api/v1/security/events", tag = "security",
    operation_id = "security_events_list", params(EventsQuery),
    responses(
        (status = 200, description = "Security events, newest minute first", body = SecurityEvents),
        (status = 400, description = "`kind` unknown or `limit` out of range", body = ErrorBody),
    ))]
pub(super) async fn events_list(
    State(app): State<AppState>,
    ApiQuery(q): ApiQuery<EventsQuery>,
) -> Result<Json<SecurityEvents>, ApiError> {
    let limit = q.limit.unwrap_or(100);
    if !(1..=1000).contains(&limit) {
        return Err(ApiError::bad_request(format!(
            "limit: must be between 1 and 1000, got {limit}"
        )));
    }
    let kind = match q.kind.as_deref().filter(|k| !k.is_empty()) {
        None => None,
        Some(name) => Some(EventKind::parse(name).ok_or_else(|| {
            ApiError::bad_request(format!(
                "kind: must be one of auth_failure, block, rate_limited, signature_rejected, key_expiring; got {name:?}"
            ))
        })?),
    };
    let rows = app.security.events(kind, limit).await?;
    Ok(Json(SecurityEvents {
        events: rows.iter().map(SecurityEvent::from).collect(),
    }))
}
