//! Crash resume of cycles with the real `keel` binary: the process kills itself (SIGKILL) at
//! named points (`KEEL_CRASH_AT=<stage>` after a stage's checkpoint is durable,
//! `before:<stage>` just before it commits), and is also SIGKILLed from outside at random
//! moments; each restart resumes every unfinished cycle at its last checkpoint. Every cycle
//! ends with exactly one checkpoint per stage, makes exactly one task per step and endpoint,
//! and the receiver's set of `webhook-id`s equals the set derived from (cycle, stage, key).

use std::collections::{BTreeSet, HashMap};
use std::os::unix::process::ExitStatusExt;
use std::time::{Duration, Instant};

use keel::cycles::model::Stage;
use serde_json::{Value, json};

use crate::cycles::{STAGES, write_profiles};
use crate::receiver::Receiver;
use crate::support::{KeelProcess, Rng, agent, poll_until, send};

/// Standard Webhooks secret of the `backup` endpoint.
const SECRET: &str = "whsec_C2FVsBQIhrscChlQIMV+b5sSYspob7oD";

/// The named crash points, in the order they are tried.
const CRASH_POINTS: [&str; 7] = [
    "initiation",
    "tier1",
    "before:tier2",
    "normalization",
    "before:dispatch_enqueued",
    "dispatch_enqueued",
    "dispatch_complete",
];

/// Cycles started in the random-SIGKILL phase.
const RANDOM_CYCLES: usize = 4;
/// SIGKILLs from outside in that phase.
const RANDOM_KILLS: usize = 5;

fn spawn(data: &std::path::Path, toml: &std::path::Path, crash_at: Option<&str>) -> KeelProcess {
    let mut env = vec![("KEEL_CONFIG", toml.to_str().unwrap())];
    if let Some(point) = crash_at {
        env.push(("KEEL_CRASH_AT", point));
    }
    KeelProcess::spawn(data, &env).unwrap_or_else(|log| panic!("keel did not start:\n{log}"))
}

/// Triggers run profile r1 at `slot`; the answer may be lost when the process dies.
fn trigger(base: &str, key: &str, slot: &str) -> Result<(u16, Value), String> {
    let r = send(
        &agent(),
        base,
        "POST",
        "/api/v1/cycles/trigger",
        key,
        Some(&json!({"run_profile_id": "r1", "slot": slot})),
    )?;
    let v: Value = serde_json::from_str(&r.body).map_err(|e| format!("{e}: {}", r.body))?;
    Ok((r.status, v))
}

/// Waits up to a minute for the process to end by itself; returns how it ended.
fn wait_exit(proc: &mut KeelProcess) -> std::process::ExitStatus {
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        if let Some(status) = proc.child.try_wait().expect("wait") {
            return status;
        }
        assert!(
            Instant::now() < deadline,
            "keel did not crash at its crash point"
        );
        std::thread::sleep(Duration::from_millis(10));
    }
}

fn cycle_detail(base: &str, key: &str, id: &str) -> Value {
    let r = send(
        &agent(),
        base,
        "GET",
        &format!("/api/v1/cycles/{id}"),
        key,
        None,
    )
    .unwrap();
    assert_eq!(r.status, 200, "{}", r.body);
    serde_json::from_str(&r.body).unwrap()
}

fn wait_finished(base: &str, key: &str, id: &str) -> Value {
    poll_until(&format!("cycle {id} to finish"), || {
        let d = cycle_detail(base, key, id);
        match d["cycle"]["status"].as_str() {
            Some("finished") => Ok(d),
            Some("running") => Err(format!("at {}", d["stage"])),
            other => panic!("cycle {id} ended {other:?}: {d}"),
        }
    })
}

/// The webhook-ids a finished cycle must have delivered: its tier-1 http step and one
/// dispatch per endpoint.
fn expected_ids(id: &str) -> Vec<String> {
    let cycle: uuid::Uuid = id.parse().unwrap();
    vec![
        format!(
            "msg_{}",
            keel::cycles::step_task_id(cycle, Stage::Tier1, 0).simple()
        ),
        keel::cycles::dispatch_webhook_id(cycle, "aurora"),
        keel::cycles::dispatch_webhook_id(cycle, "backup"),
    ]
}

