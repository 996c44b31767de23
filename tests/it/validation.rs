//! Nonsense is refused with a 4xx that names the field, and creates nothing: idempotency keys
//! of control characters or over 256 bytes, a `run_at` beyond `queue.max_run_at_days`, an
//! idempotency key reused for another task, a cycle slot that is not a time or a namespace that
//! is not known, and a dead-letter
//! drain of a type that does not exist. Lists stay bounded: a
//! rare type filter stops after `LIST_SCAN_LIMIT` records and a page of large payloads after
//! `LIST_MAX_BYTES`, each with a cursor to go on from.

use keel::config::{HandlerConfig, HttpHandlerConfig};
use keel::queue::{LIST_MAX_BYTES, LIST_SCAN_LIMIT, NewTask, QueueError};
use serde_json::{Value, json};
use uuid::Uuid;

use crate::admin::Client;
use crate::support::{Resp, TestApp};

fn start() -> TestApp {
    TestApp::start_with(|c| {
        c.handlers.insert(
            "notify".into(),
            HandlerConfig::Http(HttpHandlerConfig {
                url: "http://127.0.0.1:9/hook".into(),
                method: "POST".into(),
                token: None,
                signing_secret: None,
                timeout_seconds: 30,
                target_concurrency: 8,
                concurrency: None,
                max_attempts: None,
                circuit: Default::default(),
            }),
        );
    })
}

fn post(app: &TestApp, path: &str, body: &Value) -> Resp {
    app.post_json(path, Some(&app.admin_key), body)
}

fn refused(r: &Resp, status: u16, code: &str, mentions: &str) {
    assert_eq!(r.status, status, "{}", r.body);
    assert_eq!(r.error_code(), code, "{}", r.body);
    let message = r.json()["error"]["message"].as_str().unwrap().to_string();
    assert!(
        message.contains(mentions),
        "{message} should mention {mentions}"
    );
}

#[test]
fn bad_idempotency_keys_and_far_run_at_are_refused_with_the_field_named() {
    let app = start();
    let seq = app.audit_seq();
    for key in [
        "line\nbreak",
        "tab\there",
        "bell\u{7}",
        "nul\u{0}",
        "é-not-ascii",
    ] {
        let r = post(
            &app,
            "/api/v1/tasks",
            &json!({"type": "notify", "payload": {}, "idempotency_key": key}),
        );
        refused(&r, 422, "invalid_field", "idempotency_key");
    }
    let r = post(
        &app,
        "/api/v1/tasks",
        &json!({"type": "notify", "payload": {}, "idempotency_key": "k".repeat(257)}),
    );
    refused(&r, 422, "invalid_field", "idempotency_key");
    // The test clock starts at 2026-01-01: 365 days ahead is the limit.
    for far in ["9999-12-31T00:00:00Z", "2027-01-02T00:00:00Z"] {
        let r = post(
            &app,
            "/api/v1/tasks",
            &json!({"type": "notify", "payload": {}, "run_at": far}),
        );
        refused(&r, 422, "invalid_field", "run_at");
        assert!(r.body.contains("queue.max_run_at_days"), "{}", r.body);
    }
    assert_eq!(app.audit_seq(), seq, "nothing was created");
    let listed = app.admin_get("/api/v1/tasks").json();
    assert_eq!(listed["tasks"], json!([]), "{listed}");

    // At the limit, and with a printable key of 256 bytes, the task is accepted.
    let r = post(
        &app,
        "/api/v1/tasks",
        &json!({"type": "notify", "payload": {}, "run_at": "2027-01-01T00:00:00Z",
            "idempotency_key": format!("order 42/{}", "x".repeat(247))}),
    );
    assert_eq!(r.status, 201, "{}", r.body);
}

#[test]
fn an_idempotency_key_reused_for_another_task_is_a_conflict_naming_the_first() {
    let app = start();
    let body = json!({"type": "notify", "payload": {"order": 1, "total": 5},
        "idempotency_key": "order-1", "run_at": "2026-02-01T00:00:00Z"});
    let first = post(&app, "/api/v1/tasks", &body);
    assert_eq!(first.status, 201, "{}", first.body);
    let id = first.json()["id"].as_str().unwrap().to_string();

    // The same request again (keys in another order) names the same task.
    let same = post(
        &app,
        "/api/v1/tasks",
        &json!({"idempotency_key": "order-1", "run_at": "2026-02-01T00:00:00Z",
            "payload": {"total": 5, "order": 1}, "type": "notify"}),
    );
    assert_eq!(same.status, 200, "{}", same.body);
    assert_eq!(same.json()["id"], id.as_str());

    let seq = app.audit_seq();
    let other_payload = post(
        &app,
        "/api/v1/tasks",
        &json!({"type": "notify", "payload": {"order": 2}, "idempotency_key": "order-1"}),
    );
    refused(&other_payload, 409, "idempotency_conflict", &id);
    assert!(
        other_payload.body.contains("order-1"),
        "{}",
        other_payload.body
    );
    let other_type = post(
        &app,
        "/api/v1/tasks",
        &json!({"type": "other", "payload": {"order": 1, "total": 5}, "idempotency_key": "order-1"}),
    );
    // An unknown type is refused before the key is looked at.
    refused(&other_type, 422, "invalid_field", "other");
    assert_eq!(app.audit_seq(), seq, "nothing was created");
    let listed = app.admin_get("/api/v1/tasks").json();
    assert_eq!(listed["tasks"].as_array().unwrap().len(), 1, "{listed}");
}

