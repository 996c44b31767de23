//! Layered configuration: embedded defaults → config file → `KEEL_*` environment → flags, parsed strictly and validated into typed values.
//!
//! The defaults are `packaging/keel.toml`, embedded in the binary and installed as
//! `/etc/keel/keel.toml`. To add a section: add a struct (with `deny_unknown_fields, default` and a
//! `Default` impl), a field on [`Config`], a section in `packaging/keel.toml`, and its checks in
//! [`Config::validate`]. The environment mapping needs no change: `KEEL_SECTION__KEY` works for
//! every key.

use std::collections::BTreeMap;
use std::fmt;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::{Deserialize, Serialize};

use crate::schedule::{CronLine, CronSchedule, Timezone};
use crate::template::{Placeholder, template_placeholders};

/// Names of things in the configuration and in requests.
pub mod names {
    /// Whether `name` is a valid id, namespace or key: 1 to 64 letters, digits, `-`, `_`, `.`,
    /// starting with a letter or digit.
    pub fn valid_name(name: &str) -> bool {
        !name.is_empty()
            && name.len() <= 64
            && name.as_bytes()[0].is_ascii_alphanumeric()
            && name
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b"-_.".contains(&b))
    }
}

/// The default configuration file, embedded in the binary (installed as `/etc/keel/keel.toml`).
pub const DEFAULT_CONFIG_TOML: &str = include_str!("../packaging/keel.toml");

/// Environment variable naming the config file when no file is given on the command line.
pub const CONFIG_ENV: &str = "KEEL_CONFIG";

/// `KEEL_*` variables that are not config keys (used by the CLI client); they are ignored here.
pub const RESERVED_ENV: &[&str] = &[
    "KEEL_CONFIG",
    "KEEL_API_KEY",
    "KEEL_API_KEY_FILE",
    "KEEL_URL",
    "KEEL_CRASH_AT",
];

const ENV_PREFIX: &str = "KEEL_";
const FILE_SUFFIX: &str = "_FILE";
const REDACTED: &str = "***";

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
            circuit: CircuitConfig::default(),
            handlers: BTreeMap::new(),
            inbox: InboxConfig::default(),
            llm: LlmConfig::default(),
            cycles: CyclesConfig::default(),
            dispatch: DispatchConfig::default(),
            governance: GovernanceConfig::default(),
            autonomy: AutonomyConfig::default(),
            telemetry: TelemetryConfig::default(),
        }
    }
}

/// `[server]`: the HTTP server.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ServerConfig {
    /// Address to listen on.
    pub listen: SocketAddr,
    /// Largest request body accepted, in bytes.
    pub max_body_bytes: usize,
    /// Time allowed for one request, in seconds.
    pub request_timeout_seconds: u64,
    /// Origins allowed cross-origin (`scheme://host[:port]`); empty means none.
    pub cors_allowed_origins: Vec<String>,
    /// `Strict-Transport-Security` max-age in seconds; 0 sends no header.
    pub hsts_max_age_seconds: u64,
}

impl Default for ServerConfig {
    fn default() -> Self {
        Self {
            listen: SocketAddr::from(([127, 0, 0, 1], 8080)),
            max_body_bytes: 1_048_576,
            request_timeout_seconds: 30,
            cors_allowed_origins: Vec::new(),
            hsts_max_age_seconds: 0,
        }
    }
}

impl ServerConfig {
    /// `request_timeout_seconds` as a duration.
    pub fn request_timeout(&self) -> Duration {
        Duration::from_secs(self.request_timeout_seconds)
    }

    /// `hsts_max_age_seconds` as a duration, or `None` when no HSTS header is to be sent.
    pub fn hsts_max_age(&self) -> Option<Duration> {
        (self.hsts_max_age_seconds > 0).then(|| Duration::from_secs(self.hsts_max_age_seconds))
    }
}

/// `[log]`: logging.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct LogConfig {
    /// Filter in `tracing_subscriber::EnvFilter` syntax, e.g. `info` or `info,keel=debug`.
    pub level: String,
    /// Output format.
    pub format: LogFormat,
}

impl Default for LogConfig {
    fn default() -> Self {
        Self {
            level: "info".to_owned(),
            format: LogFormat::Text,
        }
    }
}

/// Log output format.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum LogFormat {
    /// Human-readable lines.
    Text,
    /// One JSON object per line.
    Json,
}

/// `[store]`: the embedded database.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct StoreConfig {
    /// Most write requests per group commit (1..=65536).
    pub max_batch: usize,
}

impl Default for StoreConfig {
    fn default() -> Self {
        Self { max_batch: 1024 }
    }
}

/// `[audit]`: the audit log.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct AuditConfig {
    /// Entries between signed checkpoints (≥ 1).
    pub checkpoint_every: u64,
    /// Longest time between signed checkpoints, in seconds (≥ 60).
    pub checkpoint_interval_seconds: u64,
}

impl Default for AuditConfig {
    fn default() -> Self {
        Self {
            checkpoint_every: 1000,
            checkpoint_interval_seconds: 3600,
        }
    }
}

impl AuditConfig {
    /// `checkpoint_interval_seconds` as a duration.
    pub fn checkpoint_interval(&self) -> Duration {
        Duration::from_secs(self.checkpoint_interval_seconds)
    }
}

/// `[auth]`: API keys and sessions.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct AuthConfig {
    /// Secret for API key hashes; when unset keel generates `<data_dir>/key-hash.secret`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub key_hash_secret: Option<Secret>,
    /// How long a rotated-out key keeps working, in seconds.
    pub rotation_overlap_seconds: u64,
    /// How often key "last used" times are flushed, in seconds (≥ 1).
    pub last_used_flush_seconds: u64,
}

impl Default for AuthConfig {
    fn default() -> Self {
        Self {
            key_hash_secret: None,
            rotation_overlap_seconds: 86_400,
            last_used_flush_seconds: 60,
        }
    }
}

impl AuthConfig {
    /// `rotation_overlap_seconds` as a duration.
    pub fn rotation_overlap(&self) -> Duration {
        Duration::from_secs(self.rotation_overlap_seconds)
    }

    /// `last_used_flush_seconds` as a duration.
    pub fn last_used_flush(&self) -> Duration {
        Duration::from_secs(self.last_used_flush_seconds)
    }
}

/// `[metrics]`: persisted metrics.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct MetricsConfig {
    /// How often a snapshot is persisted, in seconds (≥ 1).
    pub snapshot_interval_seconds: u64,
    /// How long snapshots are kept, in days (1..=3650).
    pub retention_days: u64,
}

impl Default for MetricsConfig {
    fn default() -> Self {
        Self {
            snapshot_interval_seconds: 60,
            retention_days: 14,
        }
    }
}

impl MetricsConfig {
    /// `snapshot_interval_seconds` as a duration.
    pub fn snapshot_interval(&self) -> Duration {
        Duration::from_secs(self.snapshot_interval_seconds)
    }

    /// `retention_days` as a duration.
    pub fn retention(&self) -> Duration {
        Duration::from_secs(self.retention_days.saturating_mul(86_400))
    }
}

/// `[queue]`: the durable task queue.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct QueueConfig {
    /// Tasks executed at once, over all types.
    pub concurrency: usize,
    /// Most tasks waiting (queued or retrying); more are refused with 429.
    pub max_depth: u64,
    /// How long a lease lasts before the reaper returns the task to the queue, in seconds.
    pub lease_seconds: u64,
    /// Attempts before a task is dead (per-handler `max_attempts` and per-task values override).
    pub max_attempts: u32,
    /// First retry delay, in milliseconds; doubles each attempt (with jitter).
    pub backoff_base_ms: u64,
    /// Longest retry delay, in seconds.
    pub backoff_max_seconds: u64,
    /// Longest `Retry-After` honoured, in seconds.
    pub retry_after_max_seconds: u64,
    /// How long an idempotency key maps to its task, in seconds.
    pub idempotency_retention_seconds: u64,
    /// Default task timeout, in seconds.
    pub default_timeout_seconds: u64,
    /// Largest stored task result, in bytes (longer results are cut).
    pub result_max_bytes: usize,
    /// How long finished tasks (succeeded, cancelled) are kept, in days.
    pub retention_days: u64,
}

impl Default for QueueConfig {
    fn default() -> Self {
        Self {
            concurrency: 10,
            max_depth: 100_000,
            lease_seconds: 900,
            max_attempts: 3,
            backoff_base_ms: 1000,
            backoff_max_seconds: 60,
            retry_after_max_seconds: 300,
            idempotency_retention_seconds: 86_400,
            default_timeout_seconds: 30,
            result_max_bytes: 65_536,
            retention_days: 7,
        }
    }
}

impl QueueConfig {
    /// `lease_seconds` as a duration.
    pub fn lease(&self) -> Duration {
        Duration::from_secs(self.lease_seconds)
    }
}

/// `[circuit]`: circuit breakers per target (URL host, provider, command handler).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct CircuitConfig {
    /// Failure ratio over the window above which the circuit opens (0 to 1).
    pub threshold: f64,
    /// Fewest outcomes in the window before the ratio counts.
    pub min_volume: u64,
    /// Length of the rolling window, in seconds.
    pub window_seconds: u64,
    /// How long an open circuit stays open before one trial is let through, in seconds.
    pub open_seconds: u64,
}

impl Default for CircuitConfig {
    fn default() -> Self {
        Self {
            threshold: 0.1,
            min_volume: 10,
            window_seconds: 60,
            open_seconds: 600,
        }
    }
}

/// `[handlers.<type>]`: how tasks of one type are executed.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "lowercase", deny_unknown_fields)]
pub enum HandlerConfig {
    /// POST the payload to a URL (a signed webhook).
    Http(HttpHandlerConfig),
    /// Run a local program with the payload on stdin.
    Command(CommandHandlerConfig),
    /// Ask an LLM provider (OpenAI-compatible chat completions) within its daily budget.
    Llm(LlmHandlerConfig),
    /// Run other handlers as ordered steps, checkpointing each step's result.
    Workflow(WorkflowHandlerConfig),
}

