//! Inbound webhooks over HTTP: `POST /hooks/{source}` (authenticated by the delivery's own
//! signature or token, not an API key) and the inbox views `GET /api/v1/inbox/sources` and
//! `GET /api/v1/inbox/rejections`.

use std::net::SocketAddr;

use axum::Json;
use axum::body::Bytes;
use axum::extract::{ConnectInfo, FromRequest, Path, Request, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use serde::Deserialize;
use serde_json::{Value, json};

use super::AppState;
use super::api::ApiQuery;
use super::error::ApiError;
use crate::clock::rfc3339;
use crate::inbox::{
    DEFAULT_DELIVERY_ID_HEADERS, Delivery, InboxError, Reason, Received, Rejection,
};

/// `POST /hooks/{source}`: 202 `{status: "accepted", task_id}` for a new delivery, 200
/// `{status: "duplicate", task_id}` for one seen before; 401/400/413 for a refused one.
pub(super) async fn receive(
    State(app): State<AppState>,
    Path(source): Path<String>,
    request: Request,
) -> Result<Response, ApiError> {
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
        Received::Accepted { task_id } => (StatusCode::ACCEPTED, "accepted", task_id),
        Received::Duplicate { task_id } => (StatusCode::OK, "duplicate", task_id),
    };
    Ok((status, Json(json!({"status": state, "task_id": task_id}))).into_response())
}

/// `GET /api/v1/inbox/sources`: the configured sources, never their secrets.
pub(super) async fn sources(State(app): State<AppState>) -> Json<Value> {
    let sources: Vec<Value> = app
        .inbox
        .sources()
        .map(|(name, s)| {
            let delivery_id = match s.scheme {
                crate::config::InboxScheme::StandardWebhooks => vec!["webhook-id".to_string()],
                crate::config::InboxScheme::Github => vec!["x-github-delivery".to_string()],
                crate::config::InboxScheme::Bearer => match &s.delivery_id_header {
                    Some(h) => vec![h.clone()],
                    None => DEFAULT_DELIVERY_ID_HEADERS
                        .iter()
                        .map(|h| h.to_string())
                        .collect(),
                },
            };
            json!({
                "name": name,
                "path": format!("/hooks/{name}"),
                "scheme": s.scheme.as_str(),
                "task_type": s.task_type,
                "delivery_id_headers": delivery_id,
            })
        })
        .collect();
    let inbox = &app.config.inbox;
    Json(json!({
        "sources": sources,
        "timestamp_tolerance_seconds": inbox.timestamp_tolerance_seconds,
        "replay_retention_seconds": inbox.replay_retention_seconds,
    }))
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
) -> Result<Json<Value>, ApiError> {
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
    let rejections: Vec<Value> = rows
        .iter()
        .map(|(id, r)| {
            json!({
                "id": id,
                "at": rfc3339(r.at),
                "source": r.source,
                "reason": r.reason,
                "message": r.message,
                "remote_addr": r.remote_addr,
                "delivery_id": r.delivery_id,
            })
        })
        .collect();
    Ok(Json(json!({"rejections": rejections})))
}
