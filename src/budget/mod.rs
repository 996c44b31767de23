//! LLM budgets: a daily spend limit per provider (UTC days from keel's clock), a reservation of
//! each call's largest possible cost taken before the call, and the cost ledger
//! (provider, day) → tokens, requests and micro-USD, settled after the call.
//!
//! Invariants:
//! - A reservation is admitted only when `spent + reserved + this ≤ budget` for its day, checked
//!   and taken under one lock, so any number of concurrent calls never overrun the budget by
//!   more than their real cost exceeds their reservation (which is an upper bound).
//! - Reservations live in memory only. After a restart nothing is in flight (the queue hands
//!   running tasks back as interrupted), so there is nothing to recover; what was spent is in
//!   the ledger, which is read back when a day is first needed.
//! - A [`Reservation`] dropped without being settled (a cancelled or interrupted call) releases
//!   itself.
//! - Money is integers: prices in nano-USD per token, amounts in micro-USD, costs rounded up.
//! - Budget overrides set through the API are persisted (`llm_budgets_v1`) and audited.
//!
//! Code map: [`ledger`] (days, costs, the ledger), [`reservations`], [`gauges`], [`tables`] (the
//! table bundle); budgets in force, views and overrides are here.

mod gauges;
mod ledger;
mod model;
mod reservations;
mod tables;

use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, Mutex, MutexGuard};

use serde::{Deserialize, Serialize};

use crate::audit::{Audit, Event};
use crate::clock::{Millis, SharedClock};
use crate::config::LlmConfig;
use crate::metrics::Metrics;
use crate::store::codec::Record;
use crate::store::{Store, StoreError};
use tables::{ReadTables, ReadableTables, Tables};

pub use gauges::BudgetGauges;
pub use ledger::{
    cost_micros, day_label, day_of, day_start_ms, estimate_prompt_tokens, micros_to_usd,
};
pub use model::{LedgerDay, Spend};
pub use reservations::{IN_FLIGHT_WAIT_MS, Refusal, Reservation};

/// Milliseconds in a day.
pub const DAY_MS: i64 = 86_400_000;

/// Most days of ledger history one view returns.
pub const MAX_HISTORY_DAYS: u32 = 366;

/// A provider's budget changed at runtime.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct BudgetOverride {
    /// Daily budget replacing the configured one (micro-USD).
    pub daily_micros: Option<u64>,
    /// Budget for one day only: (UTC day, micro-USD).
    pub today: Option<(i64, u64)>,
    /// Who changed it last.
    pub updated_by: String,
    /// When.
    pub updated_at: Millis,
}

impl Record for BudgetOverride {
    const VERSION: u8 = 1;
}

/// Errors of the budget room.
#[derive(Debug, thiserror::Error)]
pub enum BudgetError {
    /// No such provider is configured.
    #[error("no LLM provider named `{0}` is configured")]
    NotFound(String),
    /// The change is not acceptable; the message names the field.
    #[error("{0}")]
    Invalid(String),
    /// The store failed.
    #[error(transparent)]
    Store(#[from] StoreError),
}

impl From<redb::StorageError> for BudgetError {
    fn from(e: redb::StorageError) -> Self {
        BudgetError::Store(e.into())
    }
}

impl From<redb::TableError> for BudgetError {
    fn from(e: redb::TableError) -> Self {
        BudgetError::Store(e.into())
    }
}

/// A change to a provider's budgets: `Some(Some(x))` sets, `Some(None)` removes the override,
/// `None` leaves it.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct BudgetChange {
    /// The daily budget (micro-USD) replacing the configured one.
    pub daily_micros: Option<Option<u64>>,
    /// The budget of the current UTC day only (micro-USD).
    pub today_micros: Option<Option<u64>>,
}

/// Where the budget in force comes from.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum BudgetSource {
    /// `[llm.providers.<name>].daily_budget_usd`.
    Config,
    /// A daily budget set through the API.
    DailyOverride,
    /// A budget for this day set through the API.
    TodayOverride,
    /// The task's snapshot (the provider is no longer configured).
    Snapshot,
}

