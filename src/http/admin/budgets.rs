//! The budgets page: each LLM provider's spend today against its budget (spent, held by calls
//! in flight, left), the last days of its ledger, and budget changes for operators.

use askama::Template;
use askama_web::WebTemplate;
use axum::extract::State;
use axum::response::Redirect;
use serde::Deserialize;

use super::charts::{Bar, bar_chart};
use super::{AdminError, Ctx, Layout, PageForm, PagePath, count, usd};
use crate::budget::{BudgetChange, BudgetSource, ProviderBudget, day_label};
use crate::config::usd_to_micros;
use crate::http::AppState;

/// Days of ledger shown.
const DAYS: u32 = 7;
/// Largest budget accepted, in USD (as the API).
const MAX_BUDGET_USD: f64 = 1e6;

/// One day of a provider's ledger.
pub struct DayRow {
    /// `2026-01-01`.
    pub day: String,
    /// Calls.
    pub requests: String,
    /// Tokens in / out.
    pub tokens: String,
    /// Spent.
    pub spent: String,
}

/// A provider as the page shows it.
pub struct ProviderView {
    /// Name.
    pub provider: String,
    /// Budget in force today.
    pub budget: String,
    /// Where it comes from.
    pub source: &'static str,
    /// Spent today.
    pub spent: String,
    /// Held by calls in flight.
    pub reserved: String,
    /// Left today.
    pub remaining: String,
    /// Calls in flight.
    pub in_flight: u32,
    /// Configured daily budget.
    pub configured: String,
    /// Runtime overrides, described.
    pub overrides: String,
    /// Spent today against the budget (SVG).
    pub today_chart: String,
    /// Daily spend of the last days (SVG).
    pub history_chart: String,
    /// Ledger rows.
    pub days: Vec<DayRow>,
    /// Whether nothing is left.
    pub exhausted: bool,
}

fn view(b: &ProviderBudget) -> ProviderView {
    let source = match b.source {
        BudgetSource::Config => "configured",
        BudgetSource::DailyOverride => "daily override",
        BudgetSource::TodayOverride => "override for today",
        BudgetSource::Snapshot => "task snapshot",
    };
    let mut overrides = Vec::new();
    if let Some(d) = b.daily_override_micros {
        overrides.push(format!("daily {}", usd(d)));
    }
    if let Some(t) = b.today_override_micros {
        overrides.push(format!("today {}", usd(t)));
    }
    let today_chart = bar_chart(
        &format!("{} today against its budget", b.provider),
        &[
            Bar {
                label: "spent".into(),
                value: b.spent_micros as f64,
                text: usd(b.spent_micros),
                class: "spent",
            },
            Bar {
                label: "held in flight".into(),
                value: b.reserved_micros as f64,
                text: usd(b.reserved_micros),
                class: "reserved",
            },
            Bar {
                label: "left".into(),
                value: b.remaining_micros as f64,
                text: usd(b.remaining_micros),
                class: "left",
            },
        ],
        Some(b.budget_micros as f64),
    );
    let history_chart = bar_chart(
        &format!("{} spend by day", b.provider),
        &b.history
            .iter()
            .map(|(day, row)| Bar {
                label: day_label(*day),
                value: row.usd_micros as f64,
                text: usd(row.usd_micros),
                class: "spent",
            })
            .collect::<Vec<_>>(),
        Some(b.budget_micros as f64),
    );
    ProviderView {
        provider: b.provider.clone(),
        budget: usd(b.budget_micros),
        source,
        spent: usd(b.spent_micros),
        reserved: usd(b.reserved_micros),
        remaining: usd(b.remaining_micros),
        in_flight: b.in_flight,
        configured: usd(b.configured_daily_micros),
        overrides: if overrides.is_empty() {
            "none".into()
        } else {
            overrides.join(", ")
        },
        today_chart,
        history_chart,
        days: b
            .history
            .iter()
            .map(|(day, row)| DayRow {
                day: day_label(*day),
                requests: count(row.requests),
                tokens: format!("{} / {}", count(row.tokens_in), count(row.tokens_out)),
                spent: usd(row.usd_micros),
            })
            .collect(),
        exhausted: b.remaining_micros == 0,
    }
}

#[derive(Template, WebTemplate)]
#[template(path = "admin/budgets.html")]
pub struct BudgetsPage {
    l: Layout,
    providers: Vec<ProviderView>,
}

/// `GET /admin/budgets`: the budget room's view, as `GET /api/v1/budgets`.
pub async fn page(State(app): State<AppState>, ctx: Ctx) -> Result<BudgetsPage, AdminError> {
    let budgets = app.budgets.view(DAYS).await?;
    Ok(BudgetsPage {
        l: ctx.layout("Budgets", "budgets"),
        providers: budgets.iter().map(view).collect(),
    })
}

/// The change form: each field empty (leave), `none` (remove the override) or USD.
#[derive(Deserialize)]
pub struct BudgetForm {
    #[serde(default)]
    daily_budget_usd: String,
    #[serde(default)]
    today_budget_usd: String,
}

fn amount(field: &str, raw: &str) -> Result<Option<Option<u64>>, AdminError> {
    let raw = raw.trim().trim_start_matches('$');
    if raw.is_empty() {
        return Ok(None);
    }
    if raw.eq_ignore_ascii_case("none") {
        return Ok(Some(None));
    }
    match raw.parse::<f64>() {
        Ok(v) if v.is_finite() && (0.0..=MAX_BUDGET_USD).contains(&v) => {
            Ok(Some(Some(usd_to_micros(v))))
        }
        _ => Err(AdminError::new(
            axum::http::StatusCode::UNPROCESSABLE_ENTITY,
            "invalid_field",
            format!("{field}: give USD from 0 to {MAX_BUDGET_USD}, or `none`; got `{raw}`"),
        )),
    }
}

/// `POST /admin/budgets/{provider}`: the budget room's change (audited as `budget.set`).
pub async fn set(
    State(app): State<AppState>,
    ctx: Ctx,
    PagePath(provider): PagePath<String>,
    PageForm(form): PageForm<BudgetForm>,
) -> Result<Redirect, AdminError> {
    let change = BudgetChange {
        daily_micros: amount("daily budget", &form.daily_budget_usd)?,
        today_micros: amount("today's budget", &form.today_budget_usd)?,
    };
    app.budgets.set(&ctx.actor(), &provider, change).await?;
    Ok(Redirect::to("/admin/budgets?msg=budget_set"))
}
