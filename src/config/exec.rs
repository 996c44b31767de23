//! `[handlers.<type>]`, `[exec]` and `[circuit]`: how each task type is executed (http, command,
//! llm, workflow), what its executors keep of a run, and the circuit breakers in front of task
//! targets.

use std::path::PathBuf;

use serde::{Deserialize, Serialize};

use super::error::{ConfigError, at_least, between, check_http_target, invalid, names_or_none};
use super::{Config, Secret};
use crate::template::{Placeholder, template_placeholders};

/// `[exec]`: limits on what the executors keep of a task's runs.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ExecConfig {
    /// Most log lines (command stderr) stored per task over all its attempts; later lines are
    /// counted and dropped.
    pub log_max_lines_per_task: u32,
    /// Longest stored log line, in bytes; the rest of a longer line is counted and dropped.
    pub log_line_max_bytes: usize,
}

impl Default for ExecConfig {
    fn default() -> Self {
        Self {
            log_max_lines_per_task: 1000,
            log_line_max_bytes: 4096,
        }
    }
}

impl ExecConfig {
    pub(super) fn validate(&self) -> Result<(), ConfigError> {
        between(
            "exec.log_max_lines_per_task",
            u64::from(self.log_max_lines_per_task),
            1,
            1_000_000,
        )?;
        between(
            "exec.log_line_max_bytes",
            self.log_line_max_bytes as u64,
            64,
            1 << 20,
        )
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

impl CircuitConfig {
    pub(super) fn validate(&self) -> Result<(), ConfigError> {
        let c = self;
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
}

/// Which circuit breaker guards an http handler or dispatch endpoint.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum CircuitScope {
    /// One breaker of its own (`handler:<type>`, `dispatch:<endpoint>`): a failing endpoint
    /// holds back only its own tasks.
    #[default]
    PerHandler,
    /// One breaker per URL host (`http:<host>`), shared by every handler and endpoint on it.
    PerHost,
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
    /// Whose circuit breaker guards this handler: its own, or its URL host's.
    #[serde(default)]
    pub circuit: CircuitScope,
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

fn default_llm_timeout() -> u64 {
    120
}

fn default_workflow_timeout() -> u64 {
    600
}

pub(super) fn default_method() -> String {
    "POST".to_string()
}

pub(super) fn default_http_timeout() -> u64 {
    30
}

fn default_target_concurrency() -> usize {
    8
}

fn default_command_timeout() -> u64 {
    60
}

impl Config {
    pub(super) fn validate_handlers(&self) -> Result<(), ConfigError> {
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
}
