//! Circuit breakers, one per target: a failure ratio over a rolling window above the threshold
//! (with a minimum volume) opens the circuit; after `open_seconds` one trial is let through
//! (half-open); its success closes the circuit, its failure opens it again. While open, the
//! target's tasks wait without using attempts. State changes are persisted, so an open circuit
//! stays open across restarts, and published on the event bus once persisted (half-opening is a
//! matter of time, never persisted: it is published when the breaker notices it). An opening
//! keeps the outcomes that tripped it. A reset is written first (with the tasks it makes due
//! at once, and its audit entry), and only then applied in memory.

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::sync::{Arc, Mutex};

use serde::Serialize;

use super::model::TRIP_OUTCOMES_KEPT;
pub use super::model::{CircuitOutcome, CircuitRecord};
use super::tables::{ReadTables, ReadableTables, Tables};
use crate::audit::{Audit, Event as AuditEvent};
use crate::clock::{Millis, SharedClock};
use crate::config::CircuitConfig;
use crate::events::{Event, EventBus};
use crate::metrics::Metrics;
use crate::queue::{Outcome, Queue, QueueError};
use crate::store::{Store, StoreError};

/// How long other tasks of a half-open target wait while its trial runs.
const TRIAL_WAIT_MS: i64 = 1_000;

#[derive(Debug, Clone, Copy, PartialEq)]
enum State {
    Closed,
    Open { until: Millis },
    HalfOpen { trial_running: bool },
}

#[derive(Debug)]
struct Breaker {
    state: State,
    window: VecDeque<CircuitOutcome>,
    opened_at: Option<Millis>,
    failure_ratio: f64,
    tripped_by: Vec<CircuitOutcome>,
    tripped_volume: u64,
    tripped_failures: u64,
}

impl Breaker {
    fn closed() -> Self {
        Breaker {
            state: State::Closed,
            window: VecDeque::new(),
            opened_at: None,
            failure_ratio: 0.0,
            tripped_by: Vec::new(),
            tripped_volume: 0,
            tripped_failures: 0,
        }
    }

    /// Opens the breaker at `now` until `until`, keeping the window's latest outcomes as the
    /// reason.
    fn open(&mut self, now: Millis, until: Millis) {
        self.state = State::Open { until };
        self.opened_at = Some(now);
        self.tripped_volume = self.window.len() as u64;
        self.tripped_failures = self.window.iter().filter(|o| !o.healthy).count() as u64;
        let skip = self.window.len().saturating_sub(TRIP_OUTCOMES_KEPT);
        self.tripped_by = self.window.iter().skip(skip).cloned().collect();
    }

    fn record(&self) -> CircuitRecord {
        let (state, open_until) = match self.state {
            State::Closed => ("closed", None),
            State::Open { until } => ("open", Some(until)),
            State::HalfOpen { .. } => ("half_open", None),
        };
        CircuitRecord {
            state: state.to_string(),
            opened_at: self.opened_at,
            open_until,
            failure_ratio: self.failure_ratio,
            tripped_by: self.tripped_by.clone(),
            tripped_volume: self.tripped_volume,
            tripped_failures: self.tripped_failures,
        }
    }
}

/// A circuit as the API shows it.
#[derive(Debug, Clone, Serialize)]
pub struct CircuitView {
    /// Target name (`http:<host>`, `command:<type>`).
    pub name: String,
    /// `closed`, `open` or `half_open`.
    pub state: &'static str,
    /// Failure ratio over the current window.
    pub failure_ratio: f64,
    /// Outcomes in the current window.
    pub window_volume: usize,
    /// When it last opened.
    pub opened_at: Option<Millis>,
    /// When an open circuit lets a trial through.
    pub open_until: Option<Millis>,
    /// The failure ratio of the window that last opened it.
    pub tripped_failure_ratio: f64,
    /// How many outcomes that window held.
    pub tripped_volume: u64,
    /// Its latest outcomes, oldest first: why the circuit opened.
    pub tripped_by: Vec<CircuitOutcome>,
}

