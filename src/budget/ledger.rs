//! The cost ledger: UTC days, costs in integer micro-USD, the prompt-token estimate, and the
//! (provider, day) rows of tokens, requests and spend, read back when a day is first needed and
//! added to when a call settles.

use super::model::Spend;
use super::tables::{ReadTables, ReadableTables, Tables};
use super::{Budgets, DAY_MS, DayState};
use crate::clock::{Millis, to_datetime};
use crate::store::StoreError;

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

impl Budgets {
    /// Makes sure `(provider, day)` is in memory, reading what the ledger holds for it.
    pub(super) async fn ensure_day(&self, provider: &str, day: i64) -> Result<(), StoreError> {
        if self.lock().days.contains_key(&(provider.to_string(), day)) {
            return Ok(());
        }
        let name = provider.to_string();
        let row = self
            .store
            .read(move |tx| ReadTables::open(tx)?.ledger_day(&name, day))
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

    /// Adds one call's spend to the ledger row of (provider, day).
    pub(super) fn ledger_write(
        &self,
        provider: &str,
        day: i64,
        spend: Spend,
    ) -> impl FnMut(&redb::WriteTransaction) -> Result<(), StoreError> + Send + 'static {
        let name = provider.to_string();
        move |tx| Tables::open(tx)?.add_spend(&name, day, spend)
    }

    /// Counts one call and its tokens.
    pub(super) fn count(&self, provider: &str, spend: Spend) {
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
}
