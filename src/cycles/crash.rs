//! Crash points for crash tests, built only with the `test-hooks` feature: `KEEL_CRASH_AT` names
//! a stage, and the process SIGKILLs itself right after that stage's checkpoint is durable
//! (`<stage>`) or right before its transaction commits (`before:<stage>`).

use super::Cycles;
use super::model::Stage;

/// The environment variable naming a crash point (read by `keel serve` only).
pub const CRASH_ENV: &str = "KEEL_CRASH_AT";

/// Reads `KEEL_CRASH_AT`: a known stage name, optionally prefixed `before:`. Anything else is
/// ignored with a warning.
pub fn crash_point_from_env() -> Option<String> {
    let value = std::env::var(CRASH_ENV).ok()?;
    let value = value.trim().to_string();
    if value.is_empty() {
        return None;
    }
    let stage = value.strip_prefix("before:").unwrap_or(&value);
    if Stage::parse(stage).is_some() {
        tracing::warn!(
            crash_at = %value,
            "{CRASH_ENV} is set: this process will kill itself at that point (crash tests only)"
        );
        Some(value)
    } else {
        tracing::warn!(value = %value, "{CRASH_ENV} names no stage; ignored");
        None
    }
}

impl Cycles {
    /// Arms the crash point (from [`crash_point_from_env`]); call before the workers start.
    pub fn set_crash_point(&self, point: Option<String>) {
        if let Some(point) = point {
            let _ = self.crash_at.set(point);
        }
    }

    /// Kills the process if the crash point names this stage (after its commit).
    pub(super) fn crash_point(&self, stage: Stage) {
        if self.crash_at.get().map(String::as_str) == Some(stage.as_str()) {
            crash_now(stage.as_str());
        }
    }

    /// Whether the crash point is `before:<stage>`.
    pub(super) fn crash_before(&self, stage: Stage) -> bool {
        self.crash_at.get().and_then(|c| c.strip_prefix("before:")) == Some(stage.as_str())
    }
}

/// SIGKILLs this process.
pub(super) fn crash_now(point: &str) {
    eprintln!("keel: {CRASH_ENV}={point}: killing this process now");
    // SAFETY: kill(2) on our own pid only sends a signal.
    unsafe {
        libc::kill(libc::getpid(), libc::SIGKILL);
    }
    // SIGKILL cannot be caught; should it be delayed, never run on.
    std::process::abort();
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_crash_variable_is_not_a_config_key() {
        assert!(crate::config::RESERVED_ENV.contains(&CRASH_ENV));
    }
}
