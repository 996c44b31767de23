//! Executors and the dispatcher: leases ready tasks within the global and per-type concurrency
//! limits, runs each with its executor (http, command, llm, workflow) behind its target's
//! circuit breaker, and reports the outcome to the queue. Handler snapshots ([`snapshot`]) are
//! this room's: the queue stores them unread.
//!
//! Once the queue recorded the outcome of an http task, its delivery is published on the event
//! bus ([`Event::DeliveryConfirmed`] or [`Event::DeliveryFailed`]).

pub mod answer;
pub mod circuit;
pub mod command;
pub mod http;
pub mod llm;
pub mod model;
pub mod orphans;
pub mod seal;
pub mod snapshot;
pub mod stderr;
mod tables;
mod waiting;
pub mod workflow;

use std::collections::HashMap;
use std::future::Future;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use tokio::sync::{Notify, Semaphore};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use uuid::Uuid;

use crate::budget::Budgets;
use crate::clock::SharedClock;
use crate::config::Config;
use crate::events::{Event, EventBus};
use crate::metrics::{Metrics, Unit};
use crate::queue::{Completion, LeaseRequest, Outcome, Queue, Task};
use crate::supervisor::{StepFuture, Worker};
use circuit::Circuits;
use command::CommandExecutor;
use http::HttpExecutor;
use llm::LlmExecutor;
use workflow::{StepRunner, WorkflowExecutor};

use seal::Sealer;
pub use snapshot::{
    HandlerSnapshot, HttpTarget, Snapshots, WorkflowStep, http_circuit_target, url_host,
};
pub use waiting::Waiting;

/// Runs leased tasks; shared by the dispatcher's spawned executions.
pub struct Dispatcher {
    queue: Arc<Queue>,
    circuits: Arc<Circuits>,
    http: HttpExecutor,
    command: CommandExecutor,
    llm: LlmExecutor,
    workflow: WorkflowExecutor,
    config: Arc<Config>,
    metrics: Arc<Metrics>,
    events: Arc<EventBus>,
    permits: Arc<Semaphore>,
    running_by_type: Mutex<HashMap<String, usize>>,
    cancels: Mutex<HashMap<Uuid, CancellationToken>>,
    tracker: TaskTracker,
    interrupt: CancellationToken,
    sealer: Arc<Sealer>,
}

impl Dispatcher {
    /// A dispatcher for `queue`, publishing deliveries on `events`.
    #[allow(clippy::too_many_arguments)]
    pub fn new(
        queue: Arc<Queue>,
        circuits: Arc<Circuits>,
        config: Arc<Config>,
        clock: SharedClock,
        metrics: Arc<Metrics>,
        budgets: Arc<Budgets>,
        store: Arc<crate::store::Store>,
        events: Arc<EventBus>,
        sealer: Arc<Sealer>,
    ) -> Arc<Dispatcher> {
        let result_max = config.queue.result_max_bytes;
        Arc::new(Dispatcher {
            http: HttpExecutor::new(Arc::clone(&clock), result_max),
            command: CommandExecutor::new(
                Arc::clone(&queue),
                Arc::clone(&store),
                Arc::clone(&clock),
                result_max,
                stderr::LogLimits::from(&config.exec),
            ),
            llm: LlmExecutor::new(Arc::clone(&clock), budgets, result_max),
            workflow: WorkflowExecutor::new(store, Arc::clone(&queue), Arc::clone(&clock)),
            permits: Arc::new(Semaphore::new(config.queue.concurrency)),
            queue,
            circuits,
            config,
            metrics,
            events,
            running_by_type: Mutex::new(HashMap::new()),
            cancels: Mutex::new(HashMap::new()),
            tracker: TaskTracker::new(),
            interrupt: CancellationToken::new(),
            sealer,
        })
    }

    /// Tasks running now.
    pub fn running(&self) -> usize {
        self.config.queue.concurrency - self.permits.available_permits()
    }

    /// Stops a running task's attempt (after the queue recorded the cancellation request).
    pub fn cancel_running(&self, id: Uuid) {
        if let Some(token) = self
            .cancels
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .get(&id)
        {
            token.cancel();
        }
    }

    fn type_room(&self) -> HashMap<String, usize> {
        let running = self
            .running_by_type
            .lock()
            .unwrap_or_else(|e| e.into_inner());
        self.config
            .handlers
            .iter()
            .filter_map(|(name, h)| {
                h.concurrency().map(|limit| {
                    (
                        name.clone(),
                        limit.saturating_sub(*running.get(name).unwrap_or(&0)),
                    )
                })
            })
            .collect()
    }

