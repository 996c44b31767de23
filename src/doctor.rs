//! `keel doctor`: checks what a user would otherwise debug by hand (configuration, data dir,
//! disk, database, schema, audit chain, secret file modes, clock, listen port, systemd unit) and
//! reports each as ok / warn / fail / skip with a hint.
//!
//! Doctor only reads: the one thing it writes is a probe file in the data dir (removed at once)
//! to learn whether the directory is writable. When a running keel holds the database, the
//! database-level checks go through that server's HTTP API instead.

use std::fmt::Write as _;
use std::net::{SocketAddr, TcpListener};
use std::path::{Path, PathBuf};
use std::time::Duration;

use redb::ReadableDatabase;
use serde::Serialize;

use crate::audit::{self, Audit, SIGNING_KEY_FILE};
use crate::auth::{INITIAL_ADMIN_KEY_FILE, KEY_HASH_SECRET_FILE};
use crate::clock::Millis;
use crate::config::{Config, LoadOptions};
use crate::store::{self, SCHEMA_VERSION};

/// Below this much free space on the data dir's file system: warn.
pub const DISK_WARN_BYTES: u64 = 1 << 30;
/// Below this much free space: fail.
pub const DISK_FAIL_BYTES: u64 = 100 << 20;
/// A system time before this (2024-01-01T00:00:00Z) cannot be right: keel did not exist yet.
pub const EARLIEST_SANE_TIME_MS: Millis = 1_704_067_200_000;
/// How far in the future the newest audit entry may be before the clock is suspect.
pub const FUTURE_TOLERANCE_MS: Millis = 5 * 60 * 1000;

/// Where systemd looks for keel's unit, most specific first.
const UNIT_PATHS: [&str; 3] = [
    "/etc/systemd/system/keel.service",
    "/usr/lib/systemd/system/keel.service",
    "/lib/systemd/system/keel.service",
];

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
            checks.push(Check::new(
                "config",
                Status::Ok,
                format!(
                    "{} is valid (data_dir {}, listen {})",
                    config_source(&options.load),
                    config.data_dir.display(),
                    config.server.listen
                ),
            ));
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

fn uid() -> u32 {
    // SAFETY: geteuid has no preconditions and cannot fail.
    unsafe { libc::geteuid() }
}

fn check_data_dir(dir: &Path) -> (Check, bool) {
    const NAME: &str = "data_dir";
    let shown = dir.display();
    match std::fs::metadata(dir) {
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => (
            Check::new(NAME, Status::Warn, format!("{shown} does not exist yet")).hint(format!(
                "`keel serve` creates it on first start; or create it now: install -d -m 0750 {shown}"
            )),
            false,
        ),
        Err(e) => (
            Check::new(NAME, Status::Fail, format!("cannot look at {shown}: {e}")).hint(
                "run doctor as the user keel runs as (packaged: sudo -u keel, or root)",
            ),
            false,
        ),
        Ok(meta) if !meta.is_dir() => (
            Check::new(NAME, Status::Fail, format!("{shown} is not a directory")).hint(format!(
                "point data_dir (KEEL_DATA_DIR, --data-dir) at a directory, or move {shown} away"
            )),
            false,
        ),
        Ok(_) => {
            let probe = tempfile::Builder::new()
                .prefix(".keel-doctor-")
                .tempfile_in(dir);
            match probe {
                Ok(_) => (
                    Check::new(
                        NAME,
                        Status::Ok,
                        format!("{shown} exists and is writable by uid {}", uid()),
                    ),
                    true,
                ),
                Err(e) => (
                    Check::new(
                        NAME,
                        Status::Fail,
                        format!("{shown} is not writable by uid {}: {e}", uid()),
                    )
                    .hint(format!(
                        "give keel's user the directory (chown -R keel:keel {shown} && chmod 0750 {shown}), or run doctor as that user"
                    )),
                    true,
                ),
            }
        }
    }
}

