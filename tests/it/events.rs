//! The event bus as the real app fills it: task transitions, webhook deliveries and circuit
//! changes arrive only once the state they announce is durable, so a watcher that reads the
//! store the moment an event arrives sees it.

use std::sync::Arc;
use std::time::Duration;

use keel::config::{CircuitScope, HandlerConfig, HttpHandlerConfig};
use keel::events::{Event, Received, Subscription};
use keel::exec::circuit::CircuitRecord;
use keel::queue::Status;
use keel::store::StoreError;
use keel::store::tables::exec::CIRCUITS;
use redb::TableHandle;
use serde_json::json;
use uuid::Uuid;

use crate::receiver::{Mode, Receiver};
use crate::support::TestApp;

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

fn submit(app: &TestApp, task_type: &str) -> Uuid {
    let r = app.post_json(
        "/api/v1/tasks",
        Some(&app.admin_key),
        &json!({"type": task_type, "payload": {"n": 1}}),
    );
    assert_eq!(r.status, 201, "{}", r.body);
    r.json()["id"].as_str().expect("id").parse().expect("uuid")
}

/// Waits for the next event `wanted` accepts and, at once, runs `check` on the app: what it
/// reads is what a watcher reacting to the event would see.
fn on_event<T>(
    app: &TestApp,
    sub: &mut Subscription,
    wanted: impl Fn(&Event) -> bool,
    check: impl AsyncFnOnce(&TestApp, Arc<Event>) -> T,
) -> T {
    app.block_on(async {
        let event = tokio::time::timeout(Duration::from_secs(60), async {
            loop {
                match sub.recv().await {
                    Received::Event(e) if wanted(&e) => return e,
                    Received::Event(_) => continue,
                    other => panic!("the bus said {other:?}"),
                }
            }
        })
        .await
        .expect("the event within 60 s");
        check(app, event).await
    })
}

fn about(id: Uuid) -> impl Fn(&Event) -> bool {
    move |e| e.task_id() == Some(id)
}

/// The circuit record of `target` as stored.
fn stored_circuit(app: &TestApp, target: &str) -> Option<CircuitRecord> {
    let target = target.to_string();
    app.app
        .store
        .read_blocking(move |tx| -> Result<_, StoreError> {
            let table = tx.open_table(CIRCUITS)?;
            let value = table.get(target.as_str())?;
            value
                .map(|v| keel::store::codec::decode(CIRCUITS.name(), &target, v.value()))
                .transpose()
        })
        .expect("read circuits")
}

#[test]
fn a_delivered_webhook_is_announced_after_its_task_is_stored_as_succeeded() {
    let receiver = Receiver::start();
    let app = TestApp::start_with(|c| {
        c.handlers
            .insert("notify".into(), HandlerConfig::Http(http(&receiver.url())));
    });
    let mut sub = app.app.events.subscribe();
    let id = submit(&app, "notify");

    let status = on_event(&app, &mut sub, about(id), async |app, e| {
        assert!(matches!(*e, Event::TaskStarted { .. }), "{e:?}");
        app.app.queue.get(id).await.expect("task").status
    });
    assert_eq!(status, Status::Running);

    let task = on_event(&app, &mut sub, about(id), async |app, e| {
        assert!(matches!(*e, Event::TaskSucceeded { .. }), "{e:?}");
        app.app.queue.get(id).await.expect("task")
    });
    assert_eq!(task.status, Status::Succeeded);

    let (event, task) = on_event(&app, &mut sub, about(id), async |app, e| {
        (e, app.app.queue.get(id).await.expect("task"))
    });
    let host = receiver.target().trim_start_matches("http:").to_string();
    assert_eq!(
        *event,
        Event::DeliveryConfirmed {
            task_id: id,
            target: host
        }
    );
    let receipt = task.attempts[0].receipt.as_ref().expect("a receipt");
    assert_eq!(receipt.status, Some(200));
}

