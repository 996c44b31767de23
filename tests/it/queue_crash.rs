//! Crash test of the task queue with the real `keel` binary: 2,000 tasks submitted over HTTP by
//! several clients and delivered through the http executor to a `Receiver` that de-duplicates
//! on `webhook-id`, while the server is SIGKILLed at random moments at least 20 times and
//! restarted on the same data dir. No acknowledged task may be lost, every task must be
//! delivered, and extra deliveries may only repeat a `webhook-id`.

use std::collections::{HashMap, HashSet};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, RwLock};
use std::time::{Duration, Instant};

use serde_json::{Value, json};

use crate::receiver::Receiver;
use crate::support::{KeelProcess, Rng, agent, call, poll_until, send};

/// Tasks submitted in all.
const TASKS: usize = 2_000;
/// Client threads submitting them.
const CLIENTS: usize = 8;
/// Fewest SIGKILLs.
const MIN_KILLS: usize = 20;
/// Fewest SIGKILLs after the last submission was acknowledged, while deliveries are pending.
const MIN_KILLS_WHILE_DELIVERING: usize = 3;
/// Standard Webhooks secret of the handler.
const SECRET: &str = "whsec_C2FVsBQIhrscChlQIMV+b5sSYspob7oD";

fn idempotency_key(i: usize) -> String {
    format!("crash-task-{i}")
}

fn submission(i: usize) -> Value {
    json!({
        "type": "notify",
        "payload": {"i": i, "key": idempotency_key(i)},
        "idempotency_key": idempotency_key(i),
    })
}

/// What one client thread saw.
#[derive(Debug, Default)]
struct ClientLog {
    /// (task number, task id, answer status) of each acknowledged submission.
    acked: Vec<(usize, String, u16)>,
    /// Submissions sent again after a transport error.
    resent: usize,
    /// Answers a live server should never give.
    unexpected: Vec<String>,
}

/// Submits tasks `indices`, each until it is acknowledged (201, or 200 when an earlier try
/// was committed but its answer was lost to a kill), following the server to its new address.
fn submit_all(base: Arc<RwLock<String>>, admin: String, indices: Vec<usize>) -> ClientLog {
    let agent = agent();
    let mut log = ClientLog::default();
    for i in indices {
        let body = submission(i);
        loop {
            let url = base.read().unwrap().clone();
            match send(&agent, &url, "POST", "/api/v1/tasks", &admin, Some(&body)) {
                Ok(r) if r.status == 201 || r.status == 200 => {
                    let id = serde_json::from_str::<Value>(&r.body)
                        .ok()
                        .and_then(|v| v["id"].as_str().map(str::to_string));
                    match id {
                        Some(id) => log.acked.push((i, id, r.status)),
                        None => log.unexpected.push(format!("task {i}: {}", r.body)),
                    }
                    break;
                }
                Ok(r) => {
                    log.unexpected
                        .push(format!("task {i}: {} {}", r.status, r.body));
                    break;
                }
                Err(_) => {
                    log.resent += 1;
                    std::thread::sleep(Duration::from_millis(5));
                }
            }
        }
    }
    log
}

fn spawn(data_dir: &std::path::Path, config: &std::path::Path) -> KeelProcess {
    let config = config.to_str().expect("utf-8 path");
    KeelProcess::spawn(data_dir, &[("KEEL_CONFIG", config)])
        .unwrap_or_else(|log| panic!("keel did not start:\n{log}"))
}

/// Ids of every task with `status` (or all tasks), paged.
fn list_ids(
    agent: &ureq::Agent,
    base: &str,
    key: &str,
    status: Option<&str>,
) -> Vec<(String, String)> {
    let mut out = Vec::new();
    let mut cursor: Option<String> = None;
    loop {
        let mut path = "/api/v1/tasks?limit=1000".to_string();
        if let Some(s) = status {
            path.push_str(&format!("&status={s}"));
        }
        if let Some(c) = &cursor {
            path.push_str(&format!("&cursor={c}"));
        }
        let r = call(agent, base, "GET", &path, key);
        assert_eq!(r.status, 200, "{path}: {}", r.body);
        let v = r.json();
        for t in v["tasks"].as_array().expect("tasks") {
            out.push((
                t["id"].as_str().expect("id").to_string(),
                t["status"].as_str().expect("status").to_string(),
            ));
        }
        match v["next_cursor"].as_str() {
            Some(c) => cursor = Some(c.to_string()),
            None => return out,
        }
    }
}

