//! The cycles page: recent cycles with status and timings, profiles and run profiles with their
//! state, governance (global pause, halted namespaces) and, for operators, triggers, pause /
//! resume and namespace halts; and one cycle's stage timeline with its checkpoints and its
//! dispatches with their task status and receipts.
//!
//! Reads and writes call the cycles room's own functions (as `src/http/cycles.rs` does), with
//! the signed-in key's `actor()`, so every write is audited by the room.

use askama::Template;
use askama_web::WebTemplate;
use axum::extract::State;
use axum::response::Redirect;
use serde::Deserialize;
use uuid::Uuid;

use super::{AdminError, Ctx, Layout, PageForm, PagePath, ago, time};
use crate::clock::Millis;
use crate::config::redact_url;
use crate::cycles::profiles::State as ProfileState;
use crate::cycles::{GovernanceView, TriggerRequest};
use crate::http::AppState;

/// Recent cycles shown.
const RECENT: usize = 20;

fn state_name(s: ProfileState) -> &'static str {
    match s {
        ProfileState::Enabled => "enabled",
        ProfileState::Disabled => "disabled",
    }
}

/// `1.2 s` from milliseconds.
fn millis(ms: Millis) -> String {
    super::micros(ms.max(0) as u64 * 1000)
}

fn opt(s: Option<&str>) -> String {
    s.filter(|s| !s.is_empty()).unwrap_or("—").to_string()
}

/// One recent cycle.
pub struct CycleRow {
    /// Id.
    pub id: String,
    /// Last 8 characters of the id.
    pub short_id: String,
    /// `running`, `finished`, `failed`.
    pub status: &'static str,
    /// Its last stage.
    pub stage: &'static str,
    /// Run profile id, or `—` for a raw cycle.
    pub run_profile: String,
    /// Namespace.
    pub namespace: String,
    /// Slot.
    pub slot: String,
    /// `manual`, `schedule`, …
    pub trigger: String,
    /// When it started.
    pub started: String,
    /// How long ago.
    pub started_ago: String,
    /// How long it took (or has run so far).
    pub duration: String,
    /// The error, if it failed.
    pub error: String,
}

/// One profile or run profile.
pub struct ProfileRow {
    /// Id.
    pub id: String,
    /// Label (profiles) or profile id (run profiles).
    pub detail: String,
    /// Namespace (run profiles).
    pub namespace: String,
    /// Version (profiles).
    pub version: String,
    /// `enabled` or `disabled`.
    pub state: &'static str,
    /// Whether its namespace is halted (run profiles).
    pub halted: bool,
}

/// One namespace flag.
pub struct HaltRow {
    /// Namespace.
    pub namespace: String,
    /// Who set it.
    pub by: String,
    /// When.
    pub at: String,
    /// Why.
    pub reason: String,
}

/// The governance state.
pub struct Governance {
    /// Whether cycles are paused (by the API or the configuration).
    pub paused: bool,
    /// Whether the configuration pauses them (no resume from here).
    pub by_config: bool,
    /// Who paused, when and why.
    pub pause: String,
    /// Halted namespaces.
    pub halted: Vec<HaltRow>,
}

impl Governance {
    fn of(g: &GovernanceView) -> Governance {
        Governance {
            paused: g.is_paused(),
            by_config: g.paused_by_config,
            pause: match (&g.paused, g.paused_by_config) {
                (_, true) => "by the configuration (governance.global_pause)".into(),
                (Some(f), _) if f.on => format!(
                    "by {} at {}{}",
                    f.by,
                    time(f.at),
                    f.reason
                        .as_deref()
                        .map(|r| format!(": {r}"))
                        .unwrap_or_default()
                ),
                _ => String::new(),
            },
            halted: g
                .namespaces
                .iter()
                .filter(|(_, f)| f.on)
                .map(|(ns, f)| HaltRow {
                    namespace: ns.clone(),
                    by: f.by.clone(),
                    at: time(f.at),
                    reason: opt(f.reason.as_deref()),
                })
                .collect(),
        }
    }
}

