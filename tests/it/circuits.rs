//! Circuit breakers through the real API and dashboard: one breaker per handler by default and
//! per host on request, why a circuit opened, and resets that make held-back tasks due at once.

use keel::clock::Clock;
use keel::config::{CircuitScope, Config, HandlerConfig, HttpHandlerConfig};
use serde_json::{Value, json};

use crate::admin::Client;
use crate::receiver::{Mode, Receiver};
use crate::support::{TestApp, poll_until};

fn http(url: &str, circuit: CircuitScope) -> HandlerConfig {
    HandlerConfig::Http(HttpHandlerConfig {
        url: url.to_string(),
        method: "POST".into(),
        token: None,
        signing_secret: None,
        timeout_seconds: 30,
        target_concurrency: 8,
        circuit,
        concurrency: None,
        max_attempts: None,
    })
}

/// Opens a circuit after two failures in a row (of two), for ten minutes.
fn strict_breakers(c: &mut Config) {
    c.circuit.min_volume = 2;
    c.circuit.threshold = 0.5;
    c.circuit.window_seconds = 60;
    c.circuit.open_seconds = 600;
    c.queue.backoff_base_ms = 1000;
    c.queue.max_attempts = 10;
}

fn submit(app: &TestApp, task_type: &str) -> String {
    let r = app.post_json(
        "/api/v1/tasks",
        Some(&app.admin_key),
        &json!({"type": task_type, "payload": {}}),
    );
    assert_eq!(r.status, 201, "{}", r.body);
    r.json()["id"].as_str().unwrap().to_string()
}

fn task(app: &TestApp, id: &str) -> Value {
    let r = app.admin_get(&format!("/api/v1/tasks/{id}"));
    assert_eq!(r.status, 200, "{}", r.body);
    r.json()["task"].clone()
}

fn wait_task(app: &TestApp, id: &str, what: &str, ok: impl Fn(&Value) -> bool) -> Value {
    poll_until(&format!("task {id}: {what}"), || {
        let t = task(app, id);
        if ok(&t) { Ok(t) } else { Err(t.to_string()) }
    })
}

fn circuits(app: &TestApp) -> Vec<Value> {
    let r = app.admin_get("/api/v1/circuits");
    assert_eq!(r.status, 200, "{}", r.body);
    r.json()["circuits"].as_array().unwrap().clone()
}

fn wait_circuit(app: &TestApp, name: &str, state: &str) -> Value {
    poll_until(&format!("circuit {name} to be {state}"), || {
        let all = circuits(app);
        match all.iter().find(|c| c["name"] == name) {
            Some(c) if c["state"] == state => Ok(c.clone()),
            _ => Err(format!("{all:?}")),
        }
    })
}

fn advance(app: &TestApp, by_ms: i64) {
    app.clock.set_ms(app.clock.now_ms() + by_ms);
    app.app.queue.wake().notify_one();
}

/// Two handlers on one host: the failing one opens its own circuit (`handler:<type>`), with the
/// outcomes that tripped it, and the healthy one keeps delivering to the same host.
#[test]
fn a_failing_handler_opens_its_own_circuit_and_spares_its_host() {
    let receiver = Receiver::start();
    receiver.set_mode(Mode::Status(500));
    let url = receiver.url();
    let app = TestApp::start_with(|c| {
        strict_breakers(c);
        c.handlers.insert(
            "broken".into(),
            http(&format!("{url}?path=broken"), CircuitScope::default()),
        );
        c.handlers
            .insert("healthy".into(), http(&url, CircuitScope::default()));
    });
    let failing: Vec<String> = (0..2).map(|_| submit(&app, "broken")).collect();
    for id in &failing {
        wait_task(&app, id, "one failed attempt", |t| t["attempts_used"] == 1);
    }
    let open = wait_circuit(&app, "handler:broken", "open");
    assert_eq!(open["tripped_volume"], 2, "{open}");
    assert_eq!(open["tripped_failure_ratio"], 1.0, "{open}");
    let tripped = open["tripped_by"].as_array().unwrap();
    assert_eq!(tripped.len(), 2, "{open}");
    for o in tripped {
        assert_eq!(
            (&o["healthy"], &o["class"]),
            (&json!(false), &json!("http_5xx"))
        );
    }
    assert!(
        circuits(&app)
            .iter()
            .all(|c| c["name"] != receiver.target()),
        "no breaker for the whole host"
    );

    receiver.set_mode(Mode::Ok);
    let spared = submit(&app, "healthy");
    wait_task(&app, &spared, "delivered", |t| t["status"] == "succeeded");
    assert_eq!(task(&app, &spared)["target"], "handler:healthy");
}