/// Free bytes for unprivileged users on the file system holding `path`.
fn free_bytes(path: &Path) -> std::io::Result<u64> {
    use std::os::unix::ffi::OsStrExt;
    let c_path = std::ffi::CString::new(path.as_os_str().as_bytes())?;
    let mut stat = std::mem::MaybeUninit::<libc::statvfs>::uninit();
    // SAFETY: c_path is a valid NUL-terminated string and stat points to writable memory of
    // the right type; statvfs fills it completely when it returns 0.
    let rc = unsafe { libc::statvfs(c_path.as_ptr(), stat.as_mut_ptr()) };
    if rc != 0 {
        return Err(std::io::Error::last_os_error());
    }
    // SAFETY: statvfs returned 0, so the struct is initialised.
    let stat = unsafe { stat.assume_init() };
    // The field types differ between platforms (u32 on some, u64 on others).
    #[allow(clippy::unnecessary_cast, clippy::useless_conversion)]
    let (blocks, size) = (stat.f_bavail as u64, stat.f_frsize as u64);
    Ok(blocks.saturating_mul(size))
}

/// The status for `free` bytes of free space.
pub fn disk_status(free: u64) -> Status {
    if free < DISK_FAIL_BYTES {
        Status::Fail
    } else if free < DISK_WARN_BYTES {
        Status::Warn
    } else {
        Status::Ok
    }
}

fn human_bytes(n: u64) -> String {
    const GIB: f64 = (1u64 << 30) as f64;
    const MIB: f64 = (1u64 << 20) as f64;
    if n as f64 >= GIB {
        format!("{:.1} GiB", n as f64 / GIB)
    } else {
        format!("{:.1} MiB", n as f64 / MIB)
    }
}

fn check_disk(dir: &Path) -> Check {
    const NAME: &str = "disk_space";
    // The data dir itself, or the nearest parent that exists (before the first start).
    let Some(existing) = dir.ancestors().find(|p| p.is_dir()) else {
        return Check::new(NAME, Status::Skip, "no existing directory to measure");
    };
    match free_bytes(existing) {
        Ok(free) => {
            let status = disk_status(free);
            let message = format!(
                "{} free on the file system holding {}",
                human_bytes(free),
                existing.display()
            );
            let check = Check::new(NAME, status, message);
            match status {
                Status::Ok | Status::Skip => check,
                Status::Warn | Status::Fail => check.hint(format!(
                    "keel stops writing when the disk is full: free space there (warn below {}, fail below {})",
                    human_bytes(DISK_WARN_BYTES),
                    human_bytes(DISK_FAIL_BYTES)
                )),
            }
        }
        Err(e) => Check::new(
            NAME,
            Status::Warn,
            format!("cannot measure free space at {}: {e}", existing.display()),
        ),
    }
}

fn base_url(listen: SocketAddr) -> String {
    let mut addr = listen;
    if addr.ip().is_unspecified() {
        addr.set_ip(match addr {
            SocketAddr::V4(_) => std::net::Ipv4Addr::LOCALHOST.into(),
            SocketAddr::V6(_) => std::net::Ipv6Addr::LOCALHOST.into(),
        });
    }
    format!("http://{addr}")
}

fn agent() -> ureq::Agent {
    ureq::Agent::config_builder()
        .timeout_global(Some(Duration::from_secs(3)))
        .http_status_as_error(false)
        .proxy(None)
        .build()
        .into()
}

/// GET (or POST with no body) `url`; `None` when nothing answers.
fn http(method: &str, url: &str, key: Option<&str>) -> Option<(u16, String)> {
    let agent = agent();
    let auth = key.map(|k| format!("Bearer {k}"));
    let response = if method == "POST" {
        let mut request = agent.post(url);
        if let Some(auth) = &auth {
            request = request.header("authorization", auth);
        }
        request.send_empty()
    } else {
        let mut request = agent.get(url);
        if let Some(auth) = &auth {
            request = request.header("authorization", auth);
        }
        request.call()
    };
    let mut response = response.ok()?;
    let status = response.status().as_u16();
    let body = response.body_mut().read_to_string().unwrap_or_default();
    Some((status, body))
}

