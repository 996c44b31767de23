//! Layered configuration: embedded defaults → config file → `KEEL_*` environment → flags, parsed
//! strictly and validated into typed values.
//!
//! The defaults are `packaging/keel.toml`, embedded in the binary and installed as
//! `/etc/keel/keel.toml`. `load` reads the layers (the environment layer is `env`), one
//! module per room holds that room's sections and their checks, [`Secret`] keeps secret values
//! out of logs, and [`names`] says what a valid name is. Cron lines and the timezone are parsed
//! once, here, into [`crate::schedule`] values.
//!
//! To add a section: add a struct (with `deny_unknown_fields, default` and a `Default` impl) in
//! its room's module, a field on [`Config`], a section in `packaging/keel.toml`, and its checks
//! in [`Config::validate`]. The environment mapping needs no change: `KEEL_SECTION__KEY` works
//! for every key.

mod audit;
mod auth;
mod cycles;
mod env;
mod error;
mod exec;
mod inbox;
mod llm;
mod load;
mod metrics;
pub mod names;
mod queue;
mod secret;
mod security;
mod server;
mod store;
#[cfg(test)]
mod tests;

use std::collections::BTreeMap;
use std::path::PathBuf;

use serde::{Deserialize, Serialize};

pub use audit::AuditConfig;
pub use auth::{AuthConfig, MAX_ROTATION_OVERLAP_SECONDS};
pub use cycles::{
    AutonomyConfig, CyclesConfig, DispatchConfig, DispatchEndpointConfig, GovernanceConfig,
    TelemetryConfig,
};
pub use error::ConfigError;
pub use exec::{
    CircuitConfig, CircuitScope, CommandHandlerConfig, ExecConfig, HandlerConfig,
    HttpHandlerConfig, LlmHandlerConfig, WorkflowHandlerConfig, WorkflowStepConfig,
};
pub use inbox::{InboxConfig, InboxScheme, InboxSourceConfig};
pub use llm::{LlmConfig, LlmProviderConfig, usd_to_micros};
pub use load::LoadOptions;
pub use metrics::MetricsConfig;
pub use queue::QueueConfig;
pub use secret::{Secret, redact_url};
pub use security::{IpRange, RateLimitConfig, SecurityConfig, canonical as canonical_ip};
pub use server::{LogConfig, LogFormat, ServerConfig, ShutdownConfig};
pub use store::StoreConfig;

use error::invalid;

/// The default configuration file, embedded in the binary (installed as `/etc/keel/keel.toml`).
pub const DEFAULT_CONFIG_TOML: &str = include_str!("../../packaging/keel.toml");

/// Environment variable naming the config file when no file is given on the command line.
pub const CONFIG_ENV: &str = "KEEL_CONFIG";

/// `KEEL_*` variables that are not config keys (the CLI client's, and `KEEL_CRASH_AT`, the crash
/// point of builds with test hooks, which other builds ignore); they are ignored here.
pub const RESERVED_ENV: &[&str] = &[
    "KEEL_CONFIG",
    "KEEL_API_KEY",
    "KEEL_API_KEY_FILE",
    "KEEL_URL",
    "KEEL_CRASH_AT",
];

/// The whole effective configuration.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Config {
    /// Directory holding the database and generated secrets; relative to the working directory.
    pub data_dir: PathBuf,
    /// The HTTP server.
    pub server: ServerConfig,
    /// Logging.
    pub log: LogConfig,
    /// The embedded database.
    pub store: StoreConfig,
    /// The audit log.
    pub audit: AuditConfig,
    /// API keys and sessions.
    pub auth: AuthConfig,
    /// Persisted metrics.
    pub metrics: MetricsConfig,
    /// Graceful shutdown.
    pub shutdown: ShutdownConfig,
    /// The task queue.
    pub queue: QueueConfig,
    /// Limits on what executors keep of a task's runs.
    pub exec: ExecConfig,
    /// Circuit breakers in front of task targets.
    pub circuit: CircuitConfig,
    /// How each task type is executed, by type name.
    pub handlers: BTreeMap<String, HandlerConfig>,
    /// Inbound webhooks.
    pub inbox: InboxConfig,
    /// LLM providers (for `kind = "llm"` handlers), their prices and daily budgets.
    pub llm: LlmConfig,
    /// Scheduled cycles over profiles and run profiles.
    pub cycles: CyclesConfig,
    /// Where cycles dispatch their outputs.
    pub dispatch: DispatchConfig,
    /// Global pause of cycles.
    pub governance: GovernanceConfig,
    /// Whether approved strategy proposals may change profiles.
    pub autonomy: AutonomyConfig,
    /// The telemetry bus of cycles: retention, cold archive, advisory signals.
    pub telemetry: TelemetryConfig,
    /// Rate limits, allowlists, blocked addresses and the brute-force auto-block.
    pub security: SecurityConfig,
}

impl Default for Config {
    fn default() -> Self {
        Self {
            data_dir: PathBuf::from("./keel-data"),
            server: ServerConfig::default(),
            log: LogConfig::default(),
            store: StoreConfig::default(),
            audit: AuditConfig::default(),
            auth: AuthConfig::default(),
            metrics: MetricsConfig::default(),
            shutdown: ShutdownConfig::default(),
            queue: QueueConfig::default(),
            exec: ExecConfig::default(),
            circuit: CircuitConfig::default(),
            handlers: BTreeMap::new(),
            inbox: InboxConfig::default(),
            llm: LlmConfig::default(),
            cycles: CyclesConfig::default(),
            dispatch: DispatchConfig::default(),
            governance: GovernanceConfig::default(),
            autonomy: AutonomyConfig::default(),
            telemetry: TelemetryConfig::default(),
            security: SecurityConfig::default(),
        }
    }
}

impl Config {
    /// Checks ranges and formats; the error names the full key.
    pub fn validate(&self) -> Result<(), ConfigError> {
        if self.data_dir.as_os_str().is_empty() {
            return Err(invalid("data_dir", "must not be empty"));
        }
        self.server.validate()?;
        self.log.validate()?;
        self.store.validate()?;
        self.audit.validate()?;
        self.auth.validate()?;
        self.metrics.validate()?;
        self.shutdown.validate()?;
        self.queue.validate()?;
        self.exec.validate()?;
        self.circuit.validate()?;
        self.llm.validate()?;
        self.security.validate()?;
        self.validate_handlers()?;
        self.validate_inbox()?;
        self.validate_cycles()
    }

    /// The effective configuration as TOML, with secrets shown as `***` and every URL through
    /// [`redact_url`].
    pub fn to_redacted_toml(&self) -> String {
        let mut shown = self.clone();
        for handler in shown.handlers.values_mut() {
            if let HandlerConfig::Http(h) = handler {
                h.url = redact_url(&h.url);
            }
        }
        for endpoint in shown.dispatch.endpoints.values_mut() {
            endpoint.url = redact_url(&endpoint.url);
        }
        for provider in shown.llm.providers.values_mut() {
            provider.base_url = redact_url(&provider.base_url);
        }
        toml::to_string(&shown)
            .unwrap_or_else(|e| format!("# cannot render the configuration: {e}\n"))
    }

    /// `<data_dir>/keel.redb`.
    pub fn database_path(&self) -> PathBuf {
        self.data_dir.join("keel.redb")
    }

    /// `<data_dir>/key-hash.secret`, used when `auth.key_hash_secret` is unset.
    pub fn key_hash_secret_path(&self) -> PathBuf {
        self.data_dir.join("key-hash.secret")
    }
}