impl HandlerConfig {
    /// Most tasks of this type running at once, if limited.
    pub fn concurrency(&self) -> Option<usize> {
        match self {
            HandlerConfig::Http(h) => h.concurrency,
            HandlerConfig::Command(c) => c.concurrency,
            HandlerConfig::Llm(l) => l.concurrency,
            HandlerConfig::Workflow(w) => w.concurrency,
        }
    }

    /// Attempts before a task of this type is dead, if set here.
    pub fn max_attempts(&self) -> Option<u32> {
        match self {
            HandlerConfig::Http(h) => h.max_attempts,
            HandlerConfig::Command(c) => c.max_attempts,
            HandlerConfig::Llm(l) => l.max_attempts,
            HandlerConfig::Workflow(w) => w.max_attempts,
        }
    }
}

/// `kind = "http"`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct HttpHandlerConfig {
    /// Where to send the payload (http or https).
    pub url: String,
    /// HTTP method.
    #[serde(default = "default_method")]
    pub method: String,
    /// Bearer token sent as `Authorization`.
    #[serde(default)]
    pub token: Option<Secret>,
    /// Standard Webhooks signing secret (`whsec_` + base64).
    #[serde(default)]
    pub signing_secret: Option<Secret>,
    /// Request timeout, in seconds.
    #[serde(default = "default_http_timeout")]
    pub timeout_seconds: u64,
    /// Most requests in flight to this URL's host at once.
    #[serde(default = "default_target_concurrency")]
    pub target_concurrency: usize,
    /// Most tasks of this type running at once.
    #[serde(default)]
    pub concurrency: Option<usize>,
    /// Attempts before a task is dead.
    #[serde(default)]
    pub max_attempts: Option<u32>,
}

/// `kind = "command"`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CommandHandlerConfig {
    /// Program to run (no shell).
    pub program: PathBuf,
    /// Its arguments.
    #[serde(default)]
    pub args: Vec<String>,
    /// Working directory.
    #[serde(default)]
    pub working_dir: Option<PathBuf>,
    /// Environment variables passed through from keel's environment; nothing else is.
    #[serde(default)]
    pub env_allow: Vec<String>,
    /// Time allowed, in seconds; then the process group is killed.
    #[serde(default = "default_command_timeout")]
    pub timeout_seconds: u64,
    /// Most tasks of this type running at once.
    #[serde(default)]
    pub concurrency: Option<usize>,
    /// Attempts before a task is dead.
    #[serde(default)]
    pub max_attempts: Option<u32>,
}

/// `kind = "llm"`: the payload is `{"prompt": "..."}` or `{"messages": [...]}`, with an optional
/// `max_tokens` (capped by the provider's `max_tokens`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LlmHandlerConfig {
    /// The provider, a key of `[llm.providers]`.
    pub provider: String,
    /// `max_tokens` when the payload gives none (default: the provider's cap).
    #[serde(default)]
    pub max_tokens: Option<u32>,
    /// Request timeout, in seconds.
    #[serde(default = "default_llm_timeout")]
    pub timeout_seconds: u64,
    /// Most tasks of this type running at once.
    #[serde(default)]
    pub concurrency: Option<usize>,
    /// Attempts before a task is dead.
    #[serde(default)]
    pub max_attempts: Option<u32>,
}

/// `kind = "workflow"`: ordered steps, each run by another configured handler.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct WorkflowHandlerConfig {
    /// The steps, in order (1 to 64).
    pub steps: Vec<WorkflowStepConfig>,
    /// Time allowed for one run of the whole workflow, in seconds; past it the task is dead
    /// with error class `timeout`.
    #[serde(default = "default_workflow_timeout")]
    pub timeout_seconds: u64,
    /// Most tasks of this type running at once.
    #[serde(default)]
    pub concurrency: Option<usize>,
    /// Attempts before a task is dead.
    #[serde(default)]
    pub max_attempts: Option<u32>,
}

/// `[[handlers.<type>.steps]]`: one step of a workflow.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct WorkflowStepConfig {
    /// Step name (letters, digits, '-', '_'), unique in the workflow; later steps refer to its
    /// result as `{{steps.<name>.result}}`.
    pub name: String,
    /// The task type whose handler runs this step (an http, command or llm handler).
    pub handler: String,
    /// The step's payload as a JSON template (default: the workflow's payload). Placeholders
    /// in strings: `{{payload}}`, `{{payload.<field>[.<field>…]}}` and
    /// `{{steps.<earlier step>.result}}`.
    #[serde(default)]
    pub payload: Option<serde_json::Value>,
}

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

fn default_llm_timeout() -> u64 {
    120
}

fn default_workflow_timeout() -> u64 {
    600
}

fn default_llm_max_tokens() -> u32 {
    1024
}

fn default_method() -> String {
    "POST".to_string()
}

fn default_http_timeout() -> u64 {
    30
}

fn default_target_concurrency() -> usize {
    8
}

fn default_command_timeout() -> u64 {
    60
}

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
    /// Webhook sources by name (the `<source>` of the URL).
    pub sources: BTreeMap<String, InboxSourceConfig>,
}

impl Default for InboxConfig {
    fn default() -> Self {
        Self {
            timestamp_tolerance_seconds: 300,
            replay_retention_seconds: 600,
            max_rejections: 1000,
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

/// `[shutdown]`: graceful shutdown.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ShutdownConfig {
    /// Time allowed for in-flight work to finish, in seconds (1..=3600).
    pub drain_seconds: u64,
}

impl Default for ShutdownConfig {
    fn default() -> Self {
        Self { drain_seconds: 30 }
    }
}

impl ShutdownConfig {
    /// `drain_seconds` as a duration.
    pub fn drain(&self) -> Duration {
        Duration::from_secs(self.drain_seconds)
    }
}

/// `[cycles]`: scheduled cycles over the profiles in `profiles_dir`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct CyclesConfig {
    /// Directory holding `profiles.json` and `runProfiles.json`; empty: no profiles.
    pub profiles_dir: PathBuf,
    /// Cron schedule of raw cycles (seconds first; the classic 5-field form is accepted);
    /// empty: off.
    pub schedule: CronLine,
    /// Cron schedule running every enabled run profile; empty: off.
    pub run_profile_schedule: CronLine,
    /// IANA timezone the schedules are read in.
    pub timezone: Timezone,
    /// Namespace of raw cycles (those not started from a run profile).
    pub default_namespace: String,
    /// Dispatch endpoints raw cycles deliver to.
    pub default_targets: Vec<String>,
    /// Items per normalization batch.
    pub normalization_batch_size: usize,
    /// Task type whose handler normalizes each batch; empty: pass-through.
    pub normalizer: String,
}

impl Default for CyclesConfig {
    fn default() -> Self {
        Self {
            profiles_dir: PathBuf::new(),
            schedule: CronLine::parse("0 0 0,12 * * *"),
            run_profile_schedule: CronLine::off(),
            timezone: Timezone::parse("UTC"),
            default_namespace: "default".to_owned(),
            default_targets: Vec::new(),
            normalization_batch_size: 100,
            normalizer: String::new(),
        }
    }
}

impl CyclesConfig {
    /// The schedule of raw cycles in the configured timezone; `None` when off.
    pub fn raw_schedule(&self) -> Result<Option<CronSchedule>, String> {
        self.schedule.in_zone(&self.timezone)
    }

    /// The schedule of run profiles in the configured timezone; `None` when off.
    pub fn run_profiles_schedule(&self) -> Result<Option<CronSchedule>, String> {
        self.run_profile_schedule.in_zone(&self.timezone)
    }
}

/// `[dispatch]`: the endpoints cycles deliver to, through the task queue's http executor.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct DispatchConfig {
    /// Retries after the first attempt before a dispatch goes to the dead-letter queue.
    pub max_retries: u32,
    /// Endpoints by key (the names distribution targets use).
    pub endpoints: BTreeMap<String, DispatchEndpointConfig>,
}

impl Default for DispatchConfig {
    fn default() -> Self {
        Self {
            max_retries: 3,
            endpoints: BTreeMap::new(),
        }
    }
}

/// `[dispatch.endpoints.<key>]`: one endpoint; url, method and token are snapshotted into each
/// dispatch when it is enqueued.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DispatchEndpointConfig {
    /// Where to send (http or https).
    pub url: String,
    /// HTTP method.
    #[serde(default = "default_method")]
    pub method: String,
    /// Bearer token sent as `Authorization`.
    #[serde(default)]
    pub token: Option<Secret>,
    /// Standard Webhooks signing secret (`whsec_` + base64).
    #[serde(default)]
    pub signing_secret: Option<Secret>,
    /// Request timeout, in seconds.
    #[serde(default = "default_http_timeout")]
    pub timeout_seconds: u64,
}

/// `[governance]`: stops cycles.
#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct GovernanceConfig {
    /// Pause every cycle before any work (the API cannot resume while this is set).
    pub global_pause: bool,
}

/// `[autonomy]`: approved strategy proposals change profiles only when both are true.
#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct AutonomyConfig {
    /// First switch.
    pub enabled: bool,
    /// Second switch.
    pub allow_mutation: bool,
}

/// `[telemetry]`: the telemetry bus of cycles.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct TelemetryConfig {
    /// Days events are kept.
    pub retention_days: u64,
    /// Write pruned events to compressed JSON-lines files under the data dir first.
    pub cold_archive: bool,
    /// Hours of telemetry an advisory signal looks at.
    pub signal_window_hours: u64,
    /// Fewest finished cycles before a signal is other than `stable`.
    pub signal_min_samples: u64,
}

impl Default for TelemetryConfig {
    fn default() -> Self {
        Self {
            retention_days: 30,
            cold_archive: false,
            signal_window_hours: 168,
            signal_min_samples: 3,
        }
    }
}