fn check_database(config: &Config, dir_exists: bool, base: &str) -> (Check, Db) {
    const NAME: &str = "database";
    let path = config.database_path();
    let shown = path.display();
    if !dir_exists || !path.exists() {
        return (
            Check::new(NAME, Status::Warn, format!("no database at {shown} yet"))
                .hint("keel creates it on first start; if keel ran before, check data_dir"),
            Db::Missing,
        );
    }
    match redb::ReadOnlyDatabase::open(&path) {
        Ok(db) => {
            drop(db);
            let size = std::fs::metadata(&path).map(|m| m.len()).unwrap_or(0);
            (
                Check::new(
                    NAME,
                    Status::Ok,
                    format!(
                        "{shown} opens ({}); keel is not running on it",
                        human_bytes(size)
                    ),
                ),
                Db::Offline,
            )
        }
        Err(redb::DatabaseError::DatabaseAlreadyOpen) => {
            let ready = format!("{base}/ready");
            match http("GET", &ready, None) {
                Some((200, _)) => (
                    Check::new(
                        NAME,
                        Status::Ok,
                        format!("{shown} is in use by the running keel, which answers {ready}"),
                    ),
                    Db::Running(base.to_string()),
                ),
                Some((status, body)) => (
                    Check::new(
                        NAME,
                        Status::Fail,
                        format!(
                            "{shown} is in use by a keel that is not ready: {ready} answered {status} {}",
                            body.trim()
                        ),
                    )
                    .hint("read its log (journalctl -u keel -e under systemd)"),
                    Db::Unusable,
                ),
                None => (
                    Check::new(
                        NAME,
                        Status::Fail,
                        format!(
                            "{shown} is locked by another process, and nothing answers at {ready}"
                        ),
                    )
                    .hint(format!(
                        "another keel may run on this data dir with a different server.listen: find it with `fuser -v {shown}` and stop it"
                    )),
                    Db::Unusable,
                ),
            }
        }
        Err(redb::DatabaseError::RepairAborted) => (
            Check::new(
                NAME,
                Status::Warn,
                format!("{shown} needs crash recovery (keel was not shut down cleanly)"),
            )
            .hint("`keel serve` repairs it on start"),
            Db::Unusable,
        ),
        Err(e) => (
            Check::new(NAME, Status::Fail, format!("cannot open {shown}: {e}")).hint(
                "if it is not a keel database, move it away; otherwise restore it from a backup",
            ),
            Db::Unusable,
        ),
    }
}

fn check_schema(path: &Path, db: &Db) -> Check {
    const NAME: &str = "schema";
    match db {
        Db::Offline => {}
        Db::Running(_) => {
            return Check::new(
                NAME,
                Status::Skip,
                "the running keel opened the database, so it migrated it at start",
            );
        }
        Db::Missing | Db::Unusable => {
            return Check::new(NAME, Status::Skip, "no database to read");
        }
    }
    match store::schema_version_of(path) {
        Ok(Some(v)) if v == SCHEMA_VERSION => Check::new(
            NAME,
            Status::Ok,
            format!("schema version {v}, the one this keel writes"),
        ),
        Ok(Some(v)) if v < SCHEMA_VERSION => Check::new(
            NAME,
            Status::Warn,
            format!("schema version {v}; this keel uses {SCHEMA_VERSION}"),
        )
        .hint("it is migrated when keel starts (each step in one transaction); take a backup first"),
        Ok(Some(v)) => Check::new(
            NAME,
            Status::Fail,
            format!("schema version {v} is newer than this keel supports ({SCHEMA_VERSION})"),
        )
        .hint("install the newer keel that wrote it; this one refuses to open it and leaves it untouched"),
        Ok(None) => Check::new(NAME, Status::Warn, "the database has no schema yet (empty file)")
            .hint("keel creates its tables on first start"),
        Err(e) => Check::new(NAME, Status::Fail, e.to_string())
            .hint("move the file away to start empty, or restore it from a backup"),
    }
}

/// The newest audit entry: its sequence number and time.
type AuditHead = (u64, Millis);

const TAMPER_HINT: &str = "the audit log was changed outside keel: keep the database file as evidence, find out who changed it, and restore from a backup taken before that entry";