/// 2,000 tasks through the http executor, SIGKILL at least 20 times during submission and
/// delivery: every acknowledged task survives and succeeds, each is delivered (its
/// `webhook-id` reached the receiver with its payload and idempotency key), every delivery
/// belongs to a known task, duplicates only repeat a `webhook-id`, and idempotency keys still
/// name their tasks.
#[test]
fn sigkill_during_submission_and_delivery_loses_and_duplicates_no_task() {
    let mut rng =
        Rng::for_test("sigkill_during_submission_and_delivery_loses_and_duplicates_no_task");

    let receiver = Receiver::start_deduplicating();
    let dir = tempfile::tempdir().expect("temp dir");
    let data_dir = dir.path().join("data");
    let config = dir.path().join("keel.toml");
    std::fs::write(
        &config,
        format!(
            r#"
[queue]
concurrency = 16
max_attempts = 100
backoff_base_ms = 20
backoff_max_seconds = 1

[handlers.notify]
kind = "http"
url = "{url}"
signing_secret = "{SECRET}"
timeout_seconds = 10
target_concurrency = 16
"#,
            url = receiver.url()
        ),
    )
    .expect("write keel.toml");

    let started = Instant::now();
    let mut proc = spawn(&data_dir, &config);
    let admin = proc.admin_key();
    let base = Arc::new(RwLock::new(proc.base.clone()));

    let finished = Arc::new(AtomicUsize::new(0));
    let clients: Vec<_> = (0..CLIENTS)
        .map(|c| {
            let (base, admin, finished) = (Arc::clone(&base), admin.clone(), Arc::clone(&finished));
            let indices: Vec<usize> = (c..TASKS).step_by(CLIENTS).collect();
            std::thread::spawn(move || {
                let log = submit_all(base, admin, indices);
                finished.fetch_add(1, Ordering::SeqCst);
                log
            })
        })
        .collect();

    let (mut kills, mut kills_submitting, mut kills_delivering) = (0usize, 0usize, 0usize);
    loop {
        let submitting = finished.load(Ordering::SeqCst) < CLIENTS;
        let delivering = receiver.count() < TASKS;
        let enough_while_delivering = kills_delivering >= MIN_KILLS_WHILE_DELIVERING || !delivering;
        if kills >= MIN_KILLS && !submitting && enough_while_delivering {
            break;
        }
        std::thread::sleep(Duration::from_millis(rng.between(20, 300)));
        let submitting = finished.load(Ordering::SeqCst) < CLIENTS;
        proc.kill9();
        kills += 1;
        if submitting {
            kills_submitting += 1;
        } else if receiver.count() < TASKS {
            kills_delivering += 1;
        }
        proc = spawn(&data_dir, &config);
        *base.write().unwrap() = proc.base.clone();
    }
    let logs: Vec<ClientLog> = clients
        .into_iter()
        .map(|c| c.join().expect("client thread"))
        .collect();
    for (c, log) in logs.iter().enumerate() {
        assert!(
            log.unexpected.is_empty(),
            "client {c}: {:?}",
            log.unexpected
        );
    }
    let acked: HashMap<usize, String> = logs
        .iter()
        .flat_map(|l| l.acked.iter().map(|(i, id, _)| (*i, id.clone())))
        .collect();
    assert_eq!(acked.len(), TASKS, "every submission was acknowledged once");
    let lost_answers = logs
        .iter()
        .flat_map(|l| &l.acked)
        .filter(|(_, _, status)| *status == 200)
        .count();
    let resent: usize = logs.iter().map(|l| l.resent).sum();
    let submit_and_kill_time = started.elapsed();

    // A final restart, then wait until nothing is left to do.
    proc.kill9();
    kills += 1;
    let proc = spawn(&data_dir, &config);
    let base = proc.base.clone();
    let agent = agent();
    poll_until("every task to finish after the final restart", || {
        let mut pending = Vec::new();
        for status in ["queued", "running", "retrying", "dead", "cancelled"] {
            let r = call(
                &agent,
                &base,
                "GET",
                &format!("/api/v1/tasks?status={status}&limit=1000"),
                &admin,
            );
            let n = r.json()["tasks"].as_array().expect("tasks").len();
            if status == "dead" || status == "cancelled" {
                assert_eq!(n, 0, "tasks went {status}: {}", r.body);
            }
            if n > 0 {
                pending.push(format!("{n} {status}"));
            }
        }
        if pending.is_empty() {
            Ok(())
        } else {
            Err(format!(
                "{pending:?}; receiver has {} distinct",
                receiver.count()
            ))
        }
    });

    // No acknowledged task lost, none created twice, all succeeded.
    let listed = list_ids(&agent, &base, &admin, None);
    let listed_ids: HashSet<&str> = listed.iter().map(|(id, _)| id.as_str()).collect();
    assert_eq!(listed.len(), TASKS, "exactly one task per idempotency key");
    assert_eq!(listed_ids.len(), TASKS);
    for (i, id) in &acked {
        assert!(
            listed_ids.contains(id.as_str()),
            "acknowledged task {i} ({id}) is not listed"
        );
        let r = call(&agent, &base, "GET", &format!("/api/v1/tasks/{id}"), &admin);
        assert_eq!(r.status, 200, "acknowledged task {i} ({id}): {}", r.body);
        let t = &r.json()["task"];
        assert_eq!(t["status"], "succeeded", "task {i}: {t}");
        assert_eq!(t["payload"], submission(*i)["payload"], "task {i}: {t}");
    }

    // Every task delivered; every delivery belongs to a task; extras only repeat an id.
    let by_webhook: HashMap<String, usize> = acked
        .iter()
        .map(|(i, id)| (format!("msg_{}", id.replace('-', "")), *i))
        .collect();
    let deliveries = receiver.deliveries();
    let mut delivered = HashSet::new();
    for d in &deliveries {
        let webhook_id = d.webhook_id();
        let i = *by_webhook
            .get(webhook_id)
            .unwrap_or_else(|| panic!("delivery of unknown webhook-id {webhook_id}"));
        assert!(
            delivered.insert(i),
            "the receiver recorded {webhook_id} twice"
        );
        assert_eq!(d.json(), submission(i)["payload"], "body of task {i}");
        assert_eq!(
            d.header("idempotency-key"),
            Some(idempotency_key(i).as_str())
        );
        let timestamp: i64 = d
            .header("webhook-timestamp")
            .and_then(|t| t.parse().ok())
            .expect("webhook-timestamp");
        let signature =
            keel::exec::http::standard_webhooks_signature(SECRET, webhook_id, timestamp, &d.body);
        assert_eq!(
            d.header("webhook-signature"),
            signature.as_deref(),
            "task {i}"
        );
    }
    let missing: Vec<usize> = (0..TASKS).filter(|i| !delivered.contains(i)).collect();
    assert!(missing.is_empty(), "tasks never delivered: {missing:?}");
    let total = receiver.received();
    let duplicates = receiver.duplicates();
    assert_eq!(
        total,
        deliveries.len() + duplicates,
        "every request beyond the first per webhook-id repeated one"
    );

    // Idempotency keys still name their tasks after all the kills.
    for (i, id) in acked.iter().take(200) {
        let r = send(
            &agent,
            &base,
            "POST",
            "/api/v1/tasks",
            &admin,
            Some(&submission(*i)),
        )
        .unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(r.status, 200, "task {i} submitted again: {}", r.body);
        assert_eq!(r.json()["id"], id.as_str(), "task {i}");
    }

    println!(
        "queue crash test: {TASKS} acknowledged ({lost_answers} answered 200 after a lost answer, \
         {resent} resends), {} delivered distinct, {total} deliveries in all, {duplicates} \
         duplicates; {kills} SIGKILLs ({kills_submitting} while submitting, {kills_delivering} \
         while only delivering, 1 final); submissions and kills took {:.1} s, all in {:.1} s",
        deliveries.len(),
        submit_and_kill_time.as_secs_f64(),
        started.elapsed().as_secs_f64()
    );
    assert!(kills >= MIN_KILLS);
    assert_eq!(proc.terminate(), 0, "clean stop at the end");
}
