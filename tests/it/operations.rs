//! Operator actions on the queue through the real router: retry a task now, delete a task,
//! retry the dead tasks of one error class, search, the scheduled tasks with "run now", each
//! audited with the caller's key and refused to a viewer; and the same actions as dashboard
//! forms.

use keel::clock::{Clock, rfc3339};
use keel::config::{Config, HandlerConfig, HttpHandlerConfig};
use serde_json::{Value, json};

use crate::admin::{Client, audit_entries};
use crate::receiver::{Mode, Receiver, closed_port_url};
use crate::support::{TestApp, poll_until};

fn http(url: &str) -> HttpHandlerConfig {
    HttpHandlerConfig {
        url: url.to_string(),
        method: "POST".into(),
        token: None,
        signing_secret: None,
        timeout_seconds: 30,
        target_concurrency: 8,
        concurrency: None,
        max_attempts: None,
        circuit: Default::default(),
    }
}

fn add_http(c: &mut Config, task_type: &str, url: &str) {
    c.handlers
        .insert(task_type.into(), HandlerConfig::Http(http(url)));
}

/// Submits as the admin and expects 201; returns the id.
fn submit(app: &TestApp, body: &Value) -> String {
    let r = app.post_json("/api/v1/tasks", Some(&app.admin_key), body);
    assert_eq!(r.status, 201, "submit {body}: {}", r.body);
    r.json()["id"].as_str().unwrap().to_string()
}

fn task(app: &TestApp, id: &str) -> Value {
    let r = app.admin_get(&format!("/api/v1/tasks/{id}"));
    assert_eq!(r.status, 200, "GET task {id}: {}", r.body);
    r.json()["task"].clone()
}

fn wait_task(app: &TestApp, id: &str, what: &str, ok: impl Fn(&Value) -> bool) -> Value {
    poll_until(&format!("task {id} to be {what}"), || {
        let t = task(app, id);
        if ok(&t) { Ok(t) } else { Err(t.to_string()) }
    })
}

fn wait_status(app: &TestApp, id: &str, status: &str) -> Value {
    wait_task(app, id, status, |t| t["status"] == status)
}

fn dispatch_now(app: &TestApp) -> usize {
    app.block_on(app.app.dispatcher.dispatch_ready())
        .expect("dispatch round")
}

/// The one audit entry of `action` on `target`.
fn audited(app: &TestApp, action: &str, target: &str) -> Value {
    let found: Vec<Value> = audit_entries(app)
        .into_iter()
        .filter(|e| e["action"] == action && e["target"] == target)
        .collect();
    assert_eq!(found.len(), 1, "{action} on {target}: {found:?}");
    found[0].clone()
}

fn ids(v: &Value) -> Vec<String> {
    v["tasks"]
        .as_array()
        .unwrap()
        .iter()
        .map(|t| t["id"].as_str().unwrap().to_string())
        .collect()
}

