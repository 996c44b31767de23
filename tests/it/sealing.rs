//! Secrets in handler snapshots through the real app: the database file never holds a bearer
//! token, signing secret or LLM API key in clear, yet the tasks deliver them; records written
//! with plaintext secrets are sealed at start; a sealed value that does not open fails the task
//! cleanly.

use std::path::Path;

use keel::config::{
    CircuitScope, Config, HandlerConfig, HttpHandlerConfig, Secret, WorkflowHandlerConfig,
    WorkflowStepConfig,
};
use keel::exec::HandlerSnapshot;
use keel::exec::seal::{SNAPSHOT_KEY_FILE, Sealer, is_sealed};
use keel::queue::{Handling, NewTask};
use serde_json::{Value, json};
use uuid::Uuid;

use crate::admin::Client;
use crate::llm::{Usage, add_fake_provider, fake_llm, submit, task, wait_status};
use crate::receiver::{Delivery, Receiver};
use crate::support::{START_MS, TestApp};

const TOKEN: &str = "tok-SECRET-1234567";
const SIGNING_SECRET: &str = "whsec_C2FVsBQIhrscChlQIMV+b5sSYspob7oD";
const LLM_KEY: &str = "sk-SECRET-llm-7654321";

fn notify(url: &str) -> HttpHandlerConfig {
    HttpHandlerConfig {
        url: url.to_string(),
        method: "POST".into(),
        token: Some(Secret::new(TOKEN)),
        signing_secret: Some(Secret::new(SIGNING_SECRET)),
        timeout_seconds: 30,
        target_concurrency: 8,
        circuit: CircuitScope::PerHost,
        concurrency: None,
        max_attempts: Some(2),
    }
}

/// The secrets and the forms they could be stored in (the signing key without its prefix).
fn forbidden() -> Vec<&'static str> {
    vec![
        TOKEN,
        SIGNING_SECRET,
        &SIGNING_SECRET["whsec_".len()..],
        LLM_KEY,
    ]
}

fn assert_no_secret_in(what: &str, bytes: &[u8]) {
    for secret in forbidden() {
        assert!(
            !bytes.windows(secret.len()).any(|w| w == secret.as_bytes()),
            "{what} holds {secret} in clear"
        );
    }
}

/// The delivery carries the bearer token and a valid Standard Webhooks signature.
fn assert_authenticated(d: &Delivery) {
    assert_eq!(
        d.header("authorization"),
        Some(format!("Bearer {TOKEN}").as_str())
    );
    let timestamp: i64 = d.header("webhook-timestamp").unwrap().parse().unwrap();
    let expected = keel::exec::http::standard_webhooks_signature(
        SIGNING_SECRET,
        d.webhook_id(),
        timestamp,
        &d.body,
    )
    .unwrap();
    assert_eq!(d.header("webhook-signature"), Some(expected.as_str()));
}

/// The handler snapshot stored in task `id`.
fn stored_handler(app: &TestApp, id: Uuid) -> HandlerSnapshot {
    let task = app.block_on(app.app.queue.get(id)).expect("task");
    HandlerSnapshot::of(&task).expect("snapshot")
}

/// An http task due in an hour whose snapshot holds its secrets in clear, as records written
/// before snapshots were sealed do; committed through the queue's own insert.
fn insert_plaintext_task(app: &TestApp, url: &str) -> Uuid {
    let new = NewTask {
        task_type: "notify".into(),
        payload: json!({"old": true}),
        run_at: Some(START_MS + 3_600_000),
        ..NewTask::default()
    };
    let handling = Handling {
        snapshot: HandlerSnapshot::Http {
            url: url.to_string(),
            method: "POST".into(),
            token: Some(TOKEN.into()),
            signing_secret: Some(SIGNING_SECRET.into()),
            target_concurrency: 8,
        }
        .to_snapshot(),
        target: "http:old".into(),
        timeout_s: 30,
        max_attempts: Some(2),
    };
    let task = app
        .app
        .queue
        .prepare("test", Uuid::now_v7(), &new, Some(handling))
        .expect("prepared");
    let id = task.id;
    let queue = std::sync::Arc::clone(&app.app.queue);
    app.block_on(app.app.store.write(move |tx| {
        queue
            .insert_prepared(tx, &task)
            .map_err(|e| keel::store::StoreError::Corrupt {
                table: "tasks".into(),
                key: String::new(),
                reason: e.to_string(),
            })
    }))
    .expect("inserted");
    id
}

