//! Cycles: profile files validated at boot and on reload (every error with its file and JSON
//! pointer), reload refused while a cycle is active, deterministic initiation, catch-up after
//! downtime, the full stage sequence with dispatch through the queue (delivery receipts,
//! `delivery_confirmed`, the DLQ), pause and halt, controlled autonomy, and telemetry
//! retention with its cold archive.

use std::collections::BTreeSet;
use std::io::Read;
use std::path::Path;
use std::sync::Arc;

use keel::app::{App, StartError};
use keel::clock::ManualClock;
use keel::config::Config;
use keel::cycles::CyclesError;
use serde_json::{Value, json};

use crate::receiver::{Mode, Receiver};
use crate::support::{KeelProcess, START_MS, TestApp, poll_until, run_keel, test_config};

/// The stages of a cycle that runs to its end, in order.
pub const STAGES: [&str; 9] = [
    "cycle_started",
    "initiation",
    "tier1",
    "tier2",
    "tier3",
    "normalization",
    "dispatch_enqueued",
    "dispatch_complete",
    "cycle_finished",
];

/// Writes `profiles.json` and `runProfiles.json` into `dir`.
pub fn write_profiles(dir: &Path, profiles: &Value, run_profiles: &Value) {
    std::fs::create_dir_all(dir).unwrap();
    std::fs::write(
        dir.join("profiles.json"),
        serde_json::to_string_pretty(profiles).unwrap(),
    )
    .unwrap();
    std::fs::write(
        dir.join("runProfiles.json"),
        serde_json::to_string_pretty(run_profiles).unwrap(),
    )
    .unwrap();
}

fn handler(value: Value) -> keel::config::HandlerConfig {
    serde_json::from_value(value).unwrap()
}

fn endpoint(url: &str, token: Option<&str>) -> keel::config::DispatchEndpointConfig {
    let mut v = json!({"url": url, "timeout_seconds": 10});
    if let Some(t) = token {
        v["token"] = json!(t);
    }
    serde_json::from_value(v).unwrap()
}

/// Profiles dir in its own temp dir, cron schedules off, fast retries.
fn base(c: &mut Config, profiles: &Path) {
    c.cycles.profiles_dir = profiles.to_path_buf();
    c.cycles.schedule = String::new().into();
    c.queue.backoff_base_ms = 10;
    c.queue.backoff_max_seconds = 1;
}

fn simple_profile(id: &str) -> Value {
    json!({"profile_id": id, "label": format!("Profile {id}"), "state": "enabled",
           "execution_rules": {}, "value_tags": {"tier": "gold"}})
}

fn simple_run_profile(id: &str, profile: &str, ns: &str) -> Value {
    json!({"run_profile_id": id, "profile_id": profile, "state": "enabled", "namespace": ns,
           "value_tags": {"campaign": id, "units": 1}})
}

fn admin_post(app: &TestApp, path: &str, body: &Value) -> crate::support::Resp {
    app.post_json(path, Some(&app.admin_key), body)
}

/// Waits until the cycle has left `running`; returns its detail.
fn wait_cycle(app: &TestApp, id: &str) -> Value {
    poll_until(&format!("cycle {id} to end"), || {
        let r = app.admin_get(&format!("/api/v1/cycles/{id}"));
        if r.status != 200 {
            return Err(format!("{} {}", r.status, r.body));
        }
        let v = r.json();
        if v["cycle"]["status"] == "running" {
            Err(format!("at stage {}", v["stage"]))
        } else {
            Ok(v)
        }
    })
}

fn stages_of(detail: &Value) -> Vec<String> {
    detail["checkpoints"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| c["stage"].as_str().unwrap().to_string())
        .collect()
}

fn trigger(app: &TestApp, body: &Value) -> (u16, Value) {
    let r = admin_post(app, "/api/v1/cycles/trigger", body);
    (r.status, r.json())
}

fn pointers(errors: &Value) -> BTreeSet<(String, String)> {
    errors
        .as_array()
        .unwrap_or_else(|| panic!("no error list: {errors}"))
        .iter()
        .map(|e| {
            (
                e["file"].as_str().unwrap().to_string(),
                e["pointer"].as_str().unwrap().to_string(),
            )
        })
        .collect()
}

/// Profiles with one error in each file and more in one profile.
fn broken_files(dir: &Path) {
    write_profiles(
        dir,
        &json!([
            {"profile_id": "p1", "label": "ok", "state": "sometimes", "execution_rules": {},
             "surprise": 1},
            {"profile_id": "p 2", "label": "bad id", "state": "enabled", "execution_rules": {}}
        ]),
        &json!([{"run_profile_id": "r1", "profile_id": "p1", "state": "enabled"}]),
    );
}

fn expect_broken_pointers(got: &BTreeSet<(String, String)>) {
    for (file, pointer) in [
        ("profiles.json", "/0/state"),
        ("profiles.json", "/0"),
        ("profiles.json", "/1/profile_id"),
        ("runProfiles.json", "/0"),
    ] {
        assert!(
            got.contains(&(file.to_string(), pointer.to_string())),
            "{file} {pointer} missing from {got:?}"
        );
    }
}

