//! The workflow executor through the real API: steps run by the command, http and llm
//! executors, `{{steps.<name>.result}}` and `{{payload.<field>}}` reaching later steps, a retry
//! (and a restart) resuming at the step that did not finish without repeating finished ones,
//! a failing step failing the workflow, a spent LLM budget deferring it, and the whole-workflow
//! timeout.

use std::path::{Path, PathBuf};
use std::time::Duration;

use keel::config::{
    CommandHandlerConfig, Config, HandlerConfig, HttpHandlerConfig, WorkflowHandlerConfig,
    WorkflowStepConfig,
};
use serde_json::{Value, json};

use crate::llm::{
    FakeResponse, FakeServer, Usage, add_fake_provider, fake_llm, last_attempt, submit, task,
    wait_status, wait_task,
};
use crate::support::{TestApp, poll_until};

/// `/bin/sh -c <script> sh <args…>`.
fn shell(script: &str, args: &[&Path]) -> HandlerConfig {
    let mut argv = vec!["-c".to_string(), script.to_string(), "sh".to_string()];
    argv.extend(args.iter().map(|a| a.display().to_string()));
    HandlerConfig::Command(CommandHandlerConfig {
        program: "/bin/sh".into(),
        args: argv,
        working_dir: None,
        env_allow: vec!["PATH".into()],
        timeout_seconds: 60,
        concurrency: None,
        max_attempts: None,
    })
}

fn http(url: String) -> HandlerConfig {
    HandlerConfig::Http(HttpHandlerConfig {
        url,
        method: "POST".into(),
        token: None,
        signing_secret: None,
        timeout_seconds: 30,
        target_concurrency: 8,
        circuit: Default::default(),
        concurrency: None,
        max_attempts: None,
    })
}

fn step(name: &str, handler: &str, payload: Option<Value>) -> WorkflowStepConfig {
    WorkflowStepConfig {
        name: name.into(),
        handler: handler.into(),
        payload,
    }
}

fn workflow(steps: Vec<WorkflowStepConfig>, timeout_seconds: u64) -> HandlerConfig {
    HandlerConfig::Workflow(WorkflowHandlerConfig {
        steps,
        timeout_seconds,
        concurrency: None,
        max_attempts: Some(3),
    })
}

/// Lines a step's command appended to its count file (0 when it never ran).
fn runs(path: &Path) -> usize {
    std::fs::read_to_string(path).map_or(0, |s| s.lines().count())
}

/// command (`first`) → http to `receiver` (`deliver`) → command (`last`, echoing its payload),
/// as the workflow type `flow`. `first` and `last` count their runs in files under `dir`.
struct Flow {
    first_runs: PathBuf,
    last_runs: PathBuf,
}

