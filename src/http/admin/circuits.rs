//! The circuits page: each target's breaker (state, failure ratio and volume — of the current
//! window while closed, of the window that opened it while open — why it opened, when and until
//! when) and a reset for operators.

use askama::Template;
use askama_web::WebTemplate;
use axum::extract::State;
use axum::response::Redirect;

use std::collections::BTreeMap;

use super::{AdminError, Ctx, Layout, PagePath, ago, time_opt};
use crate::clock::Millis;
use crate::exec::circuit::CircuitView;
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
    pub volume: u64,
    /// Which window the ratio and volume are of.
    pub window_label: &'static str,
    /// The outcomes that opened it, summarised (`3 of 3 failed: http_5xx ×3`).
    pub reason: String,
    /// Those outcomes one by one, oldest first (time, error class or `ok`).
    pub outcomes: Vec<(String, String)>,
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
            .map(|v| row(v, now))
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

/// A breaker's row. An open or half-open circuit shows the window that opened it: its current
/// window holds nothing while no attempt is let through.
fn row(v: CircuitView, now: Millis) -> CircuitRow {
    let tripped = v.state != "closed";
    let (ratio, volume) = if tripped {
        (v.tripped_failure_ratio, v.tripped_volume)
    } else {
        (v.failure_ratio, v.window_volume as u64)
    };
    CircuitRow {
        ratio: format!("{:.0} %", ratio * 100.0),
        ratio_value: format!("{ratio:.3}"),
        state: v.state,
        volume,
        window_label: if tripped {
            "when it opened"
        } else {
            "last window"
        },
        reason: trip_reason(&v),
        outcomes: v
            .tripped_by
            .iter()
            .map(|o| {
                let what = match (&o.class, o.healthy) {
                    (_, true) => "ok".to_string(),
                    (Some(class), false) => class.clone(),
                    (None, false) => "failed".to_string(),
                };
                (time_opt(Some(o.at)), what)
            })
            .collect(),
        opened: v.opened_at.map_or("—".into(), |t| {
            format!("{} ({})", time_opt(Some(t)), ago(now, t))
        }),
        open_until: v.open_until.map_or("—".into(), |t| ago(now, t)),
        name: v.name,
    }
}

/// `3 of 4 failed: http_5xx ×2, timeout ×1`, or `—` for a circuit that never opened (or opened
/// before its reasons were kept).
fn trip_reason(v: &CircuitView) -> String {
    if v.tripped_volume == 0 {
        return "—".into();
    }
    let failures = (v.tripped_failure_ratio * v.tripped_volume as f64).round() as u64;
    let mut classes: BTreeMap<&str, usize> = BTreeMap::new();
    for o in v.tripped_by.iter().filter(|o| !o.healthy) {
        *classes
            .entry(o.class.as_deref().unwrap_or("failed"))
            .or_default() += 1;
    }
    let counted: Vec<String> = classes
        .into_iter()
        .map(|(class, n)| format!("{class} ×{n}"))
        .collect();
    let shown = if (v.tripped_by.len() as u64) < v.tripped_volume {
        format!(" (latest {} shown)", v.tripped_by.len())
    } else {
        String::new()
    };
    format!(
        "{failures} of {} failed: {}{shown}",
        v.tripped_volume,
        counted.join(", ")
    )
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
