//! Records written by an older keel still read: a version-1 task record, which held its handler
//! snapshot inline, is upgraded when read, runs, and is stored in the current version after.

use keel::clock::Millis;
use keel::config::{CommandHandlerConfig, HandlerConfig};
use keel::exec::HandlerSnapshot;
use keel::queue::{Attempt, Lease, Status, TaskFilter};
use keel::store::codec::{self, Record};
use keel::store::tables::queue::{TASK_COUNTS, TASKS, TASKS_BY_STATUS, TASKS_READY};
use keel::store::{Store, StoreError, StoreOptions};
use serde::Serialize;
use uuid::Uuid;

use crate::support::{START_MS, TestApp, poll_until};

/// A task record as keel wrote it in version 1: the handler snapshot in the middle, inline.
#[derive(Serialize, serde::Deserialize)]
struct TaskV1 {
    id: Uuid,
    task_type: String,
    payload: String,
    priority: u32,
    idempotency_key: Option<String>,
    status: Status,
    created_by: String,
    created_at: Millis,
    updated_at: Millis,
    due_at: Millis,
    finished_at: Option<Millis>,
    max_attempts: u32,
    attempts_before_requeue: u32,
    timeout_ms: u64,
    handler: HandlerSnapshot,
    target: String,
    attempts: Vec<Attempt>,
    lease: Option<Lease>,
    result: Option<String>,
    cancel_requested: bool,
}

impl Record for TaskV1 {
    const VERSION: u8 = 1;
}

#[test]
fn a_version_1_task_record_is_read_run_and_stored_anew() {
    let handler = HandlerSnapshot::Command {
        program: "/bin/cat".into(),
        args: Vec::new(),
        working_dir: None,
        env_allow: Vec::new(),
    };
    let id = Uuid::now_v7();
    let old = TaskV1 {
        id,
        task_type: "echo".into(),
        payload: r#"{"old":true}"#.into(),
        priority: 7,
        idempotency_key: Some("k-1".into()),
        status: Status::Queued,
        created_by: "admin".into(),
        created_at: START_MS - 1000,
        updated_at: START_MS - 1000,
        due_at: START_MS - 1000,
        finished_at: None,
        max_attempts: 3,
        attempts_before_requeue: 0,
        timeout_ms: 10_000,
        handler: handler.clone(),
        target: "command:echo".into(),
        attempts: vec![Attempt {
            number: 1,
            started_at: START_MS - 900,
            finished_at: Some(START_MS - 800),
            outcome: "interrupted".into(),
            error_class: Some("interrupted".into()),
            error_message: None,
            receipt: None,
            counted: false,
        }],
        lease: None,
        result: None,
        cancel_requested: false,
    };
    let dir = tempfile::tempdir().expect("temp dir");
    {
        let store = Store::open(&dir.path().join("keel.redb"), StoreOptions::default())
            .expect("store opens");
        let bytes = codec::encode(&old);
        assert_eq!(bytes[0], 1);
        store
            .write_blocking(move |tx| -> Result<(), StoreError> {
                tx.open_table(TASKS)?
                    .insert(id.as_u128(), bytes.as_slice())?;
                tx.open_table(TASKS_BY_STATUS)?
                    .insert((Status::Queued.code(), id.as_u128()), ())?;
                tx.open_table(TASK_COUNTS)?
                    .insert((Status::Queued.code(), "echo"), 1)?;
                Ok(())
            })
            .expect("old record written");
        store.close();
    }

    // A config without the `echo` handler: the dispatcher leaves the task alone, as the
    // snapshot, not the configuration, says how it runs.
    let app = TestApp::start_in(dir, |c| {
        c.handlers.insert(
            "other".into(),
            HandlerConfig::Command(CommandHandlerConfig {
                program: "/bin/true".into(),
                args: Vec::new(),
                working_dir: None,
                env_allow: Vec::new(),
                timeout_seconds: 10,
                concurrency: None,
                max_attempts: None,
            }),
        );
    });
    let queue = &app.app.queue;
    let task = app.block_on(queue.get(id)).expect("the old task reads");
    assert_eq!(task.payload, old.payload);
    assert_eq!(task.priority, 7);
    assert_eq!(task.idempotency_key.as_deref(), Some("k-1"));
    assert_eq!(task.target, "command:echo");
    assert_eq!(task.attempts, old.attempts);
    assert_eq!(task.timeout_ms, 10_000);
    assert_eq!(HandlerSnapshot::of(&task).expect("snapshot"), handler);
    let page = app
        .block_on(queue.list(TaskFilter {
            status: Some(Status::Queued),
            limit: 10,
            ..TaskFilter::default()
        }))
        .expect("list");
    assert_eq!(page.tasks, vec![task.clone()]);

    // Once in the ready index the dispatcher runs it with its snapshot, and the record is
    // stored anew.
    app.app
        .store
        .write_blocking(move |tx| -> Result<(), StoreError> {
            tx.open_table(TASKS_READY)?
                .insert(("echo", 7, START_MS - 1000, id.as_u128()), ())?;
            Ok(())
        })
        .expect("ready");
    queue.wake().notify_one();
    let done = poll_until("the old task to finish", || {
        let t = app.block_on(queue.get(id)).expect("task");
        if t.status.is_final() {
            Ok(t)
        } else {
            Err(format!("{:?}", t.status))
        }
    });
    assert_eq!(done.status, Status::Succeeded, "{done:?}");
    assert_eq!(done.result.as_deref(), Some(r#"{"old":true}"#));
    assert_eq!(done.attempts.len(), 2);
    assert_eq!(HandlerSnapshot::of(&done).expect("snapshot"), handler);
    let version = app
        .app
        .store
        .read_blocking(move |tx| -> Result<u8, StoreError> {
            let table = tx.open_table(TASKS)?;
            let value = table.get(id.as_u128())?.expect("stored");
            Ok(value.value()[0])
        })
        .expect("read");
    assert_eq!(
        version,
        <keel::queue::Task as Record>::VERSION,
        "stored in the current version"
    );
}