#[test]
fn a_conflicting_type_under_a_reused_key_is_refused() {
    let app = TestApp::start_with(|c| {
        for name in ["notify", "bill"] {
            c.handlers.insert(
                name.into(),
                HandlerConfig::Http(HttpHandlerConfig {
                    url: "http://127.0.0.1:9/hook".into(),
                    method: "POST".into(),
                    token: None,
                    signing_secret: None,
                    timeout_seconds: 30,
                    target_concurrency: 8,
                    concurrency: None,
                    max_attempts: None,
                    circuit: Default::default(),
                }),
            );
        }
    });
    let first = post(
        &app,
        "/api/v1/tasks",
        &json!({"type": "notify", "payload": {}, "idempotency_key": "k", "run_at": "2026-02-01T00:00:00Z"}),
    );
    assert_eq!(first.status, 201, "{}", first.body);
    let id = first.json()["id"].as_str().unwrap().to_string();
    let r = post(
        &app,
        "/api/v1/tasks",
        &json!({"type": "bill", "payload": {}, "idempotency_key": "k"}),
    );
    refused(&r, 409, "idempotency_conflict", &id);
}

#[test]
fn cycle_triggers_need_a_time_slot() {
    let app = start();
    for body in [
        json!({"slot": "garbage"}),
        json!({"slot": ""}),
        json!({"slot": "2026-13-40T00:00:00Z"}),
    ] {
        let r = post(&app, "/api/v1/cycles/trigger", &body);
        refused(&r, 422, "invalid_field", "slot");
    }
    let r = post(
        &app,
        "/api/v1/run-profiles/trigger",
        &json!({"slot": "garbage"}),
    );
    refused(&r, 422, "invalid_field", "slot");
    let recent = app.admin_get("/api/v1/cycles/recent?limit=100").json();
    assert_eq!(recent["cycles"], json!([]), "nothing was started: {recent}");

    let r = post(
        &app,
        "/api/v1/cycles/trigger",
        &json!({"namespace": "default", "slot": "2026-01-01T06:00:00Z"}),
    );
    assert_eq!(r.status, 201, "{}", r.body);
}

/// A raw cycle triggers only in a known namespace: the default one, one of
/// `cycles.namespaces` or a run profile's. Any other is refused by the API and the dashboard
/// with the known ones listed, and starts nothing.
#[test]
fn cycle_triggers_in_an_unknown_namespace_are_refused() {
    let profiles = tempfile::tempdir().unwrap();
    crate::cycles::write_profiles(
        profiles.path(),
        &json!([{"profile_id": "p1", "label": "One", "state": "enabled",
                 "execution_rules": {}}]),
        &json!([{"run_profile_id": "r1", "profile_id": "p1", "state": "enabled",
                 "namespace": "green"}]),
    );
    let dir = profiles.path().to_path_buf();
    let app = TestApp::start_with(move |c| {
        c.cycles.profiles_dir = dir;
        c.cycles.schedule = String::new().into();
        c.cycles.namespaces = vec!["blue".into()];
    });
    let operator = Client::sign_in(&app.base, &app.create_key("operator"));
    let seq = app.audit_seq();
    let r = post(
        &app,
        "/api/v1/cycles/trigger",
        &json!({"namespace": "typo-blue"}),
    );
    refused(&r, 422, "invalid_field", "namespace");
    let message = r.json()["error"]["message"].as_str().unwrap().to_string();
    for known in ["`typo-blue`", "blue", "default", "green"] {
        assert!(message.contains(known), "{message} should mention {known}");
    }
    let r = operator.post("/admin/cycles/trigger", &[("namespace", "typo-blue")]);
    assert_eq!(r.status, 422, "{}", r.body);
    assert!(r.body.contains("typo-blue"), "{}", r.body);
    let recent = app.admin_get("/api/v1/cycles/recent?limit=100").json();
    assert_eq!(recent["cycles"], json!([]), "nothing was started: {recent}");
    assert_eq!(app.audit_seq(), seq, "a refused trigger wrote something");

    for ns in ["blue", "default", "green"] {
        let r = post(&app, "/api/v1/cycles/trigger", &json!({"namespace": ns}));
        assert_eq!(r.status, 201, "{ns}: {}", r.body);
    }
    let r = operator.post("/admin/cycles/trigger", &[("namespace", "blue")]);
    assert_eq!(r.status, 303, "{}", r.body);
    let recent = app.admin_get("/api/v1/cycles/recent?limit=100").json();
    assert_eq!(recent["cycles"].as_array().unwrap().len(), 4, "{recent}");
}

