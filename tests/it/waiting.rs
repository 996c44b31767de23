//! Work that waits says why: tasks held by an open circuit or a concurrency limit, and cycles
//! waiting for such tasks (API and dashboard); cycles cancelled by hand; reloads that wait a
//! bounded time or name what the active cycles wait on.

use serde_json::{Value, json};

use crate::admin::{Client, audit_entries};
use crate::cycles::write_profiles;
use crate::receiver::{Mode, Receiver};
use crate::support::{TestApp, poll_until};

fn task(app: &TestApp, id: &str) -> Value {
    let r = app.admin_get(&format!("/api/v1/tasks/{id}"));
    assert_eq!(r.status, 200, "{}", r.body);
    r.json()["task"].clone()
}

/// A second task of a type at its concurrency limit waits on the limit, with no time (it runs
/// when the first ends); the first, running, waits on nothing.
#[test]
fn a_task_held_by_its_types_concurrency_limit_says_so() {
    let receiver = Receiver::start();
    receiver.set_mode(Mode::Hold);
    let url = receiver.url();
    let app = TestApp::start_with(|c| {
        c.handlers.insert(
            "notify".into(),
            serde_json::from_value(json!({"kind": "http", "url": url, "concurrency": 1})).unwrap(),
        );
    });
    let submit = || {
        let r = app.post_json(
            "/api/v1/tasks",
            Some(&app.admin_key),
            &json!({"type": "notify", "payload": {}}),
        );
        assert_eq!(r.status, 201, "{}", r.body);
        r.json()["id"].as_str().unwrap().to_string()
    };
    let first = submit();
    receiver.wait_held(1);
    let second = submit();
    let held = poll_until("the second task to wait on the limit", || {
        let t = task(&app, &second);
        if t["waiting"].is_null() {
            Err(t.to_string())
        } else {
            Ok(t)
        }
    });
    assert_eq!(held["status"], "queued", "{held}");
    assert_eq!(held["waiting"]["reason"], "concurrency_limit", "{held}");
    assert!(held["waiting"]["until"].is_null(), "{held}");
    assert!(
        held["waiting"]["detail"]
            .as_str()
            .unwrap()
            .contains("1 of at most 1 tasks of type `notify`"),
        "{held}"
    );
    assert!(task(&app, &first)["waiting"].is_null());
    let listed = app.admin_get("/api/v1/tasks?status=queued").json();
    assert_eq!(
        listed["tasks"][0]["waiting"]["reason"], "concurrency_limit",
        "{listed}"
    );
    let client = Client::sign_in(&app.base, &app.admin_key);
    let list = client.get("/admin/tasks?status=queued").body;
    assert!(
        list.contains("data-waiting>concurrency_limit</span>"),
        "{list}"
    );
    let page = client.get(&format!("/admin/tasks/{second}")).body;
    assert!(page.contains("Waiting (concurrency_limit)"), "{page}");
    assert!(page.contains("tried again when a running task of its type ends"));

    receiver.set_mode(Mode::Ok);
    receiver.release();
    poll_until("the second task to run", || {
        let t = task(&app, &second);
        (t["status"] == "succeeded")
            .then_some(())
            .ok_or(t.to_string())
    });
}

