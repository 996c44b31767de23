//! Dashboard sessions: sign-in with an API key, a server-side session in the store, the session
//! cookie, CSRF tokens, and the per-route layer that turns a cookie into a [`Principal`].
//!
//! The cookie holds a random 256-bit token; the store holds only its blake3 hash, the key id and
//! the role, so a copy of the database opens no session. Each request re-checks the key: a
//! revoked or expired key ends its sessions at once. The CSRF token of a session is derived from
//! its token (`blake3::derive_key`), so it needs no storage and is compared in constant time.
//! Sign-in and sign-out are audited with the key as actor.

use crate::audit::hex;
use axum::body::Body;
use axum::extract::{Form, Request, State};
use axum::http::{HeaderMap, HeaderValue, Method, StatusCode, header};
use axum::middleware::Next;
use axum::response::{IntoResponse, Redirect, Response};
use serde::Deserialize;
use subtle::ConstantTimeEq;

use super::{AdminError, Layout, render};
use crate::auth::sessions::{MAX_AGE_MS, SessionRecord, hash_token, new_token, well_formed};
use crate::auth::{AuthError, Principal, Role};
use crate::http::AppState;
use crate::http::error::ApiError;
use crate::http::middleware::{ClientIp, RequestId};
use crate::store::StoreError;

/// Name of the session cookie.
pub const SESSION_COOKIE: &str = "keel_session";
/// Name of the cookie that protects the sign-in form (set before there is a session).
pub const LOGIN_COOKIE: &str = "keel_login";
/// Name of the form field (or `X-CSRF-Token` header) carrying the CSRF token.
pub const CSRF_FIELD: &str = "csrf";

/// The signed-in caller of a dashboard request, in the request's extensions.
#[derive(Debug, Clone)]
pub struct AdminSession {
    /// The key behind the session, with its current role.
    pub principal: Principal,
    /// The session's CSRF token (hex).
    pub csrf: String,
}

/// Why a request has no usable session; shown on the sign-in page.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Ended {
    /// No cookie, or an unknown session.
    Missing,
    /// Idle too long or past its maximum age.
    Expired,
    /// The key was revoked.
    KeyRevoked,
    /// The key expired.
    KeyExpired,
}

impl Ended {
    /// The code used in `?reason=` on the sign-in page.
    pub fn code(self) -> &'static str {
        match self {
            Ended::Missing => "required",
            Ended::Expired => "expired",
            Ended::KeyRevoked => "revoked",
            Ended::KeyExpired => "key_expired",
        }
    }
}

/// What the sign-in page says for a `?reason=` code (fixed texts: nothing is echoed).
fn reason_message(code: &str) -> Option<&'static str> {
    Some(match code {
        "required" => "Sign in to continue.",
        "expired" => "Your session expired. Sign in again.",
        "revoked" => "The key of your session was revoked.",
        "key_expired" => "The key of your session expired.",
        "signed_out" => "You are signed out.",
        _ => return None,
    })
}

/// The CSRF token of the session with `token`.
pub fn csrf_for(token: &str) -> String {
    hex(&blake3::derive_key(
        "keel admin session csrf v1",
        token.as_bytes(),
    ))
}

fn login_csrf_for(token: &str) -> String {
    hex(&blake3::derive_key(
        "keel admin login csrf v1",
        token.as_bytes(),
    ))
}

fn equal(a: &str, b: &str) -> bool {
    a.len() == b.len() && bool::from(a.as_bytes().ct_eq(b.as_bytes()))
}

/// The value of cookie `name`, if the request carries it.
pub fn cookie<'a>(headers: &'a HeaderMap, name: &str) -> Option<&'a str> {
    headers
        .get_all(header::COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(';'))
        .filter_map(|pair| pair.trim().split_once('='))
        .find(|(n, _)| *n == name)
        .map(|(_, v)| v.trim())
}

/// Whether cookies must carry `Secure`: keel sends HSTS (so it is served over HTTPS), or a
/// proxy says the request came over HTTPS. (A forged header can only make the cookie stricter.)
fn secure(app: &AppState, headers: &HeaderMap) -> bool {
    app.config.server.hsts_max_age().is_some()
        || headers
            .get("x-forwarded-proto")
            .and_then(|v| v.to_str().ok())
            .is_some_and(|v| v.trim().eq_ignore_ascii_case("https"))
}