/// A retrying task runs again at once without waiting for its backoff, a dead one with a fresh
/// set of attempts; other statuses are 409, a viewer 403, an unknown id 404; audited.
#[test]
fn retry_now_runs_a_dead_or_retrying_task_again() {
    let receiver = Receiver::start();
    receiver.set_mode(Mode::Status(500));
    let app = TestApp::start_with(|c| add_http(c, "alpha", &receiver.url()));
    let (operator_id, operator) = app.create_key_with(&json!({"name": "ops", "role": "operator"}));
    let viewer = app.create_key("viewer");
    let id = submit(
        &app,
        &json!({"type": "alpha", "payload": {}, "max_attempts": 2}),
    );
    let t = wait_task(&app, &id, "retrying", |t| t["status"] == "retrying");
    assert_eq!(t["attempts_used"], 1, "{t}");
    assert_eq!(dispatch_now(&app), 0, "the backoff is still running");
    let path = format!("/api/v1/tasks/{id}/retry");

    let r = app.post_json(&path, Some(&viewer), &json!({}));
    assert_eq!(r.status, 403, "{}", r.body);
    assert_eq!(task(&app, &id)["status"], "retrying");

    // The clock has not moved: only the retry makes it due.
    let r = app.post_json(&path, Some(&operator), &json!({}));
    assert_eq!(r.status, 200, "{}", r.body);
    let t = wait_status(&app, &id, "dead");
    assert_eq!(t["attempts_used"], 2, "{t}");
    assert_eq!(receiver.count(), 2);
    let e = audited(&app, "task.retry", &id);
    assert_eq!(e["actor"], operator_id);
    assert_eq!(e["detail"]["from"], "retrying");

    // Dead: a fresh set of attempts, and it succeeds.
    receiver.set_mode(Mode::Ok);
    let r = app.post_json(&path, Some(&operator), &json!({}));
    assert_eq!(r.status, 200, "{}", r.body);
    let t = wait_status(&app, &id, "succeeded");
    assert_eq!(t["attempts_used"], 1, "{t}");
    assert_eq!(t["attempts"].as_array().unwrap().len(), 3, "{t}");
    assert_eq!(receiver.count(), 3);

    // Succeeded: nothing to retry.
    let seq = app.audit_seq();
    let r = app.post_json(&path, Some(&operator), &json!({}));
    assert_eq!(r.status, 409, "{}", r.body);
    assert!(r.body.contains("succeeded"), "{}", r.body);
    assert_eq!(app.audit_seq(), seq);
    let r = app.post_json(
        "/api/v1/tasks/0194d3a2-7b1c-7d3e-9f00-5a1b2c3d4e5f/retry",
        Some(&operator),
        &json!({}),
    );
    assert_eq!(r.status, 404, "{}", r.body);
    let r = app.post_json("/api/v1/tasks/nope/retry", Some(&operator), &json!({}));
    assert_eq!(r.status, 400, "{}", r.body);
}

/// DELETE removes a task that is not running (it never runs, its idempotency key is free
/// again); a running task is 409 and keeps running; a viewer gets 403; audited.
#[test]
fn delete_removes_a_waiting_or_finished_task_but_not_a_running_one() {
    let receiver = Receiver::start();
    receiver.set_mode(Mode::Hold);
    let app = TestApp::start_with(|c| add_http(c, "alpha", &receiver.url()));
    let (operator_id, operator) = app.create_key_with(&json!({"name": "ops", "role": "operator"}));
    let viewer = app.create_key("viewer");

    let running = submit(
        &app,
        &json!({"type": "alpha", "payload": {"n": 1}, "idempotency_key": "k-1"}),
    );
    wait_status(&app, &running, "running");
    let path = format!("/api/v1/tasks/{running}");
    let r = app.request("DELETE", &path, Some(&operator), None);
    assert_eq!(r.status, 409, "{}", r.body);
    assert!(r.body.contains("running"), "{}", r.body);
    receiver.release();
    wait_status(&app, &running, "succeeded");

    assert_eq!(
        app.request("DELETE", &path, Some(&viewer), None).status,
        403
    );
    let r = app.request("DELETE", &path, Some(&operator), None);
    assert_eq!(r.status, 204, "{}", r.body);
    assert_eq!(app.admin_get(&path).status, 404);
    assert_eq!(app.admin_get(&format!("{path}/logs")).status, 404);
    assert_eq!(
        app.request("DELETE", &path, Some(&operator), None).status,
        404
    );
    let e = audited(&app, "task.delete", &running);
    assert_eq!(e["actor"], operator_id);
    assert_eq!(e["detail"]["status"], "succeeded");
    // The idempotency key named the deleted task: it makes a new one.
    let again = app.post_json(
        "/api/v1/tasks",
        Some(&app.admin_key),
        &json!({"type": "alpha", "payload": {"n": 1}, "idempotency_key": "k-1"}),
    );
    assert_eq!(again.status, 201, "{}", again.body);
    receiver.set_mode(Mode::Ok);
    wait_status(&app, again.json()["id"].as_str().unwrap(), "succeeded");

    // A scheduled task, deleted, never runs.
    let later = rfc3339(app.clock.now_ms() + 3_600_000);
    let scheduled = submit(
        &app,
        &json!({"type": "alpha", "payload": {}, "run_at": later}),
    );
    let r = app.request(
        "DELETE",
        &format!("/api/v1/tasks/{scheduled}"),
        Some(&operator),
        None,
    );
    assert_eq!(r.status, 204, "{}", r.body);
    let listed = app.admin_get("/api/v1/tasks/scheduled").json();
    assert!(ids(&listed).is_empty(), "{listed}");
    let delivered = receiver.count();
    app.clock.set_ms(app.clock.now_ms() + 7_200_000);
    assert_eq!(dispatch_now(&app), 0);
    assert_eq!(receiver.count(), delivered);
    let counts = app.admin_get("/api/v1/tasks?status=queued").json();
    assert!(ids(&counts).is_empty(), "{counts}");
}

