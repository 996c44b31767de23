//! Reservations: each call's largest possible cost is held against the day's budget before the
//! call (checked and taken under one lock), then settled with the real cost or released.

use std::sync::Arc;

use super::Budgets;
use super::ledger::{day_label, day_of, day_start_ms, micros_to_usd};
use super::model::Spend;
use crate::clock::Millis;
use crate::store::StoreError;

/// How long a call waits when the budget is held by calls in flight (their real cost may come
/// in under their reservations, freeing room the same day).
pub const IN_FLIGHT_WAIT_MS: i64 = 2_000;

/// Why a call may not start now.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Refusal {
    /// The day's budget is spent (or would be by this call): wait for the next UTC day.
    Tomorrow {
        /// Start of the next UTC day.
        until: Millis,
        /// Explanation with the figures.
        message: String,
    },
    /// Calls in flight hold the rest of the budget; they may settle for less.
    InFlight {
        /// When to look again.
        until: Millis,
        /// Explanation with the figures.
        message: String,
    },
    /// The call's largest possible cost is above the whole daily budget: it can never run
    /// under the current budgets.
    NeverFits {
        /// Explanation with the figures.
        message: String,
    },
}

impl Budgets {
    /// Reserves `max_cost_micros` of today's budget of `provider` for one call, or says why the
    /// call must wait. `fallback_budget_micros` is the budget when the provider is no longer
    /// configured (from the task's snapshot).
    pub async fn reserve(
        self: &Arc<Self>,
        provider: &str,
        max_cost_micros: u64,
        fallback_budget_micros: u64,
    ) -> Result<Result<Reservation, Refusal>, StoreError> {
        let now = self.clock.now_ms();
        let day = day_of(now);
        self.ensure_day(provider, day).await?;
        let decision = {
            let mut state = self.lock();
            let (budget, _) = self.budget_for(&state, provider, day, Some(fallback_budget_micros));
            let (daily, _) = self.daily_budget(&state, provider, Some(fallback_budget_micros));
            let entry = state.days.entry((provider.to_string(), day)).or_default();
            let figures = format!(
                "this call may cost up to ${:.6}; today ({}) ${:.6} is spent and ${:.6} reserved of ${:.6}",
                micros_to_usd(max_cost_micros),
                day_label(day),
                micros_to_usd(entry.spent_micros),
                micros_to_usd(entry.reserved_micros),
                micros_to_usd(budget)
            );
            let committed = entry.spent_micros.saturating_add(entry.reserved_micros);
            if committed.saturating_add(max_cost_micros) <= budget {
                entry.reserved_micros += max_cost_micros;
                entry.in_flight += 1;
                Ok(())
            } else if max_cost_micros > budget && max_cost_micros > daily {
                Err(Refusal::NeverFits {
                    message: format!(
                        "the LLM budget of {provider} can never fit this call: it may cost up to ${:.6}, more than the daily budget ${:.6}; raise the budget or lower max_tokens",
                        micros_to_usd(max_cost_micros),
                        micros_to_usd(daily)
                    ),
                })
            } else if entry.spent_micros.saturating_add(max_cost_micros) <= budget {
                Err(Refusal::InFlight {
                    until: now + IN_FLIGHT_WAIT_MS,
                    message: format!(
                        "the LLM budget of {provider} is held by calls in flight: {figures}"
                    ),
                })
            } else {
                Err(Refusal::Tomorrow {
                    until: day_start_ms(day + 1),
                    message: format!(
                        "the LLM budget of {provider} is exceeded: {figures}; waiting for the next UTC day"
                    ),
                })
            }
        };
        self.publish();
        Ok(decision.map(|()| Reservation {
            budgets: Arc::clone(self),
            provider: provider.to_string(),
            day,
            micros: max_cost_micros,
            open: true,
        }))
    }

    /// Gives back a reservation and adds what was really spent (in memory).
    fn release(&self, provider: &str, day: i64, reserved: u64, spent: u64) {
        {
            let mut state = self.lock();
            let entry = state.days.entry((provider.to_string(), day)).or_default();
            entry.reserved_micros = entry.reserved_micros.saturating_sub(reserved);
            entry.in_flight = entry.in_flight.saturating_sub(1);
            entry.spent_micros = entry.spent_micros.saturating_add(spent);
        }
        self.publish();
    }
}

/// A held part of one provider's daily budget, for one call. Settle it with what the call
/// really cost; dropping it unsettled gives it back.
pub struct Reservation {
    budgets: Arc<Budgets>,
    provider: String,
    day: i64,
    micros: u64,
    open: bool,
}

impl std::fmt::Debug for Reservation {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Reservation")
            .field("provider", &self.provider)
            .field("day", &self.day)
            .field("micros", &self.micros)
            .finish()
    }
}

impl Reservation {
    /// The amount held (micro-USD).
    pub fn micros(&self) -> u64 {
        self.micros
    }

    /// Releases the reservation, adds `spend` to the day's spend and writes it to the ledger
    /// (blocking until durable; call it from a blocking thread).
    pub fn settle_blocking(mut self, spend: Spend) -> Result<(), StoreError> {
        self.open = false;
        let budgets = Arc::clone(&self.budgets);
        budgets.release(&self.provider, self.day, self.micros, spend.usd_micros);
        budgets.count(&self.provider, spend);
        budgets
            .store
            .write_blocking(budgets.ledger_write(&self.provider, self.day, spend))
    }

    /// Like [`Reservation::settle_blocking`], awaiting the write.
    pub async fn settle(mut self, spend: Spend) -> Result<(), StoreError> {
        self.open = false;
        let budgets = Arc::clone(&self.budgets);
        budgets.release(&self.provider, self.day, self.micros, spend.usd_micros);
        budgets.count(&self.provider, spend);
        budgets
            .store
            .write(budgets.ledger_write(&self.provider, self.day, spend))
            .await
    }
}

impl Drop for Reservation {
    fn drop(&mut self) {
        if self.open {
            self.open = false;
            self.budgets
                .release(&self.provider, self.day, self.micros, 0);
        }
    }
}