fn check_audit(config: &Config, db: &Db, api_key: Option<&str>) -> (Check, Option<AuditHead>) {
    const NAME: &str = "audit";
    match db {
        Db::Offline => {}
        Db::Running(base) => return check_audit_online(base, api_key),
        Db::Missing | Db::Unusable => {
            return (Check::new(NAME, Status::Skip, "no database to read"), None);
        }
    }
    let path = config.database_path();
    let result = (|| -> Result<(Check, Option<AuditHead>), String> {
        let db = redb::ReadOnlyDatabase::open(&path).map_err(|e| e.to_string())?;
        let tx = db.begin_read().map_err(|e| e.to_string())?;
        let head = audit::head(&tx).map_err(|e| e.to_string())?;
        let head = head.time_ms.map(|t| (head.seq, t));
        if head.is_none() {
            return Ok((Check::new(NAME, Status::Ok, "the audit log is empty"), None));
        }
        let audit = match Audit::load(&config.data_dir, config.audit.checkpoint_every) {
            Ok(audit) => audit,
            Err(e) => {
                return Ok((
                    Check::new(NAME, Status::Fail, format!("cannot verify: {e}")).hint(format!(
                        "{SIGNING_KEY_FILE} must be the key keel created in the data dir: restore it from a backup"
                    )),
                    head,
                ));
            }
        };
        let report = audit.verify(&tx).map_err(|e| e.to_string())?;
        Ok(if report.ok {
            (
                Check::new(
                    NAME,
                    Status::Ok,
                    format!(
                        "{} entries and {} signed checkpoints verify",
                        report.entries, report.checkpoints
                    ),
                ),
                head,
            )
        } else {
            (
                Check::new(NAME, Status::Fail, format!("audit chain {report}")).hint(TAMPER_HINT),
                head,
            )
        })
    })();
    match result {
        Ok(found) => found,
        Err(e) => (
            Check::new(
                NAME,
                Status::Fail,
                format!("cannot read the audit log: {e}"),
            )
            .hint("run `keel audit verify` for details"),
            None,
        ),
    }
}

fn check_audit_online(base: &str, api_key: Option<&str>) -> (Check, Option<AuditHead>) {
    const NAME: &str = "audit";
    let verify_url = format!("{base}/api/v1/audit/verify");
    let Some(key) = api_key else {
        return (
            Check::new(
                NAME,
                Status::Skip,
                "keel is running and holds the database, and doctor has no API key to ask it",
            )
            .hint(format!(
                "give doctor an operator or admin key (--api-key or KEEL_API_KEY), or POST {verify_url} with one"
            )),
            None,
        );
    };
    let head =
        http("GET", &format!("{base}/api/v1/audit/head"), Some(key)).and_then(|(status, body)| {
            let v: serde_json::Value = serde_json::from_str(&body).ok()?;
            let time = v["time"].as_str()?;
            let time = chrono::DateTime::parse_from_rfc3339(time).ok()?;
            (status == 200).then(|| (v["seq"].as_u64().unwrap_or(0), time.timestamp_millis()))
        });
    let check = match http("POST", &verify_url, Some(key)) {
        Some((200, body)) => {
            let v: serde_json::Value = serde_json::from_str(&body).unwrap_or_default();
            let summary = v["summary"].as_str().unwrap_or("no summary").to_string();
            if v["ok"] == serde_json::Value::Bool(true) {
                Check::new(
                    NAME,
                    Status::Ok,
                    format!("verified by the running keel: {summary}"),
                )
            } else {
                Check::new(
                    NAME,
                    Status::Fail,
                    format!("the running keel reports: audit chain {summary}"),
                )
                .hint(TAMPER_HINT)
            }
        }
        Some((status @ (401 | 403), _)) => Check::new(
            NAME,
            Status::Skip,
            format!("keel is running; it refused the API key doctor used ({status})"),
        )
        .hint("give doctor an operator or admin key with --api-key or KEEL_API_KEY"),
        Some((status, body)) => Check::new(
            NAME,
            Status::Fail,
            format!("{verify_url} answered {status}: {}", body.trim()),
        )
        .hint("read keel's log (journalctl -u keel -e under systemd)"),
        None => Check::new(
            NAME,
            Status::Fail,
            format!("nothing answers at {verify_url}"),
        )
        .hint("keel stopped while doctor ran? run doctor again"),
    };
    (check, head)
}