/// Dead tasks of one error class come back in bounded batches, `more` telling whether others
/// are left; tasks of another class stay dead; no filter or a bad `max` is 422.
#[test]
fn dlq_retry_moves_one_error_class_back_in_batches() {
    let receiver = Receiver::start();
    receiver.set_mode(Mode::Status(400));
    let app = TestApp::start_with(|c| {
        add_http(c, "alpha", &receiver.url());
        add_http(c, "beta", &closed_port_url());
    });
    let (operator_id, operator) = app.create_key_with(&json!({"name": "ops", "role": "operator"}));
    let viewer = app.create_key("viewer");
    let alpha: Vec<String> = (0..3)
        .map(|i| {
            submit(
                &app,
                &json!({"type": "alpha", "payload": {"i": i}, "max_attempts": 1}),
            )
        })
        .collect();
    let beta = submit(
        &app,
        &json!({"type": "beta", "payload": {}, "max_attempts": 1}),
    );
    for id in alpha.iter().chain([&beta]) {
        wait_status(&app, id, "dead");
    }
    let beta_class = task(&app, &beta)["attempts"][0]["error_class"].clone();
    assert_ne!(beta_class, "http_4xx");
    receiver.set_mode(Mode::Ok);
    let retry = |key: &str, body: Value| app.post_json("/api/v1/dlq/retry", Some(key), &body);

    let seq = app.audit_seq();
    for (body, status) in [
        (json!({}), 422),
        (json!({"max": 10}), 422),
        (json!({"error_class": "http_4xx", "max": 0}), 422),
        (json!({"error_class": "http_4xx", "max": 1001}), 422),
        (json!({"error_class": "http_4xx", "extra": 1}), 422),
    ] {
        let r = retry(&operator, body.clone());
        assert_eq!(r.status, status, "{body}: {}", r.body);
    }
    let r = retry(&viewer, json!({"error_class": "http_4xx"}));
    assert_eq!(r.status, 403, "{}", r.body);
    assert_eq!(app.audit_seq(), seq, "nothing was written");
    assert_eq!(app.admin_get("/api/v1/dlq/stats").json()["total"], 4);

    let r = retry(&operator, json!({"error_class": "http_4xx", "max": 2}));
    assert_eq!(r.status, 200, "{}", r.body);
    let first = r.json();
    assert_eq!(
        (first["count"].clone(), first["more"].clone()),
        (json!(2), json!(true))
    );
    let r = retry(&operator, json!({"error_class": "http_4xx", "max": 2}));
    let second = r.json();
    assert_eq!(
        (second["count"].clone(), second["more"].clone()),
        (json!(1), json!(false)),
        "{second}"
    );
    let mut moved = ids(&first);
    moved.extend(ids(&second));
    moved.sort();
    let mut expected = alpha.clone();
    expected.sort();
    assert_eq!(moved, expected, "the oldest first, each once");
    for id in &alpha {
        let t = wait_status(&app, id, "succeeded");
        assert_eq!(t["attempts_used"], 1, "{t}");
    }
    assert_eq!(task(&app, &beta)["status"], "dead");
    let r = retry(&operator, json!({"error_class": "http_4xx"}));
    assert_eq!(r.json()["count"], 0, "{}", r.body);
    // Type and class together.
    let r = retry(
        &operator,
        json!({"error_class": "http_4xx", "type": "beta"}),
    );
    assert_eq!(r.json()["count"], 0, "{}", r.body);
    let batches: Vec<Value> = audit_entries(&app)
        .into_iter()
        .filter(|e| e["action"] == "dlq.retry")
        .collect();
    assert_eq!(
        batches.len(),
        2,
        "empty batches are not audited: {batches:?}"
    );
    assert!(batches.iter().all(|e| e["actor"] == operator_id.as_str()));
    assert_eq!(batches[0]["detail"]["error_class"], "http_4xx");
}