/// Invalid files at boot: `App::start` fails with every problem (file and pointer), and the
/// real binary exits 2 listing them.
#[test]
fn invalid_profiles_at_boot_list_every_error_and_refuse_to_start() {
    let dir = tempfile::tempdir().unwrap();
    let profiles = dir.path().join("profiles");
    broken_files(&profiles);

    let mut config = test_config(&dir.path().join("data"));
    base(&mut config, &profiles);
    let runtime = tokio::runtime::Runtime::new().unwrap();
    let started = runtime.block_on(App::start(config, Arc::new(ManualClock::new(START_MS))));
    let issues = match started {
        Err(StartError::Cycles(CyclesError::Config(issues))) => issues,
        Err(other) => panic!("wrong error: {other}"),
        Ok(_) => panic!("keel started with invalid profiles"),
    };
    let got: BTreeSet<(String, String)> = issues
        .0
        .iter()
        .map(|i| (i.file.clone(), i.pointer.clone()))
        .collect();
    expect_broken_pointers(&got);
    drop(runtime);

    let toml = dir.path().join("keel.toml");
    std::fs::write(
        &toml,
        format!(
            "[cycles]\nprofiles_dir = \"{}\"\nschedule = \"\"\n",
            profiles.display()
        ),
    )
    .unwrap();
    let data = dir.path().join("data2");
    let out = run_keel(
        &[
            "serve",
            "--listen",
            "127.0.0.1:0",
            "--data-dir",
            data.to_str().unwrap(),
        ],
        &[("KEEL_CONFIG", toml.to_str().unwrap())],
    );
    assert_eq!(out.code, 2, "{out:?}");
    for line in [
        "profiles.json at /0/state",
        "profiles.json at /1/profile_id",
        "runProfiles.json at /0",
    ] {
        assert!(
            out.stderr.contains(line),
            "`{line}` missing: {}",
            out.stderr
        );
    }
    assert!(out.stderr.contains("\"namespace\""), "{}", out.stderr);
}

/// A reload with invalid files answers 422 with every error and keeps the running
/// configuration; a valid reload installs the new files with a new profile version, audited.
#[test]
fn reload_lists_every_error_keeps_the_old_config_then_applies_valid_files() {
    let profiles = tempfile::tempdir().unwrap();
    write_profiles(
        profiles.path(),
        &json!([simple_profile("p1")]),
        &json!([simple_run_profile("r1", "p1", "ns")]),
    );
    let app = TestApp::start_with(|c| base(c, profiles.path()));
    let before = app.admin_get("/api/v1/profiles").json();
    assert_eq!(before["profiles"][0]["version"], 1);

    broken_files(profiles.path());
    let r = admin_post(&app, "/api/v1/config/reload", &json!({}));
    assert_eq!(r.status, 422, "{}", r.body);
    assert_eq!(r.error_code(), "invalid_config");
    expect_broken_pointers(&pointers(&r.json()["error"]["errors"]));
    assert_eq!(
        app.admin_get("/api/v1/profiles").json(),
        before,
        "old config kept"
    );

    // A reference error is found after the schema passes, with its pointer.
    write_profiles(
        profiles.path(),
        &json!([simple_profile("p1")]),
        &json!([simple_run_profile("r1", "nope", "ns")]),
    );
    let r = admin_post(&app, "/api/v1/config/reload", &json!({}));
    assert_eq!(r.status, 422, "{}", r.body);
    assert_eq!(
        pointers(&r.json()["error"]["errors"]),
        BTreeSet::from([("runProfiles.json".to_string(), "/0/profile_id".to_string())])
    );

    let mut changed = simple_profile("p1");
    changed["label"] = json!("Renamed");
    write_profiles(
        profiles.path(),
        &json!([changed, simple_profile("p2")]),
        &json!([simple_run_profile("r1", "p1", "ns")]),
    );
    let audit_before = app.audit_seq();
    let operator = app.create_key("operator");
    let r = app.post_json("/api/v1/config/reload", Some(&operator), &json!({}));
    assert_eq!(r.status, 200, "{}", r.body);
    let v = r.json();
    assert_eq!(v["changed"], json!(["p1", "p2"]));
    assert_eq!(v["versions"], json!({"p1": 2, "p2": 1}));
    let now = app.admin_get("/api/v1/profiles").json();
    assert_eq!(now["profiles"][0]["label"], "Renamed");
    assert_eq!(now["profiles"][0]["version"], 2);
    assert!(app.audit_seq() > audit_before);
    let audit = app.admin_get("/api/v1/audit?limit=1000").json();
    assert!(
        audit.to_string().contains("config.reload"),
        "reload not audited: {audit}"
    );

    // The schemas are served.
    let r = app.admin_get("/api/v1/schemas/profiles");
    assert_eq!(r.status, 200);
    assert_eq!(r.json()["title"], "keel profiles.json");
    assert_eq!(
        app.admin_get("/api/v1/schemas/runProfiles.json").json()["title"],
        "keel runProfiles.json"
    );
    assert_eq!(app.admin_get("/api/v1/schemas/other").status, 404);
}

