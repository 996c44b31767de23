//! The overview page (`/admin`) and its live JSON (`/admin/live/overview`): version and uptime,
//! queue depth by status and type, throughput, success rate, API and task latency over time,
//! dead letters, open circuits, budget left today and the background workers.

use std::collections::BTreeMap;
use std::sync::Arc;

use askama::Template;
use askama_web::WebTemplate;
use axum::Json;
use axum::extract::{Extension, State};
use serde::Deserialize;

use super::charts::{self, Axis, Group, Line, Window};
use super::{
    AdminError, AdminState, Ctx, Layout, PageQuery, ago, count, micros, seconds, time, usd,
};
use crate::http::AppState;
use crate::http::error::ApiError;
use crate::http::extract::ApiQuery;
use crate::http::models::admin::{LiveCard, LiveOverview, OverviewFragments};
use crate::queue::Status;

/// A headline number.
pub struct Card {
    /// Id the live updates use.
    pub id: &'static str,
    /// What it is.
    pub label: String,
    /// The number.
    pub value: String,
    /// A line of context under it.
    pub hint: String,
    /// `ok`, `warn`, `bad` or empty.
    pub tone: &'static str,
}

/// Task counts of one type, in [`Status::ALL`] order.
pub struct TypeRow {
    /// Task type.
    pub task_type: String,
    /// Count per status, formatted.
    pub counts: Vec<String>,
}

/// A background worker's status.
pub struct WorkerRow {
    /// Worker name.
    pub name: &'static str,
    /// State.
    pub state: String,
    /// Schedule.
    pub schedule: String,
    /// Steps run / failed.
    pub runs: String,
    /// Last run, relative.
    pub last_run: String,
    /// Next run, relative.
    pub next_run: String,
    /// Last error, if any.
    pub last_error: String,
    /// `ok`, `warn` or `bad`.
    pub tone: &'static str,
}

/// Everything the overview shows; the page and its live JSON are made from it.
pub struct OverviewData {
    /// The charts' window.
    pub window: Window,
    /// Headline numbers.
    pub cards: Vec<Card>,
    /// Status names, the columns of `by_type`.
    pub statuses: Vec<&'static str>,
    /// Counts by type.
    pub by_type: Vec<TypeRow>,
    /// Workers.
    pub workers: Vec<WorkerRow>,
    /// API latency chart (SVG).
    pub api_chart: String,
    /// Task duration chart (SVG).
    pub task_chart: String,
    /// Throughput chart (SVG).
    pub throughput_chart: String,
    /// Queue depth over time (SVG).
    pub depth_chart: String,
    /// Tasks by status (SVG).
    pub outcomes_chart: String,
    /// When this process started.
    pub started_at: String,
    /// A note when recording began inside the window (or nothing was recorded), else empty.
    pub collecting: String,
}

fn pct(part: u64, whole: u64) -> String {
    if whole == 0 {
        "—".into()
    } else {
        format!("{:.1} %", part as f64 * 100.0 / whole as f64)
    }
}

