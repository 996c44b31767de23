//! Retention: one pass over a store with 100,000 finished tasks deletes, in bounded batches,
//! every row past its retention (succeeded and cancelled tasks, dead tasks after their own
//! retention, their log lines, expired idempotency keys, ended dashboard sessions) and keeps
//! the rest; refused inbox deliveries go after `inbox.rejection_retention_days`.

use std::collections::BTreeMap;

use keel::clock::Clock;
use keel::config::{HandlerConfig, HttpHandlerConfig, InboxScheme, InboxSourceConfig, Secret};
use keel::inbox::{Reason, Rejection};
use keel::queue::{NewTask, QueueError, Status, Task};
use serde_json::json;
use uuid::Uuid;

use crate::admin::Client;
use crate::support::{TestApp, poll_until};

const DAY_MS: i64 = 86_400_000;

fn handler() -> HandlerConfig {
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
    })
}

/// Writes `count` tasks that finished now in `status` through the queue's prepared-insert path,
/// 10,000 per write; every `keyed_every`-th one carries an idempotency key. Returns their ids.
fn finished_tasks(
    app: &TestApp,
    status: Status,
    count: usize,
    keyed_every: Option<usize>,
) -> Vec<Uuid> {
    let queue = &app.app.queue;
    let now = app.clock.now_ms();
    let tasks: Vec<Task> = (0..count)
        .map(|i| {
            let new = NewTask {
                task_type: "notify".into(),
                payload: json!({"n": i}),
                priority: None,
                idempotency_key: keyed_every
                    .is_some_and(|every| i % every == 0)
                    .then(|| format!("{}-{i}-{}", status.as_str(), now)),
                run_at: None,
                max_attempts: None,
                timeout_s: None,
            };
            let mut task = queue
                .prepare("test", Uuid::now_v7(), &new, None)
                .expect("a valid task");
            task.status = status;
            task.finished_at = Some(now);
            task
        })
        .collect();
    let ids = tasks.iter().map(|t| t.id).collect();
    for chunk in tasks.chunks(10_000) {
        let chunk = chunk.to_vec();
        let queue = std::sync::Arc::clone(queue);
        app.block_on(app.app.store.write(move |tx| {
            for task in &chunk {
                queue.insert_prepared(tx, task)?;
            }
            Ok::<_, QueueError>(())
        }))
        .expect("insert the batch");
    }
    ids
}

fn add_logs(app: &TestApp, ids: &[Uuid], lines: usize) {
    app.block_on(async {
        for id in ids {
            let text = (0..lines).map(|n| format!("line {n}")).collect();
            app.app.queue.append_logs(*id, text).await.unwrap();
        }
    });
}

fn counts(app: &TestApp) -> BTreeMap<Status, u64> {
    let mut out = BTreeMap::new();
    for ((status, _), n) in app.block_on(app.app.queue.counts()).unwrap() {
        *out.entry(status).or_default() += n;
    }
    out
}

fn purged_now(app: &TestApp, table: &str) -> u64 {
    let text = app.admin_get("/metrics").body;
    let series = format!("keel_retention_purged_total{{table=\"{table}\"}} ");
    text.lines()
        .find_map(|l| l.strip_prefix(&series))
        .map_or(0, |v| v.trim().parse().unwrap())
}

/// The rows purged from `table` once they reach `want`. The app's own retention worker may run
/// a pass at the same time as the test's; each row is deleted (and counted) once either way,
/// but a pass counts when it ends.
fn purged(app: &TestApp, table: &str, want: u64) -> u64 {
    poll_until(
        &format!("{want} rows purged from {table}"),
        || match purged_now(app, table) {
            n if n >= want => Ok(n),
            n => Err(format!("{n} so far")),
        },
    )
}

fn logs_of(app: &TestApp, id: Uuid) -> usize {
    app.block_on(app.app.queue.log_count(id)).unwrap() as usize
}

