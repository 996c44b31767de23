//! Unit tests of the queue with a stand-in for the room that runs tasks.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use redb::WriteTransaction;
use uuid::Uuid;

use super::lease::{RetryPolicy, SCAN_LIMIT};
use super::*;
use crate::clock::{Clock, ManualClock};
use crate::events::Received;
use crate::metrics::Metrics;

/// Resolves every type to an opaque snapshot naming it, and remembers removed tasks.
#[derive(Default)]
struct Runner {
    removed: Mutex<Vec<Uuid>>,
}

impl Handlers for Runner {
    fn resolve(&self, task_type: &str) -> Result<Handling, String> {
        if task_type == "unknown" {
            return Err(format!("type: no handler for `{task_type}`"));
        }
        Ok(Handling {
            snapshot: Snapshot::from_bytes(task_type.as_bytes().to_vec()),
            target: format!("test:{task_type}"),
            timeout_s: 30,
            max_attempts: Some(2),
        })
    }

    fn split_inline<'a>(&self, _bytes: &'a [u8]) -> Result<(Snapshot, &'a [u8]), String> {
        Err("no inline snapshots here".into())
    }
}

impl TaskRemoval for Runner {
    fn tasks_removed(&self, _tx: &WriteTransaction, ids: &[Uuid]) -> Result<(), StoreError> {
        self.removed
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .extend_from_slice(ids);
        Ok(())
    }
}

struct Fixture {
    _dir: tempfile::TempDir,
    queue: Queue,
    clock: Arc<ManualClock>,
    events: Arc<EventBus>,
    runner: Arc<Runner>,
}

fn fixture() -> Fixture {
    let dir = tempfile::tempdir().unwrap();
    let store = Arc::new(
        Store::open(
            &dir.path().join("keel.redb"),
            crate::store::StoreOptions::default(),
        )
        .unwrap(),
    );
    let audit = Arc::new(Audit::load_or_create(dir.path(), 1000).unwrap());
    let clock = Arc::new(ManualClock::new(1_000_000));
    let metrics = Metrics::new("test");
    let events = Arc::new(EventBus::new(1 << 16, &metrics));
    let runner = Arc::new(Runner::default());
    let queue = Queue::new(
        store,
        audit,
        clock.clone(),
        Arc::new(Config::default()),
        Arc::clone(&events),
        runner.clone(),
        runner.clone(),
    );
    Fixture {
        _dir: dir,
        queue,
        clock,
        events,
        runner,
    }
}

fn new_task(task_type: &str) -> NewTask {
    NewTask {
        task_type: task_type.into(),
        ..NewTask::default()
    }
}

#[test]
fn backoff_doubles_caps_and_honours_retry_after() {
    let p = RetryPolicy {
        base_ms: 1000,
        max_ms: 60_000,
        retry_after_max_ms: 300_000,
    };
    // With the random part at 0 and at 1: the delay lies in [exp/2, exp].
    assert_eq!(p.delay_ms(1, None, 0.0), 500);
    assert_eq!(p.delay_ms(1, None, 1.0), 1000);
    assert_eq!(p.delay_ms(2, None, 1.0), 2000);
    assert_eq!(p.delay_ms(3, None, 0.5), 3000);
    assert_eq!(p.delay_ms(10, None, 1.0), 60_000, "capped");
    assert_eq!(p.delay_ms(40, None, 1.0), 60_000, "no overflow");
    assert_eq!(
        p.delay_ms(1, Some(120_000), 0.0),
        120_000,
        "Retry-After wins when longer"
    );
    assert_eq!(
        p.delay_ms(1, Some(900_000), 0.0),
        300_000,
        "Retry-After is clamped"
    );
}

#[tokio::test]
async fn the_handler_is_resolved_by_the_runner_and_stored_unread() {
    let f = fixture();
    let task = f.queue.enqueue("test", new_task("a")).await.unwrap().task;
    assert_eq!(task.handler.as_bytes(), b"a");
    assert_eq!(task.target, "test:a");
    assert_eq!(task.max_attempts, 2, "the handler's attempts apply");
    assert_eq!(task.timeout_ms, 30_000);
    let stored = f.queue.get(task.id).await.unwrap();
    assert_eq!(stored, task);
    let err = f.queue.enqueue("test", new_task("unknown")).await;
    assert!(
        matches!(&err, Err(QueueError::Invalid(m)) if m.starts_with("type: ")),
        "{err:?}"
    );
}

