//! The task types page: each type's tasks by status and whether it is paused, with pause and
//! resume for operators, and the chart of processed and failed attempts per day for the last
//! 30 days.

use askama::Template;
use askama_web::WebTemplate;
use axum::extract::State;
use axum::response::Redirect;

use super::charts::{Axis, Line, line_chart};
use super::{AdminError, Ctx, Layout, PagePath, ago, count};
use crate::http::AppState;
use crate::queue::Status;

/// A task type in the table.
pub struct TypeRow {
    /// The type.
    pub name: String,
    /// Whether a handler is configured.
    pub configured: bool,
    /// Whether it is paused.
    pub paused: bool,
    /// `paused 5 min ago`, or empty.
    pub paused_note: String,
    /// Waiting tasks (queued and retrying).
    pub waiting: String,
    /// Running tasks.
    pub running: String,
    /// Dead tasks.
    pub dead: String,
}

#[derive(Template, WebTemplate)]
#[template(path = "admin/task_types.html")]
pub struct TaskTypesPage {
    l: Layout,
    rows: Vec<TypeRow>,
    daily_chart: String,
    processed_total: String,
    failed_total: String,
}

/// `GET /admin/task-types`.
pub async fn page(State(app): State<AppState>, ctx: Ctx) -> Result<TaskTypesPage, AdminError> {
    let types = app.queue.task_types().await?;
    let days = app.queue.daily_counts().await?;
    let now = app.clock.now_ms();
    let rows = types
        .iter()
        .map(|t| {
            let of = |wanted: &[Status]| {
                count(
                    t.counts
                        .iter()
                        .filter(|(s, _)| wanted.contains(s))
                        .map(|(_, n)| n)
                        .sum(),
                )
            };
            TypeRow {
                name: t.name.clone(),
                configured: t.configured,
                paused: t.pause.is_some(),
                paused_note: t.pause.as_ref().map_or(String::new(), |p| {
                    format!("paused {}", ago(now, p.paused_at))
                }),
                waiting: of(&[Status::Queued, Status::Retrying]),
                running: of(&[Status::Running]),
                dead: of(&[Status::Dead]),
            }
        })
        .collect();
    let from = days.first().map_or(now, |d| d.day_start);
    let to = days.last().map_or(now, |d| d.day_start);
    let daily_chart = line_chart(
        "Processed and failed attempts per day, last 30 days",
        from,
        to,
        &[
            Line {
                label: "processed",
                class: "s1",
                points: days
                    .iter()
                    .map(|d| (d.day_start, Some(d.processed as f64)))
                    .collect(),
            },
            Line {
                label: "failed",
                class: "s3",
                points: days
                    .iter()
                    .map(|d| (d.day_start, Some(d.failed as f64)))
                    .collect(),
            },
        ],
        Axis::Count,
        None,
    );
    Ok(TaskTypesPage {
        l: ctx.layout("Task types", "task-types"),
        rows,
        daily_chart,
        processed_total: count(days.iter().map(|d| d.processed).sum()),
        failed_total: count(days.iter().map(|d| d.failed).sum()),
    })
}

/// `POST /admin/task-types/{type}/pause`: no task of the type is leased until it is resumed
/// (audited as `task_type.pause`).
pub async fn pause(
    State(app): State<AppState>,
    ctx: Ctx,
    PagePath(name): PagePath<String>,
) -> Result<Redirect, AdminError> {
    app.queue.pause_type(&ctx.actor(), &name).await?;
    Ok(Redirect::to("/admin/task-types?msg=type_paused"))
}

/// `POST /admin/task-types/{type}/resume` (audited as `task_type.resume`).
pub async fn resume(
    State(app): State<AppState>,
    ctx: Ctx,
    PagePath(name): PagePath<String>,
) -> Result<Redirect, AdminError> {
    app.queue.resume_type(&ctx.actor(), &name).await?;
    Ok(Redirect::to("/admin/task-types?msg=type_resumed"))
}
