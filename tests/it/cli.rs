//! The real `keel` binary: version, help and completions; `config check` and its errors;
//! `serve` refusing bad configs, a data dir in use and a newer schema; `keys` offline and
//! through the running server; `healthcheck`; `audit verify` offline.

use std::io::{BufRead, BufReader};
use std::path::Path;
use std::process::Stdio;

use serde_json::{Value, json};

use crate::support::{CmdOutput, KeelProcess, keel_cmd, request, run_keel};

/// Runs `keel args…`, which must exit without ever serving; if it starts serving it is killed
/// and the test fails (so a wrong outcome can never hang the suite).
fn run_keel_expecting_exit(args: &[&str], env: &[(&str, &str)]) -> CmdOutput {
    let mut cmd = keel_cmd();
    cmd.args(args)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    for (k, v) in env {
        cmd.env(k, v);
    }
    let mut child = cmd.spawn().expect("spawn keel");
    let stderr = child.stderr.take().expect("stderr");
    let mut lines = Vec::new();
    for line in BufReader::new(stderr).lines().map_while(Result::ok) {
        if line.contains("keel is serving") {
            let _ = child.kill();
            let _ = child.wait();
            panic!(
                "keel {args:?} started serving instead of exiting:\n{}",
                lines.join("\n")
            );
        }
        lines.push(line);
    }
    let out = child.wait_with_output().expect("wait for keel");
    CmdOutput {
        code: out.status.code().unwrap_or(-1),
        stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
        stderr: lines.join("\n"),
    }
}

fn write_file(dir: &Path, name: &str, text: &str) -> String {
    let path = dir.join(name);
    std::fs::write(&path, text).expect("write file");
    path.display().to_string()
}

/// `data_dir = "<dir>"` as a TOML line.
fn data_dir_line(dir: &Path) -> String {
    format!(
        "data_dir = {}\n",
        toml::Value::String(dir.display().to_string())
    )
}

/// The value printed after `label` (e.g. `id:`) in `keel keys` output.
fn printed(out: &CmdOutput, label: &str) -> String {
    out.stdout
        .lines()
        .find_map(|l| l.strip_prefix(label))
        .map(|v| v.trim().to_string())
        .unwrap_or_else(|| panic!("no `{label}` in output: {out:?}"))
}

fn assert_ok(out: &CmdOutput, what: &str) {
    assert_eq!(out.code, 0, "{what}: {out:?}");
}

#[test]
fn version_help_and_completions() {
    let out = run_keel(&["version"], &[]);
    assert_ok(&out, "version");
    assert_eq!(out.stdout.trim(), format!("keel {}", keel::app::VERSION));

    let out = run_keel(&["--help"], &[]);
    assert_ok(&out, "--help");
    for command in [
        "serve",
        "config",
        "audit",
        "keys",
        "healthcheck",
        "completions",
    ] {
        assert!(
            out.stdout.contains(command),
            "--help lacks {command}: {out:?}"
        );
    }

    let out = run_keel(&["completions", "bash"], &[]);
    assert_ok(&out, "completions");
    assert!(out.stdout.contains("_keel()"), "{}", out.stdout);
    assert!(out.stdout.contains("complete"), "{}", out.stdout);
    assert!(out.stdout.contains("healthcheck"), "{}", out.stdout);

    let out = run_keel(&["completions", "no-such-shell"], &[]);
    assert_eq!(out.code, 2, "{out:?}");
}

