//! The task queue through the real API and the in-process app: lifecycle, idempotency, leases,
//! backoff on the manual clock, the http and command executors against a local `Receiver`, the
//! dead-letter queue, cancellation, circuit breakers, queue depth, priorities, listings, live
//! streams and metrics.
//!
//! The dispatcher runs on real time (a 250 ms poll, woken by enqueues and completions) while due
//! times and lease expiries come from the manual clock `app.clock`: a test moves the clock past a
//! due time instead of sleeping, and proves that nothing is due by calling the dispatcher's
//! `dispatch_ready` itself.

use std::io::{BufRead, BufReader};
use std::path::Path;
use std::sync::{Arc, Barrier};
use std::time::Duration;

use keel::clock::{Clock, rfc3339};
use keel::config::{
    CircuitScope, CommandHandlerConfig, Config, HandlerConfig, HttpHandlerConfig, Secret,
};
use keel::queue::{Completion, Outcome, Status};
use serde_json::{Value, json};
use uuid::Uuid;

use crate::receiver::{Mode, Receiver, closed_port_url, ok_body};
use crate::support::{Resp, START_MS, TestApp, poll_until, request};

/// A Standard Webhooks secret (the spec's example key).
const SECRET: &str = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw";

// ---------------------------------------------------------------------------------------------
// Helpers

fn http(url: &str) -> HttpHandlerConfig {
    HttpHandlerConfig {
        url: url.to_string(),
        method: "POST".into(),
        token: None,
        signing_secret: None,
        timeout_seconds: 30,
        target_concurrency: 8,
        circuit: CircuitScope::PerHost,
        concurrency: None,
        max_attempts: None,
    }
}

fn add_http(c: &mut Config, task_type: &str, h: HttpHandlerConfig) {
    c.handlers.insert(task_type.into(), HandlerConfig::Http(h));
}

/// `/bin/sh -c <script> sh <args…>` with PATH passed through.
fn shell(script: &str, args: &[&str]) -> CommandHandlerConfig {
    let mut argv = vec!["-c".to_string(), script.to_string(), "sh".to_string()];
    argv.extend(args.iter().map(|a| a.to_string()));
    CommandHandlerConfig {
        program: "/bin/sh".into(),
        args: argv,
        working_dir: None,
        env_allow: vec!["PATH".into()],
        timeout_seconds: 30,
        concurrency: None,
        max_attempts: None,
    }
}

fn add_command(c: &mut Config, task_type: &str, h: CommandHandlerConfig) {
    c.handlers
        .insert(task_type.into(), HandlerConfig::Command(h));
}

fn submit(app: &TestApp, key: &str, body: &Value) -> Resp {
    app.post_json("/api/v1/tasks", Some(key), body)
}

/// Submits and expects 201; returns the task id.
fn submit_new(app: &TestApp, key: &str, body: &Value) -> String {
    let r = submit(app, key, body);
    assert_eq!(r.status, 201, "submit {body}: {}", r.body);
    let v = r.json();
    assert_eq!(v["created"], true, "{v}");
    v["id"].as_str().expect("id").to_string()
}

/// GET /api/v1/tasks/{id} as the admin; the `task` object.
fn task(app: &TestApp, id: &str) -> Value {
    let r = app.admin_get(&format!("/api/v1/tasks/{id}"));
    assert_eq!(r.status, 200, "GET task {id}: {}", r.body);
    r.json()["task"].clone()
}

/// Polls the task until `ok` holds.
fn wait_task(app: &TestApp, id: &str, what: &str, ok: impl Fn(&Value) -> bool) -> Value {
    poll_until(&format!("task {id} to be {what}"), || {
        let t = task(app, id);
        if ok(&t) { Ok(t) } else { Err(t.to_string()) }
    })
}

fn wait_status(app: &TestApp, id: &str, status: &str) -> Value {
    wait_task(app, id, status, |t| t["status"] == status)
}

/// Polls until the task waits for its next attempt after `used` counted attempts.
fn wait_retrying(app: &TestApp, id: &str, used: u64) -> Value {
    wait_task(app, id, &format!("retrying after {used} attempts"), |t| {
        t["status"] == "retrying" && t["attempts_used"] == used
    })
}

fn ms(text: &Value) -> i64 {
    let s = text
        .as_str()
        .unwrap_or_else(|| panic!("not a time: {text}"));
    chrono::DateTime::parse_from_rfc3339(s)
        .unwrap_or_else(|e| panic!("{s}: {e}"))
        .timestamp_millis()
}

fn now(app: &TestApp) -> i64 {
    app.clock.now_ms()
}

/// Sets the manual clock and wakes the dispatcher (it would notice within 250 ms anyway).
fn set_clock(app: &TestApp, at: i64) {
    app.clock.set_ms(at);
    app.app.queue.wake().notify_one();
}

fn advance(app: &TestApp, by_ms: i64) {
    set_clock(app, now(app) + by_ms);
}

/// Runs one dispatch round now; returns how many tasks it started.
fn dispatch_now(app: &TestApp) -> usize {
    app.block_on(app.app.dispatcher.dispatch_ready())
        .expect("dispatch round")
}

/// Every audit entry, oldest first.
fn audit_entries(app: &TestApp) -> Vec<Value> {
    let mut entries = Vec::new();
    let mut after = 0u64;
    loop {
        let r = app.admin_get(&format!("/api/v1/audit?after={after}&limit=1000"));
        assert_eq!(r.status, 200, "{}", r.body);
        let page = r.json();
        entries.extend(page["entries"].as_array().expect("entries").iter().cloned());
        match page["next_after"].as_u64() {
            Some(next) => after = next,
            None => return entries,
        }
    }
}

/// The one audit entry with this action and target.
fn audit_entry(app: &TestApp, action: &str, target: &str) -> Value {
    let found: Vec<Value> = audit_entries(app)
        .into_iter()
        .filter(|e| e["action"] == action && e["target"] == target)
        .collect();
    assert_eq!(
        found.len(),
        1,
        "expected one {action} entry for {target}, got {found:?}"
    );
    found[0].clone()
}

fn metrics(app: &TestApp) -> String {
    let r = app.admin_get("/metrics");
    assert_eq!(r.status, 200, "{}", r.body);
    r.body
}

/// The value of the sample line that starts with exactly `series `.
fn sample(text: &str, series: &str) -> Option<f64> {
    text.lines()
        .find_map(|l| l.strip_prefix(series)?.strip_prefix(' '))
        .map(|v| v.parse().unwrap_or(f64::NAN))
}

fn circuit(app: &TestApp, name: &str) -> Option<Value> {
    let r = app.admin_get("/api/v1/circuits");
    assert_eq!(r.status, 200, "{}", r.body);
    r.json()["circuits"]
        .as_array()
        .expect("circuits")
        .iter()
        .find(|c| c["name"] == name)
        .cloned()
}

fn wait_circuit(app: &TestApp, name: &str, state: &str) -> Value {
    poll_until(&format!("circuit {name} to be {state}"), || {
        match circuit(app, name) {
            Some(c) if c["state"] == state => Ok(c),
            other => Err(format!("{other:?}")),
        }
    })
}

fn webhook_id_of(id: &str) -> String {
    format!("msg_{}", id.replace('-', ""))
}

fn uuid(id: &str) -> Uuid {
    Uuid::parse_str(id).expect("uuid")
}

/// Whether a process exists and is not a zombie (a killed child may stay a zombie until its
/// parent reaps it; it runs nothing).
fn alive(pid: u32) -> bool {
    match std::fs::read_to_string(format!("/proc/{pid}/stat")) {
        Err(_) => false,
        Ok(stat) => {
            let state = stat
                .rsplit_once(')')
                .and_then(|(_, rest)| rest.trim_start().chars().next());
            !matches!(state, Some('Z' | 'X') | None)
        }
    }
}

/// Waits for a file a script writes (atomically, by rename) and returns its lines as PIDs.
fn read_pids(path: &Path) -> Vec<u32> {
    poll_until(&format!("{} to be written", path.display()), || {
        let text = std::fs::read_to_string(path).map_err(|e| e.to_string())?;
        Ok(text
            .lines()
            .map(|l| l.trim().parse().expect("a pid"))
            .collect())
    })
}

fn wait_gone(pids: &[u32]) {
    poll_until(&format!("processes {pids:?} to be gone"), || {
        let living: Vec<u32> = pids.iter().copied().filter(|p| alive(*p)).collect();
        if living.is_empty() {
            Ok(())
        } else {
            Err(format!("still alive: {living:?}"))
        }
    })
}

/// Log lines of a task, as text.
fn log_lines(app: &TestApp, id: &str) -> Vec<String> {
    let r = app.admin_get(&format!("/api/v1/tasks/{id}/logs"));
    assert_eq!(r.status, 200, "{}", r.body);
    let v = r.json();
    let lines = v["lines"].as_array().expect("lines");
    for (i, l) in lines.iter().enumerate() {
        assert_eq!(l["n"], i as u64, "log lines are numbered from 0: {v}");
    }
    lines
        .iter()
        .map(|l| l["line"].as_str().expect("line").to_string())
        .collect()
}

fn last_attempt(t: &Value) -> &Value {
    t["attempts"]
        .as_array()
        .and_then(|a| a.last())
        .unwrap_or_else(|| panic!("no attempts: {t}"))
}

// ---------------------------------------------------------------------------------------------
// Lifecycle and idempotency