/// One provider's budget as the API shows it.
#[derive(Debug, Clone, PartialEq)]
pub struct ProviderBudget {
    /// Provider name.
    pub provider: String,
    /// The current UTC day.
    pub day: i64,
    /// Budget in force today (micro-USD).
    pub budget_micros: u64,
    /// Where it comes from.
    pub source: BudgetSource,
    /// The configured daily budget (micro-USD).
    pub configured_daily_micros: u64,
    /// A daily budget set at runtime.
    pub daily_override_micros: Option<u64>,
    /// Today's budget set at runtime.
    pub today_override_micros: Option<u64>,
    /// Spent today (micro-USD).
    pub spent_micros: u64,
    /// Held by calls in flight (micro-USD).
    pub reserved_micros: u64,
    /// What new calls may still reserve today: budget − spent − reserved (micro-USD, ≥ 0).
    pub remaining_micros: u64,
    /// Calls in flight.
    pub in_flight: u32,
    /// Ledger rows of the last days, newest first (days without calls are left out).
    pub history: Vec<(i64, LedgerDay)>,
}

#[derive(Debug, Default, Clone, Copy)]
struct DayState {
    spent_micros: u64,
    reserved_micros: u64,
    in_flight: u32,
}

#[derive(Default)]
struct State {
    days: HashMap<(String, i64), DayState>,
    overrides: HashMap<String, BudgetOverride>,
}

/// The budget room.
pub struct Budgets {
    store: Arc<Store>,
    audit: Arc<Audit>,
    clock: SharedClock,
    metrics: Arc<Metrics>,
    /// Configured daily budgets (micro-USD) by provider.
    configured: BTreeMap<String, u64>,
    state: Mutex<State>,
    /// Serializes budget changes, so the store and memory agree on the last one.
    changes: tokio::sync::Mutex<()>,
}