/// A cycle whose dispatch waits on the endpoint's open circuit says what it waits on (API,
/// cycle and task pages); a reload waits its `wait_seconds`, then answers 409 naming the cycle
/// and the circuit; an operator cancels the cycle (audited), which cancels its waiting
/// dispatch and lets the reload through.
#[test]
fn a_cycle_waiting_on_an_open_circuit_says_so_and_can_be_cancelled() {
    let receiver = Receiver::start();
    receiver.set_mode(Mode::Status(503));
    let profiles = tempfile::tempdir().unwrap();
    write_profiles(
        profiles.path(),
        &json!([{"profile_id": "p1", "label": "P1", "state": "enabled",
                 "execution_rules": {}, "value_tags": {}}]),
        &json!([{"run_profile_id": "r1", "profile_id": "p1", "state": "enabled",
                 "namespace": "ns", "value_tags": {}, "distribution_targets": ["aurora"]}]),
    );
    let url = receiver.url();
    let app = TestApp::start_with(|c| {
        c.cycles.profiles_dir = profiles.path().to_path_buf();
        c.cycles.schedule = String::new().into();
        c.circuit.min_volume = 1;
        c.circuit.threshold = 0.5;
        c.circuit.open_seconds = 600;
        c.queue.backoff_base_ms = 1000;
        c.dispatch.max_retries = 5;
        c.dispatch.endpoints.insert(
            "aurora".into(),
            serde_json::from_value(json!({"url": url, "timeout_seconds": 10})).unwrap(),
        );
    });
    let (operator_id, operator) = app.create_key_with(&json!({"name": "ops", "role": "operator"}));
    let viewer = app.create_key("viewer");
    let r = app.post_json(
        "/api/v1/cycles/trigger",
        Some(&app.admin_key),
        &json!({"run_profile_id": "r1"}),
    );
    assert_eq!(r.status, 201, "{}", r.body);
    let id = r.json()["cycle_run_id"].as_str().unwrap().to_string();
    let cycle: uuid::Uuid = id.parse().unwrap();
    let dispatch = keel::cycles::dispatch_task_id(cycle, "aurora").to_string();
    receiver.wait_for(1);

    let detail = poll_until("the cycle to wait on the open circuit", || {
        app.clock.advance_ms(2_000);
        let d = app.admin_get(&format!("/api/v1/cycles/{id}")).json();
        (d["waiting_on"][0]["waiting"]["reason"] == "circuit_open")
            .then(|| d.clone())
            .ok_or(d["waiting_on"].to_string())
    });
    let wait = &detail["waiting_on"][0];
    assert_eq!(wait["task_id"], dispatch.as_str(), "{wait}");
    assert_eq!(wait["status"], "retrying", "{wait}");
    let circuit = app.admin_get("/api/v1/circuits").json()["circuits"]
        .as_array()
        .unwrap()
        .iter()
        .find(|c| c["name"] == "dispatch:aurora")
        .cloned()
        .expect("the endpoint's own circuit");
    assert_eq!(wait["waiting"]["until"], circuit["open_until"], "{wait}");
    let t = task(&app, &dispatch);
    assert_eq!(t["waiting"]["reason"], "circuit_open", "{t}");
    assert!(
        t["waiting"]["detail"]
            .as_str()
            .unwrap()
            .contains("dispatch:aurora")
    );
    let client = Client::sign_in(&app.base, &app.admin_key);
    let page = client.get(&format!("/admin/cycles/{id}")).body;
    assert!(page.contains("data-waiting-on"), "{page}");
    assert!(page.contains("Waiting (circuit_open): the circuit dispatch:aurora is open"));
    assert!(page.contains(&format!("/admin/cycles/{id}/cancel")));
    let page = client.get(&format!("/admin/tasks/{dispatch}")).body;
    assert!(page.contains("Waiting (circuit_open)"), "{page}");

    let reload = |query: &str| {
        app.post_json(
            &format!("/api/v1/config/reload{query}"),
            Some(&operator),
            &json!({}),
        )
    };
    let r = reload("?wait_seconds=301");
    assert_eq!(r.status, 400, "{}", r.body);
    assert!(r.body.contains("wait_seconds"), "{}", r.body);
    // A wait must end before the request timeout (30 s), so the answer is the reload's own.
    let r = reload("?wait_seconds=26");
    assert_eq!(r.status, 400, "{}", r.body);
    assert!(r.body.contains("between 0 and 25"), "{}", r.body);
    let r = reload("?wait_seconds=1");
    assert_eq!(r.status, 409, "{}", r.body);
    assert_eq!(r.error_code(), "cycle_active");
    for part in [
        id.as_str(),
        dispatch.as_str(),
        "circuit_open",
        "dispatch:aurora",
    ] {
        assert!(r.body.contains(part), "{part}: {}", r.body);
    }

    let cancel = format!("/api/v1/cycles/{id}/cancel");
    let r = app.request("POST", &cancel, Some(&viewer), None);
    assert_eq!(r.status, 403, "{}", r.body);
    let r = app.request(
        "POST",
        &format!("/api/v1/cycles/{}/cancel", uuid::Uuid::now_v7()),
        Some(&operator),
        None,
    );
    assert_eq!(r.status, 404, "{}", r.body);
    let r = app.request("POST", &cancel, Some(&operator), None);
    assert_eq!(r.status, 200, "{}", r.body);
    let cancelled = r.json();
    assert_eq!(cancelled["cycle"]["status"], "failed", "{cancelled}");
    assert_eq!(
        cancelled["cycle"]["error"],
        format!("cancelled by {operator_id}")
    );
    let entries: Vec<Value> = audit_entries(&app)
        .into_iter()
        .filter(|e| e["action"] == "cycle.cancel" && e["target"] == id.as_str())
        .collect();
    assert_eq!(entries.len(), 1, "{entries:?}");
    assert_eq!(entries[0]["actor"], operator_id.as_str());
    let r = app.request("POST", &cancel, Some(&operator), None);
    assert_eq!(r.status, 409, "{}", r.body);
    assert_eq!(r.error_code(), "cycle_not_running");

    poll_until("the cancelled cycle's dispatch to be cancelled", || {
        let t = task(&app, &dispatch);
        (t["status"] == "cancelled")
            .then_some(())
            .ok_or(t.to_string())
    });
    let d = app.admin_get(&format!("/api/v1/cycles/{id}")).json();
    assert_eq!(d["stage"], "cycle_failed", "{d}");
    let r = reload("");
    assert_eq!(r.status, 200, "{}", r.body);
    // The cycle stays cancelled: it is not resumed, and nothing more is delivered.
    app.clock.advance_ms(3_600_000);
    assert_eq!(receiver.count(), 1);
    let d = app.admin_get(&format!("/api/v1/cycles/{id}")).json();
    assert_eq!(d["cycle"]["status"], "failed", "{d}");
}