#[test]
fn a_pass_over_a_hundred_thousand_finished_tasks_leaves_only_what_is_within_retention() {
    let app = TestApp::start_with(|c| {
        c.handlers.insert("notify".into(), handler());
        c.queue.retention_days = 7;
        c.queue.dead_retention_days = 30;
    });
    let day0 = app.clock.now_ms();
    let head = app.audit_seq();

    // Day 0: 100,000 finished tasks, some with idempotency keys (kept one day) and log lines.
    let succeeded = finished_tasks(&app, Status::Succeeded, 40_000, Some(20));
    let cancelled = finished_tasks(&app, Status::Cancelled, 30_000, Some(20));
    let dead = finished_tasks(&app, Status::Dead, 30_000, None);
    add_logs(&app, &succeeded[..100], 3);
    add_logs(&app, &dead[..100], 2);
    let session = Client::sign_in(&app.base, &app.admin_key);
    assert!(session.session_cookie().is_some());

    // Day 10: a few fresh ones, and one task still waiting.
    app.clock.set_ms(day0 + 10 * DAY_MS);
    let fresh_succeeded = finished_tasks(&app, Status::Succeeded, 10, Some(1));
    let fresh_dead = finished_tasks(&app, Status::Dead, 10, None);
    let waiting = app
        .post_json(
            "/api/v1/tasks",
            Some(&app.admin_key),
            &json!({"type": "notify", "payload": {}, "run_at": "2027-01-01T00:00:00Z"}),
        )
        .json()["id"]
        .as_str()
        .unwrap()
        .to_string();

    let retention = app.app.retention();
    app.block_on(retention.run_pass()).expect("retention pass");
    let now = counts(&app);
    assert_eq!(now.get(&Status::Succeeded), Some(&10), "{now:?}");
    assert_eq!(now.get(&Status::Cancelled), None, "{now:?}");
    assert_eq!(now.get(&Status::Dead), Some(&30_010), "{now:?}");
    assert_eq!(now.get(&Status::Queued), Some(&1), "{now:?}");
    assert_eq!(purged(&app, "tasks", 70_000), 70_000);
    assert_eq!(purged(&app, "task_logs", 300), 300);
    // The day-0 keys expired after a day; the day-10 ones have not yet.
    assert_eq!(
        purged(&app, "idempotency_keys", 2_000 + 1_500),
        2_000 + 1_500
    );
    assert_eq!(purged(&app, "admin_sessions", 1), 1);
    assert!(matches!(
        app.block_on(app.app.queue.get(succeeded[0])),
        Err(QueueError::NotFound(_))
    ));
    assert_eq!(logs_of(&app, succeeded[0]), 0);
    assert_eq!(logs_of(&app, dead[0]), 2, "dead tasks are kept 30 days");
    assert_eq!(
        app.block_on(app.app.queue.get(fresh_succeeded[0]))
            .unwrap()
            .status,
        Status::Succeeded
    );
    assert!(
        app.block_on(app.app.queue.get(cancelled[29_999])).is_err(),
        "the last batch of a status is purged too"
    );
    // The listing agrees with the counts.
    let page = app
        .admin_get("/api/v1/tasks?status=succeeded&limit=1000")
        .json();
    assert_eq!(page["tasks"].as_array().unwrap().len(), 10, "{page}");

    // Day 35: the day-0 dead tasks and the day-10 succeeded ones are past their retention.
    app.clock.set_ms(day0 + 35 * DAY_MS);
    app.block_on(retention.run_pass()).expect("retention pass");
    let now = counts(&app);
    assert_eq!(now.get(&Status::Succeeded), None, "{now:?}");
    assert_eq!(now.get(&Status::Dead), Some(&10), "{now:?}");
    assert_eq!(now.get(&Status::Queued), Some(&1), "{now:?}");
    assert_eq!(purged(&app, "tasks", 100_010), 100_010);
    assert_eq!(purged(&app, "task_logs", 500), 500);
    assert_eq!(
        purged(&app, "idempotency_keys", 2_000 + 1_500 + 10),
        2_000 + 1_500 + 10
    );
    assert_eq!(logs_of(&app, dead[0]), 0);
    assert!(app.block_on(app.app.queue.get(fresh_dead[9])).is_ok());
    let kept = app.get(&format!("/api/v1/tasks/{waiting}"), Some(&app.admin_key));
    assert_eq!(
        kept.status, 200,
        "a waiting task is never purged: {}",
        kept.body
    );

    // Each batch that deleted tasks is in the audit chain as the system's doing, and the
    // batches were bounded: 100,010 tasks took at least 101 of them.
    let mut purges = Vec::new();
    let mut after = head;
    loop {
        let page = app
            .admin_get(&format!("/api/v1/audit?after={after}&limit=1000"))
            .json();
        let entries = page["entries"].as_array().expect("entries").clone();
        purges.extend(
            entries
                .iter()
                .filter(|e| e["action"] == "queue.purge")
                .cloned(),
        );
        match page["next_after"].as_u64() {
            Some(next) => after = next,
            None => break,
        }
    }
    let audit = json!(purges);
    assert!(purges.len() >= 101, "{} purge entries", purges.len());
    assert!(purges.iter().all(|e| e["actor"] == "system"), "{audit}");
    let total: u64 = purges
        .iter()
        .map(|e| e["detail"]["tasks"].as_u64().unwrap())
        .sum();
    assert_eq!(total, 100_010);
    assert!(
        purges
            .iter()
            .all(|e| e["detail"]["tasks"].as_u64().unwrap() <= 1000)
    );
}

