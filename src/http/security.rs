//! The security engine over HTTP: `GET /api/v1/security/blocks` lists the blocked client
//! addresses and `DELETE /api/v1/security/blocks/{ip}` lifts an automatic block (audited).

use axum::Json;
use axum::extract::State;
use axum::http::StatusCode;

use super::AppState;
use super::error::ApiError;
use super::extract::{ApiPath, Caller};
use super::models::ErrorBody;
use super::models::security::{Block, BlockList};
use crate::security::LiftError;

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