#[tokio::test]
async fn a_type_at_its_limit_does_not_starve_the_others() {
    let f = fixture();
    let queue = &f.queue;
    for _ in 0..(SCAN_LIMIT + 100) {
        queue.enqueue("test", new_task("busy")).await.unwrap();
    }
    let other = queue
        .enqueue(
            "test",
            NewTask {
                priority: Some(500),
                ..new_task("other")
            },
        )
        .await
        .unwrap();
    let leased = queue
        .lease(LeaseRequest {
            max: 10,
            type_room: HashMap::from([("busy".to_string(), 0)]),
            blocked_targets: HashMap::new(),
        })
        .await
        .unwrap();
    assert_eq!(
        leased.iter().map(|t| t.id).collect::<Vec<_>>(),
        vec![other.task.id]
    );
    // With room for 3 busy tasks, exactly 3 of them go, most urgent (oldest) first.
    let leased = queue
        .lease(LeaseRequest {
            max: 10,
            type_room: HashMap::from([("busy".to_string(), 3)]),
            blocked_targets: HashMap::new(),
        })
        .await
        .unwrap();
    assert_eq!(leased.len(), 3);
    assert!(leased.windows(2).all(|w| w[0].id < w[1].id));
}

#[tokio::test]
async fn leasing_interleaves_types_by_priority() {
    let f = fixture();
    let mut expected = Vec::new();
    for (task_type, priority) in [("a", 5), ("b", 1), ("a", 3), ("b", 9)] {
        let t = f
            .queue
            .enqueue(
                "test",
                NewTask {
                    priority: Some(priority),
                    ..new_task(task_type)
                },
            )
            .await
            .unwrap();
        expected.push((priority, t.task.id));
    }
    expected.sort();
    let leased = f
        .queue
        .lease(LeaseRequest {
            max: 10,
            ..LeaseRequest::default()
        })
        .await
        .unwrap();
    assert_eq!(
        leased.iter().map(|t| t.id).collect::<Vec<_>>(),
        expected.iter().map(|(_, id)| *id).collect::<Vec<_>>()
    );
}

#[test]
fn snapshots_are_stored_as_a_byte_string() {
    let bytes = vec![1u8, 0, 200, 7, 255];
    let snapshot = Snapshot::from_bytes(bytes.clone());
    let encoded = postcard::to_allocvec(&snapshot).unwrap();
    assert_eq!(encoded, postcard::to_allocvec(&bytes).unwrap());
    assert_eq!(encoded, [5, 1, 0, 200, 7, 255]);
    assert_eq!(
        postcard::from_bytes::<Snapshot>(&encoded).unwrap(),
        snapshot
    );
}

#[test]
fn status_codes_round_trip() {
    for s in Status::ALL {
        assert_eq!(Status::from_code(s.code()), Some(s));
        assert_eq!(s.as_str().parse::<Status>().unwrap(), s);
    }
}

#[tokio::test]
async fn deleting_tasks_tells_the_runner_in_the_same_transaction() {
    let f = fixture();
    let dead = f.queue.enqueue("test", new_task("a")).await.unwrap().task;
    let leased = f
        .queue
        .lease(LeaseRequest {
            max: 1,
            ..LeaseRequest::default()
        })
        .await
        .unwrap();
    let lease = leased[0].lease.unwrap();
    let fail = Outcome::Fail {
        class: "x".into(),
        message: "no".into(),
        receipt: None,
    };
    f.queue.complete(dead.id, lease.id, fail).await.unwrap();
    f.queue.dlq_delete("test", dead.id).await.unwrap();
    assert_eq!(*f.runner.removed.lock().unwrap(), vec![dead.id]);

    let done = f.queue.enqueue("test", new_task("b")).await.unwrap().task;
    f.queue.cancel("test", done.id).await.unwrap();
    f.clock.advance_ms(400 * 86_400_000);
    assert_eq!(f.queue.purge_expired().await.unwrap().tasks, 1);
    assert_eq!(*f.runner.removed.lock().unwrap(), vec![dead.id, done.id]);
    assert!(matches!(
        f.queue.get(done.id).await,
        Err(QueueError::NotFound(_))
    ));
}

/// The next event about `id`, skipping others.
async fn next_about(sub: &mut crate::events::Subscription, id: Uuid) -> Event {
    loop {
        match sub.recv().await {
            Received::Event(e) if e.task_id() == Some(id) => return (*e).clone(),
            Received::Event(_) => continue,
            other => panic!("bus: {other:?}"),
        }
    }
}

/// What a watcher saw when an event arrived: the event and the task as stored at that moment.
#[derive(Debug, PartialEq)]
struct Seen {
    event: Event,
    status: Status,
    due_at: i64,
    log_lines: usize,
}