/// Search finds a task by id and by idempotency key exactly and by payload text within a
/// bounded scan that says how far it read and where to go on.
#[test]
fn search_by_id_key_and_payload_with_a_bounded_scan() {
    let app = TestApp::start_with(|c| add_http(c, "alpha", &closed_port_url()));
    let later = rfc3339(app.clock.now_ms() + 3_600_000);
    let mut made = Vec::new();
    for i in 0..5 {
        made.push(submit(
            &app,
            &json!({"type": "alpha", "payload": {"order": format!("A-{i}"), "tag": "needle"},
                    "run_at": later, "idempotency_key": format!("key-{i}")}),
        ));
    }
    let search = |q: &str| {
        let r = app.admin_get(&format!("/api/v1/tasks/search?{q}"));
        assert_eq!(r.status, 200, "{q}: {}", r.body);
        r.json()
    };
    let v = search(&format!("q={}", made[2]));
    assert_eq!(ids(&v)[0], made[2], "{v}");
    let v = search("q=key-3");
    assert_eq!(ids(&v), vec![made[3].clone()], "{v}");
    let v = search("q=A-1");
    assert_eq!(ids(&v), vec![made[1].clone()], "{v}");
    assert_eq!(v["scanned"], 5);
    assert_eq!(v["next_cursor"], Value::Null);

    // A scan of two records at a time walks all five, newest first.
    let mut seen = Vec::new();
    let mut cursor = String::new();
    loop {
        let v = search(&format!("q=needle&scan=2{cursor}"));
        assert!(v["scanned"].as_u64().unwrap() <= 2, "{v}");
        seen.extend(ids(&v));
        match v["next_cursor"].as_str() {
            Some(c) => cursor = format!("&cursor={c}"),
            None => break,
        }
    }
    let mut newest_first = made.clone();
    newest_first.reverse();
    assert_eq!(seen, newest_first);
    assert!(ids(&search("q=nothing-like-this")).is_empty());

    for (q, status) in [
        ("q=", 422),
        ("", 400),
        ("q=x&scan=0", 400),
        ("q=x&scan=5001", 400),
        ("q=x&limit=0", 400),
        ("q=x&cursor=nope", 400),
        ("q=x&bogus=1", 400),
    ] {
        let r = app.admin_get(&format!("/api/v1/tasks/search?{q}"));
        assert_eq!(r.status, status, "{q}: {}", r.body);
    }
}

/// The scheduled list shows delayed tasks soonest first, paged; "run now" makes one due at once
/// (audited); a task not scheduled for later is 409; a viewer gets 403.
#[test]
fn scheduled_tasks_are_listed_soonest_first_and_run_now() {
    let receiver = Receiver::start();
    let app = TestApp::start_with(|c| add_http(c, "alpha", &receiver.url()));
    let (operator_id, operator) = app.create_key_with(&json!({"name": "ops", "role": "operator"}));
    let viewer = app.create_key("viewer");
    let now = app.clock.now_ms();
    let late = submit(
        &app,
        &json!({"type": "alpha", "payload": {}, "run_at": rfc3339(now + 7_200_000)}),
    );
    let soon = submit(
        &app,
        &json!({"type": "alpha", "payload": {}, "run_at": rfc3339(now + 3_600_000)}),
    );
    let v = app.admin_get("/api/v1/tasks/scheduled").json();
    assert_eq!(ids(&v), vec![soon.clone(), late.clone()], "{v}");
    let page = app.admin_get("/api/v1/tasks/scheduled?limit=1").json();
    assert_eq!(ids(&page), vec![soon.clone()]);
    let after = page["next_after"]
        .as_str()
        .expect("a next page")
        .to_string();
    let page = app
        .admin_get(&format!("/api/v1/tasks/scheduled?limit=1&after={after}"))
        .json();
    assert_eq!(ids(&page), vec![late.clone()]);
    assert_eq!(page["next_after"], Value::Null);
    for q in ["limit=0", "after=garbage", "after=1_nope"] {
        let r = app.admin_get(&format!("/api/v1/tasks/scheduled?{q}"));
        assert_eq!(r.status, 400, "{q}: {}", r.body);
    }

    let path = format!("/api/v1/tasks/{late}/run-now");
    assert_eq!(app.post_json(&path, Some(&viewer), &json!({})).status, 403);
    let r = app.post_json(&path, Some(&operator), &json!({}));
    assert_eq!(r.status, 200, "{}", r.body);
    wait_status(&app, &late, "succeeded");
    assert_eq!(receiver.count(), 1);
    assert_eq!(
        task(&app, &soon)["status"],
        "queued",
        "the other one still waits"
    );
    assert_eq!(audited(&app, "task.run_now", &late)["actor"], operator_id);
    let r = app.post_json(&path, Some(&operator), &json!({}));
    assert_eq!(r.status, 409, "{}", r.body);
    let v = app.admin_get("/api/v1/tasks/scheduled").json();
    assert_eq!(ids(&v), vec![soon]);
}

