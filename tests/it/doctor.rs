//! `keel doctor` against a healthy data dir, a running keel, and broken setups: each breakage is
//! reported as a failed check with a hint, and the exit code is 1.

use std::os::unix::fs::PermissionsExt;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};

use redb::{ReadableTable, TableHandle};
use serde_json::Value;

use crate::support::{CmdOutput, KeelProcess, keel_cmd, run_keel};

/// A data dir that a real `keel serve` created and then left with a clean shutdown.
fn healthy_data_dir() -> (tempfile::TempDir, PathBuf) {
    let dir = tempfile::tempdir().expect("temp dir");
    let data = dir.path().join("data");
    let keel = KeelProcess::spawn(&data, &[]).expect("keel starts");
    assert_eq!(keel.terminate(), 0, "keel stops cleanly");
    (dir, data)
}

/// A config file in `dir` pointing at `data` and listening on `listen`.
fn write_config(dir: &Path, data: &Path, listen: &str) -> PathBuf {
    let path = dir.join("keel.toml");
    let data = serde_json::to_string(&data.display().to_string()).unwrap();
    std::fs::write(
        &path,
        format!("data_dir = {data}\n\n[server]\nlisten = \"{listen}\"\n"),
    )
    .unwrap();
    path
}

/// Runs `keel doctor --json` and parses its report.
fn doctor_json(config: &Path) -> (CmdOutput, Value) {
    let out = run_keel(
        &["doctor", "--json", "--config", config.to_str().unwrap()],
        &[],
    );
    let report: Value = serde_json::from_str(&out.stdout)
        .unwrap_or_else(|e| panic!("doctor --json is not JSON ({e}): {out:?}"));
    (out, report)
}

fn check<'a>(report: &'a Value, name: &str) -> &'a Value {
    report["checks"]
        .as_array()
        .expect("checks array")
        .iter()
        .find(|c| c["name"] == name)
        .unwrap_or_else(|| panic!("no check {name} in {report:#}"))
}

fn status<'a>(report: &'a Value, name: &str) -> &'a str {
    check(report, name)["status"].as_str().expect("status")
}

/// Asserts that `name` failed with a hint, that the report says not ok and doctor exits 1.
fn assert_fails(out: &CmdOutput, report: &Value, name: &str) -> (String, String) {
    assert_eq!(out.code, 1, "{out:?}");
    assert_eq!(report["ok"], false, "{report:#}");
    let c = check(report, name);
    assert_eq!(c["status"], "fail", "{report:#}");
    let hint = c["hint"]
        .as_str()
        .unwrap_or_else(|| panic!("{name} failed without a hint: {report:#}"));
    assert!(!hint.is_empty());
    (c["message"].as_str().unwrap().to_string(), hint.to_string())
}

#[test]
fn healthy_stopped_setup_is_all_ok() {
    let (dir, data) = healthy_data_dir();
    let config = write_config(dir.path(), &data, "127.0.0.1:0");
    let (out, report) = doctor_json(&config);
    assert_eq!(out.code, 0, "{out:?}");
    assert_eq!(report["ok"], true, "{report:#}");
    for c in report["checks"].as_array().unwrap() {
        assert!(
            c["status"] == "ok" || c["status"] == "skip",
            "{c} in {report:#}"
        );
    }
    // The checks that matter here ran (a skip would make this test pass on nothing).
    for name in [
        "config",
        "data_dir",
        "disk_space",
        "database",
        "schema",
        "audit",
        "secret_files",
        "file_modes",
        "clock",
        "listen",
    ] {
        assert_eq!(status(&report, name), "ok", "{name}: {report:#}");
    }
    assert!(
        check(&report, "audit")["message"]
            .as_str()
            .unwrap()
            .contains("verify"),
        "{report:#}"
    );

    let text = run_keel(&["doctor", "--config", config.to_str().unwrap()], &[]);
    assert_eq!(text.code, 0, "{text:?}");
    assert!(text.stdout.contains("keel doctor: 0 failed"), "{text:?}");
    assert!(text.stdout.contains("ok    data_dir"), "{text:?}");
}

#[test]
fn running_keel_is_checked_through_its_api() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let keel = KeelProcess::spawn(&data, &[]).expect("keel starts");
    let listen = keel.base.trim_start_matches("http://").to_string();
    let config = write_config(dir.path(), &data, &listen);
    let (out, report) = doctor_json(&config);
    assert_eq!(out.code, 0, "{report:#}");
    let database = check(&report, "database");
    assert_eq!(database["status"], "ok", "{report:#}");
    assert!(
        database["message"]
            .as_str()
            .unwrap()
            .contains("running keel"),
        "{report:#}"
    );
    // The initial-admin-key file lets doctor ask the server to verify the chain.
    let audit = check(&report, "audit");
    assert_eq!(audit["status"], "ok", "{report:#}");
    assert!(
        audit["message"]
            .as_str()
            .unwrap()
            .contains("verified by the running keel"),
        "{report:#}"
    );
    let listen_check = check(&report, "listen");
    assert_eq!(listen_check["status"], "ok", "{report:#}");
    assert!(
        listen_check["message"]
            .as_str()
            .unwrap()
            .contains("held by the running keel"),
        "{report:#}"
    );
    assert_eq!(keel.terminate(), 0);
}