#[test]
fn a_drain_of_an_unknown_type_is_refused() {
    let app = start();
    let seq = app.audit_seq();
    let r = post(
        &app,
        "/api/v1/dlq/drain",
        &json!({"filter_type": "no-such-type", "max": 10}),
    );
    refused(&r, 422, "invalid_field", "filter_type");
    assert_eq!(app.audit_seq(), seq);
    let r = post(
        &app,
        "/api/v1/dlq/drain",
        &json!({"filter_type": "notify", "max": 10}),
    );
    assert_eq!(
        r.status, 200,
        "a configured type with no dead tasks: {}",
        r.body
    );
}

/// Enqueues `count` waiting tasks of `task_type` with `payload`, through the queue's
/// prepared-insert path, 5,000 per write; returns their ids, oldest first.
fn waiting_tasks(app: &TestApp, task_type: &str, count: usize, payload: &Value) -> Vec<Uuid> {
    let queue = &app.app.queue;
    let tasks: Vec<_> = (0..count)
        .map(|_| {
            let new = NewTask {
                task_type: task_type.into(),
                payload: payload.clone(),
                run_at: Some(1_780_000_000_000),
                ..NewTask::default()
            };
            queue.prepare("test", Uuid::now_v7(), &new, None).unwrap()
        })
        .collect();
    let ids = tasks.iter().map(|t| t.id).collect();
    for chunk in tasks.chunks(5_000) {
        let chunk = chunk.to_vec();
        let queue = std::sync::Arc::clone(queue);
        app.block_on(app.app.store.write(move |tx| {
            for task in &chunk {
                queue.insert_prepared(tx, task)?;
            }
            Ok::<_, QueueError>(())
        }))
        .unwrap();
    }
    ids
}

#[test]
fn a_rare_type_filter_stops_after_the_scan_limit_and_gives_a_cursor() {
    let app = TestApp::start_with(|c| {
        for name in ["common", "rare"] {
            c.handlers.insert(
                name.into(),
                HandlerConfig::Http(HttpHandlerConfig {
                    url: "http://127.0.0.1:9/hook".into(),
                    method: "POST".into(),
                    token: None,
                    signing_secret: None,
                    timeout_seconds: 30,
                    target_concurrency: 8,
                    concurrency: None,
                    max_attempts: None,
                    circuit: Default::default(),
                }),
            );
        }
    });
    let rare = waiting_tasks(&app, "rare", 1, &json!({}))[0];
    waiting_tasks(&app, "common", LIST_SCAN_LIMIT + 500, &json!({}));

    let mut found = Vec::new();
    let mut pages = 0;
    let mut path = "/api/v1/tasks?type=rare&limit=10".to_string();
    loop {
        let page = app.admin_get(&path).json();
        pages += 1;
        for t in page["tasks"].as_array().unwrap() {
            found.push(t["id"].as_str().unwrap().to_string());
        }
        match page["next_cursor"].as_str() {
            Some(cursor) => path = format!("/api/v1/tasks?type=rare&limit=10&cursor={cursor}"),
            None => break,
        }
        assert!(pages < 10, "the cursor must move on");
    }
    assert_eq!(found, vec![rare.to_string()]);
    assert_eq!(pages, 2, "the first page stopped at the scan limit");
    // The same holds with a status filter.
    let page = app
        .admin_get("/api/v1/tasks?status=queued&type=rare&limit=10")
        .json();
    assert_eq!(page["tasks"], json!([]), "{page}");
    assert!(page["next_cursor"].is_string(), "{page}");
}

#[test]
fn a_page_of_large_payloads_ends_at_the_byte_cap_with_a_cursor() {
    let app = start();
    let big = json!({"blob": "x".repeat(1 << 20)});
    let count = LIST_MAX_BYTES / (1 << 20) + 4;
    waiting_tasks(&app, "notify", count, &big);
    let first = app.admin_get("/api/v1/tasks?limit=1000").json();
    let shown = first["tasks"].as_array().unwrap().len();
    assert!(shown < count, "{shown} of {count} tasks on one page");
    assert!(shown >= LIST_MAX_BYTES / (1 << 20), "{shown}");
    let cursor = first["next_cursor"].as_str().expect("a cursor to the rest");
    let rest = app
        .admin_get(&format!("/api/v1/tasks?limit=1000&cursor={cursor}"))
        .json();
    assert_eq!(
        shown + rest["tasks"].as_array().unwrap().len(),
        count,
        "{}",
        rest["next_cursor"]
    );
}
