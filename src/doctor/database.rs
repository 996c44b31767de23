//! Doctor's checks of the database: that it opens (or which keel holds it), its schema version,
//! and the audit chain, read offline or through the running server's API.

use std::net::SocketAddr;
use std::path::Path;
use std::time::Duration;

use redb::ReadableDatabase;

use super::files::human_bytes;
use super::{Check, Db, Status};
use crate::audit::{self, Audit, SIGNING_KEY_FILE};
use crate::clock::Millis;
use crate::config::Config;
use crate::store::{self, SCHEMA_VERSION};

pub(super) fn base_url(listen: SocketAddr) -> String {
    let mut addr = listen;
    if addr.ip().is_unspecified() {
        addr.set_ip(match addr {
            SocketAddr::V4(_) => std::net::Ipv4Addr::LOCALHOST.into(),
            SocketAddr::V6(_) => std::net::Ipv6Addr::LOCALHOST.into(),
        });
    }
    format!("http://{addr}")
}

pub(super) fn agent() -> ureq::Agent {
    ureq::Agent::config_builder()
        .timeout_global(Some(Duration::from_secs(3)))
        .http_status_as_error(false)
        .proxy(None)
        .build()
        .into()
}

/// GET (or POST with no body) `url`; `None` when nothing answers.
pub(super) fn http(method: &str, url: &str, key: Option<&str>) -> Option<(u16, String)> {
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

pub(super) fn check_database(config: &Config, dir_exists: bool, base: &str) -> (Check, Db) {
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

pub(super) fn check_schema(path: &Path, db: &Db) -> Check {
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

pub(super) const TAMPER_HINT: &str = "the audit log was changed outside keel: keep the database file as evidence, find out who changed it, and restore from a backup taken before that entry";

pub(super) fn check_audit(
    config: &Config,
    db: &Db,
    api_key: Option<&str>,
) -> (Check, Option<AuditHead>) {
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

pub(super) fn check_audit_online(base: &str, api_key: Option<&str>) -> (Check, Option<AuditHead>) {
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