fn audit_actions(app: &TestApp, action: &str) -> Vec<Value> {
    let r = app.admin_get("/api/v1/audit?limit=1000");
    assert_eq!(r.status, 200, "{}", r.body);
    r.json()["entries"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|e| e["action"] == action)
        .cloned()
        .collect()
}

/// http, llm and workflow tasks deliver their secrets, while neither the database file nor
/// the API and the task page show them (sealed or not).
#[test]
fn snapshot_secrets_are_never_stored_in_clear() {
    let receiver = Receiver::start();
    let llm = fake_llm(Usage::Fixed(10, 5), std::time::Duration::ZERO);
    let url = receiver.url();
    let app = TestApp::start_with(|c: &mut Config| {
        c.handlers
            .insert("notify".into(), HandlerConfig::Http(notify(&url)));
        add_fake_provider(c, &llm, 1.0);
        c.llm.providers.get_mut("fake").unwrap().api_key = Some(Secret::new(LLM_KEY));
        c.handlers.insert(
            "flow".into(),
            HandlerConfig::Workflow(WorkflowHandlerConfig {
                steps: vec![WorkflowStepConfig {
                    name: "tell".into(),
                    handler: "notify".into(),
                    payload: None,
                }],
                timeout_seconds: 60,
                concurrency: None,
                max_attempts: Some(2),
            }),
        );
    });
    let http = submit(&app, "notify", json!({"n": 1}));
    let ask = submit(&app, "ask", json!({"prompt": "hi"}));
    let flow = submit(&app, "flow", json!({"n": 2}));
    for id in [&http, &ask, &flow] {
        wait_status(&app, id, "succeeded");
    }
    let deliveries = receiver.deliveries();
    assert_eq!(deliveries.len(), 2, "the http task and the workflow's step");
    deliveries.iter().for_each(assert_authenticated);
    let calls = llm.requests();
    assert_eq!(calls.len(), 1);
    assert_eq!(
        calls[0].header("authorization"),
        Some(format!("Bearer {LLM_KEY}").as_str())
    );
    let HandlerSnapshot::Http { token, .. } = stored_handler(&app, Uuid::parse_str(&http).unwrap())
    else {
        panic!("an http snapshot");
    };
    assert!(token.as_deref().is_some_and(is_sealed), "{token:?}");

    let admin = Client::sign_in(&app.base, &app.admin_key);
    for id in [&http, &ask, &flow] {
        for body in [
            task(&app, id).to_string(),
            admin.get(&format!("/admin/tasks/{id}")).body,
        ] {
            assert_no_secret_in("a task view", body.as_bytes());
            assert!(
                !body.contains("sealed:v1:"),
                "a sealed secret shown: {body}"
            );
        }
    }

    let dir = app.stop();
    let key = dir.path().join(SNAPSHOT_KEY_FILE);
    assert_eq!(std::fs::read(&key).unwrap().len(), 32);
    assert_eq!(keel::fsutil::mode_of(&key).unwrap(), 0o600);
    let database = std::fs::read(dir.path().join("keel.redb")).expect("the database file");
    assert_no_secret_in("keel.redb", &database);
}