/// A secret string. `Debug`, `Display` and `Serialize` all give `***`, so it cannot reach a log
/// or printed config; use [`Secret::expose`] where the value is really needed.
#[derive(Clone, PartialEq, Eq)]
pub struct Secret(String);

impl Secret {
    /// Wraps a secret value.
    pub fn new(value: impl Into<String>) -> Self {
        Self(value.into())
    }

    /// The secret value itself.
    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(REDACTED)
    }
}

impl fmt::Display for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(REDACTED)
    }
}

impl Serialize for Secret {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.serialize_str(REDACTED)
    }
}

impl<'de> Deserialize<'de> for Secret {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        deserializer.deserialize_str(SecretVisitor)
    }
}

/// Accepts only strings, and never echoes a rejected value in its error.
struct SecretVisitor;

impl SecretVisitor {
    fn reject<E: serde::de::Error>(&self, kind: &'static str) -> Result<Secret, E> {
        Err(E::invalid_type(serde::de::Unexpected::Other(kind), self))
    }
}

impl serde::de::Visitor<'_> for SecretVisitor {
    type Value = Secret;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("a secret string")
    }

    fn visit_str<E: serde::de::Error>(self, v: &str) -> Result<Secret, E> {
        Ok(Secret::new(v))
    }

    fn visit_string<E: serde::de::Error>(self, v: String) -> Result<Secret, E> {
        Ok(Secret(v))
    }

    fn visit_bool<E: serde::de::Error>(self, _: bool) -> Result<Secret, E> {
        self.reject("a boolean")
    }

    fn visit_i64<E: serde::de::Error>(self, _: i64) -> Result<Secret, E> {
        self.reject("an integer")
    }

    fn visit_u64<E: serde::de::Error>(self, _: u64) -> Result<Secret, E> {
        self.reject("an integer")
    }

    fn visit_f64<E: serde::de::Error>(self, _: f64) -> Result<Secret, E> {
        self.reject("a float")
    }

    fn visit_char<E: serde::de::Error>(self, v: char) -> Result<Secret, E> {
        Ok(Secret(v.to_string()))
    }

    fn visit_bytes<E: serde::de::Error>(self, _: &[u8]) -> Result<Secret, E> {
        self.reject("bytes")
    }
}

/// Where a configuration comes from, besides the embedded defaults.
#[derive(Clone, Default)]
pub struct LoadOptions {
    /// The config file (`--config`). When `None`, `KEEL_CONFIG` from `env` names it; when that is
    /// unset too, only the embedded defaults are used.
    pub file: Option<PathBuf>,
    /// Environment variables as (name, value); only `KEEL_*` names are looked at.
    pub env: Vec<(String, String)>,
    /// `--listen` override.
    pub listen: Option<SocketAddr>,
    /// `--data-dir` override.
    pub data_dir: Option<PathBuf>,
}

impl LoadOptions {
    /// Options with `file` and the process's `KEEL_*` environment variables (no flag overrides).
    pub fn from_process_env(file: Option<PathBuf>) -> Self {
        let env = std::env::vars_os()
            .filter_map(|(name, value)| {
                let name = name.into_string().ok()?;
                name.starts_with(ENV_PREFIX)
                    .then(|| (name, value.to_string_lossy().into_owned()))
            })
            .collect();
        Self {
            file,
            env,
            ..Self::default()
        }
    }
}

/// Prints variable names only: values may be secrets.
impl fmt::Debug for LoadOptions {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let names: Vec<&str> = self.env.iter().map(|(name, _)| name.as_str()).collect();
        f.debug_struct("LoadOptions")
            .field("file", &self.file)
            .field("env", &names)
            .field("listen", &self.listen)
            .field("data_dir", &self.data_dir)
            .finish()
    }
}

/// Why a configuration could not be loaded. Messages never contain secret values.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// The named config file does not exist.
    #[error("config file {} does not exist", .path.display())]
    FileNotFound {
        /// The file that was asked for.
        path: PathBuf,
    },
    /// The named config file exists but could not be read.
    #[error("cannot read config file {}: {source}", .path.display())]
    FileUnreadable {
        /// The file that was asked for.
        path: PathBuf,
        /// The I/O error.
        source: std::io::Error,
    },
    /// The config file is not valid TOML or does not fit the schema.
    #[error("{location}: {message}")]
    Parse {
        /// `file:line:column` (or just the file when the position is unknown).
        location: String,
        /// What is wrong, naming the key when known.
        message: String,
    },
    /// A `KEEL_*` environment variable could not be applied.
    #[error("environment variable {var}: {message}")]
    Env {
        /// The variable's name.
        var: String,
        /// What is wrong.
        message: String,
    },
    /// A value is out of range or badly formed.
    #[error("{key}: {message}")]
    Invalid {
        /// Full key path, e.g. `store.max_batch`.
        key: String,
        /// What is wrong and what was found.
        message: String,
    },
}

impl Config {
    /// Loads defaults, the file, the environment and the flag overrides in that order, then
    /// validates the result.
    pub fn load(options: &LoadOptions) -> Result<Config, ConfigError> {
        let file = options.file.clone().or_else(|| {
            options
                .env
                .iter()
                .find(|(name, value)| name == CONFIG_ENV && !value.is_empty())
                .map(|(_, value)| PathBuf::from(value))
        });
        let (mut raw, mut config) = match &file {
            Some(path) => {
                let text = read_config_file(path)?;
                parse_config_text(&text, &path.display().to_string())?
            }
            None => parse_config_text(DEFAULT_CONFIG_TOML, "<embedded keel.toml>")?,
        };

        for var in env_overrides(&options.env)? {
            config = apply_env(&mut raw, &config, &var)?;
        }

        if let Some(listen) = options.listen {
            config.server.listen = listen;
        }
        if let Some(data_dir) = &options.data_dir {
            config.data_dir = data_dir.clone();
        }

        config.validate()?;
        Ok(config)
    }

    /// Checks ranges and formats; the error names the full key.
    pub fn validate(&self) -> Result<(), ConfigError> {
        if self.data_dir.as_os_str().is_empty() {
            return Err(invalid("data_dir", "must not be empty"));
        }

        let server = &self.server;
        at_least("server.max_body_bytes", server.max_body_bytes as u64, 1)?;
        at_least(
            "server.request_timeout_seconds",
            server.request_timeout_seconds,
            1,
        )?;
        for (i, origin) in server.cors_allowed_origins.iter().enumerate() {
            check_origin(origin)
                .map_err(|why| invalid(&format!("server.cors_allowed_origins[{i}]"), why))?;
        }

        if self.log.level.trim().is_empty() {
            return Err(invalid("log.level", "must not be empty (try \"info\")"));
        }
        if let Err(e) = tracing_subscriber::EnvFilter::try_new(&self.log.level) {
            return Err(invalid(
                "log.level",
                format!("invalid log filter {:?}: {e}", self.log.level),
            ));
        }

        between("store.max_batch", self.store.max_batch as u64, 1, 65_536)?;

        at_least("audit.checkpoint_every", self.audit.checkpoint_every, 1)?;
        at_least(
            "audit.checkpoint_interval_seconds",
            self.audit.checkpoint_interval_seconds,
            60,
        )?;

        if let Some(secret) = &self.auth.key_hash_secret {
            if secret.expose().is_empty() {
                return Err(invalid(
                    "auth.key_hash_secret",
                    "must not be empty (leave it unset to have one generated)",
                ));
            }
            if secret.expose() == REDACTED {
                return Err(invalid(
                    "auth.key_hash_secret",
                    "is the redaction placeholder \"***\" (copied from `keel config check` output?); set the real secret",
                ));
            }
        }
        at_least(
            "auth.last_used_flush_seconds",
            self.auth.last_used_flush_seconds,
            1,
        )?;

        at_least(
            "metrics.snapshot_interval_seconds",
            self.metrics.snapshot_interval_seconds,
            1,
        )?;
        between(
            "metrics.retention_days",
            self.metrics.retention_days,
            1,
            3650,
        )?;

        between(
            "shutdown.drain_seconds",
            self.shutdown.drain_seconds,
            1,
            3600,
        )?;
        self.validate_queue()?;
        self.validate_llm()?;
        self.validate_handlers()?;
        self.validate_inbox()?;
        self.validate_cycles()
    }

    fn validate_cycles(&self) -> Result<(), ConfigError> {
        let c = &self.cycles;
        c.timezone.tz().map_err(|e| invalid("cycles.timezone", e))?;
        for (key, line) in [
            ("cycles.schedule", &c.schedule),
            ("cycles.run_profile_schedule", &c.run_profile_schedule),
        ] {
            line.in_zone(&c.timezone).map_err(|e| invalid(key, e))?;
        }
        if !names::valid_name(&c.default_namespace) {
            return Err(invalid(
                "cycles.default_namespace",
                "a namespace is 1 to 64 letters, digits, '-', '_' or '.'",
            ));
        }
        for (i, target) in c.default_targets.iter().enumerate() {
            if !self.dispatch.endpoints.contains_key(target) {
                return Err(invalid(
                    &format!("cycles.default_targets[{i}]"),
                    format!(
                        "no [dispatch.endpoints.{target}] is configured (configured: {})",
                        names_or_none(self.dispatch.endpoints.keys())
                    ),
                ));
            }
        }
        between(
            "cycles.normalization_batch_size",
            c.normalization_batch_size as u64,
            1,
            100_000,
        )?;
        if !c.normalizer.is_empty() && !self.handlers.contains_key(&c.normalizer) {
            return Err(invalid(
                "cycles.normalizer",
                format!(
                    "no [handlers.{}] is configured (configured: {})",
                    c.normalizer,
                    names_or_none(self.handlers.keys())
                ),
            ));
        }
        between(
            "dispatch.max_retries",
            u64::from(self.dispatch.max_retries),
            0,
            999,
        )?;
        for (name, e) in &self.dispatch.endpoints {
            let key = |field: &str| format!("dispatch.endpoints.{name}.{field}");
            if !names::valid_name(name) {
                return Err(invalid(
                    &format!("dispatch.endpoints.{name}"),
                    "an endpoint key is 1 to 64 letters, digits, '-', '_' or '.'",
                ));
            }
            check_http_target(
                &key,
                &e.url,
                &e.method,
                e.signing_secret.as_ref(),
                e.timeout_seconds,
            )?;
            if e.timeout_seconds >= self.queue.lease_seconds {
                return Err(invalid(
                    &key("timeout_seconds"),
                    format!(
                        "must be shorter than queue.lease_seconds ({})",
                        self.queue.lease_seconds
                    ),
                ));
            }
        }
        between(
            "telemetry.retention_days",
            self.telemetry.retention_days,
            1,
            3650,
        )?;
        between(
            "telemetry.signal_window_hours",
            self.telemetry.signal_window_hours,
            1,
            24 * 3650,
        )?;
        between(
            "telemetry.signal_min_samples",
            self.telemetry.signal_min_samples,
            1,
            1_000_000,
        )?;
        Ok(())
    }