/// Collects the overview from the rooms' own functions.
pub async fn collect(
    app: &AppState,
    state: &AdminState,
    window: Window,
) -> Result<OverviewData, AdminError> {
    let now = app.clock.now_ms();
    let counts = app.queue.counts().await?;
    let mut by_status: BTreeMap<Status, u64> = BTreeMap::new();
    let mut types: BTreeMap<String, BTreeMap<Status, u64>> = app
        .config
        .handlers
        .keys()
        .map(|t| (t.clone(), BTreeMap::new()))
        .collect();
    for ((status, task_type), n) in &counts {
        *by_status.entry(*status).or_default() += n;
        *types
            .entry(task_type.clone())
            .or_default()
            .entry(*status)
            .or_default() += n;
    }
    let n = |s: Status| by_status.get(&s).copied().unwrap_or(0);
    let circuits = app.circuits.list();
    let open: Vec<String> = circuits
        .iter()
        .filter(|c| c.state != "closed")
        .map(|c| format!("{} ({})", c.name, c.state.replace('_', "-")))
        .collect();
    let api = charts::series(app, &state.charts, Group::Api, window).await?;
    let tasks = charts::series(app, &state.charts, Group::Tasks, window).await?;
    let depth = charts::series(app, &state.charts, Group::Depth, window).await?;
    let minutes = window.ms() as f64 / 60_000.0;
    let budgets = app.budgets.view(1).await?;

    let mut cards = vec![
        Card {
            id: "depth",
            label: "Queue depth".into(),
            value: count(n(Status::Queued) + n(Status::Retrying)),
            hint: format!(
                "{} queued · {} retrying",
                count(n(Status::Queued)),
                count(n(Status::Retrying))
            ),
            tone: "",
        },
        Card {
            id: "running",
            label: "Running".into(),
            value: count(n(Status::Running)),
            hint: format!("{} slots", app.config.queue.concurrency),
            tone: "",
        },
        Card {
            id: "dlq",
            label: "Dead letters".into(),
            value: count(n(Status::Dead)),
            hint: "in the dead-letter queue".into(),
            tone: if n(Status::Dead) > 0 { "warn" } else { "ok" },
        },
        Card {
            id: "circuits",
            label: "Open circuits".into(),
            value: count(open.len() as u64),
            hint: if open.is_empty() {
                format!("{} known, all closed", circuits.len())
            } else {
                open.join(", ")
            },
            tone: if open.is_empty() { "ok" } else { "bad" },
        },
        Card {
            id: "success",
            label: "Success rate".into(),
            value: pct(n(Status::Succeeded), n(Status::Succeeded) + n(Status::Dead)),
            hint: format!(
                "{} succeeded · {} dead (finished tasks kept)",
                count(n(Status::Succeeded)),
                count(n(Status::Dead))
            ),
            tone: "",
        },
        Card {
            id: "throughput",
            label: "Throughput".into(),
            value: charts::fmt_rate(tasks.overall.map_or(0.0, |s| s.count as f64) / minutes),
            hint: format!("task attempts, average over {}", window.as_str()),
            tone: "",
        },
        Card {
            id: "api",
            label: "API p95 · p99".into(),
            value: api.overall.map_or("—".into(), |s| {
                format!("{} · {}", micros(s.p95), micros(s.p99))
            }),
            hint: format!(
                "{} requests in {}",
                count(api.overall.map_or(0, |s| s.count)),
                window.as_str()
            ),
            tone: "",
        },
        Card {
            id: "tasks",
            label: "Task p95 · p99".into(),
            value: tasks.overall.map_or("—".into(), |s| {
                format!("{} · {}", micros(s.p95), micros(s.p99))
            }),
            hint: format!(
                "{} attempts in {}",
                count(tasks.overall.map_or(0, |s| s.count)),
                window.as_str()
            ),
            tone: "",
        },
    ];
    if !budgets.is_empty() {
        let remaining: u64 = budgets.iter().map(|b| b.remaining_micros).sum();
        let total: u64 = budgets.iter().map(|b| b.budget_micros).sum();
        cards.push(Card {
            id: "budget",
            label: "Budget left today".into(),
            value: usd(remaining),
            hint: format!(
                "of {} over {} provider{}",
                usd(total),
                budgets.len(),
                if budgets.len() == 1 { "" } else { "s" }
            ),
            tone: if remaining == 0 { "bad" } else { "" },
        });
    }
    cards.push(Card {
        id: "uptime",
        label: "Uptime".into(),
        value: seconds(app.process.uptime().as_secs()),
        hint: format!("keel {}", crate::process::VERSION),
        tone: "",
    });

    let from = api.buckets.first().map_or(now, |b| b.start);
    // Recording began where the first of the series has a value.
    let since = [&api, &tasks, &depth]
        .into_iter()
        .filter_map(charts::first_recorded)
        .min();
    let collecting = match since {
        Some(since) if since > from => format!(
            "Recording began at {}, after this window's start: the charts are empty before it.",
            time(since)
        ),
        None => "Nothing recorded in this window yet.".to_string(),
        Some(_) => String::new(),
    };
    let api_chart = charts::line_chart(
        "API latency p50, p95 and p99",
        from,
        now,
        &charts::latency_lines(&api.buckets),
        Axis::Duration,
        since,
    );
    let task_chart = charts::line_chart(
        "Task attempt duration p50, p95 and p99",
        from,
        now,
        &charts::latency_lines(&tasks.buckets),
        Axis::Duration,
        since,
    );
    let throughput_chart = charts::line_chart(
        "Task attempts and API requests per minute",
        from,
        now,
        &[
            Line {
                label: "task attempts / min",
                class: "s1",
                points: charts::rate_points(&tasks.buckets, window.bucket_ms(), since),
            },
            Line {
                label: "API requests / min",
                class: "s2",
                points: charts::rate_points(&api.buckets, window.bucket_ms(), since),
            },
        ],
        Axis::Rate,
        since,
    );
    let depth_chart = charts::line_chart(
        "Waiting tasks (queued and retrying)",
        from,
        now,
        &charts::level_lines(&depth.buckets),
        Axis::Count,
        since,
    );
    let outcomes_chart = charts::bar_chart(
        "Tasks by status",
        &Status::ALL
            .iter()
            .map(|s| charts::Bar {
                label: s.as_str().into(),
                value: n(*s) as f64,
                text: count(n(*s)),
                class: s.as_str(),
            })
            .collect::<Vec<_>>(),
        None,
    );
    let by_type = types
        .into_iter()
        .map(|(task_type, c)| TypeRow {
            task_type,
            counts: Status::ALL
                .iter()
                .map(|s| count(c.get(s).copied().unwrap_or(0)))
                .collect(),
        })
        .collect();
    let workers = app
        .supervisor
        .statuses()
        .into_iter()
        .map(|w| {
            let state = serde_json::to_value(w.state)
                .ok()
                .and_then(|v| v.as_str().map(|s| s.replace('_', " ")))
                .unwrap_or_default();
            WorkerRow {
                name: w.name,
                tone: if w.consecutive_errors > 0 {
                    "bad"
                } else if w.errors > 0 {
                    "warn"
                } else {
                    "ok"
                },
                state,
                schedule: w.schedule,
                runs: format!("{} / {}", count(w.runs), count(w.errors)),
                last_run: w.last_run_at.map_or("—".into(), |t| ago(now, t)),
                next_run: w.next_run_at.map_or("—".into(), |t| ago(now, t)),
                last_error: w
                    .last_error
                    .map(|e| {
                        format!(
                            "{e} ({})",
                            w.last_error_at.map_or(String::new(), |t| ago(now, t))
                        )
                    })
                    .unwrap_or_default(),
            }
        })
        .collect();
    Ok(OverviewData {
        window,
        cards,
        statuses: Status::ALL.iter().map(|s| s.as_str()).collect(),
        by_type,
        workers,
        api_chart,
        task_chart,
        throughput_chart,
        depth_chart,
        outcomes_chart,
        started_at: time(app.process.started_at_ms),
        collecting,
    })
}