#[derive(Template, WebTemplate)]
#[template(path = "admin/cycles.html")]
pub struct CyclesPage {
    l: Layout,
    rows: Vec<CycleRow>,
    profiles: Vec<ProfileRow>,
    run_profiles: Vec<ProfileRow>,
    dir: String,
    governance: Governance,
    default_namespace: String,
}

/// `GET /admin/cycles`.
pub async fn page(State(app): State<AppState>, ctx: Ctx) -> Result<CyclesPage, AdminError> {
    let now = app.clock.now_ms();
    let recent = app.cycles.recent(RECENT).await?;
    let g = app.cycles.governance().await?;
    let set = app.cycles.profile_set();
    Ok(CyclesPage {
        l: ctx.layout("Cycles", "cycles"),
        rows: recent
            .iter()
            .map(|c| {
                let r = &c.run;
                let id = r.id.to_string();
                CycleRow {
                    short_id: id[id.len() - 8..].to_string(),
                    id,
                    status: r.status.as_str(),
                    stage: c.stage.as_str(),
                    run_profile: opt(r.run_profile_id.as_deref()),
                    namespace: r.namespace.clone(),
                    slot: r.slot.clone(),
                    trigger: r.trigger.clone(),
                    started: time(r.created_at),
                    started_ago: ago(now, r.created_at),
                    duration: match r.finished_at {
                        Some(f) => millis(f - r.created_at),
                        None => format!("{} so far", millis(now - r.created_at)),
                    },
                    error: opt(r.error.as_deref()),
                }
            })
            .collect(),
        profiles: set
            .profiles
            .iter()
            .map(|p| ProfileRow {
                id: p.profile_id.clone(),
                detail: p.label.clone(),
                namespace: String::new(),
                version: set
                    .versions
                    .get(&p.profile_id)
                    .map_or("—".into(), |v| v.to_string()),
                state: state_name(p.state),
                halted: false,
            })
            .collect(),
        run_profiles: set
            .run_profiles
            .iter()
            .map(|rp| ProfileRow {
                id: rp.run_profile_id.clone(),
                detail: rp.profile_id.clone(),
                namespace: rp.namespace.clone(),
                version: String::new(),
                state: state_name(rp.state),
                halted: g.is_halted(&rp.namespace),
            })
            .collect(),
        dir: set.dir.display().to_string(),
        governance: Governance::of(&g),
        default_namespace: app.config.cycles.default_namespace.clone(),
    })
}

/// One checkpoint of the timeline.
pub struct CheckpointRow {
    /// Sequence number.
    pub seq: u32,
    /// Stage.
    pub stage: &'static str,
    /// When it was reached.
    pub at: String,
    /// Since the previous checkpoint (or the start).
    pub duration: String,
    /// Webhook ids it notified.
    pub webhooks: String,
}

/// One dispatch with its task.
pub struct DispatchRow {
    /// Target name.
    pub target: String,
    /// Endpoint.
    pub endpoint: String,
    /// Method and URL.
    pub url: String,
    /// The task's id.
    pub task_id: String,
    /// The task's status, or `—` when it is gone.
    pub task_status: String,
    /// The dispatch outcome.
    pub outcome: String,
    /// HTTP status of the receipt.
    pub http_status: String,
    /// Latency.
    pub latency: String,
    /// Attempts.
    pub attempts: u32,
    /// When it was enqueued.
    pub enqueued: String,
    /// When it finished.
    pub finished: String,
}