#[test]
fn a_port_held_by_something_else_fails() {
    let (dir, data) = healthy_data_dir();
    let squatter = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = squatter.local_addr().unwrap().to_string();
    let config = write_config(dir.path(), &data, &addr);
    let (out, report) = doctor_json(&config);
    let (message, hint) = assert_fails(&out, &report, "listen");
    assert!(message.contains("another program"), "{report:#}");
    assert!(hint.contains("server.listen"), "{report:#}");
}

#[test]
fn data_dir_that_is_a_file_fails() {
    let dir = tempfile::tempdir().unwrap();
    let not_a_dir = dir.path().join("data");
    std::fs::write(&not_a_dir, "not a directory").unwrap();
    let config = write_config(dir.path(), &not_a_dir, "127.0.0.1:0");
    let (out, report) = doctor_json(&config);
    let (message, hint) = assert_fails(&out, &report, "data_dir");
    assert!(message.contains("not a directory"), "{report:#}");
    assert!(hint.contains("data_dir"), "{report:#}");
}

#[test]
fn unwritable_data_dir_fails() {
    let (dir, data) = healthy_data_dir();
    let config = write_config(dir.path(), &data, "127.0.0.1:0");
    let mut cmd = keel_cmd();
    // SAFETY: geteuid has no preconditions.
    let root = unsafe { libc::geteuid() } == 0;
    if root {
        // Permissions do not stop root: run doctor as `nobody`, for whom the (root-owned,
        // 0755) data dir is readable but not writable. The binary is copied next to it, since
        // the checkout's directories may be closed to other users.
        let binary = dir.path().join("keel");
        std::fs::copy(env!("CARGO_BIN_EXE_keel"), &binary).unwrap();
        for path in [dir.path(), &data, &config, &binary] {
            let mode = if path.is_dir() || *path == binary {
                0o755
            } else {
                0o644
            };
            std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode)).unwrap();
        }
        cmd = std::process::Command::new(&binary);
        cmd.env_clear().env("PATH", "/usr/bin:/bin");
        cmd.uid(65534).gid(65534);
    } else {
        std::fs::set_permissions(&data, std::fs::Permissions::from_mode(0o500)).unwrap();
    }
    cmd.args(["doctor", "--json", "--config", config.to_str().unwrap()]);
    let output = cmd.output().expect("run keel doctor");
    std::fs::set_permissions(&data, std::fs::Permissions::from_mode(0o700)).unwrap();
    let out = CmdOutput {
        code: output.status.code().unwrap_or(-1),
        stdout: String::from_utf8_lossy(&output.stdout).into_owned(),
        stderr: String::from_utf8_lossy(&output.stderr).into_owned(),
    };
    let report: Value = serde_json::from_str(&out.stdout)
        .unwrap_or_else(|e| panic!("doctor --json is not JSON ({e}): {out:?}"));
    let (message, hint) = assert_fails(&out, &report, "data_dir");
    assert!(message.contains("not writable"), "{report:#}");
    assert!(hint.contains("chown"), "{report:#}");
}

#[test]
fn bad_config_fails_with_the_message() {
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("keel.toml");
    std::fs::write(
        &config,
        "[server]\nlisten = \"127.0.0.1:0\"\nlisten_backlog = 5\n",
    )
    .unwrap();
    let (out, report) = doctor_json(&config);
    let (message, hint) = assert_fails(&out, &report, "config");
    assert!(message.contains("listen_backlog"), "{report:#}");
    assert!(hint.contains("keel config check"), "{report:#}");
    // Nothing that needs the configuration pretends to have checked.
    assert_eq!(status(&report, "database"), "skip", "{report:#}");

    let text = run_keel(&["doctor", "--config", config.to_str().unwrap()], &[]);
    assert_eq!(text.code, 1, "{text:?}");
    assert!(text.stdout.contains("fail  config"), "{text:?}");
    assert!(text.stdout.contains("hint: "), "{text:?}");
}