/// The dashboard's forms do what the API does, audited with the signed-in key, and a viewer's
/// session is refused them; the scheduled and search pages render.
#[test]
fn dashboard_forms_retry_delete_run_now_and_retry_by_class() {
    let receiver = Receiver::start();
    receiver.set_mode(Mode::Status(400));
    let app = TestApp::start_with(|c| add_http(c, "alpha", &receiver.url()));
    let (operator_id, operator) = app.create_key_with(&json!({"name": "ops", "role": "operator"}));
    let op = Client::sign_in(&app.base, &operator);
    let viewer = Client::sign_in(&app.base, &app.create_key("viewer"));
    let dead = submit(
        &app,
        &json!({"type": "alpha", "payload": {"n": 1}, "max_attempts": 1}),
    );
    let other = submit(
        &app,
        &json!({"type": "alpha", "payload": {"n": 2}, "max_attempts": 1}),
    );
    wait_status(&app, &dead, "dead");
    wait_status(&app, &other, "dead");
    receiver.set_mode(Mode::Ok);

    let page = op.get(&format!("/admin/tasks/{dead}")).body;
    assert!(
        page.contains(&format!("/admin/tasks/{dead}/retry")),
        "{page}"
    );
    assert!(
        page.contains(&format!("/admin/tasks/{dead}/delete")),
        "{page}"
    );
    let seen = viewer.get(&format!("/admin/tasks/{dead}")).body;
    assert!(!seen.contains("/retry\""), "a viewer sees no retry form");
    for form in [
        format!("/admin/tasks/{dead}/retry"),
        format!("/admin/tasks/{dead}/delete"),
        format!("/admin/tasks/{dead}/run-now"),
        "/admin/dlq/retry".to_string(),
    ] {
        let r = viewer.post(&form, &[("error_class", "http_4xx"), ("max", "10")]);
        assert_eq!(r.status, 403, "{form}: {}", r.body);
    }
    assert_eq!(task(&app, &dead)["status"], "dead");

    let r = op.post(&format!("/admin/tasks/{dead}/retry"), &[]);
    assert_eq!(r.status, 303, "{}", r.body);
    assert_eq!(
        r.header("location"),
        Some(format!("/admin/tasks/{dead}?msg=retried").as_str())
    );
    wait_status(&app, &dead, "succeeded");
    assert_eq!(audited(&app, "task.retry", &dead)["actor"], operator_id);
    let r = op.post(&format!("/admin/tasks/{dead}/retry"), &[]);
    assert_eq!(r.status, 409, "{}", r.body);

    let dlq = op.get("/admin/dlq").body;
    assert!(dlq.contains("action=\"/admin/dlq/retry\""), "{dlq}");
    assert!(dlq.contains("<option value=\"http_4xx\">"), "{dlq}");
    let r = op.post(
        "/admin/dlq/retry",
        &[("error_class", "http_4xx"), ("max", "x")],
    );
    assert_eq!(r.status, 400, "{}", r.body);
    let r = op.post(
        "/admin/dlq/retry",
        &[("error_class", "http_4xx"), ("max", "10")],
    );
    assert_eq!(r.status, 303, "{}", r.body);
    assert_eq!(r.header("location"), Some("/admin/dlq?msg=retried_all"));
    wait_status(&app, &other, "succeeded");

    // Scheduled: listed, run now.
    let later = rfc3339(app.clock.now_ms() + 3_600_000);
    let scheduled = submit(
        &app,
        &json!({"type": "alpha", "payload": {"find": "me-please"}, "run_at": later}),
    );
    let page = op.get("/admin/scheduled").body;
    assert!(
        page.contains(&format!("/admin/tasks/{scheduled}/run-now")),
        "{page}"
    );
    assert!(!viewer.get("/admin/scheduled").body.contains("/run-now"));
    let r = op.post(&format!("/admin/tasks/{scheduled}/run-now"), &[]);
    assert_eq!(r.status, 303, "{}", r.body);
    assert_eq!(r.header("location"), Some("/admin/scheduled?msg=run_now"));
    wait_status(&app, &scheduled, "succeeded");
    assert_eq!(
        audited(&app, "task.run_now", &scheduled)["actor"],
        operator_id
    );

    // Search, then delete.
    let found = viewer.get("/admin/search?q=me-please");
    assert_eq!(found.status, 200, "{}", found.body);
    assert!(
        found.body.contains(&format!("/admin/tasks/{scheduled}")),
        "{}",
        found.body
    );
    assert!(
        found.body.contains("looked for in 3 tasks"),
        "{}",
        found.body
    );
    let r = op.post(&format!("/admin/tasks/{scheduled}/delete"), &[]);
    assert_eq!(r.status, 303, "{}", r.body);
    assert_eq!(r.header("location"), Some("/admin/tasks?msg=deleted"));
    assert_eq!(
        app.admin_get(&format!("/api/v1/tasks/{scheduled}")).status,
        404
    );
    assert_eq!(
        audited(&app, "task.delete", &scheduled)["actor"],
        operator_id
    );
    let found = viewer.get("/admin/search?q=me-please").body;
    assert!(
        !found.contains(&format!("/admin/tasks/{scheduled}")),
        "{found}"
    );
}

