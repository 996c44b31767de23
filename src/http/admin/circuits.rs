//! The circuits page: each target's breaker (state, failure ratio over the window, volume, when
//! it opened and until when) and a reset for operators.

use askama::Template;
use askama_web::WebTemplate;
use axum::extract::State;
use axum::response::Redirect;

use super::{AdminError, Ctx, Layout, PagePath, ago, time_opt};
use crate::http::AppState;

/// One breaker.
pub struct CircuitRow {
    /// Target name.
    pub name: String,
    /// `closed`, `open`, `half_open`.
    pub state: &'static str,
    /// Failure ratio in percent, formatted.
    pub ratio: String,
    /// Failure ratio, 0..=1, for the meter.
    pub ratio_value: String,
    /// Outcomes in the window.
    pub volume: usize,
    /// When it last opened.
    pub opened: String,
    /// Until when it stays open.
    pub open_until: String,
}

#[derive(Template, WebTemplate)]
#[template(path = "admin/circuits.html")]
pub struct CircuitsPage {
    l: Layout,
    rows: Vec<CircuitRow>,
    policy: String,
}

/// `GET /admin/circuits`.
pub async fn page(State(app): State<AppState>, ctx: Ctx) -> CircuitsPage {
    let now = app.clock.now_ms();
    let c = &app.config.circuit;
    CircuitsPage {
        l: ctx.layout("Circuits", "circuits"),
        rows: app
            .circuits
            .list()
            .into_iter()
            .map(|v| CircuitRow {
                ratio: format!("{:.0} %", v.failure_ratio * 100.0),
                ratio_value: format!("{:.3}", v.failure_ratio),
                state: v.state,
                volume: v.window_volume,
                opened: v.opened_at.map_or("—".into(), |t| {
                    format!("{} ({})", time_opt(Some(t)), ago(now, t))
                }),
                open_until: v.open_until.map_or("—".into(), |t| ago(now, t)),
                name: v.name,
            })
            .collect(),
        policy: format!(
            "A circuit opens when at least {:.0} % of at least {} outcomes in {} s failed, and stays open {} s before a trial.",
            c.threshold * 100.0,
            c.min_volume,
            c.window_seconds,
            c.open_seconds
        ),
    }
}

/// `POST /admin/circuits/{name}/reset`: closes a circuit (audited as `circuit.reset`).
pub async fn reset(
    State(app): State<AppState>,
    ctx: Ctx,
    PagePath(name): PagePath<String>,
) -> Result<Redirect, AdminError> {
    app.circuits.reset(&ctx.actor(), &name).await?;
    Ok(Redirect::to("/admin/circuits?msg=reset"))
}