fn configure_flow(c: &mut Config, dir: &Path, receiver: &FakeServer) -> Flow {
    let flow = Flow {
        first_runs: dir.join("first.runs"),
        last_runs: dir.join("last.runs"),
    };
    c.handlers.insert(
        "first".into(),
        shell(
            r#"echo run >> "$1"; printf '{"greeting": "hello"}'"#,
            &[&flow.first_runs],
        ),
    );
    c.handlers
        .insert("deliver".into(), http(format!("{}/hook", receiver.base)));
    c.handlers.insert(
        "last".into(),
        shell(r#"echo run >> "$1"; cat"#, &[&flow.last_runs]),
    );
    c.handlers.insert(
        "flow".into(),
        workflow(
            vec![
                step("first", "first", None),
                step(
                    "deliver",
                    "deliver",
                    Some(json!({
                        "text": "{{steps.first.result}}",
                        "n": "{{payload.n}}",
                        "note": "got {{steps.first.result}} for #{{payload.n}}",
                    })),
                ),
                step(
                    "last",
                    "last",
                    Some(json!({
                        "delivered": "{{steps.deliver.result}}",
                        "greeting": "{{steps.first.result}}",
                    })),
                ),
            ],
            120,
        ),
    );
    flow
}

fn checkpoints(app: &TestApp, id: &str) -> Vec<(u32, String, u32)> {
    let id = uuid::Uuid::parse_str(id).expect("uuid");
    app.block_on(keel::exec::workflow::checkpoints(&app.app.store, id))
        .expect("checkpoints")
        .into_iter()
        .map(|(i, c)| (i, c.name, c.attempt))
        .collect()
}

fn logs(app: &TestApp, id: &str) -> Vec<String> {
    let r = app.admin_get(&format!("/api/v1/tasks/{id}/logs"));
    assert_eq!(r.status, 200, "{}", r.body);
    r.json()["lines"]
        .as_array()
        .expect("lines")
        .iter()
        .map(|l| l["line"].as_str().unwrap_or("").to_string())
        .collect()
}

/// Step 2's receiver fails once: the retry resumes at step 2 (step 1 ran exactly once), the
/// results of earlier steps reach later ones, and the workflow's result is step 3's.
#[test]
fn a_retry_resumes_at_the_failed_step() {
    let receiver = FakeServer::start(|_| FakeResponse::new(200, "delivered-ok"));
    receiver.push(FakeResponse::new(500, "try again"));
    let dir = tempfile::tempdir().expect("temp dir");
    let mut flow = None;
    let app = TestApp::start_with(|c| flow = Some(configure_flow(c, dir.path(), &receiver)));
    let flow = flow.expect("configured");

    let id = submit(&app, "flow", json!({"n": 5}));
    let t = wait_task(&app, &id, "retrying after step 2 failed", |t| {
        t["status"] == "retrying" && t["attempts_used"] == 1
    });
    let attempt = last_attempt(&t);
    assert_eq!(attempt["error_class"], "http_5xx", "{t}");
    assert!(
        attempt["error_message"]
            .as_str()
            .unwrap()
            .starts_with("step 2/3 (deliver): "),
        "{attempt}"
    );
    assert_eq!((runs(&flow.first_runs), runs(&flow.last_runs)), (1, 0));
    assert_eq!(checkpoints(&app, &id), [(0, "first".to_string(), 1)]);

    app.clock.advance_ms(120_000);
    let t = wait_status(&app, &id, "succeeded");
    assert_eq!(runs(&flow.first_runs), 1, "step 1 was not repeated");
    assert_eq!(runs(&flow.last_runs), 1);
    assert_eq!(t["attempts_used"], 2);
    assert_eq!(t["target"], "workflow:flow");
    assert_eq!(t["handler"]["kind"], "workflow");

    // Step 1's JSON result went in as JSON where it was the whole string, as text inside one.
    let deliveries = receiver.requests();
    assert_eq!(deliveries.len(), 2);
    let expected = json!({
        "text": {"greeting": "hello"},
        "n": 5,
        "note": "got {\"greeting\": \"hello\"} for #5",
    });
    for d in &deliveries {
        assert_eq!(d.json(), expected);
    }
    // The step is its own delivery: one webhook-id across its retries, not the task's.
    let hook_id = deliveries[0].header("webhook-id").expect("webhook-id");
    assert_eq!(deliveries[1].header("webhook-id"), Some(hook_id));
    assert_ne!(hook_id, t["webhook_id"].as_str().unwrap());

    // The result is step 3's: its stdin, built from steps 1 and 2.
    let result: Value = serde_json::from_str(t["result"].as_str().unwrap()).expect("JSON result");
    assert_eq!(
        result,
        json!({"delivered": "delivered-ok", "greeting": {"greeting": "hello"}})
    );
    assert_eq!(
        checkpoints(&app, &id),
        [
            (0, "first".to_string(), 1),
            (1, "deliver".to_string(), 2),
            (2, "last".to_string(), 2)
        ]
    );
    let lines = logs(&app, &id);
    assert!(
        lines
            .iter()
            .any(|l| l == "step 1/3 (first): finished in attempt 1; not run again"),
        "{lines:?}"
    );
}

/// A restart while step 2 runs: the workflow runs again and resumes at step 2.
#[test]
fn a_restart_resumes_after_the_last_checkpoint() {
    let receiver = FakeServer::start(|_| FakeResponse::new(200, "delivered-ok"));
    receiver.push(FakeResponse::new(200, "late").delayed(Duration::from_secs(3)));
    let dir = tempfile::tempdir().expect("temp dir");
    let configure = |c: &mut Config| {
        configure_flow(c, dir.path(), &receiver);
        c.shutdown.drain_seconds = 1;
    };
    let app = TestApp::start_with(configure);
    let id = submit(&app, "flow", json!({"n": 1}));
    poll_until("step 2 to be delivered", || {
        if receiver.count() == 1 {
            Ok(())
        } else {
            Err(format!("{}", receiver.count()))
        }
    });
    let data = app.stop();
    let app = TestApp::start_in(data, configure);
    let t = wait_status(&app, &id, "succeeded");
    assert_eq!(
        runs(&dir.path().join("first.runs")),
        1,
        "step 1 was not repeated"
    );
    assert_eq!(runs(&dir.path().join("last.runs")), 1);
    assert_eq!(
        t["attempts_used"], 1,
        "the interrupted attempt did not count"
    );
    let done: Vec<(u32, String)> = checkpoints(&app, &id)
        .into_iter()
        .map(|(i, n, _)| (i, n))
        .collect();
    assert_eq!(done.len(), 3, "{done:?}");
}

/// A step that fails for good (400) fails the workflow; later steps never run.
#[test]
fn a_failing_step_fails_the_workflow() {
    let receiver = FakeServer::start(|_| FakeResponse::new(400, "bad input"));
    let dir = tempfile::tempdir().expect("temp dir");
    let mut flow = None;
    let app = TestApp::start_with(|c| flow = Some(configure_flow(c, dir.path(), &receiver)));
    let flow = flow.expect("configured");
    let id = submit(&app, "flow", json!({"n": 2}));
    let t = wait_status(&app, &id, "dead");
    let attempt = last_attempt(&t);
    assert_eq!(attempt["error_class"], "http_4xx", "{t}");
    assert!(
        attempt["error_message"]
            .as_str()
            .unwrap()
            .starts_with("step 2/3 (deliver): "),
        "{attempt}"
    );
    assert_eq!(t["attempts_used"], 1);
    assert_eq!((runs(&flow.first_runs), runs(&flow.last_runs)), (1, 0));
    // Deleting the dead task deletes its checkpoints too.
    assert_eq!(checkpoints(&app, &id), [(0, "first".to_string(), 1)]);
    let r = app.request(
        "DELETE",
        &format!("/api/v1/dlq/{id}"),
        Some(&app.admin_key),
        None,
    );
    assert_eq!(r.status, 204, "{}", r.body);
    assert_eq!(checkpoints(&app, &id), []);

    // A missing payload field is a template error: dead too, before the step runs.
    let id = submit(&app, "flow", json!({"m": 2}));
    let t = wait_status(&app, &id, "dead");
    assert_eq!(last_attempt(&t)["error_class"], "template");
    assert!(
        last_attempt(&t)["error_message"]
            .as_str()
            .unwrap()
            .contains("no field `n`"),
        "{t}"
    );
    assert_eq!(receiver.count(), 1);
}

/// An llm step charges its provider's budget; when the budget is spent the workflow is
/// deferred (class `budget_exceeded`, no attempt used) and resumes the next UTC day.
#[test]
fn an_llm_step_uses_the_budget_and_waits_for_it() {
    let llm = fake_llm(Usage::Fixed(10, 5), Duration::ZERO);
    let dir = tempfile::tempdir().expect("temp dir");
    let shown = dir.path().join("show.runs");
    let app = TestApp::start_with(|c| {
        // Room for one call (reserving 140,000 µUSD, costing 20,000), not two.
        add_fake_provider(c, &llm, 0.15);
        c.handlers
            .insert("show".into(), shell(r#"echo run >> "$1"; cat"#, &[&shown]));
        c.handlers.insert(
            "qa".into(),
            workflow(
                vec![
                    step("ask", "ask", Some(json!({"prompt": "{{payload.q}}"}))),
                    step(
                        "show",
                        "show",
                        Some(json!({"answer": "{{steps.ask.result}}"})),
                    ),
                ],
                60,
            ),
        );
    });
    let id = submit(&app, "qa", json!({"q": "hello"}));
    let t = wait_status(&app, &id, "succeeded");
    assert_eq!(
        serde_json::from_str::<Value>(t["result"].as_str().unwrap()).unwrap(),
        json!({"answer": "echo: hello"})
    );
    assert_eq!(llm.requests()[0].json()["messages"][0]["content"], "hello");

    let id = submit(&app, "qa", json!({"q": "hello"}));
    let t = wait_task(&app, &id, "deferred by the budget", |t| {
        last_attempt(t)["outcome"] == "deferred"
    });
    assert_eq!(last_attempt(&t)["error_class"], "budget_exceeded", "{t}");
    assert_eq!(t["status"], "queued");
    assert_eq!(t["attempts_used"], 0);
    assert_eq!(t["due_at"], "2026-01-02T00:00:00.000Z");
    app.clock.advance_ms(keel::budget::DAY_MS);
    wait_status(&app, &id, "succeeded");
    assert_eq!(llm.count(), 2);
    assert_eq!(runs(&shown), 2);
}

/// The workflow's timeout covers the whole run: past it the task is dead with class
/// `timeout`, naming the step that was stopped.
#[test]
fn the_whole_workflow_timeout_fails_the_task() {
    let app = TestApp::start_with(|c| {
        c.handlers.insert("quick".into(), shell("printf ok", &[]));
        c.handlers
            .insert("slow".into(), shell("exec sleep 30", &[]));
        c.handlers.insert(
            "slowflow".into(),
            workflow(
                vec![step("quick", "quick", None), step("slow", "slow", None)],
                1,
            ),
        );
    });
    let id = submit(&app, "slowflow", json!({}));
    let t = wait_status(&app, &id, "dead");
    let attempt = last_attempt(&t);
    assert_eq!(attempt["error_class"], "timeout", "{t}");
    let message = attempt["error_message"].as_str().unwrap();
    assert!(message.contains("step 2/2 (slow)"), "{message}");
    assert_eq!(t["attempts_used"], 1, "not retried");
    assert_eq!(checkpoints(&app, &id), [(0, "quick".to_string(), 1)]);
    assert_eq!(task(&app, &id)["result"], Value::Null);
}