/// A paused type's tasks keep waiting while other types run, across a restart; resuming lets
/// them run; the pause and resume are audited; a viewer gets 403, an unknown type 404, a
/// repeated pause or resume 409; the dashboard pauses and resumes too.
#[test]
fn a_paused_task_type_waits_across_a_restart_until_resumed() {
    let receiver = Receiver::start();
    let url = receiver.url();
    let configure = move |c: &mut Config| {
        add_http(c, "alpha", &url);
        add_http(c, "beta", &url);
    };
    let app = TestApp::start_with(configure.clone());
    let (operator_id, operator) = app.create_key_with(&json!({"name": "ops", "role": "operator"}));
    let viewer = app.create_key("viewer");
    let pause = "/api/v1/task-types/alpha/pause";
    assert_eq!(app.post_json(pause, Some(&viewer), &json!({})).status, 403);
    let r = app.post_json("/api/v1/task-types/nope/pause", Some(&operator), &json!({}));
    assert_eq!(r.status, 404, "{}", r.body);
    let r = app.post_json(pause, Some(&operator), &json!({}));
    assert_eq!(r.status, 200, "{}", r.body);
    let v = r.json();
    assert_eq!(v["task_type"]["paused"], true, "{v}");
    assert_eq!(v["task_type"]["paused_by"], operator_id.as_str());
    assert_eq!(
        app.post_json(pause, Some(&operator), &json!({})).status,
        409
    );
    assert_eq!(
        audited(&app, "task_type.pause", "alpha")["actor"],
        operator_id
    );

    let waiting = submit(&app, &json!({"type": "alpha", "payload": {}}));
    let other = submit(&app, &json!({"type": "beta", "payload": {}}));
    wait_status(&app, &other, "succeeded");
    assert_eq!(dispatch_now(&app), 0);
    assert_eq!(task(&app, &waiting)["status"], "queued");
    assert_eq!(receiver.count(), 1);
    let types = app.admin_get("/api/v1/task-types").json();
    let alpha = types["types"]
        .as_array()
        .unwrap()
        .iter()
        .find(|t| t["type"] == "alpha")
        .unwrap()
        .clone();
    assert_eq!(alpha["paused"], true, "{types}");
    assert_eq!(alpha["counts"], json!({"queued": 1}), "{types}");
    let beta = types["types"]
        .as_array()
        .unwrap()
        .iter()
        .find(|t| t["type"] == "beta")
        .unwrap()
        .clone();
    assert_eq!(beta["paused"], false, "{types}");

    // The pause is stored.
    let dir = app.stop();
    let app = TestApp::start_in(dir, configure);
    assert_eq!(dispatch_now(&app), 0);
    assert_eq!(task(&app, &waiting)["status"], "queued");
    let page = Client::sign_in(&app.base, &operator);
    let html = page.get("/admin/task-types").body;
    assert!(html.contains("/admin/task-types/alpha/resume"), "{html}");
    assert!(html.contains("/admin/task-types/beta/pause"), "{html}");
    let viewer_page = Client::sign_in(&app.base, &viewer);
    assert!(
        !viewer_page
            .get("/admin/task-types")
            .body
            .contains("/resume\"")
    );
    let r = viewer_page.post("/admin/task-types/alpha/resume", &[]);
    assert_eq!(r.status, 403, "{}", r.body);

    let r = page.post("/admin/task-types/alpha/resume", &[]);
    assert_eq!(r.status, 303, "{}", r.body);
    assert_eq!(
        r.header("location"),
        Some("/admin/task-types?msg=type_resumed")
    );
    wait_status(&app, &waiting, "succeeded");
    assert_eq!(
        audited(&app, "task_type.resume", "alpha")["actor"],
        operator_id
    );
    let r = app.post_json(
        "/api/v1/task-types/alpha/resume",
        Some(&operator),
        &json!({}),
    );
    assert_eq!(r.status, 409, "{}", r.body);
    let r = page.post("/admin/task-types/beta/pause", &[]);
    assert_eq!(r.status, 303, "{}", r.body);
    let types = app.admin_get("/api/v1/task-types").json();
    let beta = types["types"]
        .as_array()
        .unwrap()
        .iter()
        .find(|t| t["type"] == "beta")
        .unwrap()
        .clone();
    assert_eq!(beta["paused"], true, "{types}");
}