#[test]
fn a_failed_delivery_is_announced_after_the_retry_is_stored_and_a_4xx_goes_dead() {
    let receiver = Receiver::start();
    receiver.push_modes([Mode::Status(503), Mode::Status(400)]);
    let app = TestApp::start_with(|c| {
        c.queue.backoff_base_ms = 1000;
        c.handlers
            .insert("notify".into(), HandlerConfig::Http(http(&receiver.url())));
    });
    let mut sub = app.app.events.subscribe();
    let id = submit(&app, "notify");
    on_event(&app, &mut sub, about(id), async |_, e| {
        assert!(matches!(*e, Event::TaskStarted { .. }), "{e:?}");
    });

    let (due_ms, stored) = on_event(&app, &mut sub, about(id), async |app, e| {
        let Event::TaskRetried { due_ms, .. } = *e else {
            panic!("expected a retry, got {e:?}");
        };
        (due_ms, app.app.queue.get(id).await.expect("task"))
    });
    assert_eq!(stored.status, Status::Retrying);
    assert_eq!(stored.due_at, due_ms);
    let event = on_event(&app, &mut sub, about(id), async |_, e| e);
    assert!(
        matches!(&*event, Event::DeliveryFailed { task_id, .. } if *task_id == id),
        "{event:?}"
    );

    app.clock.set_ms(due_ms);
    app.app.queue.wake().notify_one();
    let stored = on_event(
        &app,
        &mut sub,
        move |e| matches!(e, Event::TaskDead { task_id, .. } if *task_id == id),
        async |app, _| app.app.queue.get(id).await.expect("task"),
    );
    assert_eq!(stored.status, Status::Dead);
    assert_eq!(stored.last_error_class(), Some("http_4xx"));
    let event = on_event(&app, &mut sub, about(id), async |_, e| e);
    assert!(matches!(*event, Event::DeliveryFailed { .. }), "{event:?}");
}

#[test]
fn circuit_changes_are_announced_once_stored() {
    let receiver = Receiver::start();
    receiver.set_mode(Mode::Status(500));
    let target = receiver.target();
    let app = TestApp::start_with(|c| {
        c.circuit.min_volume = 1;
        c.circuit.threshold = 0.5;
        c.circuit.open_seconds = 60;
        c.queue.backoff_base_ms = 1000;
        c.handlers
            .insert("notify".into(), HandlerConfig::Http(http(&receiver.url())));
    });
    let mut sub = app.app.events.subscribe();
    let id = submit(&app, "notify");

    // The circuit's opening and the task's retry are two writes; either may commit first. The
    // circuit is read the moment its event arrives.
    let mut stored = None;
    let mut due_ms = None;
    while stored.is_none() || due_ms.is_none() {
        let wanted = |e: &Event| {
            matches!(e, Event::CircuitOpened { .. })
                || matches!(e, Event::TaskRetried { task_id, .. } if *task_id == id)
        };
        let (event, circuit) = on_event(&app, &mut sub, wanted, async |app, e| {
            (e, stored_circuit(app, &target))
        });
        match &*event {
            Event::CircuitOpened { target: opened } => {
                assert_eq!(opened, &target);
                stored = Some(circuit.expect("the open circuit is stored"));
            }
            Event::TaskRetried { due_ms: due, .. } => due_ms = Some(*due),
            other => unreachable!("{other:?}"),
        }
    }
    let (stored, due_ms) = (stored.unwrap(), due_ms.unwrap());
    assert_eq!(stored.state, "open");

    receiver.set_mode(Mode::Ok);
    app.clock
        .set_ms(stored.open_until.expect("open until").max(due_ms) + 1_000);
    app.app.queue.wake().notify_one();
    let half_open = |e: &Event| matches!(e, Event::CircuitHalfOpen { .. });
    let view = on_event(&app, &mut sub, half_open, async |app, _| {
        app.app.circuits.list()
    });
    assert!(
        view.iter()
            .any(|c| c.name == target && c.state == "half_open"),
        "{view:?}"
    );

    let closed = |e: &Event| matches!(e, Event::CircuitClosed { .. });
    let stored = on_event(&app, &mut sub, closed, async |app, _| {
        stored_circuit(app, &target)
    });
    assert_eq!(stored.expect("stored").state, "closed");
}
