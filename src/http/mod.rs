//! HTTP: the router (every route with the role it needs), middleware, and the server loop.
//!
//! `router(state)` is built apart from `serve(listener, router, shutdown)` so tests run the real
//! router on `127.0.0.1:0`. The state ([`HttpState`]) is assembled by the application.

pub mod admin;
mod api;
mod budgets;
mod cycle_runs;
mod cycles;
pub mod error;
mod extract;
mod hooks;
pub mod middleware;
pub mod models;
pub mod openapi;
mod operations;
mod security;
mod state;
mod tasks;

use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;

use axum::Router;
use axum::extract::DefaultBodyLimit;
use axum::http::{HeaderName, HeaderValue, Method, header};
use axum::routing::{MethodRouter, delete, get, post, put};
use tower_http::catch_panic::CatchPanicLayer;
use tower_http::cors::{AllowOrigin, CorsLayer};

use crate::auth::Role;
pub use api::key_json;
pub use middleware::Access;
pub use state::HttpState;
pub use tasks::task_json;

/// Shared state of every handler.
pub type AppState = Arc<HttpState>;

/// A route: method, path template and who may call it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RouteSpec {
    /// HTTP method.
    pub method: Method,
    /// Path template (`{id}` for parameters).
    pub path: &'static str,
    /// Who may call it.
    pub access: Access,
}

fn route(
    method: Method,
    path: &'static str,
    access: Access,
    handler: MethodRouter<AppState>,
) -> (RouteSpec, MethodRouter<AppState>) {
    (
        RouteSpec {
            method,
            path,
            access,
        },
        handler,
    )
}

