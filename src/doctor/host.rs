//! Doctor's checks of the host: the clock, the listen port and the systemd unit.

use std::net::{SocketAddr, TcpListener};
use std::path::Path;

use super::database::{base_url, http};
use super::{Check, Db, EARLIEST_SANE_TIME_MS, FUTURE_TOLERANCE_MS, Status};
use crate::clock::Millis;

/// Where systemd looks for keel's unit, most specific first.
pub(super) const UNIT_PATHS: [&str; 3] = [
    "/etc/systemd/system/keel.service",
    "/usr/lib/systemd/system/keel.service",
    "/lib/systemd/system/keel.service",
];

pub(super) fn rfc3339(ms: Millis) -> String {
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
pub(super) fn keel_answers(base: &str) -> bool {
    http("GET", &format!("{base}/health"), None).is_some_and(|(status, body)| {
        status == 200
            && serde_json::from_str::<serde_json::Value>(&body).is_ok_and(|v| v["status"] == "ok")
    })
}

pub(super) fn check_listen(listen: SocketAddr, db: &Db) -> Check {
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

pub(super) fn check_systemd() -> Check {
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
