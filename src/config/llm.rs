//! `[llm]`: LLM providers for `kind = "llm"` handlers, their prices and daily budgets.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use super::Secret;
use super::error::{ConfigError, between, invalid};

/// `[llm]`: LLM providers for `kind = "llm"` handlers.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, Default)]
#[serde(deny_unknown_fields, default)]
pub struct LlmConfig {
    /// Providers by name (the `provider` of llm handlers; circuit target `llm:<name>`).
    pub providers: BTreeMap<String, LlmProviderConfig>,
}

/// `[llm.providers.<name>]`: one OpenAI-compatible chat-completions endpoint.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LlmProviderConfig {
    /// Base URL; requests go to `<base_url>/chat/completions`.
    pub base_url: String,
    /// API key, sent as `Authorization: Bearer`; none for endpoints that need none. Prefer
    /// `KEEL_LLM__PROVIDERS__<NAME>__API_KEY_FILE` over writing it in the file.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub api_key: Option<Secret>,
    /// Model name sent in each request.
    pub model: String,
    /// Price of 1,000 prompt tokens, in USD.
    pub input_usd_per_1k_tokens: f64,
    /// Price of 1,000 completion tokens, in USD.
    pub output_usd_per_1k_tokens: f64,
    /// Largest `max_tokens` a task may ask for.
    #[serde(default = "default_llm_max_tokens")]
    pub max_tokens: u32,
    /// Spend allowed per UTC day, in USD (changeable at runtime with `PUT /api/v1/budgets`).
    pub daily_budget_usd: f64,
}

impl LlmProviderConfig {
    /// Price of one prompt token in nano-USD.
    pub fn input_nanos_per_token(&self) -> u64 {
        usd_per_1k_to_nanos_per_token(self.input_usd_per_1k_tokens)
    }

    /// Price of one completion token in nano-USD.
    pub fn output_nanos_per_token(&self) -> u64 {
        usd_per_1k_to_nanos_per_token(self.output_usd_per_1k_tokens)
    }

    /// The daily budget in micro-USD.
    pub fn daily_budget_micros(&self) -> u64 {
        usd_to_micros(self.daily_budget_usd)
    }
}

/// USD per 1,000 tokens → nano-USD per token (1 USD/1K = 10⁶ nano-USD per token).
fn usd_per_1k_to_nanos_per_token(usd: f64) -> u64 {
    (usd * 1e6).round().max(0.0) as u64
}

/// USD → micro-USD, rounded to the nearest micro-dollar.
pub fn usd_to_micros(usd: f64) -> u64 {
    (usd * 1e6).round().max(0.0) as u64
}

fn default_llm_max_tokens() -> u32 {
    1024
}

impl LlmConfig {
    pub(super) fn validate(&self) -> Result<(), ConfigError> {
        for (name, p) in &self.providers {
            let key = |field: &str| format!("llm.providers.{name}.{field}");
            let valid_name = !name.is_empty()
                && name.len() <= 64
                && !name.contains("__")
                && name
                    .bytes()
                    .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b"-_".contains(&b));
            if !valid_name {
                return Err(invalid(
                    &format!("llm.providers.{name}"),
                    "a provider name is 1 to 64 lower-case letters, digits, '-' or '_' (no \"__\", so KEEL_LLM__PROVIDERS__<NAME>__* can name it)",
                ));
            }
            let url = p.base_url.trim();
            if !(url.starts_with("http://") || url.starts_with("https://")) || url.len() < 10 {
                return Err(invalid(
                    &key("base_url"),
                    format!("must be an http:// or https:// URL, got {url:?}"),
                ));
            }
            if p.model.trim().is_empty() {
                return Err(invalid(&key("model"), "must not be empty"));
            }
            if let Some(secret) = &p.api_key {
                if secret.expose().is_empty() {
                    return Err(invalid(
                        &key("api_key"),
                        "must not be empty (leave it unset when the endpoint needs no key)",
                    ));
                }
                if secret.is_redaction() {
                    return Err(invalid(
                        &key("api_key"),
                        "is the redaction placeholder \"***\" (copied from `keel config check` output?); set the real key",
                    ));
                }
            }
            for (field, price) in [
                ("input_usd_per_1k_tokens", p.input_usd_per_1k_tokens),
                ("output_usd_per_1k_tokens", p.output_usd_per_1k_tokens),
            ] {
                if !(price.is_finite() && (0.0..=1000.0).contains(&price)) {
                    return Err(invalid(
                        &key(field),
                        format!("must be a price from 0 to 1000 USD, got {price}"),
                    ));
                }
            }
            if !(p.daily_budget_usd.is_finite() && (0.0..=1e6).contains(&p.daily_budget_usd)) {
                return Err(invalid(
                    &key("daily_budget_usd"),
                    format!("must be from 0 to 1000000 USD, got {}", p.daily_budget_usd),
                ));
            }
            between(&key("max_tokens"), u64::from(p.max_tokens), 1, 1_000_000)?;
        }
        Ok(())
    }
}