/// Every route with its role. The router is built from this table, and a test walks it.
#[rustfmt::skip]
fn table() -> Vec<(RouteSpec, MethodRouter<AppState>)> {
    use Access::{Public, Role as R, Session as S};
    use Role::{Admin, Operator, Service, Viewer};
    vec![
        route(Method::GET, "/health", Public, get(api::health)),
        route(Method::GET, "/ready", Public, get(api::ready)),
        route(Method::GET, "/metrics", R(Viewer), get(api::metrics_text)),
        route(Method::GET, "/metrics/json", R(Viewer), get(api::metrics_json)),
        route(Method::GET, "/api/v1/metrics/history", R(Viewer), get(api::metrics_history)),
        route(Method::GET, "/api/v1/openapi.json", R(Viewer), get(openapi::serve)),
        route(Method::GET, "/api/v1/system", R(Viewer), get(api::system)),
        route(Method::GET, "/api/v1/cron/status", R(Viewer), get(api::cron_status)),
        route(Method::GET, "/api/v1/audit", R(Viewer), get(api::audit_list)),
        route(Method::GET, "/api/v1/audit/head", R(Viewer), get(api::audit_head)),
        route(Method::GET, "/api/v1/audit/checkpoints", R(Viewer), get(api::audit_checkpoints)),
        route(Method::POST, "/api/v1/audit/verify", R(Operator), post(api::audit_verify)),
        route(Method::GET, "/api/v1/keys", R(Admin), get(api::keys_list)),
        route(Method::POST, "/api/v1/keys", R(Admin), post(api::keys_create)),
        route(Method::GET, "/api/v1/keys/{id}", R(Admin), get(api::keys_get)),
        route(Method::POST, "/api/v1/keys/{id}/revoke", R(Admin), post(api::keys_revoke)),
        route(Method::POST, "/api/v1/keys/{id}/rotate", R(Admin), post(api::keys_rotate)),
        route(Method::POST, "/api/v1/tasks", R(Service), post(tasks::submit)),
        route(Method::GET, "/api/v1/tasks", R(Viewer), get(tasks::list)),
        route(Method::GET, "/api/v1/tasks/search", R(Viewer), get(operations::search)),
        route(Method::GET, "/api/v1/tasks/scheduled", R(Viewer), get(operations::scheduled)),
        route(Method::GET, "/api/v1/tasks/{id}", R(Viewer), get(tasks::get)),
        route(Method::DELETE, "/api/v1/tasks/{id}", R(Operator), delete(operations::delete)),
        route(Method::GET, "/api/v1/tasks/{id}/logs", R(Viewer), get(tasks::logs)),
        route(Method::POST, "/api/v1/tasks/{id}/cancel", R(Operator), post(tasks::cancel)),
        route(Method::POST, "/api/v1/tasks/{id}/retry", R(Operator), post(operations::retry)),
        route(Method::POST, "/api/v1/tasks/{id}/run-now", R(Operator), post(operations::run_now)),
        route(Method::GET, "/api/v1/task-types", R(Viewer), get(operations::task_types)),
        route(Method::POST, "/api/v1/task-types/{type}/pause", R(Operator), post(operations::pause_type)),
        route(Method::POST, "/api/v1/task-types/{type}/resume", R(Operator), post(operations::resume_type)),
        route(Method::GET, "/api/v1/stats/daily", R(Viewer), get(operations::daily)),
        route(Method::GET, "/api/v1/stream/{id}", R(Viewer), get(tasks::stream)),
        route(Method::GET, "/api/v1/runs", R(Viewer), get(tasks::runs)),
        route(Method::GET, "/api/v1/dlq/stats", R(Viewer), get(tasks::dlq_stats)),
        route(Method::GET, "/api/v1/dlq", R(Viewer), get(tasks::dlq_list)),
        route(Method::POST, "/api/v1/dlq/drain", R(Operator), post(tasks::dlq_drain)),
        route(Method::POST, "/api/v1/dlq/retry", R(Operator), post(operations::dlq_retry)),
        route(Method::DELETE, "/api/v1/dlq/{id}", R(Operator), delete(tasks::dlq_delete)),
        route(Method::GET, "/api/v1/circuits", R(Viewer), get(tasks::circuits)),
        route(Method::POST, "/api/v1/circuits/{name}/reset", R(Operator), post(tasks::circuit_reset)),
        route(Method::GET, "/api/v1/budgets", R(Viewer), get(budgets::list)),
        route(Method::PUT, "/api/v1/budgets/{provider}", R(Operator), put(budgets::set)),
        route(Method::GET, "/api/v1/profiles", R(Viewer), get(cycles::profiles_list)),
        route(Method::GET, "/api/v1/run-profiles", R(Viewer), get(cycles::run_profiles_list)),
        route(Method::GET, "/api/v1/schemas/{name}", R(Viewer), get(cycles::schema_get)),
        route(Method::POST, "/api/v1/config/reload", R(Operator), post(cycle_runs::config_reload)),
        route(Method::POST, "/api/v1/cycles/trigger", R(Service), post(cycles::cycles_trigger)),
        route(Method::POST, "/api/v1/run-profiles/trigger", R(Service), post(cycles::run_profiles_trigger)),
        route(Method::GET, "/api/v1/cycles/recent", R(Viewer), get(cycles::cycles_recent)),
        route(Method::GET, "/api/v1/cycles/{id}", R(Viewer), get(cycles::cycles_get)),
        route(Method::POST, "/api/v1/cycles/{id}/cancel", R(Operator), post(cycle_runs::cycles_cancel)),
        route(Method::GET, "/api/v1/execution-records", R(Viewer), get(cycles::execution_records)),
        route(Method::GET, "/api/v1/value-ledger", R(Viewer), get(cycles::value_ledger)),
        route(Method::GET, "/api/v1/telemetry", R(Viewer), get(cycles::telemetry)),
        route(Method::GET, "/api/v1/telemetry/replay", R(Viewer), get(cycles::telemetry_replay)),
        route(Method::POST, "/api/v1/profiles/{id}/signals", R(Operator), post(cycles::signals_create)),
        route(Method::GET, "/api/v1/profiles/{id}/signals", R(Viewer), get(cycles::signals_list)),
        route(Method::POST, "/api/v1/profiles/{id}/strategy-proposals", R(Operator), post(cycles::proposals_create)),
        route(Method::GET, "/api/v1/strategy-proposals", R(Viewer), get(cycles::proposals_list)),
        route(Method::POST, "/api/v1/strategy-proposals/{id}/approve", R(Operator), post(cycles::proposal_approve)),
        route(Method::POST, "/api/v1/strategy-proposals/{id}/reject", R(Operator), post(cycles::proposal_reject)),
        route(Method::GET, "/api/v1/governance", R(Viewer), get(cycles::governance_get)),
        route(Method::POST, "/api/v1/governance/pause", R(Operator), post(cycles::governance_pause)),
        route(Method::POST, "/api/v1/governance/resume", R(Operator), post(cycles::governance_resume)),
        route(Method::POST, "/api/v1/governance/namespaces/{ns}/halt", R(Operator), post(cycles::namespace_halt)),
        route(Method::POST, "/api/v1/governance/namespaces/{ns}/resume", R(Operator), post(cycles::namespace_resume)),
        route(Method::GET, "/api/v1/security/blocks", R(Admin), get(security::blocks_list)),
        route(Method::DELETE, "/api/v1/security/blocks/{ip}", R(Admin), delete(security::blocks_lift)),
        route(Method::GET, "/api/v1/security/events", R(Admin), get(security::events_list)),
        route(Method::POST, "/hooks/{source}", Public, post(hooks::receive)),
        route(Method::GET, "/api/v1/inbox/sources", R(Viewer), get(hooks::sources)),
        route(Method::GET, "/api/v1/inbox/rejections", R(Operator), get(hooks::rejections)),
        // The dashboard: a session cookie with the role (pages redirect to sign-in without one);
        // every form POST carries the session's CSRF token.
        route(Method::GET, "/", Public, get(admin::root)),
        route(Method::GET, "/admin/login", Public, get(admin::session::login_page)),
        route(Method::POST, "/admin/login", Public, post(admin::session::login)),
        route(Method::POST, "/admin/logout", S(Viewer), post(admin::session::logout)),
        route(Method::GET, "/admin/assets/{file}", Public, get(admin::assets::serve)),
        route(Method::GET, "/admin", S(Viewer), get(admin::overview::page)),
        route(Method::GET, "/admin/live/overview", S(Viewer), get(admin::overview::live)),
        route(Method::GET, "/admin/tasks", S(Viewer), get(admin::tasks::list)),
        route(Method::POST, "/admin/tasks", S(Service), post(admin::tasks::enqueue)),
        route(Method::GET, "/admin/live/tasks", S(Viewer), get(admin::tasks::live_list)),
        route(Method::GET, "/admin/tasks/{id}", S(Viewer), get(admin::tasks::detail)),
        route(Method::POST, "/admin/tasks/{id}/cancel", S(Operator), post(admin::tasks::cancel)),
        route(Method::POST, "/admin/tasks/{id}/retry", S(Operator), post(admin::operations::retry)),
        route(Method::POST, "/admin/tasks/{id}/delete", S(Operator), post(admin::operations::delete)),
        route(Method::POST, "/admin/tasks/{id}/run-now", S(Operator), post(admin::operations::run_now)),
        route(Method::GET, "/admin/live/tasks/{id}/stream", S(Viewer), get(tasks::stream)),
        route(Method::GET, "/admin/scheduled", S(Viewer), get(admin::operations::scheduled)),
        route(Method::GET, "/admin/search", S(Viewer), get(admin::operations::search)),
        route(Method::GET, "/admin/task-types", S(Viewer), get(admin::task_types::page)),
        route(Method::POST, "/admin/task-types/{type}/pause", S(Operator), post(admin::task_types::pause)),
        route(Method::POST, "/admin/task-types/{type}/resume", S(Operator), post(admin::task_types::resume)),
        route(Method::GET, "/admin/dlq", S(Viewer), get(admin::dlq::page)),
        route(Method::POST, "/admin/dlq/drain", S(Operator), post(admin::dlq::drain)),
        route(Method::POST, "/admin/dlq/retry", S(Operator), post(admin::operations::dlq_retry)),
        route(Method::POST, "/admin/dlq/{id}/delete", S(Operator), post(admin::dlq::delete)),
        route(Method::GET, "/admin/circuits", S(Viewer), get(admin::circuits::page)),
        route(Method::POST, "/admin/circuits/{name}/reset", S(Operator), post(admin::circuits::reset)),
        route(Method::GET, "/admin/cycles", S(Viewer), get(admin::cycles::page)),
        route(Method::POST, "/admin/cycles/trigger", S(Service), post(admin::cycles::trigger)),
        route(Method::POST, "/admin/cycles/run-profiles/trigger", S(Service), post(admin::cycles::trigger_run_profiles)),
        route(Method::POST, "/admin/cycles/pause", S(Operator), post(admin::cycles::pause)),
        route(Method::POST, "/admin/cycles/resume", S(Operator), post(admin::cycles::resume)),
        route(Method::POST, "/admin/cycles/halt", S(Operator), post(admin::cycles::halt)),
        route(Method::POST, "/admin/cycles/namespaces/{ns}/resume", S(Operator), post(admin::cycles::resume_namespace)),
        route(Method::POST, "/admin/cycles/{id}/cancel", S(Operator), post(admin::cycles::cancel)),
        route(Method::GET, "/admin/cycles/{id}", S(Viewer), get(admin::cycles::detail)),
        route(Method::GET, "/admin/budgets", S(Viewer), get(admin::budgets::page)),
        route(Method::POST, "/admin/budgets/{provider}", S(Operator), post(admin::budgets::set)),
        route(Method::GET, "/admin/audit", S(Viewer), get(admin::audit::page)),
        route(Method::POST, "/admin/audit/verify", S(Operator), post(admin::audit::verify)),
        route(Method::GET, "/admin/keys", S(Admin), get(admin::keys::page)),
        route(Method::POST, "/admin/keys", S(Admin), post(admin::keys::create)),
        route(Method::GET, "/admin/keys/{id}/created", S(Admin), get(admin::keys::created)),
        route(Method::POST, "/admin/keys/{id}/rotate", S(Admin), post(admin::keys::rotate)),
        route(Method::POST, "/admin/keys/{id}/revoke", S(Admin), post(admin::keys::revoke)),
        route(Method::GET, "/admin/security", S(Admin), get(admin::security::page)),
        route(Method::POST, "/admin/security/blocks/{ip}/lift", S(Admin), post(admin::security::lift)),
        route(Method::GET, "/admin/settings", S(Operator), get(admin::settings::page)),
        route(Method::GET, "/admin/api", S(Viewer), get(admin::api::page)),
        route(Method::GET, "/admin/{*rest}", S(Viewer), get(admin::not_found)),
    ]
}

