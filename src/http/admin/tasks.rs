//! Task pages: the list with status and type filters (live counts and rows), a task's detail
//! with attempts, receipts, result and live log, cancel, and the enqueue form for operators.

use std::collections::{BTreeMap, BTreeSet};

use askama::Template;
use askama_web::WebTemplate;
use axum::Json;
use axum::extract::State;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Redirect, Response};
use serde::Deserialize;
use uuid::Uuid;

use super::{
    AdminError, Ctx, Layout, PageForm, PagePath, PageQuery, ago, count, pretty_json, render, time,
    time_opt,
};
use crate::config::redact_url;
use crate::exec::{Dispatcher, HandlerSnapshot, Waiting};
use crate::http::AppState;
use crate::http::error::ApiError;
use crate::http::extract::ApiQuery;
use crate::http::models::admin::{LiveTasks, TaskFragments};
use crate::queue::{NewTask, Queue, QueueError, Status, Task, TaskFilter};

/// Tasks per page.
const PAGE: usize = 50;

/// A task in a list.
pub struct TaskRow {
    /// Id.
    pub id: String,
    /// The id's last 12 characters, for narrow screens.
    pub short_id: String,
    /// Type.
    pub task_type: String,
    /// Status name.
    pub status: &'static str,
    /// `used / max`.
    pub attempts: String,
    /// Created, relative.
    pub created: String,
    /// Created, absolute.
    pub created_at: String,
    /// Last change, relative.
    pub updated: String,
    /// The last error class, if any.
    pub error: String,
    /// What holds a waiting task back (`circuit_open`, …), with its detail; empty otherwise.
    pub waiting: Option<(&'static str, String)>,
}

impl TaskRow {
    /// The row of `t` at `now`, with what holds it back as `dispatcher` says.
    pub fn of(t: &Task, now: i64, dispatcher: &Dispatcher) -> TaskRow {
        let id = t.id.to_string();
        TaskRow {
            short_id: id[id.len() - 12..].to_string(),
            id,
            task_type: t.task_type.clone(),
            status: t.status.as_str(),
            attempts: format!("{} / {}", t.counted_attempts(), t.max_attempts),
            created: ago(now, t.created_at),
            created_at: time(t.created_at),
            updated: ago(now, t.updated_at),
            error: t.last_error_class().unwrap_or("").to_string(),
            waiting: dispatcher
                .waiting(t, now)
                .map(|w| (w.reason, waiting_text(&w, now))),
        }
    }
}

/// A status filter chip with its count.
pub struct StatusChip {
    /// Status name (empty: all).
    pub name: &'static str,
    /// Count, formatted.
    pub count: String,
    /// Whether it is the current filter.
    pub current: bool,
}

/// What the enqueue form holds (kept when it is shown again with an error).
#[derive(Default, Deserialize)]
#[serde(default)]
pub struct EnqueueForm {
    /// Task type.
    #[serde(rename = "type")]
    pub task_type: String,
    /// JSON payload.
    pub payload: String,
    /// Priority (empty: default).
    pub priority: String,
    /// Attempts (empty: the type's default).
    pub max_attempts: String,
    /// Timeout in seconds (empty: the type's default).
    pub timeout_s: String,
    /// Idempotency key (empty: none).
    pub idempotency_key: String,
    /// RFC 3339 time to run at (empty: now).
    pub run_at: String,
}

#[derive(Template, WebTemplate)]
#[template(path = "admin/tasks.html")]
pub struct TasksPage {
    l: Layout,
    rows: Vec<TaskRow>,
    chips: Vec<StatusChip>,
    types: Vec<String>,
    status: String,
    task_type: String,
    next: Option<String>,
    paged: bool,
    live: String,
    handler_types: Vec<String>,
    form: EnqueueForm,
    form_error: Option<String>,
}

#[derive(Template)]
#[template(path = "admin/_task_rows.html")]
struct TaskRows<'a> {
    rows: &'a [TaskRow],
}

