//! Operator actions of the dashboard, as the API's: retry a task now, delete a task, retry the
//! dead letters of one error class or type, the search page, and the scheduled tasks with
//! "run now". Every form is POST-redirect-GET with the session's CSRF token.

use askama::Template;
use askama_web::WebTemplate;
use axum::extract::State;
use axum::response::Redirect;
use serde::Deserialize;
use uuid::Uuid;

use super::tasks::TaskRow;
use super::{AdminError, Ctx, Layout, PageForm, PagePath, PageQuery, ago, time};
use crate::http::AppState;
use crate::http::models::operations::{parse_scheduled_cursor, scheduled_cursor};
use crate::queue::{DeadFilter, RETRY_BATCH_MAX, SearchQuery};

/// Task records one search page reads.
const SEARCH_SCAN: usize = 1000;
/// Matches one search page shows.
const SEARCH_LIMIT: usize = 50;
/// Scheduled tasks per page.
const SCHEDULED_PAGE: usize = 50;

fn task_id(raw: &str) -> Result<Uuid, AdminError> {
    Uuid::parse_str(raw)
        .map_err(|_| AdminError::bad_request(format!("`{raw}` is not a valid task id")))
}

/// `POST /admin/tasks/{id}/retry`: runs a dead or retrying task now (audited as `task.retry`).
pub async fn retry(
    State(app): State<AppState>,
    ctx: Ctx,
    PagePath(id): PagePath<String>,
) -> Result<Redirect, AdminError> {
    let id = task_id(&id)?;
    app.queue.retry_now(&ctx.actor(), id).await?;
    Ok(Redirect::to(&format!("/admin/tasks/{id}?msg=retried")))
}

/// `POST /admin/tasks/{id}/delete`: deletes a task that is not running (audited as
/// `task.delete`).
pub async fn delete(
    State(app): State<AppState>,
    ctx: Ctx,
    PagePath(id): PagePath<String>,
) -> Result<Redirect, AdminError> {
    let id = task_id(&id)?;
    app.queue.delete(&ctx.actor(), id).await?;
    Ok(Redirect::to("/admin/tasks?msg=deleted"))
}

/// `POST /admin/tasks/{id}/run-now`: makes a scheduled task due now (audited as
/// `task.run_now`).
pub async fn run_now(
    State(app): State<AppState>,
    ctx: Ctx,
    PagePath(id): PagePath<String>,
) -> Result<Redirect, AdminError> {
    let id = task_id(&id)?;
    app.queue.run_now(&ctx.actor(), id).await?;
    Ok(Redirect::to("/admin/scheduled?msg=run_now"))
}

/// The form retrying dead letters by error class or type.
#[derive(Deserialize)]
pub struct RetryForm {
    #[serde(default)]
    error_class: String,
    #[serde(default)]
    filter_type: String,
    max: String,
}

/// `POST /admin/dlq/retry`: one batch of the dead letters of an error class or type back to the
/// queue (audited as `dlq.retry`), as `POST /api/v1/dlq/retry` does.
pub async fn dlq_retry(
    State(app): State<AppState>,
    ctx: Ctx,
    PageForm(form): PageForm<RetryForm>,
) -> Result<Redirect, AdminError> {
    let max: usize = form.max.trim().parse().map_err(|_| {
        AdminError::bad_request(format!("max: `{}` is not a whole number", form.max))
    })?;
    if !(1..=RETRY_BATCH_MAX).contains(&max) {
        return Err(AdminError::bad_request(format!(
            "max: must be between 1 and {RETRY_BATCH_MAX}, got {max}"
        )));
    }
    let filter = DeadFilter {
        error_class: Some(form.error_class.trim().to_string()).filter(|c| !c.is_empty()),
        task_type: Some(form.filter_type.trim().to_string()).filter(|t| !t.is_empty()),
    };
    let batch = app.queue.dlq_retry(&ctx.actor(), filter, max).await?;
    let msg = match (batch.tasks.is_empty(), batch.more) {
        (true, _) => "retried_none",
        (false, true) => "retried_more",
        (false, false) => "retried_all",
    };
    Ok(Redirect::to(&format!("/admin/dlq?msg={msg}")))
}

#[derive(Template, WebTemplate)]
#[template(path = "admin/search.html")]
pub struct SearchPage {
    l: Layout,
    q: String,
    rows: Vec<TaskRow>,
    scanned: usize,
    next: Option<String>,
    searched: bool,
}

/// The search box and where a scan goes on.
#[derive(Default, Deserialize)]
pub struct SearchParams {
    #[serde(default)]
    q: String,
    cursor: Option<String>,
}

/// `GET /admin/search?q=`: tasks by id, idempotency key or payload text.
pub async fn search(
    State(app): State<AppState>,
    ctx: Ctx,
    PageQuery(p): PageQuery<SearchParams>,
) -> Result<SearchPage, AdminError> {
    let q = p.q.trim().to_string();
    let mut page = SearchPage {
        l: ctx.layout("Search", "search"),
        q: q.clone(),
        rows: Vec::new(),
        scanned: 0,
        next: None,
        searched: false,
    };
    if q.is_empty() {
        return Ok(page);
    }
    let cursor = match p.cursor.as_deref().filter(|c| !c.is_empty()) {
        None => None,
        Some(c) => Some(task_id(c)?),
    };
    let found = app
        .queue
        .search(SearchQuery {
            text: q.clone(),
            cursor,
            scan: SEARCH_SCAN,
            limit: SEARCH_LIMIT,
        })
        .await?;
    let now = app.clock.now_ms();
    page.rows = found
        .tasks
        .iter()
        .map(|t| TaskRow::of(t, now, &app.dispatcher))
        .collect();
    page.scanned = found.scanned;
    page.next = found.next_cursor.map(|c| {
        format!(
            "/admin/search?q={}&cursor={c}",
            super::session::urlencode(&q)
        )
    });
    page.searched = true;
    Ok(page)
}

/// A scheduled task in the list.
pub struct ScheduledRow {
    /// The task's row.
    pub task: TaskRow,
    /// When it is due, relative.
    pub due: String,
    /// When it is due, absolute.
    pub due_at: String,
}

#[derive(Template, WebTemplate)]
#[template(path = "admin/scheduled.html")]
pub struct ScheduledPage {
    l: Layout,
    rows: Vec<ScheduledRow>,
    next: Option<String>,
}

/// Where the scheduled list goes on.
#[derive(Default, Deserialize)]
pub struct ScheduledParams {
    after: Option<String>,
}

/// `GET /admin/scheduled`: waiting tasks due later, soonest first.
pub async fn scheduled(
    State(app): State<AppState>,
    ctx: Ctx,
    PageQuery(p): PageQuery<ScheduledParams>,
) -> Result<ScheduledPage, AdminError> {
    let after = p
        .after
        .as_deref()
        .filter(|a| !a.is_empty())
        .map(parse_scheduled_cursor)
        .transpose()
        .map_err(AdminError::bad_request)?;
    let page = app.queue.scheduled(after, SCHEDULED_PAGE).await?;
    let now = app.clock.now_ms();
    Ok(ScheduledPage {
        l: ctx.layout("Scheduled", "scheduled"),
        rows: page
            .tasks
            .iter()
            .map(|t| ScheduledRow {
                task: TaskRow::of(t, now, &app.dispatcher),
                due: ago(now, t.due_at),
                due_at: time(t.due_at),
            })
            .collect(),
        next: page
            .next_after
            .map(|c| format!("/admin/scheduled?after={}", scheduled_cursor(c))),
    })
}