/// Submit → 201 → exactly one signed delivery with the payload, the stable `webhook-id`, the
/// idempotency key and the bearer token → the task is succeeded with one attempt whose receipt
/// holds the status, the latency and the answer; the enqueue is audited under the service key.
#[test]
fn a_task_is_delivered_once_signed_and_recorded_with_its_receipt() {
    let receiver = Receiver::start();
    let app = TestApp::start_with(|c| {
        let mut h = http(&receiver.url());
        h.token = Some(Secret::new("tok-lifecycle-123"));
        h.signing_secret = Some(Secret::new(SECRET));
        add_http(c, "notify", h);
    });
    let (service_id, service) =
        app.create_key_with(&json!({"name": "svc-lifecycle", "role": "service"}));
    // The first answer comes after 80 ms, so the receipt's latency is measurable.
    receiver.push_modes([Mode::Stall(80)]);

    let payload = json!({"order": 42, "items": ["a", "b"], "note": "h\u{e9}llo \"quoted\""});
    let r = submit(
        &app,
        &service,
        &json!({"type": "notify", "payload": payload, "idempotency_key": "order-42"}),
    );
    assert_eq!(r.status, 201, "{}", r.body);
    let v = r.json();
    assert_eq!(v["status"], "queued", "{v}");
    let id = v["id"].as_str().unwrap().to_string();

    let done = wait_status(&app, &id, "succeeded");
    let deliveries = receiver.deliveries();
    assert_eq!(deliveries.len(), 1, "exactly one delivery: {deliveries:?}");
    let d = &deliveries[0];
    assert_eq!(d.method, "POST");
    assert_eq!(d.path, "/hook");
    assert_eq!(d.json(), payload, "the payload is the JSON body");
    assert_eq!(d.header("content-type"), Some("application/json"));
    let webhook_id = webhook_id_of(&id);
    assert_eq!(d.header("webhook-id"), Some(webhook_id.as_str()));
    assert_eq!(done["webhook_id"], webhook_id);
    let timestamp: i64 = d
        .header("webhook-timestamp")
        .expect("webhook-timestamp")
        .parse()
        .expect("integer timestamp");
    assert_eq!(timestamp, START_MS / 1000, "seconds on keel's clock");
    let expected =
        keel::exec::http::standard_webhooks_signature(SECRET, &webhook_id, timestamp, &d.body)
            .expect("signature");
    assert_eq!(d.header("webhook-signature"), Some(expected.as_str()));
    assert!(expected.starts_with("v1,"), "{expected}");
    assert_eq!(d.header("idempotency-key"), Some("order-42"));
    assert_eq!(d.header("authorization"), Some("Bearer tok-lifecycle-123"));

    assert_eq!(done["type"], "notify");
    assert_eq!(done["payload"], payload);
    assert_eq!(done["created_by"], service_id);
    assert_eq!(done["attempts_used"], 1);
    assert!(done["finished_at"].is_string(), "{done}");
    let attempts = done["attempts"].as_array().unwrap();
    assert_eq!(attempts.len(), 1, "{done}");
    let a = &attempts[0];
    assert_eq!(a["number"], 1);
    assert_eq!(a["outcome"], "succeeded");
    assert_eq!(a["counted"], true);
    assert!(a["error_class"].is_null(), "{a}");
    assert_eq!(a["receipt"]["status"], 200);
    assert!(
        a["receipt"]["latency_ms"].as_u64().expect("latency") >= 80,
        "the receiver stalled 80 ms: {a}"
    );
    assert_eq!(a["receipt"]["body_head"], ok_body(&webhook_id));
    assert_eq!(done["result"], ok_body(&webhook_id));
    // The handler's secrets are never shown.
    let text = done.to_string();
    assert!(
        !text.contains("tok-lifecycle-123") && !text.contains(SECRET),
        "{text}"
    );

    let entry = audit_entry(&app, "task.enqueue", &id);
    assert_eq!(entry["actor"], service_id);
    assert_eq!(entry["detail"]["type"], "notify");

    // Without an idempotency key, the webhook-id stands in for it.
    let second = submit_new(
        &app,
        &service,
        &json!({"type": "notify", "payload": {"n": 2}}),
    );
    wait_status(&app, &second, "succeeded");
    let d2 = &receiver.wait_for(2)[1];
    assert_eq!(
        d2.header("idempotency-key"),
        Some(webhook_id_of(&second).as_str())
    );
    assert_eq!(receiver.count(), 2);
}

/// 50 threads submit one idempotency key at once: one 201, 49 × 200 naming the same task,
/// one task listed, one enqueue audited, one delivery.
#[test]
fn fifty_concurrent_submits_of_one_idempotency_key_make_exactly_one_task() {
    const CLIENTS: usize = 50;
    let receiver = Receiver::start();
    let app = TestApp::start_with(|c| add_http(c, "notify", http(&receiver.url())));
    let service = app.create_key("service");
    let start = Arc::new(Barrier::new(CLIENTS));
    let threads: Vec<_> = (0..CLIENTS)
        .map(|_| {
            let (base, key, start) = (app.base.clone(), service.clone(), Arc::clone(&start));
            std::thread::spawn(move || {
                let body = serde_json::to_vec(&json!({
                    "type": "notify", "payload": {}, "idempotency_key": "same-key",
                }))
                .unwrap();
                start.wait();
                request(
                    &base,
                    "POST",
                    "/api/v1/tasks",
                    Some(&key),
                    Some(("application/json", &body)),
                )
            })
        })
        .collect();
    let answers: Vec<Resp> = threads.into_iter().map(|t| t.join().unwrap()).collect();
    let created: Vec<&Resp> = answers.iter().filter(|r| r.status == 201).collect();
    let existing: Vec<&Resp> = answers.iter().filter(|r| r.status == 200).collect();
    assert_eq!(
        (created.len(), existing.len()),
        (1, CLIENTS - 1),
        "answers: {:?}",
        answers
            .iter()
            .map(|r| (r.status, &r.body))
            .collect::<Vec<_>>()
    );
    let id = created[0].json()["id"].as_str().unwrap().to_string();
    for r in &existing {
        assert_eq!(r.json()["id"], id.as_str(), "{}", r.body);
        assert_eq!(r.json()["created"], false, "{}", r.body);
    }

    wait_status(&app, &id, "succeeded");
    let r = app.admin_get("/api/v1/tasks");
    let listed = r.json()["tasks"].as_array().unwrap().clone();
    assert_eq!(listed.len(), 1, "{}", r.body);
    assert_eq!(listed[0]["id"], id.as_str());
    let enqueues = audit_entries(&app)
        .into_iter()
        .filter(|e| e["action"] == "task.enqueue")
        .count();
    assert_eq!(enqueues, 1);
    assert_eq!(receiver.count(), 1, "{:?}", receiver.deliveries());
    // The key still names the same task after it finished.
    let again = submit(
        &app,
        &service,
        &json!({"type": "notify", "payload": {}, "idempotency_key": "same-key"}),
    );
    assert_eq!(again.status, 200, "{}", again.body);
    assert_eq!(again.json()["id"], id.as_str());
    assert_eq!(again.json()["status"], "succeeded");

    // Past the retention window the key is free again.
    advance(&app, 86_400_000 - 1);
    let r = submit(
        &app,
        &service,
        &json!({"type": "notify", "payload": {}, "idempotency_key": "same-key"}),
    );
    assert_eq!(
        r.status, 200,
        "the last millisecond of the window: {}",
        r.body
    );
    advance(&app, 1);
    let r = submit(
        &app,
        &service,
        &json!({"type": "notify", "payload": {}, "idempotency_key": "same-key"}),
    );
    assert_eq!(r.status, 201, "after the window: {}", r.body);
    assert_ne!(r.json()["id"], id.as_str());
}

/// Invalid submissions get a 4xx that names the problem and create nothing; a `run_at` in
/// the past means now.
#[test]
fn invalid_submissions_are_refused_and_create_nothing() {
    let receiver = Receiver::start();
    let app = TestApp::start_with(|c| add_http(c, "notify", http(&receiver.url())));
    let viewer = app.create_key("viewer");
    let seq = app.audit_seq();
    let long_key = "k".repeat(257);
    let cases = [
        (json!({"type": "nope", "payload": {}}), "nope"),
        (json!({"payload": {}}), "type"),
        (json!({"type": "notify", "max_attempts": 0}), "max_attempts"),
        (
            json!({"type": "notify", "max_attempts": 1001}),
            "max_attempts",
        ),
        (json!({"type": "notify", "timeout_s": 0}), "timeout_s"),
        (json!({"type": "notify", "run_at": "tomorrow"}), "run_at"),
        (
            json!({"type": "notify", "idempotency_key": ""}),
            "idempotency_key",
        ),
        (
            json!({"type": "notify", "idempotency_key": long_key}),
            "idempotency_key",
        ),
        (json!({"type": "notify", "priority": -1}), "priority"),
        (json!({"type": "notify", "colour": "red"}), "colour"),
    ];
    for (body, mentions) in cases {
        let r = submit(&app, &app.admin_key, &body);
        assert_eq!(r.status, 422, "{body}: {}", r.body);
        assert!(
            r.body.contains(mentions),
            "{body} should mention {mentions}: {}",
            r.body
        );
    }
    let r = app.request(
        "POST",
        "/api/v1/tasks",
        Some(&app.admin_key),
        Some(("application/json", b"{\"type\": ")),
    );
    assert_eq!(r.status, 400, "{}", r.body);
    let r = submit(&app, &viewer, &json!({"type": "notify", "payload": {}}));
    assert_eq!(r.status, 403, "{}", r.body);
    assert_eq!(app.audit_seq(), seq, "nothing audited");
    let listed = app.admin_get("/api/v1/tasks").json();
    assert_eq!(listed["tasks"], json!([]), "{listed}");
    assert_eq!(dispatch_now(&app), 0);
    assert_eq!(receiver.count(), 0);

    let past = rfc3339(now(&app) - 3_600_000);
    let id = submit_new(
        &app,
        &app.admin_key,
        &json!({"type": "notify", "payload": {}, "run_at": past}),
    );
    let t = wait_status(&app, &id, "succeeded");
    assert_eq!(t["due_at"], t["created_at"], "{t}");
}

