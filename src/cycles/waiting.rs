//! Waiting for the queue: a stage hands a task to the queue and waits until it ends. The wait
//! listens on the event bus for news of the task and reads it again on news; without news it
//! reads it again anyway after a fallback delay, so nothing depends on the bus alone. The
//! subscription is made before the task is read, so news between the read and the wait is
//! never missed.

use std::collections::HashSet;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use tokio_util::sync::CancellationToken;
use uuid::Uuid;

use super::{Cycles, CyclesError};
use crate::audit::SYSTEM_ACTOR;
use crate::events::{Event, Subscription};
use crate::queue::{NewTask, QueueError, Status};

/// How long a stage waiting for tasks waits for news of them on the event bus before it reads
/// them again anyway: `first`, doubling after each wait that brought no news, up to `max`. The
/// bus only cuts a wait short; the stage never depends on it.
#[derive(Debug, Clone, Copy)]
pub(super) struct Fallback {
    /// The first wait, and the wait after news.
    pub(super) first: Duration,
    /// The longest wait.
    pub(super) max: Duration,
}

impl Default for Fallback {
    fn default() -> Self {
        Fallback {
            first: Duration::from_millis(200),
            max: Duration::from_secs(5),
        }
    }
}

/// Why a wait for tasks ended.
pub(super) enum Wake {
    /// The bus brought news of one of them (or lagged: news may have been missed).
    News,
    /// The fallback delay passed.
    Timeout,
    /// The runner must stop.
    Stop,
}

/// Whether `event` may mean the status of a task in `ids` changed.
fn is_news_of(event: &Event, ids: &HashSet<Uuid>) -> bool {
    !matches!(event, Event::TaskLogged { .. })
        && event.task_id().is_some_and(|id| ids.contains(&id))
}

/// How a task a stage waited for ended.
pub(super) enum TaskEnd {
    /// Succeeded, with its result.
    Succeeded(Option<String>),
    /// Dead or cancelled: the stage cannot go on.
    Failed(String),
    /// Not finished, and the runner is stopping.
    Stopped,
}

/// Records, while it lives, which tasks a cycle waits for ([`Cycles::waiting_for`]); its
/// token is cancelled when the cycle is cancelled.
pub(super) struct WaitRecord<'a> {
    cycles: &'a Cycles,
    cycle: Uuid,
    cancelled: CancellationToken,
}

impl WaitRecord<'_> {
    /// Resolves once the cycle has been cancelled.
    pub(super) async fn cancelled(&self) {
        self.cancelled.cancelled().await;
    }
}

impl Drop for WaitRecord<'_> {
    fn drop(&mut self) {
        self.cycles
            .waits
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .remove(&self.cycle);
    }
}

impl Cycles {
    /// The queue tasks cycle `id` is waiting for now (none when it is not waiting).
    pub fn waiting_for(&self, id: Uuid) -> Vec<Uuid> {
        self.waits
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .get(&id)
            .map(|(tasks, _)| tasks.clone())
            .unwrap_or_default()
    }

    /// Marks cycle `id` cancelled: its current wait (and any later one) ends at once. Returns
    /// the tasks it was waiting for.
    pub(super) fn stop_waiting(&self, id: Uuid) -> Vec<Uuid> {
        self.cancelled
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .insert(id);
        match self
            .waits
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .get(&id)
        {
            Some((tasks, token)) => {
                token.cancel();
                tasks.clone()
            }
            None => Vec::new(),
        }
    }

