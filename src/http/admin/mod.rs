//! The admin dashboard at `/admin`: server-rendered pages (askama templates in `templates/`),
//! embedded static assets, SVG charts, session sign-in and CSRF-protected forms.
//!
//! Pages call the same service functions as the JSON API (the queue, audit, auth, circuits,
//! budgets and metrics rooms), so there is no second path to the data; every write passes the
//! signed-in key's `actor()` and is audited by the room that does it. An error has two
//! surfaces: [`ApiError`] answers JSON on the API, [`AdminError`] renders the same status and
//! message as an HTML page here.

pub mod api;
pub mod assets;
pub mod audit;
pub mod budgets;
pub mod charts;
pub mod circuits;
pub mod cycles;
pub mod dlq;
pub mod keys;
pub mod operations;
pub mod overview;
pub mod security;
pub mod session;
pub mod settings;
pub mod task_types;
pub mod tasks;

use std::sync::Arc;

use askama::Template;
use axum::extract::FromRequestParts;
use axum::extract::rejection::{FormRejection, PathRejection, QueryRejection};
use axum::http::StatusCode;
use axum::http::request::Parts;
use axum::response::{Html, IntoResponse, Response};

use crate::auth::{Principal, Role};
use crate::clock::Millis;
use crate::http::error::ApiError;
pub use session::AdminSession;

/// State of the dashboard shared by its handlers (in the router's extensions): the chart cache
/// and the new keys waiting to be shown once.
#[derive(Default)]
pub struct AdminState {
    /// Merged metric buckets that can no longer change.
    pub charts: charts::ChartCache,
    /// New keys waiting for their one-time page.
    pub reveals: keys::Reveals,
}

impl AdminState {
    /// A fresh state, one per router.
    pub fn new() -> Arc<AdminState> {
        Arc::new(AdminState::default())
    }
}

/// An error shown as a dashboard page: the same status, code and message the API would answer.
/// Left in the response's extensions by the handler and rendered (with the signed-in layout and
/// the request id) by the session layer.
#[derive(Debug, Clone)]
pub struct AdminError {
    status: StatusCode,
    code: &'static str,
    message: String,
}

impl AdminError {
    /// An error with a status, a stable code and a message for people.
    pub fn new(status: StatusCode, code: &'static str, message: impl Into<String>) -> Self {
        AdminError {
            status,
            code,
            message: message.into(),
        }
    }

    /// 400 with what was wrong.
    pub fn bad_request(message: impl Into<String>) -> Self {
        Self::new(StatusCode::BAD_REQUEST, "bad_request", message)
    }

    /// 500; the detail goes to the log only.
    pub fn internal(detail: impl std::fmt::Display) -> Self {
        Self::new(
            StatusCode::INTERNAL_SERVER_ERROR,
            "internal",
            detail.to_string(),
        )
    }

    /// The status answered.
    pub fn status(&self) -> StatusCode {
        self.status
    }

    /// The error page, for a signed-in session or (without one) the bare layout.
    pub fn page(self, session: Option<&AdminSession>, request_id: &str) -> Response {
        let internal =
            self.status.is_server_error() && self.status != StatusCode::SERVICE_UNAVAILABLE;
        let message = if internal {
            tracing::error!(error = %self.message, code = self.code, "internal error");
            format!(
                "Something went wrong inside keel. Quote request id {request_id} when reporting it."
            )
        } else {
            self.message
        };
        let l = match session {
            Some(s) => Layout::signed_in(s, "Error", "", None),
            None => Layout::public("Error"),
        };
        let page = ErrorPage {
            l,
            status: self.status.as_u16(),
            reason: self.status.canonical_reason().unwrap_or("Error"),
            code: self.code,
            message,
        };
        (self.status, render(&page)).into_response()
    }
}

impl IntoResponse for AdminError {
    fn into_response(self) -> Response {
        let mut response = self.status.into_response();
        response.extensions_mut().insert(self);
        response
    }
}

impl From<ApiError> for AdminError {
    fn from(e: ApiError) -> Self {
        AdminError::new(e.status(), e.code(), e.message().to_string())
    }
}

macro_rules! via_api_error {
    ($($t:ty),*) => {$(
        impl From<$t> for AdminError {
            fn from(e: $t) -> Self {
                ApiError::from(e).into()
            }
        }
    )*};
}
via_api_error!(
    crate::queue::QueueError,
    crate::auth::AuthError,
    crate::audit::AuditError,
    crate::store::StoreError,
    crate::exec::circuit::CircuitError,
    crate::budget::BudgetError,
    crate::cycles::CyclesError,
    crate::security::LiftError,
    QueryRejection,
    PathRejection
);