/// The handler (URL, token) is copied into the task at enqueue: a task queued before a
/// configuration change is still delivered where and how it was meant to be; new tasks use
/// the new configuration.
#[test]
fn a_queued_task_keeps_the_handler_it_was_enqueued_with() {
    let old = Receiver::start();
    let new = Receiver::start();
    let (old_url, new_url) = (old.url(), new.url());
    let app = TestApp::start_with(|c| {
        let mut h = http(&old_url);
        h.token = Some(Secret::new("old-token"));
        add_http(c, "notify", h);
    });
    let due = START_MS + 60_000;
    let queued = submit_new(
        &app,
        &app.admin_key,
        &json!({"type": "notify", "payload": {"which": "queued"}, "run_at": rfc3339(due)}),
    );
    let app = TestApp::start_in(app.stop(), |c| {
        let mut h = http(&new_url);
        h.token = Some(Secret::new("new-token"));
        add_http(c, "notify", h);
    });
    let fresh = submit_new(
        &app,
        &app.admin_key,
        &json!({"type": "notify", "payload": {"which": "fresh"}}),
    );
    wait_status(&app, &fresh, "succeeded");
    set_clock(&app, due);
    let t = wait_status(&app, &queued, "succeeded");
    assert_eq!(t["handler"]["url"], old_url.as_str());
    assert_eq!(t["target"], old.target());

    let to_old = old.deliveries();
    assert_eq!(to_old.len(), 1);
    assert_eq!(to_old[0].json(), json!({"which": "queued"}));
    assert_eq!(to_old[0].header("authorization"), Some("Bearer old-token"));
    let to_new = new.deliveries();
    assert_eq!(to_new.len(), 1);
    assert_eq!(to_new[0].json(), json!({"which": "fresh"}));
    assert_eq!(to_new[0].header("authorization"), Some("Bearer new-token"));
}

// ---------------------------------------------------------------------------------------------
// Leases

/// A delivery held by the receiver outlives its lease: the reaper takes the task back (not a
/// millisecond early), a completion quoting the lost lease is ignored — whether sent directly
/// or by the dispatcher when the held delivery finally succeeds — and the next attempt, under a
/// new lease, delivers with the same `webhook-id`.
#[test]
fn an_expired_lease_is_reaped_and_the_zombie_completion_is_ignored() {
    let receiver = Receiver::start();
    receiver.set_mode(Mode::Hold);
    let app = TestApp::start_with(|c| {
        c.queue.lease_seconds = 60;
        c.queue.backoff_base_ms = 1000;
        c.queue.max_attempts = 5;
        add_http(c, "notify", http(&receiver.url()));
    });
    let id = submit_new(
        &app,
        &app.admin_key,
        &json!({"type": "notify", "payload": {"zombie": true}}),
    );
    receiver.wait_held(1);
    let queue = Arc::clone(&app.app.queue);
    let running = app.block_on(queue.get(uuid(&id))).unwrap();
    assert_eq!(running.status, Status::Running);
    let lease1 = running.lease.expect("a running task holds a lease");
    assert_eq!(lease1.expires_at, START_MS + 60_000);
    assert_eq!(task(&app, &id)["attempts"][0]["outcome"], "running");

    // Not a millisecond early.
    set_clock(&app, lease1.expires_at - 1);
    app.block_on(queue.reap_expired()).unwrap();
    assert_eq!(
        app.block_on(queue.get(uuid(&id))).unwrap().status,
        Status::Running
    );
    set_clock(&app, lease1.expires_at + 1);
    app.block_on(queue.reap_expired()).unwrap();
    let reaped = app.block_on(queue.get(uuid(&id))).unwrap();
    assert_eq!(reaped.status, Status::Retrying, "{reaped:?}");
    assert!(reaped.lease.is_none());
    let a = &reaped.attempts[0];
    assert_eq!(a.error_class.as_deref(), Some("lease_expired"));
    assert!(a.counted, "an expired lease uses the attempt");
    assert!(
        reaped.due_at > now(&app) && reaped.due_at <= now(&app) + 1000,
        "due {} at now {}",
        reaped.due_at,
        now(&app)
    );

    // A completion under the lost lease changes nothing.
    let done = Outcome::Succeeded {
        result: Some("zombie".into()),
        form: Default::default(),
        receipt: None,
    };
    let c = app
        .block_on(queue.complete(uuid(&id), lease1.id, done.clone()))
        .unwrap();
    assert_eq!(c, Completion::LeaseLost);
    assert_eq!(app.block_on(queue.get(uuid(&id))).unwrap(), reaped);

    // The dispatcher's own late report of the held delivery (a 200) is ignored too.
    receiver.release();
    poll_until("the zombie attempt to end", || {
        match app.app.dispatcher.running() {
            0 => Ok(()),
            n => Err(format!("{n} running")),
        }
    });
    assert_eq!(receiver.count(), 1);
    assert_eq!(
        app.block_on(queue.get(uuid(&id))).unwrap(),
        reaped,
        "a success reported under a lost lease must not finish the task"
    );

    // The next attempt runs under a new lease; the old one still cannot complete it.
    set_clock(&app, reaped.due_at);
    receiver.wait_held(1);
    let second = poll_until("attempt 2 to be leased", || {
        let t = app.block_on(queue.get(uuid(&id))).unwrap();
        if t.status == Status::Running {
            Ok(t)
        } else {
            Err(format!("{t:?}"))
        }
    });
    let lease2 = second.lease.expect("lease");
    assert_ne!(lease2.id, lease1.id);
    let fail = Outcome::Fail {
        class: "zombie".into(),
        message: "late".into(),
        receipt: None,
    };
    assert_eq!(
        app.block_on(queue.complete(uuid(&id), lease1.id, fail))
            .unwrap(),
        Completion::LeaseLost
    );
    assert_eq!(app.block_on(queue.get(uuid(&id))).unwrap(), second);

    receiver.set_mode(Mode::Ok);
    receiver.release();
    let t = wait_status(&app, &id, "succeeded");
    assert_eq!(t["attempts_used"], 2);
    assert_eq!(t["attempts"][0]["error_class"], "lease_expired");
    assert_eq!(t["attempts"][1]["outcome"], "succeeded");
    assert_eq!(t["result"], ok_body(&webhook_id_of(&id)));
    let ds = receiver.deliveries();
    assert_eq!(ds.len(), 2);
    assert_eq!(
        ds[0].webhook_id(),
        ds[1].webhook_id(),
        "stable across retries"
    );
    assert_eq!(
        ds[0].header("idempotency-key"),
        ds[1].header("idempotency-key")
    );
    assert_eq!(ds[0].body, ds[1].body);
}

// ---------------------------------------------------------------------------------------------
// Retries, backoff and the dead-letter queue

/// A 500 with max_attempts 3: attempt 1 → retrying, due within [now + base/2, now + base];
/// nothing runs before the due time; attempt 2 waits [base, 2·base]; the third failure makes
/// the task dead and it shows in the DLQ and its stats (by type, by class `http_5xx`); dead
/// tasks never run again by themselves.
#[test]
fn failures_back_off_exponentially_on_the_clock_then_the_task_is_dead() {
    const BASE: i64 = 10_000;
    let receiver = Receiver::start();
    receiver.set_mode(Mode::Status(500));
    let app = TestApp::start_with(|c| {
        c.queue.backoff_base_ms = BASE as u64;
        c.queue.backoff_max_seconds = 60;
        c.queue.max_attempts = 3;
        add_http(c, "notify", http(&receiver.url()));
    });
    let id = submit_new(
        &app,
        &app.admin_key,
        &json!({"type": "notify", "payload": {}}),
    );

    let mut due_times = Vec::new();
    for attempt in 1..=2u64 {
        let t = wait_retrying(&app, &id, attempt);
        let a = last_attempt(&t);
        assert_eq!(a["outcome"], "failed");
        assert_eq!(a["error_class"], "http_5xx");
        assert_eq!(a["receipt"]["status"], 500);
        let due = ms(&t["due_at"]);
        let exp = BASE << (attempt - 1);
        let at = now(&app);
        assert!(
            due >= at + exp / 2 && due <= at + exp,
            "attempt {attempt}: due {} ms after the failure, expected {}..={}",
            due - at,
            exp / 2,
            exp
        );
        // Nothing happens before the due time.
        set_clock(&app, due - 1);
        assert_eq!(dispatch_now(&app), 0, "a retry ran before its due time");
        assert_eq!(receiver.count(), attempt as usize);
        assert_eq!(task(&app, &id)["status"], "retrying");
        set_clock(&app, due);
        receiver.wait_for(attempt as usize + 1);
        due_times.push(due);
    }
    let dead = wait_status(&app, &id, "dead");
    assert_eq!(dead["attempts_used"], 3);
    let attempts = dead["attempts"].as_array().unwrap();
    assert_eq!(attempts.len(), 3);
    for (i, due) in due_times.iter().enumerate() {
        assert_eq!(
            ms(&attempts[i + 1]["started_at"]),
            *due,
            "attempt {} started at its due time",
            i + 2
        );
    }
    assert!(dead["finished_at"].is_string());

    let dlq = app.admin_get("/api/v1/dlq").json();
    let ids: Vec<&str> = dlq["tasks"]
        .as_array()
        .unwrap()
        .iter()
        .map(|t| t["id"].as_str().unwrap())
        .collect();
    assert_eq!(ids, vec![id.as_str()]);
    let stats = app.admin_get("/api/v1/dlq/stats").json();
    assert_eq!(stats["total"], 1, "{stats}");
    assert_eq!(stats["by_type"], json!({"notify": 1}), "{stats}");
    assert_eq!(stats["by_error_class"], json!({"http_5xx": 1}), "{stats}");
    assert_eq!(stats["oldest_age_seconds"], 0, "{stats}");

    // Dead tasks are never retried by themselves.
    receiver.set_mode(Mode::Ok);
    for _ in 0..3 {
        advance(&app, 30 * 86_400_000);
        assert_eq!(dispatch_now(&app), 0);
        app.block_on(app.app.queue.reap_expired()).unwrap();
    }
    assert_eq!(receiver.count(), 3);
    assert_eq!(task(&app, &id)["status"], "dead");
    let stats = app.admin_get("/api/v1/dlq/stats").json();
    assert_eq!(stats["oldest_age_seconds"], 90 * 86_400, "{stats}");
}