/// A tier step held by its target keeps the cycle active: reload answers 409 until it ends.
#[test]
fn reload_is_refused_while_a_cycle_is_active() {
    let receiver = Receiver::start();
    receiver.set_mode(Mode::Hold);
    let profiles = tempfile::tempdir().unwrap();
    let mut profile = simple_profile("p1");
    profile["execution_rules"] = json!({"tier1": [{"name": "enrich", "handler": "enrich"}]});
    write_profiles(
        profiles.path(),
        &json!([profile]),
        &json!([simple_run_profile("r1", "p1", "ns")]),
    );
    let url = receiver.url();
    let app = TestApp::start_with(|c| {
        base(c, profiles.path());
        c.handlers.insert(
            "enrich".into(),
            handler(json!({"kind": "http", "url": url, "timeout_seconds": 30})),
        );
    });
    let (status, v) = trigger(&app, &json!({"run_profile_id": "r1"}));
    assert_eq!(status, 201, "{v}");
    let id = v["cycle_run_id"].as_str().unwrap().to_string();
    receiver.wait_held(1);

    let r = admin_post(&app, "/api/v1/config/reload", &json!({}));
    assert_eq!(r.status, 409, "{}", r.body);
    assert_eq!(r.error_code(), "cycle_active");
    assert!(r.body.contains(&id), "{}", r.body);

    receiver.set_mode(Mode::Ok);
    receiver.release();
    let detail = wait_cycle(&app, &id);
    assert_eq!(stages_of(&detail), STAGES);
    // The step's answer became the tier's output.
    let tier1 = &detail["checkpoints"][2];
    assert_eq!(tier1["stage"], "tier1");
    assert!(
        tier1["output"]["received"]
            .as_str()
            .unwrap()
            .starts_with("msg_")
    );
    let r = admin_post(&app, "/api/v1/config/reload", &json!({}));
    assert_eq!(r.status, 200, "{}", r.body);
}

/// Shutdown gives cycles the drain deadline; one still waiting on its target (which answers
/// only after keel has stopped) then stops at its last checkpoint and resumes on the next
/// start, its step delivered again with the same `webhook-id`.
#[test]
fn shutdown_drains_cycles_and_the_rest_resume_on_the_next_start() {
    let receiver = Receiver::start();
    receiver.set_mode(Mode::Hold);
    let profiles = tempfile::tempdir().unwrap();
    let mut profile = simple_profile("p1");
    profile["execution_rules"] = json!({"tier1": [{"name": "enrich", "handler": "enrich"}]});
    write_profiles(
        profiles.path(),
        &json!([profile]),
        &json!([simple_run_profile("r1", "p1", "ns")]),
    );
    let url = receiver.url();
    let configure = |c: &mut Config| {
        base(c, profiles.path());
        c.shutdown.drain_seconds = 1;
        c.handlers.insert(
            "enrich".into(),
            handler(json!({"kind": "http", "url": url, "timeout_seconds": 30})),
        );
    };
    let app = TestApp::start_with(configure);
    let (_, v) = trigger(&app, &json!({"run_profile_id": "r1"}));
    let id = v["cycle_run_id"].as_str().unwrap().to_string();
    receiver.wait_held(1);
    let running = Arc::clone(&app.app);
    let dir = std::thread::scope(|s| {
        // The held request stays unanswered through the whole drain, so the drain deadline
        // always passes with the step in flight; it is answered only once the store is closed.
        s.spawn(|| {
            poll_until("keel to close its store", || {
                if running.store.is_writable() {
                    Err("the store is open".to_string())
                } else {
                    Ok(())
                }
            });
            receiver.set_mode(Mode::Ok);
            receiver.release();
        });
        app.stop()
    });
    drop(running);
    let app = TestApp::start_in(dir, configure);
    let detail = wait_cycle(&app, &id);
    assert_eq!(stages_of(&detail), STAGES);
    let cycle: uuid::Uuid = id.parse().unwrap();
    let step = format!(
        "msg_{}",
        keel::cycles::step_task_id(cycle, keel::cycles::model::Stage::Tier1, 0).simple()
    );
    let deliveries = receiver.deliveries();
    assert!(deliveries.len() >= 2, "{deliveries:?}");
    assert!(deliveries.iter().all(|d| d.webhook_id() == step));
}

/// The same slot of the same run profile makes one cycle, whose initiation hash is blake3 of
/// (run profile, slot, profile version); another slot makes another.
#[test]
fn the_same_slot_twice_makes_one_cycle() {
    let profiles = tempfile::tempdir().unwrap();
    write_profiles(
        profiles.path(),
        &json!([simple_profile("p1")]),
        &json!([simple_run_profile("r1", "p1", "ns")]),
    );
    let app = TestApp::start_with(|c| base(c, profiles.path()));
    let slot = "2026-01-01T12:00:00.000Z";
    let (status, first) = trigger(&app, &json!({"run_profile_id": "r1", "slot": slot}));
    assert_eq!(status, 201, "{first}");
    let (status, again) = trigger(&app, &json!({"run_profile_id": "r1", "slot": slot}));
    assert_eq!(status, 200, "{again}");
    assert_eq!(again["cycle_run_id"], first["cycle_run_id"]);
    assert_eq!(again["created"], false);
    assert_eq!(
        first["initiation_hash"],
        keel::cycles::initiation_hash("r1", slot, 1)
    );
    // Through the run-profile trigger, the same slot is the same cycle too.
    let r = admin_post(&app, "/api/v1/run-profiles/trigger", &json!({"slot": slot}));
    assert_eq!(r.status, 200, "{}", r.body);
    assert_eq!(r.json()["runs"][0]["cycle_run_id"], first["cycle_run_id"]);
    assert_eq!(r.json()["runs"][0]["created"], false);

    let (status, other) = trigger(
        &app,
        &json!({"run_profile_id": "r1", "slot": "2026-01-02T00:00:00.000Z"}),
    );
    assert_eq!(status, 201);
    assert_ne!(other["cycle_run_id"], first["cycle_run_id"]);
    let id = first["cycle_run_id"].as_str().unwrap();
    let detail = wait_cycle(&app, id);
    assert_eq!(
        detail["checkpoints"][1]["output"]["initiation_hash"],
        first["initiation_hash"]
    );
    let recent = app.admin_get("/api/v1/cycles/recent").json();
    assert_eq!(recent["cycles"].as_array().unwrap().len(), 2, "{recent}");
}