/// Filters of the list.
#[derive(Default, Deserialize)]
pub struct ListQuery {
    status: Option<String>,
    #[serde(rename = "type")]
    task_type: Option<String>,
    cursor: Option<String>,
}

fn parse_status(raw: Option<&str>) -> Result<Option<Status>, String> {
    match raw.filter(|s| !s.is_empty()) {
        None => Ok(None),
        Some(s) => s.parse::<Status>().map(Some),
    }
}

fn parse_cursor(raw: Option<&str>) -> Result<Option<Uuid>, String> {
    match raw.filter(|s| !s.is_empty()) {
        None => Ok(None),
        Some(s) => Uuid::parse_str(s)
            .map(Some)
            .map_err(|_| format!("cursor: `{s}` is not a task id")),
    }
}

/// Task counts by status, all types or one.
async fn status_counts(
    app: &AppState,
    task_type: Option<&str>,
) -> Result<(BTreeMap<Status, u64>, BTreeSet<String>), QueueError> {
    let counts = app.queue.counts().await?;
    let mut by_status = BTreeMap::new();
    let mut types: BTreeSet<String> = app.config.handlers.keys().cloned().collect();
    for ((status, t), n) in counts {
        if task_type.is_none_or(|want| want == t) {
            *by_status.entry(status).or_default() += n;
        }
        types.insert(t);
    }
    Ok((by_status, types))
}

async fn list_page(
    app: &AppState,
    ctx: &Ctx,
    q: ListQuery,
    form: EnqueueForm,
    form_error: Option<String>,
) -> Result<TasksPage, AdminError> {
    let status = parse_status(q.status.as_deref()).map_err(AdminError::bad_request)?;
    let cursor = parse_cursor(q.cursor.as_deref()).map_err(AdminError::bad_request)?;
    let task_type = q.task_type.filter(|t| !t.is_empty());
    let page = app
        .queue
        .list(TaskFilter {
            status,
            task_type: task_type.clone(),
            limit: PAGE,
            cursor,
        })
        .await?;
    let (counts, types) = status_counts(app, task_type.as_deref()).await?;
    let now = app.clock.now_ms();
    let status_name = status.map_or("", |s| s.as_str());
    let type_name = task_type.clone().unwrap_or_default();
    let query = |status: &str| {
        let mut parts = Vec::new();
        if !status.is_empty() {
            parts.push(format!("status={status}"));
        }
        if !type_name.is_empty() {
            parts.push(format!("type={}", super::session::urlencode(&type_name)));
        }
        parts.join("&")
    };
    let total: u64 = counts.values().sum();
    let mut chips = vec![StatusChip {
        name: "",
        count: count(total),
        current: status.is_none(),
    }];
    chips.extend(Status::ALL.iter().map(|s| StatusChip {
        name: s.as_str(),
        count: count(counts.get(s).copied().unwrap_or(0)),
        current: status == Some(*s),
    }));
    let base_query = query(status_name);
    let next = page.next_cursor.map(|c| {
        if base_query.is_empty() {
            format!("/admin/tasks?cursor={c}")
        } else {
            format!("/admin/tasks?{base_query}&cursor={c}")
        }
    });
    Ok(TasksPage {
        l: ctx.layout("Tasks", "tasks"),
        rows: page
            .tasks
            .iter()
            .map(|t| TaskRow::of(t, now, &app.dispatcher))
            .collect(),
        chips,
        types: types.into_iter().collect(),
        status: status_name.to_string(),
        task_type: type_name,
        next,
        paged: cursor.is_some(),
        live: format!("/admin/live/tasks?{base_query}"),
        handler_types: app.config.handlers.keys().cloned().collect(),
        form,
        form_error,
    })
}