fn check_cycle(detail: &Value) {
    let stages: Vec<&str> = detail["checkpoints"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| c["stage"].as_str().unwrap())
        .collect();
    assert_eq!(stages, STAGES, "one checkpoint per stage: {detail}");
    for d in detail["dispatches"].as_array().unwrap() {
        assert_eq!(d["outcome"], "delivered", "{d}");
    }
}

/// Tasks of a type, counted per id.
fn tasks_of(base: &str, key: &str, task_type: &str) -> HashMap<String, String> {
    let r = send(
        &agent(),
        base,
        "GET",
        &format!("/api/v1/tasks?type={task_type}&limit=1000"),
        key,
        None,
    )
    .unwrap();
    let v: Value = serde_json::from_str(&r.body).unwrap();
    v["tasks"]
        .as_array()
        .unwrap()
        .iter()
        .map(|t| {
            (
                t["id"].as_str().unwrap().to_string(),
                t["status"].as_str().unwrap().to_string(),
            )
        })
        .collect()
}

#[test]
fn cycles_resume_at_their_last_checkpoint_after_sigkill_at_named_points() {
    let receiver = Receiver::start_deduplicating();
    let dir = tempfile::tempdir().unwrap();
    let profiles = dir.path().join("profiles");
    write_profiles(
        &profiles,
        &json!([{
            "profile_id": "p1", "label": "crash", "state": "enabled",
            "execution_rules": {
                "tier1": [{"name": "enrich", "handler": "enrich"}],
                "tier2": [{"name": "copy", "handler": "copy"}]
            }
        }]),
        &json!([{
            "run_profile_id": "r1", "profile_id": "p1", "state": "enabled",
            "namespace": "crash", "distribution_targets": ["aurora", "backup"]
        }]),
    );
    let url = receiver.url();
    let toml = dir.path().join("keel.toml");
    std::fs::write(
        &toml,
        format!(
            r#"
[queue]
backoff_base_ms = 20
backoff_max_seconds = 1
max_attempts = 100

[cycles]
profiles_dir = "{profiles}"
schedule = ""

[dispatch]
max_retries = 100

[dispatch.endpoints.aurora]
url = "{url}?e=aurora"
token = "tok-aurora"

[dispatch.endpoints.backup]
url = "{url}?e=backup"
signing_secret = "{SECRET}"

[handlers.enrich]
kind = "http"
url = "{url}?step=enrich"

[handlers.copy]
kind = "command"
program = "/bin/cat"
"#,
            profiles = profiles.display()
        ),
    )
    .unwrap();
    let data = dir.path().join("data");

    // First start writes the admin key.
    let proc = spawn(&data, &toml, None);
    let key = proc.admin_key();
    assert_eq!(proc.terminate(), 0);

    let mut cycles: Vec<String> = Vec::new();
    for (k, point) in CRASH_POINTS.iter().enumerate() {
        let slot = format!("2026-01-01T00:{k:02}:00Z");
        let mut proc = spawn(&data, &toml, Some(point));
        let first = trigger(&proc.base, &key, &slot);
        let status = wait_exit(&mut proc);
        assert_eq!(
            status.signal(),
            Some(9),
            "{point}: keel should have killed itself, ended {status:?}; log:\n{}",
            proc.log.lock().unwrap().join("\n")
        );
        poll_until("the crash point's message", || {
            let log = proc.log.lock().unwrap().join("\n");
            log.contains(&format!("KEEL_CRASH_AT={point}"))
                .then_some(())
                .ok_or(log)
        });
        drop(proc);

        // Paused by configuration, the restarted keel resumes nothing: the cycle shows the
        // last checkpoint that was durable when the process died.
        let paused = KeelProcess::spawn(
            &data,
            &[
                ("KEEL_CONFIG", toml.to_str().unwrap()),
                ("KEEL_GOVERNANCE__GLOBAL_PAUSE", "true"),
            ],
        )
        .unwrap_or_else(|log| panic!("keel did not start:\n{log}"));
        let r = send(
            &agent(),
            &paused.base,
            "GET",
            "/api/v1/cycles/recent?limit=100",
            &key,
            None,
        )
        .unwrap();
        let recent: Value = serde_json::from_str(&r.body).unwrap();
        let cycle = recent["cycles"]
            .as_array()
            .unwrap()
            .iter()
            .find(|c| c["slot"] == slot.as_str())
            .unwrap_or_else(|| panic!("{point}: no cycle for {slot}: {recent}"))
            .clone();
        let expected_stage = match point.strip_prefix("before:") {
            Some(stage) => STAGES[STAGES.iter().position(|s| *s == stage).unwrap() - 1],
            None => point,
        };
        assert_eq!(cycle["stage"], expected_stage, "{point}: {cycle}");
        assert_eq!(cycle["status"], "running");
        assert_eq!(paused.terminate(), 0);

        let proc = spawn(&data, &toml, None);
        let (status, v) = trigger(&proc.base, &key, &slot).unwrap();
        assert_eq!(status, 200, "{point}: the cycle survived the crash: {v}");
        assert_eq!(v["created"], false);
        let id = v["cycle_run_id"].as_str().unwrap().to_string();
        if let Ok((_, before)) = &first {
            assert_eq!(before["cycle_run_id"], id.as_str(), "{point}");
        }
        let detail = wait_finished(&proc.base, &key, &id);
        check_cycle(&detail);
        assert_eq!(
            detail["checkpoints"][6]["webhook_ids"],
            json!(expected_ids(&id)[1..]),
            "{point}: webhook-ids stored with the dispatch checkpoint"
        );
        cycles.push(id);
        assert_eq!(proc.terminate(), 0, "{point}: clean stop");
    }

    // SIGKILL from outside at random moments while several cycles run.
    let mut rng =
        Rng::for_test("cycles_resume_at_their_last_checkpoint_after_sigkill_at_named_points");
    let mut proc = spawn(&data, &toml, None);
    let mut random_ids = Vec::new();
    for n in 0..RANDOM_CYCLES {
        let (_, v) = trigger(&proc.base, &key, &format!("2026-01-02T00:00:{n:02}Z")).unwrap();
        random_ids.push(v["cycle_run_id"].as_str().unwrap().to_string());
    }
    for _ in 0..RANDOM_KILLS {
        std::thread::sleep(Duration::from_millis(rng.between(5, 64)));
        proc.kill9();
        proc = spawn(&data, &toml, None);
    }
    for id in &random_ids {
        check_cycle(&wait_finished(&proc.base, &key, id));
    }
    cycles.extend(random_ids);

    // One task per step and per endpoint, all succeeded; nothing left behind.
    let n = cycles.len();
    for (task_type, per_cycle) in [("enrich", 1), ("copy", 1), ("cycle-dispatch", 2)] {
        let tasks = tasks_of(&proc.base, &key, task_type);
        assert_eq!(tasks.len(), n * per_cycle, "{task_type}: {tasks:?}");
        assert!(
            tasks.values().all(|s| s == "succeeded"),
            "{task_type}: {tasks:?}"
        );
    }

    // The receiver's webhook-ids are exactly the derived ones; extra requests only repeated one.
    let expected: BTreeSet<String> = cycles.iter().flat_map(|id| expected_ids(id)).collect();
    let deliveries = receiver.deliveries();
    let got: BTreeSet<String> = deliveries
        .iter()
        .map(|d| d.webhook_id().to_string())
        .collect();
    assert_eq!(got, expected);
    assert_eq!(deliveries.len(), expected.len());
    assert_eq!(
        receiver.received(),
        deliveries.len() + receiver.duplicates()
    );
    for d in &deliveries {
        if d.path.ends_with("e=backup") {
            let timestamp: i64 = d.header("webhook-timestamp").unwrap().parse().unwrap();
            let signature = keel::exec::http::standard_webhooks_signature(
                SECRET,
                d.webhook_id(),
                timestamp,
                &d.body,
            );
            assert_eq!(d.header("webhook-signature"), signature.as_deref());
        } else if d.path.ends_with("e=aurora") {
            assert_eq!(d.header("authorization"), Some("Bearer tok-aurora"));
        }
    }
    println!(
        "cycles crash test: {n} cycles, {} crash points + {RANDOM_KILLS} random SIGKILLs, {} distinct deliveries, {} duplicates",
        CRASH_POINTS.len(),
        deliveries.len(),
        receiver.duplicates()
    );
    assert_eq!(proc.terminate(), 0);
}