impl From<FormRejection> for AdminError {
    fn from(rejection: FormRejection) -> Self {
        AdminError::new(rejection.status(), "invalid_form", rejection.body_text())
    }
}

/// `Query` whose rejection is an [`AdminError`] page.
#[derive(FromRequestParts)]
#[from_request(via(axum::extract::Query), rejection(AdminError))]
pub struct PageQuery<T>(pub T);

/// `Form` whose rejection is an [`AdminError`] page.
#[derive(axum::extract::FromRequest)]
#[from_request(via(axum::extract::Form), rejection(AdminError))]
pub struct PageForm<T>(pub T);

/// `Path` whose rejection is an [`AdminError`] page.
#[derive(FromRequestParts)]
#[from_request(via(axum::extract::Path), rejection(AdminError))]
pub struct PagePath<T>(pub T);

#[derive(Template)]
#[template(path = "admin/error.html")]
struct ErrorPage {
    l: Layout,
    status: u16,
    reason: &'static str,
    code: &'static str,
    message: String,
}

/// `GET /`: a browser that opens keel's address lands on the dashboard (307 to `/admin`).
pub async fn root() -> axum::response::Redirect {
    axum::response::Redirect::temporary("/admin")
}

/// `GET /admin/…` that is no page: the dashboard's 404 (a trailing slash goes to the page).
pub async fn not_found(uri: axum::http::Uri) -> Response {
    let path = uri.path();
    let trimmed = path.trim_end_matches('/');
    if trimmed != path && trimmed.starts_with("/admin") && !trimmed.contains("//") {
        return axum::response::Redirect::to(trimmed).into_response();
    }
    AdminError::new(
        StatusCode::NOT_FOUND,
        "not_found",
        format!("there is no dashboard page at {path}"),
    )
    .into_response()
}

/// Renders a template; a template that fails to render is an internal error.
pub fn render<T: Template>(template: &T) -> Response {
    match template.render() {
        Ok(html) => Html(html).into_response(),
        Err(e) => {
            tracing::error!(error = %e, "a dashboard template failed to render");
            (StatusCode::INTERNAL_SERVER_ERROR, "internal error").into_response()
        }
    }
}

/// The signed-in caller of a dashboard handler, and the flash message of the page, if any.
pub struct Ctx {
    /// The session (principal and CSRF token).
    pub session: AdminSession,
    /// A fixed message chosen by `?msg=` after a redirect.
    pub flash: Option<&'static str>,
}

impl<S: Send + Sync> FromRequestParts<S> for Ctx {
    type Rejection = AdminError;

    async fn from_request_parts(parts: &mut Parts, _: &S) -> Result<Self, Self::Rejection> {
        let session = parts
            .extensions
            .get::<AdminSession>()
            .cloned()
            .ok_or_else(|| AdminError::internal("dashboard route reached without a session"))?;
        let flash = parts
            .uri
            .query()
            .and_then(|q| q.split('&').find_map(|p| p.strip_prefix("msg=")))
            .and_then(flash_message);
        Ok(Ctx { session, flash })
    }
}

impl Ctx {
    /// The page layout for this caller.
    pub fn layout(&self, title: impl Into<String>, active: &'static str) -> Layout {
        Layout::signed_in(&self.session, title, active, self.flash)
    }

    /// The signed-in principal.
    pub fn principal(&self) -> &Principal {
        &self.session.principal
    }

    /// The audit actor of writes made by this caller.
    pub fn actor(&self) -> String {
        self.session.principal.actor()
    }
}

/// Messages shown after a redirect, chosen by code so nothing from the URL is echoed.
fn flash_message(code: &str) -> Option<&'static str> {
    Some(match code {
        "enqueued" => "Task enqueued.",
        "cancelled" => "Cancellation requested.",
        "drained" => "Dead letters moved back to the queue.",
        "drained_none" => "No dead letters matched; nothing was moved.",
        "purged" => "Dead letter purged.",
        "retried" => "Task retried: it runs again now.",
        "deleted" => "Task deleted.",
        "run_now" => "Task made due: it runs now.",
        "retried_all" => "Matching dead letters moved back to the queue.",
        "retried_more" => {
            "A batch of matching dead letters moved back to the queue; retry again for the rest."
        }
        "retried_none" => "No dead letters matched; nothing was retried.",
        "type_paused" => "Task type paused: its tasks wait until it is resumed.",
        "type_resumed" => "Task type resumed.",
        "reset" => "Circuit reset.",
        "revoked" => "Key revoked.",
        "budget_set" => "Budget changed.",
        "cycle_started" => "Cycle started.",
        "cycle_exists" => "That cycle already exists; nothing new was started.",
        "run_profiles_triggered" => "Run profiles triggered.",
        "paused" => "Cycles paused.",
        "resumed" => "Cycles resumed.",
        "halted" => "Namespace halted.",
        "namespace_resumed" => "Namespace resumed.",
        "cycle_cancelled" => "Cycle cancelled.",
        "unblocked" => "Block lifted.",
        _ => return None,
    })
}