fn check_secret_files(dir: &Path, dir_exists: bool) -> Check {
    const NAME: &str = "secret_files";
    if !dir_exists {
        return Check::new(NAME, Status::Skip, "no data dir");
    }
    let mut fine = Vec::new();
    let mut wrong = Vec::new();
    let mut unreadable = Vec::new();
    for file in [
        SIGNING_KEY_FILE,
        KEY_HASH_SECRET_FILE,
        INITIAL_ADMIN_KEY_FILE,
    ] {
        let path = dir.join(file);
        match crate::fsutil::mode_of(&path) {
            Ok(mode) if mode & 0o077 == 0 => fine.push(file),
            Ok(mode) => wrong.push((path, mode)),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => unreadable.push(format!("{}: {e}", path.display())),
        }
    }
    if !wrong.is_empty() {
        let message = wrong
            .iter()
            .map(|(path, mode)| {
                format!(
                    "{} has mode {mode:04o} (must be 0600: readable by keel's user alone)",
                    path.display()
                )
            })
            .collect::<Vec<_>>()
            .join("; ");
        let paths = wrong
            .iter()
            .map(|(path, _)| path.display().to_string())
            .collect::<Vec<_>>()
            .join(" ");
        return Check::new(NAME, Status::Fail, message).hint(format!("chmod 600 {paths}"));
    }
    if !unreadable.is_empty() {
        return Check::new(
            NAME,
            Status::Fail,
            format!("cannot inspect {}", unreadable.join("; ")),
        )
        .hint("run doctor as root or as keel's user");
    }
    if fine.is_empty() {
        return Check::new(
            NAME,
            Status::Ok,
            "no secret files yet (keel creates them on first start)",
        );
    }
    let mut message = format!("{}: mode 0600", fine.join(", "));
    if fine.contains(&INITIAL_ADMIN_KEY_FILE) {
        message.push_str(&format!(
            " ({INITIAL_ADMIN_KEY_FILE} is still there: store the key safely, then delete the file)"
        ));
    }
    Check::new(NAME, Status::Ok, message)
}

fn rfc3339(ms: Millis) -> String {
    chrono::DateTime::from_timestamp_millis(ms)
        .map(|t| t.to_rfc3339_opts(chrono::SecondsFormat::Secs, true))
        .unwrap_or_else(|| format!("{ms} ms"))
}

/// The clock check: the system time is after keel existed, and the newest audit entry is not
/// more than [`FUTURE_TOLERANCE_MS`] ahead of it.
pub fn check_clock(now_ms: Millis, newest_audit: Option<(u64, Millis)>) -> Check {
    const NAME: &str = "clock";
    if now_ms < EARLIEST_SANE_TIME_MS {
        return Check::new(
            NAME,
            Status::Fail,
            format!(
                "the system time is {}, before 2024: it cannot be right",
                rfc3339(now_ms)
            ),
        )
        .hint("set the clock and keep it synchronised: timedatectl set-ntp true");
    }
    match newest_audit {
        Some((seq, time)) if time > now_ms + FUTURE_TOLERANCE_MS => Check::new(
            NAME,
            Status::Warn,
            format!(
                "the newest audit entry (seq {seq}) is dated {}, {} minutes after the system time {}",
                rfc3339(time),
                (time - now_ms) / 60_000,
                rfc3339(now_ms)
            ),
        )
        .hint("the clock was set back, or was ahead when that entry was written: check time synchronisation (timedatectl status)"),
        Some((seq, time)) => Check::new(
            NAME,
            Status::Ok,
            format!(
                "system time {}; the newest audit entry (seq {seq}) is dated {}",
                rfc3339(now_ms),
                rfc3339(time)
            ),
        ),
        None => Check::new(NAME, Status::Ok, format!("system time {}", rfc3339(now_ms))),
    }
}

