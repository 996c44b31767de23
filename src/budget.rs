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

use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use redb::{ReadableTable, TableHandle};
use serde::{Deserialize, Serialize};

use crate::audit::{Audit, Event};
use crate::clock::{Millis, SharedClock, to_datetime};
use crate::config::LlmConfig;
use crate::metrics::Metrics;
use crate::store::codec::{self, Record};
use crate::store::tables::budget::{LLM_BUDGETS, LLM_LEDGER};
use crate::store::{Store, StoreError};
use crate::supervisor::{StepFuture, Worker};

/// Milliseconds in a day.
pub const DAY_MS: i64 = 86_400_000;

/// How long a call waits when the budget is held by calls in flight (their real cost may come
/// in under their reservations, freeing room the same day).
pub const IN_FLIGHT_WAIT_MS: i64 = 2_000;

/// Most days of ledger history one view returns.
pub const MAX_HISTORY_DAYS: u32 = 366;

/// The UTC day (days since the Unix epoch) of a time.
pub fn day_of(ms: Millis) -> i64 {
    ms.div_euclid(DAY_MS)
}

/// When a UTC day starts (epoch ms).
pub fn day_start_ms(day: i64) -> Millis {
    day.saturating_mul(DAY_MS)
}

/// A day as `YYYY-MM-DD`.
pub fn day_label(day: i64) -> String {
    to_datetime(day_start_ms(day))
        .format("%Y-%m-%d")
        .to_string()
}

/// Micro-USD as USD.
pub fn micros_to_usd(micros: u64) -> f64 {
    micros as f64 / 1e6
}

/// The cost of a call in micro-USD (rounded up), from token counts and prices in nano-USD per
/// token.
pub fn cost_micros(tokens_in: u64, tokens_out: u64, in_nanos: u64, out_nanos: u64) -> u64 {
    let nanos = (u128::from(tokens_in) * u128::from(in_nanos))
        .saturating_add(u128::from(tokens_out) * u128::from(out_nanos));
    nanos.div_ceil(1000).min(u128::from(u64::MAX)) as u64
}

/// An upper bound of the prompt tokens of chat `messages`: the bytes of each message's JSON text
/// plus 4 tokens of framing per message and 3 for the reply's priming. Byte-level BPE
/// tokenizers never produce more tokens than bytes, and a message's JSON text is longer than
/// the text it carries, so the real count is lower.
pub fn estimate_prompt_tokens(messages: &[serde_json::Value]) -> u64 {
    3 + messages
        .iter()
        .map(|m| 4 + serde_json::to_string(m).map_or(0, |s| s.len() as u64))
        .sum::<u64>()
}

/// Spend of one provider on one UTC day, as stored in the ledger.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct LedgerDay {
    /// Prompt tokens the provider reported.
    pub tokens_in: u64,
    /// Completion tokens the provider reported.
    pub tokens_out: u64,
    /// Calls made (successful or not).
    pub requests: u64,
    /// Cost in micro-USD.
    pub usd_micros: u64,
}

impl Record for LedgerDay {
    const VERSION: u8 = 1;
}

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