/// A task record written with plaintext secrets is rewritten sealed when keel starts (audited
/// once), and still delivers them.
#[test]
fn plaintext_records_are_sealed_at_start() {
    let receiver = Receiver::start();
    let url = receiver.url();
    let configure = |c: &mut Config| {
        c.handlers
            .insert("notify".into(), HandlerConfig::Http(notify(&url)));
    };
    let app = TestApp::start_with(configure);
    let id = insert_plaintext_task(&app, &url);
    let HandlerSnapshot::Http { token, .. } = stored_handler(&app, id) else {
        panic!("an http snapshot");
    };
    assert_eq!(
        token.as_deref(),
        Some(TOKEN),
        "stored in clear before the restart"
    );
    assert!(audit_actions(&app, "queue.snapshots_rewritten").is_empty());

    let dir = app.stop();
    let database = std::fs::read(dir.path().join("keel.redb")).unwrap();
    assert!(
        database.windows(TOKEN.len()).any(|w| w == TOKEN.as_bytes()),
        "the old record holds the token in clear"
    );
    let app = TestApp::start_in(dir, configure);
    let handler = stored_handler(&app, id);
    let HandlerSnapshot::Http {
        token,
        signing_secret,
        ..
    } = &handler
    else {
        panic!("an http snapshot");
    };
    assert!(token.as_deref().is_some_and(is_sealed), "{token:?}");
    assert!(signing_secret.as_deref().is_some_and(is_sealed));
    let sealer = Sealer::load_or_create(app.dir.path()).unwrap();
    let HandlerSnapshot::Http { token, .. } = handler.unsealed(&sealer).unwrap() else {
        panic!("an http snapshot");
    };
    assert_eq!(token.as_deref(), Some(TOKEN));
    let rewrites = audit_actions(&app, "queue.snapshots_rewritten");
    assert_eq!(rewrites.len(), 1, "{rewrites:?}");
    assert_eq!(rewrites[0]["detail"]["tasks"], 1, "{rewrites:?}");

    app.clock.set_ms(START_MS + 3_600_000);
    app.app.queue.wake().notify_one();
    wait_status(&app, &id.to_string(), "succeeded");
    assert_authenticated(&receiver.deliveries()[0]);

    let app = TestApp::start_in(app.stop(), configure);
    assert_eq!(
        audit_actions(&app, "queue.snapshots_rewritten").len(),
        1,
        "nothing left to seal at the next start"
    );
}

/// A task whose sealed secrets do not open with the data dir's key (the key was replaced) is
/// dead after one attempt with an error that names no secret, and nothing is sent.
#[test]
fn a_snapshot_sealed_under_another_key_fails_cleanly() {
    let receiver = Receiver::start();
    let url = receiver.url();
    let configure = |c: &mut Config| {
        c.handlers
            .insert("notify".into(), HandlerConfig::Http(notify(&url)));
    };
    let app = TestApp::start_with(configure);
    let r = app.post_json(
        "/api/v1/tasks",
        Some(&app.admin_key),
        &json!({"type": "notify", "payload": {},
            "run_at": keel::clock::rfc3339(START_MS + 3_600_000)}),
    );
    assert_eq!(r.status, 201, "{}", r.body);
    let id = r.json()["id"].as_str().unwrap().to_string();
    let dir = app.stop();
    replace_key(dir.path());

    let app = TestApp::start_in(dir, configure);
    app.clock.set_ms(START_MS + 3_600_000);
    app.app.queue.wake().notify_one();
    let t = wait_status(&app, &id, "dead");
    let attempt = t["attempts"].as_array().unwrap().last().unwrap().clone();
    assert_eq!(attempt["error_class"], "unsealable_handler", "{t}");
    let message = attempt["error_message"].as_str().unwrap();
    assert!(message.contains("snapshot-key"), "{message}");
    assert_no_secret_in("the error", message.as_bytes());
    assert!(!message.contains("sealed:v1:"), "{message}");
    assert_eq!(
        t["attempts"].as_array().unwrap().len(),
        1,
        "not retried: {t}"
    );
    assert_eq!(receiver.count(), 0, "nothing was sent");
}

/// Overwrites the data dir's sealing key with another one.
fn replace_key(dir: &Path) {
    let path = dir.join(SNAPSHOT_KEY_FILE);
    let mut key = std::fs::read(&path).unwrap();
    key.iter_mut().for_each(|b| *b ^= 0x5a);
    std::fs::write(&path, key).unwrap();
}