/// Two schedule slots missed while keel was down run once, at the next start.
#[test]
fn a_missed_slot_runs_once_after_downtime() {
    let profiles = tempfile::tempdir().unwrap();
    write_profiles(
        profiles.path(),
        &json!([simple_profile("p1")]),
        &json!([simple_run_profile("r1", "p1", "ns")]),
    );
    let configure = |c: &mut Config| {
        base(c, profiles.path());
        // Classic 5-field form: every 6 hours.
        c.cycles.run_profile_schedule = "0 */6 * * *".into();
    };
    let app = TestApp::start_with(configure);
    let tick = |app: &TestApp| app.block_on(app.app.cycles.schedule_tick()).unwrap();
    tick(&app);
    assert_eq!(tick(&app), 0, "the first look only records where it starts");
    app.clock.advance_ms(6 * 3_600_000);
    tick(&app);
    let cycles = |app: &TestApp| -> Vec<Value> {
        let v = app.admin_get("/api/v1/cycles/recent?limit=100").json();
        v["cycles"].as_array().unwrap().clone()
    };
    poll_until("the 06:00 slot", || {
        let c = cycles(&app);
        (c.len() == 1).then_some(()).ok_or(format!("{c:?}"))
    });
    assert_eq!(cycles(&app)[0]["slot"], "2026-01-01T06:00:00.000Z");
    assert_eq!(cycles(&app)[0]["trigger"], "schedule");
    let dir = app.stop();

    // Down for three days: twelve slots missed. The new process's clock starts over at the
    // same time, then jumps to 3 days and 1 hour later.
    let app = TestApp::start_in(dir, configure);
    app.clock.set_ms(START_MS + 73 * 3_600_000);
    tick(&app);
    tick(&app);
    let after = poll_until("the catch-up cycle", || {
        let c = cycles(&app);
        (c.len() == 2).then_some(c.clone()).ok_or(format!("{c:?}"))
    });
    assert_eq!(after[0]["trigger"], "catch_up");
    assert_eq!(after[0]["slot"], "2026-01-04T00:00:00.000Z");
    app.clock.advance_ms(5 * 3_600_000);
    tick(&app);
    let after = poll_until("the next regular slot", || {
        let c = cycles(&app);
        (c.len() == 3).then_some(c.clone()).ok_or(format!("{c:?}"))
    });
    assert_eq!(after[0]["trigger"], "schedule");
    assert_eq!(after[0]["slot"], "2026-01-04T06:00:00.000Z");
    assert_eq!(tick(&app), 0);
    assert_eq!(cycles(&app).len(), 3);
}