    fn validate_inbox(&self) -> Result<(), ConfigError> {
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
                    if secret.is_empty() {
                        return Err(invalid(&key("secret"), "must not be empty"));
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

    fn validate_queue(&self) -> Result<(), ConfigError> {
        let q = &self.queue;
        between("queue.concurrency", q.concurrency as u64, 1, 10_000)?;
        at_least("queue.max_depth", q.max_depth, 1)?;
        at_least("queue.lease_seconds", q.lease_seconds, 1)?;
        between("queue.max_attempts", u64::from(q.max_attempts), 1, 1000)?;
        at_least("queue.backoff_base_ms", q.backoff_base_ms, 1)?;
        at_least("queue.backoff_max_seconds", q.backoff_max_seconds, 1)?;
        at_least(
            "queue.default_timeout_seconds",
            q.default_timeout_seconds,
            1,
        )?;
        between(
            "queue.result_max_bytes",
            q.result_max_bytes as u64,
            1,
            16 << 20,
        )?;
        at_least("queue.retention_days", q.retention_days, 1)?;
        let c = &self.circuit;
        if !(c.threshold > 0.0 && c.threshold <= 1.0) {
            return Err(invalid(
                "circuit.threshold",
                format!("must be above 0 and at most 1, got {}", c.threshold),
            ));
        }
        at_least("circuit.min_volume", c.min_volume, 1)?;
        at_least("circuit.window_seconds", c.window_seconds, 1)?;
        at_least("circuit.open_seconds", c.open_seconds, 1)?;
        Ok(())
    }

    fn validate_handlers(&self) -> Result<(), ConfigError> {
        for (name, handler) in &self.handlers {
            let key = |field: &str| format!("handlers.{name}.{field}");
            let valid_name = !name.is_empty()
                && name.len() <= 64
                && name
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b"-_.".contains(&b));
            if !valid_name {
                return Err(invalid(
                    &format!("handlers.{name}"),
                    "a task type is 1 to 64 letters, digits, '-', '_' or '.'",
                ));
            }
            if let Some(n) = handler.concurrency() {
                between(&key("concurrency"), n as u64, 1, 10_000)?;
            }
            if let Some(n) = handler.max_attempts() {
                between(&key("max_attempts"), u64::from(n), 1, 1000)?;
            }
            match handler {
                HandlerConfig::Http(h) => {
                    check_http_target(
                        &key,
                        &h.url,
                        &h.method,
                        h.signing_secret.as_ref(),
                        h.timeout_seconds,
                    )?;
                    between(
                        &key("target_concurrency"),
                        h.target_concurrency as u64,
                        1,
                        1000,
                    )?;
                }
                HandlerConfig::Command(c) => {
                    if c.program.as_os_str().is_empty() {
                        return Err(invalid(&key("program"), "must not be empty"));
                    }
                    between(&key("timeout_seconds"), c.timeout_seconds, 1, 86_400)?;
                }
                HandlerConfig::Llm(l) => {
                    let Some(provider) = self.llm.providers.get(&l.provider) else {
                        return Err(invalid(
                            &key("provider"),
                            format!(
                                "no [llm.providers.{}] is configured (configured: {})",
                                l.provider,
                                names_or_none(self.llm.providers.keys())
                            ),
                        ));
                    };
                    if let Some(n) = l.max_tokens {
                        between(
                            &key("max_tokens"),
                            u64::from(n),
                            1,
                            u64::from(provider.max_tokens),
                        )
                        .map_err(|e| match e {
                            ConfigError::Invalid { key, message } => ConfigError::Invalid {
                                key,
                                message: format!(
                                    "{message} (the cap is llm.providers.{}.max_tokens)",
                                    l.provider
                                ),
                            },
                            other => other,
                        })?;
                    }
                    between(&key("timeout_seconds"), l.timeout_seconds, 1, 3600)?;
                }
                HandlerConfig::Workflow(w) => self.validate_workflow(name, w)?,
            }
        }
        Ok(())
    }

    fn validate_workflow(&self, name: &str, w: &WorkflowHandlerConfig) -> Result<(), ConfigError> {
        let key = |field: &str| format!("handlers.{name}.{field}");
        between(&key("timeout_seconds"), w.timeout_seconds, 1, 86_400)?;
        if w.steps.is_empty() || w.steps.len() > 64 {
            return Err(invalid(
                &key("steps"),
                format!("a workflow has 1 to 64 steps, got {}", w.steps.len()),
            ));
        }
        let mut earlier: Vec<&str> = Vec::new();
        for (i, step) in w.steps.iter().enumerate() {
            let step_key = |field: &str| format!("handlers.{name}.steps[{i}].{field}");
            let valid_name = !step.name.is_empty()
                && step.name.len() <= 64
                && step
                    .name
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b"-_".contains(&b));
            if !valid_name {
                return Err(invalid(
                    &step_key("name"),
                    format!(
                        "a step name is 1 to 64 letters, digits, '-' or '_', got {:?}",
                        step.name
                    ),
                ));
            }
            if earlier.contains(&step.name.as_str()) {
                return Err(invalid(
                    &step_key("name"),
                    format!("the step name {:?} is used twice", step.name),
                ));
            }
            match self.handlers.get(&step.handler) {
                None => {
                    return Err(invalid(
                        &step_key("handler"),
                        format!(
                            "no [handlers.{}] is configured (configured: {})",
                            step.handler,
                            names_or_none(self.handlers.keys())
                        ),
                    ));
                }
                Some(HandlerConfig::Workflow(_)) => {
                    return Err(invalid(
                        &step_key("handler"),
                        format!(
                            "`{}` is a workflow; a step runs an http, command or llm handler",
                            step.handler
                        ),
                    ));
                }
                Some(_) => {}
            }
            if let Some(template) = &step.payload {
                let holes = template_placeholders(template)
                    .map_err(|why| invalid(&step_key("payload"), why))?;
                for hole in holes {
                    if let Placeholder::StepResult(step_name) = hole
                        && !earlier.contains(&step_name.as_str())
                    {
                        return Err(invalid(
                            &step_key("payload"),
                            format!(
                                "{{{{steps.{step_name}.result}}}} names no earlier step (earlier: {})",
                                names_or_none(earlier.iter())
                            ),
                        ));
                    }
                }
            }
            earlier.push(&step.name);
        }
        Ok(())
    }