    /// Leases what the free slots allow and starts each task. Returns how many started.
    pub async fn dispatch_ready(self: &Arc<Self>) -> Result<usize, String> {
        let mut started = 0;
        loop {
            let free = self.permits.available_permits();
            if free == 0 || self.tracker.is_closed() {
                return Ok(started);
            }
            let request = LeaseRequest {
                max: free,
                type_room: self.type_room(),
                blocked_targets: self.circuits.blocked_targets(),
            };
            let tasks = self.queue.lease(request).await.map_err(|e| e.to_string())?;
            if tasks.is_empty() {
                return Ok(started);
            }
            for task in tasks {
                let Ok(permit) = Arc::clone(&self.permits).try_acquire_owned() else {
                    // Cannot happen (we leased at most the free permits); the reaper would
                    // return the task, but hand it back now instead.
                    self.report(&task, Outcome::Interrupted).await;
                    continue;
                };
                *self
                    .running_by_type
                    .lock()
                    .unwrap_or_else(|e| e.into_inner())
                    .entry(task.task_type.clone())
                    .or_default() += 1;
                let this = Arc::clone(self);
                self.tracker.spawn(async move {
                    this.execute(task).await;
                    drop(permit);
                    this.queue.wake().notify_one();
                });
                started += 1;
            }
        }
    }

    async fn execute(&self, task: Task) {
        let started = Instant::now();
        let handler = HandlerSnapshot::of(&task)
            .map_err(|e| ("unreadable_handler", e.to_string()))
            .and_then(|stored| {
                stored
                    .unsealed(&self.sealer)
                    .map_err(|e| ("unsealable_handler", e))
            });
        let handler = match handler {
            Ok(handler) => handler,
            Err((class, message)) => {
                let outcome = Outcome::Fail {
                    class: class.into(),
                    message,
                    receipt: None,
                };
                self.observe(&task, &outcome, started.elapsed());
                self.report(&task, outcome).await;
                self.finished(&task);
                return;
            }
        };
        let admission = self.circuits.admit(&task.target);
        let outcome = match admission {
            Err(until) => Outcome::Defer {
                class: "deferred".into(),
                reason: format!("the circuit for {} is open", task.target),
                until,
            },
            Ok(()) => {
                let cancel = CancellationToken::new();
                self.cancels
                    .lock()
                    .unwrap_or_else(|e| e.into_inner())
                    .insert(task.id, cancel.clone());
                let run = async {
                    match &handler {
                        HandlerSnapshot::Http { .. } => self.http.run(&task, &handler).await,
                        HandlerSnapshot::Command { .. } => self.command.run(&task, &handler).await,
                        HandlerSnapshot::Llm { .. } => self.llm.run(&task, &handler).await,
                        HandlerSnapshot::Workflow { .. } => {
                            self.workflow.run(&task, &handler, self).await
                        }
                    }
                };
                let outcome = if task.cancel_requested {
                    Outcome::Cancelled
                } else {
                    tokio::select! {
                        outcome = run => outcome,
                        _ = cancel.cancelled() => Outcome::Cancelled,
                        _ = self.interrupt.cancelled() => Outcome::Interrupted,
                    }
                };
                self.cancels
                    .lock()
                    .unwrap_or_else(|e| e.into_inner())
                    .remove(&task.id);
                outcome
            }
        };
        // Only an admitted attempt tells the breaker something (and frees a half-open trial
        // slot): a task the circuit turned away must not, or it would let a second trial in.
        if admission.is_ok()
            && let Err(e) = self.circuits.record(&task.target, &outcome).await
        {
            tracing::warn!(error = %e, "cannot persist circuit state");
        }
        self.observe(&task, &outcome, started.elapsed());
        let delivery = delivery_event(&task, &handler, &outcome);
        if self.report(&task, outcome).await
            && let Some(event) = delivery
        {
            self.events.publish(event);
        }
        self.finished(&task);
    }

    /// Frees the type's slot of a task whose attempt ended.
    fn finished(&self, task: &Task) {
        if let Some(n) = self
            .running_by_type
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .get_mut(&task.task_type)
        {
            *n = n.saturating_sub(1);
        }
    }

    /// Reports an attempt's outcome to the queue; whether it was recorded.
    async fn report(&self, task: &Task, outcome: Outcome) -> bool {
        let Some(lease) = task.lease else {
            return false;
        };
        match self.queue.complete(task.id, lease.id, outcome).await {
            Ok(Completion::Applied(_)) => true,
            Ok(Completion::LeaseLost) => {
                tracing::warn!(task = %task.id, "attempt finished after its lease was taken back; its report was ignored");
                false
            }
            Err(e) => {
                tracing::error!(task = %task.id, error = %e, "cannot record the attempt; the reaper will return the task");
                false
            }
        }
    }