/// A cycle runs every stage once: tiers through command handlers, normalization in batches,
/// one dispatch per endpoint through the queue's http executor with the endpoint's token and a
/// `webhook-id` derived from (cycle, stage, endpoint), then `delivery_confirmed`, records and
/// the value ledger.
#[test]
fn a_cycle_runs_every_stage_and_its_dispatches_are_confirmed() {
    let receiver = Receiver::start();
    let profiles = tempfile::tempdir().unwrap();
    let mut profile = simple_profile("p1");
    profile["execution_rules"] = json!({
        "tier1": [{"name": "copy", "handler": "copy"}],
        "tier3": [{"name": "explode", "handler": "explode"}],
    });
    profile["distribution_map"] = json!({"main": "aurora"});
    let mut rp = simple_run_profile("r1", "p1", "ns");
    rp["distribution_targets"] = json!(["main", "backup"]);
    write_profiles(profiles.path(), &json!([profile]), &json!([rp]));
    let url = receiver.url();
    let app = TestApp::start_with(|c| {
        base(c, profiles.path());
        c.cycles.normalization_batch_size = 2;
        c.handlers.insert(
            "copy".into(),
            handler(json!({"kind": "command", "program": "/bin/cat"})),
        );
        c.handlers.insert(
            "explode".into(),
            handler(json!({"kind": "command", "program": "/bin/sh",
                           "args": ["-c", "cat >/dev/null; printf '[1,2,3]'"]})),
        );
        c.dispatch.endpoints.insert(
            "aurora".into(),
            endpoint(&format!("{url}?e=aurora"), Some("tok-a")),
        );
        c.dispatch
            .endpoints
            .insert("backup".into(), endpoint(&format!("{url}?e=backup"), None));
    });
    let service = app.create_key("service");
    let r = app.post_json(
        "/api/v1/cycles/trigger",
        Some(&service),
        &json!({"run_profile_id": "r1"}),
    );
    assert_eq!(r.status, 201, "{}", r.body);
    let id = r.json()["cycle_run_id"].as_str().unwrap().to_string();
    let cycle: uuid::Uuid = id.parse().unwrap();
    let detail = wait_cycle(&app, &id);
    assert_eq!(detail["cycle"]["status"], "finished", "{detail}");
    assert_eq!(stages_of(&detail), STAGES);

    let expected: BTreeSet<String> = ["aurora", "backup"]
        .iter()
        .map(|e| keel::cycles::dispatch_webhook_id(cycle, e))
        .collect();
    let enqueued = &detail["checkpoints"][6];
    let listed: BTreeSet<String> = enqueued["webhook_ids"]
        .as_array()
        .unwrap()
        .iter()
        .map(|w| w.as_str().unwrap().to_string())
        .collect();
    assert_eq!(listed, expected, "webhook-ids stored with the checkpoint");
    assert_eq!(detail["checkpoints"][5]["detail"]["items"], 3);
    assert_eq!(detail["checkpoints"][5]["detail"]["batches"], 2);

    let deliveries = receiver.wait_for(2);
    assert_eq!(deliveries.len(), 2);
    let got: BTreeSet<String> = deliveries
        .iter()
        .map(|d| d.webhook_id().to_string())
        .collect();
    assert_eq!(got, expected);
    for d in &deliveries {
        let body = d.json();
        assert_eq!(body["items"], json!([1, 2, 3]));
        assert_eq!(body["cycle_run_id"], id.as_str());
        assert_eq!(body["run_profile_id"], "r1");
        assert_eq!(body["namespace"], "ns");
        let auth = d.header("authorization");
        if d.path.ends_with("e=aurora") {
            assert_eq!(auth, Some("Bearer tok-a"));
        } else {
            assert_eq!(auth, None);
        }
    }
    for d in detail["dispatches"].as_array().unwrap() {
        assert_eq!(d["outcome"], "delivered", "{d}");
        assert_eq!(d["http_status"], 200);
        assert_eq!(d["receipts"][0]["receipt"]["status"], 200, "{d}");
    }

    let events = app
        .admin_get(&format!("/api/v1/telemetry?since=0&limit=1000&run={id}"))
        .json();
    let types: Vec<&str> = events["events"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["type"].as_str().unwrap())
        .collect();
    assert_eq!(
        types.iter().filter(|t| **t == "delivery_confirmed").count(),
        2
    );
    assert_eq!(types.iter().filter(|t| **t == "stage_completed").count(), 9);
    assert_eq!(types.first(), Some(&"execution_started"));
    assert_eq!(types.last(), Some(&"cycle_finished"));
    let confirmed = app
        .admin_get("/api/v1/telemetry?since=0&type=delivery_confirmed&profile=p1")
        .json();
    assert_eq!(confirmed["events"].as_array().unwrap().len(), 2);
    assert_eq!(confirmed["events"][0]["namespace"], "ns");

    let records = app
        .admin_get(&format!("/api/v1/execution-records?run={id}"))
        .json();
    let records = records["records"].as_array().unwrap();
    assert_eq!(records.len(), 9 + 2, "one per stage and one per dispatch");
    let ledger = app.admin_get("/api/v1/value-ledger?profile=p1").json();
    assert_eq!(ledger["entries"].as_array().unwrap().len(), 1);
    assert_eq!(
        ledger["entries"][0]["tags"],
        json!({"campaign": "r1", "units": 1})
    );
    assert_eq!(ledger["entries"][0]["cycle_id"], id.as_str());
    let recent = app.admin_get("/api/v1/cycles/recent").json();
    assert_eq!(recent["cycles"][0]["id"], id.as_str());
    assert_eq!(recent["cycles"][0]["stage"], "cycle_finished");
}

/// A dispatch that keeps failing is dead after `dispatch.max_retries`, reported as
/// `delivery_failed`, and delivered with the same `webhook-id` when requeued by hand.
#[test]
fn a_dispatch_out_of_retries_is_in_the_dlq_and_requeued_by_hand() {
    let receiver = Receiver::start();
    receiver.set_mode(Mode::Status(503));
    let profiles = tempfile::tempdir().unwrap();
    let mut rp = simple_run_profile("r1", "p1", "ns");
    rp["distribution_targets"] = json!(["aurora"]);
    write_profiles(
        profiles.path(),
        &json!([simple_profile("p1")]),
        &json!([rp]),
    );
    let url = receiver.url();
    let app = TestApp::start_with(|c| {
        base(c, profiles.path());
        c.dispatch.max_retries = 1;
        c.dispatch
            .endpoints
            .insert("aurora".into(), endpoint(&url, None));
    });
    let (_, v) = trigger(&app, &json!({"run_profile_id": "r1"}));
    let id = v["cycle_run_id"].as_str().unwrap().to_string();
    let cycle: uuid::Uuid = id.parse().unwrap();
    receiver.wait_for(1);
    // The retry waits for its backoff on keel's clock.
    let detail = poll_until("the dispatch to die", || {
        app.clock.advance_ms(2_000);
        let d = app.admin_get(&format!("/api/v1/cycles/{id}")).json();
        (d["cycle"]["status"] == "finished")
            .then(|| d.clone())
            .ok_or(format!("{}", d["stage"]))
    });
    assert_eq!(receiver.count(), 2, "first attempt and one retry");
    assert_eq!(detail["dispatches"][0]["outcome"], "dead");
    assert_eq!(detail["dispatches"][0]["attempts"], 2);
    let failed = app
        .admin_get("/api/v1/telemetry?since=0&type=delivery_failed")
        .json();
    assert_eq!(failed["events"].as_array().unwrap().len(), 1);
    let dlq = app.admin_get("/api/v1/dlq").json();
    let task_id = keel::cycles::dispatch_task_id(cycle, "aurora").to_string();
    assert!(dlq.to_string().contains(&task_id), "{dlq}");

    receiver.set_mode(Mode::Ok);
    let r = admin_post(&app, "/api/v1/dlq/drain", &json!({"max": 10}));
    assert_eq!(r.status, 200, "{}", r.body);
    let deliveries = receiver.wait_for(3);
    let webhook = keel::cycles::dispatch_webhook_id(cycle, "aurora");
    assert!(deliveries.iter().all(|d| d.webhook_id() == webhook));
}

