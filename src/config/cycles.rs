//! `[cycles]`, `[dispatch]`, `[governance]`, `[autonomy]` and `[telemetry]`: scheduled cycles,
//! where they deliver, what stops them, and their telemetry.

use std::collections::BTreeMap;
use std::path::PathBuf;

use serde::{Deserialize, Serialize};

use super::error::{ConfigError, between, check_http_target, invalid, names_or_none};
use super::exec::{CircuitScope, default_http_timeout, default_method};
use super::names;
use super::{Config, Secret};
use crate::schedule::{CronLine, CronSchedule, Timezone};

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
    /// Further namespaces raw cycles may be triggered in, besides `default_namespace` and the
    /// namespaces of the run profiles; a trigger in any other namespace is refused.
    pub namespaces: Vec<String>,
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
            namespaces: Vec::new(),
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
    /// Whose circuit breaker guards this endpoint: its own, or its URL host's.
    #[serde(default)]
    pub circuit: CircuitScope,
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

impl Config {
    pub(super) fn validate_cycles(&self) -> Result<(), ConfigError> {
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
        for (i, ns) in c.namespaces.iter().enumerate() {
            let key = format!("cycles.namespaces[{i}]");
            if !names::valid_name(ns) {
                return Err(invalid(
                    &key,
                    "a namespace is 1 to 64 letters, digits, '-', '_' or '.'",
                ));
            }
            if c.namespaces[..i].contains(ns) {
                return Err(invalid(&key, format!("`{ns}` is listed twice")));
            }
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
}