    fn validate_llm(&self) -> Result<(), ConfigError> {
        for (name, p) in &self.llm.providers {
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
                if secret.expose() == REDACTED {
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

    /// The effective configuration as TOML, with secrets shown as `***`.
    pub fn to_redacted_toml(&self) -> String {
        toml::to_string(self)
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

/// `a, b, c`, or `none`.
fn names_or_none<'a, S: AsRef<str> + 'a>(names: impl Iterator<Item = &'a S>) -> String {
    let names: Vec<&str> = names.map(AsRef::as_ref).collect();
    if names.is_empty() {
        "none".to_string()
    } else {
        names.join(", ")
    }
}

/// Checks what an http handler and a dispatch endpoint share: an http(s) URL, a method that
/// carries a body, a Standard Webhooks secret when given, and a timeout.
fn check_http_target(
    key: &dyn Fn(&str) -> String,
    url: &str,
    method: &str,
    signing_secret: Option<&Secret>,
    timeout_seconds: u64,
) -> Result<(), ConfigError> {
    let url = url.trim();
    if !(url.starts_with("http://") || url.starts_with("https://")) || url.len() < 10 {
        return Err(invalid(
            &key("url"),
            format!("must be an http:// or https:// URL, got {url:?}"),
        ));
    }
    if !["POST", "PUT", "PATCH"].contains(&method) {
        return Err(invalid(
            &key("method"),
            format!("must be POST, PUT or PATCH, got {method:?}"),
        ));
    }
    if let Some(secret) = signing_secret {
        let ok = secret.expose().strip_prefix("whsec_").is_some_and(|b64| {
            base64::Engine::decode(&base64::engine::general_purpose::STANDARD, b64)
                .is_ok_and(|k| k.len() >= 16)
        });
        if !ok {
            return Err(invalid(
                &key("signing_secret"),
                "must be `whsec_` followed by base64 of at least 16 bytes",
            ));
        }
    }
    between(&key("timeout_seconds"), timeout_seconds, 1, 3600)
}

fn invalid(key: &str, message: impl Into<String>) -> ConfigError {
    ConfigError::Invalid {
        key: key.to_owned(),
        message: message.into(),
    }
}

fn at_least(key: &str, value: u64, min: u64) -> Result<(), ConfigError> {
    if value < min {
        return Err(invalid(key, format!("must be at least {min}, got {value}")));
    }
    Ok(())
}

fn between(key: &str, value: u64, min: u64, max: u64) -> Result<(), ConfigError> {
    if !(min..=max).contains(&value) {
        return Err(invalid(
            key,
            format!("must be between {min} and {max}, got {value}"),
        ));
    }
    Ok(())
}

/// Checks a CORS origin is `http(s)://host[:port]`, as browsers send it in `Origin`.
fn check_origin(origin: &str) -> Result<(), String> {
    let bad = |why: &str| Err(format!("{origin:?} is not an origin: {why}"));
    let Some((scheme, rest)) = origin.split_once("://") else {
        return bad("expected scheme://host[:port], e.g. \"https://ops.example.com\"");
    };
    if scheme != "http" && scheme != "https" {
        return bad("the scheme must be http or https");
    }
    if let Some(at) = rest.find(['/', '?', '#']) {
        return if &rest[at..] == "/" {
            bad("remove the trailing \"/\"")
        } else {
            bad("an origin has no path, query or fragment")
        };
    }
    let (host, port) = if let Some(v6) = rest.strip_prefix('[') {
        let Some((addr, after)) = v6.split_once(']') else {
            return bad("unclosed \"[\" in the host");
        };
        if addr.parse::<std::net::Ipv6Addr>().is_err() {
            return bad("invalid IPv6 address");
        }
        match after {
            "" => (addr, None),
            _ => match after.strip_prefix(':') {
                Some(port) => (addr, Some(port)),
                None => return bad("unexpected text after the host"),
            },
        }
    } else {
        match rest.rsplit_once(':') {
            Some((host, port)) => (host, Some(port)),
            None => (rest, None),
        }
    };
    if host.is_empty() {
        return bad("the host is missing");
    }
    if !rest.starts_with('[')
        && !host
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '.')
    {
        return bad("the host may contain only letters, digits, \"-\" and \".\"");
    }
    if host.chars().any(|c| c.is_ascii_uppercase()) {
        return bad("write the host in lower case, as browsers send it");
    }
    if let Some(port) = port {
        let valid = !port.is_empty()
            && port.chars().all(|c| c.is_ascii_digit())
            && matches!(port.parse::<u16>(), Ok(p) if p > 0);
        if !valid {
            return bad("the port must be a number from 1 to 65535");
        }
    }
    Ok(())
}

fn read_config_file(path: &Path) -> Result<String, ConfigError> {
    std::fs::read_to_string(path).map_err(|source| {
        if source.kind() == std::io::ErrorKind::NotFound {
            ConfigError::FileNotFound {
                path: path.to_owned(),
            }
        } else {
            ConfigError::FileUnreadable {
                path: path.to_owned(),
                source,
            }
        }
    })
}

/// Parses config text into both its raw table (the layer the environment is applied to) and the
/// typed config. Errors carry `origin:line:column` and the key path.
fn parse_config_text(text: &str, origin: &str) -> Result<(toml::Table, Config), ConfigError> {
    let parse_error = |err: toml::de::Error| {
        let mut message = err.message().trim().to_owned();
        let mut location = origin.to_owned();
        if let Some(span) = err.span() {
            let (line, column) = line_column(text, span.start);
            location = format!("{origin}:{line}:{column}");
            if let Some(key) = key_path_at(text, span.start) {
                message = format!("{key}: {message}");
            }
        }
        ConfigError::Parse { location, message }
    };
    let config: Config = toml::from_str(text).map_err(parse_error)?;
    let raw: toml::Table = text.parse().map_err(parse_error)?;
    Ok((raw, config))
}

/// 1-based line and column (in characters) of a byte offset.
fn line_column(text: &str, offset: usize) -> (usize, usize) {
    let mut offset = offset.min(text.len());
    while !text.is_char_boundary(offset) {
        offset -= 1;
    }
    let before = &text[..offset];
    let line = before.matches('\n').count() + 1;
    let line_start = before.rfind('\n').map_or(0, |i| i + 1);
    (line, before[line_start..].chars().count() + 1)
}

/// The dotted path of the key whose name or value covers `offset`, if any.
fn key_path_at(text: &str, offset: usize) -> Option<String> {
    let (doc, _) = toml::de::DeTable::parse_recoverable(text);
    let mut path = Vec::new();
    find_key(doc.get_ref(), offset, &mut path).then(|| path.join("."))
}

fn find_key(table: &toml::de::DeTable<'_>, offset: usize, path: &mut Vec<String>) -> bool {
    for (key, value) in table {
        path.push(key.get_ref().to_string());
        if key.span().contains(&offset) {
            return true;
        }
        let found = match value.get_ref() {
            toml::de::DeValue::Table(inner) => find_key(inner, offset, path),
            toml::de::DeValue::Array(items) => {
                items
                    .iter()
                    .enumerate()
                    .any(|(i, item)| match item.get_ref() {
                        toml::de::DeValue::Table(inner) => {
                            path.push(i.to_string());
                            let found = find_key(inner, offset, path);
                            if !found {
                                path.pop();
                            }
                            found
                        }
                        _ => false,
                    })
                    || value.span().contains(&offset)
            }
            _ => value.span().contains(&offset),
        };
        if found {
            return true;
        }
        path.pop();
    }
    false
}

/// One `KEEL_*` variable resolved to a key path and its text value.
struct EnvOverride {
    /// The variable as set (including any `_FILE` suffix), for error messages.
    var: String,
    /// Key path, e.g. `["server", "listen"]`.
    path: Vec<String>,
    /// The value (the file's content for `_FILE` variables).
    value: String,
    /// Whether the value came from a file (and so may be a secret to keep out of errors).
    from_file: bool,
}

/// Selects the config variables from `env`, sorted by name, reading `_FILE` values.
fn env_overrides(env: &[(String, String)]) -> Result<Vec<EnvOverride>, ConfigError> {
    let mut vars: Vec<&(String, String)> = env
        .iter()
        .filter(|(name, _)| name.starts_with(ENV_PREFIX) && !RESERVED_ENV.contains(&name.as_str()))
        .collect();
    vars.sort_by(|a, b| a.0.cmp(&b.0));

    let env_error = |var: &str, message: String| ConfigError::Env {
        var: var.to_owned(),
        message,
    };
    let mut overrides = Vec::with_capacity(vars.len());
    for (name, value) in vars {
        let rest = &name[ENV_PREFIX.len()..];
        let (key, from_file) = match rest.strip_suffix(FILE_SUFFIX) {
            Some(key) => (key, true),
            None => (rest, false),
        };
        if from_file {
            let plain = format!("{ENV_PREFIX}{key}");
            if env.iter().any(|(other, _)| *other == plain) {
                return Err(env_error(
                    name,
                    format!("{plain} is set too; set only one of them"),
                ));
            }
        }
        let key = key.to_ascii_lowercase();
        let path: Vec<String> = key.split("__").map(str::to_owned).collect();
        if path.iter().any(String::is_empty) {
            return Err(env_error(
                name,
                "not a config key: expected KEEL_<KEY> or KEEL_<SECTION>__<KEY>".to_owned(),
            ));
        }
        let value = if from_file {
            let text = std::fs::read_to_string(value)
                .map_err(|e| env_error(name, format!("cannot read {value}: {e}")))?;
            let trimmed = text.strip_suffix('\n').unwrap_or(&text);
            trimmed.strip_suffix('\r').unwrap_or(trimmed).to_owned()
        } else {
            value.clone()
        };
        overrides.push(EnvOverride {
            var: name.clone(),
            path,
            value,
            from_file,
        });
    }
    Ok(overrides)
}

/// Sets one variable's value in `raw` and re-reads the config from it. The value's TOML type is
/// chosen by the type the key has now; several readings are tried and the first that fits wins.
fn apply_env(
    raw: &mut toml::Table,
    current: &Config,
    var: &EnvOverride,
) -> Result<Config, ConfigError> {
    let env_error = |message: String| {
        let message = if var.from_file {
            hide_value(&message, &var.value)
        } else {
            message
        };
        ConfigError::Env {
            var: var.var.clone(),
            message: format!("{}: {message}", var.path.join(".")),
        }
    };

    let typed = toml::Table::try_from(current).ok();
    let hint = typed.as_ref().and_then(|t| lookup(t, &var.path));
    let mut first_error = None;
    for candidate in env_value_candidates(&var.value, hint) {
        let mut next = raw.clone();
        set_path(&mut next, &var.path, candidate).map_err(env_error)?;
        match toml::Value::Table(next.clone()).try_into::<Config>() {
            Ok(config) => {
                *raw = next;
                return Ok(config);
            }
            Err(e) => {
                first_error.get_or_insert_with(|| e.message().trim().to_owned());
            }
        }
    }
    let mut message = first_error.unwrap_or_else(|| "cannot be applied".to_owned());
    if let Some(toml::Value::Table(_)) = hint {
        message.push_str(&format!(
            " (`{}` is a section: set its keys with {}__<KEY>)",
            var.path.join("."),
            var.var
        ));
    }
    Err(env_error(message))
}

/// Removes a value read from a file (possibly a secret) from an error message, in the forms serde
/// quotes values in, and anywhere when it is long enough not to be mistaken for other text.
fn hide_value(message: &str, value: &str) -> String {
    const HIDDEN: &str = "<file content>";
    let trimmed = value.trim();
    if trimmed.is_empty() {
        return message.to_owned();
    }
    let mut message = message
        .replace(&format!("{value:?}"), HIDDEN)
        .replace(&format!("`{trimmed}`"), HIDDEN);
    if trimmed.len() >= 6 {
        message = message.replace(trimmed, HIDDEN);
    }
    message
}

fn lookup<'a>(table: &'a toml::Table, path: &[String]) -> Option<&'a toml::Value> {
    let (last, parents) = path.split_last()?;
    let mut table = table;
    for key in parents {
        table = table.get(key)?.as_table()?;
    }
    table.get(last)
}

fn set_path(table: &mut toml::Table, path: &[String], value: toml::Value) -> Result<(), String> {
    let Some((last, parents)) = path.split_last() else {
        return Err("empty key".to_owned());
    };
    let mut table = table;
    for (i, key) in parents.iter().enumerate() {
        let entry = table
            .entry(key.clone())
            .or_insert_with(|| toml::Value::Table(toml::Table::new()));
        table = match entry {
            toml::Value::Table(inner) => inner,
            _ => return Err(format!("`{}` is not a section", path[..=i].join("."))),
        };
    }
    table.insert(last.clone(), value);
    Ok(())
}

/// Readings of an environment value, best first, given the key's current value (`hint`).
fn env_value_candidates(value: &str, hint: Option<&toml::Value>) -> Vec<toml::Value> {
    use toml::Value;
    let string = || Value::String(value.to_owned());
    let parsed = || value.trim().parse::<Value>().ok();
    let comma_list = |typed: bool| {
        let items = value
            .split(',')
            .map(str::trim)
            .filter(|item| !item.is_empty())
            .map(|item| match item.parse::<Value>() {
                Ok(v) if typed && !v.is_table() && !v.is_array() => v,
                _ => Value::String(item.to_owned()),
            })
            .collect();
        Value::Array(items)
    };
    match hint {
        Some(Value::String(_)) => vec![string()],
        Some(Value::Array(items)) => {
            let mut out = Vec::new();
            if value.trim_start().starts_with('[')
                && let Some(v @ Value::Array(_)) = parsed()
            {
                out.push(v);
            }
            match items.first() {
                Some(Value::String(_)) => out.push(comma_list(false)),
                Some(_) => out.push(comma_list(true)),
                None => {
                    out.push(comma_list(false));
                    out.push(comma_list(true));
                }
            }
            out
        }
        Some(Value::Table(_)) => parsed().into_iter().chain([string()]).collect(),
        Some(_) => parsed().into_iter().chain([string()]).collect(),
        None => [string()]
            .into_iter()
            .chain(parsed())
            .chain([comma_list(false), comma_list(true)])
            .collect(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::BTreeSet;
    use std::io::Write;

    fn env(vars: &[(&str, &str)]) -> Vec<(String, String)> {
        vars.iter()
            .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
            .collect()
    }

    fn with_env(vars: &[(&str, &str)]) -> LoadOptions {
        LoadOptions {
            env: env(vars),
            ..LoadOptions::default()
        }
    }

    fn config_file(text: &str) -> tempfile::NamedTempFile {
        let mut file = tempfile::Builder::new()
            .suffix(".toml")
            .tempfile()
            .expect("temp file");
        file.write_all(text.as_bytes()).expect("write temp file");
        file
    }

    fn with_file(file: &tempfile::NamedTempFile) -> LoadOptions {
        LoadOptions {
            file: Some(file.path().to_owned()),
            ..LoadOptions::default()
        }
    }

    fn load_err(options: &LoadOptions) -> String {
        Config::load(options)
            .expect_err("load should fail")
            .to_string()
    }

    /// Dotted paths of every leaf value in a table.
    fn leaf_keys(table: &toml::Table, prefix: &str, out: &mut BTreeSet<String>) {
        for (key, value) in table {
            let path = if prefix.is_empty() {
                key.clone()
            } else {
                format!("{prefix}.{key}")
            };
            match value {
                toml::Value::Table(inner) => leaf_keys(inner, &path, out),
                _ => {
                    out.insert(path);
                }
            }
        }
    }

    /// Optional keys shown commented out in the default file.
    const COMMENTED_KEYS: &[&str] = &["auth.key_hash_secret"];

    #[test]
    fn embedded_file_equals_defaults() {
        let config: Config = toml::from_str(DEFAULT_CONFIG_TOML).expect("embedded file parses");
        assert_eq!(config, Config::default());
        assert_eq!(
            Config::load(&LoadOptions::default()).expect("defaults load"),
            Config::default()
        );
        Config::default().validate().expect("defaults are valid");
    }

    #[test]
    fn embedded_file_lists_every_key() {
        let file: toml::Table = DEFAULT_CONFIG_TOML.parse().expect("embedded file parses");
        let mut file_keys = BTreeSet::new();
        leaf_keys(&file, "", &mut file_keys);

        // Every optional key is set here, so the serialized config has every key there is.
        let mut full = Config::default();
        full.auth.key_hash_secret = Some(Secret::new("x"));
        let table = toml::Table::try_from(&full).expect("config serializes");
        let mut code_keys = BTreeSet::new();
        leaf_keys(&table, "", &mut code_keys);

        let mut expected = file_keys.clone();
        for key in COMMENTED_KEYS {
            assert!(!file_keys.contains(*key), "{key} should be commented out");
            expected.insert((*key).to_owned());
        }
        assert_eq!(expected, code_keys, "packaging/keel.toml and Config differ");

        // The commented keys really are in the file, as `# key = ...`.
        for key in COMMENTED_KEYS {
            let name = key.rsplit('.').next().expect("key name");
            assert!(
                DEFAULT_CONFIG_TOML
                    .lines()
                    .any(|l| l.starts_with(&format!("# {name} = "))),
                "{key} is missing from the file"
            );
        }
    }

    #[test]
    fn embedded_file_comments_every_key_and_section() {
        let lines: Vec<&str> = DEFAULT_CONFIG_TOML.lines().collect();
        for (i, line) in lines.iter().enumerate() {
            let line = line.trim();
            if line.is_empty() || line.starts_with('#') {
                continue;
            }
            assert!(
                i > 0 && lines[i - 1].trim_start().starts_with('#'),
                "line {} has no comment above it: {line}",
                i + 1
            );
        }
    }

    #[test]
    fn file_values_override_defaults() {
        let file = config_file("data_dir = \"/var/lib/keel\"\n[store]\nmax_batch = 7\n");
        let config = Config::load(&with_file(&file)).expect("loads");
        assert_eq!(config.data_dir, PathBuf::from("/var/lib/keel"));
        assert_eq!(config.store.max_batch, 7);
        assert_eq!(config.server, ServerConfig::default());
        assert_eq!(
            config.database_path(),
            PathBuf::from("/var/lib/keel/keel.redb")
        );
    }

    #[test]
    fn unknown_key_in_file_names_key_and_line() {
        let file = config_file("# comment\n[server]\nlisen = \"0.0.0.0:1\"\n");
        let err = load_err(&with_file(&file));
        let path = file.path().display().to_string();
        assert!(err.starts_with(&format!("{path}:3:1: ")), "{err}");
        assert!(err.contains("server.lisen"), "{err}");
        assert!(err.contains("unknown field `lisen`"), "{err}");
        assert!(err.contains("`listen`"), "suggests the known keys: {err}");
        assert!(!err.contains('\n'), "one line: {err}");
    }

    #[test]
    fn unknown_section_in_file_is_an_error() {
        let file = config_file("data_dir = \"x\"\n\n[servr]\nlisten = \"0.0.0.0:1\"\n");
        let err = load_err(&with_file(&file));
        assert!(err.contains(":3:"), "{err}");
        assert!(err.contains("unknown field `servr`"), "{err}");
    }

    #[test]
    fn bad_type_in_file_names_key_and_line() {
        let file = config_file("[server]\nlisten = \"127.0.0.1:1\"\nmax_body_bytes = \"big\"\n");
        let err = load_err(&with_file(&file));
        assert!(err.contains(":3:18: "), "{err}");
        assert!(err.contains("server.max_body_bytes"), "{err}");
        assert!(err.contains("invalid type"), "{err}");

        let file = config_file("[log]\nformat = \"xml\"\n");
        let err = load_err(&with_file(&file));
        assert!(err.contains(":2:10: log.format: "), "{err}");
        assert!(err.contains("`text`") && err.contains("`json`"), "{err}");

        let file = config_file("[server]\nlisten = \"localhost\"\n");
        let err = load_err(&with_file(&file));
        assert!(err.contains(":2:10: server.listen: "), "{err}");
    }

    #[test]
    fn toml_syntax_error_has_location() {
        let file = config_file("[server]\nlisten = \n");
        let err = load_err(&with_file(&file));
        assert!(err.contains(":2:"), "{err}");
    }

    #[test]
    fn missing_named_file_is_an_error_naming_it() {
        let dir = tempfile::tempdir().expect("temp dir");
        let path = dir.path().join("nope.toml");
        let options = LoadOptions {
            file: Some(path.clone()),
            ..LoadOptions::default()
        };
        let err = Config::load(&options).expect_err("missing file");
        assert!(matches!(err, ConfigError::FileNotFound { .. }), "{err:?}");
        assert!(err.to_string().contains(&path.display().to_string()));

        // The same through KEEL_CONFIG.
        let path_text = path.display().to_string();
        let err = load_err(&with_env(&[("KEEL_CONFIG", &path_text)]));
        assert!(err.contains(&path_text), "{err}");
    }

    #[test]
    fn keel_config_names_the_file_unless_a_file_is_given() {
        let from_env = config_file("[store]\nmax_batch = 5\n");
        let from_flag = config_file("[store]\nmax_batch = 6\n");
        let env_path = from_env.path().display().to_string();

        let config = Config::load(&with_env(&[("KEEL_CONFIG", &env_path)])).expect("loads");
        assert_eq!(config.store.max_batch, 5);

        let options = LoadOptions {
            file: Some(from_flag.path().to_owned()),
            ..with_env(&[("KEEL_CONFIG", &env_path)])
        };
        assert_eq!(Config::load(&options).expect("loads").store.max_batch, 6);
    }

    #[test]
    fn env_overrides_nested_int_string_and_list() {
        let file = config_file("[store]\nmax_batch = 7\n[log]\nlevel = \"warn\"\n");
        let options = LoadOptions {
            env: env(&[
                ("KEEL_STORE__MAX_BATCH", "512"),
                ("KEEL_LOG__LEVEL", "debug"),
                ("KEEL_LOG__FORMAT", "json"),
                ("KEEL_DATA_DIR", "/srv/keel"),
                ("KEEL_SERVER__LISTEN", "0.0.0.0:9000"),
                (
                    "KEEL_SERVER__CORS_ALLOWED_ORIGINS",
                    "https://a.example.com, http://b.example.com:8080",
                ),
            ]),
            ..with_file(&file)
        };
        let config = Config::load(&options).expect("loads");
        assert_eq!(config.store.max_batch, 512);
        assert_eq!(config.log.level, "debug");
        assert_eq!(config.log.format, LogFormat::Json);
        assert_eq!(config.data_dir, PathBuf::from("/srv/keel"));
        assert_eq!(config.server.listen, "0.0.0.0:9000".parse().expect("addr"));
        assert_eq!(
            config.server.cors_allowed_origins,
            ["https://a.example.com", "http://b.example.com:8080"]
        );
    }

    #[test]
    fn env_list_accepts_toml_array_and_empty() {
        let config = Config::load(&with_env(&[(
            "KEEL_SERVER__CORS_ALLOWED_ORIGINS",
            r#"["https://a.example.com", "https://b.example.com"]"#,
        )]))
        .expect("loads");
        assert_eq!(
            config.server.cors_allowed_origins,
            ["https://a.example.com", "https://b.example.com"]
        );

        let file = config_file("[server]\ncors_allowed_origins = [\"https://a.example.com\"]\n");
        let options = LoadOptions {
            env: env(&[("KEEL_SERVER__CORS_ALLOWED_ORIGINS", "")]),
            ..with_file(&file)
        };
        let config = Config::load(&options).expect("loads");
        assert!(config.server.cors_allowed_origins.is_empty());
    }

    #[test]
    fn env_bad_value_names_the_variable() {
        let err = load_err(&with_env(&[("KEEL_STORE__MAX_BATCH", "lots")]));
        assert!(
            err.starts_with("environment variable KEEL_STORE__MAX_BATCH: store.max_batch: "),
            "{err}"
        );
        assert!(err.contains("invalid type"), "{err}");

        let err = load_err(&with_env(&[("KEEL_SERVER__LISTEN", "nowhere")]));
        assert!(err.contains("KEEL_SERVER__LISTEN"), "{err}");
    }

    #[test]
    fn env_unknown_key_names_the_variable() {
        let err = load_err(&with_env(&[("KEEL_SERVER__LISTN", "0.0.0.0:1")]));
        assert!(
            err.starts_with("environment variable KEEL_SERVER__LISTN: "),
            "{err}"
        );
        assert!(err.contains("unknown field `listn`"), "{err}");

        let err = load_err(&with_env(&[("KEEL_QUEUEZ__MAX", "1")]));
        assert!(err.contains("KEEL_QUEUEZ__MAX"), "{err}");
        assert!(err.contains("unknown field `queuez`"), "{err}");

        let err = load_err(&with_env(&[("KEEL_DATA_DIR__X", "1")]));
        assert!(err.contains("KEEL_DATA_DIR__X"), "{err}");
        assert!(err.contains("not a section"), "{err}");

        let err = load_err(&with_env(&[("KEEL_SERVER____LISTEN", "1")]));
        assert!(err.contains("KEEL_SERVER____LISTEN"), "{err}");
    }

    #[test]
    fn env_errors_blame_the_right_variable() {
        let err = load_err(&with_env(&[
            ("KEEL_STORE__MAX_BATCH", "12"),
            ("KEEL_SERVER__BOGUS", "1"),
            ("KEEL_LOG__LEVEL", "debug"),
        ]));
        assert!(err.contains("KEEL_SERVER__BOGUS"), "{err}");
        assert!(!err.contains("KEEL_STORE"), "{err}");
    }

    #[test]
    fn reserved_and_foreign_vars_are_ignored() {
        let config = Config::load(&with_env(&[
            ("KEEL_API_KEY", "kk_secret"),
            ("KEEL_URL", "http://127.0.0.1:8080"),
            ("KEEL_CONFIG", ""),
            ("PATH", "/usr/bin"),
            ("KEELX", "1"),
        ]))
        .expect("loads");
        assert_eq!(config, Config::default());
    }

    #[test]
    fn file_suffix_reads_secret_from_file() {
        let dir = tempfile::tempdir().expect("temp dir");
        let secret_path = dir.path().join("key-hash");
        std::fs::write(&secret_path, "s3cret-value\n").expect("write secret");
        let path_text = secret_path.display().to_string();
        let config = Config::load(&with_env(&[(
            "KEEL_AUTH__KEY_HASH_SECRET_FILE",
            &path_text,
        )]))
        .expect("loads");
        let secret = config.auth.key_hash_secret.as_ref().expect("secret set");
        assert_eq!(secret.expose(), "s3cret-value");

        // A secret set in the environment directly, and one in the file.
        let config =
            Config::load(&with_env(&[("KEEL_AUTH__KEY_HASH_SECRET", "direct")])).expect("loads");
        assert_eq!(
            config.auth.key_hash_secret.map(|s| s.expose().to_owned()),
            Some("direct".to_owned())
        );
        let file = config_file("[auth]\nkey_hash_secret = \"in-file\"\n");
        let config = Config::load(&with_file(&file)).expect("loads");
        assert_eq!(
            config.auth.key_hash_secret.map(|s| s.expose().to_owned()),
            Some("in-file".to_owned())
        );
    }

    #[test]
    fn file_suffix_errors_name_variable_and_path_never_content() {
        let dir = tempfile::tempdir().expect("temp dir");
        let missing = dir.path().join("missing").display().to_string();
        let err = load_err(&with_env(&[("KEEL_AUTH__KEY_HASH_SECRET_FILE", &missing)]));
        assert!(err.contains("KEEL_AUTH__KEY_HASH_SECRET_FILE"), "{err}");
        assert!(err.contains(&missing), "{err}");

        let secret_path = dir.path().join("secret");
        std::fs::write(&secret_path, "hunter2\n").expect("write secret");
        let path_text = secret_path.display().to_string();
        let err = load_err(&with_env(&[("KEEL_STORE__MAX_BATCH_FILE", &path_text)]));
        assert!(err.contains("KEEL_STORE__MAX_BATCH_FILE"), "{err}");
        assert!(!err.contains("hunter2"), "{err}");

        let err = load_err(&with_env(&[
            ("KEEL_AUTH__KEY_HASH_SECRET_FILE", &path_text),
            ("KEEL_AUTH__KEY_HASH_SECRET", "other"),
        ]));
        assert!(err.contains("set only one"), "{err}");
    }

    #[test]
    fn file_suffix_values_are_hidden_in_errors() {
        for content in ["hunter2\n", "7x\n", "-12\n", "a\"b\n"] {
            let dir = tempfile::tempdir().expect("temp dir");
            let path = dir.path().join("value");
            std::fs::write(&path, content).expect("write value");
            let path_text = path.display().to_string();
            let err = load_err(&with_env(&[("KEEL_STORE__MAX_BATCH_FILE", &path_text)]));
            assert!(err.contains("<file content>"), "{err}");
            assert!(!err.contains(content.trim()), "{content:?}: {err}");
        }
    }

    #[test]
    fn from_process_env_keeps_only_keel_vars() {
        let options = LoadOptions::from_process_env(Some(PathBuf::from("/etc/keel/keel.toml")));
        assert_eq!(options.file, Some(PathBuf::from("/etc/keel/keel.toml")));
        assert!(
            options
                .env
                .iter()
                .all(|(name, _)| name.starts_with("KEEL_"))
        );
        assert_eq!((options.listen, options.data_dir), (None, None));
    }

    #[test]
    fn secret_with_wrong_type_is_not_echoed() {
        let file = config_file("[auth]\nkey_hash_secret = 918273645\n");
        let err = load_err(&with_file(&file));
        assert!(err.contains("auth.key_hash_secret"), "{err}");
        assert!(!err.contains("918273645"), "{err}");
    }

    #[test]
    fn flags_win_over_env_and_file() {
        let file = config_file("data_dir = \"/from/file\"\n[server]\nlisten = \"127.0.0.1:1\"\n");
        let options = LoadOptions {
            env: env(&[
                ("KEEL_SERVER__LISTEN", "127.0.0.1:2"),
                ("KEEL_DATA_DIR", "/from/env"),
            ]),
            listen: Some("127.0.0.1:3".parse().expect("addr")),
            data_dir: Some(PathBuf::from("/from/flag")),
            ..with_file(&file)
        };
        let config = Config::load(&options).expect("loads");
        assert_eq!(config.server.listen.port(), 3);
        assert_eq!(config.data_dir, PathBuf::from("/from/flag"));

        let options = LoadOptions {
            listen: None,
            data_dir: None,
            ..options
        };
        let config = Config::load(&options).expect("loads");
        assert_eq!(config.server.listen.port(), 2);
        assert_eq!(config.data_dir, PathBuf::from("/from/env"));
    }

    #[test]
    fn validation_errors_name_the_key() {
        let cases: &[(&str, &str, &str)] = &[
            (
                "KEEL_STORE__MAX_BATCH",
                "0",
                "store.max_batch: must be between 1 and 65536, got 0",
            ),
            (
                "KEEL_STORE__MAX_BATCH",
                "65537",
                "store.max_batch: must be between 1 and 65536, got 65537",
            ),
            (
                "KEEL_AUDIT__CHECKPOINT_INTERVAL_SECONDS",
                "59",
                "audit.checkpoint_interval_seconds: must be at least 60, got 59",
            ),
            (
                "KEEL_AUDIT__CHECKPOINT_EVERY",
                "0",
                "audit.checkpoint_every:",
            ),
            (
                "KEEL_AUTH__LAST_USED_FLUSH_SECONDS",
                "0",
                "auth.last_used_flush_seconds:",
            ),
            (
                "KEEL_METRICS__SNAPSHOT_INTERVAL_SECONDS",
                "0",
                "metrics.snapshot_interval_seconds:",
            ),
            (
                "KEEL_METRICS__RETENTION_DAYS",
                "3651",
                "metrics.retention_days:",
            ),
            (
                "KEEL_SHUTDOWN__DRAIN_SECONDS",
                "0",
                "shutdown.drain_seconds:",
            ),
            (
                "KEEL_SHUTDOWN__DRAIN_SECONDS",
                "3601",
                "shutdown.drain_seconds:",
            ),
            ("KEEL_LOG__LEVEL", "info,[", "log.level: invalid log filter"),
            ("KEEL_LOG__LEVEL", " ", "log.level: must not be empty"),
            (
                "KEEL_AUTH__KEY_HASH_SECRET",
                "",
                "auth.key_hash_secret: must not be empty",
            ),
            (
                "KEEL_AUTH__KEY_HASH_SECRET",
                "***",
                "auth.key_hash_secret: is the redaction",
            ),
            (
                "KEEL_SERVER__REQUEST_TIMEOUT_SECONDS",
                "0",
                "server.request_timeout_seconds:",
            ),
            ("KEEL_DATA_DIR", "", "data_dir: must not be empty"),
        ];
        for (var, value, expected) in cases {
            let err = load_err(&with_env(&[(var, value)]));
            assert!(err.starts_with(expected), "{var}={value}: {err}");
        }
    }

    #[test]
    fn cors_origins_are_checked() {
        for good in [
            "https://ops.example.com",
            "http://localhost:3000",
            "http://127.0.0.1:8080",
            "https://[::1]:8443",
            "https://[2001:db8::1]",
        ] {
            assert_eq!(check_origin(good), Ok(()), "{good}");
        }
        for bad in [
            "ops.example.com",
            "ftp://ops.example.com",
            "https://ops.example.com/",
            "https://ops.example.com/path",
            "https://ops.example.com?x=1",
            "https://",
            "https://:8080",
            "https://ops.example.com:",
            "https://ops.example.com:0",
            "https://ops.example.com:99999",
            "https://user@ops.example.com",
            "https://Ops.Example.com",
            "https://[::1",
            "*",
        ] {
            assert!(check_origin(bad).is_err(), "{bad} should be rejected");
        }
        let err = load_err(&with_env(&[(
            "KEEL_SERVER__CORS_ALLOWED_ORIGINS",
            "https://a.example.com,https://b.example.com/",
        )]));
        assert!(err.starts_with("server.cors_allowed_origins[1]: "), "{err}");
    }

    #[test]
    fn redacted_toml_hides_secrets_and_reloads() {
        let config = Config::load(&with_env(&[
            ("KEEL_AUTH__KEY_HASH_SECRET", "very-secret-value"),
            ("KEEL_STORE__MAX_BATCH", "99"),
        ]))
        .expect("loads");
        let text = config.to_redacted_toml();
        assert!(text.contains("key_hash_secret = \"***\""), "{text}");
        assert!(!text.contains("very-secret-value"), "{text}");
        assert!(!format!("{config:?}").contains("very-secret-value"));

        // The printed config is itself a valid config file (apart from the placeholder secret).
        let reread: Config = toml::from_str(&text).expect("redacted output parses");
        assert_eq!(reread.store.max_batch, 99);
        assert_eq!(reread.auth.key_hash_secret, Some(Secret::new("***")));
    }

    #[test]
    fn secret_never_prints_its_value() {
        let secret = Secret::new("hunter2");
        assert_eq!(format!("{secret:?}"), "***");
        assert_eq!(format!("{secret}"), "***");
        assert_eq!(secret.expose(), "hunter2");
        assert_eq!(
            serde_json::to_string(&secret).expect("serializes"),
            "\"***\""
        );
        let options = with_env(&[("KEEL_AUTH__KEY_HASH_SECRET", "hunter2")]);
        assert!(!format!("{options:?}").contains("hunter2"));
    }

    #[test]
    fn durations_follow_the_seconds_fields() {
        let config = Config::default();
        assert_eq!(config.server.request_timeout(), Duration::from_secs(30));
        assert_eq!(config.server.hsts_max_age(), None);
        assert_eq!(
            config.audit.checkpoint_interval(),
            Duration::from_secs(3600)
        );
        assert_eq!(config.auth.rotation_overlap(), Duration::from_secs(86_400));
        assert_eq!(config.auth.last_used_flush(), Duration::from_secs(60));
        assert_eq!(config.metrics.snapshot_interval(), Duration::from_secs(60));
        assert_eq!(config.metrics.retention(), Duration::from_secs(14 * 86_400));
        assert_eq!(config.shutdown.drain(), Duration::from_secs(30));
        assert_eq!(
            config.key_hash_secret_path(),
            PathBuf::from("./keel-data/key-hash.secret")
        );
    }

    const LLM_CONFIG: &str = r#"
[llm.providers.openai]
base_url = "https://api.example.com/v1"
model = "gpt-test"
input_usd_per_1k_tokens = 0.00015
output_usd_per_1k_tokens = 0.0006
max_tokens = 500
daily_budget_usd = 2.5

[handlers.ask]
kind = "llm"
provider = "openai"
max_tokens = 100

[handlers.report]
kind = "command"
program = "/bin/echo"

[handlers.digest]
kind = "workflow"
timeout_seconds = 90
[[handlers.digest.steps]]
name = "report"
handler = "report"
[[handlers.digest.steps]]
name = "summary"
handler = "ask"
payload = { prompt = "Summarize {{steps.report.result}} for {{payload.team}}" }
"#;

    #[test]
    fn llm_providers_and_workflows_parse() {
        let dir = tempfile::tempdir().expect("temp dir");
        let key_path = dir.path().join("openai-key");
        std::fs::write(&key_path, "sk-from-file\n").expect("write key");
        let file = config_file(LLM_CONFIG);
        let options = LoadOptions {
            env: env(&[(
                "KEEL_LLM__PROVIDERS__OPENAI__API_KEY_FILE",
                &key_path.display().to_string(),
            )]),
            ..with_file(&file)
        };
        let config = Config::load(&options).expect("loads");
        let provider = &config.llm.providers["openai"];
        assert_eq!(
            provider.api_key.as_ref().map(Secret::expose),
            Some("sk-from-file")
        );
        // 0.00015 USD per 1K tokens = 150 nano-USD per token.
        assert_eq!(provider.input_nanos_per_token(), 150);
        assert_eq!(provider.output_nanos_per_token(), 600);
        assert_eq!(provider.daily_budget_micros(), 2_500_000);
        let HandlerConfig::Workflow(w) = &config.handlers["digest"] else {
            panic!("digest is a workflow: {:?}", config.handlers["digest"]);
        };
        assert_eq!(w.timeout_seconds, 90);
        assert_eq!(w.steps.len(), 2);
        assert_eq!(w.steps[0].payload, None);
        assert_eq!(
            w.steps[1].payload,
            Some(
                serde_json::json!({"prompt": "Summarize {{steps.report.result}} for {{payload.team}}"})
            )
        );
        assert!(
            matches!(&config.handlers["ask"], HandlerConfig::Llm(l) if l.max_tokens == Some(100))
        );

        // The printed config hides the key and reads back as the same config.
        let text = config.to_redacted_toml();
        assert!(!text.contains("sk-from-file"), "{text}");
        let reread: Config = toml::from_str(&text).expect("redacted output parses");
        assert_eq!(reread.handlers, config.handlers);
        assert_eq!(
            reread.llm.providers["openai"].api_key,
            Some(Secret::new("***"))
        );
    }

    #[test]
    fn llm_and_workflow_mistakes_name_the_key() {
        let cases: &[(&str, &str, &str)] = &[
            (
                "provider = \"openai\"",
                "provider = \"other\"",
                "handlers.ask.provider: no [llm.providers.other] is configured (configured: openai)",
            ),
            (
                "max_tokens = 100",
                "max_tokens = 501",
                "handlers.ask.max_tokens: must be between 1 and 500, got 501 (the cap is llm.providers.openai.max_tokens)",
            ),
            (
                "daily_budget_usd = 2.5",
                "daily_budget_usd = -1.0",
                "llm.providers.openai.daily_budget_usd:",
            ),
            (
                "output_usd_per_1k_tokens = 0.0006",
                "output_usd_per_1k_tokens = nan",
                "llm.providers.openai.output_usd_per_1k_tokens:",
            ),
            (
                "base_url = \"https://api.example.com/v1\"",
                "base_url = \"ftp://x.example.com\"",
                "llm.providers.openai.base_url:",
            ),
            (
                "[llm.providers.openai]",
                "[llm.providers.OpenAI]",
                "llm.providers.OpenAI: a provider name",
            ),
            (
                "handler = \"ask\"",
                "handler = \"nope\"",
                "handlers.digest.steps[1].handler: no [handlers.nope] is configured",
            ),
            (
                "handler = \"ask\"",
                "handler = \"digest\"",
                "handlers.digest.steps[1].handler: `digest` is a workflow",
            ),
            (
                "name = \"summary\"",
                "name = \"report\"",
                "handlers.digest.steps[1].name: the step name \"report\" is used twice",
            ),
            (
                "{{steps.report.result}}",
                "{{steps.summary.result}}",
                "handlers.digest.steps[1].payload: {{steps.summary.result}} names no earlier step (earlier: report)",
            ),
            (
                "{{payload.team}}",
                "{{env.HOME}}",
                "handlers.digest.steps[1].payload: unknown placeholder {{env.HOME}}",
            ),
            (
                "timeout_seconds = 90",
                "timeout_seconds = 0",
                "handlers.digest.timeout_seconds:",
            ),
        ];
        for (from, to, expected) in cases {
            assert!(LLM_CONFIG.contains(from), "{from}");
            let file = config_file(&LLM_CONFIG.replacen(from, to, 1));
            let err = load_err(&with_file(&file));
            assert!(err.starts_with(expected), "{from} -> {to}: {err}");
        }
        let no_steps = LLM_CONFIG
            .split("[[handlers.digest.steps]]")
            .next()
            .expect("head")
            .to_string()
            + "steps = []\n";
        let err = load_err(&with_file(&config_file(&no_steps)));
        assert!(
            err.starts_with("handlers.digest.steps: a workflow has 1 to 64 steps"),
            "{err}"
        );
    }
}