    /// Notes that `cycle` waits for `tasks` until the returned record is dropped.
    pub(super) fn record_wait(&self, cycle: Uuid, tasks: Vec<Uuid>) -> WaitRecord<'_> {
        let cancelled = CancellationToken::new();
        if self
            .cancelled
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .contains(&cycle)
        {
            cancelled.cancel();
        }
        self.waits
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .insert(cycle, (tasks, cancelled.clone()));
        WaitRecord {
            cycles: self,
            cycle,
            cancelled,
        }
    }

    /// Waits until the bus has news of a task in `ids`, `delay` passes, or the runner must
    /// stop. `news` was subscribed before the tasks were last read, so no news is missed.
    pub(super) async fn wait_for_news(
        &self,
        news: &mut Subscription,
        ids: &HashSet<Uuid>,
        delay: Duration,
    ) -> Wake {
        let on_bus = async {
            if !news.changed(|e| is_news_of(e, ids)).await {
                // The bus is gone (shutting down): only the fallback is left.
                std::future::pending::<()>().await;
            }
        };
        tokio::select! {
            () = on_bus => Wake::News,
            () = tokio::time::sleep(delay) => Wake::Timeout,
            () = self.stop.cancelled() => Wake::Stop,
        }
    }

    /// The next fallback delay after a wait that ended with `wake`.
    pub(super) fn next_delay(&self, delay: Duration, wake: &Wake) -> Duration {
        match wake {
            Wake::News => self.fallback.first,
            Wake::Timeout | Wake::Stop => (delay * 2).min(self.fallback.max),
        }
    }

    /// Enqueues task `id` of `cycle` unless it exists (a stage run again after a crash finds
    /// it), then waits for it to end.
    pub(super) async fn run_task(
        &self,
        cycle: Uuid,
        id: Uuid,
        new: NewTask,
    ) -> Result<TaskEnd, CyclesError> {
        match self.queue.get(id).await {
            Ok(_) => {}
            Err(QueueError::NotFound(_)) => {
                if self.draining.load(Ordering::SeqCst) {
                    return Ok(TaskEnd::Stopped);
                }
                let task = match self.queue.prepare(SYSTEM_ACTOR, id, &new, None) {
                    Ok(t) => t,
                    Err(QueueError::Invalid(why)) => return Ok(TaskEnd::Failed(why)),
                    Err(e) => return Err(e.into()),
                };
                let queue = Arc::clone(&self.queue);
                self.store
                    .write(move |tx| queue.insert_prepared(tx, &task))
                    .await?;
                self.queue.notify();
            }
            Err(e) => return Err(e.into()),
        }
        let mut delay = self.fallback.first;
        let mut news = self.events.subscribe();
        let waiting_for = HashSet::from([id]);
        let wait = self.record_wait(cycle, vec![id]);
        loop {
            let task = self.queue.get(id).await?;
            match task.status {
                Status::Succeeded => return Ok(TaskEnd::Succeeded(task.result)),
                Status::Dead | Status::Cancelled => {
                    let why = task
                        .attempts
                        .last()
                        .and_then(|a| {
                            a.error_class.clone().map(|c| {
                                format!("{c}: {}", a.error_message.clone().unwrap_or_default())
                            })
                        })
                        .unwrap_or_else(|| task.status.as_str().to_string());
                    return Ok(TaskEnd::Failed(format!(
                        "task {id} is {}: {why}",
                        task.status.as_str()
                    )));
                }
                status => {
                    if self.stop.is_cancelled()
                        || (self.draining.load(Ordering::SeqCst) && status != Status::Running)
                    {
                        return Ok(TaskEnd::Stopped);
                    }
                }
            }
            let wake = tokio::select! {
                wake = self.wait_for_news(&mut news, &waiting_for, delay) => wake,
                () = wait.cancelled() => Wake::Stop,
            };
            if let Wake::Stop = wake {
                return Ok(TaskEnd::Stopped);
            }
            delay = self.next_delay(delay, &wake);
        }
    }
}

#[cfg(test)]
mod tests {
    use std::future::Future;
    use std::pin::pin;
    use std::task::{Context, Poll, Waker};

    use serde_json::json;

    use super::*;
    use crate::clock::{ManualClock, SharedClock};
    use crate::config::Config;
    use crate::cycles::model::Stage;
    use crate::cycles::{TriggerRequest, profiles, step_task_id};
    use crate::events::EventBus;
    use crate::metrics::Metrics;
    use crate::queue::{LeaseRequest, Outcome, Queue};
    use crate::store::{Store, StoreOptions};