/// Errors of circuit operations.
#[derive(Debug, thiserror::Error)]
pub enum CircuitError {
    /// No circuit has this name.
    #[error("no circuit named `{0}`")]
    NotFound(String),
    /// The store failed.
    #[error(transparent)]
    Store(#[from] StoreError),
    /// The queue failed.
    #[error(transparent)]
    Queue(#[from] QueueError),
}

/// Every target's breaker.
pub struct Circuits {
    config: CircuitConfig,
    store: Arc<Store>,
    queue: Arc<Queue>,
    audit: Arc<Audit>,
    clock: SharedClock,
    metrics: Arc<Metrics>,
    events: Arc<EventBus>,
    breakers: Mutex<HashMap<String, Breaker>>,
}

/// Whether an outcome says something about the target's health: `Some(true)` healthy,
/// `Some(false)` failing, `None` neither (a client error, a cancellation, a deferral); with the
/// error class of a failure.
fn health_signal(outcome: &Outcome) -> Option<(bool, Option<&str>)> {
    match outcome {
        Outcome::Succeeded { .. } => Some((true, None)),
        Outcome::Retry { class, .. } => Some((false, Some(class))),
        Outcome::Fail { class, .. } => {
            (!class.starts_with("http_4")).then_some((false, Some(class.as_str())))
        }
        Outcome::Defer { .. } | Outcome::Cancelled | Outcome::Interrupted => None,
    }
}

impl Circuits {
    /// Loads persisted circuit states; state changes are published on `events`.
    pub fn load(
        config: CircuitConfig,
        store: Arc<Store>,
        queue: Arc<Queue>,
        audit: Arc<Audit>,
        clock: SharedClock,
        metrics: Arc<Metrics>,
        events: Arc<EventBus>,
    ) -> Result<Circuits, StoreError> {
        let breakers = store.read_blocking(|tx| -> Result<_, StoreError> {
            let mut breakers = HashMap::new();
            for (name, record) in ReadTables::open(tx)?.circuit_records()? {
                let state = match (record.state.as_str(), record.open_until) {
                    ("open", Some(until)) => State::Open { until },
                    // A trial that was running when keel stopped is gone: allow a new one.
                    ("half_open", _) => State::HalfOpen {
                        trial_running: false,
                    },
                    _ => State::Closed,
                };
                breakers.insert(
                    name,
                    Breaker {
                        state,
                        window: VecDeque::new(),
                        opened_at: record.opened_at,
                        failure_ratio: record.failure_ratio,
                        tripped_by: record.tripped_by,
                        tripped_volume: record.tripped_volume,
                        tripped_failures: record.tripped_failures,
                    },
                );
            }
            Ok(breakers)
        })?;
        let circuits = Circuits {
            config,
            store,
            queue,
            audit,
            clock,
            metrics,
            events,
            breakers: Mutex::new(breakers),
        };
        let names: Vec<String> = circuits.lock().keys().cloned().collect();
        for name in names {
            circuits.publish_gauge(&name);
        }
        Ok(circuits)
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<String, Breaker>> {
        self.breakers.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn publish_gauge(&self, name: &str) {
        let open = self
            .lock()
            .get(name)
            .is_some_and(|b| !matches!(b.state, State::Closed));
        self.metrics
            .gauge(
                "keel_circuit_open",
                "1 while a target's circuit is open or half-open, else 0.",
                &[("target", name)],
            )
            .set(if open { 1.0 } else { 0.0 });
    }

    /// Targets whose tasks must wait, with the time they may be tried.
    pub fn blocked_targets(&self) -> HashMap<String, Millis> {
        let now = self.clock.now_ms();
        let mut blocked = HashMap::new();
        let mut half_opened = Vec::new();
        for (name, breaker) in self.lock().iter_mut() {
            match breaker.state {
                State::Open { until } if until > now => {
                    blocked.insert(name.clone(), until);
                }
                State::Open { .. } => {
                    breaker.state = State::HalfOpen {
                        trial_running: false,
                    };
                    half_opened.push(name.clone());
                }
                State::HalfOpen {
                    trial_running: true,
                } => {
                    blocked.insert(name.clone(), now + TRIAL_WAIT_MS);
                }
                _ => {}
            }
        }
        self.events.publish_all(
            half_opened
                .into_iter()
                .map(|target| Event::CircuitHalfOpen { target }),
        );
        blocked
    }

    /// Until when tasks of `target` are held back, without changing the breaker: the trial time
    /// of an open circuit, or shortly after now while its half-open trial runs.
    pub fn blocked_until(&self, target: &str) -> Option<Millis> {
        let now = self.clock.now_ms();
        match self.lock().get(target)?.state {
            State::Open { until } if until > now => Some(until),
            State::HalfOpen {
                trial_running: true,
            } => Some(now + TRIAL_WAIT_MS),
            _ => None,
        }
    }

    /// Asks to run one task against `target`: `Err(until)` when it must wait (the circuit is
    /// open, or its half-open trial is already running).
    pub fn admit(&self, target: &str) -> Result<(), Millis> {
        let now = self.clock.now_ms();
        let (admission, half_opened) = {
            let mut breakers = self.lock();
            let Some(breaker) = breakers.get_mut(target) else {
                return Ok(());
            };
            match breaker.state {
                State::Closed => (Ok(()), false),
                State::Open { until } if until > now => (Err(until), false),
                State::Open { .. } => {
                    breaker.state = State::HalfOpen {
                        trial_running: true,
                    };
                    (Ok(()), true)
                }
                State::HalfOpen {
                    trial_running: false,
                } => {
                    breaker.state = State::HalfOpen {
                        trial_running: true,
                    };
                    (Ok(()), false)
                }
                State::HalfOpen {
                    trial_running: true,
                } => (Err(now + TRIAL_WAIT_MS), false),
            }
        };
        if half_opened {
            self.events.publish(Event::CircuitHalfOpen {
                target: target.to_string(),
            });
        }
        admission
    }

    /// Feeds an attempt's outcome into `target`'s breaker.
    pub async fn record(&self, target: &str, outcome: &Outcome) -> Result<(), StoreError> {
        let Some((healthy, class)) = health_signal(outcome) else {
            // A trial that said nothing about health frees the slot for another trial.
            if let Some(b) = self.lock().get_mut(target)
                && b.state
                    == (State::HalfOpen {
                        trial_running: true,
                    })
            {
                b.state = State::HalfOpen {
                    trial_running: false,
                };
            }
            return Ok(());
        };
        let now = self.clock.now_ms();
        let changed = {
            let mut breakers = self.lock();
            let breaker = breakers
                .entry(target.to_string())
                .or_insert_with(Breaker::closed);
            let window_start = now - self.config.window_seconds as i64 * 1000;
            breaker.window.push_back(CircuitOutcome {
                at: now,
                healthy,
                class: class.map(str::to_string),
            });
            while breaker.window.front().is_some_and(|o| o.at < window_start) {
                breaker.window.pop_front();
            }
            let failures = breaker.window.iter().filter(|o| !o.healthy).count();
            let volume = breaker.window.len();
            breaker.failure_ratio = failures as f64 / volume as f64;
            let open_until = now + self.config.open_seconds as i64 * 1000;
            match breaker.state {
                State::HalfOpen { .. } if healthy => {
                    breaker.state = State::Closed;
                    breaker.window.clear();
                    Some(breaker.record())
                }
                State::HalfOpen { .. } => {
                    // The failed trial alone reopens it: it is the reason shown.
                    breaker.window.clear();
                    breaker.window.push_back(CircuitOutcome {
                        at: now,
                        healthy,
                        class: class.map(str::to_string),
                    });
                    breaker.failure_ratio = 1.0;
                    breaker.open(now, open_until);
                    Some(breaker.record())
                }
                State::Closed
                    if volume as u64 >= self.config.min_volume
                        && breaker.failure_ratio > self.config.threshold =>
                {
                    breaker.open(now, open_until);
                    tracing::warn!(
                        target_name = target,
                        ratio = breaker.failure_ratio,
                        "circuit opened"
                    );
                    Some(breaker.record())
                }
                _ => None,
            }
        };
        if let Some(record) = changed {
            let event = state_event(target, &record);
            self.persist(target, record).await?;
            self.publish_gauge(target);
            self.events.publish(event);
        }
        Ok(())
    }

    async fn persist(&self, target: &str, record: CircuitRecord) -> Result<(), StoreError> {
        let name = target.to_string();
        self.store
            .write(move |tx| Tables::open(tx)?.put_circuit(&name, &record))
            .await
    }

    /// Every known circuit, by name.
    pub fn list(&self) -> Vec<CircuitView> {
        let now = self.clock.now_ms();
        let window_start = now - self.config.window_seconds as i64 * 1000;
        let breakers = self.lock();
        let sorted: BTreeMap<&String, &Breaker> = breakers.iter().collect();
        sorted
            .into_iter()
            .map(|(name, b)| {
                let recent: Vec<bool> = b
                    .window
                    .iter()
                    .filter(|o| o.at >= window_start)
                    .map(|o| o.healthy)
                    .collect();
                let failures = recent.iter().filter(|ok| !**ok).count();
                CircuitView {
                    name: name.clone(),
                    state: match b.state {
                        State::Closed => "closed",
                        State::Open { .. } => "open",
                        State::HalfOpen { .. } => "half_open",
                    },
                    failure_ratio: if recent.is_empty() {
                        0.0
                    } else {
                        failures as f64 / recent.len() as f64
                    },
                    window_volume: recent.len(),
                    opened_at: b.opened_at,
                    open_until: match b.state {
                        State::Open { until } => Some(until),
                        _ => None,
                    },
                    tripped_failure_ratio: if b.tripped_volume == 0 {
                        0.0
                    } else {
                        b.tripped_failures as f64 / b.tripped_volume as f64
                    },
                    tripped_volume: b.tripped_volume,
                    tripped_by: b.tripped_by.clone(),
                }
            })
            .collect()
    }

    /// Closes a circuit by hand (audited). The closed state, the tasks it held back made due at
    /// once and the audit entry commit together; only then does the breaker close in memory, so
    /// a failed write leaves it as it was.
    pub async fn reset(&self, actor: &str, name: &str) -> Result<CircuitView, CircuitError> {
        let now = self.clock.now_ms();
        let (record, held_until, was_closed) = {
            let breakers = self.lock();
            let breaker = breakers
                .get(name)
                .ok_or_else(|| CircuitError::NotFound(name.to_string()))?;
            let held_until = match breaker.state {
                State::Open { until } => until.max(now + TRIAL_WAIT_MS),
                _ => now + TRIAL_WAIT_MS,
            };
            let record = CircuitRecord {
                state: "closed".into(),
                opened_at: breaker.opened_at,
                open_until: None,
                failure_ratio: 0.0,
                tripped_by: breaker.tripped_by.clone(),
                tripped_volume: breaker.tripped_volume,
                tripped_failures: breaker.tripped_failures,
            };
            (record, held_until, breaker.state == State::Closed)
        };
        let (audit, queue) = (Arc::clone(&self.audit), Arc::clone(&self.queue));
        let (key, actor) = (name.to_string(), actor.to_string());
        let made_due = self
            .store
            .write(move |tx| -> Result<usize, CircuitError> {
                Tables::open(tx)
                    .map_err(StoreError::from)?
                    .put_circuit(&key, &record)?;
                let made_due = queue.make_target_due(tx, &key, held_until, now)?;
                audit.append(
                    tx,
                    now,
                    &AuditEvent::new(actor.clone(), "circuit.reset", key.clone())
                        .with_detail(serde_json::json!({ "tasks_made_due": made_due })),
                )?;
                Ok(made_due)
            })
            .await?;
        if let Some(breaker) = self.lock().get_mut(name) {
            breaker.state = State::Closed;
            breaker.window.clear();
            breaker.failure_ratio = 0.0;
        }
        if made_due > 0 {
            self.queue.notify();
        }
        self.publish_gauge(name);
        if !was_closed {
            self.events.publish(Event::CircuitClosed {
                target: name.to_string(),
            });
        }
        self.list()
            .into_iter()
            .find(|c| c.name == name)
            .ok_or_else(|| CircuitError::NotFound(name.to_string()))
    }
}

/// The event a persisted state change of `target` publishes.
fn state_event(target: &str, record: &CircuitRecord) -> Event {
    let target = target.to_string();
    match record.state.as_str() {
        "open" => Event::CircuitOpened { target },
        "half_open" => Event::CircuitHalfOpen { target },
        _ => Event::CircuitClosed { target },
    }
}