fn rejection_count(app: &TestApp) -> usize {
    let list = app.admin_get("/api/v1/inbox/rejections?limit=1000").json();
    list["rejections"].as_array().expect("rejections").len()
}

/// Refused deliveries are kept `inbox.rejection_retention_days`: once the clock passes that,
/// a retention pass deletes them, more than one batch of them too, and keeps the younger ones.
#[test]
fn inbox_rejections_past_their_retention_are_purged() {
    let app = TestApp::start_with(|c| {
        c.handlers.insert("notify".into(), handler());
        c.inbox.sources.insert(
            "token".into(),
            InboxSourceConfig {
                scheme: InboxScheme::Bearer,
                secret: Some(Secret::new("inbound-bearer-token-0123456789")),
                task_type: "notify".into(),
                delivery_id_header: None,
            },
        );
        c.inbox.max_rejections = 5_000;
        c.inbox.rejection_retention_days = 30;
    });
    let day0 = app.clock.now_ms();
    let refuse = |app: &TestApp| {
        let r = app.request(
            "POST",
            "/hooks/token",
            Some("not-the-token"),
            Some(("application/json", b"{}")),
        );
        assert_eq!(r.status, 401, "{}", r.body);
    };

    // Day 0: two refused through the router and 1,100 more recorded by the inbox.
    refuse(&app);
    refuse(&app);
    let inbox = std::sync::Arc::clone(&app.app.inbox);
    app.block_on(async move {
        let writes: Vec<_> = (0..1_100)
            .map(|n| {
                let inbox = std::sync::Arc::clone(&inbox);
                tokio::spawn(async move {
                    let rejection = Rejection::new(Reason::InvalidToken, format!("refused {n}"));
                    inbox.reject("token", &rejection, None).await;
                })
            })
            .collect();
        for write in writes {
            write.await.unwrap();
        }
    });
    // Day 20: three more.
    app.clock.set_ms(day0 + 20 * DAY_MS);
    for _ in 0..3 {
        refuse(&app);
    }
    let retention = app.app.retention();
    app.block_on(retention.run_pass()).expect("retention pass");
    assert_eq!(purged_now(&app, "inbox_rejections"), 0);
    assert_eq!(
        rejection_count(&app),
        1_000,
        "the list is bounded by its limit"
    );

    // Day 31: the day-0 ones are past the retention, the day-20 ones are not.
    app.clock.set_ms(day0 + 31 * DAY_MS);
    app.block_on(retention.run_pass()).expect("retention pass");
    assert_eq!(purged(&app, "inbox_rejections", 1_102), 1_102);
    assert_eq!(rejection_count(&app), 3);

    // Day 51: the rest.
    app.clock.set_ms(day0 + 51 * DAY_MS);
    app.block_on(retention.run_pass()).expect("retention pass");
    assert_eq!(purged(&app, "inbox_rejections", 1_105), 1_105);
    assert_eq!(rejection_count(&app), 0);
}
