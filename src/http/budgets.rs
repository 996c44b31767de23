//! LLM budget API: each provider's budget, spend, reservations and ledger history
//! (`GET /api/v1/budgets`), and runtime budget changes (`PUT /api/v1/budgets/{provider}`,
//! audited).

use axum::Json;
use axum::extract::{Extension, Path, State};
use axum::http::StatusCode;
use serde::Deserialize;
use serde_json::{Map, Value, json};

use super::AppState;
use super::api::{ApiJson, ApiQuery};
use super::error::ApiError;
use crate::auth::Principal;
use crate::budget::{BudgetChange, ProviderBudget, day_label, micros_to_usd};
use crate::config::usd_to_micros;

/// Largest budget accepted through the API, in USD.
const MAX_BUDGET_USD: f64 = 1e6;

fn budget_json(b: &ProviderBudget) -> Value {
    let usd = |m: u64| micros_to_usd(m);
    json!({
        "provider": b.provider,
        "day": day_label(b.day),
        "budget_usd": usd(b.budget_micros),
        "budget_source": b.source,
        "configured_daily_budget_usd": usd(b.configured_daily_micros),
        "daily_budget_override_usd": b.daily_override_micros.map(usd),
        "today_budget_override_usd": b.today_override_micros.map(usd),
        "spent_usd": usd(b.spent_micros),
        "reserved_usd": usd(b.reserved_micros),
        "remaining_usd": usd(b.remaining_micros),
        "budget_usd_micros": b.budget_micros,
        "spent_usd_micros": b.spent_micros,
        "reserved_usd_micros": b.reserved_micros,
        "remaining_usd_micros": b.remaining_micros,
        "in_flight": b.in_flight,
        "history": b.history.iter().map(|(day, row)| json!({
            "day": day_label(*day),
            "tokens_in": row.tokens_in,
            "tokens_out": row.tokens_out,
            "requests": row.requests,
            "spent_usd": usd(row.usd_micros),
            "spent_usd_micros": row.usd_micros,
        })).collect::<Vec<_>>(),
    })
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct BudgetsQuery {
    days: Option<u32>,
}

pub(super) async fn list(
    State(app): State<AppState>,
    ApiQuery(q): ApiQuery<BudgetsQuery>,
) -> Result<Json<Value>, ApiError> {
    let days = q.days.unwrap_or(7);
    if !(1..=crate::budget::MAX_HISTORY_DAYS).contains(&days) {
        return Err(ApiError::bad_request(format!(
            "days: must be between 1 and {}, got {days}",
            crate::budget::MAX_HISTORY_DAYS
        )));
    }
    let budgets = app.budgets.view(days).await?;
    Ok(Json(json!({
        "budgets": budgets.iter().map(budget_json).collect::<Vec<_>>(),
    })))
}

/// Reads `field` of the body: absent → leave it, `null` → remove the override, a number of
/// USD → set it.
fn amount(body: &Map<String, Value>, field: &str) -> Result<Option<Option<u64>>, ApiError> {
    let invalid = |why: String| {
        ApiError::new(
            StatusCode::UNPROCESSABLE_ENTITY,
            "invalid_field",
            format!("{field}: {why}"),
        )
    };
    match body.get(field) {
        None => Ok(None),
        Some(Value::Null) => Ok(Some(None)),
        Some(Value::Number(n)) => match n.as_f64() {
            Some(usd) if usd.is_finite() && (0.0..=MAX_BUDGET_USD).contains(&usd) => {
                Ok(Some(Some(usd_to_micros(usd))))
            }
            _ => Err(invalid(format!(
                "must be from 0 to {MAX_BUDGET_USD} USD, got {n}"
            ))),
        },
        Some(other) => Err(invalid(format!(
            "must be a number of USD or null, got {other}"
        ))),
    }
}

/// `{"daily_budget_usd": 5.0}` replaces the configured daily budget; `{"today_budget_usd":
/// 10.0}` sets the budget of the current UTC day only; `null` removes an override.
pub(super) async fn set(
    State(app): State<AppState>,
    Extension(principal): Extension<Principal>,
    Path(provider): Path<String>,
    ApiJson(body): ApiJson<Value>,
) -> Result<Json<Value>, ApiError> {
    let Value::Object(body) = body else {
        return Err(ApiError::new(
            StatusCode::UNPROCESSABLE_ENTITY,
            "invalid_field",
            "the body must be an object with daily_budget_usd and/or today_budget_usd",
        ));
    };
    if let Some(unknown) = body
        .keys()
        .find(|k| !["daily_budget_usd", "today_budget_usd"].contains(&k.as_str()))
    {
        return Err(ApiError::new(
            StatusCode::UNPROCESSABLE_ENTITY,
            "invalid_field",
            format!("unknown field `{unknown}`, expected daily_budget_usd or today_budget_usd"),
        ));
    }
    let change = BudgetChange {
        daily_micros: amount(&body, "daily_budget_usd")?,
        today_micros: amount(&body, "today_budget_usd")?,
    };
    let budget = app
        .budgets
        .set(&principal.actor(), &provider, change)
        .await?;
    Ok(Json(json!({"budget": budget_json(&budget)})))
}