/// Finished attempts are counted per UTC day: 30 days, today last, failed among processed; the
/// dashboard charts them.
#[test]
fn daily_counts_of_processed_and_failed_attempts() {
    let receiver = Receiver::start();
    receiver.set_mode(Mode::Status(500));
    let app = TestApp::start_with(|c| add_http(c, "alpha", &receiver.url()));
    let viewer = app.create_key("viewer");
    let failing = submit(
        &app,
        &json!({"type": "alpha", "payload": {}, "max_attempts": 1}),
    );
    wait_status(&app, &failing, "dead");
    receiver.set_mode(Mode::Ok);
    let ok = submit(&app, &json!({"type": "alpha", "payload": {}}));
    wait_status(&app, &ok, "succeeded");

    let r = app.get("/api/v1/stats/daily", Some(&viewer));
    assert_eq!(r.status, 200, "{}", r.body);
    let days = r.json()["days"].as_array().unwrap().clone();
    assert_eq!(days.len(), 30);
    let today = rfc3339(app.clock.now_ms())[..10].to_string();
    assert_eq!(
        days[29],
        json!({"date": today, "processed": 2, "failed": 1})
    );
    assert!(
        days[..29]
            .iter()
            .all(|d| d["processed"] == 0 && d["failed"] == 0)
    );

    // The next day.
    app.clock.set_ms(app.clock.now_ms() + 86_400_000);
    let next = submit(&app, &json!({"type": "alpha", "payload": {}}));
    wait_status(&app, &next, "succeeded");
    let days = app.admin_get("/api/v1/stats/daily").json()["days"].clone();
    assert_eq!(
        (days[28]["processed"].clone(), days[29]["processed"].clone()),
        (json!(2), json!(1))
    );
    assert_eq!(days[28]["date"], today.as_str());

    let page = Client::sign_in(&app.base, &viewer).get("/admin/task-types");
    assert_eq!(page.status, 200, "{}", page.body);
    assert!(page.body.contains("3 processed, 1 failed"), "{}", page.body);
    assert!(
        page.body.contains("Processed and failed attempts per day"),
        "{}",
        page.body
    );
}