/// `GET /admin/tasks`.
pub async fn list(
    State(app): State<AppState>,
    ctx: Ctx,
    PageQuery(q): PageQuery<ListQuery>,
) -> Result<TasksPage, AdminError> {
    let form = EnqueueForm {
        payload: "{}".into(),
        ..EnqueueForm::default()
    };
    list_page(&app, &ctx, q, form, None).await
}

/// `GET /admin/live/tasks`: counts by status and the first page of rows, for `admin.js`.
pub async fn live_list(
    State(app): State<AppState>,
    ApiQuery(q): ApiQuery<ListQuery>,
) -> Result<Json<LiveTasks>, ApiError> {
    let status = parse_status(q.status.as_deref()).map_err(ApiError::bad_request)?;
    let task_type = q.task_type.filter(|t| !t.is_empty());
    let page = app
        .queue
        .list(TaskFilter {
            status,
            task_type: task_type.clone(),
            limit: PAGE,
            cursor: None,
        })
        .await?;
    let (counts, _) = status_counts(&app, task_type.as_deref()).await?;
    let now = app.clock.now_ms();
    let rows: Vec<TaskRow> = page
        .tasks
        .iter()
        .map(|t| TaskRow::of(t, now, &app.dispatcher))
        .collect();
    let html = TaskRows { rows: &rows }
        .render()
        .map_err(ApiError::internal)?;
    let mut chips = BTreeMap::new();
    chips.insert("all".to_string(), count(counts.values().sum()));
    for s in Status::ALL {
        chips.insert(
            s.as_str().to_string(),
            count(counts.get(&s).copied().unwrap_or(0)),
        );
    }
    Ok(Json(LiveTasks {
        counts: chips,
        html: TaskFragments { rows: html },
    }))
}

fn optional<T: std::str::FromStr>(field: &str, raw: &str) -> Result<Option<T>, String> {
    let raw = raw.trim();
    if raw.is_empty() {
        return Ok(None);
    }
    raw.parse::<T>()
        .map(Some)
        .map_err(|_| format!("{field}: `{raw}` is not a valid whole number"))
}

fn new_task(form: &EnqueueForm) -> Result<NewTask, String> {
    let payload = if form.payload.trim().is_empty() {
        serde_json::Value::Object(Default::default())
    } else {
        serde_json::from_str(&form.payload).map_err(|e| format!("payload: not JSON: {e}"))?
    };
    let run_at = match form.run_at.trim() {
        "" => None,
        at => Some(
            chrono::DateTime::parse_from_rfc3339(at)
                .map_err(|e| format!("run at: `{at}` is not an RFC 3339 time: {e}"))?
                .timestamp_millis(),
        ),
    };
    Ok(NewTask {
        task_type: form.task_type.trim().to_string(),
        payload,
        priority: optional("priority", &form.priority)?,
        idempotency_key: Some(form.idempotency_key.trim().to_string()).filter(|k| !k.is_empty()),
        run_at,
        max_attempts: optional("max attempts", &form.max_attempts)?,
        timeout_s: optional("timeout", &form.timeout_s)?,
    })
}

/// `POST /admin/tasks`: enqueues through the queue room, like `POST /api/v1/tasks`.
pub async fn enqueue(
    State(app): State<AppState>,
    ctx: Ctx,
    PageForm(form): PageForm<EnqueueForm>,
) -> Result<Response, AdminError> {
    let problem = match new_task(&form) {
        Ok(task) => match app.queue.enqueue(&ctx.actor(), task).await {
            Ok(done) => {
                return Ok(
                    Redirect::to(&format!("/admin/tasks/{}?msg=enqueued", done.task.id))
                        .into_response(),
                );
            }
            Err(e @ (QueueError::Invalid(_) | QueueError::Full { .. })) => e.to_string(),
            Err(e) => return Err(e.into()),
        },
        Err(problem) => problem,
    };
    let page = list_page(&app, &ctx, ListQuery::default(), form, Some(problem)).await?;
    Ok((StatusCode::UNPROCESSABLE_ENTITY, render(&page)).into_response())
}