/// Pause stops every cycle before any work (and holds one in flight at its checkpoint);
/// halting a namespace stops only its run profiles; both are audited and evented.
#[test]
fn pause_and_halt_stop_cycles_before_any_work() {
    let receiver = Receiver::start();
    receiver.set_mode(Mode::Hold);
    let profiles = tempfile::tempdir().unwrap();
    let mut slow = simple_profile("slow");
    slow["execution_rules"] = json!({"tier1": [{"name": "enrich", "handler": "enrich"}]});
    write_profiles(
        profiles.path(),
        &json!([simple_profile("p1"), slow]),
        &json!([
            simple_run_profile("a1", "p1", "ns-a"),
            simple_run_profile("b1", "p1", "ns-b"),
            simple_run_profile("s1", "slow", "ns-s")
        ]),
    );
    let url = receiver.url();
    let app = TestApp::start_with(|c| {
        base(c, profiles.path());
        c.handlers.insert(
            "enrich".into(),
            handler(json!({"kind": "http", "url": url, "timeout_seconds": 30})),
        );
    });
    let operator = app.create_key("operator");
    let viewer = app.create_key("viewer");

    // A cycle held by its tier-1 step when the pause comes stops at its next stage.
    let (_, v) = trigger(&app, &json!({"run_profile_id": "s1"}));
    let held_id = v["cycle_run_id"].as_str().unwrap().to_string();
    receiver.wait_held(1);
    let r = app.post_json(
        "/api/v1/governance/pause",
        Some(&operator),
        &json!({"reason": "maintenance"}),
    );
    assert_eq!(r.status, 200, "{}", r.body);
    assert_eq!(r.json()["governance"]["paused"], true);
    receiver.set_mode(Mode::Ok);
    receiver.release();
    poll_until("the held cycle to finish tier1", || {
        let d = app.admin_get(&format!("/api/v1/cycles/{held_id}")).json();
        (d["stage"] == "tier1")
            .then_some(())
            .ok_or(d["stage"].to_string())
    });
    // Its runner sees the pause at the next stage and lets go of the cycle.
    poll_until("the runner to let go while paused", || {
        let n = app.app.cycles.running();
        (n == 0).then_some(()).ok_or(format!("{n} running"))
    });
    let d = app.admin_get(&format!("/api/v1/cycles/{held_id}")).json();
    assert_eq!(d["stage"], "tier1", "no stage runs while paused");

    let (status, v) = trigger(&app, &json!({"run_profile_id": "a1"}));
    assert_eq!(status, 409, "{v}");
    assert_eq!(v["error"]["code"], "paused");
    let r = admin_post(&app, "/api/v1/run-profiles/trigger", &json!({}));
    let runs = r.json()["runs"].as_array().unwrap().clone();
    assert!(
        runs.iter()
            .all(|r| r["cycle_run_id"].is_null() && r["skipped"].is_string())
    );
    let r = app.post_json("/api/v1/governance/resume", Some(&viewer), &json!({}));
    assert_eq!(r.status, 403);
    let r = app.post_json("/api/v1/governance/resume", Some(&operator), &json!({}));
    assert_eq!(r.status, 200, "{}", r.body);
    let detail = wait_cycle(&app, &held_id);
    assert_eq!(stages_of(&detail), STAGES, "the held cycle resumed");

    // Halt ns-a: its run profile does nothing, ns-b runs.
    let r = app.post_json(
        "/api/v1/governance/namespaces/ns-a/halt",
        Some(&operator),
        &json!({"reason": "incident"}),
    );
    assert_eq!(r.status, 200, "{}", r.body);
    assert_eq!(r.json()["governance"]["halted_namespaces"], json!(["ns-a"]));
    let (status, v) = trigger(&app, &json!({"run_profile_id": "a1"}));
    assert_eq!(status, 409);
    assert_eq!(v["error"]["code"], "namespace_halted");
    let r = admin_post(&app, "/api/v1/run-profiles/trigger", &json!({}));
    let runs = r.json()["runs"].as_array().unwrap().clone();
    let by_id = |id: &str| {
        runs.iter()
            .find(|r| r["run_profile_id"] == id)
            .unwrap()
            .clone()
    };
    assert!(by_id("a1")["cycle_run_id"].is_null());
    assert!(by_id("a1")["skipped"].as_str().unwrap().contains("halted"));
    let b = by_id("b1")["cycle_run_id"].as_str().unwrap().to_string();
    assert_eq!(wait_cycle(&app, &b)["cycle"]["status"], "finished");
    // The skip is recorded in ns-a only.
    let skipped = app
        .admin_get("/api/v1/execution-records?namespace=ns-a")
        .json();
    assert!(
        skipped["records"]
            .as_array()
            .unwrap()
            .iter()
            .any(|r| r["outcome"] == "skipped" && r["run_profile_id"] == "a1"),
        "{skipped}"
    );
    let b_records = app
        .admin_get(&format!("/api/v1/execution-records?run={b}"))
        .json();
    assert!(
        b_records["records"]
            .as_array()
            .unwrap()
            .iter()
            .all(|r| r["namespace"] == "ns-b")
    );
    let r = app.post_json(
        "/api/v1/governance/namespaces/ns-a/resume",
        Some(&operator),
        &json!({}),
    );
    assert_eq!(r.status, 200);
    let (status, v) = trigger(&app, &json!({"run_profile_id": "a1"}));
    assert_eq!(status, 201, "{v}");

    let audit = app.admin_get("/api/v1/audit?limit=1000").json().to_string();
    for action in ["governance.pause", "governance.resume", "governance.halt"] {
        assert!(audit.contains(action), "{action} not audited");
    }
    let events = app
        .admin_get("/api/v1/telemetry?since=0&type=governance_changed")
        .json();
    assert_eq!(events["events"].as_array().unwrap().len(), 4);
    let g = app.get("/api/v1/governance", Some(&viewer)).json();
    assert_eq!(g["governance"]["paused"], false);
    assert_eq!(g["governance"]["halted_namespaces"], json!([]));
}

