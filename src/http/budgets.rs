//! LLM budget API: each provider's budget, spend, reservations and ledger history
//! (`GET /api/v1/budgets`), and runtime budget changes (`PUT /api/v1/budgets/{provider}`,
//! audited).

use axum::Json;
use axum::extract::State;
use axum::http::StatusCode;
use serde::Deserialize;
use utoipa::IntoParams;

use super::AppState;
use super::error::ApiError;
use super::extract::{ApiJson, ApiPath, ApiQuery, Caller};
use super::models::ErrorBody;
use super::models::budgets::{Budget, BudgetList, BudgetOne, SetBudget};
use crate::budget::BudgetChange;
use crate::config::usd_to_micros;

/// Largest budget accepted through the API, in USD.
const MAX_BUDGET_USD: f64 = 1e6;

#[derive(Deserialize, IntoParams)]
#[serde(deny_unknown_fields)]
#[into_params(parameter_in = Query)]
pub(super) struct BudgetsQuery {
    /// Days of history, today included (1 to 366, default 7).
    #[param(minimum = 1, maximum = 366)]
    days: Option<u32>,
}

/// Every LLM provider's budget, spend, reservations and history.
#[utoipa::path(get, path = "/api/v1/budgets", tag = "budgets", operation_id = "budgets_list",
    params(BudgetsQuery),
    responses(
        (status = 200, description = "One budget per provider", body = BudgetList),
        (status = 400, description = "`days` out of range", body = ErrorBody),
    ))]
pub(super) async fn list(
    State(app): State<AppState>,
    ApiQuery(q): ApiQuery<BudgetsQuery>,
) -> Result<Json<BudgetList>, ApiError> {
    let days = q.days.unwrap_or(7);
    if !(1..=crate::budget::MAX_HISTORY_DAYS).contains(&days) {
        return Err(ApiError::bad_request(format!(
            "days: must be between 1 and {}, got {days}",
            crate::budget::MAX_HISTORY_DAYS
        )));
    }
    let budgets = app.budgets.view(days).await?;
    Ok(Json(BudgetList {
        budgets: budgets.iter().map(Budget::from).collect(),
    }))
}

/// A field of the body: absent → leave it, `null` → remove the override, a number of USD →
/// set it.
fn amount(field: &str, value: Option<Option<f64>>) -> Result<Option<Option<u64>>, ApiError> {
    match value {
        None => Ok(None),
        Some(None) => Ok(Some(None)),
        Some(Some(usd)) if usd.is_finite() && (0.0..=MAX_BUDGET_USD).contains(&usd) => {
            Ok(Some(Some(usd_to_micros(usd))))
        }
        Some(Some(usd)) => Err(ApiError::new(
            StatusCode::UNPROCESSABLE_ENTITY,
            "invalid_field",
            format!("{field}: must be from 0 to {MAX_BUDGET_USD} USD, got {usd}"),
        )),
    }
}

/// Changes a provider's budget at runtime. Audited.
///
/// `{"daily_budget_usd": 5.0}` replaces the configured daily budget; `{"today_budget_usd":
/// 10.0}` sets the budget of the current UTC day only; `null` removes an override.
#[utoipa::path(put, path = "/api/v1/budgets/{provider}", tag = "budgets",
    operation_id = "budgets_set",
    params(("provider" = String, Path, description = "A configured LLM provider")),
    request_body(content = SetBudget, description = "The overrides to set or remove"),
    responses(
        (status = 200, description = "The budget after the change", body = BudgetOne),
        (status = 404, description = "No provider with this name", body = ErrorBody),
        (status = 422, description = "An amount out of range, or an unknown field", body = ErrorBody),
    ))]
pub(super) async fn set(
    State(app): State<AppState>,
    Caller(principal): Caller,
    ApiPath(provider): ApiPath<String>,
    ApiJson(body): ApiJson<SetBudget>,
) -> Result<Json<BudgetOne>, ApiError> {
    let change = BudgetChange {
        daily_micros: amount("daily_budget_usd", body.daily_budget_usd)?,
        today_micros: amount("today_budget_usd", body.today_budget_usd)?,
    };
    let budget = app
        .budgets
        .set(&principal.actor(), &provider, change)
        .await?;
    Ok(Json(BudgetOne {
        budget: (&budget).into(),
    }))
}