    const HOUR: Duration = Duration::from_secs(3600);

    /// The room over a fresh data dir, with run profile `r1` whose tier 1 is one step of task
    /// type `work` (which nothing executes: the test plays the queue's part), and waits whose
    /// fallback is an hour, so only news ends them.
    async fn room(dir: &std::path::Path, bus_capacity: usize) -> (Arc<Cycles>, Arc<Queue>) {
        let profiles_dir = dir.join("profiles");
        std::fs::create_dir_all(&profiles_dir).unwrap();
        let profile = json!([{"profile_id": "p1", "label": "P1", "state": "enabled",
            "execution_rules": {"tier1": [{"name": "work", "handler": "work"}]},
            "value_tags": {}}]);
        let run_profile = json!([{"run_profile_id": "r1", "profile_id": "p1",
            "state": "enabled", "namespace": "ns", "value_tags": {}}]);
        std::fs::write(profiles_dir.join("profiles.json"), profile.to_string()).unwrap();
        std::fs::write(
            profiles_dir.join("runProfiles.json"),
            run_profile.to_string(),
        )
        .unwrap();
        let mut config = Config {
            data_dir: dir.join("data"),
            ..Config::default()
        };
        config.cycles.profiles_dir = profiles_dir;
        config.cycles.schedule = crate::schedule::CronLine::off();
        config.handlers.insert(
            "work".into(),
            serde_json::from_value(json!({"kind": "command", "program": "/bin/true"})).unwrap(),
        );
        let set = profiles::load(&config).unwrap();
        std::fs::create_dir_all(&config.data_dir).unwrap();
        let store =
            Arc::new(Store::open(&config.database_path(), StoreOptions::default()).unwrap());
        let audit = Arc::new(crate::audit::Audit::load_or_create(&config.data_dir, 1000).unwrap());
        let sealer = Arc::new(crate::exec::seal::Sealer::from_key([7; 32]));
        let clock: SharedClock = Arc::new(ManualClock::new(1_767_225_600_000));
        let config = Arc::new(config);
        let bus = Arc::new(EventBus::new(bus_capacity, &Metrics::new("test")));
        let queue = Arc::new(Queue::new(
            Arc::clone(&store),
            Arc::clone(&audit),
            Arc::clone(&clock),
            Arc::clone(&config),
            Arc::clone(&bus),
            Arc::new(crate::exec::Snapshots::new(
                Arc::clone(&config),
                Arc::clone(&sealer),
            )),
            Arc::new(crate::exec::workflow::CheckpointCleanup),
        ));
        let mut cycles = Cycles::open(
            store,
            audit,
            clock,
            config,
            Arc::clone(&queue),
            bus,
            sealer,
            set,
        )
        .await
        .unwrap();
        Arc::get_mut(&mut cycles).expect("not shared yet").fallback = Fallback {
            first: HOUR,
            max: HOUR,
        };
        (cycles, queue)
    }

    fn succeeded(task_id: Uuid) -> Event {
        Event::TaskSucceeded {
            task_id,
            task_type: "work".into(),
        }
    }

    #[tokio::test]
    async fn a_wait_ends_on_news_of_its_task_only() {
        let dir = tempfile::tempdir().unwrap();
        let (cycles, _) = room(dir.path(), 8).await;
        let (mine, other) = (Uuid::now_v7(), Uuid::now_v7());
        let ids = HashSet::from([mine]);
        let mut cx = Context::from_waker(Waker::noop());

        let mut news = cycles.events.subscribe();
        let mut wait = pin!(cycles.wait_for_news(&mut news, &ids, HOUR));
        assert!(wait.as_mut().poll(&mut cx).is_pending());
        cycles.events.publish(succeeded(other));
        cycles.events.publish(Event::TaskLogged { task_id: mine });
        assert!(wait.as_mut().poll(&mut cx).is_pending());
        cycles.events.publish(succeeded(mine));
        assert!(matches!(
            wait.as_mut().poll(&mut cx),
            Poll::Ready(Wake::News)
        ));

        // News published before the wait starts (between the read and the wait) is not lost.
        let mut news = cycles.events.subscribe();
        cycles.events.publish(succeeded(mine));
        let mut wait = pin!(cycles.wait_for_news(&mut news, &ids, HOUR));
        assert!(matches!(
            wait.as_mut().poll(&mut cx),
            Poll::Ready(Wake::News)
        ));
    }

