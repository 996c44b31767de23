//! The dead-letter page: statistics by type and error class, the list, a drain that shows its
//! dry-run preview before the real drain, and purging one dead letter.

use askama::Template;
use askama_web::WebTemplate;
use axum::extract::State;
use axum::response::{IntoResponse, Redirect, Response};
use serde::Deserialize;
use uuid::Uuid;

use super::charts::{Bar, bar_chart};
use super::tasks::TaskRow;
use super::{AdminError, Ctx, Layout, PageForm, PagePath, PageQuery, count, render, seconds};
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

/// Filters of the list.
#[derive(Default, Deserialize)]
pub struct DlqQuery {
    #[serde(rename = "type")]
    task_type: Option<String>,
    cursor: Option<String>,
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

/// `GET /admin/dlq`.
pub async fn page(
    State(app): State<AppState>,
    ctx: Ctx,
    PageQuery(q): PageQuery<DlqQuery>,
) -> Result<DlqPage, AdminError> {
    dlq_page(&app, &ctx, q, None).await
}

/// The drain form: a dry run first (`dry_run=1`), then the real drain from its preview.
#[derive(Deserialize)]
pub struct DrainForm {
    #[serde(default)]
    filter_type: String,
    max: String,
    #[serde(default)]
    dry_run: String,
}

/// `POST /admin/dlq/drain`: the queue room's drain (audited as `dlq.drain` when it moves tasks),
/// as `POST /api/v1/dlq/drain` does.
pub async fn drain(
    State(app): State<AppState>,
    ctx: Ctx,
    PageForm(form): PageForm<DrainForm>,
) -> Result<Response, AdminError> {
    let max: usize = form.max.trim().parse().map_err(|_| {
        AdminError::bad_request(format!("max: `{}` is not a whole number", form.max))
    })?;
    if !(1..=MAX_DRAIN).contains(&max) {
        return Err(AdminError::bad_request(format!(
            "max: must be between 1 and {MAX_DRAIN}, got {max}"
        )));
    }
    let filter = Some(form.filter_type.trim().to_string()).filter(|t| !t.is_empty());
    let dry_run = !form.dry_run.is_empty() && form.dry_run != "0";
    let report = app
        .queue
        .dlq_drain(&ctx.actor(), filter.clone(), max, dry_run)
        .await?;
    if !dry_run {
        let msg = if report.tasks.is_empty() {
            "drained_none"
        } else {
            "drained"
        };
        return Ok(Redirect::to(&format!("/admin/dlq?msg={msg}")).into_response());
    }
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
    let page = dlq_page(&app, &ctx, DlqQuery::default(), Some(preview)).await?;
    Ok(render(&page))
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