/// What one settled call used.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Spend {
    /// Prompt tokens reported.
    pub tokens_in: u64,
    /// Completion tokens reported.
    pub tokens_out: u64,
    /// Cost in micro-USD.
    pub usd_micros: u64,
}

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
            let table = tx.open_table(LLM_BUDGETS)?;
            for row in table.iter()? {
                let (k, v) = row?;
                let name = k.value().to_string();
                let record: BudgetOverride = codec::decode(LLM_BUDGETS.name(), &name, v.value())?;
                state.overrides.insert(name, record);
            }
            let ledger = tx.open_table(LLM_LEDGER)?;
            for name in names {
                let spent = match ledger.get((name.as_str(), today))? {
                    Some(v) => {
                        codec::decode::<LedgerDay>(LLM_LEDGER.name(), &name, v.value())?.usd_micros
                    }
                    None => 0,
                };
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

    /// Makes sure `(provider, day)` is in memory, reading what the ledger holds for it.
    async fn ensure_day(&self, provider: &str, day: i64) -> Result<(), StoreError> {
        if self.lock().days.contains_key(&(provider.to_string(), day)) {
            return Ok(());
        }
        let name = provider.to_string();
        let row = self
            .store
            .read(move |tx| -> Result<Option<LedgerDay>, StoreError> {
                let table = tx.open_table(LLM_LEDGER)?;
                let value = table.get((name.as_str(), day))?;
                value
                    .map(|v| codec::decode(LLM_LEDGER.name(), &name, v.value()))
                    .transpose()
            })
            .await?;
        // Someone may have loaded it meanwhile (and reserved against it): keep theirs.
        self.lock()
            .days
            .entry((provider.to_string(), day))
            .or_insert(DayState {
                spent_micros: row.map_or(0, |r| r.usd_micros),
                ..DayState::default()
            });
        Ok(())
    }

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

    /// Adds one call's spend to the ledger row of (provider, day).
    fn ledger_write(
        &self,
        provider: &str,
        day: i64,
        spend: Spend,
    ) -> impl FnMut(&redb::WriteTransaction) -> Result<(), StoreError> + Send + 'static {
        let name = provider.to_string();
        move |tx| {
            let mut table = tx.open_table(LLM_LEDGER)?;
            let mut row = match table.get((name.as_str(), day))? {
                Some(v) => codec::decode::<LedgerDay>(LLM_LEDGER.name(), &name, v.value())?,
                None => LedgerDay::default(),
            };
            row.tokens_in = row.tokens_in.saturating_add(spend.tokens_in);
            row.tokens_out = row.tokens_out.saturating_add(spend.tokens_out);
            row.requests = row.requests.saturating_add(1);
            row.usd_micros = row.usd_micros.saturating_add(spend.usd_micros);
            table.insert((name.as_str(), day), codec::encode(&row).as_slice())?;
            Ok(())
        }
    }

    fn count(&self, provider: &str, spend: Spend) {
        self.metrics
            .counter(
                "keel_llm_requests_total",
                "Calls made to each LLM provider.",
                &[("provider", provider)],
            )
            .inc();
        for (kind, n) in [
            ("prompt", spend.tokens_in),
            ("completion", spend.tokens_out),
        ] {
            self.metrics
                .counter(
                    "keel_llm_tokens_total",
                    "Tokens each LLM provider reported, by kind (prompt, completion).",
                    &[("provider", provider), ("kind", kind)],
                )
                .add(n);
        }
    }

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
                    let table = tx.open_table(LLM_LEDGER)?;
                    let first = today - i64::from(days) + 1;
                    names
                        .iter()
                        .map(|name| {
                            let mut rows = Vec::new();
                            for row in table
                                .range((name.as_str(), first)..=(name.as_str(), today))?
                                .rev()
                            {
                                let (k, v) = row?;
                                let day = k.value().1;
                                rows.push((
                                    day,
                                    codec::decode(LLM_LEDGER.name(), name, v.value())?,
                                ));
                            }
                            Ok(rows)
                        })
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
                tx.open_table(LLM_BUDGETS)?
                    .insert(name.as_str(), codec::encode(&record).as_slice())?;
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::clock::ManualClock;
    use crate::config::LlmProviderConfig;
    use crate::store::StoreOptions;

    const START: Millis = 1_767_225_600_000; // 2026-01-01T00:00:00Z

    struct Fixture {
        _dir: tempfile::TempDir,
        clock: Arc<ManualClock>,
        budgets: Arc<Budgets>,
        store: Arc<Store>,
    }

    fn fixture(daily_usd: f64) -> Fixture {
        let dir = tempfile::tempdir().unwrap();
        let store =
            Arc::new(Store::open(&dir.path().join("keel.redb"), StoreOptions::default()).unwrap());
        let audit = Arc::new(Audit::load_or_create(dir.path(), 1000).unwrap());
        let clock = Arc::new(ManualClock::new(START));
        let mut config = LlmConfig::default();
        config.providers.insert(
            "p".into(),
            LlmProviderConfig {
                base_url: "http://127.0.0.1:9".into(),
                api_key: None,
                model: "m".into(),
                input_usd_per_1k_tokens: 1.0,
                output_usd_per_1k_tokens: 2.0,
                max_tokens: 100,
                daily_budget_usd: daily_usd,
            },
        );
        let budgets = Arc::new(
            Budgets::load(
                &config,
                Arc::clone(&store),
                audit,
                clock.clone(),
                Arc::new(Metrics::new("test")),
            )
            .unwrap(),
        );
        Fixture {
            _dir: dir,
            clock,
            budgets,
            store,
        }
    }

    fn runtime() -> tokio::runtime::Runtime {
        tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()
            .unwrap()
    }

    #[test]
    fn costs_are_exact_and_round_up() {
        // 1 USD per 1K tokens is 1,000,000 nano-USD per token.
        assert_eq!(cost_micros(10, 5, 1_000_000, 2_000_000), 20_000);
        // 0.15 USD per 1M tokens = 150 nano-USD per token: 7 tokens cost 1.05 µUSD → 2.
        assert_eq!(cost_micros(7, 0, 150, 0), 2);
        assert_eq!(cost_micros(0, 0, 150, 600), 0);
        assert_eq!(
            cost_micros(u64::MAX, u64::MAX, u64::MAX, u64::MAX),
            u64::MAX
        );
    }

    #[test]
    fn the_prompt_estimate_bounds_the_text() {
        let messages = vec![serde_json::json!({"role": "user", "content": "héllo wörld"})];
        let estimate = estimate_prompt_tokens(&messages);
        let text_bytes = "héllo wörld".len() as u64;
        assert!(estimate >= text_bytes + 4 + 3, "{estimate}");
        assert_eq!(
            estimate,
            3 + 4 + serde_json::to_string(&messages[0]).unwrap().len() as u64
        );
        assert_eq!(estimate_prompt_tokens(&[]), 3);
    }

    #[test]
    fn days_are_utc() {
        assert_eq!(day_label(day_of(START)), "2026-01-01");
        assert_eq!(day_label(day_of(START + DAY_MS - 1)), "2026-01-01");
        assert_eq!(day_label(day_of(START + DAY_MS)), "2026-01-02");
        assert_eq!(day_start_ms(day_of(START + 5_000)), START);
    }

    #[test]
    fn reservations_never_overrun_the_budget_under_concurrency() {
        let f = fixture(1.0); // 1,000,000 µUSD
        let rt = runtime();
        // 64 concurrent reservations of 300,000 µUSD: exactly 3 fit.
        let granted: Vec<Result<Reservation, Refusal>> = rt.block_on(async {
            let handles: Vec<_> = (0..64)
                .map(|_| {
                    let b = Arc::clone(&f.budgets);
                    tokio::spawn(async move { b.reserve("p", 300_000, 0).await.unwrap() })
                })
                .collect();
            let mut out = Vec::new();
            for h in handles {
                out.push(h.await.unwrap());
            }
            out
        });
        let held: Vec<&Reservation> = granted.iter().filter_map(|r| r.as_ref().ok()).collect();
        assert_eq!(held.len(), 3);
        let refused: Vec<&Refusal> = granted.iter().filter_map(|r| r.as_ref().err()).collect();
        assert!(
            refused
                .iter()
                .all(|r| matches!(r, Refusal::InFlight { .. })),
            "room may come back the same day: {refused:?}"
        );
        let view = rt.block_on(f.budgets.view(7)).unwrap();
        assert_eq!(view[0].reserved_micros, 900_000);
        assert_eq!(view[0].remaining_micros, 100_000);
        assert_eq!(view[0].in_flight, 3);
        drop(granted);
        let view = rt.block_on(f.budgets.view(7)).unwrap();
        assert_eq!(
            (
                view[0].reserved_micros,
                view[0].in_flight,
                view[0].spent_micros
            ),
            (0, 0, 0),
            "dropped reservations give their budget back"
        );
    }

    #[test]
    fn settling_records_the_real_cost_and_the_day_rolls_over() {
        let f = fixture(0.05); // 50,000 µUSD
        let rt = runtime();
        let r = rt
            .block_on(f.budgets.reserve("p", 30_000, 0))
            .unwrap()
            .unwrap();
        rt.block_on(r.settle(Spend {
            tokens_in: 10,
            tokens_out: 5,
            usd_micros: 20_000,
        }))
        .unwrap();
        // 20,000 spent: a 30,001 call would overrun the day → next UTC day.
        match rt.block_on(f.budgets.reserve("p", 30_001, 0)).unwrap() {
            Err(Refusal::Tomorrow { until, message }) => {
                assert_eq!(until, START + DAY_MS);
                assert!(message.contains("2026-01-01"), "{message}");
            }
            other => panic!("{other:?}"),
        }
        // More than the whole daily budget can never run.
        assert!(matches!(
            rt.block_on(f.budgets.reserve("p", 50_001, 0)).unwrap(),
            Err(Refusal::NeverFits { .. })
        ));
        // The ledger has the row.
        let view = rt.block_on(f.budgets.view(7)).unwrap();
        assert_eq!(view[0].spent_micros, 20_000);
        assert_eq!(
            view[0].history,
            vec![(
                day_of(START),
                LedgerDay {
                    tokens_in: 10,
                    tokens_out: 5,
                    requests: 1,
                    usd_micros: 20_000
                }
            )]
        );
        // Next day: room again; yesterday stays in the history.
        f.clock.advance_ms(DAY_MS);
        let r = rt.block_on(f.budgets.reserve("p", 30_001, 0)).unwrap();
        assert!(r.is_ok(), "{r:?}");
        drop(r);
        let view = rt.block_on(f.budgets.view(7)).unwrap();
        assert_eq!(view[0].spent_micros, 0);
        assert_eq!(view[0].history.len(), 1);
        assert_eq!(view[0].history[0].0, day_of(START));
        drop(f.store);
    }

    #[test]
    fn overrides_change_the_budget_and_are_audited() {
        let f = fixture(0.01);
        let rt = runtime();
        assert!(matches!(
            rt.block_on(f.budgets.reserve("p", 20_000, 0)).unwrap(),
            Err(Refusal::NeverFits { .. })
        ));
        let view = rt
            .block_on(f.budgets.set(
                "tester",
                "p",
                BudgetChange {
                    daily_micros: None,
                    today_micros: Some(Some(30_000)),
                },
            ))
            .unwrap();
        assert_eq!(view.budget_micros, 30_000);
        assert_eq!(view.source, BudgetSource::TodayOverride);
        let r = rt.block_on(f.budgets.reserve("p", 20_000, 0)).unwrap();
        assert!(r.is_ok());
        drop(r);
        // Tomorrow the one-day override no longer applies.
        f.clock.advance_ms(DAY_MS);
        let view = rt.block_on(f.budgets.view(1)).unwrap();
        assert_eq!(
            (view[0].budget_micros, view[0].source),
            (10_000, BudgetSource::Config)
        );
        assert!(matches!(
            rt.block_on(f.budgets.set("tester", "nope", BudgetChange::default())),
            Err(BudgetError::NotFound(_))
        ));
        assert!(matches!(
            rt.block_on(f.budgets.set("tester", "p", BudgetChange::default())),
            Err(BudgetError::Invalid(_))
        ));
        let entries = f
            .store
            .read_blocking(|tx| crate::audit::list(tx, 0, 100))
            .unwrap();
        assert_eq!(entries.len(), 1);
        assert_eq!(entries[0].action, "budget.set");
        assert_eq!(entries[0].target, "p");
        let detail: serde_json::Value = serde_json::from_str(&entries[0].detail).unwrap();
        assert_eq!(detail["today_budget_usd"], 0.03);
    }
}