#[tokio::test]
async fn transitions_are_published_after_they_are_readable() {
    let f = fixture();
    let queue = Arc::new(f.queue);
    let task = queue.enqueue("test", new_task("a")).await.unwrap().task;
    // A watcher reads the task back the moment each event arrives, and the test moves on only
    // once it did: the state an event announces must already be durable and visible.
    let mut sub = f.events.subscribe();
    let (ack, mut acked) = tokio::sync::mpsc::unbounded_channel();
    let watcher = {
        let queue = Arc::clone(&queue);
        tokio::spawn(async move {
            loop {
                let event = next_about(&mut sub, task.id).await;
                let stored = queue.get(task.id).await.unwrap();
                let log_lines = queue.logs(task.id, 0, usize::MAX).await.unwrap().len();
                let seen = Seen {
                    event,
                    status: stored.status,
                    due_at: stored.due_at,
                    log_lines,
                };
                if ack.send(seen).is_err() {
                    return;
                }
            }
        })
    };
    let one = LeaseRequest {
        max: 1,
        ..LeaseRequest::default()
    };
    let (task_id, task_type) = (task.id, "a".to_string());

    let lease = queue.lease(one.clone()).await.unwrap()[0].lease.unwrap();
    let seen = acked.recv().await.unwrap();
    assert_eq!(
        (seen.event, seen.status),
        (
            Event::TaskStarted {
                task_id,
                task_type: task_type.clone()
            },
            Status::Running
        )
    );

    queue
        .append_logs(task.id, vec!["one".into(), "two".into()])
        .await
        .unwrap();
    let seen = acked.recv().await.unwrap();
    assert_eq!(
        (seen.event, seen.log_lines),
        (Event::TaskLogged { task_id }, 2)
    );

    let retry = Outcome::Retry {
        class: "http_5xx".into(),
        message: "again".into(),
        retry_after_ms: None,
        receipt: None,
    };
    queue.complete(task.id, lease.id, retry).await.unwrap();
    let seen = acked.recv().await.unwrap();
    assert_eq!(seen.status, Status::Retrying);
    assert_eq!(
        seen.event,
        Event::TaskRetried {
            task_id,
            task_type: task_type.clone(),
            due_ms: seen.due_at
        }
    );

    f.clock.set_ms(seen.due_at);
    let lease = queue.lease(one).await.unwrap()[0].lease.unwrap();
    assert_eq!(acked.recv().await.unwrap().status, Status::Running);
    let done = Outcome::Succeeded {
        result: Some("ok".into()),
        form: Default::default(),
        receipt: None,
    };
    queue.complete(task.id, lease.id, done).await.unwrap();
    let seen = acked.recv().await.unwrap();
    assert_eq!(
        (seen.event, seen.status),
        (
            Event::TaskSucceeded { task_id, task_type },
            Status::Succeeded
        )
    );
    watcher.abort();
}

#[tokio::test]
async fn dead_cancelled_and_reaped_tasks_are_published() {
    let f = fixture();
    let mut sub = f.events.subscribe();
    let a = f.queue.enqueue("test", new_task("a")).await.unwrap().task;
    f.queue.cancel("test", a.id).await.unwrap();
    assert!(matches!(
        next_about(&mut sub, a.id).await,
        Event::TaskCancelled { .. }
    ));

    let b = f.queue.enqueue("test", new_task("b")).await.unwrap().task;
    let lease = f
        .queue
        .lease(LeaseRequest {
            max: 1,
            ..LeaseRequest::default()
        })
        .await
        .unwrap()[0]
        .lease
        .unwrap();
    assert!(matches!(
        next_about(&mut sub, b.id).await,
        Event::TaskStarted { .. }
    ));
    // A report under a lost lease changes nothing and says nothing.
    let lost = f
        .queue
        .complete(b.id, lease.id ^ 1, Outcome::Cancelled)
        .await
        .unwrap();
    assert_eq!(lost, Completion::LeaseLost);
    // The lease expires twice: the first reap retries, the second uses the last attempt.
    f.clock.set_ms(lease.expires_at + 1);
    assert_eq!(f.queue.reap_expired().await.unwrap(), 1);
    let Event::TaskRetried { due_ms, .. } = next_about(&mut sub, b.id).await else {
        panic!("expected a retry");
    };
    f.clock.set_ms(due_ms);
    let again = f
        .queue
        .lease(LeaseRequest {
            max: 1,
            ..LeaseRequest::default()
        })
        .await
        .unwrap();
    assert_eq!(again.len(), 1);
    assert!(matches!(
        next_about(&mut sub, b.id).await,
        Event::TaskStarted { .. }
    ));
    f.clock.set_ms(again[0].lease.unwrap().expires_at + 1);
    assert_eq!(f.queue.reap_expired().await.unwrap(), 1);
    assert_eq!(
        next_about(&mut sub, b.id).await,
        Event::TaskDead {
            task_id: b.id,
            task_type: "b".into()
        }
    );
    assert_eq!(f.queue.get(b.id).await.unwrap().status, Status::Dead);
}

