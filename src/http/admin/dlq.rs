//! The dead-letter page: statistics by type and error class, the list, a drain that shows its
//! dry-run preview before the real drain, and purging one dead letter.

use askama::Template;
use askama_web::WebTemplate;
use axum::extract::State;
use axum::http::StatusCode;
use axum::response::Redirect;
use serde::Deserialize;
use uuid::Uuid;

use super::charts::{Bar, bar_chart};
use super::tasks::TaskRow;
use super::{AdminError, Ctx, Layout, PageForm, PagePath, PageQuery, count, seconds};
use crate::auth::Role;
use crate::http::AppState;
use crate::queue::{Status, TaskFilter};

/// Dead letters per page.
const PAGE: usize = 50;
/// Largest drain accepted (as the API).
const MAX_DRAIN: usize = 10_000;

/// What a dry run found, shown before the real drain.
pub struct Preview {
    /// The type filter (empty: all).
    pub filter_type: String,
    /// The most to move.
    pub max: usize,
    /// Tasks that would move.
    pub rows: Vec<TaskRow>,
}

#[derive(Template, WebTemplate)]
#[template(path = "admin/dlq.html")]
pub struct DlqPage {
    l: Layout,
    total: String,
    oldest: String,
    by_type_chart: String,
    by_class_chart: String,
    types: Vec<String>,
    error_classes: Vec<String>,
    task_type: String,
    rows: Vec<TaskRow>,
    next: Option<String>,
    preview: Option<Preview>,
}

/// Filters of the list, and the drain's dry run (`preview=1&filter_type=&max=`, operators).
#[derive(Default, Deserialize)]
pub struct DlqQuery {
    #[serde(rename = "type")]
    task_type: Option<String>,
    cursor: Option<String>,
    preview: Option<String>,
    filter_type: Option<String>,
    max: Option<String>,
}

async fn dlq_page(
    app: &AppState,
    ctx: &Ctx,
    q: DlqQuery,
    preview: Option<Preview>,
) -> Result<DlqPage, AdminError> {
    let stats = app.queue.dlq_stats().await?;
    let cursor = match q.cursor.as_deref().filter(|c| !c.is_empty()) {
        None => None,
        Some(c) => Some(
            Uuid::parse_str(c)
                .map_err(|_| AdminError::bad_request(format!("cursor: `{c}` is not a task id")))?,
        ),
    };
    let task_type = q.task_type.filter(|t| !t.is_empty());
    let page = app
        .queue
        .list(TaskFilter {
            status: Some(Status::Dead),
            task_type: task_type.clone(),
            limit: PAGE,
            cursor,
        })
        .await?;
    let now = app.clock.now_ms();
    let bars = |map: &std::collections::BTreeMap<String, u64>, class: &'static str| {
        let mut bars: Vec<Bar> = map
            .iter()
            .map(|(k, v)| Bar {
                label: k.clone(),
                value: *v as f64,
                text: count(*v),
                class,
            })
            .collect();
        bars.sort_by(|a, b| b.value.total_cmp(&a.value));
        bars
    };
    let type_name = task_type.unwrap_or_default();
    let next = page.next_cursor.map(|c| {
        format!(
            "/admin/dlq?type={}&cursor={c}",
            super::session::urlencode(&type_name)
        )
    });
    let mut types: Vec<String> = stats.by_type.keys().cloned().collect();
    for t in app.config.handlers.keys() {
        if !types.contains(t) {
            types.push(t.clone());
        }
    }
    types.sort();
    Ok(DlqPage {
        l: ctx.layout("Dead letters", "dlq"),
        total: count(stats.total),
        oldest: stats
            .oldest_age_seconds
            .map_or("—".into(), |s| format!("{} ago", seconds(s))),
        by_type_chart: bar_chart("Dead letters by type", &bars(&stats.by_type, "dead"), None),
        by_class_chart: bar_chart(
            "Dead letters by error class",
            &bars(&stats.by_error_class, "warn"),
            None,
        ),
        types,
        error_classes: stats.by_error_class.keys().cloned().collect(),
        task_type: type_name,
        rows: page
            .tasks
            .iter()
            .map(|t| TaskRow::of(t, now, &app.dispatcher))
            .collect(),
        next,
        preview,
    })
}