#[test]
fn secret_file_readable_by_others_fails_with_chmod_hint() {
    let (dir, data) = healthy_data_dir();
    let secret = data.join("key-hash.secret");
    std::fs::set_permissions(&secret, std::fs::Permissions::from_mode(0o644)).unwrap();
    let config = write_config(dir.path(), &data, "127.0.0.1:0");
    let (out, report) = doctor_json(&config);
    let (message, hint) = assert_fails(&out, &report, "secret_files");
    assert!(message.contains("0644"), "{report:#}");
    assert_eq!(hint, format!("chmod 600 {}", secret.display()));
    // The other checks still pass: only the broken thing is reported.
    assert_eq!(status(&report, "audit"), "ok", "{report:#}");
}

#[test]
fn tampered_audit_entry_fails_naming_its_seq() {
    let (dir, data) = healthy_data_dir();
    let seq = {
        let db = redb::Database::create(data.join("keel.redb")).unwrap();
        let tx = db.begin_write().unwrap();
        let seq = {
            let mut table = tx
                .open_table(keel::store::tables::audit::AUDIT_ENTRIES)
                .unwrap();
            let (seq, mut entry) = {
                let (k, v) = table.first().unwrap().expect("an audit entry");
                let entry: keel::audit::Entry = keel::store::codec::decode(
                    keel::store::tables::audit::AUDIT_ENTRIES.name(),
                    k.value(),
                    v.value(),
                )
                .unwrap();
                (k.value(), entry)
            };
            entry.action = "nothing.to.see".into();
            table
                .insert(seq, keel::store::codec::encode(&entry).as_slice())
                .unwrap();
            seq
        };
        tx.commit().unwrap();
        seq
    };
    let config = write_config(dir.path(), &data, "127.0.0.1:0");
    let (out, report) = doctor_json(&config);
    let (message, hint) = assert_fails(&out, &report, "audit");
    assert!(message.contains(&format!("seq {seq}")), "{report:#}");
    assert!(hint.contains("changed outside keel"), "{report:#}");
}

#[test]
fn database_from_a_newer_keel_fails() {
    let (dir, data) = healthy_data_dir();
    keel::store::force_schema_version(&data.join("keel.redb"), keel::store::SCHEMA_VERSION + 1)
        .unwrap();
    let config = write_config(dir.path(), &data, "127.0.0.1:0");
    let (out, report) = doctor_json(&config);
    let (message, hint) = assert_fails(&out, &report, "schema");
    assert!(message.contains("newer"), "{report:#}");
    assert!(hint.contains("newer keel"), "{report:#}");
}

/// Under a umask that would leave everything world-readable, keel still creates its data dir
/// 0700 and every file in it 0600; doctor warns once someone loosens them.
#[test]
fn files_are_private_whatever_the_umask_and_doctor_warns_on_looser_modes() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("nested").join("data");
    let mut cmd = KeelProcess::command(&data);
    // SAFETY: umask is async-signal-safe and only changes this child's file creation mask.
    unsafe {
        cmd.pre_exec(|| {
            libc::umask(0);
            Ok(())
        });
    }
    let keel = KeelProcess::start(cmd, &data).expect("keel starts");
    assert_eq!(keel.terminate(), 0);
    let mode = |path: &Path| std::fs::metadata(path).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode(&data), 0o700, "data dir");
    let mut files = Vec::new();
    for entry in std::fs::read_dir(&data).unwrap() {
        let path = entry.unwrap().path();
        assert_eq!(mode(&path), 0o600, "{}", path.display());
        files.push(path.file_name().unwrap().to_string_lossy().into_owned());
    }
    for expected in ["keel.redb", "key-hash.secret", "initial-admin-key"] {
        assert!(
            files.iter().any(|f| f == expected),
            "{expected} in {files:?}"
        );
    }
    assert!(files.len() >= 4, "the signing key too: {files:?}");

    let config = write_config(dir.path(), &data, "127.0.0.1:0");
    let (out, report) = doctor_json(&config);
    assert_eq!(out.code, 0, "{report:#}");
    assert_eq!(status(&report, "file_modes"), "ok", "{report:#}");

    std::fs::set_permissions(&data, std::fs::Permissions::from_mode(0o755)).unwrap();
    let db = data.join("keel.redb");
    std::fs::set_permissions(&db, std::fs::Permissions::from_mode(0o644)).unwrap();
    let (out, report) = doctor_json(&config);
    assert_eq!(out.code, 0, "a looser mode is a warning: {report:#}");
    let c = check(&report, "file_modes");
    assert_eq!(c["status"], "warn", "{report:#}");
    let message = c["message"].as_str().unwrap();
    assert!(
        message.contains("0755") && message.contains("0644"),
        "{message}"
    );
    assert_eq!(
        c["hint"].as_str().unwrap(),
        format!("chmod 700 {} && chmod 600 {}", data.display(), db.display())
    );
}