/// Leases the one ready task and ends its attempt with `outcome`.
async fn run_once(f: &Fixture, outcome: Outcome) -> Task {
    let leased = f
        .queue
        .lease(LeaseRequest {
            max: 1,
            ..LeaseRequest::default()
        })
        .await
        .unwrap();
    let task = leased.into_iter().next().expect("a ready task");
    let lease = task.lease.unwrap();
    f.queue.complete(task.id, lease.id, outcome).await.unwrap();
    f.queue.get(task.id).await.unwrap()
}

#[tokio::test]
async fn deleting_one_task_tells_the_runner_and_frees_its_idempotency_key() {
    let f = fixture();
    let keyed = NewTask {
        idempotency_key: Some("k".into()),
        ..new_task("a")
    };
    let first = f.queue.enqueue("test", keyed.clone()).await.unwrap().task;
    f.queue.delete("test", first.id).await.unwrap();
    assert_eq!(*f.runner.removed.lock().unwrap(), vec![first.id]);
    let again = f.queue.enqueue("test", keyed).await.unwrap();
    assert!(again.created, "the key named a deleted task");
    assert_ne!(again.task.id, first.id);
    assert_eq!(f.queue.counts().await.unwrap().values().sum::<u64>(), 1);
}

#[tokio::test]
async fn a_paused_type_is_not_leased_and_its_tasks_keep_waiting() {
    let f = fixture();
    let a = f.queue.enqueue("test", new_task("a")).await.unwrap().task;
    let b = f.queue.enqueue("test", new_task("b")).await.unwrap().task;
    f.queue.pause_type("ops", "a").await.unwrap();
    let request = LeaseRequest {
        max: 10,
        ..LeaseRequest::default()
    };
    let leased = f.queue.lease(request.clone()).await.unwrap();
    assert_eq!(leased.iter().map(|t| t.id).collect::<Vec<_>>(), vec![b.id]);
    assert!(f.queue.lease(request.clone()).await.unwrap().is_empty());
    assert_eq!(f.queue.get(a.id).await.unwrap().status, Status::Queued);
    let has_work = f
        .queue
        .read(|t| task_types::has_leasable_work(t, 1_000_000))
        .await
        .unwrap();
    assert!(!has_work, "only a paused type's task is ready");
    f.queue.resume_type("ops", "a").await.unwrap();
    let leased = f.queue.lease(request).await.unwrap();
    assert_eq!(leased.iter().map(|t| t.id).collect::<Vec<_>>(), vec![a.id]);
}

#[tokio::test]
async fn daily_counts_are_kept_for_thirty_days() {
    let f = fixture();
    let day = 86_400_000;
    let ok = || Outcome::Succeeded {
        result: None,
        form: Default::default(),
        receipt: None,
    };
    let retry = || Outcome::Retry {
        class: "x".into(),
        message: "no".into(),
        retry_after_ms: None,
        receipt: None,
    };
    f.queue.enqueue("test", new_task("a")).await.unwrap();
    run_once(&f, retry()).await;
    f.clock.advance_ms(60_000);
    run_once(&f, ok()).await;
    f.queue.enqueue("test", new_task("a")).await.unwrap();
    let deferred = f
        .queue
        .lease(LeaseRequest {
            max: 1,
            ..LeaseRequest::default()
        })
        .await
        .unwrap();
    let defer = Outcome::Defer {
        class: "deferred".into(),
        reason: "circuit".into(),
        until: f.clock.now_ms(),
    };
    f.queue
        .complete(deferred[0].id, deferred[0].lease.unwrap().id, defer)
        .await
        .unwrap();
    let days = f.queue.daily_counts().await.unwrap();
    assert_eq!(days.len(), DAILY_DAYS as usize);
    let today = days.last().unwrap();
    assert_eq!(
        (today.processed, today.failed),
        (2, 1),
        "a deferral is not counted"
    );
    assert_eq!(today.day_start, f.clock.now_ms().div_euclid(day) * day);

    f.clock.advance_ms(day);
    run_once(&f, ok()).await;
    let days = f.queue.daily_counts().await.unwrap();
    assert_eq!(
        days[days.len() - 2..]
            .iter()
            .map(|d| (d.processed, d.failed))
            .collect::<Vec<_>>(),
        vec![(2, 1), (1, 0)]
    );

    // Forty days on, the first completion of the day deletes the days past thirty.
    f.clock.advance_ms(40 * day);
    f.queue.enqueue("test", new_task("a")).await.unwrap();
    run_once(&f, ok()).await;
    let stored: Vec<i64> = f
        .queue
        .read(|t| {
            Ok(t.daily()?
                .iter()?
                .map(|r| r.map(|(k, _)| k.value()))
                .collect::<Result<Vec<_>, _>>()?)
        })
        .await
        .unwrap();
    assert_eq!(stored, vec![f.clock.now_ms().div_euclid(day)]);
    let days = f.queue.daily_counts().await.unwrap();
    assert_eq!(days.iter().map(|d| d.processed).sum::<u64>(), 1);
}