/// Whether a keel answers `/health` at `base`.
fn keel_answers(base: &str) -> bool {
    http("GET", &format!("{base}/health"), None).is_some_and(|(status, body)| {
        status == 200
            && serde_json::from_str::<serde_json::Value>(&body).is_ok_and(|v| v["status"] == "ok")
    })
}

fn check_listen(listen: SocketAddr, db: &Db) -> Check {
    const NAME: &str = "listen";
    if listen.port() == 0 {
        return Check::new(
            NAME,
            Status::Ok,
            format!("{listen}: keel picks a free port at start"),
        );
    }
    let base = base_url(listen);
    match TcpListener::bind(listen) {
        Ok(listener) => {
            drop(listener);
            Check::new(NAME, Status::Ok, format!("{listen} is free"))
        }
        Err(e) if e.kind() == std::io::ErrorKind::AddrInUse => {
            if matches!(db, Db::Running(running) if *running == base) {
                Check::new(
                    NAME,
                    Status::Ok,
                    format!("{listen} is held by the running keel of this data dir"),
                )
            } else if keel_answers(&base) {
                Check::new(
                    NAME,
                    Status::Fail,
                    format!("{listen} is held by a keel that does not run on this data dir"),
                )
                .hint("two keels cannot share a port: stop the other one, or change server.listen (KEEL_SERVER__LISTEN)")
            } else {
                Check::new(
                    NAME,
                    Status::Fail,
                    format!("{listen} is in use by another program"),
                )
                .hint(format!(
                    "find it with `ss -ltnp 'sport = :{}'`; stop it, or change server.listen (KEEL_SERVER__LISTEN)",
                    listen.port()
                ))
            }
        }
        Err(e) if e.kind() == std::io::ErrorKind::PermissionDenied => Check::new(
            NAME,
            Status::Fail,
            format!("cannot listen on {listen}: {e}"),
        )
        .hint("ports below 1024 need CAP_NET_BIND_SERVICE (AmbientCapabilities= in a systemd drop-in); or use a port of 1024 or more"),
        Err(e) if e.kind() == std::io::ErrorKind::AddrNotAvailable => Check::new(
            NAME,
            Status::Fail,
            format!("{} is not an address of this machine ({e})", listen.ip()),
        )
        .hint("use 127.0.0.1, 0.0.0.0, [::] or an address `ip addr` shows"),
        Err(e) => Check::new(NAME, Status::Fail, format!("cannot listen on {listen}: {e}")),
    }
}

fn check_systemd() -> Check {
    const NAME: &str = "systemd";
    let Some(unit) = UNIT_PATHS.iter().find(|p| Path::new(p).exists()) else {
        return Check::new(NAME, Status::Skip, "keel.service is not installed");
    };
    if !Path::new("/run/systemd/system").is_dir() {
        return Check::new(
            NAME,
            Status::Skip,
            format!("{unit} is installed, but systemd is not running here"),
        );
    }
    let systemctl = |args: &[&str]| {
        std::process::Command::new("systemctl")
            .args(args)
            .output()
            .ok()
            .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_string())
    };
    let Some(active) = systemctl(&["is-active", "keel.service"]) else {
        return Check::new(NAME, Status::Skip, "systemctl is not available");
    };
    let enabled = systemctl(&["is-enabled", "keel.service"]).unwrap_or_default();
    let message = format!("keel.service is {active} ({enabled})");
    match active.as_str() {
        "active" if enabled == "enabled" => Check::new(NAME, Status::Ok, message),
        "active" => Check::new(NAME, Status::Warn, message)
            .hint("it will not start at boot: systemctl enable keel"),
        "failed" => Check::new(NAME, Status::Fail, message)
            .hint("see why with journalctl -u keel -e, then: systemctl restart keel"),
        "inactive" => Check::new(NAME, Status::Warn, message)
            .hint("start it with: systemctl enable --now keel"),
        _ => Check::new(NAME, Status::Warn, message)
            .hint("see journalctl -u keel -e; check again in a moment"),
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
