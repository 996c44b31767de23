//! `keel doctor`: checks what a user would otherwise debug by hand (configuration, data dir,
//! disk, database, schema, audit chain, modes of the secret files, data dir and database, clock,
//! listen port, systemd unit) and reports each as ok / warn / fail / skip with a hint.
//!
//! Doctor only reads: the one thing it writes is a probe file in the data dir (removed at once)
//! to learn whether the directory is writable. When a running keel holds the database, the
//! database-level checks go through that server's HTTP API instead.

use std::fmt::Write as _;
use std::path::{Path, PathBuf};

use serde::Serialize;

use crate::auth::INITIAL_ADMIN_KEY_FILE;
use crate::clock::Millis;
use crate::config::{Config, LoadOptions};

mod database;
mod files;
mod host;

use database::{base_url, check_audit, check_database, check_schema};
pub use files::disk_status;
use files::{check_data_dir, check_disk, check_file_modes, check_secret_files};
pub use host::check_clock;
use host::{check_listen, check_systemd};

/// Below this much free space on the data dir's file system: warn.
pub const DISK_WARN_BYTES: u64 = 1 << 30;
/// Below this much free space: fail.
pub const DISK_FAIL_BYTES: u64 = 100 << 20;
/// A system time before this (2024-01-01T00:00:00Z) cannot be right: keel did not exist yet.
pub const EARLIEST_SANE_TIME_MS: Millis = 1_704_067_200_000;
/// How far in the future the newest audit entry may be before the clock is suspect.
pub const FUTURE_TOLERANCE_MS: Millis = 5 * 60 * 1000;

/// The outcome of one check.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Status {
    /// Fine.
    Ok,
    /// Works, but deserves a look.
    Warn,
    /// Broken: keel will not work properly until it is fixed.
    Fail,
    /// Not applicable here (e.g. no systemd), or not checkable in this state.
    Skip,
}

impl Status {
    fn label(self) -> &'static str {
        match self {
            Status::Ok => "ok",
            Status::Warn => "warn",
            Status::Fail => "fail",
            Status::Skip => "skip",
        }
    }
}

/// One check's result.
#[derive(Debug, Clone, Serialize)]
pub struct Check {
    /// Short stable name, e.g. `data_dir`.
    pub name: &'static str,
    /// The outcome.
    pub status: Status,
    /// What was found.
    pub message: String,
    /// What to do about it, when there is something to do.
    pub hint: Option<String>,
}

impl Check {
    fn new(name: &'static str, status: Status, message: impl Into<String>) -> Check {
        Check {
            name,
            status,
            message: message.into(),
            hint: None,
        }
    }

    fn hint(mut self, hint: impl Into<String>) -> Check {
        self.hint = Some(hint.into());
        self
    }
}

/// Every check's result; `ok` is false when any check failed.
#[derive(Debug, Clone, Serialize)]
pub struct Report {
    /// No check failed (warnings and skips allowed).
    pub ok: bool,
    /// The checks in the order they ran.
    pub checks: Vec<Check>,
}

impl Report {
    fn new(checks: Vec<Check>) -> Report {
        Report {
            ok: checks.iter().all(|c| c.status != Status::Fail),
            checks,
        }
    }

    /// The check named `name`, if it ran.
    pub fn check(&self, name: &str) -> Option<&Check> {
        self.checks.iter().find(|c| c.name == name)
    }

    /// The report for people: one line per check, hints indented below, a summary last.
    pub fn to_text(&self) -> String {
        let width = self.checks.iter().map(|c| c.name.len()).max().unwrap_or(0);
        let mut out = String::new();
        for c in &self.checks {
            let _ = writeln!(
                out,
                "{:<4}  {:<width$}  {}",
                c.status.label(),
                c.name,
                c.message
            );
            if let Some(hint) = &c.hint {
                let _ = writeln!(out, "{:<4}  {:<width$}  hint: {hint}", "", "");
            }
        }
        let count = |s: Status| self.checks.iter().filter(|c| c.status == s).count();
        let _ = writeln!(
            out,
            "keel doctor: {} failed, {} warnings, {} ok, {} skipped",
            count(Status::Fail),
            count(Status::Warn),
            count(Status::Ok),
            count(Status::Skip)
        );
        out
    }
}

/// What `keel doctor` looks at.
#[derive(Debug, Clone)]
pub struct Options {
    /// How to load the configuration (file, environment).
    pub load: LoadOptions,
    /// A key for the running server's API (operator or admin), for the online audit check.
    /// Without one, the `initial-admin-key` file is used if it is readable.
    pub api_key: Option<String>,
    /// The current time (epoch ms).
    pub now_ms: Millis,
}

/// What doctor learned about the database.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Db {
    /// No data dir or no database file.
    Missing,
    /// Opened read-only: keel is not running on it.
    Offline,
    /// Locked by a keel that answers /ready at this base URL.
    Running(String),
    /// Locked, or unreadable: nothing more to check.
    Unusable,
}