/// A reload asked to wait answers once the active cycle has ended within `wait_seconds`
/// (its dispatch is held by the endpoint, then released) instead of 409.
#[test]
fn a_reload_waits_for_a_cycle_that_ends_within_wait_seconds() {
    let receiver = Receiver::start();
    receiver.set_mode(Mode::Hold);
    let profiles = tempfile::tempdir().unwrap();
    write_profiles(
        profiles.path(),
        &json!([{"profile_id": "p1", "label": "P1", "state": "enabled",
                 "execution_rules": {}, "value_tags": {}}]),
        &json!([{"run_profile_id": "r1", "profile_id": "p1", "state": "enabled",
                 "namespace": "ns", "value_tags": {}, "distribution_targets": ["aurora"]}]),
    );
    let url = receiver.url();
    let app = TestApp::start_with(|c| {
        c.cycles.profiles_dir = profiles.path().to_path_buf();
        c.cycles.schedule = String::new().into();
        c.dispatch.endpoints.insert(
            "aurora".into(),
            serde_json::from_value(json!({"url": url, "timeout_seconds": 10})).unwrap(),
        );
    });
    let r = app.post_json(
        "/api/v1/cycles/trigger",
        Some(&app.admin_key),
        &json!({"run_profile_id": "r1"}),
    );
    assert_eq!(r.status, 201, "{}", r.body);
    receiver.wait_held(1);
    let r = std::thread::scope(|scope| {
        scope.spawn(|| {
            std::thread::sleep(std::time::Duration::from_millis(500));
            receiver.set_mode(Mode::Ok);
            receiver.release();
        });
        app.post_json(
            "/api/v1/config/reload?wait_seconds=20",
            Some(&app.admin_key),
            &json!({}),
        )
    });
    assert_eq!(r.status, 200, "{}", r.body);
    assert_eq!(receiver.count(), 1);
}

/// The cycle page's cancel form (operators only) cancels a running cycle as the API does,
/// audited with the signed-in key; the form is gone once the cycle has ended.
#[test]
fn the_dashboard_cancels_a_running_cycle() {
    let receiver = Receiver::start();
    receiver.set_mode(Mode::Hold);
    let profiles = tempfile::tempdir().unwrap();
    write_profiles(
        profiles.path(),
        &json!([{"profile_id": "p1", "label": "P1", "state": "enabled",
                 "execution_rules": {}, "value_tags": {}}]),
        &json!([{"run_profile_id": "r1", "profile_id": "p1", "state": "enabled",
                 "namespace": "ns", "value_tags": {}, "distribution_targets": ["aurora"]}]),
    );
    let url = receiver.url();
    let app = TestApp::start_with(|c| {
        c.cycles.profiles_dir = profiles.path().to_path_buf();
        c.cycles.schedule = String::new().into();
        c.dispatch.endpoints.insert(
            "aurora".into(),
            serde_json::from_value(json!({"url": url, "timeout_seconds": 10})).unwrap(),
        );
    });
    let r = app.post_json(
        "/api/v1/cycles/trigger",
        Some(&app.admin_key),
        &json!({"run_profile_id": "r1"}),
    );
    assert_eq!(r.status, 201, "{}", r.body);
    let id = r.json()["cycle_run_id"].as_str().unwrap().to_string();
    receiver.wait_held(1);

    let viewer = Client::sign_in(&app.base, &app.create_key("viewer"));
    assert!(
        !viewer
            .get(&format!("/admin/cycles/{id}"))
            .body
            .contains("/cancel")
    );
    let (operator_id, operator_key) =
        app.create_key_with(&json!({"name": "ops", "role": "operator"}));
    let operator = Client::sign_in(&app.base, &operator_key);
    let r = operator.post(&format!("/admin/cycles/{id}/cancel"), &[]);
    assert_eq!(r.status, 303, "{}", r.body);
    assert_eq!(
        r.header("location"),
        Some(format!("/admin/cycles/{id}?msg=cycle_cancelled").as_str())
    );
    let page = operator
        .get(&format!("/admin/cycles/{id}?msg=cycle_cancelled"))
        .body;
    assert!(page.contains("Cycle cancelled."), "{page}");
    assert!(!page.contains(&format!("/admin/cycles/{id}/cancel")));
    let entry = audit_entries(&app)
        .into_iter()
        .find(|e| e["action"] == "cycle.cancel")
        .expect("audited");
    assert_eq!(entry["actor"], operator_id.as_str());
    let d = app.admin_get(&format!("/api/v1/cycles/{id}")).json();
    assert_eq!(d["cycle"]["status"], "failed", "{d}");
    receiver.set_mode(Mode::Ok);
    receiver.release();
}