/// Every route and the access it needs.
pub fn routes() -> Vec<RouteSpec> {
    table().into_iter().map(|(spec, _)| spec).collect()
}

/// The full router over `app`'s state.
pub fn router(app: AppState) -> Router {
    let mut router = Router::new();
    for (spec, handler) in table() {
        let guarded = match spec.access {
            Access::Public => handler,
            Access::Role(needed) => handler.route_layer(axum::middleware::from_fn_with_state(
                (Arc::clone(&app), needed),
                middleware::require_role,
            )),
            Access::Session(needed) => handler.route_layer(axum::middleware::from_fn_with_state(
                (Arc::clone(&app), needed),
                admin::session::require_session_layer,
            )),
        };
        router = router.route(spec.path, guarded);
    }
    let mut router = router
        .layer(axum::Extension(admin::AdminState::new()))
        .fallback(api::not_found)
        .method_not_allowed_fallback(api::method_not_allowed)
        .layer(CatchPanicLayer::custom(middleware::panic_response))
        .layer(DefaultBodyLimit::max(app.config.server.max_body_bytes));
    if let Some(cors) = cors_layer(&app.config.server.cors_allowed_origins) {
        router = router.layer(cors);
    }
    router
        .layer(axum::middleware::from_fn_with_state(
            Arc::clone(&app),
            middleware::security_gate,
        ))
        .layer(axum::middleware::from_fn_with_state(
            Arc::clone(&app),
            middleware::request_context,
        ))
        .with_state(app)
}

fn cors_layer(origins: &[String]) -> Option<CorsLayer> {
    if origins.is_empty() {
        return None;
    }
    let origins: Vec<HeaderValue> = origins
        .iter()
        .filter_map(|o| HeaderValue::from_str(o).ok())
        .collect();
    Some(
        CorsLayer::new()
            .allow_origin(AllowOrigin::list(origins))
            .allow_methods([Method::GET, Method::POST, Method::PUT, Method::DELETE])
            .allow_headers([
                header::AUTHORIZATION,
                header::CONTENT_TYPE,
                HeaderName::from_static("x-api-key"),
                middleware::REQUEST_ID.clone(),
            ])
            .expose_headers([middleware::REQUEST_ID.clone()]),
    )
}

/// Serves `router` on `listener` until `shutdown` resolves, then finishes in-flight requests.
pub async fn serve(
    listener: tokio::net::TcpListener,
    router: Router,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    axum::serve(
        listener,
        router.into_make_service_with_connect_info::<SocketAddr>(),
    )
    .with_graceful_shutdown(shutdown)
    .await
}