/// One entry of the navigation.
pub struct NavItem {
    /// Link target.
    pub href: &'static str,
    /// Label.
    pub label: &'static str,
    /// Page id compared with [`Layout::active`].
    pub id: &'static str,
}

/// What every page's frame needs: title, navigation for the caller's role, the CSRF token of
/// the sign-out form, asset URLs.
pub struct Layout {
    /// Page title.
    pub title: String,
    /// Id of the current section.
    pub active: &'static str,
    /// Whether a session is signed in (else the bare frame of the sign-in page).
    pub signed_in: bool,
    /// Name of the signed-in key.
    pub key_name: String,
    /// Its role.
    pub role: Role,
    /// The session's CSRF token.
    pub csrf: String,
    /// A message for the top of the page.
    pub flash: Option<&'static str>,
    /// Stylesheet URL (content-hashed).
    pub css: String,
    /// Script URL (content-hashed).
    pub js: String,
    /// Icon URL (content-hashed).
    pub icon: String,
    /// keel's version.
    pub version: &'static str,
}

impl Layout {
    fn base(title: String) -> Layout {
        Layout {
            title,
            active: "",
            signed_in: false,
            key_name: String::new(),
            role: Role::Viewer,
            csrf: String::new(),
            flash: None,
            css: assets::url("admin.css"),
            js: assets::url("admin.js"),
            icon: assets::url("favicon.svg"),
            version: crate::process::VERSION,
        }
    }

    /// The frame of a page without a session (sign-in).
    pub fn public(title: impl Into<String>) -> Layout {
        Layout::base(title.into())
    }

    /// The frame of a signed-in page.
    pub fn signed_in(
        session: &AdminSession,
        title: impl Into<String>,
        active: &'static str,
        flash: Option<&'static str>,
    ) -> Layout {
        Layout {
            active,
            signed_in: true,
            key_name: session.principal.name.clone(),
            role: session.principal.role,
            csrf: session.csrf.clone(),
            flash,
            ..Layout::base(title.into())
        }
    }

    /// Whether the caller may submit work: enqueue tasks and trigger cycles (service and up, as
    /// in the API).
    pub fn can_submit(&self) -> bool {
        self.role >= Role::Service
    }

    /// Whether the caller may act on work and state (operator or admin).
    pub fn can_operate(&self) -> bool {
        self.role >= Role::Operator
    }

    /// Whether the caller is an admin.
    pub fn is_admin(&self) -> bool {
        self.role >= Role::Admin
    }

    /// The sections this caller may open.
    pub fn nav(&self) -> Vec<NavItem> {
        let mut items = vec![
            NavItem {
                href: "/admin",
                label: "Overview",
                id: "overview",
            },
            NavItem {
                href: "/admin/tasks",
                label: "Tasks",
                id: "tasks",
            },
            NavItem {
                href: "/admin/scheduled",
                label: "Scheduled",
                id: "scheduled",
            },
            NavItem {
                href: "/admin/search",
                label: "Search",
                id: "search",
            },
            NavItem {
                href: "/admin/task-types",
                label: "Task types",
                id: "task-types",
            },
            NavItem {
                href: "/admin/dlq",
                label: "Dead letters",
                id: "dlq",
            },
            NavItem {
                href: "/admin/circuits",
                label: "Circuits",
                id: "circuits",
            },
            NavItem {
                href: "/admin/cycles",
                label: "Cycles",
                id: "cycles",
            },
            NavItem {
                href: "/admin/budgets",
                label: "Budgets",
                id: "budgets",
            },
            NavItem {
                href: "/admin/audit",
                label: "Audit",
                id: "audit",
            },
            NavItem {
                href: "/admin/api",
                label: "API",
                id: "api",
            },
        ];
        if self.is_admin() {
            items.push(NavItem {
                href: "/admin/keys",
                label: "Keys",
                id: "keys",
            });
            items.push(NavItem {
                href: "/admin/security",
                label: "Security",
                id: "security",
            });
        }
        if self.can_operate() {
            items.push(NavItem {
                href: "/admin/settings",
                label: "Settings",
                id: "settings",
            });
        }
        items
    }
}