    #[tokio::test]
    async fn a_lagging_wait_counts_as_news_and_stopping_ends_it() {
        let dir = tempfile::tempdir().unwrap();
        let (cycles, _) = room(dir.path(), 2).await;
        let ids = HashSet::from([Uuid::now_v7()]);
        let mut cx = Context::from_waker(Waker::noop());

        let mut news = cycles.events.subscribe();
        for _ in 0..5 {
            cycles.events.publish(succeeded(Uuid::now_v7()));
        }
        let mut wait = pin!(cycles.wait_for_news(&mut news, &ids, HOUR));
        assert!(matches!(
            wait.as_mut().poll(&mut cx),
            Poll::Ready(Wake::News)
        ));

        let mut news = cycles.events.subscribe();
        let mut wait = pin!(cycles.wait_for_news(&mut news, &ids, HOUR));
        assert!(wait.as_mut().poll(&mut cx).is_pending());
        cycles.stop.cancel();
        assert!(matches!(
            wait.as_mut().poll(&mut cx),
            Poll::Ready(Wake::Stop)
        ));
    }

    /// A stage waiting for its step's task goes on when the task's end is published, long
    /// before its hour-long fallback would have it look again.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_stage_waiting_for_a_task_proceeds_on_its_event() {
        let dir = tempfile::tempdir().unwrap();
        let (cycles, queue) = room(dir.path(), 64).await;
        let mut seen = cycles.events.subscribe();
        let queue_woken = queue.wake();
        let cycle = cycles
            .trigger(
                "test",
                TriggerRequest {
                    run_profile_id: Some("r1".into()),
                    ..TriggerRequest::default()
                },
            )
            .await
            .unwrap()
            .cycle_id;
        let step = step_task_id(cycle, Stage::Tier1, 0);
        assert_eq!(cycles.resume_active().await.unwrap(), 1);

        // The runner enqueues the step's task and waits for it; play the executor's part.
        queue_woken.notified().await;
        let leased = queue
            .lease(LeaseRequest {
                max: 1,
                ..LeaseRequest::default()
            })
            .await
            .unwrap();
        assert_eq!(leased.iter().map(|t| t.id).collect::<Vec<_>>(), [step]);
        let lease = leased[0].lease.expect("leased").id;
        let outcome = Outcome::Succeeded {
            result: Some("{\"worked\": true}".into()),
            form: Default::default(),
            receipt: None,
        };
        queue.complete(step, lease, outcome).await.unwrap();
        cycles.events.publish(succeeded(step));

        let mut stages = Vec::new();
        let reached_tier1 = async {
            while !stages.iter().any(|s| s == "tier1") {
                match seen.recv().await {
                    crate::events::Received::Event(e) => {
                        if let Event::CycleStageReached { cycle_id, stage } = &*e {
                            assert_eq!(*cycle_id, cycle);
                            stages.push(stage.clone());
                        }
                    }
                    other => panic!("unexpected {other:?}"),
                }
            }
        };
        tokio::time::timeout(Duration::from_secs(60), reached_tier1)
            .await
            .expect("the stage did not go on when its task's end was published");
        assert_eq!(stages, ["cycle_started", "initiation", "tier1"]);
        cycles.drain(Duration::from_secs(5)).await;
    }
}