fn set_cookie(name: &str, value: &str, path: &str, max_age_secs: i64, secure: bool) -> HeaderValue {
    let secure = if secure { "; Secure" } else { "" };
    HeaderValue::from_str(&format!(
        "{name}={value}; Path={path}; Max-Age={max_age_secs}; HttpOnly; SameSite=Strict{secure}"
    ))
    .unwrap_or_else(|_| HeaderValue::from_static("invalid=1"))
}

/// Percent-encodes everything but unreserved characters.
pub fn urlencode(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for b in s.bytes() {
        if b.is_ascii_alphanumeric() || b"-_.~".contains(&b) {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

/// A safe place to go after sign-in: a dashboard path, never another site.
fn safe_next(next: Option<&str>) -> String {
    match next {
        Some(n)
            if n.starts_with("/admin")
                && !n.contains("//")
                && !n.contains('\\')
                && !n.starts_with("/admin/login")
                && !n.starts_with("/admin/logout")
                && !n.starts_with("/admin/live")
                && n.bytes().all(|b| b.is_ascii_graphic()) =>
        {
            n.to_string()
        }
        _ => "/admin".to_string(),
    }
}

/// The session behind `token`: its hash and record, and the signed-in principal with the key's
/// current role; or why there is none (an ended session is deleted).
async fn resolve(
    app: &AppState,
    token: Option<&str>,
) -> Result<Result<([u8; 32], SessionRecord, AdminSession), Ended>, StoreError> {
    let Some(token) = token.filter(|t| well_formed(t)) else {
        return Ok(Err(Ended::Missing));
    };
    let hash = hash_token(token);
    let record = match app.auth.session(hash).await {
        Ok(Some(record)) => record,
        Ok(None) => return Ok(Err(Ended::Missing)),
        // An unreadable session is no session (the next sign-in prunes it).
        Err(e @ StoreError::Corrupt { .. }) => {
            tracing::warn!(error = %e, "unreadable dashboard session");
            return Ok(Err(Ended::Missing));
        }
        Err(e) => return Err(e),
    };
    let now = app.clock.now_ms();
    let ended = if record.expired(now) {
        Some(Ended::Expired)
    } else {
        match app.auth.get(record.key_id) {
            Ok(key) if key.status == "active" => {
                let session = AdminSession {
                    principal: Principal {
                        key_id: key.id,
                        name: key.name,
                        role: key.role,
                    },
                    csrf: csrf_for(token),
                };
                return Ok(Ok((hash, record, session)));
            }
            Ok(key) if key.status == "expired" => Some(Ended::KeyExpired),
            Ok(_) | Err(_) => Some(Ended::KeyRevoked),
        }
    };
    app.auth.delete_session(hash, None).await?;
    Ok(Err(ended.unwrap_or(Ended::Missing)))
}

fn is_live(req: &Request) -> bool {
    req.uri().path().starts_with("/admin/live/")
}

/// The CSRF token sent with a write: the `X-CSRF-Token` header, or the `csrf` field of a
/// URL-encoded form body (whose bytes are read here and handed on unchanged).
async fn presented_csrf(req: Request, limit: usize) -> Result<(Option<String>, Request), Response> {
    if let Some(v) = req
        .headers()
        .get("x-csrf-token")
        .and_then(|v| v.to_str().ok())
    {
        let v = v.trim().to_string();
        return Ok((Some(v), req));
    }
    let (parts, body) = req.into_parts();
    let bytes = axum::body::to_bytes(body, limit).await.map_err(|_| {
        AdminError::new(
            StatusCode::PAYLOAD_TOO_LARGE,
            "payload_too_large",
            "the form is larger than this server accepts",
        )
        .into_response()
    })?;
    let token = bytes
        .split(|b| *b == b'&')
        .find_map(|pair| pair.strip_prefix(format!("{CSRF_FIELD}=").as_bytes()))
        .map(|v| String::from_utf8_lossy(v).into_owned());
    Ok((token, Request::from_parts(parts, Body::from(bytes))))
}

/// Refuses a write sent from another site, when the browser says so: `Sec-Fetch-Site`, or an
/// `Origin` whose host is neither `Host` nor (behind a proxy that rewrites it)
/// `X-Forwarded-Host`. The CSRF token is the real check; this is a second one.
fn cross_site(headers: &HeaderMap) -> bool {
    let fetch_site = headers
        .get("sec-fetch-site")
        .and_then(|v| v.to_str().ok())
        .unwrap_or("");
    if fetch_site == "cross-site" || fetch_site == "same-site" {
        return true;
    }
    let header = |name: &str| headers.get(name).and_then(|v| v.to_str().ok());
    match header("origin") {
        None | Some("null") => false,
        Some(origin) => {
            let origin_host = origin.split_once("://").map_or(origin, |(_, h)| h);
            ![header("host"), header("x-forwarded-host")]
                .into_iter()
                .flatten()
                .any(|h| h.eq_ignore_ascii_case(origin_host))
        }
    }
}

fn refuse(live: bool, status: StatusCode, code: &'static str, message: &str) -> Response {
    if live {
        ApiError::new(status, code, message).into_response()
    } else {
        AdminError::new(status, code, message).into_response()
    }
}

/// Per-route layer of dashboard routes: a live session with at least `needed`, and for writes a
/// matching CSRF token. Without a session, pages redirect to the sign-in page (live JSON answers
/// 401); a lower role gets 403 and nothing runs. Errors of the handler are rendered as HTML here.
pub async fn require_session_layer(
    State((app, needed)): State<(AppState, Role)>,
    mut req: Request,
    next: Next,
) -> Response {
    let live = is_live(&req);
    let request_id = req
        .extensions()
        .get::<RequestId>()
        .map(|r| r.0.clone())
        .unwrap_or_default();
    let token = cookie(req.headers(), SESSION_COOKIE).map(str::to_string);
    let resolved = match resolve(&app, token.as_deref()).await {
        Ok(r) => r,
        Err(e) => return ApiError::from(e).into_response(),
    };
    let (hash, record, session) = match resolved {
        Ok(found) => found,
        Err(ended) => {
            if live {
                return ApiError::new(
                    StatusCode::UNAUTHORIZED,
                    "session_required",
                    "sign in to the dashboard first",
                )
                .into_response();
            }
            let next_path = if req.method() == Method::GET {
                let uri = req.uri();
                let path = uri
                    .path_and_query()
                    .map(|p| p.as_str())
                    .unwrap_or(uri.path());
                format!("&next={}", urlencode(path))
            } else {
                String::new()
            };
            let mut response =
                Redirect::to(&format!("/admin/login?reason={}{next_path}", ended.code()))
                    .into_response();
            if token.is_some() {
                response.headers_mut().insert(
                    header::SET_COOKIE,
                    set_cookie(SESSION_COOKIE, "", "/admin", 0, secure(&app, req.headers())),
                );
            }
            return response;
        }
    };
    tracing::Span::current().record("key_id", tracing::field::display(session.principal.key_id));
    if let Err(e) = session.principal.require(needed) {
        return refuse(live, StatusCode::FORBIDDEN, "forbidden", &e.to_string())
            .with_layout(&session, &request_id);
    }
    if req.method() != Method::GET && req.method() != Method::HEAD {
        if cross_site(req.headers()) {
            return refuse(
                live,
                StatusCode::FORBIDDEN,
                "cross_site",
                "this form was sent from another site and was refused",
            )
            .with_layout(&session, &request_id);
        }
        let (presented, rebuilt) = match presented_csrf(req, app.config.server.max_body_bytes).await
        {
            Ok(found) => found,
            Err(response) => return response.with_layout(&session, &request_id),
        };
        req = rebuilt;
        if !presented.is_some_and(|p| equal(&p, &session.csrf)) {
            return refuse(
                live,
                StatusCode::FORBIDDEN,
                "csrf",
                "the form's security token is missing or wrong; reload the page and try again",
            )
            .with_layout(&session, &request_id);
        }
    }
    if let Err(e) = app
        .auth
        .touch_session(hash, &record, app.clock.now_ms())
        .await
    {
        return ApiError::from(e).into_response();
    }
    req.extensions_mut().insert(session.principal.clone());
    req.extensions_mut().insert(session.clone());
    let response = next.run(req).await;
    let mut response = response.with_layout(&session, &request_id);
    response
        .headers_mut()
        .entry(header::CACHE_CONTROL)
        .or_insert(HeaderValue::from_static("no-store"));
    response
}

/// Renders an [`AdminError`] left in a response as the dashboard's error page.
trait WithLayout {
    fn with_layout(self, session: &AdminSession, request_id: &str) -> Response;
}

impl WithLayout for Response {
    fn with_layout(mut self, session: &AdminSession, request_id: &str) -> Response {
        match self.extensions_mut().remove::<AdminError>() {
            Some(error) => error.page(Some(session), request_id),
            None => self,
        }
    }
}

/// `GET /admin/login`.
#[derive(askama::Template)]
#[template(path = "admin/login.html")]
struct LoginPage {
    l: Layout,
    csrf: String,
    next: String,
    message: Option<&'static str>,
    error: Option<String>,
}

/// `?next=` (where to go after sign-in) and `?reason=` (why sign-in is asked for).
#[derive(Deserialize)]
pub struct LoginQuery {
    next: Option<String>,
    reason: Option<String>,
}

fn login_response(
    app: &AppState,
    headers: &HeaderMap,
    status: StatusCode,
    next: &str,
    message: Option<&'static str>,
    error: Option<String>,
) -> Response {
    let existing = cookie(headers, LOGIN_COOKIE).filter(|t| well_formed(t));
    let token = existing.map_or_else(new_token, str::to_string);
    let page = LoginPage {
        l: Layout::public("Sign in"),
        csrf: login_csrf_for(&token),
        next: next.to_string(),
        message,
        error,
    };
    let mut response = (status, render(&page)).into_response();
    let headers_out = response.headers_mut();
    headers_out.insert(
        header::SET_COOKIE,
        set_cookie(
            LOGIN_COOKIE,
            &token,
            "/admin/login",
            3600,
            secure(app, headers),
        ),
    );
    headers_out.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    response
}

/// The sign-in form; an already signed-in browser goes straight on.
pub async fn login_page(
    State(app): State<AppState>,
    headers: HeaderMap,
    axum::extract::Query(q): axum::extract::Query<LoginQuery>,
) -> Response {
    let next = safe_next(q.next.as_deref());
    if let Ok(Ok(_)) = resolve(&app, cookie(&headers, SESSION_COOKIE)).await {
        return Redirect::to(&next).into_response();
    }
    let message = q.reason.as_deref().and_then(reason_message);
    login_response(&app, &headers, StatusCode::OK, &next, message, None)
}

/// The sign-in form.
#[derive(Deserialize)]
pub struct LoginForm {
    csrf: Option<String>,
    key: Option<String>,
    next: Option<String>,
}

/// Checks the key and starts a session. A refused key counts as a failed authentication of the
/// client's address.
pub async fn login(
    State(app): State<AppState>,
    client: Option<axum::Extension<ClientIp>>,
    headers: HeaderMap,
    form: Result<Form<LoginForm>, axum::extract::rejection::FormRejection>,
) -> Response {
    let Ok(Form(form)) = form else {
        return login_response(
            &app,
            &headers,
            StatusCode::BAD_REQUEST,
            "/admin",
            None,
            Some("The sign-in form could not be read; try again.".into()),
        );
    };
    let next = safe_next(form.next.as_deref());
    let expected = cookie(&headers, LOGIN_COOKIE)
        .filter(|t| well_formed(t))
        .map(login_csrf_for);
    let csrf_ok = match (expected, form.csrf.as_deref()) {
        (Some(expected), Some(presented)) => equal(&expected, presented),
        _ => false,
    };
    if !csrf_ok || cross_site(&headers) {
        return login_response(
            &app,
            &headers,
            StatusCode::FORBIDDEN,
            &next,
            None,
            Some("The sign-in form expired or came from another site; try again.".into()),
        );
    }
    let key = form.key.as_deref().map(str::trim).unwrap_or("");
    if key.is_empty() {
        return login_response(
            &app,
            &headers,
            StatusCode::UNPROCESSABLE_ENTITY,
            &next,
            None,
            Some("Enter an API key.".into()),
        );
    }
    let principal = match app.auth.authenticate(key) {
        Ok(p) => p,
        Err(e) => {
            if let Some(axum::Extension(ClientIp(ip))) = client
                && let Err(store) = app.security.auth_failed(ip, "sign_in").await
            {
                return ApiError::from(store).into_response();
            }
            let why = match e {
                AuthError::Expired => "This key has expired.",
                AuthError::Revoked => "This key was revoked.",
                _ => "This key is not valid.",
            };
            return login_response(
                &app,
                &headers,
                StatusCode::UNAUTHORIZED,
                &next,
                None,
                Some(why.into()),
            );
        }
    };
    if let Err(limited) = app.security.limits.check_session(principal.key_id) {
        let ip = client.map(|axum::Extension(ClientIp(ip))| ip);
        app.security.count_rate_limited("/admin/login", ip);
        let secs = limited.retry_after_secs();
        let mut response = login_response(
            &app,
            &headers,
            StatusCode::TOO_MANY_REQUESTS,
            &next,
            None,
            Some(format!(
                "This key signed in too often; try again in {secs} s."
            )),
        );
        let out = response.headers_mut();
        out.insert(header::RETRY_AFTER, secs.into());
        out.insert("ratelimit-limit", limited.limit.into());
        out.insert("ratelimit-remaining", 0u32.into());
        out.insert("ratelimit-reset", secs.into());
        return response;
    }
    let token = match app.auth.create_session(&principal).await {
        Ok(t) => t,
        Err(e) => return ApiError::from(e).into_response(),
    };
    let secure = secure(&app, &headers);
    let mut response = Redirect::to(&next).into_response();
    let out = response.headers_mut();
    out.append(
        header::SET_COOKIE,
        set_cookie(SESSION_COOKIE, &token, "/admin", MAX_AGE_MS / 1000, secure),
    );
    out.append(
        header::SET_COOKIE,
        set_cookie(LOGIN_COOKIE, "", "/admin/login", 0, secure),
    );
    response
}

/// Ends the session (audited) and clears the cookie.
pub async fn logout(
    State(app): State<AppState>,
    headers: HeaderMap,
    axum::Extension(session): axum::Extension<AdminSession>,
) -> Result<Response, AdminError> {
    if let Some(token) = cookie(&headers, SESSION_COOKIE) {
        app.auth
            .delete_session(hash_token(token), Some(&session.principal))
            .await?;
    }
    let mut response = Redirect::to("/admin/login?reason=signed_out").into_response();
    response.headers_mut().insert(
        header::SET_COOKIE,
        set_cookie(SESSION_COOKIE, "", "/admin", 0, secure(&app, &headers)),
    );
    Ok(response)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cookies_are_found_among_others() {
        let mut h = HeaderMap::new();
        h.insert(
            header::COOKIE,
            HeaderValue::from_static("a=1; keel_session=xyz ; b=2"),
        );
        assert_eq!(cookie(&h, SESSION_COOKIE), Some("xyz"));
        assert_eq!(cookie(&h, "keel"), None);
    }

    #[test]
    fn writes_from_other_sites_are_recognised() {
        let h = |pairs: &[(&'static str, &'static str)]| {
            let mut m = HeaderMap::new();
            for (k, v) in pairs {
                m.insert(*k, HeaderValue::from_static(v));
            }
            m
        };
        assert!(!cross_site(&h(&[("host", "keel.local:8080")])));
        assert!(!cross_site(&h(&[
            ("host", "keel.local:8080"),
            ("origin", "http://keel.local:8080")
        ])));
        assert!(cross_site(&h(&[
            ("host", "keel.local:8080"),
            ("origin", "http://evil.example")
        ])));
        assert!(!cross_site(&h(&[
            ("host", "127.0.0.1:8080"),
            ("x-forwarded-host", "keel.example.com"),
            ("origin", "https://keel.example.com")
        ])));
        assert!(cross_site(&h(&[("sec-fetch-site", "cross-site")])));
        assert!(!cross_site(&h(&[("sec-fetch-site", "same-origin")])));
    }

    #[test]
    fn next_stays_on_the_dashboard() {
        assert_eq!(
            safe_next(Some("/admin/tasks?status=dead")),
            "/admin/tasks?status=dead"
        );
        for bad in [
            "https://evil.example/",
            "//evil.example",
            "/admin//evil",
            "/adminx\\y",
            "/admin/login",
            "/api/v1/keys",
        ] {
            assert_eq!(safe_next(Some(bad)), "/admin", "{bad}");
        }
        assert_eq!(safe_next(None), "/admin");
    }

    #[test]
    fn csrf_tokens_differ_per_session_and_compare_exactly() {
        let (a, b) = (new_token(), new_token());
        assert!(well_formed(&a) && well_formed(&b));
        assert_ne!(csrf_for(&a), csrf_for(&b));
        assert!(equal(&csrf_for(&a), &csrf_for(&a)));
        assert!(!equal(&csrf_for(&a), &csrf_for(&a)[1..]));
        assert_ne!(csrf_for(&a), login_csrf_for(&a));
    }
}