/// Runs `n` quick cycles of run profile r1 and waits for them.
fn run_cycles(app: &TestApp, n: usize) {
    for _ in 0..n {
        let (status, v) = trigger(app, &json!({"run_profile_id": "r1"}));
        assert_eq!(status, 201, "{v}");
        wait_cycle(app, v["cycle_run_id"].as_str().unwrap());
    }
}

/// An approved proposal changes its profile only when both autonomy switches are on;
/// otherwise it is logged as skipped and nothing changes.
#[test]
fn proposals_change_profiles_only_with_both_autonomy_switches() {
    for (enabled, allow) in [(false, false), (true, false), (false, true), (true, true)] {
        let profiles = tempfile::tempdir().unwrap();
        write_profiles(
            profiles.path(),
            &json!([simple_profile("p1")]),
            &json!([simple_run_profile("r1", "p1", "ns")]),
        );
        let original = std::fs::read_to_string(profiles.path().join("profiles.json")).unwrap();
        let app = TestApp::start_with(|c| {
            base(c, profiles.path());
            c.autonomy.enabled = enabled;
            c.autonomy.allow_mutation = allow;
        });
        let what = format!("enabled={enabled} allow_mutation={allow}");
        let r = admin_post(&app, "/api/v1/profiles/p1/strategy-proposals", &json!({}));
        assert_eq!(r.status, 409, "{what}: no signal yet: {}", r.body);

        // Too few cycles: stable, nothing proposed.
        run_cycles(&app, 1);
        let r = admin_post(&app, "/api/v1/profiles/p1/signals", &json!({}));
        assert_eq!(r.status, 201, "{}", r.body);
        assert_eq!(r.json()["signal"]["signal"], "stable");
        let r = admin_post(&app, "/api/v1/profiles/p1/strategy-proposals", &json!({}));
        assert_eq!(r.json()["proposals"], json!([]), "{what}");

        run_cycles(&app, 2);
        let r = admin_post(&app, "/api/v1/profiles/p1/signals", &json!({}));
        let signal = r.json()["signal"].clone();
        assert_eq!(signal["signal"], "elevated_performance", "{what}: {signal}");
        assert_eq!(signal["success_rate"], 1.0);
        assert_eq!(signal["samples"], 3);
        let r = admin_post(&app, "/api/v1/profiles/p1/strategy-proposals", &json!({}));
        let proposal = r.json()["proposals"][0].clone();
        assert_eq!(proposal["status"], "pending", "{what}: {proposal}");
        assert_eq!(
            proposal["patch"],
            json!({"value_tags": {"performance": "elevated"}})
        );
        let pid = proposal["id"].as_str().unwrap().to_string();
        // Nothing applies itself.
        assert_eq!(
            std::fs::read_to_string(profiles.path().join("profiles.json")).unwrap(),
            original
        );
        let viewer = app.create_key("viewer");
        let r = app.post_json(
            &format!("/api/v1/strategy-proposals/{pid}/approve"),
            Some(&viewer),
            &json!({}),
        );
        assert_eq!(r.status, 403);

        let r = admin_post(
            &app,
            &format!("/api/v1/strategy-proposals/{pid}/approve"),
            &json!({}),
        );
        assert_eq!(r.status, 200, "{what}: {}", r.body);
        let decided = r.json()["proposal"].clone();
        let profiles_now = app.admin_get("/api/v1/profiles").json();
        let file_now = std::fs::read_to_string(profiles.path().join("profiles.json")).unwrap();
        if enabled && allow {
            assert_eq!(decided["status"], "applied", "{decided}");
            assert_eq!(profiles_now["profiles"][0]["version"], 2);
            assert_eq!(
                profiles_now["profiles"][0]["value_tags"]["performance"],
                "elevated"
            );
            let on_disk: Value = serde_json::from_str(&file_now).unwrap();
            assert_eq!(on_disk[0]["value_tags"]["performance"], "elevated");
            assert_eq!(on_disk[0]["value_tags"]["tier"], "gold");
        } else {
            assert_eq!(decided["status"], "approved", "{what}: {decided}");
            assert!(
                decided["outcome"].as_str().unwrap().starts_with("skipped"),
                "{decided}"
            );
            assert_eq!(profiles_now["profiles"][0]["version"], 1, "{what}");
            assert!(profiles_now["profiles"][0]["value_tags"]["performance"].is_null());
            assert_eq!(file_now, original, "{what}: profiles.json changed");
            let skipped = app
                .admin_get("/api/v1/telemetry?since=0&type=autonomy_skipped")
                .json();
            assert_eq!(skipped["events"].as_array().unwrap().len(), 1);
        }
        let r = admin_post(
            &app,
            &format!("/api/v1/strategy-proposals/{pid}/reject"),
            &json!({}),
        );
        assert_eq!(r.status, 409, "a decided proposal stays decided");
        let audit = app.admin_get("/api/v1/audit?limit=1000").json().to_string();
        assert!(audit.contains("proposal.approve"), "{what}: not audited");
    }
}