/// Runs every check.
pub fn run(options: &Options) -> Report {
    let mut checks = Vec::new();
    let config = match Config::load(&options.load) {
        Ok(config) => {
            checks.push(match crate::app::validate_start(&config) {
                // The same words `keel serve` would refuse to start with.
                Err(e) => Check::new(
                    "config",
                    Status::Fail,
                    format!("{:#}", anyhow::Error::new(e)),
                )
                .hint("fix the profile files named above; `keel config check` validates again"),
                Ok(_) => Check::new(
                    "config",
                    Status::Ok,
                    format!(
                        "{} is valid (data_dir {}, listen {})",
                        config_source(&options.load),
                        config.data_dir.display(),
                        config.server.listen
                    ),
                ),
            });
            config
        }
        Err(e) => {
            checks.push(
                Check::new("config", Status::Fail, e.to_string()).hint(
                    "fix the key named above (every key is described in /etc/keel/keel.toml or packaging/keel.toml); `keel config check` validates again",
                ),
            );
            checks.push(check_clock(options.now_ms, None));
            checks.push(check_systemd());
            for name in [
                "data_dir",
                "disk_space",
                "database",
                "schema",
                "audit",
                "secret_files",
                "file_modes",
                "listen",
            ] {
                checks.push(Check::new(
                    name,
                    Status::Skip,
                    "needs a valid configuration",
                ));
            }
            return Report::new(checks);
        }
    };

    let dir = &config.data_dir;
    let (data_dir_check, dir_exists) = check_data_dir(dir);
    checks.push(data_dir_check);
    checks.push(check_disk(dir));
    let base = base_url(config.server.listen);
    let (database_check, db) = check_database(&config, dir_exists, &base);
    checks.push(database_check);
    checks.push(check_schema(&config.database_path(), &db));
    let api_key = options
        .api_key
        .clone()
        .or_else(|| read_trimmed(&dir.join(INITIAL_ADMIN_KEY_FILE)));
    let (audit_check, head) = check_audit(&config, &db, api_key.as_deref());
    checks.push(audit_check);
    checks.push(check_secret_files(dir, dir_exists));
    checks.push(check_file_modes(dir, &config.database_path(), dir_exists));
    checks.push(check_clock(options.now_ms, head));
    checks.push(check_listen(config.server.listen, &db));
    checks.push(check_systemd());
    Report::new(checks)
}

fn config_source(load: &LoadOptions) -> String {
    let file = load.file.clone().or_else(|| {
        load.env
            .iter()
            .find(|(name, value)| name == crate::config::CONFIG_ENV && !value.is_empty())
            .map(|(_, value)| PathBuf::from(value))
    });
    match file {
        Some(path) => format!("configuration {}", path.display()),
        None => "the embedded default configuration".to_string(),
    }
}

fn read_trimmed(path: &Path) -> Option<String> {
    std::fs::read_to_string(path)
        .ok()
        .map(|s| s.trim().to_string())
        .filter(|s| !s.is_empty())
}

#[cfg(test)]
mod tests {
    use std::net::TcpListener;

    use super::files::free_bytes;
    use super::*;

    #[test]
    fn disk_thresholds() {
        assert_eq!(disk_status(0), Status::Fail);
        assert_eq!(disk_status(DISK_FAIL_BYTES - 1), Status::Fail);
        assert_eq!(disk_status(DISK_FAIL_BYTES), Status::Warn);
        assert_eq!(disk_status(DISK_WARN_BYTES - 1), Status::Warn);
        assert_eq!(disk_status(DISK_WARN_BYTES), Status::Ok);
    }

    #[test]
    fn free_bytes_measures_a_real_file_system() {
        let dir = tempfile::tempdir().unwrap();
        assert!(free_bytes(dir.path()).unwrap() > 0);
        assert!(free_bytes(&dir.path().join("missing")).is_err());
    }

    #[test]
    fn clock_before_2024_fails_and_future_audit_entries_warn() {
        let now = 1_767_225_600_000; // 2026-01-01
        assert_eq!(check_clock(now, None).status, Status::Ok);
        let before = check_clock(EARLIEST_SANE_TIME_MS - 1, None);
        assert_eq!(before.status, Status::Fail);
        assert!(before.message.contains("2023-12-31"), "{}", before.message);
        let ahead = check_clock(now, Some((7, now + FUTURE_TOLERANCE_MS + 60_000)));
        assert_eq!(ahead.status, Status::Warn);
        assert!(ahead.message.contains("seq 7"), "{}", ahead.message);
        let close = check_clock(now, Some((7, now + FUTURE_TOLERANCE_MS)));
        assert_eq!(close.status, Status::Ok);
    }

    #[test]
    fn a_port_held_by_another_program_fails() {
        let held = TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = held.local_addr().unwrap();
        let check = check_listen(addr, &Db::Offline);
        assert_eq!(check.status, Status::Fail, "{check:?}");
        assert!(check.message.contains("another program"), "{check:?}");
        drop(held);
        assert_eq!(check_listen(addr, &Db::Offline).status, Status::Ok);
    }

    #[test]
    fn text_report_shows_hints_and_counts() {
        let report = Report::new(vec![
            Check::new("a", Status::Ok, "fine"),
            Check::new("bb", Status::Fail, "broken").hint("fix it"),
        ]);
        assert!(!report.ok);
        let text = report.to_text();
        assert!(text.contains("fail  bb  broken"), "{text}");
        assert!(text.contains("hint: fix it"), "{text}");
        assert!(
            text.contains("1 failed, 0 warnings, 1 ok, 0 skipped"),
            "{text}"
        );
    }
}
