//! Wire models of LLM budgets: each provider's budget, spend and history, and runtime changes.

use serde::{Deserialize, Deserializer, Serialize};
use utoipa::ToSchema;

use crate::budget::{BudgetSource, ProviderBudget, day_label, micros_to_usd};

/// Where the budget in force comes from.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum BudgetOrigin {
    /// `[llm.providers.<name>].daily_budget_usd`.
    Config,
    /// A daily budget set through the API.
    DailyOverride,
    /// A budget for this day set through the API.
    TodayOverride,
    /// The task's snapshot (the provider is no longer configured).
    Snapshot,
}

impl From<BudgetSource> for BudgetOrigin {
    fn from(s: BudgetSource) -> Self {
        match s {
            BudgetSource::Config => BudgetOrigin::Config,
            BudgetSource::DailyOverride => BudgetOrigin::DailyOverride,
            BudgetSource::TodayOverride => BudgetOrigin::TodayOverride,
            BudgetSource::Snapshot => BudgetOrigin::Snapshot,
        }
    }
}

/// One provider's budget today, in USD and in micro-USD.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct Budget {
    /// The provider.
    #[schema(example = "openai")]
    pub provider: String,
    /// The UTC day, `YYYY-MM-DD`.
    #[schema(example = "2026-01-01")]
    pub day: String,
    /// The budget in force today.
    pub budget_usd: f64,
    /// Where it comes from.
    pub budget_source: BudgetOrigin,
    /// The configured daily budget.
    pub configured_daily_budget_usd: f64,
    /// A daily budget set at runtime.
    pub daily_budget_override_usd: Option<f64>,
    /// Today's budget set at runtime.
    pub today_budget_override_usd: Option<f64>,
    /// Spent today.
    pub spent_usd: f64,
    /// Reserved by calls in flight.
    pub reserved_usd: f64,
    /// Left today.
    pub remaining_usd: f64,
    /// `budget_usd` in micro-USD.
    pub budget_usd_micros: u64,
    /// `spent_usd` in micro-USD.
    pub spent_usd_micros: u64,
    /// `reserved_usd` in micro-USD.
    pub reserved_usd_micros: u64,
    /// `remaining_usd` in micro-USD.
    pub remaining_usd_micros: u64,
    /// Calls in flight.
    pub in_flight: u32,
    /// Spend of the last days, oldest first.
    pub history: Vec<BudgetDay>,
}

/// Spend of one provider on one UTC day.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct BudgetDay {
    /// The UTC day, `YYYY-MM-DD`.
    pub day: String,
    /// Prompt tokens.
    pub tokens_in: u64,
    /// Completion tokens.
    pub tokens_out: u64,
    /// Calls made.
    pub requests: u64,
    /// Cost.
    pub spent_usd: f64,
    /// Cost in micro-USD.
    pub spent_usd_micros: u64,
}

impl From<&ProviderBudget> for Budget {
    fn from(b: &ProviderBudget) -> Self {
        let usd = micros_to_usd;
        Budget {
            provider: b.provider.clone(),
            day: day_label(b.day),
            budget_usd: usd(b.budget_micros),
            budget_source: b.source.into(),
            configured_daily_budget_usd: usd(b.configured_daily_micros),
            daily_budget_override_usd: b.daily_override_micros.map(usd),
            today_budget_override_usd: b.today_override_micros.map(usd),
            spent_usd: usd(b.spent_micros),
            reserved_usd: usd(b.reserved_micros),
            remaining_usd: usd(b.remaining_micros),
            budget_usd_micros: b.budget_micros,
            spent_usd_micros: b.spent_micros,
            reserved_usd_micros: b.reserved_micros,
            remaining_usd_micros: b.remaining_micros,
            in_flight: b.in_flight,
            history: b
                .history
                .iter()
                .map(|(day, row)| BudgetDay {
                    day: day_label(*day),
                    tokens_in: row.tokens_in,
                    tokens_out: row.tokens_out,
                    requests: row.requests,
                    spent_usd: usd(row.usd_micros),
                    spent_usd_micros: row.usd_micros,
                })
                .collect(),
        }
    }
}

/// `GET /api/v1/budgets`.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct BudgetList {
    /// One per provider.
    pub budgets: Vec<Budget>,
}

/// One budget.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct BudgetOne {
    /// The budget.
    pub budget: Budget,
}

/// `PUT /api/v1/budgets/{provider}`: a field left out stays as it is; `null` removes that
/// override; a number of USD (0 to 1000000) sets it.
#[derive(Debug, Clone, Default, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
#[schema(example = json!({"daily_budget_usd": 5.0, "today_budget_usd": null}))]
pub struct SetBudget {
    /// Replaces the configured daily budget.
    #[serde(
        default,
        deserialize_with = "present",
        skip_serializing_if = "Option::is_none"
    )]
    #[schema(value_type = Option<f64>, minimum = 0, maximum = 1000000)]
    pub daily_budget_usd: Option<Option<f64>>,
    /// Sets the budget of the current UTC day only.
    #[serde(
        default,
        deserialize_with = "present",
        skip_serializing_if = "Option::is_none"
    )]
    #[schema(value_type = Option<f64>, minimum = 0, maximum = 1000000)]
    pub today_budget_usd: Option<Option<f64>>,
}

/// A field that is present (`Some`), holding a value or `null` (`Some(None)`); with
/// `#[serde(default)]` an absent field stays `None`.
fn present<'de, D: Deserializer<'de>>(d: D) -> Result<Option<Option<f64>>, D::Error> {
    Option::<f64>::deserialize(d).map(Some)
}
