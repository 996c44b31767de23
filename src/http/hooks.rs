//! Inbound webhooks over HTTP: `POST /hooks/{source}` (authenticated by the delivery's own
//! signature or token, not an API key) and the inbox views `GET /api/v1/inbox/sources` and
//! `GET /api/v1/inbox/rejections`.

use std::net::SocketAddr;

use axum::Json;
use axum::body::Bytes;
use axum::extract::{ConnectInfo, FromRequest, Request, State};
use axum::http::StatusCode;
use serde::Deserialize;
use utoipa::IntoParams;

use super::AppState;
use super::error::ApiError;
use super::extract::{ApiPath, ApiQuery};
use super::models::ErrorBody;
use super::models::inbox::{self as models, DeliveryState, HookReceived, Rejections, Sources};
use crate::inbox::{Delivery, InboxError, Reason, Received, Rejection};

/// Receives an inbound webhook.
///
/// Authenticated by the delivery's own signature or token (the source's scheme), not an API
/// key: 202 for a new delivery, 200 for one seen before; 401/400/413 for a refused one.
#[utoipa::path(post, path = "/hooks/{source}", tag = "inbox", operation_id = "hooks_receive",
    params(("source" = String, Path, description = "A configured inbox source")),
    request_body(description = "The delivery as the sender made it; verified over its raw bytes",
        content((Value = "application/json"), (Vec<u8> = "application/octet-stream"))),
    responses(
        (status = 202, description = "A new delivery: its task was enqueued", body = HookReceived),
        (status = 200, description = "A delivery seen before: nothing new was created",
            body = HookReceived,
            example = json!({"status": "duplicate", "task_id": "0194d3a2-7b1c-7d3e-9f00-5a1b2c3d4e5f"})),
        (status = 400, description = "The delivery is malformed (e.g. no delivery id)", body = ErrorBody),
        (status = 401, description = "The signature or token is missing or wrong, or the timestamp is too far off",
            body = ErrorBody),
        (status = 404, description = "No source with this name", body = ErrorBody),
        (status = 413, description = "The body is larger than `server.max_body_bytes`", body = ErrorBody),
        (status = 429, description = "The queue is full", body = ErrorBody),
    ))]
pub(super) async fn receive(
    State(app): State<AppState>,
    ApiPath(source): ApiPath<String>,
    request: Request,
) -> Result<(StatusCode, Json<HookReceived>), ApiError> {
    if app.inbox.source(&source).is_none() {
        return Err(InboxError::UnknownSource(source).into());
    }
    let remote_addr = request
        .extensions()
        .get::<ConnectInfo<SocketAddr>>()
        .map(|ConnectInfo(addr)| addr.to_string());
    let mut headers = Vec::new();
    for (name, value) in request.headers() {
        headers.push((
            name.as_str().to_string(),
            String::from_utf8_lossy(value.as_bytes()).into_owned(),
        ));
    }
    // The router's body limit (server.max_body_bytes) applies here.
    let body = match Bytes::from_request(request, &()).await {
        Ok(body) => body,
        Err(rejection) => {
            if rejection.status() == StatusCode::PAYLOAD_TOO_LARGE {
                let refused = Rejection::new(
                    Reason::PayloadTooLarge,
                    format!(
                        "the body is larger than server.max_body_bytes ({} bytes)",
                        app.config.server.max_body_bytes
                    ),
                );
                app.inbox.reject(&source, &refused, remote_addr).await;
                return Err(InboxError::Rejected(refused).into());
            }
            return Err(rejection.into());
        }
    };
    let mut delivery = Delivery::new(body.to_vec());
    delivery.remote_addr = remote_addr;
    for (name, value) in &headers {
        delivery.add_header(name, value);
    }
    let (status, state, task_id) = match app.inbox.receive(&source, delivery).await? {
        Received::Accepted { task_id } => (StatusCode::ACCEPTED, DeliveryState::Accepted, task_id),
        Received::Duplicate { task_id } => (StatusCode::OK, DeliveryState::Duplicate, task_id),
    };
    Ok((
        status,
        Json(HookReceived {
            status: state,
            task_id,
        }),
    ))
}

/// `GET /api/v1/inbox/sources`: the configured sources, never their secrets.
#[utoipa::path(get, path = "/api/v1/inbox/sources", tag = "inbox", operation_id = "inbox_sources",
    responses((status = 200, description = "The sources", body = Sources)))]
pub(super) async fn sources(State(app): State<AppState>) -> Json<Sources> {
    let inbox = &app.config.inbox;
    Json(Sources {
        sources: app
            .inbox
            .sources()
            .map(|(name, s)| models::Source::of(name, s))
            .collect(),
        timestamp_tolerance_seconds: inbox.timestamp_tolerance_seconds,
        replay_retention_seconds: inbox.replay_retention_seconds,
    })
}

#[derive(Deserialize, IntoParams)]
#[serde(deny_unknown_fields)]
#[into_params(parameter_in = Query)]
pub(super) struct RejectionsQuery {
    /// Only deliveries to this source.
    source: Option<String>,
    /// At most this many (1 to 1000, default 50).
    #[param(minimum = 1, maximum = 1000)]
    limit: Option<usize>,
}

/// `GET /api/v1/inbox/rejections?source=&limit=`: recent refused deliveries, newest first.
#[utoipa::path(get, path = "/api/v1/inbox/rejections", tag = "inbox",
    operation_id = "inbox_rejections", params(RejectionsQuery),
    responses(
        (status = 200, description = "Refused deliveries, newest first", body = Rejections),
        (status = 400, description = "`limit` out of range", body = ErrorBody),
    ))]
pub(super) async fn rejections(
    State(app): State<AppState>,
    ApiQuery(q): ApiQuery<RejectionsQuery>,
) -> Result<Json<Rejections>, ApiError> {
    let limit = q.limit.unwrap_or(50);
    if !(1..=1000).contains(&limit) {
        return Err(ApiError::bad_request(format!(
            "limit: must be between 1 and 1000, got {limit}"
        )));
    }
    let rows = app
        .inbox
        .rejections(q.source.filter(|s| !s.is_empty()), limit)
        .await?;
    Ok(Json(Rejections {
        rejections: rows
            .iter()
            .map(|(id, r)| models::Rejection::of(*id, r))
            .collect(),
    }))
}