/// One attempt of a task.
pub struct AttemptRow {
    /// Number.
    pub number: u32,
    /// Started.
    pub started: String,
    /// Took, or `running`.
    pub took: String,
    /// Outcome.
    pub outcome: String,
    /// Error class and message.
    pub error: String,
    /// Whether it used up an attempt.
    pub counted: bool,
    /// HTTP status of the answer.
    pub receipt_status: String,
    /// Latency of the answer.
    pub receipt_latency: String,
    /// Start of the answer's body.
    pub receipt_body: String,
}

/// A task as its page shows it: everything but the handler's secrets.
pub struct TaskView {
    /// Id.
    pub id: String,
    /// Type.
    pub task_type: String,
    /// Status.
    pub status: &'static str,
    /// Fields shown as a definition list.
    pub facts: Vec<(&'static str, String)>,
    /// How it runs (no secrets).
    pub handler: String,
    /// The payload, pretty-printed.
    pub payload: String,
    /// The result, pretty-printed.
    pub result: Option<String>,
    /// What stands in for a missing result: why there is none.
    pub no_result: &'static str,
    /// How the result holds the answer, when not whole text.
    pub result_note: Option<&'static str>,
    /// Whether it will not change any more.
    pub finished: bool,
}

fn handler_summary(t: &Task) -> String {
    match HandlerSnapshot::of(t) {
        Ok(HandlerSnapshot::Http { url, method, .. }) => {
            format!("http {method} {}", redact_url(&url))
        }
        Ok(HandlerSnapshot::Command { program, args, .. }) => {
            format!("command {program} {}", args.join(" "))
        }
        Ok(HandlerSnapshot::Llm {
            provider, model, ..
        }) => format!("llm {provider} / {model}"),
        Err(e) => format!("unreadable: {e}"),
        Ok(HandlerSnapshot::Workflow { steps }) => format!(
            "workflow: {}",
            steps
                .iter()
                .map(|s| format!("{} ({})", s.name, s.handler_type))
                .collect::<Vec<_>>()
                .join(" → ")
        ),
    }
}

fn view(t: &Task, now: i64, created_by: String) -> TaskView {
    let mut facts = vec![
        (
            "Created",
            format!("{} ({})", time(t.created_at), ago(now, t.created_at)),
        ),
        ("Created by", created_by),
        (
            "Updated",
            format!("{} ({})", time(t.updated_at), ago(now, t.updated_at)),
        ),
        ("Due", time(t.due_at)),
        ("Finished", time_opt(t.finished_at)),
        (
            "Attempts",
            format!("{} of {}", t.counted_attempts(), t.max_attempts),
        ),
        ("Priority", t.priority.to_string()),
        ("Timeout", format!("{} s", t.timeout_ms / 1000)),
        ("Target", t.target.clone()),
        ("Webhook id", t.webhook_id()),
    ];
    if let Some(k) = &t.idempotency_key {
        facts.push(("Idempotency key", k.clone()));
    }
    if t.cancel_requested && !t.status.is_final() {
        facts.push((
            "Cancel",
            "requested; waiting for the attempt to stop".into(),
        ));
    }
    TaskView {
        id: t.id.to_string(),
        task_type: t.task_type.clone(),
        status: t.status.as_str(),
        facts,
        handler: handler_summary(t),
        payload: pretty_json(&t.payload),
        result: t.result.as_deref().map(pretty_json),
        no_result: match t.status {
            Status::Dead => "No result: the task is dead; its last error is under Attempts.",
            Status::Cancelled => "No result: the task was cancelled.",
            Status::Succeeded => "The task succeeded without a result body.",
            _ => "No result yet.",
        },
        result_note: match (t.result_form.truncated, t.result_form.base64) {
            (false, false) => None,
            (true, false) => Some("Truncated: the answer was longer than queue.result_max_bytes."),
            (false, true) => Some("Base64: the answer was not UTF-8."),
            (true, true) => Some(
                "Base64 and truncated: the answer was not UTF-8 and longer than queue.result_max_bytes.",
            ),
        },
        finished: t.status.is_final(),
    }
}

fn attempts(t: &Task) -> Vec<AttemptRow> {
    // A command's receipt carries its exit code where an http answer carries its status.
    let command = matches!(HandlerSnapshot::of(t), Ok(HandlerSnapshot::Command { .. }));
    t.attempts
        .iter()
        .rev()
        .map(|a| AttemptRow {
            number: a.number,
            started: time(a.started_at),
            took: a
                .finished_at
                .map_or("running".into(), |f| format!("{} ms", f - a.started_at)),
            outcome: if a.outcome.is_empty() {
                "running".into()
            } else {
                a.outcome.clone()
            },
            error: match (&a.error_class, &a.error_message) {
                (Some(c), Some(m)) => format!("{c}: {m}"),
                (Some(c), None) => c.clone(),
                (None, Some(m)) => m.clone(),
                (None, None) => String::new(),
            },
            counted: a.counted,
            receipt_status: a
                .receipt
                .as_ref()
                .and_then(|r| r.status)
                .map_or(String::new(), |s| {
                    if command {
                        format!("exit {s}")
                    } else {
                        format!("HTTP {s}")
                    }
                }),
            receipt_latency: a
                .receipt
                .as_ref()
                .map_or(String::new(), |r| format!("{} ms", r.latency_ms)),
            receipt_body: a
                .receipt
                .as_ref()
                .map_or(String::new(), |r| r.body_head.clone()),
        })
        .collect()
}

#[derive(Template, WebTemplate)]
#[template(path = "admin/task.html")]
pub struct TaskPage {
    l: Layout,
    t: TaskView,
    waiting: Option<String>,
    attempts: Vec<AttemptRow>,
    logs: Vec<LogRow>,
    next_line: u32,
    /// `log_from` of the previous page of log lines, when this is not the first.
    earlier_logs: Option<u32>,
    /// `log_from` of the next page, when more lines follow this page.
    later_logs: Option<u32>,
}

/// One log line on the task page, with a heading before the first line of each attempt.
pub struct LogRow {
    /// Line number.
    pub n: u32,
    /// The text.
    pub line: String,
    /// `Attempt 2` before an attempt's first line (`Attempt 2, continued` at the top of a page
    /// that starts inside it).
    pub heading: Option<String>,
}

/// The page's lines grouped by the attempt that wrote them.
fn log_rows(lines: Vec<(u32, String)>, starts: &[(u32, u32)]) -> Vec<LogRow> {
    let mut shown: Option<Option<u32>> = None;
    lines
        .into_iter()
        .map(|(n, line)| {
            let attempt = Queue::attempt_of_line(starts, n);
            let heading = (shown != Some(attempt)).then(|| {
                let first = starts.iter().any(|(from, _)| *from == n);
                let continued = shown.is_none() && !first;
                shown = Some(attempt);
                match attempt {
                    Some(a) if continued => format!("Attempt {a}, continued"),
                    Some(a) => format!("Attempt {a}"),
                    None => "Before attempts were recorded".to_string(),
                }
            });
            LogRow { n, line, heading }
        })
        .collect()
}

/// Log lines shown on one task page.
const LOG_PAGE: usize = 500;

/// `GET /admin/tasks/{id}` query: which page of the log. Other parameters (the `msg` notice
/// after a redirect, which the layout reads) are left to their readers.
#[derive(Debug, Default, Deserialize)]
pub struct TaskPageQuery {
    /// The first log line shown (default 0).
    log_from: Option<u32>,
}

fn task_id(raw: &str) -> Result<Uuid, AdminError> {
    Uuid::parse_str(raw)
        .map_err(|_| AdminError::bad_request(format!("`{raw}` is not a valid task id")))
}

/// `GET /admin/tasks/{id}`.
pub async fn detail(
    State(app): State<AppState>,
    ctx: Ctx,
    PagePath(id): PagePath<String>,
    PageQuery(q): PageQuery<TaskPageQuery>,
) -> Result<TaskPage, AdminError> {
    let id = task_id(&id)?;
    let task = app.queue.get(id).await?;
    let log_from = q.log_from.unwrap_or(0);
    let mut logs = app.queue.logs(id, log_from, LOG_PAGE + 1).await?;
    let more = logs.len() > LOG_PAGE;
    logs.truncate(LOG_PAGE);
    let now = app.clock.now_ms();
    let next_line = logs.last().map_or(log_from, |(n, _)| n + 1);
    let later_logs = more.then_some(next_line);
    let earlier_logs = (log_from > 0).then(|| log_from.saturating_sub(LOG_PAGE as u32));
    let logs = log_rows(logs, &app.queue.log_attempts(id).await?);
    // The key that made it, by name when it is a key.
    let created_by = Uuid::parse_str(&task.created_by)
        .ok()
        .and_then(|id| app.auth.get(id).ok())
        .map_or_else(
            || task.created_by.clone(),
            |k| format!("{} ({})", k.name, task.created_by),
        );
    Ok(TaskPage {
        l: ctx.layout(format!("Task {}", task.task_type), "tasks"),
        t: view(&task, now, created_by),
        waiting: app
            .dispatcher
            .waiting(&task, now)
            .map(|w| waiting_text(&w, now)),
        attempts: attempts(&task),
        logs,
        next_line,
        earlier_logs,
        later_logs,
    })
}

/// `Waiting (circuit_open): the circuit handler:notify is open; tried again at … (in 9 min).`
pub fn waiting_text(w: &Waiting, now: i64) -> String {
    let when = w.until.map_or_else(
        || "tried again when a running task of its type ends".to_string(),
        |t| format!("tried again at {} ({})", time(t), ago(now, t)),
    );
    format!("Waiting ({}): {}; {when}.", w.reason, w.detail)
}

/// `POST /admin/tasks/{id}/cancel`: the queue room's cancel (audited), and a running attempt is
/// asked to stop, as `POST /api/v1/tasks/{id}/cancel` does.
pub async fn cancel(
    State(app): State<AppState>,
    ctx: Ctx,
    PagePath(id): PagePath<String>,
) -> Result<Redirect, AdminError> {
    let id = task_id(&id)?;
    let task = app.queue.cancel(&ctx.actor(), id).await?;
    if task.status == Status::Running {
        app.dispatcher.cancel_running(id);
    }
    Ok(Redirect::to(&format!("/admin/tasks/{id}?msg=cancelled")))
}

#[cfg(test)]
mod tests {
    use super::log_rows;

    #[test]
    fn log_lines_are_grouped_under_the_attempt_that_wrote_them() {
        let lines = |ns: &[u32]| ns.iter().map(|n| (*n, format!("l{n}"))).collect();
        let starts = [(0, 1), (2, 2)];
        let headings = |rows: Vec<super::LogRow>| -> Vec<(u32, Option<String>)> {
            rows.into_iter().map(|r| (r.n, r.heading)).collect()
        };
        assert_eq!(
            headings(log_rows(lines(&[0, 1, 2, 3]), &starts)),
            [
                (0, Some("Attempt 1".into())),
                (1, None),
                (2, Some("Attempt 2".into())),
                (3, None)
            ]
        );
        // A page that starts inside an attempt says so.
        assert_eq!(
            headings(log_rows(lines(&[3]), &starts)),
            [(3, Some("Attempt 2, continued".into()))]
        );
        assert_eq!(
            headings(log_rows(lines(&[0]), &[])),
            [(0, Some("Before attempts were recorded".into()))]
        );
    }
}