/// `GET /admin/dlq`; with `preview=1`, the drain's dry run (for operators, as the API's): what
/// a drain with `filter_type` and `max` would move, and the form that drains them. A dry run
/// moves nothing, so reloading it repeats nothing.
pub async fn page(
    State(app): State<AppState>,
    ctx: Ctx,
    PageQuery(q): PageQuery<DlqQuery>,
) -> Result<DlqPage, AdminError> {
    if q.preview.as_deref().is_none_or(str::is_empty) {
        return dlq_page(&app, &ctx, q, None).await;
    }
    if ctx.principal().role < Role::Operator {
        return Err(AdminError::new(
            StatusCode::FORBIDDEN,
            "forbidden",
            "a drain's dry run needs the operator role",
        ));
    }
    let (filter, max) = drain_params(q.filter_type.as_deref(), q.max.as_deref().unwrap_or(""))?;
    let report = app
        .queue
        .dlq_drain(&ctx.actor(), filter.clone(), max, true)
        .await?;
    let now = app.clock.now_ms();
    let preview = Preview {
        filter_type: filter.unwrap_or_default(),
        max,
        rows: report
            .tasks
            .iter()
            .map(|t| TaskRow::of(t, now, &app.dispatcher))
            .collect(),
    };
    dlq_page(&app, &ctx, DlqQuery::default(), Some(preview)).await
}

/// The drain's type filter (empty: every type) and count, checked as the API checks them.
fn drain_params(
    filter_type: Option<&str>,
    max: &str,
) -> Result<(Option<String>, usize), AdminError> {
    let count: usize = max
        .trim()
        .parse()
        .map_err(|_| AdminError::bad_request(format!("max: `{max}` is not a whole number")))?;
    if !(1..=MAX_DRAIN).contains(&count) {
        return Err(AdminError::bad_request(format!(
            "max: must be between 1 and {MAX_DRAIN}, got {count}"
        )));
    }
    let filter = filter_type
        .map(str::trim)
        .filter(|t| !t.is_empty())
        .map(str::to_string);
    Ok((filter, count))
}

/// The drain form of the preview (a dry run posted here answers 303 to the preview page).
#[derive(Deserialize)]
pub struct DrainForm {
    #[serde(default)]
    filter_type: String,
    max: String,
    #[serde(default)]
    dry_run: String,
}

/// `POST /admin/dlq/drain`: the queue room's drain (audited as `dlq.drain` when it moves tasks),
/// as `POST /api/v1/dlq/drain` does; a dry run answers 303 to its preview page.
pub async fn drain(
    State(app): State<AppState>,
    ctx: Ctx,
    PageForm(form): PageForm<DrainForm>,
) -> Result<Redirect, AdminError> {
    let (filter, max) = drain_params(Some(&form.filter_type), &form.max)?;
    if !form.dry_run.is_empty() && form.dry_run != "0" {
        return Ok(Redirect::to(&format!(
            "/admin/dlq?preview=1&filter_type={}&max={max}#preview",
            super::session::urlencode(filter.as_deref().unwrap_or(""))
        )));
    }
    let report = app
        .queue
        .dlq_drain(&ctx.actor(), filter, max, false)
        .await?;
    let msg = if report.tasks.is_empty() {
        "drained_none"
    } else {
        "drained"
    };
    Ok(Redirect::to(&format!("/admin/dlq?msg={msg}")))
}

/// `POST /admin/dlq/{id}/delete`: purges one dead letter (audited as `dlq.delete`).
pub async fn delete(
    State(app): State<AppState>,
    ctx: Ctx,
    PagePath(id): PagePath<String>,
) -> Result<Redirect, AdminError> {
    let id = Uuid::parse_str(&id)
        .map_err(|_| AdminError::bad_request(format!("`{id}` is not a valid task id")))?;
    app.queue.dlq_delete(&ctx.actor(), id).await?;
    Ok(Redirect::to("/admin/dlq?msg=purged"))
}
