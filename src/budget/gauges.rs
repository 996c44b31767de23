//! The budget gauges: `keel_budget_{limit,spent,reserved,remaining}_usd{provider}` for the
//! current UTC day, kept current across midnight by the [`BudgetGauges`] worker.

use std::sync::Arc;
use std::time::Duration;

use super::ledger::{day_of, micros_to_usd};
use super::{Budgets, DayState};
use crate::store::StoreError;
use crate::supervisor::{StepFuture, Worker};

impl Budgets {
    /// Publishes `keel_budget_{limit,spent,reserved,remaining}_usd{provider}` for today.
    pub fn publish(&self) {
        let today = day_of(self.clock.now_ms());
        let rows: Vec<(String, u64, DayState)> = {
            let state = self.lock();
            let mut names: Vec<&String> = self.configured.keys().collect();
            for (name, day) in state.days.keys() {
                if *day == today && !self.configured.contains_key(name) {
                    names.push(name);
                }
            }
            names
                .into_iter()
                .map(|name| {
                    let (budget, _) = self.budget_for(&state, name, today, None);
                    let day = state
                        .days
                        .get(&(name.clone(), today))
                        .copied()
                        .unwrap_or_default();
                    (name.clone(), budget, day)
                })
                .collect()
        };
        for (name, budget, day) in rows {
            let labels = [("provider", name.as_str())];
            let remaining = budget
                .saturating_sub(day.spent_micros)
                .saturating_sub(day.reserved_micros);
            for (metric, help, micros) in [
                (
                    "keel_budget_limit_usd",
                    "Today's LLM budget of each provider, in USD.",
                    budget,
                ),
                (
                    "keel_budget_spent_usd",
                    "LLM spend of each provider today (UTC), in USD.",
                    day.spent_micros,
                ),
                (
                    "keel_budget_reserved_usd",
                    "LLM budget held by calls in flight, in USD.",
                    day.reserved_micros,
                ),
                (
                    "keel_budget_remaining_usd",
                    "LLM budget each provider may still reserve today, in USD.",
                    remaining,
                ),
            ] {
                self.metrics
                    .gauge(metric, help, &labels)
                    .set(micros_to_usd(micros));
            }
        }
    }

    /// Loads today for every configured provider, forgets finished days and publishes gauges.
    pub async fn refresh(&self) -> Result<(), StoreError> {
        let today = day_of(self.clock.now_ms());
        for name in self.configured.keys() {
            self.ensure_day(name, today).await?;
        }
        self.lock()
            .days
            .retain(|(_, day), s| *day >= today - 1 || s.in_flight > 0);
        self.publish();
        Ok(())
    }
}

/// Keeps the budget gauges current across UTC midnight and forgets finished days.
pub struct BudgetGauges {
    /// The budgets.
    pub budgets: Arc<Budgets>,
}

impl Worker for BudgetGauges {
    fn name(&self) -> &'static str {
        "budget-gauges"
    }
    fn interval(&self) -> Duration {
        Duration::from_secs(30)
    }
    fn step(&mut self) -> StepFuture<'_> {
        Box::pin(async move { self.budgets.refresh().await.map_err(|e| e.to_string()) })
    }
}