#[derive(Template, WebTemplate)]
#[template(path = "admin/cycle.html")]
pub struct CyclePage {
    l: Layout,
    id: String,
    status: &'static str,
    stage: &'static str,
    run_profile: String,
    profile: String,
    namespace: String,
    slot: String,
    trigger: String,
    actor: String,
    started: String,
    finished: String,
    duration: String,
    error: String,
    checkpoints: Vec<CheckpointRow>,
    timings_chart: String,
    dispatches: Vec<DispatchRow>,
    records: usize,
    ledger: usize,
    /// The tasks it waits for now: (task id, status, what holds it back).
    waiting_on: Vec<(String, &'static str, String)>,
}

/// `GET /admin/cycles/{id}`.
pub async fn detail(
    State(app): State<AppState>,
    ctx: Ctx,
    PagePath(id): PagePath<String>,
) -> Result<CyclePage, AdminError> {
    let id = Uuid::parse_str(&id)
        .map_err(|_| AdminError::bad_request(format!("`{id}` is not a valid cycle id")))?;
    let now = app.clock.now_ms();
    let d = app.cycles.detail(id).await?;
    let r = &d.run;
    let mut previous = r.created_at;
    let mut timings = Vec::new();
    let checkpoints = d
        .checkpoints
        .iter()
        .map(|c| {
            let row = CheckpointRow {
                seq: c.seq,
                stage: c.stage.as_str(),
                at: time(c.at),
                duration: millis(c.at - previous),
                webhooks: if c.webhook_ids.is_empty() {
                    "—".into()
                } else {
                    c.webhook_ids.join(", ")
                },
            };
            timings.push(super::charts::Bar {
                label: c.stage.as_str().to_string(),
                value: (c.at - previous).max(0) as f64,
                text: millis(c.at - previous),
                class: "ok",
            });
            previous = c.at;
            row
        })
        .collect();
    let timings_chart = super::charts::bar_chart("Time to reach each stage", &timings, None);
    let dispatches = d
        .dispatches
        .iter()
        .map(|(rec, task)| DispatchRow {
            target: rec.target.clone(),
            endpoint: rec.endpoint.clone(),
            url: format!("{} {}", rec.method, redact_url(&rec.url)),
            task_id: rec.task_id.to_string(),
            task_status: task
                .as_ref()
                .map_or("—".into(), |t| t.status.as_str().to_string()),
            outcome: opt(rec.outcome.as_deref()),
            http_status: rec.status.map_or("—".into(), |s| s.to_string()),
            latency: rec.latency_ms.map_or("—".into(), |ms| millis(ms as Millis)),
            attempts: rec.attempts,
            enqueued: time(rec.enqueued_at),
            finished: rec.finished_at.map_or("—".into(), time),
        })
        .collect();
    let mut waiting_on = Vec::new();
    for task_id in app.cycles.waiting_for(id) {
        if let Ok(task) = app.queue.get(task_id).await {
            let holds = app.dispatcher.waiting(&task, now).map_or_else(
                || "nothing holds it back".to_string(),
                |w| super::tasks::waiting_text(&w, now),
            );
            waiting_on.push((task_id.to_string(), task.status.as_str(), holds));
        }
    }
    Ok(CyclePage {
        l: ctx.layout("Cycle", "cycles"),
        id: r.id.to_string(),
        status: r.status.as_str(),
        stage: d.checkpoints.last().map_or("—", |c| c.stage.as_str()),
        run_profile: opt(r.run_profile_id.as_deref()),
        profile: opt(r.profile_id.as_deref()),
        namespace: r.namespace.clone(),
        slot: r.slot.clone(),
        trigger: r.trigger.clone(),
        actor: r.actor.clone(),
        started: time(r.created_at),
        finished: r.finished_at.map_or("—".into(), time),
        duration: match r.finished_at {
            Some(f) => millis(f - r.created_at),
            None => format!("{} so far", millis(now - r.created_at)),
        },
        error: opt(r.error.as_deref()),
        checkpoints,
        timings_chart,
        dispatches,
        records: d.records.len(),
        ledger: d.ledger.len(),
        waiting_on,
    })
}

fn field(s: &str) -> Option<String> {
    Some(s.trim().to_string()).filter(|s| !s.is_empty())
}

/// The trigger form: an optional namespace and run profile.
#[derive(Deserialize)]
pub struct TriggerForm {
    #[serde(default)]
    namespace: String,
    #[serde(default)]
    run_profile_id: String,
}

/// `POST /admin/cycles/trigger`: starts one cycle (audited by the cycles room), as
/// `POST /api/v1/cycles/trigger` does; goes to the cycle.
pub async fn trigger(
    State(app): State<AppState>,
    ctx: Ctx,
    PageForm(form): PageForm<TriggerForm>,
) -> Result<Redirect, AdminError> {
    let t = app
        .cycles
        .trigger(
            &ctx.actor(),
            TriggerRequest {
                namespace: field(&form.namespace),
                run_profile_id: field(&form.run_profile_id),
                slot: None,
            },
        )
        .await?;
    let msg = if t.created {
        "cycle_started"
    } else {
        "cycle_exists"
    };
    Ok(Redirect::to(&format!(
        "/admin/cycles/{}?msg={msg}",
        t.cycle_id
    )))
}

/// `POST /admin/cycles/run-profiles/trigger`: one cycle per enabled run profile, as
/// `POST /api/v1/run-profiles/trigger` does.
pub async fn trigger_run_profiles(
    State(app): State<AppState>,
    ctx: Ctx,
) -> Result<Redirect, AdminError> {
    app.cycles.trigger_run_profiles(&ctx.actor(), None).await?;
    Ok(Redirect::to("/admin/cycles?msg=run_profiles_triggered"))
}

/// `POST /admin/cycles/{id}/cancel`: cancels a running cycle (audited as `cycle.cancel`), as
/// `POST /api/v1/cycles/{id}/cancel` does.
pub async fn cancel(
    State(app): State<AppState>,
    ctx: Ctx,
    PagePath(id): PagePath<String>,
) -> Result<Redirect, AdminError> {
    let id = Uuid::parse_str(&id)
        .map_err(|_| AdminError::bad_request(format!("`{id}` is not a valid cycle id")))?;
    app.cycles.cancel(&ctx.actor(), id).await?;
    Ok(Redirect::to(&format!(
        "/admin/cycles/{id}?msg=cycle_cancelled"
    )))
}

/// A form with an optional reason.
#[derive(Deserialize)]
pub struct ReasonForm {
    #[serde(default)]
    reason: String,
}

/// `POST /admin/cycles/pause`: pauses every cycle (audited).
pub async fn pause(
    State(app): State<AppState>,
    ctx: Ctx,
    PageForm(form): PageForm<ReasonForm>,
) -> Result<Redirect, AdminError> {
    app.cycles.pause(&ctx.actor(), field(&form.reason)).await?;
    Ok(Redirect::to("/admin/cycles?msg=paused"))
}

/// `POST /admin/cycles/resume`: resumes cycles (audited).
pub async fn resume(State(app): State<AppState>, ctx: Ctx) -> Result<Redirect, AdminError> {
    app.cycles.resume(&ctx.actor()).await?;
    Ok(Redirect::to("/admin/cycles?msg=resumed"))
}

/// The halt form: a namespace and an optional reason.
#[derive(Deserialize)]
pub struct HaltForm {
    #[serde(default)]
    namespace: String,
    #[serde(default)]
    reason: String,
}

/// `POST /admin/cycles/halt`: halts one namespace (audited).
pub async fn halt(
    State(app): State<AppState>,
    ctx: Ctx,
    PageForm(form): PageForm<HaltForm>,
) -> Result<Redirect, AdminError> {
    app.cycles
        .set_halt(
            &ctx.actor(),
            form.namespace.trim(),
            true,
            field(&form.reason),
        )
        .await?;
    Ok(Redirect::to("/admin/cycles?msg=halted"))
}

/// `POST /admin/cycles/namespaces/{ns}/resume`: resumes one namespace (audited).
pub async fn resume_namespace(
    State(app): State<AppState>,
    ctx: Ctx,
    PagePath(ns): PagePath<String>,
) -> Result<Redirect, AdminError> {
    app.cycles.set_halt(&ctx.actor(), &ns, false, None).await?;
    Ok(Redirect::to("/admin/cycles?msg=namespace_resumed"))
}