/// `2026-01-01 00:00:00Z`.
pub fn time(ms: Millis) -> String {
    crate::clock::to_datetime(ms)
        .format("%Y-%m-%d %H:%M:%SZ")
        .to_string()
}

/// `time` of an optional moment, or `—`.
pub fn time_opt(ms: Option<Millis>) -> String {
    ms.map_or_else(|| "—".to_string(), time)
}

/// How long ago `ms` was at `now`: `just now`, `5 s ago`, `3 min ago`, `2 h ago`, `4 d ago`; or
/// `in …` for a future moment.
pub fn ago(now: Millis, ms: Millis) -> String {
    let delta = now - ms;
    let (future, secs) = (delta < 0, delta.unsigned_abs() / 1000);
    let span = match secs {
        0 => return "just now".into(),
        1..=59 => format!("{secs} s"),
        60..=3599 => format!("{} min", secs / 60),
        3600..=172_799 => format!("{} h", secs / 3600),
        _ => format!("{} d", secs / 86_400),
    };
    if future {
        format!("in {span}")
    } else {
        format!("{span} ago")
    }
}

/// An amount in micro-dollars: cents from one cent up (`$12.34`), and every significant digit
/// below a cent (`$0.0042`), so a small spend never shows as `$0.00`.
pub fn usd(micros: u64) -> String {
    if micros == 0 || micros >= 10_000 {
        format!("${:.2}", micros as f64 / 1e6)
    } else {
        let text = format!("{:.6}", micros as f64 / 1e6);
        format!("${}", text.trim_end_matches('0'))
    }
}

/// A duration in microseconds for people: `850 µs`, `12.3 ms`, `2.40 s`.
pub fn micros(us: u64) -> String {
    if us < 1000 {
        format!("{us} µs")
    } else if us < 1_000_000 {
        let ms = us as f64 / 1000.0;
        if ms < 100.0 {
            format!("{ms:.1} ms")
        } else {
            format!("{ms:.0} ms")
        }
    } else {
        format!("{:.2} s", us as f64 / 1e6)
    }
}

/// A duration in whole seconds for people: `45 s`, `12 min`, `3 h 5 min`, `2 d 4 h`.
pub fn seconds(secs: u64) -> String {
    match secs {
        0..=59 => format!("{secs} s"),
        60..=3599 => format!("{} min", secs / 60),
        3600..=86_399 => format!("{} h {} min", secs / 3600, (secs % 3600) / 60),
        _ => format!("{} d {} h", secs / 86_400, (secs % 86_400) / 3600),
    }
}

/// A number with thin groups of three digits: `100 000`.
pub fn count(n: u64) -> String {
    let digits = n.to_string();
    let mut out = String::with_capacity(digits.len() + digits.len() / 3);
    for (i, c) in digits.chars().enumerate() {
        if i > 0 && (digits.len() - i).is_multiple_of(3) {
            out.push('\u{202f}');
        }
        out.push(c);
    }
    out
}

/// A JSON text pretty-printed when it parses, else as it is.
pub fn pretty_json(raw: &str) -> String {
    serde_json::from_str::<serde_json::Value>(raw)
        .ok()
        .and_then(|v| serde_json::to_string_pretty(&v).ok())
        .unwrap_or_else(|| raw.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn people_formats() {
        assert_eq!(ago(10_000, 10_000), "just now");
        assert_eq!(ago(70_000, 10_000), "1 min ago");
        assert_eq!(ago(0, 7_200_000), "in 2 h");
        assert_eq!(micros(850), "850 µs");
        assert_eq!(micros(12_345), "12.3 ms");
        assert_eq!(micros(2_400_000), "2.40 s");
        assert_eq!(seconds(3_900), "1 h 5 min");
        assert_eq!(count(100_000), "100\u{202f}000");
        assert_eq!(count(999), "999");
        assert_eq!(time(1_767_225_600_000), "2026-01-01 00:00:00Z");
        assert_eq!(usd(0), "$0.00");
        assert_eq!(usd(4_200), "$0.0042");
        assert_eq!(usd(1), "$0.000001");
        assert_eq!(usd(10_000), "$0.01");
        assert_eq!(usd(12_340_000), "$12.34");
    }

    #[test]
    fn flash_messages_are_fixed_texts() {
        assert_eq!(flash_message("reset"), Some("Circuit reset."));
        assert_eq!(flash_message("<script>"), None);
    }
}