/// A link to another chart window.
pub struct WindowLink {
    /// `1h`, `6h`, ...
    pub name: &'static str,
    /// Whether it is the one shown.
    pub current: bool,
}

#[derive(Template, WebTemplate)]
#[template(path = "admin/overview.html")]
pub struct OverviewPage {
    l: Layout,
    d: OverviewData,
    windows: Vec<WindowLink>,
}

#[derive(Template)]
#[template(path = "admin/_by_type.html")]
struct ByTypeRows<'a> {
    d: &'a OverviewData,
}

#[derive(Template)]
#[template(path = "admin/_workers.html")]
struct WorkerRows<'a> {
    d: &'a OverviewData,
}

#[derive(Deserialize)]
pub struct WindowQuery {
    window: Option<String>,
}

/// `GET /admin`.
pub async fn page(
    State(app): State<AppState>,
    Extension(state): Extension<Arc<AdminState>>,
    ctx: Ctx,
    PageQuery(q): PageQuery<WindowQuery>,
) -> Result<OverviewPage, AdminError> {
    let window = Window::parse(q.window.as_deref());
    let d = collect(&app, &state, window).await?;
    Ok(OverviewPage {
        l: ctx.layout("Overview", "overview"),
        windows: Window::ALL
            .iter()
            .map(|w| WindowLink {
                name: w.as_str(),
                current: *w == window,
            })
            .collect(),
        d,
    })
}

/// `GET /admin/live/overview`: the moving parts of the overview as JSON for `admin.js`:
/// `{"cards": {id: {value, hint, tone}}, "html": {id: svg-or-rows}}`.
pub async fn live(
    State(app): State<AppState>,
    Extension(state): Extension<Arc<AdminState>>,
    ApiQuery(q): ApiQuery<WindowQuery>,
) -> Result<Json<LiveOverview>, ApiError> {
    let window = Window::parse(q.window.as_deref());
    let d = collect(&app, &state, window)
        .await
        .map_err(|e| ApiError::new(e.status(), "internal", "the overview could not be read"))?;
    let cards = d
        .cards
        .iter()
        .map(|c| {
            (
                c.id.to_string(),
                LiveCard {
                    value: c.value.clone(),
                    hint: c.hint.clone(),
                    tone: c.tone.to_string(),
                },
            )
        })
        .collect();
    let by_type = ByTypeRows { d: &d }.render().map_err(ApiError::internal)?;
    let workers = WorkerRows { d: &d }.render().map_err(ApiError::internal)?;
    Ok(Json(LiveOverview {
        cards,
        html: OverviewFragments {
            api_chart: d.api_chart,
            task_chart: d.task_chart,
            throughput_chart: d.throughput_chart,
            depth_chart: d.depth_chart,
            outcomes_chart: d.outcomes_chart,
            by_type,
            workers,
            collecting: d.collecting,
        },
    }))
}
