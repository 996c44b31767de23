//! Inbound webhooks over HTTP: `POST /hooks/{source}` (authenticated by the delivery's own
//! signature or token, not an API key) and the inbox views `GET /api/v1/inbox/sources` and
//! `GET /api/v1/inbox/rejections`.

use std::net::SocketAddr;

use axum::Json;
use axum::body::Bytes;
use axum::extract::{ConnectInfo, FromRequest, Request, State};
use axum::http::StatusCode;
use serde::Deserialize;

use super::AppState;
use super::error::ApiError;
use super::extract::{ApiPath, ApiQuery};
use super::models::inbox::{self as models, DeliveryState, HookReceived, Rejections, Sources};
use crate::inbox::{Delivery, InboxError, Reason, Received, Rejection};

/// `POST /hooks/{source}`: 202 `{status: "accepted", task_id}` for a new delivery, 200
/// `{status: "duplicate", task_id}` for one seen before; 401/400/413 for a refused one.
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

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RejectionsQuery {
    source: Option<String>,
    limit: Option<usize>,
}

/// `GET /api/v1/inbox/rejections?source=&limit=`: recent refused deliveries, newest first.
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