    fn observe(&self, task: &Task, outcome: &Outcome, elapsed: Duration) {
        let name = match outcome {
            Outcome::Succeeded { .. } => "succeeded",
            Outcome::Retry { .. } => "retry",
            Outcome::Fail { .. } => "failed",
            Outcome::Defer { .. } => "deferred",
            Outcome::Cancelled => "cancelled",
            Outcome::Interrupted => "interrupted",
        };
        self.metrics
            .counter(
                "keel_task_attempts_total",
                "Task attempts by type and outcome.",
                &[("type", &task.task_type), ("outcome", name)],
            )
            .inc();
        if matches!(outcome, Outcome::Defer { .. }) {
            return;
        }
        self.metrics
            .histogram(
                "keel_task_duration_seconds",
                "Duration of task attempts, by type.",
                Unit::Micros,
                &[("type", &task.task_type)],
            )
            .record_duration(elapsed);
        let receipt = match outcome {
            Outcome::Succeeded { receipt, .. }
            | Outcome::Retry { receipt, .. }
            | Outcome::Fail { receipt, .. } => receipt.as_ref(),
            _ => None,
        };
        if let Some(receipt) = receipt {
            self.metrics
                .histogram(
                    "keel_target_latency_seconds",
                    "Latency of each target's answers.",
                    Unit::Micros,
                    &[("target", &task.target)],
                )
                .record(receipt.latency_ms.saturating_mul(1000));
        }
    }

    /// Stops leasing, lets running attempts finish until `deadline`, then interrupts the rest
    /// (they run again after restart without using an attempt) and waits for their reports.
    pub async fn drain(&self, deadline: Duration) {
        self.tracker.close();
        if tokio::time::timeout(deadline, self.tracker.wait())
            .await
            .is_err()
        {
            tracing::warn!(
                running = self.running(),
                "interrupting tasks still running at the drain deadline"
            );
            self.interrupt.cancel();
            self.tracker.wait().await;
        }
    }
}

/// The event of an http task's delivery attempt that ended with `outcome`.
fn delivery_event(task: &Task, handler: &HandlerSnapshot, outcome: &Outcome) -> Option<Event> {
    let HandlerSnapshot::Http { url, .. } = handler else {
        return None;
    };
    let (task_id, target) = (task.id, url_host(url));
    match outcome {
        Outcome::Succeeded { .. } => Some(Event::DeliveryConfirmed { task_id, target }),
        Outcome::Retry { .. } | Outcome::Fail { .. } => {
            Some(Event::DeliveryFailed { task_id, target })
        }
        Outcome::Defer { .. } | Outcome::Cancelled | Outcome::Interrupted => None,
    }
}

impl StepRunner for Dispatcher {
    /// A workflow step: the step's own executor behind the step target's circuit breaker.
    fn run_step<'a>(
        &'a self,
        step: &'a Task,
        handler: &'a HandlerSnapshot,
    ) -> Pin<Box<dyn Future<Output = Outcome> + Send + 'a>> {
        Box::pin(async move {
            if let Err(until) = self.circuits.admit(&step.target) {
                return Outcome::Defer {
                    class: "deferred".into(),
                    reason: format!("the circuit for {} is open", step.target),
                    until,
                };
            }
            let outcome = match handler {
                HandlerSnapshot::Http { .. } => self.http.run(step, handler).await,
                HandlerSnapshot::Command { .. } => self.command.run(step, handler).await,
                HandlerSnapshot::Llm { .. } => self.llm.run(step, handler).await,
                HandlerSnapshot::Workflow { .. } => Outcome::Fail {
                    class: "handler_mismatch".into(),
                    message: "a workflow step cannot be another workflow".into(),
                    receipt: None,
                },
            };
            if let Err(e) = self.circuits.record(&step.target, &outcome).await {
                tracing::warn!(error = %e, "cannot persist circuit state");
            }
            outcome
        })
    }
}

/// The dispatcher as a supervised worker: woken by enqueues and completions, and polling for
/// delayed tasks that come due.
pub struct DispatchWorker {
    /// The dispatcher.
    pub dispatcher: Arc<Dispatcher>,
}

impl Worker for DispatchWorker {
    fn name(&self) -> &'static str {
        "dispatcher"
    }
    fn interval(&self) -> Duration {
        Duration::from_millis(250)
    }
    fn wake(&self) -> Option<Arc<Notify>> {
        Some(self.dispatcher.queue.wake())
    }
    fn step(&mut self) -> StepFuture<'_> {
        Box::pin(async move { self.dispatcher.dispatch_ready().await.map(|_| ()) })
    }
}