/// 429 with `Retry-After: 120` → the next attempt is due exactly 120 s later (longer than the
/// backoff); a huge Retry-After is clamped to `retry_after_max_seconds`; an HTTP-date
/// Retry-After is honoured against keel's clock.
#[test]
fn retry_after_sets_the_next_due_time_and_is_clamped() {
    let receiver = Receiver::start();
    receiver.push_modes([
        Mode::RetryAfter(429, "120".into()),
        Mode::RetryAfter(503, "100000".into()),
    ]);
    let app = TestApp::start_with(|c| {
        c.queue.backoff_base_ms = 1000;
        c.queue.retry_after_max_seconds = 300;
        c.queue.max_attempts = 5;
        add_http(c, "notify", http(&receiver.url()));
    });
    let id = submit_new(
        &app,
        &app.admin_key,
        &json!({"type": "notify", "payload": {}}),
    );

    let t = wait_retrying(&app, &id, 1);
    assert_eq!(last_attempt(&t)["error_class"], "http_429");
    assert_eq!(last_attempt(&t)["receipt"]["status"], 429);
    assert_eq!(ms(&t["due_at"]), now(&app) + 120_000, "Retry-After: 120");
    set_clock(&app, ms(&t["due_at"]) - 1);
    assert_eq!(dispatch_now(&app), 0);

    set_clock(&app, ms(&t["due_at"]));
    let t = wait_retrying(&app, &id, 2);
    assert_eq!(last_attempt(&t)["error_class"], "http_5xx");
    assert_eq!(
        ms(&t["due_at"]),
        now(&app) + 300_000,
        "Retry-After: 100000 is clamped to retry_after_max_seconds"
    );

    // An HTTP date 200 s after the time of the next attempt.
    let next = ms(&t["due_at"]);
    let date = chrono::DateTime::from_timestamp_millis(next + 200_000)
        .unwrap()
        .format("%a, %d %b %Y %H:%M:%S GMT")
        .to_string();
    receiver.push_modes([Mode::RetryAfter(429, date.clone())]);
    set_clock(&app, next);
    let t = wait_retrying(&app, &id, 3);
    assert_eq!(ms(&t["due_at"]), next + 200_000, "Retry-After: {date}");

    set_clock(&app, next + 200_000);
    let t = wait_status(&app, &id, "succeeded");
    assert_eq!(t["attempts_used"], 4);
    assert_eq!(receiver.count(), 4);
}

/// A receiver that stalls past the handler's timeout → class `timeout`, retried (and the retry
/// succeeds); a closed port → class `connect`, retried, without a status in the receipt.
#[test]
fn timeouts_and_refused_connections_are_retried_with_their_class() {
    let slow = Receiver::start();
    slow.push_modes([Mode::Stall(3_000)]);
    let refused = closed_port_url();
    let app = TestApp::start_with(|c| {
        c.queue.backoff_base_ms = 1000;
        c.queue.max_attempts = 3;
        let mut h = http(&slow.url());
        h.timeout_seconds = 1;
        add_http(c, "slow", h);
        add_http(c, "unreachable", http(&refused));
    });
    let slow_id = submit_new(
        &app,
        &app.admin_key,
        &json!({"type": "slow", "payload": {}}),
    );
    let gone_id = submit_new(
        &app,
        &app.admin_key,
        &json!({"type": "unreachable", "payload": {}}),
    );

    let t = wait_retrying(&app, &slow_id, 1);
    let a = last_attempt(&t);
    assert_eq!(a["error_class"], "timeout", "{a}");
    assert!(a["receipt"]["status"].is_null(), "{a}");
    let latency = a["receipt"]["latency_ms"].as_u64().unwrap();
    assert!(
        (1000..3000).contains(&latency),
        "gave up after the 1 s timeout, not after the 3 s stall: {a}"
    );

    let t = wait_retrying(&app, &gone_id, 1);
    let a = last_attempt(&t);
    assert_eq!(a["error_class"], "connect", "{a}");
    assert!(a["receipt"]["status"].is_null(), "{a}");

    // Retries happen: the slow receiver now answers at once; the closed port still refuses.
    advance(&app, 1000);
    let t = wait_status(&app, &slow_id, "succeeded");
    assert_eq!(t["attempts_used"], 2);
    assert_eq!(slow.count(), 2);
    let t = wait_retrying(&app, &gone_id, 2);
    assert_eq!(last_attempt(&t)["error_class"], "connect");
}

/// A 400 is a permanent failure: dead after one attempt (class `http_4xx`) although attempts
/// remain, and a client error does not count against the target's circuit.
#[test]
fn a_400_sends_the_task_to_the_dlq_at_once() {
    let receiver = Receiver::start();
    receiver.set_mode(Mode::Status(400));
    let app = TestApp::start_with(|c| {
        c.queue.max_attempts = 5;
        c.circuit.min_volume = 1;
        c.circuit.threshold = 0.1;
        add_http(c, "notify", http(&receiver.url()));
    });
    let id = submit_new(
        &app,
        &app.admin_key,
        &json!({"type": "notify", "payload": {}}),
    );
    let t = wait_status(&app, &id, "dead");
    assert_eq!(t["attempts_used"], 1);
    assert_eq!(t["max_attempts"], 5);
    let a = last_attempt(&t);
    assert_eq!(a["error_class"], "http_4xx");
    assert_eq!(a["receipt"]["status"], 400);
    assert!(
        a["receipt"]["body_head"]
            .as_str()
            .unwrap()
            .contains("told to answer 400"),
        "{a}"
    );
    let stats = app.admin_get("/api/v1/dlq/stats").json();
    assert_eq!(stats["by_error_class"], json!({"http_4xx": 1}), "{stats}");
    advance(&app, 3_600_000);
    assert_eq!(dispatch_now(&app), 0);
    assert_eq!(receiver.count(), 1);
    assert!(
        circuit(&app, &receiver.target()).is_none_or(|c| c["state"] == "closed"),
        "{:?}",
        circuit(&app, &receiver.target())
    );
}

/// Redirects are not followed: the target the `Location` names gets nothing, and the 302 is a
/// permanent failure (class `http_302`).
#[test]
fn a_redirect_is_not_followed() {
    let redirecting = Receiver::start();
    let elsewhere = Receiver::start();
    redirecting.set_mode(Mode::Redirect(elsewhere.url()));
    let app = TestApp::start_with(|c| {
        c.queue.max_attempts = 5;
        add_http(c, "notify", http(&redirecting.url()));
    });
    let id = submit_new(
        &app,
        &app.admin_key,
        &json!({"type": "notify", "payload": {}}),
    );
    let t = wait_status(&app, &id, "dead");
    assert_eq!(t["attempts_used"], 1);
    let a = last_attempt(&t);
    assert_eq!(a["error_class"], "http_302", "{a}");
    assert_eq!(a["receipt"]["status"], 302, "{a}");
    assert_eq!(redirecting.count(), 1);
    assert_eq!(elsewhere.count(), 0, "the redirect was followed");
}

// ---------------------------------------------------------------------------------------------
// The command executor