/// `circuit = "per_host"` shares one breaker between the handlers of a host: one handler's
/// failures hold back the other's tasks.
#[test]
fn per_host_handlers_share_the_breaker_of_their_host() {
    let receiver = Receiver::start();
    receiver.set_mode(Mode::Status(500));
    let url = receiver.url();
    let app = TestApp::start_with(|c| {
        strict_breakers(c);
        c.handlers
            .insert("first".into(), http(&url, CircuitScope::PerHost));
        c.handlers
            .insert("second".into(), http(&url, CircuitScope::PerHost));
    });
    for _ in 0..2 {
        let id = submit(&app, "first");
        wait_task(&app, &id, "one failed attempt", |t| t["attempts_used"] == 1);
    }
    let open = wait_circuit(&app, &receiver.target(), "open");
    receiver.set_mode(Mode::Ok);
    let held = submit(&app, "second");
    let t = wait_task(&app, &held, "held back by the host's circuit", |t| {
        t["due_at"] == open["open_until"]
    });
    assert_eq!(t["status"], "queued", "{t}");
    assert_eq!(t["attempts_used"], 0, "{t}");
    assert_eq!(receiver.count(), 2);
}

/// The handler and endpoint key `circuit` accepts only its two scopes, and says where it was
/// wrong.
#[test]
fn an_unknown_circuit_scope_is_a_configuration_error() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("keel.toml");
    std::fs::write(
        &file,
        "[handlers.notify]\nkind = \"http\"\nurl = \"http://127.0.0.1:9/x\"\ncircuit = \"per_url\"\n",
    )
    .unwrap();
    let out = crate::support::run_keel(
        &["config", "check", "--config", file.to_str().unwrap()],
        &[],
    );
    assert_eq!(out.code, 2, "{out:?}");
    assert!(out.stderr.contains("per_url"), "{}", out.stderr);
    assert!(out.stderr.contains("per_handler"), "{}", out.stderr);

    std::fs::write(
        &file,
        "[handlers.notify]\nkind = \"http\"\nurl = \"http://127.0.0.1:9/x\"\ncircuit = \"per_host\"\n",
    )
    .unwrap();
    let out = crate::support::run_keel(
        &["config", "check", "--config", file.to_str().unwrap()],
        &[],
    );
    assert_eq!(out.code, 0, "{out:?}");
}

/// The circuits page of an open circuit shows the window that opened it and why, also after
/// that window has passed (when the current window is empty).
#[test]
fn the_circuits_page_shows_why_an_open_circuit_opened() {
    let receiver = Receiver::start();
    receiver.set_mode(Mode::Status(503));
    let url = receiver.url();
    let app = TestApp::start_with(|c| {
        strict_breakers(c);
        c.handlers
            .insert("notify".into(), http(&url, CircuitScope::default()));
    });
    for _ in 0..2 {
        let id = submit(&app, "notify");
        wait_task(&app, &id, "one failed attempt", |t| t["attempts_used"] == 1);
    }
    wait_circuit(&app, "handler:notify", "open");
    // Past the window, well before the trial: the current window holds nothing.
    advance(&app, 120_000);
    let c = wait_circuit(&app, "handler:notify", "open");
    assert_eq!(c["window_volume"], 0, "{c}");

    let page = Client::sign_in(&app.base, &app.admin_key).get("/admin/circuits");
    assert_eq!(page.status, 200, "{}", page.body);
    let row = &page.body[page.body.find("handler:notify").expect("the circuit's row")..];
    let row = &row[..row.find("</tr>").unwrap()];
    assert!(row.contains("100 %"), "{row}");
    assert!(row.contains("when it opened"), "{row}");
    assert!(row.contains("2 of 2 failed: http_5xx ×2"), "{row}");
    assert!(!row.contains(">0 %"), "{row}");
}