/// Events older than the retention are pruned; with cold archive on, they are first written
/// to gzip JSON-lines files under the data dir. Replay streams the rest in order.
#[test]
fn telemetry_past_retention_is_archived_then_pruned() {
    for archive in [true, false] {
        let app = TestApp::start_with(|c| {
            c.cycles.schedule = String::new().into();
            c.telemetry.retention_days = 30;
            c.telemetry.cold_archive = archive;
            c.cycles.namespaces = vec!["later".into()];
        });
        let (_, v) = trigger(&app, &json!({}));
        wait_cycle(&app, v["cycle_run_id"].as_str().unwrap());
        let old = app.admin_get("/api/v1/telemetry?since=0&limit=1000").json();
        let old: Vec<Value> = old["events"].as_array().unwrap().clone();
        assert!(old.len() >= 10, "{old:?}");

        app.clock.advance_ms(31 * 86_400_000);
        let (_, v) = trigger(&app, &json!({"namespace": "later"}));
        wait_cycle(&app, v["cycle_run_id"].as_str().unwrap());
        let report = app.block_on(app.app.cycles.prune_telemetry()).unwrap();
        assert_eq!(report.pruned, old.len());

        let kept = app.admin_get("/api/v1/telemetry?since=0&limit=1000").json();
        let kept = kept["events"].as_array().unwrap().clone();
        assert!(!kept.is_empty());
        assert!(kept.iter().all(|e| e["namespace"] == "later"), "{kept:?}");

        let dir = app.dir.path().join("telemetry-archive");
        if archive {
            assert_eq!(report.archived.len(), 1);
            let mut text = String::new();
            flate2::read::GzDecoder::new(std::fs::File::open(&report.archived[0]).unwrap())
                .read_to_string(&mut text)
                .unwrap();
            let lines: Vec<Value> = text
                .lines()
                .map(|l| serde_json::from_str(l).unwrap())
                .collect();
            assert_eq!(lines, old, "the archive holds exactly the pruned events");
        } else {
            assert!(report.archived.is_empty());
            assert!(!dir.exists());
        }
        assert_eq!(
            app.block_on(app.app.cycles.prune_telemetry())
                .unwrap()
                .pruned,
            0
        );

        let r = app.admin_get("/api/v1/telemetry/replay?from=0");
        assert_eq!(r.header("content-type"), Some("application/x-ndjson"));
        let replayed: Vec<Value> = r
            .body
            .lines()
            .map(|l| serde_json::from_str(l).unwrap())
            .collect();
        assert_eq!(replayed, kept, "replay streams the bus in order");
    }
}

/// SIGHUP reloads the profile files of a running `keel serve`.
#[test]
fn sighup_reloads_the_profile_files() {
    let dir = tempfile::tempdir().unwrap();
    let profiles = dir.path().join("profiles");
    write_profiles(
        &profiles,
        &json!([simple_profile("p1")]),
        &json!([simple_run_profile("r1", "p1", "ns")]),
    );
    let toml = dir.path().join("keel.toml");
    std::fs::write(
        &toml,
        format!(
            "[cycles]\nprofiles_dir = \"{}\"\nschedule = \"\"\n",
            profiles.display()
        ),
    )
    .unwrap();
    let proc = KeelProcess::spawn(
        &dir.path().join("data"),
        &[("KEEL_CONFIG", toml.to_str().unwrap())],
    )
    .unwrap_or_else(|log| panic!("keel did not start:\n{log}"));
    let key = proc.admin_key();
    let mut renamed = simple_profile("p1");
    renamed["label"] = json!("After SIGHUP");
    write_profiles(
        &profiles,
        &json!([renamed]),
        &json!([simple_run_profile("r1", "p1", "ns")]),
    );
    let status = std::process::Command::new("kill")
        .args(["-HUP", &proc.child.id().to_string()])
        .status()
        .unwrap();
    assert!(status.success());
    poll_until("the reload", || {
        let r = crate::support::request(&proc.base, "GET", "/api/v1/profiles", Some(&key), None);
        let v = r.json();
        (v["profiles"][0]["label"] == "After SIGHUP")
            .then_some(())
            .ok_or(r.body)
    });
    assert_eq!(proc.terminate(), 0);
}