impl Budgets {
    /// Loads the overrides and today's ledger rows of the configured providers.
    pub fn load(
        config: &LlmConfig,
        store: Arc<Store>,
        audit: Arc<Audit>,
        clock: SharedClock,
        metrics: Arc<Metrics>,
    ) -> Result<Budgets, StoreError> {
        let configured: BTreeMap<String, u64> = config
            .providers
            .iter()
            .map(|(name, p)| (name.clone(), p.daily_budget_micros()))
            .collect();
        let today = day_of(clock.now_ms());
        let names: Vec<String> = configured.keys().cloned().collect();
        let state = store.read_blocking(|tx| -> Result<State, StoreError> {
            let mut state = State::default();
            let t = ReadTables::open(tx)?;
            state.overrides.extend(t.override_records()?);
            for name in names {
                let spent = t.ledger_day(&name, today)?.map_or(0, |row| row.usd_micros);
                state.days.insert(
                    (name, today),
                    DayState {
                        spent_micros: spent,
                        ..DayState::default()
                    },
                );
            }
            Ok(state)
        })?;
        let budgets = Budgets {
            store,
            audit,
            clock,
            metrics,
            configured,
            state: Mutex::new(state),
            changes: tokio::sync::Mutex::new(()),
        };
        budgets.publish();
        Ok(budgets)
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// The configured providers.
    pub fn providers(&self) -> impl Iterator<Item = &str> {
        self.configured.keys().map(String::as_str)
    }

    /// The budget in force for `provider` on `day`, and where it comes from.
    fn budget_for(
        &self,
        state: &State,
        provider: &str,
        day: i64,
        fallback: Option<u64>,
    ) -> (u64, BudgetSource) {
        let over = state.overrides.get(provider);
        if let Some((d, micros)) = over.and_then(|o| o.today)
            && d == day
        {
            return (micros, BudgetSource::TodayOverride);
        }
        self.daily_budget(state, provider, fallback)
    }

    /// The daily budget (not counting a one-day override).
    fn daily_budget(
        &self,
        state: &State,
        provider: &str,
        fallback: Option<u64>,
    ) -> (u64, BudgetSource) {
        if let Some(micros) = state.overrides.get(provider).and_then(|o| o.daily_micros) {
            return (micros, BudgetSource::DailyOverride);
        }
        match (self.configured.get(provider), fallback) {
            (Some(micros), _) => (*micros, BudgetSource::Config),
            (None, Some(micros)) => (micros, BudgetSource::Snapshot),
            (None, None) => (0, BudgetSource::Config),
        }
    }

    /// Every configured provider's budget today and its ledger for the last `days` days.
    pub async fn view(&self, days: u32) -> Result<Vec<ProviderBudget>, BudgetError> {
        let days = days.clamp(1, MAX_HISTORY_DAYS);
        self.refresh().await?;
        let today = day_of(self.clock.now_ms());
        let names: Vec<String> = self.configured.keys().cloned().collect();
        let histories = self
            .store
            .read(
                move |tx| -> Result<Vec<Vec<(i64, LedgerDay)>>, StoreError> {
                    let t = ReadTables::open(tx)?;
                    let first = today - i64::from(days) + 1;
                    names
                        .iter()
                        .map(|name| t.ledger_days(name, first, today))
                        .collect()
                },
            )
            .await?;
        let state = self.lock();
        Ok(self
            .configured
            .iter()
            .zip(histories)
            .map(|((name, configured), history)| {
                let (budget, source) = self.budget_for(&state, name, today, None);
                let over = state.overrides.get(name);
                let day = state
                    .days
                    .get(&(name.clone(), today))
                    .copied()
                    .unwrap_or_default();
                ProviderBudget {
                    provider: name.clone(),
                    day: today,
                    budget_micros: budget,
                    source,
                    configured_daily_micros: *configured,
                    daily_override_micros: over.and_then(|o| o.daily_micros),
                    today_override_micros: over
                        .and_then(|o| o.today)
                        .filter(|(d, _)| *d == today)
                        .map(|(_, m)| m),
                    spent_micros: day.spent_micros,
                    reserved_micros: day.reserved_micros,
                    remaining_micros: budget
                        .saturating_sub(day.spent_micros)
                        .saturating_sub(day.reserved_micros),
                    in_flight: day.in_flight,
                    history,
                }
            })
            .collect())
    }

    /// Changes a provider's daily budget and/or today's budget (persisted and audited), and
    /// returns its budget as changed. Tasks already waiting for the next day keep waiting;
    /// new calls see the new budget at once.
    pub async fn set(
        &self,
        actor: &str,
        provider: &str,
        change: BudgetChange,
    ) -> Result<ProviderBudget, BudgetError> {
        if !self.configured.contains_key(provider) {
            return Err(BudgetError::NotFound(provider.to_string()));
        }
        if change.daily_micros.is_none() && change.today_micros.is_none() {
            return Err(BudgetError::Invalid(
                "give daily_budget_usd and/or today_budget_usd (a number in USD, or null to remove the override)".into(),
            ));
        }
        let _serial = self.changes.lock().await;
        let now = self.clock.now_ms();
        let today = day_of(now);
        let previous = self.lock().overrides.get(provider).cloned();
        let mut next = previous.clone().unwrap_or_default();
        if let Some(daily) = change.daily_micros {
            next.daily_micros = daily;
        }
        if let Some(today_budget) = change.today_micros {
            next.today = today_budget.map(|m| (today, m));
        }
        if next.today.is_some_and(|(d, _)| d != today) {
            next.today = None;
        }
        next.updated_by = actor.to_string();
        next.updated_at = now;
        let usd = |m: Option<u64>| m.map(micros_to_usd);
        let detail = serde_json::json!({
            "day": day_label(today),
            "daily_budget_usd": usd(next.daily_micros),
            "today_budget_usd": usd(next.today.map(|(_, m)| m)),
            "previous": {
                "daily_budget_usd": usd(previous.as_ref().and_then(|p| p.daily_micros)),
                "today_budget_usd": usd(previous.as_ref().and_then(|p| p.today).filter(|(d, _)| *d == today).map(|(_, m)| m)),
            },
            "configured_daily_budget_usd": usd(self.configured.get(provider).copied()),
        });
        let record = next.clone();
        let audit = Arc::clone(&self.audit);
        let (name, actor) = (provider.to_string(), actor.to_string());
        self.store
            .write(move |tx| -> Result<(), StoreError> {
                Tables::open(tx)?.put_override(&name, &record)?;
                audit.append(
                    tx,
                    now,
                    &Event::new(actor.clone(), "budget.set", name.clone())
                        .with_detail(detail.clone()),
                )?;
                Ok(())
            })
            .await?;
        self.lock().overrides.insert(provider.to_string(), next);
        self.publish();
        self.view(1)
            .await?
            .into_iter()
            .find(|b| b.provider == provider)
            .ok_or_else(|| BudgetError::NotFound(provider.to_string()))
    }
}

#[cfg(test)]
mod tests;