#[test]
fn config_check_prints_the_effective_layers_and_hides_secrets() {
    let out = run_keel(&["config", "check"], &[]);
    assert_ok(&out, "config check");
    assert!(
        out.stdout.contains(r#"listen = "127.0.0.1:8080""#),
        "{}",
        out.stdout
    );
    assert!(
        out.stdout.contains(r#"data_dir = "./keel-data""#),
        "{}",
        out.stdout
    );

    // File over defaults, environment over file.
    let dir = tempfile::tempdir().unwrap();
    let file = write_file(
        dir.path(),
        "keel.toml",
        "[server]\nlisten = \"127.0.0.1:9999\"\n[store]\nmax_batch = 7\n",
    );
    let out = run_keel(&["config", "check"], &[("KEEL_CONFIG", &file)]);
    assert_ok(&out, "KEEL_CONFIG");
    assert!(
        out.stdout.contains(r#"listen = "127.0.0.1:9999""#),
        "{}",
        out.stdout
    );
    assert!(out.stdout.contains("max_batch = 7"), "{}", out.stdout);
    let out = run_keel(
        &["config", "check", "--config", &file],
        &[("KEEL_SERVER__LISTEN", "127.0.0.1:7777")],
    );
    assert_ok(&out, "env over file");
    assert!(
        out.stdout.contains(r#"listen = "127.0.0.1:7777""#),
        "{}",
        out.stdout
    );
    assert!(out.stdout.contains("max_batch = 7"), "{}", out.stdout);

    let secret = write_file(dir.path(), "secret", "s3cret-value\n");
    let out = run_keel(
        &["config", "check"],
        &[("KEEL_AUTH__KEY_HASH_SECRET_FILE", &secret)],
    );
    assert_ok(&out, "secret file");
    assert!(
        out.stdout.contains(r#"key_hash_secret = "***""#),
        "{}",
        out.stdout
    );
    assert!(!out.stdout.contains("s3cret-value") && !out.stderr.contains("s3cret-value"));
}

#[test]
fn config_errors_exit_2_and_say_where() {
    let dir = tempfile::tempdir().unwrap();
    let unknown = write_file(
        dir.path(),
        "unknown.toml",
        "[server]\nlisten = \"127.0.0.1:9000\"\nlisen = \"x\"\n",
    );
    let out = run_keel(&["config", "check", "--config", &unknown], &[]);
    assert_eq!(out.code, 2, "{out:?}");
    assert!(out.stderr.contains("lisen"), "{}", out.stderr);
    assert!(out.stderr.contains("unknown.toml:3:"), "{}", out.stderr);

    let bad_type = write_file(dir.path(), "type.toml", "[store]\nmax_batch = \"lots\"\n");
    let out = run_keel(&["config", "check", "--config", &bad_type], &[]);
    assert_eq!(out.code, 2, "{out:?}");
    assert!(out.stderr.contains("store.max_batch"), "{}", out.stderr);
    assert!(out.stderr.contains("type.toml:2:"), "{}", out.stderr);

    let out_of_range = write_file(dir.path(), "range.toml", "[store]\nmax_batch = 0\n");
    let out = run_keel(&["config", "check", "--config", &out_of_range], &[]);
    assert_eq!(out.code, 2, "{out:?}");
    assert!(out.stderr.contains("store.max_batch"), "{}", out.stderr);

    let out = run_keel(
        &["config", "check", "--config", "/nonexistent/keel.toml"],
        &[],
    );
    assert_eq!(out.code, 2, "{out:?}");
    assert!(
        out.stderr.contains("/nonexistent/keel.toml"),
        "{}",
        out.stderr
    );

    let out = run_keel(&["config", "check"], &[("KEEL_SERVER__LISTEN", "nonsense")]);
    assert_eq!(out.code, 2, "{out:?}");
    assert!(out.stderr.contains("KEEL_SERVER__LISTEN"), "{}", out.stderr);

    let out = run_keel(
        &["config", "check"],
        &[("KEEL_SERVER__LISTN", "127.0.0.1:1")],
    );
    assert_eq!(out.code, 2, "{out:?}");
    assert!(out.stderr.contains("KEEL_SERVER__LISTN"), "{}", out.stderr);
}

#[test]
fn serve_refuses_a_bad_config_and_a_data_dir_in_use() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let data_arg = data.display().to_string();
    let bad = write_file(dir.path(), "bad.toml", "[server]\nlisen = 1\n");
    let out = run_keel_expecting_exit(
        &[
            "serve",
            "--config",
            &bad,
            "--listen",
            "127.0.0.1:0",
            "--data-dir",
            &data_arg,
        ],
        &[],
    );
    assert_eq!(out.code, 2, "{out:?}");
    assert!(out.stderr.contains("lisen"), "{}", out.stderr);
    assert!(!data.exists(), "a refused config touched the data dir");

    let proc = KeelProcess::spawn(&data, &[]).expect("first keel serves");
    let out = run_keel_expecting_exit(
        &["serve", "--listen", "127.0.0.1:0", "--data-dir", &data_arg],
        &[],
    );
    assert_ne!(out.code, 0, "{out:?}");
    assert!(out.stderr.contains("in use"), "{}", out.stderr);
    // The first one is unaffected.
    let r = request(&proc.base, "GET", "/ready", None, None);
    assert_eq!(r.status, 200, "{}", r.body);
    assert_eq!(proc.terminate(), 0);
}

/// Keys created, rotated and revoked offline work once the server runs; with the server
/// running the same commands go through its API under the given admin key.
#[test]
fn keys_work_offline_and_through_the_running_server() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let config = write_file(dir.path(), "keel.toml", &data_dir_line(&data));
    let keel = |args: &[&str], env: &[(&str, &str)]| {
        let mut all = vec!["--config", config.as_str()];
        all.extend_from_slice(args);
        run_keel_expecting_exit(&all, env)
    };

    // Offline.
    let out = keel(
        &["keys", "create", "--name", "deployer", "--role", "operator"],
        &[],
    );
    assert_ok(&out, "create");
    let op_id = printed(&out, "id:");
    let op_token = printed(&out, "key:");
    assert!(op_token.starts_with("keel_"), "{out:?}");
    assert_eq!(printed(&out, "role:"), "operator");

    let out = keel(&["keys", "list"], &[]);
    assert_ok(&out, "list");
    let line = out
        .stdout
        .lines()
        .find(|l| l.starts_with(&op_id))
        .unwrap_or_else(|| panic!("{out:?}"));
    assert!(
        line.contains("operator") && line.contains("deployer"),
        "{line}"
    );
    assert!(!out.stdout.contains(&op_token[40..]), "list shows a secret");

    let out = keel(&["keys", "rotate", &op_id, "--overlap", "1h"], &[]);
    assert_ok(&out, "rotate");
    let op2_id = printed(&out, "id:");
    let op2_token = printed(&out, "key:");
    assert_ne!(op2_id, op_id);

    let out = keel(
        &["keys", "create", "--name", "gone", "--role", "viewer"],
        &[],
    );
    assert_ok(&out, "create viewer");
    let gone_id = printed(&out, "id:");
    let gone_token = printed(&out, "key:");
    let out = keel(&["keys", "revoke", &gone_id], &[]);
    assert_ok(&out, "revoke");
    assert_eq!(printed(&out, "status:"), "revoked");

    let out = keel(
        &[
            "keys",
            "create",
            "--name",
            "forever",
            "--role",
            "viewer",
            "--expires-in",
            "20000000000000000s",
        ],
        &[],
    );
    assert_eq!(out.code, 2, "an absurdly long lifetime is refused: {out:?}");
    assert!(out.stderr.contains("5 years"), "{}", out.stderr);
    for (lifetime, says) in [
        ("90", "has no unit: write 90s, 90m, 90h or 90d"),
        ("1827d", "5 years"),
        ("0d", "at once"),
        ("3w", "unknown unit `w`"),
    ] {
        let out = keel(
            &[
                "keys",
                "create",
                "--name",
                "unitless",
                "--role",
                "viewer",
                "--expires-in",
                lifetime,
            ],
            &[],
        );
        assert_eq!(out.code, 2, "--expires-in {lifetime}: {out:?}");
        assert!(out.stderr.contains(says), "{lifetime}: {}", out.stderr);
    }
    let out = keel(
        &[
            "keys",
            "create",
            "--name",
            "forever",
            "--role",
            "viewer",
            "--expires-in",
            "1826d",
        ],
        &[],
    );
    assert_ok(&out, "a five-year lifetime");
    let forever_token = printed(&out, "key:");

    let out = keel(&["keys", "create", "--name", "ops", "--role", "admin"], &[]);
    assert_ok(&out, "create admin");
    let admin_id = printed(&out, "id:");
    let admin = printed(&out, "key:");

    let out = keel(
        &["keys", "create", "--name", "x", "--role", "superuser"],
        &[],
    );
    assert_eq!(out.code, 2, "{out:?}");
    assert!(out.stderr.contains("superuser"), "{}", out.stderr);
    let unknown = uuid::Uuid::now_v7().to_string();
    for args in [
        vec!["keys", "revoke", unknown.as_str()],
        vec!["keys", "rotate", unknown.as_str()],
    ] {
        let out = keel(&args, &[]);
        assert_eq!(
            out.code, 1,
            "an unknown key is a failure: {args:?}: {out:?}"
        );
        assert!(out.stderr.contains(&unknown), "{}", out.stderr);
    }
    let out = keel(&["keys", "revoke", "nope"], &[]);
    assert_eq!(out.code, 2, "{out:?}");
    assert!(
        out.stderr.contains("expected a key id (UUID), got `nope`"),
        "{}",
        out.stderr
    );
    let out = keel(&["keys", "rotate", &op2_id, "--overlap", "31d"], &[]);
    assert_eq!(out.code, 2, "{out:?}");
    assert!(out.stderr.contains("30 days"), "{}", out.stderr);

    // The server starts on that data dir; it makes no initial admin key since keys exist.
    let proc = KeelProcess::spawn(&data, &[]).expect("keel serves");
    assert!(!data.join("initial-admin-key").exists());
    let status = |token: &str| request(&proc.base, "GET", "/api/v1/system", Some(token), None);
    assert_eq!(status(&op2_token).status, 200);
    assert_eq!(status(&op_token).status, 200, "old key within its overlap");
    assert_eq!(status(&forever_token).status, 200);
    let r = status(&gone_token);
    assert_eq!(r.status, 401, "{}", r.body);
    assert_eq!(r.error_code(), "key_revoked");
    let audit = |after: u64| {
        let r = request(
            &proc.base,
            "GET",
            &format!("/api/v1/audit?after={after}"),
            Some(&admin),
            None,
        );
        assert_eq!(r.status, 200, "{}", r.body);
        r.json()["entries"].as_array().unwrap().clone()
    };
    let offline: Vec<Value> = audit(0);
    let actions: Vec<&str> = offline
        .iter()
        .map(|e| e["action"].as_str().unwrap())
        .collect();
    assert_eq!(
        actions,
        [
            "key.create",
            "key.rotate",
            "key.create",
            "key.revoke",
            "key.create",
            "key.create"
        ]
    );
    assert!(
        offline.iter().all(|e| e["actor"] == "system"),
        "{offline:?}"
    );
    let seq = offline.len() as u64;

    // Online: without an admin key the CLI says what it needs.
    let url = [("KEEL_URL", proc.base.as_str())];
    let out = keel(&["keys", "list"], &url);
    assert_eq!(out.code, 2, "{out:?}");
    assert!(out.stderr.contains("KEEL_API_KEY"), "{}", out.stderr);

    let env = [
        ("KEEL_URL", proc.base.as_str()),
        ("KEEL_API_KEY", admin.as_str()),
    ];
    let out = keel(&["keys", "list"], &env);
    assert_ok(&out, "remote list");
    assert!(
        out.stdout.contains(&op2_id) && out.stdout.contains(&admin_id),
        "{out:?}"
    );
    let out = keel(
        &["keys", "create", "--name", "remote", "--role", "viewer"],
        &env,
    );
    assert_ok(&out, "remote create");
    let remote_id = printed(&out, "id:");
    let remote_token = printed(&out, "key:");
    assert_eq!(status(&remote_token).status, 200);
    let out = keel(&["keys", "revoke", &remote_id], &env);
    assert_ok(&out, "remote revoke");
    assert_eq!(status(&remote_token).error_code(), "key_revoked");
    let out = keel(&["keys", "rotate", &op2_id, "--overlap", "60s"], &env);
    assert_ok(&out, "remote rotate");
    let out = keel(&["keys", "revoke", &unknown], &env);
    assert_eq!(out.code, 1, "a server's 404 is a failure: {out:?}");
    assert!(out.stderr.contains("404"), "{}", out.stderr);

    let online = audit(seq);
    let got: Vec<(&str, &str, &str)> = online
        .iter()
        .map(|e| {
            (
                e["action"].as_str().unwrap(),
                e["actor"].as_str().unwrap(),
                e["target"].as_str().unwrap(),
            )
        })
        .collect();
    assert_eq!(
        got,
        [
            ("key.create", admin_id.as_str(), remote_id.as_str()),
            ("key.revoke", admin_id.as_str(), remote_id.as_str()),
            ("key.rotate", admin_id.as_str(), op2_id.as_str()),
        ]
    );
    // `--overlap 60s` reached the server: the old key ends 60 s after the rotation.
    let rotated_at = chrono::DateTime::parse_from_rfc3339(online[2]["time"].as_str().unwrap())
        .unwrap()
        .timestamp_millis();
    assert_eq!(
        online[2]["detail"]["old_key_expires_at"].as_i64(),
        Some(rotated_at + 60_000),
        "{}",
        online[2]
    );

    // `ops` is the only admin key: revoking it needs --force.
    let out = keel(&["keys", "revoke", &admin_id], &env);
    assert_eq!(out.code, 1, "{out:?}");
    assert!(
        out.stderr.contains("409") && out.stderr.contains("last active admin key"),
        "{}",
        out.stderr
    );
    assert_eq!(status(&admin).status, 200);
    let out = keel(&["keys", "revoke", &admin_id, "--force"], &env);
    assert_ok(&out, "forced revoke");
    assert_eq!(status(&admin).error_code(), "key_revoked");
    assert_eq!(proc.terminate(), 0);
}

#[test]
fn healthcheck_reports_ready_and_unreachable() {
    let dir = tempfile::tempdir().unwrap();
    let proc = KeelProcess::spawn(dir.path(), &[]).expect("keel serves");
    let out = run_keel(&["healthcheck"], &[("KEEL_URL", &proc.base)]);
    assert_ok(&out, "healthcheck");
    assert_eq!(out.stdout.trim(), "ready");
    let out = run_keel(&["healthcheck", "--url", &proc.base], &[]);
    assert_ok(&out, "healthcheck --url");

    // A port nothing listens on: bound by the OS, then released.
    let free = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = free.local_addr().unwrap();
    drop(free);
    let out = run_keel(&["healthcheck"], &[("KEEL_URL", &format!("http://{addr}"))]);
    assert_ne!(out.code, 0, "{out:?}");
    assert_eq!(out.code, 1, "unreachable is a failed check: {out:?}");
    assert!(out.stderr.contains("cannot reach"), "{}", out.stderr);
    for bad in ["notaurl", "ftp://127.0.0.1:1", "http://"] {
        let out = run_keel(&["healthcheck", "--url", bad], &[]);
        assert_eq!(out.code, 2, "--url {bad}: {out:?}");
        assert!(
            out.stderr.contains("expected an http:// or https:// URL"),
            "{bad}: {}",
            out.stderr
        );
    }
    assert_eq!(proc.terminate(), 0);
}

#[test]
fn audit_verify_runs_offline_and_is_refused_while_serving() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().display().to_string();
    let env = [("KEEL_DATA_DIR", data.as_str())];
    let out = run_keel(&["audit", "verify"], &env);
    assert_eq!(out.code, 2, "no database yet: {out:?}");

    let proc = KeelProcess::spawn(dir.path(), &[]).expect("keel serves");
    let admin = proc.admin_key();
    for role in ["viewer", "operator"] {
        let body = serde_json::to_vec(&json!({"name": role, "role": role})).unwrap();
        let r = request(
            &proc.base,
            "POST",
            "/api/v1/keys",
            Some(&admin),
            Some(("application/json", &body)),
        );
        assert_eq!(r.status, 201, "{}", r.body);
    }

    let out = run_keel(&["audit", "verify"], &env);
    assert_ne!(out.code, 0, "{out:?}");
    assert!(out.stderr.contains("in use"), "{}", out.stderr);

    assert_eq!(proc.terminate(), 0);
    let out = run_keel(&["audit", "verify"], &env);
    assert_ok(&out, "audit verify");
    assert!(out.stdout.starts_with("OK: 3 entries"), "{}", out.stdout);
}

#[test]
fn a_newer_schema_is_refused_and_left_untouched() {
    let dir = tempfile::tempdir().unwrap();
    let proc = KeelProcess::spawn(dir.path(), &[]).expect("keel serves");
    assert_eq!(proc.terminate(), 0);
    let db = dir.path().join("keel.redb");
    keel::store::force_schema_version(&db, keel::store::SCHEMA_VERSION + 1).expect("force");
    let before = std::fs::read(&db).unwrap();

    let data = dir.path().display().to_string();
    let out = run_keel_expecting_exit(
        &["serve", "--listen", "127.0.0.1:0", "--data-dir", &data],
        &[],
    );
    assert_eq!(out.code, 2, "{out:?}");
    assert!(out.stderr.contains("schema version"), "{}", out.stderr);
    assert!(
        out.stderr
            .contains(&(keel::store::SCHEMA_VERSION + 1).to_string()),
        "{}",
        out.stderr
    );
    assert_eq!(
        std::fs::read(&db).unwrap(),
        before,
        "serve changed the file"
    );

    let out = run_keel_expecting_exit(&["keys", "list"], &[("KEEL_DATA_DIR", &data)]);
    assert_eq!(out.code, 2, "{out:?}");
    assert!(out.stderr.contains("schema version"), "{}", out.stderr);
    assert_eq!(
        std::fs::read(&db).unwrap(),
        before,
        "keys list changed the file"
    );
}

/// `keys list`, `dlq stats`, `audit verify` and `doctor` run where no keel lives: they say
/// where they looked and create nothing; `--data-dir` points every one of them at the data.
#[test]
fn read_only_commands_create_nothing_and_take_data_dir() {
    let cwd = tempfile::tempdir().unwrap();
    let run_in_cwd = |args: &[&str]| {
        let mut cmd = keel_cmd();
        cmd.args(args).current_dir(cwd.path());
        let out = cmd.output().expect("run keel");
        CmdOutput {
            code: out.status.code().unwrap_or(-1),
            stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
            stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
        }
    };
    for args in [
        &["keys", "list"][..],
        &["dlq", "stats"],
        &["dlq", "drain", "--max", "10"],
        &["audit", "verify"],
    ] {
        let out = run_in_cwd(args);
        assert_eq!(out.code, 2, "{args:?}: {out:?}");
        assert!(
            out.stderr
                .contains("no keel database at ./keel-data/keel.redb")
                && out.stderr.contains("--data-dir"),
            "{args:?}: {}",
            out.stderr
        );
    }
    let out = run_in_cwd(&["doctor"]);
    assert_eq!(out.code, 0, "{out:?}");
    let left: Vec<_> = std::fs::read_dir(cwd.path()).unwrap().collect();
    assert!(left.is_empty(), "created {left:?}");

    let data = cwd.path().join("elsewhere");
    let proc = KeelProcess::spawn(&data, &[]).expect("keel serves");
    assert_eq!(proc.terminate(), 0);
    let data_arg = data.display().to_string();
    for args in [
        &["keys", "list", "--data-dir", &data_arg][..],
        &["--data-dir", &data_arg, "dlq", "stats"],
        &["audit", "verify", "--data-dir", &data_arg],
        &["doctor", "--data-dir", &data_arg, "--json"],
    ] {
        let out = run_in_cwd(args);
        assert_eq!(out.code, 0, "{args:?}: {out:?}");
    }
    let out = run_in_cwd(&["keys", "list", "--data-dir", &data_arg]);
    assert!(out.stdout.contains("initial-admin"), "{out:?}");
    let out = run_in_cwd(&["doctor", "--data-dir", &data_arg, "--json"]);
    assert!(out.stdout.contains(&data_arg), "{out:?}");
    assert!(!cwd.path().join("keel-data").exists());
}

/// After a kill -9 in the middle of writes, `audit verify` says the database needs crash
/// recovery (exit 3, not the 1 of a failed verification); `--repair` recovers and verifies.
#[test]
fn audit_verify_after_a_kill_says_the_database_needs_recovery() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let proc = KeelProcess::spawn(&data, &[]).expect("keel serves");
    let admin = proc.admin_key();
    let base = proc.base.clone();
    let writer = std::thread::spawn(move || {
        let agent = crate::support::agent();
        let mut acknowledged = 0;
        for i in 0.. {
            let body = json!({"name": format!("k{i}"), "role": "viewer"});
            match crate::support::send(&agent, &base, "POST", "/api/v1/keys", &admin, Some(&body)) {
                Ok(r) if r.status == 201 => acknowledged += 1,
                _ => break,
            }
        }
        acknowledged
    });
    // Let writes flow, then kill while they do.
    crate::support::poll_until("keys were written", || {
        let r = request(
            &proc.base,
            "GET",
            "/api/v1/keys",
            Some(&proc.admin_key()),
            None,
        );
        let n = r.json()["keys"].as_array().map_or(0, Vec::len);
        if n >= 20 {
            Ok(())
        } else {
            Err(format!("{n} keys"))
        }
    });
    proc.kill9();
    assert!(writer.join().unwrap() > 0);

    let data_arg = data.display().to_string();
    let out = run_keel(&["audit", "verify", "--data-dir", &data_arg], &[]);
    assert_eq!(out.code, 3, "{out:?}");
    assert!(
        out.stderr.contains("needs crash recovery")
            && out.stderr.contains("keel audit verify --repair"),
        "{}",
        out.stderr
    );
    let out = run_keel(
        &["audit", "verify", "--repair", "--data-dir", &data_arg],
        &[],
    );
    assert_eq!(out.code, 0, "{out:?}");
    assert!(out.stdout.contains("OK: "), "{out:?}");
    let out = run_keel(&["audit", "verify", "--data-dir", &data_arg], &[]);
    assert_eq!(out.code, 0, "recovered once, verified read-only: {out:?}");
}

/// Invalid profile files: `serve` refuses to start, and `config check` and `doctor` fail with
/// the very same message instead of calling the configuration valid.
#[test]
fn config_check_and_doctor_refuse_what_serve_refuses() {
    let dir = tempfile::tempdir().unwrap();
    let profiles = dir.path().join("profiles");
    std::fs::create_dir(&profiles).unwrap();
    std::fs::write(profiles.join("profiles.json"), "{not json").unwrap();
    std::fs::write(profiles.join("runProfiles.json"), "[]").unwrap();
    let data = dir.path().join("data");
    let config = write_file(
        dir.path(),
        "keel.toml",
        &format!(
            "{}[cycles]\nprofiles_dir = {}\n",
            data_dir_line(&data),
            toml::Value::String(profiles.display().to_string())
        ),
    );
    let serve = run_keel_expecting_exit(
        &["serve", "--config", &config, "--listen", "127.0.0.1:0"],
        &[],
    );
    assert_eq!(serve.code, 2, "{serve:?}");
    let at = serve
        .stderr
        .find("keel: ")
        .unwrap_or_else(|| panic!("no refusal in {serve:?}"));
    let refusal = serve.stderr[at + "keel: ".len()..].trim().to_string();
    assert!(refusal.contains("profiles.json"), "{refusal}");

    let check = run_keel(&["config", "check", "--config", &config], &[]);
    assert_eq!(check.code, 2, "{check:?}");
    assert!(!check.stdout.contains("valid"), "{check:?}");
    assert!(
        check.stderr.contains(&format!("keel: {refusal}")),
        "serve said `{refusal}`; config check said {}",
        check.stderr
    );

    let doctor = run_keel(&["doctor", "--json", "--config", &config], &[]);
    assert_eq!(doctor.code, 1, "{doctor:?}");
    let report: Value = serde_json::from_str(&doctor.stdout).unwrap();
    let config_check = report["checks"]
        .as_array()
        .unwrap()
        .iter()
        .find(|c| c["name"] == "config")
        .unwrap();
    assert_eq!(config_check["status"], "fail", "{report:#}");
    assert!(
        config_check["message"]
            .as_str()
            .unwrap()
            .starts_with(&refusal),
        "serve said `{refusal}`; doctor said {config_check}"
    );
    assert!(!data.exists(), "nothing was created");
}

/// A port in use: the error is printed once and nothing is created. A first start logs one
/// "created store" line (no "migrated" lines) and the dashboard's URL; `GET /` leads there.
#[test]
fn start_up_binds_first_creates_quietly_and_points_at_the_dashboard() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = taken.local_addr().unwrap().to_string();
    let out = run_keel_expecting_exit(
        &[
            "serve",
            "--listen",
            &addr,
            "--data-dir",
            data.to_str().unwrap(),
        ],
        &[],
    );
    assert_eq!(out.code, 1, "{out:?}");
    assert_eq!(
        out.stderr.matches("Address already in use").count(),
        1,
        "printed once: {}",
        out.stderr
    );
    assert!(out.stderr.contains(&addr), "{}", out.stderr);
    assert!(!data.exists(), "a failed bind created {}", data.display());
    drop(taken);

    let proc = KeelProcess::spawn(&data, &[]).expect("keel serves");
    let log = proc.log.lock().unwrap().clone();
    let messages: Vec<String> = log
        .iter()
        .filter_map(|l| serde_json::from_str::<Value>(l).ok())
        .filter_map(|v| v["fields"]["message"].as_str().map(str::to_string))
        .collect();
    assert_eq!(
        messages.iter().filter(|m| *m == "created store").count(),
        1,
        "{messages:?}"
    );
    assert!(
        !messages.iter().any(|m| m.contains("migrated")),
        "{messages:?}"
    );
    let serving = log
        .iter()
        .find(|l| l.contains("keel is serving"))
        .expect("serving line");
    let serving: Value = serde_json::from_str(serving).unwrap();
    assert_eq!(
        serving["fields"]["dashboard"],
        format!("{}/admin", proc.base),
        "{serving}"
    );
    let agent: ureq::Agent = ureq::Agent::config_builder()
        .max_redirects(0)
        .http_status_as_error(false)
        .proxy(None)
        .build()
        .into();
    let r = agent.get(&format!("{}/", proc.base)).call().unwrap();
    assert_eq!(r.status(), 307);
    assert_eq!(
        r.headers().get("location").and_then(|v| v.to_str().ok()),
        Some("/admin")
    );
    assert_eq!(proc.terminate(), 0);
}
