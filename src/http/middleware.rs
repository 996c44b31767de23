//! Request middleware: request id in and out, one tracing span per request, latency and status
//! metrics, a request timeout, security headers, the client address with its blocks and rate
//! limits, authentication with a role per route, and the rewriting of internal errors into an
//! answer that carries only the request id.

use std::net::{IpAddr, SocketAddr};
use std::time::Instant;

use axum::Json;
use axum::body::Body;
use axum::extract::{ConnectInfo, MatchedPath, Request, State};
use axum::http::{HeaderName, HeaderValue, StatusCode, header};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use tracing::Instrument;

use super::AppState;
use super::error::{ApiError, InternalDetail};
use super::models::{ErrorBody, ErrorObject};
use crate::auth::{AuthError, Role};
use crate::security::{EventKind, Limited, Refusal};

/// The request id header, read from the client when sane and always answered.
pub static REQUEST_ID: HeaderName = HeaderName::from_static("x-request-id");

/// The request id of the current request, in the request's extensions.
#[derive(Debug, Clone)]
pub struct RequestId(pub String);

/// The client address of the current request (the peer, or `X-Forwarded-For` from a trusted
/// proxy), in the request's extensions.
#[derive(Debug, Clone, Copy)]
pub struct ClientIp(pub IpAddr);

/// Whether the client is on `security.allowlist`, in the request's extensions with [`ClientIp`].
#[derive(Debug, Clone, Copy)]
pub struct Exempt(pub bool);

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

/// 429 for a request refused by a rate limit, with `Retry-After` and the `RateLimit-*` headers.
pub fn rate_limited(
    app: &AppState,
    ip: IpAddr,
    route: &str,
    what: &str,
    limited: Limited,
) -> Response {
    app.security.count_rate_limited(route, Some(ip));
    let secs = limited.retry_after_secs();
    let mut response = ApiError::new(
        StatusCode::TOO_MANY_REQUESTS,
        "rate_limited",
        format!("too many requests {what}; retry in {secs} s"),
    )
    .into_response();
    let headers = response.headers_mut();
    headers.insert(header::RETRY_AFTER, secs.into());
    headers.insert("ratelimit-limit", limited.limit.into());
    headers.insert("ratelimit-remaining", 0u32.into());
    headers.insert("ratelimit-reset", secs.into());
    response
}

fn blocked(app: &AppState, refusal: Refusal) -> Response {
    let (message, retry) = match refusal {
        Refusal::Configured => (
            "requests from this address are refused (security.blocked_ips)".to_string(),
            None,
        ),
        Refusal::Until(until) => {
            let secs = ((until - app.clock.now_ms()).max(0) as u64)
                .div_ceil(1000)
                .max(1);
            (
                format!(
                    "this address is blocked after repeated failed authentications; retry in {secs} s"
                ),
                Some(secs),
            )
        }
    };
    let mut response = ApiError::new(StatusCode::FORBIDDEN, "ip_blocked", message).into_response();
    if let Some(secs) = retry {
        response
            .headers_mut()
            .insert(header::RETRY_AFTER, secs.into());
    }
    response
}

/// The route template `/hooks/{source}`.
const HOOKS_ROUTE: &str = "/hooks/{source}";

/// Layer inside [`request_context`]: finds the client address, refuses blocked addresses, and
/// applies the limits of webhook deliveries and sign-in attempts. (Per-key limits and failed
/// authentications are counted where keys are checked.) Without connection info (a router
/// driven in-process) there is no address and nothing is limited.
pub async fn security_gate(State(app): State<AppState>, mut req: Request, next: Next) -> Response {
    let Some(peer) = req
        .extensions()
        .get::<ConnectInfo<SocketAddr>>()
        .map(|c| c.0.ip())
    else {
        return next.run(req).await;
    };
    let forwarded = req
        .headers()
        .get("x-forwarded-for")
        .and_then(|v| v.to_str().ok());
    let ip = app.security.client_ip(peer, forwarded);
    let exempt = app.security.exempt(ip);
    req.extensions_mut().insert(ClientIp(ip));
    req.extensions_mut().insert(Exempt(exempt));
    if exempt {
        return next.run(req).await;
    }
    if let Some(refusal) = app.security.refusal(ip) {
        return blocked(&app, refusal);
    }
    let route = req
        .extensions()
        .get::<MatchedPath>()
        .map(|p| p.as_str().to_string())
        .unwrap_or_default();
    if route == HOOKS_ROUTE {
        let source = req.uri().path().trim_start_matches("/hooks/");
        let known = app.config.inbox.sources.contains_key(source);
        if let Err(limited) = app.security.limits.check_hook(known.then_some(source), ip) {
            return rate_limited(&app, ip, &route, "to this webhook", limited);
        }
        let source = source.to_string();
        let response = next.run(req).await;
        if response.status().is_client_error() {
            app.security.limits.hook_refused(ip);
        }
        if response.status() == StatusCode::UNAUTHORIZED {
            app.security
                .record_ip_event(EventKind::SignatureRejected, ip, &source);
        }
        return response;
    }
    if route == "/admin/login"
        && req.method() == axum::http::Method::POST
        && let Err(limited) = app.security.limits.check_unauthenticated(ip)
    {
        return rate_limited(
            &app,
            ip,
            &route,
            "from this address without a valid key",
            limited,
        );
    }
    next.run(req).await
}

/// The client address of a request and whether it is exempt; none without connection info.
pub fn client_of(req_extensions: &axum::http::Extensions) -> Option<(IpAddr, bool)> {
    let ip = req_extensions.get::<ClientIp>()?.0;
    let exempt = req_extensions.get::<Exempt>().is_some_and(|e| e.0);
    Some((ip, exempt))
}

/// The reason a failed authentication is counted under in `keel_auth_failures_total`, and
/// whether it counts towards blocking the address (a missing key is no attempt).
fn failure_reason(e: &AuthError) -> Option<(&'static str, bool)> {
    match e {
        AuthError::MissingKey => Some(("missing_key", false)),
        AuthError::InvalidKey => Some(("invalid_key", true)),
        AuthError::Expired => Some(("expired_key", true)),
        AuthError::Revoked => Some(("revoked_key", true)),
        _ => None,
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
    let client = client_of(req.extensions());
    let route = || {
        req.extensions()
            .get::<MatchedPath>()
            .map_or_else(String::new, |p| p.as_str().to_string())
    };
    match principal {
        Ok(p) => {
            tracing::Span::current().record("key_id", tracing::field::display(p.key_id));
            if let Some((ip, false)) = client
                && let Err(limited) = app.security.limits.check_key(p.key_id)
            {
                return rate_limited(&app, ip, &route(), "with this API key", limited);
            }
            req.extensions_mut().insert(p);
            next.run(req).await
        }
        Err(e) => {
            if let (Some((ip, exempt)), Some((reason, counts))) = (client, failure_reason(&e)) {
                if !exempt && let Err(limited) = app.security.limits.check_unauthenticated(ip) {
                    return rate_limited(
                        &app,
                        ip,
                        &route(),
                        "from this address without a valid key",
                        limited,
                    );
                }
                if counts && let Err(store) = app.security.auth_failed(ip, reason).await {
                    return ApiError::from(store).into_response();
                }
            }
            ApiError::from(e).into_response()
        }
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