/// A script reads the payload on stdin: its stdout is the result, its stderr lines are the
/// task's log; a non-zero exit is retried with class `exit_code` and finally dead; the working
/// directory is the configured one.
#[test]
fn command_tasks_get_the_payload_on_stdin_and_keep_stdout_and_stderr() {
    let work = tempfile::tempdir().unwrap();
    let work_path = work.path().canonicalize().unwrap();
    let app = TestApp::start_with(|c| {
        c.queue.backoff_base_ms = 1000;
        c.queue.result_max_bytes = 100;
        add_command(
            c,
            "noisy",
            shell(r#"head -c 5000 /dev/zero | tr '\0' x; echo END"#, &[]),
        );
        add_command(
            c,
            "echo",
            shell(
                r#"cat; echo; echo "first stderr line" >&2; echo "second stderr line" >&2; echo done"#,
                &[],
            ),
        );
        let mut fails = shell(r#"echo "about to fail" >&2; exit 3"#, &[]);
        fails.max_attempts = Some(2);
        add_command(c, "fails", fails);
        let mut pwd = shell("pwd", &[]);
        pwd.working_dir = Some(work_path.clone());
        add_command(c, "pwd", pwd);
    });
    let payload = json!({"msg": "hi from stdin"});
    let echo = submit_new(
        &app,
        &app.admin_key,
        &json!({"type": "echo", "payload": payload}),
    );
    let fails = submit_new(
        &app,
        &app.admin_key,
        &json!({"type": "fails", "payload": {}}),
    );
    let pwd = submit_new(&app, &app.admin_key, &json!({"type": "pwd", "payload": {}}));
    let noisy = submit_new(
        &app,
        &app.admin_key,
        &json!({"type": "noisy", "payload": {}}),
    );

    let t = wait_status(&app, &echo, "succeeded");
    let expected = format!("{}\ndone\n", serde_json::to_string(&payload).unwrap());
    assert_eq!(t["result"], expected.as_str());
    let a = last_attempt(&t);
    assert_eq!(a["receipt"]["status"], 0);
    assert_eq!(a["receipt"]["body_head"], expected.as_str());
    assert_eq!(t["handler"]["kind"], "command");
    assert_eq!(
        log_lines(&app, &echo),
        vec!["first stderr line", "second stderr line"]
    );

    let t = wait_retrying(&app, &fails, 1);
    let a = last_attempt(&t);
    assert_eq!(a["error_class"], "exit_code");
    assert_eq!(a["receipt"]["status"], 3);
    assert!(
        a["error_message"].as_str().unwrap().contains("code 3"),
        "{a}"
    );
    advance(&app, 60_000);
    let t = wait_status(&app, &fails, "dead");
    assert_eq!(t["attempts_used"], 2);
    assert_eq!(
        log_lines(&app, &fails),
        vec!["about to fail", "about to fail"]
    );
    // Each line names the attempt that wrote it, and the task page groups them so.
    let page = app.admin_get(&format!("/api/v1/tasks/{fails}/logs")).json();
    let attempts: Vec<&Value> = page["lines"]
        .as_array()
        .unwrap()
        .iter()
        .map(|l| &l["attempt"])
        .collect();
    assert_eq!(attempts, [&json!(1), &json!(2)], "{page}");
    let html = crate::admin::Client::sign_in(&app.base, &app.admin_key)
        .get(&format!("/admin/tasks/{fails}"))
        .body;
    let first = html.find(r#"<span class="attempt-head">Attempt 1</span>"#);
    let second = html.find(r#"<span class="attempt-head">Attempt 2</span>"#);
    assert!(
        first.is_some() && second.is_some() && first < second,
        "the log is grouped by attempt: {html}"
    );

    let t = wait_status(&app, &pwd, "succeeded");
    assert_eq!(t["result"], format!("{}\n", work_path.display()));

    // The result is the tail of stdout, capped at queue.result_max_bytes.
    let t = wait_status(&app, &noisy, "succeeded");
    assert_eq!(t["result"], format!("{}END\n", "x".repeat(96)));

    let r = app.admin_get(&format!("/api/v1/tasks/{}/logs", Uuid::now_v7()));
    assert_eq!(r.status, 404, "{}", r.body);
}

/// A script that outlives `timeout_seconds` fails with class `timeout`, and its whole process
/// group is killed: the shell and the `sleep` it started in the background are both gone.
#[test]
fn a_command_past_its_timeout_is_killed_with_its_process_group() {
    let scratch = tempfile::tempdir().unwrap();
    let pid_file = scratch.path().join("pids");
    let app = TestApp::start_with(|c| {
        c.queue.backoff_base_ms = 1000;
        let mut h = shell(
            r#"sleep 1000 & echo $! > "$1.tmp"; echo $$ >> "$1.tmp"; mv "$1.tmp" "$1"; wait"#,
            &[pid_file.to_str().unwrap()],
        );
        h.timeout_seconds = 1;
        h.max_attempts = Some(2);
        add_command(c, "sleeper", h);
    });
    let id = submit_new(
        &app,
        &app.admin_key,
        &json!({"type": "sleeper", "payload": {}}),
    );
    let pids = read_pids(&pid_file);
    assert_eq!(
        pids.len(),
        2,
        "the background sleep and the shell: {pids:?}"
    );
    let t = wait_retrying(&app, &id, 1);
    assert_eq!(last_attempt(&t)["error_class"], "timeout");
    wait_gone(&pids);
}

/// Only variables in `env_allow` reach the program (plus keel's own KEEL_TASK_ID and
/// KEEL_TASK_ATTEMPT).
#[test]
fn a_command_sees_only_allowed_environment_variables() {
    let path = std::env::var("PATH").expect("the test runs with PATH set");
    assert!(
        std::env::vars().any(|(k, _)| k != "PATH"),
        "the test needs a variable besides PATH to show it is withheld"
    );
    let app = TestApp::start_with(|c| {
        add_command(
            c,
            "env",
            CommandHandlerConfig {
                program: "/usr/bin/env".into(),
                args: Vec::new(),
                working_dir: None,
                env_allow: vec!["PATH".into(), "KEEL_TEST_NOT_SET_ANYWHERE".into()],
                timeout_seconds: 30,
                concurrency: None,
                max_attempts: None,
            },
        );
    });
    let id = submit_new(&app, &app.admin_key, &json!({"type": "env", "payload": {}}));
    let t = wait_status(&app, &id, "succeeded");
    let result = t["result"].as_str().unwrap();
    let vars: std::collections::BTreeMap<&str, &str> =
        result.lines().filter_map(|l| l.split_once('=')).collect();
    assert_eq!(vars.get("PATH"), Some(&path.as_str()), "{result}");
    assert_eq!(vars.get("KEEL_TASK_ID"), Some(&id.as_str()), "{result}");
    assert_eq!(vars.get("KEEL_TASK_ATTEMPT"), Some(&"1"), "{result}");
    let names: Vec<&str> = vars.keys().copied().collect();
    assert_eq!(
        names,
        vec!["KEEL_TASK_ATTEMPT", "KEEL_TASK_ID", "PATH"],
        "nothing else: {result}"
    );
}

// ---------------------------------------------------------------------------------------------
// Dead-letter queue

/// Dry runs list what would move (respecting the type filter and max) and change nothing; a
/// real drain moves tasks back to the queue and they run again; DELETE removes a dead task;
/// drain and delete are operator actions, audited with the caller's key id.
#[test]
fn dlq_drain_dry_run_filter_max_and_delete() {
    let receiver = Receiver::start();
    receiver.set_mode(Mode::Status(400));
    let app = TestApp::start_with(|c| {
        add_http(c, "alpha", http(&receiver.url()));
        add_http(c, "beta", http(&receiver.url()));
    });
    let (operator_id, operator) = app.create_key_with(&json!({"name": "ops", "role": "operator"}));
    let (service_id, service) = app.create_key_with(&json!({"name": "svc", "role": "service"}));
    let viewer = app.create_key("viewer");
    let mut alpha = Vec::new();
    let mut beta = Vec::new();
    for i in 0..3 {
        alpha.push(submit_new(
            &app,
            &service,
            &json!({"type": "alpha", "payload": {"i": i}}),
        ));
    }
    for i in 0..2 {
        beta.push(submit_new(
            &app,
            &service,
            &json!({"type": "beta", "payload": {"i": i}}),
        ));
    }
    for id in alpha.iter().chain(&beta) {
        wait_status(&app, id, "dead");
        assert_eq!(audit_entry(&app, "task.enqueue", id)["actor"], service_id);
    }
    let stats = app.admin_get("/api/v1/dlq/stats").json();
    assert_eq!(stats["total"], 5);
    assert_eq!(stats["by_type"], json!({"alpha": 3, "beta": 2}));
    assert_eq!(stats["by_error_class"], json!({"http_4xx": 5}));
    let listed = app.admin_get("/api/v1/dlq?type=alpha").json();
    assert_eq!(listed["tasks"].as_array().unwrap().len(), 3);

    let drain = |key: &str, body: Value| app.post_json("/api/v1/dlq/drain", Some(key), &body);
    let ids_of = |v: &Value| -> Vec<String> {
        v["tasks"]
            .as_array()
            .unwrap()
            .iter()
            .map(|t| t["id"].as_str().unwrap().to_string())
            .collect()
    };

    // Dry runs: filter and max respected, nothing changed, nothing audited.
    let seq = app.audit_seq();
    receiver.set_mode(Mode::Ok);
    let r = drain(
        &operator,
        json!({"filter_type": "alpha", "max": 2, "dry_run": true}),
    );
    assert_eq!(r.status, 200, "{}", r.body);
    let v = r.json();
    assert_eq!(v["dry_run"], true);
    assert_eq!(v["count"], 2);
    let would = ids_of(&v);
    assert!(would.iter().all(|id| alpha.contains(id)), "{v}");
    assert!(
        v["tasks"]
            .as_array()
            .unwrap()
            .iter()
            .all(|t| t["type"] == "alpha" && t["error_class"] == "http_4xx"),
        "{v}"
    );
    let v = drain(
        &operator,
        json!({"filter_type": "beta", "max": 10, "dry_run": true}),
    )
    .json();
    let mut b = ids_of(&v);
    b.sort();
    let mut expected_beta = beta.clone();
    expected_beta.sort();
    assert_eq!(b, expected_beta);
    let v = drain(&operator, json!({"max": 10, "dry_run": true})).json();
    assert_eq!(v["count"], 5);
    assert_eq!(dispatch_now(&app), 0, "a dry run queued something");
    assert_eq!(app.admin_get("/api/v1/dlq/stats").json(), stats);
    assert_eq!(app.audit_seq(), seq, "a dry run is not audited");
    assert_eq!(receiver.count(), 5);

    // Only operators drain.
    let r = drain(&viewer, json!({"max": 10}));
    assert_eq!(r.status, 403, "{}", r.body);
    let r = drain(&service, json!({"max": 10}));
    assert_eq!(r.status, 403, "{}", r.body);
    let r = drain(&operator, json!({"max": 0}));
    assert_eq!(r.status, 422, "{}", r.body);
    assert_eq!(app.admin_get("/api/v1/dlq/stats").json(), stats);

    // A real drain of two alpha tasks: they run again and succeed.
    let r = drain(&operator, json!({"filter_type": "alpha", "max": 2}));
    assert_eq!(r.status, 200, "{}", r.body);
    let v = r.json();
    assert_eq!(v["dry_run"], false);
    let moved = ids_of(&v);
    assert_eq!(moved.len(), 2);
    assert!(moved.iter().all(|id| alpha.contains(id)));
    for id in &moved {
        let t = wait_status(&app, id, "succeeded");
        assert_eq!(t["attempts_used"], 1, "a fresh set of attempts: {t}");
        assert_eq!(t["attempts"].as_array().unwrap().len(), 2, "{t}");
    }
    assert_eq!(receiver.count(), 7);
    let left_alpha: Vec<&String> = alpha.iter().filter(|id| !moved.contains(id)).collect();
    assert_eq!(left_alpha.len(), 1);
    assert_eq!(task(&app, left_alpha[0])["status"], "dead");
    let stats = app.admin_get("/api/v1/dlq/stats").json();
    assert_eq!(stats["total"], 3);
    assert_eq!(stats["by_type"], json!({"alpha": 1, "beta": 2}));
    let drains: Vec<Value> = audit_entries(&app)
        .into_iter()
        .filter(|e| e["action"] == "dlq.drain")
        .collect();
    assert_eq!(drains.len(), 1, "{drains:?}");
    assert_eq!(drains[0]["actor"], operator_id);
    let mut audited: Vec<String> = drains[0]["detail"]["tasks"]
        .as_array()
        .unwrap()
        .iter()
        .map(|t| t.as_str().unwrap().to_string())
        .collect();
    audited.sort();
    let mut moved_sorted = moved.clone();
    moved_sorted.sort();
    assert_eq!(audited, moved_sorted);

    // DELETE one dead task.
    let path = format!("/api/v1/dlq/{}", beta[0]);
    assert_eq!(
        app.request("DELETE", &path, Some(&viewer), None).status,
        403
    );
    let r = app.request("DELETE", &path, Some(&operator), None);
    assert_eq!(r.status, 204, "{}", r.body);
    assert_eq!(
        app.admin_get(&format!("/api/v1/tasks/{}", beta[0])).status,
        404
    );
    assert_eq!(
        app.request("DELETE", &path, Some(&operator), None).status,
        404
    );
    assert_eq!(
        audit_entry(&app, "dlq.delete", &beta[0])["actor"],
        operator_id
    );
    // A task that is not dead cannot be deleted through the DLQ.
    let r = app.request(
        "DELETE",
        &format!("/api/v1/dlq/{}", moved[0]),
        Some(&operator),
        None,
    );
    assert_eq!(r.status, 409, "{}", r.body);

    // Drain the rest without a filter.
    let v = drain(&operator, json!({"max": 10})).json();
    assert_eq!(v["count"], 2);
    wait_status(&app, left_alpha[0], "succeeded");
    wait_status(&app, &beta[1], "succeeded");
    assert_eq!(app.admin_get("/api/v1/dlq/stats").json()["total"], 0);
    assert_eq!(receiver.count(), 9);
}

// ---------------------------------------------------------------------------------------------
// Cancellation

/// A queued task is cancelled at once and never runs; a running command is stopped (its process
/// killed) and ends cancelled; cancel is an operator action, audited with the key id.
#[test]
fn cancel_stops_queued_and_running_tasks() {
    let receiver = Receiver::start();
    let scratch = tempfile::tempdir().unwrap();
    let pid_file = scratch.path().join("pid");
    let app = TestApp::start_with(|c| {
        add_http(c, "notify", http(&receiver.url()));
        add_command(
            c,
            "sleepy",
            shell(
                r#"echo $$ > "$1.tmp"; mv "$1.tmp" "$1"; exec sleep 30"#,
                &[pid_file.to_str().unwrap()],
            ),
        );
    });
    let (operator_id, operator) = app.create_key_with(&json!({"name": "ops", "role": "operator"}));
    let viewer = app.create_key("viewer");

    let later = rfc3339(now(&app) + 3_600_000);
    let queued = submit_new(
        &app,
        &app.admin_key,
        &json!({"type": "notify", "payload": {}, "run_at": later}),
    );
    let path = format!("/api/v1/tasks/{queued}/cancel");
    let r = app.request("POST", &path, Some(&viewer), None);
    assert_eq!(r.status, 403, "{}", r.body);
    let r = app.request("POST", &path, Some(&operator), None);
    assert_eq!(r.status, 200, "{}", r.body);
    assert_eq!(r.json()["task"]["status"], "cancelled");
    let t = task(&app, &queued);
    assert_eq!(t["status"], "cancelled");
    assert!(t["finished_at"].is_string());
    assert_eq!(
        audit_entry(&app, "task.cancel", &queued)["actor"],
        operator_id
    );
    let r = app.request("POST", &path, Some(&operator), None);
    assert_eq!(r.status, 409, "cancelling twice: {}", r.body);
    advance(&app, 2 * 3_600_000);
    assert_eq!(dispatch_now(&app), 0);
    assert_eq!(receiver.count(), 0, "a cancelled task never runs");

    let running = submit_new(
        &app,
        &app.admin_key,
        &json!({"type": "sleepy", "payload": {}}),
    );
    let pid = read_pids(&pid_file)[0];
    wait_status(&app, &running, "running");
    assert!(alive(pid));
    let r = app.request(
        "POST",
        &format!("/api/v1/tasks/{running}/cancel"),
        Some(&operator),
        None,
    );
    assert_eq!(r.status, 200, "{}", r.body);
    assert_eq!(r.json()["task"]["cancel_requested"], true, "{}", r.body);
    let t = wait_status(&app, &running, "cancelled");
    assert_eq!(last_attempt(&t)["outcome"], "cancelled");
    wait_gone(&[pid]);
    assert_eq!(
        audit_entry(&app, "task.cancel", &running)["actor"],
        operator_id
    );
}

/// A command still running at shutdown is interrupted when the drain deadline passes: its
/// process is killed, the attempt is recorded as interrupted (not counted), and after a restart
/// the task runs again at once.
#[test]
fn shutdown_interrupts_a_running_command_and_it_runs_again_after_restart() {
    let scratch = tempfile::tempdir().unwrap();
    let pid_file = scratch.path().join("pid");
    let pid_arg = pid_file.to_str().unwrap().to_string();
    let configure = move |c: &mut Config| {
        c.shutdown.drain_seconds = 1;
        add_command(
            c,
            "long",
            shell(
                r#"if [ "$KEEL_TASK_ATTEMPT" = 1 ]; then echo $$ > "$1.tmp"; mv "$1.tmp" "$1"; exec sleep 30; fi; echo "run $KEEL_TASK_ATTEMPT""#,
                &[&pid_arg],
            ),
        );
    };
    let app = TestApp::start_with(configure.clone());
    let id = submit_new(
        &app,
        &app.admin_key,
        &json!({"type": "long", "payload": {}}),
    );
    let pid = read_pids(&pid_file)[0];
    wait_status(&app, &id, "running");

    let app = TestApp::start_in(app.stop(), configure);
    wait_gone(&[pid]);
    let t = wait_status(&app, &id, "succeeded");
    assert_eq!(t["result"], "run 2\n");
    assert_eq!(
        t["attempts_used"], 1,
        "the interrupted attempt is not counted: {t}"
    );
    let first = &t["attempts"][0];
    assert_eq!(first["outcome"], "interrupted", "{t}");
    assert_eq!(first["counted"], false, "{t}");
}

// ---------------------------------------------------------------------------------------------
// Circuit breakers

/// Failures over the threshold open the target's circuit (API and metric); while it is open
/// the target's tasks wait without deliveries or used attempts; after `open_seconds` one trial
/// goes through (half-open), its success closes the circuit, and the waiting tasks are
/// delivered.
#[test]
fn a_failing_target_opens_its_circuit_then_one_trial_closes_it() {
    let receiver = Receiver::start();
    receiver.set_mode(Mode::Status(500));
    let target = receiver.target();
    let app = TestApp::start_with(|c| {
        c.circuit.min_volume = 3;
        c.circuit.threshold = 0.5;
        c.circuit.open_seconds = 60;
        c.queue.backoff_base_ms = 1000;
        c.queue.max_attempts = 10;
        add_http(c, "notify", http(&receiver.url()));
    });
    let submit_one = |i: u32| {
        submit_new(
            &app,
            &app.admin_key,
            &json!({"type": "notify", "payload": {"i": i}}),
        )
    };
    let mut ids: Vec<String> = (0..3).map(submit_one).collect();
    for id in &ids {
        wait_retrying(&app, id, 1);
    }
    let open = wait_circuit(&app, &target, "open");
    assert_eq!(open["failure_ratio"], 1.0, "{open}");
    assert_eq!(open["window_volume"], 3, "{open}");
    let open_until = ms(&open["open_until"]);
    assert_eq!(open_until, now(&app) + 60_000);
    let gauge = format!("keel_circuit_open{{target=\"{target}\"}}");
    assert_eq!(sample(&metrics(&app), &gauge), Some(1.0));

    // New tasks, and the failed ones once due, wait for the trial time without attempts.
    ids.extend((3..5).map(submit_one));
    advance(&app, 5_000);
    for id in &ids {
        wait_task(&app, id, "waiting for the circuit", |t| {
            ms(&t["due_at"]) == open_until
        });
    }
    assert_eq!(dispatch_now(&app), 0);
    assert_eq!(receiver.count(), 3, "no delivery while the circuit is open");
    for (i, id) in ids.iter().enumerate() {
        let t = task(&app, id);
        let used = if i < 3 { 1 } else { 0 };
        assert_eq!(t["attempts_used"], used, "{t}");
        let expected = if i < 3 { "retrying" } else { "queued" };
        assert_eq!(t["status"], expected, "{t}");
    }

    // After open_seconds: half-open, one (slow, successful) trial, closed.
    receiver.set_mode(Mode::Ok);
    receiver.push_modes([Mode::Stall(1_500)]);
    set_clock(&app, open_until);
    wait_circuit(&app, &target, "half_open");
    receiver.wait_for(4);
    let closed = wait_circuit(&app, &target, "closed");
    assert!(closed["open_until"].is_null(), "{closed}");
    assert_eq!(dispatch_now(&app), 0);
    assert_eq!(
        receiver.count(),
        4,
        "exactly one trial while half-open: {:?}",
        receiver
            .deliveries()
            .iter()
            .map(|d| d.webhook_id().to_string())
            .collect::<Vec<_>>()
    );
    // The breaker closes just before the trial's report reaches the queue.
    let succeeded = poll_until("the trial task to succeed", || {
        let done: Vec<&String> = ids
            .iter()
            .filter(|id| task(&app, id)["status"] == "succeeded")
            .collect();
        if done.is_empty() {
            Err("none succeeded".into())
        } else {
            Ok(done)
        }
    });
    assert_eq!(succeeded.len(), 1, "only the trial ran: {succeeded:?}");
    for (i, id) in ids.iter().enumerate() {
        let t = task(&app, id);
        if t["status"] != "succeeded" {
            assert_eq!(t["attempts_used"], if i < 3 { 1 } else { 0 }, "{t}");
        }
    }
    assert_eq!(sample(&metrics(&app), &gauge), Some(0.0));

    // The tasks that waited are delivered.
    advance(&app, 1_000);
    for id in &ids {
        wait_status(&app, id, "succeeded");
    }
    assert_eq!(receiver.count(), 3 + 5, "3 failures, then each task once");
    assert_eq!(circuit(&app, &target).unwrap()["state"], "closed");
}

/// An open circuit survives a restart; a viewer cannot reset it; an operator can (audited with
/// the key id), which closes it at once and makes the tasks it held back due at once.
#[test]
fn circuits_survive_restarts_and_an_operator_resets_them() {
    let receiver = Receiver::start();
    receiver.set_mode(Mode::Status(503));
    let target = receiver.target();
    let url = receiver.url();
    let configure = move |c: &mut Config| {
        c.circuit.min_volume = 3;
        c.circuit.threshold = 0.5;
        c.circuit.open_seconds = 600;
        c.queue.backoff_base_ms = 1000;
        c.queue.max_attempts = 10;
        add_http(c, "notify", http(&url));
    };
    let app = TestApp::start_with(configure.clone());
    let (operator_id, operator) = app.create_key_with(&json!({"name": "ops", "role": "operator"}));
    let viewer = app.create_key("viewer");
    let ids: Vec<String> = (0..3)
        .map(|i| {
            submit_new(
                &app,
                &app.admin_key,
                &json!({"type": "notify", "payload": {"i": i}}),
            )
        })
        .collect();
    for id in &ids {
        wait_retrying(&app, id, 1);
    }
    let open_until = wait_circuit(&app, &target, "open")["open_until"].clone();

    let app = TestApp::start_in(app.stop(), configure);
    let c = circuit(&app, &target).expect("the circuit is still known after a restart");
    assert_eq!(c["state"], "open", "{c}");
    assert_eq!(c["open_until"], open_until);
    let gauge = format!("keel_circuit_open{{target=\"{target}\"}}");
    assert_eq!(sample(&metrics(&app), &gauge), Some(1.0));

    let reset = format!("/api/v1/circuits/{target}/reset");
    let r = app.request("POST", &reset, Some(&viewer), None);
    assert_eq!(r.status, 403, "{}", r.body);
    let r = app.request(
        "POST",
        "/api/v1/circuits/http:nowhere:1/reset",
        Some(&operator),
        None,
    );
    assert_eq!(r.status, 404, "{}", r.body);
    assert_eq!(circuit(&app, &target).unwrap()["state"], "open");

    receiver.set_mode(Mode::Ok);
    advance(&app, 2_000);
    assert_eq!(dispatch_now(&app), 0, "still open after the restart");
    assert_eq!(receiver.count(), 3);

    let r = app.request("POST", &reset, Some(&operator), None);
    assert_eq!(r.status, 200, "{}", r.body);
    assert_eq!(r.json()["circuit"]["state"], "closed", "{}", r.body);
    let entry = audit_entry(&app, "circuit.reset", &target);
    assert_eq!(entry["actor"], operator_id);
    assert_eq!(entry["detail"]["tasks_made_due"], 3, "{entry}");
    assert_eq!(sample(&metrics(&app), &gauge), Some(0.0));
    // The reset made the tasks the circuit held back due at once: they run without the clock
    // reaching the old trial time.
    for id in &ids {
        let t = task(&app, id);
        assert!(ms(&t["due_at"]) < ms(&open_until), "{t}");
    }
    for id in &ids {
        wait_status(&app, id, "succeeded");
    }
    assert_eq!(receiver.count(), 6);
    assert!(now(&app) < ms(&open_until));
}

// ---------------------------------------------------------------------------------------------
// Queue depth, priorities, listings, streams, metrics

/// At `queue.max_depth` waiting tasks a submit answers 429 with Retry-After and creates
/// nothing (no task, no audit entry); an idempotent repeat still answers; room comes back when
/// a task leaves the queue.
#[test]
fn a_full_queue_answers_429_and_creates_nothing() {
    let receiver = Receiver::start();
    let app = TestApp::start_with(|c| {
        c.queue.max_depth = 2;
        add_http(c, "notify", http(&receiver.url()));
    });
    let later = rfc3339(now(&app) + 3_600_000);
    let first = submit_new(
        &app,
        &app.admin_key,
        &json!({"type": "notify", "payload": {}, "run_at": later, "idempotency_key": "k1"}),
    );
    submit_new(
        &app,
        &app.admin_key,
        &json!({"type": "notify", "payload": {}, "run_at": later}),
    );
    let seq = app.audit_seq();
    let r = submit(
        &app,
        &app.admin_key,
        &json!({"type": "notify", "payload": {}, "run_at": later, "idempotency_key": "k3"}),
    );
    assert_eq!(r.status, 429, "{}", r.body);
    assert_eq!(r.error_code(), "queue_full");
    let retry_after: u64 = r
        .header("retry-after")
        .expect("Retry-After")
        .parse()
        .expect("seconds");
    assert!(retry_after > 0);
    assert_eq!(app.audit_seq(), seq, "nothing audited");
    let listed = app.admin_get("/api/v1/tasks").json();
    assert_eq!(listed["tasks"].as_array().unwrap().len(), 2, "{listed}");

    // A repeat of an existing key names its task, full or not.
    let r = submit(
        &app,
        &app.admin_key,
        &json!({"type": "notify", "payload": {}, "idempotency_key": "k1"}),
    );
    assert_eq!(r.status, 200, "{}", r.body);
    assert_eq!(r.json()["id"], first.as_str());

    // The refused key was not kept: once there is room, it creates a task.
    let r = app.request(
        "POST",
        &format!("/api/v1/tasks/{first}/cancel"),
        Some(&app.admin_key),
        None,
    );
    assert_eq!(r.status, 200, "{}", r.body);
    let r = submit(
        &app,
        &app.admin_key,
        &json!({"type": "notify", "payload": {}, "run_at": later, "idempotency_key": "k3"}),
    );
    assert_eq!(r.status, 201, "{}", r.body);
}

/// With one slot, tasks that come due together run by priority (lower first), then by due
/// time, then oldest first.
#[test]
fn lower_priority_runs_first_then_earlier_due_then_older() {
    let receiver = Receiver::start();
    let app = TestApp::start_with(|c| {
        c.queue.concurrency = 1;
        add_http(c, "notify", http(&receiver.url()));
    });
    let t0 = now(&app);
    let at = |offset: i64| rfc3339(t0 + offset);
    let plan: [(&str, Option<u32>, i64); 6] = [
        ("A", Some(50), 60_000),
        ("B", Some(10), 60_000),
        ("C", Some(10), 60_000),
        ("D", Some(200), 60_000),
        ("E", None, 60_000), // default priority 100
        ("F", Some(10), 30_000),
    ];
    for (name, priority, offset) in plan {
        let mut body = json!({"type": "notify", "payload": {"name": name}, "run_at": at(offset)});
        if let Some(p) = priority {
            body["priority"] = json!(p);
        }
        let id = submit_new(&app, &app.admin_key, &body);
        assert_eq!(
            task(&app, &id)["priority"],
            priority.unwrap_or(100),
            "{name}"
        );
    }
    assert_eq!(dispatch_now(&app), 0);
    set_clock(&app, t0 + 60_000);
    let order: Vec<String> = receiver
        .wait_for(6)
        .iter()
        .map(|d| d.json()["name"].as_str().unwrap().to_string())
        .collect();
    assert_eq!(order, vec!["F", "B", "C", "A", "E", "D"]);
}

/// `queue.concurrency` caps the tasks running at once and a handler's `concurrency` caps its
/// type: with deliveries held by the receiver, each round fills exactly the free slots, never
/// with more than one task of the limited type, and a dispatch round finds nothing more to
/// start.
#[test]
fn global_and_per_type_concurrency_limits_hold() {
    let receiver = Receiver::start();
    receiver.set_mode(Mode::Hold);
    let app = TestApp::start_with(|c| {
        c.queue.concurrency = 3;
        let mut limited = http(&receiver.url());
        limited.concurrency = Some(1);
        add_http(c, "limited", limited);
        add_http(c, "free", http(&receiver.url()));
    });
    let mut ids = Vec::new();
    for (task_type, n) in [("limited", 3), ("free", 4)] {
        for i in 0..n {
            ids.push(submit_new(
                &app,
                &app.admin_key,
                &json!({"type": task_type, "payload": {"type": task_type, "i": i}}),
            ));
        }
    }
    let (mut left_limited, mut left_free, mut seen) = (3usize, 4usize, 0usize);
    let mut rounds = 0;
    while left_limited + left_free > 0 {
        let expected = (left_free + left_limited.min(1)).min(3);
        poll_until(
            &format!("{expected} deliveries held in round {rounds}"),
            || {
                let (held, count) = (receiver.held(), receiver.count());
                if held == expected && count == seen + expected {
                    Ok(())
                } else {
                    Err(format!(
                        "{held} held, {count} delivered, {seen} before this round"
                    ))
                }
            },
        );
        assert_eq!(dispatch_now(&app), 0, "round {rounds}: a slot was free");
        assert_eq!(app.app.dispatcher.running(), expected);
        let batch = receiver.deliveries()[seen..].to_vec();
        assert_eq!(batch.len(), expected, "round {rounds}: {batch:?}");
        let limited = batch
            .iter()
            .filter(|d| d.json()["type"] == "limited")
            .count();
        assert!(
            limited <= 1,
            "round {rounds}: {limited} limited tasks at once"
        );
        left_limited -= limited;
        left_free -= batch.len() - limited;
        seen += batch.len();
        rounds += 1;
        receiver.release();
    }
    assert!(rounds >= 3, "three limited tasks need three rounds");
    for id in &ids {
        wait_status(&app, id, "succeeded");
    }
    assert_eq!(receiver.count(), 7);
}

/// GET /api/v1/tasks filters by status and type and pages newest first with a cursor;
/// GET /api/v1/runs lists attempts by outcome.
#[test]
fn tasks_and_runs_are_listed_filtered_and_paged() {
    let good = Receiver::start();
    let bad = Receiver::start();
    bad.set_mode(Mode::Status(500));
    let app = TestApp::start_with(|c| {
        add_http(c, "ok", http(&good.url()));
        let mut h = http(&bad.url());
        h.max_attempts = Some(1);
        add_http(c, "bad", h);
    });
    let key = app.admin_key.clone();
    let mut ok_ids = Vec::new();
    for i in 0..5 {
        ok_ids.push(submit_new(
            &app,
            &key,
            &json!({"type": "ok", "payload": {"i": i}}),
        ));
    }
    let mut bad_ids = Vec::new();
    for i in 0..2 {
        bad_ids.push(submit_new(
            &app,
            &key,
            &json!({"type": "bad", "payload": {"i": i}}),
        ));
    }
    let later = rfc3339(now(&app) + 3_600_000);
    let mut queued_ids = Vec::new();
    for i in 0..3 {
        queued_ids.push(submit_new(
            &app,
            &key,
            &json!({"type": "ok", "payload": {"later": i}, "run_at": later}),
        ));
    }
    for id in &ok_ids {
        wait_status(&app, id, "succeeded");
    }
    for id in &bad_ids {
        wait_status(&app, id, "dead");
    }

    let list = |query: &str| -> Vec<String> {
        let mut ids = Vec::new();
        let mut cursor: Option<String> = None;
        loop {
            let mut q = query.to_string();
            if let Some(c) = &cursor {
                q.push_str(&format!("&cursor={c}"));
            }
            let r = app.admin_get(&format!("/api/v1/tasks?{q}"));
            assert_eq!(r.status, 200, "{q}: {}", r.body);
            let v = r.json();
            ids.extend(
                v["tasks"]
                    .as_array()
                    .unwrap()
                    .iter()
                    .map(|t| t["id"].as_str().unwrap().to_string()),
            );
            match v["next_cursor"].as_str() {
                Some(c) => cursor = Some(c.to_string()),
                None => return ids,
            }
        }
    };
    let newest_first = |mut ids: Vec<String>| {
        ids.sort();
        ids.reverse();
        ids
    };
    let all_ok: Vec<String> = ok_ids.iter().chain(&queued_ids).cloned().collect();
    assert_eq!(list("type=ok&limit=3"), newest_first(all_ok.clone()));
    assert_eq!(list("type=ok&limit=1"), newest_first(all_ok));
    assert_eq!(
        list("status=queued&limit=2"),
        newest_first(queued_ids.clone())
    );
    assert_eq!(
        list("status=succeeded&type=ok&limit=2"),
        newest_first(ok_ids.clone())
    );
    assert_eq!(list("status=dead&limit=50"), newest_first(bad_ids.clone()));
    assert!(list("status=queued&type=bad&limit=5").is_empty());
    assert_eq!(list("limit=1000").len(), 10);
    let r = app.admin_get("/api/v1/tasks?limit=2");
    assert_eq!(r.json()["tasks"].as_array().unwrap().len(), 2);
    assert!(r.json()["next_cursor"].is_string());
    assert_eq!(app.admin_get("/api/v1/tasks?status=bogus").status, 400);
    assert_eq!(app.admin_get("/api/v1/tasks?limit=0").status, 400);
    assert_eq!(app.admin_get("/api/v1/tasks?cursor=nope").status, 400);

    let runs = |query: &str| -> Vec<Value> {
        let r = app.admin_get(&format!("/api/v1/runs?{query}"));
        assert_eq!(r.status, 200, "{}", r.body);
        r.json()["runs"].as_array().unwrap().clone()
    };
    let failed = runs("status=failed");
    assert_eq!(failed.len(), 2, "{failed:?}");
    for run in &failed {
        assert_eq!(run["type"], "bad");
        assert_eq!(run["outcome"], "failed");
        assert_eq!(run["error_class"], "http_5xx");
        assert_eq!(run["http_status"], 500);
        assert!(bad_ids.contains(&run["task_id"].as_str().unwrap().to_string()));
    }
    let succeeded = runs("status=succeeded&limit=50");
    assert_eq!(succeeded.len(), 5);
    assert!(
        succeeded
            .iter()
            .all(|r| r["type"] == "ok" && r["http_status"] == 200)
    );
    assert_eq!(runs("limit=3").len(), 3);
}

/// Reads Server-Sent Events (event name, data) from a stream until it ends.
fn read_events(
    lines: &mut impl Iterator<Item = std::io::Result<String>>,
    until_first: bool,
) -> Vec<(String, String)> {
    let mut events = Vec::new();
    let (mut event, mut data) = (String::new(), String::new());
    for line in lines {
        let line = line.expect("stream line");
        if line.is_empty() {
            if !event.is_empty() || !data.is_empty() {
                events.push((std::mem::take(&mut event), std::mem::take(&mut data)));
                if until_first {
                    return events;
                }
            }
        } else if let Some(v) = line.strip_prefix("event:") {
            event = v.trim().to_string();
        } else if let Some(v) = line.strip_prefix("data:") {
            if !data.is_empty() {
                data.push('\n');
            }
            data.push_str(v.strip_prefix(' ').unwrap_or(v));
        }
    }
    events
}

/// GET /api/v1/stream/{id}: the current status first, then status changes and log lines, and a
/// final `end` event once the task finishes, after which the stream closes.
#[test]
fn the_task_stream_sends_status_and_log_events_until_the_end() {
    let app = TestApp::start_with(|c| {
        add_command(
            c,
            "chatty",
            shell(
                r#"cat > /dev/null; echo "working on it" >&2; sleep 0.3; echo finished"#,
                &[],
            ),
        );
    });
    let later = rfc3339(now(&app) + 60_000);
    let id = submit_new(
        &app,
        &app.admin_key,
        &json!({"type": "chatty", "payload": {}, "run_at": later}),
    );
    assert_eq!(
        app.admin_get(&format!("/api/v1/stream/{}", Uuid::now_v7()))
            .status,
        404
    );

    let agent: ureq::Agent = ureq::Agent::config_builder()
        .http_status_as_error(false)
        .timeout_global(Some(Duration::from_secs(60)))
        .proxy(None)
        .build()
        .into();
    let req = ureq::http::Request::builder()
        .uri(format!("{}/api/v1/stream/{id}", app.base))
        .header("authorization", format!("Bearer {}", app.admin_key))
        .body(Vec::new())
        .unwrap();
    let response = agent.run(req).expect("stream");
    assert_eq!(response.status(), 200);
    let content_type = response
        .headers()
        .get("content-type")
        .and_then(|v| v.to_str().ok())
        .unwrap_or_default()
        .to_string();
    assert!(
        content_type.starts_with("text/event-stream"),
        "{content_type}"
    );
    let mut lines = BufReader::new(response.into_body().into_reader()).lines();
    let first = read_events(&mut lines, true);
    assert_eq!(first.len(), 1);
    assert_eq!(first[0].0, "status");
    let data: Value = serde_json::from_str(&first[0].1).unwrap();
    assert_eq!(data["status"], "queued", "{data}");
    assert_eq!(data["id"], id.as_str());

    // Now let it run; the stream ends by itself when the task is done.
    set_clock(&app, ms(&json!(later)));
    let rest = read_events(&mut lines, false);
    let names: Vec<&str> = rest.iter().map(|(e, _)| e.as_str()).collect();
    assert_eq!(names.last(), Some(&"end"), "{rest:?}");
    assert_eq!(names.iter().filter(|n| **n == "end").count(), 1, "{rest:?}");
    assert!(
        rest.iter().any(|(e, d)| e == "log" && d == "working on it"),
        "{rest:?}"
    );
    assert!(
        rest.iter()
            .any(|(e, d)| e == "status" && d.contains("\"succeeded\"")),
        "{rest:?}"
    );
    let end: Value = serde_json::from_str(&rest.last().unwrap().1).unwrap();
    assert_eq!(end["status"], "succeeded", "{end}");
    assert_eq!(end["result"], "finished\n", "{end}");

    // A finished task's stream is short: its status and the end.
    let r = app.admin_get(&format!("/api/v1/stream/{id}"));
    assert_eq!(r.status, 200);
    assert!(r.body.contains("event: status"), "{}", r.body);
    assert!(
        r.body
            .trim_end()
            .rsplit("\n\n")
            .next()
            .unwrap()
            .starts_with("event: end"),
        "{}",
        r.body
    );
}

/// After tasks ran: attempt counters by type and outcome, duration and target latency
/// summaries; after the maintenance worker's gauges: tasks by status and type, and DLQ size.
#[test]
fn task_metrics_count_attempts_durations_latencies_and_depth() {
    let good = Receiver::start();
    let rejecting = Receiver::start();
    rejecting.set_mode(Mode::Status(400));
    let app = TestApp::start_with(|c| {
        add_http(c, "notify", http(&good.url()));
        add_http(c, "failing", http(&rejecting.url()));
    });
    for i in 0..3 {
        let id = submit_new(
            &app,
            &app.admin_key,
            &json!({"type": "notify", "payload": {"i": i}}),
        );
        wait_status(&app, &id, "succeeded");
    }
    let id = submit_new(
        &app,
        &app.admin_key,
        &json!({"type": "failing", "payload": {}}),
    );
    wait_status(&app, &id, "dead");
    let later = rfc3339(now(&app) + 3_600_000);
    submit_new(
        &app,
        &app.admin_key,
        &json!({"type": "notify", "payload": {}, "run_at": later}),
    );

    let text = metrics(&app);
    let expect = |series: &str, value: f64| {
        assert_eq!(sample(&text, series), Some(value), "{series} in:\n{text}");
    };
    expect(
        r#"keel_task_attempts_total{outcome="succeeded",type="notify"}"#,
        3.0,
    );
    expect(
        r#"keel_task_attempts_total{outcome="failed",type="failing"}"#,
        1.0,
    );
    expect(r#"keel_task_duration_seconds_count{type="notify"}"#, 3.0);
    expect(r#"keel_task_duration_seconds_count{type="failing"}"#, 1.0);
    assert!(
        sample(
            &text,
            r#"keel_task_duration_seconds{type="notify",quantile="0.99"}"#
        )
        .is_some_and(|v| v >= 0.0),
        "{text}"
    );
    expect(
        &format!(
            "keel_target_latency_seconds_count{{target=\"{}\"}}",
            good.target()
        ),
        3.0,
    );
    expect(
        &format!(
            "keel_target_latency_seconds_count{{target=\"{}\"}}",
            rejecting.target()
        ),
        1.0,
    );

    let maintenance = keel::queue::Maintenance {
        queue: Arc::clone(&app.app.queue),
        metrics: Arc::clone(&app.app.metrics),
    };
    app.block_on(maintenance.publish_gauges())
        .expect("publish gauges");
    let text = metrics(&app);
    let expect = |series: &str, value: f64| {
        assert_eq!(sample(&text, series), Some(value), "{series} in:\n{text}");
    };
    expect(r#"keel_tasks{status="succeeded",type="notify"}"#, 3.0);
    expect(r#"keel_tasks{status="queued",type="notify"}"#, 1.0);
    expect(r#"keel_tasks{status="dead",type="failing"}"#, 1.0);
    expect(r#"keel_tasks{status="running",type="notify"}"#, 0.0);
    expect(r#"keel_tasks{status="succeeded",type="failing"}"#, 0.0);
    expect("keel_dlq_size", 1.0);
    // The depth is also sampled into a histogram series, so it has a history for charts.
    expect("keel_queue_waiting_count", 1.0);
    expect(r#"keel_queue_waiting{quantile="0.5"}"#, 1.0);
}
