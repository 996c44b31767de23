//! `[inbox]`: inbound webhooks, their sources and how each proves where it comes from.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use super::error::{ConfigError, at_least, between, invalid};
use super::secret::REDACTED;
use super::{Config, Secret};

/// `[inbox]`: inbound webhooks at `POST /hooks/<source>`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct InboxConfig {
    /// Largest difference between `webhook-timestamp` and keel's clock, either way, in seconds.
    pub timestamp_tolerance_seconds: u64,
    /// How long a delivery id is remembered to refuse replays, in seconds (at least twice the
    /// timestamp tolerance).
    pub replay_retention_seconds: u64,
    /// Rejected deliveries kept for `GET /api/v1/inbox/rejections` (the oldest go first).
    pub max_rejections: u64,
    /// Days a rejected delivery is kept before the retention pass deletes it.
    pub rejection_retention_days: u64,
    /// Webhook sources by name (the `<source>` of the URL).
    pub sources: BTreeMap<String, InboxSourceConfig>,
}

impl Default for InboxConfig {
    fn default() -> Self {
        Self {
            timestamp_tolerance_seconds: 300,
            replay_retention_seconds: 600,
            max_rejections: 1000,
            rejection_retention_days: 30,
            sources: BTreeMap::new(),
        }
    }
}

/// `[inbox.sources.<name>]`: one sender of webhooks.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct InboxSourceConfig {
    /// How deliveries prove they come from this source.
    pub scheme: InboxScheme,
    /// `whsec_…` for Standard Webhooks, the webhook secret for GitHub, the token for bearer.
    /// Required; may come from `KEEL_INBOX__SOURCES__<NAME>__SECRET_FILE` instead of the file.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub secret: Option<Secret>,
    /// Task type each accepted delivery becomes; needs a `[handlers.<type>]`.
    pub task_type: String,
    /// Bearer scheme only: the header carrying the delivery id (default: `idempotency-key`,
    /// then `x-delivery-id`; without either, a hash of the body).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub delivery_id_header: Option<String>,
}

/// Verification schemes of inbound webhooks.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum InboxScheme {
    /// `webhook-id`, `webhook-timestamp`, `webhook-signature: v1,<base64 HMAC-SHA256>`.
    StandardWebhooks,
    /// `X-Hub-Signature-256: sha256=<hex HMAC-SHA256 of the body>`, `X-GitHub-Delivery`.
    Github,
    /// `Authorization: Bearer <token>`.
    Bearer,
}

impl InboxScheme {
    /// The name used in the config file.
    pub fn as_str(self) -> &'static str {
        match self {
            InboxScheme::StandardWebhooks => "standard-webhooks",
            InboxScheme::Github => "github",
            InboxScheme::Bearer => "bearer",
        }
    }
}

impl Config {
    pub(super) fn validate_inbox(&self) -> Result<(), ConfigError> {
        let inbox = &self.inbox;
        between(
            "inbox.timestamp_tolerance_seconds",
            inbox.timestamp_tolerance_seconds,
            1,
            86_400,
        )?;
        at_least(
            "inbox.replay_retention_seconds",
            inbox.replay_retention_seconds,
            2 * inbox.timestamp_tolerance_seconds,
        )
        .map_err(|e| match e {
            ConfigError::Invalid { key, message } => ConfigError::Invalid {
                key,
                message: format!("{message} (twice inbox.timestamp_tolerance_seconds)"),
            },
            other => other,
        })?;
        between("inbox.max_rejections", inbox.max_rejections, 1, 100_000)?;
        between(
            "inbox.rejection_retention_days",
            inbox.rejection_retention_days,
            1,
            3650,
        )?;
        if !inbox.sources.is_empty()
            && self.queue.idempotency_retention_seconds < inbox.replay_retention_seconds
        {
            return Err(invalid(
                "queue.idempotency_retention_seconds",
                format!(
                    "must be at least inbox.replay_retention_seconds ({}) while inbox sources are configured, got {}",
                    inbox.replay_retention_seconds, self.queue.idempotency_retention_seconds
                ),
            ));
        }
        for (name, source) in &inbox.sources {
            let key = |field: &str| format!("inbox.sources.{name}.{field}");
            let valid_name = !name.is_empty()
                && name.len() <= 64
                && name
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b"-_".contains(&b));
            if !valid_name {
                return Err(invalid(
                    &format!("inbox.sources.{name}"),
                    "a source name is 1 to 64 letters, digits, '-' or '_'",
                ));
            }
            let Some(secret) = source.secret.as_ref().map(Secret::expose) else {
                return Err(invalid(
                    &key("secret"),
                    format!(
                        "must be set (here, or through KEEL_INBOX__SOURCES__{}__SECRET_FILE)",
                        name.to_ascii_uppercase()
                    ),
                ));
            };
            if secret == REDACTED {
                return Err(invalid(
                    &key("secret"),
                    "is the redaction placeholder \"***\" (copied from `keel config check` output?); set the real secret",
                ));
            }
            match source.scheme {
                InboxScheme::StandardWebhooks => {
                    let ok = secret.strip_prefix("whsec_").is_some_and(|b64| {
                        base64::Engine::decode(&base64::engine::general_purpose::STANDARD, b64)
                            .is_ok_and(|k| k.len() >= 16)
                    });
                    if !ok {
                        return Err(invalid(
                            &key("secret"),
                            "must be `whsec_` followed by base64 of at least 16 bytes",
                        ));
                    }
                }
                InboxScheme::Github => {
                    if secret.len() < 16 {
                        return Err(invalid(
                            &key("secret"),
                            "a GitHub webhook secret must be at least 16 bytes",
                        ));
                    }
                }
                InboxScheme::Bearer => {
                    if secret.len() < 16 {
                        return Err(invalid(
                            &key("secret"),
                            "a bearer token must be at least 16 characters",
                        ));
                    }
                }
            }
            if let Some(header) = &source.delivery_id_header {
                if source.scheme != InboxScheme::Bearer {
                    return Err(invalid(
                        &key("delivery_id_header"),
                        format!(
                            "only the bearer scheme takes a delivery id header ({} has its own)",
                            source.scheme.as_str()
                        ),
                    ));
                }
                let valid = !header.is_empty()
                    && header.len() <= 64
                    && header
                        .bytes()
                        .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-');
                if !valid {
                    return Err(invalid(
                        &key("delivery_id_header"),
                        format!(
                            "must be a lower-case header name (letters, digits, '-'), got {header:?}"
                        ),
                    ));
                }
            }
            if !self.handlers.contains_key(&source.task_type) {
                return Err(invalid(
                    &key("task_type"),
                    format!(
                        "no [handlers.{}] is configured for task type `{}`",
                        source.task_type, source.task_type
                    ),
                ));
            }
        }
        Ok(())
    }
}
