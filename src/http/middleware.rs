//! Request middleware: request id in and out, one tracing span per request, latency and status
//! metrics, a request timeout, security headers, authentication with a role per route, and the
//! rewriting of internal errors into an answer that carries only the request id.

use std::time::Instant;

use axum::Json;
use axum::body::Body;
use axum::extract::{MatchedPath, Request, State};
use axum::http::{HeaderName, HeaderValue, StatusCode, header};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use tracing::Instrument;

use super::AppState;
use super::error::{ApiError, InternalDetail};
use super::models::{ErrorBody, ErrorObject};
use crate::auth::{AuthError, Role};

/// The request id header, read from the client when sane and always answered.
pub static REQUEST_ID: HeaderName = HeaderName::from_static("x-request-id");

/// The request id of the current request, in the request's extensions.
#[derive(Debug, Clone)]
pub struct RequestId(pub String);

/// Who may call a route.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Access {
    /// Anyone, without a key.
    Public,
    /// A key with at least this role.
    Role(Role),
    /// A dashboard page: a signed-in session (cookie) whose key has at least this role, and for
    /// writes the session's CSRF token. Without a session, pages redirect to the sign-in page.
    Session(Role),
}

fn client_request_id(value: Option<&HeaderValue>) -> Option<String> {
    let v = value?.to_str().ok()?;
    let sane = !v.is_empty()
        && v.len() <= 128
        && v.bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"-_.:".contains(&b));
    sane.then(|| v.to_string())
}

/// Outermost layer: request id, span, timeout, metrics, security headers, internal errors.
pub async fn request_context(
    State(app): State<AppState>,
    mut req: Request,
    next: Next,
) -> Response {
    let started = Instant::now();
    let id = client_request_id(req.headers().get(&REQUEST_ID))
        .unwrap_or_else(|| uuid::Uuid::now_v7().simple().to_string());
    req.extensions_mut().insert(RequestId(id.clone()));
    let method = req.method().clone();
    let route = req
        .extensions()
        .get::<MatchedPath>()
        .map(|p| p.as_str().to_string());
    let span = tracing::info_span!(
        "request",
        request_id = %id,
        method = %method,
        route = route.as_deref().unwrap_or("unmatched"),
        status = tracing::field::Empty,
        key_id = tracing::field::Empty,
    );
    let timeout = app.config.server.request_timeout();
    let mut response = async move {
        match tokio::time::timeout(timeout, next.run(req)).await {
            Ok(response) => response,
            Err(_) => ApiError::new(
                StatusCode::SERVICE_UNAVAILABLE,
                "timeout",
                format!("the request took longer than {}s", timeout.as_secs()),
            )
            .into_response(),
        }
    }
    .instrument(span.clone())
    .await;

    if let Some(InternalDetail(detail)) = response.extensions_mut().remove::<InternalDetail>() {
        span.in_scope(|| tracing::error!(error = %detail, "internal error"));
        let body = ErrorBody {
            error: ErrorObject {
                code: "internal".to_string(),
                message: format!("internal error; quote request id {id} when reporting it"),
                request_id: Some(id.clone()),
                errors: None,
            },
        };
        response = (response.status(), Json(body)).into_response();
    }
    let status = response.status();
    let elapsed = started.elapsed();
    app.metrics.observe_http(
        method.as_str(),
        route.as_deref().unwrap_or(crate::metrics::HTTP_OTHER_ROUTE),
        status.as_u16(),
        elapsed,
    );
    span.record("status", status.as_u16());
    span.in_scope(|| {
        tracing::info!(
            elapsed_ms = elapsed.as_secs_f64() * 1000.0,
            "request finished"
        )
    });
    add_headers(&app, &id, response.headers_mut());
    response
}

fn add_headers(app: &AppState, id: &str, headers: &mut axum::http::HeaderMap) {
    if let Ok(v) = HeaderValue::from_str(id) {
        headers.insert(REQUEST_ID.clone(), v);
    }
    let fixed = [
        (
            header::CONTENT_SECURITY_POLICY,
            "default-src 'self'; frame-ancestors 'none'; base-uri 'none'; form-action 'self'",
        ),
        (header::X_CONTENT_TYPE_OPTIONS, "nosniff"),
        (header::REFERRER_POLICY, "no-referrer"),
        (header::X_FRAME_OPTIONS, "DENY"),
    ];
    for (name, value) in fixed {
        headers
            .entry(name)
            .or_insert(HeaderValue::from_static(value));
    }
    if let Some(max_age) = app.config.server.hsts_max_age()
        && let Ok(v) = HeaderValue::from_str(&format!("max-age={}", max_age.as_secs()))
    {
        headers.insert(header::STRICT_TRANSPORT_SECURITY, v);
    }
}

/// The key presented with a request: `Authorization: Bearer …` or `X-API-Key: …`.
pub fn presented_key(headers: &axum::http::HeaderMap) -> Option<&str> {
    if let Some(v) = headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
    {
        let v = v.trim();
        return Some(
            v.strip_prefix("Bearer ")
                .or_else(|| v.strip_prefix("bearer "))
                .unwrap_or(v)
                .trim(),
        );
    }
    headers
        .get("x-api-key")
        .and_then(|v| v.to_str().ok())
        .map(str::trim)
}

/// Per-route layer of API routes: authenticates the key and checks the route's role; the
/// caller's [`crate::auth::Principal`] goes into the request's extensions. (Dashboard routes
/// are guarded by `admin::session::require_session` instead; the router picks the layer.)
pub async fn require_role(
    State((app, needed)): State<(AppState, Role)>,
    mut req: Request,
    next: Next,
) -> Response {
    let principal = match presented_key(req.headers()) {
        None => Err(AuthError::MissingKey),
        Some(token) => app.auth.authenticate(token),
    }
    .and_then(|p| p.require(needed).map(|()| p));
    match principal {
        Ok(p) => {
            tracing::Span::current().record("key_id", tracing::field::display(p.key_id));
            req.extensions_mut().insert(p);
            next.run(req).await
        }
        Err(e) => ApiError::from(e).into_response(),
    }
}

/// Answers a panic in a handler as an internal error (logged with the request id).
pub fn panic_response(panic: Box<dyn std::any::Any + Send + 'static>) -> Response<Body> {
    let detail = panic
        .downcast_ref::<&str>()
        .map(|s| s.to_string())
        .or_else(|| panic.downcast_ref::<String>().cloned())
        .unwrap_or_else(|| "handler panicked".into());
    ApiError::internal(format!("panic: {detail}")).into_response()
}
